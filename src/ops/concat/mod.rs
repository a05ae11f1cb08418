//! Concatenation along the channel axis of NCHW tensors (backward splits the gradient).

mod gpu;

use crate::autograd::BackwardOp;
use crate::by_dtype;
use crate::float::{typed, typed_mut};
use crate::tensor::{same_dtype, Storage, Tensor};
use anyhow::{bail, Result};

pub fn concat_channels(xs: &[&Tensor]) -> Result<Tensor> {
    let Some(first) = xs.first() else { bail!("concat: no inputs") };
    let device = crate::tensor::same_device("concat", xs)?;
    let [n, _, h, w] = first.dims4("concat")?;
    let mut chans = Vec::with_capacity(xs.len());
    for x in xs {
        let [xn, xc, xh, xw] = x.dims4("concat")?;
        same_dtype("concat", first, x)?;
        if (xn, xh, xw) != (n, h, w) {
            bail!("concat: shape mismatch {:?} vs {:?} (N, H, W must agree)", first.shape(), x.shape());
        }
        chans.push(xc);
    }
    let ctotal: usize = chans.iter().sum();
    let plane = h * w;
    if device.is_gpu() {
        return gpu::concat(xs, n, plane, chans);
    }
    let mut out = Storage::for_overwrite(first.dtype(), n * ctotal * plane);
    by_dtype!(first.dtype(), T => {
        let y = typed_mut::<T>(&mut out);
        for b in 0..n {
            let mut off = 0;
            for (x, &c) in xs.iter().zip(&chans) {
                let src = &typed::<T>(x.storage())[b * c * plane..][..c * plane];
                y[(b * ctotal + off) * plane..][..c * plane].copy_from_slice(src);
                off += c;
            }
        }
    });
    Ok(Tensor::from_op(vec![n, ctotal, h, w], out, ConcatBackward { n, plane, chans }, xs))
}

struct ConcatBackward {
    n: usize,
    plane: usize,
    chans: Vec<usize>,
}

impl BackwardOp for ConcatBackward {
    fn name(&self) -> &'static str {
        "concat"
    }
    fn backward(&self, dy: &Storage, needs: &[bool]) -> Result<Vec<Option<Storage>>> {
        let ctotal: usize = self.chans.iter().sum();
        let plane = self.plane;
        by_dtype!(dy.dtype(), T => {
            let g: &[T] = typed(dy);
            let mut off = 0;
            let mut out = Vec::with_capacity(self.chans.len());
            for (i, &c) in self.chans.iter().enumerate() {
                out.push(needs[i].then(|| {
                    let mut s = Storage::for_overwrite(dy.dtype(), self.n * c * plane);
                    let dx = typed_mut::<T>(&mut s);
                    for b in 0..self.n {
                        dx[b * c * plane..][..c * plane].copy_from_slice(&g[(b * ctotal + off) * plane..][..c * plane]);
                    }
                    s
                }));
                off += c;
            }
            Ok(out)
        })
    }
}
