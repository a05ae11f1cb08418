//! Evaluation of the official code: per-image NME (`compute_nme`) with its float32
//! intermediates, the logged mean, failure rates and the authors' AUC snippet (issue #6:
//! CED sampled every 1e-4, integrated with scipy's `simps`, divided by the threshold).

use anyhow::{bail, Result};

/// NumPy's pairwise summation (`pairwise_sum` of the add reduction, 8 accumulators, blocks
/// of 128), generic over f32/f64. Starts from the identity 0 like `np.sum`.
trait Float: Copy + std::ops::Add<Output = Self> {
    const ZERO: Self;
}
impl Float for f32 {
    const ZERO: f32 = 0.0;
}
impl Float for f64 {
    const ZERO: f64 = 0.0;
}

fn pairwise<T: Float>(a: &[T]) -> T {
    let n = a.len();
    if n < 8 {
        let mut res = T::ZERO;
        for &v in a {
            res = res + v;
        }
        res
    } else if n <= 128 {
        let mut r = [a[0], a[1], a[2], a[3], a[4], a[5], a[6], a[7]];
        let mut i = 8;
        while i < n - n % 8 {
            for (j, rj) in r.iter_mut().enumerate() {
                *rj = *rj + a[i + j];
            }
            i += 8;
        }
        let mut res = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]));
        while i < n {
            res = res + a[i];
            i += 1;
        }
        res
    } else {
        let mut n2 = n / 2;
        n2 -= n2 % 8;
        pairwise(&a[..n2]) + pairwise(&a[n2..])
    }
}

/// `np.sum` of a contiguous 1-D array.
fn np_sum<T: Float>(a: &[T]) -> T {
    T::ZERO + pairwise(a)
}

/// The landmark pair (0-based) whose distance normalises the NME, by landmark count.
pub fn nme_pair(joints: usize) -> Option<(usize, usize)> {
    match joints {
        98 => Some((60, 72)),
        68 => Some((36, 45)),
        29 => Some((8, 9)),
        _ => None,
    }
}

/// What normalises the NME of one image.
#[derive(Clone, Debug, PartialEq)]
pub enum NmeNorm {
    /// Distance of two ground-truth landmarks (0-based): the official 98/68/29 layouts.
    Pair(usize, usize),
    /// Distance of the means of two landmark groups (DATASET.NORM_INDICES with more than 2 entries).
    Groups(Vec<usize>, Vec<usize>),
    /// The per-image box size (AFLW CSV column 2).
    BoxSize,
}

impl NmeNorm {
    /// The official normaliser for a landmark count: 98/68/29 eye corners, 19 (AFLW) the box size.
    pub fn builtin(joints: usize) -> Result<NmeNorm> {
        match (nme_pair(joints), joints) {
            (Some((a, b)), _) => Ok(NmeNorm::Pair(a, b)),
            (None, 19) => Ok(NmeNorm::BoxSize),
            _ => bail!(
                "compute_nme: no built-in normaliser for {joints} landmarks (official layouts: 98, 68, 29, 19); set DATASET.NORM_INDICES"
            ),
        }
    }

    /// DATASET.NORM_INDICES: `[a, b]` or two equal-length groups; empty = [`NmeNorm::builtin`].
    pub fn from_indices(indices: &[usize], joints: usize) -> Result<NmeNorm> {
        if indices.is_empty() {
            return NmeNorm::builtin(joints);
        }
        if !indices.len().is_multiple_of(2) || indices.iter().any(|&k| k >= joints) {
            bail!("NORM_INDICES {indices:?}: needs an even count of landmark indices below {joints}");
        }
        if indices.len() == 2 {
            return Ok(NmeNorm::Pair(indices[0], indices[1]));
        }
        let (a, b) = indices.split_at(indices.len() / 2);
        Ok(NmeNorm::Groups(a.to_vec(), b.to_vec()))
    }
}

/// Per-image NME: `Σ_j ‖pred_j − gt_j‖ / (d·J)`. `preds`/`gts` are `n·joints` points.
/// d = ‖gt[a] − gt[b]‖ for 98/68/29 landmarks (outer eye corners), `box_sizes` (AFLW CSV
/// column 2, float64) for 19. float32 norms and sum, float64 division, as the reference.
pub fn compute_nme(preds: &[[f32; 2]], gts: &[[f32; 2]], joints: usize, box_sizes: Option<&[f64]>) -> Result<Vec<f64>> {
    if joints == 0 || preds.len() != gts.len() || !preds.len().is_multiple_of(joints) {
        bail!("compute_nme: {} predictions and {} ground-truth points for {joints} landmarks", preds.len(), gts.len());
    }
    if nme_pair(joints).is_none() && joints != 19 {
        bail!("compute_nme: number of landmarks is wrong ({joints}; expected 98, 68, 29 or 19)");
    }
    compute_nme_with(preds, gts, joints, &NmeNorm::builtin(joints)?, box_sizes)
}

