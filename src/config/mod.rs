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
//!
//! Each section is one table of `"KEY" field: Type = default` entries (`config_section!`, in
//! `keys.rs`), from which the struct, its defaults, the schema, the assignment and the dump all
//! come; the range and cross-key rules are in `validate`. This module knows nothing of the model.

mod keys;
mod py_literal;
mod yaml_tree;

use anyhow::{anyhow, bail, Result};
use keys::{config_section, join_key, schema_row, Entry, Slot, Typed};
use py_literal::{literal_eval, PyVal};
use serde_saphyr::Spanned;
use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
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

config_section! {
    #[derive(Debug, Clone, PartialEq)]
    pub struct CudnnConfig {
        "BENCHMARK" benchmark: bool = true,
        /// Has no effect in the reference (set through a misspelt attribute).
        "DETERMINISTIC" deterministic: bool = false,
        "ENABLED" enabled: bool = true,
    }
}

config_section! {
    /// One of `MODEL.EXTRA.STAGE2/3/4`; the defaults differ per stage (see `ModelExtra`).
    #[derive(Debug, Clone, PartialEq)]
    pub struct StageConfig defaults from parent {
        "NUM_MODULES" num_modules: usize,
        "NUM_BRANCHES" num_branches: usize,
        "NUM_BLOCKS" num_blocks: Vec<usize>,
        "NUM_CHANNELS" num_channels: Vec<usize>,
        "BLOCK" block: BlockKind,
        /// Read but never used by the reference: fusion is always a sum.
        "FUSE_METHOD" fuse_method: String,
    }
}

/// The reference default of a stage: one module of 4 BASIC blocks per branch, fused by sum.
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

config_section! {
    #[derive(Debug, Clone, PartialEq)]
    pub struct ModelExtra {
        /// Unused by the reference.
        "PRETRAINED_LAYERS" pretrained_layers: Vec<String> = vec!["*".to_owned()],
        /// Unused by the reference (the stem is hard-coded to 64 channels).
        "STEM_INPLANES" stem_inplanes: i64 = 64,
        /// Kernel of the last head conv: 1 (padding 0) or 3 (padding 1).
        "FINAL_CONV_KERNEL" final_conv_kernel: usize = 1,
        /// Unused by the reference.
        "WITH_HEAD" with_head: bool = true,
        // The reference's quirky defaults: STAGE4 channels [18, 32, 72, 144], one module per stage.
        "STAGE2" stage2: StageConfig = stage(2, &[18, 36]),
        "STAGE3" stage3: StageConfig = stage(3, &[18, 36, 72]),
        "STAGE4" stage4: StageConfig = stage(4, &[18, 32, 72, 144]),
    }
}

config_section! {
    #[derive(Debug, Clone, PartialEq)]
    pub struct ModelConfig {
        /// Only used in the TensorBoard path.
        "NAME" name: String = "hrnet".to_owned(),
        "INIT_WEIGHTS" init_weights: bool = true,
        "PRETRAINED" pretrained: String = String::new(),
        "NUM_JOINTS" num_joints: usize = 17,
        /// 'Gaussian'; anything else gives the Cauchy-like target.
        "TARGET_TYPE" target_type: String = "Gaussian".to_owned(),
        /// As written in the file (the reference comment says width, height).
        "IMAGE_SIZE" image_size: [usize; 2] = [256, 256],
        "HEATMAP_SIZE" heatmap_size: [usize; 2] = [64, 64],
        "SIGMA" sigma: f64 = 1.5,
        "EXTRA" extra: ModelExtra = ModelExtra::default(),
    }
}

