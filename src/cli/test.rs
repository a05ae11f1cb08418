//! `hrk test`: tools/test.py — evaluate a model file on the config's test set (or on several
//! `--testset` files, one row each), print the reference's result line plus AUC, and write
//! predictions (CSV + safetensors), `metrics.json` and a CED plot.

use crate::atomic_file::write_atomically;
use crate::data::dataset::{Annotations, FaceDataset};
use crate::eval::{evaluate_file, EvalResult, TestOptions};
use crate::host_tensor::{HostData, HostTensor};
use crate::model::hrnet::memory::{check_batch_memory, Pass};
use crate::plot::{ced_points, save_chart, Chart, Series};
use anyhow::{bail, Context, Result};
use clap::Args;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

#[derive(Args, Debug)]
pub struct TestArgs {
    /// Experiment YAML (official schema).
    #[arg(long)]
    pub cfg: PathBuf,
    /// Weights: .safetensors or an official .pth (final_state.pth, HR18-*.pth).
    #[arg(long = "model-file")]
    pub model_file: PathBuf,
    /// Annotation file(s) to evaluate instead of DATASET.TESTSET; repeat for subsets.
    #[arg(long = "testset")]
    pub testset: Vec<PathBuf>,
    /// cpu, cuda or auto.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Output folder (default: OUTPUT_DIR/DATASET/<cfg name>, like the reference).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Batch size (default: TEST.BATCH_SIZE_PER_GPU × len(GPUS), as test.py).
    #[arg(long)]
    pub batch: Option<usize>,
    /// Threads preparing batches (default: min(WORKERS, 4)).
    #[arg(long)]
    pub workers: Option<usize>,
    #[command(flatten)]
    pub options: super::common::TestOptionArgs,
}

/// One evaluated annotation file.
struct Subset {
    name: String,
    testset: PathBuf,
    result: EvalResult,
}

/// Subset names from file stems, made unique.
fn subset_names(files: &[PathBuf]) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    for f in files {
        let stem = f.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "test".into());
        let mut name = stem.clone();
        let mut k = 2;
        while names.contains(&name) {
            name = format!("{stem}_{k}");
            k += 1;
        }
        names.push(name);
    }
    names
}

fn image_name(ds: &FaceDataset, index: usize) -> String {
    match &ds.annotations {
        Annotations::Csv(r) => r.get(index).map(|rec| rec.image_path.display().to_string()).unwrap_or_default(),
        Annotations::Cofw(_) => ds.describe(index),
    }
}

fn write_predictions(out: &Path, name: &str, ds: &FaceDataset, r: &EvalResult) -> Result<()> {
    let j = r.joints;
    let mut csv = String::from("index,image,nme");
    for k in 0..j {
        let _ = write!(csv, ",pt{k}_x,pt{k}_y");
    }
    csv.push('\n');
    for (i, e) in r.nme.iter().enumerate() {
        let _ = write!(csv, "{i},{},{e}", crate::io::csv::field(&image_name(ds, i)));
        for p in &r.predictions[i * j..(i + 1) * j] {
            let _ = write!(csv, ",{},{}", p[0], p[1]);
        }
        csv.push('\n');
    }
    let path = out.join(format!("predictions_{name}.csv"));
    write_atomically(&path, csv.as_bytes())?;
    let flat: Vec<f32> = r.predictions.iter().flat_map(|p| [p[0], p[1]]).collect();
    let tensors = vec![
        ("predictions".to_string(), HostTensor::f32(vec![r.len(), j, 2], flat)),
        ("nme".to_string(), HostTensor { shape: vec![r.len()], data: HostData::F64(r.nme.clone()) }),
    ];
    let meta = vec![
        ("testset".to_string(), ds.spec.annotations.display().to_string()),
        ("coordinates".to_string(), "original image pixels (x, y)".to_string()),
    ];
    crate::io::safetensors::save_safetensors(&out.join(format!("predictions_{name}.safetensors")), &tensors, &meta)
}

