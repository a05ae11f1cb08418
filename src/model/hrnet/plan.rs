//! The network's layer plan: one structure (stem → layer1 → transitions → stages of modules with
//! branches of blocks and fuse rows → head) with a payload per conv. The model holds it with store
//! indices (`Plan<ConvBn>`: conv, BN and ReLU flag); each engine maps it to its own payload with
//! `Plan::try_map` (folded host weights, device buffers, conv shapes), and `walk::forward` walks it.

use super::spec::{BlockKind, HrnetSpec, StageSpec};
use crate::model::store::Store;
use crate::ops::BN_EPS;
use crate::rng::Rng;
use crate::tensor::{DType, Tensor};
use anyhow::{bail, Context, Result};

/// A conv's store slots and geometry.
#[derive(Clone, Copy, Debug)]
pub struct Conv {
    pub weight: usize,
    pub bias: Option<usize>,
    pub stride: usize,
    pub pad: usize,
}

/// A BatchNorm's store slots.
#[derive(Clone, Copy, Debug)]
pub struct Bn {
    pub gamma: usize,
    pub beta: usize,
    pub running_mean: usize,
    pub running_var: usize,
    pub batches_tracked: usize,
}

/// conv (→ BN) (→ ReLU): the model's conv node. Only the head's last conv has no BN.
#[derive(Clone, Copy, Debug)]
pub struct ConvBn {
    pub conv: Conv,
    pub bn: Option<Bn>,
    pub relu: bool,
}

/// A conv with its eval-mode BN folded in: y = act(W'·x + b'), as host f32 values (`fold_plan`).
#[derive(Debug)]
pub struct FoldedConv {
    pub w: Vec<f32>,
    pub b: Vec<f32>,
    pub wshape: [usize; 4],
    pub stride: usize,
    pub pad: usize,
    pub relu: bool,
}

/// A residual block: relu(layers(x) + downsample(x) or x). The layers' ReLU flags are their own; the
/// block's closing ReLU is the executor's (`Executor::block_out`).
#[derive(Clone, Debug)]
pub struct PlanBlock<C> {
    pub layers: Vec<C>,
    pub downsample: Option<C>,
}

/// One term of a fuse row: output branch i gets Σ_j term(i, j)(branch j), then ReLU.
#[derive(Clone, Debug)]
pub enum PlanFuse<C> {
    /// j == i.
    Identity,
    /// j > i: conv1x1 + BN, then bilinear resize to branch i's size.
    Up(C),
    /// j < i: a chain of stride-2 conv3x3 + BN (ReLU between links only).
    Down(Vec<C>),
}

/// A HighResolutionModule: branches of blocks, then the fuse rows (none for one branch).
#[derive(Clone, Debug)]
pub struct PlanModule<C> {
    pub branches: Vec<Vec<PlanBlock<C>>>,
    pub fuse: Vec<Vec<PlanFuse<C>>>,
}

/// A transition slot: identity, or a chain of conv3x3 + BN + ReLU links.
pub type Transition<C> = Option<Vec<C>>;

/// The whole network, generic over how a conv is held.
#[derive(Clone, Debug)]
pub struct Plan<C> {
    pub stem: [C; 2],
    pub layer1: Vec<PlanBlock<C>>,
    pub transitions: Vec<Vec<Transition<C>>>,
    pub stages: Vec<Vec<PlanModule<C>>>,
    /// conv1x1 + BN + ReLU on the concatenated branches.
    pub head0: C,
    /// The last conv, giving the heatmaps (no BN, no ReLU).
    pub head3: C,
}

impl<C> Plan<C> {
    /// The same plan with every conv converted by `f`, which cannot fail.
    pub fn map<D>(&self, mut f: impl FnMut(&C) -> D) -> Plan<D> {
        let converted: Result<Plan<D>, std::convert::Infallible> = self.try_map(&mut |c| Ok(f(c)));
        converted.unwrap_or_else(|never| match never {})
    }

