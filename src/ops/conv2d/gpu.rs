//! conv2d on a GPU device: the implicit-GEMM kernels of kernels/conv.cu.

use super::Conv2dGeom;
use crate::autograd::BackwardOp;
use crate::cuda::device::{i32_of, GpuBuffer, GpuDevice};
use crate::cuda::kernels::{self, conv_stats_partials, conv_weight_k_splits};
use crate::cuda::params::Conv2dParams;
use crate::tensor::{Storage, Tensor};
use anyhow::{anyhow, Result};

fn params(g: &Conv2dGeom) -> Result<Conv2dParams> {
    let op = "conv2d";
    Ok(Conv2dParams {
        n: i32_of(op, g.n)?,
        c_in: i32_of(op, g.cin)?,
        h: i32_of(op, g.h)?,
        w: i32_of(op, g.w)?,
        c_out: i32_of(op, g.cout)?,
        h_out: i32_of(op, g.ho)?,
        w_out: i32_of(op, g.wo)?,
        kh: i32_of(op, g.k)?,
        kw: i32_of(op, g.k)?,
        stride: i32_of(op, g.stride)?,
        pad: i32_of(op, g.pad)?,
        ..Default::default()
    })
}

/// Per-block channel sums of a conv output (f64 Σy, Σy²), written by conv2d_forward's stats epilogue for
/// a following training BN (`bn_stats_from_partials`).
pub(crate) struct ConvStats {
    /// f32 storage holding the f64 values from the first 8-byte-aligned address on.
    buf: GpuBuffer,
    offset: u64,
    /// Number of partials (conv2d_forward's grid x); the values are [partials][2][c_out].
    pub partials: usize,
}

impl ConvStats {
    fn new(dev: &GpuDevice, p: &Conv2dParams) -> Result<ConvStats> {
        let partials = conv_stats_partials(p);
        let doubles = partials
            .checked_mul(2 * p.c_out.max(0) as usize)
            .ok_or_else(|| anyhow!("conv2d: stats buffer of {partials} partials x {} channels overflows", p.c_out))?;
        // Two f32 per f64, plus one spare f32 to align the start to 8 bytes.
        let mut buf = dev.empty(2 * doubles + 1)?;
        let offset = buf.addr_mut() % 8;
        let offset = if offset == 0 { 0 } else { 8 - offset };
        Ok(ConvStats { buf, offset, partials })
    }
    fn addr_mut(&mut self) -> u64 {
        self.buf.addr_mut() + self.offset
    }
    /// Device address of the first f64 (for a kernel that reads the sums).
    pub fn addr(&self) -> u64 {
        self.buf.addr() + self.offset
    }
}

pub(super) fn forward(g: Conv2dGeom, x: &Tensor, weight: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
    Ok(forward_impl(g, x, weight, bias, false)?.0)
}

/// forward, also returning the per-block channel sums of the output.
pub(super) fn forward_with_stats(g: Conv2dGeom, x: &Tensor, weight: &Tensor, bias: Option<&Tensor>) -> Result<(Tensor, ConvStats)> {
    let (y, stats) = forward_impl(g, x, weight, bias, true)?;
    Ok((y, stats.ok_or_else(|| anyhow!("conv2d: stats were not produced"))?))
}

fn forward_impl(g: Conv2dGeom, x: &Tensor, weight: &Tensor, bias: Option<&Tensor>, want_stats: bool) -> Result<(Tensor, Option<ConvStats>)> {
    let xb = x.storage().gpu("conv2d")?;
    let dev: GpuDevice = xb.device().clone();
    let mut y = dev.empty(g.n * g.cout * g.ho * g.wo)?;
    let bias_addr = match bias {
        Some(b) => b.storage().gpu("conv2d")?.addr(),
        None => 0,
    };
    let mut p = Conv2dParams { x: xb.addr(), weight: weight.storage().gpu("conv2d")?.addr(), bias: bias_addr, y: y.addr_mut(), ..params(&g)? };
    let mut stats = if want_stats { Some(ConvStats::new(&dev, &p)?) } else { None };
    if let Some(s) = stats.as_mut() {
        p.stats = s.addr_mut();
    }
    // Safety: every buffer lives on `dev` with the sizes of `g` (checked by Conv2dGeom::new).
    unsafe { dev.launch(&kernels::CONV2D_FORWARD, &p)? };
    let mut inputs = vec![x, weight];
    if let Some(b) = bias {
        inputs.push(b);
    }
    let op = GpuConv2dBackward {
        g,
        dev,
        x: if weight.is_requires_grad() { Some(x.detach()) } else { None },
        w: if x.is_requires_grad() { Some(weight.detach()) } else { None },
        has_bias: bias.is_some(),
    };
    Ok((Tensor::from_op(g.out_shape(), Storage::Gpu(y), op, &inputs), stats))
}

struct GpuConv2dBackward {
    g: Conv2dGeom,
    dev: GpuDevice,
    x: Option<Tensor>,
    w: Option<Tensor>,
    has_bias: bool,
}

impl BackwardOp for GpuConv2dBackward {
    fn name(&self) -> &'static str {
        "conv2d"
    }
    fn backward(&self, dy: &Storage, needs: &[bool]) -> Result<Vec<Option<Storage>>> {
        let (g, dev) = (&self.g, &self.dev);
        let dyb = dy.gpu("conv2d backward")?;
        let base = Conv2dParams { dy: dyb.addr(), ..params(g)? };
        let mut dx = None;
        if needs[0] {
            let w = self.w.as_ref().map(|t| t.storage().gpu("conv2d backward")).transpose()?;
            if let Some(w) = w {
                // backward-data overwrites dx.
                let mut buf = dev.empty(g.n * g.cin * g.h * g.w)?;
                let p = Conv2dParams { weight: w.addr(), dx: buf.addr_mut(), ..base };
                unsafe { dev.launch(&kernels::CONV2D_BACKWARD_DATA, &p)? };
                dx = Some(Storage::Gpu(buf));
            }
        }
        let mut dw = None;
        if needs[1] {
            if let Some(x) = self.x.as_ref().map(|t| t.storage().gpu("conv2d backward")).transpose()? {
                // backward-weight accumulates (split-K with atomics): start from zero.
                let mut buf = dev.zeros(g.cout * g.cin * g.k * g.k)?;
                let mut p = Conv2dParams { x: x.addr(), dw: buf.addr_mut(), ..base };
                p.k_splits = conv_weight_k_splits(&p);
                unsafe { dev.launch(&kernels::CONV2D_BACKWARD_WEIGHT, &p)? };
                dw = Some(Storage::Gpu(buf));
            }
        }
        let mut out = vec![dx, dw];
        if self.has_bias {
            let db = if needs[2] {
                let mut buf = dev.zeros(g.cout)?;
                let p = Conv2dParams { db: buf.addr_mut(), ..base };
                unsafe { dev.launch(&kernels::CONV2D_BACKWARD_BIAS, &p)? };
                Some(Storage::Gpu(buf))
            } else {
                None
            };
            out.push(db);
        }
        Ok(out)
    }
}
