//! What HRNetV2 is made of: the stage specs of MODEL.EXTRA and NUM_JOINTS, checked before anything is built.

use crate::config::{ModelConfig, StageConfig};
use anyhow::{bail, Result};

pub use crate::config::BlockKind;

/// One of STAGE2/3/4.
#[derive(Clone, Debug, PartialEq)]
pub struct StageSpec {
    pub num_modules: usize,
    pub num_branches: usize,
    pub block: BlockKind,
    pub num_blocks: Vec<usize>,
    pub num_channels: Vec<usize>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct HrnetSpec {
    pub num_joints: usize,
    pub final_conv_kernel: usize,
    pub stages: Vec<StageSpec>,
}

impl HrnetSpec {
    /// HRNetV2-W18 as in the official face configs.
    pub fn w18(num_joints: usize) -> HrnetSpec {
        let st = |m, b: usize, c: &[usize]| StageSpec {
            num_modules: m,
            num_branches: b,
            block: BlockKind::Basic,
            num_blocks: vec![4; b],
            num_channels: c.to_vec(),
        };
        HrnetSpec {
            num_joints,
            final_conv_kernel: 1,
            stages: vec![st(1, 2, &[18, 36]), st(4, 3, &[18, 36, 72]), st(3, 4, &[18, 36, 72, 144])],
        }
    }

    /// MODEL.NUM_JOINTS and MODEL.EXTRA of a loaded config, validated: the one place a spec is made
    /// from a config.
    pub fn from_model_config(model: &ModelConfig) -> Result<HrnetSpec> {
        let e = &model.extra;
        let stage = |s: &StageConfig| StageSpec {
            num_modules: s.num_modules,
            num_branches: s.num_branches,
            block: s.block,
            num_blocks: s.num_blocks.clone(),
            num_channels: s.num_channels.clone(),
        };
        let spec = HrnetSpec {
            num_joints: model.num_joints,
            final_conv_kernel: e.final_conv_kernel,
            stages: vec![stage(&e.stage2), stage(&e.stage3), stage(&e.stage4)],
        };
        spec.validate()?;
        Ok(spec)
    }

    /// `from_model_config` of the config's MODEL section; an error names MODEL.EXTRA at its place in
    /// the config file.
    pub fn from_config(cfg: &crate::config::Config) -> Result<HrnetSpec> {
        HrnetSpec::from_model_config(&cfg.model).map_err(|e| cfg.key_error("MODEL.EXTRA", e))
    }

    pub fn validate(&self) -> Result<()> {
        if self.num_joints == 0 {
            bail!("model: NUM_JOINTS must be positive");
        }
        if !matches!(self.final_conv_kernel, 1 | 3) {
            bail!("model: FINAL_CONV_KERNEL must be 1 or 3, got {}", self.final_conv_kernel);
        }
        if self.stages.len() != 3 {
            bail!("model: expected STAGE2, STAGE3 and STAGE4, got {} stages", self.stages.len());
        }
        let mut prev_branches = 1;
        for (k, s) in self.stages.iter().enumerate() {
            let name = format!("STAGE{}", k + 2);
            if s.num_branches == 0 || s.num_modules == 0 {
                bail!("model: {name} needs NUM_BRANCHES and NUM_MODULES ≥ 1");
            }
            if s.num_blocks.len() != s.num_branches || s.num_channels.len() != s.num_branches {
                bail!(
                    "model: {name}: NUM_BLOCKS {:?} and NUM_CHANNELS {:?} must both have NUM_BRANCHES = {} entries",
                    s.num_blocks,
                    s.num_channels,
                    s.num_branches
                );
            }
            if s.num_blocks.iter().chain(&s.num_channels).any(|&v| v == 0) {
                bail!("model: {name}: NUM_BLOCKS and NUM_CHANNELS must be positive");
            }
            if s.num_branches < prev_branches {
                bail!("model: {name} has fewer branches ({}) than the stage before ({prev_branches})", s.num_branches);
            }
            prev_branches = s.num_branches;
        }
        // Configs come from the internet: refuse sizes that would allocate absurdly (or overflow
        // a shape product) before building anything.
        let params = self.approx_params();
        if params > MAX_PARAMS {
            bail!(
                "model: NUM_CHANNELS {:?} / NUM_BLOCKS / NUM_MODULES / NUM_JOINTS {} give about {params:.2e} parameters, more than the {MAX_PARAMS:.0e} supported",
                self.stages.iter().map(|s| &s.num_channels).collect::<Vec<_>>(),
                self.num_joints
            );
        }
        Ok(())
    }

    /// An upper estimate of the parameter count (f64: never overflows).
    pub fn approx_params(&self) -> f64 {
        let mut total = 0.0f64;
        let mut prev: f64 = 256.0;
        for s in &self.stages {
            let exp = s.block.expansion() as f64;
            let cur: Vec<f64> = s.num_channels.iter().map(|&c| c as f64 * exp).collect();
            let sum: f64 = cur.iter().sum();
            // transition: 3x3 convs from the previous widths
            total += 9.0 * prev * sum;
            // per module: blocks (at most two 3x3 convs of width c·exp each) and the fuse layers
            let blocks: f64 = cur.iter().zip(&s.num_blocks).map(|(c, &n)| n as f64 * 18.0 * c * c).sum();
            total += s.num_modules as f64 * (blocks + 9.0 * sum * sum);
            prev = sum;
        }
        total + prev * prev + prev * self.num_joints as f64 * (self.final_conv_kernel * self.final_conv_kernel) as f64
    }
}

/// The largest model `HrnetSpec::validate` accepts (HRNetV2-W18 has about 1e7 parameters).
pub const MAX_PARAMS: f64 = 1e9;

impl TryFrom<&ModelConfig> for HrnetSpec {
    type Error = anyhow::Error;
    fn try_from(model: &ModelConfig) -> Result<HrnetSpec> {
        HrnetSpec::from_model_config(model)
    }
}
