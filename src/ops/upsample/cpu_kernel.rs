//! Bilinear (separable, per plane, rayon tasks for big inputs) and nearest resize on host storage, and
//! the bilinear resize into raw f32 buffers that the CPU inference engine adds its fuse terms with.

use super::{Resize, UpsampleKernel};
use crate::by_dtype;
use crate::float::{typed, typed_mut, Float};
use crate::ops::Cpu;
use crate::tensor::Storage;
use anyhow::Result;
use rayon::prelude::*;

impl UpsampleKernel for Cpu {
    fn bilinear(&self, x: &Storage, r: &Resize) -> Result<Storage> {
        let [n, c, h, w] = r.input;
        let [ho, wo] = r.output;
        let mut y = Storage::for_overwrite(x.dtype(), n * c * ho * wo, "upsample output")?;
        by_dtype!(x.dtype(), T => {
            let (ty, tx) = (bilinear_taps::<T>(h, ho), bilinear_taps::<T>(w, wo));
            per_plane::<T>(typed_mut(&mut y), ho * wo, typed(x), h * w, h * wo, |dst, src, rows| {
                bilinear_plane(src, w, dst, wo, &ty, &tx, rows, WriteMode::Set)
            });
        });
        Ok(y)
    }
    fn bilinear_backward(&self, dy: &Storage, r: &Resize) -> Result<Storage> {
        let [n, c, h, w] = r.input;
        let [ho, wo] = r.output;
        let mut out = Storage::for_overwrite(dy.dtype(), n * c * h * w, "upsample input gradient")?;
        by_dtype!(dy.dtype(), T => {
            let (ty, tx) = (bilinear_taps::<T>(h, ho), bilinear_taps::<T>(w, wo));
            per_plane::<T>(typed_mut(&mut out), h * w, typed(dy), ho * wo, h * wo, |dst, src, rows| {
                bilinear_plane_backward(src, wo, dst, w, &ty, &tx, rows)
            });
        });
        Ok(out)
    }
    fn nearest(&self, x: &Storage, r: &Resize) -> Result<Storage> {
        let [n, c, h, w] = r.input;
        let [ho, wo] = r.output;
        let (ty, tx) = (nearest_taps(h, ho), nearest_taps(w, wo));
        let mut ys = Storage::for_overwrite(x.dtype(), n * c * ho * wo, "upsample output")?;
        by_dtype!(x.dtype(), T => {
            let xv: &[T] = typed(x);
            let y = typed_mut::<T>(&mut ys);
            for p in 0..n * c {
                for (oy, &iy) in ty.iter().enumerate() {
                    for (ox, &ix) in tx.iter().enumerate() {
                        y[p * ho * wo + oy * wo + ox] = xv[p * h * w + iy * w + ix];
                    }
                }
            }
        });
        Ok(ys)
    }
    fn nearest_backward(&self, dy: &Storage, r: &Resize) -> Result<Storage> {
        let [n, c, h, w] = r.input;
        let [ho, wo] = r.output;
        Ok(by_dtype!(dy.dtype(), T => {
            let g: &[T] = typed(dy);
            let mut dx = vec![T::ZERO; n * c * h * w];
            let (ty, tx) = (nearest_taps(h, ho), nearest_taps(w, wo));
            for p in 0..n * c {
                for (oy, &iy) in ty.iter().enumerate() {
                    for (ox, &ix) in tx.iter().enumerate() {
                        dx[p * h * w + iy * w + ix] += g[p * ho * wo + oy * wo + ox];
                    }
                }
            }
            T::into_storage(dx)
        }))
    }
}

/// Planes × pixels above which the per-plane loops run as rayon tasks.
const PAR_MIN: usize = 1 << 15;

/// Runs `one(out_plane, in_plane, scratch)` over matching planes of two NCHW buffers, as rayon tasks
/// (one scratch row buffer each) when the work is big enough.
fn per_plane<T: Float>(
    out: &mut [T], out_plane: usize, inp: &[T], in_plane: usize, scratch: usize,
    one: impl Fn(&mut [T], &[T], &mut Vec<T>) + Sync + Send,
) {
    if out.len() + inp.len() >= PAR_MIN {
        let min = (PAR_MIN / 4 / out_plane.max(in_plane).max(1)).max(1);
        out.par_chunks_mut(out_plane)
            .zip(inp.par_chunks(in_plane))
            .with_min_len(min)
            .for_each_init(|| vec![T::ZERO; scratch], |tmp, (o, i)| one(o, i, tmp));
    } else {
        let mut tmp = vec![T::ZERO; scratch];
        out.chunks_mut(out_plane).zip(inp.chunks(in_plane)).for_each(|(o, i)| one(o, i, &mut tmp));
    }
}

/// How a resized value v is written to its destination element d.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WriteMode {
    /// d = v.
    Set,
    /// d += v.
    Add,
    /// d = max(d + v, 0): the last term of an HRNet fuse row.
    AddRelu,
}

