//! The AVX-512 build of [`super::conv_prelu`]: one zmm register holds a block of CB = 16 output
//! channels, so PIX = 12 output pixels keep 12 accumulators in registers with one weight load and
//! one broadcast per pixel per step (the AVX2 build needs two registers per pixel and 6 pixels). The
//! sums run in the same order as the portable loop (bias, then ky, kx, cin) with one rounding per
//! multiply-add, so all builds give the same bits.

use super::{checked_extent, for_pixel_groups, pixel_inputs, ConvLayer, CB};
use std::arch::x86_64::*;

/// Output pixels per register block.
const PIX: usize = 12;

/// [`super::conv_prelu`] with AVX-512F; PIX pixels of the flattened output (across row ends: each
/// pixel has its own input pointer) × one block of CB channels at a time.
///
/// # Safety
/// The CPU must support AVX-512F.
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn conv_prelu<const K: usize, const CIN: usize, const COUT: usize>(
    x: &[f32], h: usize, w: usize, layer: &ConvLayer<K>, y: &mut [f32],
) -> (usize, usize) {
    let (ho, wo) = checked_extent::<K, CIN, COUT>(x, h, w, layer, y);
    // SAFETY: AVX-512F as above; the extents are checked and every group (or single pixel) lies inside
    // the ho·wo output pixels.
    for_pixel_groups(ho * wo, PIX, |start, whole| unsafe {
        if whole {
            pixel_group::<K, CIN, COUT, PIX>(x, w, wo, start, layer, y)
        } else {
            pixel_group::<K, CIN, COUT, 1>(x, w, wo, start, layer, y)
        }
    });
    (ho, wo)
}

/// Output pixels start..start+P (flattened [ho][wo]) of every channel block.
///
/// # Safety
/// AVX-512F; `x` holds [h][w][CIN] with h ≥ (start+P−1)/wo + K, `y` holds (start+P)·COUT values and
/// `layer` has COUT/CB blocks of K·K·CIN·CB weights (checked by the caller).
#[inline(always)]
unsafe fn pixel_group<const K: usize, const CIN: usize, const COUT: usize, const P: usize>(
    x: &[f32], w: usize, wo: usize, start: usize, layer: &ConvLayer<K>, y: &mut [f32],
) {
    let px = pixel_inputs::<CIN, P>(x, w, wo, start);
    let row = w * CIN;
    // SAFETY: the loads stay in the blocks' weights and the pixels' input windows, the stores in the
    // group's output pixels (the caller's extents), masked to the block's real channels.
    unsafe {
        for blk in 0..COUT.div_ceil(CB) {
            let wt = layer.w.as_ptr().add(blk * K * K * CIN * CB);
            let mut acc = [_mm512_loadu_ps(layer.bias[blk].as_ptr()); P];
            for ky in 0..K {
                let wk = wt.add(ky * K * CIN * CB);
                let off = ky * row;
                // kx and cin together: consecutive in both the input row and the weights.
                for j in 0..K * CIN {
                    let wv = _mm512_loadu_ps(wk.add(j * CB));
                    for (p, a) in acc.iter_mut().enumerate() {
                        *a = _mm512_fmadd_ps(_mm512_set1_ps(*px[p].add(off + j)), wv, *a);
                    }
                }
            }
            let slope = _mm512_loadu_ps(layer.slope[blk].as_ptr());
            let c0 = blk * CB;
            let lanes = (COUT - c0).min(CB);
            let mask: __mmask16 = if lanes == CB { 0xffff } else { (1u16 << lanes) - 1 };
            for (p, a) in acc.iter().enumerate() {
                // PReLU as the portable loop: v ≥ 0 ? v : v·slope.
                let negative = _mm512_cmp_ps_mask::<_CMP_LT_OQ>(*a, _mm512_setzero_ps());
                let out = _mm512_mask_mul_ps(*a, negative, *a, slope);
                _mm512_mask_storeu_ps(y.as_mut_ptr().add((start + p) * COUT + c0), mask, out);
            }
        }
    }
}
