//! BN training statistics fused into the conv forward kernel (conv2d_forward's `stats` epilogue and
//! bn_stats_from_partials), run under the host emulator: kernel-level sums against the CPU conv output,
//! and `ops::batchnorm::conv_batch_norm_train` against the unfused ops on the emulated GPU.
mod common;
use common::emu::run;
use common::values;

use hrk::autograd::backward_with;
use hrk::cuda::emu::{addr, addr_mut};
use hrk::cuda::kernels;
use hrk::cuda::params::{BatchNormParams, Conv2dParams};
use hrk::cuda::{with_gpu_math, GpuMath};
use hrk::{ops, Device, Storage, Tensor};

/// One conv shape: [n, cin, h, w], cout, k, stride, pad.
struct Case {
    x: [usize; 4],
    cout: usize,
    k: usize,
    stride: usize,
    pad: usize,
}

impl Case {
    fn out(&self) -> (usize, usize) {
        let [_, _, h, w] = self.x;
        ((h + 2 * self.pad - self.k) / self.stride + 1, (w + 2 * self.pad - self.k) / self.stride + 1)
    }
}

// Column counts (n·h_out·w_out) and channel counts that leave partial 64-wide tiles in both directions.
const CASES: [Case; 3] = [
    Case { x: [3, 5, 9, 11], cout: 70, k: 3, stride: 1, pad: 1 },
    Case { x: [2, 4, 7, 6], cout: 5, k: 3, stride: 2, pad: 1 },
    Case { x: [1, 3, 5, 5], cout: 130, k: 1, stride: 1, pad: 0 },
];

/// conv2d_forward with stats: the per-block partials, summed over blocks, equal the channel sums of the
/// CPU conv output (f64 sums of f32 values); the kernel's y is unchanged by the epilogue; and
/// bn_stats_from_partials gives bn_train_stats' outputs.
#[test]
fn conv_stats_partials_match_cpu_sums() {
    for (ci, c) in CASES.iter().enumerate() {
        for offset in [3.0f32, 300.0] {
            stats_case(ci, c, offset);
        }
    }
}

