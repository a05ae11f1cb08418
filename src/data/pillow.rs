//! Own port of the two Pillow (<= 12.x) operations the reference crop uses on 8-bit RGB images:
//! `Image.resize(size, BILINEAR)` (separable convolution with a triangle filter whose support
//! widens when downscaling, 22-bit fixed-point coefficients, horizontal pass first into an 8-bit
//! intermediate, then vertical) and `Image.rotate(angle, BILINEAR)` (generic affine transform,
//! 2×2 bilinear sampling in double precision, black outside the source).
//!
//! Pillow 13 changed the two-pass resize for tall images; this port follows Pillow 6.2 … 12.3,
//! which agree with each other (and with the 2019 environment of the reference).

use anyhow::{bail, Result};

/// An 8-bit RGB image, row-major, 3 bytes per pixel (Pillow mode "RGB").
#[derive(Clone, Debug, PartialEq)]
pub struct Rgb8 {
    pub width: usize,
    pub height: usize,
    pub data: Vec<u8>,
}

impl Rgb8 {
    pub fn new(width: usize, height: usize, data: Vec<u8>) -> Result<Rgb8> {
        let need = width.checked_mul(height).and_then(|n| n.checked_mul(3));
        if need != Some(data.len()) {
            bail!("pillow: RGB image {width}x{height} needs {:?} bytes, got {}", need, data.len());
        }
        Ok(Rgb8 { width, height, data })
    }
}

/// Fixed-point precision of the 8-bit resampler (Pillow's PRECISION_BITS = 32 - 8 - 2).
const PRECISION_BITS: u32 = 22;

/// Largest side we accept for a resize/rotate result (guards against absurd sizes).
const MAX_SIDE: usize = 1 << 16;

/// Pillow's triangle (BILINEAR) filter, support 1.
fn triangle(x: f64) -> f64 {
    let x = x.abs();
    if x < 1.0 {
        1.0 - x
    } else {
        0.0
    }
}

/// Per output index: first input index, number of taps, and `ksize` fixed-point weights.
struct Taps {
    ksize: usize,
    bounds: Vec<(usize, usize)>,
    weights: Vec<i32>,
}

/// `precompute_coeffs` + `normalize_coeffs_8bpc` for the box [0, in_size) (float box in Pillow).
fn precompute_taps(in_size: usize, out_size: usize) -> Taps {
    let in0 = 0.0f32;
    let in1 = in_size as f32;
    // Pillow computes the box width in float, then divides in double.
    let scale = (in1 - in0) as f64 / out_size as f64;
    let filterscale = if scale < 1.0 { 1.0 } else { scale };
    let support = 1.0 * filterscale;
    let ksize = support.ceil() as usize * 2 + 1;
    let mut bounds = Vec::with_capacity(out_size);
    let mut weights = vec![0i32; out_size * ksize];
    let mut k = vec![0f64; ksize];
    for xx in 0..out_size {
        let center = in0 as f64 + (xx as f64 + 0.5) * scale;
        let ss = 1.0 / filterscale;
        // C truncation of the rounded value, then clamping, exactly as Pillow.
        let xmin = ((center - support + 0.5) as i64).max(0);
        let xmax = ((center + support + 0.5) as i64).min(in_size as i64);
        let taps = (xmax - xmin).max(0) as usize;
        let xmin = xmin as usize;
        let mut ww = 0.0f64;
        for (x, kx) in k.iter_mut().enumerate().take(taps) {
            let w = triangle((x as f64 + xmin as f64 - center + 0.5) * ss);
            *kx = w;
            ww += w;
        }
        let row = &mut weights[xx * ksize..(xx + 1) * ksize];
        for x in 0..taps {
            let v = if ww != 0.0 { k[x] / ww } else { k[x] };
            let scaled = v * (1u32 << PRECISION_BITS) as f64;
            row[x] = if v < 0.0 { (-0.5 + scaled) as i32 } else { (0.5 + scaled) as i32 };
        }
        bounds.push((xmin, taps));
    }
    Taps { ksize, bounds, weights }
}

