//! The fuse-row sum of the GPU inference engine on a GPU device (kernels/fusion.cu): y = ReLU(x + Σ
//! bilinear-upsampled low-resolution terms + Σ downsampled terms) in one launch, its unfused reference rung,
//! and its backward.

use crate::cuda::buffer::add_assign;
use crate::cuda::kernels;
use crate::cuda::params::{i32_of, resize_scale, EltwiseParams, FusionParams, FUSION_MAX_TERMS};
use crate::cuda::{GpuBuffer, GpuDevice};
use crate::ops::upsample::cuda_kernel::bilinear_buffers;
use anyhow::{anyhow, bail, Result};

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
        x.expect_len(op, "identity term", len)?;
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
        u.z.expect_len(op, "up term", planes * u.size[0] * u.size[1])?;
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
        d.expect_len(op, "down term", len)?;
        p.down[k] = d.addr();
    }
    Ok(p)
}

fn fusion_device<'a>(x: Option<&'a GpuBuffer>, ups: &[UpTerm<'a>], downs: &[&'a GpuBuffer]) -> Result<GpuDevice> {
    let all: Vec<&GpuBuffer> = x.into_iter().chain(ups.iter().map(|u| u.z)).chain(downs.iter().copied()).collect();
    let dev = all.first().ok_or_else(|| anyhow!("fusion: nothing to sum"))?.device().clone();
    for b in &all {
        b.expect_device("fusion", &dev)?;
    }
    Ok(dev)
}

/// y = ReLU(x + Σ bilinear_up(ups[k] → h×w) + Σ downs[k]) in one kernel; `dims` = [n, c, h, w] of y.
pub fn forward(dims: [usize; 4], x: Option<&GpuBuffer>, ups: &[UpTerm], downs: &[&GpuBuffer]) -> Result<GpuBuffer> {
    let dev = fusion_device(x, ups, downs)?;
    let mut p = fusion_params(dims, x, ups, downs)?;
    let mut y = dev.empty(dims.iter().product())?;
    p.y = y.addr_mut();
    // SAFETY: every term's size and device were checked (fusion_params, fusion_device); y is fresh.
    unsafe { dev.launch(&kernels::FUSION_FORWARD, &p)? };
    Ok(y)
}

/// The unfused reference rung of `forward`: the bilinear resize per up term, `add` per term, relu.
pub fn forward_unfused(
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
        add_assign(&mut acc, d)?;
    }
    for u in ups {
        let t = bilinear_buffers(u.z, n * c, u.size, [h, w])?;
        add_assign(&mut acc, &t)?;
    }
    let mut y = dev.empty(acc.len())?;
    let p = EltwiseParams::new(acc.addr(), 0, y.addr_mut(), acc.len());
    // SAFETY: acc and y have one length and one device (both made here from the checked dims).
    unsafe { dev.launch(&kernels::RELU_FORWARD, &p)? };
    Ok(y)
}

/// Backward of `forward` given its output `y` and the upstream gradient `dy`: returns the masked
/// gradient g (the gradient of x and of every down term) and one gradient per up term (sizes `up_sizes`).
pub fn backward(
    dims: [usize; 4], y: &GpuBuffer, dy: &GpuBuffer, up_sizes: &[[usize; 2]],
) -> Result<(GpuBuffer, Vec<GpuBuffer>)> {
    let op = "fusion backward";
    let dev = y.device().clone();
    dy.expect_device(op, &dev)?;
    let len: usize = dims.iter().product();
    y.expect_len(op, "y", len)?;
    dy.expect_len(op, "dy", len)?;
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
