//! The decoded image type shared by the data pipeline, and the size limits every decoder checks.

use anyhow::{bail, Result};
use std::path::Path;

/// An RGB image, HWC, values 0..255 stored as f32: what
/// `np.array(PIL.Image.open(p).convert('RGB'), dtype=float32)` gives in the reference.
#[derive(Clone, Debug, PartialEq)]
pub struct Image {
    pub width: usize,
    pub height: usize,
    pub data: Vec<f32>,
}

impl Image {
    /// A black image (all channels 0).
    pub fn zeros(width: usize, height: usize) -> Image {
        Image { width, height, data: vec![0.0; width * height * 3] }
    }

    /// The pixel values as u8 (values are truncated and clamped; crops hold exact integers).
    pub fn to_u8(&self) -> Vec<u8> {
        self.data.iter().map(|&v| v.clamp(0.0, 255.0) as u8).collect()
    }
}

/// Largest accepted side, in pixels.
pub const MAX_SIDE: u64 = 16384;
/// Largest accepted pixel count.
pub const MAX_PIXELS: u64 = 100_000_000;

/// Checks decoded-size limits (before any pixel is decoded).
pub fn check_dimensions(path: &Path, width: u64, height: u64) -> Result<()> {
    if width == 0 || height == 0 {
        bail!("image {}: empty image ({width}x{height})", path.display());
    }
    if width > MAX_SIDE || height > MAX_SIDE || width * height > MAX_PIXELS {
        bail!(
            "image {}: {width}x{height} pixels is larger than supported (max {MAX_SIDE} per side, {} Mpixel)",
            path.display(),
            MAX_PIXELS / 1_000_000
        );
    }
    Ok(())
}
