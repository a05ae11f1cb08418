//! The ONNX exporter: one more executor of the walk, which instead of computing appends ONNX nodes
//! (Conv, BatchNormalization, Relu, Add, Resize, Concat) to a graph whose initializers are the model's
//! weights, BN folded into the convs as the CPU engine folds it (`fold_plan`) unless asked otherwise.
//! The spatial sizes are fixed by the export's image size; the batch dimension is dynamic, so every
//! Resize gets its `sizes` from the input's runtime batch size and the planned channels and size.

use super::plan::fold_plan;
use super::plan::{ConvBn, Plan};
use super::walk::{self, Executor, Term};
use super::HrNet;
use crate::io::onnx::{
    AttributeProto, GraphProto, ModelProto, NodeProto, OperatorSetIdProto, TensorProto, ValueInfoProto, FLOAT,
};
use crate::model::store::Store;
use crate::ops::{Conv2dGeom, BN_EPS};
use anyhow::{bail, Context, Result};
use std::collections::HashMap;

/// The opsets `hrk export` writes (Resize with empty optional inputs needs 13; 21 is the newest the
/// tests ran under ONNX Runtime).
pub const OPSETS: std::ops::RangeInclusive<i64> = 13..=21;
/// The default opset.
pub const DEFAULT_OPSET: i64 = 17;

/// What `export_onnx` writes.
#[derive(Clone, Debug)]
pub struct OnnxOptions {
    pub opset: i64,
    /// Fold eval-mode BatchNorm into the convs (else Conv + BatchNormalization nodes).
    pub fold_bn: bool,
    /// Add the `landmarks` output: per heatmap, the argmax (x, y) in heatmap pixels and the maximum.
    pub decode: bool,
}

impl Default for OnnxOptions {
    fn default() -> Self {
        OnnxOptions { opset: DEFAULT_OPSET, fold_bn: true, decode: false }
    }
}

/// The ONNX IR version that goes with an opset (onnx's versioning table).
fn ir_version(opset: i64) -> i64 {
    match opset {
        ..=14 => 7,
        15..=18 => 8,
        19..=20 => 9,
        _ => 10,
    }
}

/// A conv node as exported: its name (the official module name), weights, and the BN that follows it
/// when not folded.
struct OnnxConv {
    name: String,
    w: Vec<f32>,
    wshape: [usize; 4],
    b: Option<Vec<f32>>,
    /// γ, β, running mean, running var.
    bn: Option<[Vec<f32>; 4]>,
    stride: usize,
    pad: usize,
    relu: bool,
}

/// An activation: its tensor name and (channels, height, width); the batch is dynamic.
#[derive(Clone, Debug)]
struct Val {
    name: String,
    dims: [usize; 3],
}

struct GraphBuilder {
    opset: i64,
    nodes: Vec<NodeProto>,
    inits: Vec<TensorProto>,
    /// Tensor names used so far, to make each new one unique.
    used: HashMap<String, usize>,
    /// The `sizes` input of Resize per (c, h, w), built once each.
    sizes: HashMap<[usize; 3], String>,
    /// The input's batch size as a 1-element int64 tensor, built at the first Resize.
    batch: Option<String>,
}

impl GraphBuilder {
    /// A fresh tensor name starting with `base`.
    fn fresh(&mut self, base: &str) -> String {
        let n = self.used.entry(base.to_string()).or_insert(0);
        *n += 1;
        if *n == 1 {
            base.to_string()
        } else {
            format!("{base}_{}", *n - 1)
        }
    }

    /// Appends a node whose one output is a fresh name from `out`; returns that name.
    fn node(&mut self, op: &str, inputs: &[&str], out: &str, attribute: Vec<AttributeProto>) -> String {
        let out = self.fresh(out);
        self.nodes.push(NodeProto {
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: vec![out.clone()],
            name: format!("{op}:{out}"),
            op_type: op.into(),
            attribute,
        });
        out
    }

    fn init_f32(&mut self, name: &str, dims: &[usize], data: &[f32]) -> String {
        let name = self.fresh(name);
        self.inits.push(TensorProto::f32(name.clone(), dims, data));
        name
    }

    fn init_i64(&mut self, name: &str, dims: &[usize], data: &[i64]) -> String {
        let name = self.fresh(name);
        self.inits.push(TensorProto::i64(name.clone(), dims, data));
        name
    }

