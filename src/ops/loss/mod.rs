//! Losses: mean squared error (PyTorch `MSELoss(reduction='mean')`, the reference's heatmap loss).

mod gpu;

use crate::autograd::BackwardOp;
use crate::by_dtype;
use crate::float::{typed, Float};
use crate::tensor::{same_dtype, Storage, Tensor};
use anyhow::{bail, Result};

/// mean((pred − target)²) as a one-element tensor; accumulated in f64.
pub fn mse_loss(pred: &Tensor, target: &Tensor) -> Result<Tensor> {
    let device = crate::tensor::same_device("mse_loss", &[pred, target])?;
    same_dtype("mse_loss", pred, target)?;
    if pred.shape() != target.shape() {
        bail!("mse_loss: shape mismatch {:?} vs {:?}", pred.shape(), target.shape());
    }
    if device.is_gpu() {
        return gpu::mse_loss(pred, target);
    }
    let m = pred.numel().max(1) as f64;
    let loss = by_dtype!(pred.dtype(), T => {
        let s: f64 = typed::<T>(pred.storage())
            .iter()
            .zip(typed::<T>(target.storage()))
            .map(|(&a, &b)| {
                let d = (a - b).to_f64();
                d * d
            })
            .sum();
        T::into_storage(vec![T::from_f64(s / m)])
    });
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
    fn backward(&self, dy: &Storage, needs: &[bool]) -> Result<Vec<Option<Storage>>> {
        let m = self.pred.numel().max(1) as f64;
        by_dtype!(dy.dtype(), T => {
            let k = T::from_f64(2.0 * typed::<T>(dy)[0].to_f64() / m);
            let d: Vec<T> = typed::<T>(self.pred.storage())
                .iter()
                .zip(typed::<T>(self.target.storage()))
                .map(|(&a, &b)| k * (a - b))
                .collect();
            let dt = needs[1].then(|| T::into_storage(d.iter().map(|&v| -v).collect()));
            Ok(vec![needs[0].then(|| T::into_storage(d)), dt])
        })
    }
}
