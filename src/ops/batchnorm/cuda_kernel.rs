//! BatchNorm2d on a GPU device: kernels/batchnorm.cu (batch statistics and the running-stat update in
//! `bn_train_stats` or `bn_stats_from_partials`, normalisation in `bn_*_apply` / `bn_eval_forward`, backward
//! in two passes).

use super::{BatchNormKernel, EvalParams, Grads, Norm, SavedStats, TrainArgs, TrainSaved};
use crate::cuda::kernels;
use crate::cuda::params::i32_of;
use crate::cuda::params::BatchNormParams;
use crate::cuda::{GpuBuffer, GpuDevice};
use crate::ops::elementwise::cuda_kernel::relu_mask;
use crate::ops::Cuda;
use crate::tensor::{Storage, Tensor};
use anyhow::{anyhow, Result};

fn buf(s: &Storage) -> Result<&GpuBuffer> {
    s.gpu("batch_norm")
}

/// Σdy and Σdy·x̂ per channel (accumulated into zeroed dγ / dβ), then dx when asked.
fn backward_common(
    dev: &GpuDevice, mut p: BatchNormParams, c: usize, numel: usize, needs: &[bool],
) -> Result<Vec<Option<Storage>>> {
    let mut sum_dy = dev.empty(c)?;
    let mut sum_dy_xhat = dev.empty(c)?;
    let mut dgamma = needs[1].then(|| dev.zeros(c)).transpose()?;
    let mut dbeta = needs[2].then(|| dev.zeros(c)).transpose()?;
    p.sum_dy = sum_dy.addr_mut();
    p.sum_dy_xhat = sum_dy_xhat.addr_mut();
    p.grad_gamma = dgamma.as_mut().map_or(0, |b| b.addr_mut());
    p.grad_beta = dbeta.as_mut().map_or(0, |b| b.addr_mut());
    // SAFETY: x and dy hold `numel` floats, the statistics and workspaces `c`, all on `dev`, sized by `p`.
    unsafe { dev.launch(&kernels::BN_BACKWARD_REDUCE, &p)? };
    let dx = if needs[0] {
        let mut dx = dev.empty(numel)?;
        p.dx = dx.addr_mut();
        // SAFETY: as above, dx a fresh buffer of `numel` floats on `dev`.
        unsafe { dev.launch(&kernels::BN_BACKWARD_DATA, &p)? };
        Some(Storage::Gpu(dx))
    } else {
        None
    };
    Ok(vec![dx, dgamma.map(Storage::Gpu), dbeta.map(Storage::Gpu)])
}

impl BatchNormKernel for Cuda {
    fn train(&self, a: &TrainArgs, running: [&mut Tensor; 2]) -> Result<(Storage, SavedStats)> {
        let (x, gamma, beta) = (a.x, a.gamma, a.beta);
        let [running_mean, running_var] = running;
        let d = a.dims;
        let xb = buf(x)?;
        let dev = xb.device();
        let mut y = dev.empty(xb.len())?;
        let mut save_mean = dev.empty(d[1])?;
        let mut save_invstd = dev.empty(d[1])?;
        let mut p = BatchNormParams {
            x: xb.addr(),
            y: y.addr_mut(),
            gamma: buf(gamma)?.addr(),
            beta: buf(beta)?.addr(),
            save_mean: save_mean.addr_mut(),
            save_invstd: save_invstd.addr_mut(),
            momentum: a.momentum as f32,
            ..BatchNormParams::new("batch_norm", d, a.eps)?
        };
        if let Some(s) = a.conv_stats {
            p.partials = s.addr();
            p.num_partials = i32_of("batch_norm", s.partials)?;
        }
        // The stats kernel updates the running buffers in place: take them writable (copy-on-write; copying
        // shared running buffers can run out of device memory, an error).
        let mut launched: Result<()> = Err(anyhow!("batch_norm: running buffers are not on the GPU"));
        running_mean.update(|rm| {
            let copied = running_var.update(|rv| {
                launched = (|| {
                    p.running_mean = rm.gpu_mut("batch_norm")?.addr_mut();
                    p.running_var = rv.gpu_mut("batch_norm")?.addr_mut();
                    let stats = if a.conv_stats.is_some() {
                        &kernels::BN_STATS_FROM_PARTIALS
                    } else {
                        &kernels::BN_TRAIN_STATS
                    };
                    let apply = if a.relu { &kernels::BN_TRAIN_APPLY_RELU } else { &kernels::BN_TRAIN_APPLY };
                    // SAFETY: every buffer lives on `dev` with the sizes of `d` (checked by the op); the conv
                    // statistics hold num_partials × 2 × c doubles (ConvStats sized them from the same grid).
                    unsafe {
                        dev.launch(stats, &p)?;
                        dev.launch(apply, &p)
                    }
                })();
            });
            if let Err(e) = copied {
                launched = Err(e);
            }
        })?;
        launched?;
        Ok((Storage::Gpu(y), SavedStats { mean: Storage::Gpu(save_mean), invstd: Storage::Gpu(save_invstd) }))
    }

