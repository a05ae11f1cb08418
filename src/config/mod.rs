//! The official yacs configuration (`lib/config/defaults.py` of HRNet-Facial-Landmark-Detection):
//! every key with its reference default, merged from a YAML file the way yacs' `merge_from_file`
//! does it, then checked so that a bad file fails early with a one-line message naming the file,
//! the line and the full key path.
//!
//! yacs rules followed here: only keys present in the defaults are accepted; a string value is
//! first decoded with Python's `literal_eval` (so `GPUS: (0,)` is a tuple and `LR: '1e-4'` a
//! float); the decoded type must equal the default's type, except that a list may stand for a
//! tuple and the reverse. An int is *not* accepted for a float key (`SIGMA: 2` fails in yacs too).
//! Deliberate differences: a null value is rejected (yacs would store None and the reference
//! crashes later), list elements are type-checked, and the values are range-checked.
//! YAML scalars are resolved by serde-saphyr with YAML 1.1 booleans, so yes/no/on/off are
//! booleans as in PyYAML; it also takes y/n (PyYAML would keep those as strings).

mod py_literal;
mod yaml_tree;

use anyhow::{anyhow, bail, Result};
use py_literal::{literal_eval, PyVal};
use serde_saphyr::Spanned;
use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use yaml_tree::{Node, Scalar};

/// Residual block type of an HRNet stage (`BLOCK`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlockKind {
    Basic,
    Bottleneck,
}

impl BlockKind {
    pub fn as_str(self) -> &'static str {
        match self {
            BlockKind::Basic => "BASIC",
            BlockKind::Bottleneck => "BOTTLENECK",
        }
    }
    /// Output channels per input "planes" (1 for BASIC, 4 for BOTTLENECK).
    pub fn expansion(self) -> usize {
        match self {
            BlockKind::Basic => 1,
            BlockKind::Bottleneck => 4,
        }
    }
}

/// `TRAIN.OPTIMIZER`; the reference compares the exact lower-case strings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OptimizerKind {
    Sgd,
    Adam,
}

impl OptimizerKind {
    pub fn as_str(self) -> &'static str {
        match self {
            OptimizerKind::Sgd => "sgd",
            OptimizerKind::Adam => "adam",
        }
    }
}

pub use crate::data::dataset::DatasetKind;