/// Pillow's clip8: fixed-point accumulator to u8.
#[inline]
fn clip8(acc: i32) -> u8 {
    if acc >= (1i32 << PRECISION_BITS << 8) {
        255
    } else if acc <= 0 {
        0
    } else {
        (acc >> PRECISION_BITS) as u8
    }
}

/// `Image.resize((out_w, out_h), BILINEAR)` of an RGB image (Pillow <= 12 arithmetic).
pub fn resize_bilinear(img: &Rgb8, out_w: usize, out_h: usize) -> Result<Rgb8> {
    if out_w == 0 || out_h == 0 || out_w > MAX_SIDE || out_h > MAX_SIDE {
        bail!("pillow resize: bad output size {out_w}x{out_h}");
    }
    if img.width == 0 || img.height == 0 {
        bail!("pillow resize: empty input image {}x{}", img.width, img.height);
    }
    if img.data.len() != img.width * img.height * 3 {
        bail!("pillow resize: input buffer has {} bytes for {}x{}", img.data.len(), img.width, img.height);
    }
    // Pillow returns a copy when the size does not change.
    if out_w == img.width && out_h == img.height {
        return Ok(img.clone());
    }
    let need_horizontal = out_w != img.width;
    let need_vertical = out_h != img.height;
    let vert = precompute_taps(img.height, out_h);
    let horiz = precompute_taps(img.width, out_w);
    // Rows of the source that the vertical pass reads (the horizontal pass only computes these).
    let ybox_first = vert.bounds[0].0;
    let (last_min, last_len) = vert.bounds[out_h - 1];
    let ybox_last = last_min + last_len;

    let mut current: Option<Rgb8> = None;
    let mut row_shift = 0usize;
    if need_horizontal {
        let rows = ybox_last - ybox_first;
        let mut out = vec![0u8; rows * out_w * 3];
        for yy in 0..rows {
            let src = &img.data[(yy + ybox_first) * img.width * 3..(yy + ybox_first + 1) * img.width * 3];
            let dst = &mut out[yy * out_w * 3..(yy + 1) * out_w * 3];
            for xx in 0..out_w {
                let (xmin, taps) = horiz.bounds[xx];
                let w = &horiz.weights[xx * horiz.ksize..xx * horiz.ksize + taps];
                let mut acc = [1i32 << (PRECISION_BITS - 1); 3];
                for (x, &wx) in w.iter().enumerate() {
                    let p = &src[(x + xmin) * 3..(x + xmin) * 3 + 3];
                    acc[0] += p[0] as i32 * wx;
                    acc[1] += p[1] as i32 * wx;
                    acc[2] += p[2] as i32 * wx;
                }
                dst[xx * 3] = clip8(acc[0]);
                dst[xx * 3 + 1] = clip8(acc[1]);
                dst[xx * 3 + 2] = clip8(acc[2]);
            }
        }
        row_shift = ybox_first;
        current = Some(Rgb8 { width: out_w, height: rows, data: out });
    }
    let src = current.as_ref().unwrap_or(img);
    if !need_vertical {
        return Ok(src.clone());
    }
    let width = src.width;
    let mut out = vec![0u8; out_h * width * 3];
    for yy in 0..out_h {
        let (ymin, taps) = vert.bounds[yy];
        let ymin = ymin - row_shift;
        let w = &vert.weights[yy * vert.ksize..yy * vert.ksize + taps];
        let dst = &mut out[yy * width * 3..(yy + 1) * width * 3];
        for xx in 0..width {
            let mut acc = [1i32 << (PRECISION_BITS - 1); 3];
            for (y, &wy) in w.iter().enumerate() {
                let o = ((y + ymin) * width + xx) * 3;
                acc[0] += src.data[o] as i32 * wy;
                acc[1] += src.data[o + 1] as i32 * wy;
                acc[2] += src.data[o + 2] as i32 * wy;
            }
            dst[xx * 3] = clip8(acc[0]);
            dst[xx * 3 + 1] = clip8(acc[1]);
            dst[xx * 3 + 2] = clip8(acc[2]);
        }
    }
    Ok(Rgb8 { width, height: out_h, data: out })
}

