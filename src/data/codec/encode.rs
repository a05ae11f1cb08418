//! Encoding: heatmap targets from landmarks, i.e. `generate_target` of the official code (Gaussian
//! and the non-Gaussian variant) and the `Dataset.__getitem__` target loop. The Gaussian patch is
//! computed in float32 like NumPy; its `exp` is a correctly rounded float32 exp (f64 exp rounded
//! once to f32, which is what glibc `expf` gives for every patch entry and what the fixtures were
//! made with).

use crate::data::transforms::py_slice;
use anyhow::{bail, Result};

use super::{HeatmapCodec, TargetKind};
use crate::data::transforms::transform_pixel;

/// float32 `exp(q)`: computed in f64 and rounded once.
#[inline]
pub fn exp_f32(q: f32) -> f32 {
    (q as f64).exp() as f32
}

/// The float32 Gaussian patch of the reference for `sigma`: side `ceil(6σ+1)`, centre index
/// `floor((6σ+1)/2)`, values `exp(-((x-x0)² + (y-y0)²) / (2σ²))`.
pub fn gaussian_patch(sigma: f64) -> (usize, Vec<f32>) {
    let tmp = sigma * 3.0;
    let size = 2.0 * tmp + 1.0;
    let n = size.ceil().max(0.0) as usize; // np.arange(0, size, 1)
    let x0 = (size / 2.0).floor() as f32; // size // 2, a Python float
    let denom = (2.0 * sigma * sigma) as f32; // Python float cast to float32 by NumPy
    let mut g = vec![0f32; n * n];
    for y in 0..n {
        for x in 0..n {
            let dx = x as f32 - x0;
            let dy = y as f32 - x0;
            let q = -(dx * dx + dy * dy) / denom;
            g[y * n + x] = exp_f32(q);
        }
    }
    (n, g)
}

/// `generate_target(map, pt, sigma)`: assigns (not max-es) the Gaussian patch centred on the
/// integer heatmap point `pt` (0-based, = tpts - 1) into `map` (row-major `height`×`width`).
/// Points whose patch misses the map leave it unchanged. `sigma` is f64 because the reference's
/// float64 σ decides `3σ`, the patch size and `2σ²` (rounded to f32).
pub fn generate_target(map: &mut [f32], width: usize, height: usize, pt: [f32; 2], sigma: f64) {
    if map.len() < width * height || !sigma.is_finite() || sigma <= 0.0 || !pt[0].is_finite() || !pt[1].is_finite() {
        return;
    }
    let tmp = sigma * 3.0;
    let (px, py) = (pt[0] as f64, pt[1] as f64);
    let clamp_i = |v: f64| v.trunc().clamp(-1e12, 1e12) as i64;
    let ul = [clamp_i(px - tmp), clamp_i(py - tmp)];
    let br = [clamp_i(px + tmp + 1.0), clamp_i(py + tmp + 1.0)];
    let (w, h) = (width as i64, height as i64);
    if ul[0] >= w || ul[1] >= h || br[0] < 0 || br[1] < 0 {
        return;
    }
    let (n, g) = gaussian_patch(sigma);
    let ni = n as i64;
    let gx = py_slice(ni, 0.max(-ul[0]), br[0].min(w) - ul[0]);
    let gy = py_slice(ni, 0.max(-ul[1]), br[1].min(h) - ul[1]);
    let ix = py_slice(w, 0.max(ul[0]), br[0].min(w));
    let iy = py_slice(h, 0.max(ul[1]), br[1].min(h));
    // numpy assignment: shapes must match or the value axis must be 1 (broadcast); otherwise
    // the reference raises, and we leave the map untouched.
    if (gx.1 != ix.1 && gx.1 != 1) || (gy.1 != iy.1 && gy.1 != 1) {
        return;
    }
    for yy in 0..iy.1 {
        let sy = gy.0 + if gy.1 == 1 { 0 } else { yy };
        for xx in 0..ix.1 {
            let sx = gx.0 + if gx.1 == 1 { 0 } else { xx };
            map[(iy.0 + yy) * width + ix.0 + xx] = g[sy * n + sx];
        }
    }
}

/// The reference's non-Gaussian target: `sigma / ((dx² + dy² + sigma²)^1.5)` on the same
/// patch and placement rules as the Gaussian one.
pub fn generate_target_cauchy(map: &mut [f32], width: usize, height: usize, pt: [f32; 2], sigma: f64) {
    let tmp = sigma * 3.0;
    let (px, py) = (pt[0] as f64, pt[1] as f64);
    let ul = [(px - tmp).trunc() as i64, (py - tmp).trunc() as i64];
    let br = [(px + tmp + 1.0).trunc() as i64, (py + tmp + 1.0).trunc() as i64];
    if ul[0] >= width as i64 || ul[1] >= height as i64 || br[0] < 0 || br[1] < 0 {
        return;
    }
    // numpy: size = 2·tmp+1 (a float), arange(0, size) has ceil(size) entries, centre size // 2.
    let size = 2.0 * tmp + 1.0;
    let n = size.ceil() as i64;
    let c0 = (size / 2.0).floor() as i64;
    // numpy: float32 grid, Python-float σ → float32 arithmetic.
    let (sig, s2) = (sigma as f32, (sigma * sigma) as f32);
    let (gx0, gx1) = (0.max(-ul[0]), br[0].min(width as i64) - ul[0]);
    let (gy0, gy1) = (0.max(-ul[1]), br[1].min(height as i64) - ul[1]);
    for yy in gy0..gy1.min(n) {
        for xx in gx0..gx1.min(n) {
            let d = ((xx - c0) * (xx - c0) + (yy - c0) * (yy - c0)) as f32;
            map[(ul[1] + yy) as usize * width + (ul[0] + xx) as usize] = sig / (d + s2).powf(1.5);
        }
    }
}

