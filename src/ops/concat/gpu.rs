//! Channel concatenation on a GPU device: `concat_channels` per input, `split_channels` in backward.

use crate::autograd::BackwardOp;
use crate::cuda::device::{i32_of, GpuDevice};
use crate::cuda::kernels;
use crate::cuda::params::ConcatParams;
use crate::tensor::{Storage, Tensor};
use anyhow::Result;

pub(super) fn concat(xs: &[&Tensor], n: usize, plane: usize, chans: Vec<usize>) -> Result<Tensor> {
    let ctotal: usize = chans.iter().sum();
    let dev = xs[0].storage().gpu("concat")?.device().clone();
    let mut y = dev.empty(n * ctotal * plane)?;
    let mut p = ConcatParams { n: i32_of("concat", n)?, c_whole: i32_of("concat", ctotal)?, hw: i32_of("concat", plane)?, ..Default::default() };
    let mut off = 0;
    for (x, &c) in xs.iter().zip(&chans) {
        // The kernel only reads `part` in this direction.
        p.part = x.storage().gpu("concat")?.addr();
        p.whole = y.addr_mut();
        p.c_part = i32_of("concat", c)?;
        p.c_offset = i32_of("concat", off)?;
        // Safety: part holds n·c·plane floats, whole n·ctotal·plane, both on `dev`.
        unsafe { dev.launch(&kernels::CONCAT_CHANNELS, &p)? };
        off += c;
    }
    let (h, w) = (xs[0].shape()[2], xs[0].shape()[3]);
    Ok(Tensor::from_op(vec![n, ctotal, h, w], Storage::Gpu(y), GpuConcatBackward { dev, base: p, chans }, xs))
}

struct GpuConcatBackward {
    dev: GpuDevice,
    base: ConcatParams,
    chans: Vec<usize>,
}

impl BackwardOp for GpuConcatBackward {
    fn name(&self) -> &'static str {
        "concat"
    }
    fn backward(&self, dy: &Storage, needs: &[bool]) -> Result<Vec<Option<Storage>>> {
        let g = dy.gpu("concat backward")?;
        let n = self.base.n as usize * self.base.hw as usize;
        let mut off = 0;
        let mut out = Vec::with_capacity(self.chans.len());
        for (i, &c) in self.chans.iter().enumerate() {
            if needs[i] {
                let mut dx = self.dev.empty(n * c)?;
                // split_channels only reads `whole`.
                let p = ConcatParams { part: dx.addr_mut(), whole: g.addr(), c_part: c as i32, c_offset: off as i32, ..self.base };
                // Safety: sizes as in the forward (checked there).
                unsafe { self.dev.launch(&kernels::SPLIT_CHANNELS, &p)? };
                out.push(Some(Storage::Gpu(dx)));
            } else {
                out.push(None);
            }
            off += c;
        }
        Ok(out)
    }
}
