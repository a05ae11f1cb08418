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
    amx, forward_tiles, pad_phases, vdpbf16ps_available, weight_grad as reduce_planes, winograd, with_scratch,
    DwColumns, DwGrid, DwPlanes, Epilogue, Grid, Kern, WeightView, LANES, MR, NV, TILE, WR,
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

/// Whether this CPU runs `weight_grad` (AVX512-BF16 on the AVX-512 level, whatever the family).
pub fn weight_grad_available() -> bool {
    vdpbf16ps_available()
}

/// The geometries `weight_grad` computes: 3×3 pad 1 at stride 1 or 2 and 1×1 pad 0 stride 1.
pub fn weight_grad_applies(g: &Conv2dGeom) -> bool {
    matches!((g.k, g.pad, g.stride), (3, 1, 1) | (3, 1, 2) | (1, 0, 1)) && g.cin > 0 && g.cout > 0
}

/// dW += Σ_images dy ⋆ x with dy and x rounded to bf16 and f32 sums (`vdpbf16ps`), `dw` being
/// [cout][cin][k][k]. The pair dimension of the dot products is the reduction one, positions: dy and
/// x become bf16 planes laid out as the f32 weight gradient's padded planes (3×3; stride 2: x's four
/// phase planes as the forward's, dy on the same pitch; 1×1: the plain plane, its tail zeroed), so
/// 32 bits at bf16 index q hold positions q and q + 1, and a tap at an odd offset is the same plane
/// read 2 bytes further on. The caller checked `weight_grad_available()` and `weight_grad_applies(g)`.
pub fn weight_grad(g: &Conv2dGeom, x: &[f32], dy: &[f32], dw: &mut [f32]) {
    assert!(weight_grad_available(), "bf16 weight gradient: this CPU has no AVX512-BF16");
    let planes = DwBf16Planes::new(g);
    let (n, cin, cout, hw) = (g.n, g.cin, g.cout, g.h * g.w);
    assert!(x.len() >= n * cin * hw && dy.len() >= n * cout * g.ho * g.wo && dw.len() >= cout * cin * g.k * g.k);
    let (x_len, dy_len) = (n * cin * planes.grid.plane, n * cout * planes.grid.dy_plane);
    // Stride 2: the f32 phase planes first, rounded after, one image at a time (a whole batch of
    // f32 phase planes would raise the training step's peak memory).
    let phases_len = if g.stride == 2 { cin * planes.grid.plane } else { 0 };
    with_scratch(phases_len + (x_len + dy_len).div_ceil(2), |s| {
        let (phases, s) = s.split_at_mut(phases_len);
        // SAFETY: the scratch holds ≥ x_len + dy_len u16 (two per f32, u16 alignment divides f32's),
        // and the mutable borrow keeps it exclusive.
        let s16 = unsafe { std::slice::from_raw_parts_mut(s.as_mut_ptr().cast::<u16>(), 2 * s.len()) };
        let (xb, rest) = s16.split_at_mut(x_len);
        let dyb = &mut rest[..dy_len];
        planes.pad_x(g, &x[..n * cin * hw], phases, xb);
        planes.pad_dy(&dy[..n * cout * g.ho * g.wo], dyb);
        reduce_planes(&DwPlanes::Bf16 { x: xb, dy: dyb }, planes.grid, planes.columns, n, cin, cout, dw);
    });
}

/// The bf16 planes of a weight gradient (`weight_grad`, and the tile kernels'): for 3×3 pad 1 the f32
/// kernel's zero-bordered planes (stride 2: the forward's phase planes), positions rounded up to 32;
/// for 1×1 the plain plane, its tail zeroed.
#[derive(Clone, Copy, Debug)]
pub(crate) struct DwBf16Planes {
    pub grid: DwGrid,
    pub columns: DwColumns,
    dy: PlaneLayout,
    x: XPlanes,
}

/// How x becomes the weight gradient's bf16 planes.
#[derive(Clone, Copy, Debug)]
enum XPlanes {
    /// Rounded straight into this layout.
    Padded(PlaneLayout),
    /// Stride 2: the forward's f32 phase planes of this grid, then rounded.
    Phases(Grid),
}