impl HeatmapCodec {
    /// The reference target loop: for every landmark with original y > 0, `tp = transform_pixel(pt+1,
    /// center, scale, heatmap_size, rot)` and a target peak at `tp-1`; missing landmarks keep an
    /// all-zero map and their input value in `tpts`. Fills `target` ([J,h,w], zeroed here) and
    /// returns `tpts` (1-based heatmap coordinates).
    pub fn encode(
        &self, pts: &[[f64; 2]], center: [f32; 2], scale: f64, rot: f64, target: &mut [f32],
    ) -> Result<Vec<[f32; 2]>> {
        target.fill(0.0);
        self.encode_on_zeros(pts, center, scale, rot, target)
    }

    /// [`HeatmapCodec::encode`] into a `target` the caller knows to be all zeros (a fresh
    /// buffer): the 1.6 MB of a 98-landmark 64² target are not zeroed a second time.
    pub fn encode_on_zeros(
        &self, pts: &[[f64; 2]], center: [f32; 2], scale: f64, rot: f64, target: &mut [f32],
    ) -> Result<Vec<[f32; 2]>> {
        let [h, w] = self.heatmap_size;
        if target.len() != self.target_len(pts.len()) {
            bail!("targets: buffer holds {} values, expected {}x{}x{}", target.len(), pts.len(), h, w);
        }
        let mut tpts = Vec::with_capacity(pts.len());
        for (j, p) in pts.iter().enumerate() {
            if p[1] > 0.0 {
                let tp = transform_pixel([p[0] + 1.0, p[1] + 1.0], center, scale, self.heatmap_size, false, rot);
                let peak = [(tp[0] - 1.0) as f32, (tp[1] - 1.0) as f32];
                let map = &mut target[j * h * w..(j + 1) * h * w];
                match self.kind {
                    TargetKind::Gaussian => generate_target(map, w, h, peak, self.sigma),
                    TargetKind::Cauchy => generate_target_cauchy(map, w, h, peak, self.sigma),
                }
                tpts.push([tp[0] as f32, tp[1] as f32]);
            } else {
                tpts.push([p[0] as f32, p[1] as f32]);
            }
        }
        Ok(tpts)
    }

    /// [`HeatmapCodec::encode`] into a new buffer: (targets `[J, h, w]`, tpts).
    pub fn encode_new(
        &self, pts: &[[f64; 2]], center: [f32; 2], scale: f64, rot: f64,
    ) -> Result<(Vec<f32>, Vec<[f32; 2]>)> {
        let mut target = vec![0f32; self.target_len(pts.len())];
        let tpts = self.encode_on_zeros(pts, center, scale, rot, &mut target)?;
        Ok((target, tpts))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patch_shapes() {
        let (n, g) = gaussian_patch(1.5);
        assert_eq!(n, 10);
        assert_eq!(g[5 * 10 + 5], 1.0);
        let (n, g) = gaussian_patch(1.0);
        assert_eq!(n, 7);
        assert_eq!(g[3 * 7 + 3], 1.0);
    }

    #[test]
    fn border_quirk_and_skips() {
        let mut m = vec![0f32; 64 * 64];
        generate_target(&mut m, 64, 64, [2.0, 30.0], 1.5);
        assert_eq!(m[30 * 64 + 3], 1.0, "sigma 1.5: peak at p+1 for p < 5");
        let mut m = vec![0f32; 64 * 64];
        generate_target(&mut m, 64, 64, [2.0, 30.0], 1.0);
        assert_eq!(m[30 * 64 + 2], 1.0);
        let mut m = vec![0f32; 64 * 64];
        generate_target(&mut m, 64, 64, [200.0, 30.0], 1.5);
        generate_target(&mut m, 64, 64, [-20.0, 30.0], 1.5);
        generate_target(&mut m, 64, 64, [f32::NAN, 30.0], 1.5);
        assert!(m.iter().all(|&v| v == 0.0));
        // too-short map: no panic, nothing written
        let mut short = vec![0f32; 10];
        generate_target(&mut short, 64, 64, [2.0, 2.0], 1.5);
        assert!(short.iter().all(|&v| v == 0.0));
    }

    #[test]
    fn encode_fills_present_landmarks_and_keeps_missing_ones() {
        let codec = HeatmapCodec::gaussian([16, 16], 1.0);
        let pts = [[50.0, 60.0], [10.0, -1.0]];
        let (target, tpts) = codec.encode_new(&pts, [64.0, 64.0], 0.5, 0.0).unwrap();
        assert_eq!(target.len(), codec.target_len(2));
        assert!(target[..256].contains(&1.0), "present landmark: a peak of 1");
        assert!(target[256..].iter().all(|&v| v == 0.0), "missing landmark (y <= 0): an empty map");
        assert_eq!(tpts[1], [10.0, -1.0]);
        let mut short = vec![0f32; 10];
        assert!(codec.encode(&pts, [64.0, 64.0], 0.5, 0.0, &mut short).is_err());
    }
}
