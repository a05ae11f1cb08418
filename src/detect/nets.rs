//! P-Net, R-Net and O-Net of MTCNN (facenet-pytorch's layer names and shapes) on hrk's ops.
//! `load` also hands back the weights as host vectors, from which the CPU's direct paths
//! (`pnet_cpu`, `crops_cpu`) build their own layouts.
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
        Ok(HostLayer { weight, bias })
    }
    fn prelu(&mut self, name: &str, c: usize) -> Result<Vec<f32>> {
        self.take(&format!("{name}.weight"), &[c])
    }
    /// The ops conv of a host layer; `shape` [out, in, kh, kw] (a dense layer on [N, C, 1, 1]: a 1×1 conv).
    fn conv(&self, l: &HostLayer, shape: [usize; 4]) -> Result<Conv> {
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

/// One layer's weight and bias as host vectors in PyTorch's layout, for the CPU's direct paths.
pub(crate) struct HostLayer {
    pub weight: Vec<f32>,
    pub bias: Vec<f32>,
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

/// P-Net's weights as host vectors (PyTorch layouts), for [`super::pnet_cpu::PNetCpu`].
pub(crate) struct PNetWeights {
    pub w1: Vec<f32>,
    pub b1: Vec<f32>,
    pub a1: Vec<f32>,
    pub w2: Vec<f32>,
    pub b2: Vec<f32>,
    pub a2: Vec<f32>,
    pub w3: Vec<f32>,
    pub b3: Vec<f32>,
    pub a3: Vec<f32>,
    pub w4_1: Vec<f32>,
    pub b4_1: Vec<f32>,
    pub w4_2: Vec<f32>,
    pub b4_2: Vec<f32>,
}

impl PNet {
    /// The ops network and the host copy of its weights (for the CPU's direct path).
    pub fn load(w: &mut Weights) -> Result<(PNet, PNetWeights)> {
        let raw = PNetWeights {
            w1: w.take("conv1.weight", &[10, 3, 3, 3])?,
            b1: w.take("conv1.bias", &[10])?,
            a1: w.take("prelu1.weight", &[10])?,
            w2: w.take("conv2.weight", &[16, 10, 3, 3])?,
            b2: w.take("conv2.bias", &[16])?,
            a2: w.take("prelu2.weight", &[16])?,
            w3: w.take("conv3.weight", &[32, 16, 3, 3])?,
            b3: w.take("conv3.bias", &[32])?,
            a3: w.take("prelu3.weight", &[32])?,
            w4_1: w.take("conv4_1.weight", &[2, 32, 1, 1])?,
            b4_1: w.take("conv4_1.bias", &[2])?,
            w4_2: w.take("conv4_2.weight", &[4, 32, 1, 1])?,
            b4_2: w.take("conv4_2.bias", &[4])?,
        };
        let conv = |w: &Weights, wt: &[f32], b: &[f32], shape: [usize; 4]| -> Result<Conv> {
            Ok(Conv { weight: w.tensor(&shape, wt.to_vec())?, bias: w.tensor(&[shape[0]], b.to_vec())? })
        };
        let net = PNet {
            conv1: conv(w, &raw.w1, &raw.b1, [10, 3, 3, 3])?,
            prelu1: w.tensor(&[10], raw.a1.clone())?,
            conv2: conv(w, &raw.w2, &raw.b2, [16, 10, 3, 3])?,
            prelu2: w.tensor(&[16], raw.a2.clone())?,
            conv3: conv(w, &raw.w3, &raw.b3, [32, 16, 3, 3])?,
            prelu3: w.tensor(&[32], raw.a3.clone())?,
            conv4_1: conv(w, &raw.w4_1, &raw.b4_1, [2, 32, 1, 1])?,
            conv4_2: conv(w, &raw.w4_2, &raw.b4_2, [4, 32, 1, 1])?,
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

pub(crate) struct RNet {
    conv1: Conv,
    prelu1: Tensor,
    conv2: Conv,
    prelu2: Tensor,
    conv3: Conv,
    prelu3: Tensor,
    dense4: Conv,
    prelu4: Tensor,
    dense5_1: Conv,
    dense5_2: Conv,
}

/// R-Net's weights as host vectors (PyTorch layouts), for [`super::crops_cpu::RNetCpu`]; `prelu[i]` is
/// the PReLU after conv i+1 (dense4 for i = 3).
pub(crate) struct RNetWeights {
    pub conv1: HostLayer,
    pub conv2: HostLayer,
    pub conv3: HostLayer,
    pub dense4: HostLayer,
    pub prelu: [Vec<f32>; 4],
    pub dense5_1: HostLayer,
    pub dense5_2: HostLayer,
}

impl RNet {
    /// The ops network and the host copy of its weights (for the CPU's direct path).
    pub fn load(w: &mut Weights) -> Result<(RNet, RNetWeights)> {
        let raw = RNetWeights {
            conv1: w.layer("conv1", &[28, 3, 3, 3])?,
            conv2: w.layer("conv2", &[48, 28, 3, 3])?,
            conv3: w.layer("conv3", &[64, 48, 2, 2])?,
            dense4: w.layer("dense4", &[128, 576])?,
            prelu: [w.prelu("prelu1", 28)?, w.prelu("prelu2", 48)?, w.prelu("prelu3", 64)?, w.prelu("prelu4", 128)?],
            dense5_1: w.layer("dense5_1", &[2, 128])?,
            dense5_2: w.layer("dense5_2", &[4, 128])?,
        };
        let slopes = |i: usize| w.tensor(&[raw.prelu[i].len()], raw.prelu[i].clone());
        let net = RNet {
            conv1: w.conv(&raw.conv1, [28, 3, 3, 3])?,
            prelu1: slopes(0)?,
            conv2: w.conv(&raw.conv2, [48, 28, 3, 3])?,
            prelu2: slopes(1)?,
            conv3: w.conv(&raw.conv3, [64, 48, 2, 2])?,
            prelu3: slopes(2)?,
            dense4: w.dense_over_map(&raw.dense4, [64, 3, 3])?,
            prelu4: slopes(3)?,
            dense5_1: w.conv(&raw.dense5_1, [2, 128, 1, 1])?,
            dense5_2: w.conv(&raw.dense5_2, [4, 128, 1, 1])?,
        };
        Ok((net, raw))
    }
    /// (box regression [N, 4, 1, 1], probabilities [N, 2, 1, 1]) of 24×24 crops [N, 3, 24, 24].
    pub fn forward(&self, x: &Tensor) -> Result<(Tensor, Tensor)> {
        let x = conv_prelu(x, &self.conv1, &self.prelu1)?;
        let x = max_pool2d_ceil(&x, 3, 2)?;
        let x = conv_prelu(&x, &self.conv2, &self.prelu2)?;
        let x = max_pool2d_ceil(&x, 3, 2)?;
        let x = conv_prelu(&x, &self.conv3, &self.prelu3)?;
        let x = conv_prelu(&x, &self.dense4, &self.prelu4)?;
        let probs = softmax_channels(&self.dense5_1.forward(&x)?)?;
        Ok((self.dense5_2.forward(&x)?, probs))
    }
}

pub(crate) struct ONet {
    conv1: Conv,
    prelu1: Tensor,
    conv2: Conv,
    prelu2: Tensor,
    conv3: Conv,
    prelu3: Tensor,
    conv4: Conv,
    prelu4: Tensor,
    dense5: Conv,
    prelu5: Tensor,
    dense6_1: Conv,
    dense6_2: Conv,
    dense6_3: Conv,
}

/// O-Net's weights as host vectors (PyTorch layouts), for [`super::crops_cpu::ONetCpu`]; `prelu[i]` is
/// the PReLU after conv i+1 (dense5 for i = 4).
pub(crate) struct ONetWeights {
    pub conv1: HostLayer,
    pub conv2: HostLayer,
    pub conv3: HostLayer,
    pub conv4: HostLayer,
    pub dense5: HostLayer,
    pub prelu: [Vec<f32>; 5],
    pub dense6_1: HostLayer,
    pub dense6_2: HostLayer,
    pub dense6_3: HostLayer,
}

impl ONet {
    /// The ops network and the host copy of its weights (for the CPU's direct path).
    pub fn load(w: &mut Weights) -> Result<(ONet, ONetWeights)> {
        let raw = ONetWeights {
            conv1: w.layer("conv1", &[32, 3, 3, 3])?,
            conv2: w.layer("conv2", &[64, 32, 3, 3])?,
            conv3: w.layer("conv3", &[64, 64, 3, 3])?,
            conv4: w.layer("conv4", &[128, 64, 2, 2])?,
            dense5: w.layer("dense5", &[256, 1152])?,
            prelu: [
                w.prelu("prelu1", 32)?,
                w.prelu("prelu2", 64)?,
                w.prelu("prelu3", 64)?,
                w.prelu("prelu4", 128)?,
                w.prelu("prelu5", 256)?,
            ],
            dense6_1: w.layer("dense6_1", &[2, 256])?,
            dense6_2: w.layer("dense6_2", &[4, 256])?,
            dense6_3: w.layer("dense6_3", &[10, 256])?,
        };
        let slopes = |i: usize| w.tensor(&[raw.prelu[i].len()], raw.prelu[i].clone());
        let net = ONet {
            conv1: w.conv(&raw.conv1, [32, 3, 3, 3])?,
            prelu1: slopes(0)?,
            conv2: w.conv(&raw.conv2, [64, 32, 3, 3])?,
            prelu2: slopes(1)?,
            conv3: w.conv(&raw.conv3, [64, 64, 3, 3])?,
            prelu3: slopes(2)?,
            conv4: w.conv(&raw.conv4, [128, 64, 2, 2])?,
            prelu4: slopes(3)?,
            dense5: w.dense_over_map(&raw.dense5, [128, 3, 3])?,
            prelu5: slopes(4)?,
            dense6_1: w.conv(&raw.dense6_1, [2, 256, 1, 1])?,
            dense6_2: w.conv(&raw.dense6_2, [4, 256, 1, 1])?,
            dense6_3: w.conv(&raw.dense6_3, [10, 256, 1, 1])?,
        };
        Ok((net, raw))
    }
    /// (box regression [N, 4], landmarks [N, 10] (5 x then 5 y), probabilities [N, 2]), each [N, C, 1, 1],
    /// of 48×48 crops [N, 3, 48, 48].
    pub fn forward(&self, x: &Tensor) -> Result<(Tensor, Tensor, Tensor)> {
        let x = conv_prelu(x, &self.conv1, &self.prelu1)?;
        let x = max_pool2d_ceil(&x, 3, 2)?;
        let x = conv_prelu(&x, &self.conv2, &self.prelu2)?;
        let x = max_pool2d_ceil(&x, 3, 2)?;
        let x = conv_prelu(&x, &self.conv3, &self.prelu3)?;
        let x = max_pool2d_ceil(&x, 2, 2)?;
        let x = conv_prelu(&x, &self.conv4, &self.prelu4)?;
        let x = conv_prelu(&x, &self.dense5, &self.prelu5)?;
        let probs = softmax_channels(&self.dense6_1.forward(&x)?)?;
        Ok((self.dense6_2.forward(&x)?, self.dense6_3.forward(&x)?, probs))
    }
}
