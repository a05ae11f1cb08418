//! Inference-only forward of [`HrNet`] (eval-mode BN) on raw f32 buffers: BN folded into the conv
//! weights, conv epilogues fused (bias, residual add, ReLU), fuse-layer sums accumulated in place,
//! branches and fuse rows run concurrently, and activations drawn from a reusable arena.
//! Same output as `HrNet::forward(x, false)` within f32 rounding.
//!
//! Declared from `hrnet.rs` (as its child module) so it can read the model's private layer plan.

use super::{Block, Bn, Conv, ConvBn, Fuse, HrModule, HrNet, Transition};

/// The same folded plan on a GPU device (CUDA kernels; file: src/model/infer_gpu.rs).
#[path = "infer_gpu.rs"]
pub mod gpu;
use crate::ops::conv2d::cpu_kernel::{forward_fused, winograd_pays, Epilogue};
use crate::ops::conv2d::direct::winograd;
use crate::ops::{Conv2dGeom, BN_EPS};
use crate::model::store::Slot;
use crate::tensor::{DType, Device, Tensor};
use anyhow::{bail, Context, Result};
use rayon::prelude::*;
use std::sync::{Arc, Mutex};

/// A conv with its BN folded in: y = act(W'·x + b').
#[derive(Clone, Debug)]
struct FConv {
    w: Vec<f32>,
    b: Vec<f32>,
    wshape: [usize; 4],
    stride: usize,
    pad: usize,
    relu: bool,
    /// The Winograd-transformed weights, made at the first forward that takes that path.
    winograd: std::sync::OnceLock<Vec<f32>>,
}

/// The model's layer plan with BN folded into every conv, generic over how a conv is held (host
/// buffers here, device buffers in the GPU path). ReLU flags are the layers' own; each engine marks
/// where it applies the block and fuse-row ReLUs.
struct Plan<C> {
    stem: [C; 2],
    layer1: Vec<PlanBlock<C>>,
    transitions: Vec<Vec<Option<Vec<C>>>>,
    stages: Vec<Vec<PlanModule<C>>>,
    head0: C,
    head3: C,
}

#[derive(Clone, Debug)]
struct PlanBlock<C> {
    /// The last link takes the shortcut as residual and ends in ReLU.
    layers: Vec<C>,
    downsample: Option<C>,
}

#[derive(Clone, Debug)]
enum PlanFuse<C> {
    Identity,
    Up(C),
    Down(Vec<C>),
}

struct PlanModule<C> {
    branches: Vec<Vec<PlanBlock<C>>>,
    fuse: Vec<Vec<PlanFuse<C>>>,
}

impl<C> Plan<C> {
    /// The same plan with every conv converted by `f` (in layer order).
    fn try_map<D>(self, f: &mut impl FnMut(C) -> Result<D>) -> Result<Plan<D>> {
        fn all<C, D>(cs: Vec<C>, f: &mut impl FnMut(C) -> Result<D>) -> Result<Vec<D>> {
            cs.into_iter().map(&mut *f).collect()
        }
        fn block<C, D>(b: PlanBlock<C>, f: &mut impl FnMut(C) -> Result<D>) -> Result<PlanBlock<D>> {
            Ok(PlanBlock { layers: all(b.layers, f)?, downsample: b.downsample.map(&mut *f).transpose()? })
        }
        fn blocks<C, D>(bs: Vec<PlanBlock<C>>, f: &mut impl FnMut(C) -> Result<D>) -> Result<Vec<PlanBlock<D>>> {
            bs.into_iter().map(|b| block(b, f)).collect()
        }
        let [s0, s1] = self.stem;
        let stem = [f(s0)?, f(s1)?];
        let layer1 = blocks(self.layer1, f)?;
        let mut transitions = Vec::new();
        for ts in self.transitions {
            transitions.push(ts.into_iter().map(|t| t.map(|cs| all(cs, f)).transpose()).collect::<Result<_>>()?);
        }
        let mut stages = Vec::new();
        for ms in self.stages {
            let mut modules = Vec::new();
            for m in ms {
                let branches = m.branches.into_iter().map(|bs| blocks(bs, f)).collect::<Result<_>>()?;
                let mut fuse = Vec::new();
                for row in m.fuse {
                    let mut terms = Vec::new();
                    for t in row {
                        terms.push(match t {
                            PlanFuse::Identity => PlanFuse::Identity,
                            PlanFuse::Up(c) => PlanFuse::Up(f(c)?),
                            PlanFuse::Down(cs) => PlanFuse::Down(all(cs, f)?),
                        });
                    }
                    fuse.push(terms);
                }
                modules.push(PlanModule { branches, fuse });
            }
            stages.push(modules);
        }
        Ok(Plan { stem, layer1, transitions, stages, head0: f(self.head0)?, head3: f(self.head3)? })
    }
}

