//! The CPU inference engine (eval-mode BN) on raw f32 buffers: BN folded into the conv weights, conv
//! epilogues fused (bias, residual add, ReLU), fuse-row sums accumulated in place, branches and fuse
//! rows run concurrently, images of a batch in parallel, and activations drawn from a reusable arena.
//! Same output as `HrNet::forward(x, false)` within f32 rounding; at `Precision::Bf16` the folded
//! weights and every conv's input are rounded to bf16, products summed in f32: by the AVX512-BF16
//! kernels where the CPU has them, emulated in f32 arithmetic otherwise (see `model::precision`).

use super::flops::{self, ConvShape};
use super::plan::{fold_plan_with, FoldedConv, Plan};
use super::walk::{self, Executor, Term};
use crate::float::{round_bf16, round_bf16_slice};
use crate::model::precision::Precision;
use crate::ops::conv2d::algorithm::{choose, Arithmetic, ConvAlgorithm, Pass};
use crate::ops::conv2d::cpu_kernel::{forward_fused, Epilogue};
use crate::ops::conv2d::direct::{bf16, winograd};
use crate::ops::upsample::cpu_kernel::{bilinear_into, WriteMode};
use crate::ops::Conv2dGeom;
use crate::tensor::Tensor;
use anyhow::{bail, Result};
use rayon::prelude::*;
use std::sync::Mutex;

/// A folded conv (`plan::FoldedConv`) with the engine's caches of its weights in other forms.
#[derive(Debug)]
pub(super) struct FConv {
    conv: FoldedConv,
    /// The Winograd-transformed weights, made at the first forward that takes that path.
    winograd: std::sync::OnceLock<Vec<f32>>,
    /// The weights packed for the bf16 kernels, made at the first bf16 forward.
    bf16: bf16::Bf16Weights,
}

impl FConv {
    fn shape(&self) -> ConvShape {
        let c = &self.conv;
        ConvShape { wshape: c.wshape, stride: c.stride, pad: c.pad }
    }
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
    /// An allocation that fails is an error naming the activation and its size, not an abort.
    fn take(&self, len: usize) -> Result<Vec<f32>> {
        let mut free = self.free.lock().unwrap_or_else(|e| e.into_inner());
        let by_len =
            free.iter().enumerate().filter(|(_, v)| v.len() >= len).min_by_key(|(_, v)| v.len()).map(|(i, _)| i);
        let best = by_len.or_else(|| {
            free.iter()
                .enumerate()
                .filter(|(_, v)| v.capacity() >= len)
                .min_by_key(|(_, v)| v.capacity())
                .map(|(i, _)| i)
        });
        let mut v = match best {
            Some(i) => free.swap_remove(i),
            None => {
                drop(free);
                return crate::memory_budget::try_zeroed_vec(len, "an inference activation");
            }
        };
        drop(free);
        if v.len() < len {
            // Within the buffer's capacity (chosen by it): no reallocation.
            v.resize(len, 0.0);
        } else {
            v.truncate(len);
        }
        Ok(v)
    }
    fn put(&self, v: Vec<f32>) {
        self.free.lock().unwrap_or_else(|e| e.into_inner()).push(v);
    }
    fn act(&self, dims: [usize; 4]) -> Result<Act> {
        Ok(Act { dims, data: self.take(dims.iter().product())? })
    }
    fn give(&self, a: Act) {
        self.put(a.data)
    }
}

/// The folded network. Build once from a model (after loading weights), then call `forward`.
pub struct InferNet {
    plan: Plan<FConv>,
    arena: Arena,
    precision: Precision,
}

impl InferNet {
    pub fn new(net: &super::HrNet) -> Result<InferNet> {
        InferNet::with_precision(net, Precision::F32)
    }

    /// The engine at `precision` exactly as given (callers resolve a user's request first:
    /// `Precision::resolve_cpu`).
    pub fn with_precision(net: &super::HrNet, precision: Precision) -> Result<InferNet> {
        // At bf16 the folded weights are rounded once here (`Precision::Bf16`: W' then to bf16).
        let plan = fold_plan_with(&net.store, &net.plan, &mut |mut conv: FoldedConv| {
            if precision == Precision::Bf16 {
                round_bf16_slice(&mut conv.w);
            }
            FConv { conv, winograd: Default::default(), bf16: Default::default() }
        })?;
        Ok(InferNet { plan, arena: Arena::default(), precision })
    }

