//! The same op / model code on the CPU and on a GPU device: each test body runs once per device and the
//! GPU results (outputs, gradients, updated state) are compared with the CPU f32 run. The GPU here is the
//! emulated device (the CUDA kernels compiled for the host); the `cuda_*` tests run the same bodies on a
//! real GPU when the crate is built with `--features cuda` and one is visible (skipped otherwise).

mod common;
use common::values;

use hrk::autograd::backward_with;
use hrk::cuda::{with_gpu_math, GpuMath};
use hrk::model::{HrNet, HrnetSpec, Slot};
use hrk::optim::{Adam, Sgd};
use hrk::{backward, no_grad, ops, DType, Device, Storage, Tensor};
use std::collections::HashMap;
use std::path::Path;

// ---------- helpers ----------

/// A leaf on `dev` that records its gradient.
fn leaf(dev: &Device, shape: &[usize], seed: u64) -> Tensor {
    let n = shape.iter().product();
    Tensor::from_f32(shape, values(seed, n)).unwrap().to_device(dev).unwrap().requires_grad()
}

/// Random output gradient for `y`, on its device.
fn seed_grad(y: &Tensor, seed: u64) -> Storage {
    Storage::f32(values(seed, y.numel())).to_device(&y.device()).unwrap()
}

type Named = Vec<(String, Vec<f64>)>;
/// Named groups of results (one group: several tensors' values), as the whole-model bodies give them.
type Groups = Vec<(String, Vec<Vec<f64>>)>;

fn grad_of(grads: &hrk::Gradients, t: &Tensor, dev: &Device) -> Vec<f64> {
    let g = grads.get(t).expect("gradient recorded");
    assert_eq!(g.device(), *dev, "gradient on the wrong device");
    g.to_f64_vec()
}

fn out(name: &str, t: &Tensor, dev: &Device) -> (String, Vec<f64>) {
    assert_eq!(t.device(), *dev, "{name} on the wrong device");
    (name.to_string(), t.to_f64_vec())
}

/// Runs `body` on the CPU and on `dev`; every named result must agree within `tol` × max(1, max|cpu|).
fn compare(what: &str, dev: &Device, tol: f64, body: impl Fn(&Device) -> Named) {
    let cpu = body(&Device::Cpu);
    let gpu = body(dev);
    assert_eq!(cpu.len(), gpu.len(), "{what}: result count");
    for ((name, c), (gname, g)) in cpu.iter().zip(&gpu) {
        assert_eq!(name, gname);
        common::assert_close_scaled(&format!("{what}/{name} on {dev}"), g, c, tol, 1.0);
    }
}

// ---------- one body per op ----------

fn conv_body(dev: &Device) -> Named {
    let mut r = Named::new();
    // 3x3 stride 2 pad 1 with bias (odd sizes), and 1x1 stride 1 without.
    let x = leaf(dev, &[2, 3, 7, 6], 1);
    let w = leaf(dev, &[5, 3, 3, 3], 2);
    let b = leaf(dev, &[5], 3);
    let y = ops::conv2d(&x, &w, Some(&b), 2, 1).unwrap();
    let grads = backward_with(&y, seed_grad(&y, 4)).unwrap();
    r.push(out("y", &y, dev));
    for (n, t) in [("dx", &x), ("dw", &w), ("db", &b)] {
        r.push((n.into(), grad_of(&grads, t, dev)));
    }
    let w1 = leaf(dev, &[4, 3, 1, 1], 5);
    let y1 = ops::conv2d(&x, &w1, None, 1, 0).unwrap();
    let grads = backward_with(&y1, seed_grad(&y1, 6)).unwrap();
    r.push(out("y1x1", &y1, dev));
    r.push(("dx1x1".into(), grad_of(&grads, &x, dev)));
    r.push(("dw1x1".into(), grad_of(&grads, &w1, dev)));
    r
}

fn bn_train_body(dev: &Device) -> Named {
    bn_train_body_with(dev, false)
}

/// relu(batch_norm_train) as one op (the fused kernel on the GPU, the fused pass on the CPU).
fn bn_train_relu_body(dev: &Device) -> Named {
    bn_train_body_with(dev, true)
}

