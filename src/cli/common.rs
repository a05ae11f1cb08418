//! Glue shared by the subcommands: config → model, config → dataset, weights, device.

use crate::config::{load_config, Config};
use crate::cuda::{select_device, DeviceChoice, DeviceRequest};
use crate::data::dataset::DatasetSpec;
use crate::model::{HrNet, HrnetSpec};
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};

pub fn config(path: &Path) -> Result<Config> {
    if !path.is_file() {
        bail!("config file {} not found", path.display());
    }
    load_config(path)
}

/// A freshly initialised model for the config (official init, seeded).
pub fn model(cfg: &Config, seed: u64) -> Result<HrNet> {
    HrNet::new(&HrnetSpec::from_config(cfg)?, seed)
}

/// Loads .safetensors or an official .pth (zip or legacy; `module.` prefixes stripped) strictly:
/// every model tensor must be present with its shape; `num_batches_tracked` may be absent.
pub fn load_weights(net: &mut HrNet, path: &Path) -> Result<()> {
    if !path.is_file() {
        bail!("model file {} not found", path.display());
    }
    let entries = crate::io::load_state_dict(path)?;
    net.store.load(&entries, true, &path.display().to_string())?;
    Ok(())
}

/// The dataset described by the config; `annotations` overrides DATASET.TRAINSET/TESTSET.
pub fn dataset_spec(cfg: &Config, is_train: bool, annotations: Option<&Path>) -> Result<DatasetSpec> {
    let Some(kind) = cfg.dataset_kind() else {
        bail!("DATASET.DATASET {:?} is not one of WFLW, 300W, COFW, AFLW", cfg.dataset.dataset);
    };
    let ann: PathBuf = match annotations {
        Some(p) => p.to_path_buf(),
        None => PathBuf::from(if is_train { &cfg.dataset.trainset } else { &cfg.dataset.testset }),
    };
    let mut spec = DatasetSpec::new(kind, &cfg.dataset.root, ann, is_train);
    spec.image_size = cfg.model.image_size;
    spec.heatmap_size = cfg.model.heatmap_size;
    spec.sigma = cfg.model.sigma;
    spec.scale_factor = cfg.dataset.scale_factor;
    spec.rot_factor = cfg.dataset.rot_factor as f64;
    spec.flip = cfg.dataset.flip;
    spec.num_joints = cfg.model.num_joints;
    spec.target_type = cfg.model.target_type.clone();
    Ok(spec)
}

/// `--device cpu|cuda|auto`. The engine's training/inference graph runs on the CPU today; a CUDA
/// choice is refused with a clear message rather than silently falling back.
pub fn device(arg: &str) -> Result<()> {
    let req: DeviceRequest = arg.parse()?;
    match select_device(req).context("--device")? {
        DeviceChoice::Cpu { fallback_reason } => {
            if let Some(r) = fallback_reason {
                eprintln!("hrk: --device auto: using the CPU ({r})");
            }
            Ok(())
        }
        DeviceChoice::Cuda { .. } => bail!(
            "--device cuda: the CUDA kernels are built and tested, but the model graph does not run on them yet; use --device cpu"
        ),
    }
}