/// Folds the model's eval-mode BN into its convs: BN(Wx + c) = γ/σ·(Wx + c − μ) + β, so
/// W' = W·γ/σ and b' = (c − μ)·γ/σ + β, computed in f64 and rounded once to f32. The model's
/// tensors may live on any device.
fn fold_plan(net: &HrNet) -> Result<Plan<FConv>> {
    let s = &net.store;
    let read = |i: usize| -> Result<Vec<f64>> {
        s.tensor(i).try_to_f64_vec().with_context(|| format!("infer: reading `{}`", s.name(i)))
    };
    let conv = |c: &Conv, bn: Option<&Bn>, relu: bool| -> Result<FConv> {
        let wt = s.tensor(c.w);
        let wshape = match *wt.shape() {
            [a, b, k1, k2] => [a, b, k1, k2],
            _ => bail!("infer: conv weight {} is not 4-d: {:?}", s.name(c.w), wt.shape()),
        };
        let mut w = read(c.w)?;
        let mut b = match c.b {
            Some(b) => read(b)?,
            None => vec![0.0; wshape[0]],
        };
        if let Some(bn) = bn {
            let (g, bt, rm, rv) = (read(bn.w)?, read(bn.b)?, read(bn.rm)?, read(bn.rv)?);
            let per = w.len() / wshape[0].max(1);
            for co in 0..wshape[0] {
                let scale = g[co] / (rv[co] + BN_EPS).sqrt();
                w[co * per..(co + 1) * per].iter_mut().for_each(|v| *v *= scale);
                b[co] = (b[co] - rm[co]) * scale + bt[co];
            }
        }
        let f32s = |v: Vec<f64>| v.into_iter().map(|x| x as f32).collect();
        Ok(FConv { w: f32s(w), b: f32s(b), wshape, stride: c.stride, pad: c.pad, relu, winograd: Default::default() })
    };
    let folded = |l: &ConvBn, relu: bool| conv(&l.conv, Some(&l.bn), relu);
    let links = |ls: &[ConvBn]| ls.iter().map(|l| folded(l, l.relu)).collect::<Result<Vec<_>>>();
    let block = |b: &Block| -> Result<PlanBlock<FConv>> {
        Ok(PlanBlock { layers: links(&b.layers)?, downsample: b.downsample.as_ref().map(|d| folded(d, false)).transpose()? })
    };
    let blocks = |bs: &[Block]| bs.iter().map(block).collect::<Result<Vec<_>>>();
    let transition = |t: &Transition| t.as_ref().map(|ls| links(ls)).transpose();
    let module = |m: &HrModule| -> Result<PlanModule<FConv>> {
        let branches = m.branches.iter().map(|b| blocks(b)).collect::<Result<Vec<_>>>()?;
        let mut fuse = Vec::new();
        for row in &m.fuse {
            let mut terms = Vec::new();
            for f in row {
                terms.push(match f {
                    Fuse::Identity => PlanFuse::Identity,
                    Fuse::Up(l) => PlanFuse::Up(folded(l, false)?),
                    Fuse::Down(ls) => PlanFuse::Down(links(ls)?),
                });
            }
            fuse.push(terms);
        }
        Ok(PlanModule { branches, fuse })
    };
    Ok(Plan {
        stem: [folded(&net.stem[0], true)?, folded(&net.stem[1], true)?],
        layer1: blocks(&net.layer1)?,
        transitions: net.transitions.iter().map(|ts| ts.iter().map(transition).collect::<Result<Vec<_>>>()).collect::<Result<_>>()?,
        stages: net.stages.iter().map(|ms| ms.iter().map(module).collect::<Result<Vec<_>>>()).collect::<Result<_>>()?,
        head0: folded(&net.head0, true)?,
        head3: conv(&net.head3, None, false)?,
    })
}

