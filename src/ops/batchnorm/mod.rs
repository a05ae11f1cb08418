//! BatchNorm2d: training mode (batch statistics, PyTorch's running-stat update) and eval mode.

mod cpu32;
mod gpu;

use crate::autograd::BackwardOp;
use crate::by_dtype;
use crate::float::{typed, typed_mut, Float};
use crate::tensor::{DType, Storage, Tensor};
use anyhow::{bail, Result};

/// PyTorch's default epsilon.
pub const BN_EPS: f64 = 1e-5;

fn check(op: &str, x: &Tensor, params: &[&Tensor]) -> Result<[usize; 4]> {
    let d = x.dims4(op)?;
    crate::tensor::same_device(op, &[&[x][..], params].concat())?;
    for p in params {
        if p.shape() != [d[1]] {
            bail!("{op}: parameter/buffer shape {:?} does not fit input {:?} (want [{}])", p.shape(), x.shape(), d[1]);
        }
        crate::tensor::same_dtype(op, x, p)?;
    }
    Ok(d)
}

/// Per-channel mean and biased variance over (N, H, W), accumulated in f64.
fn channel_stats<T: Float>(x: &[T], [n, c, h, w]: [usize; 4]) -> (Vec<f64>, Vec<f64>) {
    let plane = h * w;
    let m = (n * plane) as f64;
    let mut mean = vec![0.0f64; c];
    let mut var = vec![0.0f64; c];
    for ch in 0..c {
        let mut s = 0.0;
        for b in 0..n {
            x[(b * c + ch) * plane..][..plane].iter().for_each(|&v| s += v.to_f64());
        }
        let mu = s / m;
        let mut q = 0.0;
        for b in 0..n {
            x[(b * c + ch) * plane..][..plane].iter().for_each(|&v| {
                let d = v.to_f64() - mu;
                q += d * d
            });
        }
        mean[ch] = mu;
        var[ch] = q / m;
    }
    (mean, var)
}

/// y = (x − μ)·scale + β per channel, evaluated in f64: the subtraction first keeps the result
/// accurate when |μ| ≫ σ (the x·scale + shift form loses digits there, and a ReLU after BN turns
/// such rounding into sign flips).
fn affine<T: Float>(x: &[T], [n, c, h, w]: [usize; 4], mean: &[f64], scale: &[f64], beta: &[f64], y: &mut [T]) {
    let plane = h * w;
    for b in 0..n {
        for ch in 0..c {
            let (m, s, t) = (mean[ch], scale[ch], beta[ch]);
            let o = (b * c + ch) * plane;
            for (yo, &xi) in y[o..o + plane].iter_mut().zip(&x[o..o + plane]) {
                *yo = T::from_f64((xi.to_f64() - m) * s + t);
            }
        }
    }
}

/// Training-mode BN: normalises with the batch statistics and updates the running buffers in place
/// (running = (1 − momentum)·running + momentum·batch, unbiased variance for running_var).
pub fn batch_norm_train(
    x: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    running_mean: &mut Tensor,
    running_var: &mut Tensor,
    momentum: f64,
    eps: f64,
) -> Result<Tensor> {
    train(x, gamma, beta, running_mean, running_var, momentum, eps, false)
}

/// relu(batch_norm_train(…)) in one op: on f32 tensors (CPU or GPU) the ReLU is applied in the
/// normalising pass and its mask in the backward's first step (same values as the two ops); f64 runs
/// the two ops.
pub fn batch_norm_train_relu(
    x: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    running_mean: &mut Tensor,
    running_var: &mut Tensor,
    momentum: f64,
    eps: f64,
) -> Result<Tensor> {
    if !x.device().is_gpu() && x.dtype() != DType::F32 {
        return crate::ops::relu(&batch_norm_train(x, gamma, beta, running_mean, running_var, momentum, eps)?);
    }
    train(x, gamma, beta, running_mean, running_var, momentum, eps, true)
}

/// Whether `conv_batch_norm_train` takes the BN statistics from the conv epilogue on a GPU:
/// `HRK_GPU_CONV_BN_STATS=0` keeps the reference rung (conv2d, then the BN's own statistics pass).
fn conv_bn_stats_fused() -> bool {
    std::env::var("HRK_GPU_CONV_BN_STATS").map_or(true, |v| v != "0")
}

