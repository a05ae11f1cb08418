//! The safetensors format, read and written here directly: an 8-byte little-endian header
//! length, a JSON header (tensor name → dtype, shape, data_offsets; optional `__metadata__`
//! string map), then the raw little-endian data. Everything in the header is validated.

use super::dtype::{decode_at, StorageDtype};
use crate::atomic_file::write_atomically;
use crate::host_tensor::{HostData, HostTensor};
use anyhow::{anyhow, bail, Result};
use serde::de::{Deserialize, Deserializer, MapAccess, Visitor};
use serde_json::Value;
use std::collections::HashSet;
use std::path::Path;

/// Headers larger than this are refused (real ones are kilobytes).
pub const MAX_HEADER_LEN: u64 = 100 << 20;
const MAX_NDIM: usize = 32;

/// The tensors of a safetensors file in header order, and its `__metadata__` entries.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SafeTensors {
    pub tensors: Vec<(String, HostTensor)>,
    pub metadata: Vec<(String, String)>,
}

/// JSON object entries in file order (serde_json's own map would sort them).
struct OrderedObject(Vec<(String, Value)>);

/// The header: tensor entries in file order, and `__metadata__` (also in file order).
struct Header {
    entries: Vec<(String, Value)>,
    metadata: Option<OrderedObject>,
    duplicate: Option<String>,
}

impl<'de> Deserialize<'de> for OrderedObject {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = OrderedObject;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> std::result::Result<OrderedObject, A::Error> {
                let mut v = Vec::new();
                while let Some(entry) = m.next_entry::<String, Value>()? {
                    v.push(entry);
                }
                Ok(OrderedObject(v))
            }
        }
        d.deserialize_map(V)
    }
}

impl<'de> Deserialize<'de> for Header {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Header;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> std::result::Result<Header, A::Error> {
                let mut h = Header { entries: Vec::new(), metadata: None, duplicate: None };
                while let Some(k) = m.next_key::<String>()? {
                    if k == "__metadata__" {
                        if h.metadata.is_some() {
                            h.duplicate.get_or_insert(k.clone());
                        }
                        h.metadata = Some(m.next_value::<OrderedObject>()?);
                    } else {
                        let v = m.next_value::<Value>()?;
                        h.entries.push((k, v));
                    }
                }
                Ok(h)
            }
        }
        d.deserialize_map(V)
    }
}

fn u64_of(v: &Value, what: &str, name: &str) -> Result<u64> {
    v.as_u64().ok_or_else(|| anyhow!("tensor '{name}': {what} holds {v} (not a non-negative integer)"))
}

/// Parses a whole safetensors file held in memory.
pub fn read_safetensors_bytes(bytes: &[u8]) -> Result<SafeTensors> {
    if bytes.len() < 8 {
        bail!("safetensors file shorter than its 8-byte header length");
    }
    let header_len = u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes"));
    if header_len > MAX_HEADER_LEN {
        bail!("safetensors header length {header_len} exceeds the {MAX_HEADER_LEN}-byte limit");
    }
    if header_len > (bytes.len() - 8) as u64 {
        bail!("safetensors header length {header_len} runs past the end of the {}-byte file", bytes.len());
    }
    let header = &bytes[8..8 + header_len as usize];
    let data = &bytes[8 + header_len as usize..];
    if header.first() != Some(&b'{') {
        bail!("safetensors header does not start with '{{'");
    }
    let header = std::str::from_utf8(header).map_err(|_| anyhow!("safetensors header is not UTF-8"))?;
    let parsed: Header =
        serde_json::from_str(header.trim_end_matches(' ')).map_err(|e| anyhow!("safetensors header JSON: {e}"))?;
    if let Some(k) = parsed.duplicate {
        bail!("safetensors header repeats the key '{k}'");
    }

    let mut out = SafeTensors::default();
    let mut seen = HashSet::new();
    // (begin, end, name) of every tensor, for the overlap check.
    let mut spans: Vec<(u64, u64, usize)> = Vec::new();
    let mut layouts = Vec::new();
    if let Some(OrderedObject(meta)) = parsed.metadata {
        for (k, x) in meta {
            let s = x.as_str().ok_or_else(|| anyhow!("__metadata__ entry '{k}' is not a string"))?;
            out.metadata.push((k, s.to_string()));
        }
    }
    for (name, v) in parsed.entries {
        if !seen.insert(name.clone()) {
            bail!("safetensors header repeats the key '{name}'");
        }
        let obj = v.as_object().ok_or_else(|| anyhow!("tensor '{name}': header entry is not an object"))?;
        let dtype_name =
            obj.get("dtype").and_then(Value::as_str).ok_or_else(|| anyhow!("tensor '{name}': missing dtype"))?;
        let dtype = StorageDtype::from_safetensors(dtype_name)
            .ok_or_else(|| anyhow!("tensor '{name}': unsupported dtype {dtype_name}"))?;
        let shape_v =
            obj.get("shape").and_then(Value::as_array).ok_or_else(|| anyhow!("tensor '{name}': missing shape"))?;
        if shape_v.len() > MAX_NDIM {
            bail!("tensor '{name}': {} dimensions (max {MAX_NDIM})", shape_v.len());
        }
        let mut shape = Vec::with_capacity(shape_v.len());
        for d in shape_v {
            let d = u64_of(d, "shape", &name)?;
            shape.push(usize::try_from(d).map_err(|_| anyhow!("tensor '{name}': dimension {d} too large"))?);
        }
        let offs = obj
            .get("data_offsets")
            .and_then(Value::as_array)
            .filter(|a| a.len() == 2)
            .ok_or_else(|| anyhow!("tensor '{name}': data_offsets is not a [begin, end] pair"))?;
        let (begin, end) = (u64_of(&offs[0], "data_offsets", &name)?, u64_of(&offs[1], "data_offsets", &name)?);
        let numel = shape
            .iter()
            .try_fold(1u64, |a, &d| a.checked_mul(d as u64))
            .ok_or_else(|| anyhow!("tensor '{name}': shape {shape:?} overflows"))?;
        let nbytes = numel
            .checked_mul(dtype.elem_size() as u64)
            .ok_or_else(|| anyhow!("tensor '{name}': byte size overflows"))?;
        if end < begin || end > data.len() as u64 {
            bail!("tensor '{name}': data_offsets [{begin}, {end}] outside the {}-byte data section", data.len());
        }
        if end - begin != nbytes {
            bail!("tensor '{name}': data_offsets span {} bytes but {dtype_name} {shape:?} needs {nbytes}", end - begin);
        }
        spans.push((begin, end, layouts.len()));
        layouts.push((name, dtype, shape, begin as usize, end as usize));
    }
    // Empty tensors occupy no bytes; among the rest, sorted spans overlap only pairwise.
    spans.retain(|s| s.1 > s.0);
    spans.sort_unstable();
    for w in spans.windows(2) {
        let (a, b) = (&w[0], &w[1]);
        if b.0 < a.1 {
            bail!("tensors '{}' and '{}' have overlapping data_offsets", layouts[a.2].0, layouts[b.2].0);
        }
    }
    for (name, dtype, shape, begin, end) in layouts {
        let raw = &data[begin..end];
        let data = decode_at(dtype, raw, 0..raw.len() / dtype.elem_size());
        out.tensors.push((name, HostTensor { shape, data }));
    }
    Ok(out)
}

