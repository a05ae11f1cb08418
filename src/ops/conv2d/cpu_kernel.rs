//! CPU conv2d kernels: im2col (one image at a time, so a column buffer never exceeds one image's)
//! feeding the `gemm` crate; 1x1 stride-1 unpadded convs skip im2col entirely.
//!
//! Threading: with a batch of ≥ 2 images and ≥ 2 threads, images run as rayon tasks, each with a
//! single-threaded GEMM (one image's im2col stays in that core's cache; the per-thread GEMM reaches
//! ~100 GFLOP/s on every HRNet shape). A single image uses one multi-threaded GEMM instead.

use super::algorithm::{choose, Arithmetic, ConvAlgorithm, Pass};
use super::direct;
use super::{Conv2dGeom, Conv2dKernel, Grads};
use crate::by_dtype;
use crate::float::{typed, typed_mut, Float};
use crate::ops::Cpu;
use crate::tensor::Storage;
use anyhow::{bail, Result};
use rayon::prelude::*;
use std::any::TypeId;
use std::cell::RefCell;

/// The epilogue `forward_fused` takes (defined by the direct kernels, which apply it in registers).
pub use super::direct::Epilogue;

impl Conv2dKernel for Cpu {
    fn forward(&self, g: &Conv2dGeom, x: &Storage, w: &Storage, bias: Option<&Storage>) -> Result<Storage> {
        // The kernels write every output element (tests/conv_kernels.rs fills y and dx with NaN first).
        let mut y = Storage::for_overwrite(x.dtype(), g.n * g.cout * g.ho * g.wo, "conv2d output")?;
        if is_bf16(choose(g, Pass::Forward, op_arithmetic(x.dtype()))) {
            let ep = Epilogue { bias: bias.map(typed::<f32>), residual: None, relu: false };
            direct::bf16::forward(g, typed(x), typed(w), &Default::default(), ep, typed_mut(&mut y));
            return Ok(y);
        }
        by_dtype!(x.dtype(), T => forward::<T>(g, typed(x), typed(w), bias.map(typed::<T>), typed_mut(&mut y)));
        Ok(y)
    }
    fn backward(&self, g: &Conv2dGeom, saved: [Option<&Storage>; 2], dy: &Storage, want: [bool; 3]) -> Result<Grads> {
        let [x, w] = saved;
        let dtype = dy.dtype();
        let mut dx = want[0]
            .then(|| Storage::for_overwrite(dtype, g.n * g.cin * g.h * g.w, "conv2d input gradient"))
            .transpose()?;
        let mut dw = want[1].then(|| Storage::zeros(dtype, g.cout * g.cin * g.k * g.k));
        let mut db = want[2].then(|| Storage::zeros(dtype, g.cout));
        let empty = Storage::zeros(dtype, 0);
        let (xs, ws) = (x.unwrap_or(&empty), w.unwrap_or(&empty));
        if xs.dtype() != dtype || ws.dtype() != dtype {
            bail!("conv2d backward: gradient dtype {:?} differs from the forward's", dtype);
        }
        let arithmetic = op_arithmetic(dtype);
        let bf16_dx = is_bf16(choose(g, Pass::BackwardData, arithmetic));
        let dw_algorithm = choose(g, Pass::BackwardWeight, arithmetic);
        let bf16_dw = is_bf16(dw_algorithm);
        if bf16_dx || bf16_dw {
            // The passes not on bf16 kernels, and db, take the f32 path.
            let (mut dx32, mut dw32) = (dx.as_mut().map(typed_mut::<f32>), dw.as_mut().map(typed_mut::<f32>));
            if let Some(dx) = dx32.as_deref_mut().filter(|_| bf16_dx) {
                bf16_backward_data(g, typed(ws), typed(dy), dx);
                dx32 = None;
            }
            if let Some(dw) = dw32.as_deref_mut().filter(|_| bf16_dw) {
                if let ConvAlgorithm::AmxTiles(unit) = dw_algorithm {
                    super::tile_weight_grad::weight_grad(unit, g, typed(xs), typed(dy), dw);
                } else {
                    direct::bf16::weight_grad(g, typed(xs), typed(dy), dw);
                }
                dw32 = None;
            }
            if dx32.is_some() || dw32.is_some() || db.is_some() {
                let db32 = db.as_mut().map(typed_mut::<f32>);
                backward::<f32>(g, typed(xs), typed(ws), typed(dy), dx32, dw32, db32);
            }
            return Ok([dx, dw, db]);
        }
        by_dtype!(dtype, T => backward::<T>(
            g,
            typed(xs),
            typed(ws),
            typed(dy),
            dx.as_mut().map(typed_mut::<T>),
            dw.as_mut().map(typed_mut::<T>),
            db.as_mut().map(typed_mut::<T>),
        ));
        Ok([dx, dw, db])
    }
}

