//! Plain host-side named arrays: the exchange format between file formats (safetensors, .pth),
//! the data pipeline and the engine's `Tensor`. No autograd, no device.

/// Element data of a host array. Floating data used by the model is f32; checkpoints also
/// carry i64 (`num_batches_tracked`) and may carry f16 (converted on load).
#[derive(Clone, Debug, PartialEq)]
pub enum HostData {
    F32(Vec<f32>),
    F64(Vec<f64>),
    I64(Vec<i64>),
}

/// A dense, row-major (C-order) array with a shape.
#[derive(Clone, Debug, PartialEq)]
pub struct HostTensor {
    pub shape: Vec<usize>,
    pub data: HostData,
}

impl HostData {
    pub fn len(&self) -> usize {
        match self {
            HostData::F32(v) => v.len(),
            HostData::F64(v) => v.len(),
            HostData::I64(v) => v.len(),
        }
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    pub fn dtype_name(&self) -> &'static str {
        match self {
            HostData::F32(_) => "f32",
            HostData::F64(_) => "f64",
            HostData::I64(_) => "i64",
        }
    }
}

impl HostTensor {
    pub fn f32(shape: Vec<usize>, data: Vec<f32>) -> Self {
        debug_assert_eq!(shape.iter().product::<usize>(), data.len());
        HostTensor { shape, data: HostData::F32(data) }
    }
    pub fn i64(shape: Vec<usize>, data: Vec<i64>) -> Self {
        debug_assert_eq!(shape.iter().product::<usize>(), data.len());
        HostTensor { shape, data: HostData::I64(data) }
    }
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
    /// The values as f32 (i64 and f64 converted).
    pub fn to_f32_vec(&self) -> Vec<f32> {
        match &self.data {
            HostData::F32(v) => v.clone(),
            HostData::F64(v) => v.iter().map(|&x| x as f32).collect(),
            HostData::I64(v) => v.iter().map(|&x| x as f32).collect(),
        }
    }
    /// The values as f64 (exact for f32 and small i64).
    pub fn to_f64_vec(&self) -> Vec<f64> {
        match &self.data {
            HostData::F32(v) => v.iter().map(|&x| x as f64).collect(),
            HostData::F64(v) => v.clone(),
            HostData::I64(v) => v.iter().map(|&x| x as f64).collect(),
        }
    }
}
