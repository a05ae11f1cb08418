//! P-Net, R-Net and O-Net of MTCNN (facenet-pytorch's layer names and shapes) on hrk's ops.
//! `load` also hands back the weights as host vectors, from which the CPU's own loops
//! (`pnet_cpu`, `crops_cpu`) build their own layouts. R-Net and O-Net share one form ([`CropNet`]),
//! described by a [`CropNetShape`] each.
//!
//! The dense layers run as convolutions: facenet flattens `x.permute(0, 3, 2, 1)` (W, H, C order) before
//! `dense4` / `dense5`, so their [out, W·H·C] weights are reordered once at load into [out, C, H, W] conv
//! kernels covering the whole feature map; the later dense layers are 1×1 convs on [N, C, 1, 1].

use crate::host_tensor::HostTensor;
use crate::ops::{conv2d, max_pool2d_ceil, prelu, softmax_channels};
use crate::tensor::{Device, Tensor};
use anyhow::{anyhow, bail, Result};
use std::collections::HashMap;

/// A conv (weight [out, in, k, k] and bias) followed by nothing: the building block.
struct Conv {
    weight: Tensor,
    bias: Tensor,
}

impl Conv {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        conv2d(x, &self.weight, Some(&self.bias), 1, 0)
    }
}

/// The named tensors of one network, taken out one by one with shape checks.
pub(crate) struct Weights<'a> {
    pub tensors: &'a mut HashMap<String, HostTensor>,
    pub device: &'a Device,
    pub net: &'static str,
}

impl Weights<'_> {
    fn take(&mut self, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
        let key = format!("{}.{}", self.net, name);
        let t = self.tensors.remove(&key).ok_or_else(|| anyhow!("MTCNN weights: tensor '{key}' is missing"))?;
        if t.shape != shape {
            bail!("MTCNN weights: tensor '{key}' has shape {:?}, want {:?}", t.shape, shape);
        }
        Ok(t.to_f32_vec())
    }
    fn tensor(&self, shape: &[usize], data: Vec<f32>) -> Result<Tensor> {
        Tensor::from_f32(shape, data)?.to_device(self.device)
    }
    /// A layer's weight of `shape` (PyTorch's layout) and its bias [shape[0]].
    fn layer(&mut self, name: &str, shape: &[usize]) -> Result<HostLayer> {
        let weight = self.take(&format!("{name}.weight"), shape)?;
        let bias = self.take(&format!("{name}.bias"), &shape[..1])?;
        Ok(HostLayer { weight, bias, shape: shape.to_vec() })
    }
    fn prelu(&mut self, name: &str, c: usize) -> Result<Vec<f32>> {
        self.take(&format!("{name}.weight"), &[c])
    }
    /// PReLU slopes as a device tensor.
    fn slopes(&self, slopes: &[f32]) -> Result<Tensor> {
        self.tensor(&[slopes.len()], slopes.to_vec())
    }
    /// The ops conv of a host layer: a conv weight [out, in, kh, kw] as it is, a dense weight [out, in]
    /// as a 1×1 conv (on [N, C, 1, 1]).
    fn conv(&self, l: &HostLayer) -> Result<Conv> {
        let shape: Vec<usize> = l.shape.iter().copied().chain([1, 1]).take(4).collect();
        Ok(Conv { weight: self.tensor(&shape, l.weight.clone())?, bias: self.tensor(&shape[..1], l.bias.clone())? })
    }
    /// A dense layer over a flattened [C, H, W] map (facenet's W, H, C flatten order) as a conv with an
    /// H×W kernel.
    fn dense_over_map(&self, dense: &HostLayer, [c, h, w]: [usize; 3]) -> Result<Conv> {
        let out = dense.bias.len();
        let mut kernel = vec![0f32; out * c * h * w];
        for o in 0..out {
            for ch in 0..c {
                for y in 0..h {
                    for x in 0..w {
                        kernel[((o * c + ch) * h + y) * w + x] = dense.weight[o * c * h * w + (x * h + y) * c + ch];
                    }
                }
            }
        }
        debug_assert_eq!(h, w, "MTCNN's flattened maps are square");
        Ok(Conv { weight: self.tensor(&[out, c, h, w], kernel)?, bias: self.tensor(&[out], dense.bias.clone())? })
    }
}

/// One layer's weight and bias as host vectors in PyTorch's layout (weight `shape`, checked at load),
/// for the CPU's own loops.
pub(crate) struct HostLayer {
    pub weight: Vec<f32>,
    pub bias: Vec<f32>,
    pub shape: Vec<usize>,
}

