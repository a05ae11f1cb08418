//! The AVX2+FMA build of [`super::conv_prelu`] and [`super::max_pool`], written with intrinsics so the
//! accumulators provably stay in registers: 6 output pixels × 16 output channels (12 of the 16 ymm
//! registers), two weight vectors and one broadcast input value per step, the block of the portable
//! loop. The sums run in the same order (bias, then ky, kx, cin) with one rounding per multiply-add.

use super::{ConvLayer, CB};
use crate::ops::max_pool::ceil_pool_extent;
use std::arch::x86_64::*;

/// Output pixels per register block.
const PIX: usize = 6;

simd_conv_entry!("avx2,fma", PIX);

/// Channels blk·CB..(blk+1)·CB of output pixels start..start+P, whose input windows begin at `px`
/// (their rows `row` values apart).
///
/// # Safety
/// AVX2+FMA; the pointers, `y` and block `blk` of `layer` as [`pixel_group`]'s caller checked.
#[inline(always)]
unsafe fn channel_block<const K: usize, const CIN: usize, const COUT: usize, const P: usize>(
    px: &[*const f32; P], row: usize, layer: &ConvLayer<K>, blk: usize, y: &mut [f32], start: usize,
) {
    let wt = layer.w.as_ptr().add(blk * K * K * CIN * CB);
    let bias = &layer.bias[blk];
    let (b0, b1) = (_mm256_loadu_ps(bias.as_ptr()), _mm256_loadu_ps(bias.as_ptr().add(8)));
    let mut acc = [[b0, b1]; P];
    for ky in 0..K {
        let wk = wt.add(ky * K * CIN * CB);
        let off = ky * row;
        // kx and cin together: consecutive in both the input row and the weights.
        for j in 0..K * CIN {
            let (w0, w1) = (_mm256_loadu_ps(wk.add(j * CB)), _mm256_loadu_ps(wk.add(j * CB + 8)));
            for p in 0..P {
                let v = _mm256_broadcast_ss(&*px[p].add(off + j));
                acc[p][0] = _mm256_fmadd_ps(v, w0, acc[p][0]);
                acc[p][1] = _mm256_fmadd_ps(v, w1, acc[p][1]);
            }
        }
    }
    let slope = &layer.slope[blk];
    let (s0, s1) = (_mm256_loadu_ps(slope.as_ptr()), _mm256_loadu_ps(slope.as_ptr().add(8)));
    let c0 = blk * CB;
    let lanes = COUT - c0;
    for (p, a) in acc.iter().enumerate() {
        let dst = y.as_mut_ptr().add((start + p) * COUT + c0);
        store_prelu(a[0], s0, dst, lanes.min(8));
        if lanes > 8 {
            store_prelu(a[1], s1, dst.add(8), (lanes - 8).min(8));
        }
    }
}

/// PReLU (`v ≥ 0 ? v : v·slope`, as the portable loop) of `v`, its first `lanes` values stored at `dst`.
///
/// # Safety
/// AVX2; `dst` valid for `lanes` ≤ 8 writes.
#[inline(always)]
unsafe fn store_prelu(v: __m256, slope: __m256, dst: *mut f32, lanes: usize) {
    let negative = _mm256_cmp_ps::<_CMP_LT_OQ>(v, _mm256_setzero_ps());
    let out = _mm256_blendv_ps(v, _mm256_mul_ps(v, slope), negative);
    if lanes == 8 {
        _mm256_storeu_ps(dst, out);
    } else {
        _mm256_maskstore_ps(dst, lane_mask(lanes), out);
    }
}

/// All bits set in the first `lanes` lanes.
///
/// # Safety
/// AVX2.
#[inline(always)]
unsafe fn lane_mask(lanes: usize) -> __m256i {
    _mm256_cmpgt_epi32(_mm256_set1_epi32(lanes as i32), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7))
}

/// [`super::max_pool`] with AVX2: eight channels per vector, the last C % 8 through masked loads and
/// stores. Same comparisons as the portable loop (`v > m ? v : m`).
///
/// # Safety
/// The CPU must support AVX2.
#[target_feature(enable = "avx2")]
pub(super) unsafe fn max_pool<const K: usize, const S: usize, const C: usize>(
    x: &[f32], h: usize, w: usize, y: &mut [f32],
) -> Option<(usize, usize)> {
    let (ho, wo) = (ceil_pool_extent(h, K, S)?, ceil_pool_extent(w, K, S)?);
    assert!(x.len() >= h * w * C && y.len() >= ho * wo * C);
    let (xp, yp) = (x.as_ptr(), y.as_mut_ptr());
    let tail = lane_mask(C % 8);
    for py in 0..ho {
        let rows = S * py..(S * py + K).min(h);
        for px in 0..wo {
            let cols = S * px..(S * px + K).min(w);
            // Pointers below: rows < h, cols < w, channels c..c+8 < C or masked to C.
            let first = xp.wrapping_add((rows.start * w + cols.start) * C);
            let dst = yp.add((py * wo + px) * C);
            let mut c = 0;
            while c + 8 <= C {
                let mut m = _mm256_loadu_ps(first.add(c));
                for yy in rows.clone() {
                    for xx in cols.clone() {
                        let v = _mm256_loadu_ps(xp.add((yy * w + xx) * C + c));
                        m = _mm256_max_ps(v, m);
                    }
                }
                _mm256_storeu_ps(dst.add(c), m);
                c += 8;
            }
            if !C.is_multiple_of(8) {
                let mut m = _mm256_maskload_ps(first.add(c), tail);
                for yy in rows.clone() {
                    for xx in cols.clone() {
                        let v = _mm256_maskload_ps(xp.add((yy * w + xx) * C + c), tail);
                        m = _mm256_max_ps(v, m);
                    }
                }
                _mm256_maskstore_ps(dst.add(c), tail, m);
            }
        }
    }
    Some((ho, wo))
}
