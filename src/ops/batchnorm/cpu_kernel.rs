//! BatchNorm on host storage: f32 through the vectorised kernels of `cpu32`, f64 (gradient checks) through
//! the plain generic loops below; statistics and per-element formulas in f64 either way.

use super::{cpu32, BatchNormKernel, EvalParams, Grads, Norm, SavedStats, TrainArgs, TrainSaved};
use crate::by_dtype;
use crate::float::{typed, typed_mut, Float};
use crate::ops::Cpu;
use crate::tensor::{DType, Storage, Tensor};
use anyhow::{bail, Result};

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

/// The saved f64 statistics (the CPU kernel's own `train` made them).
fn host_stats(saved: &SavedStats) -> Result<(&[f64], &[f64])> {
    match (saved.mean.as_f64(), saved.invstd.as_f64()) {
        (Some(mean), Some(invstd)) => Ok((mean, invstd)),
        _ => bail!("batch_norm backward: the saved statistics are not host f64 values"),
    }
}

/// 1/√(var + eps) per channel, from the running (or batch) variance.
fn invstd_of(var: &[f64], eps: f64) -> Vec<f64> {
    var.iter().map(|v| 1.0 / (v + eps).sqrt()).collect()
}

impl BatchNormKernel for Cpu {
    fn train(&self, a: &TrainArgs, running: [&mut Tensor; 2]) -> Result<(Storage, SavedStats)> {
        let (x, gamma, beta) = (a.x, a.gamma, a.beta);
        let [running_mean, running_var] = running;
        if a.conv_stats.is_some() {
            bail!("batch_norm: conv epilogue statistics are a GPU path");
        }
        let (d, momentum) = (a.dims, a.momentum);
        let count = d[0] * d[2] * d[3];
        let mut y = Storage::for_overwrite(x.dtype(), x.len(), "batch_norm output")?;
        let (mean, var) = match x.dtype() {
            DType::F32 => cpu32::channel_stats(typed(x), d),
            DType::F64 => channel_stats::<f64>(typed(x), d),
        };
        let invstd = invstd_of(&var, a.eps);
        let g = gamma.to_f64_vec();
        let b = beta.to_f64_vec();
        let scale: Vec<f64> = (0..d[1]).map(|c| g[c] * invstd[c]).collect();
        match x.dtype() {
            DType::F32 => cpu32::affine(typed(x), d, &mean, &scale, &b, typed_mut(&mut y), a.relu),
            DType::F64 => affine::<f64>(typed(x), d, &mean, &scale, &b, typed_mut(&mut y)),
        }
        let unbias = count as f64 / (count as f64 - 1.0);
        by_dtype!(x.dtype(), T => {
            running_mean.update(|s| {
                for (r, &m) in typed_mut::<T>(s).iter_mut().zip(&mean) {
                    *r = T::from_f64((1.0 - momentum) * r.to_f64() + momentum * m);
                }
            })?;
            running_var.update(|s| {
                for (r, &v) in typed_mut::<T>(s).iter_mut().zip(&var) {
                    *r = T::from_f64((1.0 - momentum) * r.to_f64() + momentum * v * unbias);
                }
            })?;
        });
        Ok((y, SavedStats { mean: Storage::f64(mean), invstd: Storage::f64(invstd) }))
    }

    fn train_backward(&self, n: Norm, s: TrainSaved, mut dy: Storage, needs: &[bool]) -> Result<Grads> {
        let Norm { dims, .. } = n;
        let TrainSaved { x, gamma, stats: saved, relu_out } = s;
        let (mean, invstd) = host_stats(saved)?;
        let gamma = gamma.to_f64_vec();
        if dy.dtype() == DType::F64 {
            return Ok(train_backward_generic::<f64>(dims, typed(x), mean, invstd, &gamma, typed(&dy), needs));
        }
        // f32: both reductions (and a fused ReLU's mask) in one pass, then dx written over dy.
        let [n, c, h, w] = dims;
        let m = (n * h * w) as f64;
        let x: &[f32] = typed(x);
        let mask = relu_out.map(typed::<f32>);
        let (sum_dy, sum_dy_xmu) = cpu32::grad_sums(typed_mut(&mut dy), x, mask, dims, mean);
        // Σ dy·x̂ = invstd·Σ dy·(x − μ).
        let sum_dy_xhat: Vec<f64> = (0..c).map(|ch| sum_dy_xmu[ch] * invstd[ch]).collect();
        let to = |v: &[f64]| Storage::f32(v.iter().map(|&v| v as f32).collect());
        let (dgamma, dbeta) = (needs[1].then(|| to(&sum_dy_xhat)), needs[2].then(|| to(&sum_dy)));
        let dx = needs[0].then(|| {
            // dx = k·(m·dy − Σdy − x̂·Σdy·x̂) with k = γ·invstd/m, as a·dy + b·(x − μ) + k0.
            let k: Vec<f64> = (0..c).map(|ch| gamma[ch] * invstd[ch] / m).collect();
            let a: Vec<f64> = (0..c).map(|ch| k[ch] * m).collect();
            let b: Vec<f64> = (0..c).map(|ch| -k[ch] * sum_dy_xhat[ch] * invstd[ch]).collect();
            let k0: Vec<f64> = (0..c).map(|ch| -k[ch] * sum_dy[ch]).collect();
            cpu32::grad_input(typed_mut(&mut dy), x, dims, mean, &a, &b, &k0);
            dy
        });
        Ok(vec![dx, dgamma, dbeta])
    }

