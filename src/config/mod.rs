//! The official yacs configuration (`lib/config/defaults.py` of HRNet-Facial-Landmark-Detection):
//! every key with its reference default, merged from a YAML file the way yacs' `merge_from_file`
//! does it, then checked so that a bad file fails early with a one-line message naming the file,
//! the line and the full key path.
//!
//! yacs rules followed here: only keys present in the defaults are accepted; a string value is
//! first decoded with Python's `literal_eval` (so `GPUS: (0,)` is a tuple and `LR: '1e-4'` a
//! float); the decoded type must equal the default's type, except that a list may stand for a
//! tuple and the reverse. An int is *not* accepted for a float key (`SIGMA: 2` fails in yacs too).
//! Deliberate differences: a null value is rejected (yacs would store None and the reference
//! crashes later), list elements are type-checked, and the values are range-checked.
//! YAML scalars are resolved by serde-saphyr with YAML 1.1 booleans, so yes/no/on/off are
//! booleans as in PyYAML; it also takes y/n (PyYAML would keep those as strings).
//!
//! The parts: `schema.rs` holds one table of `"KEY" field: Type = default` entries per section
//! (`config_section!`, in `keys.rs`), from which the struct, its defaults, the schema, the
//! assignment and the dump all come; `merge.rs` types the YAML values (`yaml_tree.rs`,
//! `py_literal.rs`) and stores them, `suggest.rs` proposes a key for a misspelt one,
//! `validate.rs` holds the range and cross-key rules and `origin.rs` remembers where each key was
//! written. `kinds.rs` holds the enums keys choose between. This module knows nothing of the model
//! or the data pipeline.

mod keys;
mod kinds;
mod merge;
mod origin;
mod py_literal;
mod schema;
mod suggest;
mod validate;
mod yaml_tree;

pub use kinds::{BlockKind, DatasetKind, DecodeMode, OptimizerKind};
pub use origin::KeyOrigins;
pub use schema::{
    schema_keys, Config, CudnnConfig, DatasetConfig, ModelConfig, ModelExtra, StageConfig, TestConfig, TrainConfig,
};

use anyhow::{anyhow, Result};
use keys::Entry;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

impl Config {
    /// Parses YAML text over the reference defaults; `source_name` names the text in errors.
    pub fn from_yaml_str(text: &str, source_name: &str) -> Result<Config> {
        let cfg = merge::merge_yaml(text, source_name)?;
        cfg.validate_with(&cfg.origin)?;
        Ok(cfg)
    }

    /// Reads and checks a config file: `load_config` (which names a path that is not a file to read).
    pub fn load(path: &Path) -> Result<Config> {
        load_config(path)
    }

    /// Checks the cross-key and range rules; `source_name` names the config in errors.
    pub fn validate(&self, source_name: &str) -> Result<()> {
        self.validate_with(&KeyOrigins { source: source_name.to_owned(), lines: HashMap::new() })
    }

    /// An error about `key` found after loading (e.g. the network it describes cannot be built),
    /// pointing at the key's line in the config file: `file:line: config key KEY: error`.
    pub fn key_error(&self, key: &str, error: anyhow::Error) -> anyhow::Error {
        if self.origin.source.is_empty() {
            return anyhow!("config key {key}: {error:#}");
        }
        anyhow!("{}: config key {key}: {error:#}", self.origin.place_of(key))
    }

    /// Number of GPUS entries: the reference batch is BATCH_SIZE_PER_GPU × this.
    pub fn gpus_count(&self) -> usize {
        self.gpus.len()
    }

    /// Training batch size as the reference computes it (per-GPU size × len(GPUS)).
    pub fn train_batch_size(&self) -> usize {
        self.train.batch_size_per_gpu.saturating_mul(self.gpus_count())
    }

    /// Test/validation batch size (per-GPU size × len(GPUS)).
    pub fn test_batch_size(&self) -> usize {
        self.test.batch_size_per_gpu.saturating_mul(self.gpus_count())
    }

    /// `DATASET.DATASET` as an enum (validated configs always have one).
    pub fn dataset_kind(&self) -> Option<DatasetKind> {
        DatasetKind::from_exact_name(&self.dataset.dataset)
    }

    /// `OUTPUT_DIR/<DATASET.DATASET>/<cfg name>`, the reference output folder (`create_logger`).
    pub fn output_dir_for(&self, cfg_path: &Path) -> PathBuf {
        let mut dir = PathBuf::from(&self.output_dir);
        dir.push(&self.dataset.dataset);
        let name = config_name(cfg_path);
        if !name.is_empty() {
            dir.push(name);
        }
        dir
    }

    /// `LOG_DIR/<DATASET>/<MODEL.NAME>/<cfg name>_<time>`, the reference TensorBoard folder.
    pub fn tensorboard_dir_for(&self, cfg_path: &Path, time_str: &str) -> PathBuf {
        let mut dir = PathBuf::from(&self.log_dir);
        dir.push(&self.dataset.dataset);
        dir.push(&self.model.name);
        dir.push(format!("{}_{time_str}", config_name(cfg_path)));
        dir
    }

    /// The config as yacs-compatible YAML (every key, in `defaults.py` order); loading it back
    /// gives the same Config. Meant for the log, like the reference's `pprint(config)`.
    pub fn to_yaml(&self) -> String {
        let mut out = String::new();
        self.dump("", 0, &mut out);
        out
    }
}

/// The reference's cfg name: the file's base name up to the first '.'.
pub fn config_name(cfg_path: &Path) -> String {
    let base = cfg_path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    base.split('.').next().unwrap_or_default().to_owned()
}

/// Reads and parses a config file (yacs `merge_from_file` over the defaults, then validation).
pub fn load_config(path: &Path) -> Result<Config> {
    let shown = path.display().to_string();
    // A FIFO (`--cfg <(…)`) is read as a stream; the bound keeps /dev/zero from filling memory.
    let bytes = crate::input_file::read_input(path, "config file", crate::input_file::MAX_CONFIG_BYTES)?;
    let text = String::from_utf8(bytes).map_err(|e| {
        anyhow!("{shown}: config file is not UTF-8 (invalid byte at offset {})", e.utf8_error().valid_up_to())
    })?;
    Config::from_yaml_str(&text, &shown)
}