/// BN inputs on `dev` for x of `shape`, from seeds `seed`…`seed + 4`: the leaves x, gamma, beta, and the running
/// mean and (positive) variance.
fn bn_inputs(dev: &Device, shape: [usize; 4], seed: u64) -> [Tensor; 5] {
    let c = shape[1];
    let x = leaf(dev, &shape, seed);
    let gamma = leaf(dev, &[c], seed + 1);
    let beta = leaf(dev, &[c], seed + 2);
    let rm = Tensor::from_f32(&[c], values(seed + 3, c)).unwrap().to_device(dev).unwrap();
    let rv = Tensor::from_f32(&[c], values(seed + 4, c).iter().map(|v| v.abs() + 0.5).collect())
        .unwrap()
        .to_device(dev)
        .unwrap();
    [x, gamma, beta, rm, rv]
}

/// y and the gradients of x, gamma and beta for the output gradient of `grad_seed`.
fn bn_results(dev: &Device, y: &Tensor, [x, gamma, beta]: [&Tensor; 3], grad_seed: u64) -> Named {
    let grads = backward_with(y, seed_grad(y, grad_seed)).unwrap();
    vec![
        out("y", y, dev),
        ("dx".into(), grad_of(&grads, x, dev)),
        ("dgamma".into(), grad_of(&grads, gamma, dev)),
        ("dbeta".into(), grad_of(&grads, beta, dev)),
    ]
}

fn bn_train_body_with(dev: &Device, fused_relu: bool) -> Named {
    let [x, gamma, beta, mut rm, mut rv] = bn_inputs(dev, [3, 4, 5, 3], 10);
    let y = if fused_relu {
        ops::batchnorm::batch_norm_train_relu(&x, &gamma, &beta, &mut rm, &mut rv, 0.1, ops::BN_EPS).unwrap()
    } else {
        ops::batch_norm_train(&x, &gamma, &beta, &mut rm, &mut rv, 0.1, ops::BN_EPS).unwrap()
    };
    if fused_relu {
        let v = y.to_f32_vec();
        assert!(v.contains(&0.0) && v.iter().any(|&a| a > 0.0), "the ReLU must cut some values");
    }
    let mut r = bn_results(dev, &y, [&x, &gamma, &beta], 15);
    r.extend([out("running_mean", &rm, dev), out("running_var", &rv, dev)]);
    r
}

fn bn_eval_body(dev: &Device) -> Named {
    let [x, gamma, beta, rm, rv] = bn_inputs(dev, [2, 3, 4, 5], 20);
    let y = ops::batch_norm_eval(&x, &gamma, &beta, &rm, &rv, ops::BN_EPS).unwrap();
    bn_results(dev, &y, [&x, &gamma, &beta], 25)
}

/// relu, add and scale; `a` is used twice so its gradient goes through accumulation.
fn elementwise_body(dev: &Device) -> Named {
    let a = leaf(dev, &[2, 3, 5, 7], 30);
    let b = leaf(dev, &[2, 3, 5, 7], 31);
    let y = ops::add(&ops::relu(&a).unwrap(), &ops::scale(&b, -0.75).unwrap()).unwrap();
    let y = ops::add(&y, &a).unwrap();
    let grads = backward_with(&y, seed_grad(&y, 32)).unwrap();
    vec![out("y", &y, dev), ("da".into(), grad_of(&grads, &a, dev)), ("db".into(), grad_of(&grads, &b, dev))]
}

fn concat_body(dev: &Device) -> Named {
    let xs = [leaf(dev, &[2, 1, 3, 5], 40), leaf(dev, &[2, 4, 3, 5], 41), leaf(dev, &[2, 2, 3, 5], 42)];
    let y = ops::concat_channels(&xs.iter().collect::<Vec<_>>()).unwrap();
    let grads = backward_with(&y, seed_grad(&y, 43)).unwrap();
    let mut r = vec![out("y", &y, dev)];
    for (i, x) in xs.iter().enumerate() {
        r.push((format!("dx{i}"), grad_of(&grads, x, dev)));
    }
    r
}

