//! Direct 3×3 pad-1 convolution in f32 on AVX-512 or AVX2 + FMA (forward at stride 1 and 2, backward
//! at stride 1): no im2col, no GEMM.
//!
//! Layout: each input channel plane is copied once into a zero-bordered plane of pitch `wp = W + 2`
//! (rows −1..=H, then zero slack). An output position (y, x) is numbered on that pitch, q = y·wp + x,
//! so tap (ky, kx) of a run of consecutive q reads the contiguous run starting at q + ky·wp + kx of
//! the padded plane, whatever the width. The two positions x ∈ {W, W+1} of each row are junk: they
//! are computed and dropped at store time (on a 64-wide plane that is 3 % extra work).
//!
//! Forward and backward-data share one register-blocked kernel (MR output channels × up to NV
//! vectors of 16 positions; weights packed [channel block][ci][tap][MR] so each FMA takes one
//! broadcast), as dx = conv(dy, Wᵀ with the taps flipped). Backward-weight reduces over positions
//! and images with 3 output channels × 9 taps of vector accumulators for one input channel at a time,
//! reading dy through the same padded planes (their border is exactly the zero the junk columns need).
//! Stride 2 (forward only) runs the same kernel on the four parity phases of the padded input.
//! `winograd` (inference) reuses the phase planes and, with one tap, the kernel as its GEMM.
//!
//! Every kernel has an AVX-512 and an AVX2 + FMA build (`Isa`), picked at run time (`crate::host_isa`).
//! The AVX2 forward kernel computes the same 16-position vectors as two 8-float halves, one vector at a
//! time (MR × 2 accumulators fit its 16 registers), in the same order of additions, so both builds give the same
//! bits; the AVX2 weight gradient sums over 8 lanes instead of 16 (rounding differs, not the method).

pub mod amx;
pub mod bf16;
pub mod winograd;

use super::Conv2dGeom;
use rayon::prelude::*;
use std::cell::RefCell;

/// Output channels per forward microkernel call (18, 36, 72 and 144 are multiples).
const MR: usize = 6;
/// Most 16-float vectors of positions per forward microkernel call.
const NV: usize = 4;
const LANES: usize = 16;
const TILE: usize = NV * LANES;
/// Output channels per backward-weight kernel call (3 × 9 taps = 27 accumulators).
const WR: usize = 3;

/// The geometries this module computes forward: 3×3, pad 1, stride 1 or 2 (stride 2 from 8 input
/// channels: below that the per-tile overhead outweighs the 9·cin FMAs, and im2col + GEMM measured
/// faster), at least one channel each way (stride 1 needs cin > 0 too).
pub fn applies(g: &Conv2dGeom) -> bool {
    g.k == 3 && g.pad == 1 && (g.stride == 1 || (g.stride == 2 && g.cin >= 8)) && g.cin > 0 && g.cout > 0
}

/// The geometries this module computes backward: 3×3, pad 1, stride 1.
pub fn applies_backward(g: &Conv2dGeom) -> bool {
    g.k == 3 && g.pad == 1 && g.stride == 1 && g.cin > 0 && g.cout > 0
}

/// The instruction sets the kernels are built for (`crate::host_isa`: AVX-512 and AVX2 + FMA).
pub use crate::host_isa::Isa;

/// The build the kernels run: AVX-512 where the CPU has it (unless `HRK_NO_AVX512=1`), else AVX2 +
/// FMA; None (the caller takes im2col + GEMM) on a CPU with neither.
pub fn isa() -> Option<Isa> {
    crate::host_isa::simd()
}

/// Whether this CPU can run the kernels (`isa()` is some build).
pub fn available() -> bool {
    isa().is_some()
}

/// What a conv's output gets besides W·x: a per-channel bias, a residual added elementwise, a ReLU.
#[derive(Clone, Copy)]
pub struct Epilogue<'a, T> {
    pub bias: Option<&'a [T]>,
    /// Same shape as the output (the whole batch).
    pub residual: Option<&'a [T]>,
    pub relu: bool,
}

/// Whether this CPU runs bf16 conv kernels (`bf16::forward`): the family `crate::host_isa::bf16_kernels`
/// chose is not f32 (AVX512-BF16 dot products on AMD, AMX tiles, or the forced tile model).
pub fn bf16_available() -> bool {
    crate::host_isa::bf16_kernels() != crate::host_isa::Bf16Kernels::F32
}

/// Whether `Kern::Bf16Pairs` (`vdpbf16ps`, in the direct and Winograd kernels) can run: AVX512-BF16 on
/// the AVX-512 level, AVX-512 not switched off (`crate::host_isa::avx512bf16`).
fn vdpbf16ps_available() -> bool {
    crate::host_isa::avx512bf16()
}

/// The arithmetic of `conv_tile`: f32 fused multiply-adds by one build, or bf16 dot products
/// (AVX512-BF16), where each 32-bit element of the input planes and weights holds a pair of bf16
/// values of two consecutive input channels (`bf16::pack_pairs`), so "channels" count pairs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kern {
    F32(Isa),
    Bf16Pairs,
}

impl Kern {
    /// The build of everything around the kernel (padding, epilogues): the bf16 kernels need AVX-512.
    fn isa(self) -> Isa {
        match self {
            Kern::F32(isa) => isa,
            Kern::Bf16Pairs => Isa::Avx512,
        }
    }
}

/// Pitches of the padded planes of one image. Stride 2 splits the padded image into its four
/// (row parity, column parity) phases, each a plane of pitch wo + 1: output (y, x) then reads tap
/// (ky, kx) at phase (ky & 1, kx & 1), position (y + ky/2, x + kx/2), again a contiguous run.
#[derive(Clone, Copy, Debug)]
struct Grid {
    /// Output plane.
    h: usize,
    w: usize,
    /// Row pitch, W + 2.
    wp: usize,
    /// Output positions computed per plane (H·wp rounded up to whole vectors).
    q_len: usize,
    /// Stride between padded planes; covers the furthest tap read, q_len − 1 + 2·wp + 2.
    plane: usize,
    /// Stride 2: stride between the four phase planes inside one channel's plane.
    phase: usize,
    /// Offset of tap (ky, kx) from q, tap = ky·3 + kx.
    taps: [usize; 9],
    /// Vectors per output row when the width is a whole number of vectors (0 otherwise): then the
    /// forward's vectors start at row starts and skip the junk columns instead of computing them.
    row_vecs: usize,
}

