//! The reference schema: one `config_section!` table per section of `lib/config/defaults.py`,
//! with its keys, types and defaults in `defaults.py` order, and the flat list of dotted key paths
//! the merge and the suggestions look keys up in.

use super::keys::{config_section, join_key, schema_row, Entry, Slot, Typed};
use super::{BlockKind, KeyOrigins, OptimizerKind};
use anyhow::{bail, Result};
use std::fmt::Write as _;
use std::sync::OnceLock;

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

pub(super) fn slot_of(path: &str) -> Option<Slot> {
    schema().iter().find(|(key, _)| key == path).map(|(_, slot)| *slot)
}

/// The full dotted paths of every leaf key of the reference schema, in `defaults.py` order.
pub fn schema_keys() -> Vec<&'static str> {
    schema().iter().filter(|(_, slot)| *slot != Slot::Section).map(|(key, _)| key.as_str()).collect()
}

/// Every key of the reference defaults (sections included), in `defaults.py` order.
pub(super) fn schema() -> &'static [(String, Slot)] {
    static ROWS: OnceLock<Vec<(String, Slot)>> = OnceLock::new();
    ROWS.get_or_init(|| {
        let mut rows = Vec::new();
        Config::schema("", &mut rows);
        rows
    })
}
