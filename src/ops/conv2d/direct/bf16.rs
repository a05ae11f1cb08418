//! bf16 convs (`--precision bf16`: the inference engine, and training's conv op): bf16 inputs and
//! weights, f32 sums. `forward` runs the family `host_isa::bf16_kernels` chose: the tile kernels
//! (`super::amx`, on AMX or the tile model) on the pair layout below, or the AVX512-BF16 kernels here.
//!
//! `vdpbf16ps` adds, in each 32-bit lane, the products of two bf16 pairs to an f32 accumulator, so
//! the pair dimension must be a reduction dimension: each 32-bit element of the kernels' input
//! planes holds the bf16 values of input channels 2p and 2p + 1 at one position (low half, high
//! half), and each weight element the matching pair of weights (`pair`). An odd channel count
//! pairs the last channel with zeros. The planes are then padded exactly like the f32 planes (a pair
//! is moved as one 32-bit value), and the f32 direct kernel's tiling, register blocking (MR output
//! channels × NV vectors) and epilogue run unchanged with `Kern::Bf16Pairs`: twice the products per
//! instruction.
//!
//! Covered: 3×3 pad 1 at stride 1 and 2 (direct), 1×1 stride 1 (the direct kernel with one tap: the
//! centre tap of the padded 3×3 grid), and Winograd F(2×2, 3×3) where the f32 engine takes it and the
//! conv has at least 32 input channels (`algorithm::bf16_form`), with its transformed tiles and transformed
//! weights rounded to bf16 (the transforms stay f32).
//!
//! Rounding: to nearest even (`vcvtneps2bf16`, which also flushes subnormal inputs to zero); the
//! products of two bf16 values are exact in f32, so a direct conv differs from an f64 sum of the
//! rounded operands only by the f32 additions.

use super::{
    amx, forward_tiles, pad_phases, vdpbf16ps_available, winograd, with_scratch, Epilogue, Grid, Kern, WeightView, MR,
    NV, TILE,
};
use crate::ops::conv2d::algorithm::{bf16_form, ConvAlgorithm};
use crate::ops::conv2d::Conv2dGeom;
use rayon::prelude::*;
use std::sync::OnceLock;

/// Whether this CPU runs bf16 conv kernels (`super::bf16_available`: the family `host_isa::bf16_kernels`
/// chose is not f32).
pub fn available() -> bool {
    super::bf16_available()
}

/// The geometries `forward` computes: 3×3 pad 1 at stride 1 or 2, and 1×1 pad 0 stride 1.
pub use crate::ops::conv2d::algorithm::bf16_applies as applies;

/// A conv's weights packed for the bf16 kernels, made on first use for each form the input sizes
/// and the kernel family call for. Not Clone: each form may be large.
#[derive(Debug, Default)]
pub struct Bf16Weights {
    /// [cout][pair][tap] pairs (`pack_pairs`).
    direct: OnceLock<Vec<f32>>,
    /// `winograd::transform_weights`'ed, then paired along the input channels.
    winograd: OnceLock<Vec<f32>>,
    /// The tile kernels' A tiles (`amx::TileWeights`).
    tiles: OnceLock<amx::TileWeights>,
}

