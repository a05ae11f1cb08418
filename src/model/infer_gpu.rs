//! Inference-only forward of [`HrNet`] on a GPU device (CUDA or the emulated device): the plan of
//! `InferNet` (BN folded into the conv weights and bias, eval mode) run with the CUDA kernels — the conv
//! kernel's epilogue adds the folded bias, the block's residual and the ReLU; each fuse row is one
//! `fusion_forward` launch that reads the low-resolution terms and resizes them on the fly.
//! Same output as `HrNet::forward(x, false)` within f32 rounding.
//!
//! `HRK_GPU_INFER=graph` makes `forward_heatmaps` use the autograd graph (`HrNet::forward`) instead;
//! `HRK_GPU_INFER=unfused` keeps the folded plan but sums the fuse rows with the unfused reference rung
//! (bilinear_forward + add + relu_forward).
//!
//! Declared from infer.rs (a grandchild of hrnet.rs) so it can read the model's private layer plan.

use super::super::HrNet;
use super::{cached_plan, fold_plan, weights_key, FConv, PlanBlock, PlanCache, PlanFuse, PlanModule, WeightsKey};
use crate::cuda::device::{add_assign, GpuBuffer, GpuDevice};
use crate::cuda::params::FUSION_MAX_TERMS;
use crate::cuda::raw::{self, ConvEpilogue, UpTerm};
use crate::tensor::{Device, Tensor};
use anyhow::{bail, Result};
use std::sync::{Arc, Mutex};

/// A conv with BN folded in, on the device: y = act(W'·x + b' (+ residual)).
struct GConv {
    w: GpuBuffer,
    b: GpuBuffer,
    wshape: [usize; 4],
    stride: usize,
    pad: usize,
    relu: bool,
}

type GBlock = PlanBlock<GConv>;
type GFuse = PlanFuse<GConv>;
type GModule = PlanModule<GConv>;

/// An activation on the device: [n, c, h, w] NCHW.
struct Act {
    buf: GpuBuffer,
    dims: [usize; 4],
}

/// How fuse rows are summed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FusionMode {
    /// One `fusion_forward` launch per row.
    Fused,
    /// The reference rung: bilinear_forward, add per term, relu_forward.
    Unfused,
}

/// The folded network on one GPU device. Build once (after loading weights), then call `forward`.
pub struct GpuInferNet {
    dev: GpuDevice,
    stem: [GConv; 2],
    layer1: Vec<GBlock>,
    transitions: Vec<Vec<Option<Vec<GConv>>>>,
    stages: Vec<Vec<GModule>>,
    head0: GConv,
    head3: GConv,
    pub fusion: FusionMode,
}

impl GpuInferNet {
    /// Folds the model's eval-mode BN into its convs (in f64, as `InferNet` does) and uploads the result
    /// to `dev`. The model's tensors may live on any device.
    pub fn new(net: &HrNet, dev: &GpuDevice) -> Result<GpuInferNet> {
        let upload = |f: FConv| -> Result<GConv> {
            let (w, b) = (dev.upload(&f.w)?, dev.upload(&f.b)?);
            Ok(GConv { w, b, wshape: f.wshape, stride: f.stride, pad: f.pad, relu: f.relu })
        };
        let plan = fold_plan(net)?.try_map(&mut { upload })?;
        Ok(GpuInferNet {
            dev: dev.clone(),
            stem: plan.stem,
            layer1: plan.layer1,
            transitions: plan.transitions,
            stages: plan.stages,
            head0: plan.head0,
            head3: plan.head3,
            fusion: FusionMode::Fused,
        })
    }

    pub fn device(&self) -> &GpuDevice {
        &self.dev
    }

