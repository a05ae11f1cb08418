//! MODEL.INIT_WEIGHTS + MODEL.PRETRAINED: start the backbone from an ImageNet HRNetV2 checkpoint
//! (the official `HighResolutionNet.init_weights`: filter by key name, then a strict load).
//!
//! The reference keeps every checkpoint entry whose key the face model also has (by name only),
//! then loads strictly, so the classification-only parts (`incre_modules`, `downsamp_modules`,
//! `final_layer`, `classifier`) are dropped, `head.*` keeps its random init, and a same-named
//! tensor with another shape crashes the run. A missing file is silently ignored there; hrk warns.
//! Unlike the reference, a DataParallel `module.` prefix is stripped (by `io::load_state_dict`)
//! instead of silently matching nothing.

use super::{HrNet, Slot};
use crate::config::Config;
use crate::host_tensor::{HostData, HostTensor};
use anyhow::{bail, Result};
use std::collections::HashSet;
use std::fmt;
use std::path::{Path, PathBuf};

/// Key prefixes of the ImageNet classifier that the face model never has.
pub const CLASSIFIER_PREFIXES: [&str; 4] = ["incre_modules.", "downsamp_modules.", "final_layer.", "classifier."];

/// What `load_imagenet` did.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PretrainedReport {
    pub path: PathBuf,
    /// False when the file does not exist (nothing loaded; the model keeps its init).
    pub found: bool,
    /// Checkpoint entries copied into the model (parameters, BN buffers and counters).
    pub loaded: usize,
    /// Checkpoint entries of the ImageNet classifier (`incre_modules`, `downsamp_modules`,
    /// `final_layer`, `classifier`), dropped.
    pub skipped_classifier: usize,
    /// Other checkpoint entries the model lacks, dropped (as the reference does, silently).
    pub skipped_unknown: Vec<String>,
    /// Model entries the checkpoint does not provide; they keep their init (the head, at least).
    pub kept_init: Vec<String>,
}

impl PretrainedReport {
    pub fn skipped(&self) -> usize {
        self.skipped_classifier + self.skipped_unknown.len()
    }
}

impl fmt::Display for PretrainedReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if !self.found {
            return write!(f, "pretrained model {} not found: training from the random init", self.path.display());
        }
        let head = self.kept_init.iter().filter(|k| k.starts_with("head.")).count();
        write!(
            f,
            "pretrained model {}: loaded {} tensors, skipped {} ({} classifier-only, {} not in the model); {} model tensors keep their init ({} in the head)",
            self.path.display(),
            self.loaded,
            self.skipped(),
            self.skipped_classifier,
            self.skipped_unknown.len(),
            self.kept_init.len(),
            head
        )
    }
}

fn is_classifier_key(key: &str) -> bool {
    CLASSIFIER_PREFIXES.iter().any(|p| key.starts_with(p))
}

/// Loads an ImageNet HRNetV2 checkpoint (.pth zip/legacy or .safetensors) into `net` by key
/// name; see the module docs. Fails (leaving `net` untouched) on a shape or type mismatch,
/// naming the tensor and both shapes. A missing file is a warning unless `strict_missing`.
pub fn load_imagenet(net: &mut HrNet, path: &Path, strict_missing: bool) -> Result<PretrainedReport> {
    let mut report = PretrainedReport { path: path.to_path_buf(), ..Default::default() };
    if !path.is_file() {
        if strict_missing {
            bail!("pretrained model {} not found (MODEL.PRETRAINED)", path.display());
        }
        log::warn!("{report}");
        return Ok(report);
    }
    report.found = true;
    let entries = crate::io::load_state_dict(path)?;
    let source = path.display().to_string();

    // Keep what the model has; check every kept entry before touching the model.
    let mut kept: Vec<(String, HostTensor)> = Vec::new();
    for (key, t) in entries {
        let Some(slot) = net.store.get(&key) else {
            if is_classifier_key(&key) {
                report.skipped_classifier += 1;
            } else {
                report.skipped_unknown.push(key);
            }
            continue;
        };
        check_entry(&source, &key, &t, slot)?;
        kept.push((key, t));
    }
    let provided: HashSet<&str> = kept.iter().map(|(k, _)| k.as_str()).collect();
    report.kept_init = net.store.names().iter().filter(|n| !provided.contains(n.as_str())).cloned().collect();

    let r = net.store.load(&kept, false, &source)?;
    report.loaded = r.loaded;
    log::info!("{report}");
    if report.loaded == 0 {
        log::warn!("no key of {} matches the model; is it an HRNetV2 checkpoint?", path.display());
    }
    Ok(report)
}

/// Shape and kind of one checkpoint entry against the model's slot.
fn check_entry(source: &str, key: &str, t: &HostTensor, slot: &Slot) -> Result<()> {
    match slot {
        Slot::Param(m) | Slot::Buffer(m) => {
            if t.shape != m.shape() {
                bail!(
                    "{source}: tensor `{key}` has shape {:?} in the checkpoint but {:?} in the model",
                    t.shape,
                    m.shape()
                );
            }
            if matches!(t.data, HostData::I64(_)) {
                bail!("{source}: tensor `{key}` is int64 in the checkpoint, the model expects floats");
            }
        }
        Slot::Count(_) => {
            if t.numel() != 1 {
                bail!("{source}: counter `{key}` has shape {:?} in the checkpoint but [] in the model", t.shape);
            }
        }
    }
    Ok(())
}

/// The reference's `get_face_alignment_net` step: with MODEL.INIT_WEIGHTS and a non-empty
/// MODEL.PRETRAINED, load it (path relative to the working directory, as in tools/train.py).
/// None when the config asks for no pretrained weights.
pub fn load_from_config(net: &mut HrNet, cfg: &Config, strict_missing: bool) -> Result<Option<PretrainedReport>> {
    if !cfg.model.init_weights || cfg.model.pretrained.is_empty() {
        return Ok(None);
    }
    load_imagenet(net, Path::new(&cfg.model.pretrained), strict_missing).map(Some)
}