type FBlock = PlanBlock<FConv>;
type FFuse = PlanFuse<FConv>;

struct FModule {
    branches: Vec<Vec<FBlock>>,
    fuse: Vec<Vec<FFuse>>,
    /// Per fuse row: the term added last (its conv, or its upsample, applies the row's ReLU).
    last_term: Vec<Option<usize>>,
}

/// An activation: batch × channels × height × width, NCHW.
struct Act {
    dims: [usize; 4],
    data: Vec<f32>,
}

/// Free activation buffers, reused across layers and steps (best fit by capacity).
#[derive(Default)]
struct Arena {
    free: Mutex<Vec<Vec<f32>>>,
}

impl Arena {
    /// A buffer of `len` elements with unspecified contents (every user overwrites all of it).
    /// Best fit by length first (a shorter buffer would be zero-filled up to `len`; the same layer
    /// sizes recur every forward, so exact fits are the common case), then by capacity.
    fn take(&self, len: usize) -> Vec<f32> {
        let mut free = self.free.lock().unwrap_or_else(|e| e.into_inner());
        let by_len = free.iter().enumerate().filter(|(_, v)| v.len() >= len).min_by_key(|(_, v)| v.len()).map(|(i, _)| i);
        let best = by_len.or_else(|| free.iter().enumerate().filter(|(_, v)| v.capacity() >= len).min_by_key(|(_, v)| v.capacity()).map(|(i, _)| i));
        let mut v = match best {
            Some(i) => free.swap_remove(i),
            None => Vec::with_capacity(len),
        };
        drop(free);
        if v.len() < len {
            v.resize(len, 0.0);
        } else {
            v.truncate(len);
        }
        v
    }
    fn put(&self, v: Vec<f32>) {
        self.free.lock().unwrap_or_else(|e| e.into_inner()).push(v);
    }
    fn act(&self, dims: [usize; 4]) -> Act {
        Act { dims, data: self.take(dims.iter().product()) }
    }
    fn give(&self, a: Act) {
        self.put(a.data)
    }
}

/// The folded network. Build once from a model (after loading weights), then call `forward`.
pub struct InferNet {
    stem: [FConv; 2],
    layer1: Vec<FBlock>,
    transitions: Vec<Vec<Option<Vec<FConv>>>>,
    stages: Vec<Vec<FModule>>,
    head0: FConv,
    head3: FConv,
    arena: Arena,
}