impl Grid {
    fn new(h: usize, w: usize) -> Grid {
        Grid::with_step(h, w, LANES)
    }
    /// `new` with positions and planes rounded up to multiples of `step` elements (the bf16 weight
    /// gradient's vectors hold 32 positions).
    fn with_step(h: usize, w: usize, step: usize) -> Grid {
        let wp = w + 2;
        let q_len = (h * wp).div_ceil(step) * step;
        let plane = (q_len + 2 * wp + 2).div_ceil(step) * step;
        let taps = std::array::from_fn(|t| (t / 3) * wp + t % 3);
        Grid { h, w, wp, q_len, plane, phase: 0, taps, row_vecs: whole_vectors(w) }
    }
    /// Stride 2 on an h×w input.
    fn stride2(h: usize, w: usize) -> Grid {
        Grid::stride2_with_step(h, w, LANES)
    }
    /// `stride2` with positions and phases rounded up to multiples of `step` (as `with_step`).
    fn stride2_with_step(h: usize, w: usize, step: usize) -> Grid {
        let (ho, wo) = ((h - 1) / 2 + 1, (w - 1) / 2 + 1);
        let wp = wo + 1;
        let q_len = (ho * wp).div_ceil(step) * step;
        // Each phase holds rows 0..=ho; the furthest read is q_len − 1 + wp + 1.
        let phase = (q_len + wp + 1).max((ho + 1) * wp).div_ceil(step) * step;
        let taps = std::array::from_fn(|t| {
            let (ky, kx) = (t / 3, t % 3);
            ((ky & 1) * 2 + (kx & 1)) * phase + (ky >> 1) * wp + (kx >> 1)
        });
        Grid { h: ho, w: wo, wp, q_len, plane: 4 * phase, phase, taps, row_vecs: whole_vectors(wo) }
    }
    /// How many 16-position vectors the forward kernel computes per plane.
    fn vecs(&self) -> usize {
        if self.row_vecs > 0 {
            self.h * self.row_vecs
        } else {
            self.q_len / LANES
        }
    }
    /// The first position q of forward vector `i`.
    fn vec_q(&self, i: usize) -> usize {
        match i.checked_div(self.row_vecs) {
            Some(row) => row * self.wp + (i % self.row_vecs) * LANES,
            None => i * LANES,
        }
    }
    /// Forward vector `i`'s index in the H×W plane when the width is whole vectors.
    fn vec_at(&self, i: usize) -> Option<usize> {
        (self.row_vecs > 0).then(|| (i / self.row_vecs) * self.w + (i % self.row_vecs) * LANES)
    }
    /// Calls `f(offset from q0, index in the H×W plane, run length)` for each run of real
    /// (non-junk) output positions among q0..q0 + len.
    fn runs(&self, q0: usize, len: usize, mut f: impl FnMut(usize, usize, usize)) {
        let end = (q0 + len).min(self.h * self.wp);
        let mut q = q0;
        while q < end {
            let (y, x) = (q / self.wp, q % self.wp);
            if x >= self.w {
                q = (y + 1) * self.wp;
                continue;
            }
            let run = (self.w - x).min(end - q);
            f(q - q0, y * self.w + x, run);
            q += run;
        }
    }
}

fn whole_vectors(w: usize) -> usize {
    if w.is_multiple_of(LANES) {
        w / LANES
    } else {
        0
    }
}

/// Copies planes of h×w (`src`, whole planes) into zero-bordered planes of `gr.plane` floats.
fn pad_planes(gr: &Grid, src: &[f32], dst: &mut [f32]) {
    let hw = gr.h * gr.w;
    let planes = src.len() / hw;
    let one = |(s, d): (&[f32], &mut [f32])| {
        // Zero only the border and slack between the copied rows.
        let mut at = 0;
        for (y, row) in s.chunks_exact(gr.w).enumerate() {
            let start = (y + 1) * gr.wp + 1;
            d[at..start].fill(0.0);
            d[start..start + gr.w].copy_from_slice(row);
            at = start + gr.w;
        }
        d[at..].fill(0.0);
    };
    let dst = &mut dst[..planes * gr.plane];
    if planes * gr.plane >= 1 << 16 {
        src.par_chunks_exact(hw).zip(dst.par_chunks_exact_mut(gr.plane)).with_min_len(4).for_each(one);
    } else {
        src.chunks_exact(hw).zip(dst.chunks_exact_mut(gr.plane)).for_each(one);
    }
}

thread_local! {
    /// Per-thread padded-plane and packed-weight scratch, kept between calls (no fresh page faults).
    static SCRATCH: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

fn with_scratch<R>(len: usize, f: impl FnOnce(&mut [f32]) -> R) -> R {
    SCRATCH.with(|cell| match cell.try_borrow_mut() {
        Ok(mut buf) => {
            if buf.len() < len {
                buf.resize(len, 0.0);
            }
            f(&mut buf[..len])
        }
        // Re-entered on this thread (a rayon task stolen while this one waits): a private buffer.
        Err(_) => f(&mut vec![0.0; len]),
    })
}

/// Copies planes of h×w into the four phase planes of a stride-2 grid (zero where the padded
/// image has its border or ends). Padded row 2i + a is input row 2i + a − 1 and padded column
/// 2j + b is input column 2j + b − 1: phase (a, 1) takes a row's even columns from j = 0, phase
/// (a, 0) its odd columns from j = 1, so one deinterleave of the row fills both. Only the border
/// is zeroed, not the whole plane.
fn pad_phases(isa: Isa, gr: &Grid, h: usize, w: usize, src: &[f32], dst: &mut [f32]) {
    debug_assert!(w.div_ceil(2) < gr.wp && (gr.h + 1) * gr.wp <= gr.phase);
    assert!(isa.supported(), "the direct kernels' {} build does not run on this CPU", isa.name());
    let one = |(s, d): (&[f32], &mut [f32])| match isa {
        // SAFETY: AVX-512F is present (asserted); s is one h×w plane and d one grid plane (chunked so).
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => unsafe { phase_plane_avx512(gr, h, w, s, d) },
        _ => phase_plane(gr, h, w, s, d),
    };
    let planes = src.len() / (h * w);
    let dst = &mut dst[..planes * gr.plane];
    if planes * gr.plane >= 1 << 16 {
        src.par_chunks_exact(h * w).zip(dst.par_chunks_exact_mut(gr.plane)).with_min_len(4).for_each(one);
    } else {
        src.chunks_exact(h * w).zip(dst.chunks_exact_mut(gr.plane)).for_each(one);
    }
}

/// `pad_phases` of one plane: each row deinterleaved 32 floats at a time (the tail by masked loads
/// and stores), the border zeroed by masked stores.
///
/// # Safety
/// The CPU must have AVX-512F (`available()`); the slices' sizes are asserted here.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn phase_plane_avx512(gr: &Grid, h: usize, w: usize, s: &[f32], d: &mut [f32]) {
    use std::arch::x86_64::*;
    let (wp, rows) = (gr.wp, gr.h + 1);
    let (evens, odds) = (w.div_ceil(2), w / 2);
    assert!(s.len() >= h * w && d.len() >= 4 * gr.phase && evens < wp);
    let mask = |n: usize| if n >= 16 { 0xffff } else { (1u16 << n) - 1 };
    // SAFETY: loads stay in row y < h of s (masked to its w floats) and stores in the four phase planes of
    // d (rows < gr.h + 1 of wp floats, masked to wp, plus the zeroed tail up to gr.phase), all asserted above.
    unsafe {
        let zero = |p: *mut f32, n: usize| {
            for k in (0..n).step_by(16) {
                _mm512_mask_storeu_ps(p.add(k), mask(n - k), _mm512_setzero_ps());
            }
        };
        let ie = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
        let io = _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
        for a in 0..2 {
            let odd_plane = d.as_mut_ptr().add(2 * a * gr.phase);
            let even_plane = odd_plane.add(gr.phase);
            for i in 0..rows {
                let (r_odd, r_even) = (odd_plane.add(i * wp), even_plane.add(i * wp));
                let Some(y) = (2 * i + a).checked_sub(1).filter(|&y| y < h) else {
                    zero(r_odd, wp);
                    zero(r_even, wp);
                    continue;
                };
                let row = s.as_ptr().add(y * w);
                *r_odd = 0.0;
                for c in 0..w.div_ceil(32) {
                    let rem = w - 32 * c;
                    let lo = _mm512_maskz_loadu_ps(mask(rem), row.add(32 * c));
                    let hi = _mm512_maskz_loadu_ps(mask(rem.saturating_sub(16)), row.add(32 * c + 16));
                    _mm512_mask_storeu_ps(
                        r_even.add(16 * c),
                        mask(rem.div_ceil(2)),
                        _mm512_permutex2var_ps(lo, ie, hi),
                    );
                    _mm512_mask_storeu_ps(r_odd.add(1 + 16 * c), mask(rem / 2), _mm512_permutex2var_ps(lo, io, hi));
                }
                zero(r_even.add(evens), wp - evens);
                zero(r_odd.add(1 + odds), wp - 1 - odds);
            }
            zero(odd_plane.add(rows * wp), gr.phase - rows * wp);
            zero(even_plane.add(rows * wp), gr.phase - rows * wp);
        }
    }
}

