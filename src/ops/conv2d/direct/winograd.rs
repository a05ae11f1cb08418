//! Winograd F(2×2, 3×3) forward for 3×3 stride-1 pad-1 convs in f32 on AVX-512 or AVX2 + FMA: each
//! 2×2 output tile costs 16 multiply-adds per (input, output) channel pair instead of 36.
//!
//! The 4×4 input windows of the tiles sit at stride 2 in the padded input, so they are read from the
//! same four parity-phase planes as the stride-2 direct conv (`Grid::stride2`, `pad_phases`): tile
//! (r, c) is position q = r·wp + c of that grid and its window element (i, j) lies at q + off(i, j),
//! a contiguous run over consecutive tiles. A task takes up to NV vectors of 16 tiles of one image
//! and, in thread-local scratch that stays in cache,
//! 1. transforms every input channel's windows, V[ξ][ci] = Bᵀ d B (ξ = 4i + j);
//! 2. runs the direct kernel with one tap as the 16 channel GEMMs M[ξ][co] = Σ_ci U[ξ][co][ci] V[ξ][ci],
//!    with U = G g Gᵀ the transformed weights (made per call, or once and kept by the caller:
//!    `forward_transformed`);
//! 3. transforms back, Y = Aᵀ M A, and stores with the bias / residual / ReLU epilogue.
//!
//! F(2×2, 3×3) with these B, G, A has rounding errors of the order of the direct sum's.
//!
//! The AVX2 build handles each vector of 16 tiles as two halves of 8 and computes the same values as
//! the AVX-512 build (the transforms add in the same order; the GEMM is the shared `conv_tile`).

use super::Epilogue;
use super::{
    conv_tile, isa, pad_phases, vdpbf16ps_available, with_scratch, Grid, Isa, Kern, SharedOut, LANES, MR, NV, TILE,
};
use crate::ops::conv2d::Conv2dGeom;
use rayon::prelude::*;
#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::__m512;
use std::cell::RefCell;

/// Bound on input channels × tile vectors per task, so a task's transformed input (16 · cin ·
/// vectors · 16 floats) stays within 512 KiB of the core's L2 cache: 4 vectors per task up to 128
/// channels, fewer above, 1 at 512 (the most channels taken).
const MAX_CIN_VECS: usize = 512;

/// Whether `forward` can compute this conv: 3×3, stride 1, pad 1, a channel count whose
/// transformed input fits in cache, and a CPU with one of the kernels' builds (`super::isa`).
pub fn applies(g: &Conv2dGeom) -> bool {
    fits(g) && isa().is_some()
}

/// The geometry part of `applies`.
fn fits(g: &Conv2dGeom) -> bool {
    g.k == 3 && g.stride == 1 && g.pad == 1 && (1..=MAX_CIN_VECS).contains(&g.cin) && g.cout > 0
}

/// Whether the output's tiles are stored as whole vectors (`Layout` other than the generic grid),
/// where Winograd beats the direct kernel (`super::super::algorithm`).
pub fn stores_whole_vectors(g: &Conv2dGeom) -> bool {
    !matches!(Layout::of(g.h, g.w), Layout::Grid)
}

/// How a task's vectors of 16 tiles lie on the tile grid (`Grid::stride2`, pitch wp).
#[derive(Clone, Copy, Debug)]
enum Layout {
    /// Tile rows of whole vectors (width a multiple of 32, even height): vector i is 16 tiles of
    /// one tile row; each output row of it is 32 consecutive outputs.
    Rows,
    /// Tile rows of 8 or 4 tiles (width 16 or 8) in groups of 16/wo rows per vector (the height a
    /// multiple of 2·16/wo): each output row of a group is one whole output row.
    Groups(usize),
    /// Anything else: vectors of 16 consecutive grid positions, junk ones included, stored tile
    /// by tile.
    Grid,
}

impl Layout {
    fn of(h: usize, w: usize) -> Layout {
        match (w, h) {
            _ if w.is_multiple_of(32) && h.is_multiple_of(2) => Layout::Rows,
            (16, _) if h.is_multiple_of(4) => Layout::Groups(8),
            (8, _) if h.is_multiple_of(8) => Layout::Groups(4),
            _ => Layout::Grid,
        }
    }
    fn vecs(self, gr: &Grid) -> usize {
        match self {
            Layout::Rows => gr.h * (gr.w / LANES),
            Layout::Groups(wo) => gr.h / (LANES / wo),
            Layout::Grid => gr.q_len / LANES,
        }
    }
    /// Grid position of vector i's first tile and, unless generic, the output index of its
    /// top-left output.
    fn place(self, gr: &Grid, w: usize, i: usize) -> (usize, Option<usize>) {
        match self {
            Layout::Rows => {
                let (r, c) = (i / (gr.w / LANES), (i % (gr.w / LANES)) * LANES);
                (r * gr.wp + c, Some(2 * r * w + 2 * c))
            }
            Layout::Groups(wo) => {
                let r = i * (LANES / wo);
                (r * gr.wp, Some(2 * r * w))
            }
            Layout::Grid => (i * LANES, None),
        }
    }
}

