//! PReLU on host storage (f32 and f64).

use super::PreluKernel;
use crate::by_dtype;
use crate::float::{typed, typed_mut, Float};
use crate::ops::Cpu;
use crate::tensor::Storage;
use anyhow::Result;

impl PreluKernel for Cpu {
    fn forward(&self, [_, c, hw]: [usize; 3], x: &Storage, slopes: &Storage) -> Result<Storage> {
        let mut y = Storage::for_overwrite(x.dtype(), x.len(), "prelu output")?;
        by_dtype!(x.dtype(), T => {
            let a = typed::<T>(slopes);
            let planes = typed_mut::<T>(&mut y).chunks_mut(hw.max(1)).zip(typed::<T>(x).chunks(hw.max(1)));
            for (plane, (out, inp)) in planes.enumerate() {
                let slope = a[plane % c];
                out.iter_mut().zip(inp).for_each(|(o, &v)| *o = if v > T::ZERO { v } else { slope * v });
            }
        });
        Ok(y)
    }
}
