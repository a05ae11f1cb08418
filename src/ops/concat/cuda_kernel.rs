//! Channel concatenation on a GPU device: `concat_channels` per input, `split_channels` in backward.

use super::{ConcatKernel, ConcatShape};
use crate::cuda::kernels;
use crate::cuda::params::ConcatParams;
use crate::ops::Cuda;
use crate::tensor::Storage;
use anyhow::Result;

impl ConcatKernel for Cuda {
    fn concat(&self, xs: &[&Storage], shape: &ConcatShape) -> Result<Storage> {
        let ctotal = shape.total_channels();
        let dev = xs[0].gpu("concat")?.device().clone();
        let mut y = dev.empty(shape.n * ctotal * shape.plane)?;
        let mut off = 0;
        for (x, &c) in xs.iter().zip(&shape.chans) {
            // The kernel only reads `part` in this direction.
            let p = ConcatParams::new(
                "concat",
                x.gpu("concat")?.addr(),
                y.addr_mut(),
                shape.n,
                c,
                ctotal,
                off,
                shape.plane,
            )?;
            // SAFETY: part holds n·c·plane floats, whole n·ctotal·plane (shapes checked by the op), both on `dev`.
            unsafe { dev.launch(&kernels::CONCAT_CHANNELS, &p)? };
            off += c;
        }
        Ok(Storage::Gpu(y))
    }
    fn split(&self, dy: &Storage, shape: &ConcatShape, needs: &[bool]) -> Result<Vec<Option<Storage>>> {
        let g = dy.gpu("concat backward")?;
        let dev = g.device();
        let ctotal = shape.total_channels();
        let mut off = 0;
        let mut out = Vec::with_capacity(shape.chans.len());
        for (i, &c) in shape.chans.iter().enumerate() {
            if needs[i] {
                let mut dx = dev.empty(shape.n * c * shape.plane)?;
                // split_channels only reads `whole`.
                let p = ConcatParams::new(
                    "concat backward",
                    dx.addr_mut(),
                    g.addr(),
                    shape.n,
                    c,
                    ctotal,
                    off,
                    shape.plane,
                )?;
                // SAFETY: sizes as in the forward (checked there); dx is a fresh buffer on `dev`.
                unsafe { dev.launch(&kernels::SPLIT_CHANNELS, &p)? };
                out.push(Some(Storage::Gpu(dx)));
            } else {
                out.push(None);
            }
            off += c;
        }
        Ok(out)
    }
}