/// The arithmetic the op asks `choose` for: bf16 while `super::bf16_convs()` is on (f32 tensors only).
fn op_arithmetic(dtype: crate::tensor::DType) -> Arithmetic {
    match dtype {
        crate::tensor::DType::F64 => Arithmetic::F64,
        crate::tensor::DType::F32 if super::bf16_convs() => Arithmetic::Bf16,
        crate::tensor::DType::F32 => Arithmetic::F32,
    }
}

/// Whether the chosen algorithm is one of the bf16 kernels.
fn is_bf16(algorithm: ConvAlgorithm) -> bool {
    matches!(algorithm, ConvAlgorithm::Bf16Direct | ConvAlgorithm::Bf16Winograd | ConvAlgorithm::AmxTiles(_))
}

/// dx = conv(dy, Wᵀ with the taps flipped) — the stride-1 conv's input gradient as a forward conv of
/// cout → cin channels, on the bf16 kernels.
fn bf16_backward_data(g: &Conv2dGeom, wt: &[f32], dy: &[f32], dx: &mut [f32]) {
    let kk = g.k * g.k;
    let gt = g.transposed();
    let mut flipped = vec![0.0f32; g.cin * g.cout * kk];
    for co in 0..g.cout {
        for ci in 0..g.cin {
            let (src, dst) = ((co * g.cin + ci) * kk, (ci * g.cout + co) * kk);
            for t in 0..kk {
                flipped[dst + t] = wt[src + kk - 1 - t];
            }
        }
    }
    let none = Epilogue { bias: None, residual: None, relu: false };
    direct::bf16::forward(&gt, dy, &flipped, &Default::default(), none, dx);
}

fn threads() -> usize {
    rayon::current_num_threads()
}

/// Images as rayon tasks (one single-threaded GEMM each) when there are several images and threads; the
/// serial rung (one multi-threaded GEMM per image) lost on every HRNet shape (BENCHMARKS.md).
fn batch_parallel(g: &Conv2dGeom) -> bool {
    g.n >= 2 && threads() >= 2
}

thread_local! {
    /// Per-thread im2col scratch, kept between calls so steady-state convs do not fault in fresh pages.
    static SCRATCH: RefCell<Vec<u64>> = const { RefCell::new(Vec::new()) };
}

/// Runs `f` with this thread's scratch viewed as `len` elements of T (contents unspecified).
fn with_scratch<T: Float, R>(len: usize, f: impl FnOnce(&mut [T]) -> R) -> R {
    // T is f32 or f64: every bit pattern is a valid value, size divides 8 and alignment ≤ 8.
    assert!(std::mem::size_of::<T>() <= 8 && 8 % std::mem::align_of::<T>() == 0);
    let words = (len * std::mem::size_of::<T>()).div_ceil(8);
    SCRATCH.with(|cell| match cell.try_borrow_mut() {
        Ok(mut buf) => {
            if buf.len() < words {
                buf.resize(words, 0);
            }
            // SAFETY: the buffer holds ≥ len·size_of::<T>() bytes, u64 alignment covers T's, any bits are a
            // valid f32/f64 (asserted above), and the RefCell borrow keeps it exclusive for `f`.
            let s = unsafe { std::slice::from_raw_parts_mut(buf.as_mut_ptr() as *mut T, len) };
            f(s)
        }
        // Re-entered on this thread (a rayon task stolen while waiting): use a private buffer.
        Err(_) => f(&mut vec![T::ZERO; len]),
    })
}

