//! Upsampling to a given size: bilinear with align_corners=false and nearest, PyTorch semantics
//! (source coordinate from scale = in/out, so non-integer ratios behave like `F.interpolate(size=…)`).

mod gpu;

use crate::autograd::BackwardOp;
use crate::by_dtype;
use crate::float::{typed, Float};
use crate::tensor::{Storage, Tensor};
use anyhow::{bail, Result};

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

fn check(op: &str, x: &Tensor, size: [usize; 2]) -> Result<[usize; 4]> {
    let d = x.dims4(op)?;
    if size[0] == 0 || size[1] == 0 || d[2] == 0 || d[3] == 0 {
        bail!("{op}: cannot resize {:?} to {:?}", x.shape(), size);
    }
    Ok(d)
}

pub fn upsample_bilinear(x: &Tensor, size: [usize; 2]) -> Result<Tensor> {
    let d = check("upsample_bilinear", x, size)?;
    if x.device().is_gpu() {
        return gpu::bilinear(x, d, size);
    }
    let [n, c, h, w] = d;
    let [ho, wo] = size;
    let y = by_dtype!(x.dtype(), T => {
        let xv: &[T] = typed(x.storage());
        let (ty, tx) = (bilinear_taps::<T>(h, ho), bilinear_taps::<T>(w, wo));
        let mut y = vec![T::ZERO; n * c * ho * wo];
        for p in 0..n * c {
            let src = &xv[p * h * w..][..h * w];
            let dst = &mut y[p * ho * wo..][..ho * wo];
            for (oy, &(y0, y1, ly0, ly1)) in ty.iter().enumerate() {
                for (ox, &(x0, x1, lx0, lx1)) in tx.iter().enumerate() {
                    dst[oy * wo + ox] = ly0 * (lx0 * src[y0 * w + x0] + lx1 * src[y0 * w + x1])
                        + ly1 * (lx0 * src[y1 * w + x0] + lx1 * src[y1 * w + x1]);
                }
            }
        }
        T::into_storage(y)
    });
    Ok(Tensor::from_op(vec![n, c, ho, wo], y, UpsampleBackward { dims: d, size, bilinear: true }, &[x]))
}

/// PyTorch 'nearest': src = min(floor(dst·in/out), in − 1).
fn nearest_taps(input: usize, output: usize) -> Vec<usize> {
    let scale = input as f32 / output as f32;
    (0..output).map(|d| ((d as f32 * scale).floor() as usize).min(input - 1)).collect()
}

pub fn upsample_nearest(x: &Tensor, size: [usize; 2]) -> Result<Tensor> {
    let d = check("upsample_nearest", x, size)?;
    if x.device().is_gpu() {
        bail!("upsample_nearest: no kernel for the {} device (only bilinear runs on the GPU); move the tensor to the cpu", x.device());
    }
    let [n, c, h, w] = d;
    let [ho, wo] = size;
    let (ty, tx) = (nearest_taps(h, ho), nearest_taps(w, wo));
    let y = by_dtype!(x.dtype(), T => {
        let xv: &[T] = typed(x.storage());
        let mut y = vec![T::ZERO; n * c * ho * wo];
        for p in 0..n * c {
            for (oy, &iy) in ty.iter().enumerate() {
                for (ox, &ix) in tx.iter().enumerate() {
                    y[p * ho * wo + oy * wo + ox] = xv[p * h * w + iy * w + ix];
                }
            }
        }
        T::into_storage(y)
    });
    Ok(Tensor::from_op(vec![n, c, ho, wo], y, UpsampleBackward { dims: d, size, bilinear: false }, &[x]))
}

struct UpsampleBackward {
    dims: [usize; 4],
    size: [usize; 2],
    bilinear: bool,
}

impl BackwardOp for UpsampleBackward {
    fn name(&self) -> &'static str {
        if self.bilinear {
            "upsample_bilinear"
        } else {
            "upsample_nearest"
        }
    }
    fn backward(&self, dy: &Storage, _needs: &[bool]) -> Result<Vec<Option<Storage>>> {
        let [n, c, h, w] = self.dims;
        let [ho, wo] = self.size;
        let dx = by_dtype!(dy.dtype(), T => {
            let g: &[T] = typed(dy);
            let mut dx = vec![T::ZERO; n * c * h * w];
            if self.bilinear {
                let (ty, tx) = (bilinear_taps::<T>(h, ho), bilinear_taps::<T>(w, wo));
                for p in 0..n * c {
                    let dst = &mut dx[p * h * w..][..h * w];
                    let src = &g[p * ho * wo..][..ho * wo];
                    for (oy, &(y0, y1, ly0, ly1)) in ty.iter().enumerate() {
                        for (ox, &(x0, x1, lx0, lx1)) in tx.iter().enumerate() {
                            let v = src[oy * wo + ox];
                            dst[y0 * w + x0] += ly0 * lx0 * v;
                            dst[y0 * w + x1] += ly0 * lx1 * v;
                            dst[y1 * w + x0] += ly1 * lx0 * v;
                            dst[y1 * w + x1] += ly1 * lx1 * v;
                        }
                    }
                }
            } else {
                let (ty, tx) = (nearest_taps(h, ho), nearest_taps(w, wo));
                for p in 0..n * c {
                    for (oy, &iy) in ty.iter().enumerate() {
                        for (ox, &ix) in tx.iter().enumerate() {
                            dx[p * h * w + iy * w + ix] += g[p * ho * wo + oy * wo + ox];
                        }
                    }
                }
            }
            T::into_storage(dx)
        });
        Ok(vec![Some(dx)])
    }
}
