//! Elementwise ops: relu, add, scale.

pub(crate) mod gpu;

use crate::autograd::BackwardOp;
use crate::by_dtype;
use crate::float::{typed, typed_mut, Float};
use crate::tensor::{same_device, same_dtype, Storage, Tensor};
use anyhow::{bail, Result};

pub fn relu(x: &Tensor) -> Result<Tensor> {
    if x.device().is_gpu() {
        return gpu::relu(x);
    }
    let mut y = Storage::for_overwrite(x.dtype(), x.numel());
    by_dtype!(x.dtype(), T => {
        typed_mut::<T>(&mut y).iter_mut().zip(typed::<T>(x.storage())).for_each(|(o, &v)| *o = v.max(T::ZERO))
    });
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
    fn backward(&self, dy: &Storage, needs: &[bool]) -> Result<Vec<Option<Storage>>> {
        self.backward_owned(dy.clone(), needs)
    }
    fn backward_owned(&self, mut dy: Storage, _needs: &[bool]) -> Result<Vec<Option<Storage>>> {
        // The gradient is masked in place: dx = dy where y > 0, else 0.
        by_dtype!(dy.dtype(), T => {
            typed_mut::<T>(&mut dy).iter_mut().zip(typed::<T>(self.y.storage())).for_each(|(g, &v)| {
                *g = if v > T::ZERO { *g } else { T::ZERO }
            })
        });
        Ok(vec![Some(dy)])
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
    let mut y = Storage::for_overwrite(a.dtype(), a.numel());
    by_dtype!(a.dtype(), T => {
        let out = typed_mut::<T>(&mut y).iter_mut();
        out.zip(typed::<T>(a.storage()).iter().zip(typed::<T>(b.storage()))).for_each(|(o, (&x, &y))| *o = x + y)
    });
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
    fn backward_owned(&self, dy: Storage, needs: &[bool]) -> Result<Vec<Option<Storage>>> {
        // Both inputs get dy: the second one takes the buffer itself, the first a copy.
        Ok(match needs {
            [true, true] => vec![Some(dy.clone()), Some(dy)],
            [true, false] => vec![Some(dy), None],
            [false, true] => vec![None, Some(dy)],
            _ => vec![None, None],
        })
    }
}

/// relu(a + b) in one op (a residual block's and a fuse row's last step): one pass forward; the
/// backward masks the gradient once and hands it to both inputs.
pub fn add_relu(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    same_dtype("add", a, b)?;
    if a.shape() != b.shape() {
        bail!("add: shape mismatch {:?} vs {:?}", a.shape(), b.shape());
    }
    if same_device("add", &[a, b])?.is_gpu() {
        return relu(&gpu::add(a, b)?);
    }
    let mut y = Storage::for_overwrite(a.dtype(), a.numel());
    by_dtype!(a.dtype(), T => {
        let out = typed_mut::<T>(&mut y).iter_mut();
        out.zip(typed::<T>(a.storage()).iter().zip(typed::<T>(b.storage()))).for_each(|(o, (&x, &y))| *o = (x + y).max(T::ZERO))
    });
    Ok(Tensor::from_op_using_output(a.shape().to_vec(), y, |y| AddReluBackward { y }, &[a, b]))
}

struct AddReluBackward {
    y: Tensor,
}
impl BackwardOp for AddReluBackward {
    fn name(&self) -> &'static str {
        "add_relu"
    }
    fn trace_name(&self) -> &'static str {
        "relu"
    }
    fn backward(&self, dy: &Storage, needs: &[bool]) -> Result<Vec<Option<Storage>>> {
        self.backward_owned(dy.clone(), needs)
    }
    fn backward_owned(&self, dy: Storage, needs: &[bool]) -> Result<Vec<Option<Storage>>> {
        let masked = ReluBackward { y: self.y.clone() }.backward_owned(dy, &[true])?.pop().flatten();
        let Some(g) = masked else { bail!("add_relu: relu backward gave no gradient") };
        AddBackward.backward_owned(g, needs)
    }
}

/// y = x · s for a constant s.
pub fn scale(x: &Tensor, s: f64) -> Result<Tensor> {
    if x.device().is_gpu() {
        return gpu::scale(x, s);
    }
    let mut y = Storage::for_overwrite(x.dtype(), x.numel());
    by_dtype!(x.dtype(), T => {
        let k = T::from_f64(s);
        typed_mut::<T>(&mut y).iter_mut().zip(typed::<T>(x.storage())).for_each(|(o, &v)| *o = v * k)
    });
    Ok(Tensor::from_op(x.shape().to_vec(), y, ScaleBackward(s), &[x]))
}

struct ScaleBackward(f64);
impl BackwardOp for ScaleBackward {
    fn name(&self) -> &'static str {
        "scale"
    }
    fn backward(&self, dy: &Storage, needs: &[bool]) -> Result<Vec<Option<Storage>>> {
        self.backward_owned(dy.clone(), needs)
    }
    fn backward_owned(&self, mut dy: Storage, _needs: &[bool]) -> Result<Vec<Option<Storage>>> {
        by_dtype!(dy.dtype(), T => {
            let k = T::from_f64(self.0);
            typed_mut::<T>(&mut dy).iter_mut().for_each(|v| *v = *v * k)
        });
        Ok(vec![Some(dy)])
    }
}