config_section! {
    #[derive(Debug, Clone, PartialEq)]
    pub struct DatasetConfig {
        "ROOT" root: String = String::new(),
        /// 'AFLW' | 'COFW' | '300W' | 'WFLW'.
        "DATASET" dataset: String = "AFLW".to_owned(),
        "TRAINSET" trainset: String = String::new(),
        "TESTSET" testset: String = String::new(),
        "FLIP" flip: bool = true,
        "SCALE_FACTOR" scale_factor: f64 = 0.25,
        /// Degrees; an int in the reference schema.
        "ROT_FACTOR" rot_factor: i64 = 30,
        /// hrk extension: mirrored landmark pairs as a flat 0-based list `[a0, b0, a1, b1, ...]`,
        /// swapped in that order after a horizontal flip; empty = the built-in table of the
        /// official layouts (98/68/29/19 points).
        "FLIP_PAIRS" flip_pairs: Vec<usize> = Vec::new(),
        /// hrk extension: the NME normaliser, 0-based: `[a, b]` = distance of landmarks a and b,
        /// or `[a1..ak, b1..bk]` = distance of the means of the two halves; empty = built-in.
        "NORM_INDICES" norm_indices: Vec<usize> = Vec::new(),
    }
}

config_section! {
    #[derive(Debug, Clone, PartialEq)]
    pub struct TrainConfig {
        "LR_FACTOR" lr_factor: f64 = 0.1,
        "LR_STEP" lr_step: Vec<usize> = vec![30, 50],
        "LR" lr: f64 = 0.0001,
        "OPTIMIZER" optimizer: OptimizerKind = OptimizerKind::Adam,
        "MOMENTUM" momentum: f64 = 0.0,
        "WD" wd: f64 = 0.0,
        "NESTEROV" nesterov: bool = false,
        "BEGIN_EPOCH" begin_epoch: usize = 0,
        "END_EPOCH" end_epoch: usize = 60,
        "RESUME" resume: bool = true,
        /// Unused by the reference.
        "CHECKPOINT" checkpoint: String = String::new(),
        "BATCH_SIZE_PER_GPU" batch_size_per_gpu: usize = 16,
        "SHUFFLE" shuffle: bool = true,
    }
}

config_section! {
    #[derive(Debug, Clone, PartialEq)]
    pub struct TestConfig {
        "BATCH_SIZE_PER_GPU" batch_size_per_gpu: usize = 32,
        /// hrk extension: average with the flipped crop's flipped-back heatmaps.
        "FLIP_TEST" flip_test: bool = false,
        /// hrk extension: shift the flipped-back heatmaps one column right (HRNet pose code).
        "SHIFT_HEATMAP" shift_heatmap: bool = false,
        /// hrk extension: sub-pixel refinement, 'quarter' (the reference) or 'dark'.
        "DECODE" decode: String = "quarter".to_owned(),
    }
}

config_section! {
    /// The whole configuration; `Config::default()` is the reference `defaults.py` (quirks
    /// included: GPUS (0,1,2,4), and stages that are not a usable model: the YAMLs override them).
    /// Keys are in `defaults.py` order.
    #[derive(Debug, Clone, PartialEq)]
    pub struct Config {
        "OUTPUT_DIR" output_dir: String = "output".to_owned(),
        "LOG_DIR" log_dir: String = "log".to_owned(),
        /// A tuple in the reference; only its length matters to hrk (batch = per-GPU × len).
        "GPUS" gpus: Vec<usize> as IntTuple = vec![0, 1, 2, 4],
        "WORKERS" workers: usize = 16,
        "PRINT_FREQ" print_freq: usize = 20,
        /// Unused by the reference.
        "AUTO_RESUME" auto_resume: bool = false,
        "PIN_MEMORY" pin_memory: bool = true,
        "CUDNN" cudnn: CudnnConfig = CudnnConfig::default(),
        "MODEL" model: ModelConfig = ModelConfig::default(),
        "DATASET" dataset: DatasetConfig = DatasetConfig::default(),
        "TRAIN" train: TrainConfig = TrainConfig::default(),
        "TEST" test: TestConfig = TestConfig::default(),
    }
    not keys: {
        /// Where each key was read from, for errors found after loading.
        origin: KeyOrigins = KeyOrigins::default(),
    }
}

