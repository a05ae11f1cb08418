//! Forward values of conv2d, batch norm and bilinear upsampling against independent direct-loop
//! implementations, in f64 (tight) and f32 (through the GEMM path).

use hrk::ops::*;
use hrk::rng::Rng;
use hrk::{DType, Tensor};

fn randv(rng: &mut Rng, n: usize) -> Vec<f64> {
    (0..n).map(|_| rng.normal()).collect()
}

fn max_rel(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    let scale = b.iter().fold(1e-12f64, |m, v| m.max(v.abs()));
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f64::max) / scale
}

#[allow(clippy::too_many_arguments)]
fn naive_conv(
    x: &[f64], [n, c, h, w]: [usize; 4], wt: &[f64], co: usize, k: usize, s: usize, p: usize, b: Option<&[f64]>,
) -> Vec<f64> {
    let ho = (h + 2 * p - k) / s + 1;
    let wo = (w + 2 * p - k) / s + 1;
    let mut y = vec![0.0; n * co * ho * wo];
    for bn in 0..n {
        for o in 0..co {
            for oy in 0..ho {
                for ox in 0..wo {
                    let mut acc = b.map_or(0.0, |b| b[o]);
                    for ci in 0..c {
                        for i in 0..k {
                            for j in 0..k {
                                let iy = (oy * s + i) as isize - p as isize;
                                let ix = (ox * s + j) as isize - p as isize;
                                if iy >= 0 && ix >= 0 && (iy as usize) < h && (ix as usize) < w {
                                    acc += x[((bn * c + ci) * h + iy as usize) * w + ix as usize]
                                        * wt[((o * c + ci) * k + i) * k + j];
                                }
                            }
                        }
                    }
                    y[((bn * co + o) * ho + oy) * wo + ox] = acc;
                }
            }
        }
    }
    y
}

#[test]
fn conv2d_matches_direct_loops() {
    let mut rng = Rng::new(11);
    for (n, c, h, w, co, k, s, p) in [
        (2, 3, 9, 7, 5, 3, 1, 1),
        (1, 4, 8, 9, 3, 3, 2, 1),
        (3, 6, 5, 5, 7, 1, 1, 0),
        (1, 2, 7, 7, 2, 1, 2, 0),
        (2, 18, 13, 11, 18, 3, 1, 1),
    ] {
        let x = randv(&mut rng, n * c * h * w);
        let wt = randv(&mut rng, co * c * k * k);
        let b = randv(&mut rng, co);
        let want = naive_conv(&x, [n, c, h, w], &wt, co, k, s, p, Some(&b));
        let got = conv2d(
            &Tensor::from_f64(&[n, c, h, w], x.clone()).unwrap(),
            &Tensor::from_f64(&[co, c, k, k], wt.clone()).unwrap(),
            Some(&Tensor::from_f64(&[co], b.clone()).unwrap()),
            s,
            p,
        )
        .unwrap();
        let e64 = max_rel(&got.to_f64_vec(), &want);
        let got32 = conv2d(
            &Tensor::from_f64(&[n, c, h, w], x).unwrap().cast(DType::F32),
            &Tensor::from_f64(&[co, c, k, k], wt).unwrap().cast(DType::F32),
            Some(&Tensor::from_f64(&[co], b).unwrap().cast(DType::F32)),
            s,
            p,
        )
        .unwrap();
        let e32 = max_rel(&got32.to_f64_vec(), &want);
        println!("conv {n}x{c}x{h}x{w} -> {co} k{k} s{s} p{p}: f64 {e64:.1e}, f32 {e32:.1e}");
        assert!(e64 < 1e-13 && e32 < 1e-5, "f64 {e64:e} f32 {e32:e}");
    }
}

