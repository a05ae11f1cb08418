//! P-Net on the CPU without the tensor ops: the pyramid's dozen images run through three 3×3 convs of
//! 3→10→16→32 channels, shapes where im2col + GEMM spends more time packing than multiplying. Here
//! the maps are channels-last (HWC) and each conv is a direct loop that keeps a few output pixels ×
//! all output channels in registers, with bias and PReLU fused; max-pool and the two 1×1 heads +
//! softmax are fused too. An AVX2+FMA build of the same loops is picked at run time; the plain build
//! is the fallback. The result equals [`super::nets::PNet::forward`] up to float summation order
//! (`pnet_matches_the_ops` below).

use super::nets::PNetWeights;

/// Channels of the three convs' outputs.
const C1: usize = 10;
const C2: usize = 16;
const C3: usize = 32;

/// P-Net's weights re-laid out once for the direct loops: conv kernels as [ky][kx][cin][cout_padded].
pub(crate) struct PNetCpu {
    w1: Vec<f32>,
    b1: [f32; 16],
    a1: [f32; 16],
    w2: Vec<f32>,
    b2: [f32; C2],
    a2: [f32; C2],
    w3: Vec<f32>,
    b3: [f32; C3],
    a3: [f32; C3],
    /// The 1×1 heads stacked: rows 0..2 face logits, 2..6 box regression; [6][32].
    head_w: [[f32; C3]; 6],
    head_b: [f32; 6],
}

/// [cout][cin][3][3] → [ky][kx][cin][cout_pad] (zero-padded output channels).
fn relayout(w: &[f32], cout: usize, cin: usize, cout_pad: usize) -> Vec<f32> {
    let mut out = vec![0f32; 9 * cin * cout_pad];
    for o in 0..cout {
        for i in 0..cin {
            for k in 0..9 {
                out[(k * cin + i) * cout_pad + o] = w[(o * cin + i) * 9 + k];
            }
        }
    }
    out
}

fn padded<const N: usize>(v: &[f32]) -> [f32; N] {
    let mut a = [0f32; N];
    a[..v.len()].copy_from_slice(v);
    a
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
            w1: relayout(&w.w1, C1, 3, 16),
            b1: padded(&w.b1),
            a1: padded(&w.a1),
            w2: relayout(&w.w2, C2, C1, C2),
            b2: padded(&w.b2),
            a2: padded(&w.a2),
            w3: relayout(&w.w3, C3, C2, C3),
            b3: padded(&w.b3),
            a3: padded(&w.a3),
            head_w,
            head_b,
        }
    }

    /// P-Net on one normalised image, planar [3][h][w]: (box regression [4][oh][ow], face probabilities
    /// [2][oh][ow], [oh, ow]) — the layout of the ops' output at batch 1.
    pub fn forward(&self, chw: &[f32], h: usize, w: usize) -> (Vec<f32>, Vec<f32>, [usize; 2]) {
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
                // SAFETY: the CPU supports AVX2 and FMA (checked just above).
                return unsafe { self.forward_avx2(chw, h, w) };
            }
        }
        self.forward_generic::<Plain>(chw, h, w)
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn forward_avx2(&self, chw: &[f32], h: usize, w: usize) -> (Vec<f32>, Vec<f32>, [usize; 2]) {
        self.forward_generic::<Fused>(chw, h, w)
    }

    #[inline(always)]
    fn forward_generic<M: MulAdd>(&self, chw: &[f32], h: usize, w: usize) -> (Vec<f32>, Vec<f32>, [usize; 2]) {
        // Channels-last input.
        let plane = h * w;
        let mut x = vec![0f32; plane * 3];
        for (p, px) in x.chunks_exact_mut(3).enumerate() {
            px[0] = chw[p];
            px[1] = chw[plane + p];
            px[2] = chw[2 * plane + p];
        }
        let (h1, w1) = (h - 2, w - 2);
        let mut y1 = vec![0f32; h1 * w1 * C1];
        conv3x3_prelu::<M, 3, 16, C1, 4>(&x, h, w, &self.w1, &self.b1, &self.a1, &mut y1);
        // Max-pool 2×2, stride 2, ceil mode: a trailing odd row/column is a window of its own.
        let (hp, wp) = (h1.div_ceil(2), w1.div_ceil(2));
        let mut pooled = vec![0f32; hp * wp * C1];
        for py in 0..hp {
            let rows = (2 * py)..(2 * py + 2).min(h1);
            for px in 0..wp {
                let cols = (2 * px)..(2 * px + 2).min(w1);
                let dst = &mut pooled[(py * wp + px) * C1..(py * wp + px + 1) * C1];
                dst.fill(f32::NEG_INFINITY);
                for yy in rows.clone() {
                    for xx in cols.clone() {
                        let src = &y1[(yy * w1 + xx) * C1..(yy * w1 + xx + 1) * C1];
                        for (d, &s) in dst.iter_mut().zip(src) {
                            *d = d.max(s);
                        }
                    }
                }
            }
        }
        let (h2, w2) = (hp - 2, wp - 2);
        let mut y2 = vec![0f32; h2 * w2 * C2];
        conv3x3_prelu::<M, C1, C2, C2, 6>(&pooled, hp, wp, &self.w2, &self.b2, &self.a2, &mut y2);
        let (h3, w3) = (h2 - 2, w2 - 2);
        let mut y3 = vec![0f32; h3 * w3 * C3];
        conv3x3_prelu::<M, C2, C3, C3, 3>(&y2, h2, w2, &self.w3, &self.b3, &self.a3, &mut y3);
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
            let m = o[0].max(o[1]);
            let (e0, e1) = ((o[0] - m).exp(), (o[1] - m).exp());
            let sum = e0 + e1;
            probs[p] = e0 / sum;
            probs[out_plane + p] = e1 / sum;
            for r in 0..4 {
                reg[r * out_plane + p] = o[2 + r];
            }
        }
        (reg, probs, [h3, w3])
    }
}

