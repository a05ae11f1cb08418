//! The `hrk` command line: one subcommand per file.

pub mod bench;
pub mod common;
pub mod export;
pub mod logger;
pub mod predict;
pub mod serve;
pub mod test;
pub mod train;

use anyhow::Result;
use clap::{Parser, Subcommand};
use std::path::{Path, PathBuf};

#[derive(Parser, Debug)]
#[command(name = "hrk", version, about = "HRNetV2 facial landmarks: train, test and predict with the official configs")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    /// Only warnings and errors (and no training console output or progress bar).
    #[arg(short, long, global = true)]
    pub quiet: bool,
    /// More messages: -v debug, -vv trace.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// GPU conv arithmetic: tf32 (tensor cores, as PyTorch), bf16 (tensor-core forward) or fp32 (FMA
    /// kernels, the reference); default: HRK_GPU_MATH, else tf32.
    #[arg(long, global = true, value_name = "fp32|tf32|bf16")]
    pub gpu_math: Option<crate::cuda::GpuMath>,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Train from an official-schema YAML config (tools/train.py).
    Train(train::TrainArgs),
    /// Evaluate a model file on the config's test set (tools/test.py): NME, FR, AUC.
    Test(test::TestArgs),
    /// Landmarks for your own images, with overlay PNGs.
    Predict(Box<predict::PredictArgs>),
    /// Convert an official PyTorch .pth (zip or legacy) to .safetensors.
    Convert {
        input: PathBuf,
        output: PathBuf,
        /// Prefix for every key of INPUT (e.g. `pnet.`).
        #[arg(long, default_value = "")]
        prefix: String,
        /// Another checkpoint merged into the output, its keys prefixed: `PREFIX=FILE` (repeatable).
        #[arg(long = "merge", value_name = "PREFIX=FILE")]
        merge: Vec<String>,
    },
    /// Write a procedurally drawn synthetic-faces dataset in the official CSV format.
    Synth {
        #[arg(long)]
        out: PathBuf,
        #[arg(long, default_value_t = 68)]
        joints: usize,
        #[arg(long, default_value_t = 2000)]
        count: usize,
        #[arg(long, default_value_t = 0)]
        seed: u64,
    },
    /// Convert COCO keypoint JSON or a simple `image,x1,y1,x2,y2,x0,y0,...` CSV to the official CSV.
    Annotations {
        /// COCO keypoints JSON (images + annotations with bbox and keypoints).
        #[arg(long, conflicts_with = "csv", required_unless_present = "csv")]
        coco: Option<PathBuf>,
        /// Simple CSV: image,x1,y1,x2,y2 then x,y per landmark.
        #[arg(long)]
        csv: Option<PathBuf>,
        /// Output official CSV.
        #[arg(long)]
        out: PathBuf,
        /// Center/scale from the given face box (`given`) or the tight landmark box (`landmarks`,
        /// the official datasets' choice).
        #[arg(long = "box", default_value = "given", value_parser = ["given", "landmarks"])]
        box_from: String,
    },
    /// Time forward (and training) steps: median/min ms, img/s, GFLOP/s, peak RSS.
    Bench(bench::BenchArgs),
    /// Write a model's inference graph as ONNX (ONNX Runtime, TensorRT, OpenVINO, …).
    Export(export::ExportArgs),
    /// Serve landmarks over HTTP: POST /v1/landmarks, health checks, metrics.
    Serve(Box<serve::ServeArgs>),
}

pub fn run(cli: Cli) -> Result<()> {
    logger::install(logger::level_for(cli.quiet, cli.verbose));
    if let Some(m) = cli.gpu_math {
        crate::cuda::set_gpu_math(m);
    }
    match cli.command {
        Command::Train(a) => train::run(a, cli.quiet),
        Command::Test(a) => test::run(a),
        Command::Predict(a) => predict::run(*a, cli.quiet),
        Command::Bench(a) => bench::run(a),
        Command::Export(a) => export::run(a),
        Command::Serve(a) => serve::run(*a),
        Command::Convert { input, output, prefix, merge } => {
            // The loader's errors already name the file.
            let n = if prefix.is_empty() && merge.is_empty() {
                crate::io::convert_pth_to_safetensors(&input, &output)?
            } else {
                let mut inputs = vec![(prefix, input.as_path())];
                for m in &merge {
                    let (p, f) = m.split_once('=').ok_or_else(|| {
                        anyhow::anyhow!("hrk convert: --merge {m}: want PREFIX=FILE (e.g. rnet.=rnet.pt)")
                    })?;
                    inputs.push((p.to_string(), Path::new(f)));
                }
                crate::io::convert_merged_to_safetensors(&inputs, &output)?
            };
            println!("wrote {} tensors to {}", n, output.display());
            Ok(())
        }
        Command::Annotations { coco, csv, out, box_from } => {
            use crate::data::annotations as ann;
            let (path, coco_input) = match (coco, csv) {
                (Some(p), _) => (p, true),
                (None, Some(p)) => (p, false),
                (None, None) => anyhow::bail!("hrk annotations: give --coco FILE or --csv FILE"),
            };
            let text =
                std::fs::read_to_string(&path).map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
            let shown = path.display().to_string();
            let mut rows =
                if coco_input { ann::from_coco(&text, &shown)? } else { ann::from_simple_csv(&text, &shown)? };
            if rows.is_empty() {
                // hrk test and train refuse a CSV without data rows; say so now, not at training time.
                anyhow::bail!("{shown}: no faces to convert; nothing written");
            }
            if box_from == "landmarks" {
                ann::use_landmark_boxes(&mut rows)?;
            }
            crate::atomic_file::write_atomically(&out, ann::to_official_csv(&rows).as_bytes())?;
            println!("wrote {} faces to {}", rows.len(), out.display());
            Ok(())
        }
        Command::Synth { out, joints, count, seed } => {
            let s = crate::synth::generate(&out, joints, count, seed)?;
            println!(
                "wrote {} train + {} test images ({} landmarks) to {}; config: {}",
                s.train_count,
                s.test_count,
                s.joints,
                out.display(),
                s.config.display()
            );
            Ok(())
        }
    }
}
