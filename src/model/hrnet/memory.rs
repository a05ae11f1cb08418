//! The memory a batch needs, estimated from the model config before anything is allocated, and the
//! one-line refusal when the process may not allocate that much (see `crate::memory_budget`).
//!
//! The estimate is a coarse upper bound, in f64 (an absurd config cannot overflow it):
//!
//! ```text
//! A         = Σ c·h·w over the layer outputs of one image (conv outputs, fuse sums, the head; see
//!             `activation_elements`), in elements
//! loader    = 3·H·W + J·h·w elements per image (input crop, target heatmaps), for every batch the
//!             loader holds (`BatchShape::in_flight`)
//! training  = batch · (TRAIN_FACTOR · A + 4 B · in_flight · loader) + 16 B · parameters (weights,
//!             gradients, Adam's two moments)
//! inference = batch · (INFER_FACTOR · A + 4 B · in_flight · loader) + 8 B · parameters (weights and
//!             the folded engine's copy)
//! ```
//!
//! plus `BASE_BYTES` for the binary, its threads and the allocator. The factors come from the peak
//! RSS (`/usr/bin/time -v`, maximum resident set size) of `hrk bench --iters 1 --warmup 1` on a
//! 2-core AMD EPYC (Zen 4), against A of the same config:
//!
//! ```text
//! config (channels, input)   batch  inference RSS    training RSS      A per image
//! tiny (8..64, 128²)          1 / 4  25 / 36 MiB      52 / 129 MiB      3.3 M
//! tiny (8..64, 256²)          1 / 4  47 / 81 MiB      131 / 435 MiB     13.2 M
//! tiny (8..64, 512²)          1 / 4  98 / 249 MiB     449 / 1653 MiB    52.6 M
//! W18 (18..144, 256²)         1 / 4  172 / 217 MiB    382 / 935 MiB     35.4 M
//! W18 (18..144, 512²)         1      282 MiB          943 MiB           141.4 M
//! ```
//!
//! (tiny: experiments/synthetic's config, W18: experiments/300w's, IMAGE_SIZE and HEATMAP_SIZE changed.)
//! Each further image adds about 8.0 B per element of A in training (tiny; 5.5 for W18: the tape keeps
//! each conv output, its BN output and its ReLU output, and the backward adds gradients of the same
//! sizes) and about 1.0 B in inference (0.4 for W18: the folded engine keeps only the live branches);
//! the factors below carry a margin over both, so a batch the estimate admits is one the measurements
//! say fits.

use super::spec::{BlockKind, HrnetSpec};
use crate::config::Config;
use crate::data::loader::LoaderConfig;
use crate::memory_budget::{self, human_bytes};
use crate::tensor::Device;
use anyhow::{bail, Result};

/// Bytes per element of A a training step holds at its peak (measured 5.5 to 8.0, see the module
/// doc), with a margin.
const TRAIN_FACTOR: f64 = 10.0;
/// The same for inference (measured 0.4 to 1.0).
const INFER_FACTOR: f64 = 1.5;
/// The binary, its thread stacks and the allocator's arenas before any batch (measured 25 MiB).
const BASE_BYTES: f64 = 64.0 * 1048576.0;

/// What the estimate is for: a training step (forward, backward, optimizer) or inference.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pass {
    Train,
    Infer,
}

/// The shape of one batch: images per batch, input [h, w], heatmap [h, w], and how many batches the
/// data loader holds at once (built ahead and being built, plus the one in use).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatchShape {
    pub batch: usize,
    pub image: [usize; 2],
    pub heatmap: [usize; 2],
    pub in_flight: usize,
}

