//! Bilinear resize on a GPU device (kernels/upsample.cu); nearest has no kernel and stays on the CPU.

use crate::autograd::BackwardOp;
use crate::cuda::device::{i32_of, GpuDevice};
use crate::cuda::kernels;
use crate::cuda::params::UpsampleParams;
use crate::tensor::{Storage, Tensor};
use anyhow::Result;

fn params([n, c, h, w]: [usize; 4], [ho, wo]: [usize; 2]) -> Result<UpsampleParams> {
    let op = "upsample_bilinear";
    Ok(UpsampleParams {
        planes: i32_of(op, n * c)?,
        in_h: i32_of(op, h)?,
        in_w: i32_of(op, w)?,
        out_h: i32_of(op, ho)?,
        out_w: i32_of(op, wo)?,
        // The ratio rounded once from f64, as the CPU path does.
        scale_h: (h as f64 / ho as f64) as f32,
        scale_w: (w as f64 / wo as f64) as f32,
        ..Default::default()
    })
}

pub(super) fn bilinear(x: &Tensor, d: [usize; 4], size: [usize; 2]) -> Result<Tensor> {
    let xb = x.storage().gpu("upsample_bilinear")?;
    let dev = xb.device().clone();
    let mut y = dev.empty(d[0] * d[1] * size[0] * size[1])?;
    let p = UpsampleParams { x: xb.addr(), y: y.addr_mut(), ..params(d, size)? };
    // Safety: x and y live on `dev` with the sizes in `p`.
    unsafe { dev.launch(&kernels::BILINEAR_FORWARD, &p)? };
    let op = GpuBilinearBackward { dev, base: p, numel_in: x.numel() };
    Ok(Tensor::from_op(vec![d[0], d[1], size[0], size[1]], Storage::Gpu(y), op, &[x]))
}

struct GpuBilinearBackward {
    dev: GpuDevice,
    base: UpsampleParams,
    numel_in: usize,
}

impl BackwardOp for GpuBilinearBackward {
    fn name(&self) -> &'static str {
        "upsample_bilinear"
    }
    fn backward(&self, dy: &Storage, _needs: &[bool]) -> Result<Vec<Option<Storage>>> {
        // The kernel scatters with atomicAdd into dx: start from zero.
        let mut dx = self.dev.zeros(self.numel_in)?;
        let p = UpsampleParams { x: 0, y: 0, dy: dy.gpu("upsample_bilinear backward")?.addr(), dx: dx.addr_mut(), ..self.base };
        // Safety: sizes as in the forward.
        unsafe { self.dev.launch(&kernels::BILINEAR_BACKWARD, &p)? };
        Ok(vec![Some(Storage::Gpu(dx))])
    }
}