impl DwBf16Planes {
    /// The planes of `g`, which `weight_grad_applies` to (asserted).
    pub fn new(g: &Conv2dGeom) -> DwBf16Planes {
        assert!(weight_grad_applies(g), "bf16 weight gradient: {g:?} is not a 3×3 pad-1 s1/s2 or 1×1 s1 conv");
        let step = 2 * LANES;
        if g.k == 3 && g.stride == 2 {
            let gr = Grid::stride2_with_step(g.h, g.w, step);
            // dy (y, x) at q = y·wp + x on the phases' pitch: its junk column x = wo stays zero.
            let dy = PlaneLayout { w: gr.w, pitch: gr.wp, first: 0, plane: gr.q_len };
            let grid = DwGrid { plane: gr.plane, dy_plane: gr.q_len, dy_at: 0, q_len: gr.q_len };
            return DwBf16Planes { grid, columns: DwColumns::Taps(gr.taps), dy, x: XPlanes::Phases(gr) };
        }
        if g.k == 3 {
            let gr = Grid::with_step(g.h, g.w, step);
            let lay = PlaneLayout { w: g.w, pitch: gr.wp, first: gr.wp + 1, plane: gr.plane };
            let grid = DwGrid { plane: gr.plane, dy_plane: gr.plane, dy_at: gr.wp + 1, q_len: gr.q_len };
            return DwBf16Planes { grid, columns: DwColumns::Taps(gr.taps), dy: lay, x: XPlanes::Padded(lay) };
        }
        let q_len = (g.h * g.w).div_ceil(step) * step;
        let lay = PlaneLayout { w: g.w, pitch: g.w, first: 0, plane: q_len };
        let grid = DwGrid { plane: q_len, dy_plane: q_len, dy_at: 0, q_len };
        DwBf16Planes { grid, columns: DwColumns::Pointwise, dy: lay, x: XPlanes::Padded(lay) }
    }

    /// Rounds whole ho×wo planes of dy to bf16 into as many planes of `grid.dy_plane` values.
    pub fn pad_dy(&self, src: &[f32], dst: &mut [u16]) {
        pad_bf16(self.dy, src, dst)
    }

    /// Rounds whole h×w planes of x to bf16 into as many planes of `grid.plane` values; stride 2 goes
    /// through the f32 phase planes of one image at a time in `phases` (`g.cin` planes, empty
    /// otherwise).
    pub fn pad_x(&self, g: &Conv2dGeom, src: &[f32], phases: &mut [f32], dst: &mut [u16]) {
        match self.x {
            XPlanes::Padded(lay) => pad_bf16(lay, src, dst),
            XPlanes::Phases(gr) => {
                let isa = super::isa().expect("the bf16 kernels run on the AVX-512 level");
                let plane = self.grid.plane;
                let (image_in, image_out) = (g.cin * g.h * g.w, g.cin * plane);
                assert!(phases.len() == image_out, "bf16 weight gradient: phase scratch of the wrong size");
                for (s, d) in src.chunks_exact(image_in).zip(dst.chunks_exact_mut(image_out)) {
                    pad_phases(isa, &gr, g.h, g.w, s, phases);
                    d.par_chunks_mut(plane).zip(phases.par_chunks(plane)).for_each(|(d, s)| to_bf16(s, d));
                }
            }
        }
    }
}

/// Where `pad_bf16` puts a plane's rows of `w` values: row y at `first + y·pitch` of a plane of
/// `plane` bf16 values, everything else zero.
#[derive(Clone, Copy, Debug)]
struct PlaneLayout {
    w: usize,
    pitch: usize,
    first: usize,
    plane: usize,
}

/// Rounds planes of rows of `lay.w` floats (`src`, whole planes) to bf16 into the layout's planes.
fn pad_bf16(lay: PlaneLayout, src: &[f32], dst: &mut [u16]) {
    let planes = dst.len() / lay.plane;
    let hw = src.len() / planes.max(1);
    assert!(planes * hw == src.len() && hw.is_multiple_of(lay.w) && planes * lay.plane == dst.len());
    let one = |(s, d): (&[f32], &mut [u16])| {
        let mut at = 0;
        for (y, row) in s.chunks_exact(lay.w).enumerate() {
            let start = lay.first + y * lay.pitch;
            d[at..start].fill(0);
            to_bf16(row, &mut d[start..start + lay.w]);
            at = start + lay.w;
        }
        d[at..].fill(0);
    };
    if dst.len() >= 1 << 17 {
        src.par_chunks_exact(hw).zip(dst.par_chunks_exact_mut(lay.plane)).with_min_len(4).for_each(one);
    } else {
        src.chunks_exact(hw).zip(dst.chunks_exact_mut(lay.plane)).for_each(one);
    }
}