/// [`compute_nme`] with an explicit normaliser (any landmark count).
pub fn compute_nme_with(
    preds: &[[f32; 2]], gts: &[[f32; 2]], joints: usize, norm: &NmeNorm, box_sizes: Option<&[f64]>,
) -> Result<Vec<f64>> {
    if joints == 0 || preds.len() != gts.len() || !preds.len().is_multiple_of(joints) {
        bail!("compute_nme: {} predictions and {} ground-truth points for {joints} landmarks", preds.len(), gts.len());
    }
    let n = preds.len() / joints;
    match norm {
        NmeNorm::BoxSize => match box_sizes {
            Some(b) if b.len() == n => {}
            Some(b) => bail!("compute_nme: {} box sizes for {n} images", b.len()),
            None => bail!("compute_nme: 19 landmarks (AFLW) need the box sizes"),
        },
        NmeNorm::Pair(a, b) if *a >= joints || *b >= joints => {
            bail!("compute_nme: normaliser landmarks {a}, {b} for {joints} landmarks")
        }
        NmeNorm::Groups(a, b) if a.is_empty() || a.iter().chain(b).any(|&k| k >= joints) => {
            bail!("compute_nme: normaliser groups {a:?}, {b:?} for {joints} landmarks")
        }
        _ => {}
    }
    let mut out = Vec::with_capacity(n);
    let mut norms = vec![0f32; joints];
    for i in 0..n {
        let p = &preds[i * joints..(i + 1) * joints];
        let g = &gts[i * joints..(i + 1) * joints];
        for j in 0..joints {
            let dx = p[j][0] - g[j][0];
            let dy = p[j][1] - g[j][1];
            norms[j] = (dx * dx + dy * dy).sqrt();
        }
        let s = np_sum(&norms) as f64;
        let v = match norm {
            NmeNorm::Pair(a, b) => {
                let vx = g[*a][0] - g[*b][0];
                let vy = g[*a][1] - g[*b][1];
                let io = (vx * vx + vy * vy).sqrt();
                // NumPy 1.x: float32 * int -> float64
                s / (io as f64 * joints as f64)
            }
            NmeNorm::Groups(a, b) => {
                // Not in the reference: group means in float64.
                let mean = |grp: &[usize]| {
                    let k = grp.len() as f64;
                    let sx: f64 = grp.iter().map(|&j| g[j][0] as f64).sum();
                    let sy: f64 = grp.iter().map(|&j| g[j][1] as f64).sum();
                    [sx / k, sy / k]
                };
                let (ma, mb) = (mean(a), mean(b));
                let io = ((ma[0] - mb[0]).powi(2) + (ma[1] - mb[1]).powi(2)).sqrt();
                s / (io * joints as f64)
            }
            NmeNorm::BoxSize => {
                let boxes = box_sizes.unwrap_or(&[]);
                // torch: sum / (box·19) on a float64 tensor = reciprocal(box·19)·sum
                (1.0 / (boxes[i] * joints as f64)) * s
            }
        };
        out.push(v);
    }
    Ok(out)
}

/// The logged NME of test.py: `np.sum` of each batch accumulated in float64, then ÷N.
pub fn mean_nme(nme: &[f64], batch_size: usize) -> f64 {
    if nme.is_empty() {
        return f64::NAN;
    }
    let bs = batch_size.max(1);
    let mut total = 0.0f64;
    for chunk in nme.chunks(bs) {
        total += np_sum(chunk);
    }
    total / nme.len() as f64
}

/// Fraction of images with NME strictly above `thr`.
pub fn failure_rate(nme: &[f64], thr: f64) -> f64 {
    if nme.is_empty() {
        return f64::NAN;
    }
    nme.iter().filter(|&&v| v > thr).count() as f64 / nme.len() as f64
}