    fn eval(&self, n: Norm, x: &Storage, p: EvalParams, beta: &Storage) -> Result<Storage> {
        let (Norm { dims, eps }, EvalParams { gamma, running_mean, running_var }) = (n, p);
        let g = gamma.to_f64_vec();
        let b = beta.to_f64_vec();
        let rm = running_mean.to_f64_vec();
        let invstd = invstd_of(&running_var.to_f64_vec(), eps);
        let scale: Vec<f64> = (0..dims[1]).map(|c| g[c] * invstd[c]).collect();
        let mut y = Storage::for_overwrite(x.dtype(), x.len(), "batch_norm output")?;
        match x.dtype() {
            DType::F32 => cpu32::affine(typed(x), dims, &rm, &scale, &b, typed_mut(&mut y), false),
            DType::F64 => affine::<f64>(typed(x), dims, &rm, &scale, &b, typed_mut(&mut y)),
        }
        Ok(y)
    }

    fn eval_backward(&self, n: Norm, x: Option<&Storage>, p: EvalParams, dy: Storage, needs: &[bool]) -> Result<Grads> {
        let (Norm { dims, eps }, EvalParams { gamma, running_mean, running_var }) = (n, p);
        let mut dy = dy;
        // The forward's per-channel values, recomputed the same way.
        let mean = running_mean.to_f64_vec();
        let invstd = invstd_of(&running_var.to_f64_vec(), eps);
        let g = gamma.to_f64_vec();
        let scale: Vec<f64> = (0..dims[1]).map(|c| g[c] * invstd[c]).collect();
        if dy.dtype() == DType::F64 {
            return Ok(eval_backward_generic::<f64>(dims, x.map(typed), &mean, &invstd, &scale, typed(&dy), needs));
        }
        let c = dims[1];
        let (sum_dy, sum_dy_xhat) = match x {
            Some(x) => {
                let (s0, s1) = cpu32::grad_sums(typed_mut(&mut dy), typed(x), None, dims, &mean);
                (s0, (0..c).map(|ch| s1[ch] * invstd[ch]).collect())
            }
            None => {
                let zeros = vec![0.0f32; dy.len()];
                (cpu32::grad_sums(typed_mut(&mut dy), &zeros, None, dims, &vec![0.0; c]).0, vec![0.0; c])
            }
        };
        let to = |v: &[f64]| Storage::f32(v.iter().map(|&v| v as f32).collect());
        let (dgamma, dbeta) = ((needs[1] && x.is_some()).then(|| to(&sum_dy_xhat)), needs[2].then(|| to(&sum_dy)));
        let dx = needs[0].then(|| {
            cpu32::scale_planes(typed_mut(&mut dy), dims, &scale);
            dy
        });
        Ok(vec![dx, dgamma, dbeta])
    }
}

/// The training backward in plain loops (f64 gradient checks).
fn train_backward_generic<T: Float>(
    dims: [usize; 4], x: &[T], mean: &[f64], invstd: &[f64], gamma: &[f64], dy: &[T], needs: &[bool],
) -> Vec<Option<Storage>> {
    let [n, c, h, w] = dims;
    let plane = h * w;
    let m = (n * plane) as f64;
    // Σ dy and Σ dy·x̂ per channel.
    let mut sum_dy = vec![0.0f64; c];
    let mut sum_dy_xhat = vec![0.0f64; c];
    for b in 0..n {
        for ch in 0..c {
            let o = (b * c + ch) * plane;
            let (mu, is) = (mean[ch], invstd[ch]);
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
                let (mu, is) = (mean[ch], invstd[ch]);
                let k = gamma[ch] * is / m;
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
    vec![dx, dgamma, dbeta]
}

/// The eval backward in plain loops (f64 gradient checks).
fn eval_backward_generic<T: Float>(
    dims: [usize; 4], x: Option<&[T]>, mean: &[f64], invstd: &[f64], scale: &[f64], dy: &[T], needs: &[bool],
) -> Vec<Option<Storage>> {
    let [n, c, h, w] = dims;
    let plane = h * w;
    let dx = needs[0].then(|| {
        let mut dx = vec![T::ZERO; dy.len()];
        for b in 0..n {
            for (ch, &channel_scale) in scale.iter().enumerate() {
                let o = (b * c + ch) * plane;
                let s = T::from_f64(channel_scale);
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
                if let Some(x) = x {
                    let xv = x[o + i].to_f64();
                    dgamma[ch] += g.to_f64() * (xv - mean[ch]) * invstd[ch];
                }
            }
        }
    }
    let to = |v: Vec<f64>| T::into_storage(v.into_iter().map(T::from_f64).collect());
    vec![dx, (needs[1] && x.is_some()).then(|| to(dgamma)), needs[2].then(|| to(dbeta))]
}
