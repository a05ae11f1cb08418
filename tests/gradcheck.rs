//! Finite-difference gradient checks (f64) for every op and for composite HRNet blocks.

use hrk::gradcheck::{check, GradCheckOptions};
use hrk::ops::*;
use hrk::rng::Rng;
use hrk::Tensor;

const TOL: f64 = 1e-6;

fn rand(rng: &mut Rng, shape: &[usize]) -> Tensor {
    let n = shape.iter().product();
    Tensor::from_f64(shape, (0..n).map(|_| rng.normal()).collect()).unwrap()
}

/// Values bounded away from 0, so relu's kink is never inside a finite-difference step.
fn rand_away_from_zero(rng: &mut Rng, shape: &[usize]) -> Tensor {
    let n = shape.iter().product();
    Tensor::from_f64(
        shape,
        (0..n)
            .map(|_| {
                let v = rng.range(0.1, 2.0);
                if rng.uniform() < 0.5 {
                    -v
                } else {
                    v
                }
            })
            .collect(),
    )
    .unwrap()
}

fn assert_ok(name: &str, f: &dyn Fn(&[Tensor]) -> anyhow::Result<Tensor>, inputs: &[Tensor]) {
    let r = check(f, inputs, &GradCheckOptions::default()).unwrap();
    println!("{name}: worst relative error {:.2e} over {} probes {:?}", r.worst(), r.checked, r.errors);
    assert!(r.worst() < TOL, "{name}: gradient error {:.3e} ≥ {TOL:e} ({:?})", r.worst(), r.errors);
}

#[test]
fn conv2d_gradients() {
    let mut rng = Rng::new(1);
    // (n, cin, h, w, cout, k, stride, pad, bias)
    let cases = [
        (2, 3, 7, 5, 4, 3, 1, 1, false),
        (1, 2, 9, 8, 3, 3, 2, 1, true),
        (2, 3, 5, 5, 2, 3, 2, 0, false),
        (2, 5, 6, 7, 3, 1, 1, 0, true),
        (1, 4, 7, 7, 3, 1, 2, 0, false),
        (1, 1, 1, 1, 2, 1, 1, 0, true),
        (1, 2, 1, 1, 1, 3, 1, 1, false),
        (3, 1, 4, 3, 1, 3, 1, 1, true),
    ];
    for (n, cin, h, w, cout, k, s, p, bias) in cases {
        let mut inputs = vec![rand(&mut rng, &[n, cin, h, w]), rand(&mut rng, &[cout, cin, k, k])];
        if bias {
            inputs.push(rand(&mut rng, &[cout]));
        }
        let f = move |t: &[Tensor]| conv2d(&t[0], &t[1], t.get(2), s, p);
        assert_ok(&format!("conv2d n{n} c{cin} {h}x{w} -> {cout} k{k} s{s} p{p} bias={bias}"), &f, &inputs);
    }
}

#[test]
fn batch_norm_gradients() {
    let mut rng = Rng::new(2);
    for shape in [[2, 3, 4, 5], [1, 2, 3, 1], [3, 1, 1, 2], [2, 4, 1, 1]] {
        let c = shape[1];
        let inputs = vec![rand(&mut rng, &shape), rand(&mut rng, &[c]), rand(&mut rng, &[c])];
        let f = move |t: &[Tensor]| {
            // Fresh running buffers each call keep f pure.
            let mut rm = Tensor::zeros(&[c], hrk::DType::F64);
            let mut rv = Tensor::full(&[c], hrk::DType::F64, 1.0);
            batch_norm_train(&t[0], &t[1], &t[2], &mut rm, &mut rv, 0.01, BN_EPS)
        };
        assert_ok(&format!("batch_norm train {shape:?}"), &f, &inputs);
        let rm = rand(&mut rng, &[c]);
        let rv = Tensor::from_f64(&[c], (0..c).map(|_| rng.range(0.5, 2.0)).collect()).unwrap();
        let f = move |t: &[Tensor]| batch_norm_eval(&t[0], &t[1], &t[2], &rm, &rv, BN_EPS);
        assert_ok(&format!("batch_norm eval {shape:?}"), &f, &inputs);
    }
}

