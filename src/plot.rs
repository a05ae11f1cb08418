//! A small PNG line-chart plotter (no plotting dependency): axes with "nice" ticks, tick labels,
//! title, axis labels and a legend, drawn with a built-in 5×7 bitmap font. Used for CED curves
//! (`hrk test`) and training curves (`hrk train`).

use anyhow::{anyhow, bail, Result};
use image::{Rgb, RgbImage};
use std::path::Path;

/// One named curve.
#[derive(Clone, Debug, PartialEq)]
pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
}

impl Series {
    pub fn new(name: impl Into<String>, points: Vec<(f64, f64)>) -> Series {
        Series { name: name.into(), points }
    }
}

/// A chart with optional fixed axis ranges (otherwise fitted to the data).
#[derive(Clone, Debug, PartialEq)]
pub struct Chart {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    pub series: Vec<Series>,
    pub x_range: Option<(f64, f64)>,
    pub y_range: Option<(f64, f64)>,
    pub width: u32,
    pub height: u32,
}

impl Chart {
    pub fn new(title: &str, x_label: &str, y_label: &str, series: &[Series]) -> Chart {
        Chart {
            title: title.to_string(),
            x_label: x_label.to_string(),
            y_label: y_label.to_string(),
            series: series.to_vec(),
            x_range: None,
            y_range: None,
            width: 800,
            height: 500,
        }
    }
}

/// Line chart of `series` written to `path` as PNG (800×500), axes fitted to the finite points.
pub fn line_chart(path: &Path, title: &str, x_label: &str, y_label: &str, series: &[Series]) -> Result<()> {
    save_chart(path, &Chart::new(title, x_label, y_label, series))
}

/// Renders and writes a chart.
pub fn save_chart(path: &Path, chart: &Chart) -> Result<()> {
    let img = render_chart(chart)?;
    let mut png = std::io::Cursor::new(Vec::new());
    img.write_to(&mut png, image::ImageFormat::Png)
        .map_err(|e| anyhow!("cannot write plot {}: {}", path.display(), e))?;
    crate::atomic_file::write_atomically(path, png.get_ref()).map_err(|e| anyhow!("plot {e:#}"))
}

/// The cumulative error distribution of per-image errors: (error, fraction of images with error
/// ≤ it) as a step curve from 0 to `max_err`.
pub fn ced_points(errors: &[f64], max_err: f64) -> Vec<(f64, f64)> {
    let mut e: Vec<f64> = errors.iter().copied().filter(|v| v.is_finite()).collect();
    e.sort_by(|a, b| a.total_cmp(b));
    let n = errors.len().max(1) as f64;
    let mut pts = vec![(0.0, e.iter().filter(|&&v| v <= 0.0).count() as f64 / n)];
    for (i, &v) in e.iter().enumerate() {
        if v <= 0.0 || v > max_err {
            continue;
        }
        pts.push((v, i as f64 / n));
        pts.push((v, (i + 1) as f64 / n));
    }
    let at_end = e.iter().filter(|&&v| v <= max_err).count() as f64 / n;
    pts.push((max_err, at_end));
    pts
}

// ---- colours and layout ----------------------------------------------------------------------

const WHITE: Rgb<u8> = Rgb([255, 255, 255]);
const BLACK: Rgb<u8> = Rgb([0, 0, 0]);
const GRID: Rgb<u8> = Rgb([225, 225, 225]);
const PALETTE: [Rgb<u8>; 8] = [
    Rgb([31, 119, 180]),
    Rgb([255, 127, 14]),
    Rgb([44, 160, 44]),
    Rgb([214, 39, 40]),
    Rgb([148, 103, 189]),
    Rgb([140, 86, 75]),
    Rgb([227, 119, 194]),
    Rgb([127, 127, 127]),
];

/// Colour of the i-th series.
pub fn series_color(i: usize) -> Rgb<u8> {
    PALETTE[i % PALETTE.len()]
}

/// "Nice" tick step (1, 2 or 5 × 10^k) for about `target` intervals over `span`.
fn nice_step(span: f64, target: usize) -> f64 {
    let raw = span / target.max(1) as f64;
    let mag = 10f64.powf(raw.log10().floor());
    let f = raw / mag;
    let m = if f <= 1.0 {
        1.0
    } else if f <= 2.0 {
        2.0
    } else if f <= 5.0 {
        5.0
    } else {
        10.0
    };
    m * mag
}

