//! R-Net and O-Net on the CPU without the tensor ops: each 24×24 or 48×48 crop runs its convs, pools
//! and PReLUs through the direct channels-last loops of [`super::direct_cpu`] on a rayon thread, into
//! one row of a feature matrix; the dense layers then run once over all crops (one GEMM), and the small
//! heads + softmax per row. The results equal [`super::nets::RNet::forward`] and
//! [`super::nets::ONet::forward`] up to float summation order (`rnet_matches_the_ops`,
//! `onet_matches_the_ops` below).

use super::direct_cpu::{has_avx2_fma, heads, softmax2, to_hwc, Avx2, ConvLayer, DensePrelu, Kernels, Plain};
use super::nets::{HostLayer, ONetWeights, RNetWeights};
use anyhow::{bail, Result};
use rayon::prelude::*;

/// facenet flattens the last map as `x.permute(0, 3, 2, 1)` (W, H, C order); the direct path's rows
/// hold it channels-last (H, W, C), so the first dense layer's weight [out][W·H·C] is re-laid once.
fn dense_for_hwc(l: &HostLayer, [c, h, w]: [usize; 3]) -> Vec<f32> {
    let f = c * h * w;
    let mut out = vec![0f32; l.weight.len()];
    for (dst, src) in out.chunks_exact_mut(f).zip(l.weight.chunks_exact(f)) {
        for y in 0..h {
            for x in 0..w {
                for ch in 0..c {
                    dst[(y * w + x) * c + ch] = src[(x * h + y) * c + ch];
                }
            }
        }
    }
    out
}

/// The output heads stacked row after row, with their biases.
fn stack_heads(layers: &[&HostLayer]) -> (Vec<f32>, Vec<f32>) {
    let rows = layers.iter().flat_map(|l| l.weight.iter().copied()).collect();
    let bias = layers.iter().flat_map(|l| l.bias.iter().copied()).collect();
    (rows, bias)
}

/// `crops` as whole crops of `per` values: how many, or an error.
fn crop_count(crops: &[f32], per: usize, net: &str) -> Result<usize> {
    if !crops.len().is_multiple_of(per) {
        bail!("{net}: {} input values are not whole crops of {per}", crops.len());
    }
    Ok(crops.len() / per)
}

/// Runs `one` on every crop (planar [3][s][s]) and its feature row, spread over the rayon threads in
/// runs of crops, each run with one set of scratch buffers (allocated per run, not per crop: the
/// fresh pages of O-Net's maps cost more to fault in than a small crop takes to compute).
fn per_crop<S>(
    crops: &[f32], per: usize, feats: &mut [f32], f: usize, scratch: impl Fn() -> S + Sync + Send,
    one: impl Fn(&[f32], &mut S, &mut [f32]) + Sync + Send,
) {
    let n = feats.len() / f.max(1);
    // Two runs per thread, so a thread that finishes early can take over half of another's share.
    let run = n.div_ceil(2 * rayon::current_num_threads()).max(1);
    feats.par_chunks_mut(f * run).zip(crops.par_chunks(per * run)).for_each(|(rows, crops)| {
        let mut s = scratch();
        for (row, crop) in rows.chunks_exact_mut(f).zip(crops.chunks_exact(per)) {
            one(crop, &mut s, row);
        }
    });
}

/// The per-crop part of R-Net and O-Net (convs and pools into the crop's feature row), generic over the
/// build of the loops.
trait CropFeatures {
    type Scratch;
    fn features_generic<K: Kernels>(&self, crop: &[f32], s: &mut Self::Scratch, row: &mut [f32]);
}

/// `features_generic` with the AVX2 loops when `simd`, else the portable ones.
fn features<N: CropFeatures>(net: &N, simd: bool, crop: &[f32], s: &mut N::Scratch, row: &mut [f32]) {
    if simd {
        net.features_generic::<Avx2>(crop, s, row)
    } else {
        net.features_generic::<Plain>(crop, s, row)
    }
}

/// R-Net's layer sizes: 24×24×3 → conv 3×3 → 22×22×28 → pool 3/2 → 11×11×28 → conv 3×3 → 9×9×48 →
/// pool 3/2 → 4×4×48 → conv 2×2 → 3×3×64 → dense 128 → heads 2 + 4.
const R_IN: usize = 24;
const R_FEAT: usize = 3 * 3 * 64;
const R_HIDDEN: usize = 128;

