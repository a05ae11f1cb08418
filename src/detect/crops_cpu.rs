//! R-Net and O-Net on the CPU without the tensor ops: each 24×24 or 48×48 crop runs its convs, pools
//! and PReLUs through the channels-last loops of [`super::layers_cpu`] on a rayon thread, into one row
//! of a feature matrix; the dense layer then runs once over all crops (one GEMM), and the small heads +
//! softmax per row. The results equal [`super::nets::CropNet::forward`] up to float summation order
//! (`rnet_matches_the_ops`, `onet_matches_the_ops` below).

use super::layers_cpu::{has_avx2_fma, heads, softmax2, to_hwc, Avx2, ConvLayer, DensePrelu, Kernels, Plain};
use super::nets::{CropNetShape, CropNetWeights, HostLayer};
use crate::ops::max_pool::ceil_pool_extent;
use anyhow::{bail, Result};
use rayon::prelude::*;

/// facenet flattens the last map as `x.permute(0, 3, 2, 1)` (W, H, C order); the rows here hold it
/// channels-last (H, W, C), so the dense layer's weight [out][W·H·C] is re-laid once.
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

/// One thread's maps for one crop: the crop channels-last, then per pooled conv its output and the
/// pooled map (the last conv writes the feature row itself). Sized from the net's shape.
pub(crate) struct CropMaps {
    x: Vec<f32>,
    conv: Vec<Vec<f32>>,
    pooled: Vec<Vec<f32>>,
}

impl CropMaps {
    fn new(shape: &CropNetShape) -> Self {
        let mut side = shape.side;
        let (mut conv, mut pooled) = (Vec::new(), Vec::new());
        for &([out, _, k], pool) in shape.convs {
            side = side + 1 - k;
            if let Some((window, stride)) = pool {
                conv.push(vec![0.0; side * side * out]);
                side = ceil_pool_extent(side, window, stride).unwrap_or(0);
                pooled.push(vec![0.0; side * side * out]);
            }
        }
        CropMaps { x: vec![0.0; shape.side * shape.side * 3], conv, pooled }
    }
}

/// The per-crop convs and pools of R-Net or O-Net, one chain per net since each layer's sizes are
/// constants of the loops: one crop (planar [3][side][side]) into its feature row (the last map,
/// channels-last), generic over the build of the loops.
pub(crate) trait CropConvs: Sized + Sync {
    fn new(w: &CropNetWeights) -> Self;
    fn features<K: Kernels>(&self, crop: &[f32], s: &mut CropMaps, row: &mut [f32]);
}

/// The conv of host layer `l` with PReLU slopes `slope` for the loops.
fn conv_layer<const K: usize>(l: &HostLayer, slope: &[f32]) -> ConvLayer<K> {
    ConvLayer::new(&l.weight, &l.bias, slope, l.shape[1], l.shape[0])
}

/// R-Net's convs (sizes in [`super::nets::RNET`]).
pub(crate) struct RNetConvs {
    conv1: ConvLayer<3>,
    conv2: ConvLayer<3>,
    conv3: ConvLayer<2>,
}

impl CropConvs for RNetConvs {
    fn new(w: &CropNetWeights) -> Self {
        RNetConvs {
            conv1: conv_layer(&w.convs[0], &w.prelu[0]),
            conv2: conv_layer(&w.convs[1], &w.prelu[1]),
            conv3: conv_layer(&w.convs[2], &w.prelu[2]),
        }
    }
    fn features<K: Kernels>(&self, crop: &[f32], s: &mut CropMaps, row: &mut [f32]) {
        to_hwc(crop, 24 * 24, &mut s.x);
        K::conv_prelu::<3, 3, 28, 6>(&s.x, 24, 24, &self.conv1, &mut s.conv[0]);
        let pooled = K::max_pool::<3, 2, 28>(&s.conv[0], 22, 22, &mut s.pooled[0]);
        debug_assert_eq!(pooled, Some((11, 11)));
        K::conv_prelu::<3, 28, 48, 3>(&s.pooled[0], 11, 11, &self.conv2, &mut s.conv[1]);
        let pooled = K::max_pool::<3, 2, 48>(&s.conv[1], 9, 9, &mut s.pooled[1]);
        debug_assert_eq!(pooled, Some((4, 4)));
        K::conv_prelu::<2, 48, 64, 3>(&s.pooled[1], 4, 4, &self.conv3, row);
    }
}