/// Axis range snapped outward to the tick step, and the step.
fn axis(lo: f64, hi: f64, fixed: bool) -> (f64, f64, f64) {
    let (mut lo, mut hi) = if lo.is_finite() && hi.is_finite() { (lo, hi) } else { (0.0, 1.0) };
    if hi <= lo {
        let pad = if lo == 0.0 { 1.0 } else { lo.abs() * 0.1 };
        lo -= pad;
        hi += pad;
    }
    let step = nice_step(hi - lo, 6);
    if fixed {
        return (lo, hi, step);
    }
    ((lo / step).floor() * step, (hi / step).ceil() * step, step)
}

fn tick_label(v: f64, step: f64) -> String {
    let decimals = (-(step.log10() + 1e-9).floor()).max(0.0) as usize;
    let v = if v.abs() < step * 1e-6 { 0.0 } else { v };
    if v != 0.0 && (v.abs() >= 1e6 || v.abs() < 1e-4) {
        return format!("{v:.1e}");
    }
    format!("{v:.decimals$}")
}

/// Draws the chart into an image.
pub fn render_chart(chart: &Chart) -> Result<RgbImage> {
    let (w, h) = (chart.width, chart.height);
    if !(200..=8000).contains(&w) || !(150..=8000).contains(&h) {
        bail!("plot '{}': size {w}x{h} out of range", chart.title);
    }
    let finite = |p: &&(f64, f64)| p.0.is_finite() && p.1.is_finite();
    let all: Vec<(f64, f64)> = chart.series.iter().flat_map(|s| s.points.iter().filter(finite).copied()).collect();
    let span = |f: fn(&(f64, f64)) -> f64| -> (f64, f64) {
        if all.is_empty() {
            return (0.0, 1.0);
        }
        all.iter().map(f).fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), v| (a.min(v), b.max(v)))
    };
    let (x0, x1, xs) = match chart.x_range {
        Some((a, b)) => axis(a, b, true),
        None => {
            let (a, b) = span(|p| p.0);
            axis(a, b, false)
        }
    };
    let (y0, y1, ys) = match chart.y_range {
        Some((a, b)) => axis(a, b, true),
        None => {
            let (a, b) = span(|p| p.1);
            axis(a, b, false)
        }
    };

    let mut img = RgbImage::from_pixel(w, h, WHITE);
    let (left, right, top, bottom) = (78i64, w as i64 - 20, 44i64, h as i64 - 56);
    let px = |x: f64| left as f64 + (x - x0) / (x1 - x0) * (right - left) as f64;
    let py = |y: f64| bottom as f64 - (y - y0) / (y1 - y0) * (bottom - top) as f64;

    // Grid, ticks and tick labels.
    let ticks = |lo: f64, hi: f64, step: f64| -> Vec<f64> {
        let first = (lo / step - 1e-9).ceil() as i64;
        let last = (hi / step + 1e-9).floor() as i64;
        (first..=last).take(100).map(|k| k as f64 * step).collect()
    };
    for t in ticks(x0, x1, xs) {
        let x = px(t).round() as i64;
        line(&mut img, x, top, x, bottom, GRID);
        line(&mut img, x, bottom, x, bottom + 4, BLACK);
        let s = tick_label(t, xs);
        draw_text(&mut img, x - text_width(&s, 1) / 2, bottom + 8, &s, BLACK, 1);
    }
    for t in ticks(y0, y1, ys) {
        let y = py(t).round() as i64;
        line(&mut img, left, y, right, y, GRID);
        line(&mut img, left - 4, y, left, y, BLACK);
        let s = tick_label(t, ys);
        draw_text(&mut img, left - 8 - text_width(&s, 1), y - 3, &s, BLACK, 1);
    }
    // Axes box.
    line(&mut img, left, top, right, top, BLACK);
    line(&mut img, left, bottom, right, bottom, BLACK);
    line(&mut img, left, top, left, bottom, BLACK);
    line(&mut img, right, top, right, bottom, BLACK);

    // Series, clipped to the plot area; non-finite points break the line.
    for (i, s) in chart.series.iter().enumerate() {
        let c = series_color(i);
        let mut prev: Option<(i64, i64)> = None;
        for &(x, y) in &s.points {
            if !(x.is_finite() && y.is_finite()) {
                prev = None;
                continue;
            }
            let p = (px(x).round() as i64, py(y).round() as i64);
            match prev {
                Some(q) => thick_line_clipped(&mut img, q, p, c, (left, top, right, bottom)),
                None => thick_line_clipped(&mut img, p, p, c, (left, top, right, bottom)),
            }
            prev = Some(p);
        }
    }

    // Title, axis labels.
    draw_text(&mut img, (w as i64 - text_width(&chart.title, 2)) / 2, 10, &chart.title, BLACK, 2);
    draw_text(&mut img, (left + right - text_width(&chart.x_label, 1)) / 2, h as i64 - 22, &chart.x_label, BLACK, 1);
    draw_text(&mut img, 8, top - 14, &chart.y_label, BLACK, 1);

    // Legend (top right inside the axes).
    let named: Vec<(usize, &Series)> = chart.series.iter().enumerate().filter(|(_, s)| !s.name.is_empty()).collect();
    if !named.is_empty() {
        let tw = named.iter().map(|(_, s)| text_width(&s.name, 1)).max().unwrap_or(0);
        let (bw, bh) = (tw + 40, named.len() as i64 * 14 + 8);
        let (bx, by) = (right - bw - 8, top + 8);
        fill_rect(&mut img, bx, by, bw, bh, WHITE);
        for (x, y, x2, y2) in [
            (bx, by, bx + bw, by),
            (bx, by + bh, bx + bw, by + bh),
            (bx, by, bx, by + bh),
            (bx + bw, by, bx + bw, by + bh),
        ] {
            line(&mut img, x, y, x2, y2, BLACK);
        }
        for (row, (i, s)) in named.iter().enumerate() {
            let y = by + 8 + row as i64 * 14;
            fill_rect(&mut img, bx + 6, y + 2, 22, 3, series_color(*i));
            draw_text(&mut img, bx + 34, y, &s.name, BLACK, 1);
        }
    }
    Ok(img)
}

