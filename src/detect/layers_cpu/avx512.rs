//! The AVX-512 build of [`super::conv_prelu`]: one zmm register holds a block of CB = 16 output
//! channels, so PIX = 12 output pixels keep 12 accumulators in registers with one weight load and
//! one broadcast per pixel per step (the AVX2 build needs two registers per pixel and 6 pixels). The
//! sums run in the same order as the portable loop (bias, then ky, kx, cin) with one rounding per
//! multiply-add, so all builds give the same bits.

use super::{ConvLayer, CB};
use std::arch::x86_64::*;

/// Output pixels per register block.
const PIX: usize = 12;

simd_conv_entry!("avx512f", PIX);

/// Channels blk·CB..(blk+1)·CB of output pixels start..start+P, whose input windows begin at `px`
/// (their rows `row` values apart).
///
/// # Safety
/// AVX-512F; the pointers, `y` and block `blk` of `layer` as [`pixel_group`]'s caller checked.
#[inline(always)]
unsafe fn channel_block<const K: usize, const CIN: usize, const COUT: usize, const P: usize>(
    px: &[*const f32; P], row: usize, layer: &ConvLayer<K>, blk: usize, y: &mut [f32], start: usize,
) {
    // SAFETY: the loads stay in the block's weights and the pixels' input windows, the stores in the
    // group's output pixels (the caller's extents), masked to the block's real channels.
    unsafe {
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