impl HrnetSpec {
    /// Elements of every layer output for one `h`×`w` image (an upper bound of the plan's): the stem,
    /// layer1, each stage's transitions, blocks and fuse layers, and the head.
    pub fn activation_elements(&self, h: usize, w: usize) -> f64 {
        // A stride-2 3x3 conv with padding 1 gives ceil(x / 2).
        let half = |x: f64| (x / 2.0).ceil();
        let (h1, w1) = (half(h as f64), half(w as f64));
        let plane = |branch: usize| {
            let (mut y, mut x) = (half(h1), half(w1));
            for _ in 0..branch {
                (y, x) = (half(y), half(x));
            }
            y * x
        };
        // Stem (two 64-channel convs) and layer1 (four bottlenecks 64 → 64 → 256, one downsample).
        let mut total = 64.0 * h1 * w1 + 64.0 * plane(0) + (4.0 * (64.0 + 64.0 + 256.0) + 256.0) * plane(0);
        let mut prev = vec![256.0];
        for s in &self.stages {
            let expansion = s.block.expansion() as f64;
            let cur: Vec<f64> = s.num_channels.iter().map(|&c| c as f64 * expansion).collect();
            let widest_prev = prev.iter().copied().fold(0.0, f64::max);
            for (i, &c) in cur.iter().enumerate() {
                if i >= prev.len() {
                    // A new branch: 3x3 stride-2 convs from the last branch down to it.
                    total += (prev.len()..=i).map(|k| c.max(widest_prev) * plane(k)).sum::<f64>();
                } else if prev[i] != c {
                    total += c * plane(i);
                }
            }
            let mut module = 0.0;
            for (b, (&planes, &blocks)) in s.num_channels.iter().zip(&s.num_blocks).enumerate() {
                let per_block = match s.block {
                    BlockKind::Basic => 2.0 * planes as f64,
                    BlockKind::Bottleneck => 6.0 * planes as f64,
                };
                // Blocks, and a projection of the first block at most.
                module += (blocks as f64 * per_block + cur[b]) * plane(b);
            }
            if s.num_branches > 1 {
                for i in 0..s.num_branches {
                    // Every other branch brought to branch i (convs at its own size and resizes or
                    // stride-2 convs down to i's: at most one map of each size), and the sum.
                    let others: f64 = (0..s.num_branches)
                        .filter(|&j| j != i)
                        .map(|j| cur[i].max(cur[j]) * (plane(i) + plane(j)))
                        .sum();
                    module += others + cur[i] * plane(i);
                }
            }
            total += s.num_modules as f64 * module;
            prev = cur;
        }
        // Head: the branches resized and concatenated, head.0's conv, the joints' maps.
        let c: f64 = prev.iter().sum();
        total + 2.0 * c * plane(0) + self.num_joints as f64 * plane(0)
    }

    /// The bytes a batch of `shape` needs for `pass` (the module doc's formula).
    pub fn batch_bytes(&self, shape: &BatchShape, pass: Pass) -> f64 {
        let [ih, iw] = shape.image.map(|v| v as f64);
        let [hh, hw] = shape.heatmap.map(|v| v as f64);
        let loader = (3.0 * ih * iw + self.num_joints as f64 * hh * hw) * shape.in_flight.max(1) as f64;
        let acts = self.activation_elements(shape.image[0], shape.image[1]);
        let (factor, per_param) = match pass {
            Pass::Train => (TRAIN_FACTOR, 16.0),
            Pass::Infer => (INFER_FACTOR, 8.0),
        };
        BASE_BYTES + shape.batch as f64 * (factor * acts + 4.0 * loader) + per_param * self.approx_params()
    }

    /// Refuses, in one line, a batch whose estimate exceeds what the process may allocate: `what` is
    /// the batch ("a training batch of 16 images at 256x256"), `lower` what the user can lower.
    pub fn check_batch_fits(&self, shape: &BatchShape, pass: Pass, what: &str, lower: &str) -> Result<()> {
        let need = self.batch_bytes(shape, pass);
        let cap =
            crate::switches::memory_limit_mb().map(|mb| ((mb as u64).saturating_mul(1 << 20), "HRK_MEMORY_LIMIT_MB"));
        check_fits(need, memory_budget::available(cap), what, lower)
    }
}

/// Refuses a batch of `cfg`'s model that the process may not hold (see the module doc): `batch` images,
/// `loader_workers` the data loader's threads (None: no loader, one host batch), `lower` the settings to
/// name. On a GPU the activations live in device memory, whose allocator reports its own failures, so
/// only a CPU run is estimated.
pub fn check_batch_memory(
    cfg: &Config, device: &Device, pass: Pass, batch: usize, loader_workers: Option<usize>, lower: &str,
) -> Result<()> {
    if device.is_gpu() {
        return Ok(());
    }
    let spec = HrnetSpec::from_config(cfg)?;
    let in_flight = loader_workers.map_or(1, |w| LoaderConfig::new(batch, false, w, 0).batches_held());
    let shape = BatchShape { batch, image: cfg.model.image_size, heatmap: cfg.model.heatmap_size, in_flight };
    let [a, b] = shape.image;
    let kind = match pass {
        Pass::Train => "a training",
        Pass::Infer => "an inference",
    };
    spec.check_batch_fits(&shape, pass, &format!("{kind} batch of {batch} image(s) at {a}x{b}"), lower)
}

