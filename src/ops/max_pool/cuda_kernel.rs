//! Ceil-mode max-pool on a GPU device (kernels/detect.cu `max_pool2d_ceil_forward`).

use super::{MaxPoolKernel, PoolGeom};
use crate::cuda::kernels;
use crate::cuda::params::MaxPoolParams;
use crate::ops::Cuda;
use crate::tensor::Storage;
use anyhow::Result;

impl MaxPoolKernel for Cuda {
    fn forward(&self, g: &PoolGeom, x: &Storage) -> Result<Storage> {
        let xb = x.gpu("max_pool2d")?;
        let dev = xb.device();
        let mut y = dev.empty(g.planes * g.ho * g.wo)?;
        let shape = MaxPoolParams::new("max_pool2d", g.planes, [g.h, g.w], [g.ho, g.wo], g.k, g.stride)?;
        let p = MaxPoolParams { x: xb.addr(), y: y.addr_mut(), ..shape };
        // SAFETY: x holds planes·h·w floats and y planes·ho·wo, both on `dev`.
        unsafe { dev.launch(&kernels::MAX_POOL2D_CEIL_FORWARD, &p)? };
        Ok(Storage::Gpu(y))
    }
}
