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

/// Smallest side a face image may have: below it there is no face to crop (a 1x1 image's whole-image
/// crop is an empty window), so predict, test and train refuse it by name.
pub const MIN_FACE_SIDE: usize = 8;
/// Largest face-box coordinate or side accepted from annotations and `--box`/`--boxes`, in pixels
/// (four times [`MAX_SIDE`]: a box may reach past the image, as the reference pads, but not to 1e30).
pub const MAX_BOX_COORDINATE: f64 = 4.0 * MAX_SIDE as f64;

/// Refuses an image too small to hold a face (`what` names it, only when refused: a path, or a path
/// and CSV line).
pub fn check_face_image_size(what: impl FnOnce() -> String, [width, height]: [usize; 2]) -> Result<()> {
    if width < MIN_FACE_SIDE || height < MIN_FACE_SIDE {
        bail!("{}: image too small ({width}x{height} pixels; a face image needs at least {MIN_FACE_SIDE}x{MIN_FACE_SIDE})", what());
    }
    Ok(())
}

/// Whether the box `[x1, y1, x2, y2]` lies entirely outside a `width`x`height` image (touching an
/// edge counts as outside: not one pixel of the face is in the image).
pub fn box_misses_image([x1, y1, x2, y2]: [f64; 4], [width, height]: [usize; 2]) -> bool {
    x2 <= 0.0 || y2 <= 0.0 || x1 >= width as f64 || y1 >= height as f64
}

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
