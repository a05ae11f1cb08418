//! The vectorised f32 training kernels (BN train/eval forward and backward, relu, add, scale,
//! bilinear upsample, concat, MSE) against plain f64 references of the textbook formulas, on odd
//! shapes; BN also on values with a large common offset, where a naive f32 variance loses every
//! digit. Plus: every op writes all of its (pooled, unzeroed) output, and `backward` frees the graph.

use hrk::ops::*;
use hrk::rng::Rng;

mod common;
use hrk::{backward, backward_with, DType, Storage, Tensor};

const SHAPES: [[usize; 4]; 12] = [
    [1, 1, 5, 7],
    [1, 3, 13, 13],
    [1, 17, 5, 7],
    [3, 1, 1, 1],
    [3, 3, 5, 7],
    [3, 17, 1, 1],
    [3, 17, 13, 13],
    [3, 1, 13, 13],
    [1, 3, 5, 7],
    [3, 3, 1, 1],
    [1, 17, 13, 13],
    [3, 1, 5, 7],
];

fn normal(rng: &mut Rng, n: usize, offset: f64, scale: f64) -> Vec<f32> {
    (0..n).map(|_| (offset + scale * rng.normal()) as f32).collect()
}

fn t32(shape: &[usize], v: Vec<f32>) -> Tensor {
    Tensor::from_f32(shape, v).unwrap()
}

fn f64s(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| x as f64).collect()
}

/// max |got − want| ≤ `tol` × max |want|: one relative figure for a whole tensor.
fn assert_close(what: &str, got: &[f32], want: &[f64], tol: f64) {
    common::assert_close_scaled(what, got, want, tol, 1e-30);
}

/// Per-channel two-pass mean and biased variance in f64.
fn ref_stats(x: &[f64], [n, c, h, w]: [usize; 4]) -> (Vec<f64>, Vec<f64>) {
    let plane = h * w;
    let m = (n * plane) as f64;
    let vals = |ch: usize| (0..n).flat_map(move |b| (0..plane).map(move |i| (b * c + ch) * plane + i));
    let mean: Vec<f64> = (0..c).map(|ch| vals(ch).map(|i| x[i]).sum::<f64>() / m).collect();
    let var = (0..c).map(|ch| vals(ch).map(|i| (x[i] - mean[ch]).powi(2)).sum::<f64>() / m).collect();
    (mean, var)
}

/// BN's reference in f64 over NCHW `x` of shape `d`, from per-channel `mean` and `invstd`: x̂ = (x − mean)·invstd,
/// y = x̂·γ + β, and for the output gradient `dy` the per-channel Σdy and Σdy·x̂ (= dβ and dγ).
struct BnRef {
    xhat: Vec<f64>,
    y: Vec<f64>,
    sum_dy: Vec<f64>,
    sum_dy_xhat: Vec<f64>,
}

#[allow(clippy::too_many_arguments)]
fn bn_ref(d: [usize; 4], x: &[f64], mean: &[f64], invstd: &[f64], g: &[f64], b: &[f64], dy: &[f64]) -> BnRef {
    let [_, c, h, w] = d;
    let ch_of = |i: usize| (i / (h * w)) % c;
    let xhat: Vec<f64> = (0..x.len()).map(|i| (x[i] - mean[ch_of(i)]) * invstd[ch_of(i)]).collect();
    let y = (0..x.len()).map(|i| xhat[i] * g[ch_of(i)] + b[ch_of(i)]).collect();
    let (mut sum_dy, mut sum_dy_xhat) = (vec![0.0; c], vec![0.0; c]);
    for i in 0..x.len() {
        sum_dy[ch_of(i)] += dy[i];
        sum_dy_xhat[ch_of(i)] += dy[i] * xhat[i];
    }
    BnRef { xhat, y, sum_dy, sum_dy_xhat }
}

/// dγ and dβ of BN (leaves `g`, `b`) against the reference's channel sums.
fn assert_affine_grads(tag: &str, grads: &hrk::Gradients, g: &Tensor, b: &Tensor, r: &BnRef) {
    assert_close(&format!("{tag}: dgamma"), &grads.get(g).unwrap().to_f32_vec(), &r.sum_dy_xhat, 1e-5);
    assert_close(&format!("{tag}: dbeta"), &grads.get(b).unwrap().to_f32_vec(), &r.sum_dy, 1e-5);
}

