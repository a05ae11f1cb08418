//! Elementwise ops: relu, add, scale.

pub(crate) mod gpu;

use crate::autograd::BackwardOp;
use crate::by_dtype;
use crate::float::{typed, Float};
use crate::tensor::{same_device, same_dtype, Storage, Tensor};
use anyhow::{bail, Result};

pub fn relu(x: &Tensor) -> Result<Tensor> {
    if x.device().is_gpu() {
        return gpu::relu(x);
    }
    let y = by_dtype!(x.dtype(), T => T::into_storage(typed::<T>(x.storage()).iter().map(|&v| v.max(T::ZERO)).collect()));
    // Backward reads the output's sign (shared storage: nothing extra kept alive).
    Ok(Tensor::from_op_using_output(x.shape().to_vec(), y, |y| ReluBackward { y }, &[x]))
}

struct ReluBackward {
    y: Tensor,
}
impl BackwardOp for ReluBackward {
    fn name(&self) -> &'static str {
        "relu"
    }
    fn backward(&self, dy: &Storage, _needs: &[bool]) -> Result<Vec<Option<Storage>>> {
        let y = &self.y;
        let dx = by_dtype!(dy.dtype(), T => T::into_storage(
            typed::<T>(dy).iter().zip(typed::<T>(y.storage())).map(|(&g, &v)| if v > T::ZERO { g } else { T::ZERO }).collect()
        ));
        Ok(vec![Some(dx)])
    }
}

pub fn add(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    if a.device() != b.device() {
        same_device("add", &[a, b])?;
    }
    same_dtype("add", a, b)?;
    if a.shape() != b.shape() {
        bail!("add: shape mismatch {:?} vs {:?}", a.shape(), b.shape());
    }
    if same_device("add", &[a, b])?.is_gpu() {
        return gpu::add(a, b);
    }
    let y = by_dtype!(a.dtype(), T => T::into_storage(
        typed::<T>(a.storage()).iter().zip(typed::<T>(b.storage())).map(|(&x, &y)| x + y).collect()
    ));
    Ok(Tensor::from_op(a.shape().to_vec(), y, AddBackward, &[a, b]))
}

struct AddBackward;
impl BackwardOp for AddBackward {
    fn name(&self) -> &'static str {
        "add"
    }
    fn backward(&self, dy: &Storage, needs: &[bool]) -> Result<Vec<Option<Storage>>> {
        Ok(vec![needs[0].then(|| dy.clone()), needs[1].then(|| dy.clone())])
    }
}

/// y = x · s for a constant s.
pub fn scale(x: &Tensor, s: f64) -> Result<Tensor> {
    if x.device().is_gpu() {
        return gpu::scale(x, s);
    }
    let y = by_dtype!(x.dtype(), T => {
        let k = T::from_f64(s);
        T::into_storage(typed::<T>(x.storage()).iter().map(|&v| v * k).collect())
    });
    Ok(Tensor::from_op(x.shape().to_vec(), y, ScaleBackward(s), &[x]))
}

struct ScaleBackward(f64);
impl BackwardOp for ScaleBackward {
    fn name(&self) -> &'static str {
        "scale"
    }
    fn backward(&self, dy: &Storage, _needs: &[bool]) -> Result<Vec<Option<Storage>>> {
        let dx = by_dtype!(dy.dtype(), T => {
            let k = T::from_f64(self.0);
            T::into_storage(typed::<T>(dy).iter().map(|&v| v * k).collect())
        });
        Ok(vec![Some(dx)])
    }
}
