//! Kernels on raw device buffers, without autograd: the building blocks of the GPU inference path
//! (model/infer_gpu.rs) and of the kernel benchmarks. Every function checks the buffer sizes against the
//! shapes it is given before it launches, so a wrong shape is an error, never an out-of-bounds access.
use super::device::{i32_of, GpuBuffer, GpuDevice};
use super::kernels;
use super::params::*;
use anyhow::{bail, Result};

fn check_len(op: &str, what: &str, buf: &GpuBuffer, want: usize) -> Result<()> {
    if buf.len() != want {
        bail!("{op}: {what} holds {} floats, the shape needs {want}", buf.len());
    }
    Ok(())
}

fn same_device(op: &str, dev: &GpuDevice, buf: &GpuBuffer) -> Result<()> {
    if buf.device() != dev {
        bail!("{op}: buffer on {} but the input is on {}", buf.device().name(), dev.name());
    }
    Ok(())
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

/// Forward convolution of `x` [n, c_in, h, w] with `weight` [c_out, c_in, k, k]; returns y and its dims.
pub fn conv2d_forward(
    x: &GpuBuffer, xd: [usize; 4], weight: &GpuBuffer, wd: [usize; 4], stride: usize, pad: usize, ep: ConvEpilogue,
) -> Result<(GpuBuffer, [usize; 4])> {
    let op = "conv2d";
    let dev = x.device().clone();
    let [n, c_in, h, w] = xd;
    let [c_out, wc_in, kh, kw] = wd;
    if wc_in != c_in || kh != kw {
        bail!("{op}: weight {wd:?} does not fit input {xd:?}");
    }
    let p = |v| i32_of(op, v);
    let out = |len: usize| {
        Conv2dParams::out_extent(p(len)?, p(kh)?, p(stride)?, p(pad)?)
            .ok_or_else(|| anyhow::anyhow!("{op}: kernel {kh} stride {stride} pad {pad} does not fit input {xd:?}"))
    };
    let (ho, wo) = (out(h)? as usize, out(w)? as usize);
    let yd = [n, c_out, ho, wo];
    check_len(op, "x", x, xd.iter().product())?;
    check_len(op, "weight", weight, wd.iter().product())?;
    same_device(op, &dev, weight)?;
    if let Some(b) = ep.bias {
        check_len(op, "bias", b, c_out)?;
        same_device(op, &dev, b)?;
    }
    if let Some(r) = ep.residual {
        check_len(op, "residual", r, yd.iter().product())?;
        same_device(op, &dev, r)?;
    }
    let mut y = dev.empty(yd.iter().product())?;
    let params = Conv2dParams {
        x: x.addr(),
        weight: weight.addr(),
        bias: ep.bias.map_or(0, |b| b.addr()),
        residual: ep.residual.map_or(0, |r| r.addr()),
        y: y.addr_mut(),
        relu: ep.relu as i32,
        ..Conv2dParams::new(op, xd, c_out, kh, stride, pad, [ho, wo])?
    };
    // SAFETY: every buffer is on `dev` and was checked against the shapes above.
    unsafe { dev.launch(kernels::conv_forward_kernel(super::gpu_math_on(&dev)), &params)? };
    Ok((y, yd))
}

/// Bilinear resize (align_corners=false) of `planes` planes from `from` to `to`.
pub fn bilinear_forward(x: &GpuBuffer, planes: usize, from: [usize; 2], to: [usize; 2]) -> Result<GpuBuffer> {
    let op = "upsample_bilinear";
    check_len(op, "x", x, planes * from[0] * from[1])?;
    if from.contains(&0) || to.contains(&0) {
        bail!("{op}: empty size {from:?} -> {to:?}");
    }
    let dev = x.device().clone();
    let mut y = dev.empty(planes * to[0] * to[1])?;
    let p = UpsampleParams { x: x.addr(), y: y.addr_mut(), ..UpsampleParams::new(op, planes, from, to)? };
    // SAFETY: x holds planes·from floats (checked above) and y planes·to, both on `dev`.
    unsafe { dev.launch(&kernels::BILINEAR_FORWARD, &p)? };
    Ok(y)
}

/// Copies `part` [n, c_part, hw] into channels [c_offset, c_offset + c_part) of `whole` [n, c_whole, hw].
pub fn concat_into(
    part: &GpuBuffer, whole: &mut GpuBuffer, n: usize, c_part: usize, c_whole: usize, c_offset: usize, hw: usize,
) -> Result<()> {
    let op = "concat";
    check_len(op, "part", part, n * c_part * hw)?;
    check_len(op, "whole", whole, n * c_whole * hw)?;
    if c_offset + c_part > c_whole {
        bail!("{op}: channels {c_offset}..{} outside {c_whole}", c_offset + c_part);
    }
    let p = ConcatParams::new(op, part.addr(), whole.addr_mut(), n, c_part, c_whole, c_offset, hw)?;
    // SAFETY: part and whole hold the floats of their shapes and the channel range fits (checked above).
    unsafe { part.device().launch(&kernels::CONCAT_CHANNELS, &p) }
}

/// One low-resolution term of a fusion: z [planes, size] to be resized to the output size.
#[derive(Clone, Copy)]
pub struct UpTerm<'a> {
    pub z: &'a GpuBuffer,
    pub size: [usize; 2],
}

