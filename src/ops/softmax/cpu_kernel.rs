//! Channel softmax on host storage (f32 and f64): the same arithmetic as the CUDA kernel (max, exp of the
//! difference, sum in channel order, divide).

use super::SoftmaxKernel;
use crate::by_dtype;
use crate::float::{typed, typed_mut, Float};
use crate::ops::Cpu;
use crate::tensor::Storage;
use anyhow::Result;

impl SoftmaxKernel for Cpu {
    fn forward(&self, [n, c, hw]: [usize; 3], x: &Storage) -> Result<Storage> {
        let mut y = Storage::for_overwrite(x.dtype(), x.len(), "softmax output")?;
        by_dtype!(x.dtype(), T => {
            let src = typed::<T>(x);
            let out = typed_mut::<T>(&mut y);
            for img in 0..n {
                let base = img * c * hw;
                for px in 0..hw {
                    let at = |ch: usize| base + ch * hw + px;
                    let m = (0..c).map(|ch| src[at(ch)]).fold(T::NEG_INFINITY, |a, b| a.max(b));
                    let mut sum = T::ZERO;
                    for ch in 0..c {
                        let e = (src[at(ch)] - m).exp();
                        out[at(ch)] = e;
                        sum += e;
                    }
                    for ch in 0..c {
                        out[at(ch)] /= sum;
                    }
                }
            }
        });
        Ok(y)
    }
}