    /// The same plan with every conv converted by `f`, in layer order (the order `Builder` registered
    /// them in).
    pub fn try_map<D, E>(&self, f: &mut impl FnMut(&C) -> Result<D, E>) -> Result<Plan<D>, E> {
        fn all<C, D, E>(cs: &[C], f: &mut impl FnMut(&C) -> Result<D, E>) -> Result<Vec<D>, E> {
            cs.iter().map(&mut *f).collect()
        }
        fn blocks<C, D, E>(
            bs: &[PlanBlock<C>], f: &mut impl FnMut(&C) -> Result<D, E>,
        ) -> Result<Vec<PlanBlock<D>>, E> {
            bs.iter()
                .map(|b| {
                    Ok(PlanBlock {
                        layers: all(&b.layers, f)?,
                        downsample: b.downsample.as_ref().map(&mut *f).transpose()?,
                    })
                })
                .collect()
        }
        let stem = [f(&self.stem[0])?, f(&self.stem[1])?];
        let layer1 = blocks(&self.layer1, f)?;
        let mut transitions = Vec::with_capacity(self.transitions.len());
        let mut stages = Vec::with_capacity(self.stages.len());
        for (ts, ms) in self.transitions.iter().zip(&self.stages) {
            transitions.push(ts.iter().map(|t| t.as_ref().map(|cs| all(cs, f)).transpose()).collect::<Result<_, E>>()?);
            let mut modules = Vec::with_capacity(ms.len());
            for m in ms {
                let branches = m.branches.iter().map(|bs| blocks(bs, f)).collect::<Result<_, E>>()?;
                let mut fuse = Vec::with_capacity(m.fuse.len());
                for row in &m.fuse {
                    let mut terms = Vec::with_capacity(row.len());
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
        Ok(Plan { stem, layer1, transitions, stages, head0: f(&self.head0)?, head3: f(&self.head3)? })
    }
}

/// Registers the parameters in the official state_dict order and init while building the plan.
struct Builder<'a> {
    store: Store,
    rng: &'a mut Rng,
}

impl Builder<'_> {
    /// Official init: conv weights N(0, 0.001); conv biases PyTorch's default U(±1/√fan_in).
    fn conv(&mut self, name: &str, wshape: [usize; 4], stride: usize, pad: usize, bias: bool) -> Conv {
        let [cout, cin, kh, kw] = wshape;
        let weight = self.store.add_param(format!("{name}.weight"), Store::normal(self.rng, &wshape, 0.001));
        let bias = bias.then(|| {
            let bound = 1.0 / ((cin * kh * kw) as f64).sqrt();
            self.store.add_param(format!("{name}.bias"), Store::uniform(self.rng, &[cout], bound))
        });
        Conv { weight, bias, stride, pad }
    }

    fn bn(&mut self, name: &str, c: usize) -> Bn {
        let s = &mut self.store;
        Bn {
            gamma: s.add_param(format!("{name}.weight"), Tensor::full(&[c], DType::F32, 1.0)),
            beta: s.add_param(format!("{name}.bias"), Tensor::zeros(&[c], DType::F32)),
            running_mean: s.add_buffer(format!("{name}.running_mean"), Tensor::zeros(&[c], DType::F32)),
            running_var: s.add_buffer(format!("{name}.running_var"), Tensor::full(&[c], DType::F32, 1.0)),
            batches_tracked: s.add_count(format!("{name}.num_batches_tracked")),
        }
    }

    /// A k×k conv (padded by k/2, no bias) named `conv`, then a BN named `bn` (as the official modules
    /// name them).
    fn conv_bn_named(
        &mut self, [conv, bn]: [&str; 2], cin: usize, cout: usize, k: usize, stride: usize, relu: bool,
    ) -> ConvBn {
        let c = self.conv(conv, [cout, cin, k, k], stride, k / 2, false);
        let b = self.bn(bn, cout);
        ConvBn { conv: c, bn: Some(b), relu }
    }

    /// Sequential(conv, BN[, ReLU]) registered as `{name}.0` / `{name}.1`.
    fn conv_bn(&mut self, name: &str, cin: usize, cout: usize, k: usize, stride: usize, relu: bool) -> ConvBn {
        self.conv_bn_named([&format!("{name}.0"), &format!("{name}.1")], cin, cout, k, stride, relu)
    }

    fn block(&mut self, name: &str, kind: BlockKind, cin: usize, planes: usize, stride: usize) -> PlanBlock<ConvBn> {
        let cout = planes * kind.expansion();
        let mut link = |idx: usize, ci: usize, co: usize, k: usize, s: usize, relu: bool| {
            self.conv_bn_named([&format!("{name}.conv{idx}"), &format!("{name}.bn{idx}")], ci, co, k, s, relu)
        };
        let layers = match kind {
            BlockKind::Basic => vec![link(1, cin, planes, 3, stride, true), link(2, planes, planes, 3, 1, false)],
            BlockKind::Bottleneck => vec![
                link(1, cin, planes, 1, 1, true),
                link(2, planes, planes, 3, stride, true),
                link(3, planes, cout, 1, 1, false),
            ],
        };
        let downsample = (stride != 1 || cin != cout)
            .then(|| self.conv_bn(&format!("{name}.downsample"), cin, cout, 1, stride, false));
        PlanBlock { layers, downsample }
    }

    fn transition(&mut self, name: &str, prev: &[usize], cur: &[usize]) -> Vec<Transition<ConvBn>> {
        let mut out = Vec::new();
        for (i, &c) in cur.iter().enumerate() {
            if i < prev.len() {
                out.push((prev[i] != c).then(|| vec![self.conv_bn(&format!("{name}.{i}"), prev[i], c, 3, 1, true)]));
            } else {
                let src = *prev.last().expect("stages have ≥ 1 branch");
                let steps = i + 1 - prev.len();
                let chain = (0..steps)
                    .map(|k| {
                        let co = if k == steps - 1 { c } else { src };
                        self.conv_bn(&format!("{name}.{i}.{k}"), src, co, 3, 2, true)
                    })
                    .collect();
                out.push(Some(chain));
            }
        }
        out
    }

    /// One HighResolutionModule; `inch` is updated to its output channels.
    fn module(&mut self, name: &str, s: &StageSpec, inch: &mut [usize]) -> PlanModule<ConvBn> {
        let mut branches = Vec::new();
        for (b, width) in inch.iter_mut().enumerate().take(s.num_branches) {
            let kind = s.block;
            let planes = s.num_channels[b];
            // Official _make_one_branch: the first block may project (stride 1 here).
            let mut blocks = vec![self.block(&format!("{name}.branches.{b}.0"), kind, *width, planes, 1)];
            *width = planes * kind.expansion();
            for k in 1..s.num_blocks[b] {
                blocks.push(self.block(&format!("{name}.branches.{b}.{k}"), kind, *width, planes, 1));
            }
            branches.push(blocks);
        }
        let mut fuse = Vec::new();
        if s.num_branches > 1 {
            for i in 0..s.num_branches {
                let mut row = Vec::new();
                for j in 0..s.num_branches {
                    let f = if j > i {
                        let conv =
                            self.conv(&format!("{name}.fuse_layers.{i}.{j}.0"), [inch[i], inch[j], 1, 1], 1, 0, false);
                        let bn = self.bn(&format!("{name}.fuse_layers.{i}.{j}.1"), inch[i]);
                        PlanFuse::Up(ConvBn { conv, bn: Some(bn), relu: false })
                    } else if j == i {
                        PlanFuse::Identity
                    } else {
                        let steps = i - j;
                        PlanFuse::Down(
                            (0..steps)
                                .map(|k| {
                                    let last = k == steps - 1;
                                    let co = if last { inch[i] } else { inch[j] };
                                    self.conv_bn(&format!("{name}.fuse_layers.{i}.{j}.{k}"), inch[j], co, 3, 2, !last)
                                })
                                .collect(),
                        )
                    };
                    row.push(f);
                }
                fuse.push(row);
            }
        }
        PlanModule { branches, fuse }
    }
}

/// The network of `spec` with the official random init (seeded): its parameters in state_dict order and
/// its plan pointing at them. `spec` must be valid.
pub(super) fn build(spec: &HrnetSpec, seed: u64) -> (Store, Plan<ConvBn>) {
    let mut rng = Rng::new(seed);
    let mut b = Builder { store: Store::default(), rng: &mut rng };
    let stem =
        [b.conv_bn_named(["conv1", "bn1"], 3, 64, 3, 2, true), b.conv_bn_named(["conv2", "bn2"], 64, 64, 3, 2, true)];
    let bottleneck = BlockKind::Bottleneck;
    let mut layer1 = vec![b.block("layer1.0", bottleneck, 64, 64, 1)];
    for i in 1..4 {
        layer1.push(b.block(&format!("layer1.{i}"), bottleneck, 64 * bottleneck.expansion(), 64, 1));
    }
    let mut prev = vec![64 * bottleneck.expansion()];
    let mut transitions = Vec::new();
    let mut stages = Vec::new();
    for (k, s) in spec.stages.iter().enumerate() {
        let cur: Vec<usize> = s.num_channels.iter().map(|c| c * s.block.expansion()).collect();
        transitions.push(b.transition(&format!("transition{}", k + 1), &prev, &cur));
        let mut inch = cur.clone();
        let modules = (0..s.num_modules).map(|m| b.module(&format!("stage{}.{m}", k + 2), s, &mut inch)).collect();
        stages.push(modules);
        prev = inch;
    }
    let c: usize = prev.iter().sum();
    let k = spec.final_conv_kernel;
    // head.0 is a 1x1 conv; the reference pads it by 1 when FINAL_CONV_KERNEL is 3, which would
    // grow the map — hrk pads it by 0 (documented deviation; the official configs use 1).
    let h0 = b.conv("head.0", [c, c, 1, 1], 1, 0, true);
    let h1 = b.bn("head.1", c);
    let h3 = b.conv("head.3", [spec.num_joints, c, k, k], 1, k / 2, true);
    let head0 = ConvBn { conv: h0, bn: Some(h1), relu: true };
    let head3 = ConvBn { conv: h3, bn: None, relu: false };
    (b.store, Plan { stem, layer1, transitions, stages, head0, head3 })
}

/// Folds the model's eval-mode BN into its convs: BN(Wx + c) = γ/σ·(Wx + c − μ) + β, so
/// W' = W·γ/σ and b' = (c − μ)·γ/σ + β, computed in f64 and rounded once to f32. The model's tensors
/// may live on any device. The CPU, GPU and ONNX executors all run these weights.
pub(super) fn fold_plan(store: &Store, plan: &Plan<ConvBn>) -> Result<Plan<FoldedConv>> {
    fold_plan_with(store, plan, &mut |f| f)
}

/// `fold_plan`, each folded conv handed to `make` (moved, not copied) for an executor's own payload.
pub(super) fn fold_plan_with<D>(
    store: &Store, plan: &Plan<ConvBn>, make: &mut impl FnMut(FoldedConv) -> D,
) -> Result<Plan<D>> {
    let read = |i: usize| -> Result<Vec<f64>> {
        store.tensor(i).try_to_f64_vec().with_context(|| format!("infer: reading `{}`", store.name(i)))
    };
    plan.try_map(&mut |l: &ConvBn| -> Result<D> {
        let c = &l.conv;
        let wt = store.tensor(c.weight);
        let wshape = match *wt.shape() {
            [a, b, k1, k2] => [a, b, k1, k2],
            _ => bail!("infer: conv weight {} is not 4-d: {:?}", store.name(c.weight), wt.shape()),
        };
        let mut w = read(c.weight)?;
        let mut b = match c.bias {
            Some(b) => read(b)?,
            None => vec![0.0; wshape[0]],
        };
        if let Some(bn) = &l.bn {
            let (g, bt, rm, rv) = (read(bn.gamma)?, read(bn.beta)?, read(bn.running_mean)?, read(bn.running_var)?);
            let per = w.len() / wshape[0].max(1);
            for co in 0..wshape[0] {
                let scale = g[co] / (rv[co] + BN_EPS).sqrt();
                w[co * per..(co + 1) * per].iter_mut().for_each(|v| *v *= scale);
                b[co] = (b[co] - rm[co]) * scale + bt[co];
            }
        }
        let f32s = |v: Vec<f64>| v.into_iter().map(|x| x as f32).collect::<Vec<f32>>();
        Ok(make(FoldedConv { w: f32s(w), b: f32s(b), wshape, stride: c.stride, pad: c.pad, relu: l.relu }))
    })
}