fn upsample_body(dev: &Device) -> Named {
    let x = leaf(dev, &[2, 3, 5, 4], 50);
    let up = ops::upsample_bilinear(&x, [9, 7]).unwrap();
    let down = ops::upsample_bilinear(&x, [3, 2]).unwrap();
    let gu = backward_with(&up, seed_grad(&up, 51)).unwrap();
    let gd = backward_with(&down, seed_grad(&down, 52)).unwrap();
    vec![
        out("up", &up, dev),
        out("down", &down, dev),
        ("dx_up".into(), grad_of(&gu, &x, dev)),
        ("dx_down".into(), grad_of(&gd, &x, dev)),
    ]
}

fn mse_body(dev: &Device) -> Named {
    let p = leaf(dev, &[2, 3, 7, 5], 60);
    let t = leaf(dev, &[2, 3, 7, 5], 61);
    let loss = ops::mse_loss(&p, &t).unwrap();
    let grads = backward(&loss).unwrap();
    vec![
        out("loss", &loss, dev),
        ("dpred".into(), grad_of(&grads, &p, dev)),
        ("dtarget".into(), grad_of(&grads, &t, dev)),
    ]
}

/// Three steps of each optimizer on two parameters with fixed gradients.
fn optim_body(dev: &Device) -> Named {
    let mk = |seed| Tensor::from_f32(&[3, 5], values(seed, 15)).unwrap().to_device(dev).unwrap().requires_grad();
    let grads: Vec<Storage> = (0..2).map(|i| Storage::f32(values(70 + i, 15)).to_device(dev).unwrap()).collect();
    let grad_refs: Vec<&Storage> = grads.iter().collect();
    let (mut a0, mut a1) = (mk(72), mk(73));
    let mut adam = Adam::new(0.01, 1e-4);
    let (mut s0, mut s1) = (mk(74), mk(75));
    let mut sgd = Sgd::new(0.1, 0.9, 1e-3, true);
    for _ in 0..3 {
        adam.step(&mut [&mut a0, &mut a1], &grad_refs).unwrap();
        sgd.step(&mut [&mut s0, &mut s1], &grad_refs).unwrap();
    }
    let state = adam.state();
    let m0 = state.iter().find(|(k, _)| k == "exp_avg.0").unwrap().1.to_f64_vec();
    vec![
        out("adam0", &a0, dev),
        out("adam1", &a1, dev),
        ("adam_exp_avg0".into(), m0),
        out("sgd0", &s0, dev),
        out("sgd1", &s1, dev),
    ]
}

// Summation order differs (tree reductions, tiled GEMM, atomics): f32 rounding, scaled to the values.
const TOL_REDUCE: f64 = 2e-5;

fn all_op_bodies(dev: &Device) {
    compare("conv2d", dev, TOL_REDUCE, conv_body);
    compare("batch_norm_train", dev, TOL_REDUCE, bn_train_body);
    compare("batch_norm_train_relu", dev, TOL_REDUCE, bn_train_relu_body);
    compare("batch_norm_eval", dev, TOL_REDUCE, bn_eval_body);
    // Pure per-element f32 arithmetic, identical on both devices.
    compare("relu_add_scale", dev, 0.0, elementwise_body);
    compare("concat", dev, 0.0, concat_body);
    compare("upsample_bilinear", dev, TOL_REDUCE, upsample_body);
    compare("mse_loss", dev, TOL_REDUCE, mse_body);
    compare("optim", dev, TOL_REDUCE, optim_body);
}

// These compare the f32 FMA conv kernels (`GpuMath::Fp32`, the reference rung) with the CPU at f32
// rounding; the tensor-core path has its own tests below (`*_mma`), with bounds from the tf32 mantissa.

#[test]
fn ops_on_emulated_gpu_match_cpu() {
    with_gpu_math(GpuMath::Fp32, || all_op_bodies(&Device::emulated()));
}

// ---------- device errors ----------

