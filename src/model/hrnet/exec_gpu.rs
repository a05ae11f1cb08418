//! The GPU inference engine (CUDA or the emulated device): the CPU engine's folded plan (BN folded into
//! the conv weights and bias, eval mode) run with the CUDA kernels — the conv kernel's epilogue adds the
//! folded bias, the block's residual and the ReLU; each fuse row is one `fusion_forward` launch that
//! reads the low-resolution terms and resizes them on the fly.
//! Same output as `HrNet::forward(x, false)` within f32 rounding.

use super::plan::Plan;
use super::plan::{fold_plan, FoldedConv};
use super::walk::{self, Executor, Term};
use crate::cuda::buffer::add_assign;
use crate::cuda::params::FUSION_MAX_TERMS;
use crate::cuda::{GpuBuffer, GpuDevice, GpuGraph, GraphCache};
use crate::ops::concat::cuda_kernel::concat_into;
use crate::ops::conv2d::cuda_kernel::{forward_buffers as conv_forward, ConvEpilogue};
use crate::ops::fusion::{self, UpTerm};
use crate::ops::upsample::cuda_kernel::bilinear_buffers as bilinear;
use crate::tensor::{Storage, Tensor};
use anyhow::{anyhow, bail, Context, Result};
use std::sync::Mutex;

pub use crate::cuda::GraphCounts;

/// A conv with BN folded in, on the device: y = act(W'·x + b' (+ residual)).
pub(super) struct GConv {
    w: GpuBuffer,
    b: GpuBuffer,
    wshape: [usize; 4],
    stride: usize,
    pad: usize,
    relu: bool,
}

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
    plan: Plan<GConv>,
    pub fusion: FusionMode,
    /// `forward_host` captures the forward of each new input shape into a graph and replays it
    /// (`HRK_CUDA_GRAPHS`, default on); false runs every forward eagerly.
    pub graphs: bool,
    captured: Mutex<GraphCache<[usize; 4], InferGraph>>,
}

/// Input shapes whose graphs are kept (each holds the memory of one forward).
const MAX_GRAPHS: usize = 4;

/// A captured forward: the input buffer it reads, the heatmaps it writes.
struct InferGraph {
    graph: GpuGraph,
    input: GpuBuffer,
    output: Act,
}

impl GpuInferNet {
    /// Folds the model's eval-mode BN into its convs (in f64, as `InferNet` does) and uploads the result
    /// to `dev`. The model's tensors may live on any device.
    pub fn new(net: &super::HrNet, dev: &GpuDevice) -> Result<GpuInferNet> {
        let plan = fold_plan(&net.store, &net.plan)?.try_map(&mut |f: &FoldedConv| -> Result<GConv> {
            let (w, b) = (dev.upload(&f.w)?, dev.upload(&f.b)?);
            Ok(GConv { w, b, wshape: f.wshape, stride: f.stride, pad: f.pad, relu: f.relu })
        })?;
        Ok(GpuInferNet {
            dev: dev.clone(),
            plan,
            fusion: FusionMode::Fused,
            graphs: crate::switches::cuda_graphs(),
            captured: Mutex::new(GraphCache::new(MAX_GRAPHS)),
        })
    }

    /// Graph captures and replays so far.
    pub fn graph_counts(&self) -> GraphCounts {
        let Ok(cache) = self.captured.lock() else { return GraphCounts::default() };
        GraphCounts { last_launches: cache.most_recent().map_or(0, |g| g.graph.launches()), ..cache.counts() }
    }

    /// Nodes of the most recently used graph as its backend holds them (`GpuGraph::node_count`: on CUDA the
    /// driver's count, to compare with `graph_counts().last_launches`); None before any capture.
    pub fn last_graph_node_count(&self) -> Result<Option<usize>> {
        let cache = self.captured.lock().map_err(|_| anyhow!("hrnet gpu infer: graph cache poisoned"))?;
        cache.most_recent().map(|g| g.graph.node_count()).transpose()
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
        let buf = match x.storage().gpu("hrnet gpu infer") {
            Ok(b) if b.device() == &self.dev => b.try_clone()?,
            _ => self.dev.upload(&x.try_to_f32_vec()?)?,
        };
        let y = self.forward_raw(Act { buf, dims: d })?;
        Tensor::new(y.dims.to_vec(), Storage::Gpu(y.buf))
    }