    /// Eval-mode forward of an NCHW f32 batch [N, 3, H, W] (any device) → heatmaps [N, joints, H/4, W/4]
    /// on this net's device.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let d = x.dims4("hrnet gpu infer")?;
        if d[1] != 3 {
            bail!("hrnet gpu infer: input must have 3 channels, got shape {:?}", x.shape());
        }
        let buf = match x.storage() {
            crate::tensor::Storage::Gpu(b) if b.device() == &self.dev => b.try_clone()?,
            _ => self.dev.upload(&x.try_to_f32_vec()?)?,
        };
        let y = self.forward_raw(Act { buf, dims: d })?;
        Tensor::new(y.dims.to_vec(), crate::tensor::Storage::Gpu(y.buf))
    }

    fn forward_raw(&self, x: Act) -> Result<Act> {
        let y = self.conv(&self.stem[0], &x, None)?;
        let mut y = self.conv(&self.stem[1], &y, None)?;
        for b in &self.layer1 {
            y = self.block(b, y)?;
        }
        let mut ys = vec![y];
        for (trans, modules) in self.transitions.iter().zip(&self.stages) {
            let mut xs = Vec::with_capacity(trans.len());
            for (i, t) in trans.iter().enumerate() {
                let src = if i < ys.len() { &ys[i] } else { ys.last().expect("≥ 1 branch") };
                xs.push(match t {
                    Some(links) => self.chain(links, src)?,
                    None => Act { buf: src.buf.try_clone()?, dims: src.dims },
                });
            }
            ys = xs;
            for m in modules {
                ys = self.module(m, ys)?;
            }
        }
        // Head input: branch 0 and the others upsampled to its size, concatenated by channel.
        let [n, _, h, w] = ys[0].dims;
        let ctot: usize = ys.iter().map(|y| y.dims[1]).sum();
        let mut cat = self.dev.empty(n * ctot * h * w)?;
        let mut c0 = 0;
        for y in &ys {
            let [_, c, yh, yw] = y.dims;
            if [yh, yw] == [h, w] {
                raw::concat_into(&y.buf, &mut cat, n, c, ctot, c0, h * w)?;
            } else {
                let up = raw::bilinear_forward(&y.buf, n * c, [yh, yw], [h, w])?;
                raw::concat_into(&up, &mut cat, n, c, ctot, c0, h * w)?;
            }
            c0 += c;
        }
        let cat = Act { buf: cat, dims: [n, ctot, h, w] };
        let hdn = self.conv(&self.head0, &cat, None)?;
        self.conv(&self.head3, &hdn, None)
    }

    fn conv(&self, f: &GConv, x: &Act, residual: Option<&Act>) -> Result<Act> {
        let ep = ConvEpilogue { bias: Some(&f.b), residual: residual.map(|r| &r.buf), relu: f.relu };
        let (buf, dims) = raw::conv2d_forward(&x.buf, x.dims, &f.w, f.wshape, f.stride, f.pad, ep)?;
        Ok(Act { buf, dims })
    }

    fn chain(&self, links: &[GConv], x: &Act) -> Result<Act> {
        let (first, rest) = links.split_first().expect("a chain has ≥ 1 link");
        let mut y = self.conv(first, x, None)?;
        for l in rest {
            y = self.conv(l, &y, None)?;
        }
        Ok(y)
    }

    /// relu(layers(x) + shortcut(x)), the add and ReLU in the last conv's epilogue.
    fn block(&self, b: &GBlock, x: Act) -> Result<Act> {
        let (last, inner) = b.layers.split_last().expect("a block has ≥ 1 layer");
        let shortcut = b.downsample.as_ref().map(|ds| self.conv(ds, &x, None)).transpose()?;
        let mut y: Option<Act> = None;
        for l in inner {
            y = Some(self.conv(l, y.as_ref().unwrap_or(&x), None)?);
        }
        let res = shortcut.as_ref().unwrap_or(&x);
        let ep = ConvEpilogue { bias: Some(&last.b), residual: Some(&res.buf), relu: true };
        let input = y.as_ref().unwrap_or(&x);
        let (buf, dims) = raw::conv2d_forward(&input.buf, input.dims, &last.w, last.wshape, last.stride, last.pad, ep)?;
        Ok(Act { buf, dims })
    }

    fn module(&self, m: &GModule, xs: Vec<Act>) -> Result<Vec<Act>> {
        let mut ys = Vec::with_capacity(xs.len());
        for (x, blocks) in xs.into_iter().zip(&m.branches) {
            let mut y = x;
            for b in blocks {
                y = self.block(b, y)?;
            }
            ys.push(y);
        }
        if m.fuse.is_empty() {
            return Ok(ys);
        }
        m.fuse.iter().enumerate().map(|(i, row)| self.fuse_row(i, row, &ys)).collect()
    }

    /// relu(Σ_j fuse[i][j](ys[j])) with one fusion launch: up terms stay at their low resolution.
    fn fuse_row(&self, i: usize, row: &[GFuse], ys: &[Act]) -> Result<Act> {
        let dims = ys[i].dims;
        let mut identity = None;
        let (mut ups, mut downs): (Vec<Act>, Vec<GpuBuffer>) = (Vec::new(), Vec::new());
        for (j, f) in row.iter().enumerate() {
            match f {
                PlanFuse::Identity => identity = Some(&ys[j].buf),
                PlanFuse::Up(l) => ups.push(self.conv(l, &ys[j], None)?),
                PlanFuse::Down(links) => downs.push(self.chain(links, &ys[j])?.buf),
            }
        }
        for u in &ups {
            if u.dims[..2] != dims[..2] {
                bail!("hrnet gpu infer: fuse row {i}: an up term {:?} does not fit branch {:?}", u.dims, dims);
            }
        }
        // More than FUSION_MAX_TERMS of a kind (modules wider than HRNet's 4 branches): resize and pre-add
        // the extra terms.
        while ups.len() > FUSION_MAX_TERMS {
            let u = ups.pop().expect("non-empty");
            downs.push(raw::bilinear_forward(&u.buf, dims[0] * dims[1], [u.dims[2], u.dims[3]], [dims[2], dims[3]])?);
        }
        while downs.len() > FUSION_MAX_TERMS {
            let d = downs.pop().expect("non-empty");
            add_assign(&mut downs[0], &d)?;
        }
        let terms: Vec<UpTerm> = ups.iter().map(|u| UpTerm { z: &u.buf, size: [u.dims[2], u.dims[3]] }).collect();
        let down_refs: Vec<&GpuBuffer> = downs.iter().collect();
        let buf = match self.fusion {
            FusionMode::Fused => raw::fusion_forward(dims, identity, &terms, &down_refs)?,
            FusionMode::Unfused => raw::fusion_forward_unfused(dims, identity, &terms, &down_refs)?,
        };
        Ok(Act { buf, dims })
    }
}