/// O-Net's convs (sizes in [`super::nets::ONET`]).
pub(crate) struct ONetConvs {
    conv1: ConvLayer<3>,
    conv2: ConvLayer<3>,
    conv3: ConvLayer<3>,
    conv4: ConvLayer<2>,
}

impl CropConvs for ONetConvs {
    fn new(w: &CropNetWeights) -> Self {
        ONetConvs {
            conv1: conv_layer(&w.convs[0], &w.prelu[0]),
            conv2: conv_layer(&w.convs[1], &w.prelu[1]),
            conv3: conv_layer(&w.convs[2], &w.prelu[2]),
            conv4: conv_layer(&w.convs[3], &w.prelu[3]),
        }
    }
    fn features<K: Kernels>(&self, crop: &[f32], s: &mut CropMaps, row: &mut [f32]) {
        to_hwc(crop, 48 * 48, &mut s.x);
        K::conv_prelu::<3, 3, 32, 6>(&s.x, 48, 48, &self.conv1, &mut s.conv[0]);
        let pooled = K::max_pool::<3, 2, 32>(&s.conv[0], 46, 46, &mut s.pooled[0]);
        debug_assert_eq!(pooled, Some((23, 23)));
        K::conv_prelu::<3, 32, 64, 2>(&s.pooled[0], 23, 23, &self.conv2, &mut s.conv[1]);
        let pooled = K::max_pool::<3, 2, 64>(&s.conv[1], 21, 21, &mut s.pooled[1]);
        debug_assert_eq!(pooled, Some((10, 10)));
        K::conv_prelu::<3, 64, 64, 2>(&s.pooled[1], 10, 10, &self.conv3, &mut s.conv[2]);
        let pooled = K::max_pool::<2, 2, 64>(&s.conv[2], 8, 8, &mut s.pooled[2]);
        debug_assert_eq!(pooled, Some((4, 4)));
        K::conv_prelu::<2, 64, 128, 3>(&s.pooled[2], 4, 4, &self.conv4, row);
    }
}

/// R-Net or O-Net with its weights re-laid out once for the loops.
pub(crate) struct CropNetCpu<C> {
    shape: &'static CropNetShape,
    convs: C,
    dense: DensePrelu,
    /// The heads stacked row after row ([Σ heads][hidden]), with their biases.
    head_w: Vec<f32>,
    head_b: Vec<f32>,
}

impl<C: CropConvs> CropNetCpu<C> {
    pub fn new(w: &CropNetWeights, shape: &'static CropNetShape) -> Self {
        let dense = dense_for_hwc(&w.dense, shape.last_map);
        let last_prelu = w.prelu[shape.convs.len()].clone();
        CropNetCpu {
            shape,
            convs: C::new(w),
            dense: DensePrelu::new(dense, w.dense.bias.clone(), last_prelu),
            head_w: w.heads.iter().flat_map(|l| l.weight.iter().copied()).collect(),
            head_b: w.heads.iter().flat_map(|l| l.bias.iter().copied()).collect(),
        }
    }

    /// The net on normalised crops, planar [N][3][side][side]: each head [N][out] in the shape's order,
    /// the first as face probabilities — the values of the ops' output.
    pub fn forward(&self, crops: &[f32]) -> Result<Vec<Vec<f32>>> {
        self.forward_with(crops, has_avx2_fma())
    }

