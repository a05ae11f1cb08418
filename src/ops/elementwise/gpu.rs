//! relu, add and scale on a GPU device (kernels/elementwise.cu; scale through `sgd_step`, see below).

use crate::autograd::BackwardOp;
use crate::cuda::device::{GpuBuffer, GpuDevice};
use crate::cuda::kernels;
use crate::cuda::params::{EltwiseParams, OptimParams};
use crate::tensor::{Storage, Tensor};
use anyhow::Result;

pub(crate) fn eltwise(dev: &GpuDevice, kernel: &'static kernels::Kernel<EltwiseParams>, a: &GpuBuffer, b: Option<&GpuBuffer>) -> Result<GpuBuffer> {
    let mut out = dev.empty(a.len())?;
    let p = EltwiseParams { a: a.addr(), b: b.map_or(0, |b| b.addr()), out: out.addr_mut(), n: a.len() as i64 };
    // Safety: a, b and out live on `dev` with `n` floats each.
    unsafe { dev.launch(kernel, &p)? };
    Ok(out)
}

pub(super) fn relu(x: &Tensor) -> Result<Tensor> {
    let xb = x.storage().gpu("relu")?;
    let y = eltwise(xb.device(), &kernels::RELU_FORWARD, xb, None)?;
    Ok(Tensor::from_op_using_output(x.shape().to_vec(), Storage::Gpu(y), |y| GpuReluBackward { y }, &[x]))
}

struct GpuReluBackward {
    y: Tensor,
}
impl BackwardOp for GpuReluBackward {
    fn name(&self) -> &'static str {
        "relu"
    }
    fn backward(&self, dy: &Storage, _needs: &[bool]) -> Result<Vec<Option<Storage>>> {
        // relu_backward passes b where a > 0: a = the output (same decision as the CPU path).
        let yb = self.y.storage().gpu("relu backward")?;
        let dx = eltwise(yb.device(), &kernels::RELU_BACKWARD, yb, Some(dy.gpu("relu backward")?))?;
        Ok(vec![Some(Storage::Gpu(dx))])
    }
}

pub(super) fn add(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    let ab = a.storage().gpu("add")?;
    let y = eltwise(ab.device(), &kernels::ADD, ab, Some(b.storage().gpu("add")?))?;
    Ok(Tensor::from_op(a.shape().to_vec(), Storage::Gpu(y), GpuAddBackward, &[a, b]))
}

struct GpuAddBackward;
impl BackwardOp for GpuAddBackward {
    fn name(&self) -> &'static str {
        "add"
    }
    fn backward(&self, dy: &Storage, needs: &[bool]) -> Result<Vec<Option<Storage>>> {
        let g = dy.gpu("add backward")?;
        let copy = |need: bool| need.then(|| g.try_clone().map(Storage::Gpu)).transpose();
        Ok(vec![copy(needs[0])?, copy(needs[1])?])
    }
}

/// out = s·x with the SGD kernel on a zero "parameter": 0 − (−s)·x = s·x exactly (f32), the same
/// product the CPU path computes; there is no dedicated scale kernel.
pub(crate) fn scaled(x: &GpuBuffer, s: f64) -> Result<GpuBuffer> {
    let dev = x.device();
    let mut out = dev.zeros(x.len())?;
    let p = OptimParams { param: out.addr_mut(), grad: x.addr(), n: x.len() as i64, lr: -(s as f32), ..Default::default() };
    // Safety: out and x live on `dev` with `n` floats; momentum 0 leaves the state pointers unused.
    unsafe { dev.launch(&kernels::SGD_STEP, &p)? };
    Ok(out)
}

pub(super) fn scale(x: &Tensor, s: f64) -> Result<Tensor> {
    let y = scaled(x.storage().gpu("scale")?, s)?;
    Ok(Tensor::from_op(x.shape().to_vec(), Storage::Gpu(y), GpuScaleBackward(s), &[x]))
}

struct GpuScaleBackward(f64);
impl BackwardOp for GpuScaleBackward {
    fn name(&self) -> &'static str {
        "scale"
    }
    fn backward(&self, dy: &Storage, _needs: &[bool]) -> Result<Vec<Option<Storage>>> {
        Ok(vec![Some(Storage::Gpu(scaled(dy.gpu("scale backward")?, self.0)?))])
    }
}