/// Python's `round(x, 15)`: the double nearest to x correctly rounded to 15 decimals.
fn py_round15(x: f64) -> f64 {
    if !x.is_finite() {
        return x;
    }
    // Rust's fixed-precision formatting is exact decimal rounding; parsing is correctly rounded.
    format!("{x:.15}").parse::<f64>().unwrap_or(x)
}

/// Python's float `%` (result takes the sign of the divisor).
fn py_mod(x: f64, y: f64) -> f64 {
    let m = x % y;
    if m != 0.0 {
        if (y < 0.0) != (m < 0.0) {
            m + y
        } else {
            m
        }
    } else {
        0.0f64.copysign(y)
    }
}

/// The affine matrix `Image.rotate(angle)` hands to `transform` (no expand, centre (w/2, h/2)).
pub fn rotate_matrix(angle_deg: f64, width: usize, height: usize) -> [f64; 6] {
    let angle = py_mod(angle_deg, 360.0);
    // math.radians multiplies by the double constant pi/180.
    let rad = -(angle * (std::f64::consts::PI / 180.0));
    let (c, s) = (py_round15(rad.cos()), py_round15(rad.sin()));
    let ms = py_round15(-rad.sin());
    let mut m = [c, s, 0.0, ms, c, 0.0];
    let (cx, cy) = (width as f64 / 2.0, height as f64 / 2.0);
    let (tx, ty) = (-cx - 0.0, -cy - 0.0);
    m[2] = m[0] * tx + m[1] * ty + m[2];
    m[5] = m[3] * tx + m[4] * ty + m[5];
    m[2] += cx;
    m[5] += cy;
    m
}

/// `Image.transform(size, AFFINE, matrix, BILINEAR)` with black fill (Pillow's generic
/// transform + bilinear_filter32RGB: double arithmetic, truncation to u8).
pub fn affine_bilinear(img: &Rgb8, out_w: usize, out_h: usize, m: [f64; 6]) -> Result<Rgb8> {
    if out_w > MAX_SIDE || out_h > MAX_SIDE {
        bail!("pillow transform: bad output size {out_w}x{out_h}");
    }
    if img.data.len() != img.width * img.height * 3 {
        bail!("pillow transform: input buffer has {} bytes for {}x{}", img.data.len(), img.width, img.height);
    }
    let (w, h) = (img.width as i64, img.height as i64);
    let mut out = vec![0u8; out_w * out_h * 3];
    for y in 0..out_h {
        let yin0 = y as f64 + 0.5;
        for x in 0..out_w {
            let xin0 = x as f64 + 0.5;
            let xin = m[0] * xin0 + m[1] * yin0 + m[2];
            let yin = m[3] * xin0 + m[4] * yin0 + m[5];
            if !(xin >= 0.0 && xin < img.width as f64 && yin >= 0.0 && yin < img.height as f64) {
                continue; // filled black
            }
            let xs = xin - 0.5;
            let ys = yin - 0.5;
            let xi = xs.floor() as i64;
            let yi = ys.floor() as i64;
            let dx = xs - xi as f64;
            let dy = ys - yi as f64;
            let x0 = xi.clamp(0, w - 1) as usize;
            let x1 = (xi + 1).clamp(0, w - 1) as usize;
            let row0 = yi.clamp(0, h - 1) as usize;
            let second_row = yi + 1 >= 0 && yi + 1 < h;
            let o = (y * out_w + x) * 3;
            for b in 0..3 {
                let p = |row: usize, col: usize| img.data[(row * img.width + col) * 3 + b] as i32;
                // v = a + (b - a)·d with the integer difference first, as Pillow's macro.
                let a0 = p(row0, x0);
                let v1 = a0 as f64 + (p(row0, x1) - a0) as f64 * dx;
                let v2 = if second_row {
                    let r = (yi + 1) as usize;
                    let a1 = p(r, x0);
                    a1 as f64 + (p(r, x1) - a1) as f64 * dx
                } else {
                    v1
                };
                let v = v1 + (v2 - v1) * dy;
                out[o + b] = v as u8;
            }
        }
    }
    Ok(Rgb8 { width: out_w, height: out_h, data: out })
}