/// Training-mode BN (+ ReLU when `relu`) of conv2d(x, weight, bias, stride, pad), as two tape ops (conv2d,
/// then batch_norm(_relu)). On a GPU the conv kernel also sums each output channel (f64, per block, no
/// atomics) and the BN derives its batch statistics and running-stat update from those sums, skipping its
/// pass over the conv output; on the CPU (or with HRK_GPU_CONV_BN_STATS=0) it is exactly
/// batch_norm_train(_relu)(conv2d(…)).
#[allow(clippy::too_many_arguments)]
pub fn conv_batch_norm_train(
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    stride: usize,
    pad: usize,
    gamma: &Tensor,
    beta: &Tensor,
    running_mean: &mut Tensor,
    running_var: &mut Tensor,
    momentum: f64,
    eps: f64,
    relu: bool,
) -> Result<Tensor> {
    if !x.device().is_gpu() || !conv_bn_stats_fused() {
        let y = crate::ops::conv2d(x, weight, bias, stride, pad)?;
        return if relu {
            batch_norm_train_relu(&y, gamma, beta, running_mean, running_var, momentum, eps)
        } else {
            batch_norm_train(&y, gamma, beta, running_mean, running_var, momentum, eps)
        };
    }
    let (y, stats) = crate::ops::conv2d::conv2d_gpu_with_stats(x, weight, bias, stride, pad)?;
    let d = check("batch_norm", &y, &[gamma, beta, running_mean, running_var])?;
    if d[0] * d[2] * d[3] < 2 {
        bail!("batch_norm: training needs more than one value per channel, input {:?}", y.shape());
    }
    gpu::train_with_stats(d, &y, gamma, beta, running_mean, running_var, momentum, eps, relu, Some(&stats))
}

#[allow(clippy::too_many_arguments)]
fn train(
    x: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    running_mean: &mut Tensor,
    running_var: &mut Tensor,
    momentum: f64,
    eps: f64,
    relu: bool,
) -> Result<Tensor> {
    let d = check("batch_norm", x, &[gamma, beta, running_mean, running_var])?;
    let count = d[0] * d[2] * d[3];
    if count < 2 {
        bail!("batch_norm: training needs more than one value per channel, input {:?}", x.shape());
    }
    if x.device().is_gpu() {
        return gpu::train_with_stats(d, x, gamma, beta, running_mean, running_var, momentum, eps, relu, None);
    }
    let mut y = Storage::for_overwrite(x.dtype(), x.numel());
    let (mean, var) = match x.dtype() {
        DType::F32 => cpu32::channel_stats(typed(x.storage()), d),
        DType::F64 => channel_stats::<f64>(typed(x.storage()), d),
    };
    let invstd: Vec<f64> = var.iter().map(|v| 1.0 / (v + eps).sqrt()).collect();
    let g = gamma.to_f64_vec();
    let b = beta.to_f64_vec();
    let scale: Vec<f64> = (0..d[1]).map(|c| g[c] * invstd[c]).collect();
    match x.dtype() {
        DType::F32 => cpu32::affine(typed(x.storage()), d, &mean, &scale, &b, typed_mut(&mut y), relu),
        DType::F64 => affine::<f64>(typed(x.storage()), d, &mean, &scale, &b, typed_mut(&mut y)),
    }
    let unbias = count as f64 / (count as f64 - 1.0);
    by_dtype!(x.dtype(), T => {
        running_mean.update(|s| {
            for (r, &m) in typed_mut::<T>(s).iter_mut().zip(&mean) {
                *r = T::from_f64((1.0 - momentum) * r.to_f64() + momentum * m);
            }
        });
        running_var.update(|s| {
            for (r, &v) in typed_mut::<T>(s).iter_mut().zip(&var) {
                *r = T::from_f64((1.0 - momentum) * r.to_f64() + momentum * v * unbias);
            }
        });
    });
    let saved_x = x.detach();
    let make = |y: Tensor| BnTrainBackward { dims: d, x: saved_x, mean, invstd, gamma: g, relu_out: relu.then_some(y) };
    Ok(Tensor::from_op_using_output(x.shape().to_vec(), y, make, &[x, gamma, beta]))
}

/// The tape name of a training BN, with or without its fused ReLU (CPU and GPU ops alike).
fn op_name(fused_relu: bool) -> &'static str {
    if fused_relu {
        "batch_norm_relu"
    } else {
        "batch_norm"
    }
}

/// The name a debugging trace records: a fused BN+ReLU's output is the ReLU's, as with the two ops.
fn trace_name(fused_relu: bool) -> &'static str {
    if fused_relu {
        "relu"
    } else {
        "batch_norm"
    }
}

struct BnTrainBackward {
    dims: [usize; 4],
    x: Tensor,
    mean: Vec<f64>,
    invstd: Vec<f64>,
    gamma: Vec<f64>,
    /// The output, when a ReLU is fused in (its sign masks the gradient).
    relu_out: Option<Tensor>,
}