#[test]
fn device_mismatch_and_gpu_limits_are_one_line_errors() {
    let emu = Device::emulated();
    let x = leaf(&Device::Cpu, &[1, 2, 4, 4], 1);
    let w = leaf(&emu, &[3, 2, 3, 3], 2);
    let e = ops::conv2d(&x, &w, None, 1, 1).unwrap_err().to_string();
    assert!(e.contains("conv2d") && e.contains("cpu") && e.contains("emu") && !e.contains('\n'), "{e}");
    let xe = x.to_device(&emu).unwrap();
    for e in [
        ops::add(&x, &xe).unwrap_err().to_string(),
        ops::mse_loss(&xe, &x).unwrap_err().to_string(),
        ops::concat_channels(&[&x, &xe]).unwrap_err().to_string(),
    ] {
        assert!(e.contains("device mismatch") && e.contains("cpu") && e.contains("emu") && !e.contains('\n'), "{e}");
    }
    let e = ops::upsample_nearest(&xe, [8, 8]).unwrap_err().to_string();
    assert!(e.contains("upsample_nearest") && e.contains("emu"), "{e}");
    let e = x.cast(DType::F64).to_device(&emu).unwrap_err().to_string();
    assert!(e.contains("f64") && e.contains("emu"), "{e}");
    // An f64 tensor meeting a GPU one is a device error naming the op.
    let e = ops::add(&x.cast(DType::F64), &xe).unwrap_err().to_string();
    assert!(e.contains("add") && e.contains("device mismatch"), "{e}");
    // Optimizer: gradient on another device than its parameter.
    let mut p = xe.clone();
    let g = Storage::f32(vec![0.0; 32]);
    let e = Adam::new(0.1, 0.0).step(&mut [&mut p], &[&g]).unwrap_err().to_string();
    assert!(e.contains("adam") && e.contains("device mismatch"), "{e}");
    // Round trip keeps the values.
    assert_eq!(xe.to_cpu().unwrap().to_f32_vec(), x.to_f32_vec());
    assert_eq!(xe.device(), emu);
    assert_eq!(x.device(), Device::Cpu);
}

// ---------- whole model ----------

/// The case's model, from its config.yaml (the parity test checks it agrees with meta.json).
fn case_spec(dir: &Path) -> HrnetSpec {
    let cfg = hrk::config::load_config(&dir.join("config.yaml")).unwrap_or_else(|e| panic!("{e:#}"));
    HrnetSpec::from_config(&cfg).unwrap()
}

/// Top-left `[.., h, w]` crop of an NCHW host tensor.
fn crop(t: &Tensor, h: usize, w: usize) -> Tensor {
    let [n, c, th, tw] = t.dims4("crop").unwrap();
    let v = t.to_f32_vec();
    let mut out = Vec::with_capacity(n * c * h * w);
    for p in 0..n * c {
        for y in 0..h.min(th) {
            out.extend_from_slice(&v[(p * th + y) * tw..][..w.min(tw)]);
        }
    }
    Tensor::from_f32(&[n, c, h.min(th), w.min(tw)], out).unwrap()
}

/// Input side used on the emulated device: the tiny case's 64×64 input takes minutes there, so by default the model runs on the top-left 32×32 crop of its batch
/// (same weights and layers, every branch still ≥ 1×1); HRK_DEVICE_FULL_MODEL=1 uses the whole input.
fn model_input_side(dev: &Device) -> Option<usize> {
    let emulated = matches!(dev, Device::Gpu(d) if d.is_emulated());
    (emulated && !common::device_full_model()).then_some(32)
}

/// Tiny parity case: eval forward, train forward + loss + backward, running buffers, one Adam step.
/// Results grouped by kind, all copied to the host.
fn model_body(dir: &Path, dev: &Device, side: Option<usize>) -> Groups {
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("meta.json")).unwrap()).unwrap();
    let weights = hrk::io::safetensors::load_safetensors(&dir.join("weights.safetensors")).unwrap().tensors;
    let inputs: HashMap<_, _> =
        hrk::io::safetensors::load_safetensors(&dir.join("inputs.safetensors")).unwrap().tensors.into_iter().collect();
    let mut net = HrNet::new(&case_spec(dir), 0).unwrap();
    net.store.load(&weights, true, "weights.safetensors").unwrap();
    net.to_device(dev).unwrap();
    assert_eq!(net.device(), *dev);
    let (mut x, mut target) =
        (Tensor::from_host(&inputs["input"]).unwrap(), Tensor::from_host(&inputs["target"]).unwrap());
    if let Some(side) = side {
        // The heatmap is the input downsampled by 4.
        x = crop(&x, side, side);
        target = crop(&target, side / 4, side / 4);
    }
    let (x, target) = (x.to_device(dev).unwrap(), target.to_device(dev).unwrap());
    let adam =
        Adam::new(meta["optimizer"]["lr"].as_f64().unwrap(), meta["optimizer"]["weight_decay"].as_f64().unwrap_or(0.0));
    train_step_groups(&mut net, &x, &target, adam, Some(dev))
}