fn bn_train_case(rng: &mut Rng, d: [usize; 4], offset: f64, spread: f64) {
    let [n, c, h, w] = d;
    let count = n * h * w;
    if count < 2 {
        return;
    }
    let len = n * c * h * w;
    let xv = normal(rng, len, offset, spread);
    let (gv, bv) = (normal(rng, c, 1.0, 0.5), normal(rng, c, 0.0, 0.5));
    let dyv = normal(rng, len, 0.0, 1.0);
    let x = t32(&d, xv.clone()).requires_grad();
    let (g, b) = (t32(&[c], gv.clone()).requires_grad(), t32(&[c], bv.clone()).requires_grad());
    let mut rm = t32(&[c], vec![0.5; c]);
    let mut rv = t32(&[c], vec![2.0; c]);
    let y = batch_norm_train(&x, &g, &b, &mut rm, &mut rv, 0.1, BN_EPS).unwrap();

    let (x64, g64, b64, dy64) = (f64s(&xv), f64s(&gv), f64s(&bv), f64s(&dyv));
    let (mean, var) = ref_stats(&x64, d);
    let plane = h * w;
    let ch_of = |i: usize| (i / plane) % c;
    let invstd: Vec<f64> = var.iter().map(|v| 1.0 / (v + BN_EPS).sqrt()).collect();
    let r = bn_ref(d, &x64, &mean, &invstd, &g64, &b64, &dy64);
    let tag = format!("bn train {d:?} offset {offset}");
    // The output is O(1); f32 rounding of it is ~6e-8, and the offset must cost nothing beyond that.
    assert_close(&format!("{tag}: y"), &y.to_f32_vec(), &r.y, 2e-6);
    let unbias = count as f64 / (count as f64 - 1.0);
    let want_rm: Vec<f64> = mean.iter().map(|m| 0.9 * 0.5 + 0.1 * m).collect();
    let want_rv: Vec<f64> = var.iter().map(|v| 0.9 * 2.0 + 0.1 * v * unbias).collect();
    assert_close(&format!("{tag}: running_mean"), &rm.to_f32_vec(), &want_rm, 1e-6);
    assert_close(&format!("{tag}: running_var"), &rv.to_f32_vec(), &want_rv, 1e-6);

    let grads = backward_with(&y, Storage::f32(dyv)).unwrap();
    let m = count as f64;
    let want_dx: Vec<f64> = (0..len)
        .map(|i| {
            let ch = ch_of(i);
            g64[ch] * invstd[ch] / m * (m * dy64[i] - r.sum_dy[ch] - r.xhat[i] * r.sum_dy_xhat[ch])
        })
        .collect();
    assert_close(&format!("{tag}: dx"), &grads.get(&x).unwrap().to_f32_vec(), &want_dx, 1e-5);
    assert_affine_grads(&tag, &grads, &g, &b, &r);
}

/// `bn_train_case` on every shape, for each (offset, spread), drawing from the generator of `seed`.
fn bn_train_cases(seed: u64, cases: [(f64, f64); 2]) {
    let mut rng = common::rng(seed);
    for d in SHAPES {
        for (offset, spread) in cases {
            bn_train_case(&mut rng, d, offset, spread);
        }
    }
}

#[test]
fn bn_train_matches_the_f64_formula() {
    bn_train_cases(11, [(0.0, 1.0), (3.0, 0.1)]);
}

#[test]
fn bn_train_keeps_precision_under_a_large_offset() {
    // x = 1000 + noise of σ = 0.01: Σx² − (Σx)²/m in f32 would be pure rounding noise.
    bn_train_cases(12, [(1000.0, 0.01), (-250.0, 1e-3)]);
}