/// The four dataset classes `get_dataset` knows, by their exact `DATASET.DATASET` spelling.
fn dataset_kind_exact(name: &str) -> Option<DatasetKind> {
    match name {
        "AFLW" => Some(DatasetKind::Aflw),
        "COFW" => Some(DatasetKind::Cofw),
        "300W" => Some(DatasetKind::W300),
        "WFLW" => Some(DatasetKind::Wflw),
        _ => None,
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct CudnnConfig {
    pub benchmark: bool,
    /// Has no effect in the reference (set through a misspelt attribute).
    pub deterministic: bool,
    pub enabled: bool,
}

/// One of `MODEL.EXTRA.STAGE2/3/4`.
#[derive(Debug, Clone, PartialEq)]
pub struct StageConfig {
    pub num_modules: usize,
    pub num_branches: usize,
    pub block: BlockKind,
    pub num_blocks: Vec<usize>,
    pub num_channels: Vec<usize>,
    /// Read but never used by the reference: fusion is always a sum.
    pub fuse_method: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ModelExtra {
    /// Unused by the reference.
    pub pretrained_layers: Vec<String>,
    /// Unused by the reference (the stem is hard-coded to 64 channels).
    pub stem_inplanes: i64,
    /// Kernel of the last head conv: 1 (padding 0) or 3 (padding 1).
    pub final_conv_kernel: usize,
    /// Unused by the reference.
    pub with_head: bool,
    pub stage2: StageConfig,
    pub stage3: StageConfig,
    pub stage4: StageConfig,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ModelConfig {
    /// Only used in the TensorBoard path.
    pub name: String,
    pub init_weights: bool,
    pub pretrained: String,
    pub num_joints: usize,
    /// 'Gaussian'; anything else gives the Cauchy-like target.
    pub target_type: String,
    /// As written in the file (the reference comment says width, height).
    pub image_size: [usize; 2],
    pub heatmap_size: [usize; 2],
    pub sigma: f64,
    pub extra: ModelExtra,
}

#[derive(Debug, Clone, PartialEq)]
pub struct DatasetConfig {
    pub root: String,
    /// 'AFLW' | 'COFW' | '300W' | 'WFLW'.
    pub dataset: String,
    pub trainset: String,
    pub testset: String,
    pub flip: bool,
    pub scale_factor: f64,
    /// Degrees; an int in the reference schema.
    pub rot_factor: i64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct TrainConfig {
    pub lr_factor: f64,
    pub lr_step: Vec<usize>,
    pub lr: f64,
    pub optimizer: OptimizerKind,
    pub momentum: f64,
    pub wd: f64,
    pub nesterov: bool,
    pub begin_epoch: usize,
    pub end_epoch: usize,
    pub resume: bool,
    /// Unused by the reference.
    pub checkpoint: String,
    pub batch_size_per_gpu: usize,
    pub shuffle: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct TestConfig {
    pub batch_size_per_gpu: usize,
}

/// The whole configuration; `Config::default()` is the reference `defaults.py`.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub output_dir: String,
    pub log_dir: String,
    /// A tuple in the reference; only its length matters to hrk (batch = per-GPU × len).
    pub gpus: Vec<usize>,
    pub workers: usize,
    pub print_freq: usize,
    /// Unused by the reference.
    pub auto_resume: bool,
    pub pin_memory: bool,
    pub cudnn: CudnnConfig,
    pub model: ModelConfig,
    pub dataset: DatasetConfig,
    pub train: TrainConfig,
    pub test: TestConfig,
}

fn stage(num_branches: usize, num_channels: &[usize]) -> StageConfig {
    StageConfig {
        num_modules: 1,
        num_branches,
        block: BlockKind::Basic,
        num_blocks: vec![4; num_branches],
        num_channels: num_channels.to_vec(),
        fuse_method: "SUM".to_owned(),
    }
}

impl Default for Config {
    /// The reference defaults, quirks included (GPUS (0,1,2,4); STAGE4 channels [18,32,72,144];
    /// one module per stage). They are not a usable model: the YAMLs override the stages.
    fn default() -> Self {
        Config {
            output_dir: "output".to_owned(),
            log_dir: "log".to_owned(),
            gpus: vec![0, 1, 2, 4],
            workers: 16,
            print_freq: 20,
            auto_resume: false,
            pin_memory: true,
            cudnn: CudnnConfig { benchmark: true, deterministic: false, enabled: true },
            model: ModelConfig {
                name: "hrnet".to_owned(),
                init_weights: true,
                pretrained: String::new(),
                num_joints: 17,
                target_type: "Gaussian".to_owned(),
                image_size: [256, 256],
                heatmap_size: [64, 64],
                sigma: 1.5,
                extra: ModelExtra {
                    pretrained_layers: vec!["*".to_owned()],
                    stem_inplanes: 64,
                    final_conv_kernel: 1,
                    with_head: true,
                    stage2: stage(2, &[18, 36]),
                    stage3: stage(3, &[18, 36, 72]),
                    stage4: stage(4, &[18, 32, 72, 144]),
                },
            },
            dataset: DatasetConfig {
                root: String::new(),
                dataset: "AFLW".to_owned(),
                trainset: String::new(),
                testset: String::new(),
                flip: true,
                scale_factor: 0.25,
                rot_factor: 30,
            },
            train: TrainConfig {
                lr_factor: 0.1,
                lr_step: vec![30, 50],
                lr: 0.0001,
                optimizer: OptimizerKind::Adam,
                momentum: 0.0,
                wd: 0.0,
                nesterov: false,
                begin_epoch: 0,
                end_epoch: 60,
                resume: true,
                checkpoint: String::new(),
                batch_size_per_gpu: 16,
                shuffle: true,
            },
            test: TestConfig { batch_size_per_gpu: 32 },
        }
    }
}

/// The type yacs infers from each default value.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Slot {
    Section,
    Str,
    Int,
    Float,
    Bool,
    IntList,
    IntTuple,
    StrList,
}

impl Slot {
    fn describe(self) -> &'static str {
        match self {
            Slot::Section => "a mapping of keys",
            Slot::Str => "str",
            Slot::Int => "int",
            Slot::Float => "float",
            Slot::Bool => "bool",
            Slot::IntList => "list of int",
            Slot::IntTuple => "tuple of int",
            Slot::StrList => "list of str",
        }
    }
}

/// Every key of the reference defaults, in `defaults.py` order.
const SCHEMA: &[(&str, Slot)] = &[
    ("OUTPUT_DIR", Slot::Str),
    ("LOG_DIR", Slot::Str),
    ("GPUS", Slot::IntTuple),
    ("WORKERS", Slot::Int),
    ("PRINT_FREQ", Slot::Int),
    ("AUTO_RESUME", Slot::Bool),
    ("PIN_MEMORY", Slot::Bool),
    ("CUDNN", Slot::Section),
    ("CUDNN.BENCHMARK", Slot::Bool),
    ("CUDNN.DETERMINISTIC", Slot::Bool),
    ("CUDNN.ENABLED", Slot::Bool),
    ("MODEL", Slot::Section),
    ("MODEL.NAME", Slot::Str),
    ("MODEL.INIT_WEIGHTS", Slot::Bool),
    ("MODEL.PRETRAINED", Slot::Str),
    ("MODEL.NUM_JOINTS", Slot::Int),
    ("MODEL.TARGET_TYPE", Slot::Str),
    ("MODEL.IMAGE_SIZE", Slot::IntList),
    ("MODEL.HEATMAP_SIZE", Slot::IntList),
    ("MODEL.SIGMA", Slot::Float),
    ("MODEL.EXTRA", Slot::Section),
    ("MODEL.EXTRA.PRETRAINED_LAYERS", Slot::StrList),
    ("MODEL.EXTRA.STEM_INPLANES", Slot::Int),
    ("MODEL.EXTRA.FINAL_CONV_KERNEL", Slot::Int),
    ("MODEL.EXTRA.WITH_HEAD", Slot::Bool),
    ("MODEL.EXTRA.STAGE2", Slot::Section),
    ("MODEL.EXTRA.STAGE2.NUM_MODULES", Slot::Int),
    ("MODEL.EXTRA.STAGE2.NUM_BRANCHES", Slot::Int),
    ("MODEL.EXTRA.STAGE2.NUM_BLOCKS", Slot::IntList),
    ("MODEL.EXTRA.STAGE2.NUM_CHANNELS", Slot::IntList),
    ("MODEL.EXTRA.STAGE2.BLOCK", Slot::Str),
    ("MODEL.EXTRA.STAGE2.FUSE_METHOD", Slot::Str),
    ("MODEL.EXTRA.STAGE3", Slot::Section),
    ("MODEL.EXTRA.STAGE3.NUM_MODULES", Slot::Int),
    ("MODEL.EXTRA.STAGE3.NUM_BRANCHES", Slot::Int),
    ("MODEL.EXTRA.STAGE3.NUM_BLOCKS", Slot::IntList),
    ("MODEL.EXTRA.STAGE3.NUM_CHANNELS", Slot::IntList),
    ("MODEL.EXTRA.STAGE3.BLOCK", Slot::Str),
    ("MODEL.EXTRA.STAGE3.FUSE_METHOD", Slot::Str),
    ("MODEL.EXTRA.STAGE4", Slot::Section),
    ("MODEL.EXTRA.STAGE4.NUM_MODULES", Slot::Int),
    ("MODEL.EXTRA.STAGE4.NUM_BRANCHES", Slot::Int),
    ("MODEL.EXTRA.STAGE4.NUM_BLOCKS", Slot::IntList),
    ("MODEL.EXTRA.STAGE4.NUM_CHANNELS", Slot::IntList),
    ("MODEL.EXTRA.STAGE4.BLOCK", Slot::Str),
    ("MODEL.EXTRA.STAGE4.FUSE_METHOD", Slot::Str),
    ("DATASET", Slot::Section),
    ("DATASET.ROOT", Slot::Str),
    ("DATASET.DATASET", Slot::Str),
    ("DATASET.TRAINSET", Slot::Str),
    ("DATASET.TESTSET", Slot::Str),
    ("DATASET.FLIP", Slot::Bool),
    ("DATASET.SCALE_FACTOR", Slot::Float),
    ("DATASET.ROT_FACTOR", Slot::Int),
    ("TRAIN", Slot::Section),
    ("TRAIN.LR_FACTOR", Slot::Float),
    ("TRAIN.LR_STEP", Slot::IntList),
    ("TRAIN.LR", Slot::Float),
    ("TRAIN.OPTIMIZER", Slot::Str),
    ("TRAIN.MOMENTUM", Slot::Float),
    ("TRAIN.WD", Slot::Float),
    ("TRAIN.NESTEROV", Slot::Bool),
    ("TRAIN.BEGIN_EPOCH", Slot::Int),
    ("TRAIN.END_EPOCH", Slot::Int),
    ("TRAIN.RESUME", Slot::Bool),
    ("TRAIN.CHECKPOINT", Slot::Str),
    ("TRAIN.BATCH_SIZE_PER_GPU", Slot::Int),
    ("TRAIN.SHUFFLE", Slot::Bool),
    ("TEST", Slot::Section),
    ("TEST.BATCH_SIZE_PER_GPU", Slot::Int),
];

fn slot_of(path: &str) -> Option<Slot> {
    SCHEMA.iter().find(|(key, _)| *key == path).map(|(_, slot)| *slot)
}

/// The full dotted paths of every leaf key of the reference schema, in `defaults.py` order.
pub fn schema_keys() -> Vec<&'static str> {
    SCHEMA.iter().filter(|(_, slot)| *slot != Slot::Section).map(|(key, _)| *key).collect()
}

/// A value after yacs decoding and type checking, ready to store.
enum Typed {
    Str(String),
    Int(i64),
    Float(f64),
    Bool(bool),
    Ints(Vec<i64>),
    Strs(Vec<String>),
}

/// Where errors point: the file name and, when known, the line.
struct Place<'a> {
    source: &'a str,
}

impl Place<'_> {
    fn at(&self, line: u64) -> String {
        if line > 0 {
            format!("{}:{}", self.source, line)
        } else {
            self.source.to_owned()
        }
    }
}

