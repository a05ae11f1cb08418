//! The element types of stored tensors, shared by the `.pth` and safetensors readers: their sizes,
//! their names in each format and one decoder to host values (f16/bf16 widen to f32, integers to i64).

use crate::host_tensor::HostData;

/// Element type of a stored tensor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StorageDtype {
    F32,
    F64,
    F16,
    BF16,
    I64,
    I32,
    I16,
    I8,
    U8,
    Bool,
}

impl StorageDtype {
    pub fn elem_size(self) -> usize {
        match self {
            StorageDtype::F32 | StorageDtype::I32 => 4,
            StorageDtype::F64 | StorageDtype::I64 => 8,
            StorageDtype::F16 | StorageDtype::BF16 | StorageDtype::I16 => 2,
            StorageDtype::I8 | StorageDtype::U8 | StorageDtype::Bool => 1,
        }
    }

    /// From a torch storage class name (`FloatStorage`, ...).
    pub fn from_torch_class(name: &str) -> Option<StorageDtype> {
        Some(match name {
            "FloatStorage" => StorageDtype::F32,
            "DoubleStorage" => StorageDtype::F64,
            "HalfStorage" => StorageDtype::F16,
            "BFloat16Storage" => StorageDtype::BF16,
            "LongStorage" => StorageDtype::I64,
            "IntStorage" => StorageDtype::I32,
            "ShortStorage" => StorageDtype::I16,
            "CharStorage" => StorageDtype::I8,
            "ByteStorage" => StorageDtype::U8,
            "BoolStorage" => StorageDtype::Bool,
            _ => return None,
        })
    }

    /// From a safetensors dtype name; hrk reads the float and wide integer types only.
    pub fn from_safetensors(name: &str) -> Option<StorageDtype> {
        Some(match name {
            "F32" => StorageDtype::F32,
            "F64" => StorageDtype::F64,
            "F16" => StorageDtype::F16,
            "BF16" => StorageDtype::BF16,
            "I64" => StorageDtype::I64,
            "I32" => StorageDtype::I32,
            _ => return None,
        })
    }
}

/// Decodes the little-endian elements at the given indices of `raw` (the caller checked the range).
pub fn decode_at(dtype: StorageDtype, raw: &[u8], idx: impl Iterator<Item = usize>) -> HostData {
    let es = dtype.elem_size();
    let at = |i: usize| &raw[i * es..i * es + es];
    match dtype {
        StorageDtype::F32 => HostData::F32(idx.map(|i| f32::from_le_bytes(at(i).try_into().expect("4"))).collect()),
        StorageDtype::F64 => HostData::F64(idx.map(|i| f64::from_le_bytes(at(i).try_into().expect("8"))).collect()),
        StorageDtype::F16 => {
            HostData::F32(idx.map(|i| half::f16::from_le_bytes(at(i).try_into().expect("2")).to_f32()).collect())
        }
        StorageDtype::BF16 => {
            HostData::F32(idx.map(|i| half::bf16::from_le_bytes(at(i).try_into().expect("2")).to_f32()).collect())
        }
        StorageDtype::I64 => HostData::I64(idx.map(|i| i64::from_le_bytes(at(i).try_into().expect("8"))).collect()),
        StorageDtype::I32 => {
            HostData::I64(idx.map(|i| i32::from_le_bytes(at(i).try_into().expect("4")) as i64).collect())
        }
        StorageDtype::I16 => {
            HostData::I64(idx.map(|i| i16::from_le_bytes(at(i).try_into().expect("2")) as i64).collect())
        }
        StorageDtype::I8 => HostData::I64(idx.map(|i| at(i)[0] as i8 as i64).collect()),
        StorageDtype::U8 | StorageDtype::Bool => HostData::I64(idx.map(|i| at(i)[0] as i64).collect()),
    }
}