/// R-Net's weights re-laid out once for the direct loops.
pub(crate) struct RNetCpu {
    conv1: ConvLayer<3>,
    conv2: ConvLayer<3>,
    conv3: ConvLayer<2>,
    dense4: DensePrelu,
    /// Face logits (2 rows) then box regression (4), [6][128].
    head_w: Vec<f32>,
    head_b: Vec<f32>,
}

/// One thread's R-Net maps.
struct RScratch {
    x: Vec<f32>,
    y1: Vec<f32>,
    p1: Vec<f32>,
    y2: Vec<f32>,
    p2: Vec<f32>,
}

impl RScratch {
    fn new() -> Self {
        RScratch {
            x: vec![0.0; R_IN * R_IN * 3],
            y1: vec![0.0; 22 * 22 * 28],
            p1: vec![0.0; 11 * 11 * 28],
            y2: vec![0.0; 9 * 9 * 48],
            p2: vec![0.0; 4 * 4 * 48],
        }
    }
}

impl RNetCpu {
    pub fn new(w: &RNetWeights) -> RNetCpu {
        let dense4 = dense_for_hwc(&w.dense4, [64, 3, 3]);
        let (head_w, head_b) = stack_heads(&[&w.dense5_1, &w.dense5_2]);
        RNetCpu {
            conv1: ConvLayer::new(&w.conv1.weight, &w.conv1.bias, &w.prelu[0], 3, 28),
            conv2: ConvLayer::new(&w.conv2.weight, &w.conv2.bias, &w.prelu[1], 28, 48),
            conv3: ConvLayer::new(&w.conv3.weight, &w.conv3.bias, &w.prelu[2], 48, 64),
            dense4: DensePrelu::new(dense4, w.dense4.bias.clone(), w.prelu[3].clone()),
            head_w,
            head_b,
        }
    }

    /// R-Net on normalised 24×24 crops, planar [N][3][24][24]: (box regression [N][4], face
    /// probabilities [N][2]) — the layout of the ops' output.
    pub fn forward(&self, crops: &[f32]) -> Result<(Vec<f32>, Vec<f32>)> {
        self.forward_with(crops, has_avx2_fma())
    }

    fn forward_with(&self, crops: &[f32], simd: bool) -> Result<(Vec<f32>, Vec<f32>)> {
        let per = 3 * R_IN * R_IN;
        let n = crop_count(crops, per, "R-Net")?;
        let mut feats = vec![0f32; n * R_FEAT];
        per_crop(crops, per, &mut feats, R_FEAT, RScratch::new, |crop, s, row| features(self, simd, crop, s, row));
        let hidden = self.dense4.forward(&feats, n);
        let out = heads(&hidden, R_HIDDEN, &self.head_w, &self.head_b);
        let mut reg = Vec::with_capacity(4 * n);
        let mut probs = Vec::with_capacity(2 * n);
        for o in out.chunks_exact(6) {
            probs.extend(softmax2(o[0], o[1]));
            reg.extend_from_slice(&o[2..6]);
        }
        Ok((reg, probs))
    }
}

impl CropFeatures for RNetCpu {
    type Scratch = RScratch;

    /// One crop's last map (3×3×64, channels-last) into its feature row.
    fn features_generic<K: Kernels>(&self, crop: &[f32], s: &mut RScratch, row: &mut [f32]) {
        to_hwc(crop, R_IN * R_IN, &mut s.x);
        K::conv_prelu::<3, 3, 28, 6>(&s.x, 24, 24, &self.conv1, &mut s.y1);
        let pooled = K::max_pool::<3, 2, 28>(&s.y1, 22, 22, &mut s.p1);
        debug_assert_eq!(pooled, Some((11, 11)));
        K::conv_prelu::<3, 28, 48, 3>(&s.p1, 11, 11, &self.conv2, &mut s.y2);
        let pooled = K::max_pool::<3, 2, 48>(&s.y2, 9, 9, &mut s.p2);
        debug_assert_eq!(pooled, Some((4, 4)));
        K::conv_prelu::<2, 48, 64, 3>(&s.p2, 4, 4, &self.conv3, row);
    }
}

