//! P-Net on the CPU without the tensor ops: the pyramid's dozen images run through three 3×3 convs of
//! 3→10→16→32 channels, shapes where im2col + GEMM spends more time packing than multiplying. Here
//! the maps are channels-last (HWC) and each conv is a loop over the taps that keeps a few output pixels ×
//! all output channels in registers, with bias and PReLU fused; max-pool and the two 1×1 heads +
//! softmax are fused too. An AVX2+FMA build of the same loops is picked at run time; the plain build
//! is the fallback. The result equals [`super::nets::PNet::forward`] up to float summation order
//! (`pnet_matches_the_ops` below). The conv and pool loops are shared with R-Net and O-Net
//! ([`super::layers_cpu`]).

use super::layers_cpu::{has_avx2_fma, Avx2, ConvLayer, Kernels, Plain};
use super::nets::PNetWeights;

/// Channels of the three convs' outputs.
const C1: usize = 10;
const C2: usize = 16;
const C3: usize = 32;
/// Values per output pixel: 2 face logits, then 4 box regression values.
pub(crate) const HEAD_OUT: usize = 6;

/// P-Net's weights re-laid out once for the loops.
pub(crate) struct PNetCpu {
    conv1: ConvLayer<3>,
    conv2: ConvLayer<3>,
    conv3: ConvLayer<3>,
    /// The two 1×1 heads stacked as one 1×1 conv 32 → 6 whose PReLU slopes are 1 (the identity).
    heads: ConvLayer<1>,
}

/// One thread's P-Net maps, kept between calls; they only grow, and every value read is written first.
#[derive(Default)]
pub(crate) struct PNetScratch {
    y1: Vec<f32>,
    pooled: Vec<f32>,
    y2: Vec<f32>,
    y3: Vec<f32>,
    /// The heads' output, [oh][ow][HEAD_OUT].
    pub out: Vec<f32>,
}

/// The first `n` values of `v`, grown (zero-filled) if it is shorter.
pub(crate) fn grown(v: &mut Vec<f32>, n: usize) -> &mut [f32] {
    if v.len() < n {
        v.resize(n, 0.0);
    }
    &mut v[..n]
}

/// P-Net's output extent for an h×w input, or None under its 12×12 window.
pub(crate) fn pnet_out_extent(h: usize, w: usize) -> Option<[usize; 2]> {
    (h >= 12 && w >= 12).then(|| [(h - 2).div_ceil(2) - 4, (w - 2).div_ceil(2) - 4])
}

/// The input rows P-Net needs for output rows r0..r1 of an image `h` rows high: running P-Net on just
/// those rows (from the first) gives exactly those output rows. Output row r reads conv3 window rows
/// r..r+2 of conv2, r..r+4 of the pool, conv1 rows 2r..2r+8 (clipped at the map's end, where the
/// ceil-mode pool clips too) and input rows 2r..2r+10.
pub(crate) fn pnet_input_rows(r0: usize, r1: usize, h: usize) -> std::ops::Range<usize> {
    2 * r0..(2 * r1 + 8).min(h - 2) + 2
}

impl PNetCpu {
    pub fn new(w: &PNetWeights) -> PNetCpu {
        let mut head_w = Vec::with_capacity(HEAD_OUT * C3);
        head_w.extend_from_slice(&w.conv4_1.weight[..2 * C3]);
        head_w.extend_from_slice(&w.conv4_2.weight[..4 * C3]);
        let head_b: Vec<f32> = w.conv4_1.bias[..2].iter().chain(&w.conv4_2.bias[..4]).copied().collect();
        PNetCpu {
            conv1: ConvLayer::new(&w.conv1.weight, &w.conv1.bias, &w.prelu[0], 3, C1),
            conv2: ConvLayer::new(&w.conv2.weight, &w.conv2.bias, &w.prelu[1], C1, C2),
            conv3: ConvLayer::new(&w.conv3.weight, &w.conv3.bias, &w.prelu[2], C2, C3),
            heads: ConvLayer::new(&head_w, &head_b, &[1.0; HEAD_OUT], C3, HEAD_OUT),
        }
    }

    /// P-Net on one normalised image, planar [3][h][w]: (box regression [4][oh][ow], face probabilities
    /// [2][oh][ow], [oh, ow]) — the layout of the ops' output at batch 1. An image under P-Net's 12×12
    /// window gives empty maps.
    #[cfg(test)]
    pub fn forward(&self, chw: &[f32], h: usize, w: usize) -> (Vec<f32>, Vec<f32>, [usize; 2]) {
        self.forward_planar(chw, h, w, has_avx2_fma())
    }