/// Composite Simpson over samples start..=stop with unequal spacings `h` (scipy's form).
fn simpson_pairs(y: &[f64], h: &[f64], start: usize, stop: usize) -> f64 {
    let mut terms = Vec::new();
    let mut i = start;
    while i + 1 < stop {
        let (h0, h1) = (h[i], h[i + 1]);
        let hsum = h0 + h1;
        let hprod = h0 * h1;
        let r = h0 / h1;
        let t = hsum / 6.0 * (y[i] * (2.0 - 1.0 / r) + y[i + 1] * hsum * hsum / hprod + y[i + 2] * (2.0 - r));
        terms.push(t);
        i += 2;
    }
    np_sum(&terms)
}

/// `scipy.integrate.simps(y, x)` of scipy <= 1.10 (default `even='avg'`).
pub fn simps(y: &[f64], x: &[f64]) -> f64 {
    let n = y.len();
    if n < 2 || x.len() != n {
        return 0.0;
    }
    let h: Vec<f64> = x.windows(2).map(|w| w[1] - w[0]).collect();
    if n % 2 == 1 {
        return simpson_pairs(y, &h, 0, n - 1);
    }
    let mut val = 0.5 * (x[n - 1] - x[n - 2]) * (y[n - 1] + y[n - 2]);
    let mut res = simpson_pairs(y, &h, 0, n - 2);
    val += 0.5 * (x[1] - x[0]) * (y[1] + y[0]);
    res += simpson_pairs(y, &h, 1, n - 1);
    val /= 2.0;
    res /= 2.0;
    res + val
}

/// The authors' AUC snippet: returns (auc, failure rate `1 − ced[-1]`, number of samples).
/// CED sampled at `np.arange(0, thr + step, step)`, `ced(x) = #(err <= x)/N`.
pub fn auc_error(errors: &[f64], thr: f64, step: f64) -> (f64, f64, usize) {
    if errors.is_empty() || !(thr > 0.0 && step > 0.0) {
        return (f64::NAN, f64::NAN, 0);
    }
    // np.arange: length ceil((stop - start)/step), values start + k·step
    let count = ((thr + step) / step).ceil() as usize;
    let xs: Vec<f64> = (0..count).map(|k| k as f64 * step).collect();
    let n = errors.len() as f64;
    let ced: Vec<f64> = xs.iter().map(|&x| errors.iter().filter(|&&e| e <= x).count() as f64 / n).collect();
    let auc = simps(&ced, &xs) / thr;
    (auc, 1.0 - ced[count - 1], count)
}

/// What the evaluation reports: mean NME (test.py's batch accumulation), failure rates at
/// 0.08 and 0.10, and the issue-#6 AUC at 0.08 and 0.10 (step 1e-4).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Summary {
    pub nme: f64,
    pub fr_008: f64,
    pub fr_010: f64,
    pub auc_008: f64,
    pub auc_010: f64,
}

impl Summary {
    /// `batch_size` is the test loader's batch size (it decides the float64 summation order
    /// of the mean, to the last bit only).
    pub fn from_nme(nme: &[f64], batch_size: usize) -> Summary {
        Summary {
            nme: mean_nme(nme, batch_size),
            fr_008: failure_rate(nme, 0.08),
            fr_010: failure_rate(nme, 0.10),
            auc_008: auc_error(nme, 0.08, 1e-4).0,
            auc_010: auc_error(nme, 0.1, 1e-4).0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairwise_matches_plain_sum_for_exact_values() {
        let v: Vec<f64> = (0..1000).map(|i| i as f64).collect();
        assert_eq!(np_sum(&v), 499500.0);
        assert_eq!(np_sum::<f64>(&[]), 0.0);
    }

    #[test]
    fn simps_exact_on_polynomials() {
        let x: Vec<f64> = (0..11).map(|i| i as f64 / 10.0).collect();
        let y: Vec<f64> = x.iter().map(|v| v * v).collect();
        assert!((simps(&y, &x) - 1.0 / 3.0).abs() < 1e-12);
    }

    #[test]
    fn nme_errors() {
        let p = vec![[0f32; 2]; 10];
        assert!(compute_nme(&p, &p, 10, None).is_err());
        assert!(compute_nme(&p, &p[..5], 5, None).is_err());
        let p19 = vec![[0f32; 2]; 19];
        assert!(compute_nme(&p19, &p19, 19, None).is_err());
        assert!(compute_nme(&p19, &p19, 19, Some(&[1.0, 2.0])).is_err());
        assert_eq!(compute_nme(&p19, &p19, 19, Some(&[1.0])).unwrap(), vec![0.0]);
    }
}