/// y = act(conv(x, W) + bias + residual) in bf16 × bf16 → f32 products; `wt` is the f32 weight
/// [cout][cin][k][k], packed into `packed` on first use. The caller checked `available()` and
/// `applies(g)`; the kernels are the family's (`algorithm::bf16_form`): the tile kernels (`amx`), or
/// `vdpbf16ps` direct or Winograd.
pub fn forward(g: &Conv2dGeom, x: &[f32], wt: &[f32], packed: &Bf16Weights, ep: Epilogue<f32>, y: &mut [f32]) {
    assert!(available(), "bf16 conv: this CPU runs no bf16 kernels");
    assert!(applies(g), "bf16 conv: {g:?} is not a 3×3 pad-1 stride-1/2 or 1×1 stride-1 conv");
    let (n, cin, cout, kk) = (g.n, g.cin, g.cout, g.k * g.k);
    assert!(x.len() >= n * cin * g.h * g.w && wt.len() >= cout * cin * kk);
    let form = bf16_form(g);
    if form == ConvAlgorithm::Bf16Winograd {
        let u = packed.winograd.get_or_init(|| {
            let mut u = vec![0.0; winograd::transformed_len(cin, cout)];
            winograd::transform_weights(wt, cin, cout, &mut u);
            pair_rows(&u, cin)
        });
        return winograd::forward_bf16(g, x, u, ep, y);
    }
    let pairs = cin.div_ceil(2);
    let gr = if g.stride == 1 { Grid::new(g.h, g.w) } else { Grid::stride2(g.h, g.w) };
    debug_assert!(gr.h == g.ho && gr.w == g.wo);
    if let ConvAlgorithm::AmxTiles(unit) = form {
        let tw = packed.tiles.get_or_init(|| amx::TileWeights::pack(wt, cin, cout, kk));
        let per_image = tw.blocking().pairs_padded();
        return with_padded_pairs(g, &gr, x, per_image, |xpad| {
            if g.k == 3 {
                amx::forward(unit, g, &gr, xpad, tw, gr.taps, ep, y);
            } else {
                // A 1×1 conv reads each position itself: the centre tap of the padded 3×3 grid.
                amx::forward(unit, g, &gr, xpad, tw, [gr.taps[4]], ep, y);
            }
        });
    }
    let w = packed.direct.get_or_init(|| pack_weights(wt, cin, cout, kk));
    let wv = WeightView { w, row: pairs * kk, col: kk };
    with_padded_pairs(g, &gr, x, pairs, |xpad| {
        if g.k == 3 {
            forward_tiles(Kern::Bf16Pairs, g, &gr, xpad, pairs, wv, gr.taps, ep, y);
        } else {
            forward_tiles(Kern::Bf16Pairs, g, &gr, xpad, pairs, wv, [gr.taps[4]], ep, y);
        }
    });
}

/// Runs `f` on the channel pairs of every image of `x` in zero-bordered planes of `gr` (stride 2: its
/// phase planes), `per_image` ≥ pairs planes per image, the ones past the pairs all zero.
fn with_padded_pairs<R>(g: &Conv2dGeom, gr: &Grid, x: &[f32], per_image: usize, f: impl FnOnce(&[f32]) -> R) -> R {
    let (n, cin, hw, pairs) = (g.n, g.cin, g.h * g.w, g.cin.div_ceil(2));
    assert!(per_image >= pairs);
    if g.stride == 1 {
        return with_scratch(n * per_image * gr.plane, |xpad| {
            pack_padded(gr, &x[..n * cin * hw], cin, per_image, xpad);
            f(xpad)
        });
    }
    let isa = super::isa().expect("the bf16 kernels run on the AVX2 or AVX-512 level");
    with_scratch(n * pairs * hw + n * per_image * gr.plane, |s| {
        let (paired, xpad) = s.split_at_mut(n * pairs * hw);
        paired.par_chunks_mut(pairs * hw).zip(x.par_chunks(cin * hw)).for_each(|(p, xn)| {
            for (pi, dst) in p.chunks_exact_mut(hw).enumerate() {
                let lo = &xn[2 * pi * hw..][..hw];
                let hi = (2 * pi + 1 < cin).then(|| &xn[(2 * pi + 1) * hw..][..hw]);
                pack_pairs(lo, hi, dst);
            }
        });
        if per_image == pairs {
            pad_phases(isa, gr, g.h, g.w, paired, xpad);
        } else {
            for (src, dst) in paired.chunks_exact(pairs * hw).zip(xpad.chunks_exact_mut(per_image * gr.plane)) {
                let (real, zeros) = dst.split_at_mut(pairs * gr.plane);
                pad_phases(isa, gr, g.h, g.w, src, real);
                zeros.fill(0.0);
            }
        }
        f(xpad)
    })
}

