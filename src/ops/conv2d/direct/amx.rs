//! bf16 convs on the tile unit (`crate::tiles`: AMX, or its software model): the `AmxTiles` and
//! `TileModel` kernel families of `--precision bf16`, for every form the bf16 kernels cover (3×3 pad 1
//! at stride 1 and 2, 1×1 stride 1), with the direct kernels' fused epilogue (bias, residual, ReLU).
//!
//! TDPBF16PS computes C[m][n] += Σ_k A[m][2k..2k+2] · B[k][2n..2n+2] on bf16 pairs, so the operands
//! are the bf16 kernels' own layouts (`super::bf16`):
//! - M = output channels: A tiles are the weights, packed once per conv (`TileWeights`) as
//!   [channel block][tap][pair block] tiles of `mr` rows × `kb` pairs, one 64-byte line per row (zero
//!   rows past cout, zero pairs past cin);
//! - K = input-channel pairs: B row r is 16 consecutive positions q..q + 16 of paired plane p0 + r of
//!   the zero-bordered planes (`Grid`), i.e. a row stride of one plane (TILELOADD's stride), the tap
//!   an offset of q as in the direct kernels;
//! - N = 16 positions: C is `mr` channels × 16 positions in f32, stored to a scratch tile and written
//!   through the direct kernels' store (`super::forward_store`), which drops the junk columns.
//!
//! One tile configuration per conv: `mr` = cout split evenly into blocks of ≤ 16 (W18's 18/36/72/144
//! → 9/12/15/16 rows), `kb` = the pairs split evenly into blocks of ≤ 16 (9/18/36/72 pairs → 9/9/12/
//! 15), the paired planes padded with zero planes to whole blocks. C is blocked 2×2 (tmm0–3: two
//! channel blocks × two position vectors), A in tmm4–5, B in tmm6–7, so each loaded tile serves two
//! products. Tasks are (image, pair of channel blocks, run of position pairs); each configures its
//! thread's unit once.
//!
//! Rounding: the operands are rounded to bf16 as for `vdpbf16ps` (`bf16::pair`), the products are
//! exact and the sums f32 (TDPBF16PS's order, `crate::tiles::TileModel`), so the conv differs from an
//! f64 sum of the rounded operands only by the f32 additions.

use super::{forward_store, Epilogue, Grid, TileOut, LANES};
use crate::ops::conv2d::Conv2dGeom;
use crate::tiles::{AmxTiles, TileConfig, TileModel, TileShape, TileUnit, MAX_ROWS, MAX_ROW_BYTES};
use rayon::prelude::*;
use std::mem::MaybeUninit;

/// Which tile unit runs the kernels.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Unit {
    /// The AMX instructions (`host_isa::amx_usable()` holds: `Bf16Kernels::AmxTiles`).
    Hardware,
    /// The software model (`Bf16Kernels::TileModel`).
    Model,
}

/// The tile shapes of one conv: `mr` output channels per A/C tile (`co_blocks` blocks), `kb` channel
/// pairs per A row / B tile (`k_blocks` blocks).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TileBlocking {
    pub mr: usize,
    pub co_blocks: usize,
    pub kb: usize,
    pub k_blocks: usize,
}

impl TileBlocking {
    pub fn new(cin: usize, cout: usize) -> TileBlocking {
        assert!(cin > 0 && cout > 0, "tile conv: no channels");
        let pairs = cin.div_ceil(2);
        let k_blocks = pairs.div_ceil(MAX_ROWS);
        let co_blocks = cout.div_ceil(MAX_ROWS);
        TileBlocking { mr: cout.div_ceil(co_blocks), co_blocks, kb: pairs.div_ceil(k_blocks), k_blocks }
    }

    /// The paired planes per image the B tiles read: whole pair blocks (the last ones zero).
    pub fn pairs_padded(&self) -> usize {
        self.k_blocks * self.kb
    }

