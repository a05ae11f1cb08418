//! Channel concatenation and its split on host storage (row copies).

use super::{ConcatKernel, ConcatShape};
use crate::by_dtype;
use crate::float::{typed, typed_mut};
use crate::ops::Cpu;
use crate::tensor::Storage;
use anyhow::Result;

impl ConcatKernel for Cpu {
    fn concat(&self, xs: &[&Storage], shape: &ConcatShape) -> Result<Storage> {
        let ConcatShape { n, plane, ref chans } = *shape;
        let ctotal = shape.total_channels();
        let dtype = xs[0].dtype();
        let mut out = Storage::for_overwrite(dtype, n * ctotal * plane, "concat output")?;
        by_dtype!(dtype, T => {
            let y = typed_mut::<T>(&mut out);
            for b in 0..n {
                let mut off = 0;
                for (x, &c) in xs.iter().zip(chans) {
                    let src = &typed::<T>(x)[b * c * plane..][..c * plane];
                    y[(b * ctotal + off) * plane..][..c * plane].copy_from_slice(src);
                    off += c;
                }
            }
        });
        Ok(out)
    }
    fn split(&self, dy: &Storage, shape: &ConcatShape, needs: &[bool]) -> Result<Vec<Option<Storage>>> {
        let ctotal = shape.total_channels();
        let plane = shape.plane;
        by_dtype!(dy.dtype(), T => {
            let g: &[T] = typed(dy);
            let mut off = 0;
            let mut out = Vec::with_capacity(shape.chans.len());
            for (i, &c) in shape.chans.iter().enumerate() {
                out.push(needs[i].then(|| -> Result<Storage> {
                    let mut s = Storage::for_overwrite(dy.dtype(), shape.n * c * plane, "concat input gradient")?;
                    let dx = typed_mut::<T>(&mut s);
                    for b in 0..shape.n {
                        dx[b * c * plane..][..c * plane].copy_from_slice(&g[(b * ctotal + off) * plane..][..c * plane]);
                    }
                    Ok(s)
                }).transpose()?);
                off += c;
            }
            Ok(out)
        })
    }
}