/// `pad_phases` of one plane in plain code (the AVX2 build: the compiler vectorises the copies and
/// the fills, the deinterleave is scalar).
fn phase_plane(gr: &Grid, h: usize, w: usize, s: &[f32], d: &mut [f32]) {
    let (wp, rows) = (gr.wp, gr.h + 1);
    let (evens, odds) = (w.div_ceil(2), w / 2);
    assert!(s.len() >= h * w && d.len() >= 4 * gr.phase && evens < wp);
    for a in 0..2 {
        let (odd_plane, rest) = d[2 * a * gr.phase..].split_at_mut(gr.phase);
        let even_plane = &mut rest[..gr.phase];
        for i in 0..rows {
            let (r_odd, r_even) = (&mut odd_plane[i * wp..][..wp], &mut even_plane[i * wp..][..wp]);
            let Some(y) = (2 * i + a).checked_sub(1).filter(|&y| y < h) else {
                r_odd.fill(0.0);
                r_even.fill(0.0);
                continue;
            };
            let row = &s[y * w..][..w];
            r_odd[0] = 0.0;
            for (j, pair) in row.chunks(2).enumerate() {
                r_even[j] = pair[0];
                if let Some(&v) = pair.get(1) {
                    r_odd[1 + j] = v;
                }
            }
            r_even[evens..].fill(0.0);
            r_odd[1 + odds..].fill(0.0);
        }
        odd_plane[rows * wp..].fill(0.0);
        even_plane[rows * wp..].fill(0.0);
    }
}

/// A raw output pointer shared by tasks that write disjoint elements.
#[derive(Clone, Copy)]
struct SharedOut(*mut f32);
// SAFETY: the tasks sharing it write disjoint elements of one live output buffer (each caller's task split
// guarantees it) and nothing reads them until the parallel loop has joined.
unsafe impl Send for SharedOut {}
// SAFETY: as for Send: shared access only ever writes disjoint elements.
unsafe impl Sync for SharedOut {}
impl SharedOut {
    /// Through a method, so closures capture the Sync wrapper and not its raw-pointer field.
    fn at(&self, i: usize) -> *mut f32 {
        self.0.wrapping_add(i)
    }
}

/// Where the conv kernel reads its weights: element (output channel o, input channel c, tap t)
/// at `ptr[o·row + c·col + t]` (taps contiguous, so both the forward weight and its flipped
/// transpose are read in place, without packing).
#[derive(Clone, Copy)]
struct WeightView<'a> {
    w: &'a [f32],
    row: usize,
    col: usize,
}

/// One task's computed tile: `rows` output channels from `co0` of image `img`, vector v (16
/// positions) starting at grid position `q[v]`, whose index in the H×W plane is `at[v]` where the
/// width is whole vectors (all 16 positions real), None otherwise (junk positions included: split
/// with `Grid::runs`).
struct TileOut<'a> {
    img: usize,
    co0: usize,
    rows: usize,
    q: &'a [usize],
    at: &'a [Option<usize>],
    /// The kernel's output, row r's vector v at r·pitch + v·16: rows < `rows`, vectors < q.len()
    /// written (`TileOut::new`'s contract), the rest possibly uninitialised.
    vals: &'a [std::mem::MaybeUninit<f32>],
    pitch: usize,
}

impl<'a> TileOut<'a> {
    /// # Safety
    /// `vals` must hold initialised values at r·pitch + v·16 + 0..16 for every r < rows, v < q.len().
    unsafe fn new(
        img: usize, co0: usize, rows: usize, q: &'a [usize], at: &'a [Option<usize>],
        vals: &'a [std::mem::MaybeUninit<f32>], pitch: usize,
    ) -> TileOut<'a> {
        assert!(q.len() <= NV && at.len() == q.len() && q.len() * LANES <= pitch);
        assert!(rows == 0 || vals.len() >= (rows - 1) * pitch + q.len() * LANES, "tile values out of range");
        TileOut { img, co0, rows, q, at, vals, pitch }
    }

    /// The 16 values of row r (< rows), vector v (< q.len()).
    fn vector(&self, r: usize, v: usize) -> &[f32] {
        assert!(r < self.rows && v < self.q.len(), "tile vector ({r}, {v}) was not computed");
        let vals = &self.vals[r * self.pitch + v * LANES..][..LANES];
        // SAFETY: written by the kernel (`TileOut::new`'s contract; r and v in range, asserted);
        // MaybeUninit<f32> has f32's layout.
        unsafe { std::slice::from_raw_parts(vals.as_ptr().cast::<f32>(), LANES) }
    }
    /// The plane indices of the vectors when all are whole.
    fn whole(&self) -> Option<[usize; NV]> {
        let mut at = [0; NV];
        for (d, a) in at.iter_mut().zip(self.at) {
            *d = (*a)?;
        }
        Some(at)
    }
}

