//! PyTorch `.pth` checkpoints without Python: the zip format (torch ≥ 1.6) and the legacy
//! format (torch < 1.6). The pickle is read by the whitelist VM in `pickle.rs`; storages are
//! raw little-endian arrays that tensors view with an offset and strides.

use super::dtype::decode_at;
use super::pickle::{Plain, StorageRef, TensorRef, Unpickled, Vm};
use crate::host_tensor::{HostData, HostTensor};
use anyhow::{anyhow, bail, Context, Result};
use std::borrow::Cow;
use std::collections::HashMap;
use std::io::{Cursor, Read};

/// The pickled magic number that opens a legacy checkpoint (protocol 2, LONG1 of 10 bytes).
pub const LEGACY_MAGIC: &[u8] = b"\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19";
const LEGACY_PROTOCOL_VERSION: i64 = 1001;
pub const ZIP_MAGIC: &[u8] = b"PK\x03\x04";
/// Largest expansion ratio of deflate, used to refuse absurd declared entry sizes up front.
const DEFLATE_MAX_RATIO: u64 = 1032;
/// A state_dict pickle is ~100 KB; anything past this is not a checkpoint.
const MAX_PICKLE_BYTES: u64 = 256 << 20;

/// Reads a zip or legacy `.pth` held in memory: keys in pickle order with their tensors.
pub fn load_pth_bytes(bytes: &[u8]) -> Result<Vec<(String, HostTensor)>> {
    if bytes.starts_with(ZIP_MAGIC) {
        load_zip(bytes)
    } else if bytes.starts_with(LEGACY_MAGIC) {
        load_legacy(bytes)
    } else if bytes.first() == Some(&0x80) {
        bail!("a pickle, but not a torch legacy checkpoint (wrong magic number)")
    } else {
        bail!("not a torch checkpoint (neither a zip archive nor a legacy pickle)")
    }
}

fn load_zip(bytes: &[u8]) -> Result<Vec<(String, HostTensor)>> {
    let mut zip = zip::ZipArchive::new(Cursor::new(bytes)).map_err(|e| anyhow!("bad zip archive: {e}"))?;
    // torch names every record `<archive name>/...`; the pickle is `<archive name>/data.pkl`.
    let mut prefix = None;
    for i in 0..zip.len() {
        let Some(Ok(name)) = zip.name_for_index(i) else {
            continue;
        };
        if let Some(p) = name.strip_suffix("/data.pkl") {
            if !p.is_empty() && !p.contains('/') {
                prefix = Some(p.to_string());
                break;
            }
        }
    }
    let prefix = prefix.ok_or_else(|| anyhow!("zip archive has no <name>/data.pkl record (not a torch checkpoint)"))?;
    if let Some(order) = read_entry_opt(&mut zip, &format!("{prefix}/byteorder"), 64, bytes.len())? {
        if order.trim_ascii() != b"little" {
            bail!("checkpoint byteorder is {:?}; only little-endian is supported", String::from_utf8_lossy(&order));
        }
    }
    let pkl_name = format!("{prefix}/data.pkl");
    let pkl = read_entry_opt(&mut zip, &pkl_name, MAX_PICKLE_BYTES, bytes.len())?
        .ok_or_else(|| anyhow!("zip record {pkl_name} unreadable"))?;
    let unpickled = Vm::new(&pkl, 0).load_state_dict().with_context(|| format!("in {pkl_name}"))?;
    // Before any storage is inflated: a small file declaring a huge storage is refused here.
    check_declared_sizes(&unpickled, bytes.len(), |key| format!("storage record {prefix}/data/{key}"))?;

    let mut records: HashMap<String, Cow<[u8]>> = HashMap::new();
    for s in &unpickled.storages {
        if records.contains_key(&s.root_key) {
            continue;
        }
        let name = format!("{prefix}/data/{}", s.root_key);
        let want = storage_nbytes(s)?;
        let data = read_entry_opt(&mut zip, &name, want, bytes.len())?
            .ok_or_else(|| anyhow!("storage record {name} missing from the zip archive"))?;
        if data.len() as u64 != want {
            bail!("storage record {name} has {} bytes, expected {want}", data.len());
        }
        records.insert(s.root_key.clone(), Cow::Owned(data));
    }
    materialize(&unpickled, &records)
}

