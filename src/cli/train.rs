//! `hrk train`.

use anyhow::Result;
use clap::Args;
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct TrainArgs {
    /// Experiment YAML (official schema).
    #[arg(long)]
    pub cfg: PathBuf,
    /// cpu, cuda or auto.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Seed of the model init, data order and augmentation.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Compute threads (default: all cores). CPU results are bit-reproducible for a fixed count.
    #[arg(long)]
    pub threads: Option<usize>,
    /// Stop after this many epochs of this run (resume later with TRAIN.RESUME true).
    #[arg(long)]
    pub stop_after_epochs: Option<usize>,
    /// Images generated for the synthetic demo when its CSVs are missing.
    #[arg(long, default_value_t = crate::train::DEFAULT_SYNTH_COUNT)]
    pub synth_count: usize,
    /// No console output (the log file still gets everything).
    #[arg(long)]
    pub quiet: bool,
}

pub fn run(args: TrainArgs) -> Result<()> {
    let device = super::common::device(&args.device)?;
    if let Some(n) = args.threads {
        // Ignore "already initialised": only possible when embedded, and then its pool stands.
        let _ = rayon::ThreadPoolBuilder::new().num_threads(n.max(1)).build_global();
    }
    let opts = crate::train::TrainOptions {
        cfg_path: args.cfg,
        seed: args.seed,
        stop_after_epochs: args.stop_after_epochs,
        synth_count: args.synth_count,
        quiet: args.quiet,
        device,
    };
    crate::train::train(&opts)?;
    Ok(())
}
