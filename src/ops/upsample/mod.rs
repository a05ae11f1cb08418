//! Upsampling to a given size: bilinear with align_corners=false and nearest, PyTorch semantics
//! (source coordinate from scale = in/out, so non-integer ratios behave like `F.interpolate(size=…)`).

pub mod cpu_kernel;
pub mod cuda_kernel;

use super::{kernels_for, Cpu, Cuda};
use crate::autograd::BackwardOp;
use crate::tensor::{Device, Storage, Tensor};
use anyhow::{bail, Result};

/// One resize: the input's NCHW dims and the output's [h, w].
#[derive(Clone, Copy, Debug)]
pub(crate) struct Resize {
    pub input: [usize; 4],
    pub output: [usize; 2],
}

/// The resize kernels of one device.
pub(crate) trait UpsampleKernel: Sync {
    fn bilinear(&self, x: &Storage, r: &Resize) -> Result<Storage>;
    fn bilinear_backward(&self, dy: &Storage, r: &Resize) -> Result<Storage>;
    fn nearest(&self, x: &Storage, r: &Resize) -> Result<Storage>;
    fn nearest_backward(&self, dy: &Storage, r: &Resize) -> Result<Storage>;
}

fn kernels(device: &Device) -> &'static dyn UpsampleKernel {
    kernels_for(device, &Cpu, &Cuda)
}

fn check(op: &str, x: &Tensor, size: [usize; 2]) -> Result<Resize> {
    let d = x.dims4(op)?;
    if size[0] == 0 || size[1] == 0 || d[2] == 0 || d[3] == 0 {
        bail!("{op}: cannot resize {:?} to {:?}", x.shape(), size);
    }
    Ok(Resize { input: d, output: size })
}

pub fn upsample_bilinear(x: &Tensor, size: [usize; 2]) -> Result<Tensor> {
    let r = check("upsample_bilinear", x, size)?;
    let device = x.device();
    let y = kernels(&device).bilinear(x.storage(), &r)?;
    Ok(Tensor::from_op(out_shape(&r), y, UpsampleBackward { r, bilinear: true, device }, &[x]))
}

pub fn upsample_nearest(x: &Tensor, size: [usize; 2]) -> Result<Tensor> {
    let r = check("upsample_nearest", x, size)?;
    let device = x.device();
    let y = kernels(&device).nearest(x.storage(), &r)?;
    Ok(Tensor::from_op(out_shape(&r), y, UpsampleBackward { r, bilinear: false, device }, &[x]))
}

fn out_shape(r: &Resize) -> Vec<usize> {
    vec![r.input[0], r.input[1], r.output[0], r.output[1]]
}

struct UpsampleBackward {
    r: Resize,
    bilinear: bool,
    device: Device,
}

impl BackwardOp for UpsampleBackward {
    fn name(&self) -> &'static str {
        if self.bilinear {
            "upsample_bilinear"
        } else {
            "upsample_nearest"
        }
    }
    fn backward_owned(&self, dy: Storage, _needs: &[bool]) -> Result<Vec<Option<Storage>>> {
        let dy = &dy;
        let k = kernels(&self.device);
        let dx = if self.bilinear { k.bilinear_backward(dy, &self.r)? } else { k.nearest_backward(dy, &self.r)? };
        Ok(vec![Some(dx)])
    }
}
