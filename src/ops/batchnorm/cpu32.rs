//! f32 CPU kernels of BatchNorm: one pass for the statistics, one for the affine, one for the
//! backward's two reductions and one for its input gradient.
//!
//! Data stay f32 but every per-element formula and every sum is evaluated in f64, as the generic
//! (f64, gradcheck) path does: the sums run in `LANES` independent f64 accumulators so the compiler
//! vectorises them (a single scalar accumulator forces a sequential add chain), and the statistics
//! are taken around a shift (one value of the channel), which keeps `E[(x−k)²] − E[x−k]²` free of
//! cancellation when |mean| ≫ σ. Channels (and planes for the elementwise passes) run as rayon tasks
//! when the tensor is big enough to pay for the hand-off.

use rayon::prelude::*;

/// Independent accumulators per sum (one AVX-512 register of f64).
const LANES: usize = 8;
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
#[inline(always)]
fn add_shifted(xs: &[f32], k: f64, s1: &mut [f64; LANES], s2: &mut [f64; LANES]) {
    let mut chunks = xs.chunks_exact(LANES);
    for c in &mut chunks {
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
}

/// Σ dy and Σ dy·(x − μ) over one plane; with `mask` (a fused ReLU's output), dy is first zeroed
/// where the mask is not positive, in place, in the same pass.
#[inline(always)]
fn plane_grad_sums(dy: &mut [f32], xs: &[f32], mask: Option<&[f32]>, mu: f64) -> (f64, f64) {
    let (mut s1, mut s2) = ([0.0f64; LANES], [0.0f64; LANES]);
    let mut add = |l: usize, g: f32, x: f32| {
        let g = g as f64;
        s1[l] += g;
        s2[l] += g * (x as f64 - mu);
    };
    match mask {
        None => {
            let (mut gc, mut xc) = (dy.chunks_exact(LANES), xs.chunks_exact(LANES));
            for (g, x) in (&mut gc).zip(&mut xc) {
                for l in 0..LANES {
                    add(l, g[l], x[l]);
                }
            }
            for (l, (&g, &x)) in gc.remainder().iter().zip(xc.remainder()).enumerate() {
                add(l, g, x);
            }
        }
        Some(ys) => {
            let (mut gc, mut xc, mut yc) = (dy.chunks_exact_mut(LANES), xs.chunks_exact(LANES), ys.chunks_exact(LANES));
            for ((g, x), y) in (&mut gc).zip(&mut xc).zip(&mut yc) {
                for l in 0..LANES {
                    g[l] = if y[l] > 0.0 { g[l] } else { 0.0 };
                    add(l, g[l], x[l]);
                }
            }
            let rest = gc.into_remainder().iter_mut().zip(xc.remainder().iter().zip(yc.remainder()));
            for (l, (g, (&x, &y))) in rest.enumerate() {
                *g = if y > 0.0 { *g } else { 0.0 };
                add(l, *g, x);
            }
        }
    }
    (lanes_sum(s1), lanes_sum(s2))
}

/// Runs `one` for every channel (in parallel when the tensor is big) and collects the pairs.
fn per_channel(len: usize, c: usize, one: impl Fn(usize) -> (f64, f64) + Sync + Send) -> (Vec<f64>, Vec<f64>) {
    let pairs: Vec<(f64, f64)> = if len >= PAR_MIN && c > 1 { (0..c).into_par_iter().map(&one).collect() } else { (0..c).map(&one).collect() };
    pairs.into_iter().unzip()
}

/// Per-channel mean and biased variance over (N, H, W).
pub(super) fn channel_stats(x: &[f32], [n, c, h, w]: [usize; 4]) -> (Vec<f64>, Vec<f64>) {
    let plane = h * w;
    let m = (n * plane) as f64;
    per_channel(x.len(), c, |ch| {
        let k = x[ch * plane] as f64;
        let (mut s1, mut s2) = ([0.0; LANES], [0.0; LANES]);
        for b in 0..n {
            add_shifted(&x[(b * c + ch) * plane..][..plane], k, &mut s1, &mut s2);
        }
        let d = lanes_sum(s1) / m;
        (k + d, (lanes_sum(s2) / m - d * d).max(0.0))
    })
}

/// Per-channel Σ dy and Σ dy·(x − μ), masking dy in place by a fused ReLU's output when given.
/// Partial sums per plane (planes run as rayon tasks), added per channel in batch order, so the
/// result does not depend on the thread count.
pub(super) fn grad_sums(dy: &mut [f32], x: &[f32], mask: Option<&[f32]>, [n, c, h, w]: [usize; 4], mean: &[f64]) -> (Vec<f64>, Vec<f64>) {
    let plane = (h * w).max(1);
    let one = |(p, (g, xi)): (usize, (&mut [f32], &[f32]))| plane_grad_sums(g, xi, mask.map(|m| &m[p * plane..][..plane]), mean[p % c]);
    let partial: Vec<(f64, f64)> = if dy.len() >= PAR_MIN {
        dy.par_chunks_mut(plane).zip(x.par_chunks(plane)).enumerate().with_min_len((TASK_MIN / plane).max(1)).map(one).collect()
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
fn per_plane(out: &mut [f32], inp: &[f32], [_, c, h, w]: [usize; 4], one: impl Fn(usize, &mut [f32], &[f32]) + Sync + Send) {
    let plane = (h * w).max(1);
    if out.len() >= PAR_MIN {
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
    per_plane(y, x, d, |ch, yo, xi| {
        let (m, s, t) = (mean[ch], scale[ch], beta[ch]);
        if relu {
            yo.iter_mut().zip(xi).for_each(|(o, &v)| *o = (((v as f64 - m) * s + t) as f32).max(0.0));
        } else {
            yo.iter_mut().zip(xi).for_each(|(o, &v)| *o = ((v as f64 - m) * s + t) as f32);
        }
    });
}

/// dy ← a·dy + b·(x − μ) + k per channel (the training backward's input gradient, in place).
pub(super) fn grad_input(dy: &mut [f32], x: &[f32], d: [usize; 4], mean: &[f64], a: &[f64], b: &[f64], k: &[f64]) {
    per_plane(dy, x, d, |ch, g, xi| {
        let (m, a, b, k) = (mean[ch], a[ch], b[ch], k[ch]);
        g.iter_mut().zip(xi).for_each(|(g, &v)| *g = (a * *g as f64 + b * (v as f64 - m) + k) as f32);
    });
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