/// `Image.rotate(angle, BILINEAR)`: counter-clockwise about (w/2, h/2), same size, black fill.
pub fn rotate_bilinear(img: &Rgb8, angle_deg: f64) -> Result<Rgb8> {
    if !angle_deg.is_finite() {
        bail!("pillow rotate: angle {angle_deg} is not finite");
    }
    if py_mod(angle_deg, 360.0) == 0.0 {
        return Ok(img.clone());
    }
    // Pillow's 90/180/270 fast paths (transpose) sample exactly the same pixel centres as the
    // affine path with the rounded matrix, so the affine path covers them bit for bit.
    let m = rotate_matrix(angle_deg, img.width, img.height);
    affine_bilinear(img, img.width, img.height, m)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ramp(w: usize, h: usize) -> Rgb8 {
        let mut d = Vec::new();
        for y in 0..h {
            for x in 0..w {
                d.extend_from_slice(&[(x * 7 + y) as u8, (y * 5) as u8, ((x ^ y) * 3) as u8]);
            }
        }
        Rgb8::new(w, h, d).unwrap()
    }

    #[test]
    fn resize_same_size_is_copy_and_bad_sizes_error() {
        let im = ramp(9, 7);
        assert_eq!(resize_bilinear(&im, 9, 7).unwrap(), im);
        assert!(resize_bilinear(&im, 0, 7).is_err());
        assert!(resize_bilinear(&im, 9, 1 << 20).is_err());
        assert!(Rgb8::new(3, 3, vec![0; 5]).is_err());
    }

    #[test]
    fn resize_constant_image_stays_constant() {
        let im = Rgb8::new(13, 11, vec![77; 13 * 11 * 3]).unwrap();
        for (w, h) in [(5, 4), (30, 2), (13, 40), (1, 1)] {
            let r = resize_bilinear(&im, w, h).unwrap();
            assert!(r.data.iter().all(|&v| v == 77), "{w}x{h}");
        }
    }

    #[test]
    fn rotate_right_angles_match_transposes() {
        let im = ramp(6, 6);
        let r90 = rotate_bilinear(&im, 90.0).unwrap();
        let r180 = rotate_bilinear(&im, 180.0).unwrap();
        for y in 0..6 {
            for x in 0..6 {
                for b in 0..3 {
                    // counter-clockwise: out[y][x] = in[x][w-1-y]
                    assert_eq!(r90.data[(y * 6 + x) * 3 + b], im.data[(x * 6 + 5 - y) * 3 + b]);
                    assert_eq!(r180.data[(y * 6 + x) * 3 + b], im.data[((5 - y) * 6 + 5 - x) * 3 + b]);
                }
            }
        }
        assert_eq!(rotate_bilinear(&im, 360.0).unwrap(), im);
        assert!(rotate_bilinear(&im, f64::NAN).is_err());
    }

    #[test]
    fn python_rounding_helpers() {
        assert_eq!(py_mod(-25.0, 360.0), 335.0);
        assert_eq!(py_mod(725.0, 360.0), 5.0);
        assert_eq!(py_round15(6.123233995736766e-17), 0.0);
        assert_eq!(py_round15(-1.0), -1.0);
    }
}
