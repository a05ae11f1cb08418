//! `<out>/metrics.jsonl`: one JSON line per finished epoch, appended as epochs end and trimmed
//! on a resume to the epochs before the one training restarts at.

use anyhow::{anyhow, Context, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// The per-epoch metrics file in the output folder.
pub(super) const METRICS: &str = "metrics.jsonl";

/// One line of `<out>/metrics.jsonl`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EpochMetrics {
    pub epoch: usize,
    pub lr: f64,
    pub train_loss: f64,
    /// Training NME as the reference computes it (against un-rotated GT, so only indicative).
    pub train_nme: Option<f64>,
    pub val_loss: f64,
    pub nme: f64,
    pub fr_008: f64,
    pub fr_010: f64,
    pub auc_010: f64,
    pub seconds: f64,
}

/// Rebuilds metrics.jsonl from the lines of epochs before `keep_below` (a resume drops what an
/// interrupted run logged after its last checkpoint) and returns them.
pub(super) fn restore_metrics(path: &Path, keep_below: usize) -> Result<Vec<EpochMetrics>> {
    let mut kept = Vec::new();
    if let Ok(text) = std::fs::read_to_string(path) {
        for (i, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let m: EpochMetrics = serde_json::from_str(line)
                .map_err(|e| anyhow!("{}:{}: not a metrics line: {e}", path.display(), i + 1))?;
            if m.epoch < keep_below {
                kept.push(m);
            }
        }
    }
    let mut text = String::new();
    for m in &kept {
        text.push_str(&serde_json::to_string(m)?);
        text.push('\n');
    }
    crate::atomic_file::write_atomically(path, text.as_bytes())?;
    Ok(kept)
}

pub(super) fn append_metrics(path: &Path, m: &EpochMetrics) -> Result<()> {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    writeln!(f, "{}", serde_json::to_string(m)?).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}
