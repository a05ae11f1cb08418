//! Adam and SGD steps on host storage (f32 and f64), in place.

use super::{Hyper, OptimKernel};
use crate::by_dtype;
use crate::float::{typed, typed_mut, Float};
use crate::ops::Cpu;
use crate::tensor::{Storage, Tensor};
use anyhow::Result;

impl OptimKernel for Cpu {
    fn adam(&self, p: &mut Tensor, grad: &Storage, m: &mut Storage, v: &mut Storage, h: &Hyper) -> Result<()> {
        by_dtype!(p.dtype(), T => {
            let g: &[T] = typed(grad);
            let (m, v) = (typed_mut::<T>(m), typed_mut::<T>(v));
            let (b1, b2, wd) = (T::from_f64(h.beta1), T::from_f64(h.beta2), T::from_f64(h.weight_decay));
            let (eps, ss, bc2s) = (T::from_f64(h.eps), T::from_f64(h.lr), T::from_f64(h.bc2_sqrt));
            p.update(|s| {
                for (((pv, &gv), mv), vv) in typed_mut::<T>(s).iter_mut().zip(g).zip(m.iter_mut()).zip(v.iter_mut()) {
                    let gv = if h.weight_decay != 0.0 { gv + wd * *pv } else { gv };
                    *mv = *mv + (T::ONE - b1) * (gv - *mv);
                    *vv = b2 * *vv + (T::ONE - b2) * gv * gv;
                    let denom = vv.sqrt() / bc2s + eps;
                    *pv -= ss * (*mv / denom);
                }
            })
        })
    }

    fn sgd(&self, p: &mut Tensor, grad: &Storage, momentum_buf: Option<&mut Storage>, h: &Hyper) -> Result<()> {
        by_dtype!(p.dtype(), T => {
            let g: &[T] = typed(grad);
            let (mu, damp, wd, lr) = (T::from_f64(h.momentum), T::from_f64(h.dampening), T::from_f64(h.weight_decay), T::from_f64(h.lr));
            let mut buf = momentum_buf.map(typed_mut::<T>);
            p.update(|s| {
                for (j, pv) in typed_mut::<T>(s).iter_mut().enumerate() {
                    let mut d = g[j];
                    if h.weight_decay != 0.0 {
                        d += wd * *pv;
                    }
                    if let Some(b) = buf.as_deref_mut() {
                        b[j] = if h.first_step { d } else { mu * b[j] + (T::ONE - damp) * d };
                        d = if h.nesterov { d + mu * b[j] } else { b[j] };
                    }
                    *pv -= lr * d;
                }
            })
        })
    }
}
