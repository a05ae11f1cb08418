//! Exporting a model for other runtimes: the ONNX file `hrk export` writes.

use crate::config::Config;
use crate::model::hrnet::{export_onnx, OnnxOptions};
use crate::model::HrNet;
use anyhow::{Context, Result};
use std::path::Path;

/// Writes `net`'s inference graph for the config's MODEL.IMAGE_SIZE to `out` as ONNX (atomically:
/// a temporary file renamed into place); returns the file's size in bytes.
pub fn write_onnx(net: &HrNet, cfg: &Config, opts: &OnnxOptions, out: &Path) -> Result<usize> {
    let [w, h] = cfg.model.image_size;
    let bytes = export_onnx(net, h, w, opts)?;
    crate::atomic_file::write_atomically(out, &bytes).with_context(|| format!("writing {}", out.display()))?;
    Ok(bytes.len())
}