fn short_repr(value: &PyVal) -> String {
    let text = match value {
        PyVal::None => "None".to_owned(),
        PyVal::Bool(b) => if *b { "True" } else { "False" }.to_owned(),
        PyVal::Int(Some(v)) => v.to_string(),
        PyVal::Int(None) => "<int beyond 64 bits>".to_owned(),
        PyVal::Float(v) => format!("{v:?}"),
        PyVal::Str(s) => format!("'{s}'"),
        PyVal::List(items) => format!("[{}]", items.iter().map(short_repr).collect::<Vec<_>>().join(", ")),
        PyVal::Tuple(items) => format!("({})", items.iter().map(short_repr).collect::<Vec<_>>().join(", ")),
        PyVal::Other(name) => format!("<{name}>"),
    };
    let text = text.replace(['\n', '\r'], " ");
    if text.chars().count() > 60 {
        format!("{}...", text.chars().take(57).collect::<String>())
    } else {
        text
    }
}

/// YAML node → Python value the way PyYAML + yacs produce it (literal_eval on top-level strings).
fn decode_top(node: &Node) -> PyVal {
    match node {
        Node::Scalar(Scalar::Str(s)) => literal_eval(s).unwrap_or_else(|| PyVal::Str(s.clone())),
        other => decode_inner(other),
    }
}

/// Elements inside a YAML list are not literal_eval'ed by yacs.
fn decode_inner(node: &Node) -> PyVal {
    match node {
        Node::Scalar(Scalar::Null) => PyVal::None,
        Node::Scalar(Scalar::Bool(b)) => PyVal::Bool(*b),
        Node::Scalar(Scalar::Int(v)) => PyVal::Int(*v),
        Node::Scalar(Scalar::Float(v)) => PyVal::Float(*v),
        Node::Scalar(Scalar::Str(s)) => PyVal::Str(s.clone()),
        Node::Seq(items) => PyVal::List(items.iter().map(|item| decode_inner(&item.value)).collect()),
        Node::Map(_) => PyVal::Other("dict"),
    }
}

fn yaml_type_name(node: &Node) -> &'static str {
    match node {
        Node::Scalar(Scalar::Null) => "null",
        Node::Scalar(Scalar::Bool(_)) => "bool",
        Node::Scalar(Scalar::Int(_)) => "int",
        Node::Scalar(Scalar::Float(_)) => "float",
        Node::Scalar(Scalar::Str(_)) => "str",
        Node::Seq(_) => "list",
        Node::Map(_) => "mapping",
    }
}

