//! Decoding: `decode_preds` of the official code (`lib/core/evaluation.py`): first argmax per map
//! (1-based), quarter-pixel shift towards the larger neighbour, +0.5, then the inverse
//! transform with the torch arithmetic of a float64 `scale` tensor. Everything as float32
//! except the transform (float64). The opt-in [`DecodeMode::Dark`] (TEST.DECODE: dark) replaces
//! only the quarter-pixel step by DARK's Taylor refinement (Zhang et al., CVPR 2020), in float64
//! like mmpose (its padded map is a float64 `np.zeros`).

use anyhow::{bail, Result};

use crate::config::DecodeMode;
use crate::data::transforms::transform_pixel_tensor_scale;

/// `get_preds` for one map: 1-based (x, y) of the first maximum in row-major order; (0, 0)
/// when the maximum is <= 0.
pub fn argmax_1based(map: &[f32], w: usize) -> [f32; 2] {
    let Some(&first) = map.first() else { return [0.0, 0.0] };
    let (mut best, mut best_v) = (0usize, first);
    for (i, &v) in map.iter().enumerate() {
        // numpy's argmax picks the first NaN, whose value then fails `> 0`: (0, 0).
        if v.is_nan() {
            return [0.0, 0.0];
        }
        if v > best_v {
            best = i;
            best_v = v;
        }
    }
    if best_v > 0.0 && w > 0 {
        [(best % w + 1) as f32, (best / w + 1) as f32]
    } else {
        [0.0, 0.0]
    }
}

fn sign(v: f32) -> f32 {
    if v > 0.0 {
        1.0
    } else if v < 0.0 {
        -1.0
    } else {
        0.0
    }
}

/// Heatmap coordinates after the shift and +0.5 (the reference's `coords` before transform).
/// `res` = [rows, cols] as passed to the reference (`[64, 64]`); x is range-checked against
/// res[0] and y against res[1], as the reference does.
pub fn refine_coords(map: &[f32], h: usize, w: usize, res: [usize; 2]) -> [f32; 2] {
    let mut c = argmax_1based(map, w);
    let px = c[0].floor() as usize;
    let py = c[1].floor() as usize;
    if px > 1 && px < res[0] && py > 1 && py < res[1] && px < w && py < h {
        let at = |y: usize, x: usize| map[y * w + x];
        let dx = at(py - 1, px) - at(py - 1, px - 2);
        let dy = at(py, px - 1) - at(py - 2, px - 1);
        c[0] += sign(dx) * 0.25f32;
        c[1] += sign(dy) * 0.25f32;
    }
    [c[0] + 0.5f32, c[1] + 0.5f32]
}

/// OpenCV's `getGaussianKernel(11, 0)`: σ = 0.3·((11−1)/2 − 1) + 0.8 = 2.0, normalised to sum 1.
fn dark_kernel() -> [f64; 11] {
    let sigma = 0.3 * ((11.0 - 1.0) * 0.5 - 1.0) + 0.8;
    let mut k = [0f64; 11];
    let mut sum = 0.0;
    for (i, v) in k.iter_mut().enumerate() {
        let x = i as f64 - 5.0;
        *v = (-(x * x) / (2.0 * sigma * sigma)).exp();
        sum += *v;
    }
    k.iter_mut().for_each(|v| *v /= sum);
    k
}

/// The blurred map of DARK: zero-pad by 5, 11×11 Gaussian (σ 2), crop back. Zero padding as wide as
/// the kernel radius means the reflect-101 border of the padded map never reaches the kept region,
/// so a separable blur with zeros outside the map is the same filter.
pub fn dark_blur(map: &[f32], h: usize, w: usize) -> Vec<f64> {
    let k = dark_kernel();
    let map: Vec<f64> = map.iter().map(|&v| v as f64).collect();
    let rows = blur_along(&map, [h, w], &k, [0, 1]);
    blur_along(&rows, [h, w], &k, [1, 0])
}

/// One pass of the separable blur along the axis `step` = [dy, dx], zeros outside the map.
fn blur_along(src: &[f64], [h, w]: [usize; 2], k: &[f64], [dy, dx]: [isize; 2]) -> Vec<f64> {
    let mut out = vec![0f64; h * w];
    for y in 0..h {
        for x in 0..w {
            let mut acc = 0.0;
            for (t, kv) in k.iter().enumerate() {
                let off = t as isize - 5;
                let (yy, xx) = (y as isize + off * dy, x as isize + off * dx);
                if yy >= 0 && (yy as usize) < h && xx >= 0 && (xx as usize) < w {
                    acc += kv * src[yy as usize * w + xx as usize];
                }
            }
            out[y * w + x] = acc;
        }
    }
    out
}