/// Runs the conv kernel over every (image, position tile, channel block) task in parallel and hands
/// each task's computed tile to `store` (one call per task, so the epilogue loops stay inside one
/// call of its own build).
#[allow(clippy::too_many_arguments)]
fn conv_tiles<const T: usize>(
    kern: Kern, gr: &Grid, n: usize, cin: usize, cout: usize, xpad: &[f32], wv: WeightView, taps: [usize; T],
    store: impl Fn(&TileOut) + Sync,
) {
    // Tiles of at most NV vectors, balanced so a plane of 5 vectors runs as 3 + 2, not 4 + 1.
    let qv = gr.vecs();
    let tiles = qv.div_ceil(NV);
    let blocks = cout.div_ceil(MR);
    assert!(xpad.len() >= n * cin * gr.plane);
    assert!(wv.w.len() >= (cout - 1) * wv.row + (cin - 1) * wv.col + T);
    let furthest = gr.taps.iter().max().copied().unwrap_or(0);
    assert!(taps.iter().all(|&t| t <= furthest), "a tap reads past the padded plane");
    // A task takes one tile of positions and a run of channel blocks (its input tile stays in L1
    // across them); the blocks are split into as few runs as give every thread several tasks.
    let runs = (4 * rayon::current_num_threads()).div_ceil(n * tiles).clamp(1, blocks);
    let task = |i: usize| {
        let run = i % runs;
        let t = (i / runs) % tiles;
        let img = i / (runs * tiles);
        let (v0, v1) = (t * qv / tiles, (t + 1) * qv / tiles);
        let vecs = v1 - v0;
        let voff: [usize; NV] = std::array::from_fn(|v| gr.vec_q(v0 + v.min(vecs - 1)));
        let vat: [Option<usize>; NV] = std::array::from_fn(|v| gr.vec_at(v0 + v));
        // SAFETY: img < n, so the image's planes lie inside xpad (asserted above).
        let x = unsafe { xpad.as_ptr().add(img * cin * gr.plane) };
        let mut vals = std::mem::MaybeUninit::<[f32; MR * TILE]>::uninit();
        for cb in run * blocks / runs..(run + 1) * blocks / runs {
            let rows = MR.min(cout - cb * MR);
            // Rows past cout re-read the last real row; their sums are dropped.
            let wrows: [*const f32; MR] =
                std::array::from_fn(|r| wv.w[(cb * MR + r.min(rows - 1)) * wv.row..].as_ptr());
            let o = vals.as_mut_ptr().cast::<f32>();
            // SAFETY: the tile reads x[voff[v] + lane + taps] < q_len + 2·wp + 2 ≤ plane within each
            // of the image's cin planes (every vector starts below q_len; no tap past the 3×3 grid's
            // furthest, asserted), and weights at row + c·col + t inside wv.w (asserted above); the
            // caller checked that the CPU runs `kern`.
            unsafe {
                match vecs {
                    4 => conv_tile::<4, T>(kern, x, &voff, gr.plane, cin, &taps, &wrows, wv.col, o),
                    3 => conv_tile::<3, T>(kern, x, &voff, gr.plane, cin, &taps, &wrows, wv.col, o),
                    2 => conv_tile::<2, T>(kern, x, &voff, gr.plane, cin, &taps, &wrows, wv.col, o),
                    _ => conv_tile::<1, T>(kern, x, &voff, gr.plane, cin, &taps, &wrows, wv.col, o),
                }
            }
            // SAFETY: a [MaybeUninit<[f32; N]>] is N MaybeUninit<f32>; conv_tile wrote every row < MR (≥ rows)
            // of its V = vecs vectors at r·TILE + v·16.
            let tile = unsafe {
                let vals = std::slice::from_raw_parts(vals.as_ptr().cast::<std::mem::MaybeUninit<f32>>(), MR * TILE);
                TileOut::new(img, cb * MR, rows, &voff[..vecs], &vat[..vecs], vals, TILE)
            };
            store(&tile);
        }
    };
    (0..n * tiles * runs).into_par_iter().for_each(task);
}