#[test]
fn elementwise_gradients() {
    let mut rng = Rng::new(3);
    for shape in [vec![2, 3, 4, 5], vec![1, 1, 1, 1], vec![3, 7]] {
        let x = rand_away_from_zero(&mut rng, &shape);
        assert_ok(&format!("relu {shape:?}"), &|t: &[Tensor]| relu(&t[0]), &[x]);
        let (a, b) = (rand(&mut rng, &shape), rand(&mut rng, &shape));
        assert_ok(&format!("add {shape:?}"), &|t: &[Tensor]| add(&t[0], &t[1]), &[a.clone(), b.clone()]);
        assert_ok(&format!("scale {shape:?}"), &|t: &[Tensor]| scale(&t[0], -1.7), std::slice::from_ref(&a));
        assert_ok(&format!("mse_loss {shape:?}"), &|t: &[Tensor]| mse_loss(&t[0], &t[1]), &[a, b]);
    }
}

#[test]
fn upsample_gradients() {
    let mut rng = Rng::new(4);
    // Integer, non-integer, one-pixel and downsampling ratios.
    for (h, w, ho, wo) in [(4, 4, 8, 8), (5, 7, 8, 11), (3, 3, 7, 5), (1, 1, 3, 2), (7, 6, 3, 4), (2, 3, 2, 3)] {
        let x = rand(&mut rng, &[2, 3, h, w]);
        assert_ok(
            &format!("bilinear {h}x{w}->{ho}x{wo}"),
            &|t: &[Tensor]| upsample_bilinear(&t[0], [ho, wo]),
            std::slice::from_ref(&x),
        );
        assert_ok(&format!("nearest {h}x{w}->{ho}x{wo}"), &|t: &[Tensor]| upsample_nearest(&t[0], [ho, wo]), &[x]);
    }
}

#[test]
fn concat_gradients() {
    let mut rng = Rng::new(5);
    let xs = vec![rand(&mut rng, &[2, 1, 3, 5]), rand(&mut rng, &[2, 4, 3, 5]), rand(&mut rng, &[2, 2, 3, 5])];
    assert_ok("concat", &|t: &[Tensor]| concat_channels(&t.iter().collect::<Vec<_>>()), &xs);
}

fn bn(x: &Tensor, g: &Tensor, b: &Tensor) -> anyhow::Result<Tensor> {
    let c = g.numel();
    let mut rm = Tensor::zeros(&[c], hrk::DType::F64);
    let mut rv = Tensor::full(&[c], hrk::DType::F64, 1.0);
    batch_norm_train(x, g, b, &mut rm, &mut rv, 0.01, BN_EPS)
}

#[test]
fn basic_block_gradients() {
    // conv3x3 → BN → ReLU → conv3x3 → BN, + x, ReLU (HRNet BasicBlock).
    let mut rng = Rng::new(6);
    let c = 3;
    let inputs = vec![
        rand(&mut rng, &[2, c, 5, 6]),
        rand(&mut rng, &[c, c, 3, 3]),
        rand(&mut rng, &[c]),
        rand(&mut rng, &[c]),
        rand(&mut rng, &[c, c, 3, 3]),
        rand(&mut rng, &[c]),
        rand(&mut rng, &[c]),
    ];
    let f = |t: &[Tensor]| {
        let y = relu(&bn(&conv2d(&t[0], &t[1], None, 1, 1)?, &t[2], &t[3])?)?;
        let y = bn(&conv2d(&y, &t[4], None, 1, 1)?, &t[5], &t[6])?;
        relu(&add(&y, &t[0])?)
    };
    assert_ok("basic block", &f, &inputs);
}

#[test]
fn bottleneck_gradients() {
    // 1x1 → BN → ReLU → 3x3 (stride 2) → BN → ReLU → 1x1 (×4) → BN, + downsample(x), ReLU.
    let mut rng = Rng::new(7);
    let (cin, planes) = (3, 2);
    let cout = planes * 4;
    let inputs = vec![
        rand(&mut rng, &[2, cin, 5, 5]),
        rand(&mut rng, &[planes, cin, 1, 1]),
        rand(&mut rng, &[planes, planes, 3, 3]),
        rand(&mut rng, &[cout, planes, 1, 1]),
        rand(&mut rng, &[cout, cin, 1, 1]),
        rand(&mut rng, &[cout]),
        rand(&mut rng, &[cout]),
    ];
    let f = |t: &[Tensor]| {
        let ones = |c: usize| Tensor::full(&[c], hrk::DType::F64, 1.0);
        let zeros = |c: usize| Tensor::zeros(&[c], hrk::DType::F64);
        let y = relu(&bn(&conv2d(&t[0], &t[1], None, 1, 0)?, &ones(planes), &zeros(planes))?)?;
        let y = relu(&bn(&conv2d(&y, &t[2], None, 2, 1)?, &ones(planes), &zeros(planes))?)?;
        let y = bn(&conv2d(&y, &t[3], None, 1, 0)?, &t[5], &t[6])?;
        let d = bn(&conv2d(&t[0], &t[4], None, 2, 0)?, &ones(cout), &zeros(cout))?;
        relu(&add(&y, &d)?)
    };
    assert_ok("bottleneck", &f, &inputs);
}

