//! Aligned face crops (`--aligned SIZE`): each face warped by the similarity (rotation, uniform
//! scale, translation) that puts five of its points — the two eye centres, the nose tip and the
//! mouth corners — closest (least squares) onto the 5-point template face-recognition models take
//! at 112 × 112, scaled to SIZE × SIZE. Bilinear sampling; outside the image is black. A face
//! whose five points coincide (no usable landmarks) gets its crop square resized instead.

use super::engine::FaceResult;
use crate::data::imageio::Rgb8;
use anyhow::{anyhow, bail, Result};

/// The 112 × 112 template, image-left eye centre, image-right eye centre, nose tip, image-left and
/// image-right mouth corner, in pixels: the coordinates ArcFace-style recognition models are
/// trained on (published with insightface's `arcface_torch`, MIT licence; numbers only).
pub const TEMPLATE_112: [[f64; 2]; 5] =
    [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]];

/// The five template points of a face's landmarks (68: 300W order, 98: WFLW order); None for
/// other layouts.
pub fn five_points(landmarks: &[[f32; 2]]) -> Option<[[f64; 2]; 5]> {
    let (left_eye, right_eye, nose, mouth) = match landmarks.len() {
        68 => (36..42, 42..48, 30, [48, 54]),
        98 => (60..68, 68..76, 54, [76, 82]),
        _ => return None,
    };
    let centre = |r: std::ops::Range<usize>| {
        let n = r.len() as f64;
        let s = landmarks[r].iter().fold([0.0, 0.0], |a, p| [a[0] + p[0] as f64, a[1] + p[1] as f64]);
        [s[0] / n, s[1] / n]
    };
    let at = |i: usize| [landmarks[i][0] as f64, landmarks[i][1] as f64];
    Some([centre(left_eye), centre(right_eye), at(nose), at(mouth[0]), at(mouth[1])])
}

/// The least-squares similarity `q ≈ a·p + t` (a = s·e^{iθ} as a complex number, [re, im]) from
/// `from` onto `to`; None if `from`'s points coincide.
fn similarity(from: &[[f64; 2]], to: &[[f64; 2]]) -> Option<([f64; 2], [f64; 2])> {
    let n = from.len() as f64;
    let mean = |v: &[[f64; 2]]| v.iter().fold([0.0, 0.0], |a, p| [a[0] + p[0] / n, a[1] + p[1] / n]);
    let (mp, mq) = (mean(from), mean(to));
    let (mut num, mut den) = ([0.0, 0.0], 0.0);
    for (p, q) in from.iter().zip(to) {
        let (px, py, qx, qy) = (p[0] - mp[0], p[1] - mp[1], q[0] - mq[0], q[1] - mq[1]);
        // q · conj(p)
        num[0] += qx * px + qy * py;
        num[1] += qy * px - qx * py;
        den += px * px + py * py;
    }
    if den.is_nan() || den <= 1e-9 {
        return None;
    }
    let a = [num[0] / den, num[1] / den];
    let t = [mq[0] - (a[0] * mp[0] - a[1] * mp[1]), mq[1] - (a[1] * mp[0] + a[0] * mp[1])];
    Some((a, t))
}

/// The face aligned into a `size` × `size` crop.
pub fn aligned_face(rgb: &Rgb8, face: &FaceResult, size: usize) -> Result<Rgb8> {
    let points = five_points(&face.landmarks)
        .ok_or_else(|| anyhow!("--aligned needs the 68- or 98-point layout, not {}", face.landmarks.len()))?;
    let k = size as f64 / 112.0;
    let template: Vec<[f64; 2]> = TEMPLATE_112.iter().map(|p| [p[0] * k, p[1] * k]).collect();
    // Landmarks that coincide (a model that found no face) align nothing: the face's crop square
    // is resized instead.
    let (a, t) = similarity(&points, &template).unwrap_or_else(|| {
        let scale = size as f64 / (face.face.crop_scale * 200.0).max(1e-9);
        let c = face.face.center;
        ([scale, 0.0], [size as f64 / 2.0 - scale * c[0] as f64, size as f64 / 2.0 - scale * c[1] as f64])
    });
    // Output pixel → source: p = (q − t) / a.
    let norm = a[0] * a[0] + a[1] * a[1];
    let inv = [a[0] / norm, -a[1] / norm];
    let mut out = vec![0u8; size * size * 3];
    for y in 0..size {
        for x in 0..size {
            // Pixel (x, y)'s centre is at (x, y), in the crop as in the landmarks (and OpenCV's warps).
            let (qx, qy) = (x as f64 - t[0], y as f64 - t[1]);
            let sx = inv[0] * qx - inv[1] * qy;
            let sy = inv[1] * qx + inv[0] * qy;
            let px = bilinear(rgb, sx, sy);
            out[(y * size + x) * 3..][..3].copy_from_slice(&px);
        }
    }
    Rgb8::new(size, size, out)
}