/// out[r][v·16 + lane] = Σ_c Σ_tap w[r][c·col + tap] · x[c·plane + taps[tap] + voff[v] + lane]
/// (T = 9 taps for the 3×3 convs; T = 1 makes it the GEMM of Winograd's transformed tiles), by the
/// `kern` (for `Kern::Bf16Pairs`, c counts channel pairs and each product is a pair's dot product).
///
/// # Safety
/// The CPU must run `kern`; x must be readable at c·plane + taps[t] + voff[v] + 0..16 for every
/// c < cin, tap and v < V, each w[r] at c·col + t, and out writable for MR·TILE floats.
#[allow(clippy::too_many_arguments)]
#[inline]
unsafe fn conv_tile<const V: usize, const T: usize>(
    kern: Kern, x: *const f32, voff: &[usize; NV], plane: usize, cin: usize, taps: &[usize; T], w: &[*const f32; MR],
    col: usize, out: *mut f32,
) {
    // SAFETY: forwarded from the caller (see # Safety).
    #[cfg(target_arch = "x86_64")]
    unsafe {
        match kern {
            Kern::F32(Isa::Avx512) => conv_tile_avx512::<V, T>(x, voff, plane, cin, taps, w, col, out),
            Kern::F32(Isa::Avx2) => conv_tile_avx2::<V, T>(x, voff, plane, cin, taps, w, col, out),
            Kern::Bf16Pairs => bf16::conv_tile::<V, T>(x, voff, plane, cin, taps, w, col, out),
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    unreachable!("direct conv runs only where available() holds: {kern:?} {x:?} {voff:?} {plane} {cin} {taps:?} {w:?} {col} {out:?}")
}

/// `conv_tile` on AVX2 + FMA: each 16-position vector as two 8-float halves, one vector at a time
/// (MR × 2 accumulators, two inputs and a broadcast weight: 15 of the 16 registers), adding in the
/// same order as the AVX-512 build.
///
/// # Safety
/// As `conv_tile`, with AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn conv_tile_avx2<const V: usize, const T: usize>(
    x: *const f32, voff: &[usize; NV], plane: usize, cin: usize, taps: &[usize; T], w: &[*const f32; MR], col: usize,
    out: *mut f32,
) {
    use std::arch::x86_64::*;
    // SAFETY: every load and store is inside the ranges the caller vouches for (see # Safety).
    unsafe {
        for (v, &vo) in voff.iter().enumerate().take(V) {
            let mut acc = [[_mm256_setzero_ps(); 2]; MR];
            for ci in 0..cin {
                let xc = x.add(ci * plane + vo);
                let wc: [*const f32; MR] = std::array::from_fn(|r| w[r].add(ci * col));
                for (t, &off) in taps.iter().enumerate() {
                    let lo = _mm256_loadu_ps(xc.add(off));
                    let hi = _mm256_loadu_ps(xc.add(off + 8));
                    for (r, acc_r) in acc.iter_mut().enumerate() {
                        let wv = _mm256_broadcast_ss(&*wc[r].add(t));
                        acc_r[0] = _mm256_fmadd_ps(wv, lo, acc_r[0]);
                        acc_r[1] = _mm256_fmadd_ps(wv, hi, acc_r[1]);
                    }
                }
            }
            for (r, acc_r) in acc.iter().enumerate() {
                let o = out.add(r * TILE + v * LANES);
                _mm256_storeu_ps(o, acc_r[0]);
                _mm256_storeu_ps(o.add(8), acc_r[1]);
            }
        }
    }
}

/// `conv_tile` on AVX-512 F/VL.
///
/// # Safety
/// As `conv_tile`, with AVX-512 F/VL.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512vl")]
#[allow(clippy::too_many_arguments)]
unsafe fn conv_tile_avx512<const V: usize, const T: usize>(
    x: *const f32, voff: &[usize; NV], plane: usize, cin: usize, taps: &[usize; T], w: &[*const f32; MR], col: usize,
    out: *mut f32,
) {
    use std::arch::x86_64::*;
    // SAFETY: every load and store is inside the ranges the caller vouches for (see # Safety).
    unsafe {
        let mut acc = [[_mm512_setzero_ps(); V]; MR];
        for ci in 0..cin {
            let xc = x.add(ci * plane);
            let wc: [*const f32; MR] = std::array::from_fn(|r| w[r].add(ci * col));
            for (t, &off) in taps.iter().enumerate() {
                let xs = xc.add(off);
                let xv: [__m512; V] = std::array::from_fn(|v| _mm512_loadu_ps(xs.add(voff[v])));
                for (r, acc_r) in acc.iter_mut().enumerate() {
                    let wv = _mm512_set1_ps(*wc[r].add(t));
                    for v in 0..V {
                        acc_r[v] = _mm512_fmadd_ps(wv, xv[v], acc_r[v]);
                    }
                }
            }
        }
        for (r, acc_r) in acc.iter().enumerate() {
            for (v, a) in acc_r.iter().enumerate() {
                _mm512_storeu_ps(out.add(r * TILE + v * LANES), *a);
            }
        }
    }
}

/// The forward's store of a tile whose vectors are whole: for each row r < tile.rows and vector v,
/// dst[r·pitch + at[v] ..][..16] = act(value + bias[r] + res[r·pitch + at[v] ..]).
///
/// # Safety
/// The CPU must run `isa`; dst (and res) must be writable (readable) at r·pitch + at[v] + 0..16
/// for every row and vector of the tile, and bias hold `tile.rows` values.
#[allow(clippy::too_many_arguments)]
unsafe fn epilogue_tile(
    isa: Isa, dst: *mut f32, pitch: usize, tile: &TileOut, at: &[usize; NV], bias: Option<&[f32]>,
    res: Option<*const f32>, relu: bool,
) {
    // SAFETY: forwarded from the caller (see # Safety).
    #[cfg(target_arch = "x86_64")]
    unsafe {
        match isa {
            Isa::Avx512 => epilogue_tile_avx512(dst, pitch, tile, at, bias, res, relu),
            Isa::Avx2 => epilogue_tile_avx2(dst, pitch, tile, at, bias, res, relu),
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    unreachable!(
        "direct conv runs only where available() holds: {isa:?} {dst:?} {pitch} {at:?} {bias:?} {res:?} {relu}"
    )
}

/// Calls `f(offset r·pitch + at[v], values, bias)` for every row and vector of the tile; inlined
/// into each build's `epilogue_tile` so that `f` inlines there too.
#[inline(always)]
fn each_vector(
    tile: &TileOut, pitch: usize, at: &[usize; NV], bias: Option<&[f32]>, mut f: impl FnMut(usize, &[f32], f32),
) {
    for r in 0..tile.rows {
        let b = bias.map_or(0.0, |b| b[r]);
        for (v, &a) in at.iter().enumerate().take(tile.q.len()) {
            f(r * pitch + a, tile.vector(r, v), b);
        }
    }
}

/// `epilogue_tile` on AVX2.
///
/// # Safety
/// As `epilogue_tile`, with AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn epilogue_tile_avx2(
    dst: *mut f32, pitch: usize, tile: &TileOut, at: &[usize; NV], bias: Option<&[f32]>, res: Option<*const f32>,
    relu: bool,
) {
    // SAFETY: each offset is one the caller vouches for (see # Safety).
    each_vector(tile, pitch, at, bias, |o, v, b| unsafe {
        epilogue_vec_avx2(dst.add(o), v.as_ptr(), b, res.map(|r| r.add(o)), relu)
    });
}

/// `epilogue_tile` on AVX-512F.
///
/// # Safety
/// As `epilogue_tile`, with AVX-512F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn epilogue_tile_avx512(
    dst: *mut f32, pitch: usize, tile: &TileOut, at: &[usize; NV], bias: Option<&[f32]>, res: Option<*const f32>,
    relu: bool,
) {
    // SAFETY: each offset is one the caller vouches for (see # Safety).
    each_vector(tile, pitch, at, bias, |o, v, b| unsafe {
        epilogue_vec_avx512(dst.add(o), v.as_ptr(), b, res.map(|r| r.add(o)), relu)
    });
}

/// `epilogue_vec` on AVX2, two halves of 8.
///
/// # Safety
/// As `epilogue_vec`, with AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn epilogue_vec_avx2(dst: *mut f32, src: *const f32, bias: f32, res: Option<*const f32>, relu: bool) {
    use std::arch::x86_64::*;
    // SAFETY: 8-float loads and stores at 0 and 8 within the ranges the caller vouches for.
    unsafe {
        for half in [0, 8] {
            let mut v = _mm256_add_ps(_mm256_loadu_ps(src.add(half)), _mm256_set1_ps(bias));
            if let Some(r) = res {
                v = _mm256_add_ps(v, _mm256_loadu_ps(r.add(half)));
            }
            if relu {
                v = _mm256_max_ps(v, _mm256_setzero_ps());
            }
            _mm256_storeu_ps(dst.add(half), v);
        }
    }
}

/// `epilogue_vec` on AVX-512F.
///
/// # Safety
/// As `epilogue_vec`, with AVX-512F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn epilogue_vec_avx512(dst: *mut f32, src: *const f32, bias: f32, res: Option<*const f32>, relu: bool) {
    use std::arch::x86_64::*;
    // SAFETY: 16-float loads and one 16-float store within the ranges the caller vouches for.
    unsafe {
        let mut v = _mm512_add_ps(_mm512_loadu_ps(src), _mm512_set1_ps(bias));
        if let Some(r) = res {
            v = _mm512_add_ps(v, _mm512_loadu_ps(r));
        }
        if relu {
            v = _mm512_max_ps(v, _mm512_setzero_ps());
        }
        _mm512_storeu_ps(dst, v);
    }
}

