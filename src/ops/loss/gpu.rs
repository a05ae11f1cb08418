//! MSE loss on a GPU device: deterministic two-stage sum forward, `mse_loss_backward` for the gradient.

use crate::autograd::BackwardOp;
use crate::cuda::device::GpuDevice;
use crate::cuda::kernels::{self, mse_num_partials};
use crate::cuda::params::MseParams;
use crate::tensor::{Storage, Tensor};
use anyhow::Result;

pub(super) fn mse_loss(pred: &Tensor, target: &Tensor) -> Result<Tensor> {
    let (pb, tb) = (pred.storage().gpu("mse_loss")?, target.storage().gpu("mse_loss")?);
    let dev = pb.device().clone();
    let n = pred.numel() as i64;
    let num_partials = mse_num_partials(n);
    let mut partial = dev.empty(num_partials as usize)?;
    let mut loss = dev.empty(1)?;
    let p = MseParams { pred: pb.addr(), target: tb.addr(), partial: partial.addr_mut(), loss: loss.addr_mut(), n, num_partials, ..Default::default() };
    // Safety: pred/target hold n floats, partial num_partials, loss 1, all on `dev`.
    unsafe {
        dev.launch(&kernels::MSE_LOSS_PARTIAL, &p)?;
        dev.launch(&kernels::MSE_LOSS_FINALIZE, &p)?;
    }
    let op = GpuMseBackward { dev, pred: pred.detach(), target: target.detach() };
    Ok(Tensor::from_op(vec![], Storage::Gpu(loss), op, &[pred, target]))
}

struct GpuMseBackward {
    dev: GpuDevice,
    pred: Tensor,
    target: Tensor,
}

impl BackwardOp for GpuMseBackward {
    fn name(&self) -> &'static str {
        "mse_loss"
    }
    fn backward(&self, dy: &Storage, needs: &[bool]) -> Result<Vec<Option<Storage>>> {
        let (pb, tb) = (self.pred.storage().gpu("mse_loss backward")?, self.target.storage().gpu("mse_loss backward")?);
        let g = dy.gpu("mse_loss backward")?;
        // d/dtarget = −d/dpred: the same kernel with pred and target swapped (k·(t − p) = −k·(p − t) exactly).
        let grad = |a: u64, b: u64| -> Result<Storage> {
            let mut out = self.dev.empty(pb.len())?;
            let p = MseParams { pred: a, target: b, grad_loss: g.addr(), grad_pred: out.addr_mut(), n: pb.len() as i64, ..Default::default() };
            // Safety: a, b and out hold n floats, grad_loss 1, all on the device.
            unsafe { self.dev.launch(&kernels::MSE_LOSS_BACKWARD, &p)? };
            Ok(Storage::Gpu(out))
        };
        let dp = needs[0].then(|| grad(pb.addr(), tb.addr())).transpose()?;
        let dt = needs[1].then(|| grad(tb.addr(), pb.addr())).transpose()?;
        Ok(vec![dp, dt])
    }
}