/// The colour at (x, y) (pixel centres at integers), bilinear; black outside.
fn bilinear(rgb: &Rgb8, x: f64, y: f64) -> [u8; 3] {
    let (x0, y0) = (x.floor(), y.floor());
    let (fx, fy) = (x - x0, y - y0);
    let get = |xi: f64, yi: f64| -> [f64; 3] {
        if xi < 0.0 || yi < 0.0 || xi >= rgb.width as f64 || yi >= rgb.height as f64 {
            return [0.0; 3];
        }
        let i = (yi as usize * rgb.width + xi as usize) * 3;
        [rgb.data[i] as f64, rgb.data[i + 1] as f64, rgb.data[i + 2] as f64]
    };
    let (a, b, c, d) = (get(x0, y0), get(x0 + 1.0, y0), get(x0, y0 + 1.0), get(x0 + 1.0, y0 + 1.0));
    let mut px = [0u8; 3];
    for k in 0..3 {
        let v = (a[k] * (1.0 - fx) + b[k] * fx) * (1.0 - fy) + (c[k] * (1.0 - fx) + d[k] * fx) * fy;
        px[k] = v.round().clamp(0.0, 255.0) as u8;
    }
    px
}

/// PNG bytes of a crop (`what` names it in messages).
pub fn png_bytes(rgb: &Rgb8, what: &str) -> Result<Vec<u8>> {
    let img = image::RgbImage::from_raw(rgb.width as u32, rgb.height as u32, rgb.data.clone())
        .ok_or_else(|| anyhow!("{what}: pixel buffer does not match its size"))?;
    let mut bytes = std::io::Cursor::new(Vec::new());
    img.write_to(&mut bytes, image::ImageFormat::Png).map_err(|e| anyhow!("{what}: PNG encoding failed: {e}"))?;
    Ok(bytes.into_inner())
}

/// Checks `--aligned SIZE` (16 to 1024 pixels).
pub fn check_aligned_size(size: usize) -> Result<usize> {
    if !(16..=1024).contains(&size) {
        bail!("--aligned {size}: expected a crop size of 16 to 1024 pixels");
    }
    Ok(size)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::predict::FoundFace;

    #[test]
    fn the_eye_centres_land_where_the_template_says() {
        // A 400×300 image, black but for two bright 3×3 dots: the eye centres of a face that is
        // the template rotated by 20°, scaled 1.7× and moved.
        let (w, h) = (400usize, 300usize);
        let (s, th) = (1.7f64, 20f64.to_radians());
        let a = [s * th.cos(), s * th.sin()];
        let place = |p: [f64; 2]| [a[0] * p[0] - a[1] * p[1] + 120.0, a[1] * p[0] + a[0] * p[1] + 40.0];
        let five: Vec<[f64; 2]> = TEMPLATE_112.iter().map(|&p| place(p)).collect();
        let mut data = vec![0u8; w * h * 3];
        for eye in &five[..2] {
            let (cx, cy) = (eye[0].round() as i64, eye[1].round() as i64);
            for y in cy - 1..=cy + 1 {
                for x in cx - 1..=cx + 1 {
                    data[(y as usize * w + x as usize) * 3..][..3].copy_from_slice(&[255, 255, 255]);
                }
            }
        }
        let rgb = Rgb8::new(w, h, data).unwrap();
        // 68 landmarks: each eye's six points on its centre, nose and mouth corners in place.
        let mut lm = vec![[0f32; 2]; 68];
        let f = |p: [f64; 2]| [p[0] as f32, p[1] as f32];
        lm[36..42].fill(f(five[0]));
        lm[42..48].fill(f(five[1]));
        (lm[30], lm[48], lm[54]) = (f(five[2]), f(five[3]), f(five[4]));
        let face = FaceResult {
            face: FoundFace { bbox: [0.0; 4], score: None, center: [0.0; 2], annotation_scale: 1.0, crop_scale: 1.0 },
            landmarks: lm,
            landmark_scores: vec![1.0; 68],
            id: None,
            pose: None,
        };
        for size in [112usize, 224] {
            let crop = aligned_face(&rgb, &face, size).unwrap();
            let k = size as f64 / 112.0;
            for (i, eye) in TEMPLATE_112[..2].iter().enumerate() {
                // The bright dot's centroid in the crop.
                let (mut sx, mut sy, mut sw) = (0.0, 0.0, 0.0);
                for y in 0..size {
                    for x in 0..size {
                        let v = crop.data[(y * size + x) * 3] as f64;
                        let near = (x as f64 - eye[0] * k).abs() < 12.0 && (y as f64 - eye[1] * k).abs() < 12.0;
                        if near {
                            (sx, sy, sw) = (sx + v * x as f64, sy + v * y as f64, sw + v);
                        }
                    }
                }
                let (cx, cy) = (sx / sw, sy / sw);
                let err = ((cx - eye[0] * k).powi(2) + (cy - eye[1] * k).powi(2)).sqrt();
                // The dot sits on the rounded pixel of the eye: up to 0.7 source px off, 0.7·k/1.7 here.
                assert!(err < 1.0, "size {size}, eye {i}: ({cx:.2}, {cy:.2}) vs template {:?}, {err:.2} px", eye);
            }
        }
        assert!(aligned_face(&rgb, &FaceResult { landmarks: vec![[1.0, 1.0]; 29], ..face.clone() }, 112).is_err());
        // Coinciding points: the crop square (centre (200, 150), side 200 × 0.5) resized.
        let mut blank = face.clone();
        blank.landmarks = vec![[5.0, 5.0]; 68];
        (blank.face.center, blank.face.crop_scale) = ([200.0, 150.0], 0.5);
        let crop = aligned_face(&rgb, &blank, 100).unwrap();
        let dot = |x: usize, y: usize| crop.data[(y * 100 + x) * 3];
        let eye = five[0];
        // The first eye's dot lies at (eye − (150, 100)) in the crop (scale 1).
        assert_eq!(dot((eye[0].round() - 150.0) as usize, (eye[1].round() - 100.0) as usize), 255);
    }
}