    pub fn precision(&self) -> Precision {
        self.precision
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
        if d[0] > 1 {
            // Images in parallel, one per worker (each still free to split its kernels when a worker
            // idles): every activation of an image stays in cache, and most of the per-layer
            // synchronisation of splitting every conv of one image is spared.
            let per_image = d[1] * d[2] * d[3];
            let one = |img: &[f32]| self.forward_raw([1, d[1], d[2], d[3]], img);
            let ys = input.par_chunks_exact(per_image).with_max_len(1).map(one).collect::<Result<Vec<Act>>>()?;
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
        let mut x = self.arena.act(d)?;
        x.data.copy_from_slice(input);
        walk::forward(&self.plan, &mut CpuExec { arena: &self.arena, precision: self.precision }, x)
    }

    /// Multiply-adds of the first conv (its input needs no gradient in training).
    pub fn first_conv_macs(&self, h: usize, w: usize) -> Result<u64> {
        flops::first_conv_macs(&self.shapes(), h, w)
    }

    /// Multiply-adds of all convs for an input of `h`×`w` (batch 1), head included.
    pub fn macs(&self, h: usize, w: usize) -> Result<u64> {
        flops::macs(&self.shapes(), h, w)
    }

    fn shapes(&self) -> Plan<ConvShape> {
        self.plan.map(FConv::shape)
    }
}

/// The engine as the walk sees it: kernels on arena buffers. Copied freely (one per concurrent task).
#[derive(Clone, Copy)]
struct CpuExec<'a> {
    arena: &'a Arena,
    precision: Precision,
}

impl CpuExec<'_> {
    /// Conv of `x`; `residual` (output-shaped) is added before the activation, `relu` applied last.
    fn run(&self, fc: &FConv, x: &Act, residual: Option<&Act>, relu: bool) -> Result<Act> {
        let f = &fc.conv;
        let g = Conv2dGeom::new(x.dims, &f.wshape, f.stride, f.pad)?;
        let mut y = self.arena.act([g.n, g.cout, g.ho, g.wo])?;
        if let Some(r) = residual {
            if r.dims != y.dims {
                bail!("hrnet infer: residual {:?} does not fit conv output {:?}", r.dims, y.dims);
            }
        }
        let ep = Epilogue { bias: Some(&f.b), residual: residual.map(|r| &r.data[..]), relu };
        if self.precision == Precision::Bf16 {
            if bf16::available() && bf16::applies(&g) {
                bf16::forward(&g, &x.data, &f.w, &fc.bf16, ep, &mut y.data);
                return Ok(y);
            }
            // Emulated: the conv reads its input rounded to bf16; Winograd's transforms would leave
            // bf16, so convs run directly (products of bf16 values are exact in f32, the sums are f32).
            let mut xb = self.arena.take(x.data.len())?;
            xb.iter_mut().zip(&x.data).for_each(|(d, &v)| *d = round_bf16(v));
            forward_fused(&g, &xb, &f.w, ep, &mut y.data);
            self.arena.put(xb);
            return Ok(y);
        }
        if choose(&g, Pass::Inference, Arithmetic::F32) == ConvAlgorithm::Winograd {
            let u = fc.winograd.get_or_init(|| {
                let mut u = vec![0.0; winograd::transformed_len(g.cin, g.cout)];
                winograd::transform_weights(&f.w, g.cin, g.cout, &mut u);
                u
            });
            winograd::forward_transformed(&g, &x.data, u, ep, &mut y.data);
        } else {
            forward_fused(&g, &x.data, &f.w, ep, &mut y.data);
        }
        Ok(y)
    }
}

/// A fuse row's sum, started from the identity term; the term added last (`Term::last_added`)
/// applies the ReLU (in its conv epilogue for a downsampling chain, in the resize for an up term).
struct RowSum {
    acc: Act,
    relu_done: bool,
}

