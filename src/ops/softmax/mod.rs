//! Softmax over the channel axis of NCHW (PyTorch `Softmax(dim=1)`): exp(x − max) / Σ, at every pixel.
//! Inference only: no tape record, an input that asks for a gradient is refused.

mod cpu_kernel;
pub(crate) mod cuda_kernel;

use super::prelu::inference_only;
use super::{kernels_for, Cpu, Cuda};
use crate::tensor::{Device, Storage, Tensor};
use anyhow::{bail, Result};

/// The softmax kernel of one device.
pub(crate) trait SoftmaxKernel: Sync {
    /// x [n, c, hw], softmax over c.
    fn forward(&self, nchw: [usize; 3], x: &Storage) -> Result<Storage>;
}

fn kernels(device: &Device) -> &'static dyn SoftmaxKernel {
    kernels_for(device, &Cpu, &Cuda)
}

/// Softmax over dim 1 of x ([N, C, ...], at least 2-d).
pub fn softmax_channels(x: &Tensor) -> Result<Tensor> {
    inference_only("softmax", &[x])?;
    let shape = x.shape();
    if shape.len() < 2 || shape[1] == 0 {
        bail!("softmax: input {:?} has no channel axis to normalise", shape);
    }
    let hw = shape[2..].iter().product();
    let y = kernels(&x.device()).forward([shape[0], shape[1], hw], x.storage())?;
    Tensor::new(shape.to_vec(), y)
}