    fn relu(&mut self, x: &str, base: &str) -> String {
        self.node("Relu", &[x], &format!("{base}.relu"), vec![])
    }

    /// `x` bilinearly resized (PyTorch's align_corners=False: ONNX half_pixel, whose source coordinates
    /// ONNX Runtime clamps at the border as PyTorch does) to `to`'s height and width.
    fn resize(&mut self, x: &Val, h: usize, w: usize) -> Val {
        if x.dims[1] == h && x.dims[2] == w {
            return x.clone();
        }
        let key = [x.dims[0], h, w];
        let sizes = match self.sizes.get(&key) {
            Some(s) => s.clone(),
            None => {
                let batch = match &self.batch {
                    Some(b) => b.clone(),
                    None => {
                        let shape = self.node("Shape", &["image"], "image.shape", vec![]);
                        let zero = self.init_i64("const.0", &[1], &[0]);
                        let one = self.init_i64("const.1", &[1], &[1]);
                        let b = self.node("Slice", &[&shape, &zero, &one], "image.batch", vec![]);
                        self.batch = Some(b.clone());
                        b
                    }
                };
                let chw = self.init_i64(&format!("const.{}x{h}x{w}", x.dims[0]), &[3], &key.map(|d| d as i64));
                let s = self.node(
                    "Concat",
                    &[&batch, &chw],
                    &format!("sizes.{}x{h}x{w}", x.dims[0]),
                    vec![AttributeProto::int("axis", 0)],
                );
                self.sizes.insert(key, s.clone());
                s
            }
        };
        let attrs = vec![
            AttributeProto::string("mode", "linear"),
            AttributeProto::string("coordinate_transformation_mode", "half_pixel"),
        ];
        let name = self.node("Resize", &[&x.name, "", "", &sizes], &format!("{}.resized", x.name), attrs);
        Val { name, dims: [x.dims[0], h, w] }
    }

    /// The conv node (and its BN when not folded), without the ReLU.
    fn conv_linear(&mut self, c: &OnnxConv, x: &Val) -> Result<Val> {
        let [cin, h, w] = x.dims;
        let g = Conv2dGeom::new([1, cin, h, w], &c.wshape, c.stride, c.pad)
            .with_context(|| format!("onnx export: conv {}", c.name))?;
        let wname = self.init_f32(&format!("{}.weight", c.name), &c.wshape, &c.w);
        let mut inputs = vec![x.name.clone(), wname];
        if let Some(b) = &c.b {
            inputs.push(self.init_f32(&format!("{}.bias", c.name), &[c.wshape[0]], b));
        }
        let [_, _, kh, kw] = c.wshape;
        let p = c.pad as i64;
        let attrs = vec![
            AttributeProto::ints("kernel_shape", &[kh as i64, kw as i64]),
            AttributeProto::ints("strides", &[c.stride as i64; 2]),
            AttributeProto::ints("pads", &[p, p, p, p]),
        ];
        let refs: Vec<&str> = inputs.iter().map(String::as_str).collect();
        let mut y = self.node("Conv", &refs, &c.name, attrs);
        if let Some(bn) = &c.bn {
            let n = [g.cout];
            let names: Vec<String> = ["bn.weight", "bn.bias", "bn.running_mean", "bn.running_var"]
                .iter()
                .zip(bn)
                .map(|(s, v)| self.init_f32(&format!("{}.{s}", c.name), &n, v))
                .collect();
            y = self.node(
                "BatchNormalization",
                &[&y, &names[0], &names[1], &names[2], &names[3]],
                &format!("{}.bn", c.name),
                vec![AttributeProto::float("epsilon", BN_EPS as f32)],
            );
        }
        Ok(Val { name: y, dims: [g.cout, g.ho, g.wo] })
    }

    fn add(&mut self, a: &str, b: &str, base: &str) -> String {
        self.node("Add", &[a, b], &format!("{base}.sum"), vec![])
    }
}

impl Executor for GraphBuilder {
    type Act = Val;
    type Conv = OnnxConv;
    type Row = Vec<Val>;