thread_local! {
    /// Per-thread transformed input and product tiles of one task.
    static TASK: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// y = act(conv3x3(x, W) + bias + residual); the caller checked `applies`.
pub fn forward(g: &Conv2dGeom, x: &[f32], wt: &[f32], ep: Epilogue<f32>, y: &mut [f32]) {
    forward_in(Kern::F32(chosen(g)), default_layout(g), g, x, Weights::Plain(wt), ep, y)
}

/// The build `applies` promised.
fn chosen(g: &Conv2dGeom) -> Isa {
    isa().unwrap_or_else(|| panic!("winograd: {g:?} on a CPU with neither AVX-512 nor AVX2+FMA"))
}

/// `forward`, `forward_transformed` (with `transformed`) or `forward_tile_by_tile` (with
/// `tile_by_tile`) by the given build, which the CPU must run; tests run each build the CPU has.
#[allow(clippy::too_many_arguments)]
pub fn forward_on(
    isa: Isa, tile_by_tile: bool, transformed: bool, g: &Conv2dGeom, x: &[f32], wt: &[f32], ep: Epilogue<f32>,
    y: &mut [f32],
) {
    assert!(isa.supported(), "winograd: the {} build does not run on this CPU", isa.name());
    let layout = if tile_by_tile { Layout::Grid } else { default_layout(g) };
    let weights = if transformed { Weights::Transformed(wt) } else { Weights::Plain(wt) };
    forward_in(Kern::F32(isa), layout, g, x, weights, ep, y)
}

/// `forward` with the weights already transformed by `transform_weights` (inference keeps them:
/// transforming costs about as much as a small plane's conv).
pub fn forward_transformed(g: &Conv2dGeom, x: &[f32], u: &[f32], ep: Epilogue<f32>, y: &mut [f32]) {
    forward_in(Kern::F32(chosen(g)), default_layout(g), g, x, Weights::Transformed(u), ep, y)
}

/// `forward_transformed` with bf16 products (`bf16::forward`): `u` holds the transformed weights with
/// each row of cin values paired (rows of cin.div_ceil(2) pairs, `transformed_len(pairs, cout)`), and
/// `input_transform_bf16` pairs and rounds each task's transformed input tiles likewise. The caller
/// checked `vdpbf16ps_available()`.
pub(super) fn forward_bf16(g: &Conv2dGeom, x: &[f32], u: &[f32], ep: Epilogue<f32>, y: &mut [f32]) {
    assert!(vdpbf16ps_available(), "winograd: bf16 products need AVX512-BF16");
    forward_in(Kern::Bf16Pairs, default_layout(g), g, x, Weights::Transformed(u), ep, y)
}

/// `forward` with every plane stored tile by tile (the generic layout), for tests.
pub fn forward_tile_by_tile(g: &Conv2dGeom, x: &[f32], wt: &[f32], ep: Epilogue<f32>, y: &mut [f32]) {
    forward_in(Kern::F32(chosen(g)), Layout::Grid, g, x, Weights::Plain(wt), ep, y)
}

fn default_layout(g: &Conv2dGeom) -> Layout {
    Layout::of(g.h, g.w)
}

enum Weights<'a> {
    /// [cout][cin][3][3].
    Plain(&'a [f32]),
    /// From `transform_weights`.
    Transformed(&'a [f32]),
}

/// Floats of the transformed weights of a cin → cout conv.
pub fn transformed_len(cin: usize, cout: usize) -> usize {
    16 * cout.div_ceil(MR) * MR * cin
}

fn forward_in(kern: Kern, layout: Layout, g: &Conv2dGeom, x: &[f32], wt: Weights, ep: Epilogue<f32>, y: &mut [f32]) {
    assert!(fits(g), "winograd: {g:?} is not a 3×3 stride-1 pad-1 conv of ≤ {MAX_CIN_VECS} channels");
    let isa = kern.isa();
    // The channel GEMMs' reduction rows: channels, or channel pairs for bf16 products.
    let gemm_rows = if kern == Kern::Bf16Pairs { g.cin.div_ceil(2) } else { g.cin };
    assert!(isa.supported(), "winograd: the {} build does not run on this CPU", isa.name());
    let (n, cin, cout, h, w) = (g.n, g.cin, g.cout, g.h, g.w);
    let hw = h * w;
    // U's rows hold one weight per GEMM reduction row (channel, or channel pair for bf16).
    let ulen = transformed_len(gemm_rows, cout);
    assert!(x.len() >= n * cin * hw && y.len() >= n * cout * hw);
    assert!(ep.bias.is_none_or(|b| b.len() >= cout) && ep.residual.is_none_or(|r| r.len() >= n * cout * hw));
    // The tile grid: tile (r, c) covers outputs (2r..2r+2, 2c..2c+2).
    let gr = Grid::stride2(h, w);
    let blocks = cout.div_ceil(MR);
    let (own, xlen) = (if matches!(wt, Weights::Plain(_)) { ulen } else { 0 }, n * cin * gr.plane);
    with_scratch(own + xlen, |s| {
        let (u_own, xph) = s.split_at_mut(own);
        let u: &[f32] = match wt {
            Weights::Plain(wt) => {
                transform_weights(wt, cin, cout, u_own);
                u_own
            }
            Weights::Transformed(u) => u,
        };
        assert!(u.len() >= ulen, "winograd: transformed weights of {} floats, need {ulen}", u.len());
        pad_phases(isa, &gr, h, w, &x[..n * cin * hw], xph);
        let xph = &*xph;
        let qv = layout.vecs(&gr);
        let tiles = qv.div_ceil((MAX_CIN_VECS / cin).clamp(1, NV));
        // Small planes have fewer tile tasks than threads: split the output channels too (each part
        // transforms the input again, ~4·parts/cout of its multiply-adds; one task per thread
        // measured best, 2 per thread ~2 % slower at batch 1).
        let parts = rayon::current_num_threads().div_ceil(n * tiles).clamp(1, blocks);
        let out = SharedOut(y.as_mut_ptr());
        let task = |i: usize| {
            let (img, t, part) = (i / (tiles * parts), (i / parts) % tiles, i % parts);
            let (v0, v1) = (t * qv / tiles, (t + 1) * qv / tiles);
            let (b0, b1) = (part * blocks / parts, (part + 1) * blocks / parts);
            let (vecs, nb) = (v1 - v0, b1 - b0);
            let places: [(usize, Option<usize>); NV] =
                std::array::from_fn(|v| layout.place(&gr, w, v0 + v.min(vecs - 1)));
            TASK.with(|cell| {
                let mut buf = cell.borrow_mut();
                let (vlen, mlen) = (16 * cin * TILE, 16 * nb * MR * TILE);
                if buf.len() < vlen + mlen {
                    buf.resize(vlen + mlen, 0.0);
                }
                let (vt, mt) = buf.split_at_mut(vlen);
                // SAFETY: the window reads stay inside this image's phase planes (each phase covers
                // q_len − 1 + wp + 1, the furthest element; a group's rows end at its last tile
                // row); vt and mt hold 16·cin (≥ 16·gemm_rows) and 16·nb·MR rows of TILE floats; U
                // holds 16·blocks·MR rows of gemm_rows; the stores stay inside the image's planes.
                // The CPU runs `isa` (asserted above).
                unsafe {
                    let image = xph.as_ptr().add(img * cin * gr.plane);
                    let q: [usize; NV] = places.map(|p| p.0);
                    let (q, vt_out) = (&q[..vecs], vt.as_mut_ptr());
                    match (layout, kern) {
                        (Layout::Groups(8), Kern::Bf16Pairs) => input_transform_bf16::<2>(image, &gr, cin, q, vt_out),
                        (Layout::Groups(_), Kern::Bf16Pairs) => input_transform_bf16::<4>(image, &gr, cin, q, vt_out),
                        (_, Kern::Bf16Pairs) => input_transform_bf16::<1>(image, &gr, cin, q, vt_out),
                        (Layout::Groups(8), _) => input_transform::<2>(isa, image, &gr, cin, q, vt_out),
                        (Layout::Groups(_), _) => input_transform::<4>(isa, image, &gr, cin, q, vt_out),
                        _ => input_transform::<1>(isa, image, &gr, cin, q, vt_out),
                    }
                    // The GEMM reads the transformed tiles as NV vectors of one plane of TILE floats.
                    let inner: [usize; NV] = std::array::from_fn(|v| v * LANES);
                    for xi in 0..16 {
                        for cb in b0..b1 {
                            let rows: [*const f32; MR] =
                                std::array::from_fn(|r| u.as_ptr().add(((xi * blocks + cb) * MR + r) * gemm_rows));
                            let x = vt.as_ptr().add(xi * gemm_rows * TILE);
                            let o = mt.as_mut_ptr().add((xi * nb + cb - b0) * MR * TILE);
                            match vecs {
                                4 => conv_tile::<4, 1>(kern, x, &inner, TILE, gemm_rows, &[0], &rows, 1, o),
                                3 => conv_tile::<3, 1>(kern, x, &inner, TILE, gemm_rows, &[0], &rows, 1, o),
                                2 => conv_tile::<2, 1>(kern, x, &inner, TILE, gemm_rows, &[0], &rows, 1, o),
                                _ => conv_tile::<1, 1>(kern, x, &inner, TILE, gemm_rows, &[0], &rows, 1, o),
                            }
                        }
                    }
                    let m = mt.as_ptr();
                    for co in b0 * MR..(b1 * MR).min(cout) {
                        let base = (img * cout + co) * hw;
                        let ep = TileEpilogue {
                            bias: ep.bias.map_or(0.0, |b| b[co]),
                            res: ep.residual.map(|r| r.as_ptr().add(base)),
                            relu: ep.relu,
                        };
                        for (v, &(q0, corner)) in places[..vecs].iter().enumerate() {
                            // M[ξ][co] for this vector: row co of block ξ, at v·16.
                            let mrow = m.add((co - b0 * MR) * TILE + v * LANES);
                            let place = Place { layout, corner, q0, w };
                            #[cfg(target_arch = "x86_64")]
                            match isa {
                                Isa::Avx512 => finish_avx512(mrow, nb * MR * TILE, &place, &gr, h, out.at(base), &ep),
                                Isa::Avx2 => finish_avx2(mrow, nb * MR * TILE, &place, &gr, h, out.at(base), &ep),
                            }
                            #[cfg(not(target_arch = "x86_64"))]
                            unreachable!("Winograd runs only where applies() holds: {place:?} {mrow:?}")
                        }
                    }
                }
            });
        };
        (0..n * tiles * parts).into_par_iter().for_each(task);
    });
}

/// Where one vector of 16 tiles goes: its layout, grid position and (unless generic) output corner.
#[derive(Debug)]
struct Place {
    layout: Layout,
    corner: Option<usize>,
    q0: usize,
    /// Output plane width.
    w: usize,
}

impl Place {
    /// The starts of the output runs of R consecutive values that output row a (0 or 1) of the
    /// vector's tiles fills (32 / R of them), or None on the generic layout (stored tile by tile).
    fn runs<const R: usize>(&self, a: usize) -> Option<[usize; 4]> {
        let w = self.w;
        match (self.layout, self.corner) {
            (Layout::Rows, Some(c)) => Some([c + a * w, c + a * w + 16, 0, 0]),
            (Layout::Groups(8), Some(c)) => Some([c + a * w, c + a * w + 2 * w, 0, 0]),
            (Layout::Groups(_), Some(c)) => Some(std::array::from_fn(|k| c + a * w + 2 * k * w)),
            _ => None,
        }
    }
}

/// Transforms back the M vectors of one output channel's 16 tiles (at m + ξ·stride) and stores
/// them with the epilogue, on AVX-512.
///
/// # Safety
/// As `output_transform` and `store_runs` / `store_tiles` for the place's outputs.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[allow(clippy::too_many_arguments)]
unsafe fn finish_avx512(
    m: *const f32, stride: usize, place: &Place, gr: &Grid, h: usize, dst: *mut f32, ep: &TileEpilogue,
) {
    // SAFETY: forwarded from the caller (see # Safety).
    unsafe {
        let y = output_transform(m, stride);
        if place.corner.is_none() || matches!(place.layout, Layout::Grid) {
            let mut rows = [[0.0f32; 2 * LANES]; 2];
            for (row, ya) in rows.iter_mut().zip(&y) {
                std::arch::x86_64::_mm512_storeu_ps(row.as_mut_ptr(), ya[0]);
                std::arch::x86_64::_mm512_storeu_ps(row.as_mut_ptr().add(LANES), ya[1]);
            }
            return store_tiles(&rows, gr, (h, place.w), place.q0, dst, ep);
        }
        for (a, &ya) in y.iter().enumerate() {
            match place.layout {
                Layout::Groups(4) => store_runs::<8>(ya, &place.runs::<8>(a).expect("whole runs"), dst, ep),
                _ => store_runs::<16>(ya, &place.runs::<16>(a).expect("whole runs")[..2], dst, ep),
            }
        }
    }
}

/// `finish_avx512` on AVX2 + FMA.
///
/// # Safety
/// As `finish_avx512`, with AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn finish_avx2(
    m: *const f32, stride: usize, place: &Place, gr: &Grid, h: usize, dst: *mut f32, ep: &TileEpilogue,
) {
    use std::arch::x86_64::*;
    // SAFETY: forwarded from the caller (see # Safety).
    unsafe {
        let y = avx2::output_transform(m, stride);
        if place.corner.is_none() || matches!(place.layout, Layout::Grid) {
            let mut rows = [[0.0f32; 2 * LANES]; 2];
            for (row, ya) in rows.iter_mut().zip(&y) {
                for (k, &v) in ya.iter().enumerate() {
                    _mm256_storeu_ps(row.as_mut_ptr().add(8 * k), v);
                }
            }
            return store_tiles(&rows, gr, (h, place.w), place.q0, dst, ep);
        }
        for (a, ya) in y.iter().enumerate() {
            let (run, starts) = match place.layout {
                Layout::Groups(4) => (8, place.runs::<8>(a).expect("whole runs")),
                _ => (16, place.runs::<16>(a).expect("whole runs")),
            };
            for (k, &v) in ya.iter().enumerate() {
                let at = starts[8 * k / run] + (8 * k) % run;
                avx2::store_vec(v, at, dst, ep);
            }
        }
    }
}

/// One output channel's epilogue: act(y + bias + residual), `res` its residual plane.
struct TileEpilogue {
    bias: f32,
    res: Option<*const f32>,
    relu: bool,
}

/// U[ξ = 4i + j][co][ci] = (G g Gᵀ)[i][j] of weights [cout][cin][3][3], co padded to whole blocks
/// of MR (zero rows); `u` holds `transformed_len(cin, cout)` floats.
pub fn transform_weights(wt: &[f32], cin: usize, cout: usize, u: &mut [f32]) {
    assert!(wt.len() >= cout * cin * 9 && u.len() == transformed_len(cin, cout));
    let rows = u.len() / (16 * cin);
    for xi in 0..16 {
        u[(xi * rows + cout) * cin..(xi + 1) * rows * cin].fill(0.0);
    }
    for co in 0..cout {
        for ci in 0..cin {
            let g = &wt[(co * cin + ci) * 9..][..9];
            // G g: 4×3, then (G g) Gᵀ: 4×4, with G = [1 0 0; ½ ½ ½; ½ −½ ½; 0 0 1].
            let mut t = [[0.0f32; 3]; 4];
            for k in 0..3 {
                let (a, b, c) = (g[k], g[3 + k], g[6 + k]);
                t[0][k] = a;
                t[1][k] = 0.5 * (a + b + c);
                t[2][k] = 0.5 * (a - b + c);
                t[3][k] = c;
            }
            for (i, ti) in t.iter().enumerate() {
                let (a, b, c) = (ti[0], ti[1], ti[2]);
                let row = [a, 0.5 * (a + b + c), 0.5 * (a - b + c), c];
                for (j, &v) in row.iter().enumerate() {
                    u[((4 * i + j) * rows + co) * cin + ci] = v;
                }
            }
        }
    }
}

/// Offset of window element (i, j) of tile q from q in the phase planes (cf. `Grid::stride2`).
fn window_offset(gr: &Grid, i: usize, j: usize) -> usize {
    ((i & 1) * 2 + (j & 1)) * gr.phase + (i >> 1) * gr.wp + (j >> 1)
}

/// `window_offset` of the 16 elements e = 4i + j.
pub(super) fn window_offsets(gr: &Grid) -> [usize; 16] {
    std::array::from_fn(|e| window_offset(gr, e / 4, e % 4))
}

/// vt[ξ][ci][v·16 + lane] = (Bᵀ d B)[ξ] of the windows of vector v's 16 tiles, which lie in P tile
/// rows of 16/P tiles from grid position q[v] (P = 1: 16 consecutive positions), by the `isa` build.
///
/// # Safety
/// The CPU must run `isa`; x must hold `cin` phase-plane images of `gr` whose windows from every q[v]
/// are in range, and vt must be writable for 16·cin·TILE floats.
unsafe fn input_transform<const P: usize>(isa: Isa, x: *const f32, gr: &Grid, cin: usize, q: &[usize], vt: *mut f32) {
    // SAFETY: forwarded from the caller (see # Safety).
    #[cfg(target_arch = "x86_64")]
    unsafe {
        match isa {
            Isa::Avx512 => input_transform_avx512::<P>(x, gr, cin, q, vt),
            Isa::Avx2 => avx2::input_transform::<P>(x, gr, cin, q, vt),
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    unreachable!("Winograd runs only where applies() holds: {isa:?} {x:?} {gr:?} {cin} {q:?} {vt:?}")
}

/// `input_transform` on AVX-512F.
///
/// # Safety
/// As `input_transform`, with AVX-512F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn input_transform_avx512<const P: usize>(x: *const f32, gr: &Grid, cin: usize, q: &[usize], vt: *mut f32) {
    use std::arch::x86_64::*;
    let (off, wp) = (window_offsets(gr), gr.wp);
    // SAFETY: the window loads and the vt stores stay in the ranges the caller vouches for (# Safety).
    unsafe {
        for ci in 0..cin {
            let xc = x.add(ci * gr.plane);
            for (v, &q) in q.iter().enumerate() {
                let r = window_transform::<P>(xc.add(q), wp, &off);
                for (xi, rv) in r.iter().enumerate() {
                    _mm512_storeu_ps(vt.add((xi * cin + ci) * TILE + v * LANES), *rv);
                }
            }
        }
    }
}

/// (Bᵀ d B)[ξ], ξ = 4i + j, of the 16 windows whose element e lies at the P-row load (see
/// `input_transform`) from xq + off[e]; inlined into each caller's build.
///
/// # Safety
/// The CPU must have AVX-512F; the loads must be in range (as `input_transform`'s).
#[cfg(target_arch = "x86_64")]
#[inline(always)]
pub(super) unsafe fn window_transform<const P: usize>(xq: *const f32, wp: usize, off: &[usize; 16]) -> [__m512; 16] {
    use std::arch::x86_64::*;
    // SAFETY: the loads stay in the ranges the caller vouches for.
    unsafe {
        let load = |p: *const f32| match P {
            1 => _mm512_loadu_ps(p),
            2 => {
                let lo = _mm512_castps256_ps512(_mm256_loadu_ps(p));
                _mm512_castpd_ps(_mm512_insertf64x4::<1>(
                    _mm512_castps_pd(lo),
                    _mm256_castps_pd(_mm256_loadu_ps(p.add(wp))),
                ))
            }
            _ => {
                let v = _mm512_castps128_ps512(_mm_loadu_ps(p));
                let v = _mm512_insertf32x4::<1>(v, _mm_loadu_ps(p.add(wp)));
                let v = _mm512_insertf32x4::<2>(v, _mm_loadu_ps(p.add(2 * wp)));
                _mm512_insertf32x4::<3>(v, _mm_loadu_ps(p.add(3 * wp)))
            }
        };
        let d: [__m512; 16] = std::array::from_fn(|e| load(xq.add(off[e])));
        // Bᵀ d: row i of the result from rows of d (Bᵀ = [1 0 −1 0; 0 1 1 0; 0 −1 1 0; 0 1 0 −1]).
        let mut t = [_mm512_setzero_ps(); 16];
        for j in 0..4 {
            let (d0, d1, d2, d3) = (d[j], d[4 + j], d[8 + j], d[12 + j]);
            t[j] = _mm512_sub_ps(d0, d2);
            t[4 + j] = _mm512_add_ps(d1, d2);
            t[8 + j] = _mm512_sub_ps(d2, d1);
            t[12 + j] = _mm512_sub_ps(d1, d3);
        }
        // (Bᵀ d) B: the same on each row's columns.
        let mut r = [_mm512_setzero_ps(); 16];
        for i in 0..4 {
            let (t0, t1, t2, t3) = (t[4 * i], t[4 * i + 1], t[4 * i + 2], t[4 * i + 3]);
            r[4 * i] = _mm512_sub_ps(t0, t2);
            r[4 * i + 1] = _mm512_add_ps(t1, t2);
            r[4 * i + 2] = _mm512_sub_ps(t2, t1);
            r[4 * i + 3] = _mm512_sub_ps(t1, t3);
        }
        r
    }
}

/// The outputs of 16 tiles from their M[ξ] vectors at m + ξ·stride, Y = Aᵀ M A with
/// Aᵀ = [1 1 1 0; 0 1 −1 −1], as two output rows a: y[a] = [cols 2c, 2c + 1 of tiles 0..8,
/// then of tiles 8..16] (interleaved, so consecutive tiles of a row give consecutive outputs).
///
/// # Safety
/// The CPU must have AVX-512F; m must be readable for 16 floats at each of m + ξ·stride, ξ < 16.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn output_transform(m: *const f32, stride: usize) -> [[__m512; 2]; 2] {
    use std::arch::x86_64::*;
    // SAFETY: the 16 loads are the ranges the caller vouches for.
    unsafe {
        let mv: [__m512; 16] = std::array::from_fn(|e| _mm512_loadu_ps(m.add(e * stride)));
        // Aᵀ M: two rows of four.
        let mut s = [_mm512_setzero_ps(); 8];
        for j in 0..4 {
            let (m0, m1, m2, m3) = (mv[j], mv[4 + j], mv[8 + j], mv[12 + j]);
            s[j] = _mm512_add_ps(_mm512_add_ps(m0, m1), m2);
            s[4 + j] = _mm512_sub_ps(_mm512_sub_ps(m1, m2), m3);
        }
        let lo = _mm512_setr_epi32(0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23);
        let hi = _mm512_setr_epi32(8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31);
        std::array::from_fn(|a| {
            let (s0, s1, s2, s3) = (s[4 * a], s[4 * a + 1], s[4 * a + 2], s[4 * a + 3]);
            let (y0, y1) = (_mm512_add_ps(_mm512_add_ps(s0, s1), s2), _mm512_sub_ps(_mm512_sub_ps(s1, s2), s3));
            [_mm512_permutex2var_ps(y0, lo, y1), _mm512_permutex2var_ps(y0, hi, y1)]
        })
    }
}

/// Stores act(v + bias + residual) of the 32 values of y (one output row of a vector's tiles) as
/// runs of R consecutive outputs at the plane offsets `at` (R = 16: two runs, R = 8: four).
///
/// # Safety
/// The CPU must have AVX-512F; dst (and ep.res) must be valid for R floats at each offset in `at`, and the
/// caller must own those outputs.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn store_runs<const R: usize>(y: [__m512; 2], at: &[usize], dst: *mut f32, ep: &TileEpilogue) {
    use std::arch::x86_64::*;
    debug_assert_eq!(at.len(), 32 / R);
    // SAFETY: runs of R floats at the offsets the caller vouches for.
    unsafe {
        let load = |a: usize, b: usize, p: *const f32| match R {
            16 => _mm512_loadu_ps(p.add(a)),
            _ => {
                let lo = _mm512_castps256_ps512(_mm256_loadu_ps(p.add(a)));
                _mm512_castpd_ps(_mm512_insertf64x4::<1>(
                    _mm512_castps_pd(lo),
                    _mm256_castps_pd(_mm256_loadu_ps(p.add(b))),
                ))
            }
        };
        for (k, &v) in y.iter().enumerate() {
            let (a, b) = if R == 16 { (at[k], at[k]) } else { (at[2 * k], at[2 * k + 1]) };
            let mut v = _mm512_add_ps(v, _mm512_set1_ps(ep.bias));
            if let Some(r) = ep.res {
                v = _mm512_add_ps(v, load(a, b, r));
            }
            if ep.relu {
                v = _mm512_max_ps(v, _mm512_setzero_ps());
            }
            if R == 16 {
                _mm512_storeu_ps(dst.add(a), v);
            } else {
                _mm256_storeu_ps(dst.add(a), _mm512_castps512_ps256(v));
                _mm256_storeu_ps(dst.add(b), _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(v))));
            }
        }
    }
}

