//! One benchmark per CUDA kernel, on three rungs:
//! - cpu: the engine's CPU op on a real HRNetV2-W18 shape (median of up to 10 runs after a warm-up);
//! - emu: the same .cu kernel under the host emulator on a tiny odd shape, checked against the CPU op —
//!   a correctness run, not a speed;
//! - cuda: the kernel on the GPU on the real shape, the device synchronised before the clock stops
//!   (skipped with a printed reason without the `cuda` feature or a GPU).
//!
//! Throughput is GFLOP/s for the convolutions (2·MACs; compute-bound) and GB/s of compulsory traffic
//! (each input read once, each output written once) for the rest (memory-bound), with the % of the
//! roofline: CPU 205 GFLOP/s (PERFORMANCE.md, 2 threads) and, for memory, the host copy bandwidth
//! measured at the start of this run (PERFORMANCE.md gives no CPU bandwidth); GPU 60 TFLOP/s fp32 and
//! 3.0 TB/s (PERFORMANCE.md, H100), and the dense tensor-core peaks (495 TFLOP/s tf32, 989 bf16) for the
//! `conv_tf32_*` / `conv_bf16_*` rungs (the same convs as `conv2d_*`, on kernels/conv_mma.cu).
//!
//! `cargo bench --bench kernels [-- FILTER]` (FILTER: substring of the kernel name);
//! `HRK_BENCH_RUNGS=cpu,emu,cuda` picks rungs (default all).
use anyhow::Result;
use hrk::autograd::backward_with;
use hrk::cuda::kernels::{self, Kernel};
use hrk::cuda::params::*;
use hrk::cuda::{with_gpu_math, GpuMath};
use hrk::cuda::{GpuBuffer, GpuDevice};
use hrk::ops::concat::cuda_kernel::concat_into;
use hrk::ops::conv2d::cuda_kernel::{forward_buffers as conv2d_forward, ConvEpilogue};
use hrk::ops::fusion::{self, UpTerm};
use hrk::ops::upsample::cuda_kernel::bilinear_buffers;
use hrk::ops::{self, Conv2dGeom};
use hrk::{no_grad, Storage, Tensor};
use std::time::Instant;

const CPU_PEAK_GFLOPS: f64 = 205.0;
const GPU_PEAK_GFLOPS: f64 = 60_000.0;
/// Dense tensor-core peaks of an H100/H200 (PERFORMANCE.md: ~495 TFLOP/s tf32, ~989 bf16).
const GPU_PEAK_TF32_GFLOPS: f64 = 495_000.0;
const GPU_PEAK_BF16_GFLOPS: f64 = 989_000.0;
const GPU_PEAK_GBS: f64 = 3_000.0;

#[derive(Clone, Copy)]
enum Work {
    Flop(f64),
    Bytes(f64),
}

/// Runs the op once; returns its output on the host when asked (`true`), else an empty vector.
type Run = Box<dyn FnMut(bool) -> Result<Vec<f32>>>;
type GpuSetup = Box<dyn Fn(&GpuDevice) -> Result<Run>>;

