//! HighResolutionNet (HRNetV2) for face alignment, built from MODEL.EXTRA-style stage specs, with the
//! official state_dict names and the official forward order (REFERENCE.md §5).

use super::store::Store;
use crate::ops;
use crate::rng::Rng;
use crate::tensor::Tensor;
use anyhow::{bail, Result};

/// The official code's BN momentum for this model.
pub const BN_MOMENTUM: f64 = 0.01;

pub use crate::config::BlockKind;

// A child module so the inference path can read the private layer plan (file: src/model/infer.rs).
#[path = "infer.rs"]
pub mod infer;

/// One of STAGE2/3/4.
#[derive(Clone, Debug, PartialEq)]
pub struct StageSpec {
    pub num_modules: usize,
    pub num_branches: usize,
    pub block: BlockKind,
    pub num_blocks: Vec<usize>,
    pub num_channels: Vec<usize>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct HrnetSpec {
    pub num_joints: usize,
    pub final_conv_kernel: usize,
    pub stages: Vec<StageSpec>,
}

impl HrnetSpec {
    /// HRNetV2-W18 as in the official face configs.
    pub fn w18(num_joints: usize) -> HrnetSpec {
        let st = |m, b: usize, c: &[usize]| StageSpec {
            num_modules: m,
            num_branches: b,
            block: BlockKind::Basic,
            num_blocks: vec![4; b],
            num_channels: c.to_vec(),
        };
        HrnetSpec { num_joints, final_conv_kernel: 1, stages: vec![st(1, 2, &[18, 36]), st(4, 3, &[18, 36, 72]), st(3, 4, &[18, 36, 72, 144])] }
    }

    /// MODEL.NUM_JOINTS and MODEL.EXTRA of a loaded config.
    pub fn from_config(cfg: &crate::config::Config) -> Result<HrnetSpec> {
        let e = &cfg.model.extra;
        let stage = |s: &crate::config::StageConfig| StageSpec {
            num_modules: s.num_modules,
            num_branches: s.num_branches,
            block: s.block,
            num_blocks: s.num_blocks.clone(),
            num_channels: s.num_channels.clone(),
        };
        let spec = HrnetSpec {
            num_joints: cfg.model.num_joints,
            final_conv_kernel: e.final_conv_kernel,
            stages: vec![stage(&e.stage2), stage(&e.stage3), stage(&e.stage4)],
        };
        spec.validate()?;
        Ok(spec)
    }

    pub fn validate(&self) -> Result<()> {
        if self.num_joints == 0 {
            bail!("model: NUM_JOINTS must be positive");
        }
        if !matches!(self.final_conv_kernel, 1 | 3) {
            bail!("model: FINAL_CONV_KERNEL must be 1 or 3, got {}", self.final_conv_kernel);
        }
        if self.stages.len() != 3 {
            bail!("model: expected STAGE2, STAGE3 and STAGE4, got {} stages", self.stages.len());
        }
        let mut prev_branches = 1;
        for (k, s) in self.stages.iter().enumerate() {
            let name = format!("STAGE{}", k + 2);
            if s.num_branches == 0 || s.num_modules == 0 {
                bail!("model: {name} needs NUM_BRANCHES and NUM_MODULES ≥ 1");
            }
            if s.num_blocks.len() != s.num_branches || s.num_channels.len() != s.num_branches {
                bail!(
                    "model: {name}: NUM_BLOCKS {:?} and NUM_CHANNELS {:?} must both have NUM_BRANCHES = {} entries",
                    s.num_blocks, s.num_channels, s.num_branches
                );
            }
            if s.num_blocks.iter().chain(&s.num_channels).any(|&v| v == 0) {
                bail!("model: {name}: NUM_BLOCKS and NUM_CHANNELS must be positive");
            }
            if s.num_branches < prev_branches {
                bail!("model: {name} has fewer branches ({}) than the stage before ({prev_branches})", s.num_branches);
            }
            prev_branches = s.num_branches;
        }
        // Configs come from the internet: refuse sizes that would allocate absurdly (or overflow
        // a shape product) before building anything.
        let params = self.approx_params();
        if params > MAX_PARAMS {
            bail!(
                "model: NUM_CHANNELS {:?} / NUM_BLOCKS / NUM_MODULES / NUM_JOINTS {} give about {params:.2e} parameters, more than the {MAX_PARAMS:.0e} supported",
                self.stages.iter().map(|s| &s.num_channels).collect::<Vec<_>>(),
                self.num_joints
            );
        }
        Ok(())
    }