/// Bilinear resize (align_corners=false, the op's taps and arithmetic) of `planes` f32 planes of
/// `from` (h, w) in `src` into `dst` of `to`, written per `mode`, plane by plane on the calling thread
/// (the inference engine's callers already run images in parallel). Same size is a plain copy / add.
pub fn bilinear_into(src: &[f32], planes: usize, from: [usize; 2], to: [usize; 2], dst: &mut [f32], mode: WriteMode) {
    let ([h, w], [ho, wo]) = (from, to);
    if from == to {
        let n = planes * h * w;
        let (dst, src) = (&mut dst[..n], &src[..n]);
        match mode {
            WriteMode::Set => dst.copy_from_slice(src),
            WriteMode::Add => dst.iter_mut().zip(src).for_each(|(d, &s)| *d += s),
            WriteMode::AddRelu => dst.iter_mut().zip(src).for_each(|(d, &s)| *d = (*d + s).max(0.0)),
        }
        return;
    }
    let (ty, tx) = (bilinear_taps::<f32>(h, ho), bilinear_taps::<f32>(w, wo));
    let mut rows = vec![0.0f32; h * wo];
    for (d, s) in dst.chunks_exact_mut(ho * wo).zip(src.chunks_exact(h * w)).take(planes) {
        bilinear_plane(s, w, d, wo, &ty, &tx, &mut rows, mode);
    }
}

/// One plane, separably: each source row resized horizontally once into `rows` (h × wo), then every
/// output row blended from two of those and written per `mode` (matched once per row, so each loop
/// vectorises). Same arithmetic as the direct 4-tap formula ly0·(lx0·a + lx1·b) + ly1·(lx0·c + lx1·d),
/// so the result is identical.
#[allow(clippy::too_many_arguments)]
fn bilinear_plane<T: Float>(
    src: &[T], w: usize, dst: &mut [T], wo: usize, ty: &[(usize, usize, T, T)], tx: &[(usize, usize, T, T)],
    rows: &mut [T], mode: WriteMode,
) {
    for (r, row) in rows.chunks_exact_mut(wo).enumerate() {
        let s = &src[r * w..][..w];
        row.iter_mut().zip(tx).for_each(|(o, &(x0, x1, lx0, lx1))| *o = lx0 * s[x0] + lx1 * s[x1]);
    }
    for (out, &(y0, y1, ly0, ly1)) in dst.chunks_exact_mut(wo).zip(ty) {
        let (r0, r1) = (&rows[y0 * wo..][..wo], &rows[y1 * wo..][..wo]);
        let vals = out.iter_mut().zip(r0.iter().zip(r1));
        match mode {
            WriteMode::Set => vals.for_each(|(o, (&a, &b))| *o = ly0 * a + ly1 * b),
            WriteMode::Add => vals.for_each(|(o, (&a, &b))| *o += ly0 * a + ly1 * b),
            WriteMode::AddRelu => vals.for_each(|(o, (&a, &b))| *o = (*o + (ly0 * a + ly1 * b)).max(T::ZERO)),
        }
    }
}

/// The adjoint of `bilinear_plane`: output-row gradients spread onto source rows (h × wo, vectorised
/// rows), then each row spread horizontally onto the source pixels.
fn bilinear_plane_backward<T: Float>(
    g: &[T], wo: usize, dx: &mut [T], w: usize, ty: &[(usize, usize, T, T)], tx: &[(usize, usize, T, T)],
    rows: &mut [T],
) {
    rows.fill(T::ZERO);
    for (gr, &(y0, y1, ly0, ly1)) in g.chunks_exact(wo).zip(ty) {
        rows[y0 * wo..][..wo].iter_mut().zip(gr).for_each(|(r, &v)| *r += ly0 * v);
        rows[y1 * wo..][..wo].iter_mut().zip(gr).for_each(|(r, &v)| *r += ly1 * v);
    }
    dx.fill(T::ZERO);
    for (d, row) in dx.chunks_exact_mut(w).zip(rows.chunks_exact(wo)) {
        for (&v, &(x0, x1, lx0, lx1)) in row.iter().zip(tx) {
            d[x0] += lx0 * v;
            d[x1] += lx1 * v;
        }
    }
}

/// For each output index: (i0, i1, λ0, λ1) with src = max(0, (dst + ½)·in/out − ½).
fn bilinear_taps<T: Float>(input: usize, output: usize) -> Vec<(usize, usize, T, T)> {
    let scale = T::from_f64(input as f64 / output as f64);
    let half = T::from_f64(0.5);
    (0..output)
        .map(|d| {
            let src = (scale * (T::from_f64(d as f64) + half) - half).max(T::ZERO);
            let i0 = (src.to_f64() as usize).min(input - 1);
            let i1 = if i0 < input - 1 { i0 + 1 } else { i0 };
            let l1 = src - T::from_f64(i0 as f64);
            (i0, i1, T::ONE - l1, l1)
        })
        .collect()
}

/// PyTorch 'nearest': src = min(floor(dst·in/out), in − 1).
fn nearest_taps(input: usize, output: usize) -> Vec<usize> {
    let scale = input as f32 / output as f32;
    (0..output).map(|d| ((d as f32 * scale).floor() as usize).min(input - 1)).collect()
}