impl BackwardOp for BnTrainBackward {
    fn name(&self) -> &'static str {
        op_name(self.relu_out.is_some())
    }
    fn trace_name(&self) -> &'static str {
        trace_name(self.relu_out.is_some())
    }
    fn backward(&self, dy: &Storage, needs: &[bool]) -> Result<Vec<Option<Storage>>> {
        self.backward_owned(dy.clone(), needs)
    }
    fn backward_owned(&self, mut dy: Storage, needs: &[bool]) -> Result<Vec<Option<Storage>>> {
        if dy.dtype() == DType::F64 {
            return self.run::<f64>(typed(&dy), needs);
        }
        // f32: both reductions (and a fused ReLU's mask) in one pass, then dx written over dy.
        let [n, c, h, w] = self.dims;
        let m = (n * h * w) as f64;
        let x: &[f32] = typed(self.x.storage());
        let mask = self.relu_out.as_ref().map(|y| typed::<f32>(y.storage()));
        let (sum_dy, sum_dy_xmu) = cpu32::grad_sums(typed_mut(&mut dy), x, mask, self.dims, &self.mean);
        // Σ dy·x̂ = invstd·Σ dy·(x − μ).
        let sum_dy_xhat: Vec<f64> = (0..c).map(|ch| sum_dy_xmu[ch] * self.invstd[ch]).collect();
        let to = |v: &[f64]| Storage::F32(v.iter().map(|&v| v as f32).collect());
        let (dgamma, dbeta) = (needs[1].then(|| to(&sum_dy_xhat)), needs[2].then(|| to(&sum_dy)));
        let dx = needs[0].then(|| {
            // dx = k·(m·dy − Σdy − x̂·Σdy·x̂) with k = γ·invstd/m, as a·dy + b·(x − μ) + k0.
            let k: Vec<f64> = (0..c).map(|ch| self.gamma[ch] * self.invstd[ch] / m).collect();
            let a: Vec<f64> = (0..c).map(|ch| k[ch] * m).collect();
            let b: Vec<f64> = (0..c).map(|ch| -k[ch] * sum_dy_xhat[ch] * self.invstd[ch]).collect();
            let k0: Vec<f64> = (0..c).map(|ch| -k[ch] * sum_dy[ch]).collect();
            cpu32::grad_input(typed_mut(&mut dy), x, self.dims, &self.mean, &a, &b, &k0);
            dy
        });
        Ok(vec![dx, dgamma, dbeta])
    }
}

impl BnTrainBackward {
    fn run<T: Float>(&self, dy: &[T], needs: &[bool]) -> Result<Vec<Option<Storage>>> {
        let [n, c, h, w] = self.dims;
        let plane = h * w;
        let m = (n * plane) as f64;
        let x: &[T] = typed(self.x.storage());
        // Σ dy and Σ dy·x̂ per channel.
        let mut sum_dy = vec![0.0f64; c];
        let mut sum_dy_xhat = vec![0.0f64; c];
        for b in 0..n {
            for ch in 0..c {
                let o = (b * c + ch) * plane;
                let (mu, is) = (self.mean[ch], self.invstd[ch]);
                for (&g, &xi) in dy[o..o + plane].iter().zip(&x[o..o + plane]) {
                    sum_dy[ch] += g.to_f64();
                    sum_dy_xhat[ch] += g.to_f64() * (xi.to_f64() - mu) * is;
                }
            }
        }
        let dx = needs[0].then(|| {
            let mut dx = vec![T::ZERO; dy.len()];
            for b in 0..n {
                for ch in 0..c {
                    let o = (b * c + ch) * plane;
                    let (mu, is) = (self.mean[ch], self.invstd[ch]);
                    let k = self.gamma[ch] * is / m;
                    let (a0, a1) = (sum_dy[ch], sum_dy_xhat[ch]);
                    for ((d, &g), &xi) in dx[o..o + plane].iter_mut().zip(&dy[o..o + plane]).zip(&x[o..o + plane]) {
                        let xhat = (xi.to_f64() - mu) * is;
                        *d = T::from_f64(k * (m * g.to_f64() - a0 - xhat * a1));
                    }
                }
            }
            T::into_storage(dx)
        });
        let dgamma = needs[1].then(|| T::into_storage(sum_dy_xhat.iter().map(|&v| T::from_f64(v)).collect()));
        let dbeta = needs[2].then(|| T::into_storage(sum_dy.iter().map(|&v| T::from_f64(v)).collect()));
        Ok(vec![dx, dgamma, dbeta])
    }
}

