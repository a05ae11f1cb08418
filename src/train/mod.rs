//! `hrk train`: the official tools/train.py loop (with lib/core/function.py `train` and `validate`)
//! with checkpoints that resume bit for bit on the CPU.
//!
//! Determinism: data order and augmentation are pure functions of (seed, epoch, sample index)
//! (`data::loader`), the model init is seeded, the loss and optimizers are sequential, and the conv
//! kernels split work over rayon threads without splitting reductions across threads differently
//! from run to run; so for a fixed thread count two runs give the same bits, and a run resumed
//! from `latest.safetensors` gives the same bits as one that was never interrupted.
//!
//! The parts: `trainer.rs` runs the loop (setup, resume, validate, checkpoint, finish) and
//! `epoch.rs` one epoch's batches; `step.rs` is the training step both the eager path and the
//! CUDA graphs (`graph.rs`) run; `optimizer.rs` puts Adam and SGD behind one type; `metrics.rs`
//! writes metrics.jsonl, `logger.rs` the log file, `checkpoint.rs` the checkpoints,
//! `pictures.rs` the curves and overlays; `schedule.rs` is the LR schedule and `synthetic.rs`
//! makes the demo data set.

pub mod checkpoint;
mod epoch;
pub mod graph;
pub mod logger;
mod metrics;
mod optimizer;
pub mod pictures;
pub mod schedule;
pub mod step;
mod synthetic;
mod trainer;

pub use logger::{BatchProgress, LogRecords, TrainObserver};
pub use metrics::EpochMetrics;
pub use synthetic::{synthetic_root, DEFAULT_SYNTH_COUNT};
pub use trainer::Trainer;

use anyhow::Result;
use std::path::PathBuf;

#[derive(Clone, Debug)]
pub struct TrainOptions {
    pub cfg_path: PathBuf,
    /// Model init and data order/augmentation seed.
    pub seed: u64,
    /// Return after this many epochs of this invocation (an interruption, for tests and for
    /// splitting a long run); no final_state is written then.
    pub stop_after_epochs: Option<usize>,
    /// Images to generate for the synthetic demo (see `synthetic_root`).
    pub synth_count: usize,
    /// Where the model and each batch live (`--device`).
    pub device: crate::tensor::Device,
}

impl TrainOptions {
    pub fn new(cfg_path: impl Into<PathBuf>) -> Self {
        Self {
            cfg_path: cfg_path.into(),
            seed: 0,
            stop_after_epochs: None,
            synth_count: DEFAULT_SYNTH_COUNT,
            device: crate::tensor::Device::Cpu,
        }
    }
}

#[derive(Clone, Debug)]
pub struct TrainSummary {
    pub out_dir: PathBuf,
    pub log_file: PathBuf,
    pub epochs_run: usize,
    pub resumed_from: Option<usize>,
    pub best_nme: f64,
    pub history: Vec<EpochMetrics>,
    /// Set when END_EPOCH was reached.
    pub final_state: Option<PathBuf>,
}

/// What one epoch's training iterations produced.
#[derive(Clone, Debug, PartialEq)]
pub struct EpochTraining {
    pub lr: f64,
    /// Mean training loss (weighted by batch size).
    pub loss: f64,
    /// Training NME as the reference logs it, when every batch could be decoded.
    pub nme: Option<f64>,
    /// Training images per second over the epoch.
    pub images_per_second: f64,
}

/// Runs a whole training with progress reported as `log` records (`Trainer::setup` + `run`).
pub fn train(opts: &TrainOptions) -> Result<TrainSummary> {
    Trainer::setup(opts, Box::new(LogRecords))?.run()
}