impl InferNet {
    pub fn new(net: &HrNet) -> Result<InferNet> {
        let plan = fold_plan(net)?;
        // A block ends in relu(last(x) + shortcut): the last conv's epilogue applies it.
        let mark_blocks = |mut bs: Vec<FBlock>| {
            for b in &mut bs {
                if let Some(last) = b.layers.last_mut() {
                    last.relu = true;
                }
            }
            bs
        };
        let module = |m: PlanModule<FConv>| {
            let branches = m.branches.into_iter().map(mark_blocks).collect();
            let mut fuse = m.fuse;
            // The row's sum starts from the identity term and adds the others in order: the last one
            // added applies relu (in its conv epilogue for a downsampling chain).
            let last_term = fuse
                .iter_mut()
                .enumerate()
                .map(|(i, row)| {
                    let j = (0..row.len()).rev().find(|&j| j != i && !matches!(row[j], FFuse::Identity))?;
                    if let FFuse::Down(links) = &mut row[j] {
                        links.last_mut()?.relu = true;
                    }
                    Some(j)
                })
                .collect();
            FModule { branches, fuse, last_term }
        };
        Ok(InferNet {
            stem: plan.stem,
            layer1: mark_blocks(plan.layer1),
            transitions: plan.transitions,
            stages: plan.stages.into_iter().map(|ms| ms.into_iter().map(module).collect()).collect(),
            head0: plan.head0,
            head3: plan.head3,
            arena: Arena::default(),
        })
    }

