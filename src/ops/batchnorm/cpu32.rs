//! f32 CPU kernels of BatchNorm: one pass for the statistics, one for the affine, one for the
//! backward's two reductions and one for its input gradient.
//!
//! Data stay f32 but every per-element formula and every sum is evaluated in f64, as the generic
//! (f64, gradcheck) path does: the sums run in `LANES` independent f64 accumulators so the compiler
//! vectorises them (a single scalar accumulator forces a sequential add chain), and the statistics
//! are taken around a shift (one value of the channel), which keeps `E[(x−k)²] − E[x−k]²` free of
//! cancellation when |mean| ≫ σ. Channels (and planes for the elementwise passes) run as rayon tasks
//! when the tensor is big enough to pay for the hand-off.

use crate::host_isa::Isa;
use rayon::prelude::*;

/// Which build of the per-plane kernels runs: the crate targets baseline x86-64 (SSE2, two f64
/// lanes), and these kernels do their arithmetic in f64, so they are also built for the AVX-512 level
/// (8 f64 lanes) and AVX2 (4); None is the portable build. `crate::host_isa::simd()` picks (so
/// `HRK_NO_AVX512=1` skips the AVX-512 build). All builds give the same results bit for bit (the same
/// lanes add the same elements in the same order; no FMA contraction).
pub type Simd = Option<Isa>;

std::thread_local! {
    /// A test's choice of a narrower build on this thread (`with_simd`).
    static FORCED: std::cell::Cell<Option<Simd>> = const { std::cell::Cell::new(None) };
}

/// The build to run on this thread.
fn simd() -> Simd {
    FORCED.with(|f| f.get()).unwrap_or_else(crate::host_isa::simd)
}

/// Runs `f` with the kernels forced to `build` on this thread, where the CPU supports it (returns
/// None otherwise). Tests compare the builds; the parallel passes then stay on this thread.
pub fn with_simd<R>(build: Simd, f: impl FnOnce() -> R) -> Option<R> {
    if !build.is_none_or(Isa::supported) {
        return None;
    }
    Some(crate::scoped::with(&FORCED, Some(build), f))
}

/// Whether a test forced a build on this thread (the passes then run on it alone).
fn forced() -> bool {
    FORCED.with(|f| f.get()).is_some()
}

