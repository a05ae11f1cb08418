//! One training step's forward → loss → backward → gradients, shared by the eager loop
//! (`Trainer::run_epoch`), the captured CUDA graphs (`graph.rs`) and `hrk bench --train`, so all
//! compute the same sequence. The optimizer update is the caller's: the eager loop applies it at
//! once, the graphs capture it separately so the host can refuse a non-finite loss first.

use crate::autograd::{backward, backward_seeded, Gradients};
use crate::cuda::GpuBuffer;
use crate::model::HrNet;
use crate::ops;
use crate::tensor::{Storage, Tensor};
use anyhow::{anyhow, Result};

/// What one forward + backward leaves for the host and for the update: the loss and heatmaps (detached)
/// and the parameters' gradients in store order.
pub struct Pass {
    pub loss: Tensor,
    pub heatmaps: Tensor,
    pub grads: Vec<Storage>,
}

/// The loss gradient the backward starts from.
pub enum LossSeed<'a> {
    /// 1.0, made on the loss's device when the backward starts.
    One,
    /// A copy of this device buffer (holding 1.0), made when the backward starts: a graph capture
    /// cannot upload.
    CopyOf(&'a GpuBuffer),
}

/// Forward in training mode, MSE loss against `target`, backward from `seed`, and the parameters'
/// gradients taken out of the backward's results.
pub fn forward_backward(net: &mut HrNet, input: &Tensor, target: &Tensor, seed: LossSeed) -> Result<Pass> {
    let out = net.forward(input, true)?;
    let loss = ops::mse_loss(&out, target)?;
    let mut grads = match seed {
        LossSeed::One => backward(&loss)?,
        LossSeed::CopyOf(buffer) => backward_seeded(&loss, Storage::Gpu(buffer.try_clone()?))?,
    };
    let grads = take_param_grads(net, &mut grads)?;
    Ok(Pass { loss: loss.detach(), heatmaps: out.detach(), grads })
}

/// The gradients of the model's parameters, in store order (what the optimizers take).
fn take_param_grads(net: &HrNet, grads: &mut Gradients) -> Result<Vec<Storage>> {
    let names = net.store.param_names();
    let params = net.store.params();
    params.iter().zip(names).map(|(p, name)| grads.take(p).ok_or_else(|| anyhow!("no gradient for `{name}`"))).collect()
}