/// The channel pairs of every image of `x` (planes of gr.h × gr.w, `cin` per image) packed straight
/// into the zero-bordered planes `pad_planes` makes (one pass instead of packing, then padding),
/// `per_image` planes per image (the ones past the pairs zero).
fn pack_padded(gr: &Grid, x: &[f32], cin: usize, per_image: usize, dst: &mut [f32]) {
    let (w, hw, pairs) = (gr.w, gr.h * gr.w, cin.div_ceil(2));
    let planes = x.len() / hw / cin * per_image;
    let one = |(i, d): (usize, &mut [f32])| {
        let (img, p) = (i / per_image, i % per_image);
        if p >= pairs {
            d.fill(0.0);
            return;
        }
        let lo = &x[(img * cin + 2 * p) * hw..][..hw];
        let hi = (2 * p + 1 < cin).then(|| &x[(img * cin + 2 * p + 1) * hw..][..hw]);
        let mut at = 0;
        for y in 0..gr.h {
            let start = (y + 1) * gr.wp + 1;
            d[at..start].fill(0.0);
            pack_pairs(&lo[y * w..][..w], hi.map(|h| &h[y * w..][..w]), &mut d[start..start + w]);
            at = start + w;
        }
        d[at..].fill(0.0);
    };
    let dst = &mut dst[..planes * gr.plane];
    if dst.len() >= 1 << 16 {
        dst.par_chunks_exact_mut(gr.plane).enumerate().with_min_len(4).for_each(one);
    } else {
        dst.chunks_exact_mut(gr.plane).enumerate().for_each(one);
    }
}

/// [cout][cin][kk] f32 → [cout][pair][kk] pairs.
fn pack_weights(wt: &[f32], cin: usize, cout: usize, kk: usize) -> Vec<f32> {
    let pairs = cin.div_ceil(2);
    let mut w = vec![0.0; cout * pairs * kk];
    for co in 0..cout {
        for p in 0..pairs {
            for t in 0..kk {
                let lo = wt[(co * cin + 2 * p) * kk + t];
                let hi = if 2 * p + 1 < cin { wt[(co * cin + 2 * p + 1) * kk + t] } else { 0.0 };
                w[(co * pairs + p) * kk + t] = pair(lo, hi);
            }
        }
    }
    w
}

/// Rows of `len` f32 values → rows of `len.div_ceil(2)` pairs (half the bytes of weights that small
/// planes stream from memory once per conv).
fn pair_rows(rows: &[f32], len: usize) -> Vec<f32> {
    let pairs = len.div_ceil(2);
    let mut out = Vec::with_capacity(rows.len() / len * pairs);
    for row in rows.chunks_exact(len) {
        out.extend((0..pairs).map(|p| pair(row[2 * p], row.get(2 * p + 1).copied().unwrap_or(0.0))));
    }
    out
}

/// The bf16 pair (round(lo), round(hi)) as the bits of one f32 (lo in the low half), rounded as the
/// hardware does (nearest even, subnormals to zero).
pub fn pair(lo: f32, hi: f32) -> f32 {
    let bits = |v: f32| crate::float::round_bf16(if v.is_subnormal() { 0.0 * v } else { v }).to_bits() >> 16;
    f32::from_bits(bits(lo) | (bits(hi) << 16))
}

/// dst[i] = pair(lo[i], hi[i]) (hi zero when None), 16 at a time on AVX512-BF16, one at a time
/// elsewhere (the tile model on CPUs without it: the same bits).
pub fn pack_pairs(lo: &[f32], hi: Option<&[f32]>, dst: &mut [f32]) {
    assert!(lo.len() == dst.len() && hi.is_none_or(|h| h.len() == dst.len()));
    if vdpbf16ps_available() {
        // SAFETY: the CPU has AVX512-BF16 on the AVX-512 level (checked); the lengths are equal (asserted).
        #[cfg(target_arch = "x86_64")]
        unsafe {
            return pack_pairs_avx512(lo, hi, dst);
        }
    }
    for (i, d) in dst.iter_mut().enumerate() {
        *d = pair(lo[i], hi.map_or(0.0, |h| h[i]));
    }
}

/// # Safety
/// The CPU must have AVX512-BF16 and AVX-512 F/BW; the slices' lengths are equal.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16")]
unsafe fn pack_pairs_avx512(lo: &[f32], hi: Option<&[f32]>, dst: &mut [f32]) {
    use std::arch::x86_64::*;
    let len = dst.len();
    // SAFETY: loads and stores of 16 at k < len, masked to the len − k left; the lengths are equal.
    unsafe {
        for k in (0..len).step_by(16) {
            let m: u16 = if len - k >= 16 { 0xffff } else { (1u16 << (len - k)) - 1 };
            let half = |s: *const f32| {
                let v: __m256bh = _mm512_cvtneps_pbh(_mm512_maskz_loadu_ps(m, s.add(k)));
                _mm512_cvtepu16_epi32(std::mem::transmute::<__m256bh, __m256i>(v))
            };
            let mut v = half(lo.as_ptr());
            if let Some(hi) = hi {
                v = _mm512_or_si512(v, _mm512_slli_epi32::<16>(half(hi.as_ptr())));
            }
            _mm512_mask_storeu_ps(dst.as_mut_ptr().add(k), m, _mm512_castsi512_ps(v));
        }
    }
}