// ---- raster helpers (shared with `draw`) ---------------------------------------------------

pub(crate) fn put(img: &mut RgbImage, x: i64, y: i64, c: Rgb<u8>) {
    if x >= 0 && y >= 0 && (x as u64) < img.width() as u64 && (y as u64) < img.height() as u64 {
        img.put_pixel(x as u32, y as u32, c);
    }
}

pub(crate) fn fill_rect(img: &mut RgbImage, x: i64, y: i64, w: i64, h: i64, c: Rgb<u8>) {
    for yy in y..y + h {
        for xx in x..x + w {
            put(img, xx, yy, c);
        }
    }
}

/// Bresenham line, 1 px.
pub(crate) fn line(img: &mut RgbImage, x0: i64, y0: i64, x1: i64, y1: i64, c: Rgb<u8>) {
    let (dx, dy) = ((x1 - x0).abs(), -(y1 - y0).abs());
    let (sx, sy) = (if x0 < x1 { 1 } else { -1 }, if y0 < y1 { 1 } else { -1 });
    let (mut x, mut y, mut err) = (x0, y0, dx + dy);
    // Bounded so a huge coordinate cannot spin for long.
    for _ in 0..=(dx - dy).min(1 << 16) {
        put(img, x, y, c);
        if x == x1 && y == y1 {
            break;
        }
        let e2 = 2 * err;
        if e2 >= dy {
            err += dy;
            x += sx;
        }
        if e2 <= dx {
            err += dx;
            y += sy;
        }
    }
}

/// A 2-px line drawn only inside `clip` = (left, top, right, bottom).
fn thick_line_clipped(img: &mut RgbImage, a: (i64, i64), b: (i64, i64), c: Rgb<u8>, clip: (i64, i64, i64, i64)) {
    let (l, t, r, btm) = clip;
    let lim = 1 << 20;
    let (a, b) = ((a.0.clamp(-lim, lim), a.1.clamp(-lim, lim)), (b.0.clamp(-lim, lim), b.1.clamp(-lim, lim)));
    let steps = (b.0 - a.0).abs().max((b.1 - a.1).abs()).clamp(1, 1 << 16);
    for k in 0..=steps {
        let x = a.0 + (b.0 - a.0) * k / steps;
        let y = a.1 + (b.1 - a.1) * k / steps;
        for (ox, oy) in [(0, 0), (1, 0), (0, 1), (1, 1)] {
            let (xx, yy) = (x + ox, y + oy);
            if xx >= l && xx <= r && yy >= t && yy <= btm {
                put(img, xx, yy, c);
            }
        }
    }
}