/// DARK's heatmap coordinates (1-based argmax + Taylor offset + 0.5, before the inverse transform).
/// Maps whose maximum is <= 0 (or NaN) keep the reference's result; a peak within 2 cells of the
/// border, a non-positive blurred maximum or a singular Hessian get no offset.
pub fn dark_coords(map: &[f32], h: usize, w: usize, res: [usize; 2]) -> [f64; 2] {
    let c = argmax_1based(map, w);
    if c == [0.0, 0.0] || map.len() != h * w {
        let q = refine_coords(map, h, w, res);
        return [q[0] as f64, q[1] as f64];
    }
    let (x, y) = (c[0] as usize - 1, c[1] as usize - 1);
    let mut out = [c[0] as f64, c[1] as f64];
    if 1 < x && x + 2 < w && 1 < y && y + 2 < h {
        let orig_max = map.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v)) as f64;
        let blurred = dark_blur(map, h, w);
        let bmax = blurred.iter().fold(f64::NEG_INFINITY, |m, &v| m.max(v));
        if bmax > 0.0 {
            let s = orig_max / bmax;
            let l = |yy: usize, xx: usize| (blurred[yy * w + xx] * s).max(1e-10).ln();
            let dx = 0.5 * (l(y, x + 1) - l(y, x - 1));
            let dy = 0.5 * (l(y + 1, x) - l(y - 1, x));
            let dxx = 0.25 * (l(y, x + 2) - 2.0 * l(y, x) + l(y, x - 2));
            let dyy = 0.25 * (l(y + 2, x) - 2.0 * l(y, x) + l(y - 2, x));
            let dxy = 0.25 * (l(y + 1, x + 1) - l(y - 1, x + 1) - l(y + 1, x - 1) + l(y - 1, x - 1));
            let det = dxx * dyy - dxy * dxy;
            if det != 0.0 && det.is_finite() {
                // −H⁻¹·g with H⁻¹ = [[dyy, −dxy], [−dxy, dxx]] / det.
                out[0] -= (dyy * dx - dxy * dy) / det;
                out[1] -= (dxx * dy - dxy * dx) / det;
            }
        }
    }
    [out[0] + 0.5, out[1] + 0.5]
}

/// Heatmap coordinates (before the inverse transform) of one map with the chosen refinement.
pub fn heatmap_coords(map: &[f32], h: usize, w: usize, res: [usize; 2], mode: DecodeMode) -> [f64; 2] {
    match mode {
        DecodeMode::Quarter => {
            let c = refine_coords(map, h, w, res);
            [c[0] as f64, c[1] as f64]
        }
        DecodeMode::Dark => dark_coords(map, h, w, res),
    }
}

/// `decode_preds(output, center, scale, [h, w])` for `heatmaps` laid out `[n, joints, h, w]`:
/// returns `n·joints` points (integer-valued, original image pixels). `scales` are float64 and
/// already include the ×1.25 enlargement.
pub fn decode_preds(
    heatmaps: &[f32], n: usize, joints: usize, h: usize, w: usize, centers: &[[f32; 2]], scales: &[f64],
) -> Result<Vec<[f32; 2]>> {
    decode_preds_with(heatmaps, n, joints, h, w, centers, scales, DecodeMode::Quarter)
}

/// [`decode_preds`] with the sub-pixel refinement `mode`.
#[allow(clippy::too_many_arguments)]
pub fn decode_preds_with(
    heatmaps: &[f32], n: usize, joints: usize, h: usize, w: usize, centers: &[[f32; 2]], scales: &[f64],
    mode: DecodeMode,
) -> Result<Vec<[f32; 2]>> {
    let per = h.checked_mul(w).filter(|&p| p > 0);
    let Some(per) = per else { bail!("decode_preds: bad heatmap size {h}x{w}") };
    let total = per.checked_mul(joints).and_then(|v| v.checked_mul(n));
    if total != Some(heatmaps.len()) {
        bail!("decode_preds: heatmaps have {} values, expected {n}x{joints}x{h}x{w}", heatmaps.len());
    }
    if centers.len() != n || scales.len() != n {
        bail!("decode_preds: {} centers and {} scales for a batch of {n}", centers.len(), scales.len());
    }
    let res = [h, w];
    let mut out = Vec::with_capacity(n * joints);
    for b in 0..n {
        for j in 0..joints {
            let off = (b * joints + j) * per;
            let c = heatmap_coords(&heatmaps[off..off + per], h, w, res, mode);
            let p = transform_pixel_tensor_scale(c, centers[b], scales[b], res, true, 0.0);
            out.push([p[0] as f32, p[1] as f32]);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn argmax_rules() {
        let mut m = vec![0f32; 64 * 64];
        assert_eq!(argmax_1based(&m, 64), [0.0, 0.0]);
        m[10 * 64 + 20] = 1.0;
        m[30 * 64 + 5] = 1.0; // tie: the first in row-major order wins
        assert_eq!(argmax_1based(&m, 64), [21.0, 11.0]);
        let neg = vec![-1f32; 16];
        assert_eq!(argmax_1based(&neg, 4), [0.0, 0.0]);
    }

    #[test]
    fn decode_matches_hand_computation() {
        let mut m = vec![0f32; 64 * 64];
        m[10 * 64 + 20] = 1.0;
        m[10 * 64 + 21] = 0.5;
        let p = decode_preds(&m, 1, 1, 64, 64, &[[128.0, 128.0]], &[1.28]).unwrap();
        assert_eq!(p, vec![[84.0, 43.0]]);
        assert!(decode_preds(&m, 2, 1, 64, 64, &[[128.0, 128.0]], &[1.28]).is_err());
        assert!(decode_preds(&m, 1, 1, 64, 64, &[], &[1.28]).is_err());
        assert!(decode_preds(&[], 1, 1, 0, 64, &[[0.0; 2]], &[1.0]).is_err());
    }
}
