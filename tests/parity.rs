//! Whole-model parity with PyTorch on every parity case directory (format: shared/parity/tiny/README.md).
//!
//! HRK_PARITY_CASE=dir1:dir2 selects cases; default: every directory under $HRK_SHARED/parity
//! (HRK_SHARED defaults to ../shared). Skipped with a printed reason when absent.
//! The model comes from the case's `config.yaml` (loaded like any experiment file), else from the
//! `cfg` that make_case.py wrote into meta.json (HRNetV2-W18 when that is null).
//! A full-size case (not in CI; ~250 MB): `make_case.py --cfg experiments/wflw/face_alignment_wflw_hrnet_w18.yaml
//! --batch 2 --seed 0 --out DIR`, copy that yaml to DIR/config.yaml, then HRK_PARITY_CASE=DIR (~25 CPU-s).
//! f32: per group rel_l2 ≤ max(4 × torch-f32's rel_l2, 1e-6) and max|d| ≤ 4 × torch-f32's max|d| + 1e-7.
//! f64: a much tighter bound (see `F64_*`), since only float32 storage rounding of the expected values remains.

use hrk::host_tensor::{HostData, HostTensor};
use hrk::model::{BlockKind, HrNet, HrnetSpec, Slot, StageSpec};
use hrk::optim::{Adam, Sgd};
use hrk::{backward, no_grad, ops, DType, Tensor};
use serde_json::Value;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

mod common;

fn case_dirs() -> Vec<PathBuf> {
    if let Some(list) = common::parity_cases() {
        return list;
    }
    let Ok(rd) = std::fs::read_dir(common::shared_dir().join("parity")) else { return vec![] };
    let mut v: Vec<PathBuf> =
        rd.filter_map(|e| e.ok()).map(|e| e.path()).filter(|p| p.join("meta.json").is_file()).collect();
    v.sort();
    v
}

/// The case's model: config.yaml through the real config loader, cross-checked with meta.json.
fn case_spec(dir: &Path, meta: &Value) -> HrnetSpec {
    let from_meta = spec_from_meta(meta);
    let cfg_path = dir.join("config.yaml");
    if !cfg_path.is_file() {
        return from_meta;
    }
    let cfg = hrk::config::load_config(&cfg_path).unwrap_or_else(|e| panic!("{e:#}"));
    let spec = HrnetSpec::from_config(&cfg).unwrap_or_else(|e| panic!("{}: {e:#}", cfg_path.display()));
    assert_eq!(spec, from_meta, "{}: config.yaml and meta.json describe different models", dir.display());
    spec
}

fn spec_from_meta(meta: &Value) -> HrnetSpec {
    let cfg = &meta["cfg"];
    if cfg.is_null() {
        // make_case.py without --cfg: the W18 layout of the released configs.
        return HrnetSpec::w18(meta["joints"].as_u64().expect("meta.json: joints") as usize);
    }
    let stage = |name: &str| {
        let s = &cfg["stages"][name];
        let list = |k: &str| common::json_usizes(&s[k]);
        StageSpec {
            num_modules: s["NUM_MODULES"].as_u64().unwrap() as usize,
            num_branches: s["NUM_BRANCHES"].as_u64().unwrap() as usize,
            block: if s["BLOCK"] == "BOTTLENECK" { BlockKind::Bottleneck } else { BlockKind::Basic },
            num_blocks: list("NUM_BLOCKS"),
            num_channels: list("NUM_CHANNELS"),
        }
    };
    HrnetSpec {
        num_joints: meta["joints"].as_u64().or(cfg["joints"].as_u64()).unwrap() as usize,
        final_conv_kernel: cfg["final_conv_kernel"].as_u64().unwrap_or(1) as usize,
        stages: vec![stage("STAGE2"), stage("STAGE3"), stage("STAGE4")],
    }
}

/// Accumulates |got − want| over a key group.
#[derive(Default)]
struct Group {
    diff_sq: f64,
    ref_sq: f64,
    max_abs: f64,
    worst: String,
    count: usize,
}

struct Checker {
    expected: HashMap<String, HostTensor>,
    groups: HashMap<String, Group>,
}