/// col[(c·kh + i)·kw + j][oy·wo + ox] = x[c][oy·s − p + i][ox·s − p + j] (0 outside).
fn im2col<T: Float>(g: &Conv2dGeom, x: &[T], col: &mut [T]) {
    let per_channel = g.k * g.k * g.ho * g.wo;
    for (c, rows) in col[..g.cin * per_channel].chunks_mut(per_channel).enumerate() {
        im2col_channel(g, x, c, rows);
    }
}

/// im2col split over input channels across the rayon pool: for one image whose GEMM is itself
/// multi-threaded, a serial im2col would otherwise leave the other cores idle.
fn im2col_parallel<T: Float>(g: &Conv2dGeom, x: &[T], col: &mut [T]) {
    let per_channel = g.k * g.k * g.ho * g.wo;
    col[..g.cin * per_channel]
        .par_chunks_mut(per_channel)
        .enumerate()
        .for_each(|(c, rows)| im2col_channel(g, x, c, rows));
}

/// The k·k rows of input channel `c`.
fn im2col_channel<T: Float>(g: &Conv2dGeom, x: &[T], c: usize, rows: &mut [T]) {
    let (h, w, ho, wo) = (g.h as isize, g.w as isize, g.ho, g.wo);
    let (s, p) = (g.stride as isize, g.pad as isize);
    let plane = ho * wo;
    {
        let xc = &x[c * g.h * g.w..(c + 1) * g.h * g.w];
        for i in 0..g.k {
            for j in 0..g.k {
                let row = &mut rows[(i * g.k + j) * plane..][..plane];
                // Output columns whose source column lies inside the image: [lo, hi).
                let off = j as isize - p;
                let lo = if off >= 0 { 0 } else { ((-off + s - 1) / s) as usize }.min(wo);
                let hi = if w - off <= 0 { 0 } else { ((w - off + s - 1) / s) as usize }.clamp(lo, wo);
                for oy in 0..ho {
                    let iy = oy as isize * s - p + i as isize;
                    let out = &mut row[oy * wo..(oy + 1) * wo];
                    if iy < 0 || iy >= h {
                        out.fill(T::ZERO);
                        continue;
                    }
                    let xrow = &xc[iy as usize * g.w..][..g.w];
                    out[..lo].fill(T::ZERO);
                    out[hi..].fill(T::ZERO);
                    let first = (lo as isize * s + off) as usize;
                    if s == 1 {
                        out[lo..hi].copy_from_slice(&xrow[first..first + (hi - lo)]);
                    } else {
                        for (k, o) in out[lo..hi].iter_mut().enumerate() {
                            *o = xrow[first + k * g.stride];
                        }
                    }
                }
            }
        }
    }
}

/// The adjoint of im2col: dx[c][iy][ix] += col[...] for every tap that read it.
fn col2im_add<T: Float>(g: &Conv2dGeom, col: &[T], dx: &mut [T]) {
    let (h, w, ho, wo) = (g.h as isize, g.w as isize, g.ho, g.wo);
    let (s, p) = (g.stride as isize, g.pad as isize);
    let plane = ho * wo;
    for c in 0..g.cin {
        let dxc = &mut dx[c * g.h * g.w..(c + 1) * g.h * g.w];
        for i in 0..g.k {
            for j in 0..g.k {
                let row = &col[((c * g.k + i) * g.k + j) * plane..][..plane];
                let off = j as isize - p;
                let lo = if off >= 0 { 0 } else { ((-off + s - 1) / s) as usize }.min(wo);
                let hi = if w - off <= 0 { 0 } else { ((w - off + s - 1) / s) as usize }.clamp(lo, wo);
                for oy in 0..ho {
                    let iy = oy as isize * s - p + i as isize;
                    if iy < 0 || iy >= h {
                        continue;
                    }
                    let drow = &mut dxc[iy as usize * g.w..][..g.w];
                    let first = (lo as isize * s + off) as usize;
                    let src = &row[oy * wo + lo..oy * wo + hi];
                    if s == 1 {
                        drow[first..first + src.len()].iter_mut().zip(src).for_each(|(d, &v)| *d += v);
                    } else {
                        for (k, &v) in src.iter().enumerate() {
                            drow[first + k * g.stride] += v;
                        }
                    }
                }
            }
        }
    }
}