/// Reads one zip entry if present, refusing declared sizes above `max` or impossible for the
/// archive size before allocating.
fn read_entry_opt(
    zip: &mut zip::ZipArchive<Cursor<&[u8]>>, name: &str, max: u64, archive_len: usize,
) -> Result<Option<Vec<u8>>> {
    let mut f = match zip.by_name(name) {
        Ok(f) => f,
        Err(zip::result::ZipError::FileNotFound) => return Ok(None),
        Err(e) => bail!("zip record {name}: {e}"),
    };
    let size = f.size();
    let possible = f.compressed_size().saturating_mul(DEFLATE_MAX_RATIO).saturating_add(1024);
    if size > max {
        bail!("zip record {name} declares {size} bytes, expected at most {max}");
    }
    if f.compressed_size() > archive_len as u64 || size > possible {
        bail!("zip record {name} declares an impossible size ({size} bytes)");
    }
    let mut buf = Vec::with_capacity(size as usize);
    f.by_ref().take(size.saturating_add(1)).read_to_end(&mut buf).map_err(|e| anyhow!("zip record {name}: {e}"))?;
    if buf.len() as u64 != size {
        bail!("zip record {name} holds {} bytes but declares {size}", buf.len());
    }
    Ok(Some(buf))
}

fn load_legacy(bytes: &[u8]) -> Result<Vec<(String, HostTensor)>> {
    let mut vm = Vm::new(bytes, 0);
    match vm.load_plain().context("legacy magic number")? {
        Plain::BigIntLe(b) if b[..] == LEGACY_MAGIC[4..] => {}
        _ => bail!("legacy checkpoint with a wrong magic number"),
    }
    match vm.load_plain().context("legacy protocol version")? {
        Plain::Int(LEGACY_PROTOCOL_VERSION) => {}
        other => bail!("legacy checkpoint protocol version {other:?}, expected {LEGACY_PROTOCOL_VERSION}"),
    }
    match vm.load_plain().context("legacy sys_info")? {
        Plain::Dict(items) => {
            for (k, v) in items {
                if k == Plain::Str("little_endian".into()) && v == Plain::Bool(false) {
                    bail!("big-endian legacy checkpoint not supported");
                }
            }
        }
        _ => bail!("legacy sys_info is not a dict"),
    }
    let unpickled = vm.load_state_dict().context("legacy data pickle")?;
    let keys = match vm.load_plain().context("legacy storage key list")? {
        Plain::List(keys) => keys,
        _ => bail!("legacy storage key list is not a list"),
    };
    check_declared_sizes(&unpickled, bytes.len(), |key| format!("legacy storage '{key}'"))?;
    let roots: HashMap<&str, &StorageRef> = unpickled.storages.iter().map(|s| (s.root_key.as_str(), s)).collect();
    let mut pos = vm.position();
    let mut records: HashMap<String, Cow<[u8]>> = HashMap::new();
    for key in keys {
        let key = match key {
            Plain::Str(s) => s,
            Plain::Int(i) => i.to_string(),
            _ => bail!("legacy storage key list holds a non-string"),
        };
        let s = roots
            .get(key.as_str())
            .ok_or_else(|| anyhow!("legacy storage '{key}' is listed but not used by any tensor"))?;
        let head =
            bytes.get(pos..pos + 8).ok_or_else(|| anyhow!("legacy storage '{key}': file truncated at byte {pos}"))?;
        let count = u64::from_le_bytes(head.try_into().expect("8 bytes"));
        if count != s.root_numel {
            bail!("legacy storage '{key}' holds {count} elements, the pickle says {}", s.root_numel);
        }
        let nbytes = storage_nbytes(s)?;
        let start = pos + 8;
        let end = (start as u64)
            .checked_add(nbytes)
            .filter(|&e| e <= bytes.len() as u64)
            .ok_or_else(|| anyhow!("legacy storage '{key}' ({nbytes} bytes) runs past the end of the file"))?
            as usize;
        records.insert(key, Cow::Borrowed(&bytes[start..end]));
        pos = end;
    }
    materialize(&unpickled, &records)
}

fn storage_nbytes(s: &StorageRef) -> Result<u64> {
    s.root_numel
        .checked_mul(s.dtype.elem_size() as u64)
        .ok_or_else(|| anyhow!("storage '{}' size overflows", s.root_key))
}