fn type_check(path: &str, slot: Slot, node: &Node, line: u64, place: &Place) -> Result<Typed> {
    let at = place.at(line);
    if let Node::Map(_) = node {
        bail!("{at}: config key {path}: expected {}, found a mapping", slot.describe());
    }
    let value = decode_top(node);
    if value == PyVal::None {
        bail!("{at}: config key {path}: expected {}, found null (hrk needs a value here)", slot.describe());
    }
    let mismatch = |value: &PyVal| {
        let hint = if slot == Slot::Float && matches!(value, PyVal::Int(_)) {
            "; yacs does not turn an int into a float: write it with a decimal point"
        } else {
            ""
        };
        anyhow!(
            "{at}: config key {path}: type mismatch: expected {}, found {} ({}){hint}",
            slot.describe(),
            value.type_name(),
            short_repr(value)
        )
    };
    let int_value = |value: &PyVal, what: &str| -> Result<i64> {
        match value {
            PyVal::Int(Some(v)) => Ok(*v),
            PyVal::Int(None) => bail!("{at}: config key {path}{what}: integer out of range"),
            other => bail!(
                "{at}: config key {path}{what}: expected int, found {} ({})",
                other.type_name(),
                short_repr(other)
            ),
        }
    };
    match slot {
        Slot::Section => bail!("{at}: config key {path}: a section cannot take a value"),
        Slot::Str => match value {
            PyVal::Str(s) => Ok(Typed::Str(s)),
            other => Err(mismatch(&other)),
        },
        Slot::Int => match value {
            PyVal::Int(_) => Ok(Typed::Int(int_value(&value, "")?)),
            other => Err(mismatch(&other)),
        },
        Slot::Float => match value {
            PyVal::Float(v) => Ok(Typed::Float(v)),
            other => Err(mismatch(&other)),
        },
        Slot::Bool => match value {
            PyVal::Bool(b) => Ok(Typed::Bool(b)),
            other => Err(mismatch(&other)),
        },
        Slot::IntList | Slot::IntTuple | Slot::StrList => {
            // yacs casts list <-> tuple; it does not look inside, hrk does.
            let items = match value {
                PyVal::List(items) | PyVal::Tuple(items) => items,
                other => return Err(mismatch(&other)),
            };
            if slot == Slot::StrList {
                let mut out = Vec::with_capacity(items.len());
                for (i, item) in items.iter().enumerate() {
                    match item {
                        PyVal::Str(s) => out.push(s.clone()),
                        other => bail!(
                            "{at}: config key {path}[{i}]: expected str, found {} ({})",
                            other.type_name(),
                            short_repr(other)
                        ),
                    }
                }
                return Ok(Typed::Strs(out));
            }
            let mut out = Vec::with_capacity(items.len());
            for (i, item) in items.iter().enumerate() {
                out.push(int_value(item, &format!("[{i}]"))?);
            }
            Ok(Typed::Ints(out))
        }
    }
}

fn to_count(path: &str, value: i64, at: &str) -> Result<usize> {
    usize::try_from(value).map_err(|_| anyhow!("{at}: config key {path}: must not be negative, found {value}"))
}

fn to_counts(path: &str, values: &[i64], at: &str) -> Result<Vec<usize>> {
    values
        .iter()
        .enumerate()
        .map(|(i, v)| usize::try_from(*v).map_err(|_| anyhow!("{at}: config key {path}[{i}]: must not be negative, found {v}")))
        .collect()
}

fn stage_mut<'a>(cfg: &'a mut Config, name: &str) -> Option<&'a mut StageConfig> {
    match name {
        "STAGE2" => Some(&mut cfg.model.extra.stage2),
        "STAGE3" => Some(&mut cfg.model.extra.stage3),
        "STAGE4" => Some(&mut cfg.model.extra.stage4),
        _ => None,
    }
}