    /// Eval-mode forward of an NCHW f32 batch [N, 3, H, W] → heatmaps [N, joints, H/4, W/4].
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        // Run on a pool thread: the kernels' parallel loops then split work among the workers
        // directly instead of each being injected from outside the pool and waited on.
        rayon::scope(|_| self.forward_on_pool(x))
    }

    fn forward_on_pool(&self, x: &Tensor) -> Result<Tensor> {
        let d = x.dims4("hrnet infer")?;
        if d[1] != 3 {
            bail!("hrnet infer: input must have 3 channels, got shape {:?}", x.shape());
        }
        let input = x.to_f32_vec();
        let mode = batch_mode();
        if d[0] > 1 && mode != BatchMode::Whole {
            // Image by image keeps every activation of an image in cache. Images in parallel (one
            // per worker, each still free to split its kernels when a worker idles) spare most of
            // the per-layer synchronisation of splitting every conv of one image.
            let per_image = d[1] * d[2] * d[3];
            let one = |img: &[f32]| self.forward_raw([1, d[1], d[2], d[3]], img);
            let ys = if mode == BatchMode::Parallel {
                input.par_chunks_exact(per_image).with_max_len(1).map(one).collect::<Result<Vec<Act>>>()?
            } else {
                input.chunks_exact(per_image).map(one).collect::<Result<Vec<Act>>>()?
            };
            let mut out = Vec::with_capacity(ys.iter().map(|y| y.data.len()).sum());
            let mut dims = [0; 4];
            for y in ys {
                dims = [d[0], y.dims[1], y.dims[2], y.dims[3]];
                out.extend_from_slice(&y.data);
                self.arena.give(y);
            }
            return Tensor::from_f32(&dims, out);
        }
        let y = self.forward_raw(d, &input)?;
        let dims = y.dims;
        Tensor::from_f32(&dims, y.data)
    }

    fn forward_raw(&self, d: [usize; 4], input: &[f32]) -> Result<Act> {
        let a = &self.arena;
        let y = self.conv(&self.stem[0], d, input, None)?;
        let mut y = self.conv_act(&self.stem[1], y, None)?;
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
                    None => self.copy(src),
                });
            }
            ys.into_iter().for_each(|y| a.give(y));
            ys = xs;
            for m in modules {
                ys = self.module(m, ys)?;
            }
        }
        // Head input: branch 0 and the others upsampled to its size, concatenated by channel.
        let [n, _, h, w] = ys[0].dims;
        let ctot: usize = ys.iter().map(|y| y.dims[1]).sum();
        let mut cat = a.act([n, ctot, h, w]);
        let plane = h * w;
        for b in 0..n {
            let mut c0 = 0;
            for y in &ys {
                let [_, c, yh, yw] = y.dims;
                let dst = &mut cat.data[(b * ctot + c0) * plane..][..c * plane];
                let src = &y.data[b * c * yh * yw..][..c * yh * yw];
                bilinear(src, c, [yh, yw], [h, w], dst, Into::Set);
                c0 += c;
            }
        }
        ys.into_iter().for_each(|y| a.give(y));
        let hdn = self.conv_act(&self.head0, cat, None)?;
        self.conv_act(&self.head3, hdn, None)
    }

    /// Conv on a raw input; `residual` (output-shaped) is added before the activation.
    fn conv(&self, f: &FConv, d: [usize; 4], x: &[f32], residual: Option<&Act>) -> Result<Act> {
        let g = Conv2dGeom::new(d, &f.wshape, f.stride, f.pad)?;
        let mut y = self.arena.act([g.n, g.cout, g.ho, g.wo]);
        if let Some(r) = residual {
            if r.dims != y.dims {
                bail!("hrnet infer: residual {:?} does not fit conv output {:?}", r.dims, y.dims);
            }
        }
        let ep = Epilogue { bias: Some(&f.b), residual: residual.map(|r| &r.data[..]), relu: f.relu };
        if winograd_pays(&g) {
            let u = f.winograd.get_or_init(|| {
                let mut u = vec![0.0; winograd::transformed_len(g.cin, g.cout)];
                winograd::transform_weights(&f.w, g.cin, g.cout, &mut u);
                u
            });
            winograd::forward_transformed(&g, x, u, ep, &mut y.data);
        } else {
            forward_fused(&g, x, &f.w, ep, &mut y.data);
        }
        Ok(y)
    }

    /// Conv that consumes its input (returned to the arena).
    fn conv_act(&self, f: &FConv, x: Act, residual: Option<&Act>) -> Result<Act> {
        let y = self.conv(f, x.dims, &x.data, residual)?;
        self.arena.give(x);
        Ok(y)
    }

    fn copy(&self, x: &Act) -> Act {
        let mut y = self.arena.act(x.dims);
        y.data.copy_from_slice(&x.data);
        y
    }

    fn chain(&self, links: &[FConv], x: &Act) -> Result<Act> {
        let (first, rest) = links.split_first().expect("a chain has ≥ 1 link");
        let mut y = self.conv(first, x.dims, &x.data, None)?;
        for l in rest {
            y = self.conv_act(l, y, None)?;
        }
        Ok(y)
    }

    /// relu(layers(x) + shortcut(x)), the add and ReLU fused into the last conv.
    fn block(&self, b: &FBlock, x: Act) -> Result<Act> {
        let (last, inner) = b.layers.split_last().expect("a block has ≥ 1 layer");
        let shortcut = match &b.downsample {
            Some(ds) => Some(self.conv(ds, x.dims, &x.data, None)?),
            None => None,
        };
        let mut y = None::<Act>;
        for l in inner {
            y = Some(match y {
                None => self.conv(l, x.dims, &x.data, None)?,
                Some(t) => self.conv_act(l, t, None)?,
            });
        }
        let res = shortcut.as_ref().unwrap_or(&x);
        let out = match y {
            None => self.conv(last, x.dims, &x.data, Some(res))?,
            Some(t) => self.conv_act(last, t, Some(res))?,
        };
        self.arena.give(x);
        if let Some(s) = shortcut {
            self.arena.give(s);
        }
        Ok(out)
    }

    fn module(&self, m: &FModule, xs: Vec<Act>) -> Result<Vec<Act>> {
        let run = |(x, blocks): (Act, &Vec<FBlock>)| {
            let mut y = x;
            for b in blocks {
                y = self.block(b, y)?;
            }
            Ok(y)
        };
        // Branches are independent: run them as rayon tasks (small maps leave GEMM threads idle).
        let ys = if concurrent_branches() {
            xs.into_par_iter().zip(m.branches.par_iter()).map(run).collect::<Result<Vec<Act>>>()?
        } else {
            xs.into_iter().zip(m.branches.iter()).map(run).collect::<Result<Vec<Act>>>()?
        };
        if m.fuse.is_empty() {
            return Ok(ys);
        }
        let row = |(i, row): (usize, &Vec<FFuse>)| self.fuse_row(i, row, m.last_term[i], &ys);
        let out = if concurrent_branches() {
            m.fuse.par_iter().enumerate().map(row).collect::<Result<Vec<Act>>>()?
        } else {
            m.fuse.iter().enumerate().map(row).collect::<Result<Vec<Act>>>()?
        };
        ys.into_iter().for_each(|y| self.arena.give(y));
        Ok(out)
    }

    /// relu(Σ_j fuse[i][j](ys[j])): the sum starts from the identity term and every other term is
    /// added in place (upsampled terms by an accumulating resize, downsampled chains as the residual
    /// of their last conv); the term added last (`last_term`) applies the ReLU.
    fn fuse_row(&self, i: usize, row: &[FFuse], last_term: Option<usize>, ys: &[Act]) -> Result<Act> {
        let mut acc = self.copy(&ys[i]);
        let [n, c, h, w] = acc.dims;
        for (j, f) in row.iter().enumerate() {
            match f {
                FFuse::Identity => {}
                FFuse::Up(l) => {
                    let t = self.conv(l, ys[j].dims, &ys[j].data, None)?;
                    let [_, tc, th, tw] = t.dims;
                    if tc != c {
                        bail!("hrnet infer: fuse {i}.{j} gives {tc} channels, branch has {c}");
                    }
                    let mode = if last_term == Some(j) { Into::AddRelu } else { Into::Add };
                    bilinear(&t.data, n * c, [th, tw], [h, w], &mut acc.data, mode);
                    self.arena.give(t);
                }
                FFuse::Down(links) => {
                    let (last, inner) = links.split_last().expect("a chain has ≥ 1 link");
                    let out = if inner.is_empty() {
                        self.conv(last, ys[j].dims, &ys[j].data, Some(&acc))?
                    } else {
                        let t = self.chain(inner, &ys[j])?;
                        self.conv_act(last, t, Some(&acc))?
                    };
                    self.arena.give(std::mem::replace(&mut acc, out));
                }
            }
        }
        if last_term.is_none() {
            acc.data.iter_mut().for_each(|v| *v = v.max(0.0));
        }
        Ok(acc)
    }

    /// Multiply-adds of the first conv (its input needs no gradient in training).
    pub fn first_conv_macs(&self, h: usize, w: usize) -> Result<u64> {
        Ok(Conv2dGeom::new([1, 3, h, w], &self.stem[0].wshape, self.stem[0].stride, self.stem[0].pad)?.macs())
    }

    /// Multiply-adds of all convs for an input of `h`×`w` (batch 1), head included.
    pub fn macs(&self, h: usize, w: usize) -> Result<u64> {
        let mut total = 0u64;
        let mut conv = |f: &FConv, d: [usize; 4]| -> Result<[usize; 4]> {
            let g = Conv2dGeom::new(d, &f.wshape, f.stride, f.pad)?;
            total += g.macs();
            Ok([1, g.cout, g.ho, g.wo])
        };
        let mut d = conv(&self.stem[0], [1, 3, h, w])?;
        d = conv(&self.stem[1], d)?;
        let block = |b: &FBlock, d: [usize; 4], conv: &mut dyn FnMut(&FConv, [usize; 4]) -> Result<[usize; 4]>| {
            let mut y = d;
            for l in &b.layers {
                y = conv(l, y)?;
            }
            if let Some(ds) = &b.downsample {
                conv(ds, d)?;
            }
            Ok::<_, anyhow::Error>(y)
        };
        for b in &self.layer1 {
            d = block(b, d, &mut conv)?;
        }
        let mut ds = vec![d];
        for (trans, modules) in self.transitions.iter().zip(&self.stages) {
            let mut xs = Vec::new();
            for (i, t) in trans.iter().enumerate() {
                let mut v = if i < ds.len() { ds[i] } else { *ds.last().expect("≥ 1 branch") };
                for l in t.iter().flatten() {
                    v = conv(l, v)?;
                }
                xs.push(v);
            }
            ds = xs;
            for m in modules {
                for (dv, blocks) in ds.iter_mut().zip(&m.branches) {
                    for b in blocks {
                        *dv = block(b, *dv, &mut conv)?;
                    }
                }
                for row in &m.fuse {
                    for (j, f) in row.iter().enumerate() {
                        match f {
                            FFuse::Identity => {}
                            FFuse::Up(l) => {
                                conv(l, ds[j])?;
                            }
                            FFuse::Down(ls) => {
                                let mut v = ds[j];
                                for l in ls {
                                    v = conv(l, v)?;
                                }
                            }
                        }
                    }
                }
            }
        }
        let ctot: usize = ds.iter().map(|d| d[1]).sum();
        let hd = conv(&self.head0, [1, ctot, ds[0][2], ds[0][3]])?;
        conv(&self.head3, hd)?;
        Ok(total)
    }
}

