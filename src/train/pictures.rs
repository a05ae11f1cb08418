//! PNGs the trainer writes: the learning curves (each epoch, via `plot`) and an overlay of a few
//! test predictions (at the end, via `draw`).

use crate::data::image::Image;
use crate::plot::{render_chart, Chart, Series};
use anyhow::{anyhow, Result};
use image::{Rgb, RgbImage};
use std::path::Path;

fn per_epoch(values: &[f64]) -> Vec<(f64, f64)> {
    values.iter().enumerate().map(|(e, &v)| (e as f64, v)).collect()
}

/// Two charts stacked: train/val loss, and validation NME with FR@0.08/0.10 (in %).
pub fn write_curves(
    path: &Path, train_loss: &[f64], val_loss: &[f64], nme: &[f64], fr_008: &[f64], fr_010: &[f64],
) -> Result<()> {
    let pct = |v: &[f64]| v.iter().map(|x| x * 100.0).collect::<Vec<f64>>();
    let loss = Chart::new(
        "heatmap MSE loss",
        "epoch",
        "loss",
        &[Series::new("train", per_epoch(train_loss)), Series::new("validation", per_epoch(val_loss))],
    );
    let mut acc = Chart::new(
        "validation accuracy",
        "epoch",
        "%",
        &[
            Series::new("NME", per_epoch(&pct(nme))),
            Series::new("FR@0.08", per_epoch(&pct(fr_008))),
            Series::new("FR@0.10", per_epoch(&pct(fr_010))),
        ],
    );
    acc.y_range = Some((
        0.0,
        100.0f64.min(pct(nme).iter().chain(&pct(fr_010)).cloned().filter(|v| v.is_finite()).fold(1.0, f64::max) * 1.1),
    ));
    let (a, b) = (render_chart(&loss)?, render_chart(&acc)?);
    let mut out = RgbImage::from_pixel(a.width().max(b.width()), a.height() + b.height(), Rgb([255, 255, 255]));
    image::imageops::replace(&mut out, &a, 0, 0);
    image::imageops::replace(&mut out, &b, 0, i64::from(a.height()));
    save_png(path, &out)
}

/// Writes through a temporary file and a rename, so a reader never sees half a PNG.
fn save_png(path: &Path, img: &RgbImage) -> Result<()> {
    let mut bytes = std::io::Cursor::new(Vec::new());
    img.write_to(&mut bytes, image::ImageFormat::Png)
        .map_err(|e| anyhow!("{}: PNG encoding failed: {e}", path.display()))?;
    crate::atomic_file::write_atomically(path, &bytes.into_inner())
}

/// One overlay tile: the original image, its ground truth and the predicted points.
pub type OverlayItem = (Image, Vec<[f32; 2]>, Vec<[f32; 2]>);

/// A grid of test images (each scaled to `side` px) with the ground truth (red) under the
/// predictions (green, `draw::draw_landmarks`).
pub fn write_overlay(path: &Path, items: &[OverlayItem], side: u32) -> Result<()> {
    if items.is_empty() {
        return Ok(());
    }
    let cols = items.len().min(4) as u32;
    let rows = (items.len() as u32).div_ceil(cols);
    let mut grid = RgbImage::from_pixel(cols * side, rows * side, Rgb([0, 0, 0]));
    for (k, (img, gt, pred)) in items.iter().enumerate() {
        let rgb = crate::draw::to_rgb_image(img)?;
        let zoom = side as f32 / img.width.max(img.height).max(1) as f32;
        let (w, h) = (((img.width as f32 * zoom) as u32).max(1), ((img.height as f32 * zoom) as u32).max(1));
        let mut tile = image::imageops::resize(&rgb, w, h, image::imageops::FilterType::Triangle);
        let scale = |p: &[f32; 2]| [p[0] * zoom, p[1] * zoom];
        for p in gt.iter().map(scale) {
            let (cx, cy) = (p[0].floor() as i64, p[1].floor() as i64);
            for dy in -2..=2i64 {
                for dx in -2..=2i64 {
                    if dx * dx + dy * dy <= 5
                        && cx + dx >= 0
                        && cy + dy >= 0
                        && ((cx + dx) as u32) < w
                        && ((cy + dy) as u32) < h
                    {
                        tile.put_pixel((cx + dx) as u32, (cy + dy) as u32, Rgb([230, 30, 30]));
                    }
                }
            }
        }
        let pred: Vec<[f32; 2]> = pred.iter().map(scale).collect();
        crate::draw::draw_landmarks(&mut tile, &pred, false);
        let (ox, oy) = ((k as u32 % cols) * side, (k as u32 / cols) * side);
        image::imageops::replace(&mut grid, &tile, i64::from(ox), i64::from(oy));
    }
    save_png(path, &grid)
}
