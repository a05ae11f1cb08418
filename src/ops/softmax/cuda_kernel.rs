//! Channel softmax on a GPU device (kernels/detect.cu `softmax_channels_forward`).

use super::SoftmaxKernel;
use crate::cuda::kernels;
use crate::cuda::params::ChannelOpParams;
use crate::ops::Cuda;
use crate::tensor::Storage;
use anyhow::Result;

impl SoftmaxKernel for Cuda {
    fn forward(&self, nchw: [usize; 3], x: &Storage) -> Result<Storage> {
        let xb = x.gpu("softmax")?;
        let dev = xb.device();
        let mut y = dev.empty(xb.len())?;
        let p = ChannelOpParams { x: xb.addr(), y: y.addr_mut(), ..ChannelOpParams::new("softmax", nchw)? };
        // SAFETY: x and y hold n·c·hw floats on `dev`; the softmax kernel never reads `weight`.
        unsafe { dev.launch(&kernels::SOFTMAX_CHANNELS_FORWARD, &p)? };
        Ok(Storage::Gpu(y))
    }
}