    /// tmm0–3: C (mr × 16 f32), tmm4–5: A (mr × kb pairs), tmm6–7: B (kb × 16 pairs).
    pub fn config(&self) -> TileConfig {
        let (mr, kb) = (self.mr as u8, self.kb as u16);
        let c = TileShape { rows: mr, row_bytes: MAX_ROW_BYTES as u16 };
        let a = TileShape { rows: mr, row_bytes: 4 * kb };
        let b = TileShape { rows: kb as u8, row_bytes: MAX_ROW_BYTES as u16 };
        TileConfig::new([c, c, c, c, a, a, b, b])
    }
}

/// One A tile row: up to 16 bf16 pairs in one cache line.
#[derive(Clone, Copy, Debug)]
#[repr(C, align(64))]
struct Line([f32; MAX_ROW_BYTES / 4]);

/// A conv's weights as A tiles: tile (channel block cb, tap t, pair block kblk) is the `mr` lines from
/// ((cb·taps + t)·k_blocks + kblk)·mr, row m = output channel cb·mr + m, element k < kb = the bf16 pair
/// of input channels 2(kblk·kb + k) and 2(kblk·kb + k) + 1 (`bf16::pair`, as f32 bits). One row per
/// cache line, so each TILELOADD row reads one line.
#[derive(Debug)]
pub struct TileWeights {
    blocking: TileBlocking,
    taps: usize,
    lines: Vec<Line>,
}

impl TileWeights {
    /// Packs the f32 weight [cout][cin][taps].
    pub fn pack(wt: &[f32], cin: usize, cout: usize, taps: usize) -> TileWeights {
        assert!(wt.len() >= cout * cin * taps);
        let blocking = TileBlocking::new(cin, cout);
        let TileBlocking { mr, co_blocks, kb, k_blocks } = blocking;
        let mut lines = vec![Line([0.0; MAX_ROW_BYTES / 4]); co_blocks * taps * k_blocks * mr];
        let w = |co: usize, ci: usize, t: usize| if ci < cin { wt[(co * cin + ci) * taps + t] } else { 0.0 };
        for (i, tile) in lines.chunks_exact_mut(mr).enumerate() {
            let (kblk, t, cb) = (i % k_blocks, (i / k_blocks) % taps, i / (k_blocks * taps));
            for (m, row) in tile.iter_mut().enumerate() {
                let co = cb * mr + m;
                if co >= cout {
                    continue;
                }
                for (k, v) in row.0.iter_mut().take(kb).enumerate() {
                    let p = kblk * kb + k;
                    *v = super::bf16::pair(w(co, 2 * p, t), w(co, 2 * p + 1, t));
                }
            }
        }
        TileWeights { blocking, taps, lines }
    }

    pub fn blocking(&self) -> TileBlocking {
        self.blocking
    }

    /// The A tile (cb, t, kblk): `mr` lines.
    fn tile(&self, cb: usize, t: usize, kblk: usize) -> &[Line] {
        let b = &self.blocking;
        &self.lines[((cb * self.taps + t) * b.k_blocks + kblk) * b.mr..][..b.mr]
    }
}

/// The hardware tile unit, where `crate::host_isa` says the CPU and the OS let this process use it.
pub fn amx_unit() -> Option<AmxTiles> {
    // SAFETY: made only when amx_usable() holds (AMX-TILE + AMX-BF16, XCR0, Linux's permission granted).
    crate::host_isa::amx_usable().then(|| unsafe { AmxTiles::new_unchecked() })
}

/// A C scratch of two channel blocks × two vectors: rows of 32 f32 (TILESTORED's stride 128 bytes).
const C_PITCH: usize = 2 * LANES;

