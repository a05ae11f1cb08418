//! Training checkpoints: one safetensors file holding the model state_dict under `model.`, the
//! optimizer state under `optim.` and a JSON metadata entry (`hrk_checkpoint`) with the epoch to
//! resume at, best NME, scheduler position, seed and data-RNG description. Written atomically.

use crate::atomic_file::write_atomically;
use crate::host_tensor::HostTensor;
use crate::io::safetensors::{encode_safetensors, read_safetensors_bytes};
use anyhow::{anyhow, bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;

pub const META_KEY: &str = "hrk_checkpoint";
pub const FORMAT: &str = "hrk-train-checkpoint-v1";
/// The resume file (a real copy of the newest `checkpoint_{epoch}.safetensors`).
pub const LATEST: &str = "latest.safetensors";
pub const BEST: &str = "model_best.safetensors";
pub const FINAL: &str = "final_state.safetensors";

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CheckpointMeta {
    pub format: String,
    /// The next 0-based epoch to train (the reference stores `epoch + 1`).
    pub epoch: usize,
    pub best_nme: f64,
    /// `MultiStepLR.last_epoch` after the saved epoch's `step()`.
    pub scheduler_last_epoch: usize,
    /// LR the saved epoch trained with.
    pub lr: f64,
    /// "adam" or "sgd".
    pub optimizer: String,
    /// Run seed: model init, and the data order / augmentation stream. Those are pure functions
    /// of (seed, epoch, sample index) — no sequential RNG advances during training — so the seed
    /// is the whole RNG state a resume needs.
    pub seed: u64,
    /// How the data RNG is derived (documentation for readers of the file).
    pub data_rng: String,
    pub train_batch_size: usize,
    /// Rayon threads of the run: CPU results are bit-reproducible for a fixed thread count.
    pub threads: usize,
}

pub struct Checkpoint {
    pub meta: CheckpointMeta,
    pub model: Vec<(String, HostTensor)>,
    pub optim: Vec<(String, HostTensor)>,
}

pub fn encode(
    meta: &CheckpointMeta, model: &[(String, HostTensor)], optim: &[(String, HostTensor)],
) -> Result<Vec<u8>> {
    let mut tensors = Vec::with_capacity(model.len() + optim.len());
    tensors.extend(model.iter().map(|(k, v)| (format!("model.{k}"), v.clone())));
    tensors.extend(optim.iter().map(|(k, v)| (format!("optim.{k}"), v.clone())));
    let json = serde_json::to_string(meta)?;
    encode_safetensors(&tensors, &[(META_KEY.to_string(), json)])
}

/// Writes `checkpoint_{epoch}.safetensors` and the `latest` copy, each atomically (temp + rename).
pub fn save(dir: &Path, saved_epoch: usize, bytes: &[u8]) -> Result<std::path::PathBuf> {
    let path = dir.join(format!("checkpoint_{saved_epoch}.safetensors"));
    write_atomically(&path, bytes)?;
    write_atomically(&dir.join(LATEST), bytes)?;
    Ok(path)
}

pub fn load(path: &Path) -> Result<Checkpoint> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read checkpoint {}", path.display()))?;
    let st = read_safetensors_bytes(&bytes).map_err(|e| anyhow!("{}: {e:#}", path.display()))?;
    let json = st
        .metadata
        .iter()
        .find(|(k, _)| k == META_KEY)
        .map(|(_, v)| v)
        .ok_or_else(|| anyhow!("{}: not an hrk training checkpoint (no `{META_KEY}` metadata)", path.display()))?;
    let meta: CheckpointMeta =
        serde_json::from_str(json).map_err(|e| anyhow!("{}: metadata `{META_KEY}`: {e}", path.display()))?;
    if meta.format != FORMAT {
        bail!("{}: checkpoint format `{}`, this hrk reads `{FORMAT}`", path.display(), meta.format);
    }
    let (mut model, mut optim) = (Vec::new(), Vec::new());
    for (k, v) in st.tensors {
        if let Some(n) = k.strip_prefix("model.") {
            model.push((n.to_string(), v));
        } else if let Some(n) = k.strip_prefix("optim.") {
            optim.push((n.to_string(), v));
        } else {
            bail!("{}: unexpected tensor `{k}` (expected `model.*` or `optim.*`)", path.display());
        }
    }
    Ok(Checkpoint { meta, model, optim })
}
