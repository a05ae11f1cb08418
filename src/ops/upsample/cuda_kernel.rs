//! Bilinear resize on a GPU device (kernels/upsample.cu); nearest has no kernel and stays on the CPU.
//! One forward launcher (`bilinear_buffers`) serves the op and the GPU inference engine.

use super::{Resize, UpsampleKernel};
use crate::cuda::kernels;
use crate::cuda::params::UpsampleParams;
use crate::cuda::GpuBuffer;
use crate::ops::Cuda;
use crate::tensor::Storage;
use anyhow::{bail, Result};

/// Bilinear resize (align_corners=false) of `planes` planes of a raw buffer from `from` to `to`, checked
/// against the sizes.
pub fn bilinear_buffers(x: &GpuBuffer, planes: usize, from: [usize; 2], to: [usize; 2]) -> Result<GpuBuffer> {
    let op = "upsample_bilinear";
    x.expect_len(op, "x", planes * from[0] * from[1])?;
    if from.contains(&0) || to.contains(&0) {
        bail!("{op}: empty size {from:?} -> {to:?}");
    }
    let dev = x.device();
    let mut y = dev.empty(planes * to[0] * to[1])?;
    let p = UpsampleParams { x: x.addr(), y: y.addr_mut(), ..UpsampleParams::new(op, planes, from, to)? };
    // SAFETY: x holds planes·from floats (checked above) and y planes·to, both on `dev`.
    unsafe { dev.launch(&kernels::BILINEAR_FORWARD, &p)? };
    Ok(y)
}

fn params(r: &Resize) -> Result<UpsampleParams> {
    let [n, c, h, w] = r.input;
    UpsampleParams::new("upsample_bilinear", n * c, [h, w], r.output)
}

impl UpsampleKernel for Cuda {
    fn bilinear(&self, x: &Storage, r: &Resize) -> Result<Storage> {
        let [n, c, h, w] = r.input;
        Ok(Storage::Gpu(bilinear_buffers(x.gpu("upsample_bilinear")?, n * c, [h, w], r.output)?))
    }
    fn bilinear_backward(&self, dy: &Storage, r: &Resize) -> Result<Storage> {
        let g = dy.gpu("upsample_bilinear backward")?;
        let dev = g.device();
        // The kernel scatters with atomicAdd into dx: start from zero.
        let mut dx = dev.zeros(r.input.iter().product())?;
        let p = UpsampleParams { dy: g.addr(), dx: dx.addr_mut(), ..params(r)? };
        // SAFETY: dy has the forward's output size and dx its input size, both on `dev`.
        unsafe { dev.launch(&kernels::BILINEAR_BACKWARD, &p)? };
        Ok(Storage::Gpu(dx))
    }
    fn nearest(&self, x: &Storage, _r: &Resize) -> Result<Storage> {
        bail!(
            "upsample_nearest: no kernel for the {} device (only bilinear runs on the GPU); move the tensor to the cpu",
            x.device()
        )
    }
    fn nearest_backward(&self, dy: &Storage, _r: &Resize) -> Result<Storage> {
        bail!("upsample_nearest backward: no kernel for the {} device", dy.device())
    }
}