#[test]
fn bn_eval_matches_the_f64_formula() {
    let mut rng = common::rng(13);
    for d in SHAPES {
        let [_, c, h, w] = d;
        let len: usize = d.iter().product();
        let xv = normal(&mut rng, len, 1000.0, 0.5);
        let (gv, bv) = (normal(&mut rng, c, 1.0, 0.5), normal(&mut rng, c, 0.0, 0.5));
        let rmv = normal(&mut rng, c, 1000.0, 0.1);
        let rvv: Vec<f32> = normal(&mut rng, c, 0.0, 1.0).iter().map(|v| v * v + 0.1).collect();
        let dyv = normal(&mut rng, len, 0.0, 1.0);
        let x = t32(&d, xv.clone()).requires_grad();
        let (g, b) = (t32(&[c], gv.clone()).requires_grad(), t32(&[c], bv.clone()).requires_grad());
        let y = batch_norm_eval(&x, &g, &b, &t32(&[c], rmv.clone()), &t32(&[c], rvv.clone()), BN_EPS).unwrap();
        let plane = h * w;
        let ch_of = |i: usize| (i / plane) % c;
        let invstd: Vec<f64> = rvv.iter().map(|&v| 1.0 / (v as f64 + BN_EPS).sqrt()).collect();
        let r = bn_ref(d, &f64s(&xv), &f64s(&rmv), &invstd, &f64s(&gv), &f64s(&bv), &f64s(&dyv));
        let tag = format!("bn eval {d:?}");
        assert_close(&format!("{tag}: y"), &y.to_f32_vec(), &r.y, 2e-6);
        let grads = backward_with(&y, Storage::f32(dyv.clone())).unwrap();
        let want_dx: Vec<f64> = (0..len).map(|i| dyv[i] as f64 * gv[ch_of(i)] as f64 * invstd[ch_of(i)]).collect();
        assert_close(&format!("{tag}: dx"), &grads.get(&x).unwrap().to_f32_vec(), &want_dx, 1e-6);
        assert_affine_grads(&tag, &grads, &g, &b, &r);
    }
}

/// Every build of the f32 BN passes this CPU runs (AVX-512, AVX2, portable) gives the portable
/// build's bits: values, running statistics and gradients, with and without the fused ReLU (the
/// build's own check against the f64 formula is `bn_train_matches_the_f64_formula`, which runs the
/// build the machine picks).
#[test]
fn bn_builds_agree_bit_for_bit() {
    use hrk::host_isa::Isa;
    use hrk::ops::batchnorm::{batch_norm_train_relu, with_simd};
    let mut rng = common::rng(14);
    for d in SHAPES.into_iter().chain([[2, 5, 19, 23], [2, 3, 64, 64]]) {
        let [n, c, h, w] = d;
        if n * h * w < 2 {
            continue;
        }
        let len: usize = d.iter().product();
        let (xv, dyv) = (normal(&mut rng, len, 3.0, 1.0), normal(&mut rng, len, 0.0, 1.0));
        let (gv, bv) = (normal(&mut rng, c, 1.0, 0.5), normal(&mut rng, c, 0.0, 0.5));
        let run = |relu: bool| {
            let x = t32(&d, xv.clone()).requires_grad();
            let (g, b) = (t32(&[c], gv.clone()).requires_grad(), t32(&[c], bv.clone()).requires_grad());
            let (mut rm, mut rv) = (t32(&[c], vec![0.0; c]), t32(&[c], vec![1.0; c]));
            let y = if relu {
                batch_norm_train_relu(&x, &g, &b, &mut rm, &mut rv, 0.1, BN_EPS).unwrap()
            } else {
                batch_norm_train(&x, &g, &b, &mut rm, &mut rv, 0.1, BN_EPS).unwrap()
            };
            let grads = backward_with(&y, Storage::f32(dyv.clone())).unwrap();
            let gs = [&x, &g, &b].map(|t| grads.get(t).unwrap().to_f32_vec());
            let e = batch_norm_eval(&x.detach(), &g.detach(), &b.detach(), &rm, &rv, BN_EPS).unwrap();
            (y.to_f32_vec(), gs, rm.to_f32_vec(), rv.to_f32_vec(), e.to_f32_vec())
        };
        for relu in [false, true] {
            let want = with_simd(None, || run(relu)).expect("the portable build runs anywhere");
            for build in [Some(Isa::Avx512), Some(Isa::Avx2)] {
                match with_simd(build, || run(relu)) {
                    Some(got) => assert!(got == want, "BN {build:?} differs from the portable build on {d:?}"),
                    None if d == SHAPES[0] && !relu => {
                        eprintln!("note: this CPU cannot run the {build:?} BN build; not tested here")
                    }
                    None => {}
                }
            }
        }
    }
}

