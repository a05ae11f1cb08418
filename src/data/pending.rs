//! TEMPORARY STAND-INS for functions owned by the sibling `data` branch (transforms.rs,
//! heatmap.rs, flip.rs and the `Image` struct). Only here so the `data2` modules compile
//! and can be tested before the merge. At merge, replace the body of this file with
//! re-exports of the real items, e.g.
//!   pub use super::Image; pub use super::transforms::{crop, transform_pixel};
//!   pub use super::heatmap::generate_target; pub use super::flip::{mirror_pairs, fliplr_joints};
//! The stand-in `crop` is NOT the reference crop (no Pillow resampler, no pre-downscale).

use anyhow::{bail, Result};

/// HWC RGB, values 0..255 as f32 (what `np.array(img, dtype=float32)` gives).
#[derive(Clone, Debug, PartialEq)]
pub struct Image {
    pub width: usize,
    pub height: usize,
    pub data: Vec<f32>,
}

/// Reference `get_transform` (float64, res = [rows, cols], x uses res[1]).
fn get_transform(center: [f32; 2], scale: f64, res: [usize; 2], rot: f64) -> [[f64; 3]; 3] {
    let h = 200.0 * scale;
    let (cx, cy) = (center[0] as f64, center[1] as f64);
    let (r0, r1) = (res[0] as f64, res[1] as f64);
    let mut t = [[r1 / h, 0.0, r1 * (-cx / h + 0.5)], [0.0, r0 / h, r0 * (-cy / h + 0.5)], [0.0, 0.0, 1.0]];
    if rot != 0.0 {
        let ang = -rot * std::f64::consts::PI / 180.0;
        let (sn, cs) = ang.sin_cos();
        let (tx, ty) = (r1 / 2.0, r0 / 2.0);
        // T(+res/2) * R * T(-res/2) * t
        let a = [[cs, -sn, -cs * tx + sn * ty + tx], [sn, cs, -sn * tx - cs * ty + ty], [0.0, 0.0, 1.0]];
        let mut m = [[0.0; 3]; 3];
        for i in 0..3 {
            for j in 0..3 {
                m[i][j] = (0..3).map(|k| a[i][k] * t[k][j]).sum();
            }
        }
        t = m;
    }
    t
}

fn invert_affine(t: &[[f64; 3]; 3]) -> [[f64; 3]; 3] {
    let det = t[0][0] * t[1][1] - t[0][1] * t[1][0];
    let (a, b, c, d) = (t[1][1] / det, -t[0][1] / det, -t[1][0] / det, t[0][0] / det);
    [[a, b, -(a * t[0][2] + b * t[1][2])], [c, d, -(c * t[0][2] + d * t[1][2])], [0.0, 0.0, 1.0]]
}

/// Reference `transform_pixel`: trunc(T·[pt-1, 1]) + 1.
pub fn transform_pixel(pt: [f64; 2], center: [f32; 2], scale: f64, res: [usize; 2], invert: bool, rot: f64) -> [f64; 2] {
    let mut t = get_transform(center, scale, res, rot);
    if invert {
        t = invert_affine(&t);
    }
    let (x, y) = (pt[0] - 1.0, pt[1] - 1.0);
    [(t[0][0] * x + t[0][1] * y + t[0][2]).trunc() + 1.0, (t[1][0] * x + t[1][1] * y + t[1][2]).trunc() + 1.0]
}

/// STAND-IN crop: inverse-maps every output pixel into the source and samples bilinearly,
/// then applies the bytescale stretch. Right shape and geometry, not the reference's bits.
pub fn crop(img: &Image, center: [f32; 2], scale: f64, res: [usize; 2], rot: f64) -> Result<Image> {
    if img.data.len() != img.width * img.height * 3 {
        bail!("crop: image buffer has {} values, expected {}x{}x3", img.data.len(), img.height, img.width);
    }
    let inv = invert_affine(&get_transform(center, scale, res, rot));
    let (h, w) = (res[0], res[1]);
    let mut out = vec![0f32; h * w * 3];
    for oy in 0..h {
        for ox in 0..w {
            let sx = inv[0][0] * ox as f64 + inv[0][1] * oy as f64 + inv[0][2];
            let sy = inv[1][0] * ox as f64 + inv[1][1] * oy as f64 + inv[1][2];
            let (x0, y0) = (sx.floor(), sy.floor());
            let (fx, fy) = ((sx - x0) as f32, (sy - y0) as f32);
            for c in 0..3 {
                let px = |x: f64, y: f64| -> f32 {
                    if x < 0.0 || y < 0.0 || x >= img.width as f64 || y >= img.height as f64 {
                        0.0
                    } else {
                        img.data[(y as usize * img.width + x as usize) * 3 + c]
                    }
                };
                let v = px(x0, y0) * (1.0 - fx) * (1.0 - fy)
                    + px(x0 + 1.0, y0) * fx * (1.0 - fy)
                    + px(x0, y0 + 1.0) * (1.0 - fx) * fy
                    + px(x0 + 1.0, y0 + 1.0) * fx * fy;
                out[(oy * w + ox) * 3 + c] = v;
            }
        }
    }
    let lo = out.iter().cloned().fold(f32::INFINITY, f32::min);
    let hi = out.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
    let s = if hi > lo { 255.0 / (hi - lo) } else { 255.0 };
    for v in out.iter_mut() {
        *v = (((*v - lo) * s).clamp(0.0, 255.0) + 0.5).trunc();
    }
    Ok(Image { width: w, height: h, data: out })
}

