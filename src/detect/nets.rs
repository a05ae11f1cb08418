//! P-Net, R-Net and O-Net of MTCNN (facenet-pytorch's layer names and shapes) on hrk's ops.
//!
//! The dense layers run as convolutions: facenet flattens `x.permute(0, 3, 2, 1)` (W, H, C order) before
//! `dense4` / `dense5`, so their [out, W·H·C] weights are reordered once at load into [out, C, H, W] conv
//! kernels covering the whole feature map; the later dense layers are 1×1 convs on [N, C, 1, 1].

use crate::host::HostTensor;
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
    fn conv(&mut self, name: &str, cin: usize, cout: usize, k: usize) -> Result<Conv> {
        let w = self.take(&format!("{name}.weight"), &[cout, cin, k, k])?;
        let b = self.take(&format!("{name}.bias"), &[cout])?;
        Ok(Conv { weight: self.tensor(&[cout, cin, k, k], w)?, bias: self.tensor(&[cout], b)? })
    }
    fn prelu(&mut self, name: &str, c: usize) -> Result<Tensor> {
        let a = self.take(&format!("{name}.weight"), &[c])?;
        self.tensor(&[c], a)
    }
    /// A dense layer over a flattened [C, H, W] map (facenet's W, H, C flatten order) as a conv with an
    /// H×W kernel.
    fn dense_over_map(&mut self, name: &str, [c, h, w]: [usize; 3], out: usize) -> Result<Conv> {
        let dense = self.take(&format!("{name}.weight"), &[out, c * h * w])?;
        let b = self.take(&format!("{name}.bias"), &[out])?;
        let mut kernel = vec![0f32; out * c * h * w];
        for o in 0..out {
            for ch in 0..c {
                for y in 0..h {
                    for x in 0..w {
                        kernel[((o * c + ch) * h + y) * w + x] = dense[o * c * h * w + (x * h + y) * c + ch];
                    }
                }
            }
        }
        debug_assert_eq!(h, w, "MTCNN's flattened maps are square");
        Ok(Conv { weight: self.tensor(&[out, c, h, w], kernel)?, bias: self.tensor(&[out], b)? })
    }
    /// A dense layer on [N, C, 1, 1] as a 1×1 conv.
    fn dense(&mut self, name: &str, cin: usize, out: usize) -> Result<Conv> {
        let wgt = self.take(&format!("{name}.weight"), &[out, cin])?;
        let b = self.take(&format!("{name}.bias"), &[out])?;
        Ok(Conv { weight: self.tensor(&[out, cin, 1, 1], wgt)?, bias: self.tensor(&[out], b)? })
    }
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

impl RNet {
    pub fn load(w: &mut Weights) -> Result<RNet> {
        Ok(RNet {
            conv1: w.conv("conv1", 3, 28, 3)?,
            prelu1: w.prelu("prelu1", 28)?,
            conv2: w.conv("conv2", 28, 48, 3)?,
            prelu2: w.prelu("prelu2", 48)?,
            conv3: w.conv("conv3", 48, 64, 2)?,
            prelu3: w.prelu("prelu3", 64)?,
            dense4: w.dense_over_map("dense4", [64, 3, 3], 128)?,
            prelu4: w.prelu("prelu4", 128)?,
            dense5_1: w.dense("dense5_1", 128, 2)?,
            dense5_2: w.dense("dense5_2", 128, 4)?,
        })
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

impl ONet {
    pub fn load(w: &mut Weights) -> Result<ONet> {
        Ok(ONet {
            conv1: w.conv("conv1", 3, 32, 3)?,
            prelu1: w.prelu("prelu1", 32)?,
            conv2: w.conv("conv2", 32, 64, 3)?,
            prelu2: w.prelu("prelu2", 64)?,
            conv3: w.conv("conv3", 64, 64, 3)?,
            prelu3: w.prelu("prelu3", 64)?,
            conv4: w.conv("conv4", 64, 128, 2)?,
            prelu4: w.prelu("prelu4", 128)?,
            dense5: w.dense_over_map("dense5", [128, 3, 3], 256)?,
            prelu5: w.prelu("prelu5", 256)?,
            dense6_1: w.dense("dense6_1", 256, 2)?,
            dense6_2: w.dense("dense6_2", 256, 4)?,
            dense6_3: w.dense("dense6_3", 256, 10)?,
        })
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