/// `super::conv_tile` for `Kern::Bf16Pairs`: out[r][v·16 + lane] = Σ_pairs Σ_tap the dot product of
/// weight pair w[r][p·col + tap] with input pair x[p·plane + taps[tap] + voff[v] + lane].
///
/// # Safety
/// As `super::conv_tile`, with AVX512-BF16 and AVX-512 F/VL (`available()`).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512vl,avx512bw,avx512bf16")]
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn conv_tile<const V: usize, const T: usize>(
    x: *const f32, voff: &[usize; NV], plane: usize, pairs: usize, taps: &[usize; T], w: &[*const f32; MR], col: usize,
    out: *mut f32,
) {
    use std::arch::x86_64::*;
    // SAFETY: every load and store is inside the ranges the caller vouches for; the transmutes
    // reinterpret 64 bytes as 64 bytes.
    unsafe {
        let bh = |v: __m512| std::mem::transmute::<__m512, __m512bh>(v);
        let mut acc = [[_mm512_setzero_ps(); V]; MR];
        for p in 0..pairs {
            let xc = x.add(p * plane);
            let wc: [*const f32; MR] = std::array::from_fn(|r| w[r].add(p * col));
            for (t, &off) in taps.iter().enumerate() {
                let xs = xc.add(off);
                let xv: [__m512bh; V] = std::array::from_fn(|v| bh(_mm512_loadu_ps(xs.add(voff[v]))));
                for (r, acc_r) in acc.iter_mut().enumerate() {
                    let wv = bh(_mm512_set1_ps(*wc[r].add(t)));
                    for v in 0..V {
                        acc_r[v] = _mm512_dpbf16_ps(acc_r[v], xv[v], wv);
                    }
                }
            }
        }
        for (r, acc_r) in acc.iter().enumerate() {
            for (v, a) in acc_r.iter().enumerate() {
                _mm512_storeu_ps(out.add(r * TILE + v * 16), *a);
            }
        }
    }
}

/// Unused off x86-64 (`available()` is false there); keeps `super::conv_tile`'s dispatch total.
///
/// # Safety
/// Never called.
#[cfg(not(target_arch = "x86_64"))]
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn conv_tile<const V: usize, const T: usize>(
    _x: *const f32, _voff: &[usize; NV], _plane: usize, _pairs: usize, _taps: &[usize; T], _w: &[*const f32; MR],
    _col: usize, _out: *mut f32,
) {
    unreachable!("bf16 convs run only where available() holds")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pair_puts_the_first_value_in_the_low_half_rounded_to_nearest_even() {
        let p = pair(1.0 + 2f32.powi(-8), -3.0).to_bits();
        // 1 + 2⁻⁸ is halfway between 1 and 1 + 2⁻⁷: ties go to the even significand, 1.0.
        assert_eq!(p & 0xffff, 1.0f32.to_bits() >> 16);
        assert_eq!(p >> 16, (-3.0f32).to_bits() >> 16);
    }

    #[test]
    fn simd_pair_packing_equals_the_scalar_rounding() {
        if !vdpbf16ps_available() {
            eprintln!("skipped: this CPU has no AVX512-BF16");
            return;
        }
        // Every fifth value subnormal: the hardware flushes those to zero.
        let lo: Vec<f32> = (0..37).map(|i| if i % 5 == 0 { 1e-39 } else { (i as f32 * 0.7311).sin() * 3.0 }).collect();
        let hi: Vec<f32> = (0..37).map(|i| (i as f32 * 1.37).cos() * 1e3).collect();
        for h in [Some(&hi[..]), None] {
            let mut d = vec![0.0; 37];
            pack_pairs(&lo, h, &mut d);
            for i in 0..37 {
                let want = pair(lo[i], h.map_or(0.0, |h| h[i]));
                assert_eq!(d[i].to_bits(), want.to_bits(), "element {i}");
            }
        }
    }
}
