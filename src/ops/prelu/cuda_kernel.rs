//! PReLU on a GPU device (kernels/detect.cu `prelu_forward`).

use super::PreluKernel;
use crate::cuda::kernels;
use crate::cuda::params::ChannelOpParams;
use crate::ops::Cuda;
use crate::tensor::Storage;
use anyhow::Result;

impl PreluKernel for Cuda {
    fn forward(&self, nchw: [usize; 3], x: &Storage, slopes: &Storage) -> Result<Storage> {
        let xb = x.gpu("prelu")?;
        let dev = xb.device();
        let mut y = dev.empty(xb.len())?;
        let p = ChannelOpParams {
            x: xb.addr(),
            weight: slopes.gpu("prelu")?.addr(),
            y: y.addr_mut(),
            ..ChannelOpParams::new("prelu", nchw)?
        };
        // SAFETY: x and y hold n·c·hw floats and the slopes c floats, all on `dev` (checked by the op).
        unsafe { dev.launch(&kernels::PRELU_FORWARD, &p)? };
        Ok(Storage::Gpu(y))
    }
}