impl Checker {
    fn cmp(&mut self, group: &str, key: &str, got: &[f64]) {
        let want = self.expected.get(key).unwrap_or_else(|| panic!("expected.safetensors lacks `{key}`"));
        let want = want.to_f64_vec();
        assert_eq!(want.len(), got.len(), "`{key}`: {} values, expected {}", got.len(), want.len());
        let g = self.groups.entry(group.to_string()).or_default();
        for (a, b) in got.iter().zip(&want) {
            let d = (a - b).abs();
            g.diff_sq += d * d;
            g.ref_sq += b * b;
            if d > g.max_abs || g.worst.is_empty() {
                if d > g.max_abs {
                    g.max_abs = d;
                }
                g.worst = key.to_string();
            }
        }
        g.count += 1;
    }
    fn tensor(&mut self, group: &str, key: &str, t: &Tensor) {
        self.cmp(group, key, &t.to_f64_vec());
    }
}

fn load_st(path: &Path) -> HashMap<String, HostTensor> {
    hrk::io::safetensors::load_safetensors(path).unwrap_or_else(|e| panic!("{e:#}")).tensors.into_iter().collect()
}

struct CaseResult {
    rows: Vec<(String, f64, f64, f64, f64)>,
    /// Outputs of every ReLU of the first train-mode forward, in execution order.
    relu_outputs: Vec<Vec<f64>>,
}