/// y = act(conv(x, W) + bias + residual) on the tile unit: `xpad` holds each image's paired planes,
/// `w.blocking().pairs_padded()` per image (`bf16::with_padded_pairs`), `taps` the offsets of the taps
/// in them (9 for 3×3, the centre one for 1×1).
#[allow(clippy::too_many_arguments)]
pub(super) fn forward<const T: usize>(
    unit: Unit, g: &Conv2dGeom, gr: &Grid, xpad: &[f32], w: &TileWeights, taps: [usize; T], ep: Epilogue<f32>,
    y: &mut [f32],
) {
    let b = w.blocking;
    assert!(w.taps == T && b == TileBlocking::new(g.cin, g.cout), "tile conv: weights packed for another conv");
    let per_image = b.pairs_padded();
    assert!(xpad.len() >= g.n * per_image * gr.plane);
    let furthest = gr.taps.iter().max().copied().unwrap_or(0);
    assert!(taps.iter().all(|&t| t <= furthest), "a tap reads past the padded plane");
    let isa = super::isa().expect("the tile kernels store through the AVX2 or AVX-512 build");
    let store = forward_store(isa, g, gr, ep, y);
    let (vecs, co_pairs) = (gr.vecs(), b.co_blocks.div_ceil(2));
    let pos_pairs = vecs.div_ceil(2);
    // Runs of position pairs: as few as give every thread several tasks.
    let runs = (4 * rayon::current_num_threads()).div_ceil(g.n * co_pairs).clamp(1, pos_pairs);
    let cfg = b.config();
    let task = |i: usize| {
        let (run, cp, img) = (i % runs, (i / runs) % co_pairs, i / (runs * co_pairs));
        let job = Job { g, gr, xpad, w, taps, img, cp, pairs: run * pos_pairs / runs..(run + 1) * pos_pairs / runs };
        match unit {
            // `Unit::Hardware` is chosen only for the `AmxTiles` family, which host_isa picks only where
            // `amx_usable()` holds.
            Unit::Hardware => job.run(&mut amx_unit().expect("the AmxTiles family without AMX"), &cfg, &store),
            Unit::Model => job.run(&mut TileModel::new(), &cfg, &store),
        }
    };
    (0..g.n * co_pairs * runs).into_par_iter().for_each(task);
}

/// One task: image `img`, channel blocks 2cp and 2cp + 1, position pairs `pairs` (vectors 2i, 2i + 1).
struct Job<'a, const T: usize> {
    g: &'a Conv2dGeom,
    gr: &'a Grid,
    xpad: &'a [f32],
    w: &'a TileWeights,
    taps: [usize; T],
    img: usize,
    cp: usize,
    pairs: std::ops::Range<usize>,
}

