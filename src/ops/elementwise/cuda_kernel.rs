//! relu, add and scale on a GPU device (kernels/elementwise.cu; scale through `sgd_step`, see `scaled`).

use super::EltwiseKernel;
use crate::cuda::kernels;
use crate::cuda::params::{EltwiseParams, OptimParams};
use crate::cuda::{GpuBuffer, GpuDevice};
use crate::ops::Cuda;
use crate::tensor::Storage;
use anyhow::Result;

/// out = kernel(a, b) over a's length on `dev` (b = None for unary kernels).
pub(crate) fn eltwise(
    dev: &GpuDevice, kernel: &'static kernels::Kernel<EltwiseParams>, a: &GpuBuffer, b: Option<&GpuBuffer>,
) -> Result<GpuBuffer> {
    let mut out = dev.empty(a.len())?;
    let p = EltwiseParams::new(a.addr(), b.map_or(0, |b| b.addr()), out.addr_mut(), a.len());
    // SAFETY: a, b (same length, checked by the ops) and out live on `dev` with `n` floats each.
    unsafe { dev.launch(kernel, &p)? };
    Ok(out)
}

/// dy where y > 0, else 0: relu_backward with a = the output (the same decision as the CPU kernel).
pub(crate) fn relu_mask(y: &GpuBuffer, dy: &GpuBuffer) -> Result<GpuBuffer> {
    eltwise(y.device(), &kernels::RELU_BACKWARD, y, Some(dy))
}

/// out = s·x with the SGD kernel on a zero "parameter": 0 − (−s)·x = s·x exactly (f32), the same
/// product the CPU kernel computes; there is no dedicated scale kernel.
pub(crate) fn scaled(x: &GpuBuffer, s: f64) -> Result<GpuBuffer> {
    let dev = x.device();
    let mut out = dev.zeros(x.len())?;
    let p =
        OptimParams { param: out.addr_mut(), grad: x.addr(), n: x.len() as i64, lr: -(s as f32), ..Default::default() };
    // SAFETY: out and x live on `dev` with `n` floats; momentum 0 leaves the state pointers unused.
    unsafe { dev.launch(&kernels::SGD_STEP, &p)? };
    Ok(out)
}

impl EltwiseKernel for Cuda {
    fn relu(&self, x: &Storage) -> Result<Storage> {
        let xb = x.gpu("relu")?;
        Ok(Storage::Gpu(eltwise(xb.device(), &kernels::RELU_FORWARD, xb, None)?))
    }
    fn relu_backward(&self, y: &Storage, dy: Storage) -> Result<Storage> {
        Ok(Storage::Gpu(relu_mask(y.gpu("relu backward")?, dy.gpu("relu backward")?)?))
    }
    fn add(&self, a: &Storage, b: &Storage) -> Result<Storage> {
        let ab = a.gpu("add")?;
        Ok(Storage::Gpu(eltwise(ab.device(), &kernels::ADD, ab, Some(b.gpu("add")?))?))
    }
    fn add_relu(&self, a: &Storage, b: &Storage) -> Result<Storage> {
        // Two launches (there is no fused kernel): the sum, then its relu.
        let sum = self.add(a, b)?;
        self.relu(&sum)
    }
    fn scale(&self, x: &Storage, s: f64) -> Result<Storage> {
        Ok(Storage::Gpu(scaled(x.gpu("scale")?, s)?))
    }
    fn scale_owned(&self, x: Storage, s: f64) -> Result<Storage> {
        self.scale(&x, s)
    }
}