#[test]
fn batch_norm_matches_direct_formula() {
    let mut rng = Rng::new(12);
    let [n, c, h, w] = [3, 4, 5, 3];
    let x = randv(&mut rng, n * c * h * w);
    let g = randv(&mut rng, c);
    let b = randv(&mut rng, c);
    let rm0 = randv(&mut rng, c);
    let rv0: Vec<f64> = (0..c).map(|_| rng.range(0.5, 2.0)).collect();
    let t = |v: &Vec<f64>, s: &[usize]| Tensor::from_f64(s, v.clone()).unwrap();
    let (mut rm, mut rv) = (t(&rm0, &[c]), t(&rv0, &[c]));
    let y = batch_norm_train(&t(&x, &[n, c, h, w]), &t(&g, &[c]), &t(&b, &[c]), &mut rm, &mut rv, 0.1, 1e-5)
        .unwrap()
        .to_f64_vec();
    let m = (n * h * w) as f64;
    for ch in 0..c {
        let vals: Vec<(usize, f64)> = (0..n)
            .flat_map(|bn| (0..h * w).map(move |i| ((bn * c + ch) * h * w + i, 0.0)))
            .map(|(i, _)| (i, x[i]))
            .collect();
        let mean = vals.iter().map(|v| v.1).sum::<f64>() / m;
        let var = vals.iter().map(|v| (v.1 - mean).powi(2)).sum::<f64>() / m;
        for &(i, xv) in &vals {
            let want = (xv - mean) / (var + 1e-5).sqrt() * g[ch] + b[ch];
            assert!((y[i] - want).abs() < 1e-12, "bn train ch{ch}: {} vs {want}", y[i]);
        }
        let want_rm = 0.9 * rm0[ch] + 0.1 * mean;
        let want_rv = 0.9 * rv0[ch] + 0.1 * var * m / (m - 1.0);
        assert!((rm.to_f64_vec()[ch] - want_rm).abs() < 1e-12);
        assert!((rv.to_f64_vec()[ch] - want_rv).abs() < 1e-12);
        let ye =
            batch_norm_eval(&t(&x, &[n, c, h, w]), &t(&g, &[c]), &t(&b, &[c]), &t(&rm0, &[c]), &t(&rv0, &[c]), 1e-5)
                .unwrap()
                .to_f64_vec();
        for &(i, xv) in &vals {
            let want = (xv - rm0[ch]) / (rv0[ch] + 1e-5).sqrt() * g[ch] + b[ch];
            assert!((ye[i] - want).abs() < 1e-12);
        }
    }
}

/// PyTorch's align_corners=False rule written out per output pixel.
fn naive_bilinear(x: &[f64], h: usize, w: usize, ho: usize, wo: usize) -> Vec<f64> {
    let src = |d: usize, i: usize, o: usize| ((d as f64 + 0.5) * i as f64 / o as f64 - 0.5).max(0.0);
    let mut y = vec![0.0; ho * wo];
    for oy in 0..ho {
        for ox in 0..wo {
            let (sy, sx) = (src(oy, h, ho), src(ox, w, wo));
            let (y0, x0) = (sy.floor() as usize, sx.floor() as usize);
            let (y1, x1) = ((y0 + 1).min(h - 1), (x0 + 1).min(w - 1));
            let (ly, lx) = (sy - y0 as f64, sx - x0 as f64);
            y[oy * wo + ox] = (1.0 - ly) * ((1.0 - lx) * x[y0 * w + x0] + lx * x[y0 * w + x1])
                + ly * ((1.0 - lx) * x[y1 * w + x0] + lx * x[y1 * w + x1]);
        }
    }
    y
}

#[test]
fn bilinear_matches_direct_formula() {
    let mut rng = Rng::new(13);
    for (h, w, ho, wo) in [(4, 4, 8, 8), (5, 7, 8, 11), (3, 3, 7, 5), (1, 1, 3, 2), (7, 6, 3, 4), (8, 8, 64, 64)] {
        let x = randv(&mut rng, h * w);
        let got =
            upsample_bilinear(&Tensor::from_f64(&[1, 1, h, w], x.clone()).unwrap(), [ho, wo]).unwrap().to_f64_vec();
        let e = max_rel(&got, &naive_bilinear(&x, h, w, ho, wo));
        assert!(e < 1e-14, "bilinear {h}x{w}->{ho}x{wo}: {e:e}");
    }
}
