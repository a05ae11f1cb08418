//! BatchNorm2d: training mode (batch statistics, PyTorch's running-stat update) and eval mode.

mod cpu32;
mod cpu_kernel;
mod cuda_kernel;

pub use cpu32::{with_simd, Simd};

use super::{kernels_for, Cpu, Cuda};
use crate::autograd::BackwardOp;
use crate::ops::conv2d::ConvStats;
use crate::tensor::{DType, Device, Storage, Tensor};
use anyhow::{bail, Result};

/// PyTorch's default epsilon.
pub const BN_EPS: f64 = 1e-5;

/// The batch statistics a training BN keeps for its backward: per-channel mean and 1/√(var + eps) (f64
/// host values on the CPU, f32 device buffers on a GPU).
pub(crate) struct SavedStats {
    mean: Storage,
    invstd: Storage,
}

/// What one training BN normalises with.
pub(crate) struct TrainArgs<'a> {
    dims: [usize; 4],
    momentum: f64,
    eps: f64,
    /// ReLU fused into the normalising pass.
    relu: bool,
    /// The batch sums of x from the conv that produced it (GPU only), instead of a statistics pass.
    conv_stats: Option<&'a ConvStats>,
    x: &'a Storage,
    gamma: &'a Storage,
    beta: &'a Storage,
}

/// Input shape [n, c, h, w] and epsilon of one BN call.
#[derive(Clone, Copy)]
pub(crate) struct Norm {
    dims: [usize; 4],
    eps: f64,
}

/// What a training BN's backward reads: its input, γ, the batch statistics and, when a ReLU was fused, the
/// output (its sign masks dy).
pub(crate) struct TrainSaved<'a> {
    x: &'a Storage,
    gamma: &'a Storage,
    stats: &'a SavedStats,
    relu_out: Option<&'a Storage>,
}

/// γ and the running statistics an eval BN normalises with.
#[derive(Clone, Copy)]
pub(crate) struct EvalParams<'a> {
    gamma: &'a Storage,
    running_mean: &'a Storage,
    running_var: &'a Storage,
}

/// [dx, dγ, dβ] where `needs` asks.
type Grads = Vec<Option<Storage>>;

/// The BatchNorm kernels of one device (operands checked by the ops: [c] parameters of x's dtype and device).
pub(crate) trait BatchNormKernel: Sync {
    /// y = BN(x) with the batch statistics (+ ReLU), `running` = [mean, var] updated in place.
    fn train(&self, a: &TrainArgs, running: [&mut Tensor; 2]) -> Result<(Storage, SavedStats)>;
    /// [dx, dγ, dβ] of the training BN.
    fn train_backward(&self, n: Norm, s: TrainSaved, dy: Storage, needs: &[bool]) -> Result<Grads>;
    /// y = BN(x) with the running statistics.
    fn eval(&self, n: Norm, x: &Storage, p: EvalParams, beta: &Storage) -> Result<Storage>;
    /// [dx, dγ, dβ] of the eval BN; dγ needs `x` (None when γ wants no gradient).
    fn eval_backward(&self, n: Norm, x: Option<&Storage>, p: EvalParams, dy: Storage, needs: &[bool]) -> Result<Grads>;
}

fn kernels(device: &Device) -> &'static dyn BatchNormKernel {
    kernels_for(device, &Cpu, &Cuda)
}

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

/// Training-mode BN: normalises with the batch statistics and updates the running buffers in place
/// (running = (1 − momentum)·running + momentum·batch, unbiased variance for running_var).
pub fn batch_norm_train(
    x: &Tensor, gamma: &Tensor, beta: &Tensor, running_mean: &mut Tensor, running_var: &mut Tensor, momentum: f64,
    eps: f64,
) -> Result<Tensor> {
    train(x, gamma, beta, running_mean, running_var, momentum, eps, false, None)
}

/// relu(batch_norm_train(…)) in one op: on f32 tensors (CPU or GPU) the ReLU is applied in the
/// normalising pass and its mask in the backward's first step (same values as the two ops); f64 runs
/// the two ops.
pub fn batch_norm_train_relu(
    x: &Tensor, gamma: &Tensor, beta: &Tensor, running_mean: &mut Tensor, running_var: &mut Tensor, momentum: f64,
    eps: f64,
) -> Result<Tensor> {
    if x.dtype() != DType::F32 {
        return crate::ops::relu(&batch_norm_train(x, gamma, beta, running_mean, running_var, momentum, eps)?);
    }
    train(x, gamma, beta, running_mean, running_var, momentum, eps, true, None)
}

