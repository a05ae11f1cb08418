//! Bilinear resize on a GPU device (kernels/upsample.cu); nearest has no kernel and stays on the CPU.

use super::{Resize, UpsampleKernel};
use crate::cuda::kernels;
use crate::cuda::params::UpsampleParams;
use crate::ops::Cuda;
use crate::tensor::Storage;
use anyhow::{bail, Result};

fn params(r: &Resize) -> Result<UpsampleParams> {
    let [n, c, h, w] = r.input;
    UpsampleParams::new("upsample_bilinear", n * c, [h, w], r.output)
}

impl UpsampleKernel for Cuda {
    fn bilinear(&self, x: &Storage, r: &Resize) -> Result<Storage> {
        let xb = x.gpu("upsample_bilinear")?;
        let dev = xb.device();
        let mut y = dev.empty(r.input[0] * r.input[1] * r.output[0] * r.output[1])?;
        let p = UpsampleParams { x: xb.addr(), y: y.addr_mut(), ..params(r)? };
        // SAFETY: x and y live on `dev` with the sizes in `p` (x's dims checked by the op).
        unsafe { dev.launch(&kernels::BILINEAR_FORWARD, &p)? };
        Ok(Storage::Gpu(y))
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