    /// An upper estimate of the parameter count (f64: never overflows).
    pub fn approx_params(&self) -> f64 {
        let mut total = 0.0f64;
        let mut prev: f64 = 256.0;
        for s in &self.stages {
            let exp = s.block.expansion() as f64;
            let cur: Vec<f64> = s.num_channels.iter().map(|&c| c as f64 * exp).collect();
            let sum: f64 = cur.iter().sum();
            // transition: 3x3 convs from the previous widths
            total += 9.0 * prev * sum;
            // per module: blocks (at most two 3x3 convs of width c·exp each) and the fuse layers
            let blocks: f64 = cur.iter().zip(&s.num_blocks).map(|(c, &n)| n as f64 * 18.0 * c * c).sum();
            total += s.num_modules as f64 * (blocks + 9.0 * sum * sum);
            prev = sum;
        }
        total + prev * prev + prev * self.num_joints as f64 * (self.final_conv_kernel * self.final_conv_kernel) as f64
    }
}

/// The largest model `HrnetSpec::validate` accepts (HRNetV2-W18 has about 1e7 parameters).
pub const MAX_PARAMS: f64 = 1e9;

#[derive(Clone, Copy, Debug)]
struct Conv {
    w: usize,
    b: Option<usize>,
    stride: usize,
    pad: usize,
}

#[derive(Clone, Copy, Debug)]
struct Bn {
    w: usize,
    b: usize,
    rm: usize,
    rv: usize,
    nbt: usize,
}

/// conv → BN (→ ReLU).
#[derive(Clone, Copy, Debug)]
struct ConvBn {
    conv: Conv,
    bn: Bn,
    relu: bool,
}

#[derive(Clone, Debug)]
struct Block {
    kind: BlockKind,
    layers: Vec<ConvBn>,
    downsample: Option<ConvBn>,
}

#[derive(Clone, Debug)]
enum Fuse {
    Identity,
    /// conv1x1 + BN, then bilinear resize to the target branch.
    Up(ConvBn),
    /// Chain of stride-2 conv3x3 + BN (ReLU between links only).
    Down(Vec<ConvBn>),
}

#[derive(Clone, Debug)]
struct HrModule {
    branches: Vec<Vec<Block>>,
    fuse: Vec<Vec<Fuse>>,
}

/// A transition slot: identity, or a chain of conv3x3 + BN + ReLU links.
type Transition = Option<Vec<ConvBn>>;

/// Where each activation the parity cases record comes from (`eval_act.*` names).
pub type ActivationSink<'a> = Option<&'a mut Vec<(String, Tensor)>>;

#[derive(Clone, Debug)]
pub struct HrNet {
    pub spec: HrnetSpec,
    pub store: Store,
    stem: [ConvBn; 2],
    layer1: Vec<Block>,
    transitions: Vec<Vec<Transition>>,
    stages: Vec<Vec<HrModule>>,
    head0: ConvBn,
    head3: Conv,
}

struct Builder<'a> {
    store: Store,
    rng: &'a mut Rng,
}