impl Executor for CpuExec<'_> {
    type Act = Act;
    type Conv = FConv;
    type Row = RowSum;

    fn conv(&mut self, f: &FConv, x: &Act) -> Result<Act> {
        self.run(f, x, None, f.conv.relu)
    }

    /// relu(last(y) + shortcut), the add and ReLU fused into the last conv.
    fn block_out(&mut self, last: &FConv, y: &Act, x: &Act, downsample: Option<&FConv>) -> Result<Act> {
        let shortcut = downsample.map(|d| self.run(d, x, None, d.conv.relu)).transpose()?;
        let out = self.run(last, y, Some(shortcut.as_ref().unwrap_or(x)), true);
        if let Some(s) = shortcut {
            self.arena.give(s);
        }
        out
    }

    fn copy(&mut self, x: &Act) -> Result<Act> {
        let mut y = self.arena.act(x.dims)?;
        y.data.copy_from_slice(&x.data);
        Ok(y)
    }

    fn release(&mut self, x: Act) {
        self.arena.give(x);
    }

    fn row_begin(&mut self, _row: usize, target: &Act) -> Result<RowSum> {
        Ok(RowSum { acc: self.copy(target)?, relu_done: false })
    }

    fn row_identity(&mut self, _sum: &mut RowSum, _y: &Act, _term: Term) -> Result<()> {
        Ok(())
    }

    /// Added in place by an accumulating resize.
    fn row_up(&mut self, sum: &mut RowSum, conv: &FConv, y: &Act, _target: &Act, term: Term) -> Result<()> {
        let t = self.run(conv, y, None, conv.conv.relu)?;
        let [n, c, h, w] = sum.acc.dims;
        let [_, tc, th, tw] = t.dims;
        if tc != c {
            bail!("hrnet infer: fuse {}.{} gives {tc} channels, branch has {c}", term.row, term.col);
        }
        let mode = if term.last_added { WriteMode::AddRelu } else { WriteMode::Add };
        bilinear_into(&t.data, n * c, [th, tw], [h, w], &mut sum.acc.data, mode);
        self.arena.give(t);
        sum.relu_done |= term.last_added;
        Ok(())
    }

    /// Added as the residual of the chain's last conv.
    fn row_down(&mut self, sum: &mut RowSum, last_link: &FConv, y: &Act, term: Term) -> Result<()> {
        let out = self.run(last_link, y, Some(&sum.acc), last_link.conv.relu || term.last_added)?;
        self.arena.give(std::mem::replace(&mut sum.acc, out));
        sum.relu_done |= term.last_added;
        Ok(())
    }

    fn row_end(&mut self, mut sum: RowSum, _target: &Act) -> Result<Act> {
        if !sum.relu_done {
            sum.acc.data.iter_mut().for_each(|v| *v = v.max(0.0));
        }
        Ok(sum.acc)
    }

    fn head_input(&mut self, branches: &[Act]) -> Result<Act> {
        let Some(first) = branches.first() else { bail!("hrnet infer: the head got no branch") };
        let [n, _, h, w] = first.dims;
        let ctot: usize = branches.iter().map(|y| y.dims[1]).sum();
        let mut cat = self.arena.act([n, ctot, h, w])?;
        let plane = h * w;
        for b in 0..n {
            let mut c0 = 0;
            for y in branches {
                let [_, c, yh, yw] = y.dims;
                let dst = &mut cat.data[(b * ctot + c0) * plane..][..c * plane];
                let src = &y.data[b * c * yh * yw..][..c * yh * yw];
                bilinear_into(src, c, [yh, yw], [h, w], dst, WriteMode::Set);
                c0 += c;
            }
        }
        Ok(cat)
    }

    /// Branches and fuse rows are independent: rayon tasks (small maps leave GEMM threads idle).
    fn each<T: Send>(&mut self, items: Vec<T>, run: impl Fn(&mut Self, T) -> Result<Act> + Sync) -> Result<Vec<Act>> {
        let exec = *self;
        items.into_par_iter().map(|item| run(&mut { exec }, item)).collect()
    }
}
