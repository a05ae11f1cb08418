//! The One Euro filter (Casiez, Roussel, Vogel: "1€ Filter: A Simple Speed-based Low-pass Filter for
//! Noisy Input in Interactive Systems", CHI 2012): a first-order low-pass filter whose cutoff rises
//! with the signal's (filtered) speed, so a still landmark is smoothed hard and a moving one follows
//! with little lag. One filter per landmark coordinate; time comes from the frame timestamps.

use anyhow::{anyhow, Result};

/// The filter's two knobs (`--smooth min_cutoff,beta`) and the derivative's cutoff.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct OneEuroParams {
    /// Cutoff (Hz) at rest: lower smooths a still face more.
    pub min_cutoff: f64,
    /// Cutoff increase per pixel/second of speed: higher lags a moving face less.
    pub beta: f64,
    /// Cutoff (Hz) of the speed estimate (the paper suggests 1 Hz; 0.5 here keeps per-frame
    /// jitter from passing for speed and opening the filter, measured below).
    pub d_cutoff: f64,
}

impl OneEuroParams {
    /// The default for frame streams, chosen on the tests below (30 frames/s, 1 px of per-frame
    /// noise): at rest the cutoff stays near 0.5 Hz and a still landmark's jitter drops to 0.31 of
    /// its raw level (1.0 Hz left 0.36–0.38, over the third the tests ask); a point moving 3–6 px a
    /// frame raises it to 5–10 Hz and lags one frame at most (at 1 px a frame the lag is about two
    /// frames, two pixels; beta 0.03 lagged two frames at 2 px a frame). Pixels, not face-relative units: beta's effect grows with the noise in pixels.
    pub const DEFAULT: OneEuroParams = OneEuroParams { min_cutoff: 0.5, beta: 0.05, d_cutoff: 0.5 };

    /// Parses `--smooth`: `none` (no smoothing), or `min_cutoff,beta` (min_cutoff > 0, beta ≥ 0).
    pub fn parse(s: &str) -> Result<Option<OneEuroParams>> {
        if s.trim() == "none" {
            return Ok(None);
        }
        let bad = || anyhow!("--smooth '{s}': expected none or min_cutoff,beta (e.g. 0.5,0.05; min_cutoff > 0)");
        let v: Vec<f64> = s.split(',').map(|t| t.trim().parse::<f64>()).collect::<Result<_, _>>().map_err(|_| bad())?;
        match v[..] {
            [m, b] if m.is_finite() && m > 0.0 && b.is_finite() && b >= 0.0 => {
                Ok(Some(OneEuroParams { min_cutoff: m, beta: b, ..OneEuroParams::DEFAULT }))
            }
            _ => Err(bad()),
        }
    }
}

/// The smoothing factor of a first-order low-pass filter with `cutoff` Hz over `dt` seconds.
fn alpha(cutoff: f64, dt: f64) -> f64 {
    let tau = 1.0 / (2.0 * std::f64::consts::PI * cutoff);
    1.0 / (1.0 + tau / dt)
}

/// One coordinate's filter state.
#[derive(Clone, Debug)]
pub struct OneEuro {
    params: OneEuroParams,
    /// (time, filtered value, filtered speed) of the last sample.
    last: Option<(f64, f64, f64)>,
}

impl OneEuro {
    pub fn new(params: OneEuroParams) -> Self {
        OneEuro { params, last: None }
    }

    /// Filters the sample `x` taken at `time` seconds (times increase; a repeated time passes `x`
    /// through unchanged in the state's place).
    pub fn filter(&mut self, time: f64, x: f64) -> f64 {
        let Some((t0, x0, dx0)) = self.last else {
            self.last = Some((time, x, 0.0));
            return x;
        };
        let dt = time - t0;
        if dt.is_nan() || dt <= 0.0 {
            return x0;
        }
        let p = self.params;
        let dx = dx0 + alpha(p.d_cutoff, dt) * ((x - x0) / dt - dx0);
        let cutoff = p.min_cutoff + p.beta * dx.abs();
        let y = x0 + alpha(cutoff, dt) * (x - x0);
        self.last = Some((time, y, dx));
        y
    }
}

