//! PNGs the trainer writes: the learning curves (each epoch) and an overlay of a few test
//! predictions (at the end).
//!
//! TEMPORARY (swap at merge): `write_curves` is a minimal stand-in for `src/plot.rs` (the eval
//! helper's line-chart module), which was not in this tree yet: two panels without text —
//! left: train loss (blue) and val loss (orange), log scale; right: val NME (green) and
//! FR@0.10 (red), linear from 0. Axis ranges are printed in the log instead.

use crate::data::image::Image;
use anyhow::{anyhow, Result};
use std::path::Path;

struct Canvas {
    w: usize,
    h: usize,
    rgb: Vec<u8>,
}

impl Canvas {
    fn new(w: usize, h: usize) -> Canvas {
        Canvas { w, h, rgb: vec![255; w * h * 3] }
    }
    fn put(&mut self, x: i64, y: i64, c: [u8; 3]) {
        if x >= 0 && y >= 0 && (x as usize) < self.w && (y as usize) < self.h {
            let o = (y as usize * self.w + x as usize) * 3;
            self.rgb[o..o + 3].copy_from_slice(&c);
        }
    }
    fn line(&mut self, (x0, y0): (f64, f64), (x1, y1): (f64, f64), c: [u8; 3]) {
        let steps = ((x1 - x0).abs().max((y1 - y0).abs()).ceil() as usize).max(1);
        for s in 0..=steps {
            let t = s as f64 / steps as f64;
            let (x, y) = (x0 + (x1 - x0) * t, y0 + (y1 - y0) * t);
            for (dx, dy) in [(0, 0), (1, 0), (0, 1)] {
                self.put(x.round() as i64 + dx, y.round() as i64 + dy, c);
            }
        }
    }
    fn dot(&mut self, x: f64, y: f64, r: i64, c: [u8; 3]) {
        let (cx, cy) = (x.floor() as i64, y.floor() as i64);
        for dy in -r..=r {
            for dx in -r..=r {
                if dx * dx + dy * dy <= r * r + 1 {
                    self.put(cx + dx, cy + dy, c);
                }
            }
        }
    }
    fn save(&self, path: &Path) -> Result<()> {
        let mut bytes = Vec::new();
        image::codecs::png::PngEncoder::new(&mut bytes)
            .write_image(&self.rgb, self.w as u32, self.h as u32, image::ExtendedColorType::Rgb8)
            .map_err(|e| anyhow!("{}: PNG encoding failed: {e}", path.display()))?;
        crate::io::safetensors::write_atomically(path, &bytes)
    }
}

use image::ImageEncoder;

/// One panel: series of (epoch, value) in a box at (ox, oy) of size (pw, ph).
fn panel(c: &mut Canvas, (ox, oy, pw, ph): (f64, f64, f64, f64), series: &[(&[f64], [u8; 3])], log: bool, epochs: usize) {
    let grey = [160, 160, 160];
    c.line((ox, oy), (ox, oy + ph), grey);
    c.line((ox, oy + ph), (ox + pw, oy + ph), grey);
    let tf = |v: f64| if log { v.max(1e-12).log10() } else { v };
    let vals: Vec<f64> = series.iter().flat_map(|(s, _)| s.iter().copied()).filter(|v| v.is_finite()).map(tf).collect();
    if vals.is_empty() {
        return;
    }
    let mut lo = if log { vals.iter().cloned().fold(f64::INFINITY, f64::min) } else { 0.0 };
    let mut hi = vals.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    if hi - lo < 1e-12 {
        hi += 0.5;
        lo -= 0.5;
    }
    let xs = |e: usize| ox + pw * if epochs <= 1 { 0.5 } else { e as f64 / (epochs - 1) as f64 };
    let ys = |v: f64| oy + ph - ph * (tf(v) - lo) / (hi - lo);
    for (s, color) in series {
        let mut prev: Option<(f64, f64)> = None;
        for (e, &v) in s.iter().enumerate() {
            if !v.is_finite() {
                prev = None;
                continue;
            }
            let p = (xs(e), ys(v));
            if let Some(q) = prev {
                c.line(q, p, *color);
            }
            c.dot(p.0, p.1, 2, *color);
            prev = Some(p);
        }
    }
}

/// Learning curves, one value per epoch in each series.
pub fn write_curves(path: &Path, train_loss: &[f64], val_loss: &[f64], nme: &[f64], fr_010: &[f64]) -> Result<()> {
    let mut c = Canvas::new(960, 360);
    let epochs = train_loss.len().max(val_loss.len()).max(nme.len());
    panel(&mut c, (40.0, 20.0, 400.0, 310.0), &[(train_loss, [31, 119, 180]), (val_loss, [255, 127, 14])], true, epochs);
    panel(&mut c, (520.0, 20.0, 400.0, 310.0), &[(nme, [44, 160, 44]), (fr_010, [214, 39, 40])], false, epochs);
    c.save(path)
}

/// A grid of images (original pixels) with ground truth (red) and predictions (green).
pub fn write_overlay(path: &Path, items: &[(Image, Vec<[f32; 2]>, Vec<[f32; 2]>)], max_side: usize) -> Result<()> {
    if items.is_empty() {
        return Ok(());
    }
    let cols = items.len().min(4);
    let rows = items.len().div_ceil(cols);
    let mut c = Canvas::new(cols * max_side, rows * max_side);
    for (k, (img, gt, pred)) in items.iter().enumerate() {
        let (ox, oy) = ((k % cols) * max_side, (k / cols) * max_side);
        let zoom = max_side as f64 / img.width.max(img.height).max(1) as f64;
        for y in 0..max_side {
            for x in 0..max_side {
                let (sx, sy) = ((x as f64 / zoom) as usize, (y as f64 / zoom) as usize);
                if sx < img.width && sy < img.height {
                    let o = (sy * img.width + sx) * 3;
                    let px = [img.data[o], img.data[o + 1], img.data[o + 2]].map(|v| v.clamp(0.0, 255.0) as u8);
                    c.put((ox + x) as i64, (oy + y) as i64, px);
                }
            }
        }
        for p in gt {
            c.dot(ox as f64 + p[0] as f64 * zoom, oy as f64 + p[1] as f64 * zoom, 2, [230, 30, 30]);
        }
        for p in pred {
            c.dot(ox as f64 + p[0] as f64 * zoom, oy as f64 + p[1] as f64 * zoom, 1, [30, 230, 30]);
        }
    }
    c.save(path)
}
