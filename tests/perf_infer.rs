//! The fast inference path and the batch-parallel conv kernels against the reference graph.

mod common;
use common::model::randomize;
use common::{assert_close_scaled, TestValues};

use hrk::model::{HrNet, HrnetSpec, InferNet, Slot};
use hrk::ops::conv2d;
use hrk::rng::Rng;
use hrk::{Storage, Tensor};

fn random(shape: &[usize], rng: &mut Rng) -> Tensor {
    Tensor::from_f32(shape, rng.normals(shape.iter().product())).unwrap()
}

fn max_abs(v: &[f32]) -> f32 {
    v.iter().fold(0.0, |m, x| m.max(x.abs()))
}

fn assert_close(a: &[f32], b: &[f32], rel: f64, what: &str) {
    assert_close_scaled(what, a, b, rel, 1e-12);
}

#[test]
fn w18_macs_match_the_spec() {
    let net = HrNet::new(&HrnetSpec::w18(98), 0).unwrap();
    let fast = InferNet::new(&net).unwrap();
    // PERFORMANCE.md: 4.694 GMAC (9.387300864 GFLOP) per 256² image, head included.
    assert_eq!(fast.macs(256, 256).unwrap(), 4_693_650_432);
    // The model counts from its own plan, unfolded: the same walk, the same number.
    assert_eq!(net.macs(256, 256).unwrap(), 4_693_650_432);
    assert_eq!(net.first_conv_macs(256, 256).unwrap(), fast.first_conv_macs(256, 256).unwrap());
    // Training ≈ 28.105 GFLOP: forward + dW + dX without the first conv's dX.
    let train = 2 * (3 * fast.macs(256, 256).unwrap() - fast.first_conv_macs(256, 256).unwrap());
    assert_eq!(train, 28_105_279_488);
}

#[test]
fn fast_forward_matches_the_graph() {
    let mut net = HrNet::new(&HrnetSpec::w18(98), 0).unwrap();
    randomize(&mut net, 7);
    let fast = InferNet::new(&net).unwrap();
    let mut rng = common::rng(3);
    // 128×128 gives branch planes of 32, 16 and 8 (Winograd's three vector layouts), 64×96 planes
    // where the fast path keeps the direct kernels.
    for shape in [[2, 3, 64, 96], [2, 3, 128, 128]] {
        let x = random(&shape, &mut rng);
        let want = hrk::no_grad(|| net.forward(&x, false)).unwrap();
        for _ in 0..2 {
            // Twice: the second run reuses arena buffers holding stale values.
            let got = fast.forward(&x).unwrap();
            assert_eq!(got.shape(), want.shape());
            assert_close(&got.to_f32_vec(), &want.to_f32_vec(), 2e-4, "fast vs graph");
        }
    }
}

/// `hrk test` / `predict` / validation on the CPU run the folded engine (Winograd included), cached per
/// set of weights: same heatmaps as the graph, and a weight change reaches the next call.
#[test]
fn eval_forward_heatmaps_uses_the_cached_cpu_engine() {
    let mut net = HrNet::new(&HrnetSpec::w18(98), 0).unwrap();
    randomize(&mut net, 21);
    let shape = [2, 3, 128, 128];
    let x = random(&shape, &mut common::rng(5));
    let want = hrk::no_grad(|| net.forward(&x, false)).unwrap();
    let (got, dims) = hrk::eval::forward_heatmaps(&mut net, x.to_f32_vec(), shape).unwrap();
    assert_eq!(&dims[..], want.shape());
    assert_close(&got, &want.to_f32_vec(), 2e-4, "eval::forward_heatmaps vs graph");
    let (again, _) = hrk::eval::forward_heatmaps(&mut net, x.to_f32_vec(), shape).unwrap();
    assert_eq!(again, got);
    let last = (0..net.store.len()).rev().find(|&i| matches!(net.store.slot(i), Slot::Param(_))).unwrap();
    let bias = net.store.tensor(last).to_f32_vec().iter().map(|v| v + 1.0).collect();
    net.store.tensor_mut(last).set_storage(Storage::f32(bias)).unwrap();
    let (shifted, _) = hrk::eval::forward_heatmaps(&mut net, x.to_f32_vec(), shape).unwrap();
    // Exactly +1 up to the rounding of values this large.
    let worst = shifted.iter().zip(&got).map(|(a, b)| (a - b - 1.0).abs()).fold(0.0f32, f32::max);
    assert!(
        worst < 1e-6 * max_abs(&got) + 1e-5,
        "the change of {} did not reach the cached engine: {worst}",
        net.store.name(last)
    );
}

