//! Winograd F(2×2, 3×3) forward for 3×3 stride-1 pad-1 convs in f32 on AVX-512: each 2×2 output
//! tile costs 16 multiply-adds per (input, output) channel pair instead of 36.
//!
//! The 4×4 input windows of the tiles sit at stride 2 in the padded input, so they are read from the
//! same four parity-phase planes as the stride-2 direct conv (`Grid::stride2`, `pad_phases`): tile
//! (r, c) is position q = r·wp + c of that grid and its window element (i, j) lies at q + off(i, j),
//! a contiguous run over consecutive tiles. A task takes up to NV vectors of 16 tiles of one image
//! and, in thread-local scratch that stays in cache,
//! 1. transforms every input channel's windows, V[ξ][ci] = Bᵀ d B (ξ = 4i + j);
//! 2. runs the direct kernel with one tap as the 16 channel GEMMs M[ξ][co] = Σ_ci U[ξ][co][ci] V[ξ][ci],
//!    with U = G g Gᵀ the transformed weights (once per call);
//! 3. transforms back, Y = Aᵀ M A, and stores with the bias / residual / ReLU epilogue.
//!
//! F(2×2, 3×3) with these B, G, A has rounding errors of the order of the direct sum's.

use super::{available, conv_tile, pad_phases, with_scratch, Grid, SharedOut, LANES, MR, NV, TILE};
use crate::ops::conv2d::cpu::Epilogue;
use crate::ops::conv2d::Conv2dGeom;
use rayon::prelude::*;
use std::cell::RefCell;

/// Largest input-channel count taken: a task's transformed input is 16 · cin · NV·16 floats
/// (256 KiB at 64 channels), which must stay in the core's L2 cache.
const MAX_CIN: usize = 96;

/// Whether `forward` can compute this conv: 3×3, stride 1, pad 1, a channel count whose
/// transformed input fits in cache, and AVX-512.
pub fn applies(g: &Conv2dGeom) -> bool {
    g.k == 3 && g.stride == 1 && g.pad == 1 && (1..=MAX_CIN).contains(&g.cin) && g.cout > 0 && available()
}

/// Whether it beats the direct kernel: where the tile rows are whole vectors (width a multiple of
/// 32, even height), so the outputs are stored as vectors; elsewhere the junk tiles and the
/// per-tile stores cost more than the saved multiply-adds (72 channels at 16×16 measured 12 %
/// slower than direct).
pub fn pays(g: &Conv2dGeom) -> bool {
    applies(g) && g.w % 32 == 0 && g.h % 2 == 0
}