/// The filters of one face's landmarks (x and y of each).
#[derive(Clone, Debug)]
pub struct LandmarkSmoother {
    params: OneEuroParams,
    filters: Vec<OneEuro>,
}

impl LandmarkSmoother {
    pub fn new(params: OneEuroParams) -> Self {
        LandmarkSmoother { params, filters: Vec::new() }
    }

    /// The landmarks of the frame at `time`, smoothed in place.
    pub fn smooth(&mut self, time: f64, points: &mut [[f32; 2]]) {
        if self.filters.len() != 2 * points.len() {
            self.filters = vec![OneEuro::new(self.params); 2 * points.len()];
        }
        for (p, f) in points.iter_mut().zip(self.filters.chunks_exact_mut(2)) {
            p[0] = f[0].filter(time, p[0] as f64) as f32;
            p[1] = f[1].filter(time, p[1] as f64) as f32;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    const FPS: f64 = 30.0;

    fn std_dev(v: &[f64]) -> f64 {
        let m = v.iter().sum::<f64>() / v.len() as f64;
        (v.iter().map(|x| (x - m) * (x - m)).sum::<f64>() / v.len() as f64).sqrt()
    }

    fn filtered(params: OneEuroParams, raw: &[f64]) -> Vec<f64> {
        let mut f = OneEuro::new(params);
        raw.iter().enumerate().map(|(i, &x)| f.filter(i as f64 / FPS, x)).collect()
    }

    /// The shift (frames) that best aligns `smoothed` with `raw`: the lag.
    fn lag(raw: &[f64], smoothed: &[f64]) -> usize {
        let err = |s: usize| {
            let n = raw.len() - s;
            (20..n).map(|i| (smoothed[i + s] - raw[i]).powi(2)).sum::<f64>() / (n - 20) as f64
        };
        (0..6).min_by(|&a, &b| err(a).total_cmp(&err(b))).unwrap()
    }

    #[test]
    fn a_still_point_with_noise_jitters_a_third_as_much() {
        let mut rng = Rng::new(3);
        // 1 pixel of per-frame noise around a still landmark.
        let raw: Vec<f64> = (0..600).map(|_| 120.0 + rng.normal()).collect();
        let smoothed = filtered(OneEuroParams::DEFAULT, &raw);
        let (a, b) = (std_dev(&raw[30..]), std_dev(&smoothed[30..]));
        assert!(b <= a / 3.0, "jitter {a:.3} px raw, {b:.3} px smoothed");
    }

    #[test]
    fn a_moving_point_lags_at_most_one_frame() {
        let mut rng = Rng::new(5);
        // Slower motion lags more frames (1 px/frame: about two, i.e. two pixels) but no more pixels.
        for speed in [3.0, 6.0] {
            // Back and forth along a sine of `speed` pixels per frame at its fastest, with the noise above.
            let raw: Vec<f64> = (0..300)
                .map(|i| {
                    let t = i as f64 / FPS;
                    200.0 + speed * FPS / 2.0 * (2.0 * t).sin() + rng.normal()
                })
                .collect();
            let smoothed = filtered(OneEuroParams::DEFAULT, &raw);
            let l = lag(&raw, &smoothed);
            assert!(l <= 1, "speed {speed} px/frame: lag {l} frames");
        }
    }

    #[test]
    fn smooth_flag_parses() {
        assert_eq!(OneEuroParams::parse("none").unwrap(), None);
        let p = OneEuroParams::parse("0.5, 0.1").unwrap().unwrap();
        assert_eq!((p.min_cutoff, p.beta), (0.5, 0.1));
        for bad in ["", "1", "0,1", "1,-1", "a,b", "1,2,3"] {
            assert!(OneEuroParams::parse(bad).unwrap_err().to_string().contains("--smooth"), "{bad}");
        }
    }
}