fn fusion_params(
    dims: [usize; 4], x: Option<&GpuBuffer>, ups: &[UpTerm], downs: &[&GpuBuffer],
) -> Result<FusionParams> {
    let op = "fusion";
    let [n, c, h, w] = dims;
    let planes = n * c;
    let len = planes * h * w;
    if ups.len() > FUSION_MAX_TERMS || downs.len() > FUSION_MAX_TERMS {
        bail!(
            "{op}: {} up and {} down terms; the kernel takes at most {FUSION_MAX_TERMS} of each",
            ups.len(),
            downs.len()
        );
    }
    if x.is_none() && ups.is_empty() && downs.is_empty() {
        bail!("{op}: nothing to sum");
    }
    if let Some(x) = x {
        check_len(op, "identity term", x, len)?;
    }
    let mut p = FusionParams {
        x: x.map_or(0, |b| b.addr()),
        planes: i32_of(op, planes)?,
        h: i32_of(op, h)?,
        w: i32_of(op, w)?,
        num_up: ups.len() as i32,
        num_down: downs.len() as i32,
        ..Default::default()
    };
    for (k, u) in ups.iter().enumerate() {
        check_len(op, "up term", u.z, planes * u.size[0] * u.size[1])?;
        if u.size.contains(&0) {
            bail!("{op}: empty up term {:?}", u.size);
        }
        p.up[k] = u.z.addr();
        p.up_h[k] = i32_of(op, u.size[0])?;
        p.up_w[k] = i32_of(op, u.size[1])?;
        p.up_scale_h[k] = resize_scale(u.size[0], h);
        p.up_scale_w[k] = resize_scale(u.size[1], w);
    }
    for (k, d) in downs.iter().enumerate() {
        check_len(op, "down term", d, len)?;
        p.down[k] = d.addr();
    }
    Ok(p)
}

fn fusion_device<'a>(x: Option<&'a GpuBuffer>, ups: &[UpTerm<'a>], downs: &[&'a GpuBuffer]) -> Result<GpuDevice> {
    let all: Vec<&GpuBuffer> = x.into_iter().chain(ups.iter().map(|u| u.z)).chain(downs.iter().copied()).collect();
    let dev = all.first().ok_or_else(|| anyhow::anyhow!("fusion: nothing to sum"))?.device().clone();
    for b in &all {
        same_device("fusion", &dev, b)?;
    }
    Ok(dev)
}

/// y = ReLU(x + Σ bilinear_up(ups[k] → h×w) + Σ downs[k]) in one kernel; `dims` = [n, c, h, w] of y.
pub fn fusion_forward(
    dims: [usize; 4], x: Option<&GpuBuffer>, ups: &[UpTerm], downs: &[&GpuBuffer],
) -> Result<GpuBuffer> {
    let dev = fusion_device(x, ups, downs)?;
    let mut p = fusion_params(dims, x, ups, downs)?;
    let mut y = dev.empty(dims.iter().product())?;
    p.y = y.addr_mut();
    // SAFETY: every term's size and device were checked (fusion_params, fusion_device); y is fresh.
    unsafe { dev.launch(&kernels::FUSION_FORWARD, &p)? };
    Ok(y)
}

/// The unfused reference rung of `fusion_forward`: bilinear_forward per up term, `add` per term, relu.
pub fn fusion_forward_unfused(
    dims: [usize; 4], x: Option<&GpuBuffer>, ups: &[UpTerm], downs: &[&GpuBuffer],
) -> Result<GpuBuffer> {
    let dev = fusion_device(x, ups, downs)?;
    fusion_params(dims, x, ups, downs)?; // the same checks
    let [n, c, h, w] = dims;
    let mut acc = match x {
        Some(x) => x.try_clone()?,
        None => dev.zeros(n * c * h * w)?,
    };
    for d in downs {
        super::device::add_assign(&mut acc, d)?;
    }
    for u in ups {
        let t = bilinear_forward(u.z, n * c, u.size, [h, w])?;
        super::device::add_assign(&mut acc, &t)?;
    }
    let mut y = dev.empty(acc.len())?;
    let p = EltwiseParams::new(acc.addr(), 0, y.addr_mut(), acc.len());
    // SAFETY: acc and y have one length and one device (both made here from the checked dims).
    unsafe { dev.launch(&kernels::RELU_FORWARD, &p)? };
    Ok(y)
}

/// Backward of `fusion_forward` given its output `y` and the upstream gradient `dy`: returns the masked
/// gradient g (the gradient of x and of every down term) and one gradient per up term (sizes `up_sizes`).
pub fn fusion_backward(
    dims: [usize; 4], y: &GpuBuffer, dy: &GpuBuffer, up_sizes: &[[usize; 2]],
) -> Result<(GpuBuffer, Vec<GpuBuffer>)> {
    let op = "fusion backward";
    let dev = y.device().clone();
    same_device(op, &dev, dy)?;
    let len: usize = dims.iter().product();
    check_len(op, "y", y, len)?;
    check_len(op, "dy", dy, len)?;
    let planes = dims[0] * dims[1];
    let mut d_up = up_sizes.iter().map(|s| dev.zeros(planes * s[0] * s[1])).collect::<Result<Vec<_>>>()?;
    // The up-term values are not read by the backward: the gradient buffers stand in for the shape checks.
    let terms: Vec<UpTerm> = d_up.iter().zip(up_sizes).map(|(z, &size)| UpTerm { z, size }).collect();
    let mut p = fusion_params(dims, Some(y), &terms, &[])?;
    p.up = [0; FUSION_MAX_TERMS];
    let mut dx = dev.empty(len)?;
    p.y = y.addr();
    p.dy = dy.addr();
    p.dx = dx.addr_mut();
    for (k, g) in d_up.iter_mut().enumerate() {
        p.d_up[k] = g.addr_mut();
    }
    // SAFETY: sizes checked above; d_up buffers are distinct and zeroed.
    unsafe { dev.launch(&kernels::FUSION_BACKWARD, &p)? };
    Ok((dx, d_up))
}