/// Eval-mode BN with the running statistics (differentiable in x, γ and β).
pub fn batch_norm_eval(
    x: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    running_mean: &Tensor,
    running_var: &Tensor,
    eps: f64,
) -> Result<Tensor> {
    let d = check("batch_norm", x, &[gamma, beta, running_mean, running_var])?;
    if x.device().is_gpu() {
        return gpu::eval(d, x, gamma, beta, running_mean, running_var, eps);
    }
    let g = gamma.to_f64_vec();
    let b = beta.to_f64_vec();
    let rm = running_mean.to_f64_vec();
    let invstd: Vec<f64> = running_var.to_f64_vec().iter().map(|v| 1.0 / (v + eps).sqrt()).collect();
    let scale: Vec<f64> = (0..d[1]).map(|c| g[c] * invstd[c]).collect();
    let mut y = Storage::for_overwrite(x.dtype(), x.numel());
    match x.dtype() {
        DType::F32 => cpu32::affine(typed(x.storage()), d, &rm, &scale, &b, typed_mut(&mut y), false),
        DType::F64 => affine::<f64>(typed(x.storage()), d, &rm, &scale, &b, typed_mut(&mut y)),
    }
    let op = BnEvalBackward { dims: d, x: gamma.is_requires_grad().then(|| x.detach()), mean: rm, invstd, scale };
    Ok(Tensor::from_op(x.shape().to_vec(), y, op, &[x, gamma, beta]))
}

struct BnEvalBackward {
    dims: [usize; 4],
    x: Option<Tensor>,
    mean: Vec<f64>,
    invstd: Vec<f64>,
    scale: Vec<f64>,
}

impl BackwardOp for BnEvalBackward {
    fn name(&self) -> &'static str {
        "batch_norm_eval"
    }
    fn backward_owned(&self, mut dy: Storage, needs: &[bool]) -> Result<Vec<Option<Storage>>> {
        if dy.dtype() == DType::F64 {
            return self.backward(&dy, needs);
        }
        let c = self.dims[1];
        let (sum_dy, sum_dy_xhat) = match &self.x {
            Some(x) => {
                let (s0, s1) = cpu32::grad_sums(typed_mut(&mut dy), typed(x.storage()), None, self.dims, &self.mean);
                (s0, (0..c).map(|ch| s1[ch] * self.invstd[ch]).collect())
            }
            None => {
                let zeros = vec![0.0f32; dy.len()];
                (cpu32::grad_sums(typed_mut(&mut dy), &zeros, None, self.dims, &vec![0.0; c]).0, vec![0.0; c])
            }
        };
        let to = |v: &[f64]| Storage::F32(v.iter().map(|&v| v as f32).collect());
        let (dgamma, dbeta) = ((needs[1] && self.x.is_some()).then(|| to(&sum_dy_xhat)), needs[2].then(|| to(&sum_dy)));
        let dx = needs[0].then(|| {
            cpu32::scale_planes(typed_mut(&mut dy), self.dims, &self.scale);
            dy
        });
        Ok(vec![dx, dgamma, dbeta])
    }
    fn backward(&self, dy: &Storage, needs: &[bool]) -> Result<Vec<Option<Storage>>> {
        by_dtype!(dy.dtype(), T => {
            let dy: &[T] = typed(dy);
            let [n, c, h, w] = self.dims;
            let plane = h * w;
            let dx = needs[0].then(|| {
                let mut dx = vec![T::ZERO; dy.len()];
                for b in 0..n {
                    for ch in 0..c {
                        let o = (b * c + ch) * plane;
                        let s = T::from_f64(self.scale[ch]);
                        dx[o..o + plane].iter_mut().zip(&dy[o..o + plane]).for_each(|(d, &g)| *d = g * s);
                    }
                }
                T::into_storage(dx)
            });
            let mut dgamma = vec![0.0f64; c];
            let mut dbeta = vec![0.0f64; c];
            for b in 0..n {
                for ch in 0..c {
                    let o = (b * c + ch) * plane;
                    for (i, &g) in dy[o..o + plane].iter().enumerate() {
                        dbeta[ch] += g.to_f64();
                        if let Some(x) = &self.x {
                            let xv = typed::<T>(x.storage())[o + i].to_f64();
                            dgamma[ch] += g.to_f64() * (xv - self.mean[ch]) * self.invstd[ch];
                        }
                    }
                }
            }
            let to = |v: Vec<f64>| T::into_storage(v.into_iter().map(T::from_f64).collect());
            Ok(vec![dx, (needs[1] && self.x.is_some()).then(|| to(dgamma)), needs[2].then(|| to(dbeta))])
        })
    }
}