/// The batch-parallel kernels (≥ 2 images, ≥ 2 threads) against the same conv one image at a time.
#[test]
fn batched_conv_matches_per_image() {
    let pool = rayon::ThreadPoolBuilder::new().num_threads(2).build().unwrap();
    pool.install(|| {
        let mut rng = common::rng(11);
        for (k, stride, pad) in [(3, 1, 1), (3, 2, 1), (1, 1, 0), (1, 2, 0)] {
            let n = 3;
            let x = random(&[n, 5, 9, 7], &mut rng).requires_grad();
            let w = random(&[4, 5, k, k], &mut rng).requires_grad();
            let b = random(&[4], &mut rng).requires_grad();
            let y = conv2d(&x, &w, Some(&b), stride, pad).unwrap();
            let dy = random(y.shape(), &mut rng);
            let g = hrk::backward_with(&y, dy.storage().try_clone().unwrap()).unwrap();
            let (dx, dw) = (g.get(&x).unwrap().to_f32_vec(), g.get(&w).unwrap().to_f32_vec());
            let (xv, dyv) = (x.to_f32_vec(), dy.to_f32_vec());
            let (il, ol) = (xv.len() / n, dyv.len() / n);
            let mut dw_sum = vec![0.0f32; dw.len()];
            for i in 0..n {
                let xi = Tensor::from_f32(&[1, 5, 9, 7], xv[i * il..(i + 1) * il].to_vec()).unwrap().requires_grad();
                let yi = conv2d(&xi, &w, Some(&b), stride, pad).unwrap();
                assert_close(&yi.to_f32_vec(), &y.to_f32_vec()[i * ol..(i + 1) * ol], 1e-5, "forward");
                let gi = hrk::backward_with(&yi, Storage::f32(dyv[i * ol..(i + 1) * ol].to_vec())).unwrap();
                assert_close(&gi.get(&xi).unwrap().to_f32_vec(), &dx[i * il..(i + 1) * il], 1e-5, "dx");
                gi.get(&w).unwrap().to_f32_vec().iter().zip(dw_sum.iter_mut()).for_each(|(a, s)| *s += a);
            }
            assert_close(&dw_sum, &dw, 1e-5, "dw");
        }
    });
}

/// bf16 rounding by its definition: the nearest value with 8 significant bits, ties to the even one,
/// overflow to ±∞, NaN kept.
#[test]
fn bf16_rounding_is_nearest_even() {
    use hrk::float::round_bf16;
    let ulp = 2f32.powi(-7); // bf16's spacing in [1, 2)
    assert_eq!(round_bf16(1.0), 1.0);
    assert_eq!(round_bf16(1.0 + ulp / 2.0), 1.0, "tie → even (1.0)");
    assert_eq!(round_bf16(1.0 + 1.5 * ulp), 1.0 + 2.0 * ulp, "tie → even (1 + 2 ulp)");
    assert_eq!(round_bf16(1.0 + 0.51 * ulp), 1.0 + ulp);
    assert_eq!(round_bf16(-(1.0 + 0.49 * ulp)), -1.0);
    assert_eq!(round_bf16(f32::MAX), f32::INFINITY);
    assert_eq!(round_bf16(-f32::MAX), f32::NEG_INFINITY);
    assert!(round_bf16(f32::NAN).is_nan());
    let mut rng = common::rng(9);
    for v in rng.normals(10_000) {
        let r = round_bf16(v * 1e3);
        assert_eq!(r.to_bits() & 0xffff, 0, "{v}: low bits left");
        assert!(((r - v * 1e3) / (v * 1e3)).abs() <= 2f32.powi(-8), "{v}: more than half an ulp (2⁻⁸ relative)");
    }
}

/// The bf16 engine (the AVX512-BF16 kernels where the CPU has them, else `HRK_BF16_EMULATE`'s emulated
/// numerics) against the f32 engine on W18 with random weights: each conv
/// input and weight carries a relative rounding of at most 2⁻⁸, so the heatmaps move by a small multiple
/// of that; the bound asserted here (3 % of the largest heatmap value) is what 30-odd layers of such
/// errors allow with room, and the measured deviation is printed.
#[test]
fn bf16_engine_stays_near_f32() {
    use hrk::model::Precision;
    let mut net = HrNet::new(&HrnetSpec::w18(98), 0).unwrap();
    randomize(&mut net, 11);
    let x = random(&[2, 3, 128, 128], &mut common::rng(12));
    let f32_engine = InferNet::with_precision(&net, Precision::F32).unwrap();
    let bf16_engine = InferNet::with_precision(&net, Precision::Bf16).unwrap();
    assert_eq!(bf16_engine.precision(), Precision::Bf16);
    let want = f32_engine.forward(&x).unwrap().to_f32_vec();
    let got = bf16_engine.forward(&x).unwrap().to_f32_vec();
    let scale = max_abs(&want);
    let dev = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
    eprintln!("bf16 vs f32 engine: max |Δ| {dev:e} of max |y| {scale:e} ({:.3} %)", 100.0 * dev / scale);
    assert!(dev > 0.0, "bf16 rounding changed nothing: the engine did not round");
    assert!(dev < 0.03 * scale, "bf16 deviates by {dev} (max |y| {scale})");
    // Twice gives the same (arena reuse, rounding deterministic).
    assert_eq!(bf16_engine.forward(&x).unwrap().to_f32_vec(), got);
}