    fn train_backward(&self, n: Norm, s: TrainSaved, dy: Storage, needs: &[bool]) -> Result<Grads> {
        let Norm { dims, eps } = n;
        let TrainSaved { x, gamma, stats: saved, relu_out } = s;
        let xb = buf(x)?;
        let dev = xb.device();
        let dy = dy.gpu("batch_norm backward")?;
        // A fused ReLU: dy passes where the output is positive (relu_backward, as the unfused op).
        let masked = relu_out.map(|y| relu_mask(buf(y)?, dy)).transpose()?;
        let p = BatchNormParams {
            x: xb.addr(),
            dy: masked.as_ref().unwrap_or(dy).addr(),
            gamma: buf(gamma)?.addr(),
            save_mean: buf(&saved.mean)?.addr(),
            save_invstd: buf(&saved.invstd)?.addr(),
            ..BatchNormParams::new("batch_norm", dims, eps)?
        };
        backward_common(dev, p, dims[1], xb.len(), needs)
    }

    fn eval(&self, n: Norm, x: &Storage, p: EvalParams, beta: &Storage) -> Result<Storage> {
        let (Norm { dims, eps }, EvalParams { gamma, running_mean, running_var }) = (n, p);
        let xb = buf(x)?;
        let dev = xb.device();
        let mut y = dev.empty(xb.len())?;
        let p = BatchNormParams {
            x: xb.addr(),
            y: y.addr_mut(),
            gamma: buf(gamma)?.addr(),
            beta: buf(beta)?.addr(),
            // The eval kernel only reads the running statistics.
            running_mean: buf(running_mean)?.addr(),
            running_var: buf(running_var)?.addr(),
            ..BatchNormParams::new("batch_norm", dims, eps)?
        };
        // SAFETY: every buffer lives on `dev` with the sizes of `dims` (checked by the op).
        unsafe { dev.launch(&kernels::BN_EVAL_FORWARD, &p)? };
        Ok(Storage::Gpu(y))
    }

    fn eval_backward(&self, n: Norm, x: Option<&Storage>, p: EvalParams, dy: Storage, needs: &[bool]) -> Result<Grads> {
        let (Norm { dims, eps }, EvalParams { gamma, running_mean, running_var }) = (n, p);
        let c = dims[1];
        let dyb = dy.gpu("batch_norm_eval backward")?;
        let dev = dyb.device();
        let base = BatchNormParams::new("batch_norm_eval", dims, eps)?;
        // dx = dy·γ/√(var+eps): the eval kernel applied to dy with a zero mean and no shift.
        let dx = if needs[0] {
            let zero_mean = dev.zeros(c)?;
            let mut dx = dev.empty(dyb.len())?;
            let p = BatchNormParams {
                x: dyb.addr(),
                y: dx.addr_mut(),
                gamma: buf(gamma)?.addr(),
                running_mean: zero_mean.addr(),
                running_var: buf(running_var)?.addr(),
                ..base
            };
            // SAFETY: dy and dx hold the input's size, the statistics `c` floats, all on `dev`.
            unsafe { dev.launch(&kernels::BN_EVAL_FORWARD, &p)? };
            Some(Storage::Gpu(dx))
        } else {
            None
        };
        // dγ = Σdy·x̂ with x̂ from the running statistics, dβ = Σdy: the training reduce kernel with the
        // running mean / invstd standing in for the batch ones.
        let want_gamma = needs[1] && x.is_some();
        if !want_gamma && !needs[2] {
            return Ok(vec![dx, None, None]);
        }
        let invstd: Vec<f32> = running_var.try_to_f64_vec()?.iter().map(|v| (1.0 / (v + eps).sqrt()) as f32).collect();
        let invstd = dev.upload(&invstd)?;
        let p = BatchNormParams {
            // Without x (γ needs no gradient) only Σdy is used; dy stands in so the kernel reads valid memory.
            x: match x {
                Some(x) => buf(x)?.addr(),
                None => dyb.addr(),
            },
            dy: dyb.addr(),
            save_mean: buf(running_mean)?.addr(),
            save_invstd: invstd.addr(),
            ..base
        };
        let mut out = backward_common(dev, p, c, dyb.len(), &[false, want_gamma, needs[2]])?;
        out[0] = dx;
        Ok(out)
    }
}