impl<const T: usize> Job<'_, T> {
    fn run<U: TileUnit>(&self, unit: &mut U, cfg: &TileConfig, store: &(impl Fn(&TileOut) + Sync)) {
        let (b, gr) = (&self.w.blocking, self.gr);
        let cb = 2 * self.cp;
        let two_blocks = cb + 1 < b.co_blocks;
        let co0 = cb * b.mr;
        let rows = (self.g.cout - co0).min(if two_blocks { 2 * b.mr } else { b.mr });
        let vecs = gr.vecs();
        unit.configure(cfg);
        let mut c = [0.0f32; 2 * MAX_ROWS * C_PITCH];
        for pair in self.pairs.clone() {
            let nv = (vecs - 2 * pair).min(2);
            let q: [usize; 2] = std::array::from_fn(|v| gr.vec_q(2 * pair + v.min(nv - 1)));
            let at: [Option<usize>; 2] = std::array::from_fn(|v| gr.vec_at(2 * pair + v));
            match (two_blocks, nv == 2) {
                (true, true) => self.block::<U, true, true>(unit, cb, q, &mut c),
                (true, false) => self.block::<U, true, false>(unit, cb, q, &mut c),
                (false, true) => self.block::<U, false, true>(unit, cb, q, &mut c),
                (false, false) => self.block::<U, false, false>(unit, cb, q, &mut c),
            }
            // SAFETY: f32 → MaybeUninit<f32> keeps the layout; `block` stored rows < mr (two blocks:
            // < 2mr, ≥ rows) of each of the nv vectors at r·C_PITCH + v·16.
            let tile = unsafe {
                let vals = std::slice::from_raw_parts(c.as_ptr().cast::<MaybeUninit<f32>>(), c.len());
                TileOut::new(self.img, co0, rows, &q[..nv], &at[..nv], vals, C_PITCH)
            };
            store(&tile);
        }
        unit.release();
    }

    /// C (channel blocks cb and, if TWO_CO, cb + 1; position vectors q[0] and, if TWO_Q, q[1]) into `c`.
    fn block<U: TileUnit, const TWO_CO: bool, const TWO_Q: bool>(
        &self, unit: &mut U, cb: usize, q: [usize; 2], c: &mut [f32; 2 * MAX_ROWS * C_PITCH],
    ) {
        let (b, plane) = (&self.w.blocking, self.gr.plane);
        let a_stride = std::mem::size_of::<Line>();
        let b_stride = 4 * plane;
        unit.zero::<0>();
        if TWO_Q {
            unit.zero::<1>();
        }
        if TWO_CO {
            unit.zero::<2>();
            if TWO_Q {
                unit.zero::<3>();
            }
        }
        let image = &self.xpad[self.img * b.pairs_padded() * plane..][..b.pairs_padded() * plane];
        for (t, &off) in self.taps.iter().enumerate() {
            for kblk in 0..b.k_blocks {
                let x = &image[kblk * b.kb * plane + off..];
                // SAFETY: an A tile is mr lines, each row's kb pairs (4·kb ≤ 64 bytes) in one; B row r reads 16 pairs
                // at q + off of plane kblk·kb + r < pairs_padded of this image: q < q_len and off ≤ the
                // grid's furthest tap (asserted by `forward`), so q + off + 16 ≤ plane, inside `image`.
                unsafe {
                    unit.load::<4>(self.w.tile(cb, t, kblk).as_ptr().cast(), a_stride);
                    if TWO_CO {
                        unit.load::<5>(self.w.tile(cb + 1, t, kblk).as_ptr().cast(), a_stride);
                    }
                    unit.load::<6>(x[q[0]..].as_ptr().cast(), b_stride);
                    if TWO_Q {
                        unit.load::<7>(x[q[1]..].as_ptr().cast(), b_stride);
                    }
                }
                unit.dot_bf16::<0, 4, 6>();
                if TWO_Q {
                    unit.dot_bf16::<1, 4, 7>();
                }
                if TWO_CO {
                    unit.dot_bf16::<2, 5, 6>();
                    if TWO_Q {
                        unit.dot_bf16::<3, 5, 7>();
                    }
                }
            }
        }
        let (p, stride) = (c.as_mut_ptr(), 4 * C_PITCH);
        // SAFETY: each C tile is mr ≤ 16 rows of 64 bytes, stored at rows 0 or mr, columns 0 or 16 of the
        // 32 × 32 scratch (stride C_PITCH floats).
        unsafe {
            unit.store::<0>(p.cast(), stride);
            if TWO_Q {
                unit.store::<1>(p.add(LANES).cast(), stride);
            }
            if TWO_CO {
                unit.store::<2>(p.add(b.mr * C_PITCH).cast(), stride);
                if TWO_Q {
                    unit.store::<3>(p.add(b.mr * C_PITCH + LANES).cast(), stride);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::bf16::{self, pair, Bf16Weights};
    use super::*;
    use crate::host_isa::{amx_usable, avx512bf16, with_bf16_kernels, Bf16Kernels};
    use crate::rng::Rng;

    /// One conv of the tests: geometry and which epilogue terms it has.
    struct Case {
        g: Conv2dGeom,
        bias: bool,
        residual: bool,
        relu: bool,
    }

    struct Data {
        x: Vec<f32>,
        w: Vec<f32>,
        bias: Vec<f32>,
        residual: Vec<f32>,
    }

    fn cases() -> Vec<Case> {
        let g = |n, cin, cout, h, w, k, stride| {
            let pad = k / 2;
            Conv2dGeom::new([n, cin, h, w], &[cout, cin, k, k], stride, pad).expect("a valid conv")
        };
        vec![
            Case { g: g(2, 18, 20, 13, 11, 3, 1), bias: true, residual: true, relu: true },
            Case { g: g(1, 40, 64, 16, 16, 3, 1), bias: true, residual: false, relu: false },
            Case { g: g(2, 3, 18, 15, 13, 3, 2), bias: true, residual: false, relu: true },
            Case { g: g(1, 40, 20, 9, 11, 3, 2), bias: false, residual: false, relu: false },
            Case { g: g(2, 18, 64, 12, 12, 1, 1), bias: true, residual: true, relu: false },
            Case { g: g(1, 40, 18, 7, 9, 1, 1), bias: false, residual: true, relu: true },
        ]
    }

    impl Case {
        fn data(&self, seed: u64) -> Data {
            let g = &self.g;
            let mut rng = Rng::for_tests(seed);
            let mut v = |len: usize, s: f64| (0..len).map(|_| (rng.normal() * s) as f32).collect::<Vec<f32>>();
            let out = g.n * g.cout * g.ho * g.wo;
            Data {
                x: v(g.n * g.cin * g.h * g.w, 1.0),
                w: v(g.cout * g.cin * g.k * g.k, 0.3),
                bias: v(g.cout, 0.5),
                residual: v(out, 1.0),
            }
        }

        fn run(&self, d: &Data, family: Bf16Kernels) -> Vec<f32> {
            let g = &self.g;
            let ep = Epilogue {
                bias: self.bias.then_some(&d.bias[..]),
                residual: self.residual.then_some(&d.residual[..]),
                relu: self.relu,
            };
            let mut y = vec![f32::NAN; g.n * g.cout * g.ho * g.wo];
            with_bf16_kernels(family, || {
                assert_eq!(crate::host_isa::bf16_kernels(), family, "the family runs here");
                bf16::forward(g, &d.x, &d.w, &Bf16Weights::default(), ep, &mut y)
            });
            y
        }

        /// The f64 conv of the bf16-rounded operands (f32 epilogue terms), and for each output the bound of
        /// the f32 additions' rounding: (Σ|terms|) · (products + 2) · 2⁻²⁴.
        fn exact(&self, d: &Data) -> (Vec<f64>, Vec<f64>) {
            let g = &self.g;
            let rb = |v: f32| f64::from(f32::from_bits(pair(v, 0.0).to_bits() << 16));
            let (kk, terms) = (g.k * g.k, (g.cin * g.k * g.k + 2) as f64);
            let mut y = vec![0.0; g.n * g.cout * g.ho * g.wo];
            let mut bound = y.clone();
            for img in 0..g.n {
                for co in 0..g.cout {
                    for oy in 0..g.ho {
                        for ox in 0..g.wo {
                            let i = ((img * g.cout + co) * g.ho + oy) * g.wo + ox;
                            let (mut s, mut mag) = (0.0f64, 0.0f64);
                            for ci in 0..g.cin {
                                for t in 0..kk {
                                    let iy = (oy * g.stride + t / g.k) as isize - g.pad as isize;
                                    let ix = (ox * g.stride + t % g.k) as isize - g.pad as isize;
                                    if iy < 0 || ix < 0 || iy >= g.h as isize || ix >= g.w as isize {
                                        continue;
                                    }
                                    let xv = d.x[((img * g.cin + ci) * g.h + iy as usize) * g.w + ix as usize];
                                    let p = rb(d.w[(co * g.cin + ci) * kk + t]) * rb(xv);
                                    s += p;
                                    mag += p.abs();
                                }
                            }
                            let extra = [(self.bias, d.bias[co]), (self.residual, d.residual[i])];
                            for (on, v) in extra {
                                if on {
                                    s += f64::from(v);
                                    mag += f64::from(v).abs();
                                }
                            }
                            y[i] = if self.relu { s.max(0.0) } else { s };
                            bound[i] = mag * terms * f64::from(f32::EPSILON) / 2.0;
                        }
                    }
                }
            }
            (y, bound)
        }
    }

    #[test]
    fn tile_blocking_splits_w18_channels_evenly() {
        let b = |cin, cout| {
            let t = TileBlocking::new(cin, cout);
            (t.mr, t.co_blocks, t.kb, t.k_blocks)
        };
        assert_eq!(b(18, 18), (9, 2, 9, 1));
        assert_eq!(b(36, 36), (12, 3, 9, 2));
        assert_eq!(b(72, 72), (15, 5, 12, 3));
        assert_eq!(b(144, 144), (16, 9, 15, 5));
        assert_eq!(b(3, 18), (9, 2, 2, 1));
    }

    #[test]
    fn tile_model_convs_match_the_f64_conv_of_the_rounded_operands() {
        for (i, case) in cases().iter().enumerate() {
            let d = case.data(100 + i as u64);
            let got = case.run(&d, Bf16Kernels::TileModel);
            let (want, bound) = case.exact(&d);
            for (j, ((&a, &b), &e)) in got.iter().zip(&want).zip(&bound).enumerate() {
                assert!((f64::from(a) - b).abs() <= e, "{:?} output {j}: {a} vs {b} ± {e}", case.g);
            }
        }
    }

    #[test]
    fn tile_model_convs_are_close_to_the_avx512_bf16_kernels() {
        if !avx512bf16() {
            eprintln!("skipped: no AVX512-BF16 on this CPU");
            return;
        }
        for (i, case) in cases().iter().enumerate() {
            let d = case.data(200 + i as u64);
            let (tiles, dots) = (case.run(&d, Bf16Kernels::TileModel), case.run(&d, Bf16Kernels::Avx512Bf16));
            let (_, bound) = case.exact(&d);
            // Winograd rounds its transformed tiles to bf16, not the inputs: close to 1 % of the largest.
            let form = with_bf16_kernels(Bf16Kernels::Avx512Bf16, || crate::ops::conv2d::algorithm::bf16_form(&case.g));
            let scale = tiles.iter().fold(0.0f64, |m, &v| m.max(f64::from(v).abs()));
            for (j, ((&a, &b), &e)) in tiles.iter().zip(&dots).zip(&bound).enumerate() {
                let tol = if form == crate::ops::conv2d::algorithm::ConvAlgorithm::Bf16Winograd {
                    1e-2 * scale
                } else {
                    2.0 * e
                };
                assert!((f64::from(a) - f64::from(b)).abs() <= tol, "{:?} {form:?} output {j}: {a} vs {b}", case.g);
            }
        }
    }

    #[test]
    fn amx_tile_convs_equal_the_tile_model_bit_for_bit() {
        if !amx_usable() {
            eprintln!("skipped: no AMX on this CPU");
            return;
        }
        for (i, case) in cases().iter().enumerate() {
            let d = case.data(300 + i as u64);
            let (hw, model) = (case.run(&d, Bf16Kernels::AmxTiles), case.run(&d, Bf16Kernels::TileModel));
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&hw), bits(&model), "{:?}", case.g);
        }
    }

    #[test]
    fn amx_tile_programs_equal_the_tile_model_bit_for_bit() {
        use crate::tiles::test_programs::DotCase;
        let Some(mut hw) = amx_unit() else {
            eprintln!("skipped: no AMX on this CPU");
            return;
        };
        let mut rng = Rng::for_tests(2024);
        for i in 0..500 {
            let case = DotCase::random(&mut rng);
            let (model, real) = (case.run(&mut TileModel::new()), case.run(&mut hw));
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&model), bits(&real), "program {i}: {}×{} pairs × {}", case.rows, case.k, case.n);
        }
    }
}