fn run_case(dir: &Path, dtype: DType) -> CaseResult {
    let meta: Value = serde_json::from_str(&std::fs::read_to_string(dir.join("meta.json")).unwrap()).unwrap();
    let spec = case_spec(dir, &meta);
    let weights: Vec<(String, HostTensor)> =
        hrk::io::safetensors::load_safetensors(&dir.join("weights.safetensors")).unwrap().tensors;
    let inputs = load_st(&dir.join("inputs.safetensors"));
    let mut ck = Checker { expected: load_st(&dir.join("expected.safetensors")), groups: HashMap::new() };

    let mut net = HrNet::new(&spec, 0).unwrap();
    net.store.cast(dtype);
    net.store.load(&weights, true, "weights.safetensors").unwrap();
    let initial = net.clone();
    let x = Tensor::from_host(&inputs["input"]).unwrap().cast(dtype);
    let target = Tensor::from_host(&inputs["target"]).unwrap().cast(dtype);

    // 1. eval forward with activations.
    let mut acts = Vec::new();
    let out = no_grad(|| net.forward_with(&x, false, Some(&mut acts))).unwrap();
    ck.tensor("eval_output", "eval_output", &out);
    for (name, t) in &acts {
        ck.tensor("eval_act", &format!("eval_act.{name}"), t);
    }
    // 2. train forward + backward.
    let xg = x.detach().requires_grad();
    hrk::autograd::trace_start();
    let out = net.forward(&xg, true).unwrap();
    let relu_outputs =
        hrk::autograd::trace_take().into_iter().filter(|(n, _)| n == "relu").map(|(_, t)| t.to_f64_vec()).collect();
    ck.tensor("train_output", "train_output", &out);
    let loss = ops::mse_loss(&out, &target).unwrap();
    ck.cmp("loss", "loss", &[loss.item().unwrap()]);
    let grads = backward(&loss).unwrap();
    ck.cmp("grad_input", "grad_input", &grads.get(&xg).unwrap().to_f64_vec());
    let pnames: Vec<String> = net.store.param_names().iter().map(|s| s.to_string()).collect();
    let grad_list: Vec<hrk::Storage> =
        net.store.params().iter().map(|p| grads.get(p).unwrap().try_clone().unwrap()).collect();
    for (n, g) in pnames.iter().zip(&grad_list) {
        ck.cmp("grad", &format!("grad.{n}"), &g.to_f64_vec());
    }
    let buffers = |net: &HrNet, ck: &mut Checker, group: &str| {
        for (i, n) in net.store.names().iter().enumerate() {
            match net.store.slot(i) {
                Slot::Buffer(t) => ck.tensor(group, &format!("{group}.{n}"), t),
                Slot::Count(c) => {
                    let key = format!("{group}.{n}");
                    let want = &ck.expected[&key];
                    assert_eq!(want.data, HostData::I64(vec![*c]), "`{key}`");
                }
                Slot::Param(_) => {}
            }
        }
    };
    buffers(&net, &mut ck, "buffer_after_train");
    // 3. Adam step 1, then steps 2..5 on the same batch.
    let lr = meta["optimizer"]["lr"].as_f64().unwrap();
    let wd = meta["optimizer"]["weight_decay"].as_f64().unwrap_or(0.0);
    let mut adam = Adam::new(lr, wd);
    adam.step(&mut net.store.params_mut(), &grad_list.iter().collect::<Vec<_>>()).unwrap();
    let params = |net: &HrNet, ck: &mut Checker, group: &str| {
        for (n, p) in net.store.param_names().iter().zip(net.store.params()) {
            ck.tensor(group, &format!("{group}.{n}"), p);
        }
    };
    params(&net, &mut ck, "param_after_adam");
    let mut losses = vec![loss.item().unwrap()];
    for _ in 1..5 {
        let out = net.forward(&x, true).unwrap();
        let loss = ops::mse_loss(&out, &target).unwrap();
        losses.push(loss.item().unwrap());
        let grads = backward(&loss).unwrap();
        let gl: Vec<hrk::Storage> =
            net.store.params().iter().map(|p| grads.get(p).unwrap().try_clone().unwrap()).collect();
        adam.step(&mut net.store.params_mut(), &gl.iter().collect::<Vec<_>>()).unwrap();
    }
    ck.cmp("adam_losses", "adam_losses", &losses);
    params(&net, &mut ck, "param_after_adam5");
    buffers(&net, &mut ck, "buffer_after_adam5");
    // 4. SGD from the initial weights with the step-2 gradients.
    let mut net = initial;
    let s = &meta["sgd"];
    let mut sgd = Sgd::new(
        s["lr"].as_f64().unwrap(),
        s["momentum"].as_f64().unwrap(),
        s["weight_decay"].as_f64().unwrap(),
        s["nesterov"].as_bool().unwrap(),
    );
    sgd.step(&mut net.store.params_mut(), &grad_list.iter().collect::<Vec<_>>()).unwrap();
    params(&net, &mut ck, "param_after_sgd");

    let torch = &meta["torch_float32_vs_float64_error_by_prefix"];
    let mut rows = Vec::new();
    let mut groups: Vec<(&String, &Group)> = ck.groups.iter().collect();
    groups.sort_by(|a, b| a.0.cmp(b.0));
    for (name, g) in groups {
        let rel = (g.diff_sq / g.ref_sq.max(1e-300)).sqrt();
        let t_rel = torch[name]["rel_l2"].as_f64().unwrap_or(0.0);
        let t_abs = torch[name]["max_abs_err"].as_f64().unwrap_or(0.0);
        println!("  {:?} {name:<20} rel_l2 {rel:.2e} (torch-f32 {t_rel:.2e})  max|d| {:.2e} (torch-f32 {t_abs:.2e}) worst `{}` [{} tensors]", dtype, g.max_abs, g.worst, g.count);
        rows.push((name.clone(), rel, g.max_abs, t_rel, t_abs));
    }
    CaseResult { rows, relu_outputs }
}

/// ReLU decisions that differ between two runs (an activation within rounding of 0 is positive in
/// one and clamped in the other). Each flip cuts or passes one element's gradient, which then
/// spreads through every layer below it.
fn relu_flips(a: &[Vec<f64>], b: &[Vec<f64>]) -> usize {
    a.iter().zip(b).map(|(x, y)| x.iter().zip(y).filter(|(u, v)| (**u > 0.0) != (**v > 0.0)).count()).sum()
}

/// Groups computed from the backward pass (directly or through optimizer steps).
fn depends_on_backward(group: &str) -> bool {
    group.starts_with("grad")
        || group.starts_with("param_after")
        || group.starts_with("adam")
        || group == "buffer_after_adam5"
}