    fn forward_with(&self, crops: &[f32], simd: bool) -> Result<Vec<Vec<f32>>> {
        let shape = self.shape;
        let per = 3 * shape.side * shape.side;
        let n = crop_count(crops, per, shape.name)?;
        let [c, h, w] = shape.last_map;
        let feat = c * h * w;
        let mut feats = vec![0f32; n * feat];
        per_crop(
            crops,
            per,
            &mut feats,
            feat,
            || CropMaps::new(shape),
            |crop, s, row| {
                if simd {
                    self.convs.features::<Avx2>(crop, s, row)
                } else {
                    self.convs.features::<Plain>(crop, s, row)
                }
            },
        );
        let hidden = self.dense.forward(&feats, n);
        let out = heads(&hidden, shape.hidden, &self.head_w, &self.head_b);
        let mut per_head: Vec<Vec<f32>> = shape.heads.iter().map(|&o| Vec::with_capacity(o * n)).collect();
        let row_width: usize = shape.heads.iter().sum();
        for o in out.chunks_exact(row_width) {
            per_head[0].extend(softmax2(o[0], o[1]));
            let mut at = shape.heads[0];
            for (dst, &width) in per_head.iter_mut().zip(shape.heads).skip(1) {
                dst.extend_from_slice(&o[at..at + width]);
                at += width;
            }
        }
        Ok(per_head)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detect::nets::{CropNet, Weights, ONET, RNET};
    use crate::tensor::{Device, Tensor};
    use std::collections::HashMap;

    fn max_diff(a: &[f32], b: &[f32]) -> f32 {
        assert_eq!(a.len(), b.len());
        a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
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

    /// The net `key` of `shape` on the loops (both builds) against the ops, on `sizes` crops (seeds
    /// `seed` + n): each head within `tolerance` (probabilities first, as the heads), and a partial crop
    /// is refused. Returns the loops' net.
    fn matches_the_ops<C: CropConvs>(
        key: &'static str, shape: &'static CropNetShape, sizes: &[usize], seed: u32, tolerance: &[(&str, f32)],
    ) -> CropNetCpu<C> {
        let mut map: HashMap<String, _> =
            crate::io::state_dict_from_bytes(crate::detect::EMBEDDED_WEIGHTS).unwrap().into_iter().collect();
        let (net, raw) =
            CropNet::load(&mut Weights { tensors: &mut map, device: &Device::Cpu, net: key }, shape).unwrap();
        let fast = CropNetCpu::<C>::new(&raw, shape);
        let side = shape.side;
        for &n in sizes {
            let input = crops(n, side, seed + n as u32);
            let x = Tensor::from_f32(&[n, 3, side, side], input.clone()).unwrap();
            let want: Vec<Vec<f32>> =
                crate::autograd::no_grad(|| net.forward(&x)).unwrap().iter().map(|t| t.to_f32_vec()).collect();
            for simd in [false, has_avx2_fma()] {
                let got = fast.forward_with(&input, simd).unwrap();
                assert_eq!(got.len(), tolerance.len());
                for ((got, want), (head, tol)) in got.iter().zip(&want).zip(tolerance) {
                    assert!(max_diff(got, want) < *tol, "n={n} simd={simd} {head}");
                }
            }
        }
        assert!(fast.forward(&[0.0; 5]).is_err(), "a partial crop is refused");
        fast
    }

    #[test]
    fn rnet_matches_the_ops() {
        let tolerance = [("probabilities", 1e-5), ("regression", 1e-4)];
        let fast = matches_the_ops::<RNetConvs>("rnet", &RNET, &[1, 3, 7], 777, &tolerance);
        assert_eq!(fast.forward(&[]).unwrap(), vec![Vec::<f32>::new(); 2]);
    }

    #[test]
    fn onet_matches_the_ops() {
        let tolerance = [("probabilities", 1e-5), ("regression", 1e-4), ("landmarks", 1e-4)];
        matches_the_ops::<ONetConvs>("onet", &ONET, &[1, 5], 4242, &tolerance);
    }
}