/// Training-mode BN (+ ReLU when `relu`) of conv2d(x, weight, bias, stride, pad), as two tape ops (conv2d,
/// then batch_norm(_relu)). On a GPU the conv kernel also sums each output channel (f64, per block, no
/// atomics) and the BN derives its batch statistics and running-stat update from those sums, skipping its
/// pass over the conv output; on the CPU (or with HRK_GPU_CONV_BN_STATS=0, the reference rung) it is exactly
/// batch_norm_train(_relu)(conv2d(…)).
#[allow(clippy::too_many_arguments)]
pub fn conv_batch_norm_train(
    x: &Tensor, weight: &Tensor, bias: Option<&Tensor>, stride: usize, pad: usize, gamma: &Tensor, beta: &Tensor,
    running_mean: &mut Tensor, running_var: &mut Tensor, momentum: f64, eps: f64, relu: bool,
) -> Result<Tensor> {
    if !x.device().is_gpu() || !crate::switches::gpu_conv_bn_stats() {
        let y = crate::ops::conv2d(x, weight, bias, stride, pad)?;
        return if relu {
            batch_norm_train_relu(&y, gamma, beta, running_mean, running_var, momentum, eps)
        } else {
            batch_norm_train(&y, gamma, beta, running_mean, running_var, momentum, eps)
        };
    }
    let (y, stats) = crate::ops::conv2d::conv2d_op(x, weight, bias, stride, pad, true)?;
    train(&y, gamma, beta, running_mean, running_var, momentum, eps, relu, stats.as_ref())
}

/// The training BN op of every entry point: checks, the device's kernel, one tape record.
#[allow(clippy::too_many_arguments)]
fn train(
    x: &Tensor, gamma: &Tensor, beta: &Tensor, running_mean: &mut Tensor, running_var: &mut Tensor, momentum: f64,
    eps: f64, relu: bool, conv_stats: Option<&ConvStats>,
) -> Result<Tensor> {
    let dims = check("batch_norm", x, &[gamma, beta, running_mean, running_var])?;
    if dims[0] * dims[2] * dims[3] < 2 {
        bail!("batch_norm: training needs more than one value per channel, input {:?}", x.shape());
    }
    let device = x.device();
    let (x_s, gamma_s, beta_s) = (x.storage(), gamma.storage(), beta.storage());
    let args = TrainArgs { dims, momentum, eps, relu, conv_stats, x: x_s, gamma: gamma_s, beta: beta_s };
    let (y, saved) = kernels(&device).train(&args, [running_mean, running_var])?;
    let (x_saved, gamma_saved) = (x.detach(), gamma.detach());
    let make = |y: Tensor| BnTrainBackward {
        dims,
        eps,
        device,
        x: x_saved,
        gamma: gamma_saved,
        saved,
        relu_out: relu.then_some(y),
    };
    Ok(Tensor::from_op_using_output(x.shape().to_vec(), y, make, &[x, gamma, beta]))
}

struct BnTrainBackward {
    dims: [usize; 4],
    eps: f64,
    device: Device,
    x: Tensor,
    gamma: Tensor,
    saved: SavedStats,
    /// The output, when a ReLU is fused in (its sign masks the gradient).
    relu_out: Option<Tensor>,
}

impl BackwardOp for BnTrainBackward {
    fn name(&self) -> &'static str {
        if self.relu_out.is_some() {
            "batch_norm_relu"
        } else {
            "batch_norm"
        }
    }
    fn trace_name(&self) -> &'static str {
        // A fused BN+ReLU's output is the ReLU's, as with the two ops.
        if self.relu_out.is_some() {
            "relu"
        } else {
            "batch_norm"
        }
    }
    fn backward_owned(&self, dy: Storage, needs: &[bool]) -> Result<Vec<Option<Storage>>> {
        let relu_out = self.relu_out.as_ref().map(|y| y.storage());
        let s = TrainSaved { x: self.x.storage(), gamma: self.gamma.storage(), stats: &self.saved, relu_out };
        kernels(&self.device).train_backward(Norm { dims: self.dims, eps: self.eps }, s, dy, needs)
    }
}

/// Eval-mode BN with the running statistics (differentiable in x, γ and β).
pub fn batch_norm_eval(
    x: &Tensor, gamma: &Tensor, beta: &Tensor, running_mean: &Tensor, running_var: &Tensor, eps: f64,
) -> Result<Tensor> {
    let dims = check("batch_norm", x, &[gamma, beta, running_mean, running_var])?;
    let device = x.device();
    let p =
        EvalParams { gamma: gamma.storage(), running_mean: running_mean.storage(), running_var: running_var.storage() };
    let y = kernels(&device).eval(Norm { dims, eps }, x.storage(), p, beta.storage())?;
    let op = BnEvalBackward {
        dims,
        eps,
        device,
        x: gamma.is_requires_grad().then(|| x.detach()),
        gamma: gamma.detach(),
        running_mean: running_mean.detach(),
        running_var: running_var.detach(),
    };
    Ok(Tensor::from_op(x.shape().to_vec(), y, op, &[x, gamma, beta]))
}

struct BnEvalBackward {
    dims: [usize; 4],
    eps: f64,
    device: Device,
    /// The input, kept only when γ wants a gradient.
    x: Option<Tensor>,
    gamma: Tensor,
    running_mean: Tensor,
    running_var: Tensor,
}

impl BackwardOp for BnEvalBackward {
    fn name(&self) -> &'static str {
        "batch_norm_eval"
    }
    fn backward_owned(&self, dy: Storage, needs: &[bool]) -> Result<Vec<Option<Storage>>> {
        let x = self.x.as_ref().map(|t| t.storage());
        let (gamma, running_mean, running_var) =
            (self.gamma.storage(), self.running_mean.storage(), self.running_var.storage());
        let p = EvalParams { gamma, running_mean, running_var };
        kernels(&self.device).eval_backward(Norm { dims: self.dims, eps: self.eps }, x, p, dy, needs)
    }
}