/// y = act(conv3x3(x, W) + bias + residual); false (nothing written) when the geometry or the CPU
/// does not fit, so the caller takes im2col + GEMM.
pub fn forward_fused(g: &Conv2dGeom, x: &[f32], wt: &[f32], ep: Epilogue<f32>, y: &mut [f32]) -> bool {
    isa().is_some_and(|isa| forward_fused_on(isa, g, x, wt, ep, y))
}

/// `forward_fused` by the given build (false, nothing written, when the CPU cannot run it or the
/// geometry does not fit); tests run each build the CPU has.
pub fn forward_fused_on(isa: Isa, g: &Conv2dGeom, x: &[f32], wt: &[f32], ep: Epilogue<f32>, y: &mut [f32]) -> bool {
    if !applies(g) || !isa.supported() {
        return false;
    }
    let (in_hw, n) = (g.h * g.w, g.n);
    assert!(x.len() >= n * g.cin * in_hw && wt.len() >= g.cout * g.cin * 9);
    let gr = if g.stride == 1 { Grid::new(g.h, g.w) } else { Grid::stride2(g.h, g.w) };
    debug_assert!(gr.h == g.ho && gr.w == g.wo);
    with_scratch(n * g.cin * gr.plane, |xpad| {
        if g.stride == 1 {
            pad_planes(&gr, &x[..n * g.cin * in_hw], xpad);
        } else {
            pad_phases(isa, &gr, g.h, g.w, &x[..n * g.cin * in_hw], xpad);
        }
        let wv = WeightView { w: wt, row: g.cin * 9, col: 9 };
        forward_tiles(Kern::F32(isa), g, &gr, xpad, g.cin, wv, gr.taps, ep, y);
    });
    true
}

/// The forward's conv tiles over padded planes (`rows` of them per image: channels, or channel pairs
/// for `Kern::Bf16Pairs`), each output vector stored through the bias / residual / ReLU epilogue.
/// The caller checked that the CPU runs `kern`.
#[allow(clippy::too_many_arguments)]
fn forward_tiles<const T: usize>(
    kern: Kern, g: &Conv2dGeom, gr: &Grid, xpad: &[f32], rows: usize, wv: WeightView, taps: [usize; T],
    ep: Epilogue<f32>, y: &mut [f32],
) {
    let store = forward_store(kern.isa(), g, gr, ep, y);
    conv_tiles(kern, gr, g.n, rows, g.cout, xpad, wv, taps, store);
}

/// The forward's store of each computed tile into y through the bias / residual / ReLU epilogue, by
/// the `isa` build (the caller checked that the CPU runs it); checks the sizes of `ep` and `y` against `g`.
/// Shared by the direct kernels and the tile kernels (`amx`).
fn forward_store<'a>(
    isa: Isa, g: &'a Conv2dGeom, gr: &'a Grid, ep: Epilogue<'a, f32>, y: &'a mut [f32],
) -> impl Fn(&TileOut) + Sync + 'a {
    let hw = g.ho * g.wo;
    assert!(y.len() >= g.n * g.cout * hw && ep.residual.is_none_or(|r| r.len() >= g.n * g.cout * hw));
    assert!(ep.bias.is_none_or(|b| b.len() >= g.cout));
    let out = SharedOut(y.as_mut_ptr());
    move |t: &TileOut| {
        assert!(t.img < g.n && t.co0 + t.rows <= g.cout, "a tile past the output");
        let first = (t.img * g.cout + t.co0) * hw;
        if let Some(at) = t.whole() {
            // SAFETY: rows co0..co0 + rows of image img at the vectors' 16 positions lie inside y and
            // the residual (asserted) and belong to this task only; the CPU runs `isa` (the caller
            // checked).
            unsafe {
                let res = ep.residual.map(|r| r.as_ptr().add(first));
                epilogue_tile(isa, out.at(first), hw, t, &at, ep.bias.map(|b| &b[t.co0..]), res, ep.relu);
            }
            return;
        }
        for r in 0..t.rows {
            let base = first + r * hw;
            let bias = ep.bias.map_or(0.0, |b| b[t.co0 + r]);
            for (v, &q0) in t.q.iter().enumerate() {
                gr.runs(q0, LANES, |off, at, len| {
                    // SAFETY: (img, co, at..at + len) lies inside y (asserted) and belongs to this task only.
                    let dst = unsafe { std::slice::from_raw_parts_mut(out.at(base + at), len) };
                    let src = &t.vector(r, v)[off..off + len];
                    match (ep.residual, ep.relu) {
                        (Some(res), relu) => {
                            let res = &res[base + at..][..len];
                            for ((d, &v), &r) in dst.iter_mut().zip(src).zip(res) {
                                let s = v + bias + r;
                                *d = if relu { s.max(0.0) } else { s };
                            }
                        }
                        (None, true) => dst.iter_mut().zip(src).for_each(|(d, &v)| *d = (v + bias).max(0.0)),
                        (None, false) => dst.iter_mut().zip(src).for_each(|(d, &v)| *d = v + bias),
                    }
                });
            }
        }
    }
}

/// The 16-position vectors of one padded h×w plane that the backward-weight kernel reduces over
/// (`super::algorithm` weighs them).
pub fn plane_vectors(h: usize, w: usize) -> usize {
    Grid::new(h, w).q_len / LANES
}

/// dx = conv3x3ᵀ(dy) (overwritten) and dW += Σ_images dy ⋆ x; false (nothing written) when the
/// geometry or the CPU does not fit.
pub fn backward(
    g: &Conv2dGeom, x: &[f32], wt: &[f32], dy: &[f32], dx: Option<&mut [f32]>, dw: Option<&mut [f32]>,
) -> bool {
    isa().is_some_and(|isa| backward_on(isa, g, x, wt, dy, dx, dw))
}