/// y[n] = W · im2col(x[n]) (+ bias).
pub fn forward<T: Float>(g: &Conv2dGeom, x: &[T], wt: &[T], bias: Option<&[T]>, y: &mut [T]) {
    forward_fused(g, x, wt, Epilogue { bias, residual: None, relu: false }, y)
}

/// The same slice as f32 when T is f32.
fn as_f32<T: Float>(s: &[T]) -> Option<&[f32]> {
    // SAFETY: only when T is f32 (TypeId), so this is the same slice under its own type.
    (TypeId::of::<T>() == TypeId::of::<f32>())
        .then(|| unsafe { std::slice::from_raw_parts(s.as_ptr() as *const f32, s.len()) })
}
fn as_f32_mut<T: Float>(s: &mut [T]) -> Option<&mut [f32]> {
    // SAFETY: only when T is f32 (TypeId), so this is the same exclusive slice under its own type.
    (TypeId::of::<T>() == TypeId::of::<f32>())
        .then(|| unsafe { std::slice::from_raw_parts_mut(s.as_mut_ptr() as *mut f32, s.len()) })
}

/// y[n] = act(W · x[n] + bias + residual[n]): the direct kernel for f32 3×3 pad-1 convs of stride 1
/// or 2 where `choose` takes it, im2col + GEMM otherwise.
pub fn forward_fused<T: Float>(g: &Conv2dGeom, x: &[T], wt: &[T], ep: Epilogue<T>, y: &mut [T]) {
    if let (Some(x32), Some(w32)) = (as_f32(x), as_f32(wt)) {
        if choose(g, Pass::Forward, Arithmetic::F32) == ConvAlgorithm::Direct {
            let ep32 = Epilogue {
                bias: ep.bias.map(|b| as_f32(b).expect("same dtype")),
                residual: ep.residual.map(|r| as_f32(r).expect("same dtype")),
                relu: ep.relu,
            };
            let y32 = as_f32_mut(y).expect("same dtype");
            if direct::forward_fused(g, x32, w32, ep32, y32) {
                return;
            }
        }
    }
    forward_fused_gemm(g, x, wt, ep, y)
}

/// y[n] = act(W · im2col(x[n]) + bias + residual[n]); bias and residual are written first and the
/// GEMM accumulates onto them, so the epilogue costs no extra pass unless there is a ReLU.
pub fn forward_fused_gemm<T: Float>(g: &Conv2dGeom, x: &[T], wt: &[T], ep: Epilogue<T>, y: &mut [T]) {
    let (kk, plane) = (g.cin * g.k * g.k, g.ho * g.wo);
    let (in_len, out_len) = (g.cin * g.h * g.w, g.cout * plane);
    let one = |n: usize, yn: &mut [T], th: usize| {
        let xn = &x[n * in_len..][..in_len];
        let accumulate = ep.bias.is_some() || ep.residual.is_some();
        if accumulate {
            for (co, row) in yn.chunks_mut(plane).enumerate() {
                let b = ep.bias.map_or(T::ZERO, |b| b[co]);
                match ep.residual {
                    Some(r) => {
                        row.iter_mut().zip(&r[n * out_len + co * plane..][..plane]).for_each(|(v, &r)| *v = r + b)
                    }
                    None => row.fill(b),
                }
            }
        }
        let mut run = |rhs: &[T]| {
            T::gemm(
                g.cout,
                plane,
                kk,
                yn,
                plane as isize,
                1,
                accumulate,
                wt,
                kk as isize,
                1,
                rhs,
                plane as isize,
                1,
                th,
            )
        };
        if g.is_pointwise() {
            run(xn)
        } else {
            with_scratch(kk * plane, |col: &mut [T]| {
                if th > 1 {
                    im2col_parallel(g, xn, col)
                } else {
                    im2col(g, xn, col)
                }
                run(col)
            })
        }
        if ep.relu {
            yn.iter_mut().for_each(|v| *v = v.max(T::ZERO));
        }
    };
    if batch_parallel(g) {
        y[..g.n * out_len].par_chunks_mut(out_len).enumerate().for_each(|(n, yn)| one(n, yn, 1));
    } else {
        for (n, yn) in y[..g.n * out_len].chunks_mut(out_len).enumerate() {
            one(n, yn, threads());
        }
    }
}

