//! Elementwise ops: relu, add, add_relu (fused) and scale.

mod cpu_kernel;
pub(crate) mod cuda_kernel;

use super::{kernels_for, Cpu, Cuda};
use crate::autograd::BackwardOp;
use crate::tensor::{same_device, same_dtype, Device, Storage, Tensor};
use anyhow::{bail, Result};

/// The elementwise kernels of one device. Inputs are checked by the ops (one dtype, one length, one device).
pub(crate) trait EltwiseKernel: Sync {
    fn relu(&self, x: &Storage) -> Result<Storage>;
    /// dy where y > 0, else 0 (`dy`'s buffer may be reused).
    fn relu_backward(&self, y: &Storage, dy: Storage) -> Result<Storage>;
    fn add(&self, a: &Storage, b: &Storage) -> Result<Storage>;
    /// relu(a + b).
    fn add_relu(&self, a: &Storage, b: &Storage) -> Result<Storage>;
    /// x · s.
    fn scale(&self, x: &Storage, s: f64) -> Result<Storage>;
    /// x · s, reusing `x`'s buffer where the device can (the backward of `scale`).
    fn scale_owned(&self, x: Storage, s: f64) -> Result<Storage>;
}

fn kernels(device: &Device) -> &'static dyn EltwiseKernel {
    kernels_for(device, &Cpu, &Cuda)
}

pub fn relu(x: &Tensor) -> Result<Tensor> {
    let y = kernels(&x.device()).relu(x.storage())?;
    // Backward reads the output's sign (shared storage: nothing extra kept alive).
    Ok(Tensor::from_op_using_output(x.shape().to_vec(), y, |y| ReluBackward { y }, &[x]))
}

struct ReluBackward {
    y: Tensor,
}
impl BackwardOp for ReluBackward {
    fn name(&self) -> &'static str {
        "relu"
    }
    fn backward_owned(&self, dy: Storage, _needs: &[bool]) -> Result<Vec<Option<Storage>>> {
        Ok(vec![Some(kernels(&self.y.device()).relu_backward(self.y.storage(), dy)?)])
    }
}

pub fn add(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    let device = same_device("add", &[a, b])?;
    same_dtype("add", a, b)?;
    if a.shape() != b.shape() {
        bail!("add: shape mismatch {:?} vs {:?}", a.shape(), b.shape());
    }
    let y = kernels(&device).add(a.storage(), b.storage())?;
    Ok(Tensor::from_op(a.shape().to_vec(), y, AddBackward, &[a, b]))
}

struct AddBackward;
impl BackwardOp for AddBackward {
    fn name(&self) -> &'static str {
        "add"
    }
    fn backward_owned(&self, dy: Storage, needs: &[bool]) -> Result<Vec<Option<Storage>>> {
        // Both inputs get dy: the second one takes the buffer itself, the first a copy.
        Ok(match needs {
            [true, true] => vec![Some(dy.try_clone()?), Some(dy)],
            [true, false] => vec![Some(dy), None],
            [false, true] => vec![None, Some(dy)],
            _ => vec![None, None],
        })
    }
}

/// relu(a + b) in one op (a residual block's and a fuse row's last step): one tape record; the backward
/// masks the gradient once and hands it to both inputs.
pub fn add_relu(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    same_dtype("add", a, b)?;
    if a.shape() != b.shape() {
        bail!("add: shape mismatch {:?} vs {:?}", a.shape(), b.shape());
    }
    let device = same_device("add", &[a, b])?;
    let y = kernels(&device).add_relu(a.storage(), b.storage())?;
    Ok(Tensor::from_op_using_output(a.shape().to_vec(), y, |y| AddReluBackward { y }, &[a, b]))
}

struct AddReluBackward {
    y: Tensor,
}
impl BackwardOp for AddReluBackward {
    fn name(&self) -> &'static str {
        "add_relu"
    }
    fn trace_name(&self) -> &'static str {
        "relu"
    }
    fn backward_owned(&self, dy: Storage, needs: &[bool]) -> Result<Vec<Option<Storage>>> {
        let masked = kernels(&self.y.device()).relu_backward(self.y.storage(), dy)?;
        AddBackward.backward_owned(masked, needs)
    }
}

/// y = x · s for a constant s.
pub fn scale(x: &Tensor, s: f64) -> Result<Tensor> {
    let y = kernels(&x.device()).scale(x.storage(), s)?;
    Ok(Tensor::from_op(x.shape().to_vec(), y, ScaleBackward { s, device: x.device() }, &[x]))
}

struct ScaleBackward {
    s: f64,
    device: Device,
}
impl BackwardOp for ScaleBackward {
    fn name(&self) -> &'static str {
        "scale"
    }
    fn backward(&self, dy: &Storage, _needs: &[bool]) -> Result<Vec<Option<Storage>>> {
        Ok(vec![Some(kernels(&self.device).scale(dy, self.s)?)])
    }
    fn backward_owned(&self, dy: Storage, _needs: &[bool]) -> Result<Vec<Option<Storage>>> {
        Ok(vec![Some(kernels(&self.device).scale_owned(dy, self.s)?)])
    }
}