/// Results of one training step of `net` on (`x`, `target`), grouped by kind and copied to the host: eval
/// forward, train forward + MSE loss + backward (with the input's gradient, checked to be on `grad_input_on`,
/// when that is given), the gradients, the BN running buffers, and the parameters after one `adam` step.
fn train_step_groups(
    net: &mut HrNet, x: &Tensor, target: &Tensor, mut adam: Adam, grad_input_on: Option<&Device>,
) -> Groups {
    let mut groups = Vec::new();
    let eval = no_grad(|| net.forward(x, false)).unwrap();
    groups.push(("eval_output".to_string(), vec![eval.to_f64_vec()]));
    let xg = if grad_input_on.is_some() { x.detach().requires_grad() } else { x.clone() };
    let y = net.forward(&xg, true).unwrap();
    groups.push(("train_output".to_string(), vec![y.to_f64_vec()]));
    let loss = ops::mse_loss(&y, target).unwrap();
    groups.push(("loss".to_string(), vec![loss.to_f64_vec()]));
    let grads = backward(&loss).unwrap();
    if let Some(dev) = grad_input_on {
        groups.push(("grad_input".to_string(), vec![grad_of(&grads, &xg, dev)]));
    }
    let grad_list: Vec<Storage> =
        net.store.params().iter().map(|p| grads.get(p).unwrap().try_clone().unwrap()).collect();
    groups.push(("grad".to_string(), grad_list.iter().map(|g| g.to_f64_vec()).collect()));
    let buffers = (0..net.store.len())
        .filter_map(|i| match net.store.slot(i) {
            Slot::Buffer(t) => Some(t.to_f64_vec()),
            _ => None,
        })
        .collect();
    groups.push(("buffer_after_train".to_string(), buffers));
    adam.step(&mut net.store.params_mut(), &grad_list.iter().collect::<Vec<_>>()).unwrap();
    groups.push(("param_after_adam".to_string(), net.store.params().iter().map(|p| p.to_f64_vec()).collect()));
    groups
}

fn compare_model(dev: &Device, loosen: f64) {
    let dir = common::parity_cases()
        .and_then(|l| l.into_iter().next())
        .unwrap_or_else(|| common::shared_dir().join("parity/tiny"));
    if !dir.join("meta.json").is_file() {
        eprintln!("skipped: no parity case at {} (set HRK_SHARED)", dir.display());
        return;
    }
    let side = model_input_side(dev);
    let input = side.map_or("the full input".to_string(), |s| format!("a {s}x{s} crop of the input"));
    compare_timed_groups_within(&format!("tiny model ({input})"), dev, loosen, |d| model_body(&dir, d, side));
}

/// Runs `body` on the CPU and on `dev`, prints both times, and compares the groups of results.
fn compare_timed_groups(what: &str, dev: &Device, body: impl Fn(&Device) -> Groups) {
    compare_timed_groups_within(what, dev, 1.0, body)
}

/// As `compare_timed_groups`, with every bound multiplied by `loosen`.
fn compare_timed_groups_within(what: &str, dev: &Device, loosen: f64, body: impl Fn(&Device) -> Groups) {
    let t0 = std::time::Instant::now();
    let cpu = body(&Device::Cpu);
    let t_cpu = t0.elapsed();
    let t0 = std::time::Instant::now();
    let gpu = body(dev);
    eprintln!("{what} on cpu {:.2}s, on {dev} {:.2}s", t_cpu.as_secs_f64(), t0.elapsed().as_secs_f64());
    compare_groups(dev, &cpu, &gpu, loosen);
}