/// Stores a checked value under its key path.
fn assign(cfg: &mut Config, path: &str, value: Typed, at: &str) -> Result<()> {
    let wrong = || anyhow!("{at}: config key {path}: internal schema mismatch");
    macro_rules! take {
        ($variant:ident) => {
            match value {
                Typed::$variant(v) => v,
                _ => return Err(wrong()),
            }
        };
    }
    let pair = |values: Vec<i64>| -> Result<[usize; 2]> {
        let counts = to_counts(path, &values, at)?;
        match counts.as_slice() {
            [a, b] => Ok([*a, *b]),
            _ => bail!("{at}: config key {path}: expected 2 ints, found {}", values.len()),
        }
    };
    if let Some(stage_path) = path.strip_prefix("MODEL.EXTRA.").filter(|p| p.starts_with("STAGE")) {
        let (stage_name, key) = stage_path.split_once('.').ok_or_else(wrong)?;
        let stage = stage_mut(cfg, stage_name).ok_or_else(wrong)?;
        match key {
            "NUM_MODULES" => stage.num_modules = to_count(path, take!(Int), at)?,
            "NUM_BRANCHES" => stage.num_branches = to_count(path, take!(Int), at)?,
            "NUM_BLOCKS" => stage.num_blocks = to_counts(path, &take!(Ints), at)?,
            "NUM_CHANNELS" => stage.num_channels = to_counts(path, &take!(Ints), at)?,
            "BLOCK" => {
                let text = take!(Str);
                stage.block = match text.as_str() {
                    "BASIC" => BlockKind::Basic,
                    "BOTTLENECK" => BlockKind::Bottleneck,
                    _ => bail!("{at}: config key {path}: must be BASIC or BOTTLENECK, found '{text}'"),
                }
            }
            "FUSE_METHOD" => stage.fuse_method = take!(Str),
            _ => return Err(wrong()),
        }
        return Ok(());
    }
    match path {
        "OUTPUT_DIR" => cfg.output_dir = take!(Str),
        "LOG_DIR" => cfg.log_dir = take!(Str),
        "GPUS" => cfg.gpus = to_counts(path, &take!(Ints), at)?,
        "WORKERS" => cfg.workers = to_count(path, take!(Int), at)?,
        "PRINT_FREQ" => cfg.print_freq = to_count(path, take!(Int), at)?,
        "AUTO_RESUME" => cfg.auto_resume = take!(Bool),
        "PIN_MEMORY" => cfg.pin_memory = take!(Bool),
        "CUDNN.BENCHMARK" => cfg.cudnn.benchmark = take!(Bool),
        "CUDNN.DETERMINISTIC" => cfg.cudnn.deterministic = take!(Bool),
        "CUDNN.ENABLED" => cfg.cudnn.enabled = take!(Bool),
        "MODEL.NAME" => cfg.model.name = take!(Str),
        "MODEL.INIT_WEIGHTS" => cfg.model.init_weights = take!(Bool),
        "MODEL.PRETRAINED" => cfg.model.pretrained = take!(Str),
        "MODEL.NUM_JOINTS" => cfg.model.num_joints = to_count(path, take!(Int), at)?,
        "MODEL.TARGET_TYPE" => cfg.model.target_type = take!(Str),
        "MODEL.IMAGE_SIZE" => cfg.model.image_size = pair(take!(Ints))?,
        "MODEL.HEATMAP_SIZE" => cfg.model.heatmap_size = pair(take!(Ints))?,
        "MODEL.SIGMA" => cfg.model.sigma = take!(Float),
        "MODEL.EXTRA.PRETRAINED_LAYERS" => cfg.model.extra.pretrained_layers = take!(Strs),
        "MODEL.EXTRA.STEM_INPLANES" => cfg.model.extra.stem_inplanes = take!(Int),
        "MODEL.EXTRA.FINAL_CONV_KERNEL" => cfg.model.extra.final_conv_kernel = to_count(path, take!(Int), at)?,
        "MODEL.EXTRA.WITH_HEAD" => cfg.model.extra.with_head = take!(Bool),
        "DATASET.ROOT" => cfg.dataset.root = take!(Str),
        "DATASET.DATASET" => cfg.dataset.dataset = take!(Str),
        "DATASET.TRAINSET" => cfg.dataset.trainset = take!(Str),
        "DATASET.TESTSET" => cfg.dataset.testset = take!(Str),
        "DATASET.FLIP" => cfg.dataset.flip = take!(Bool),
        "DATASET.SCALE_FACTOR" => cfg.dataset.scale_factor = take!(Float),
        "DATASET.ROT_FACTOR" => cfg.dataset.rot_factor = take!(Int),
        "TRAIN.LR_FACTOR" => cfg.train.lr_factor = take!(Float),
        "TRAIN.LR_STEP" => cfg.train.lr_step = to_counts(path, &take!(Ints), at)?,
        "TRAIN.LR" => cfg.train.lr = take!(Float),
        "TRAIN.OPTIMIZER" => {
            let text = take!(Str);
            cfg.train.optimizer = match text.as_str() {
                "sgd" => OptimizerKind::Sgd,
                "adam" => OptimizerKind::Adam,
                "rmsprop" => bail!(
                    "{at}: config key {path}: 'rmsprop' is not supported (the reference crashes on it: TRAIN.RMSPROP_ALPHA/CENTERED do not exist); use 'adam' or 'sgd'"
                ),
                _ => bail!("{at}: config key {path}: unknown optimizer '{text}' (the reference knows 'adam' and 'sgd', lower case)"),
            }
        }
        "TRAIN.MOMENTUM" => cfg.train.momentum = take!(Float),
        "TRAIN.WD" => cfg.train.wd = take!(Float),
        "TRAIN.NESTEROV" => cfg.train.nesterov = take!(Bool),
        "TRAIN.BEGIN_EPOCH" => cfg.train.begin_epoch = to_count(path, take!(Int), at)?,
        "TRAIN.END_EPOCH" => cfg.train.end_epoch = to_count(path, take!(Int), at)?,
        "TRAIN.RESUME" => cfg.train.resume = take!(Bool),
        "TRAIN.CHECKPOINT" => cfg.train.checkpoint = take!(Str),
        "TRAIN.BATCH_SIZE_PER_GPU" => cfg.train.batch_size_per_gpu = to_count(path, take!(Int), at)?,
        "TRAIN.SHUFFLE" => cfg.train.shuffle = take!(Bool),
        "TEST.BATCH_SIZE_PER_GPU" => cfg.test.batch_size_per_gpu = to_count(path, take!(Int), at)?,
        _ => return Err(wrong()),
    }
    Ok(())
}

/// Edit distance, for "did you mean" hints on misspelt keys.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = (prev + usize::from(ca != *cb)).min(row[j] + 1).min(cur + 1);
            prev = cur;
        }
    }
    row[b.len()]
}

fn suggestion(prefix: &str, key: &str) -> String {
    let siblings = SCHEMA.iter().filter_map(|(path, _)| {
        let rest = if prefix.is_empty() { Some(*path) } else { path.strip_prefix(prefix).and_then(|r| r.strip_prefix('.')) };
        rest.filter(|r| !r.contains('.'))
    });
    let upper = key.to_ascii_uppercase();
    let best = siblings.map(|s| (edit_distance(&upper, s), s)).min();
    match best {
        Some((d, s)) if d <= 3 && d < key.len() => format!("; did you mean {}?", if prefix.is_empty() { s.to_owned() } else { format!("{prefix}.{s}") }),
        _ => String::new(),
    }
}