struct Entry {
    shape: String,
    work: Work,
    cpu: Run,
    gpu: GpuSetup,
    /// What the cpu rung does instead, when it cannot run the kernel's work alone.
    cpu_work: Option<(&'static str, Work)>,
    /// Tolerance of the emulated output against the CPU op (relative to max(1, max|cpu|)).
    tol: f32,
}

fn data(n: usize, seed: u64) -> Vec<f32> {
    let mut rng = hrk::rng::Rng::new(seed);
    (0..n).map(|_| rng.uniform() as f32 * 2.0 - 1.0).collect()
}
fn positive(n: usize, seed: u64) -> Vec<f32> {
    data(n, seed).iter().map(|v| v.abs() + 0.5).collect()
}
fn tensor(shape: &[usize], v: &[f32]) -> Tensor {
    Tensor::from_f32(shape, v.to_vec()).expect("bench shape")
}
fn out(t: &Tensor, want: bool) -> Result<Vec<f32>> {
    Ok(if want { t.try_to_f32_vec()? } else { Vec::new() })
}
fn download(b: &GpuBuffer, want: bool) -> Result<Vec<f32>> {
    if want {
        b.to_vec()
    } else {
        Ok(Vec::new())
    }
}
fn launch<P: hrk::cuda::device::KernelParams>(dev: &GpuDevice, k: &Kernel<P>, p: &P) -> Result<()> {
    // SAFETY: every bench builds its parameter struct from buffers it owns, sized for the shape.
    unsafe { dev.launch(k, p) }
}

// ---------- convolution ----------

#[derive(Clone, Copy)]
enum ConvPass {
    Forward,
    /// The epilogue of a BN-folded conv in inference: + bias + residual, ReLU.
    ForwardFolded,
    BackwardData,
    BackwardWeight,
}

fn conv(pass: ConvPass, [n, ci, h, w]: [usize; 4], co: usize, k: usize, stride: usize) -> Entry {
    conv_math(GpuMath::Fp32, pass, [n, ci, h, w], co, k, stride)
}

/// A conv entry on the kernels of `math` (the `conv_tf32_*` / `conv_bf16_*` rungs; `conv` is fp32).
fn conv_math(math: GpuMath, pass: ConvPass, [n, ci, h, w]: [usize; 4], co: usize, k: usize, stride: usize) -> Entry {
    let pad = k / 2;
    let g = Conv2dGeom::new([n, ci, h, w], &[co, ci, k, k], stride, pad).expect("conv shape");
    let (x, wt, b, dy) =
        (data(n * ci * h * w, 1), data(co * ci * k * k, 2), data(co, 3), data(n * co * g.ho * g.wo, 4));
    let xd = [n, ci, h, w];
    let wd = [co, ci, k, k];
    let yd = [n, co, g.ho, g.wo];
    let (xt, wtt, bt) = (tensor(&xd, &x), tensor(&wd, &wt), tensor(&[co], &b));
    let cpu: Run = match pass {
        ConvPass::Forward => {
            Box::new(move |want| out(&no_grad(|| ops::conv2d(&xt, &wtt, Some(&bt), stride, pad))?, want))
        }
        ConvPass::ForwardFolded => {
            let res = tensor(&yd, &data(yd.iter().product(), 5));
            Box::new(move |want| {
                out(&no_grad(|| ops::relu(&ops::add(&ops::conv2d(&xt, &wtt, Some(&bt), stride, pad)?, &res)?))?, want)
            })
        }
        ConvPass::BackwardData | ConvPass::BackwardWeight => {
            let data_pass = matches!(pass, ConvPass::BackwardData);
            // The CPU op cannot compute dx alone (its backward reads x, which it keeps only when the
            // weight needs a gradient): the data pass computes dx and dW there, counted as such below.
            let (xg, wg) =
                if data_pass { (xt.requires_grad(), wtt.requires_grad()) } else { (xt, wtt.requires_grad()) };
            let y = ops::conv2d(&xg, &wg, None, stride, pad).expect("conv");
            Box::new(move |want| {
                let grads = backward_with(&y, Storage::f32(dy.clone()))?;
                let g = grads.get(if data_pass { &xg } else { &wg }).expect("gradient");
                Ok(if want { g.try_to_f32_vec()? } else { Vec::new() })
            })
        }
    };
    let (x2, w2, b2, dy2) = (x.clone(), wt.clone(), b.clone(), data(n * co * g.ho * g.wo, 4));
    let gpu: GpuSetup = Box::new(move |dev| {
        let (xb, wb, bb, dyb) = (dev.upload(&x2)?, dev.upload(&w2)?, dev.upload(&b2)?, dev.upload(&dy2)?);
        let res = dev.upload(&data(yd.iter().product(), 5))?;
        let base = Conv2dParams::new("conv2d", [n, ci, h, w], co, k, stride, pad, [yd[2], yd[3]])?;
        let dev = dev.clone();
        Ok(match pass {
            ConvPass::Forward => Box::new(move |want| {
                let ep = ConvEpilogue { bias: Some(&bb), ..Default::default() };
                let (y, _) = with_gpu_math(math, || conv2d_forward(&xb, xd, &wb, wd, stride, pad, ep))?;
                download(&y, want)
            }) as Run,
            ConvPass::ForwardFolded => Box::new(move |want| {
                let ep = ConvEpilogue { bias: Some(&bb), residual: Some(&res), relu: true };
                let (y, _) = with_gpu_math(math, || conv2d_forward(&xb, xd, &wb, wd, stride, pad, ep))?;
                download(&y, want)
            }) as Run,
            ConvPass::BackwardData => Box::new(move |want| {
                let mut dx = dev.empty(n * ci * h * w)?;
                launch(
                    &dev,
                    kernels::conv_backward_data_kernel(math),
                    &Conv2dParams { weight: wb.addr(), dy: dyb.addr(), dx: dx.addr_mut(), ..base },
                )?;
                download(&dx, want)
            }),
            ConvPass::BackwardWeight => Box::new(move |want| {
                let mut dw = dev.zeros(co * ci * k * k)?;
                let mut p = Conv2dParams { x: xb.addr(), dy: dyb.addr(), dw: dw.addr_mut(), ..base };
                p.k_splits = kernels::conv_weight_k_splits(&p);
                launch(&dev, kernels::conv_backward_weight_kernel(math), &p)?;
                download(&dw, want)
            }),
        })
    });
    let shape = format!("{k}x{k}s{stride} {ci}->{co} @{h}x{w} b{n}");
    let flop = 2.0 * g.macs() as f64;
    let cpu_work = if matches!(pass, ConvPass::BackwardData) {
        Some(("dx and dW together", Work::Flop(2.0 * flop)))
    } else {
        None
    };
    // Emulated tensor-core output against the CPU's f32: the operands' unit roundoff (tf32 2^-11, bf16
    // 2^-8) twice per product, times Σ|a||b| / max|y| (below 8 on these uniform [-1, 1) tiny shapes).
    let tol = match math {
        GpuMath::Fp32 => 1e-4,
        GpuMath::Tf32 => 8.0 * 2.0 * 2f32.powi(-11),
        GpuMath::Bf16 => 8.0 * 2.0 * 2f32.powi(-8),
    };
    Entry { shape, work: Work::Flop(flop), cpu_work, cpu, gpu, tol }
}

// ---------- batch norm ----------

#[derive(Clone, Copy, PartialEq)]
enum BnPass {
    TrainForward,
    TrainBackward,
    Eval,
    EvalRelu,
}

fn bn(pass: BnPass, d: [usize; 4]) -> Entry {
    let [n, c, h, w] = d;
    let len = n * c * h * w;
    let (x, gamma, beta, rm, rv, dy) =
        (data(len, 5), data(c, 6), data(c, 7), data(c, 8), positive(c, 9), data(len, 10));
    let eps = 1e-5;
    let (xt, gt, bt) = (tensor(&d, &x), tensor(&[c], &gamma), tensor(&[c], &beta));
    let (mut rmt, mut rvt) = (tensor(&[c], &rm), tensor(&[c], &rv));
    let cpu: Run = match pass {
        BnPass::TrainForward => Box::new(move |want| {
            // Running statistics drift over the runs; the emulator check uses the first run only.
            let (mut m, mut v) = (rmt.clone(), rvt.clone());
            out(&no_grad(|| ops::batch_norm_train(&xt, &gt, &bt, &mut m, &mut v, 0.1, eps))?, want)
        }),
        BnPass::TrainBackward => {
            let xg = xt.requires_grad();
            let y = ops::batch_norm_train(&xg, &gt, &bt, &mut rmt, &mut rvt, 0.1, eps).expect("bn");
            Box::new(move |want| {
                let grads = backward_with(&y, Storage::f32(dy.clone()))?;
                Ok(if want { grads.get(&xg).expect("gradient").try_to_f32_vec()? } else { Vec::new() })
            })
        }
        BnPass::Eval => {
            Box::new(move |want| out(&no_grad(|| ops::batch_norm_eval(&xt, &gt, &bt, &rmt, &rvt, eps))?, want))
        }
        // The CPU has no fused BN+ReLU op: the two ops it runs instead.
        BnPass::EvalRelu => Box::new(move |want| {
            out(&no_grad(|| ops::relu(&ops::batch_norm_eval(&xt, &gt, &bt, &rmt, &rvt, eps)?))?, want)
        }),
    };
    let dy2 = data(len, 10);
    let gpu: GpuSetup = Box::new(move |dev| {
        let (xb, gb, bb, dyb) = (dev.upload(&x)?, dev.upload(&gamma)?, dev.upload(&beta)?, dev.upload(&dy2)?);
        let (rm0, rv0) = (rm.clone(), rv.clone());
        let (mut mean, mut invstd) = (dev.empty(c)?, dev.empty(c)?);
        let mut base = BatchNormParams {
            x: xb.addr(),
            gamma: gb.addr(),
            beta: bb.addr(),
            momentum: 0.1,
            ..BatchNormParams::new("batch_norm", [n, c, h, w], eps)?
        };
        let dev = dev.clone();
        if pass == BnPass::TrainBackward {
            // The saved batch statistics the backward reads.
            let (mut m, mut v) = (dev.upload(&rm0)?, dev.upload(&rv0)?);
            let mut y = dev.empty(len)?;
            let p = BatchNormParams {
                y: y.addr_mut(),
                running_mean: m.addr_mut(),
                running_var: v.addr_mut(),
                save_mean: mean.addr_mut(),
                save_invstd: invstd.addr_mut(),
                ..base
            };
            launch(&dev, &kernels::BN_TRAIN_STATS, &p)?;
        }
        base.save_mean = mean.addr_mut();
        base.save_invstd = invstd.addr_mut();
        let (rmb, rvb) = (dev.upload(&rm0)?, dev.upload(&rv0)?);
        Ok(Box::new(move |want| {
            // The launches address these buffers through `base`: keep them alive with the closure.
            let _keep = (&xb, &gb, &bb, &mean, &invstd);
            let mut y = dev.empty(len)?;
            match pass {
                BnPass::TrainForward => {
                    let (mut m, mut v) = (dev.upload(&rm0)?, dev.upload(&rv0)?);
                    let p = BatchNormParams {
                        y: y.addr_mut(),
                        running_mean: m.addr_mut(),
                        running_var: v.addr_mut(),
                        ..base
                    };
                    launch(&dev, &kernels::BN_TRAIN_STATS, &p)?;
                    launch(&dev, &kernels::BN_TRAIN_APPLY, &p)?;
                }
                BnPass::TrainBackward => {
                    let (mut s1, mut s2) = (dev.empty(c)?, dev.empty(c)?);
                    let p = BatchNormParams {
                        dy: dyb.addr(),
                        dx: y.addr_mut(),
                        sum_dy: s1.addr_mut(),
                        sum_dy_xhat: s2.addr_mut(),
                        ..base
                    };
                    launch(&dev, &kernels::BN_BACKWARD_REDUCE, &p)?;
                    launch(&dev, &kernels::BN_BACKWARD_DATA, &p)?;
                }
                BnPass::Eval | BnPass::EvalRelu => {
                    let p =
                        BatchNormParams { y: y.addr_mut(), running_mean: rmb.addr(), running_var: rvb.addr(), ..base };
                    launch(
                        &dev,
                        if pass == BnPass::Eval { &kernels::BN_EVAL_FORWARD } else { &kernels::BN_EVAL_FORWARD_RELU },
                        &p,
                    )?;
                }
            }
            download(&y, want)
        }) as Run)
    });
    let f = 4.0;
    let bytes = match pass {
        BnPass::TrainForward => 3.0 * len as f64 * f, // x read by the stats and by the apply, y written
        BnPass::TrainBackward => 3.0 * len as f64 * f, // x, dy read; dx written
        BnPass::Eval | BnPass::EvalRelu => 2.0 * len as f64 * f,
    };
    Entry { shape: format!("{d:?}"), work: Work::Bytes(bytes), cpu_work: None, cpu, gpu, tol: 1e-4 }
}

// ---------- resize, elementwise, concat, loss ----------

fn bilinear(backward: bool, [n, c, h, w]: [usize; 4], to: [usize; 2]) -> Entry {
    let (x, dy) = (data(n * c * h * w, 11), data(n * c * to[0] * to[1], 12));
    let xt = tensor(&[n, c, h, w], &x);
    let cpu: Run = if backward {
        let xg = xt.requires_grad();
        let y = ops::upsample_bilinear(&xg, to).expect("upsample");
        let dy = dy.clone();
        Box::new(move |want| {
            let grads = backward_with(&y, Storage::f32(dy.clone()))?;
            Ok(if want { grads.get(&xg).expect("gradient").try_to_f32_vec()? } else { Vec::new() })
        })
    } else {
        Box::new(move |want| out(&no_grad(|| ops::upsample_bilinear(&xt, to))?, want))
    };
    let gpu: GpuSetup = Box::new(move |dev| {
        let (xb, dyb) = (dev.upload(&x)?, dev.upload(&dy)?);
        let dev = dev.clone();
        Ok(Box::new(move |want| {
            if !backward {
                return download(&bilinear_buffers(&xb, n * c, [h, w], to)?, want);
            }
            let mut dx = dev.zeros(n * c * h * w)?;
            let p = UpsampleParams {
                dy: dyb.addr(),
                dx: dx.addr_mut(),
                ..UpsampleParams::new("upsample_bilinear", n * c, [h, w], to)?
            };
            launch(&dev, &kernels::BILINEAR_BACKWARD, &p)?;
            download(&dx, want)
        }) as Run)
    });
    let bytes = 4.0 * (n * c * (h * w + to[0] * to[1])) as f64;
    Entry {
        shape: format!("[{n}, {c}, {h}, {w}] -> {to:?}"),
        work: Work::Bytes(bytes),
        cpu_work: None,
        cpu,
        gpu,
        tol: 1e-5,
    }
}

fn eltwise(is_add: bool, d: [usize; 4]) -> Entry {
    let len: usize = d.iter().product();
    let (a, b) = (data(len, 13), data(len, 14));
    let (at, bt) = (tensor(&d, &a), tensor(&d, &b));
    let cpu: Run =
        Box::new(move |want| out(&no_grad(|| if is_add { ops::add(&at, &bt) } else { ops::relu(&at) })?, want));
    let gpu: GpuSetup = Box::new(move |dev| {
        let (ab, bb) = (dev.upload(&a)?, dev.upload(&b)?);
        let dev = dev.clone();
        Ok(Box::new(move |want| {
            let mut y = dev.empty(len)?;
            let p = EltwiseParams::new(ab.addr(), bb.addr(), y.addr_mut(), len);
            launch(&dev, if is_add { &kernels::ADD } else { &kernels::RELU_FORWARD }, &p)?;
            download(&y, want)
        }) as Run)
    });
    let bytes = 4.0 * len as f64 * if is_add { 3.0 } else { 2.0 };
    Entry { shape: format!("{d:?}"), work: Work::Bytes(bytes), cpu_work: None, cpu, gpu, tol: 0.0 }
}

fn concat(n: usize, channels: &[usize], hw: [usize; 2]) -> Entry {
    let plane = hw[0] * hw[1];
    let parts: Vec<Vec<f32>> = channels.iter().enumerate().map(|(i, &c)| data(n * c * plane, 20 + i as u64)).collect();
    let tensors: Vec<Tensor> = parts.iter().zip(channels).map(|(v, &c)| tensor(&[n, c, hw[0], hw[1]], v)).collect();
    let total: usize = channels.iter().sum();
    let cpu: Run =
        Box::new(move |want| out(&no_grad(|| ops::concat_channels(&tensors.iter().collect::<Vec<_>>()))?, want));
    let chans = channels.to_vec();
    let gpu: GpuSetup = Box::new(move |dev| {
        let bufs = parts.iter().map(|v| dev.upload(v)).collect::<Result<Vec<_>>>()?;
        let (dev, chans) = (dev.clone(), chans.clone());
        Ok(Box::new(move |want| {
            let mut whole = dev.empty(n * total * plane)?;
            let mut c0 = 0;
            for (b, &c) in bufs.iter().zip(&chans) {
                concat_into(b, &mut whole, n, c, total, c0, plane)?;
                c0 += c;
            }
            download(&whole, want)
        }) as Run)
    });
    Entry {
        shape: format!("b{n} {channels:?} @{}x{}", hw[0], hw[1]),
        work: Work::Bytes(8.0 * (n * total * plane) as f64),
        cpu_work: None,
        cpu,
        gpu,
        tol: 0.0,
    }
}

fn mse(d: [usize; 4]) -> Entry {
    let len: usize = d.iter().product();
    let (p, t) = (data(len, 30), data(len, 31));
    let (pt, tt) = (tensor(&d, &p), tensor(&d, &t));
    let cpu: Run = Box::new(move |want| out(&no_grad(|| ops::mse_loss(&pt, &tt))?, want));
    let gpu: GpuSetup = Box::new(move |dev| {
        let (pb, tb) = (dev.upload(&p)?, dev.upload(&t)?);
        let dev = dev.clone();
        let parts = kernels::mse_num_partials(len as i64);
        Ok(Box::new(move |want| {
            let (mut partial, mut loss) = (dev.empty(parts as usize)?, dev.empty(1)?);
            let p = MseParams {
                pred: pb.addr(),
                target: tb.addr(),
                partial: partial.addr_mut(),
                loss: loss.addr_mut(),
                n: len as i64,
                num_partials: parts,
                ..Default::default()
            };
            launch(&dev, &kernels::MSE_LOSS_PARTIAL, &p)?;
            launch(&dev, &kernels::MSE_LOSS_FINALIZE, &p)?;
            download(&loss, want)
        }) as Run)
    });
    Entry { shape: format!("{d:?}"), work: Work::Bytes(8.0 * len as f64), cpu_work: None, cpu, gpu, tol: 1e-5 }
}

// ---------- optimizers ----------

fn optim(adam: bool, len: usize) -> Entry {
    let (p0, g) = (data(len, 40), data(len, 41));
    let (lr, wd) = (1e-3, 1e-4);
    let mut param = tensor(&[len], &p0);
    let grad = Storage::f32(g.clone());
    let mut adam_cpu = hrk::optim::Adam::new(lr, wd);
    let mut sgd_cpu = hrk::optim::Sgd::new(lr, 0.9, wd, false);
    // Each run is one more step from the state the previous runs left; the emulator check compares
    // the first step.
    let cpu: Run = Box::new(move |want| {
        if adam {
            adam_cpu.step(&mut [&mut param], &[&grad])?;
        } else {
            sgd_cpu.step(&mut [&mut param], &[&grad])?;
        }
        out(&param, want)
    });
    let gpu: GpuSetup = Box::new(move |dev| {
        let (mut pb, gb) = (dev.upload(&p0)?, dev.upload(&g)?);
        let (mut m, mut v) = (dev.zeros(len)?, dev.zeros(len)?);
        let dev = dev.clone();
        let mut t = 0;
        Ok(Box::new(move |want| {
            t += 1;
            let (b1, b2) = (0.9f64, 0.999f64);
            let p = OptimParams {
                param: pb.addr_mut(),
                grad: gb.addr(),
                exp_avg: m.addr_mut(),
                exp_avg_sq: v.addr_mut(),
                momentum_buf: if adam { 0 } else { m.addr_mut() },
                step_scalars: 0,
                n: len as i64,
                lr: lr as f32,
                weight_decay: wd as f32,
                beta1: b1 as f32,
                beta2: b2 as f32,
                eps: 1e-8,
                bias_correction1: (1.0 - b1.powi(t)) as f32,
                bias_correction2_sqrt: (1.0 - b2.powi(t)).sqrt() as f32,
                momentum: 0.9,
                dampening: 0.0,
                nesterov: 0,
                first_step: (t == 1) as i32,
                pad_: 0,
            };
            launch(&dev, if adam { &kernels::ADAM_STEP } else { &kernels::SGD_STEP }, &p)?;
            download(&pb, want)
        }) as Run)
    });
    // Adam: read p, g, m, v and write p, m, v; SGD with momentum: read p, g, buf and write p, buf.
    let bytes = 4.0 * len as f64 * if adam { 7.0 } else { 5.0 };
    Entry { shape: format!("{len} params"), work: Work::Bytes(bytes), cpu_work: None, cpu, gpu, tol: 1e-5 }
}

// ---------- heatmap decode ----------

fn heatmap(maps: usize, h: usize, w: usize) -> Entry {
    // Positive peaks somewhere in each map, so the quarter-pixel shift is exercised.
    let hm: Vec<f32> = data(maps * h * w, 50).iter().map(|v| v + 0.2).collect();
    let hm2 = hm.clone();
    let cpu: Run = Box::new(move |want| {
        let mut coords = Vec::with_capacity(maps * 2);
        for m in 0..maps {
            let c = hrk::data::codec::refine_coords(&hm2[m * h * w..][..h * w], h, w, [w, h]);
            // The kernel stops before decode's +0.5 / affine step.
            coords.extend([c[0] - 0.5, c[1] - 0.5]);
        }
        Ok(if want { coords } else { Vec::new() })
    });
    let gpu: GpuSetup = Box::new(move |dev| {
        let hb = dev.upload(&hm)?;
        let dev = dev.clone();
        Ok(Box::new(move |want| {
            let (mut coords, mut maxvals) = (dev.empty(maps * 2)?, dev.empty(maps)?);
            let p = HeatmapParams {
                heatmaps: hb.addr(),
                coords: coords.addr_mut(),
                maxvals: maxvals.addr_mut(),
                maps: maps as i32,
                h: h as i32,
                w: w as i32,
                pad_: 0,
            };
            launch(&dev, &kernels::HEATMAP_ARGMAX, &p)?;
            download(&coords, want)
        }) as Run)
    });
    Entry {
        shape: format!("{maps} maps {h}x{w}"),
        work: Work::Bytes(4.0 * (maps * h * w) as f64),
        cpu_work: None,
        cpu,
        gpu,
        tol: 0.0,
    }
}

// ---------- multi-resolution fusion ----------

/// Output branch 0 of a 4-branch module: x at full size, three low-resolution terms.
fn fusion(unfused: bool, [n, c, h, w]: [usize; 4], up_sizes: &[[usize; 2]]) -> Entry {
    let len = n * c * h * w;
    let x = data(len, 60);
    let ups: Vec<Vec<f32>> =
        up_sizes.iter().enumerate().map(|(k, s)| data(n * c * s[0] * s[1], 61 + k as u64)).collect();
    let xt = tensor(&[n, c, h, w], &x);
    let upt: Vec<Tensor> = ups.iter().zip(up_sizes).map(|(v, s)| tensor(&[n, c, s[0], s[1]], v)).collect();
    // The CPU reference: the graph's ops (upsample each term, add, relu).
    let cpu: Run = Box::new(move |want| {
        let y = no_grad(|| -> Result<Tensor> {
            let mut acc = xt.clone();
            for u in &upt {
                acc = ops::add(&acc, &ops::upsample_bilinear(u, [h, w])?)?;
            }
            ops::relu(&acc)
        })?;
        out(&y, want)
    });
    let sizes = up_sizes.to_vec();
    let gpu: GpuSetup = Box::new(move |dev| {
        let xb = dev.upload(&x)?;
        let ub = ups.iter().map(|v| dev.upload(v)).collect::<Result<Vec<_>>>()?;
        let sizes = sizes.clone();
        Ok(Box::new(move |want| {
            let terms: Vec<UpTerm> = ub.iter().zip(&sizes).map(|(z, &size)| UpTerm { z, size }).collect();
            let y = if unfused {
                fusion::forward_unfused([n, c, h, w], Some(&xb), &terms, &[])?
            } else {
                fusion::forward([n, c, h, w], Some(&xb), &terms, &[])?
            };
            download(&y, want)
        }) as Run)
    });
    // Compulsory traffic of the fused kernel (x, each low-res term, y), for both rungs: the unfused
    // rung's lower figure is what materialising the resized terms costs.
    let low: usize = up_sizes.iter().map(|s| n * c * s[0] * s[1]).sum();
    let work = Work::Bytes(4.0 * (2 * len + low) as f64);
    let cpu_work = Some(("(cpu: the graph's upsample + add + relu ops)", work));
    Entry { shape: format!("[{n}, {c}, {h}, {w}] + up {up_sizes:?}"), work, cpu_work, cpu, gpu, tol: 1e-5 }
}

// ---------- the list ----------

/// The 3×3 conv rung shapes (as `conv2d_*_3x3`) on the kernels of `math`.
fn conv_shape(math: GpuMath, pass: ConvPass, real: bool) -> Entry {
    if real {
        conv_math(math, pass, [8, 36, 32, 32], 36, 3, 1)
    } else {
        conv_math(math, pass, [2, 5, 9, 11], 7, 3, 2)
    }
}
/// The 1×1 head conv rung shape (as `conv2d_fwd_1x1_head`) on the kernels of `math`.
fn conv_head(math: GpuMath, real: bool) -> Entry {
    if real {
        conv_math(math, ConvPass::Forward, [1, 270, 64, 64], 270, 1, 1)
    } else {
        conv_math(math, ConvPass::Forward, [2, 70, 5, 3], 66, 1, 1)
    }
}

/// (name, real HRNet shape on the CPU and CUDA, tiny odd shape for the emulator)
#[allow(clippy::type_complexity)]
fn benches() -> Vec<(&'static str, Box<dyn Fn(bool) -> Entry>)> {
    use BnPass::*;
    use ConvPass::*;
    // `real` picks the W18 shape (batch 8 where the op runs per batch) or the tiny emulator shape.
    vec![
        (
            "conv2d_fwd_3x3",
            Box::new(|real: bool| {
                if real {
                    conv(Forward, [8, 36, 32, 32], 36, 3, 1)
                } else {
                    conv(Forward, [2, 5, 9, 11], 7, 3, 2)
                }
            }),
        ),
        (
            "conv2d_fwd_1x1_head",
            Box::new(|real: bool| {
                if real {
                    conv(Forward, [1, 270, 64, 64], 270, 1, 1)
                } else {
                    conv(Forward, [2, 70, 5, 3], 66, 1, 1)
                }
            }),
        ),
        (
            "conv2d_fwd_folded_bias_residual_relu",
            Box::new(|real: bool| {
                if real {
                    conv(ForwardFolded, [8, 36, 32, 32], 36, 3, 1)
                } else {
                    conv(ForwardFolded, [2, 5, 9, 11], 7, 3, 2)
                }
            }),
        ),
        (
            "conv2d_bwd_data_3x3",
            Box::new(|real: bool| {
                if real {
                    conv(BackwardData, [8, 36, 32, 32], 36, 3, 1)
                } else {
                    conv(BackwardData, [2, 5, 9, 11], 7, 3, 2)
                }
            }),
        ),
        (
            "conv2d_bwd_weight_3x3",
            Box::new(|real: bool| {
                if real {
                    conv(BackwardWeight, [8, 36, 32, 32], 36, 3, 1)
                } else {
                    conv(BackwardWeight, [2, 5, 9, 11], 7, 3, 2)
                }
            }),
        ),
        // The same convs on tensor cores (`--gpu-math tf32`, the default; bf16 forward).
        ("conv_tf32_fwd_3x3", Box::new(|real: bool| conv_shape(GpuMath::Tf32, Forward, real))),
        ("conv_tf32_fwd_1x1_head", Box::new(|real: bool| conv_head(GpuMath::Tf32, real))),
        (
            "conv_tf32_fwd_folded_bias_residual_relu",
            Box::new(|real: bool| conv_shape(GpuMath::Tf32, ForwardFolded, real)),
        ),
        ("conv_tf32_bwd_data_3x3", Box::new(|real: bool| conv_shape(GpuMath::Tf32, BackwardData, real))),
        ("conv_tf32_bwd_weight_3x3", Box::new(|real: bool| conv_shape(GpuMath::Tf32, BackwardWeight, real))),
        ("conv_bf16_fwd_3x3", Box::new(|real: bool| conv_shape(GpuMath::Bf16, Forward, real))),
        ("bn_train_fwd", Box::new(|real: bool| bn(TrainForward, if real { [8, 36, 32, 32] } else { [2, 3, 5, 7] }))),
        ("bn_train_bwd", Box::new(|real: bool| bn(TrainBackward, if real { [8, 36, 32, 32] } else { [2, 3, 5, 7] }))),
        ("bn_eval_fwd", Box::new(|real: bool| bn(Eval, if real { [8, 36, 32, 32] } else { [2, 3, 5, 7] }))),
        ("bn_eval_relu_fused", Box::new(|real: bool| bn(EvalRelu, if real { [8, 36, 32, 32] } else { [2, 3, 5, 7] }))),
        (
            "bilinear_fwd",
            Box::new(|real: bool| {
                if real {
                    bilinear(false, [8, 72, 16, 16], [64, 64])
                } else {
                    bilinear(false, [2, 3, 4, 5], [7, 9])
                }
            }),
        ),
        (
            "bilinear_bwd",
            Box::new(|real: bool| {
                if real {
                    bilinear(true, [8, 72, 16, 16], [64, 64])
                } else {
                    bilinear(true, [2, 3, 4, 5], [7, 9])
                }
            }),
        ),
        ("relu", Box::new(|real: bool| eltwise(false, if real { [8, 18, 64, 64] } else { [1, 3, 7, 11] }))),
        ("add", Box::new(|real: bool| eltwise(true, if real { [8, 18, 64, 64] } else { [1, 3, 7, 11] }))),
        (
            "concat_head",
            Box::new(
                |real: bool| if real { concat(8, &[18, 36, 72, 144], [64, 64]) } else { concat(2, &[1, 2, 3], [3, 5]) },
            ),
        ),
        ("mse_loss", Box::new(|real: bool| mse(if real { [8, 98, 64, 64] } else { [2, 3, 5, 7] }))),
        ("adam_step", Box::new(|real: bool| optim(true, if real { 9_662_528 } else { 1001 }))),
        ("sgd_momentum_step", Box::new(|real: bool| optim(false, if real { 9_662_528 } else { 1001 }))),
        ("heatmap_argmax", Box::new(|real: bool| if real { heatmap(8 * 98, 64, 64) } else { heatmap(5, 7, 9) })),
        (
            "fusion_fused",
            Box::new(|real: bool| {
                if real {
                    fusion(false, [8, 18, 64, 64], &[[32, 32], [16, 16], [8, 8]])
                } else {
                    fusion(false, [2, 3, 7, 9], &[[4, 5], [2, 3], [1, 1]])
                }
            }),
        ),
        (
            "fusion_unfused_rung",
            Box::new(|real: bool| {
                if real {
                    fusion(true, [8, 18, 64, 64], &[[32, 32], [16, 16], [8, 8]])
                } else {
                    fusion(true, [2, 3, 7, 9], &[[4, 5], [2, 3], [1, 1]])
                }
            }),
        ),
    ]
}

// ---------- harness ----------

struct Timing {
    median: f64,
    min: f64,
    max: f64,
    runs: usize,
}

/// Warm-up, then up to 10 runs (at least 3, about 1 s at most); `sync` runs before each clock stop.
fn time(run: &mut Run, sync: &dyn Fn() -> Result<()>) -> Result<Timing> {
    run(false)?;
    sync()?;
    let mut t = Vec::new();
    let start = Instant::now();
    while t.len() < 10 && (t.len() < 3 || start.elapsed().as_secs_f64() < 1.0) {
        let t0 = Instant::now();
        run(false)?;
        sync()?;
        t.push(t0.elapsed().as_secs_f64());
    }
    t.sort_by(f64::total_cmp);
    Ok(Timing { median: t[t.len() / 2], min: t[0], max: t[t.len() - 1], runs: t.len() })
}

fn rate(work: Work, secs: f64, peak_flops: f64, peak_bytes: f64) -> String {
    match work {
        Work::Flop(f) => {
            let g = f / secs / 1e9;
            format!("{g:9.2} GFLOP/s  {:5.1}% of {peak_flops:.0} GFLOP/s", 100.0 * g / peak_flops)
        }
        Work::Bytes(b) => {
            let g = b / secs / 1e9;
            format!("{g:9.2} GB/s     {:5.1}% of {peak_bytes:.1} GB/s", 100.0 * g / peak_bytes)
        }
    }
}

fn ms(t: &Timing) -> String {
    format!("{:8.3} ms (min {:.3} max {:.3}, {} runs)", t.median * 1e3, t.min * 1e3, t.max * 1e3, t.runs)
}

/// Host copy bandwidth (read + write) moving `bytes` in all: the memory roofline of the cpu rung for a
/// working set of that size (the W18 activations at batch 8 partly fit in the caches, so one DRAM
/// figure would be exceeded).
fn cpu_copy_gbs(bytes: f64) -> f64 {
    let src = vec![1.0f32; ((bytes / 8.0) as usize).max(1024)];
    let mut dst = vec![0.0f32; src.len()];
    let mut best = f64::MAX;
    for _ in 0..5 {
        let t0 = Instant::now();
        dst.copy_from_slice(std::hint::black_box(&src));
        best = best.min(t0.elapsed().as_secs_f64());
    }
    std::hint::black_box(&dst);
    2.0 * 4.0 * src.len() as f64 / best / 1e9
}

/// The compute roofline of a rung: the tensor cores for `conv_tf32_*` / `conv_bf16_*`, fp32 FMA otherwise.
fn gpu_peak_gflops(name: &str) -> f64 {
    if name.starts_with("conv_tf32") {
        GPU_PEAK_TF32_GFLOPS
    } else if name.starts_with("conv_bf16") {
        GPU_PEAK_BF16_GFLOPS
    } else {
        GPU_PEAK_GFLOPS
    }
}

fn max_rel_err(got: &[f32], want: &[f32]) -> f32 {
    let scale = want.iter().fold(1.0f32, |m, v| m.max(v.abs()));
    got.iter().zip(want).fold(0.0f32, |m, (a, b)| m.max((a - b).abs())) / scale
}

#[cfg(feature = "cuda")]
fn cuda_device() -> std::result::Result<GpuDevice, String> {
    hrk::cuda::cuda_ready().map_err(|e| e.to_string())?;
    GpuDevice::cuda(0).map_err(|e| format!("{e:#}"))
}
#[cfg(not(feature = "cuda"))]
fn cuda_device() -> std::result::Result<GpuDevice, String> {
    Err("built without the `cuda` feature (cargo bench --features cuda --bench kernels)".to_string())
}

fn main() {
    let filter: Option<String> = std::env::args().skip(1).find(|a| !a.starts_with('-'));
    let rungs = hrk::switches::bench_rungs();
    let want = |r: &str| rungs.split(',').any(|x| x.trim() == r);
    println!(
        "kernels bench: cpu roofline {CPU_PEAK_GFLOPS} GFLOP/s (PERFORMANCE.md) or, for memory-bound kernels, a host copy of the same bytes measured now ({:.1} GB/s for 256 MiB); {} threads",
        cpu_copy_gbs(256.0 * 1048576.0),
        rayon::current_num_threads()
    );
    let cuda = if want("cuda") { Some(cuda_device()) } else { None };
    match &cuda {
        Some(Ok(d)) => println!("cuda: {} (roofline {GPU_PEAK_GFLOPS} GFLOP/s fp32, {GPU_PEAK_GBS} GB/s)", d.name()),
        Some(Err(e)) => println!("cuda: skipped: {e}"),
        None => {}
    }
    let emu = GpuDevice::emulated();
    let mut failures = Vec::new();
    for (name, make) in benches() {
        if filter.as_deref().is_some_and(|f| !name.contains(f)) {
            continue;
        }
        let real = make(true);
        println!("{name:<24} {}", real.shape);
        let mut real = real;
        if want("cpu") {
            match time(&mut real.cpu, &|| Ok(())) {
                Ok(t) => {
                    let (note, work) = real.cpu_work.map_or(("", real.work), |(n, w)| (n, w));
                    let copy_gbs = match work {
                        Work::Bytes(b) => cpu_copy_gbs(b),
                        Work::Flop(_) => 0.0,
                    };
                    println!("  cpu   {}  {}  {note}", ms(&t), rate(work, t.median, CPU_PEAK_GFLOPS, copy_gbs))
                }
                Err(e) => println!("  cpu   error: {e:#}"),
            }
        }
        if want("emu") {
            let mut tiny = make(false);
            let checked = (|| -> Result<(f32, f32)> {
                let want_out = (tiny.cpu)(true)?;
                let mut run = (tiny.gpu)(&emu)?;
                let got = run(true)?;
                anyhow::ensure!(got.len() == want_out.len(), "{} values vs {} on the cpu", got.len(), want_out.len());
                Ok((max_rel_err(&got, &want_out), tiny.tol))
            })();
            match checked {
                Ok((err, tol)) if err <= tol.max(1e-6) => {
                    println!(
                        "  emu   ok: max rel err {err:.1e} vs cpu on {} (emulated: correctness run, not a speed)",
                        tiny.shape
                    )
                }
                Ok((err, tol)) => {
                    println!("  emu   MISMATCH: max rel err {err:.1e} > {tol:.0e} vs cpu on {}", tiny.shape);
                    failures.push(name);
                }
                Err(e) => {
                    println!("  emu   error: {e:#}");
                    failures.push(name);
                }
            }
        }
        if let Some(Ok(dev)) = &cuda {
            let sync = || dev.synchronize();
            match (real.gpu)(dev).and_then(|mut run| time(&mut run, &sync)) {
                Ok(t) => {
                    println!("  cuda  {}  {}", ms(&t), rate(real.work, t.median, gpu_peak_gflops(name), GPU_PEAK_GBS))
                }
                Err(e) => println!("  cuda  error: {e:#}"),
            }
        }
    }
    if !failures.is_empty() {
        eprintln!("emulated kernels that disagree with the cpu: {failures:?}");
        std::process::exit(1);
    }
}
