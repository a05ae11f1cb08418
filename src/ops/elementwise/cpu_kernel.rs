//! relu, add and scale on host storage (f32 and f64; plain loops the compiler vectorises, large tensors
//! split over the threads by [`par_zip`]).

use super::EltwiseKernel;
use crate::by_dtype;
use crate::float::{par_zip, typed, typed_mut, Float};
use crate::ops::Cpu;
use crate::tensor::Storage;
use anyhow::Result;

impl EltwiseKernel for Cpu {
    fn relu(&self, x: &Storage) -> Result<Storage> {
        let mut y = Storage::for_overwrite(x.dtype(), x.len(), "elementwise output")?;
        by_dtype!(x.dtype(), T => {
            par_zip(typed_mut::<T>(&mut y), [typed::<T>(x)], |out, [x]| {
                out.iter_mut().zip(x).for_each(|(o, &v)| *o = v.max(T::ZERO))
            })
        });
        Ok(y)
    }
    fn relu_backward(&self, y: &Storage, mut dy: Storage) -> Result<Storage> {
        // The gradient is masked in place: dx = dy where y > 0, else 0.
        by_dtype!(dy.dtype(), T => {
            par_zip(typed_mut::<T>(&mut dy), [typed::<T>(y)], |dy, [y]| {
                dy.iter_mut().zip(y).for_each(|(g, &v)| *g = if v > T::ZERO { *g } else { T::ZERO })
            })
        });
        Ok(dy)
    }
    fn add(&self, a: &Storage, b: &Storage) -> Result<Storage> {
        let mut y = Storage::for_overwrite(a.dtype(), a.len(), "add output")?;
        by_dtype!(a.dtype(), T => {
            par_zip(typed_mut::<T>(&mut y), [typed::<T>(a), typed::<T>(b)], |out, [a, b]| {
                out.iter_mut().zip(a.iter().zip(b)).for_each(|(o, (&x, &y))| *o = x + y)
            })
        });
        Ok(y)
    }
    fn add_relu(&self, a: &Storage, b: &Storage) -> Result<Storage> {
        // One pass: the sum is never stored.
        let mut y = Storage::for_overwrite(a.dtype(), a.len(), "add output")?;
        by_dtype!(a.dtype(), T => {
            par_zip(typed_mut::<T>(&mut y), [typed::<T>(a), typed::<T>(b)], |out, [a, b]| {
                out.iter_mut().zip(a.iter().zip(b)).for_each(|(o, (&x, &y))| *o = (x + y).max(T::ZERO))
            })
        });
        Ok(y)
    }
    fn scale(&self, x: &Storage, s: f64) -> Result<Storage> {
        let mut y = Storage::for_overwrite(x.dtype(), x.len(), "elementwise output")?;
        by_dtype!(x.dtype(), T => {
            let k = T::from_f64(s);
            par_zip(typed_mut::<T>(&mut y), [typed::<T>(x)], |out, [x]| {
                out.iter_mut().zip(x).for_each(|(o, &v)| *o = v * k)
            })
        });
        Ok(y)
    }
    fn scale_owned(&self, mut x: Storage, s: f64) -> Result<Storage> {
        by_dtype!(x.dtype(), T => {
            let k = T::from_f64(s);
            par_zip(typed_mut::<T>(&mut x), [], |x, []: [&[T]; 0]| x.iter_mut().for_each(|v| *v *= k))
        });
        Ok(x)
    }
}