/// `backward` by the given build (false, nothing written, when the CPU cannot run it or the
/// geometry does not fit).
pub fn backward_on(
    isa: Isa, g: &Conv2dGeom, x: &[f32], wt: &[f32], dy: &[f32], dx: Option<&mut [f32]>, dw: Option<&mut [f32]>,
) -> bool {
    if !applies_backward(g) || !isa.supported() {
        return false;
    }
    let gr = Grid::new(g.h, g.w);
    let (hw, n, cin, cout) = (g.h * g.w, g.n, g.cin, g.cout);
    assert!(dy.len() >= n * cout * hw);
    let ylen = n * cout * gr.plane;
    let xlen = if dw.is_some() { n * cin * gr.plane } else { 0 };
    let wlen = if dx.is_some() { cout * cin * 9 } else { 0 };
    with_scratch(ylen + xlen + wlen, |s| {
        let (dypad, rest) = s.split_at_mut(ylen);
        let (xpad, wflip) = rest.split_at_mut(xlen);
        pad_planes(&gr, &dy[..n * cout * hw], dypad);
        if let Some(dx) = dx {
            assert!(wt.len() >= cout * cin * 9 && dx.len() >= n * cin * hw);
            // Output channel ci reads input channel co through the tap mirrored about the centre:
            // flip the taps once, then read the weight transposed in place.
            for (f, w) in wflip.chunks_exact_mut(9).zip(wt.chunks_exact(9)) {
                f.iter_mut().zip(w.iter().rev()).for_each(|(f, &w)| *f = w);
            }
            let wv = WeightView { w: wflip, row: 9, col: cin * 9 };
            let out = SharedOut(dx.as_mut_ptr());
            conv_tiles(Kern::F32(isa), &gr, n, cout, cin, dypad, wv, gr.taps, |t: &TileOut| {
                for r in 0..t.rows {
                    let base = (t.img * cin + t.co0 + r) * hw;
                    for (v, (&q0, at)) in t.q.iter().zip(t.at).enumerate() {
                        let vals = t.vector(r, v);
                        if let Some(at) = at {
                            // SAFETY: inside dx (asserted) and written by this task only.
                            unsafe { std::ptr::copy_nonoverlapping(vals.as_ptr(), out.at(base + at), LANES) };
                            continue;
                        }
                        gr.runs(q0, LANES, |off, at, len| {
                            // SAFETY: inside dx (asserted) and written by this task only.
                            let dst = unsafe { std::slice::from_raw_parts_mut(out.at(base + at), len) };
                            dst.copy_from_slice(&vals[off..off + len]);
                        });
                    }
                }
            });
        }
        if let Some(dw) = dw {
            assert!(x.len() >= n * cin * hw && dw.len() >= cout * cin * 9);
            pad_planes(&gr, &x[..n * cin * hw], xpad);
            let dgr = DwGrid { plane: gr.plane, dy_plane: gr.plane, dy_at: gr.wp + 1, q_len: gr.q_len };
            let planes = DwPlanes::F32 { isa, x: xpad, dy: dypad };
            weight_grad(&planes, dgr, DwColumns::Taps(gr.taps), n, cin, cout, dw);
        }
    });
    true
}

/// The padded planes a direct weight gradient reduces over: dy (`cout` per image) and x (`cin` per
/// image), `plane` elements apart, in f32 for one build or as bf16 bits (`bf16::weight_grad`).
pub(super) enum DwPlanes<'a> {
    F32 { isa: Isa, x: &'a [f32], dy: &'a [f32] },
    Bf16 { x: &'a [u16], dy: &'a [u16] },
}

impl DwPlanes<'_> {
    /// Positions per vector: 16 f32 lanes, or 16 lanes of bf16 pairs of consecutive positions.
    fn positions(&self) -> usize {
        match self {
            DwPlanes::F32 { .. } => LANES,
            DwPlanes::Bf16 { .. } => 2 * LANES,
        }
    }
    fn lens(&self) -> (usize, usize) {
        match self {
            DwPlanes::F32 { x, dy, .. } => (x.len(), dy.len()),
            DwPlanes::Bf16 { x, dy } => (x.len(), dy.len()),
        }
    }
}

/// What the weight gradient's columns are (each task sums WR output channels × 9 columns).
#[derive(Clone, Copy, Debug)]
pub(crate) enum DwColumns {
    /// 3×3: one input channel per task, its 9 taps at these offsets from q.
    Taps([usize; 9]),
    /// 1×1: 9 input channels per task, each read at q itself.
    Pointwise,
}

/// Where a weight gradient's planes put position q: dy(q) at `dy_at + q` of its plane (`dy_plane`
/// elements apart) and x at `q` (plus the column's offset) of its own (`plane` apart); `q_len`
/// positions (whole vectors) are summed.
#[derive(Clone, Copy, Debug)]
pub(crate) struct DwGrid {
    pub plane: usize,
    pub dy_plane: usize,
    pub dy_at: usize,
    pub q_len: usize,
}

/// dW[co][ci][tap] += Σ_img Σ_q dy[img][co](q) · x[img][ci](q + taps[tap]) (`DwColumns::Taps`), or
/// dW[co][ci] += Σ_img Σ_q dy[img][co](q) · x[img][ci](q) (`Pointwise`); junk positions q must read
/// zero in dy (the padded planes' border, or zeroed tails).
#[allow(clippy::too_many_arguments)]
pub(super) fn weight_grad(
    planes: &DwPlanes, gr: DwGrid, columns: DwColumns, n: usize, cin: usize, cout: usize, dw: &mut [f32],
) {
    let (x_len, dy_len) = planes.lens();
    let (per_task, groups) = match columns {
        DwColumns::Taps(taps) => {
            assert!(taps.iter().all(|&t| gr.q_len + t <= gr.plane), "a tap reads past the padded plane");
            (1, cin)
        }
        DwColumns::Pointwise => (9, cin.div_ceil(9)),
    };
    let kk = if matches!(columns, DwColumns::Taps(_)) { 9 } else { 1 };
    assert!(gr.q_len.is_multiple_of(planes.positions()) && gr.dy_at + gr.q_len <= gr.dy_plane);
    assert!(x_len >= n * cin * gr.plane && dy_len >= n * cout * gr.dy_plane && dw.len() >= cout * cin * kk);
    let blocks = cout.div_ceil(WR);
    let out = SharedOut(dw.as_mut_ptr());
    let task = |i: usize| {
        let group = i % groups;
        let cb = i / groups;
        let rows = WR.min(cout - cb * WR);
        let ci0 = group * per_task;
        let width = per_task.min(cin - ci0);
        // Columns past the last input channel repeat it; their sums are dropped.
        let cols: [usize; 9] = match columns {
            DwColumns::Taps(taps) => taps.map(|t| ci0 * gr.plane + t),
            DwColumns::Pointwise => std::array::from_fn(|c| (ci0 + c.min(width - 1)) * gr.plane),
        };
        let mut sums = [[0.0f32; 9]; WR];
        let (dy0, ds, xs, qv) =
            (cb * WR * gr.dy_plane + gr.dy_at, cout * gr.dy_plane, cin * gr.plane, gr.q_len / planes.positions());
        // SAFETY: dy reads reach (n − 1)·ds + dy0 + (rows − 1)·dy_plane + q_len − 1 < n·cout·dy_plane (dy_at +
        // q_len ≤ dy_plane), x reads (n − 1)·xs + cols[c] + q_len − 1 < n·cin·plane (taps: q_len + tap ≤ plane;
        // pointwise: columns are whole planes of channels < cin); all asserted above. The F32 build is one
        // the CPU runs (its caller's check); Bf16 planes are made only where AVX512-BF16 runs
        // (`bf16::weight_grad_available`).
        unsafe {
            match planes {
                DwPlanes::F32 { isa, x, dy } => {
                    let (d, x) = (dy.as_ptr().add(dy0), x.as_ptr());
                    match rows {
                        3 => dw_block::<3>(*isa, d, gr.dy_plane, ds, x, xs, n, qv, &cols, &mut sums),
                        2 => dw_block::<2>(*isa, d, gr.dy_plane, ds, x, xs, n, qv, &cols, &mut sums),
                        _ => dw_block::<1>(*isa, d, gr.dy_plane, ds, x, xs, n, qv, &cols, &mut sums),
                    }
                }
                DwPlanes::Bf16 { x, dy } => {
                    let (d, x) = (dy.as_ptr().add(dy0), x.as_ptr());
                    match rows {
                        3 => bf16::dw_block::<3>(d, gr.dy_plane, ds, x, xs, n, qv, &cols, &mut sums),
                        2 => bf16::dw_block::<2>(d, gr.dy_plane, ds, x, xs, n, qv, &cols, &mut sums),
                        _ => bf16::dw_block::<1>(d, gr.dy_plane, ds, x, xs, n, qv, &cols, &mut sums),
                    }
                }
            }
        }
        for (r, s) in sums.iter().enumerate().take(rows) {
            let co = cb * WR + r;
            let (first, len) = match columns {
                DwColumns::Taps(_) => ((co * cin + ci0) * 9, 9),
                DwColumns::Pointwise => (co * cin + ci0, width),
            };
            // SAFETY: dW[co][ci0][..9] (taps) or dW[co][ci0..ci0 + width] (pointwise) is inside dw (asserted)
            // and this task's alone.
            let dst = unsafe { std::slice::from_raw_parts_mut(out.at(first), len) };
            dst.iter_mut().zip(s).for_each(|(d, &v)| *d += v);
        }
    };
    let work = n * gr.q_len * 27 / planes.positions() * LANES;
    let min_len = (30_000 / work).max(1);
    (0..blocks * groups).into_par_iter().with_min_len(min_len).for_each(task);
}