/// Gradients of conv2d: dx (if asked, overwritten), dW (if asked, accumulated into), db (if asked,
/// overwritten), summed over the batch. Direct kernels for f32 3×3 stride-1 pad-1 convs (as in
/// `forward_fused`), im2col + GEMM otherwise.
pub fn backward<T: Float>(
    g: &Conv2dGeom, x: &[T], wt: &[T], dy: &[T], mut dx: Option<&mut [T]>, mut dw: Option<&mut [T]>,
    db: Option<&mut [T]>,
) {
    if let (Some(x32), Some(w32), Some(dy32)) = (as_f32(x), as_f32(wt), as_f32(dy)) {
        let direct = |pass| choose(g, pass, Arithmetic::F32) == ConvAlgorithm::Direct;
        let (dx_direct, dw_direct) = (direct(Pass::BackwardData), direct(Pass::BackwardWeight));
        if dx_direct || dw_direct {
            let dx32 = if dx_direct { dx.as_deref_mut().map(|d| as_f32_mut(d).expect("same dtype")) } else { None };
            let dw32 = if dw_direct { dw.as_deref_mut().map(|d| as_f32_mut(d).expect("same dtype")) } else { None };
            if (dx32.is_some() || dw32.is_some()) && direct::backward(g, x32, w32, dy32, dx32, dw32) {
                let dx_rest = if dx_direct { None } else { dx };
                let dw_rest = if dw_direct { None } else { dw };
                if dx_rest.is_some() || dw_rest.is_some() {
                    return backward_gemm(g, x, wt, dy, dx_rest, dw_rest, db);
                }
                return bias_grad(g, dy, db);
            }
        }
    }
    backward_gemm(g, x, wt, dy, dx, dw, db)
}