fn metrics_json(subsets: &[Subset], model_file: &Path, opts: &TestOptions) -> serde_json::Value {
    let rows: Vec<serde_json::Value> = subsets
        .iter()
        .map(|s| {
            let m = &s.result.summary;
            serde_json::json!({
                "name": s.name,
                "testset": s.testset.display().to_string(),
                "images": s.result.len(),
                "nme": m.nme,
                "fr_008": m.fr_008,
                "fr_010": m.fr_010,
                "auc_008": m.auc_008,
                "auc_010": m.auc_010,
                "loss": s.result.loss,
                "batch_time": s.result.batch_time,
            })
        })
        .collect();
    serde_json::json!({
        "model_file": model_file.display().to_string(),
        "units": "fractions (multiply by 100 for the README's percent)",
        "test_options": {
            "flip_test": opts.flip_test,
            "shift_heatmap": opts.shift_heatmap,
            "decode": opts.decode.name(),
        },
        "subsets": rows,
    })
}

pub fn run(args: TestArgs) -> Result<()> {
    let device = super::common::device(&args.device)?;
    let cfg = super::common::config(&args.cfg)?;
    let batch = args.batch.unwrap_or_else(|| cfg.test_batch_size()).max(1);
    let workers = args.workers.unwrap_or_else(|| cfg.workers.min(4));
    check_batch_memory(&cfg, &device, Pass::Infer, batch, Some(workers), "--batch, MODEL.IMAGE_SIZE or --workers")?;
    let mut net = super::common::model(&cfg, 0)?;
    super::common::load_weights(&mut net, &args.model_file)?;
    net.to_device(&device)?;
    net.set_precision(args.options.precision()?);
    let opts = args.options.resolve(&cfg)?;
    if opts != TestOptions::default() {
        println!("test-time options: {}", opts.describe());
    }
    let files: Vec<PathBuf> =
        if args.testset.is_empty() { vec![PathBuf::from(&cfg.dataset.testset)] } else { args.testset.clone() };
    for f in &files {
        if !f.exists() {
            bail!("test set {} not found", f.display());
        }
    }
    let out = args.out.clone().unwrap_or_else(|| cfg.output_dir_for(&args.cfg));
    std::fs::create_dir_all(&out).with_context(|| format!("cannot create output folder {}", out.display()))?;

    let mut subsets = Vec::new();
    for (file, name) in files.iter().zip(subset_names(&files)) {
        let (ds, result) = evaluate_file(&mut net, &cfg, file, batch, workers, &opts)?;
        let m = &result.summary;
        if files.len() > 1 {
            println!("[{name}] {} images", result.len());
        }
        println!("Test Results {}", result.log_fields());
        println!("AUC@0.08:{:.4} AUC@0.10:{:.4}", m.auc_008, m.auc_010);
        write_predictions(&out, &name, &ds, &result)?;
        subsets.push(Subset { name, testset: file.clone(), result });
    }

    // The README's table: percent.
    let width = subsets.iter().map(|s| s.name.len()).max().unwrap_or(4).max(6);
    println!(
        "{:<width$} {:>6} {:>8} {:>8} {:>8} {:>9} {:>9}",
        "subset", "images", "NME%", "FR@0.08%", "FR@0.10%", "AUC@0.08%", "AUC@0.10%"
    );
    for s in &subsets {
        let m = &s.result.summary;
        println!(
            "{:<width$} {:>6} {:>8.2} {:>8.2} {:>8.2} {:>9.2} {:>9.2}",
            s.name,
            s.result.len(),
            100.0 * m.nme,
            100.0 * m.fr_008,
            100.0 * m.fr_010,
            100.0 * m.auc_008,
            100.0 * m.auc_010
        );
    }

    let json_path = out.join("metrics.json");
    let text = serde_json::to_string_pretty(&metrics_json(&subsets, &args.model_file, &opts))?;
    write_atomically(&json_path, (text + "\n").as_bytes())?;

    let series: Vec<Series> =
        subsets.iter().map(|s| Series::new(s.name.clone(), ced_points(&s.result.nme, 0.1))).collect();
    let mut chart = Chart::new("CED", "NME", "fraction of images", &series);
    chart.x_range = Some((0.0, 0.1));
    chart.y_range = Some((0.0, 1.0));
    let ced_path = out.join("ced.png");
    save_chart(&ced_path, &chart)?;
    println!("wrote predictions, metrics.json and ced.png to {}", out.display());
    Ok(())
}