/// A valid 3×3 conv, stride 1, channels-last, with bias and PReLU: `x` [h][w][CIN] → `y` [h−2][w−2][COUT].
/// The weights are [ky][kx][CIN][CPAD] (CPAD ≥ COUT, zero-padded so the inner loop runs a whole
/// vector width); PIX output pixels of a row are computed together so each weight load serves PIX
/// multiply-adds.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn conv3x3_prelu<M: MulAdd, const CIN: usize, const CPAD: usize, const COUT: usize, const PIX: usize>(
    x: &[f32], h: usize, w: usize, wt: &[f32], bias: &[f32; CPAD], slope: &[f32; CPAD], y: &mut [f32],
) {
    let (ho, wo) = (h - 2, w - 2);
    debug_assert_eq!(wt.len(), 9 * CIN * CPAD);
    debug_assert_eq!(y.len(), ho * wo * COUT);
    let wt: &[[f32; CPAD]] = as_rows(wt);
    for oy in 0..ho {
        let mut ox = 0;
        while ox + PIX <= wo {
            let mut acc = [*bias; PIX];
            accumulate::<M, CIN, CPAD, PIX>(x, w, oy, ox, wt, &mut acc);
            for (p, a) in acc.iter().enumerate() {
                store_prelu::<CPAD, COUT>(a, slope, &mut y[(oy * wo + ox + p) * COUT..]);
            }
            ox += PIX;
        }
        while ox < wo {
            let mut acc = [*bias; 1];
            accumulate::<M, CIN, CPAD, 1>(x, w, oy, ox, wt, &mut acc);
            store_prelu::<CPAD, COUT>(&acc[0], slope, &mut y[(oy * wo + ox) * COUT..]);
            ox += 1;
        }
    }
}

#[inline(always)]
fn accumulate<M: MulAdd, const CIN: usize, const CPAD: usize, const PIX: usize>(
    x: &[f32], w: usize, oy: usize, ox: usize, wt: &[[f32; CPAD]], acc: &mut [[f32; CPAD]; PIX],
) {
    for ky in 0..3 {
        let row = &x[((oy + ky) * w + ox) * CIN..((oy + ky) * w + ox + PIX + 2) * CIN];
        for kx in 0..3 {
            for ci in 0..CIN {
                let wrow = &wt[(ky * 3 + kx) * CIN + ci];
                for (p, a) in acc.iter_mut().enumerate() {
                    let v = row[(p + kx) * CIN + ci];
                    for c in 0..CPAD {
                        a[c] = M::mul_add(v, wrow[c], a[c]);
                    }
                }
            }
        }
    }
}

#[inline(always)]
fn store_prelu<const CPAD: usize, const COUT: usize>(acc: &[f32; CPAD], slope: &[f32; CPAD], dst: &mut [f32]) {
    for c in 0..COUT {
        let v = acc[c];
        dst[c] = if v >= 0.0 { v } else { v * slope[c] };
    }
}

/// `a·b + c`: one rounding (FMA) in the AVX2 build, two in the plain one (where `f32::mul_add`
/// would be a slow library call).
trait MulAdd {
    fn mul_add(a: f32, b: f32, c: f32) -> f32;
}
struct Plain;
struct Fused;
impl MulAdd for Plain {
    #[inline(always)]
    fn mul_add(a: f32, b: f32, c: f32) -> f32 {
        a * b + c
    }
}
impl MulAdd for Fused {
    #[inline(always)]
    fn mul_add(a: f32, b: f32, c: f32) -> f32 {
        a.mul_add(b, c)
    }
}

/// A flat slice as rows of N.
fn as_rows<const N: usize>(v: &[f32]) -> &[[f32; N]] {
    let (rows, rest) = v.as_chunks::<N>();
    debug_assert!(rest.is_empty());
    rows
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
