//! Per-channel PReLU, y = x > 0 ? x : a[c]·x, NCHW. Inference only (the MTCNN detector): no tape record,
//! and an input that asks for a gradient is refused.

mod cpu_kernel;
pub(crate) mod cuda_kernel;

use super::{kernels_for, Cpu, Cuda};
use crate::tensor::{same_device, same_dtype, Device, Storage, Tensor};
use anyhow::{bail, Result};

/// The PReLU kernel of one device (shapes, dtypes and devices checked by the op).
pub(crate) trait PreluKernel: Sync {
    /// x [n, c, hw] with slopes [c].
    fn forward(&self, nchw: [usize; 3], x: &Storage, slopes: &Storage) -> Result<Storage>;
}

fn kernels(device: &Device) -> &'static dyn PreluKernel {
    kernels_for(device, &Cpu, &Cuda)
}

/// Refuses inputs that need a gradient: the detector's layers have no backward.
pub(crate) fn inference_only(op: &str, inputs: &[&Tensor]) -> Result<()> {
    if crate::autograd::grad_enabled() && inputs.iter().any(|t| t.is_requires_grad()) {
        bail!("{op}: inference-only op (no backward), but an input requires a gradient");
    }
    Ok(())
}

/// PReLU with one slope per channel of x ([N, C, ...], at least 2-d).
pub fn prelu(x: &Tensor, slopes: &Tensor) -> Result<Tensor> {
    let device = same_device("prelu", &[x, slopes])?;
    same_dtype("prelu", x, slopes)?;
    inference_only("prelu", &[x, slopes])?;
    let shape = x.shape();
    if shape.len() < 2 || slopes.shape() != [shape[1]] {
        bail!("prelu: slopes {:?} do not fit input {:?} (want [C] for [N, C, ...])", slopes.shape(), shape);
    }
    let hw = shape[2..].iter().product();
    let y = kernels(&device).forward([shape[0], shape[1], hw], x.storage(), slopes.storage())?;
    Tensor::new(shape.to_vec(), y)
}