#[test]
fn elementwise_ops_match_references() {
    let mut rng = common::rng(14);
    for d in SHAPES {
        let len: usize = d.iter().product();
        let (av, bv, dyv) =
            (normal(&mut rng, len, 0.0, 1.0), normal(&mut rng, len, 0.0, 1.0), normal(&mut rng, len, 0.0, 1.0));
        let (a, b) = (t32(&d, av.clone()).requires_grad(), t32(&d, bv.clone()).requires_grad());
        // relu(a + b)·0.5: forward, and each input's gradient.
        let s = add(&a, &b).unwrap();
        let r = relu(&s).unwrap();
        let y = scale(&r, 0.5).unwrap();
        let sum: Vec<f64> = (0..len).map(|i| (av[i] + bv[i]) as f64).collect();
        let want_y: Vec<f64> = sum.iter().map(|v| 0.5 * v.max(0.0)).collect();
        assert_close(&format!("add/relu/scale {d:?}"), &y.to_f32_vec(), &want_y, 1e-7);
        let grads = backward_with(&y, Storage::f32(dyv.clone())).unwrap();
        let want_g: Vec<f64> =
            (0..len).map(|i| if (av[i] + bv[i]) > 0.0 { 0.5 * dyv[i] as f64 } else { 0.0 }).collect();
        assert_close(&format!("add/relu/scale {d:?}: da"), &grads.get(&a).unwrap().to_f32_vec(), &want_g, 1e-7);
        assert_close(&format!("add/relu/scale {d:?}: db"), &grads.get(&b).unwrap().to_f32_vec(), &want_g, 1e-7);
    }
}

/// Direct 4-tap bilinear (align_corners=false) in f64, and its adjoint.
fn ref_bilinear(x: &[f64], [n, c, h, w]: [usize; 4], [ho, wo]: [usize; 2], dy: &[f64]) -> (Vec<f64>, Vec<f64>) {
    let taps = |i: usize, o: usize| -> Vec<(usize, usize, f64)> {
        (0..o)
            .map(|d| {
                let s = ((d as f64 + 0.5) * i as f64 / o as f64 - 0.5).max(0.0);
                let i0 = (s as usize).min(i - 1);
                (i0, (i0 + 1).min(i - 1), s - i0 as f64)
            })
            .collect()
    };
    let (ty, tx) = (taps(h, ho), taps(w, wo));
    let mut y = vec![0.0; n * c * ho * wo];
    let mut dx = vec![0.0; n * c * h * w];
    for p in 0..n * c {
        for (oy, &(y0, y1, ly)) in ty.iter().enumerate() {
            for (ox, &(x0, x1, lx)) in tx.iter().enumerate() {
                let o = p * ho * wo + oy * wo + ox;
                let corners = [
                    (y0, x0, (1.0 - ly) * (1.0 - lx)),
                    (y0, x1, (1.0 - ly) * lx),
                    (y1, x0, ly * (1.0 - lx)),
                    (y1, x1, ly * lx),
                ];
                for (yy, xx, wgt) in corners {
                    y[o] += wgt * x[p * h * w + yy * w + xx];
                    dx[p * h * w + yy * w + xx] += wgt * dy[o];
                }
            }
        }
    }
    (y, dx)
}

#[test]
fn bilinear_upsample_matches_the_direct_formula() {
    let mut rng = common::rng(15);
    let sizes = [[13, 13], [5, 7], [1, 1], [26, 14], [64, 64]];
    for d in SHAPES {
        for size in sizes {
            let [n, c, _, _] = d;
            let len: usize = d.iter().product();
            let olen = n * c * size[0] * size[1];
            let (xv, dyv) = (normal(&mut rng, len, 0.0, 1.0), normal(&mut rng, olen, 0.0, 1.0));
            let x = t32(&d, xv.clone()).requires_grad();
            let y = upsample_bilinear(&x, size).unwrap();
            let (want_y, want_dx) = ref_bilinear(&f64s(&xv), d, size, &f64s(&dyv));
            // The op takes its source coordinates in f32 (PyTorch's float scale), the reference in f64.
            assert_close(&format!("bilinear {d:?} -> {size:?}"), &y.to_f32_vec(), &want_y, 4e-6);
            let grads = backward_with(&y, Storage::f32(dyv)).unwrap();
            assert_close(
                &format!("bilinear {d:?} -> {size:?}: dx"),
                &grads.get(&x).unwrap().to_f32_vec(),
                &want_dx,
                4e-6,
            );
        }
    }
}

