//! MSE loss on host storage: the sum of squares in f64 over 8 accumulators.

use super::MseKernel;
use crate::by_dtype;
use crate::float::{typed, typed_mut, Float};
use crate::ops::Cpu;
use crate::tensor::Storage;
use anyhow::Result;

impl MseKernel for Cpu {
    fn forward(&self, pred: &Storage, target: &Storage) -> Result<Storage> {
        let m = pred.len().max(1) as f64;
        Ok(by_dtype!(pred.dtype(), T => {
            let s = sum_sq_diff::<T>(typed(pred), typed(target));
            T::into_storage(vec![T::from_f64(s / m)])
        }))
    }
    fn backward(&self, pred: &Storage, target: &Storage, dy: &Storage, needs: &[bool]) -> Result<Vec<Option<Storage>>> {
        let m = pred.len().max(1) as f64;
        by_dtype!(dy.dtype(), T => {
            let k = T::from_f64(2.0 * typed::<T>(dy)[0].to_f64() / m);
            let (pred, target) = (typed::<T>(pred), typed::<T>(target));
            let fill = |sign: T| -> Result<Storage> {
                let mut s = Storage::for_overwrite(dy.dtype(), pred.len(), "mse_loss gradient")?;
                let out = typed_mut::<T>(&mut s).iter_mut();
                out.zip(pred.iter().zip(target)).for_each(|(o, (&a, &b))| *o = sign * (k * (a - b)));
                Ok(s)
            };
            Ok(vec![needs[0].then(|| fill(T::ONE)).transpose()?, needs[1].then(|| fill(-T::ONE)).transpose()?])
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