/// sums[r][c] = Σ_img Σ_v dy[img·dy_img + r·dy_co + v·16 ..] · x[img·x_img + cols[c] + v·16 ..],
/// by the `isa` build.
///
/// # Safety
/// The CPU must run `isa`; dy and x must be readable at every index that formula reaches for
/// img < n, v < qv, r < R (R ≤ WR) and the 16 lanes of each vector.
#[allow(clippy::too_many_arguments)]
unsafe fn dw_block<const R: usize>(
    isa: Isa, dy: *const f32, dy_co: usize, dy_img: usize, x: *const f32, x_img: usize, n: usize, qv: usize,
    cols: &[usize; 9], sums: &mut [[f32; 9]; WR],
) {
    // SAFETY: forwarded from the caller (see # Safety).
    #[cfg(target_arch = "x86_64")]
    unsafe {
        match isa {
            Isa::Avx512 => dw_block_avx512::<R>(dy, dy_co, dy_img, x, x_img, n, qv, cols, sums),
            Isa::Avx2 => dw_block_avx2::<R>(dy, dy_co, dy_img, x, x_img, n, qv, cols, sums),
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    unreachable!("direct conv runs only where available() holds: {isa:?} {dy:?} {dy_co} {dy_img} {x:?} {x_img} {n} {qv} {cols:?} {sums:?}")
}

/// `dw_block` on AVX2 + FMA: three columns (one kernel row) at a time, R × 3 accumulators of 8 lanes plus
/// R dy vectors and one x vector (at most 13 registers).
///
/// # Safety
/// As `dw_block`, with AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn dw_block_avx2<const R: usize>(
    dy: *const f32, dy_co: usize, dy_img: usize, x: *const f32, x_img: usize, n: usize, qv: usize, cols: &[usize; 9],
    sums: &mut [[f32; 9]; WR],
) {
    use std::arch::x86_64::*;
    // SAFETY: every load is inside the ranges the caller vouches for (see # Safety): the 8-float halves
    // of each 16-float vector.
    unsafe {
        for ky in 0..3 {
            let row_cols: [usize; 3] = std::array::from_fn(|kx| cols[3 * ky + kx]);
            let mut acc = [[_mm256_setzero_ps(); 3]; R];
            for img in 0..n {
                let d = dy.add(img * dy_img);
                let xi = x.add(img * x_img);
                for q in (0..qv * LANES).step_by(8) {
                    let dv: [__m256; R] = std::array::from_fn(|r| _mm256_loadu_ps(d.add(r * dy_co + q)));
                    for (k, &off) in row_cols.iter().enumerate() {
                        let xv = _mm256_loadu_ps(xi.add(q + off));
                        for r in 0..R {
                            acc[r][k] = _mm256_fmadd_ps(dv[r], xv, acc[r][k]);
                        }
                    }
                }
            }
            for r in 0..R {
                for k in 0..3 {
                    // Pairwise over the 8 lanes.
                    let a = acc[r][k];
                    let s4 = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps::<1>(a));
                    let s2 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4));
                    let s1 = _mm_add_ss(s2, _mm_shuffle_ps::<1>(s2, s2));
                    sums[r][3 * ky + k] = _mm_cvtss_f32(s1);
                }
            }
        }
    }
}

/// `dw_block` on AVX-512 F/VL.
///
/// # Safety
/// As `dw_block`, with AVX-512 F/VL.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512vl")]
#[allow(clippy::too_many_arguments)]
unsafe fn dw_block_avx512<const R: usize>(
    dy: *const f32, dy_co: usize, dy_img: usize, x: *const f32, x_img: usize, n: usize, qv: usize, cols: &[usize; 9],
    sums: &mut [[f32; 9]; WR],
) {
    use std::arch::x86_64::*;
    // SAFETY: every load is inside the ranges the caller vouches for (see # Safety).
    unsafe {
        let mut acc = [[_mm512_setzero_ps(); 9]; R];
        for img in 0..n {
            let d = dy.add(img * dy_img);
            let xi = x.add(img * x_img);
            for v in 0..qv {
                let q = v * LANES;
                let dv: [__m512; R] = std::array::from_fn(|r| _mm512_loadu_ps(d.add(r * dy_co + q)));
                for (t, &off) in cols.iter().enumerate() {
                    let xv = _mm512_loadu_ps(xi.add(q + off));
                    for r in 0..R {
                        acc[r][t] = _mm512_fmadd_ps(dv[r], xv, acc[r][t]);
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