/// dst[i] = the bits of src[i] rounded to bf16 as the hardware does (`pair`): 16 at a time on
/// AVX512-BF16, one at a time elsewhere (the tile model's runs).
fn to_bf16(src: &[f32], dst: &mut [u16]) {
    assert!(src.len() == dst.len(), "bf16 rounding: lengths differ");
    #[cfg(target_arch = "x86_64")]
    if vdpbf16ps_available() {
        // SAFETY: the CPU has AVX512-BF16 (checked); the lengths are equal (asserted).
        return unsafe { to_bf16_avx512(src, dst) };
    }
    dst.iter_mut().zip(src).for_each(|(d, &v)| *d = pair(v, 0.0).to_bits() as u16);
}

/// # Safety
/// The CPU must have AVX512-BF16 and AVX-512 F/BW/VL; the slices' lengths are equal.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16")]
unsafe fn to_bf16_avx512(src: &[f32], dst: &mut [u16]) {
    use std::arch::x86_64::*;
    let len = dst.len();
    // SAFETY: loads and stores of 16 at k < len, masked to the len − k left; the lengths are equal.
    unsafe {
        for k in (0..len).step_by(16) {
            let m: u16 = if len - k >= 16 { 0xffff } else { (1u16 << (len - k)) - 1 };
            let v = _mm512_cvtneps_pbh(_mm512_maskz_loadu_ps(m, src.as_ptr().add(k)));
            _mm256_mask_storeu_epi16(dst.as_mut_ptr().add(k).cast(), m, std::mem::transmute::<__m256bh, __m256i>(v));
        }
    }
}

/// `super::dw_block` on bf16 planes: sums[r][c] = Σ_img Σ_v Σ_(32 positions from v·32) dy · x, where
/// dy is read at `img·dy_img + r·dy_co + v·32` and x at `img·x_img + cols[c] + v·32` (bf16 indices,
/// any parity: 16 pairs of consecutive positions per load).
///
/// # Safety
/// AVX512-BF16 and AVX-512 F/VL (`vdpbf16ps_available()`); dy and x readable at the 32 bf16 values from every
/// such index for img < n, v < qv, r < R (≤ WR).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512vl,avx512bw,avx512bf16")]
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn dw_block<const R: usize>(
    dy: *const u16, dy_co: usize, dy_img: usize, x: *const u16, x_img: usize, n: usize, qv: usize, cols: &[usize; 9],
    sums: &mut [[f32; 9]; WR],
) {
    use std::arch::x86_64::*;
    // SAFETY: every load is inside the ranges the caller vouches for (see # Safety); the transmutes
    // reinterpret 64 bytes as 64 bytes.
    unsafe {
        let load = |p: *const u16| std::mem::transmute::<__m512, __m512bh>(_mm512_loadu_ps(p.cast()));
        let mut acc = [[_mm512_setzero_ps(); 9]; R];
        for img in 0..n {
            let d = dy.add(img * dy_img);
            let xi = x.add(img * x_img);
            for v in 0..qv {
                let q = v * 2 * LANES;
                let dv: [__m512bh; R] = std::array::from_fn(|r| load(d.add(r * dy_co + q)));
                for (t, &off) in cols.iter().enumerate() {
                    let xv = load(xi.add(q + off));
                    for r in 0..R {
                        acc[r][t] = _mm512_dpbf16_ps(acc[r][t], dv[r], xv);
                    }
                }
            }
        }
        for r in 0..R {
            for t in 0..9 {
                sums[r][t] = _mm512_reduce_add_ps(acc[r][t]);
            }
        }
    }
}

/// Unused off x86-64 (`available()` is false there).
///
/// # Safety
/// Never called.
#[cfg(not(target_arch = "x86_64"))]
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn dw_block<const R: usize>(
    _dy: *const u16, _dy_co: usize, _dy_img: usize, _x: *const u16, _x_img: usize, _n: usize, _qv: usize,
    _cols: &[usize; 9], _sums: &mut [[f32; 9]; WR],
) {
    unreachable!("bf16 convs run only where available() holds")
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