/// Every group of results agrees between the CPU and `dev` (relative L2 and max error, per group).
fn compare_groups(dev: &Device, cpu: &[(String, Vec<Vec<f64>>)], gpu: &[(String, Vec<Vec<f64>>)], loosen: f64) {
    assert_eq!(cpu.len(), gpu.len(), "result groups");
    let mut failures = Vec::new();
    for ((name, c), (_, g)) in cpu.iter().zip(gpu) {
        let (mut d2, mut r2, mut dmax, mut rmax) = (0.0f64, 0.0f64, 0.0f64, 0.0f64);
        for (a, b) in c.iter().flatten().zip(g.iter().flatten()) {
            d2 += (a - b) * (a - b);
            r2 += a * a;
            dmax = dmax.max((a - b).abs());
            rmax = rmax.max(a.abs());
        }
        let rel = (d2 / r2.max(1e-300)).sqrt();
        eprintln!("model {name:<20} on {dev}: rel_l2 {rel:.2e}  max|d| {dmax:.2e}  (max|cpu| {rmax:.2e})");
        // f32 rounding in different summation orders. Forward values stay close; the backward pass
        // amplifies it (BN over 2 values per channel in the 1×1 branch of the crop, ReLU decisions
        // within rounding of 0 that flip), as in the f32-vs-f64 bounds of tests/parity.rs.
        let bound = loosen * if name.contains("output") || name == "loss" { 1e-4 } else { 5e-3 };
        if rel > bound || dmax > bound * rmax.max(1e-30) {
            failures.push(format!("{name}: rel_l2 {rel:e} max|d| {dmax:e} (bound {bound:e} × max|cpu| {rmax:e})"));
        }
    }
    assert!(failures.is_empty(), "model on {dev}: {}", failures.join("; "));
}

/// A 4-stage HRNet with 2–16 channels per branch (the stem and layer1 are HRNet's own) and the official
/// initialisation, with BN statistics moved off their initial values so eval-mode BN is not the identity.
fn small_net(dev: &Device) -> HrNet {
    let mut spec = HrnetSpec::w18(5);
    for (k, st) in spec.stages.iter_mut().enumerate() {
        st.num_modules = 1;
        st.num_blocks = vec![1; k + 2];
        st.num_channels = (0..k + 2).map(|i| 2 << i).collect();
    }
    let mut net = HrNet::new(&spec, 21).unwrap();
    for i in 0..net.store.len() {
        let name = net.store.name(i).to_string();
        if let Slot::Buffer(t) = net.store.slot(i) {
            let n = t.numel();
            let v: Vec<f32> = values(i as u64 + 1, n)
                .iter()
                .map(|v| if name.ends_with("running_var") { 1.0 + 0.5 * v } else { 0.1 * v })
                .collect();
            net.store.tensor_mut(i).set_storage(Storage::f32(v)).unwrap();
        }
    }
    net.to_device(dev).unwrap();
    net
}

/// Eval forward, train forward + MSE loss + backward, BN running buffers, one Adam step, on 2 images of
/// 16×16 (branches 4×4 … 1×1: two values per channel in BN, the least training BN accepts).
fn small_model_body(dev: &Device) -> Groups {
    let mut net = small_net(dev);
    let x = Tensor::from_f32(&[2, 3, 16, 16], values(31, 2 * 3 * 16 * 16)).unwrap().to_device(dev).unwrap();
    let target = Tensor::from_f32(&[2, 5, 4, 4], values(32, 2 * 5 * 4 * 4)).unwrap().to_device(dev).unwrap();
    train_step_groups(&mut net, &x, &target, Adam::new(1e-3, 1e-4), None)
}

/// The small whole-model check on the emulated device (a few seconds; the parity case below runs the tiny
/// case's inputs).
#[test]
fn small_model_on_emulated_gpu_matches_cpu() {
    with_gpu_math(GpuMath::Fp32, || compare_timed_groups("small model", &Device::emulated(), small_model_body));
}

