//! A small anti-aliased rasteriser: polygons (scanline, 4 sub-rows, exact horizontal coverage)
//! and thick polylines (distance based). Coordinates are continuous: pixel (i, j) covers
//! [i, i+1) × [j, j+1), so its centre is (i + 0.5, j + 0.5) and a horizontal mirror maps x to W − x.

pub(crate) type Pt = [f32; 2];
pub(crate) type Rgb = [f32; 3];

pub(crate) struct Canvas {
    pub(crate) width: usize,
    pub(crate) height: usize,
    /// Interleaved RGB, 0..255 as f32 (quantised once at the end).
    pub(crate) rgb: Vec<f32>,
}

/// Per-pixel coverage in [0, 1] over a rectangle of the canvas.
pub(crate) struct Mask {
    x0: usize,
    y0: usize,
    w: usize,
    h: usize,
    cov: Vec<f32>,
}

const SUBROWS: usize = 4;

impl Canvas {
    pub(crate) fn new(width: usize, height: usize) -> Canvas {
        Canvas { width, height, rgb: vec![0.0; width * height * 3] }
    }

    /// Blends `color(x, y)` (evaluated at pixel centres) through the mask with opacity `alpha`.
    pub(crate) fn paint(&mut self, mask: &Mask, alpha: f32, color: impl Fn(f32, f32) -> Rgb) {
        for my in 0..mask.h {
            let y = mask.y0 + my;
            for mx in 0..mask.w {
                let c = mask.cov[my * mask.w + mx];
                if c <= 0.0 {
                    continue;
                }
                let a = (c * alpha).min(1.0);
                let x = mask.x0 + mx;
                let col = color(x as f32 + 0.5, y as f32 + 0.5);
                let o = (y * self.width + x) * 3;
                for (dst, src) in self.rgb[o..o + 3].iter_mut().zip(col) {
                    *dst += (src - *dst) * a;
                }
            }
        }
    }

    /// 3×3 box blur (edges clamp), a cheap defocus.
    pub(crate) fn box_blur3(&mut self) {
        let (w, h) = (self.width, self.height);
        let src = self.rgb.clone();
        for y in 0..h {
            for x in 0..w {
                let mut acc = [0.0f32; 3];
                for dy in [-1i64, 0, 1] {
                    let yy = (y as i64 + dy).clamp(0, h as i64 - 1) as usize;
                    for dx in [-1i64, 0, 1] {
                        let xx = (x as i64 + dx).clamp(0, w as i64 - 1) as usize;
                        let o = (yy * w + xx) * 3;
                        for (a, v) in acc.iter_mut().zip(&src[o..o + 3]) {
                            *a += v;
                        }
                    }
                }
                let o = (y * w + x) * 3;
                for (dst, a) in self.rgb[o..o + 3].iter_mut().zip(acc) {
                    *dst = a / 9.0;
                }
            }
        }
    }

    pub(crate) fn paint_solid(&mut self, mask: &Mask, alpha: f32, color: Rgb) {
        self.paint(mask, alpha, |_, _| color);
    }
}

impl Mask {
    fn empty() -> Mask {
        Mask { x0: 0, y0: 0, w: 0, h: 0, cov: Vec::new() }
    }

    /// Pixel rectangle covering `pts` grown by `pad`, clipped to the canvas.
    fn bounds(pts: &[Pt], pad: f32, width: usize, height: usize) -> Option<(usize, usize, usize, usize)> {
        if pts.is_empty() {
            return None;
        }
        let (mut lx, mut ly, mut hx, mut hy) = (f32::MAX, f32::MAX, f32::MIN, f32::MIN);
        for p in pts {
            if !(p[0].is_finite() && p[1].is_finite()) {
                return None;
            }
            lx = lx.min(p[0]);
            ly = ly.min(p[1]);
            hx = hx.max(p[0]);
            hy = hy.max(p[1]);
        }
        let x0 = (lx - pad).floor().max(0.0) as usize;
        let y0 = (ly - pad).floor().max(0.0) as usize;
        let x1 = ((hx + pad).ceil().max(0.0) as usize).min(width);
        let y1 = ((hy + pad).ceil().max(0.0) as usize).min(height);
        if x0 >= x1 || y0 >= y1 {
            return None;
        }
        Some((x0, y0, x1, y1))
    }

    /// Filled polygon (even-odd rule); the polygon is implicitly closed.
    pub(crate) fn polygon(pts: &[Pt], width: usize, height: usize) -> Mask {
        let Some((x0, y0, x1, y1)) = Mask::bounds(pts, 0.0, width, height) else {
            return Mask::empty();
        };
        let (w, h) = (x1 - x0, y1 - y0);
        let mut cov = vec![0.0f32; w * h];
        let mut crossings: Vec<f32> = Vec::with_capacity(16);
        let weight = 1.0 / SUBROWS as f32;
        for py in 0..h {
            let row = &mut cov[py * w..(py + 1) * w];
            for s in 0..SUBROWS {
                let y = (y0 + py) as f32 + (s as f32 + 0.5) / SUBROWS as f32;
                crossings.clear();
                let n = pts.len();
                for i in 0..n {
                    let a = pts[i];
                    let b = pts[(i + 1) % n];
                    if (a[1] <= y) != (b[1] <= y) {
                        crossings.push(a[0] + (y - a[1]) * (b[0] - a[0]) / (b[1] - a[1]));
                    }
                }
                crossings.sort_by(|p, q| p.total_cmp(q));
                for span in crossings.chunks_exact(2) {
                    add_span(row, span[0] - x0 as f32, span[1] - x0 as f32, weight);
                }
            }
        }
        for c in &mut cov {
            *c = c.min(1.0);
        }
        Mask { x0, y0, w, h, cov }
    }

