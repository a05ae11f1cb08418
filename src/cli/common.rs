//! Glue shared by the subcommands: config → model, config → dataset, weights, device. The work is
//! done by the library (`Config::load`, `DatasetSpec::from_config`, `HrnetSpec::from_config`).

use crate::config::Config;
use crate::data::dataset::DatasetSpec;
use crate::detect::DetectorOptions;
use crate::model::{HrNet, HrnetSpec, Precision};
use crate::tensor::Device;
use anyhow::{anyhow, bail, Result};
use std::path::{Path, PathBuf};

/// The test-time option flags of `hrk test` and `hrk predict` (issue #15); each overrides its
/// TEST.* key, and everything is off by default (the reference protocol).
#[derive(clap::Args, Debug, Clone, Default)]
pub struct TestOptionArgs {
    /// Average with the flipped crop's flipped-back heatmaps (TEST.FLIP_TEST).
    #[arg(long = "flip-test")]
    pub flip_test: bool,
    /// With --flip-test: shift the flipped-back heatmaps one column right (TEST.SHIFT_HEATMAP).
    #[arg(long = "shift-heatmap")]
    pub shift_heatmap: bool,
    /// Sub-pixel refinement: quarter (the reference) or dark (TEST.DECODE).
    #[arg(long)]
    pub decode: Option<String>,
    /// Conv arithmetic of the CPU engine: f32, or bf16 (falls back to f32 with a warning where no bf16
    /// kernel runs; HRK_BF16_EMULATE=1 emulates it).
    #[arg(long)]
    pub precision: Option<String>,
}

impl TestOptionArgs {
    /// The CPU engine's precision for `--precision`, resolved for this CPU (warns when it falls back).
    pub fn precision(&self) -> Result<crate::model::Precision> {
        let asked = self.precision.as_deref().unwrap_or("f32");
        Ok(asked.parse::<crate::model::Precision>()?.resolve_cpu())
    }

    /// The config's TEST.* options with the flags applied.
    pub fn resolve(&self, cfg: &Config) -> Result<crate::eval::TestOptions> {
        crate::eval::TestOptions::from_config(cfg)?.with_overrides(
            self.flip_test,
            self.shift_heatmap,
            self.decode.as_deref(),
        )
    }
}

/// The config file, checked; its network must also be buildable, so that a command refuses absurd
/// widths or depths before it reads anything else.
pub fn config(path: &Path) -> Result<Config> {
    let cfg = Config::load(path)?;
    HrnetSpec::from_config(&cfg)?;
    Ok(cfg)
}

/// A freshly initialised model for the config (official init, seeded).
pub fn model(cfg: &Config, seed: u64) -> Result<HrNet> {
    HrNet::from_config(cfg, seed)
}

/// Loads .safetensors or an official .pth (zip or legacy; `module.` prefixes stripped) strictly:
/// every model tensor must be present with its shape; `num_batches_tracked` may be absent.
pub fn load_weights(net: &mut HrNet, path: &Path) -> Result<()> {
    net.load_weights_file(path)
}

/// Puts a landmark model on `device` with `--precision` set (`TestOptionArgs::precision`): what
/// `hrk predict` and `hrk serve` run.
pub fn prepare_for_inference(net: &mut HrNet, device: &Device, precision: Precision) -> Result<()> {
    net.to_device(device)?;
    net.set_precision(precision);
    Ok(())
}

/// `--cfg`, and `--model-file` or `--init-seed`: the network `hrk predict`, `hrk export` and `hrk serve` run.
#[derive(clap::Args, Debug, Clone)]
pub struct ModelSource {
    /// Experiment YAML (official schema): the network, MODEL.IMAGE_SIZE and HEATMAP_SIZE.
    #[arg(long)]
    pub cfg: PathBuf,
    /// Weights: .safetensors or an official .pth; every tensor of the config's network must be there.
    #[arg(long = "model-file", required_unless_present = "init_seed", conflicts_with = "init_seed")]
    pub model_file: Option<PathBuf>,
    /// No weights file: the config's network with the official random init of this seed (for timing,
    /// e.g. benches/compare_anchors.sh, benches/serve_rounds.sh and benches/video_speed.sh).
    #[arg(long = "init-seed")]
    pub init_seed: Option<u64>,
}

