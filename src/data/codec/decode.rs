//! Decoding: `decode_preds` of the official code (`lib/core/evaluation.py`): first argmax per map
//! (1-based), quarter-pixel shift towards the larger neighbour, +0.5, then the inverse
//! transform with the torch arithmetic of a float64 `scale` tensor. Everything as float32
//! except the transform (float64).

use anyhow::{bail, Result};

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

/// `decode_preds(output, center, scale, [h, w])` for `heatmaps` laid out `[n, joints, h, w]`:
/// returns `n·joints` points (integer-valued, original image pixels). `scales` are float64 and
/// already include the ×1.25 enlargement.
pub fn decode_preds(
    heatmaps: &[f32],
    n: usize,
    joints: usize,
    h: usize,
    w: usize,
    centers: &[[f32; 2]],
    scales: &[f64],
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
            let c = refine_coords(&heatmaps[off..off + per], h, w, res);
            let p = transform_pixel_tensor_scale([c[0] as f64, c[1] as f64], centers[b], scales[b], res, true, 0.0);
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
