//! Ceil-mode max-pool on host storage (f32 and f64), PyTorch's NaN rule (a NaN wins and stays).

use super::{MaxPoolKernel, PoolGeom};
use crate::by_dtype;
use crate::float::{typed, typed_mut};
use crate::ops::Cpu;
use crate::tensor::Storage;
use anyhow::Result;

impl MaxPoolKernel for Cpu {
    fn forward(&self, g: &PoolGeom, x: &Storage) -> Result<Storage> {
        let mut y = Storage::for_overwrite(x.dtype(), g.planes * g.ho * g.wo, "max_pool output")?;
        by_dtype!(x.dtype(), T => {
            let src = typed::<T>(x);
            let out = typed_mut::<T>(&mut y);
            for p in 0..g.planes {
                let plane = &src[p * g.h * g.w..(p + 1) * g.h * g.w];
                for oy in 0..g.ho {
                    let (y0, y1) = (oy * g.stride, (oy * g.stride + g.k).min(g.h));
                    for ox in 0..g.wo {
                        let (x0, x1) = (ox * g.stride, (ox * g.stride + g.k).min(g.w));
                        let mut best = T::NEG_INFINITY;
                        for row in plane[y0 * g.w..y1 * g.w].chunks(g.w) {
                            for &v in &row[x0..x1] {
                                if v > best || v.is_nan() {
                                    best = v;
                                }
                            }
                        }
                        out[(p * g.ho + oy) * g.wo + ox] = best;
                    }
                }
            }
        });
        Ok(y)
    }
}