/// yacs `_merge_a_into_b` for one mapping: `prefix` is the dotted path of the mapping.
fn merge_map(
    cfg: &mut Config,
    prefix: &str,
    entries: &[(yaml_tree::MapKey, Spanned<Node>)],
    place: &Place,
    lines: &mut HashMap<String, u64>,
) -> Result<()> {
    for (key, value) in entries {
        let path = if prefix.is_empty() { key.text.clone() } else { format!("{prefix}.{}", key.text) };
        let Some(slot) = slot_of(&path) else {
            bail!(
                "{}: unknown config key {} (not in the reference defaults{})",
                place.at(key.line),
                path.replace(['\n', '\r'], " "),
                suggestion(prefix, &key.text)
            );
        };
        let line = if value.referenced.line() > 0 { value.referenced.line() } else { key.line };
        lines.insert(path.clone(), line);
        if slot == Slot::Section {
            match &value.value {
                Node::Map(inner) => merge_map(cfg, &path, inner, place, lines)?,
                other => bail!(
                    "{}: config key {path}: expected a mapping of keys, found {}",
                    place.at(line),
                    yaml_type_name(other)
                ),
            }
            continue;
        }
        let typed = type_check(&path, slot, &value.value, line, place)?;
        assign(cfg, &path, typed, &place.at(line))?;
    }
    Ok(())
}

impl Config {
    /// Parses YAML text over the reference defaults; `source_name` names the text in errors.
    pub fn from_yaml_str(text: &str, source_name: &str) -> Result<Config> {
        let place = Place { source: source_name };
        let mut cfg = Config::default();
        let mut lines = HashMap::new();
        let root = match yaml_tree::parse(text) {
            Ok(root) => root,
            Err(e) => {
                let at = if e.line > 0 { format!("{source_name}:{}:{}", e.line, e.column) } else { source_name.to_owned() };
                bail!("{at}: YAML syntax error: {}", e.message);
            }
        };
        match root {
            None => {}
            Some(yaml_tree::Located { node: Node::Map(entries), .. }) => merge_map(&mut cfg, "", &entries, &place, &mut lines)?,
            Some(other) => bail!(
                "{}: the top level must be a mapping of config keys, found {}",
                place.at(other.line),
                yaml_type_name(&other.node)
            ),
        }
        cfg.validate_with(&place, &lines)?;
        Ok(cfg)
    }

    /// Checks the cross-key and range rules; `source_name` names the config in errors.
    pub fn validate(&self, source_name: &str) -> Result<()> {
        self.validate_with(&Place { source: source_name }, &HashMap::new())
    }

    fn validate_with(&self, place: &Place, lines: &HashMap<String, u64>) -> Result<()> {
        let at = |key: &str| -> String {
            // A key not in the file has the default; point at its section, or just the file.
            let mut probe = key;
            loop {
                if let Some(line) = lines.get(probe) {
                    return place.at(*line);
                }
                match probe.rfind('.') {
                    Some(cut) => probe = &probe[..cut],
                    None => return place.at(0),
                }
            }
        };
        let positive = |key: &str, value: usize| -> Result<()> {
            if value == 0 {
                bail!("{}: config key {key}: must be at least 1, found 0", at(key));
            }
            Ok(())
        };
        if self.gpus.is_empty() {
            bail!("{}: config key GPUS: needs at least one entry (batch size = BATCH_SIZE_PER_GPU x len(GPUS))", at("GPUS"));
        }
        positive("PRINT_FREQ", self.print_freq)?;
        positive("MODEL.NUM_JOINTS", self.model.num_joints)?;
        for (key, size) in [("MODEL.IMAGE_SIZE", self.model.image_size), ("MODEL.HEATMAP_SIZE", self.model.heatmap_size)] {
            if size.contains(&0) {
                bail!("{}: config key {key}: needs 2 positive ints, found [{}, {}]", at(key), size[0], size[1]);
            }
        }
        if !(self.model.sigma.is_finite() && self.model.sigma > 0.0) {
            bail!("{}: config key MODEL.SIGMA: must be a positive number, found {:?}", at("MODEL.SIGMA"), self.model.sigma);
        }
        let kernel = self.model.extra.final_conv_kernel;
        if kernel != 1 && kernel != 3 {
            bail!(
                "{}: config key MODEL.EXTRA.FINAL_CONV_KERNEL: must be 1 or 3 (the head pads 1 only for 3), found {kernel}",
                at("MODEL.EXTRA.FINAL_CONV_KERNEL")
            );
        }
        for (name, stage, branches) in [
            ("STAGE2", &self.model.extra.stage2, 2usize),
            ("STAGE3", &self.model.extra.stage3, 3),
            ("STAGE4", &self.model.extra.stage4, 4),
        ] {
            let key = |k: &str| format!("MODEL.EXTRA.{name}.{k}");
            positive(&key("NUM_MODULES"), stage.num_modules)?;
            if stage.num_branches != branches {
                bail!(
                    "{}: config key {}: HRNetV2 {name} has {branches} branches, found {}",
                    at(&key("NUM_BRANCHES")),
                    key("NUM_BRANCHES"),
                    stage.num_branches
                );
            }
            for (list_key, list) in [("NUM_BLOCKS", &stage.num_blocks), ("NUM_CHANNELS", &stage.num_channels)] {
                let full = key(list_key);
                if list.len() != stage.num_branches {
                    bail!(
                        "{}: config key {full}: has {} entries but NUM_BRANCHES is {}",
                        at(&full),
                        list.len(),
                        stage.num_branches
                    );
                }
                if let Some(i) = list.iter().position(|v| *v == 0) {
                    bail!("{}: config key {full}[{i}]: must be at least 1, found 0", at(&full));
                }
            }
        }
        if dataset_kind_exact(&self.dataset.dataset).is_none() {
            bail!(
                "{}: config key DATASET.DATASET: unknown dataset '{}' (one of AFLW, COFW, 300W, WFLW)",
                at("DATASET.DATASET"),
                self.dataset.dataset
            );
        }
        let scale = self.dataset.scale_factor;
        if !(scale.is_finite() && (0.0..1.0).contains(&scale)) {
            bail!("{}: config key DATASET.SCALE_FACTOR: must be in [0, 1), found {scale:?}", at("DATASET.SCALE_FACTOR"));
        }
        if !(0..=360).contains(&self.dataset.rot_factor) {
            bail!(
                "{}: config key DATASET.ROT_FACTOR: must be between 0 and 360 degrees, found {}",
                at("DATASET.ROT_FACTOR"),
                self.dataset.rot_factor
            );
        }
        if !(self.train.lr.is_finite() && self.train.lr > 0.0) {
            bail!("{}: config key TRAIN.LR: must be a positive number, found {:?}", at("TRAIN.LR"), self.train.lr);
        }
        for (key, value) in [("TRAIN.LR_FACTOR", self.train.lr_factor), ("TRAIN.MOMENTUM", self.train.momentum), ("TRAIN.WD", self.train.wd)] {
            if !(value.is_finite() && value >= 0.0) {
                bail!("{}: config key {key}: must be a non-negative number, found {value:?}", at(key));
            }
        }
        if self.train.optimizer == OptimizerKind::Sgd && self.train.nesterov && self.train.momentum <= 0.0 {
            bail!(
                "{}: config key TRAIN.NESTEROV: SGD with Nesterov needs TRAIN.MOMENTUM > 0 (PyTorch refuses it too)",
                at("TRAIN.NESTEROV")
            );
        }
        if self.train.end_epoch < self.train.begin_epoch {
            bail!(
                "{}: config key TRAIN.END_EPOCH: {} is before TRAIN.BEGIN_EPOCH {}",
                at("TRAIN.END_EPOCH"),
                self.train.end_epoch,
                self.train.begin_epoch
            );
        }
        positive("TRAIN.BATCH_SIZE_PER_GPU", self.train.batch_size_per_gpu)?;
        positive("TEST.BATCH_SIZE_PER_GPU", self.test.batch_size_per_gpu)?;
        // The network must be buildable: absurd widths/depths are refused here, with the file.
        if let Err(e) = crate::model::HrnetSpec::from_config(self) {
            bail!("{}: config key MODEL.EXTRA: {e:#}", at("MODEL.EXTRA"));
        }
        Ok(())
    }