// ---- 5×7 bitmap font ---------------------------------------------------------------------------

/// Rows of a glyph, top to bottom; bit 4 is the leftmost column. Lower case draws as upper case.
fn glyph(ch: char) -> [u8; 7] {
    match ch.to_ascii_uppercase() {
        '0' => [0x0E, 0x11, 0x13, 0x15, 0x19, 0x11, 0x0E],
        '1' => [0x04, 0x0C, 0x04, 0x04, 0x04, 0x04, 0x0E],
        '2' => [0x0E, 0x11, 0x01, 0x02, 0x04, 0x08, 0x1F],
        '3' => [0x1F, 0x02, 0x04, 0x02, 0x01, 0x11, 0x0E],
        '4' => [0x02, 0x06, 0x0A, 0x12, 0x1F, 0x02, 0x02],
        '5' => [0x1F, 0x10, 0x1E, 0x01, 0x01, 0x11, 0x0E],
        '6' => [0x06, 0x08, 0x10, 0x1E, 0x11, 0x11, 0x0E],
        '7' => [0x1F, 0x01, 0x02, 0x04, 0x08, 0x08, 0x08],
        '8' => [0x0E, 0x11, 0x11, 0x0E, 0x11, 0x11, 0x0E],
        '9' => [0x0E, 0x11, 0x11, 0x0F, 0x01, 0x02, 0x0C],
        'A' => [0x0E, 0x11, 0x11, 0x1F, 0x11, 0x11, 0x11],
        'B' => [0x1E, 0x11, 0x11, 0x1E, 0x11, 0x11, 0x1E],
        'C' => [0x0E, 0x11, 0x10, 0x10, 0x10, 0x11, 0x0E],
        'D' => [0x1C, 0x12, 0x11, 0x11, 0x11, 0x12, 0x1C],
        'E' => [0x1F, 0x10, 0x10, 0x1E, 0x10, 0x10, 0x1F],
        'F' => [0x1F, 0x10, 0x10, 0x1E, 0x10, 0x10, 0x10],
        'G' => [0x0E, 0x11, 0x10, 0x17, 0x11, 0x11, 0x0F],
        'H' => [0x11, 0x11, 0x11, 0x1F, 0x11, 0x11, 0x11],
        'I' => [0x0E, 0x04, 0x04, 0x04, 0x04, 0x04, 0x0E],
        'J' => [0x07, 0x02, 0x02, 0x02, 0x02, 0x12, 0x0C],
        'K' => [0x11, 0x12, 0x14, 0x18, 0x14, 0x12, 0x11],
        'L' => [0x10, 0x10, 0x10, 0x10, 0x10, 0x10, 0x1F],
        'M' => [0x11, 0x1B, 0x15, 0x15, 0x11, 0x11, 0x11],
        'N' => [0x11, 0x11, 0x19, 0x15, 0x13, 0x11, 0x11],
        'O' => [0x0E, 0x11, 0x11, 0x11, 0x11, 0x11, 0x0E],
        'P' => [0x1E, 0x11, 0x11, 0x1E, 0x10, 0x10, 0x10],
        'Q' => [0x0E, 0x11, 0x11, 0x11, 0x15, 0x12, 0x0D],
        'R' => [0x1E, 0x11, 0x11, 0x1E, 0x14, 0x12, 0x11],
        'S' => [0x0F, 0x10, 0x10, 0x0E, 0x01, 0x01, 0x1E],
        'T' => [0x1F, 0x04, 0x04, 0x04, 0x04, 0x04, 0x04],
        'U' => [0x11, 0x11, 0x11, 0x11, 0x11, 0x11, 0x0E],
        'V' => [0x11, 0x11, 0x11, 0x11, 0x11, 0x0A, 0x04],
        'W' => [0x11, 0x11, 0x11, 0x15, 0x15, 0x15, 0x0A],
        'X' => [0x11, 0x11, 0x0A, 0x04, 0x0A, 0x11, 0x11],
        'Y' => [0x11, 0x11, 0x11, 0x0A, 0x04, 0x04, 0x04],
        'Z' => [0x1F, 0x01, 0x02, 0x04, 0x08, 0x10, 0x1F],
        ' ' => [0; 7],
        '.' => [0, 0, 0, 0, 0, 0x0C, 0x0C],
        ',' => [0, 0, 0, 0, 0x0C, 0x04, 0x08],
        '-' => [0, 0, 0, 0x1F, 0, 0, 0],
        '+' => [0, 0x04, 0x04, 0x1F, 0x04, 0x04, 0],
        ':' => [0, 0x0C, 0x0C, 0, 0x0C, 0x0C, 0],
        '(' => [0x02, 0x04, 0x08, 0x08, 0x08, 0x04, 0x02],
        ')' => [0x08, 0x04, 0x02, 0x02, 0x02, 0x04, 0x08],
        '[' => [0x0E, 0x08, 0x08, 0x08, 0x08, 0x08, 0x0E],
        ']' => [0x0E, 0x02, 0x02, 0x02, 0x02, 0x02, 0x0E],
        '/' => [0, 0x01, 0x02, 0x04, 0x08, 0x10, 0],
        '%' => [0x18, 0x19, 0x02, 0x04, 0x08, 0x13, 0x03],
        '_' => [0, 0, 0, 0, 0, 0, 0x1F],
        '=' => [0, 0, 0x1F, 0, 0x1F, 0, 0],
        '@' => [0x0E, 0x11, 0x01, 0x0D, 0x15, 0x15, 0x0E],
        '#' => [0x0A, 0x0A, 0x1F, 0x0A, 0x1F, 0x0A, 0x0A],
        '\'' => [0x04, 0x04, 0x08, 0, 0, 0, 0],
        '<' => [0x02, 0x04, 0x08, 0x10, 0x08, 0x04, 0x02],
        '>' => [0x08, 0x04, 0x02, 0x01, 0x02, 0x04, 0x08],
        '!' => [0x04, 0x04, 0x04, 0x04, 0x04, 0, 0x04],
        '*' => [0, 0x04, 0x15, 0x0E, 0x15, 0x04, 0],
        _ => [0x0E, 0x11, 0x01, 0x02, 0x04, 0, 0x04], // '?'
    }
}

