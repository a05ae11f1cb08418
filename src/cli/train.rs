//! `hrk train`.

use crate::train::{BatchProgress, TrainObserver, Trainer};
use anyhow::Result;
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use std::io::IsTerminal;
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
    /// Conv arithmetic of CPU training: f32 (the reference's), or bf16 (forward and input-gradient convs
    /// with bf16 operands and f32 sums, as PyTorch's autocast; weights, their gradients and BN stay
    /// f32). Needs AVX512-BF16, else f32 with a warning.
    #[arg(long, default_value = "f32")]
    pub precision: String,
}

/// Shows the training log on stdout and, on a terminal, a progress bar per epoch; with `--quiet`
/// nothing (the log file still gets everything).
struct Console {
    quiet: bool,
    show_bar: bool,
    bar: Option<ProgressBar>,
}

impl TrainObserver for Console {
    fn message(&mut self, text: &str) {
        if !self.quiet {
            super::logger::print_line(text);
        }
    }

    fn epoch_started(&mut self, epoch: usize, batches: usize) {
        if !self.show_bar {
            return;
        }
        let bar = ProgressBar::new(batches as u64);
        if let Ok(style) =
            ProgressStyle::with_template("{prefix} {wide_bar} {pos}/{len} [{elapsed_precise} < {eta_precise}] {msg}")
        {
            bar.set_style(style);
        }
        bar.set_prefix(format!("epoch {epoch}"));
        super::logger::set_active_bar(Some(bar.clone()));
        self.bar = Some(bar);
    }

    fn batch_done(&mut self, progress: &BatchProgress) {
        if let Some(bar) = &self.bar {
            bar.inc(1);
            bar.set_message(format!("{:.1} img/s  loss {:.5}", progress.images_per_second, progress.mean_loss));
        }
    }

    fn epoch_finished(&mut self, _epoch: usize) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
        super::logger::set_active_bar(None);
    }
}

impl Drop for Console {
    /// A run that fails mid-epoch must not leave a half-drawn bar under the error line.
    fn drop(&mut self) {
        self.epoch_finished(0);
    }
}

/// Turns the conv op's bf16 arithmetic on for `--precision bf16` where it runs (the CPU, with a bf16
/// kernel family: `host_isa::bf16_kernels`); elsewhere one warning says why training stays f32.
pub fn set_training_precision(precision: crate::model::Precision, device: &crate::tensor::Device) {
    if precision == crate::model::Precision::F32 {
        return;
    }
    if !matches!(device, crate::tensor::Device::Cpu) {
        log::warn!("--precision bf16 is for CPU training; on a GPU `--gpu-math bf16` chooses the conv arithmetic");
    } else if crate::ops::conv2d::direct::bf16::available() {
        crate::ops::conv2d::set_bf16_convs(true);
    } else {
        log::warn!(
            "--precision bf16: no bf16 kernels for this CPU ({}); training in f32",
            crate::host_isa::bf16_kernels_why()
        );
    }
}

pub fn run(args: TrainArgs, quiet: bool) -> Result<()> {
    let device = super::common::device(&args.device)?;
    if let Some(n) = args.threads {
        // Ignore "already initialised": only possible when embedded, and then its pool stands.
        let _ = rayon::ThreadPoolBuilder::new().num_threads(n.max(1)).build_global();
    }
    let precision = args.precision.parse::<crate::model::Precision>()?;
    set_training_precision(precision, &device);
    let opts = crate::train::TrainOptions {
        cfg_path: args.cfg,
        seed: args.seed,
        stop_after_epochs: args.stop_after_epochs,
        synth_count: args.synth_count,
        device,
    };
    let console = Console { quiet, show_bar: !quiet && std::io::stdout().is_terminal(), bar: None };
    Trainer::setup(&opts, Box::new(console))?.run()?;
    Ok(())
}