    /// Number of GPUS entries: the reference batch is BATCH_SIZE_PER_GPU × this.
    pub fn gpus_count(&self) -> usize {
        self.gpus.len()
    }

    /// Training batch size as the reference computes it (per-GPU size × len(GPUS)).
    pub fn train_batch_size(&self) -> usize {
        self.train.batch_size_per_gpu.saturating_mul(self.gpus_count())
    }

    /// Test/validation batch size (per-GPU size × len(GPUS)).
    pub fn test_batch_size(&self) -> usize {
        self.test.batch_size_per_gpu.saturating_mul(self.gpus_count())
    }

    /// `DATASET.DATASET` as an enum (validated configs always have one).
    pub fn dataset_kind(&self) -> Option<DatasetKind> {
        dataset_kind_exact(&self.dataset.dataset)
    }

    /// `OUTPUT_DIR/<DATASET.DATASET>/<cfg name>`, the reference output folder (`create_logger`).
    pub fn output_dir_for(&self, cfg_path: &Path) -> PathBuf {
        let mut dir = PathBuf::from(&self.output_dir);
        dir.push(&self.dataset.dataset);
        let name = config_name(cfg_path);
        if !name.is_empty() {
            dir.push(name);
        }
        dir
    }

    /// `LOG_DIR/<DATASET>/<MODEL.NAME>/<cfg name>_<time>`, the reference TensorBoard folder.
    pub fn tensorboard_dir_for(&self, cfg_path: &Path, time_str: &str) -> PathBuf {
        let mut dir = PathBuf::from(&self.log_dir);
        dir.push(&self.dataset.dataset);
        dir.push(&self.model.name);
        dir.push(format!("{}_{time_str}", config_name(cfg_path)));
        dir
    }

    /// The config as yacs-compatible YAML (every key, in `defaults.py` order); loading it back
    /// gives the same Config. Meant for the log, like the reference's `pprint(config)`.
    pub fn to_yaml(&self) -> String {
        let mut out = String::new();
        for (path, slot) in SCHEMA {
            let depth = path.matches('.').count();
            let name = path.rsplit('.').next().unwrap_or(path);
            let indent = "  ".repeat(depth);
            if *slot == Slot::Section {
                let _ = writeln!(out, "{indent}{name}:");
                continue;
            }
            let _ = writeln!(out, "{indent}{name}: {}", self.value_text(path));
        }
        out
    }