/// Defines `fn $name` whose body is compiled three times, plainly, with AVX-512 and with AVX2
/// enabled, and picks by `simd()`.
macro_rules! multiversion {
    ($(#[$m:meta])* fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $(-> $ret:ty)? $body:block) => {
        $(#[$m])*
        fn $name($($arg: $ty),*) $(-> $ret)? {
            #[inline(always)]
            fn body($($arg: $ty),*) $(-> $ret)? $body
            #[cfg(target_arch = "x86_64")]
            {
                /// # Safety
                /// The CPU must have every feature this enables (`simd()` checks them).
                #[target_feature(enable = "avx512f,avx512vl,avx512dq,avx512bw,avx2")]
                unsafe fn wide($($arg: $ty),*) $(-> $ret)? {
                    body($($arg),*)
                }
                /// # Safety
                /// The CPU must have AVX2 (`simd()` checks it).
                #[target_feature(enable = "avx2")]
                unsafe fn avx2($($arg: $ty),*) $(-> $ret)? {
                    body($($arg),*)
                }
                match simd() {
                    // SAFETY: simd() checked that the CPU has every feature `wide` enables.
                    Some(Isa::Avx512) => return unsafe { wide($($arg),*) },
                    // SAFETY: simd() checked that the CPU has AVX2.
                    Some(Isa::Avx2) => return unsafe { avx2($($arg),*) },
                    None => {}
                }
            }
            body($($arg),*)
        }
    };
}

/// Independent accumulators per sum (one AVX-512 register of f64).
const LANES: usize = 8;

/// The scalar end of the SIMD builds' gradient sums: elements `full..` of `xs` into lanes 0.., with
/// dy zeroed (and written back) where `ys` ≤ 0 when `ys` is given.
///
/// # Safety
/// `dy` must point at `xs.len()` floats, writable when `ys` is given (and then `ys.len() == xs.len()`).
#[cfg(target_arch = "x86_64")]
unsafe fn sums_tail(
    dy: *mut f32, xs: &[f32], ys: Option<&[f32]>, mu: f64, full: usize, a1: &mut [f64; LANES], a2: &mut [f64; LANES],
) {
    for (l, j) in (full..xs.len()).enumerate() {
        // SAFETY: j < xs.len(), which dy covers (see # Safety).
        let mut g = unsafe { *dy.add(j) };
        if let Some(ys) = ys {
            g = if ys[j] > 0.0 { g } else { 0.0 };
            // SAFETY: as above; dy is writable when ys is given.
            unsafe { *dy.add(j) = g };
        }
        a1[l] += g as f64;
        a2[l] += g as f64 * (xs[j] as f64 - mu);
    }
}
/// Tensors smaller than this (elements) stay on the calling thread.
const PAR_MIN: usize = 1 << 15;
/// Smallest amount of work (elements) one rayon task gets in the plane-wise passes.
const TASK_MIN: usize = 1 << 13;

fn lanes_sum(v: [f64; LANES]) -> f64 {
    // Pairwise, so the order (and the result) does not depend on how the loop was vectorised.
    let a = [v[0] + v[4], v[1] + v[5], v[2] + v[6], v[3] + v[7]];
    (a[0] + a[2]) + (a[1] + a[3])
}

/// Adds (x − k) and (x − k)² of `xs` into the lane accumulators.
fn add_shifted(xs: &[f32], k: f64, acc: &mut [[f64; LANES]; 2]) {
    #[cfg(target_arch = "x86_64")]
    match simd() {
        // SAFETY: simd() checked the CPU has AVX-512 F/VL.
        Some(Isa::Avx512) => return unsafe { avx512::add_shifted(xs, k, acc) },
        // SAFETY: simd() checked the CPU has AVX2.
        Some(Isa::Avx2) => return unsafe { avx2::add_shifted(xs, k, acc) },
        None => {}
    }
    add_shifted_portable(xs, k, acc)
}

multiversion! {
    fn add_shifted_portable(xs: &[f32], k: f64, acc: &mut [[f64; LANES]; 2]) {
        let (mut s1, mut s2) = (acc[0], acc[1]);
        let mut chunks = xs.chunks_exact(LANES);
        for c in &mut chunks {
            let c: &[f32; LANES] = c.try_into().expect("chunk of LANES");
            for l in 0..LANES {
                let d = c[l] as f64 - k;
                s1[l] += d;
                s2[l] += d * d;
            }
        }
        for (l, &v) in chunks.remainder().iter().enumerate() {
            let d = v as f64 - k;
            s1[l] += d;
            s2[l] += d * d;
        }
        *acc = [s1, s2];
    }
}

/// Σ dy and Σ dy·(x − μ) over one plane.
fn plane_grad_sums(dy: &[f32], xs: &[f32], mu: f64) -> (f64, f64) {
    #[cfg(target_arch = "x86_64")]
    {
        let sums = match simd() {
            // SAFETY: simd() checked the CPU has AVX-512 F/VL.
            Some(Isa::Avx512) => Some(unsafe { avx512::grad_sums(dy, xs, mu) }),
            // SAFETY: simd() checked the CPU has AVX2.
            Some(Isa::Avx2) => Some(unsafe { avx2::grad_sums(dy, xs, mu) }),
            None => None,
        };
        if let Some((s1, s2)) = sums {
            return (lanes_sum(s1), lanes_sum(s2));
        }
    }
    plane_grad_sums_portable(dy, xs, mu)
}

/// `plane_grad_sums` after zeroing dy (in place, same pass) where a fused ReLU's output is not
/// positive.
fn plane_grad_sums_masked(dy: &mut [f32], xs: &[f32], ys: &[f32], mu: f64) -> (f64, f64) {
    #[cfg(target_arch = "x86_64")]
    {
        let sums = match simd() {
            // SAFETY: simd() checked the CPU has AVX-512 F/VL.
            Some(Isa::Avx512) => Some(unsafe { avx512::grad_sums_masked(dy, xs, ys, mu) }),
            // SAFETY: simd() checked the CPU has AVX2.
            Some(Isa::Avx2) => Some(unsafe { avx2::grad_sums_masked(dy, xs, ys, mu) }),
            None => None,
        };
        if let Some((s1, s2)) = sums {
            return (lanes_sum(s1), lanes_sum(s2));
        }
    }
    plane_grad_sums_masked_portable(dy, xs, ys, mu)
}

multiversion! {
    fn plane_grad_sums_portable(dy: &[f32], xs: &[f32], mu: f64) -> (f64, f64) {
        let (mut s1, mut s2) = ([0.0f64; LANES], [0.0f64; LANES]);
        let (mut gc, mut xc) = (dy.chunks_exact(LANES), xs.chunks_exact(LANES));
        for (g, x) in (&mut gc).zip(&mut xc) {
            // Fixed-size views: known lengths let the eight lanes become one vector operation.
            let (g, x): (&[f32; LANES], &[f32; LANES]) = (g.try_into().expect("chunk of LANES"), x.try_into().expect("chunk of LANES"));
            for l in 0..LANES {
                s1[l] += g[l] as f64;
                s2[l] += g[l] as f64 * (x[l] as f64 - mu);
            }
        }
        for (l, (&g, &x)) in gc.remainder().iter().zip(xc.remainder()).enumerate() {
            s1[l] += g as f64;
            s2[l] += g as f64 * (x as f64 - mu);
        }
        (lanes_sum(s1), lanes_sum(s2))
    }
}

multiversion! {
    fn plane_grad_sums_masked_portable(dy: &mut [f32], xs: &[f32], ys: &[f32], mu: f64) -> (f64, f64) {
        let (mut s1, mut s2) = ([0.0f64; LANES], [0.0f64; LANES]);
        let (mut gc, mut xc, mut yc) = (dy.chunks_exact_mut(LANES), xs.chunks_exact(LANES), ys.chunks_exact(LANES));
        for ((g, x), y) in (&mut gc).zip(&mut xc).zip(&mut yc) {
            let g: &mut [f32; LANES] = g.try_into().expect("chunk of LANES");
            let (x, y): (&[f32; LANES], &[f32; LANES]) = (x.try_into().expect("chunk of LANES"), y.try_into().expect("chunk of LANES"));
            for l in 0..LANES {
                let v = if y[l] > 0.0 { g[l] } else { 0.0 };
                g[l] = v;
                s1[l] += v as f64;
                s2[l] += v as f64 * (x[l] as f64 - mu);
            }
        }
        let rest = gc.into_remainder().iter_mut().zip(xc.remainder().iter().zip(yc.remainder()));
        for (l, (g, (&x, &y))) in rest.enumerate() {
            let v = if y > 0.0 { *g } else { 0.0 };
            *g = v;
            s1[l] += v as f64;
            s2[l] += v as f64 * (x as f64 - mu);
        }
        (lanes_sum(s1), lanes_sum(s2))
    }
}

/// Runs `one` for every channel (in parallel when the tensor is big) and collects the pairs.
fn per_channel(len: usize, c: usize, one: impl Fn(usize) -> (f64, f64) + Sync + Send) -> (Vec<f64>, Vec<f64>) {
    let pairs: Vec<(f64, f64)> = if len >= PAR_MIN && c > 1 && !forced() {
        (0..c).into_par_iter().map(&one).collect()
    } else {
        (0..c).map(&one).collect()
    };
    pairs.into_iter().unzip()
}

/// Per-channel mean and biased variance over (N, H, W).
pub(super) fn channel_stats(x: &[f32], [n, c, h, w]: [usize; 4]) -> (Vec<f64>, Vec<f64>) {
    let plane = h * w;
    let m = (n * plane) as f64;
    per_channel(x.len(), c, |ch| {
        let k = x[ch * plane] as f64;
        let mut acc = [[0.0; LANES]; 2];
        for b in 0..n {
            add_shifted(&x[(b * c + ch) * plane..][..plane], k, &mut acc);
        }
        let d = lanes_sum(acc[0]) / m;
        (k + d, (lanes_sum(acc[1]) / m - d * d).max(0.0))
    })
}

/// Per-channel Σ dy and Σ dy·(x − μ), masking dy in place by a fused ReLU's output when given.
/// Partial sums per plane (planes run as rayon tasks), added per channel in batch order, so the
/// result does not depend on the thread count.
pub(super) fn grad_sums(
    dy: &mut [f32], x: &[f32], mask: Option<&[f32]>, [n, c, h, w]: [usize; 4], mean: &[f64],
) -> (Vec<f64>, Vec<f64>) {
    let plane = (h * w).max(1);
    let one = |(p, (g, xi)): (usize, (&mut [f32], &[f32]))| match mask {
        Some(m) => plane_grad_sums_masked(g, xi, &m[p * plane..][..plane], mean[p % c]),
        None => plane_grad_sums(g, xi, mean[p % c]),
    };
    let partial: Vec<(f64, f64)> = if dy.len() >= PAR_MIN && !forced() {
        dy.par_chunks_mut(plane)
            .zip(x.par_chunks(plane))
            .enumerate()
            .with_min_len((TASK_MIN / plane).max(1))
            .map(one)
            .collect()
    } else {
        dy.chunks_mut(plane).zip(x.chunks(plane)).enumerate().map(one).collect()
    };
    let (mut s0, mut s1) = (vec![0.0; c], vec![0.0; c]);
    for b in 0..n {
        for ch in 0..c {
            let (a, q) = partial[b * c + ch];
            s0[ch] += a;
            s1[ch] += q;
        }
    }
    (s0, s1)
}

/// Runs `one(channel, out_plane, in_plane)` over the planes of an NCHW pair, in parallel when big.
fn per_plane(
    out: &mut [f32], inp: &[f32], [_, c, h, w]: [usize; 4], one: impl Fn(usize, &mut [f32], &[f32]) + Sync + Send,
) {
    let plane = (h * w).max(1);
    if out.len() >= PAR_MIN && !forced() {
        out.par_chunks_mut(plane)
            .zip(inp.par_chunks(plane))
            .enumerate()
            .with_min_len((TASK_MIN / plane).max(1))
            .for_each(|(p, (o, i))| one(p % c, o, i));
    } else {
        out.chunks_mut(plane).zip(inp.chunks(plane)).enumerate().for_each(|(p, (o, i))| one(p % c, o, i));
    }
}

/// y = (x − μ)·scale + β per channel, in f64 (the subtraction first keeps digits when |μ| ≫ σ);
/// with `relu`, y = max(that, 0) (the value relu would give, without a second pass).
pub(super) fn affine(x: &[f32], d: [usize; 4], mean: &[f64], scale: &[f64], beta: &[f64], y: &mut [f32], relu: bool) {
    per_plane(y, x, d, |ch, yo, xi| affine_plane(yo, xi, mean[ch], scale[ch], beta[ch], relu));
}

multiversion! {
    fn affine_plane(yo: &mut [f32], xi: &[f32], m: f64, s: f64, t: f64, relu: bool) {
        if relu {
            yo.iter_mut().zip(xi).for_each(|(o, &v)| *o = (((v as f64 - m) * s + t) as f32).max(0.0));
        } else {
            yo.iter_mut().zip(xi).for_each(|(o, &v)| *o = ((v as f64 - m) * s + t) as f32);
        }
    }
}

/// dy ← a·dy + b·(x − μ) + k per channel (the training backward's input gradient, in place).
pub(super) fn grad_input(dy: &mut [f32], x: &[f32], d: [usize; 4], mean: &[f64], a: &[f64], b: &[f64], k: &[f64]) {
    per_plane(dy, x, d, |ch, g, xi| grad_input_plane(g, xi, mean[ch], a[ch], b[ch], k[ch]));
}

multiversion! {
    fn grad_input_plane(g: &mut [f32], xi: &[f32], m: f64, a: f64, b: f64, k: f64) {
        g.iter_mut().zip(xi).for_each(|(g, &v)| *g = (a * *g as f64 + b * (v as f64 - m) + k) as f32);
    }
}

/// dy ← dy·scale per channel (the eval backward's input gradient, in place).
pub(super) fn scale_planes(dy: &mut [f32], [n, c, h, w]: [usize; 4], scale: &[f64]) {
    let plane = (h * w).max(1);
    let one = |(p, g): (usize, &mut [f32])| {
        let s = scale[p % c] as f32;
        g.iter_mut().for_each(|g| *g *= s);
    };
    if n * c * plane >= PAR_MIN {
        dy.par_chunks_mut(plane).enumerate().with_min_len((TASK_MIN / plane).max(1)).for_each(one);
    } else {
        dy.chunks_mut(plane).enumerate().for_each(one);
    }
}

/// The reductions with explicit AVX-512 (the compiler does not vectorise the lane loops over f32→f64
/// conversions): the same eight lanes, each accumulating the same elements in the same order as the
/// portable code, so both give identical sums.
#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::LANES;
    use std::arch::x86_64::*;

    /// # Safety
    /// The CPU must have AVX-512 F and VL (`simd()` checks it).
    #[target_feature(enable = "avx512f,avx512vl")]
    pub(super) unsafe fn add_shifted(xs: &[f32], k: f64, acc: &mut [[f64; LANES]; 2]) {
        let kv = _mm512_set1_pd(k);
        let (mut s1, mut s2) = (_mm512_loadu_pd(acc[0].as_ptr()), _mm512_loadu_pd(acc[1].as_ptr()));
        let mut chunks = xs.chunks_exact(LANES);
        for c in &mut chunks {
            let d = _mm512_sub_pd(_mm512_cvtps_pd(_mm256_loadu_ps(c.as_ptr())), kv);
            s1 = _mm512_add_pd(s1, d);
            s2 = _mm512_add_pd(s2, _mm512_mul_pd(d, d));
        }
        _mm512_storeu_pd(acc[0].as_mut_ptr(), s1);
        _mm512_storeu_pd(acc[1].as_mut_ptr(), s2);
        for (l, &v) in chunks.remainder().iter().enumerate() {
            let d = v as f64 - k;
            acc[0][l] += d;
            acc[1][l] += d * d;
        }
    }

    /// Lane sums of dy and dy·(x − μ); with `ys`, dy is first zeroed where ys ≤ 0 (written back).
    ///
    /// # Safety
    /// The CPU must have AVX-512 F and VL; `dy` must point at `xs.len()` floats, writable when `ys` is given
    /// (and then `ys.len() == xs.len()`).
    #[target_feature(enable = "avx512f,avx512vl")]
    unsafe fn sums(dy: *mut f32, xs: &[f32], ys: Option<&[f32]>, mu: f64) -> ([f64; LANES], [f64; LANES]) {
        let n = xs.len();
        let muv = _mm512_set1_pd(mu);
        let (mut s1, mut s2) = (_mm512_setzero_pd(), _mm512_setzero_pd());
        let full = n / LANES * LANES;
        let mut i = 0;
        while i < full {
            let mut g32 = _mm256_loadu_ps(dy.add(i));
            if let Some(ys) = ys {
                let positive =
                    _mm256_cmp_ps_mask::<_CMP_GT_OQ>(_mm256_loadu_ps(ys.as_ptr().add(i)), _mm256_setzero_ps());
                g32 = _mm256_maskz_mov_ps(positive, g32);
                _mm256_storeu_ps(dy.add(i), g32);
            }
            let g = _mm512_cvtps_pd(g32);
            let x = _mm512_sub_pd(_mm512_cvtps_pd(_mm256_loadu_ps(xs.as_ptr().add(i))), muv);
            s1 = _mm512_add_pd(s1, g);
            s2 = _mm512_add_pd(s2, _mm512_mul_pd(g, x));
            i += LANES;
        }
        let (mut a1, mut a2) = ([0.0f64; LANES], [0.0f64; LANES]);
        _mm512_storeu_pd(a1.as_mut_ptr(), s1);
        _mm512_storeu_pd(a2.as_mut_ptr(), s2);
        super::sums_tail(dy, xs, ys, mu, full, &mut a1, &mut a2);
        (a1, a2)
    }

    /// # Safety
    /// The CPU must have AVX-512 F and VL (`simd()` checks it).
    #[target_feature(enable = "avx512f,avx512vl")]
    pub(super) unsafe fn grad_sums(dy: &[f32], xs: &[f32], mu: f64) -> ([f64; LANES], [f64; LANES]) {
        assert_eq!(dy.len(), xs.len());
        // `sums` only writes through the pointer when given a mask; here it only reads.
        // SAFETY: dy holds xs.len() floats (asserted) and is not written without a mask.
        sums(dy.as_ptr() as *mut f32, xs, None, mu)
    }

    /// # Safety
    /// The CPU must have AVX-512 F and VL (`simd()` checks it).
    #[target_feature(enable = "avx512f,avx512vl")]
    pub(super) unsafe fn grad_sums_masked(
        dy: &mut [f32], xs: &[f32], ys: &[f32], mu: f64,
    ) -> ([f64; LANES], [f64; LANES]) {
        assert!(dy.len() == xs.len() && ys.len() == xs.len());
        // SAFETY: dy is a writable slice of xs.len() floats and ys has as many (asserted).
        sums(dy.as_mut_ptr(), xs, Some(ys), mu)
    }
}

/// The reductions on AVX2: the same eight lanes as `avx512` (two registers of four f64), each
/// accumulating the same elements in the same order, so all builds give identical sums.
#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::LANES;
    use std::arch::x86_64::*;

    /// # Safety
    /// The CPU must have AVX2.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn add_shifted(xs: &[f32], k: f64, acc: &mut [[f64; LANES]; 2]) {
        let kv = _mm256_set1_pd(k);
        // SAFETY: 4-f64 loads and stores at 0 and 4 of the 8-lane accumulators; 4-float loads inside
        // each chunk of 8.
        unsafe {
            let (a, b) = (acc[0].as_ptr(), acc[1].as_ptr());
            let (mut s1, mut s2) =
                ([_mm256_loadu_pd(a), _mm256_loadu_pd(a.add(4))], [_mm256_loadu_pd(b), _mm256_loadu_pd(b.add(4))]);
            let mut chunks = xs.chunks_exact(LANES);
            for c in &mut chunks {
                for h in 0..2 {
                    let d = _mm256_sub_pd(_mm256_cvtps_pd(_mm_loadu_ps(c.as_ptr().add(4 * h))), kv);
                    s1[h] = _mm256_add_pd(s1[h], d);
                    s2[h] = _mm256_add_pd(s2[h], _mm256_mul_pd(d, d));
                }
            }
            for h in 0..2 {
                _mm256_storeu_pd(acc[0].as_mut_ptr().add(4 * h), s1[h]);
                _mm256_storeu_pd(acc[1].as_mut_ptr().add(4 * h), s2[h]);
            }
            for (l, &v) in chunks.remainder().iter().enumerate() {
                let d = v as f64 - k;
                acc[0][l] += d;
                acc[1][l] += d * d;
            }
        }
    }

    /// Lane sums of dy and dy·(x − μ); with `ys`, dy is first zeroed where ys ≤ 0 (written back).
    ///
    /// # Safety
    /// The CPU must have AVX2; `dy` must point at `xs.len()` floats, writable when `ys` is given (and
    /// then `ys.len() == xs.len()`).
    #[target_feature(enable = "avx2")]
    unsafe fn sums(dy: *mut f32, xs: &[f32], ys: Option<&[f32]>, mu: f64) -> ([f64; LANES], [f64; LANES]) {
        let n = xs.len();
        let muv = _mm256_set1_pd(mu);
        let mut s1 = [_mm256_setzero_pd(); 2];
        let mut s2 = [_mm256_setzero_pd(); 2];
        let full = n / LANES * LANES;
        let mut i = 0;
        // SAFETY: every access is below n = xs.len(), which dy (and ys) cover (see # Safety).
        unsafe {
            while i < full {
                let mut g32 = _mm256_loadu_ps(dy.add(i));
                if let Some(ys) = ys {
                    let positive =
                        _mm256_cmp_ps::<_CMP_GT_OQ>(_mm256_loadu_ps(ys.as_ptr().add(i)), _mm256_setzero_ps());
                    g32 = _mm256_and_ps(g32, positive);
                    _mm256_storeu_ps(dy.add(i), g32);
                }
                let g =
                    [_mm256_cvtps_pd(_mm256_castps256_ps128(g32)), _mm256_cvtps_pd(_mm256_extractf128_ps::<1>(g32))];
                let x32 = _mm256_loadu_ps(xs.as_ptr().add(i));
                let x =
                    [_mm256_cvtps_pd(_mm256_castps256_ps128(x32)), _mm256_cvtps_pd(_mm256_extractf128_ps::<1>(x32))];
                for h in 0..2 {
                    s1[h] = _mm256_add_pd(s1[h], g[h]);
                    s2[h] = _mm256_add_pd(s2[h], _mm256_mul_pd(g[h], _mm256_sub_pd(x[h], muv)));
                }
                i += LANES;
            }
            let (mut a1, mut a2) = ([0.0f64; LANES], [0.0f64; LANES]);
            for h in 0..2 {
                _mm256_storeu_pd(a1.as_mut_ptr().add(4 * h), s1[h]);
                _mm256_storeu_pd(a2.as_mut_ptr().add(4 * h), s2[h]);
            }
            super::sums_tail(dy, xs, ys, mu, full, &mut a1, &mut a2);
            (a1, a2)
        }
    }

    /// # Safety
    /// The CPU must have AVX2.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn grad_sums(dy: &[f32], xs: &[f32], mu: f64) -> ([f64; LANES], [f64; LANES]) {
        assert_eq!(dy.len(), xs.len());
        // SAFETY: dy holds xs.len() floats (asserted) and is not written without a mask.
        unsafe { sums(dy.as_ptr() as *mut f32, xs, None, mu) }
    }

    /// # Safety
    /// The CPU must have AVX2.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn grad_sums_masked(
        dy: &mut [f32], xs: &[f32], ys: &[f32], mu: f64,
    ) -> ([f64; LANES], [f64; LANES]) {
        assert!(dy.len() == xs.len() && ys.len() == xs.len());
        // SAFETY: dy is a writable slice of xs.len() floats and ys has as many (asserted).
        unsafe { sums(dy.as_mut_ptr(), xs, Some(ys), mu) }
    }
}
