//! Channel concatenation on a GPU device: `concat_channels` per input, `split_channels` in backward.
//! One forward launcher (`concat_into`) serves the op and the GPU inference engine.

use super::{ConcatKernel, ConcatShape};
use crate::cuda::kernels;
use crate::cuda::params::ConcatParams;
use crate::cuda::GpuBuffer;
use crate::ops::Cuda;
use crate::tensor::Storage;
use anyhow::{bail, Result};

/// Copies `part` [n, c_part, hw] into channels [c_offset, c_offset + c_part) of `whole` [n, c_whole, hw],
/// checked against the sizes.
pub fn concat_into(
    part: &GpuBuffer, whole: &mut GpuBuffer, n: usize, c_part: usize, c_whole: usize, c_offset: usize, hw: usize,
) -> Result<()> {
    let op = "concat";
    part.expect_len(op, "part", n * c_part * hw)?;
    whole.expect_len(op, "whole", n * c_whole * hw)?;
    if c_offset + c_part > c_whole {
        bail!("{op}: channels {c_offset}..{} outside {c_whole}", c_offset + c_part);
    }
    // The kernel only reads `part` in this direction.
    let p = ConcatParams::new(op, part.addr(), whole.addr_mut(), n, c_part, c_whole, c_offset, hw)?;
    // SAFETY: part and whole hold the floats of their shapes and the channel range fits (checked above).
    unsafe { part.device().launch(&kernels::CONCAT_CHANNELS, &p) }
}

impl ConcatKernel for Cuda {
    fn concat(&self, xs: &[&Storage], shape: &ConcatShape) -> Result<Storage> {
        let ctotal = shape.total_channels();
        let dev = xs[0].gpu("concat")?.device().clone();
        let mut y = dev.empty(shape.n * ctotal * shape.plane)?;
        let mut off = 0;
        for (x, &c) in xs.iter().zip(&shape.chans) {
            concat_into(x.gpu("concat")?, &mut y, shape.n, c, ctotal, off, shape.plane)?;
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
