//! GPU inference with BN folded into the convs (model/hrnet/exec_gpu.rs) under the emulated device, against
//! the CPU fast path (`InferNet`, the same folding) and the reference graph, on a tiny HRNet.
mod common;
use common::model::{randomize, tiny_spec};
use common::{assert_close_scaled, TestValues};

use hrk::cuda::device::GpuDevice;
use hrk::cuda::{with_gpu_math, GpuMath};
use hrk::model::{FusionMode, GpuInferNet, HrNet, InferNet, Slot};
use hrk::{no_grad, Device, Storage, Tensor};

fn input(shape: [usize; 4], seed: u64) -> Vec<f32> {
    common::rng(seed).normals(shape.iter().product())
}

#[track_caller]
fn assert_close(what: &str, got: &[f32], want: &[f32], tol: f64) {
    assert_close_scaled(what, got, want, tol, 1.0);
}

/// The tests of this file run one at a time: the second counts the process-wide tensor writes, which
/// the first's `randomize` would add to when run alongside.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Takes this file's one-at-a-time lock, then builds the tiny 5-landmark net (`seed`, weights randomized
/// with `values_seed`) and an input of `shape` (`input_seed`).
fn setup(
    seed: u64, values_seed: u64, shape: [usize; 4], input_seed: u64,
) -> (std::sync::MutexGuard<'static, ()>, HrNet, Vec<f32>) {
    let serial = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let mut net = HrNet::new(&tiny_spec(5), seed).unwrap();
    randomize(&mut net, values_seed);
    (serial, net, input(shape, input_seed))
}

// The f32 FMA convs (the reference rung) against the CPU at f32 rounding; the tensor-core convs in the
// `*_mma` test below.
#[test]
fn folded_gpu_inference_matches_cpu_infer_net() {
    with_gpu_math(GpuMath::Fp32, folded_gpu_inference_fp32);
}

fn folded_gpu_inference_fp32() {
    // Odd batch and non-square input: branch sizes 6×8, 3×4, 2×2, 1×1 (non-integer resize ratios).
    let shape = [2, 3, 24, 32];
    let (_serial, mut net, x) = setup(3, 7, shape, 11);
    let xt = Tensor::from_f32(&shape, x.clone()).unwrap();
    let want = InferNet::new(&net).unwrap().forward(&xt).unwrap();
    let want_graph = no_grad(|| net.forward(&xt, false)).unwrap().to_f32_vec();

    let dev = GpuDevice::emulated();
    let t0 = std::time::Instant::now();
    let mut gpu = GpuInferNet::new(&net, &dev).unwrap();
    let got = gpu.forward(&xt).unwrap();
    eprintln!("emulated folded forward {:.2}s", t0.elapsed().as_secs_f64());
    assert_eq!(got.shape(), want.shape());
    assert_eq!(got.device(), Device::Gpu(dev.clone()));
    let got = got.to_f32_vec();
    assert_close("gpu folded (fused rows) vs cpu InferNet", &got, &want.to_f32_vec(), 1e-4);
    assert_close("gpu folded (fused rows) vs reference graph", &got, &want_graph, 1e-4);

    gpu.fusion = FusionMode::Unfused;
    let unfused = gpu.forward(&xt).unwrap().to_f32_vec();
    assert_close("gpu folded (unfused rung) vs fused rows", &unfused, &got, 1e-5);
}

#[test]
fn eval_forward_heatmaps_uses_the_folded_plan_on_a_gpu_device() {
    with_gpu_math(GpuMath::Fp32, eval_forward_heatmaps_fp32);
}

/// The folded GPU engine on tf32 tensor cores against the CPU. Each conv's operands round to 10-bit
/// mantissas (a relative error up to 2^-10 per product, times Σ|a||b| / |y|), and the tiny net stacks a
/// dozen convs: measured 2.1e-3 of the scale; the bound is 10 × 2^-10.
#[test]
fn folded_gpu_inference_matches_cpu_under_tf32_mma() {
    let shape = [2, 3, 24, 32];
    let (_serial, net, x) = setup(3, 7, shape, 11);
    let xt = Tensor::from_f32(&shape, x).unwrap();
    let want = InferNet::new(&net).unwrap().forward(&xt).unwrap().to_f32_vec();
    let dev = GpuDevice::emulated();
    let got = with_gpu_math(GpuMath::Tf32, || GpuInferNet::new(&net, &dev).unwrap().forward(&xt).unwrap());
    assert_close("gpu folded tf32 vs cpu InferNet", &got.to_f32_vec(), &want, 10.0 / 1024.0);
}

fn eval_forward_heatmaps_fp32() {
    let shape = [1, 3, 16, 16];
    let (_serial, mut net, x) = setup(5, 9, shape, 13);
    let (want, want_dims) = hrk::eval::forward_heatmaps(&mut net, x.clone(), shape).unwrap();
    net.to_device(&Device::emulated()).unwrap();
    let writes = hrk::tensor::storage_writes();
    let (got, dims) = hrk::eval::forward_heatmaps(&mut net, x.clone(), shape).unwrap();
    assert_eq!(dims, want_dims);
    assert_close("eval::forward_heatmaps on the emulated gpu vs cpu", &got, &want, 1e-4);
    // A second call reuses the cached plan; changing a weight invalidates it.
    let (again, _) = hrk::eval::forward_heatmaps(&mut net, x.clone(), shape).unwrap();
    assert_eq!(again, got);
    assert_eq!(hrk::tensor::storage_writes(), writes, "inference wrote no tensor");
    let last = (0..net.store.len()).rev().find(|&i| matches!(net.store.slot(i), Slot::Param(_))).unwrap();
    let bias = net.store.tensor(last).to_f32_vec().iter().map(|v| v + 1.0).collect();
    net.store.tensor_mut(last).set_storage(Storage::f32(bias)).unwrap();
    let (shifted, _) = hrk::eval::forward_heatmaps(&mut net, x, shape).unwrap();
    let diffs: Vec<f32> = shifted.iter().zip(&got).map(|(a, b)| a - b).collect();
    assert!(diffs.iter().all(|d| (d - 1.0).abs() < 1e-4), "the head bias change did not reach the cached plan");
}