    /// The heatmaps of a host batch, brought back to the host with their dims.
    pub fn forward_host(&self, input: &[f32], shape: [usize; 4]) -> Result<(Vec<f32>, [usize; 4])> {
        let [n, c, h, w] = shape;
        if input.len() != n * c * h * w {
            bail!("hrnet gpu infer: {} input values for shape {shape:?}", input.len());
        }
        if c != 3 {
            bail!("hrnet gpu infer: input must have 3 channels, got shape {shape:?}");
        }
        let context = || format!("hrnet gpu infer of a {shape:?} batch");
        if self.graphs {
            return self.forward_graph(input, shape).with_context(context);
        }
        let y = self.forward_raw(Act { buf: self.dev.upload(input)?, dims: shape }).with_context(context)?;
        Ok((y.buf.to_vec()?, y.dims))
    }

    /// `forward_host` through a graph: the first call for a shape runs eagerly (its answer is returned;
    /// it also leaves in the allocator's cache every block the capture then takes) and captures the same
    /// work; later calls upload into the graph's input and replay it.
    fn forward_graph(&self, input: &[f32], shape: [usize; 4]) -> Result<(Vec<f32>, [usize; 4])> {
        let mut cache = self.captured.lock().map_err(|_| anyhow!("hrnet gpu infer: graph cache poisoned"))?;
        let replay = |g: &mut InferGraph| {
            g.input.write_from_host(input)?;
            // SAFETY: the graph reads the weights (self.plan, alive as long as self) and `g.input`, and writes
            // `g.output`; everything else it touches it owns.
            unsafe { g.graph.replay() }?;
            Ok((g.output.buf.to_vec()?, g.output.dims))
        };
        let eager = || {
            let y = self.forward_raw(Act { buf: self.dev.upload(input)?, dims: shape })?;
            Ok((y.buf.to_vec()?, y.dims))
        };
        // The warm-up makes the same requests in the same order as the capture.
        let warm_up = || {
            let mut graph_input = self.dev.empty(input.len())?;
            graph_input.write_from_host(input)?;
            let y = self.forward_raw(Act { buf: graph_input.try_clone()?, dims: shape })?;
            Ok(((y.buf.to_vec()?, y.dims), graph_input))
        };
        let capture = |graph_input: GpuBuffer| {
            let forward = || self.forward_raw(Act { buf: graph_input.try_clone()?, dims: shape });
            let (graph, output) = self.dev.capture(forward)?;
            Ok(InferGraph { graph, input: graph_input, output })
        };
        let on_failure = |e: &anyhow::Error| {
            log::warn!("hrnet gpu infer: graph capture for a {shape:?} batch failed, running it eagerly: {e:#}")
        };
        cache.run(shape, replay, eager, warm_up, capture, on_failure)
    }

    fn forward_raw(&self, x: Act) -> Result<Act> {
        walk::forward(&self.plan, &mut GpuExec { dev: &self.dev, fusion: self.fusion }, x)
    }
}

/// The engine as the walk sees it.
struct GpuExec<'a> {
    dev: &'a GpuDevice,
    fusion: FusionMode,
}

/// A fuse row's terms, gathered for one launch: up terms stay at their low resolution.
struct RowTerms {
    row: usize,
    identity: bool,
    ups: Vec<Act>,
    downs: Vec<GpuBuffer>,
}

impl GpuExec<'_> {
    fn run(&self, f: &GConv, x: &Act, residual: Option<&Act>, relu: bool) -> Result<Act> {
        let ep = ConvEpilogue { bias: Some(&f.b), residual: residual.map(|r| &r.buf), relu };
        let (buf, dims) = conv_forward(&x.buf, x.dims, &f.w, f.wshape, f.stride, f.pad, ep)?;
        Ok(Act { buf, dims })
    }
}