impl Builder<'_> {
    /// Official init: conv weights N(0, 0.001); conv biases PyTorch's default U(±1/√fan_in).
    fn conv(&mut self, name: &str, cin: usize, cout: usize, k: usize, stride: usize, pad: usize, bias: bool) -> Conv {
        let w = self.store.add_param(format!("{name}.weight"), Store::normal(self.rng, &[cout, cin, k, k], 0.001));
        let b = bias.then(|| {
            let bound = 1.0 / ((cin * k * k) as f64).sqrt();
            self.store.add_param(format!("{name}.bias"), Store::uniform(self.rng, &[cout], bound))
        });
        Conv { w, b, stride, pad }
    }
    fn bn(&mut self, name: &str, c: usize) -> Bn {
        let s = &mut self.store;
        Bn {
            w: s.add_param(format!("{name}.weight"), Tensor::full(&[c], crate::DType::F32, 1.0)),
            b: s.add_param(format!("{name}.bias"), Tensor::zeros(&[c], crate::DType::F32)),
            rm: s.add_buffer(format!("{name}.running_mean"), Tensor::zeros(&[c], crate::DType::F32)),
            rv: s.add_buffer(format!("{name}.running_var"), Tensor::full(&[c], crate::DType::F32, 1.0)),
            nbt: s.add_count(format!("{name}.num_batches_tracked")),
        }
    }
    /// Sequential(conv, BN[, ReLU]) registered as `{name}.0` / `{name}.1`.
    fn conv_bn(&mut self, name: &str, cin: usize, cout: usize, k: usize, stride: usize, relu: bool) -> ConvBn {
        let conv = self.conv(&format!("{name}.0"), cin, cout, k, stride, k / 2, false);
        let bn = self.bn(&format!("{name}.1"), cout);
        ConvBn { conv, bn, relu }
    }
    fn block(&mut self, name: &str, kind: BlockKind, cin: usize, planes: usize, stride: usize) -> Block {
        let cout = planes * kind.expansion();
        let mut layers = Vec::new();
        let link = |b: &mut Self, idx: usize, ci: usize, co: usize, k: usize, s: usize, relu: bool| {
            let conv = b.conv(&format!("{name}.conv{idx}"), ci, co, k, s, k / 2, false);
            let bn = b.bn(&format!("{name}.bn{idx}"), co);
            ConvBn { conv, bn, relu }
        };
        match kind {
            BlockKind::Basic => {
                layers.push(link(self, 1, cin, planes, 3, stride, true));
                layers.push(link(self, 2, planes, planes, 3, 1, false));
            }
            BlockKind::Bottleneck => {
                layers.push(link(self, 1, cin, planes, 1, 1, true));
                layers.push(link(self, 2, planes, planes, 3, stride, true));
                layers.push(link(self, 3, planes, cout, 1, 1, false));
            }
        }
        let downsample = (stride != 1 || cin != cout).then(|| self.conv_bn(&format!("{name}.downsample"), cin, cout, 1, stride, false));
        Block { kind, layers, downsample }
    }
    fn blocks(&mut self, name: &str, kind: BlockKind, cin: usize, planes: usize, n: usize) -> Vec<Block> {
        let mut out = vec![self.block(&format!("{name}.0"), kind, cin, planes, 1)];
        for i in 1..n {
            out.push(self.block(&format!("{name}.{i}"), kind, planes * kind.expansion(), planes, 1));
        }
        out
    }
    fn transition(&mut self, name: &str, prev: &[usize], cur: &[usize]) -> Vec<Transition> {
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
    fn module(&mut self, name: &str, s: &StageSpec, inch: &mut [usize]) -> HrModule {
        let mut branches = Vec::new();
        for b in 0..s.num_branches {
            let kind = s.block;
            let planes = s.num_channels[b];
            // Official _make_one_branch: the first block may project (stride 1 here).
            let mut blocks = vec![self.block(&format!("{name}.branches.{b}.0"), kind, inch[b], planes, 1)];
            inch[b] = planes * kind.expansion();
            for k in 1..s.num_blocks[b] {
                blocks.push(self.block(&format!("{name}.branches.{b}.{k}"), kind, inch[b], planes, 1));
            }
            branches.push(blocks);
        }
        let mut fuse = Vec::new();
        if s.num_branches > 1 {
            for i in 0..s.num_branches {
                let mut row = Vec::new();
                for j in 0..s.num_branches {
                    let f = if j > i {
                        let conv = self.conv(&format!("{name}.fuse_layers.{i}.{j}.0"), inch[j], inch[i], 1, 1, 0, false);
                        let bn = self.bn(&format!("{name}.fuse_layers.{i}.{j}.1"), inch[i]);
                        Fuse::Up(ConvBn { conv, bn, relu: false })
                    } else if j == i {
                        Fuse::Identity
                    } else {
                        let steps = i - j;
                        Fuse::Down(
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
        HrModule { branches, fuse }
    }
}

impl HrNet {
    /// Builds the network with the official random init (seeded).
    pub fn new(spec: &HrnetSpec, seed: u64) -> Result<HrNet> {
        spec.validate()?;
        let mut rng = Rng::new(seed);
        let mut b = Builder { store: Store::default(), rng: &mut rng };
        let stem = [b.conv_bn_named("conv1", "bn1", 3, 64), b.conv_bn_named("conv2", "bn2", 64, 64)];
        let layer1 = b.blocks("layer1", BlockKind::Bottleneck, 64, 64, 4);
        let mut prev = vec![64 * BlockKind::Bottleneck.expansion()];
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
        let h0 = b.conv("head.0", c, c, 1, 1, 0, true);
        let h1 = b.bn("head.1", c);
        let h3 = b.conv("head.3", c, spec.num_joints, k, 1, k / 2, true);
        let store = b.store;
        let head0 = ConvBn { conv: h0, bn: h1, relu: true };
        Ok(HrNet { spec: spec.clone(), store, stem, layer1, transitions, stages, head0, head3: h3 })
    }

    fn conv(&self, x: &Tensor, c: &Conv) -> Result<Tensor> {
        let s = &self.store;
        ops::conv2d(x, s.tensor(c.w), c.b.map(|b| s.tensor(b)), c.stride, c.pad)
    }

    fn bn(&mut self, x: &Tensor, bn: &Bn, train: bool) -> Result<Tensor> {
        let (g, b) = (self.store.tensor(bn.w).clone(), self.store.tensor(bn.b).clone());
        if train {
            let (rm, rv) = self.store.two_tensors_mut(bn.rm, bn.rv);
            let y = ops::batch_norm_train(x, &g, &b, rm, rv, BN_MOMENTUM, ops::BN_EPS)?;
            self.store.bump_count(bn.nbt);
            Ok(y)
        } else {
            let (rm, rv) = (self.store.tensor(bn.rm), self.store.tensor(bn.rv));
            ops::batch_norm_eval(x, &g, &b, rm, rv, ops::BN_EPS)
        }
    }

    fn conv_bn(&mut self, x: &Tensor, l: &ConvBn, train: bool) -> Result<Tensor> {
        if train {
            // conv2d, then BN with its ReLU as one op (one pass each way on the CPU); on a GPU the BN's
            // batch statistics come from the conv kernel's epilogue (conv_batch_norm_train).
            let c = &l.conv;
            let w = self.store.tensor(c.w).clone();
            let bias = c.b.map(|b| self.store.tensor(b).clone());
            let (g, b) = (self.store.tensor(l.bn.w).clone(), self.store.tensor(l.bn.b).clone());
            let (rm, rv) = self.store.two_tensors_mut(l.bn.rm, l.bn.rv);
            let y = ops::batchnorm::conv_batch_norm_train(x, &w, bias.as_ref(), c.stride, c.pad, &g, &b, rm, rv, BN_MOMENTUM, ops::BN_EPS, l.relu)?;
            self.store.bump_count(l.bn.nbt);
            return Ok(y);
        }
        let y = self.conv(x, &l.conv)?;
        let y = self.bn(&y, &l.bn, train)?;
        if l.relu {
            ops::relu(&y)
        } else {
            Ok(y)
        }
    }

    fn chain(&mut self, x: &Tensor, links: &[ConvBn], train: bool) -> Result<Tensor> {
        let mut y = x.clone();
        for l in links {
            y = self.conv_bn(&y, l, train)?;
        }
        Ok(y)
    }

    fn block(&mut self, x: &Tensor, b: &Block, train: bool) -> Result<Tensor> {
        let y = self.chain(x, &b.layers, train)?;
        let shortcut = match &b.downsample {
            Some(d) => self.conv_bn(x, d, train)?,
            None => x.clone(),
        };
        debug_assert!(matches!(b.kind, BlockKind::Basic | BlockKind::Bottleneck));
        ops::elementwise::add_relu(&y, &shortcut)
    }

    fn module(&mut self, xs: Vec<Tensor>, m: &HrModule, train: bool) -> Result<Vec<Tensor>> {
        let mut ys = Vec::with_capacity(xs.len());
        for (x, blocks) in xs.into_iter().zip(&m.branches) {
            let mut y = x;
            for b in blocks {
                y = self.block(&y, b, train)?;
            }
            ys.push(y);
        }
        if m.fuse.is_empty() {
            return Ok(ys);
        }
        let mut out = Vec::with_capacity(ys.len());
        for (i, row) in m.fuse.iter().enumerate() {
            let size = [ys[i].shape()[2], ys[i].shape()[3]];
            let mut acc: Option<Tensor> = None;
            for (j, f) in row.iter().enumerate() {
                let term = match f {
                    Fuse::Identity => ys[j].clone(),
                    Fuse::Up(l) => ops::upsample_bilinear(&self.conv_bn(&ys[j], l, train)?, size)?,
                    Fuse::Down(links) => self.chain(&ys[j], links, train)?,
                };
                // The last sum of the row carries the row's ReLU.
                let last = j + 1 == row.len();
                acc = Some(match acc {
                    None if last => ops::relu(&term)?,
                    None => term,
                    Some(a) if last => ops::elementwise::add_relu(&a, &term)?,
                    Some(a) => ops::add(&a, &term)?,
                });
            }
            out.push(acc.expect("a fuse row has ≥ 1 entry"));
        }
        Ok(out)
    }

    /// Forward pass: `train` selects BN batch statistics (and updates the running buffers).
    /// `acts` receives the named intermediate activations of the parity cases when given.
    pub fn forward_with(&mut self, x: &Tensor, train: bool, mut acts: ActivationSink) -> Result<Tensor> {
        let d = x.dims4("hrnet")?;
        if d[1] != 3 {
            bail!("hrnet: input must have 3 channels, got shape {:?}", x.shape());
        }
        let mut record = |name: String, t: &Tensor| {
            if let Some(a) = acts.as_deref_mut() {
                a.push((name, t.clone()));
            }
        };
        let (stem, layer1, transitions, stages, head0, head3) =
            (self.stem, self.layer1.clone(), self.transitions.clone(), self.stages.clone(), self.head0, self.head3);
        let y = self.conv_bn(x, &stem[0], train)?;
        record("stem1".into(), &y);
        let mut y = self.conv_bn(&y, &stem[1], train)?;
        record("stem2".into(), &y);
        for b in &layer1 {
            y = self.block(&y, b, train)?;
        }
        record("layer1".into(), &y);
        let mut ys = vec![y];
        for (k, (trans, modules)) in transitions.iter().zip(&stages).enumerate() {
            let mut xs = Vec::with_capacity(trans.len());
            for (i, t) in trans.iter().enumerate() {
                let src = if i < ys.len() { &ys[i] } else { ys.last().expect("≥ 1 branch") };
                let v = match t {
                    Some(links) => self.chain(src, links, train)?,
                    None => src.clone(),
                };
                record(format!("transition{}.{i}", k + 1), &v);
                xs.push(v);
            }
            ys = xs;
            for (m, module) in modules.iter().enumerate() {
                ys = self.module(ys, module, train)?;
                for (i, t) in ys.iter().enumerate() {
                    record(format!("stage{}.{m}.{i}", k + 2), t);
                }
            }
        }
        let size = [ys[0].shape()[2], ys[0].shape()[3]];
        let mut parts = vec![ys[0].clone()];
        for y in &ys[1..] {
            parts.push(ops::upsample_bilinear(y, size)?);
        }
        let cat = ops::concat_channels(&parts.iter().collect::<Vec<_>>())?;
        record("head_input".into(), &cat);
        let h = self.conv_bn(&cat, &head0, train)?;
        record("head.2".into(), &h);
        self.conv(&h, &head3)
    }

    /// Moves the parameters and buffers to `device`; inputs must then live there too.
    pub fn to_device(&mut self, device: &crate::tensor::Device) -> Result<()> {
        self.store.to_device(device)
    }

    pub fn device(&self) -> crate::tensor::Device {
        self.store.params().first().map(|t| t.device()).unwrap_or_default()
    }

    pub fn forward(&mut self, x: &Tensor, train: bool) -> Result<Tensor> {
        self.forward_with(x, train, None)
    }
}

impl Builder<'_> {
    fn conv_bn_named(&mut self, conv: &str, bn: &str, cin: usize, cout: usize) -> ConvBn {
        let c = self.conv(conv, cin, cout, 3, 2, 1, false);
        let b = self.bn(bn, cout);
        ConvBn { conv: c, bn: b, relu: true }
    }
}
