//! Files in and out: atomic whole-file writes (atomic.rs), CSV lines and fields (csv.rs).
//! Weights in and out: safetensors (read/write) and PyTorch `.pth` checkpoints (read, no Python).
//!
//! `load_state_dict` detects the format by its first bytes, returns tensors in file order and
//! strips the DataParallel `module.` prefix, so every released HRNet checkpoint style loads.

pub mod csv;
pub mod dtype;
pub mod onnx;
pub mod pickle;
pub mod pth;
pub mod safetensors;
pub mod tfevents;

pub use safetensors::{encode_safetensors, load_safetensors, read_safetensors_bytes, save_safetensors, SafeTensors};

use crate::host_tensor::HostTensor;
use anyhow::{anyhow, bail, Result};
use std::collections::HashSet;
use std::path::Path;

/// File formats `load_state_dict` recognizes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WeightFormat {
    Safetensors,
    PthZip,
    PthLegacy,
}

/// Guesses the format from the first bytes of a file.
pub fn detect_format(bytes: &[u8]) -> Result<WeightFormat> {
    if bytes.starts_with(pth::ZIP_MAGIC) || bytes.starts_with(b"PK\x05\x06") {
        return Ok(WeightFormat::PthZip);
    }
    // Safetensors first: its header length may well start with byte 0x80, like a pickle.
    if bytes.len() >= 9 && bytes[8] == b'{' {
        let header_len = u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes"));
        if header_len <= safetensors::MAX_HEADER_LEN {
            return Ok(WeightFormat::Safetensors);
        }
    }
    if bytes.first() == Some(&0x80) {
        return Ok(WeightFormat::PthLegacy);
    }
    if bytes.len() > 262 && &bytes[257..262] == b"ustar" {
        bail!("a tar archive (torch < 0.4 checkpoint format), which is not supported");
    }
    bail!("unknown weights format (not safetensors, zip .pth or legacy .pth)")
}

/// Reads weights held in memory (any supported format): keys in file order, `module.` stripped.
pub fn state_dict_from_bytes(bytes: &[u8]) -> Result<Vec<(String, HostTensor)>> {
    let tensors = match detect_format(bytes)? {
        WeightFormat::Safetensors => read_safetensors_bytes(bytes)?.tensors,
        WeightFormat::PthZip | WeightFormat::PthLegacy => pth::load_pth_bytes(bytes)?,
    };
    strip_module_prefix(tensors)
}

/// Loads a state_dict from a safetensors, zip `.pth` or legacy `.pth` file. Errors are one
/// line naming the file and the tensor / key / opcode involved.
pub fn load_state_dict(path: &Path) -> Result<Vec<(String, HostTensor)>> {
    let bytes = crate::input_file::read_input(path, "model file", crate::input_file::MAX_MODEL_BYTES)?;
    state_dict_from_bytes(&bytes).map_err(|e| anyhow!("{}: {}", path.display(), one_line(&e)))
}

/// Converts any supported checkpoint to safetensors (keys in file order, `module.` stripped);
/// returns the number of tensors written.
pub fn convert_pth_to_safetensors(inp: &Path, out: &Path) -> Result<usize> {
    let tensors = load_state_dict(inp)?;
    let source = inp.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let metadata = vec![("format".to_string(), "pt".to_string()), ("source".to_string(), source)];
    save_safetensors(out, &tensors, &metadata)?;
    Ok(tensors.len())
}

/// Merges several checkpoints into one safetensors file, each key prefixed with its input's prefix (e.g.
/// `pnet.` for facenet-pytorch's pnet.pt); a key that two inputs produce is an error naming both files.
pub fn convert_merged_to_safetensors(inputs: &[(String, &Path)], out: &Path) -> Result<usize> {
    let mut seen = std::collections::HashMap::new();
    let mut merged = Vec::new();
    let mut sources = Vec::new();
    for (prefix, path) in inputs {
        for (k, t) in load_state_dict(path)? {
            let key = format!("{prefix}{k}");
            if let Some(first) = seen.insert(key.clone(), path.display().to_string()) {
                bail!("key '{key}' comes from both {first} and {}", path.display());
            }
            merged.push((key, t));
        }
        sources.push(format!("{prefix}={}", path.file_name().map(|n| n.to_string_lossy()).unwrap_or_default()));
    }
    let metadata = vec![("format".to_string(), "pt".to_string()), ("source".to_string(), sources.join(","))];
    save_safetensors(out, &merged, &metadata)?;
    Ok(merged.len())
}

/// Removes a leading `module.` (DataParallel) from every key that has one.
pub fn strip_module_prefix(tensors: Vec<(String, HostTensor)>) -> Result<Vec<(String, HostTensor)>> {
    let mut seen = HashSet::with_capacity(tensors.len());
    let mut out = Vec::with_capacity(tensors.len());
    for (k, t) in tensors {
        let k = match k.strip_prefix("module.") {
            Some(s) => s.to_string(),
            None => k,
        };
        if !seen.insert(k.clone()) {
            bail!("key '{k}' appears twice once the 'module.' prefix is removed");
        }
        out.push((k, t));
    }
    Ok(out)
}

/// An error chain on one line.
fn one_line(e: &anyhow::Error) -> String {
    format!("{e:#}").replace('\n', " ")
}