/// `HRK_GPU_INFER`: unset or `fused` (default), `unfused` (reference rung for fuse rows), `graph` (no
/// folding: `HrNet::forward`).
fn mode_from_env() -> Option<FusionMode> {
    match std::env::var("HRK_GPU_INFER").as_deref() {
        Ok("graph") => None,
        Ok("unfused") => Some(FusionMode::Unfused),
        _ => Some(FusionMode::Fused),
    }
}

/// What the cached folded net was built from: the device, the model's `weights_key` (tensor ids and
/// the engine's storage-write count: any optimizer step or BN update changes it) and the fusion mode.
type CacheKey = (String, WeightsKey, FusionMode);

/// The folded net of the last model seen, with its key.
static CACHE: PlanCache<CacheKey, GpuInferNet> = Mutex::new(None);

/// The folded net for `net` on `dev`, built once and reused while the model's weights do not change.
pub fn cached(net: &HrNet, dev: &GpuDevice, mode: FusionMode) -> Result<Arc<GpuInferNet>> {
    cached_plan(&CACHE, (dev.name(), weights_key(net), mode), || {
        let mut built = GpuInferNet::new(net, dev)?;
        built.fusion = mode;
        Ok(built)
    })
}

/// The eval forward used by `hrk test` / `predict` / validation when the model is on a GPU device: the
/// folded plan (unless `HRK_GPU_INFER=graph`). Returns None when the model is not on a GPU or the graph
/// path was asked for; the heatmaps come back to the host with their dims.
pub fn forward_heatmaps(net: &HrNet, input: &[f32], shape: [usize; 4]) -> Result<Option<(Vec<f32>, [usize; 4])>> {
    let Device::Gpu(dev) = net.device() else { return Ok(None) };
    let Some(mode) = mode_from_env() else { return Ok(None) };
    let folded = cached(net, &dev, mode)?;
    run(&folded, input, shape).map(Some)
}

fn run(net: &GpuInferNet, input: &[f32], shape: [usize; 4]) -> Result<(Vec<f32>, [usize; 4])> {
    let [n, c, h, w] = shape;
    if input.len() != n * c * h * w {
        bail!("hrnet gpu infer: {} input values for shape {shape:?}", input.len());
    }
    if c != 3 {
        bail!("hrnet gpu infer: input must have 3 channels, got shape {shape:?}");
    }
    let x = Act { buf: net.dev.upload(input)?, dims: shape };
    let y = net.forward_raw(x)?;
    Ok((y.buf.to_vec()?, y.dims))
}
