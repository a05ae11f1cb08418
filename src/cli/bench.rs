//! `hrk bench`: times inference (folded fast path or the autograd graph) or a training step
//! (forward with batch statistics, MSE, backward, Adam) on random inputs, after a warm-up, on the CPU or a
//! GPU (`--device cuda|emu`; inference with or without CUDA graphs, `--graphs on|off`), and on a GPU
//! reports the device allocator's peak and fragmentation.

use crate::model::hrnet::memory::{check_batch_memory, Pass};
use crate::model::{GpuInferNet, HrNet, InferNet};
use crate::rng::Rng;
use crate::tensor::{Device, Storage, Tensor};
use anyhow::{anyhow, bail, Result};
use clap::Args;
use std::path::PathBuf;
use std::time::Instant;

#[derive(Args, Debug)]
pub struct BenchArgs {
    /// Experiment YAML (official schema).
    #[arg(long)]
    pub cfg: PathBuf,
    /// cpu, cuda or auto.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Images per step.
    #[arg(long, default_value_t = 1)]
    pub batch: usize,
    /// Time a training step instead of inference.
    #[arg(long)]
    pub train: bool,
    /// Timed steps (after the warm-up); default 10 for inference, 5 for training.
    #[arg(long)]
    pub iters: Option<usize>,
    /// Untimed warm-up steps.
    #[arg(long, default_value_t = 2)]
    pub warmup: usize,
    /// Inference engine: `fast` (BN folded, fused, arena) or `graph` (the autograd ops, no_grad).
    #[arg(long, default_value = "fast")]
    pub engine: String,
    /// Conv arithmetic of the fast engine (or, with --train, of the training step's convs as `hrk train
    /// --precision`): f32, or bf16 (falls back to f32 with a warning where no bf16 kernel runs;
    /// HRK_BF16_EMULATE=1 emulates it for inference).
    #[arg(long, default_value = "f32")]
    pub precision: String,
    /// Weights to time and (with `--precision bf16`) to compare bf16 against f32 on: .safetensors or an
    /// official .pth; default: the model's initialisation.
    #[arg(long)]
    pub model_file: Option<PathBuf>,
    /// GPU inference with the `fast` engine: replay a captured CUDA graph (`on`, the first warm-up step
    /// captures it) or launch every kernel (`off`). Default: HRK_CUDA_GRAPHS.
    #[arg(long)]
    pub graphs: Option<String>,
}

/// Peak resident set size of this process in bytes (VmHWM), when /proc is there.
pub fn peak_rss_bytes() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Median, min and max of the samples (seconds); None when empty.
pub fn summary(samples: &[f64]) -> Option<(f64, f64, f64)> {
    if samples.is_empty() {
        return None;
    }
    let mut v = samples.to_vec();
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    let med = if v.len() % 2 == 1 { v[mid] } else { 0.5 * (v[mid - 1] + v[mid]) };
    Some((med, v[0], v[v.len() - 1]))
}

fn random(shape: &[usize], rng: &mut Rng) -> Result<Tensor> {
    let n: usize = shape.iter().product();
    Tensor::from_f32(shape, (0..n).map(|_| rng.normal() as f32).collect())
}

/// One training step of the model on (x, target).
pub fn train_step(net: &mut HrNet, adam: &mut crate::optim::Adam, x: &Tensor, target: &Tensor) -> Result<f64> {
    let pass = crate::train::step::forward_backward(net, x, target, crate::train::step::LossSeed::One)?;
    let value = pass.loss.item()?;
    let gs: Vec<&Storage> = pass.grads.iter().collect();
    let mut params = net.store.params_mut();
    adam.step(&mut params, &gs)?;
    Ok(value)
}

fn on_off(text: &str) -> Result<bool> {
    match text {
        "on" | "1" => Ok(true),
        "off" | "0" => Ok(false),
        other => bail!("--graphs: expected on or off, got {other:?}"),
    }
}

