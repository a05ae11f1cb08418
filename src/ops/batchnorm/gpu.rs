//! BatchNorm2d on a GPU device: kernels/batchnorm.cu (batch statistics and the running-stat update in
//! `bn_train_stats`, normalisation in `bn_*_apply` / `bn_eval_forward`, backward in two passes).

use crate::autograd::BackwardOp;
use crate::cuda::device::{i32_of, GpuBuffer, GpuDevice};
use crate::cuda::kernels;
use crate::cuda::params::BatchNormParams;
use crate::ops::elementwise::gpu::eltwise;
use crate::ops::conv2d::ConvStats;
use crate::tensor::{Storage, Tensor};
use anyhow::{anyhow, Result};

fn params(op: &str, [n, c, h, w]: [usize; 4], eps: f64) -> Result<BatchNormParams> {
    Ok(BatchNormParams { n: i32_of(op, n)?, c: i32_of(op, c)?, hw: i32_of(op, h * w)?, eps: eps as f32, ..Default::default() })
}

fn buf<'a>(t: &'a Tensor) -> Result<&'a GpuBuffer> {
    t.storage().gpu("batch_norm")
}

/// Training-mode BN (+ ReLU when `relu`): batch statistics from a bn_train_stats pass over x, or, when
/// `stats` is given, from the conv epilogue's per-block sums of x (bn_stats_from_partials).
#[allow(clippy::too_many_arguments)]
pub(super) fn train_with_stats(
    d: [usize; 4],
    x: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    running_mean: &mut Tensor,
    running_var: &mut Tensor,
    momentum: f64,
    eps: f64,
    relu: bool,
    stats: Option<&ConvStats>,
) -> Result<Tensor> {
    let xb = buf(x)?;
    let dev = xb.device().clone();
    let mut y = dev.empty(x.numel())?;
    let mut save_mean = dev.empty(d[1])?;
    let mut save_invstd = dev.empty(d[1])?;
    let mut p = BatchNormParams {
        x: xb.addr(),
        y: y.addr_mut(),
        gamma: buf(gamma)?.addr(),
        beta: buf(beta)?.addr(),
        save_mean: save_mean.addr_mut(),
        save_invstd: save_invstd.addr_mut(),
        momentum: momentum as f32,
        ..params("batch_norm", d, eps)?
    };
    if let Some(s) = stats {
        p.partials = s.addr();
        p.num_partials = i32_of("batch_norm", s.partials)?;
    }
    // The stats kernel updates the running buffers in place: take them writable (copy-on-write).
    let mut launched: Result<()> = Err(anyhow!("batch_norm: running buffers are not on the GPU"));
    // try_update: copying shared running buffers can run out of device memory (an error, not a panic).
    running_mean.try_update(|rm| {
        let copied = running_var.try_update(|rv| {
            launched = (|| {
                p.running_mean = rm.gpu_mut("batch_norm")?.addr_mut();
                p.running_var = rv.gpu_mut("batch_norm")?.addr_mut();
                // Safety: every buffer lives on `dev` with the sizes of `d`.
                unsafe {
                    dev.launch(if stats.is_some() { &kernels::BN_STATS_FROM_PARTIALS } else { &kernels::BN_TRAIN_STATS }, &p)?;
                    dev.launch(if relu { &kernels::BN_TRAIN_APPLY_RELU } else { &kernels::BN_TRAIN_APPLY }, &p)
                }
            })();
        });
        if let Err(e) = copied {
            launched = Err(e);
        }
    })?;
    launched?;
    let (xs, gs) = (x.detach(), gamma.detach());
    let make = |y: Tensor| GpuBnTrainBackward {
        dims: d,
        eps,
        dev,
        x: xs,
        gamma: gs,
        save_mean,
        save_invstd,
        relu_out: relu.then_some(y),
    };
    Ok(Tensor::from_op_using_output(x.shape().to_vec(), Storage::Gpu(y), make, &[x, gamma, beta]))
}

struct GpuBnTrainBackward {
    dims: [usize; 4],
    eps: f64,
    dev: GpuDevice,
    x: Tensor,
    gamma: Tensor,
    save_mean: GpuBuffer,
    save_invstd: GpuBuffer,
    /// The output, when a ReLU is fused in (its sign masks the gradient).
    relu_out: Option<Tensor>,
}

impl BackwardOp for GpuBnTrainBackward {
    fn name(&self) -> &'static str {
        super::op_name(self.relu_out.is_some())
    }
    fn trace_name(&self) -> &'static str {
        super::trace_name(self.relu_out.is_some())
    }
    fn backward(&self, dy: &Storage, needs: &[bool]) -> Result<Vec<Option<Storage>>> {
        let c = self.dims[1];
        let dev = &self.dev;
        let dy = dy.gpu("batch_norm backward")?;
        // A fused ReLU: dy passes where the output is positive (relu_backward, as the unfused op).
        let masked = match &self.relu_out {
            Some(y) => Some(eltwise(dev, &kernels::RELU_BACKWARD, buf(y)?, Some(dy))?),
            None => None,
        };
        let p = BatchNormParams {
            x: buf(&self.x)?.addr(),
            dy: masked.as_ref().unwrap_or(dy).addr(),
            gamma: buf(&self.gamma)?.addr(),
            save_mean: self.save_mean.addr(),
            save_invstd: self.save_invstd.addr(),
            ..params("batch_norm", self.dims, self.eps)?
        };
        backward_common(dev, p, c, self.x.numel(), needs)
    }
}