#[test]
fn parity_with_pytorch() {
    let dirs = case_dirs();
    if dirs.is_empty() {
        eprintln!("skipped: no parity case (set HRK_PARITY_CASE or HRK_SHARED; default ../shared/parity)");
        return;
    }
    for dir in dirs {
        println!("parity case {}", dir.display());
        let r64 = run_case(&dir, DType::F64);
        let meta: Value = serde_json::from_str(&std::fs::read_to_string(dir.join("meta.json")).unwrap()).unwrap();
        for (name, rel, abs, _, _) in &r64.rows {
            let absmax = meta["torch_float32_vs_float64_error_by_prefix"][name]["ref_absmax"].as_f64().unwrap_or(1.0);
            let (rel_bound, abs_bound) = f64_bounds(absmax);
            assert!(*rel <= rel_bound, "{}: f64 group {name}: rel_l2 {rel:e} > {rel_bound:e}", dir.display());
            assert!(*abs <= abs_bound, "{}: f64 group {name}: max|d| {abs:e} > {abs_bound:e}", dir.display());
        }
        let r32 = run_case(&dir, DType::F32);
        let flips = relu_flips(&r64.relu_outputs, &r32.relu_outputs);
        println!("  ReLU decisions that differ between the f32 and f64 runs: {flips}");
        for (name, rel, abs, t_rel, t_abs) in &r32.rows {
            let (mut rel_bound, mut abs_bound) = ((4.0 * t_rel).max(1e-6), 4.0 * t_abs + 1e-7);
            if flips > 0 && depends_on_backward(name) {
                // A flipped ReLU moves the gradient by one element's worth; the f64 run above is the
                // exact check of the backward pass, so f32 only has to stay within that.
                rel_bound = rel_bound.max(2e-3 * flips as f64);
                abs_bound = abs_bound.max(2e-3 * flips as f64);
            }
            assert!(*rel <= rel_bound, "{}: f32 group {name}: rel_l2 {rel:e} > {rel_bound:e}", dir.display());
            assert!(*abs <= abs_bound, "{}: f32 group {name}: max|d| {abs:e} > {abs_bound:e}", dir.display());
        }
    }
}

/// f64 runs agree with the float64 reference up to the float32 storage of the expected values:
/// half an ulp (6e-8) of each value, so rel_l2 ≤ 1e-7 and max|d| ≤ 1.2e-7 × the group's absmax.
fn f64_bounds(ref_absmax: f64) -> (f64, f64) {
    (1e-7, 1.2e-7 * ref_absmax.max(1e-30))
}

/// Process CPU seconds (user + system) from /proc/self/stat; None off Linux.
fn process_cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    Some(ticks / 100.0) // USER_HZ is 100 on Linux
}

/// Time of one HRNetV2-W18 (98 joints) eval-mode, no_grad forward at 256², batch 1: median of 5
/// after one warm-up. Run with `cargo test --release --test parity -- --ignored --nocapture`.
#[test]
#[ignore]
fn w18_forward_time() {
    let mut net = HrNet::new(&HrnetSpec::w18(98), 0).unwrap();
    let mut rng = common::rng(1);
    let x = Tensor::from_f32(&[1, 3, 256, 256], (0..3 * 256 * 256).map(|_| rng.normal() as f32).collect()).unwrap();
    let out = no_grad(|| net.forward(&x, false)).unwrap();
    assert_eq!(out.shape(), &[1, 98, 64, 64]);
    assert!(out.to_f64_vec().iter().all(|v| v.is_finite()));
    let (mut wall, mut cpu) = (Vec::new(), Vec::new());
    for _ in 0..5 {
        let (t0, c0) = (std::time::Instant::now(), process_cpu_seconds());
        let y = no_grad(|| net.forward(&x, false)).unwrap();
        wall.push(t0.elapsed().as_secs_f64());
        if let (Some(a), Some(b)) = (c0, process_cpu_seconds()) {
            cpu.push(b - a);
        }
        assert_eq!(y.to_f64_vec(), out.to_f64_vec(), "eval forward is deterministic");
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(|a, b| a.partial_cmp(b).unwrap());
        v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
    };
    println!(
        "W18 256² batch 1 eval forward: median wall {:.3} s, median process CPU {:.2} s ({} rayon threads)",
        median(&mut wall),
        median(&mut cpu),
        rayon_threads()
    );
}

fn rayon_threads() -> String {
    std::env::var("RAYON_NUM_THREADS")
        .unwrap_or_else(|_| std::thread::available_parallelism().map(|n| n.get().to_string()).unwrap_or_default())
}