fn slot_of(path: &str) -> Option<Slot> {
    schema().iter().find(|(key, _)| key == path).map(|(_, slot)| *slot)
}

/// The full dotted paths of every leaf key of the reference schema, in `defaults.py` order.
pub fn schema_keys() -> Vec<&'static str> {
    schema().iter().filter(|(_, slot)| *slot != Slot::Section).map(|(key, _)| key.as_str()).collect()
}

/// Every key of the reference defaults (sections included), in `defaults.py` order.
fn schema() -> &'static [(String, Slot)] {
    static ROWS: OnceLock<Vec<(String, Slot)>> = OnceLock::new();
    ROWS.get_or_init(|| {
        let mut rows = Vec::new();
        Config::schema("", &mut rows);
        rows
    })
}

/// The file a config was read from and the line of each key in it. Not part of the config's value:
/// two configs with the same keys are equal wherever they came from.
#[derive(Debug, Clone, Default)]
pub struct KeyOrigins {
    source: String,
    lines: HashMap<String, u64>,
}

impl PartialEq for KeyOrigins {
    fn eq(&self, _other: &Self) -> bool {
        true
    }
}

impl KeyOrigins {
    /// `file:line` of `key`, or of its closest section in the file (a key not in the file has the
    /// default), or just the file.
    fn place_of(&self, key: &str) -> String {
        let place = Place { source: &self.source };
        let mut probe = key;
        loop {
            if let Some(line) = self.lines.get(probe) {
                return place.at(*line);
            }
            match probe.rfind('.') {
                Some(cut) => probe = &probe[..cut],
                None => return place.at(0),
            }
        }
    }
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
    let siblings = schema().iter().filter_map(|(path, _)| {
        let rest = if prefix.is_empty() {
            Some(path.as_str())
        } else {
            path.strip_prefix(prefix).and_then(|r| r.strip_prefix('.'))
        };
        rest.filter(|r| !r.contains('.'))
    });
    let upper = key.to_ascii_uppercase();
    let best = siblings.map(|s| (edit_distance(&upper, s), s)).min();
    match best {
        Some((d, s)) if d <= 3 && d < key.len() => {
            format!("; did you mean {}?", if prefix.is_empty() { s.to_owned() } else { format!("{prefix}.{s}") })
        }
        _ => String::new(),
    }
}

