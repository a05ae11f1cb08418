//! The range and cross-key rules a merged config must pass, one check per section, run in the
//! order of `defaults.py` so that the first error reported is the first bad key of the file's
//! layout. Every error points at the key's line (`KeyOrigins`).

use super::origin::KeyOrigins;
use super::{Config, DatasetKind, DecodeMode, OptimizerKind, StageConfig};
use anyhow::{bail, Result};

/// Names a key's place in errors.
struct Rules<'a> {
    origin: &'a KeyOrigins,
}

impl Rules<'_> {
    fn at(&self, key: &str) -> String {
        self.origin.place_of(key)
    }

    fn positive(&self, key: &str, value: usize) -> Result<()> {
        if value == 0 {
            bail!("{}: config key {key}: must be at least 1, found 0", self.at(key));
        }
        Ok(())
    }
}

impl Config {
    pub(super) fn validate_with(&self, origin: &KeyOrigins) -> Result<()> {
        let rules = Rules { origin };
        self.check_run(&rules)?;
        self.check_model(&rules)?;
        self.check_dataset(&rules)?;
        self.check_train(&rules)?;
        self.check_test(&rules)?;
        self.check_landmark_indices(&rules)
    }

    /// The top-level keys: GPUS and PRINT_FREQ.
    fn check_run(&self, rules: &Rules) -> Result<()> {
        if self.gpus.is_empty() {
            bail!(
                "{}: config key GPUS: needs at least one entry (batch size = BATCH_SIZE_PER_GPU x len(GPUS))",
                rules.at("GPUS")
            );
        }
        rules.positive("PRINT_FREQ", self.print_freq)
    }

    /// MODEL: sizes, sigma, the head kernel and the three stages.
    fn check_model(&self, rules: &Rules) -> Result<()> {
        rules.positive("MODEL.NUM_JOINTS", self.model.num_joints)?;
        for (key, size) in
            [("MODEL.IMAGE_SIZE", self.model.image_size), ("MODEL.HEATMAP_SIZE", self.model.heatmap_size)]
        {
            if size.contains(&0) {
                bail!("{}: config key {key}: needs 2 positive ints, found [{}, {}]", rules.at(key), size[0], size[1]);
            }
        }
        // HRNet's stem halves the input twice (3x3 convs, stride 2, pad 1) and the head keeps that
        // size, so a different HEATMAP_SIZE would only fail inside the loss.
        let output = self.model.image_size.map(|n| n.div_ceil(2).div_ceil(2));
        if self.model.heatmap_size != output {
            let [iw, ih] = self.model.image_size;
            let [hw, hh] = self.model.heatmap_size;
            bail!(
                "{}: config key MODEL.HEATMAP_SIZE: [{hw}, {hh}] does not match the model's output [{}, {}] (MODEL.IMAGE_SIZE [{iw}, {ih}] / 4, rounded up)",
                rules.at("MODEL.HEATMAP_SIZE"),
                output[0],
                output[1]
            );
        }
        if !(self.model.sigma.is_finite() && self.model.sigma > 0.0) {
            bail!(
                "{}: config key MODEL.SIGMA: must be a positive number, found {:?}",
                rules.at("MODEL.SIGMA"),
                self.model.sigma
            );
        }
        let kernel = self.model.extra.final_conv_kernel;
        if kernel != 1 && kernel != 3 {
            bail!(
                "{}: config key MODEL.EXTRA.FINAL_CONV_KERNEL: must be 1 or 3 (the head pads 1 only for 3), found {kernel}",
                rules.at("MODEL.EXTRA.FINAL_CONV_KERNEL")
            );
        }
        for (name, stage, branches) in [
            ("STAGE2", &self.model.extra.stage2, 2usize),
            ("STAGE3", &self.model.extra.stage3, 3),
            ("STAGE4", &self.model.extra.stage4, 4),
        ] {
            check_stage(rules, name, stage, branches)?;
        }
        Ok(())
    }

    /// DATASET: the dataset class and the augmentation ranges.
    fn check_dataset(&self, rules: &Rules) -> Result<()> {
        if DatasetKind::from_exact_name(&self.dataset.dataset).is_none() {
            bail!(
                "{}: config key DATASET.DATASET: unknown dataset '{}' (one of AFLW, COFW, 300W, WFLW)",
                rules.at("DATASET.DATASET"),
                self.dataset.dataset
            );
        }
        let scale = self.dataset.scale_factor;
        if !(scale.is_finite() && (0.0..1.0).contains(&scale)) {
            bail!(
                "{}: config key DATASET.SCALE_FACTOR: must be in [0, 1), found {scale:?}",
                rules.at("DATASET.SCALE_FACTOR")
            );
        }
        if !(0..=360).contains(&self.dataset.rot_factor) {
            bail!(
                "{}: config key DATASET.ROT_FACTOR: must be between 0 and 360 degrees, found {}",
                rules.at("DATASET.ROT_FACTOR"),
                self.dataset.rot_factor
            );
        }
        Ok(())
    }