    fn conv(&mut self, c: &OnnxConv, x: &Val) -> Result<Val> {
        let mut y = self.conv_linear(c, x)?;
        if c.relu {
            y.name = self.relu(&y.name, &c.name);
        }
        Ok(y)
    }
    fn block_out(&mut self, last: &OnnxConv, y: &Val, x: &Val, downsample: Option<&OnnxConv>) -> Result<Val> {
        let a = self.conv(last, y)?;
        let s = match downsample {
            Some(d) => self.conv(d, x)?,
            None => x.clone(),
        };
        let base = last.name.rsplit_once('.').map_or(last.name.as_str(), |(b, _)| b).to_string();
        let sum = self.add(&a.name, &s.name, &base);
        Ok(Val { name: self.relu(&sum, &base), dims: a.dims })
    }
    fn copy(&mut self, x: &Val) -> Result<Val> {
        Ok(x.clone())
    }
    fn row_begin(&mut self, _row: usize, _target: &Val) -> Result<Vec<Val>> {
        Ok(Vec::new())
    }
    fn row_identity(&mut self, sum: &mut Vec<Val>, y: &Val, _term: Term) -> Result<()> {
        sum.push(y.clone());
        Ok(())
    }
    fn row_up(&mut self, sum: &mut Vec<Val>, c: &OnnxConv, y: &Val, target: &Val, _term: Term) -> Result<()> {
        let t = self.conv(c, y)?;
        sum.push(self.resize(&t, target.dims[1], target.dims[2]));
        Ok(())
    }
    fn row_down(&mut self, sum: &mut Vec<Val>, last: &OnnxConv, y: &Val, _term: Term) -> Result<()> {
        sum.push(self.conv(last, y)?);
        Ok(())
    }
    fn row_end(&mut self, sum: Vec<Val>, target: &Val) -> Result<Val> {
        // The reference's order: term 0 first, then the others left to right.
        let mut it = sum.into_iter();
        let Some(first) = it.next() else { bail!("onnx export: an empty fuse row") };
        let mut acc = first.name;
        for t in it {
            acc = self.add(&acc, &t.name, "fuse");
        }
        Ok(Val { name: self.relu(&acc, "fuse"), dims: target.dims })
    }
    fn head_input(&mut self, branches: &[Val]) -> Result<Val> {
        let Some(first) = branches.first() else { bail!("onnx export: the head got no branch") };
        let [_, h, w] = first.dims;
        let parts: Vec<Val> = branches.iter().map(|b| self.resize(b, h, w)).collect();
        let names: Vec<&str> = parts.iter().map(|p| p.name.as_str()).collect();
        let name = self.node("Concat", &names, "head_input", vec![AttributeProto::int("axis", 1)]);
        Ok(Val { name, dims: [parts.iter().map(|p| p.dims[0]).sum(), h, w] })
    }
}

/// The plan with each conv's exported weights: folded (as the CPU engine computes) or raw with its BN.
fn onnx_plan(store: &Store, plan: &Plan<ConvBn>, fold: bool) -> Result<Plan<OnnxConv>> {
    let prefix = |i: usize| store.name(i).strip_suffix(".weight").unwrap_or(store.name(i)).to_string();
    if fold {
        // fold_plan visits the convs in the same order as try_map, so the names line up.
        let names = {
            let mut v = Vec::new();
            plan.map(|l| v.push(prefix(l.conv.weight)));
            v
        };
        let folded = fold_plan(store, plan)?;
        let mut k = 0;
        return folded.try_map(&mut |f| -> Result<OnnxConv> {
            k += 1;
            Ok(OnnxConv {
                name: names[k - 1].clone(),
                w: f.w.clone(),
                wshape: f.wshape,
                b: Some(f.b.clone()),
                bn: None,
                stride: f.stride,
                pad: f.pad,
                relu: f.relu,
            })
        });
    }
    let read = |i: usize| -> Result<Vec<f32>> {
        store.tensor(i).try_to_f32_vec().with_context(|| format!("onnx export: reading `{}`", store.name(i)))
    };
    plan.try_map(&mut |l: &ConvBn| -> Result<OnnxConv> {
        let wt = store.tensor(l.conv.weight);
        let wshape = match *wt.shape() {
            [a, b, k1, k2] => [a, b, k1, k2],
            _ => bail!("onnx export: conv weight {} is not 4-d: {:?}", store.name(l.conv.weight), wt.shape()),
        };
        let bn = match &l.bn {
            Some(bn) => Some([read(bn.gamma)?, read(bn.beta)?, read(bn.running_mean)?, read(bn.running_var)?]),
            None => None,
        };
        Ok(OnnxConv {
            name: prefix(l.conv.weight),
            w: read(l.conv.weight)?,
            wshape,
            b: l.conv.bias.map(read).transpose()?,
            bn,
            stride: l.conv.stride,
            pad: l.conv.pad,
            relu: l.relu,
        })
    })
}