/// yacs `_merge_a_into_b` for one mapping: `prefix` is the dotted path of the mapping.
fn merge_map(
    cfg: &mut Config, prefix: &str, entries: &[(yaml_tree::MapKey, Spanned<Node>)], place: &Place,
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
        cfg.assign(&path, &path, typed, &place.at(line))?;
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
                let at =
                    if e.line > 0 { format!("{source_name}:{}:{}", e.line, e.column) } else { source_name.to_owned() };
                bail!("{at}: YAML syntax error: {}", e.message);
            }
        };
        match root {
            None => {}
            Some(yaml_tree::Located { node: Node::Map(entries), .. }) => {
                merge_map(&mut cfg, "", &entries, &place, &mut lines)?
            }
            Some(other) => bail!(
                "{}: the top level must be a mapping of config keys, found {}",
                place.at(other.line),
                yaml_type_name(&other.node)
            ),
        }
        cfg.origin = KeyOrigins { source: source_name.to_owned(), lines };
        cfg.validate_with(&cfg.origin)?;
        Ok(cfg)
    }

    /// Reads and checks a config file: `load_config`, with a clear message when the path is not a file.
    pub fn load(path: &Path) -> Result<Config> {
        if !path.is_file() {
            bail!("config file {} not found", path.display());
        }
        load_config(path)
    }

    /// Checks the cross-key and range rules; `source_name` names the config in errors.
    pub fn validate(&self, source_name: &str) -> Result<()> {
        self.validate_with(&KeyOrigins { source: source_name.to_owned(), lines: HashMap::new() })
    }

    /// An error about `key` found after loading (e.g. the network it describes cannot be built),
    /// pointing at the key's line in the config file: `file:line: config key KEY: error`.
    pub fn key_error(&self, key: &str, error: anyhow::Error) -> anyhow::Error {
        if self.origin.source.is_empty() {
            return anyhow!("config key {key}: {error:#}");
        }
        anyhow!("{}: config key {key}: {error:#}", self.origin.place_of(key))
    }

    fn validate_with(&self, origin: &KeyOrigins) -> Result<()> {
        let at = |key: &str| origin.place_of(key);
        let positive = |key: &str, value: usize| -> Result<()> {
            if value == 0 {
                bail!("{}: config key {key}: must be at least 1, found 0", at(key));
            }
            Ok(())
        };
        if self.gpus.is_empty() {
            bail!(
                "{}: config key GPUS: needs at least one entry (batch size = BATCH_SIZE_PER_GPU x len(GPUS))",
                at("GPUS")
            );
        }
        positive("PRINT_FREQ", self.print_freq)?;
        positive("MODEL.NUM_JOINTS", self.model.num_joints)?;
        for (key, size) in
            [("MODEL.IMAGE_SIZE", self.model.image_size), ("MODEL.HEATMAP_SIZE", self.model.heatmap_size)]
        {
            if size.contains(&0) {
                bail!("{}: config key {key}: needs 2 positive ints, found [{}, {}]", at(key), size[0], size[1]);
            }
        }
        if !(self.model.sigma.is_finite() && self.model.sigma > 0.0) {
            bail!(
                "{}: config key MODEL.SIGMA: must be a positive number, found {:?}",
                at("MODEL.SIGMA"),
                self.model.sigma
            );
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
            bail!(
                "{}: config key DATASET.SCALE_FACTOR: must be in [0, 1), found {scale:?}",
                at("DATASET.SCALE_FACTOR")
            );
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
        for (key, value) in [
            ("TRAIN.LR_FACTOR", self.train.lr_factor),
            ("TRAIN.MOMENTUM", self.train.momentum),
            ("TRAIN.WD", self.train.wd),
        ] {
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
        if let Err(e) = self.test.decode.parse::<crate::data::codec::DecodeMode>() {
            bail!("{}: config key TEST.DECODE: {e}", at("TEST.DECODE"));
        }
        let joints = self.model.num_joints;
        let pairs = &self.dataset.flip_pairs;
        if !pairs.len().is_multiple_of(2) {
            bail!(
                "{}: config key DATASET.FLIP_PAIRS: needs an even number of indices (pairs), found {}",
                at("DATASET.FLIP_PAIRS"),
                pairs.len()
            );
        }
        // A set, not a joints-long table: NUM_JOINTS is not bounded yet at this point.
        let mut seen = std::collections::HashSet::new();
        for (i, &k) in pairs.iter().enumerate() {
            if k >= joints {
                bail!(
                    "{}: config key DATASET.FLIP_PAIRS[{i}]: index {k} is not below MODEL.NUM_JOINTS {joints}",
                    at("DATASET.FLIP_PAIRS")
                );
            }
            if !seen.insert(k) {
                bail!("{}: config key DATASET.FLIP_PAIRS[{i}]: landmark {k} appears twice", at("DATASET.FLIP_PAIRS"));
            }
        }
        let norm = &self.dataset.norm_indices;
        if !norm.is_empty() && !norm.len().is_multiple_of(2) {
            bail!(
                "{}: config key DATASET.NORM_INDICES: needs two landmarks or two equal groups, found {} indices",
                at("DATASET.NORM_INDICES"),
                norm.len()
            );
        }
        if let Some(i) = norm.iter().position(|&k| k >= joints) {
            bail!(
                "{}: config key DATASET.NORM_INDICES[{i}]: index {} is not below MODEL.NUM_JOINTS {joints}",
                at("DATASET.NORM_INDICES"),
                norm[i]
            );
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
        self.dump("", 0, &mut out);
        out
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