/// The generic store: each real tile of the 16 at grid positions q0.. writes its outputs that lie
/// inside the H×W plane; rows[a] holds output row a of tile l, column b at 2l + b.
///
/// # Safety
/// dst (and ep.res) must cover the h×w plane, whose outputs of these tiles the caller owns.
#[cfg(target_arch = "x86_64")]
unsafe fn store_tiles(
    rows: &[[f32; 2 * LANES]; 2], gr: &Grid, (h, w): (usize, usize), q0: usize, dst: *mut f32, ep: &TileEpilogue,
) {
    for lane in 0..LANES {
        let q = q0 + lane;
        let (r, c) = (q / gr.wp, q % gr.wp);
        if c >= gr.w || r >= gr.h {
            continue;
        }
        for (a, b) in [(0, 0), (0, 1), (1, 0), (1, 1)] {
            let (oy, ox) = (2 * r + a, 2 * c + b);
            if oy < h && ox < w {
                let at = oy * w + ox;
                // SAFETY: (oy, ox) is inside the plane; the caller owns these outputs.
                unsafe {
                    let mut v = rows[a][2 * lane + b] + ep.bias + ep.res.map_or(0.0, |p| *p.add(at));
                    if ep.relu {
                        v = v.max(0.0);
                    }
                    *dst.add(at) = v;
                }
            }
        }
    }
}