/// `backward` through im2col + GEMM (+ col2im) only.
pub fn backward_gemm<T: Float>(
    g: &Conv2dGeom, x: &[T], wt: &[T], dy: &[T], dx: Option<&mut [T]>, dw: Option<&mut [T]>, db: Option<&mut [T]>,
) {
    let (kk, plane) = (g.cin * g.k * g.k, g.ho * g.wo);
    let (in_len, out_len) = (g.cin * g.h * g.w, g.cout * plane);
    // dW = dy · colᵀ reduces along the contiguous axis of both operands, so whichever the gemm
    // crate takes as its LHS is packed by strided gathers: into a row-major dW it transposes the
    // problem and packs col (kk × plane), into a column-major one (dWᵀ, kk × cout) it packs dy
    // (cout × plane). Pack the smaller: dWᵀ unless cout > kk (e.g. an expanding 1×1, the 3-channel
    // stem) or the plane is tiny (8×8: the K loop is too short for it to matter and dWᵀ measured slower).
    let dw_transposed = dw_transposed(g);
    let mut dwt_store = if dw_transposed && dw.is_some() { vec![T::ZERO; kk * g.cout] } else { Vec::new() };
    let mut dw_final = None;
    let dw = if dw_transposed && dw.is_some() {
        dw_final = dw;
        Some(&mut dwt_store[..])
    } else {
        dw
    };
    let want_dw = dw.is_some();
    // One image: dW[co][kk] += Σ_p dy[co][p]·col[kk][p] (accumulating into `dw_acc`), and dx[n].
    let one = |n: usize, dw_acc: Option<&mut [T]>, dxn: Option<&mut [T]>, th: usize| {
        let dyn_ = &dy[n * out_len..][..out_len];
        let col_work = |col: &mut [T]| {
            if let Some(dw) = dw_acc {
                // x is only saved (and only sliced) when dW is wanted: a frozen weight leaves it empty.
                let xn = &x[n * in_len..][..in_len];
                let rhs: &[T] = if g.is_pointwise() {
                    xn
                } else {
                    im2col(g, xn, col);
                    col
                };
                let (rs, cs) = if dw_transposed { (1, g.cout as isize) } else { (kk as isize, 1) };
                T::gemm(g.cout, kk, plane, dw, rs, cs, true, dyn_, plane as isize, 1, rhs, 1, plane as isize, th);
            }
            if let Some(dxn) = dxn {
                // Pointwise: dx[ci][p] = Σ_co W[co][ci] · dy[co][p] directly (kk = cin); otherwise
                // col = Wᵀ·dy, scattered into dx by col2im.
                let pointwise = g.is_pointwise();
                let dst: &mut [T] = if pointwise { &mut *dxn } else { &mut *col };
                T::gemm(
                    kk,
                    plane,
                    g.cout,
                    dst,
                    plane as isize,
                    1,
                    false,
                    wt,
                    1,
                    kk as isize,
                    dyn_,
                    plane as isize,
                    1,
                    th,
                );
                if !pointwise {
                    dxn.fill(T::ZERO);
                    col2im_add(g, col, dxn);
                }
            }
        };
        if g.is_pointwise() {
            col_work(&mut [])
        } else {
            with_scratch(kk * plane, col_work)
        }
    };
    if batch_parallel(g) {
        // dx per image is independent; dW is summed from per-task partials (each cout·kk, small).
        let dw_len = if want_dw { g.cout * kk } else { 0 };
        let partial = match dx {
            Some(dx) => dx[..g.n * in_len]
                .par_chunks_mut(in_len)
                .enumerate()
                .fold(
                    || vec![T::ZERO; dw_len],
                    |mut acc, (n, dxn)| {
                        one(n, want_dw.then_some(&mut acc[..]), Some(dxn), 1);
                        acc
                    },
                )
                .reduce(|| vec![T::ZERO; dw_len], add_vecs),
            None => (0..g.n)
                .into_par_iter()
                .fold(
                    || vec![T::ZERO; dw_len],
                    |mut acc, n| {
                        one(n, want_dw.then_some(&mut acc[..]), None, 1);
                        acc
                    },
                )
                .reduce(|| vec![T::ZERO; dw_len], add_vecs),
        };
        if let Some(dw) = dw {
            dw.iter_mut().zip(&partial).for_each(|(d, &p)| *d += p);
        }
    } else {
        let (mut dx, mut dw) = (dx, dw);
        for n in 0..g.n {
            let dxn = dx.as_deref_mut().map(|d| &mut d[n * in_len..][..in_len]);
            one(n, dw.as_deref_mut(), dxn, threads());
        }
    }
    if let Some(dw) = dw_final {
        for (co, row) in dw.chunks_mut(kk).take(g.cout).enumerate() {
            row.iter_mut().enumerate().for_each(|(j, d)| *d += dwt_store[j * g.cout + co]);
        }
    }
    bias_grad(g, dy, db)
}

/// Whether the GEMM path computes dWᵀ (see `backward_gemm`): for reductions at least as deep as the output
/// channels over planes of ≥ 256 pixels (the measured crossover, BENCHMARKS.md).
fn dw_transposed(g: &Conv2dGeom) -> bool {
    g.cin * g.k * g.k >= g.cout && g.ho * g.wo >= 256
}

/// db[co] = Σ_n Σ_p dy[n][co][p] (overwritten).
fn bias_grad<T: Float>(g: &Conv2dGeom, dy: &[T], db: Option<&mut [T]>) {
    let (plane, out_len) = (g.ho * g.wo, g.cout * g.ho * g.wo);
    if let Some(db) = db {
        db.fill(T::ZERO);
        for n in 0..g.n {
            for (co, row) in dy[n * out_len..][..out_len].chunks(plane).enumerate() {
                let mut s = T::ZERO;
                row.iter().for_each(|&v| s += v);
                db[co] += s;
            }
        }
    }
}

fn add_vecs<T: Float>(mut a: Vec<T>, b: Vec<T>) -> Vec<T> {
    if a.is_empty() {
        return b;
    }
    a.iter_mut().zip(&b).for_each(|(x, &y)| *x += y);
    a
}
