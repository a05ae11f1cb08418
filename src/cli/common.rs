//! Glue shared by the subcommands: config → model, config → dataset, weights, device.

use crate::config::{load_config, Config};
use crate::cuda::{select_device, DeviceChoice, DeviceRequest};
use crate::data::dataset::DatasetSpec;
use crate::model::{HrNet, HrnetSpec};
use crate::tensor::Device;
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

/// `--device cpu|cuda|auto` → the device the model and its inputs go to (`HrNet::to_device`).
/// Hidden choice `emu` (or env `HRK_DEVICE_EMU=1` with cuda/auto): the emulated GPU, which runs the
/// CUDA kernels on the host — slow, for tests of the device path without a GPU.
pub fn device(arg: &str) -> Result<Device> {
    let emu_env = std::env::var("HRK_DEVICE_EMU").is_ok_and(|v| v == "1");
    if arg.eq_ignore_ascii_case("emu") || (emu_env && !arg.eq_ignore_ascii_case("cpu")) {
        crate::cuda::device::install_gpu_panic_hook();
        return Ok(Device::emulated());
    }
    let req: DeviceRequest = arg.parse()?;
    match select_device(req).context("--device")? {
        DeviceChoice::Cpu { fallback_reason } => {
            if let Some(r) = fallback_reason {
                eprintln!("hrk: --device auto: using the CPU ({r})");
            }
            Ok(Device::Cpu)
        }
        DeviceChoice::Cuda { ordinal, .. } => {
            crate::cuda::device::install_gpu_panic_hook();
            cuda_device(ordinal)
        }
    }
}

#[cfg(feature = "cuda")]
fn cuda_device(ordinal: usize) -> Result<Device> {
    Ok(Device::Gpu(crate::cuda::device::GpuDevice::cuda(ordinal).context("--device cuda")?))
}

#[cfg(not(feature = "cuda"))]
fn cuda_device(_ordinal: usize) -> Result<Device> {
    // select_device answers NotCompiled first; kept for completeness.
    bail!("{}", crate::cuda::CudaUnavailable::NotCompiled)
}
