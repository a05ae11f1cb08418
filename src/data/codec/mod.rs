//! The heatmap codec (mmpose's idea): landmarks ↔ heatmaps in one place. Encoding makes the training
//! targets (the dataset's `__getitem__`), decoding turns network heatmaps back into image
//! coordinates (argmax, quarter-pixel shift, inverse crop transform) for evaluation and prediction.

mod decode;
mod encode;

pub use decode::{
    argmax_1based, dark_blur, dark_coords, decode_preds, decode_preds_with, heatmap_coords, refine_coords,
};
pub use encode::{exp_f32, gaussian_patch, generate_target, generate_target_cauchy};

use crate::data::dataset::DatasetSpec;

/// The target shape of MODEL.TARGET_TYPE.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TargetKind {
    /// `exp(-d²/2σ²)`, the reference's default.
    Gaussian,
    /// The reference's other branch: `σ / (d² + σ²)^1.5`.
    Cauchy,
}

/// What the targets of a data set look like: heatmap size `[rows, cols]`, σ and shape.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct HeatmapCodec {
    pub heatmap_size: [usize; 2],
    pub sigma: f64,
    pub kind: TargetKind,
}

impl HeatmapCodec {
    pub fn gaussian(heatmap_size: [usize; 2], sigma: f64) -> HeatmapCodec {
        HeatmapCodec { heatmap_size, sigma, kind: TargetKind::Gaussian }
    }

    /// The codec of a dataset spec (any TARGET_TYPE but "Gaussian" takes the reference's else branch).
    pub fn for_spec(spec: &DatasetSpec) -> HeatmapCodec {
        let kind = if spec.target_type == "Gaussian" { TargetKind::Gaussian } else { TargetKind::Cauchy };
        HeatmapCodec { heatmap_size: spec.heatmap_size, sigma: spec.sigma, kind }
    }

    /// Values in the targets of `joints` landmarks: J·h·w.
    pub fn target_len(&self, joints: usize) -> usize {
        joints * self.heatmap_size[0] * self.heatmap_size[1]
    }
}