    pub(crate) fn ellipse(center: Pt, radii: [f32; 2], angle: f32, width: usize, height: usize) -> Mask {
        Mask::polygon(&ellipse_points(center, radii, angle, 40), width, height)
    }

    /// A polyline of the given width (in pixels), anti-aliased by distance to the segments.
    pub(crate) fn stroke(pts: &[Pt], line_width: f32, width: usize, height: usize) -> Mask {
        let half = 0.5 * line_width.max(0.5);
        let Some((x0, y0, x1, y1)) = Mask::bounds(pts, half + 1.0, width, height) else {
            return Mask::empty();
        };
        let (w, h) = (x1 - x0, y1 - y0);
        let mut cov = vec![0.0f32; w * h];
        let segments: Vec<(Pt, Pt)> =
            if pts.len() == 1 { vec![(pts[0], pts[0])] } else { pts.windows(2).map(|s| (s[0], s[1])).collect() };
        // Each segment only touches the pixels near it; the union takes the max coverage.
        for &(a, b) in &segments {
            let sx0 = ((a[0].min(b[0]) - half - 1.0).floor().max(x0 as f32) as usize).min(x1);
            let sx1 = ((a[0].max(b[0]) + half + 1.0).ceil().max(0.0) as usize).min(x1);
            let sy0 = ((a[1].min(b[1]) - half - 1.0).floor().max(y0 as f32) as usize).min(y1);
            let sy1 = ((a[1].max(b[1]) + half + 1.0).ceil().max(0.0) as usize).min(y1);
            for y in sy0..sy1 {
                let fy = y as f32 + 0.5;
                for x in sx0..sx1 {
                    let d = dist2_to_segment([x as f32 + 0.5, fy], a, b).sqrt();
                    let c = (half + 0.5 - d).clamp(0.0, 1.0);
                    let slot = &mut cov[(y - y0) * w + (x - x0)];
                    *slot = slot.max(c);
                }
            }
        }
        Mask { x0, y0, w, h, cov }
    }

    /// Coverage of both masks (product), over this mask's rectangle.
    pub(crate) fn intersect(&self, other: &Mask) -> Mask {
        let mut cov = self.cov.clone();
        for my in 0..self.h {
            let y = self.y0 + my;
            for mx in 0..self.w {
                let x = self.x0 + mx;
                let inside = y >= other.y0 && y < other.y0 + other.h && x >= other.x0 && x < other.x0 + other.w;
                let c = if inside { other.cov[(y - other.y0) * other.w + (x - other.x0)] } else { 0.0 };
                cov[my * self.w + mx] *= c;
            }
        }
        Mask { x0: self.x0, y0: self.y0, w: self.w, h: self.h, cov }
    }
}

/// Adds `weight` × covered length of [a, b) to each pixel of a coverage row.
fn add_span(row: &mut [f32], a: f32, b: f32, weight: f32) {
    let w = row.len() as f32;
    let a = a.clamp(0.0, w);
    let b = b.clamp(0.0, w);
    if b <= a {
        return;
    }
    let ia = a.floor() as usize;
    let ib = b.floor() as usize;
    if ia == ib {
        row[ia] += (b - a) * weight;
        return;
    }
    row[ia] += (ia as f32 + 1.0 - a) * weight;
    for c in &mut row[ia + 1..ib] {
        *c += weight;
    }
    if ib < row.len() {
        row[ib] += (b - ib as f32) * weight;
    }
}

fn dist2_to_segment(p: Pt, a: Pt, b: Pt) -> f32 {
    let (dx, dy) = (b[0] - a[0], b[1] - a[1]);
    let len2 = dx * dx + dy * dy;
    let t = if len2 > 0.0 { (((p[0] - a[0]) * dx + (p[1] - a[1]) * dy) / len2).clamp(0.0, 1.0) } else { 0.0 };
    let (qx, qy) = (a[0] + t * dx - p[0], a[1] + t * dy - p[1]);
    qx * qx + qy * qy
}

pub(crate) fn ellipse_points(center: Pt, radii: [f32; 2], angle: f32, n: usize) -> Vec<Pt> {
    let (s, c) = angle.sin_cos();
    (0..n)
        .map(|i| {
            let t = i as f32 / n as f32 * std::f32::consts::TAU;
            let (ex, ey) = (radii[0] * t.cos(), radii[1] * t.sin());
            [center[0] + c * ex - s * ey, center[1] + s * ex + c * ey]
        })
        .collect()
}