#[test]
fn two_branch_fusion_gradients() {
    // HRNet fuse: y0 = relu(x0 + up(BN(conv1x1(x1)))), y1 = relu(BN(conv3x3 s2(x0)) + x1).
    let mut rng = Rng::new(8);
    let (c0, c1) = (2, 3);
    let inputs = vec![
        rand(&mut rng, &[2, c0, 7, 5]),
        rand(&mut rng, &[2, c1, 4, 3]),
        rand(&mut rng, &[c0, c1, 1, 1]),
        rand(&mut rng, &[c1, c0, 3, 3]),
        rand(&mut rng, &[c0]),
        rand(&mut rng, &[c0]),
    ];
    let f = |t: &[Tensor]| {
        let ones = Tensor::full(&[c1], hrk::DType::F64, 1.0);
        let zeros = Tensor::zeros(&[c1], hrk::DType::F64);
        let up = upsample_bilinear(&bn(&conv2d(&t[1], &t[2], None, 1, 0)?, &t[4], &t[5])?, [7, 5])?;
        let y0 = relu(&add(&t[0], &up)?)?;
        let down = bn(&conv2d(&t[0], &t[3], None, 2, 1)?, &ones, &zeros)?;
        let y1 = relu(&add(&down, &t[1])?)?;
        let y1 = upsample_bilinear(&y1, [7, 5])?;
        concat_channels(&[&y0, &y1])
    };
    assert_ok("two-branch fusion", &f, &inputs);
}

#[test]
fn a_perturbed_gradient_fails_the_check() {
    // The checker itself must be able to fail: corrupt one analytic coordinate.
    let mut rng = Rng::new(9);
    let inputs = vec![rand(&mut rng, &[1, 2, 4, 4]), rand(&mut rng, &[2, 2, 3, 3])];
    let f = |t: &[Tensor]| conv2d(&t[0], &t[1], None, 1, 1);
    let opt = GradCheckOptions { perturb_analytic: Some(1.001), ..Default::default() };
    let r = check(&f, &inputs, &opt).unwrap();
    assert!(r.worst() > TOL, "a corrupted gradient passed: {:?}", r.errors);
}

#[test]
fn shape_errors_name_the_op_and_both_shapes() {
    let x = Tensor::zeros(&[1, 3, 4, 4], hrk::DType::F32);
    let w = Tensor::zeros(&[2, 4, 3, 3], hrk::DType::F32);
    let e = conv2d(&x, &w, None, 1, 1).unwrap_err().to_string();
    assert!(e.contains("conv2d") && e.contains("[2, 4, 3, 3]") && e.contains("[1, 3, 4, 4]"), "{e}");
    let e = add(&x, &Tensor::zeros(&[1, 3, 4, 5], hrk::DType::F32)).unwrap_err().to_string();
    assert!(e.contains("add") && e.contains("[1, 3, 4, 4]") && e.contains("[1, 3, 4, 5]"), "{e}");
    let e = add(&x, &Tensor::zeros(&[1, 3, 4, 4], hrk::DType::F64)).unwrap_err().to_string();
    assert!(e.contains("add") && e.contains("F64"), "{e}");
    let e = concat_channels(&[&x, &Tensor::zeros(&[1, 3, 5, 4], hrk::DType::F32)]).unwrap_err().to_string();
    assert!(e.contains("concat"), "{e}");
    let e = conv2d(&Tensor::zeros(&[3, 4, 4], hrk::DType::F32), &w, None, 1, 1).unwrap_err().to_string();
    assert!(e.contains("conv2d") && e.contains("[3, 4, 4]"), "{e}");
}