fn stats_case(ci: usize, c: &Case, offset: f32) {
    let [n, cin, h, w] = c.x;
    let (ho, wo) = c.out();
    let seed = 10 * ci as u64;
    let x = values(seed + 1, n * cin * h * w);
    // Shift the values so the means are far from zero (E[y²] − mean² must still be accurate).
    let wt: Vec<f32> = values(seed + 2, c.cout * cin * c.k * c.k);
    let bias: Vec<f32> = values(seed + 3, c.cout).iter().map(|v| v * 4.0 + offset).collect();
    let cpu = ops::conv2d(
        &Tensor::from_f32(&c.x, x.clone()).unwrap(),
        &Tensor::from_f32(&[c.cout, cin, c.k, c.k], wt.clone()).unwrap(),
        Some(&Tensor::from_f32(&[c.cout], bias.clone()).unwrap()),
        c.stride,
        c.pad,
    )
    .unwrap()
    .to_f32_vec();

    let mut y = vec![f32::NAN; n * c.cout * ho * wo];
    let mut y_plain = vec![f32::NAN; y.len()];
    let base = Conv2dParams {
        x: addr(&x),
        weight: addr(&wt),
        bias: addr(&bias),
        ..Conv2dParams::new("conv case", c.x, c.cout, c.k, c.stride, c.pad, [ho, wo]).unwrap()
    };
    let partials = kernels::conv_stats_partials(&base);
    assert_eq!(partials, (n * ho * wo).div_ceil(64), "one partial per 64-column block");
    let mut stats = vec![f64::NAN; 2 * partials * c.cout];
    run(&kernels::CONV2D_FORWARD, &Conv2dParams { y: addr_mut(&mut y), stats: stats.as_mut_ptr() as u64, ..base });
    run(&kernels::CONV2D_FORWARD, &Conv2dParams { y: addr_mut(&mut y_plain), ..base });
    assert_eq!(y, y_plain, "case {ci}: the stats epilogue changed y");
    assert!(stats.iter().all(|v| v.is_finite()), "case {ci}: a partial was not written");

    let plane = ho * wo;
    for co in 0..c.cout {
        let (mut s_cpu, mut q_cpu, mut s_gpu_y) = (0.0f64, 0.0f64, 0.0f64);
        for img in 0..n {
            for q in 0..plane {
                let at = (img * c.cout + co) * plane + q;
                s_cpu += cpu[at] as f64;
                q_cpu += (cpu[at] as f64).powi(2);
                s_gpu_y += y[at] as f64;
            }
        }
        let s: f64 = (0..partials).map(|b| stats[b * 2 * c.cout + co]).sum();
        let q: f64 = (0..partials).map(|b| stats[b * 2 * c.cout + c.cout + co]).sum();
        // Against the kernel's own y only the summation order differs.
        assert!((s - s_gpu_y).abs() <= 1e-9 * (1.0 + s_gpu_y.abs()), "case {ci} ch {co}: Σy {s} vs {s_gpu_y}");
        // Against the CPU conv: f32 rounding of each y.
        let count = (n * plane) as f64;
        assert!(
            (s - s_cpu).abs() <= 1e-5 * count * (1.0 + s_cpu.abs() / count),
            "case {ci} ch {co}: Σy {s} vs cpu {s_cpu}"
        );
        assert!((q - q_cpu).abs() <= 1e-5 * (1.0 + q_cpu.abs()), "case {ci} ch {co}: Σy² {q} vs cpu {q_cpu}");
    }

    // bn_stats_from_partials vs bn_train_stats on the same y.
    let cn = c.cout;
    let rm0: Vec<f32> = values(seed + 4, cn);
    let rv0: Vec<f32> = values(seed + 5, cn).iter().map(|v| v.abs() + 0.5).collect();
    let mut outs: Vec<[Vec<f32>; 4]> = Vec::new();
    for from_partials in [false, true] {
        let (mut rm, mut rv) = (rm0.clone(), rv0.clone());
        let (mut mean, mut invstd) = (vec![f32::NAN; cn], vec![f32::NAN; cn]);
        let p = BatchNormParams {
            x: addr(&y),
            running_mean: addr_mut(&mut rm),
            running_var: addr_mut(&mut rv),
            save_mean: addr_mut(&mut mean),
            save_invstd: addr_mut(&mut invstd),
            partials: stats.as_ptr() as u64,
            num_partials: partials as i32,
            n: n as i32,
            c: cn as i32,
            hw: plane as i32,
            momentum: 0.1,
            eps: 1e-5,
            ..Default::default()
        };
        run(if from_partials { &kernels::BN_STATS_FROM_PARTIALS } else { &kernels::BN_TRAIN_STATS }, &p);
        outs.push([mean, invstd, rm, rv]);
    }
    // From the partials against f64 statistics of the same y (also with a large offset).
    let count = (n * plane) as f64;
    for ch in 0..cn {
        let vals = (0..n).flat_map(|img| y[(img * cn + ch) * plane..][..plane].iter().map(|&v| v as f64));
        let mean = vals.clone().sum::<f64>() / count;
        let var = vals.map(|v| (v - mean).powi(2)).sum::<f64>() / count;
        let (got_mean, got_invstd) = (outs[1][0][ch] as f64, outs[1][1][ch] as f64);
        let invstd = 1.0 / (var + 1e-5).sqrt();
        assert!(
            (got_mean - mean).abs() <= 1e-6 * (1.0 + mean.abs()),
            "case {ci} offset {offset} mean[{ch}]: {got_mean} vs {mean}"
        );
        assert!(
            (got_invstd - invstd).abs() <= 1e-5 * invstd,
            "case {ci} offset {offset} invstd[{ch}]: {got_invstd} vs {invstd}"
        );
        let want_rv = 0.9 * rv0[ch] as f64 + 0.1 * var * count / (count - 1.0);
        assert!(
            (outs[1][3][ch] as f64 - want_rv).abs() <= 1e-5 * (1.0 + want_rv),
            "case {ci} offset {offset} running_var[{ch}]"
        );
    }
    // bn_train_stats' f32 two-pass loses digits with a large offset: compare the two kernels without it.
    if offset > 10.0 {
        return;
    }
    for (k, name) in ["save_mean", "save_invstd", "running_mean", "running_var"].iter().enumerate() {
        for (ch, (&a, &b)) in outs[0][k].iter().zip(&outs[1][k]).enumerate() {
            let (a, b) = (a as f64, b as f64);
            assert!(
                (a - b).abs() <= 2e-5 * (1.0 + a.abs()),
                "case {ci} {name}[{ch}]: bn_train_stats {a} vs from partials {b}"
            );
        }
    }
}

type Named = Vec<(String, Vec<f64>)>;