/// Reads a safetensors file; errors name the file.
pub fn load_safetensors(path: &Path) -> Result<SafeTensors> {
    let bytes = crate::input_file::read_input(path, "model file", crate::input_file::MAX_MODEL_BYTES)?;
    read_safetensors_bytes(&bytes).map_err(|e| anyhow!("{}: {e:#}", path.display()))
}

/// Serializes tensors (in the given order) and metadata to safetensors bytes.
pub fn encode_safetensors(tensors: &[(String, HostTensor)], metadata: &[(String, String)]) -> Result<Vec<u8>> {
    let mut header = String::from("{");
    let mut first = true;
    let mut sep = |h: &mut String| {
        if !first {
            h.push(',');
        }
        first = false;
    };
    if !metadata.is_empty() {
        sep(&mut header);
        header.push_str("\"__metadata__\":{");
        for (i, (k, v)) in metadata.iter().enumerate() {
            if i > 0 {
                header.push(',');
            }
            header.push_str(&serde_json::to_string(k)?);
            header.push(':');
            header.push_str(&serde_json::to_string(v)?);
        }
        header.push('}');
    }
    let mut names = HashSet::new();
    let mut offset = 0usize;
    for (name, t) in tensors {
        if name == "__metadata__" || !names.insert(name.as_str()) {
            bail!("tensor '{name}': duplicate or reserved name");
        }
        let numel = t.shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
        if numel != Some(t.data.len()) {
            bail!("tensor '{name}': shape {:?} does not match {} elements", t.shape, t.data.len());
        }
        let (dtype, size) = match &t.data {
            HostData::F32(_) => ("F32", 4),
            HostData::F64(_) => ("F64", 8),
            HostData::I64(_) => ("I64", 8),
        };
        let end = offset + t.data.len() * size;
        sep(&mut header);
        header.push_str(&format!(
            "{}:{{\"dtype\":\"{dtype}\",\"shape\":{},\"data_offsets\":[{offset},{end}]}}",
            serde_json::to_string(name)?,
            serde_json::to_string(&t.shape)?
        ));
        offset = end;
    }
    header.push('}');
    // Pad so the data section starts 8-byte aligned, as the reference writer does.
    while (8 + header.len()) % 8 != 0 {
        header.push(' ');
    }
    let mut out = Vec::with_capacity(8 + header.len() + offset);
    out.extend_from_slice(&(header.len() as u64).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    for (_, t) in tensors {
        match &t.data {
            HostData::F32(v) => v.iter().for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
            HostData::F64(v) => v.iter().for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
            HostData::I64(v) => v.iter().for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
        }
    }
    Ok(out)
}

/// Writes a safetensors file atomically (temporary file in the same directory, then rename).
pub fn save_safetensors(path: &Path, tensors: &[(String, HostTensor)], metadata: &[(String, String)]) -> Result<()> {
    let bytes = encode_safetensors(tensors, metadata).map_err(|e| anyhow!("{}: {e:#}", path.display()))?;
    write_atomically(path, &bytes)
}
