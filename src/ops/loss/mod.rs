//! Losses: mean squared error (PyTorch `MSELoss(reduction='mean')`, the reference's heatmap loss).

mod cpu_kernel;
mod cuda_kernel;

use super::{kernels_for, Cpu, Cuda};
use crate::autograd::BackwardOp;
use crate::tensor::{same_dtype, Device, Storage, Tensor};
use anyhow::{bail, Result};

/// The MSE kernels of one device (pred and target: one dtype, one length).
pub(crate) trait MseKernel: Sync {
    /// mean((pred − target)²) as one element.
    fn forward(&self, pred: &Storage, target: &Storage) -> Result<Storage>;
    /// The gradients w.r.t. pred and target (where `needs` asks) given the loss's gradient `dy` (one element).
    fn backward(&self, pred: &Storage, target: &Storage, dy: &Storage, needs: &[bool]) -> Result<Vec<Option<Storage>>>;
}

fn kernels(device: &Device) -> &'static dyn MseKernel {
    kernels_for(device, &Cpu, &Cuda)
}

/// mean((pred − target)²) as a one-element tensor (accumulated in f64 on the CPU).
pub fn mse_loss(pred: &Tensor, target: &Tensor) -> Result<Tensor> {
    let device = crate::tensor::same_device("mse_loss", &[pred, target])?;
    same_dtype("mse_loss", pred, target)?;
    if pred.shape() != target.shape() {
        bail!("mse_loss: shape mismatch {:?} vs {:?}", pred.shape(), target.shape());
    }
    let loss = kernels(&device).forward(pred.storage(), target.storage())?;
    let op = MseBackward { pred: pred.detach(), target: target.detach() };
    Ok(Tensor::from_op(vec![], loss, op, &[pred, target]))
}

struct MseBackward {
    pred: Tensor,
    target: Tensor,
}

impl BackwardOp for MseBackward {
    fn name(&self) -> &'static str {
        "mse_loss"
    }
    fn backward_owned(&self, dy: Storage, needs: &[bool]) -> Result<Vec<Option<Storage>>> {
        let dy = &dy;
        kernels(&self.pred.device()).backward(self.pred.storage(), self.target.storage(), dy, needs)
    }
}