pub fn run(args: BenchArgs) -> Result<()> {
    let device = super::common::device(&args.device)?;
    let cfg = super::common::config(&args.cfg)?;
    if args.batch == 0 {
        bail!("--batch must be ≥ 1");
    }
    let graphs = args.graphs.as_deref().map(on_off).transpose()?.unwrap_or_else(crate::switches::cuda_graphs);
    let [iw, ih] = cfg.model.image_size;
    let pass = if args.train { Pass::Train } else { Pass::Infer };
    check_batch_memory(&cfg, &device, pass, args.batch, None, "--batch or MODEL.IMAGE_SIZE")?;
    let mut net = super::common::model(&cfg, 0)?;
    if let Some(path) = &args.model_file {
        super::common::load_weights(&mut net, path)?;
    }
    let asked = args.precision.parse::<crate::model::Precision>()?;
    log::debug!("{}", crate::host_isa::describe());
    if args.train {
        super::train::set_training_precision(asked, &device);
    }
    // The inference engine's arithmetic (with --train it is not timed: f32, no second warning).
    let precision = if args.train { crate::model::Precision::F32 } else { asked.resolve_cpu() };
    let gpu = match &device {
        Device::Gpu(d) => Some(d.clone()),
        Device::Cpu => None,
    };
    let fast = if gpu.is_none() { Some(InferNet::with_precision(&net, precision)?) } else { None };
    net.to_device(&device)?;
    let gpu_fast = match &gpu {
        Some(d) if !args.train && args.engine == "fast" => {
            let mut e = GpuInferNet::new(&net, d)?;
            e.graphs = graphs;
            Some(e)
        }
        _ => None,
    };
    let mut train_graphs = match &gpu {
        Some(_) if args.train && graphs => Some(crate::train::graph::TrainGraphs::new(&net)?),
        _ => None,
    };
    // Device memory held before the first step: the model (and the folded engine's weights).
    let model_bytes = gpu.as_ref().map_or(0, |d| d.memory_stats().in_use);
    let sync = || gpu.as_ref().map_or(Ok(()), |d| d.synchronize());
    let macs = net.macs(ih, iw)?;
    // Training FLOPs: forward, dW (same as forward) and dX (same, minus the first conv whose input needs none).
    let flop_per_image =
        if args.train { 2.0 * (3 * macs - net.first_conv_macs(ih, iw)?) as f64 } else { 2.0 * macs as f64 };
    let mut rng = Rng::new(1);
    let x_host = random(&[args.batch, 3, ih, iw], &mut rng)?;
    let x = x_host.to_device(&device)?;
    let iters = args.iters.unwrap_or(if args.train { 5 } else { 10 }).max(1);
    let mut times = Vec::with_capacity(iters);
    let what = if args.train {
        let [hw, hh] = cfg.model.heatmap_size;
        let target_shape = [args.batch, cfg.model.num_joints, hh, hw];
        let target_host = random(&target_shape, &mut rng)?;
        let target = target_host.to_device(&device)?;
        let mut adam = crate::optim::Adam::new(1e-4, 0.0);
        let (input, target_values) = (x_host.try_to_f32_vec()?, target_host.try_to_f32_vec()?);
        for k in 0..args.warmup + iters {
            let t0 = Instant::now();
            match &mut train_graphs {
                // Host batch in, loss and heatmaps out, as `hrk train` runs it.
                Some(g) => {
                    let shape = [args.batch, 3, ih, iw];
                    g.forward_backward(&mut net, &input, shape, &target_values, target_shape, &mut adam)?;
                    g.update(&mut net, &mut adam)?;
                    sync()?;
                }
                None => drop(train_step(&mut net, &mut adam, &x, &target)?),
            }
            if k >= args.warmup {
                times.push(t0.elapsed().as_secs_f64());
            }
        }
        match &train_graphs {
            Some(_) => "train step (fwd+MSE+bwd+Adam, graphs on)".to_string(),
            None if gpu.is_some() => "train step (fwd+MSE+bwd+Adam, graphs off)".to_string(),
            None if crate::ops::conv2d::bf16_convs() => "train step (fwd+MSE+bwd+Adam, bf16 convs)".to_string(),
            None => "train step (fwd+MSE+bwd+Adam)".to_string(),
        }
    } else {
        match args.engine.as_str() {
            "fast" => {
                let input = x_host.try_to_f32_vec()?;
                let shape = [args.batch, 3, ih, iw];
                for k in 0..args.warmup + iters {
                    let t0 = Instant::now();
                    match (&fast, &gpu_fast) {
                        // Host batch in, host heatmaps out (the copies are part of what `hrk test` pays).
                        (_, Some(g)) => drop(std::hint::black_box(g.forward_host(&input, shape)?)),
                        (Some(f), None) => drop(std::hint::black_box(f.forward(&x)?)),
                        (None, None) => bail!("bench: no inference engine"),
                    }
                    if k >= args.warmup {
                        times.push(t0.elapsed().as_secs_f64());
                    }
                }
            }
            "graph" => {
                for k in 0..args.warmup + iters {
                    let t0 = Instant::now();
                    std::hint::black_box(crate::no_grad(|| net.forward(&x, false))?);
                    sync()?;
                    if k >= args.warmup {
                        times.push(t0.elapsed().as_secs_f64());
                    }
                }
            }
            e => bail!("--engine: expected fast or graph, got {e:?}"),
        }
        match (&gpu_fast, precision) {
            (Some(_), _) => format!("inference ({}, graphs {})", args.engine, if graphs { "on" } else { "off" }),
            (None, crate::model::Precision::F32) => format!("inference ({})", args.engine),
            (None, p) => format!("inference ({}, {})", args.engine, p.name()),
        }
    };
    let (med, min, max) = summary(&times).ok_or_else(|| anyhow!("bench: no samples"))?;
    let b = args.batch as f64;
    let gflops = flop_per_image * b / med / 1e9;
    if let Some(dev) = &gpu {
        let stats = dev.memory_stats();
        println!("{what} on {}: batch {} {ih}x{iw} iters {iters}: median {:.2} ms (min {:.2}, max {:.2}), {:.2} ms/img, {:.1} img/s, {gflops:.0} GFLOP/s, {:.3} GFLOP/img",
            dev.name(), args.batch, med * 1e3, min * 1e3, max * 1e3, med * 1e3 / b, b / med, flop_per_image / 1e9);
        println!("GPU memory: {}", stats.summary());
        let counts = match (&gpu_fast, &train_graphs) {
            (Some(g), _) => Some(g.graph_counts()),
            (None, Some(g)) => Some(g.counts()),
            (None, None) => None,
        };
        if let Some(c) = counts {
            println!(
                "CUDA graphs: {} captured ({} launches in the last), {} replays",
                c.captures, c.last_launches, c.replays
            );
        }
        let graphs_used = gpu_fast.is_some() || args.train;
        // One machine-readable line (benches/gpu_check.sh parses it).
        println!(
            "bench-result mode={} batch={} graphs={} median_ms={:.4} img_s={:.3} gflops={gflops:.2} model_bytes={model_bytes} peak_in_use_bytes={} peak_reserved_bytes={} fragmentation={:.4}",
            if args.train { "train" } else { "infer" }, args.batch, if graphs_used { if graphs { "on" } else { "off" } } else { "n/a" },
            med * 1e3, b / med, stats.peak_in_use, stats.peak_reserved, stats.fragmentation()
        );
        return Ok(());
    }
    println!(
        "{what}: batch {} {}x{} threads {} iters {}: median {:.1} ms (min {:.1}, max {:.1}), {:.1} ms/img, {:.2} img/s, {:.1} GFLOP/s ({:.0}% of 205), {:.3} GFLOP/img, peak RSS {}",
        args.batch,
        ih,
        iw,
        rayon::current_num_threads(),
        iters,
        med * 1e3,
        min * 1e3,
        max * 1e3,
        med * 1e3 / b,
        b / med,
        flop_per_image * b / med / 1e9,
        flop_per_image * b / med / 1e9 / 205.0 * 100.0,
        flop_per_image / 1e9,
        peak_rss_bytes().map_or("n/a".into(), |v| format!("{:.0} MiB", v as f64 / 1048576.0)),
    );
    if let (Some(f), crate::model::Precision::Bf16, "fast") = (&fast, precision, args.engine.as_str()) {
        // What bf16 costs on this input: its heatmaps against the f32 engine's (after the report, so
        // the second engine is not in the timed steps' peak RSS).
        let reference = InferNet::with_precision(&net, crate::model::Precision::F32)?;
        let (got, want) = (f.forward(&x)?.try_to_f32_vec()?, reference.forward(&x)?.try_to_f32_vec()?);
        let scale = want.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let dev = got.iter().zip(&want).fold(0.0f32, |m, (a, b)| m.max((a - b).abs()));
        println!(
            "bf16 vs f32 heatmaps on this input: max |Δ| {dev:.3e} of max |heatmap| {scale:.3e} ({:.3} %)",
            100.0 * dev / scale.max(f32::MIN_POSITIVE)
        );
    }
    Ok(())
}
