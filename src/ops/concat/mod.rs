//! Concatenation along the channel axis of NCHW tensors (backward splits the gradient).

mod cpu_kernel;
pub mod cuda_kernel;

use super::{kernels_for, Cpu, Cuda};
use crate::autograd::BackwardOp;
use crate::tensor::{same_dtype, Device, Storage, Tensor};
use anyhow::{bail, Result};

/// Where each input sits in the concatenation: `n` images of `plane` pixels, input i has `chans[i]` channels.
#[derive(Clone, Debug)]
pub(crate) struct ConcatShape {
    pub n: usize,
    pub plane: usize,
    pub chans: Vec<usize>,
}

impl ConcatShape {
    pub fn total_channels(&self) -> usize {
        self.chans.iter().sum()
    }
}

/// The concat kernels of one device.
pub(crate) trait ConcatKernel: Sync {
    /// The inputs side by side along channels: [n, Σchans, plane].
    fn concat(&self, xs: &[&Storage], shape: &ConcatShape) -> Result<Storage>;
    /// The slices of `dy` for the inputs with `needs[i]` (None for the others).
    fn split(&self, dy: &Storage, shape: &ConcatShape, needs: &[bool]) -> Result<Vec<Option<Storage>>>;
}

fn kernels(device: &Device) -> &'static dyn ConcatKernel {
    kernels_for(device, &Cpu, &Cuda)
}

pub fn concat_channels(xs: &[&Tensor]) -> Result<Tensor> {
    let Some(first) = xs.first() else { bail!("concat: no inputs") };
    let device = crate::tensor::same_device("concat", xs)?;
    let [n, _, h, w] = first.dims4("concat")?;
    let mut chans = Vec::with_capacity(xs.len());
    for x in xs {
        let [xn, xc, xh, xw] = x.dims4("concat")?;
        same_dtype("concat", first, x)?;
        if (xn, xh, xw) != (n, h, w) {
            bail!("concat: shape mismatch {:?} vs {:?} (N, H, W must agree)", first.shape(), x.shape());
        }
        chans.push(xc);
    }
    let shape = ConcatShape { n, plane: h * w, chans };
    let storages: Vec<&Storage> = xs.iter().map(|x| x.storage()).collect();
    let y = kernels(&device).concat(&storages, &shape)?;
    let out_shape = vec![n, shape.total_channels(), h, w];
    Ok(Tensor::from_op(out_shape, y, ConcatBackward { shape, device }, xs))
}

struct ConcatBackward {
    shape: ConcatShape,
    device: Device,
}

impl BackwardOp for ConcatBackward {
    fn name(&self) -> &'static str {
        "concat"
    }
    fn backward_owned(&self, dy: Storage, needs: &[bool]) -> Result<Vec<Option<Storage>>> {
        let dy = &dy;
        kernels(&self.device).split(dy, &self.shape, needs)
    }
}
