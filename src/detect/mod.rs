//! Face detection (MTCNN). PLACEHOLDER until the detector slice is merged: the types and signatures
//! are the real module's, `detect` answers an error. `hrk predict` is written against this API only.

use crate::data::image::Image;
use crate::tensor::Device;
use anyhow::{bail, Result};
use std::path::Path;

/// One detected face in original-image pixels.
#[derive(Clone, Debug, PartialEq)]
pub struct Detection {
    /// x1, y1, x2, y2.
    pub bbox: [f32; 4],
    pub score: f32,
    /// Eyes, nose, mouth corners (x, y).
    pub points: [[f32; 2]; 5],
}

/// The cascade's knobs (facenet-pytorch's `MTCNN` defaults).
#[derive(Clone, Debug)]
pub struct DetectorOptions {
    pub min_face: f32,
    pub thresholds: [f32; 3],
    pub factor: f32,
}

impl Default for DetectorOptions {
    fn default() -> Self {
        DetectorOptions { min_face: 20.0, thresholds: [0.6, 0.7, 0.7], factor: 0.709 }
    }
}

/// The P-Net / R-Net / O-Net cascade.
pub struct Mtcnn {
    _device: Device,
}

impl Mtcnn {
    /// The networks from `weights` (default: the embedded file) on `device`.
    pub fn load(_weights: Option<&Path>, device: &Device) -> Result<Mtcnn> {
        Ok(Mtcnn { _device: device.clone() })
    }

    /// Every face in `image`.
    pub fn detect(&self, _image: &Image, _opts: &DetectorOptions) -> Result<Vec<Detection>> {
        bail!("detector not merged yet")
    }
}