/// conv + training BN (+ReLU) with gradients of every input; `fused` picks conv_batch_norm_train.
fn conv_bn_body(dev: &Device, fused: bool, relu: bool, c: &Case) -> Named {
    let [_, cin, _, _] = c.x;
    let leaf = |shape: &[usize], seed| {
        let n = shape.iter().product();
        Tensor::from_f32(shape, values(seed, n)).unwrap().to_device(dev).unwrap().requires_grad()
    };
    let x = leaf(&c.x, 31);
    let w = leaf(&[c.cout, cin, c.k, c.k], 32);
    let b = leaf(&[c.cout], 33);
    let gamma = leaf(&[c.cout], 34);
    let beta = leaf(&[c.cout], 35);
    let mut rm = Tensor::from_f32(&[c.cout], values(36, c.cout)).unwrap().to_device(dev).unwrap();
    let mut rv = Tensor::from_f32(&[c.cout], values(37, c.cout).iter().map(|v| v.abs() + 0.5).collect())
        .unwrap()
        .to_device(dev)
        .unwrap();
    let y = if fused {
        ops::batchnorm::conv_batch_norm_train(
            &x,
            &w,
            Some(&b),
            c.stride,
            c.pad,
            &gamma,
            &beta,
            &mut rm,
            &mut rv,
            0.1,
            ops::BN_EPS,
            relu,
        )
        .unwrap()
    } else {
        let z = ops::conv2d(&x, &w, Some(&b), c.stride, c.pad).unwrap();
        if relu {
            ops::batchnorm::batch_norm_train_relu(&z, &gamma, &beta, &mut rm, &mut rv, 0.1, ops::BN_EPS).unwrap()
        } else {
            ops::batch_norm_train(&z, &gamma, &beta, &mut rm, &mut rv, 0.1, ops::BN_EPS).unwrap()
        }
    };
    assert_eq!(y.device(), *dev);
    let grads = backward_with(&y, Storage::f32(values(38, y.numel())).to_device(dev).unwrap()).unwrap();
    let mut r: Named = vec![
        ("y".into(), y.to_f64_vec()),
        ("running_mean".into(), rm.to_f64_vec()),
        ("running_var".into(), rv.to_f64_vec()),
    ];
    for (name, t) in [("dx", &x), ("dw", &w), ("db", &b), ("dgamma", &gamma), ("dbeta", &beta)] {
        r.push((name.into(), grads.get(t).expect("gradient recorded").to_f64_vec()));
    }
    r
}

fn assert_named_close(what: &str, want: &Named, got: &Named, tol: f64) {
    assert_eq!(want.len(), got.len());
    for ((name, a), (_, b)) in want.iter().zip(got) {
        common::assert_close_scaled(&format!("{what}/{name}"), b, a, tol, 1.0);
    }
}

fn fused_matches_unfused(math: GpuMath, tol: f64) {
    let dev = Device::emulated();
    with_gpu_math(math, || {
        for (ci, c) in CASES[..2].iter().enumerate() {
            for relu in [false, true] {
                let want = conv_bn_body(&dev, false, relu, c);
                let got = conv_bn_body(&dev, true, relu, c);
                assert_named_close(&format!("case {ci} relu {relu} {}", math.name()), &want, &got, tol);
            }
        }
    });
}

/// On the f32 FMA convs the two paths differ only by the statistics' summation.
#[test]
fn fused_conv_bn_matches_unfused_on_emulated_gpu() {
    fused_matches_unfused(GpuMath::Fp32, 1e-5);
}

/// On tf32 convs a last-bit difference in BN's output gradient can round the backward conv's operand to a
/// neighbouring tf32 value (a relative step of up to 2^-10), so the two paths agree to the tf32 product
/// error, 2·2^-11 × Σ|a||b| (≤ 4 × the scale on these shapes), not to f32 rounding.
#[test]
fn fused_conv_bn_matches_unfused_on_emulated_gpu_under_tf32_mma() {
    fused_matches_unfused(GpuMath::Tf32, 4.0 * 2.0 * 2f64.powi(-11));
}

/// On the CPU the entry point is exactly the unfused ops (bit-identical).
#[test]
fn conv_bn_on_cpu_is_the_unfused_ops() {
    for relu in [false, true] {
        let c = &CASES[1];
        let want = conv_bn_body(&Device::Cpu, false, relu, c);
        let got = conv_bn_body(&Device::Cpu, true, relu, c);
        assert_eq!(want, got, "relu {relu}");
    }
}