    /// TRAIN: the optimizer's numbers, the epoch range and the batch size.
    fn check_train(&self, rules: &Rules) -> Result<()> {
        let train = &self.train;
        if !(train.lr.is_finite() && train.lr > 0.0) {
            bail!("{}: config key TRAIN.LR: must be a positive number, found {:?}", rules.at("TRAIN.LR"), train.lr);
        }
        for (key, value) in
            [("TRAIN.LR_FACTOR", train.lr_factor), ("TRAIN.MOMENTUM", train.momentum), ("TRAIN.WD", train.wd)]
        {
            if !(value.is_finite() && value >= 0.0) {
                bail!("{}: config key {key}: must be a non-negative number, found {value:?}", rules.at(key));
            }
        }
        if train.optimizer == OptimizerKind::Sgd && train.nesterov && train.momentum <= 0.0 {
            bail!(
                "{}: config key TRAIN.NESTEROV: SGD with Nesterov needs TRAIN.MOMENTUM > 0 (PyTorch refuses it too)",
                rules.at("TRAIN.NESTEROV")
            );
        }
        if train.end_epoch <= train.begin_epoch {
            bail!(
                "{}: config key TRAIN.END_EPOCH: {} is not after TRAIN.BEGIN_EPOCH {}, which leaves nothing to train",
                rules.at("TRAIN.END_EPOCH"),
                train.end_epoch,
                train.begin_epoch
            );
        }
        rules.positive("TRAIN.BATCH_SIZE_PER_GPU", train.batch_size_per_gpu)
    }

    /// TEST: the batch size and the decoding.
    fn check_test(&self, rules: &Rules) -> Result<()> {
        rules.positive("TEST.BATCH_SIZE_PER_GPU", self.test.batch_size_per_gpu)?;
        if let Err(e) = self.test.decode.parse::<DecodeMode>() {
            bail!("{}: config key TEST.DECODE: {e}", rules.at("TEST.DECODE"));
        }
        Ok(())
    }

    /// DATASET.FLIP_PAIRS and DATASET.NORM_INDICES: landmark indices below MODEL.NUM_JOINTS.
    fn check_landmark_indices(&self, rules: &Rules) -> Result<()> {
        let joints = self.model.num_joints;
        let pairs = &self.dataset.flip_pairs;
        if !pairs.len().is_multiple_of(2) {
            bail!(
                "{}: config key DATASET.FLIP_PAIRS: needs an even number of indices (pairs), found {}",
                rules.at("DATASET.FLIP_PAIRS"),
                pairs.len()
            );
        }
        // A set, not a joints-long table: NUM_JOINTS is not bounded yet at this point.
        let mut seen = std::collections::HashSet::new();
        for (i, &k) in pairs.iter().enumerate() {
            if k >= joints {
                bail!(
                    "{}: config key DATASET.FLIP_PAIRS[{i}]: index {k} is not below MODEL.NUM_JOINTS {joints}",
                    rules.at("DATASET.FLIP_PAIRS")
                );
            }
            if !seen.insert(k) {
                bail!(
                    "{}: config key DATASET.FLIP_PAIRS[{i}]: landmark {k} appears twice",
                    rules.at("DATASET.FLIP_PAIRS")
                );
            }
        }
        let norm = &self.dataset.norm_indices;
        if !norm.is_empty() && !norm.len().is_multiple_of(2) {
            bail!(
                "{}: config key DATASET.NORM_INDICES: needs two landmarks or two equal groups, found {} indices",
                rules.at("DATASET.NORM_INDICES"),
                norm.len()
            );
        }
        if let Some(i) = norm.iter().position(|&k| k >= joints) {
            bail!(
                "{}: config key DATASET.NORM_INDICES[{i}]: index {} is not below MODEL.NUM_JOINTS {joints}",
                rules.at("DATASET.NORM_INDICES"),
                norm[i]
            );
        }
        Ok(())
    }
}

/// One of MODEL.EXTRA.STAGE2/3/4: HRNetV2's branch count, and one positive entry per branch.
fn check_stage(rules: &Rules, name: &str, stage: &StageConfig, branches: usize) -> Result<()> {
    let key = |k: &str| format!("MODEL.EXTRA.{name}.{k}");
    rules.positive(&key("NUM_MODULES"), stage.num_modules)?;
    if stage.num_branches != branches {
        bail!(
            "{}: config key {}: HRNetV2 {name} has {branches} branches, found {}",
            rules.at(&key("NUM_BRANCHES")),
            key("NUM_BRANCHES"),
            stage.num_branches
        );
    }
    for (list_key, list) in [("NUM_BLOCKS", &stage.num_blocks), ("NUM_CHANNELS", &stage.num_channels)] {
        let full = key(list_key);
        if list.len() != stage.num_branches {
            bail!(
                "{}: config key {full}: has {} entries but NUM_BRANCHES is {}",
                rules.at(&full),
                list.len(),
                stage.num_branches
            );
        }
        if let Some(i) = list.iter().position(|v| *v == 0) {
            bail!("{}: config key {full}[{i}]: must be at least 1, found 0", rules.at(&full));
        }
    }
    Ok(())
}
