//! 2-d convolution (square kernel, symmetric padding), NCHW, with backward.

pub mod cpu;
pub mod direct;
mod gpu;
pub(crate) use gpu::ConvStats;

use crate::autograd::BackwardOp;
use crate::by_dtype;
use crate::float::{typed, typed_mut};
use crate::tensor::{same_device, same_dtype, Device, Storage, Tensor};
use anyhow::{bail, Result};

/// Shapes of one conv2d call; mirrored by the CUDA kernels' parameter struct.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Conv2dGeom {
    pub n: usize,
    pub cin: usize,
    pub h: usize,
    pub w: usize,
    pub cout: usize,
    pub k: usize,
    pub stride: usize,
    pub pad: usize,
    pub ho: usize,
    pub wo: usize,
}

impl Conv2dGeom {
    pub fn new(x: [usize; 4], wshape: &[usize], stride: usize, pad: usize) -> Result<Conv2dGeom> {
        let [n, cin, h, w] = x;
        let (cout, k) = match *wshape {
            [co, ci, kh, kw] if ci == cin && kh == kw && kh > 0 => (co, kh),
            _ => bail!("conv2d: weight {:?} does not fit input {:?} (want [Cout, {}, k, k])", wshape, x, cin),
        };
        if stride == 0 {
            bail!("conv2d: stride must be ≥ 1 (input {:?}, weight {:?})", x, wshape);
        }
        if h + 2 * pad < k || w + 2 * pad < k {
            bail!("conv2d: input {:?} with padding {} is smaller than kernel {:?}", x, pad, wshape);
        }
        let ho = (h + 2 * pad - k) / stride + 1;
        let wo = (w + 2 * pad - k) / stride + 1;
        Ok(Conv2dGeom { n, cin, h, w, cout, k, stride, pad, ho, wo })
    }
    /// 1x1, stride 1, no padding: the conv is a plain GEMM on the input.
    pub fn is_pointwise(&self) -> bool {
        self.k == 1 && self.stride == 1 && self.pad == 0
    }
    pub fn out_shape(&self) -> Vec<usize> {
        vec![self.n, self.cout, self.ho, self.wo]
    }
    /// Multiply-adds of the forward pass.
    pub fn macs(&self) -> u64 {
        (self.n * self.cout * self.ho * self.wo * self.cin * self.k * self.k) as u64
    }
}

/// The conv's geometry and device, after checking shapes, devices and dtypes of its operands.
fn checked_geometry(x: &Tensor, weight: &Tensor, bias: Option<&Tensor>, stride: usize, pad: usize) -> Result<(Conv2dGeom, Device)> {
    let g = Conv2dGeom::new(x.dims4("conv2d")?, weight.shape(), stride, pad)?;
    let device = same_device("conv2d", &[&[x, weight][..], bias.as_slice()].concat())?;
    same_dtype("conv2d", x, weight)?;
    if let Some(b) = bias {
        same_dtype("conv2d", x, b)?;
        if b.shape() != [g.cout] {
            bail!("conv2d: bias {:?} does not fit weight {:?}", b.shape(), weight.shape());
        }
    }
    Ok((g, device))
}

/// conv2d of GPU tensors whose output also carries per-block channel sums (for a following training BN:
/// ops::batchnorm::conv_batch_norm_train). Same checks and tape op as `conv2d`.
pub(crate) fn conv2d_gpu_with_stats(x: &Tensor, weight: &Tensor, bias: Option<&Tensor>, stride: usize, pad: usize) -> Result<(Tensor, ConvStats)> {
    let (g, device) = checked_geometry(x, weight, bias, stride, pad)?;
    if !device.is_gpu() {
        bail!("conv2d: channel statistics in the conv epilogue need a GPU device (input {:?})", x.shape());
    }
    gpu::forward_with_stats(g, x, weight, bias)
}

/// y = conv2d(x, weight) + bias.
pub fn conv2d(x: &Tensor, weight: &Tensor, bias: Option<&Tensor>, stride: usize, pad: usize) -> Result<Tensor> {
    let (g, device) = checked_geometry(x, weight, bias, stride, pad)?;
    if device.is_gpu() {
        return gpu::forward(g, x, weight, bias);
    }
    // The kernels write every output element (tests/conv_kernels.rs fills y and dx with NaN first).
    let mut y = Storage::for_overwrite(x.dtype(), g.n * g.cout * g.ho * g.wo);
    by_dtype!(x.dtype(), T => cpu::forward::<T>(
        &g,
        typed(x.storage()),
        typed(weight.storage()),
        bias.map(|b| typed::<T>(b.storage())),
        typed_mut(&mut y),
    ));
    let mut inputs = vec![x, weight];
    if let Some(b) = bias {
        inputs.push(b);
    }
    // Backward needs x only for dW and W only for dx.
    let op = Conv2dBackward {
        g,
        x: if weight.is_requires_grad() { Some(x.detach()) } else { None },
        w: if x.is_requires_grad() { Some(weight.detach()) } else { None },
        has_bias: bias.is_some(),
    };
    Ok(Tensor::from_op(g.out_shape(), y, op, &inputs))
}

struct Conv2dBackward {
    g: Conv2dGeom,
    x: Option<Tensor>,
    w: Option<Tensor>,
    has_bias: bool,
}

impl BackwardOp for Conv2dBackward {
    fn name(&self) -> &'static str {
        "conv2d"
    }
    fn backward(&self, dy: &Storage, needs: &[bool]) -> Result<Vec<Option<Storage>>> {
        let g = &self.g;
        let dtype = dy.dtype();
        let mut dx = needs[0].then(|| Storage::for_overwrite(dtype, g.n * g.cin * g.h * g.w));
        let mut dw = needs[1].then(|| Storage::zeros(dtype, g.cout * g.cin * g.k * g.k));
        let mut db = (self.has_bias && needs[2]).then(|| Storage::zeros(dtype, g.cout));
        let empty = Storage::zeros(dtype, 0);
        let xs = self.x.as_ref().map(|t| t.storage()).unwrap_or(&empty);
        let ws = self.w.as_ref().map(|t| t.storage()).unwrap_or(&empty);
        if xs.dtype() != dtype || ws.dtype() != dtype {
            bail!("conv2d backward: gradient dtype {:?} differs from the forward's", dtype);
        }
        by_dtype!(dtype, T => cpu::backward::<T>(
            g,
            typed(xs),
            typed(ws),
            typed(dy),
            dx.as_mut().map(|s| typed_mut::<T>(s)),
            dw.as_mut().map(|s| typed_mut::<T>(s)),
            db.as_mut().map(|s| typed_mut::<T>(s)),
        ));
        let mut out = vec![dx, dw];
        if self.has_bias {
            out.push(db);
        }
        Ok(out)
    }
}
