//! Losses: mean squared error (PyTorch `MSELoss(reduction='mean')`, the reference's heatmap loss).

mod gpu;

use crate::autograd::BackwardOp;
use crate::by_dtype;
use crate::float::{typed, typed_mut, Float};
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
        let s = sum_sq_diff::<T>(typed(pred.storage()), typed(target.storage()));
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
            let (pred, target) = (typed::<T>(self.pred.storage()), typed::<T>(self.target.storage()));
            let fill = |sign: T| {
                let mut s = Storage::for_overwrite(dy.dtype(), pred.len());
                let out = typed_mut::<T>(&mut s).iter_mut();
                out.zip(pred.iter().zip(target)).for_each(|(o, (&a, &b))| *o = sign * (k * (a - b)));
                s
            };
            Ok(vec![needs[0].then(|| fill(T::ONE)), needs[1].then(|| fill(-T::ONE))])
        })
    }
}

/// Σ (a − b)² in f64 over 8 independent accumulators (vectorised; the sum is pairwise-ish, so more
/// accurate than one sequential chain).
fn sum_sq_diff<T: Float>(a: &[T], b: &[T]) -> f64 {
    const LANES: usize = 8;
    let mut acc = [0.0f64; LANES];
    let (mut ac, mut bc) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    for (x, y) in (&mut ac).zip(&mut bc) {
        for l in 0..LANES {
            let d = (x[l] - y[l]).to_f64();
            acc[l] += d * d;
        }
    }
    for (l, (&x, &y)) in ac.remainder().iter().zip(bc.remainder()).enumerate() {
        let d = (x - y).to_f64();
        acc[l] += d * d;
    }
    acc.iter().sum()
}