/// O-Net's layer sizes: 48×48×3 → conv 3×3 → 46×46×32 → pool 3/2 → 23×23×32 → conv 3×3 → 21×21×64 →
/// pool 3/2 → 10×10×64 → conv 3×3 → 8×8×64 → pool 2/2 → 4×4×64 → conv 2×2 → 3×3×128 → dense 256 →
/// heads 2 + 4 + 10.
const O_IN: usize = 48;
const O_FEAT: usize = 3 * 3 * 128;
const O_HIDDEN: usize = 256;

/// O-Net's weights re-laid out once for the direct loops.
pub(crate) struct ONetCpu {
    conv1: ConvLayer<3>,
    conv2: ConvLayer<3>,
    conv3: ConvLayer<3>,
    conv4: ConvLayer<2>,
    dense5: DensePrelu,
    /// Face logits (2 rows), box regression (4), landmarks (10), [16][256].
    head_w: Vec<f32>,
    head_b: Vec<f32>,
}

/// One thread's O-Net maps.
struct OScratch {
    x: Vec<f32>,
    y1: Vec<f32>,
    p1: Vec<f32>,
    y2: Vec<f32>,
    p2: Vec<f32>,
    y3: Vec<f32>,
    p3: Vec<f32>,
}

impl OScratch {
    fn new() -> Self {
        OScratch {
            x: vec![0.0; O_IN * O_IN * 3],
            y1: vec![0.0; 46 * 46 * 32],
            p1: vec![0.0; 23 * 23 * 32],
            y2: vec![0.0; 21 * 21 * 64],
            p2: vec![0.0; 10 * 10 * 64],
            y3: vec![0.0; 8 * 8 * 64],
            p3: vec![0.0; 4 * 4 * 64],
        }
    }
}

/// O-Net's outputs for N crops: box regression [N][4], landmarks [N][10] (5 x then 5 y), face
/// probabilities [N][2].
pub(crate) struct ONetOut {
    pub reg: Vec<f32>,
    pub marks: Vec<f32>,
    pub probs: Vec<f32>,
}

impl ONetCpu {
    pub fn new(w: &ONetWeights) -> ONetCpu {
        let dense5 = dense_for_hwc(&w.dense5, [128, 3, 3]);
        let (head_w, head_b) = stack_heads(&[&w.dense6_1, &w.dense6_2, &w.dense6_3]);
        ONetCpu {
            conv1: ConvLayer::new(&w.conv1.weight, &w.conv1.bias, &w.prelu[0], 3, 32),
            conv2: ConvLayer::new(&w.conv2.weight, &w.conv2.bias, &w.prelu[1], 32, 64),
            conv3: ConvLayer::new(&w.conv3.weight, &w.conv3.bias, &w.prelu[2], 64, 64),
            conv4: ConvLayer::new(&w.conv4.weight, &w.conv4.bias, &w.prelu[3], 64, 128),
            dense5: DensePrelu::new(dense5, w.dense5.bias.clone(), w.prelu[4].clone()),
            head_w,
            head_b,
        }
    }

    /// O-Net on normalised 48×48 crops, planar [N][3][48][48].
    pub fn forward(&self, crops: &[f32]) -> Result<ONetOut> {
        self.forward_with(crops, has_avx2_fma())
    }

    fn forward_with(&self, crops: &[f32], simd: bool) -> Result<ONetOut> {
        let per = 3 * O_IN * O_IN;
        let n = crop_count(crops, per, "O-Net")?;
        let mut feats = vec![0f32; n * O_FEAT];
        per_crop(crops, per, &mut feats, O_FEAT, OScratch::new, |crop, s, row| features(self, simd, crop, s, row));
        let hidden = self.dense5.forward(&feats, n);
        let out = heads(&hidden, O_HIDDEN, &self.head_w, &self.head_b);
        let mut res = ONetOut {
            reg: Vec::with_capacity(4 * n),
            marks: Vec::with_capacity(10 * n),
            probs: Vec::with_capacity(2 * n),
        };
        for o in out.chunks_exact(16) {
            res.probs.extend(softmax2(o[0], o[1]));
            res.reg.extend_from_slice(&o[2..6]);
            res.marks.extend_from_slice(&o[6..16]);
        }
        Ok(res)
    }
}

impl CropFeatures for ONetCpu {
    type Scratch = OScratch;

