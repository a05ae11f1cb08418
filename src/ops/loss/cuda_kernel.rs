//! MSE loss on a GPU device: deterministic two-stage sum forward, `mse_loss_backward` for the gradient.

use super::MseKernel;
use crate::cuda::kernels::{self, mse_num_partials};
use crate::cuda::params::MseParams;
use crate::ops::Cuda;
use crate::tensor::Storage;
use anyhow::Result;

impl MseKernel for Cuda {
    fn forward(&self, pred: &Storage, target: &Storage) -> Result<Storage> {
        let (pb, tb) = (pred.gpu("mse_loss")?, target.gpu("mse_loss")?);
        let dev = pb.device();
        let n = pb.len() as i64;
        let num_partials = mse_num_partials(n);
        let mut partial = dev.empty(num_partials as usize)?;
        let mut loss = dev.empty(1)?;
        let p = MseParams {
            pred: pb.addr(),
            target: tb.addr(),
            partial: partial.addr_mut(),
            loss: loss.addr_mut(),
            n,
            num_partials,
            ..Default::default()
        };
        // SAFETY: pred/target hold n floats (one length, checked by the op), partial num_partials, loss 1, all
        // on `dev`.
        unsafe {
            dev.launch(&kernels::MSE_LOSS_PARTIAL, &p)?;
            dev.launch(&kernels::MSE_LOSS_FINALIZE, &p)?;
        }
        Ok(Storage::Gpu(loss))
    }
    fn backward(&self, pred: &Storage, target: &Storage, dy: &Storage, needs: &[bool]) -> Result<Vec<Option<Storage>>> {
        let (pb, tb) = (pred.gpu("mse_loss backward")?, target.gpu("mse_loss backward")?);
        let g = dy.gpu("mse_loss backward")?;
        let dev = pb.device();
        // d/dtarget = −d/dpred: the same kernel with pred and target swapped (k·(t − p) = −k·(p − t) exactly).
        let grad = |a: u64, b: u64| -> Result<Storage> {
            let mut out = dev.empty(pb.len())?;
            let p = MseParams {
                pred: a,
                target: b,
                grad_loss: g.addr(),
                grad_pred: out.addr_mut(),
                n: pb.len() as i64,
                ..Default::default()
            };
            // SAFETY: a, b and out hold n floats, grad_loss 1, all on the device.
            unsafe { dev.launch(&kernels::MSE_LOSS_BACKWARD, &p)? };
            Ok(Storage::Gpu(out))
        };
        let dp = needs[0].then(|| grad(pb.addr(), tb.addr())).transpose()?;
        let dt = needs[1].then(|| grad(tb.addr(), pb.addr())).transpose()?;
        Ok(vec![dp, dt])
    }
}
