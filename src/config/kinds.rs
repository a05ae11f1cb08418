//! The enums config keys choose between: `MODEL.EXTRA.STAGE*.BLOCK`, `TRAIN.OPTIMIZER`,
//! `DATASET.DATASET` and `TEST.DECODE`. They sit here, below `data` and `model`, so that config
//! checks its keys without importing the modules that act on them.

use anyhow::{bail, Result};

/// Residual block type of an HRNet stage (`BLOCK`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlockKind {
    Basic,
    Bottleneck,
}

impl BlockKind {
    pub fn as_str(self) -> &'static str {
        match self {
            BlockKind::Basic => "BASIC",
            BlockKind::Bottleneck => "BOTTLENECK",
        }
    }
    /// Output channels per input "planes" (1 for BASIC, 4 for BOTTLENECK).
    pub fn expansion(self) -> usize {
        match self {
            BlockKind::Basic => 1,
            BlockKind::Bottleneck => 4,
        }
    }
}

/// `TRAIN.OPTIMIZER`; the reference compares the exact lower-case strings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OptimizerKind {
    Sgd,
    Adam,
}

impl OptimizerKind {
    pub fn as_str(self) -> &'static str {
        match self {
            OptimizerKind::Sgd => "sgd",
            OptimizerKind::Adam => "adam",
        }
    }
}

/// `DATASET.DATASET`: the four dataset classes `get_dataset` knows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DatasetKind {
    Wflw,
    W300,
    Cofw,
    Aflw,
}

impl DatasetKind {
    /// Parses `DATASET.DATASET` ('WFLW' | '300W' | 'COFW' | 'AFLW'; case-insensitive).
    pub fn from_name(name: &str) -> Result<Self> {
        match name.trim().to_ascii_uppercase().as_str() {
            "WFLW" => Ok(Self::Wflw),
            "300W" => Ok(Self::W300),
            "COFW" => Ok(Self::Cofw),
            "AFLW" => Ok(Self::Aflw),
            _ => bail!("unknown dataset '{name}' (expected WFLW, 300W, COFW or AFLW)"),
        }
    }

    /// The exact `DATASET.DATASET` spelling the reference's `get_dataset` accepts.
    pub(super) fn from_exact_name(name: &str) -> Option<Self> {
        match name {
            "AFLW" => Some(Self::Aflw),
            "COFW" => Some(Self::Cofw),
            "300W" => Some(Self::W300),
            "WFLW" => Some(Self::Wflw),
            _ => None,
        }
    }

    /// The official spelling.
    pub fn name(self) -> &'static str {
        match self {
            Self::Wflw => "WFLW",
            Self::W300 => "300W",
            Self::Cofw => "COFW",
            Self::Aflw => "AFLW",
        }
    }

    /// Landmark count of the official protocol.
    pub fn default_joints(self) -> usize {
        match self {
            Self::Wflw => 98,
            Self::W300 => 68,
            Self::Cofw => 29,
            Self::Aflw => 19,
        }
    }
}

/// How a heatmap's sub-pixel position is refined after the argmax (TEST.DECODE).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum DecodeMode {
    /// The reference: a quarter pixel towards the larger neighbour.
    #[default]
    Quarter,
    /// DARK: Gaussian blur, log, second-order Taylor step around the argmax.
    Dark,
}

impl std::str::FromStr for DecodeMode {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "quarter" => Ok(DecodeMode::Quarter),
            "dark" => Ok(DecodeMode::Dark),
            _ => bail!("decode mode {s:?}: expected quarter or dark"),
        }
    }
}

impl DecodeMode {
    pub fn name(self) -> &'static str {
        match self {
            DecodeMode::Quarter => "quarter",
            DecodeMode::Dark => "dark",
        }
    }
}
