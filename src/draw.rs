//! Landmark overlays: points (optionally with index labels) drawn on an RGB image, saved as PNG.

use crate::data::image::Image;
use crate::plot::{draw_text, fill_rect, put};
use anyhow::{anyhow, Result};
use image::{Rgb, RgbImage};
use std::path::Path;

const POINT: Rgb<u8> = Rgb([0, 255, 0]);
const OUTLINE: Rgb<u8> = Rgb([0, 0, 0]);
const LABEL: Rgb<u8> = Rgb([255, 255, 0]);
const BOX: Rgb<u8> = Rgb([255, 64, 32]);

/// The image as 8-bit RGB (values clamped to 0..255).
pub fn to_rgb_image(img: &Image) -> Result<RgbImage> {
    let w = u32::try_from(img.width).map_err(|_| anyhow!("image width {} too large", img.width))?;
    let h = u32::try_from(img.height).map_err(|_| anyhow!("image height {} too large", img.height))?;
    RgbImage::from_raw(w, h, img.to_u8())
        .ok_or_else(|| anyhow!("image buffer does not match {}x{}", img.width, img.height))
}

/// Draws each point as a filled dot with a dark outline, radius scaled to the image size;
/// with `labels`, the 0-based index next to each point. Points outside the image are skipped.
pub fn draw_landmarks(img: &mut RgbImage, points: &[[f32; 2]], labels: bool) {
    let side = img.width().max(img.height()) as f32;
    let r = (side / 250.0).round().clamp(1.0, 8.0) as i64;
    for (i, p) in points.iter().enumerate() {
        if !(p[0].is_finite() && p[1].is_finite()) {
            continue;
        }
        // Continuous coordinates: pixel column i covers [i, i+1).
        let (cx, cy) = (p[0].floor() as i64, p[1].floor() as i64);
        for dy in -(r + 1)..=(r + 1) {
            for dx in -(r + 1)..=(r + 1) {
                let d2 = dx * dx + dy * dy;
                if d2 <= r * r {
                    put(img, cx + dx, cy + dy, POINT);
                } else if d2 <= (r + 1) * (r + 1) {
                    put(img, cx + dx, cy + dy, OUTLINE);
                }
            }
        }
        if labels {
            let s = (r / 2).max(1);
            let text = i.to_string();
            // A dark backing box keeps labels readable on any background.
            fill_rect(img, cx + r + 2, cy - 4 * s, text.len() as i64 * 6 * s, 8 * s, OUTLINE);
            draw_text(img, cx + r + 2, cy - 4 * s + s / 2, &text, LABEL, s);
        }
    }
}

/// Draws a face box `[x1, y1, x2, y2]` (pixels) as a rectangle outline, line width scaled to the
/// image size; the parts outside the image are clipped.
pub fn draw_box(img: &mut RgbImage, bbox: [f64; 4]) {
    if !bbox.iter().all(|v| v.is_finite()) {
        return;
    }
    let side = img.width().max(img.height()) as f64;
    let t = (side / 400.0).round().clamp(1.0, 6.0) as i64;
    // Clamped so that a huge box cannot make the loops below run long.
    let lim = side as i64 + 8;
    let [x1, y1, x2, y2] = bbox.map(|v| (v.floor() as i64).clamp(-lim, 2 * lim));
    let (w, h) = (x2 - x1 + 1, y2 - y1 + 1);
    fill_rect(img, x1, y1, w, t, BOX);
    fill_rect(img, x1, y2 - t + 1, w, t, BOX);
    fill_rect(img, x1, y1, t, h, BOX);
    fill_rect(img, x2 - t + 1, y1, t, h, BOX);
}

/// Writes a face's track `id` just above its box's top-left corner (inside the box where the top
/// is at the image's edge), in the box's colour on a dark backing, sized to the image.
pub fn draw_face_id(img: &mut RgbImage, bbox: [f64; 4], id: u32) {
    if !bbox.iter().all(|v| v.is_finite()) {
        return;
    }
    let side = img.width().max(img.height()) as f64;
    let s = (side / 320.0).round().clamp(1.0, 6.0) as i64;
    let lim = side as i64 + 8;
    let (x1, y1) = (bbox[0].floor() as i64, bbox[1].floor() as i64);
    let (x, y) = (x1.clamp(0, lim), (y1 - 10 * s).clamp(0, lim));
    let text = id.to_string();
    fill_rect(img, x, y, crate::plot::text_width(&text, s) + 2 * s, 9 * s, OUTLINE);
    draw_text(img, x + s, y + s, &text, BOX, s);
}

/// Draws `points` on a copy of `img` and writes it to `path` as PNG.
pub fn save_overlay(path: &Path, img: &Image, points: &[[f32; 2]], labels: bool) -> Result<()> {
    let mut rgb = to_rgb_image(img)?;
    draw_landmarks(&mut rgb, points, labels);
    let mut png = std::io::Cursor::new(Vec::new());
    rgb.write_to(&mut png, image::ImageFormat::Png)
        .map_err(|e| anyhow!("cannot write overlay {}: {}", path.display(), e))?;
    crate::atomic_file::write_atomically(path, png.get_ref()).map_err(|e| anyhow!("overlay {e:#}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn points_are_drawn_where_they_are() {
        let img = Image::zeros(100, 80);
        let mut rgb = to_rgb_image(&img).unwrap();
        draw_landmarks(&mut rgb, &[[10.5, 20.5], [-50.0, 3.0], [f32::NAN, 1.0]], true);
        assert_eq!(*rgb.get_pixel(10, 20), POINT);
        assert!(rgb.pixels().any(|p| *p == LABEL));
    }

    #[test]
    fn boxes_are_outlined_and_clipped() {
        let mut rgb = to_rgb_image(&Image::zeros(100, 80)).unwrap();
        draw_box(&mut rgb, [10.0, 20.0, 50.5, 60.0]);
        draw_box(&mut rgb, [-1e9, -5.0, 1e9, 1e12]);
        assert_eq!(*rgb.get_pixel(10, 40), BOX);
        assert_eq!(*rgb.get_pixel(50, 40), BOX);
        assert_eq!(*rgb.get_pixel(30, 20), BOX);
        assert_eq!(*rgb.get_pixel(30, 40), Rgb([0, 0, 0]));
    }

    /// The id sits above the box, or inside it where the box touches the top edge.
    #[test]
    fn face_ids_are_written_by_their_box() {
        let mut rgb = to_rgb_image(&Image::zeros(100, 80)).unwrap();
        draw_face_id(&mut rgb, [20.0, 40.0, 60.0, 70.0], 7);
        let lit: Vec<(u32, u32)> =
            rgb.enumerate_pixels().filter(|(_, _, p)| **p == BOX).map(|(x, y, _)| (x, y)).collect();
        assert!(!lit.is_empty() && lit.iter().all(|&(x, y)| (20..30).contains(&x) && (30..40).contains(&y)), "{lit:?}");
        let mut top = to_rgb_image(&Image::zeros(100, 80)).unwrap();
        draw_face_id(&mut top, [-5.0, 0.0, 60.0, 70.0], 12);
        draw_face_id(&mut top, [f64::NAN, 0.0, 1.0, 1.0], 1);
        assert!(top.enumerate_pixels().any(|(x, y, p)| *p == BOX && x < 12 && y < 10));
    }
}