#[test]
fn concat_and_mse_match_references() {
    let mut rng = common::rng(16);
    for d in SHAPES {
        let [n, c, h, w] = d;
        let plane = h * w;
        let d2 = [n, 2, h, w];
        let (av, bv) = (normal(&mut rng, n * c * plane, 0.0, 1.0), normal(&mut rng, n * 2 * plane, 0.0, 1.0));
        let (a, b) = (t32(&d, av.clone()).requires_grad(), t32(&d2, bv.clone()).requires_grad());
        let cat = concat_channels(&[&a, &b]).unwrap();
        let mut want = Vec::new();
        for bi in 0..n {
            want.extend(f64s(&av[bi * c * plane..][..c * plane]));
            want.extend(f64s(&bv[bi * 2 * plane..][..2 * plane]));
        }
        assert_close(&format!("concat {d:?}"), &cat.to_f32_vec(), &want, 0.0);
        let tv = normal(&mut rng, want.len(), 0.0, 1.0);
        let target = t32(cat.shape(), tv.clone()).requires_grad();
        let loss = mse_loss(&cat, &target).unwrap();
        let m = want.len() as f64;
        let want_loss = want.iter().zip(&tv).map(|(p, &t)| (p - t as f64).powi(2)).sum::<f64>() / m;
        assert!(
            (loss.item().unwrap() - want_loss).abs() <= 1e-6 * want_loss,
            "mse {d:?}: {} vs {want_loss}",
            loss.item().unwrap()
        );
        let grads = backward(&loss).unwrap();
        let dcat: Vec<f64> = want.iter().zip(&tv).map(|(p, &t)| 2.0 * (p - t as f64) / m).collect();
        let neg: Vec<f64> = dcat.iter().map(|v| -v).collect();
        assert_close(&format!("mse {d:?}: dtarget"), &grads.get(&target).unwrap().to_f32_vec(), &neg, 1e-6);
        let (mut da, mut db) = (Vec::new(), Vec::new());
        for bi in 0..n {
            let row = &dcat[bi * (c + 2) * plane..][..(c + 2) * plane];
            da.extend_from_slice(&row[..c * plane]);
            db.extend_from_slice(&row[c * plane..]);
        }
        assert_close(&format!("concat {d:?}: da"), &grads.get(&a).unwrap().to_f32_vec(), &da, 1e-6);
        assert_close(&format!("concat {d:?}: db"), &grads.get(&b).unwrap().to_f32_vec(), &db, 1e-6);
    }
}

/// Outputs come from a buffer pool without zeroing: fill the pool with NaN buffers of the sizes the
/// ops will ask for, then check every op still writes a finite, correct value everywhere.
#[test]
fn ops_overwrite_every_element_of_a_reused_buffer() {
    let d = [2, 3, 64, 96];
    let len: usize = d.iter().product();
    let up = [2, 3, 128, 192];
    let up_len: usize = up.iter().product();
    let poisoned: Vec<Storage> = [len, len, len, len, up_len, up_len, 2 * len, 2 * len]
        .iter()
        .map(|&n| {
            let mut s = Storage::for_overwrite(DType::F32, n, "pool test buffer").unwrap();
            if let Some(v) = s.as_f32_mut() {
                v.fill(f32::NAN);
            }
            s
        })
        .collect();
    drop(poisoned);
    let mut rng = common::rng(17);
    let xv = normal(&mut rng, len, 5.0, 2.0);
    let x = t32(&d, xv.clone()).requires_grad();
    let c = d[1];
    let (g, b) = (t32(&[c], vec![1.5; c]).requires_grad(), t32(&[c], vec![0.25; c]).requires_grad());
    let (mut rm, mut rv) = (t32(&[c], vec![0.0; c]), t32(&[c], vec![1.0; c]));
    let y = batch_norm_train(&x, &g, &b, &mut rm, &mut rv, 0.1, BN_EPS).unwrap();
    let r = relu(&y).unwrap();
    let u = upsample_bilinear(&r, [128, 192]).unwrap();
    let cat = concat_channels(&[&r, &r]).unwrap();
    let s = add(&r, &r).unwrap();
    for (name, t) in [("bn", &y), ("relu", &r), ("upsample", &u), ("concat", &cat), ("add", &s)] {
        assert!(t.to_f32_vec().iter().all(|v| v.is_finite()), "{name}: an element was left unwritten");
    }
    let (mean, var) = ref_stats(&f64s(&xv), d);
    let plane = d[2] * d[3];
    let want: Vec<f64> = (0..len)
        .map(|i| (xv[i] as f64 - mean[(i / plane) % c]) / (var[(i / plane) % c] + BN_EPS).sqrt() * 1.5 + 0.25)
        .collect();
    assert_close("bn on a reused buffer", &y.to_f32_vec(), &want, 2e-6);
    let loss = mse_loss(&u, &t32(&up, vec![0.0; up_len])).unwrap();
    let grads = backward(&loss).unwrap();
    for (name, t) in [("x", &x), ("gamma", &g), ("beta", &b)] {
        assert!(grads.get(t).unwrap().to_f32_vec().iter().all(|v| v.is_finite()), "grad {name}: not finite");
    }
}

