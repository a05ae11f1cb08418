//! 2-d convolution (square kernel, symmetric padding), NCHW, with backward.

pub mod algorithm;
pub mod cpu_kernel;
pub mod cuda_kernel;
pub mod direct;
pub mod tile_weight_grad;
pub(crate) use cuda_kernel::ConvStats;

use super::{kernels_for, Cpu, Cuda};
use crate::autograd::BackwardOp;
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
    /// The stride-1 conv whose forward is this one's input gradient: dy (cout channels, ho×wo) in,
    /// dx (cin channels) out, with the weights transposed and their taps flipped.
    pub fn transposed(&self) -> Conv2dGeom {
        assert!(self.stride == 1, "conv2d: only a stride-1 conv's input gradient is a forward conv ({self:?})");
        Conv2dGeom::new([self.n, self.cout, self.ho, self.wo], &[self.cin, self.cout, self.k, self.k], 1, self.pad)
            .expect("the transposed geometry of a valid stride-1 conv")
    }
    /// Multiply-adds of the forward pass.
    pub fn macs(&self) -> u64 {
        (self.n * self.cout * self.ho * self.wo * self.cin * self.k * self.k) as u64
    }
}

/// [dx, dW, db] of one conv2d, each where it was asked for.
pub(crate) type Grads = [Option<Storage>; 3];

/// The conv kernels of one device (operands checked by the op: shapes of `g`, one dtype, one device).
pub(crate) trait Conv2dKernel: Sync {
    /// y = conv2d(x, w) + bias.
    fn forward(&self, g: &Conv2dGeom, x: &Storage, w: &Storage, bias: Option<&Storage>) -> Result<Storage>;
    /// [dx, dW, db] where `want` asks for them: dx needs the weights, dW the input.
    /// `saved` = [x, w]: each present only when its gradient partner is wanted.
    fn backward(&self, g: &Conv2dGeom, saved: [Option<&Storage>; 2], dy: &Storage, want: [bool; 3]) -> Result<Grads>;
}

/// Whether the CPU conv op (the autograd path that training runs) computes its f32 forward,
/// backward-data and weight-gradient convs with bf16 operands and f32 sums where the bf16 kernels
/// apply and pay (AVX512-BF16; 3×3 stride 1 and 1×1, plus 3×3 stride 2 forward; weight gradients
/// of 3×3 convs, `algorithm::choose`), as PyTorch's autocast does;
/// the weights themselves (f32 masters), BN, the optimizer and everything else stay f32. Process-wide, off by default (`hrk train --precision bf16` turns it on;
/// `with_bf16_convs` for a scope). `algorithm::choose` decides per conv.
static BF16_CONVS: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Turns the op's bf16 convs on or off for the rest of the process (see `BF16_CONVS`); the caller
/// checked that the CPU runs them (`direct::bf16::available()`), without which the op stays f32.
pub fn set_bf16_convs(on: bool) {
    BF16_CONVS.store(on, std::sync::atomic::Ordering::Relaxed);
}

/// Runs `f` with the op's bf16 convs on or off (process-wide, as `set_bf16_convs`); the previous
/// setting comes back afterwards, also when `f` unwinds.
pub fn with_bf16_convs<R>(on: bool, f: impl FnOnce() -> R) -> R {
    crate::scoped::with(&BF16_CONVS, on, f)
}

/// Whether the op's bf16 convs are on.
pub fn bf16_convs() -> bool {
    BF16_CONVS.load(std::sync::atomic::Ordering::Relaxed)
}

fn kernels(device: &Device) -> &'static dyn Conv2dKernel {
    kernels_for(device, &Cpu, &Cuda)
}

/// y = conv2d(x, weight) + bias.
pub fn conv2d(x: &Tensor, weight: &Tensor, bias: Option<&Tensor>, stride: usize, pad: usize) -> Result<Tensor> {
    Ok(conv2d_op(x, weight, bias, stride, pad, false)?.0)
}

/// conv2d after checking shapes, devices and dtypes of its operands, with its tape record. With `stats`
/// (GPU tensors only) the output also carries per-block channel sums, for a following training BN
/// (ops::batchnorm::conv_batch_norm_train).
pub(crate) fn conv2d_op(
    x: &Tensor, weight: &Tensor, bias: Option<&Tensor>, stride: usize, pad: usize, stats: bool,
) -> Result<(Tensor, Option<ConvStats>)> {
    let g = Conv2dGeom::new(x.dims4("conv2d")?, weight.shape(), stride, pad)?;
    let device = same_device("conv2d", &[&[x, weight][..], bias.as_slice()].concat())?;
    same_dtype("conv2d", x, weight)?;
    if let Some(b) = bias {
        same_dtype("conv2d", x, b)?;
        if b.shape() != [g.cout] {
            bail!("conv2d: bias {:?} does not fit weight {:?}", b.shape(), weight.shape());
        }
    }
    let (xs, ws, bs) = (x.storage(), weight.storage(), bias.map(|b| b.storage()));
    let (y, stats) = if stats {
        if !device.is_gpu() {
            bail!("conv2d: channel statistics in the conv epilogue need a GPU device (input {:?})", x.shape());
        }
        let (y, stats) = cuda_kernel::forward_with_stats(&g, xs, ws, bs)?;
        (y, Some(stats))
    } else {
        (kernels(&device).forward(&g, xs, ws, bs)?, None)
    };
    Ok((record(g, device, x, weight, bias, y), stats))
}

/// The conv's output with its tape record.
fn record(g: Conv2dGeom, device: Device, x: &Tensor, weight: &Tensor, bias: Option<&Tensor>, y: Storage) -> Tensor {
    let mut inputs = vec![x, weight];
    if let Some(b) = bias {
        inputs.push(b);
    }
    // Backward needs x only for dW and W only for dx.
    let op = Conv2dBackward {
        g,
        device,
        x: if weight.is_requires_grad() { Some(x.detach()) } else { None },
        w: if x.is_requires_grad() { Some(weight.detach()) } else { None },
        has_bias: bias.is_some(),
    };
    Tensor::from_op(g.out_shape(), y, op, &inputs)
}

struct Conv2dBackward {
    g: Conv2dGeom,
    device: Device,
    x: Option<Tensor>,
    w: Option<Tensor>,
    has_bias: bool,
}

impl BackwardOp for Conv2dBackward {
    fn name(&self) -> &'static str {
        "conv2d"
    }
    fn backward_owned(&self, dy: Storage, needs: &[bool]) -> Result<Vec<Option<Storage>>> {
        let dy = &dy;
        let want = [needs[0], needs[1], self.has_bias && needs[2]];
        let (x, w) = (self.x.as_ref().map(|t| t.storage()), self.w.as_ref().map(|t| t.storage()));
        let [dx, dw, db] = kernels(&self.device).backward(&self.g, [x, w], dy, want)?;
        let mut out = vec![dx, dw];
        if self.has_bias {
            out.push(db);
        }
        Ok(out)
    }
}
