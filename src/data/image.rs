//! The decoded image type shared by the data pipeline.

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