/// Σdy and Σdy·x̂ per channel (accumulated into zeroed dγ / dβ), then dx when asked.
fn backward_common(dev: &GpuDevice, mut p: BatchNormParams, c: usize, numel: usize, needs: &[bool]) -> Result<Vec<Option<Storage>>> {
    let mut sum_dy = dev.empty(c)?;
    let mut sum_dy_xhat = dev.empty(c)?;
    let mut dgamma = needs[1].then(|| dev.zeros(c)).transpose()?;
    let mut dbeta = needs[2].then(|| dev.zeros(c)).transpose()?;
    p.sum_dy = sum_dy.addr_mut();
    p.sum_dy_xhat = sum_dy_xhat.addr_mut();
    p.grad_gamma = dgamma.as_mut().map_or(0, |b| b.addr_mut());
    p.grad_beta = dbeta.as_mut().map_or(0, |b| b.addr_mut());
    // Safety: buffers live on `dev`, sized by `p`.
    unsafe { dev.launch(&kernels::BN_BACKWARD_REDUCE, &p)? };
    let dx = if needs[0] {
        let mut dx = dev.empty(numel)?;
        p.dx = dx.addr_mut();
        unsafe { dev.launch(&kernels::BN_BACKWARD_DATA, &p)? };
        Some(Storage::Gpu(dx))
    } else {
        None
    };
    Ok(vec![dx, dgamma.map(Storage::Gpu), dbeta.map(Storage::Gpu)])
}

pub(super) fn eval(
    d: [usize; 4],
    x: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    running_mean: &Tensor,
    running_var: &Tensor,
    eps: f64,
) -> Result<Tensor> {
    let xb = buf(x)?;
    let dev = xb.device().clone();
    let mut y = dev.empty(x.numel())?;
    let p = BatchNormParams {
        x: xb.addr(),
        y: y.addr_mut(),
        gamma: buf(gamma)?.addr(),
        beta: buf(beta)?.addr(),
        // The eval kernel only reads the running statistics.
        running_mean: buf(running_mean)?.addr(),
        running_var: buf(running_var)?.addr(),
        ..params("batch_norm", d, eps)?
    };
    // Safety: every buffer lives on `dev` with the sizes of `d`.
    unsafe { dev.launch(&kernels::BN_EVAL_FORWARD, &p)? };
    let op = GpuBnEvalBackward {
        dims: d,
        eps,
        dev,
        x: gamma.is_requires_grad().then(|| x.detach()),
        gamma: gamma.detach(),
        running_mean: running_mean.detach(),
        running_var: running_var.detach(),
    };
    Ok(Tensor::from_op(x.shape().to_vec(), Storage::Gpu(y), op, &[x, gamma, beta]))
}

struct GpuBnEvalBackward {
    dims: [usize; 4],
    eps: f64,
    dev: GpuDevice,
    x: Option<Tensor>,
    gamma: Tensor,
    running_mean: Tensor,
    running_var: Tensor,
}

impl BackwardOp for GpuBnEvalBackward {
    fn name(&self) -> &'static str {
        "batch_norm_eval"
    }
    fn backward(&self, dy: &Storage, needs: &[bool]) -> Result<Vec<Option<Storage>>> {
        let c = self.dims[1];
        let dev = &self.dev;
        let dyb = dy.gpu("batch_norm_eval backward")?;
        let base = params("batch_norm_eval", self.dims, self.eps)?;
        // dx = dy·γ/√(var+eps): the eval kernel applied to dy with a zero mean and no shift.
        let dx = if needs[0] {
            let zero_mean = dev.zeros(c)?;
            let mut dx = dev.empty(dy.len())?;
            let p = BatchNormParams {
                x: dyb.addr(),
                y: dx.addr_mut(),
                gamma: buf(&self.gamma)?.addr(),
                running_mean: zero_mean.addr(),
                running_var: buf(&self.running_var)?.addr(),
                ..base
            };
            unsafe { dev.launch(&kernels::BN_EVAL_FORWARD, &p)? };
            Some(Storage::Gpu(dx))
        } else {
            None
        };
        // dγ = Σdy·x̂ with x̂ from the running statistics, dβ = Σdy: the training reduce kernel with the
        // running mean / invstd standing in for the batch ones.
        let want_gamma = needs[1] && self.x.is_some();
        if !want_gamma && !needs[2] {
            return Ok(vec![dx, None, None]);
        }
        let invstd: Vec<f32> = self.running_var.to_f64_vec().iter().map(|v| (1.0 / (v + self.eps).sqrt()) as f32).collect();
        let invstd = dev.upload(&invstd)?;
        let p = BatchNormParams {
            // Without x (γ needs no gradient) only Σdy is used; dy stands in so the kernel reads valid memory.
            x: match &self.x {
                Some(x) => buf(x)?.addr(),
                None => dyb.addr(),
            },
            dy: dyb.addr(),
            save_mean: buf(&self.running_mean)?.addr(),
            save_invstd: invstd.addr(),
            ..base
        };
        let mut out = backward_common(dev, p, c, dy.len(), &[false, want_gamma, needs[2]])?;
        out[0] = dx;
        Ok(out)
    }
}