thread_local! {
    /// Per-thread transformed input and product tiles of one task.
    static TASK: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// y = act(conv3x3(x, W) + bias + residual); the caller checked `applies`.
pub fn forward(g: &Conv2dGeom, x: &[f32], wt: &[f32], ep: Epilogue<f32>, y: &mut [f32]) {
    let (n, cin, cout, h, w) = (g.n, g.cin, g.cout, g.h, g.w);
    let hw = h * w;
    assert!(x.len() >= n * cin * hw && wt.len() >= cout * cin * 9 && y.len() >= n * cout * hw);
    assert!(ep.bias.is_none_or(|b| b.len() >= cout) && ep.residual.is_none_or(|r| r.len() >= n * cout * hw));
    // The tile grid: tile (r, c) covers outputs (2r..2r+2, 2c..2c+2).
    let gr = Grid::stride2(h, w);
    let blocks = cout.div_ceil(MR);
    let (ulen, xlen) = (16 * blocks * MR * cin, n * cin * gr.plane);
    with_scratch(ulen + xlen, |s| {
        let (u, xph) = s.split_at_mut(ulen);
        transform_weights(wt, cin, cout, u);
        pad_phases(&gr, h, w, &x[..n * cin * hw], xph);
        let (u, xph) = (&*u, &*xph);
        let qv = gr.vecs();
        let tiles = qv.div_ceil(NV);
        let out = SharedOut(y.as_mut_ptr());
        // Every vector is 16 real tiles of one tile row with both output rows inside the plane:
        // the outputs are stored as two rows of 32.
        let whole = gr.row_vecs > 0 && h % 2 == 0 && w % 2 == 0;
        let task = |i: usize| {
            let (img, t) = (i / tiles, i % tiles);
            let (v0, v1) = (t * qv / tiles, (t + 1) * qv / tiles);
            let voff: [usize; NV] = std::array::from_fn(|v| gr.vec_q(v0 + v.min(v1 - v0 - 1)));
            TASK.with(|cell| {
                let mut buf = cell.borrow_mut();
                let (vlen, mlen) = (16 * cin * TILE, 16 * blocks * MR * TILE);
                if buf.len() < vlen + mlen {
                    buf.resize(vlen + mlen, 0.0);
                }
                let (vt, mt) = buf.split_at_mut(vlen);
                // SAFETY: the window reads stay inside this image's phase planes (the grid's plane
                // covers q_len − 1 + wp + 1 in each phase, the furthest element); vt and mt hold
                // 16·cin and 16·blocks·MR rows of TILE floats; U holds 16·blocks·MR rows of cin.
                unsafe {
                    let xi = xph.as_ptr().add(img * cin * gr.plane);
                    input_transform(xi, &gr, cin, &voff[..v1 - v0], vt.as_mut_ptr());
                    // The GEMM reads the transformed tiles as NV vectors of one plane of TILE floats.
                    let inner: [usize; NV] = std::array::from_fn(|v| v * LANES);
                    for xi in 0..16 {
                        for cb in 0..blocks {
                            let rows: [*const f32; MR] = std::array::from_fn(|r| u.as_ptr().add(((xi * blocks + cb) * MR + r) * cin));
                            let x = vt.as_ptr().add(xi * cin * TILE);
                            let o = mt.as_mut_ptr().add((xi * blocks + cb) * MR * TILE);
                            match v1 - v0 {
                                4 => conv_tile::<4, 1>(x, &inner, TILE, cin, &[0], &rows, 1, o),
                                3 => conv_tile::<3, 1>(x, &inner, TILE, cin, &[0], &rows, 1, o),
                                2 => conv_tile::<2, 1>(x, &inner, TILE, cin, &[0], &rows, 1, o),
                                _ => conv_tile::<1, 1>(x, &inner, TILE, cin, &[0], &rows, 1, o),
                            }
                        }
                    }
                    let m = mt.as_ptr();
                    for co in 0..cout {
                        let base = (img * cout + co) * hw;
                        let bias = ep.bias.map_or(0.0, |b| b[co]);
                        let res = ep.residual.map(|r| r.as_ptr().add(base));
                        for (v, &q0) in voff[..v1 - v0].iter().enumerate() {
                            // M[ξ][co] for this vector: row co of block ξ, at v·16.
                            let mrow = m.add(co * TILE + v * LANES);
                            let corner = whole.then(|| 2 * (q0 / gr.wp) * w + 2 * (q0 % gr.wp));
                            output_transform(mrow, blocks * MR * TILE, &gr, (h, w), q0, corner, out.at(base), res, bias, ep.relu);
                        }
                    }
                }
            });
        };
        let total = n * tiles;
        (0..total).into_par_iter().for_each(task);
    });
}

/// U[ξ = 4i + j][co][ci] = (G g Gᵀ)[i][j], co padded to whole blocks of MR (zero rows).
fn transform_weights(wt: &[f32], cin: usize, cout: usize, u: &mut [f32]) {
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

/// vt[ξ][ci][v·16 + lane] = (Bᵀ d B)[ξ] of the windows of the tiles at voff[v] + lane.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn input_transform(x: *const f32, gr: &Grid, cin: usize, voff: &[usize], vt: *mut f32) {
    use std::arch::x86_64::*;
    let off: [usize; 16] = std::array::from_fn(|e| window_offset(gr, e / 4, e % 4));
    unsafe {
        for ci in 0..cin {
            let xc = x.add(ci * gr.plane);
            for (v, &q) in voff.iter().enumerate() {
                let d: [__m512; 16] = std::array::from_fn(|e| _mm512_loadu_ps(xc.add(q + off[e])));
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
                for i in 0..4 {
                    let (t0, t1, t2, t3) = (t[4 * i], t[4 * i + 1], t[4 * i + 2], t[4 * i + 3]);
                    let r = [_mm512_sub_ps(t0, t2), _mm512_add_ps(t1, t2), _mm512_sub_ps(t2, t1), _mm512_sub_ps(t1, t3)];
                    for (j, rv) in r.iter().enumerate() {
                        _mm512_storeu_ps(vt.add(((4 * i + j) * cin + ci) * TILE + v * LANES), *rv);
                    }
                }
            }
        }
    }
}

/// The 2×2 outputs of the 16 tiles at grid positions q0.. from their M[ξ] vectors at m + ξ·stride,
/// Y = Aᵀ M A with Aᵀ = [1 1 1 0; 0 1 −1 −1], stored as act(y + bias + residual) into the output
/// plane `dst` (residual plane `res`): as two rows of 32 from `corner` (output index of the first
/// tile's top-left) when the vector is whole, else tile by tile where inside the plane.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[allow(clippy::too_many_arguments)]
unsafe fn output_transform(
    m: *const f32,
    stride: usize,
    gr: &Grid,
    (h, w): (usize, usize),
    q0: usize,
    corner: Option<usize>,
    dst: *mut f32,
    res: Option<*const f32>,
    bias: f32,
    relu: bool,
) {
    use std::arch::x86_64::*;
    unsafe {
        let mv: [__m512; 16] = std::array::from_fn(|e| _mm512_loadu_ps(m.add(e * stride)));
        // Aᵀ M: two rows of four.
        let mut s = [_mm512_setzero_ps(); 8];
        for j in 0..4 {
            let (m0, m1, m2, m3) = (mv[j], mv[4 + j], mv[8 + j], mv[12 + j]);
            s[j] = _mm512_add_ps(_mm512_add_ps(m0, m1), m2);
            s[4 + j] = _mm512_sub_ps(_mm512_sub_ps(m1, m2), m3);
        }
        // (Aᵀ M) A: y[2a + b] is output (2r + a, 2c + b) of each tile.
        let mut y = [_mm512_setzero_ps(); 4];
        for a in 0..2 {
            let (s0, s1, s2, s3) = (s[4 * a], s[4 * a + 1], s[4 * a + 2], s[4 * a + 3]);
            y[2 * a] = _mm512_add_ps(_mm512_add_ps(s0, s1), s2);
            y[2 * a + 1] = _mm512_sub_ps(_mm512_sub_ps(s1, s2), s3);
        }
        let bv = _mm512_set1_ps(bias);
        let act = |v: __m512, at: usize| {
            let mut v = _mm512_add_ps(v, bv);
            if let Some(r) = res {
                v = _mm512_add_ps(v, _mm512_loadu_ps(r.add(at)));
            }
            if relu {
                v = _mm512_max_ps(v, _mm512_setzero_ps());
            }
            v
        };
        if let Some(c) = corner {
            // Interleave columns 2c and 2c + 1 of the 16 tiles into 32 consecutive outputs.
            let lo = _mm512_setr_epi32(0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23);
            let hi = _mm512_setr_epi32(8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31);
            for a in 0..2 {
                let at = c + a * w;
                _mm512_storeu_ps(dst.add(at), act(_mm512_permutex2var_ps(y[2 * a], lo, y[2 * a + 1]), at));
                _mm512_storeu_ps(dst.add(at + 16), act(_mm512_permutex2var_ps(y[2 * a], hi, y[2 * a + 1]), at + 16));
            }
            return;
        }
        let mut yt = [[0.0f32; LANES]; 4];
        for (t, v) in yt.iter_mut().zip(y) {
            _mm512_storeu_ps(t.as_mut_ptr(), v);
        }
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
                    let mut v = yt[2 * a + b][lane] + bias + res.map_or(0.0, |p| *p.add(at));
                    if relu {
                        v = v.max(0.0);
                    }
                    *dst.add(at) = v;
                }
            }
        }
    }
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn input_transform(_: *const f32, _: &Grid, _: usize, _: &[usize], _: *mut f32) {
    unreachable!("Winograd runs only where available() holds")
}

#[cfg(not(target_arch = "x86_64"))]
#[allow(clippy::too_many_arguments)]
unsafe fn output_transform(_: *const f32, _: usize, _: &Grid, _: (usize, usize), _: usize, _: Option<usize>, _: *mut f32, _: Option<*const f32>, _: f32, _: bool) {
    unreachable!("Winograd runs only where available() holds")
}