/// Reference `generate_target` (Gaussian): assigns the (2·3σ+1)² patch centred at the
/// integer point `pt` into a zeroed `height`×`width` map.
pub fn generate_target(map: &mut [f32], width: usize, height: usize, pt: [f32; 2], sigma: f32) {
    let tmp = (sigma * 3.0) as f64;
    let (px, py) = (pt[0] as f64, pt[1] as f64);
    let ul = [(px - tmp).trunc() as i64, (py - tmp).trunc() as i64];
    let br = [(px + tmp + 1.0).trunc() as i64, (py + tmp + 1.0).trunc() as i64];
    if ul[0] >= width as i64 || ul[1] >= height as i64 || br[0] < 0 || br[1] < 0 {
        return;
    }
    let size = (2.0 * tmp + 1.0) as i64;
    let c0 = size / 2;
    let two_s2 = 2.0 * sigma * sigma;
    let gx = (0.max(-ul[0]), br[0].min(width as i64) - ul[0]);
    let gy = (0.max(-ul[1]), br[1].min(height as i64) - ul[1]);
    for yy in gy.0..gy.1.min(size) {
        for xx in gx.0..gx.1.min(size) {
            let d = ((xx - c0) * (xx - c0) + (yy - c0) * (yy - c0)) as f32;
            let (mx, my) = ((ul[0] + xx) as usize, (ul[1] + yy) as usize);
            map[my * width + mx] = (-d / two_s2).exp();
        }
    }
}

const PAIRS_WFLW: &[(usize, usize)] = &[
    (0, 32), (1, 31), (2, 30), (3, 29), (4, 28), (5, 27), (6, 26), (7, 25), (8, 24), (9, 23), (10, 22),
    (11, 21), (12, 20), (13, 19), (14, 18), (15, 17), (33, 46), (34, 45), (35, 44), (36, 43), (37, 42),
    (38, 50), (39, 49), (40, 48), (41, 47), (60, 72), (61, 71), (62, 70), (63, 69), (64, 68), (65, 75),
    (66, 74), (67, 73), (55, 59), (56, 58), (76, 82), (77, 81), (78, 80), (87, 83), (86, 84), (88, 92),
    (89, 91), (95, 93), (96, 97),
];
// 0-based versions of the 1-based official tables.
const PAIRS_300W: &[(usize, usize)] = &[
    (0, 16), (1, 15), (2, 14), (3, 13), (4, 12), (5, 11), (6, 10), (7, 9), (17, 26), (18, 25), (19, 24),
    (20, 23), (21, 22), (31, 35), (32, 34), (36, 45), (37, 44), (38, 43), (39, 42), (40, 47), (41, 46),
    (48, 54), (49, 53), (50, 52), (61, 63), (60, 64), (67, 65), (58, 56), (59, 55),
];
const PAIRS_AFLW: &[(usize, usize)] = &[(0, 5), (1, 4), (2, 3), (6, 11), (7, 10), (8, 9), (12, 14), (15, 17)];
const PAIRS_COFW: &[(usize, usize)] = &[
    (0, 1), (4, 6), (2, 3), (5, 7), (8, 9), (10, 11), (12, 14), (16, 17), (13, 15), (18, 19), (22, 23),
];

/// 0-based mirror pairs, by number of landmarks.
pub fn mirror_pairs(joints: usize) -> Result<&'static [(usize, usize)]> {
    Ok(match joints {
        98 => PAIRS_WFLW,
        68 => PAIRS_300W,
        29 => PAIRS_COFW,
        19 => PAIRS_AFLW,
        _ => bail!("no mirror pairs for {joints} landmarks (known: 98, 68, 29, 19)"),
    })
}

/// Reference `fliplr_joints`: x -> width - x, then swap the mirror pairs in listed order.
pub fn fliplr_joints(pts: &mut [[f64; 2]], width: usize) -> Result<()> {
    let pairs = mirror_pairs(pts.len())?;
    for p in pts.iter_mut() {
        p[0] = width as f64 - p[0];
    }
    for &(a, b) in pairs {
        pts.swap(a, b);
    }
    Ok(())
}
