//! conv2d on a GPU device: the implicit-GEMM kernels of kernels/conv.cu (fp32 FMA) or kernels/conv_mma.cu
//! (tensor cores), as `cuda::gpu_math()` picks at each launch. One forward launcher serves the op and,
//! with the bias/residual/ReLU epilogue on raw buffers (`forward_buffers`), the GPU inference engine.

use super::{Conv2dGeom, Conv2dKernel, Grads};
use crate::cuda::kernels::{self, conv_stats_partials, conv_weight_k_splits};
use crate::cuda::params::{i32_of, Conv2dParams};
use crate::cuda::{GpuBuffer, GpuDevice};
use crate::ops::Cuda;
use crate::tensor::Storage;
use anyhow::{anyhow, bail, Result};

fn params(g: &Conv2dGeom) -> Result<Conv2dParams> {
    Conv2dParams::new("conv2d", [g.n, g.cin, g.h, g.w], g.cout, g.k, g.stride, g.pad, [g.ho, g.wo])
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

/// Epilogue of a forward convolution: y = act(conv(x) + bias + residual).
#[derive(Clone, Copy, Default)]
pub struct ConvEpilogue<'a> {
    /// [c_out]
    pub bias: Option<&'a GpuBuffer>,
    /// Output-shaped, added before the ReLU.
    pub residual: Option<&'a GpuBuffer>,
    pub relu: bool,
}

/// The one forward launch (the op's and the GPU inference engine's): `geom` holds the sizes, which the
/// callers have checked against the buffers; with the stats epilogue when `want_stats`.
fn launch_forward(
    dev: &GpuDevice, geom: Conv2dParams, x: &GpuBuffer, weight: &GpuBuffer, ep: ConvEpilogue, want_stats: bool,
) -> Result<(GpuBuffer, Option<ConvStats>)> {
    let len = [geom.n, geom.c_out, geom.h_out, geom.w_out].iter().map(|&v| v.max(0) as usize).product();
    let mut y = dev.empty(len)?;
    let mut p = Conv2dParams {
        x: x.addr(),
        weight: weight.addr(),
        bias: ep.bias.map_or(0, |b| b.addr()),
        residual: ep.residual.map_or(0, |r| r.addr()),
        y: y.addr_mut(),
        relu: ep.relu as i32,
        ..geom
    };
    let mut stats = if want_stats { Some(ConvStats::new(dev, &p)?) } else { None };
    if let Some(s) = stats.as_mut() {
        p.stats = s.addr_mut();
    }
    // SAFETY: every buffer lives on `dev` with the sizes of `geom` (checked by the callers: Conv2dGeom::new and
    // the op, or `forward_buffers`).
    unsafe { dev.launch(kernels::conv_forward_kernel(crate::cuda::gpu_math_on(dev)), &p)? };
    Ok((y, stats))
}

/// The op's forward over storage.
fn forward_storage(
    g: &Conv2dGeom, x: &Storage, w: &Storage, bias: Option<&Storage>, want_stats: bool,
) -> Result<(Storage, Option<ConvStats>)> {
    let xb = x.gpu("conv2d")?;
    let bias = bias.map(|b| b.gpu("conv2d")).transpose()?;
    let ep = ConvEpilogue { bias, ..Default::default() };
    let (y, stats) = launch_forward(xb.device(), params(g)?, xb, w.gpu("conv2d")?, ep, want_stats)?;
    Ok((Storage::Gpu(y), stats))
}