/// `input_transform` for bf16 products: vt[ξ][p][v·16 + lane] = the pair of (Bᵀ d B)[ξ]
/// of channels 2p and 2p + 1 (zero for a missing odd one) of vector v's 16 tiles, rounded to bf16 —
/// written as pairs at once, without an f32 pass through memory.
///
/// # Safety
/// As `input_transform` (x holds `cin` phase planes whose windows from each q[v] are in
/// range), with `vdpbf16ps_available()`; vt writable for 16·pairs·TILE floats.
unsafe fn input_transform_bf16<const P: usize>(x: *const f32, gr: &Grid, cin: usize, q: &[usize], vt: *mut f32) {
    // SAFETY: forwarded from the caller.
    #[cfg(target_arch = "x86_64")]
    unsafe {
        input_transform_bf16_avx512::<P>(x, gr, cin, q, vt)
    }
}

/// # Safety
/// As `input_transform_bf16`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16")]
unsafe fn input_transform_bf16_avx512<const P: usize>(x: *const f32, gr: &Grid, cin: usize, q: &[usize], vt: *mut f32) {
    use std::arch::x86_64::*;
    let (off, wp, pairs) = (window_offsets(gr), gr.wp, cin.div_ceil(2));
    // SAFETY: the window loads stay in the caller's planes (channels < cin) and the stores in vt's
    // 16·pairs rows of TILE (# Safety).
    unsafe {
        let idx = _mm512_loadu_si512(BF16_INTERLEAVE.as_ptr().cast());
        for p in 0..pairs {
            let (lo, hi) = (x.add(2 * p * gr.plane), x.add((2 * p + 1) * gr.plane));
            for (v, &q) in q.iter().enumerate() {
                let a = window_transform::<P>(lo.add(q), wp, &off);
                let b = if 2 * p + 1 < cin {
                    window_transform::<P>(hi.add(q), wp, &off)
                } else {
                    [_mm512_setzero_ps(); 16]
                };
                for xi in 0..16 {
                    // cvtne2ps puts its second operand in the low 16 bf16 values, the first in the high.
                    let both = std::mem::transmute::<__m512bh, __m512i>(_mm512_cvtne2ps_pbh(b[xi], a[xi]));
                    let pairs_v = _mm512_castsi512_ps(_mm512_permutexvar_epi16(idx, both));
                    _mm512_storeu_ps(vt.add((xi * pairs + p) * TILE + v * 16), pairs_v);
                }
            }
        }
    }
}

