//! P-Net on the CPU without the tensor ops: the pyramid's dozen images run through three 3×3 convs of
//! 3→10→16→32 channels, shapes where im2col + GEMM spends more time packing than multiplying. Here
//! the maps are channels-last (HWC) and each conv is a direct loop that keeps a few output pixels ×
//! all output channels in registers, with bias and PReLU fused; max-pool and the two 1×1 heads +
//! softmax are fused too. An AVX2+FMA build of the same loops is picked at run time; the plain build
//! is the fallback. The result equals [`super::nets::PNet::forward`] up to float summation order
//! (`pnet_matches_the_ops` below). The conv and pool loops are shared with R-Net and O-Net
//! ([`super::direct_cpu`]).

use super::direct_cpu::{conv_prelu, has_avx2_fma, max_pool, softmax2, to_hwc, ConvLayer, MulAdd, Plain};
use super::nets::PNetWeights;

/// Channels of the three convs' outputs.
const C1: usize = 10;
const C2: usize = 16;
const C3: usize = 32;

/// P-Net's weights re-laid out once for the direct loops.
pub(crate) struct PNetCpu {
    conv1: ConvLayer<3, 16>,
    conv2: ConvLayer<3, C2>,
    conv3: ConvLayer<3, 16>,
    /// The 1×1 heads stacked: rows 0..2 face logits, 2..6 box regression; [6][32].
    head_w: [[f32; C3]; 6],
    head_b: [f32; 6],
}

impl PNetCpu {
    pub fn new(w: &PNetWeights) -> PNetCpu {
        let mut head_w = [[0f32; C3]; 6];
        let mut head_b = [0f32; 6];
        for r in 0..2 {
            head_w[r].copy_from_slice(&w.w4_1[r * C3..(r + 1) * C3]);
            head_b[r] = w.b4_1[r];
        }
        for r in 0..4 {
            head_w[2 + r].copy_from_slice(&w.w4_2[r * C3..(r + 1) * C3]);
            head_b[2 + r] = w.b4_2[r];
        }
        PNetCpu {
            conv1: ConvLayer::new(&w.w1, &w.b1, &w.a1, 3, C1),
            conv2: ConvLayer::new(&w.w2, &w.b2, &w.a2, C1, C2),
            conv3: ConvLayer::new(&w.w3, &w.b3, &w.a3, C2, C3),
            head_w,
            head_b,
        }
    }

    /// P-Net on one normalised image, planar [3][h][w]: (box regression [4][oh][ow], face probabilities
    /// [2][oh][ow], [oh, ow]) — the layout of the ops' output at batch 1. An image under P-Net's 12×12
    /// window gives empty maps.
    pub fn forward(&self, chw: &[f32], h: usize, w: usize) -> (Vec<f32>, Vec<f32>, [usize; 2]) {
        #[cfg(target_arch = "x86_64")]
        {
            if has_avx2_fma() {
                // SAFETY: the CPU supports AVX2 and FMA (checked just above).
                return unsafe { self.forward_avx2(chw, h, w) };
            }
        }
        self.forward_generic::<Plain>(chw, h, w)
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn forward_avx2(&self, chw: &[f32], h: usize, w: usize) -> (Vec<f32>, Vec<f32>, [usize; 2]) {
        self.forward_generic::<super::direct_cpu::Fused>(chw, h, w)
    }

    #[inline(always)]
    fn forward_generic<M: MulAdd>(&self, chw: &[f32], h: usize, w: usize) -> (Vec<f32>, Vec<f32>, [usize; 2]) {
        if h < 12 || w < 12 || chw.len() < 3 * h * w {
            return (Vec::new(), Vec::new(), [0, 0]);
        }
        let mut x = vec![0f32; h * w * 3];
        to_hwc(chw, h * w, &mut x);
        let mut y1 = vec![0f32; (h - 2) * (w - 2) * C1];
        let (h1, w1) = conv_prelu::<M, 3, 3, C1, 16, 4>(&x, h, w, &self.conv1, &mut y1);
        let (hp, wp) = (h1.div_ceil(2), w1.div_ceil(2));
        let mut pooled = vec![0f32; hp * wp * C1];
        // 10×10 or more: the 2×2 window fits.
        let Some((hp, wp)) = max_pool::<2, 2, C1>(&y1, h1, w1, &mut pooled) else {
            return (Vec::new(), Vec::new(), [0, 0]);
        };
        let mut y2 = vec![0f32; (hp - 2) * (wp - 2) * C2];
        let (h2, w2) = conv_prelu::<M, 3, C1, C2, C2, 6>(&pooled, hp, wp, &self.conv2, &mut y2);
        let mut y3 = vec![0f32; (h2 - 2) * (w2 - 2) * C3];
        let (h3, w3) = conv_prelu::<M, 3, C2, C3, 16, 6>(&y2, h2, w2, &self.conv3, &mut y3);
        // The heads: 2 logits → softmax, 4 regression values, per pixel.
        let out_plane = h3 * w3;
        let mut reg = vec![0f32; 4 * out_plane];
        let mut probs = vec![0f32; 2 * out_plane];
        for (p, feat) in y3.chunks_exact(C3).enumerate() {
            let mut o = self.head_b;
            for (r, row) in self.head_w.iter().enumerate() {
                let mut s = 0f32;
                for (a, b) in row.iter().zip(feat) {
                    s += a * b;
                }
                o[r] += s;
            }
            let [p0, p1] = softmax2(o[0], o[1]);
            probs[p] = p0;
            probs[out_plane + p] = p1;
            for r in 0..4 {
                reg[r * out_plane + p] = o[2 + r];
            }
        }
        (reg, probs, [h3, w3])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detect::nets::{PNet, Weights};
    use crate::tensor::{Device, Tensor};
    use std::collections::HashMap;

    fn max_diff(a: &[f32], b: &[f32]) -> f32 {
        assert_eq!(a.len(), b.len());
        a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
    }

    #[test]
    fn pnet_matches_the_ops() {
        let mut map: HashMap<String, _> =
            crate::io::state_dict_from_bytes(crate::detect::EMBEDDED_WEIGHTS).unwrap().into_iter().collect();
        let (net, raw) = PNet::load(&mut Weights { tensors: &mut map, device: &Device::Cpu, net: "pnet" }).unwrap();
        let fast = PNetCpu::new(&raw);
        // Odd and even sizes (the ceil-mode pool's trailing window), values in the normalised range.
        for (h, w) in [(12, 12), (31, 24), (57, 43)] {
            let mut state = 12345u32 ^ (h * w) as u32;
            let input: Vec<f32> = (0..3 * h * w)
                .map(|_| {
                    state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                    (state >> 8) as f32 / (1u32 << 24) as f32 * 2.0 - 1.0
                })
                .collect();
            let x = Tensor::from_f32(&[1, 3, h, w], input.clone()).unwrap();
            let (reg, probs) = crate::autograd::no_grad(|| net.forward(&x)).unwrap();
            let [_, _, oh, ow] = probs.dims4("P-Net").unwrap();
            let (want_reg, want_probs) = (reg.to_f32_vec(), probs.to_f32_vec());
            let plain = fast.forward_generic::<Plain>(&input, h, w);
            let picked = fast.forward(&input, h, w);
            for (got_reg, got_probs, dims) in [plain, picked] {
                assert_eq!(dims, [oh, ow], "{h}x{w}");
                assert!(max_diff(&got_reg, &want_reg) < 1e-4, "{h}x{w} regression");
                assert!(max_diff(&got_probs, &want_probs) < 1e-5, "{h}x{w} probabilities");
            }
        }
    }
}