/// What a folded plan was built from: the ids of the model's tensors and the engine's storage-write
/// count (any optimizer step, BN update or loaded weight changes it).
fn weights_key(net: &HrNet) -> WeightsKey {
    let ids = (0..net.store.len())
        .filter_map(|i| match net.store.slot(i) {
            Slot::Param(t) | Slot::Buffer(t) => Some(t.id()),
            Slot::Count(_) => None,
        })
        .collect();
    (ids, crate::tensor::storage_writes())
}

type WeightsKey = (Vec<u64>, u64);

/// The last plan built, with the key it was built for.
type PlanCache<K, P> = Mutex<Option<(K, Arc<P>)>>;

/// The plan cached in `cache` when it was built for `key`, else a new one from `build` (the old
/// plan dropped first, so its memory is free for the new one).
fn cached_plan<K: PartialEq, P>(cache: &PlanCache<K, P>, key: K, build: impl FnOnce() -> Result<P>) -> Result<Arc<P>> {
    let mut cache = cache.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((k, plan)) = cache.as_ref() {
        if *k == key {
            return Ok(plan.clone());
        }
    }
    *cache = None;
    let plan = Arc::new(build()?);
    *cache = Some((key, plan.clone()));
    Ok(plan)
}

/// The CPU engine of the last model seen, with its `weights_key`.
static CPU_CACHE: PlanCache<WeightsKey, InferNet> = Mutex::new(None);