    fn value_text(&self, path: &str) -> String {
        fn quote(s: &str) -> String {
            // Escaped double quotes keep any character; yacs' literal_eval then sees plain text.
            let mut out = String::from("\"");
            for c in s.chars() {
                match c {
                    '"' => out.push_str("\\\""),
                    '\\' => out.push_str("\\\\"),
                    '\n' => out.push_str("\\n"),
                    '\r' => out.push_str("\\r"),
                    '\t' => out.push_str("\\t"),
                    c if c.is_control() => {
                        let _ = write!(out, "\\u{:04x}", c as u32);
                    }
                    c => out.push(c),
                }
            }
            out.push('"');
            // A string that literal_eval would turn into something else must be wrapped once
            // more in Python quotes, e.g. '300' or '(0,)'.
            if literal_eval(s).is_some() {
                let python = format!("'{}'", s.replace('\\', "\\\\").replace('\'', "\\'"));
                return quote_plain(&python);
            }
            out
        }
        fn quote_plain(s: &str) -> String {
            let mut out = String::from("\"");
            for c in s.chars() {
                match c {
                    '"' => out.push_str("\\\""),
                    '\\' => out.push_str("\\\\"),
                    c => out.push(c),
                }
            }
            out.push('"');
            out
        }
        fn float(v: f64) -> String {
            if v.is_nan() {
                ".nan".to_owned()
            } else if v.is_infinite() {
                if v > 0.0 { ".inf" } else { "-.inf" }.to_owned()
            } else {
                format!("{v:?}")
            }
        }
        fn py_bool(b: bool) -> String {
            if b { "true" } else { "false" }.to_owned()
        }
        fn ints<T: ToString>(v: &[T]) -> String {
            format!("[{}]", v.iter().map(|x| x.to_string()).collect::<Vec<_>>().join(", "))
        }
        let stage = |name: &str| match name {
            "STAGE2" => &self.model.extra.stage2,
            "STAGE3" => &self.model.extra.stage3,
            _ => &self.model.extra.stage4,
        };
        if let Some(rest) = path.strip_prefix("MODEL.EXTRA.STAGE") {
            let (number, key) = rest.split_once('.').unwrap_or((rest, ""));
            let s = stage(&format!("STAGE{number}"));
            return match key {
                "NUM_MODULES" => s.num_modules.to_string(),
                "NUM_BRANCHES" => s.num_branches.to_string(),
                "NUM_BLOCKS" => ints(&s.num_blocks),
                "NUM_CHANNELS" => ints(&s.num_channels),
                "BLOCK" => s.block.as_str().to_owned(),
                _ => quote(&s.fuse_method),
            };
        }
        match path {
            "OUTPUT_DIR" => quote(&self.output_dir),
            "LOG_DIR" => quote(&self.log_dir),
            "GPUS" => format!("[{}]", self.gpus.iter().map(|g| g.to_string()).collect::<Vec<_>>().join(", ")),
            "WORKERS" => self.workers.to_string(),
            "PRINT_FREQ" => self.print_freq.to_string(),
            "AUTO_RESUME" => py_bool(self.auto_resume),
            "PIN_MEMORY" => py_bool(self.pin_memory),
            "CUDNN.BENCHMARK" => py_bool(self.cudnn.benchmark),
            "CUDNN.DETERMINISTIC" => py_bool(self.cudnn.deterministic),
            "CUDNN.ENABLED" => py_bool(self.cudnn.enabled),
            "MODEL.NAME" => quote(&self.model.name),
            "MODEL.INIT_WEIGHTS" => py_bool(self.model.init_weights),
            "MODEL.PRETRAINED" => quote(&self.model.pretrained),
            "MODEL.NUM_JOINTS" => self.model.num_joints.to_string(),
            "MODEL.TARGET_TYPE" => quote(&self.model.target_type),
            "MODEL.IMAGE_SIZE" => ints(&self.model.image_size),
            "MODEL.HEATMAP_SIZE" => ints(&self.model.heatmap_size),
            "MODEL.SIGMA" => float(self.model.sigma),
            "MODEL.EXTRA.PRETRAINED_LAYERS" => {
                format!("[{}]", self.model.extra.pretrained_layers.iter().map(|s| quote_plain(s)).collect::<Vec<_>>().join(", "))
            }
            "MODEL.EXTRA.STEM_INPLANES" => self.model.extra.stem_inplanes.to_string(),
            "MODEL.EXTRA.FINAL_CONV_KERNEL" => self.model.extra.final_conv_kernel.to_string(),
            "MODEL.EXTRA.WITH_HEAD" => py_bool(self.model.extra.with_head),
            "DATASET.ROOT" => quote(&self.dataset.root),
            "DATASET.DATASET" => quote(&self.dataset.dataset),
            "DATASET.TRAINSET" => quote(&self.dataset.trainset),
            "DATASET.TESTSET" => quote(&self.dataset.testset),
            "DATASET.FLIP" => py_bool(self.dataset.flip),
            "DATASET.SCALE_FACTOR" => float(self.dataset.scale_factor),
            "DATASET.ROT_FACTOR" => self.dataset.rot_factor.to_string(),
            "TRAIN.LR_FACTOR" => float(self.train.lr_factor),
            "TRAIN.LR_STEP" => ints(&self.train.lr_step),
            "TRAIN.LR" => float(self.train.lr),
            "TRAIN.OPTIMIZER" => self.train.optimizer.as_str().to_owned(),
            "TRAIN.MOMENTUM" => float(self.train.momentum),
            "TRAIN.WD" => float(self.train.wd),
            "TRAIN.NESTEROV" => py_bool(self.train.nesterov),
            "TRAIN.BEGIN_EPOCH" => self.train.begin_epoch.to_string(),
            "TRAIN.END_EPOCH" => self.train.end_epoch.to_string(),
            "TRAIN.RESUME" => py_bool(self.train.resume),
            "TRAIN.CHECKPOINT" => quote(&self.train.checkpoint),
            "TRAIN.BATCH_SIZE_PER_GPU" => self.train.batch_size_per_gpu.to_string(),
            "TRAIN.SHUFFLE" => py_bool(self.train.shuffle),
            _ => self.test.batch_size_per_gpu.to_string(),
        }
    }
}

/// The reference's cfg name: the file's base name up to the first '.'.
pub fn config_name(cfg_path: &Path) -> String {
    let base = cfg_path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    base.split('.').next().unwrap_or_default().to_owned()
}

/// Reads and parses a config file (yacs `merge_from_file` over the defaults, then validation).
pub fn load_config(path: &Path) -> Result<Config> {
    let shown = path.display().to_string();
    let bytes = std::fs::read(path).map_err(|e| anyhow!("{shown}: cannot read config file: {e}"))?;
    let text = String::from_utf8(bytes).map_err(|e| {
        anyhow!("{shown}: config file is not UTF-8 (invalid byte at offset {})", e.utf8_error().valid_up_to())
    })?;
    Config::from_yaml_str(&text, &shown)
}