/// Forward convolution of raw buffers (the GPU inference engine, benchmarks), checked against the shapes:
/// `x` [n, c_in, h, w] with `weight` [c_out, c_in, k, k] and the epilogue `ep`; returns y and its dims.
pub fn forward_buffers(
    x: &GpuBuffer, xd: [usize; 4], weight: &GpuBuffer, wd: [usize; 4], stride: usize, pad: usize, ep: ConvEpilogue,
) -> Result<(GpuBuffer, [usize; 4])> {
    let op = "conv2d";
    let dev = x.device();
    let [n, c_in, h, w] = xd;
    let [c_out, wc_in, kh, kw] = wd;
    if wc_in != c_in || kh != kw {
        bail!("{op}: weight {wd:?} does not fit input {xd:?}");
    }
    let p = |v| i32_of(op, v);
    let out = |len: usize| {
        Conv2dParams::out_extent(p(len)?, p(kh)?, p(stride)?, p(pad)?)
            .ok_or_else(|| anyhow!("{op}: kernel {kh} stride {stride} pad {pad} does not fit input {xd:?}"))
    };
    let (ho, wo) = (out(h)? as usize, out(w)? as usize);
    let yd = [n, c_out, ho, wo];
    x.expect_len(op, "x", xd.iter().product())?;
    weight.expect_len(op, "weight", wd.iter().product())?;
    weight.expect_device(op, dev)?;
    if let Some(b) = ep.bias {
        b.expect_len(op, "bias", c_out)?;
        b.expect_device(op, dev)?;
    }
    if let Some(r) = ep.residual {
        r.expect_len(op, "residual", yd.iter().product())?;
        r.expect_device(op, dev)?;
    }
    let geom = Conv2dParams::new(op, xd, c_out, kh, stride, pad, [ho, wo])?;
    let (y, _) = launch_forward(dev, geom, x, weight, ep, false)?;
    Ok((y, yd))
}

/// The forward, also returning the per-block channel sums of the output.
pub(super) fn forward_with_stats(
    g: &Conv2dGeom, x: &Storage, w: &Storage, bias: Option<&Storage>,
) -> Result<(Storage, ConvStats)> {
    let (y, stats) = forward_storage(g, x, w, bias, true)?;
    Ok((y, stats.ok_or_else(|| anyhow!("conv2d: stats were not produced"))?))
}

impl Conv2dKernel for Cuda {
    fn forward(&self, g: &Conv2dGeom, x: &Storage, w: &Storage, bias: Option<&Storage>) -> Result<Storage> {
        Ok(forward_storage(g, x, w, bias, false)?.0)
    }
    fn backward(&self, g: &Conv2dGeom, saved: [Option<&Storage>; 2], dy: &Storage, want: [bool; 3]) -> Result<Grads> {
        let [x, w] = saved;
        let dyb = dy.gpu("conv2d backward")?;
        let dev = dyb.device();
        let base = Conv2dParams { dy: dyb.addr(), ..params(g)? };
        let mut dx = None;
        if let (true, Some(w)) = (want[0], w) {
            // backward-data overwrites dx.
            let mut buf = dev.empty(g.n * g.cin * g.h * g.w)?;
            let p = Conv2dParams { weight: w.gpu("conv2d backward")?.addr(), dx: buf.addr_mut(), ..base };
            // SAFETY: dy, the weights and dx live on `dev` with the sizes of `g` (checked in the forward).
            unsafe { dev.launch(kernels::conv_backward_data_kernel(crate::cuda::gpu_math_on(dev)), &p)? };
            dx = Some(Storage::Gpu(buf));
        }
        let mut dw = None;
        if let (true, Some(x)) = (want[1], x) {
            // backward-weight accumulates (split-K with atomics): start from zero.
            let mut buf = dev.zeros(g.cout * g.cin * g.k * g.k)?;
            let mut p = Conv2dParams { x: x.gpu("conv2d backward")?.addr(), dw: buf.addr_mut(), ..base };
            p.k_splits = conv_weight_k_splits(&p);
            // SAFETY: dy, the input and the zeroed dW live on `dev` with the sizes of `g`.
            unsafe { dev.launch(kernels::conv_backward_weight_kernel(crate::cuda::gpu_math_on(dev)), &p)? };
            dw = Some(Storage::Gpu(buf));
        }
        let mut db = None;
        if want[2] {
            let mut buf = dev.zeros(g.cout)?;
            let p = Conv2dParams { db: buf.addr_mut(), ..base };
            // SAFETY: dy holds the output's size and the zeroed db c_out floats, both on `dev`.
            unsafe { dev.launch(&kernels::CONV2D_BACKWARD_BIAS, &p)? };
            db = Some(Storage::Gpu(buf));
        }
        Ok([dx, dw, db])
    }
}