/// The eval forward used by `hrk test` / `predict` / validation for an f32 model on the CPU: the
/// folded engine, built once per set of weights (`HRK_CPU_INFER=graph`: None, so the caller runs
/// `HrNet::forward`). Returns the heatmaps with their dims.
pub fn forward_heatmaps_cpu(net: &HrNet, input: &[f32], shape: [usize; 4]) -> Result<Option<(Vec<f32>, [usize; 4])>> {
    let f32_params = net.store.params().first().is_none_or(|t| t.dtype() == DType::F32);
    if net.device() != Device::Cpu || !f32_params || std::env::var("HRK_CPU_INFER").is_ok_and(|v| v == "graph") {
        return Ok(None);
    }
    let engine = cached_plan(&CPU_CACHE, weights_key(net), || InferNet::new(net))?;
    let x = Tensor::from_f32(&shape, input.to_vec())?;
    let y = engine.forward(&x)?;
    let dims = y.dims4("hrnet infer")?;
    Ok(Some((y.to_f32_vec(), dims)))
}

/// `HRK_INFER_SERIAL=1` runs branches one after another (for benchmarking the concurrency).
fn concurrent_branches() -> bool {
    static OFF: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    !*OFF.get_or_init(|| std::env::var("HRK_INFER_SERIAL").is_ok_and(|v| v == "1"))
}