/// `need` bytes against `budget` (None: nothing bounds the process).
fn check_fits(need: f64, budget: Option<memory_budget::Budget>, what: &str, lower: &str) -> Result<()> {
    match budget {
        Some(b) if need > b.bytes as f64 => {
            let need = if need >= u64::MAX as f64 { format!("{need:.2e} bytes") } else { human_bytes(need as u64) };
            bail!("not enough memory: {what} needs about {need}, but this process may allocate only {b}; lower {lower}")
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory_budget::{Budget, Source};

    fn shape(batch: usize, side: usize) -> BatchShape {
        BatchShape { batch, image: [side, side], heatmap: [side / 4, side / 4], in_flight: 3 }
    }

    #[test]
    fn the_estimate_grows_with_batch_and_size_and_training_needs_more() {
        let spec = HrnetSpec::w18(68);
        let small = spec.batch_bytes(&shape(1, 256), Pass::Train);
        assert!(spec.batch_bytes(&shape(4, 256), Pass::Train) > 3.0 * (small - BASE_BYTES));
        assert!(spec.batch_bytes(&shape(1, 512), Pass::Train) > small);
        assert!(spec.batch_bytes(&shape(1, 256), Pass::Infer) < small);
        // W18 at 256²: about 35 M elements per image (the module doc's table).
        let a = spec.activation_elements(256, 256);
        assert!((34e6..37e6).contains(&a), "{a}");
    }

    /// The module doc's measurements: (spec, side, batch, inference MiB, training MiB).
    fn measured() -> Vec<(HrnetSpec, usize, usize, f64, f64)> {
        let mut tiny = HrnetSpec::w18(68);
        for (k, st) in tiny.stages.iter_mut().enumerate() {
            st.num_modules = 1;
            st.num_blocks = vec![2; k + 2];
            st.num_channels = (0..k + 2).map(|i| 8 << i).collect();
        }
        let w18 = HrnetSpec::w18(68);
        vec![
            (tiny.clone(), 128, 1, 25.0, 52.0),
            (tiny.clone(), 128, 4, 36.0, 129.0),
            (tiny.clone(), 256, 1, 47.0, 131.0),
            (tiny.clone(), 256, 4, 81.0, 435.0),
            (tiny.clone(), 512, 1, 98.0, 449.0),
            (tiny, 512, 4, 249.0, 1653.0),
            (w18.clone(), 256, 1, 172.0, 382.0),
            (w18.clone(), 256, 4, 217.0, 935.0),
            (w18, 512, 1, 282.0, 943.0),
        ]
    }

    #[test]
    fn the_estimate_covers_every_measured_peak_within_a_few_times() {
        for (spec, side, batch, infer, train) in measured() {
            let shape = BatchShape { batch, image: [side, side], heatmap: [side / 4, side / 4], in_flight: 1 };
            for (pass, peak) in [(Pass::Infer, infer), (Pass::Train, train)] {
                let mib = spec.batch_bytes(&shape, pass) / 1048576.0;
                assert!(mib >= peak && mib <= 4.0 * peak, "{side}² batch {batch} {pass:?}: {mib:.0} MiB for {peak}");
            }
        }
    }

    #[test]
    fn a_batch_over_the_budget_is_refused_in_one_line() {
        let budget = Some(Budget { bytes: 4 << 30, source: Source::AddressSpace });
        assert!(check_fits(1e9, budget, "x", "y").is_ok());
        assert!(check_fits(1e30, None, "x", "y").is_ok());
        let e = check_fits(80.0 * 1073741824.0, budget, "a training batch of 16 images at 8192x8192", "BATCH")
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "not enough memory: a training batch of 16 images at 8192x8192 needs about 80.0 GiB, but this process \
             may allocate only 4.0 GiB (address-space limit, ulimit -v); lower BATCH"
        );
        let e = check_fits(1e300, budget, "x", "y").unwrap_err().to_string();
        assert!(e.contains("1.00e300 bytes"), "{e}");
    }
}