impl Executor for GpuExec<'_> {
    type Act = Act;
    type Conv = GConv;
    type Row = RowTerms;

    fn conv(&mut self, f: &GConv, x: &Act) -> Result<Act> {
        self.run(f, x, None, f.relu)
    }

    /// relu(last(y) + shortcut), the add and ReLU in the last conv's epilogue.
    fn block_out(&mut self, last: &GConv, y: &Act, x: &Act, downsample: Option<&GConv>) -> Result<Act> {
        let shortcut = downsample.map(|d| self.run(d, x, None, d.relu)).transpose()?;
        self.run(last, y, Some(shortcut.as_ref().unwrap_or(x)), true)
    }

    fn copy(&mut self, x: &Act) -> Result<Act> {
        Ok(Act { buf: x.buf.try_clone()?, dims: x.dims })
    }

    fn row_begin(&mut self, row: usize, _target: &Act) -> Result<RowTerms> {
        Ok(RowTerms { row, identity: false, ups: Vec::new(), downs: Vec::new() })
    }

    fn row_identity(&mut self, sum: &mut RowTerms, _y: &Act, _term: Term) -> Result<()> {
        sum.identity = true;
        Ok(())
    }

    fn row_up(&mut self, sum: &mut RowTerms, conv: &GConv, y: &Act, _target: &Act, _term: Term) -> Result<()> {
        sum.ups.push(self.conv(conv, y)?);
        Ok(())
    }

    fn row_down(&mut self, sum: &mut RowTerms, last_link: &GConv, y: &Act, _term: Term) -> Result<()> {
        sum.downs.push(self.conv(last_link, y)?.buf);
        Ok(())
    }

    /// relu(Σ terms) with one fusion launch.
    fn row_end(&mut self, sum: RowTerms, target: &Act) -> Result<Act> {
        let RowTerms { row, identity, mut ups, mut downs } = sum;
        let dims = target.dims;
        for u in &ups {
            if u.dims[..2] != dims[..2] {
                bail!("hrnet gpu infer: fuse row {row}: an up term {:?} does not fit branch {:?}", u.dims, dims);
            }
        }
        // More than FUSION_MAX_TERMS of a kind (modules wider than HRNet's 4 branches): resize and pre-add
        // the extra terms.
        while ups.len() > FUSION_MAX_TERMS {
            let u = ups.pop().expect("non-empty");
            downs.push(bilinear(&u.buf, dims[0] * dims[1], [u.dims[2], u.dims[3]], [dims[2], dims[3]])?);
        }
        while downs.len() > FUSION_MAX_TERMS {
            let d = downs.pop().expect("non-empty");
            add_assign(&mut downs[0], &d)?;
        }
        let terms: Vec<UpTerm> = ups.iter().map(|u| UpTerm { z: &u.buf, size: [u.dims[2], u.dims[3]] }).collect();
        let down_refs: Vec<&GpuBuffer> = downs.iter().collect();
        let identity = identity.then_some(&target.buf);
        let buf = match self.fusion {
            FusionMode::Fused => fusion::forward(dims, identity, &terms, &down_refs)?,
            FusionMode::Unfused => fusion::forward_unfused(dims, identity, &terms, &down_refs)?,
        };
        Ok(Act { buf, dims })
    }

    fn head_input(&mut self, branches: &[Act]) -> Result<Act> {
        let Some(first) = branches.first() else { bail!("hrnet gpu infer: the head got no branch") };
        let [n, _, h, w] = first.dims;
        let ctot: usize = branches.iter().map(|y| y.dims[1]).sum();
        let mut cat = self.dev.empty(n * ctot * h * w)?;
        let mut c0 = 0;
        for y in branches {
            let [_, c, yh, yw] = y.dims;
            if [yh, yw] == [h, w] {
                concat_into(&y.buf, &mut cat, n, c, ctot, c0, h * w)?;
            } else {
                let up = bilinear(&y.buf, n * c, [yh, yw], [h, w])?;
                concat_into(&up, &mut cat, n, c, ctot, c0, h * w)?;
            }
            c0 += c;
        }
        Ok(Act { buf: cat, dims: [n, ctot, h, w] })
    }
}
