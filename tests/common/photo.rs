//! A photo-like test picture, for the region-decode tests and examples/loader_speed.rs (which includes
//! this file by path: it sees nothing else of `common`).

/// A w×h picture with smooth shading, rings, edges and a little noise (about the entropy of a photo, so
/// its JPEG is photo-sized); `k` shifts the rings and the noise, one picture per k.
pub fn photo_like(w: u32, h: u32, k: u32) -> image::RgbImage {
    image::RgbImage::from_fn(w, h, |x, y| {
        let (fx, fy) = (x as f32 / w as f32, y as f32 / h as f32);
        let ring = ((fx - 0.5).hypot(fy - 0.5) * 40.0 + k as f32).sin() * 40.0;
        let noise = ((x.wrapping_mul(2654435761) ^ y.wrapping_mul(40503) ^ k) % 23) as f32;
        image::Rgb([
            (90.0 + 100.0 * fx + ring + noise).clamp(0.0, 255.0) as u8,
            (60.0 + 120.0 * fy + noise).clamp(0.0, 255.0) as u8,
            (140.0 - ring + noise * 0.5).clamp(0.0, 255.0) as u8,
        ])
    })
}