/// conv → PReLU.
fn conv_prelu(x: &Tensor, conv: &Conv, slopes: &Tensor) -> Result<Tensor> {
    prelu(&conv.forward(x)?, slopes)
}

pub(crate) struct PNet {
    conv1: Conv,
    prelu1: Tensor,
    conv2: Conv,
    prelu2: Tensor,
    conv3: Conv,
    prelu3: Tensor,
    conv4_1: Conv,
    conv4_2: Conv,
}

/// P-Net's weights as host vectors (PyTorch layouts), for [`super::pnet_cpu::PNetCpu`]; `prelu[i]` is
/// the PReLU after conv i+1.
pub(crate) struct PNetWeights {
    pub conv1: HostLayer,
    pub conv2: HostLayer,
    pub conv3: HostLayer,
    pub prelu: [Vec<f32>; 3],
    /// The face-logits head [2, 32, 1, 1] and the box-regression head [4, 32, 1, 1].
    pub conv4_1: HostLayer,
    pub conv4_2: HostLayer,
}

impl PNet {
    /// The ops network and the host copy of its weights (for the CPU's own loops).
    pub fn load(w: &mut Weights) -> Result<(PNet, PNetWeights)> {
        let conv1 = w.layer("conv1", &[10, 3, 3, 3])?;
        let prelu1 = w.prelu("prelu1", 10)?;
        let conv2 = w.layer("conv2", &[16, 10, 3, 3])?;
        let prelu2 = w.prelu("prelu2", 16)?;
        let conv3 = w.layer("conv3", &[32, 16, 3, 3])?;
        let prelu3 = w.prelu("prelu3", 32)?;
        let raw = PNetWeights {
            conv1,
            conv2,
            conv3,
            prelu: [prelu1, prelu2, prelu3],
            conv4_1: w.layer("conv4_1", &[2, 32, 1, 1])?,
            conv4_2: w.layer("conv4_2", &[4, 32, 1, 1])?,
        };
        let net = PNet {
            conv1: w.conv(&raw.conv1)?,
            prelu1: w.slopes(&raw.prelu[0])?,
            conv2: w.conv(&raw.conv2)?,
            prelu2: w.slopes(&raw.prelu[1])?,
            conv3: w.conv(&raw.conv3)?,
            prelu3: w.slopes(&raw.prelu[2])?,
            conv4_1: w.conv(&raw.conv4_1)?,
            conv4_2: w.conv(&raw.conv4_2)?,
        };
        Ok((net, raw))
    }
    /// (box regression [N, 4, h, w], face probabilities [N, 2, h, w]) of a normalised image [N, 3, H, W].
    pub fn forward(&self, x: &Tensor) -> Result<(Tensor, Tensor)> {
        let x = conv_prelu(x, &self.conv1, &self.prelu1)?;
        let x = max_pool2d_ceil(&x, 2, 2)?;
        let x = conv_prelu(&x, &self.conv2, &self.prelu2)?;
        let x = conv_prelu(&x, &self.conv3, &self.prelu3)?;
        let probs = softmax_channels(&self.conv4_1.forward(&x)?)?;
        Ok((self.conv4_2.forward(&x)?, probs))
    }
}

/// The sizes of R-Net or O-Net, which share one form: K×K conv → PReLU layers, each but the last
/// followed by a ceil-mode max pool; a dense layer over the last map → PReLU; then dense heads on that
/// hidden vector, the first the face logits (softmaxed). The weights' names follow from it: conv1..,
/// prelu1.. (the last after the dense layer), dense{n+1} and dense{n+2}_1.. for n convs.
pub(crate) struct CropNetShape {
    /// For messages: "R-Net", "O-Net".
    pub name: &'static str,
    /// The side of the square input crops.
    pub side: usize,
    /// The convs in order.
    pub convs: &'static [CropConvSize],
    /// The last conv's map [C, H, W], which the dense layer reads.
    pub last_map: [usize; 3],
    /// The dense layer's outputs.
    pub hidden: usize,
    /// Each head's outputs: face logits (2), box regression (4), then O-Net's landmarks (10: 5 x, 5 y).
    pub heads: &'static [usize],
}

/// One conv of a crop net: [out, in, K], and the max pool (window, stride) after its PReLU, if any.
pub(crate) type CropConvSize = ([usize; 3], Option<(usize, usize)>);

/// R-Net: 24×24×3 → conv 3×3 → 22×22×28 → pool 3/2 → 11×11×28 → conv 3×3 → 9×9×48 → pool 3/2 →
/// 4×4×48 → conv 2×2 → 3×3×64 → dense 128 → heads 2 + 4.
pub(crate) const RNET: CropNetShape = CropNetShape {
    name: "R-Net",
    side: 24,
    convs: &[([28, 3, 3], Some((3, 2))), ([48, 28, 3], Some((3, 2))), ([64, 48, 2], None)],
    last_map: [64, 3, 3],
    hidden: 128,
    heads: &[2, 4],
};

