//! Adam / SGD on a GPU device: one `adam_step` / `sgd_step` launch per parameter (kernels/optim.cu),
//! updating the parameter and the optimizer state in place.

use super::{Hyper, OptimKernel};
use crate::cuda::kernels::{self, Kernel};
use crate::cuda::params::OptimParams;
use crate::ops::Cuda;
use crate::tensor::{Storage, Tensor};
use anyhow::{anyhow, Result};

fn step(
    kernel: &'static Kernel<OptimParams>, param: &mut Tensor, grad: &Storage, h: &Hyper, exp_avg: Option<&mut Storage>,
    exp_avg_sq: Option<&mut Storage>, momentum_buf: Option<&mut Storage>,
) -> Result<()> {
    let op = kernel.name;
    let addr = |s: Option<&mut Storage>| -> Result<u64> {
        s.map(|s| s.gpu_mut(op).map(|b| b.addr_mut())).transpose().map(|a| a.unwrap_or(0))
    };
    let mut p = OptimParams {
        grad: grad.gpu(op)?.addr(),
        exp_avg: addr(exp_avg)?,
        exp_avg_sq: addr(exp_avg_sq)?,
        momentum_buf: addr(momentum_buf)?,
        step_scalars: h.step_scalars,
        n: param.numel() as i64,
        lr: h.lr as f32,
        weight_decay: h.weight_decay as f32,
        beta1: h.beta1 as f32,
        beta2: h.beta2 as f32,
        eps: h.eps as f32,
        // lr already carries 1/(1−β1ᵗ) (rounded once in f64, as on the CPU): the kernel's division is exact.
        bias_correction1: 1.0,
        bias_correction2_sqrt: h.bc2_sqrt as f32,
        momentum: h.momentum as f32,
        dampening: h.dampening as f32,
        nesterov: h.nesterov as i32,
        first_step: h.first_step as i32,
        pad_: 0,
        param: 0,
    };
    let mut result = Err(anyhow!("{op}: parameter {:?} is not on the GPU", param.shape()));
    param.update(|s| {
        result = (|| {
            let b = s.gpu_mut(op)?;
            p.param = b.addr_mut();
            let dev = b.device().clone();
            // SAFETY: param, grad and the state hold n floats on `dev` (checked by the optimizer: check_grads,
            // zeros_like / follow_params for the state).
            unsafe { dev.launch(kernel, &p) }
        })();
    })?;
    result
}

impl OptimKernel for Cuda {
    fn adam(&self, p: &mut Tensor, grad: &Storage, m: &mut Storage, v: &mut Storage, h: &Hyper) -> Result<()> {
        step(&kernels::ADAM_STEP, p, grad, h, Some(m), Some(v), None)
    }
    fn sgd(&self, param: &mut Tensor, grad: &Storage, momentum_buf: Option<&mut Storage>, h: &Hyper) -> Result<()> {
        step(&kernels::SGD_STEP, param, grad, h, None, None, momentum_buf)
    }
}
