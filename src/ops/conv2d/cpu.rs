//! CPU conv2d kernels: im2col (one image at a time, so the column buffer never exceeds one image's)
//! feeding the `gemm` crate; 1x1 stride-1 unpadded convs skip im2col entirely.

use super::Conv2dGeom;
use crate::float::Float;

fn threads() -> usize {
    rayon::current_num_threads()
}

/// col[(c·kh + i)·kw + j][oy·wo + ox] = x[c][oy·s − p + i][ox·s − p + j] (0 outside).
fn im2col<T: Float>(g: &Conv2dGeom, x: &[T], col: &mut [T]) {
    let (h, w, ho, wo) = (g.h as isize, g.w as isize, g.ho, g.wo);
    let (s, p) = (g.stride as isize, g.pad as isize);
    let plane = ho * wo;
    for c in 0..g.cin {
        let xc = &x[c * g.h * g.w..(c + 1) * g.h * g.w];
        for i in 0..g.k {
            for j in 0..g.k {
                let row = &mut col[((c * g.k + i) * g.k + j) * plane..][..plane];
                for oy in 0..ho {
                    let iy = oy as isize * s - p + i as isize;
                    let out = &mut row[oy * wo..(oy + 1) * wo];
                    if iy < 0 || iy >= h {
                        out.fill(T::ZERO);
                        continue;
                    }
                    let xrow = &xc[iy as usize * g.w..][..g.w];
                    for (ox, o) in out.iter_mut().enumerate() {
                        let ix = ox as isize * s - p + j as isize;
                        *o = if ix >= 0 && ix < w { xrow[ix as usize] } else { T::ZERO };
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
                for oy in 0..ho {
                    let iy = oy as isize * s - p + i as isize;
                    if iy < 0 || iy >= h {
                        continue;
                    }
                    let drow = &mut dxc[iy as usize * g.w..][..g.w];
                    for (ox, &v) in row[oy * wo..(oy + 1) * wo].iter().enumerate() {
                        let ix = ox as isize * s - p + j as isize;
                        if ix >= 0 && ix < w {
                            drow[ix as usize] += v;
                        }
                    }
                }
            }
        }
    }
}

/// y[n] = W · im2col(x[n]) (+ bias).
pub fn forward<T: Float>(g: &Conv2dGeom, x: &[T], wt: &[T], bias: Option<&[T]>, y: &mut [T]) {
    let (kk, plane) = (g.cin * g.k * g.k, g.ho * g.wo);
    let mut col = if g.is_pointwise() { Vec::new() } else { vec![T::ZERO; kk * plane] };
    for n in 0..g.n {
        let xn = &x[n * g.cin * g.h * g.w..][..g.cin * g.h * g.w];
        let yn = &mut y[n * g.cout * plane..][..g.cout * plane];
        let rhs: &[T] = if g.is_pointwise() {
            xn
        } else {
            im2col(g, xn, &mut col);
            &col
        };
        T::gemm(g.cout, plane, kk, yn, plane as isize, false, wt, kk as isize, 1, rhs, plane as isize, 1, threads());
        if let Some(b) = bias {
            for (co, row) in yn.chunks_mut(plane).enumerate() {
                row.iter_mut().for_each(|v| *v += b[co]);
            }
        }
    }
}

/// Gradients of conv2d: dx (if asked), dW (if asked), db (if asked), accumulated over the batch.
pub fn backward<T: Float>(
    g: &Conv2dGeom,
    x: &[T],
    wt: &[T],
    dy: &[T],
    mut dx: Option<&mut [T]>,
    mut dw: Option<&mut [T]>,
    db: Option<&mut [T]>,
) {
    let (kk, plane) = (g.cin * g.k * g.k, g.ho * g.wo);
    let mut col = if g.is_pointwise() { Vec::new() } else { vec![T::ZERO; kk * plane] };
    for n in 0..g.n {
        let xn = &x[n * g.cin * g.h * g.w..][..g.cin * g.h * g.w];
        let dyn_ = &dy[n * g.cout * plane..][..g.cout * plane];
        if let Some(dw) = dw.as_deref_mut() {
            let rhs: &[T] = if g.is_pointwise() {
                xn
            } else {
                im2col(g, xn, &mut col);
                &col
            };
            // dW[co][kk] += Σ_p dy[co][p] · col[kk][p]  (col read transposed)
            T::gemm(g.cout, kk, plane, dw, kk as isize, true, dyn_, plane as isize, 1, rhs, 1, plane as isize, threads());
        }
        if let Some(dx) = dx.as_deref_mut() {
            let dxn = &mut dx[n * g.cin * g.h * g.w..][..g.cin * g.h * g.w];
            if g.is_pointwise() {
                // dx[ci][p] = Σ_co W[co][ci] · dy[co][p]
                T::gemm(g.cin, plane, g.cout, dxn, plane as isize, false, wt, 1, kk as isize, dyn_, plane as isize, 1, threads());
            } else {
                T::gemm(kk, plane, g.cout, &mut col, plane as isize, false, wt, 1, kk as isize, dyn_, plane as isize, 1, threads());
                dxn.fill(T::ZERO);
                col2im_add(g, &col, dxn);
            }
        }
    }
    if let Some(db) = db {
        db.fill(T::ZERO);
        for n in 0..g.n {
            for (co, row) in dy[n * g.cout * plane..][..g.cout * plane].chunks(plane).enumerate() {
                let mut s = T::ZERO;
                row.iter().for_each(|&v| s += v);
                db[co] += s;
            }
        }
    }
}
