//! The synthetic demo data set: when DATASET.ROOT is a `synthetic` folder whose TRAINSET is
//! missing, the trainer generates it (`crate::synth`) before opening the data sets.

use super::logger::Logger;
use super::TrainOptions;
use crate::config::Config;
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Images generated for the synthetic demo when its CSVs are missing (80 % train, 20 % test).
pub const DEFAULT_SYNTH_COUNT: usize = 1000;

/// The synthetic-demo rule: DATASET.ROOT's last component is `synthetic` (e.g. `data/synthetic/`)
/// and DATASET.TRAINSET does not exist yet. Returns the folder to generate into.
pub fn synthetic_root(cfg: &Config) -> Option<PathBuf> {
    let root = PathBuf::from(&cfg.dataset.root);
    let is_synth = root.file_name().is_some_and(|n| n == "synthetic");
    (is_synth && !Path::new(&cfg.dataset.trainset).exists()).then_some(root)
}

/// Writes the synthetic demo data set into `root` (DATASET.TRAINSET is missing there).
pub(super) fn generate_synthetic(cfg: &Config, opts: &TrainOptions, root: &Path, log: &mut Logger) -> Result<()> {
    log.info(&format!(
        "=> {} does not exist: generating the synthetic demo data set ({} images, {} landmarks) in {}",
        cfg.dataset.trainset,
        opts.synth_count,
        cfg.model.num_joints,
        root.display()
    ));
    let t = Instant::now();
    let s = crate::synth::generate(root, cfg.model.num_joints, opts.synth_count, opts.seed)
        .with_context(|| format!("generating the synthetic data set into {}", root.display()))?;
    log.info(&format!(
        "=> wrote {} train + {} test images in {:.1}s",
        s.train_count,
        s.test_count,
        t.elapsed().as_secs_f64()
    ));
    if !Path::new(&cfg.dataset.trainset).exists() {
        bail!(
            "{}: DATASET.TRAINSET {} is still missing after generating synthetic data (expected {})",
            opts.cfg_path.display(),
            cfg.dataset.trainset,
            s.train_csv.display()
        );
    }
    Ok(())
}