/// The inference graph of `net` for `h`×`w` images as a serialized ONNX model: input `image`
/// [batch, 3, h, w], output `heatmaps` [batch, joints, h', w'] and, with `decode`, `landmarks`
/// [batch, joints, 3] (argmax x, y in heatmap pixels counted from 0, and the maximum).
pub fn export_onnx(net: &HrNet, h: usize, w: usize, opts: &OnnxOptions) -> Result<Vec<u8>> {
    if !OPSETS.contains(&opts.opset) {
        bail!(
            "onnx export: opset {} is not supported (hrk writes opsets {} to {})",
            opts.opset,
            OPSETS.start(),
            OPSETS.end()
        );
    }
    if h == 0 || w == 0 {
        bail!("onnx export: image size {w}x{h} is empty");
    }
    let plan = onnx_plan(&net.store, net.plan(), opts.fold_bn)?;
    let mut g = GraphBuilder {
        opset: opts.opset,
        nodes: Vec::new(),
        inits: Vec::new(),
        used: HashMap::new(),
        sizes: HashMap::new(),
        batch: None,
    };
    g.fresh("image");
    let x = Val { name: "image".into(), dims: [3, h, w] };
    let y = walk::forward(&plan, &mut g, x)?;
    // The graph's output must be a node output of its own name.
    let heatmaps = g.node("Identity", &[&y.name], "heatmaps", vec![]);
    let [joints, hh, hw] = y.dims;
    let mut outputs = vec![ValueInfoProto::tensor(&heatmaps, FLOAT, &[None, Some(joints), Some(hh), Some(hw)])];
    if opts.decode {
        let name = decode(&mut g, &heatmaps, y.dims);
        outputs.push(ValueInfoProto::tensor(&name, FLOAT, &[None, Some(joints), Some(3)]));
    }
    let graph = GraphProto {
        node: g.nodes,
        name: "hrnet".into(),
        initializer: g.inits,
        input: vec![ValueInfoProto::tensor("image", FLOAT, &[None, Some(3), Some(h), Some(w)])],
        output: outputs,
    };
    let model = ModelProto {
        ir_version: ir_version(opts.opset),
        producer_name: "hrk".into(),
        producer_version: env!("CARGO_PKG_VERSION").into(),
        doc_string: format!("HRNetV2 facial landmarks, {joints} heatmaps (BN folded: {})", opts.fold_bn),
        graph: Some(graph),
        opset_import: vec![OperatorSetIdProto { domain: String::new(), version: opts.opset }],
    };
    Ok(model.to_bytes())
}

/// Appends `landmarks` [batch, joints, 3]: argmax x, y (heatmap pixels from 0) and the maximum of
/// each heatmap (the first maximum in row-major order on ties, as ONNX's ArgMax picks).
fn decode(g: &mut GraphBuilder, heatmaps: &str, [joints, h, w]: [usize; 3]) -> String {
    let shape = g.init_i64("decode.flat_shape", &[3], &[0, joints as i64, (h * w) as i64]);
    let flat = g.node("Reshape", &[heatmaps, &shape], "decode.flat", vec![]);
    let keep = AttributeProto::int("keepdims", 1);
    let idx = g.node("ArgMax", &[&flat], "decode.argmax", vec![AttributeProto::int("axis", 2), keep.clone()]);
    let max = if g.opset >= 18 {
        // ReduceMax takes its axes as an input from opset 18.
        let axes = g.init_i64("decode.axes", &[1], &[2]);
        g.node("ReduceMax", &[&flat, &axes], "decode.max", vec![keep])
    } else {
        g.node("ReduceMax", &[&flat], "decode.max", vec![AttributeProto::ints("axes", &[2]), keep])
    };
    let width = g.init_i64("decode.width", &[], &[w as i64]);
    let xi = g.node("Mod", &[&idx, &width], "decode.x_int", vec![]);
    let yi = g.node("Div", &[&idx, &width], "decode.y_int", vec![]);
    let to_float = || vec![AttributeProto::int("to", FLOAT as i64)];
    let x = g.node("Cast", &[&xi], "decode.x", to_float());
    let y = g.node("Cast", &[&yi], "decode.y", to_float());
    g.node("Concat", &[&x, &y, &max], "landmarks", vec![AttributeProto::int("axis", 2)])
}