impl ModelSource {
    /// The network of `cfg` (this source's config, loaded) with its weights or its random init.
    pub fn network(&self, cfg: &Config) -> Result<HrNet> {
        let mut net = model(cfg, self.init_seed.unwrap_or(0))?;
        if let Some(path) = &self.model_file {
            load_weights(&mut net, path)?;
        }
        Ok(net)
    }
}

/// The detector flags of `hrk predict` and `hrk serve`.
#[derive(clap::Args, Debug, Clone)]
pub struct DetectorArgs {
    /// Where faces come from without boxes: mtcnn (every face) or none (the whole image).
    #[arg(long, default_value = "mtcnn", value_parser = ["mtcnn", "none"])]
    pub detector: String,
    /// Smallest face the detector looks for, in pixels.
    #[arg(long = "min-face", default_value_t = 20.0)]
    pub min_face: f32,
    /// Detector thresholds: one value for the three stages, or three comma-separated.
    #[arg(long)]
    pub threshold: Option<String>,
    /// Detector weights (.safetensors; default: the embedded MTCNN weights).
    #[arg(long = "detector-weights")]
    pub detector_weights: Option<PathBuf>,
}

impl DetectorArgs {
    /// `--detector mtcnn`.
    pub fn uses_mtcnn(&self) -> bool {
        self.detector == "mtcnn"
    }

    /// The detector's options from `--min-face` and `--threshold`.
    pub fn options(&self) -> Result<DetectorOptions> {
        let thresholds = self.threshold.as_deref().map(parse_thresholds).transpose()?;
        if !(self.min_face.is_finite() && self.min_face >= 1.0) {
            bail!("--min-face {}: expected a size in pixels >= 1", self.min_face);
        }
        let mut options = DetectorOptions { min_face: self.min_face, ..Default::default() };
        if let Some(t) = thresholds {
            options.thresholds = t;
        }
        Ok(options)
    }
}

/// `--threshold 0.6` or `--threshold 0.6,0.7,0.7`, each in (0, 1).
fn parse_thresholds(s: &str) -> Result<[f32; 3]> {
    let bad = || anyhow!("--threshold '{s}': expected one value or three comma-separated values in (0, 1)");
    let v: Vec<f32> = s.split(',').map(|t| t.trim().parse::<f32>()).collect::<Result<_, _>>().map_err(|_| bad())?;
    if !v.iter().all(|t| *t > 0.0 && *t < 1.0) {
        return Err(bad());
    }
    match v[..] {
        [t] => Ok([t; 3]),
        [a, b, c] => Ok([a, b, c]),
        _ => Err(bad()),
    }
}

/// The dataset described by the config; `annotations` overrides DATASET.TRAINSET/TESTSET.
pub fn dataset_spec(cfg: &Config, is_train: bool, annotations: Option<&Path>) -> Result<DatasetSpec> {
    DatasetSpec::from_config(cfg, is_train, annotations)
}

/// `--device cpu|cuda|auto` → the device the model and its inputs go to ([`Device::open`]);
/// a GPU device (or the emulated one) also gets the one-line panic report below.
pub fn device(arg: &str) -> Result<Device> {
    let device = Device::open(arg)?;
    if !matches!(device, Device::Cpu) {
        install_gpu_panic_hook();
    }
    Ok(device)
}

/// Makes a panic from an infallible GPU accessor (a host copy of a device tensor, e.g. `to_f32_vec`, or a
/// device error a caller could not return) end the process with ONE line, like the CLI's errors:
/// "hrk: error: CUDA out of memory copying a 1.2 GiB buffer ...", exit status 1. Other panics keep the
/// default report. Installed when a command selects a GPU device (it lives in the CLI: the library never prints).
pub fn install_gpu_panic_hook() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let payload = info.payload();
            let msg = payload
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| payload.downcast_ref::<&str>().copied())
                .unwrap_or("");
            if msg.starts_with("CUDA ") || msg.starts_with("reading a cuda") || msg.starts_with("reading a emu") {
                eprintln!("hrk: error: {}", msg.replace('\n', " "));
                std::process::exit(1);
            }
            default(info)
        }));
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thresholds_parse() {
        assert_eq!(parse_thresholds("0.5").unwrap(), [0.5; 3]);
        assert_eq!(parse_thresholds("0.6, 0.7,0.8").unwrap(), [0.6, 0.7, 0.8]);
        for bad in ["", "1.5", "0.1,0.2", "a", "0"] {
            assert!(parse_thresholds(bad).unwrap_err().to_string().contains("--threshold"));
        }
    }
}
