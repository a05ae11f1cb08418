//! 2-d max pooling with PyTorch's `ceil_mode=True` and no padding (MTCNN's `MaxPool2d(k, 2, ceil_mode=True)`),
//! NCHW. Inference only: no tape record, an input that asks for a gradient is refused.

mod cpu_kernel;
pub(crate) mod cuda_kernel;

use super::prelu::inference_only;
use super::{kernels_for, Cpu, Cuda};
use crate::tensor::{Device, Storage, Tensor};
use anyhow::{bail, Result};

/// Geometry of one pooling call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PoolGeom {
    pub planes: usize,
    pub h: usize,
    pub w: usize,
    pub k: usize,
    pub stride: usize,
    pub ho: usize,
    pub wo: usize,
}

/// PyTorch's ceil-mode output extent (padding 0): ceil((in − k) / stride) + 1, less one when that last
/// window would start at or past the input's end (it must start inside the input).
pub fn ceil_pool_extent(input: usize, k: usize, stride: usize) -> Option<usize> {
    if input < k || stride == 0 || k == 0 {
        return None;
    }
    let mut out = (input - k).div_ceil(stride) + 1;
    if (out - 1) * stride >= input {
        out -= 1;
    }
    Some(out)
}

/// The max-pool kernel of one device.
pub(crate) trait MaxPoolKernel: Sync {
    fn forward(&self, g: &PoolGeom, x: &Storage) -> Result<Storage>;
}

fn kernels(device: &Device) -> &'static dyn MaxPoolKernel {
    kernels_for(device, &Cpu, &Cuda)
}

/// Max-pool of x [N, C, H, W] with a k×k window, `stride`, ceil mode (windows clipped at the edge).
pub fn max_pool2d_ceil(x: &Tensor, k: usize, stride: usize) -> Result<Tensor> {
    let [n, c, h, w] = x.dims4("max_pool2d")?;
    inference_only("max_pool2d", &[x])?;
    let (Some(ho), Some(wo)) = (ceil_pool_extent(h, k, stride), ceil_pool_extent(w, k, stride)) else {
        bail!("max_pool2d: input {:?} is smaller than the {k}x{k} window (stride {stride})", x.shape());
    };
    let g = PoolGeom { planes: n * c, h, w, k, stride, ho, wo };
    let y = kernels(&x.device()).forward(&g, x.storage())?;
    Tensor::new(vec![n, c, ho, wo], y)
}