/// Word i of the interleave takes word BF16_INTERLEAVE[i] of (low 16 from one vector, high 16 from the
/// other): lo0, hi0, lo1, hi1, …
const BF16_INTERLEAVE: [u16; 32] = {
    let mut t = [0u16; 32];
    let mut i = 0;
    while i < 32 {
        t[i] = (i / 2 + 16 * (i % 2)) as u16;
        i += 1;
    }
    t
};

/// The AVX2 + FMA halves of the transforms: each vector of 16 tiles as lanes 0..8 and 8..16.
#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::{window_offsets, Grid, TileEpilogue, LANES, TILE};
    use std::arch::x86_64::*;

    /// `input_transform` on AVX2, same arithmetic as the AVX-512 build on each half.
    ///
    /// # Safety
    /// As `super::input_transform`, with AVX2.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn input_transform<const P: usize>(
        x: *const f32, gr: &Grid, cin: usize, q: &[usize], vt: *mut f32,
    ) {
        let off = window_offsets(gr);
        let wp = gr.wp;
        // SAFETY: the window loads and the vt stores stay in the ranges the caller vouches for: half h
        // reads lanes 8h..8h + 8 of the vector's tiles (P = 1: the run from 8h; P = 2: tile row h;
        // P = 4: tile rows 2h and 2h + 1, 4 tiles each).
        unsafe {
            let load = |p: *const f32, half: usize| match P {
                1 => _mm256_loadu_ps(p.add(8 * half)),
                2 => _mm256_loadu_ps(p.add(half * wp)),
                _ => _mm256_set_m128(_mm_loadu_ps(p.add((2 * half + 1) * wp)), _mm_loadu_ps(p.add(2 * half * wp))),
            };
            for ci in 0..cin {
                let xc = x.add(ci * gr.plane);
                for (v, &q) in q.iter().enumerate() {
                    for half in 0..2 {
                        let d: [__m256; 16] = std::array::from_fn(|e| load(xc.add(q + off[e]), half));
                        let mut t = [_mm256_setzero_ps(); 16];
                        for j in 0..4 {
                            let (d0, d1, d2, d3) = (d[j], d[4 + j], d[8 + j], d[12 + j]);
                            t[j] = _mm256_sub_ps(d0, d2);
                            t[4 + j] = _mm256_add_ps(d1, d2);
                            t[8 + j] = _mm256_sub_ps(d2, d1);
                            t[12 + j] = _mm256_sub_ps(d1, d3);
                        }
                        for i in 0..4 {
                            let (t0, t1, t2, t3) = (t[4 * i], t[4 * i + 1], t[4 * i + 2], t[4 * i + 3]);
                            let r = [
                                _mm256_sub_ps(t0, t2),
                                _mm256_add_ps(t1, t2),
                                _mm256_sub_ps(t2, t1),
                                _mm256_sub_ps(t1, t3),
                            ];
                            for (j, rv) in r.iter().enumerate() {
                                _mm256_storeu_ps(vt.add(((4 * i + j) * cin + ci) * TILE + v * LANES + 8 * half), *rv);
                            }
                        }
                    }
                }
            }
        }
    }

    /// `output_transform` on AVX2: y[a][k] holds outputs 8k..8k + 8 of output row a of the 16 tiles
    /// (tile l, column b at 2l + b).
    ///
    /// # Safety
    /// As `super::output_transform`, with AVX2.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn output_transform(m: *const f32, stride: usize) -> [[__m256; 4]; 2] {
        let mut y = [[_mm256_setzero_ps(); 4]; 2];
        // SAFETY: 16-float reads at m + ξ·stride, as the caller vouches for, in two halves.
        unsafe {
            for half in 0..2 {
                let mv: [__m256; 16] = std::array::from_fn(|e| _mm256_loadu_ps(m.add(e * stride + 8 * half)));
                let mut s = [_mm256_setzero_ps(); 8];
                for j in 0..4 {
                    let (m0, m1, m2, m3) = (mv[j], mv[4 + j], mv[8 + j], mv[12 + j]);
                    s[j] = _mm256_add_ps(_mm256_add_ps(m0, m1), m2);
                    s[4 + j] = _mm256_sub_ps(_mm256_sub_ps(m1, m2), m3);
                }
                for (a, ya) in y.iter_mut().enumerate() {
                    let (s0, s1, s2, s3) = (s[4 * a], s[4 * a + 1], s[4 * a + 2], s[4 * a + 3]);
                    let (y0, y1) = (_mm256_add_ps(_mm256_add_ps(s0, s1), s2), _mm256_sub_ps(_mm256_sub_ps(s1, s2), s3));
                    // Interleave columns 0 and 1 of tiles 0..8: unpack works within 128-bit lanes.
                    let (lo, hi) = (_mm256_unpacklo_ps(y0, y1), _mm256_unpackhi_ps(y0, y1));
                    ya[2 * half] = _mm256_permute2f128_ps::<0x20>(lo, hi);
                    ya[2 * half + 1] = _mm256_permute2f128_ps::<0x31>(lo, hi);
                }
            }
        }
        y
    }

    /// dst[at..at + 8] = act(v + bias + residual).
    ///
    /// # Safety
    /// AVX2; dst (and ep.res) valid for 8 floats at `at`, outputs the caller owns.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn store_vec(v: __m256, at: usize, dst: *mut f32, ep: &TileEpilogue) {
        // SAFETY: 8 floats at `at`, as the caller vouches for.
        unsafe {
            let mut v = _mm256_add_ps(v, _mm256_set1_ps(ep.bias));
            if let Some(r) = ep.res {
                v = _mm256_add_ps(v, _mm256_loadu_ps(r.add(at)));
            }
            if ep.relu {
                v = _mm256_max_ps(v, _mm256_setzero_ps());
            }
            _mm256_storeu_ps(dst.add(at), v);
        }
    }
}