/// How `bilinear` stores a resized value.
#[derive(Clone, Copy, PartialEq)]
enum Into {
    Set,
    Add,
    /// dst = max(dst + v, 0): the last term of a fuse row.
    AddRelu,
}

/// Bilinear resize (align_corners=false, PyTorch's source-index rule, as `ops::upsample_bilinear`) of
/// `planes` planes into `dst` per `mode`. Separable: each source row is resized horizontally once,
/// then every output row is a blend of two of those rows (contiguous, vectorised), with the same
/// arithmetic as the direct 4-tap formula. Same size is a plain copy / add.
fn bilinear(src: &[f32], planes: usize, from: [usize; 2], to: [usize; 2], dst: &mut [f32], mode: Into) {
    let ([h, w], [ho, wo]) = (from, to);
    // One output row from two horizontally resized rows (monomorphic per mode, so it vectorises).
    let blend = |out: &mut [f32], r0: &[f32], r1: &[f32], ly0: f32, ly1: f32| {
        let vals = out.iter_mut().zip(r0.iter().zip(r1));
        match mode {
            Into::Set => vals.for_each(|(o, (&a, &b))| *o = ly0 * a + ly1 * b),
            Into::Add => vals.for_each(|(o, (&a, &b))| *o += ly0 * a + ly1 * b),
            Into::AddRelu => vals.for_each(|(o, (&a, &b))| *o = (*o + (ly0 * a + ly1 * b)).max(0.0)),
        }
    };
    if from == to {
        let n = planes * h * w;
        match mode {
            Into::Set => dst[..n].copy_from_slice(&src[..n]),
            Into::Add => dst[..n].iter_mut().zip(src).for_each(|(d, &s)| *d += s),
            Into::AddRelu => dst[..n].iter_mut().zip(src).for_each(|(d, &s)| *d = (*d + s).max(0.0)),
        }
        return;
    }
    let taps = |input: usize, output: usize| -> Vec<(usize, usize, f32, f32)> {
        let scale = (input as f64 / output as f64) as f32;
        (0..output)
            .map(|d| {
                let s = (scale * (d as f32 + 0.5) - 0.5).max(0.0);
                let i0 = (s as usize).min(input - 1);
                let i1 = if i0 < input - 1 { i0 + 1 } else { i0 };
                let l1 = s - i0 as f32;
                (i0, i1, 1.0 - l1, l1)
            })
            .collect()
    };
    let (ty, tx) = (taps(h, ho), taps(w, wo));
    let mut rows = vec![0.0f32; h * wo];
    for p in 0..planes {
        let s = &src[p * h * w..][..h * w];
        for (r, row) in rows.chunks_exact_mut(wo).enumerate() {
            let sr = &s[r * w..][..w];
            row.iter_mut().zip(&tx).for_each(|(o, &(x0, x1, lx0, lx1))| *o = lx0 * sr[x0] + lx1 * sr[x1]);
        }
        let d = &mut dst[p * ho * wo..][..ho * wo];
        for (out, &(y0, y1, ly0, ly1)) in d.chunks_exact_mut(wo).zip(&ty) {
            blend(out, &rows[y0 * wo..][..wo], &rows[y1 * wo..][..wo], ly0, ly1);
        }
    }
}

#[derive(Clone, Copy, PartialEq)]
enum BatchMode {
    /// Images in parallel, one per worker (the default).
    Parallel,
    /// One image after another (`HRK_INFER_BATCH=sequential`).
    Sequential,
    /// The whole batch through each layer at once (`HRK_INFER_BATCH=whole`).
    Whole,
}

fn batch_mode() -> BatchMode {
    static MODE: std::sync::OnceLock<BatchMode> = std::sync::OnceLock::new();
    *MODE.get_or_init(|| match std::env::var("HRK_INFER_BATCH").as_deref() {
        Ok("whole") => BatchMode::Whole,
        Ok("sequential") => BatchMode::Sequential,
        _ => BatchMode::Parallel,
    })
}