    /// One crop's last map (3×3×128, channels-last) into its feature row.
    fn features_generic<K: Kernels>(&self, crop: &[f32], s: &mut OScratch, row: &mut [f32]) {
        to_hwc(crop, O_IN * O_IN, &mut s.x);
        K::conv_prelu::<3, 3, 32, 6>(&s.x, 48, 48, &self.conv1, &mut s.y1);
        let pooled = K::max_pool::<3, 2, 32>(&s.y1, 46, 46, &mut s.p1);
        debug_assert_eq!(pooled, Some((23, 23)));
        K::conv_prelu::<3, 32, 64, 2>(&s.p1, 23, 23, &self.conv2, &mut s.y2);
        let pooled = K::max_pool::<3, 2, 64>(&s.y2, 21, 21, &mut s.p2);
        debug_assert_eq!(pooled, Some((10, 10)));
        K::conv_prelu::<3, 64, 64, 2>(&s.p2, 10, 10, &self.conv3, &mut s.y3);
        let pooled = K::max_pool::<2, 2, 64>(&s.y3, 8, 8, &mut s.p3);
        debug_assert_eq!(pooled, Some((4, 4)));
        K::conv_prelu::<2, 64, 128, 3>(&s.p3, 4, 4, &self.conv4, row);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detect::nets::{ONet, RNet, Weights};
    use crate::tensor::{Device, Tensor};
    use std::collections::HashMap;

    fn max_diff(a: &[f32], b: &[f32]) -> f32 {
        assert_eq!(a.len(), b.len());
        a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
    }

    fn weights() -> HashMap<String, crate::host_tensor::HostTensor> {
        crate::io::state_dict_from_bytes(crate::detect::EMBEDDED_WEIGHTS).unwrap().into_iter().collect()
    }

    /// n crops of values in the normalised range (−1, 1), from a fixed LCG.
    fn crops(n: usize, side: usize, seed: u32) -> Vec<f32> {
        let mut state = seed;
        (0..n * 3 * side * side)
            .map(|_| {
                state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                (state >> 8) as f32 / (1u32 << 24) as f32 * 2.0 - 1.0
            })
            .collect()
    }

    #[test]
    fn rnet_matches_the_ops() {
        let mut map = weights();
        let (net, raw) = RNet::load(&mut Weights { tensors: &mut map, device: &Device::Cpu, net: "rnet" }).unwrap();
        let fast = RNetCpu::new(&raw);
        for n in [1, 3, 7] {
            let input = crops(n, 24, 777 + n as u32);
            let x = Tensor::from_f32(&[n, 3, 24, 24], input.clone()).unwrap();
            let (reg, probs) = crate::autograd::no_grad(|| net.forward(&x)).unwrap();
            let (want_reg, want_probs) = (reg.to_f32_vec(), probs.to_f32_vec());
            for simd in [false, has_avx2_fma()] {
                let (got_reg, got_probs) = fast.forward_with(&input, simd).unwrap();
                assert!(max_diff(&got_reg, &want_reg) < 1e-4, "n={n} simd={simd} regression");
                assert!(max_diff(&got_probs, &want_probs) < 1e-5, "n={n} simd={simd} probabilities");
            }
        }
        assert!(fast.forward(&[0.0; 5]).is_err(), "a partial crop is refused");
        assert_eq!(fast.forward(&[]).unwrap(), (vec![], vec![]));
    }

    #[test]
    fn onet_matches_the_ops() {
        let mut map = weights();
        let (net, raw) = ONet::load(&mut Weights { tensors: &mut map, device: &Device::Cpu, net: "onet" }).unwrap();
        let fast = ONetCpu::new(&raw);
        for n in [1, 5] {
            let input = crops(n, 48, 4242 + n as u32);
            let x = Tensor::from_f32(&[n, 3, 48, 48], input.clone()).unwrap();
            let (reg, marks, probs) = crate::autograd::no_grad(|| net.forward(&x)).unwrap();
            let (want_reg, want_marks, want_probs) = (reg.to_f32_vec(), marks.to_f32_vec(), probs.to_f32_vec());
            for simd in [false, has_avx2_fma()] {
                let got = fast.forward_with(&input, simd).unwrap();
                assert!(max_diff(&got.reg, &want_reg) < 1e-4, "n={n} simd={simd} regression");
                assert!(max_diff(&got.marks, &want_marks) < 1e-4, "n={n} simd={simd} landmarks");
                assert!(max_diff(&got.probs, &want_probs) < 1e-5, "n={n} simd={simd} probabilities");
            }
        }
        assert!(fast.forward(&[0.0; 7]).is_err(), "a partial crop is refused");
    }
}