#[test]
fn tiny_model_on_emulated_gpu_matches_cpu() {
    with_gpu_math(GpuMath::Fp32, || compare_model(&Device::emulated(), 1.0));
}

// ---------- real CUDA (same bodies) ----------

fn cuda_device() -> Option<Device> {
    #[cfg(feature = "cuda")]
    {
        match hrk::cuda::device::GpuDevice::cuda(0) {
            Ok(d) => Some(Device::Gpu(d)),
            Err(e) => {
                eprintln!("skipped: {e:#}");
                None
            }
        }
    }
    #[cfg(not(feature = "cuda"))]
    {
        eprintln!("skipped: built without the `cuda` feature (cargo test --release --features cuda)");
        None
    }
}

#[test]
fn cuda_ops_match_cpu() {
    if let Some(dev) = cuda_device() {
        with_gpu_math(GpuMath::Fp32, || all_op_bodies(&dev));
    }
}

#[test]
fn cuda_tiny_model_matches_cpu() {
    if let Some(dev) = cuda_device() {
        with_gpu_math(GpuMath::Fp32, || compare_model(&dev, 1.0));
    }
}

// ---------- the tensor-core convs (tf32, the default GPU math) ----------

/// tf32 rounds each conv operand to 10 explicit mantissa bits (unit roundoff u = 2^-11), so a product
/// carries a relative error up to 2u + u² ≈ 2^-10 instead of f32's 2^-24: per output, |error| ≤ 2^-10 ·
/// Σ|a||b| + f32 accumulation. In `conv_body` (values uniform in [-1, 1), 27 to 84 products per output)
/// Σ|a||b| averages K/4 against a scale ≥ 1, and the rounding errors have random signs, so they add like a
/// random walk: 8 · 2^-10 of the scale; measured 3.3e-4 (dw1x1), a 20× margin.
const TOL_TF32_CONV: f64 = 8.0 / 1024.0;

/// Through a whole model the per-conv tf32 error (above, ~2^-10 relative, 4096 × f32's 2^-22) compounds,
/// and the small model's training BN normalises 2 values per channel in its 1×1 branches, where a rounding
/// difference in the two values moves the normalised output by a large fraction: the f32 bounds of
/// `compare_groups` (1e-4 forward, 5e-3 gradients) times 50. Measured on the small model: forward 3.9e-5
/// of the scale, gradients 0.15 relative L2 (bound 0.25), parameters after Adam 5.6e-3.
const LOOSEN_TF32_MODEL: f64 = 50.0;

#[test]
fn conv_on_emulated_gpu_matches_cpu_under_tf32_mma() {
    with_gpu_math(GpuMath::Tf32, || compare("conv2d tf32", &Device::emulated(), TOL_TF32_CONV, conv_body));
}

#[test]
fn small_model_on_emulated_gpu_matches_cpu_under_tf32_mma() {
    with_gpu_math(GpuMath::Tf32, || {
        compare_timed_groups_within("small model tf32", &Device::emulated(), LOOSEN_TF32_MODEL, small_model_body)
    });
}

#[test]
fn cuda_conv_matches_cpu_under_tf32_mma() {
    if let Some(dev) = cuda_device() {
        with_gpu_math(GpuMath::Tf32, || compare("conv2d tf32", &dev, TOL_TF32_CONV, conv_body));
    }
}

/// The tiny parity case under tf32 on a real GPU (full input). Not verified yet: on the emulated device
/// only the 32×32 crop fits in time, and there its 1×1 branch's training BN normalises 2 values per
/// channel, so tf32 rounding flips which of the two is larger: measured eval output 8.2e-3 relative L2
/// (2.0e-2 max, over this bound), training output 0.13 and gradients 2.3 relative L2 (uncorrelated), Adam
/// parameters 1.8e-3. Run it on a device to measure the full-input figures before trusting the bound.
#[test]
#[ignore = "bound not yet measured on a device (see the comment); run on a GPU with --ignored"]
fn cuda_tiny_model_matches_cpu_under_tf32_mma() {
    if let Some(dev) = cuda_device() {
        with_gpu_math(GpuMath::Tf32, || compare_model(&dev, LOOSEN_TF32_MODEL));
    }
}