/// O-Net: 48×48×3 → conv 3×3 → 46×46×32 → pool 3/2 → 23×23×32 → conv 3×3 → 21×21×64 → pool 3/2 →
/// 10×10×64 → conv 3×3 → 8×8×64 → pool 2/2 → 4×4×64 → conv 2×2 → 3×3×128 → dense 256 → heads 2 + 4 + 10.
pub(crate) const ONET: CropNetShape = CropNetShape {
    name: "O-Net",
    side: 48,
    convs: &[
        ([32, 3, 3], Some((3, 2))),
        ([64, 32, 3], Some((3, 2))),
        ([64, 64, 3], Some((2, 2))),
        ([128, 64, 2], None),
    ],
    last_map: [128, 3, 3],
    hidden: 256,
    heads: &[2, 4, 10],
};

/// R-Net's or O-Net's weights as host vectors (PyTorch layouts), for [`super::crops_cpu::CropNetCpu`].
pub(crate) struct CropNetWeights {
    pub convs: Vec<HostLayer>,
    /// The PReLU slopes after each conv, then after the dense layer.
    pub prelu: Vec<Vec<f32>>,
    /// [hidden, C·H·W] in facenet's W, H, C flatten order.
    pub dense: HostLayer,
    pub heads: Vec<HostLayer>,
}

/// One conv → PReLU layer of a [`CropNet`] and the max pool (window, stride) after it.
struct CropConv {
    conv: Conv,
    prelu: Tensor,
    pool: Option<(usize, usize)>,
}

/// R-Net or O-Net on the ops.
pub(crate) struct CropNet {
    shape: &'static CropNetShape,
    convs: Vec<CropConv>,
    dense: Conv,
    dense_prelu: Tensor,
    heads: Vec<Conv>,
}

impl CropNet {
    /// The ops network of `shape` and the host copy of its weights (for the CPU's own loops).
    pub fn load(w: &mut Weights, shape: &'static CropNetShape) -> Result<(CropNet, CropNetWeights)> {
        let n = shape.convs.len();
        let convs = (shape.convs.iter().enumerate())
            .map(|(i, &([out, cin, k], _))| w.layer(&format!("conv{}", i + 1), &[out, cin, k, k]))
            .collect::<Result<Vec<_>>>()?;
        let [c, h, wd] = shape.last_map;
        let dense = w.layer(&format!("dense{}", n + 1), &[shape.hidden, c * h * wd])?;
        let widths = shape.convs.iter().map(|([out, ..], _)| *out).chain([shape.hidden]);
        let prelu = widths.enumerate().map(|(i, c)| w.prelu(&format!("prelu{}", i + 1), c)).collect::<Result<_>>()?;
        let heads = (shape.heads.iter().enumerate())
            .map(|(j, &out)| w.layer(&format!("dense{}_{}", n + 2, j + 1), &[out, shape.hidden]))
            .collect::<Result<_>>()?;
        let raw = CropNetWeights { convs, prelu, dense, heads };
        let net = CropNet {
            shape,
            convs: (raw.convs.iter().zip(&raw.prelu).zip(shape.convs))
                .map(|((l, a), &(_, pool))| Ok(CropConv { conv: w.conv(l)?, prelu: w.slopes(a)?, pool }))
                .collect::<Result<_>>()?,
            dense: w.dense_over_map(&raw.dense, shape.last_map)?,
            dense_prelu: w.slopes(&raw.prelu[n])?,
            heads: raw.heads.iter().map(|l| w.conv(l)).collect::<Result<_>>()?,
        };
        Ok((net, raw))
    }
    pub fn shape(&self) -> &'static CropNetShape {
        self.shape
    }
    /// The heads of normalised crops [N, 3, side, side], each [N, out, 1, 1] in the shape's order, the
    /// first as face probabilities (softmax of the logits).
    pub fn forward(&self, x: &Tensor) -> Result<Vec<Tensor>> {
        let mut x = x.clone();
        for layer in &self.convs {
            x = conv_prelu(&x, &layer.conv, &layer.prelu)?;
            if let Some((window, stride)) = layer.pool {
                x = max_pool2d_ceil(&x, window, stride)?;
            }
        }
        let x = conv_prelu(&x, &self.dense, &self.dense_prelu)?;
        let mut out = self.heads.iter().map(|h| h.forward(&x)).collect::<Result<Vec<_>>>()?;
        out[0] = softmax_channels(&out[0])?;
        Ok(out)
    }
}