/// Width in pixels of `text` at integer `scale` (6 px advance per character).
pub fn text_width(text: &str, scale: i64) -> i64 {
    text.chars().count() as i64 * 6 * scale
}

/// Draws `text` with its top-left corner at (x, y); pixels outside the image are skipped.
pub fn draw_text(img: &mut RgbImage, x: i64, y: i64, text: &str, c: Rgb<u8>, scale: i64) {
    let s = scale.max(1);
    for (i, ch) in text.chars().enumerate() {
        let gx = x + i as i64 * 6 * s;
        for (row, bits) in glyph(ch).iter().enumerate() {
            for col in 0..5 {
                if bits & (0x10 >> col) != 0 {
                    fill_rect(img, gx + col * s, y + row as i64 * s, s, s, c);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nice_steps() {
        assert_eq!(nice_step(1.0, 5), 0.2);
        assert_eq!(nice_step(0.1, 5), 0.02);
        assert_eq!(nice_step(70.0, 6), 20.0);
        assert_eq!(tick_label(0.04, 0.02), "0.04");
        assert_eq!(tick_label(40.0, 20.0), "40");
    }

    #[test]
    fn ced_is_monotone_and_ends_at_the_fraction_below() {
        let p = ced_points(&[0.01, 0.03, 0.2], 0.1);
        assert_eq!(p.first(), Some(&(0.0, 0.0)));
        assert_eq!(p.last(), Some(&(0.1, 2.0 / 3.0)));
        assert!(p.windows(2).all(|w| w[1].0 >= w[0].0 && w[1].1 >= w[0].1));
    }

    #[test]
    fn chart_draws_series_and_text() {
        let s =
            [Series::new("train", vec![(0.0, 1.0), (1.0, 0.5), (2.0, f64::NAN), (3.0, 0.2)]), Series::new("", vec![])];
        let img = render_chart(&Chart::new("Loss", "epoch", "mse", &s)).unwrap();
        assert_eq!(img.dimensions(), (800, 500));
        let blue = img.pixels().filter(|p| **p == series_color(0)).count();
        assert!(blue > 100, "series pixels: {blue}");
        // Degenerate inputs still render.
        render_chart(&Chart::new("", "", "", &[Series::new("flat", vec![(1.0, 1.0)])])).unwrap();
        render_chart(&Chart::new("", "", "", &[])).unwrap();
        let mut c = Chart::new("", "", "", &s);
        c.x_range = Some((f64::NAN, 1.0));
        c.y_range = Some((2.0, 2.0));
        render_chart(&c).unwrap();
    }
}