#[test]
fn backward_frees_the_graph_and_backward_with_keeps_it() {
    let mut rng = common::rng(18);
    let d = [2, 3, 5, 7];
    let len: usize = d.iter().product();
    let x = t32(&d, normal(&mut rng, len, 0.0, 1.0)).requires_grad();
    let y = relu(&add(&x, &x).unwrap()).unwrap();
    let loss = mse_loss(&y, &t32(&d, vec![0.0; len])).unwrap();
    let seed = || Storage::f32(vec![1.0]);
    let kept1 = backward_with(&loss, seed()).unwrap().get(&x).unwrap().to_f32_vec();
    let kept2 = backward_with(&loss, seed()).unwrap().get(&x).unwrap().to_f32_vec();
    assert_eq!(kept1, kept2, "backward_with must leave the graph usable");
    let freed = backward(&loss).unwrap().get(&x).unwrap().to_f32_vec();
    assert_eq!(freed, kept1, "the freeing backward gives the same gradient");
    let again = backward(&loss).err().expect("a second backward through a freed graph is an error");
    assert!(format!("{again:#}").contains("freed"), "error names the cause: {again:#}");
}

/// The fused BN+ReLU and add+ReLU give exactly what the separate ops give, values and gradients.
#[test]
fn fused_relu_ops_equal_the_separate_ops() {
    use hrk::ops::batchnorm::batch_norm_train_relu;
    use hrk::ops::elementwise::add_relu;
    let mut rng = common::rng(19);
    for d in SHAPES {
        let [n, c, h, w] = d;
        if n * h * w < 2 {
            continue;
        }
        let len: usize = d.iter().product();
        let (xv, dyv) = (normal(&mut rng, len, 0.5, 1.0), normal(&mut rng, len, 0.0, 1.0));
        let (gv, bv) = (normal(&mut rng, c, 1.0, 0.5), normal(&mut rng, c, 0.0, 0.5));
        let run = |fused: bool| {
            let x = t32(&d, xv.clone()).requires_grad();
            let (g, b) = (t32(&[c], gv.clone()).requires_grad(), t32(&[c], bv.clone()).requires_grad());
            let (mut rm, mut rv) = (t32(&[c], vec![0.0; c]), t32(&[c], vec![1.0; c]));
            let y = if fused {
                batch_norm_train_relu(&x, &g, &b, &mut rm, &mut rv, 0.1, BN_EPS).unwrap()
            } else {
                relu(&batch_norm_train(&x, &g, &b, &mut rm, &mut rv, 0.1, BN_EPS).unwrap()).unwrap()
            };
            let z = if fused { add_relu(&y, &x).unwrap() } else { relu(&add(&y, &x).unwrap()).unwrap() };
            let grads = backward_with(&z, Storage::f32(dyv.clone())).unwrap();
            let gs = [&x, &g, &b].map(|t| grads.get(t).unwrap().to_f32_vec());
            (y.to_f32_vec(), z.to_f32_vec(), gs, rm.to_f32_vec(), rv.to_f32_vec())
        };
        assert!(run(true) == run(false), "fused BN/add + ReLU differ from the separate ops on {d:?}");
    }
}