/// Elements a checkpoint of `input_len` bytes may hold, in all its tensors together and in any
/// one storage: 4 per byte of file plus 1 Mi (a deflated record of zeros may legitimately
/// expand, but not a 1 MB file into gigabytes), so stride-0 views and deflate bombs cannot blow
/// up memory.
fn element_budget(input_len: usize) -> u64 {
    (input_len as u64).saturating_mul(4).saturating_add(1 << 20)
}

/// Refuses, naming the tensor, a storage or a set of tensors larger than [`element_budget`]
/// allows, from the sizes the pickle declares: before any storage is read or inflated. `storage`
/// names a storage key in messages.
fn check_declared_sizes(u: &Unpickled, input_len: usize, storage: impl Fn(&str) -> String) -> Result<()> {
    let limit = element_budget(input_len);
    let mut budget = limit;
    for (key, ti) in &u.entries {
        let t = &u.tensors[*ti];
        let s = &u.storages[t.storage];
        if s.root_numel > limit {
            bail!(
                "tensor '{key}': {} declares {} elements, more than a {input_len}-byte file can hold ({limit}); refused before reading it",
                storage(&s.root_key),
                s.root_numel
            );
        }
        let numel = t.numel() as u64;
        if numel > budget {
            bail!("tensor '{key}' ({numel} elements) exceeds what the file size can hold");
        }
        budget -= numel;
    }
    if let Some(s) = u.storages.iter().find(|s| s.root_numel > limit) {
        bail!(
            "{} declares {} elements, more than a {input_len}-byte file can hold ({limit})",
            storage(&s.root_key),
            s.root_numel
        );
    }
    Ok(())
}

/// Copies each tensor's elements out of its storage (any strides), converting f16/bf16 to f32
/// and integer types to i64 (sizes checked by [`check_declared_sizes`] first).
fn materialize(u: &Unpickled, records: &HashMap<String, Cow<[u8]>>) -> Result<Vec<(String, HostTensor)>> {
    let mut out = Vec::with_capacity(u.entries.len());
    for (key, ti) in &u.entries {
        let t = &u.tensors[*ti];
        let s = &u.storages[t.storage];
        let raw = records
            .get(&s.root_key)
            .ok_or_else(|| anyhow!("tensor '{key}': storage '{}' has no data in the file", s.root_key))?;
        let data = gather(t, s, raw).with_context(|| format!("tensor '{key}'"))?;
        out.push((key.clone(), HostTensor { shape: t.shape.clone(), data }));
    }
    Ok(out)
}

/// Element indices (into the root storage) of a strided view, in row-major order.
fn element_indices<'a>(t: &'a TensorRef, s: &StorageRef) -> impl Iterator<Item = usize> + 'a {
    let base = s.offset.wrapping_add(t.offset) as usize;
    let numel = t.numel();
    let nd = t.shape.len();
    let mut idx = vec![0usize; nd];
    let mut cur = base;
    let mut done = 0usize;
    std::iter::from_fn(move || {
        if done == numel {
            return None;
        }
        let here = cur;
        done += 1;
        // Odometer step over the last dimension first.
        for d in (0..nd).rev() {
            // Wrapping arithmetic: intermediate positions past the view are never read.
            idx[d] += 1;
            cur = cur.wrapping_add(t.stride[d]);
            if idx[d] < t.shape[d] {
                break;
            }
            cur = cur.wrapping_sub(t.stride[d].wrapping_mul(t.shape[d]));
            idx[d] = 0;
        }
        Some(here)
    })
}

fn gather(t: &TensorRef, s: &StorageRef, raw: &[u8]) -> Result<HostData> {
    let es = s.dtype.elem_size();
    // The view was checked against the storage's numel in the VM; check against the bytes too.
    let need = s.offset.checked_add(s.numel).and_then(|n| n.checked_mul(es as u64)).unwrap_or(u64::MAX);
    if need > raw.len() as u64 {
        bail!("storage '{}' has {} bytes, the view needs {need}", s.root_key, raw.len());
    }
    let base = s.offset.wrapping_add(t.offset) as usize;
    Ok(if is_contiguous(t) {
        decode_at(s.dtype, raw, base..base + t.numel())
    } else {
        decode_at(s.dtype, raw, element_indices(t, s))
    })
}

/// Row-major contiguous (dimensions of size 1 may have any stride).
fn is_contiguous(t: &TensorRef) -> bool {
    let mut expected = 1usize;
    for (&d, &st) in t.shape.iter().zip(&t.stride).rev() {
        if d != 1 && st != expected {
            return false;
        }
        expected = expected.saturating_mul(d);
    }
    true
}