    #[cfg(test)]
    fn forward_planar(&self, chw: &[f32], h: usize, w: usize, simd: bool) -> (Vec<f32>, Vec<f32>, [usize; 2]) {
        if chw.len() < 3 * h * w {
            return (Vec::new(), Vec::new(), [0, 0]);
        }
        let mut x = vec![0f32; h * w * 3];
        super::layers_cpu::to_hwc(chw, h * w, &mut x);
        let mut s = PNetScratch::default();
        let [oh, ow] =
            if simd { self.forward_hwc::<Avx2>(&mut s, &x, h, w) } else { self.forward_hwc::<Plain>(&mut s, &x, h, w) };
        let plane = oh * ow;
        let (mut reg, mut probs) = (vec![0f32; 4 * plane], vec![0f32; 2 * plane]);
        for (p, o) in s.out[..plane * HEAD_OUT].chunks_exact(HEAD_OUT).enumerate() {
            let [p0, p1] = super::layers_cpu::softmax2(o[0], o[1]);
            probs[p] = p0;
            probs[plane + p] = p1;
            for r in 0..4 {
                reg[r * plane + p] = o[2 + r];
            }
        }
        (reg, probs, [oh, ow])
    }

    /// P-Net on a normalised channels-last image [h][w][3] (or a band of rows, see [`pnet_input_rows`])
    /// with the build this CPU runs best; the heads' output is left in `s.out`. Returns [oh, ow]
    /// ([0, 0] under the 12×12 window).
    pub fn run(&self, s: &mut PNetScratch, x: &[f32], h: usize, w: usize) -> [usize; 2] {
        if has_avx2_fma() {
            self.forward_hwc::<Avx2>(s, x, h, w)
        } else {
            self.forward_hwc::<Plain>(s, x, h, w)
        }
    }

    fn forward_hwc<K: Kernels>(&self, s: &mut PNetScratch, x: &[f32], h: usize, w: usize) -> [usize; 2] {
        if pnet_out_extent(h, w).is_none() || x.len() < 3 * h * w {
            return [0, 0];
        }
        let y1 = grown(&mut s.y1, (h - 2) * (w - 2) * C1);
        let (h1, w1) = K::conv_prelu::<3, 3, C1, 4>(x, h, w, &self.conv1, y1);
        let (hp, wp) = (h1.div_ceil(2), w1.div_ceil(2));
        let pooled = grown(&mut s.pooled, hp * wp * C1);
        // 10×10 or more: the 2×2 window fits.
        let Some((hp, wp)) = K::max_pool::<2, 2, C1>(y1, h1, w1, pooled) else {
            return [0, 0];
        };
        let y2 = grown(&mut s.y2, (hp - 2) * (wp - 2) * C2);
        let (h2, w2) = K::conv_prelu::<3, C1, C2, 6>(pooled, hp, wp, &self.conv2, y2);
        let y3 = grown(&mut s.y3, (h2 - 2) * (w2 - 2) * C3);
        let (h3, w3) = K::conv_prelu::<3, C2, C3, 6>(y2, h2, w2, &self.conv3, y3);
        let out = grown(&mut s.out, h3 * w3 * HEAD_OUT);
        K::conv_prelu::<1, C3, HEAD_OUT, 6>(y3, h3, w3, &self.heads, out);
        [h3, w3]
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
            let plain = fast.forward_planar(&input, h, w, false);
            let picked = fast.forward(&input, h, w);
            for (got_reg, got_probs, dims) in [plain, picked] {
                assert_eq!(dims, [oh, ow], "{h}x{w}");
                assert!(max_diff(&got_reg, &want_reg) < 1e-4, "{h}x{w} regression");
                assert!(max_diff(&got_probs, &want_probs) < 1e-5, "{h}x{w} probabilities");
            }
            // Bands of output rows from their input rows alone equal the whole map's rows.
            let mut hwc = vec![0f32; h * w * 3];
            crate::detect::layers_cpu::to_hwc(&input, h * w, &mut hwc);
            let mut whole = PNetScratch::default();
            let [oh, ow] = fast.run(&mut whole, &hwc, h, w);
            let bands = [(0, 1), (1, 3), (oh.saturating_sub(2), oh)];
            for (r0, r1) in bands.into_iter().filter(|&(r0, r1)| r0 < r1 && r1 <= oh) {
                let rows = pnet_input_rows(r0, r1, h);
                let mut band = PNetScratch::default();
                let dims = fast.run(&mut band, &hwc[rows.start * w * 3..rows.end * w * 3], rows.len(), w);
                assert_eq!(dims, [r1 - r0, ow], "{h}x{w} band {r0}..{r1}");
                let n = (r1 - r0) * ow * HEAD_OUT;
                assert_eq!(band.out[..n], whole.out[r0 * ow * HEAD_OUT..][..n], "{h}x{w} band {r0}..{r1}");
            }
        }
    }
}
