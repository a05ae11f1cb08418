//! Runs every CUDA kernel under the host emulator (the same .cu source the PTX comes from) on small, odd
//! shapes and compares with direct-loop f64 references written here.
use hrk::cuda::emu::{self, addr, addr_mut};
use hrk::cuda::kernels::{self, *};
use hrk::cuda::params::*;

mod common;
use common::emu::{run, ConvCase};
use common::{assert_close, TestValues};
use hrk::rng::Rng;

// ---------- layout / PTX ----------

#[test]
fn param_structs_match_c_field_by_field() {
    let mismatches = emu::abi_mismatches();
    assert!(mismatches.is_empty(), "src/cuda/params.rs and kernels/params.h disagree:\n{}", mismatches.join("\n"));
    for (name, size, fields) in hrk::cuda::params::layouts() {
        assert_eq!(size % 8, 0, "{name}: size not a multiple of 8");
        assert!(!fields.is_empty(), "{name}: no fields");
    }
}

#[test]
fn embedded_ptx_version_and_entries() {
    use hrk::cuda::ptx;
    if ptx::PTX_MODULES.is_empty() {
        assert!(!common::require_ptx(), "HRK_REQUIRE_PTX=1 but no PTX embedded");
        eprintln!("skipped: built without nvcc, no PTX embedded");
        return;
    }
    for (module, text) in ptx::PTX_MODULES {
        let line = text.lines().find(|l| l.starts_with(".version")).expect("PTX without .version");
        let v = line.trim_start_matches(".version").trim();
        let (major, minor) = v.split_once('.').expect("version format");
        let (major, minor): (u32, u32) = (major.parse().unwrap(), minor.parse().unwrap());
        assert!((major, minor) <= (9, 0), "{module}.ptx has .version {v} > 9.0 (the R580 driver rejects it)");
        assert!(text.contains(".target sm_80"), "{module}.ptx not built for compute_80");
    }
    for (module, name) in kernels::ALL {
        let text = ptx::module(module).unwrap_or_else(|| panic!("module {module} not embedded"));
        assert!(text.contains(&format!(".entry {name}(")), "{module}.ptx lacks unmangled entry {name}");
    }
}

// ---------- convolution ----------

/// y = conv(x, w) (+ bias, ReLU) in f64.
fn conv_forward_ref(c: &ConvCase, x: &[f32], wt: &[f32], bias: Option<&[f32]>, relu: bool) -> Vec<f64> {
    let (ho, wo) = c.out();
    let mut y: Vec<f64> = (0..c.y_len()).map(|i| bias.map_or(0.0, |b| b[(i / (ho * wo)) % c.co] as f64)).collect();
    c.for_each_tap(|xi, wi, yi| y[yi] += wt[wi] as f64 * x[xi] as f64);
    if relu {
        y.iter_mut().for_each(|v| *v = v.max(0.0));
    }
    y
}

/// (dx, dw, db) by scattering every output gradient through the same taps, in f64.
fn conv_backward_ref(c: &ConvCase, x: &[f32], wt: &[f32], dy: &[f32]) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let (ho, wo) = c.out();
    let (mut dx, mut dw) = (vec![0.0; x.len()], vec![0.0; wt.len()]);
    let mut db = vec![0.0; c.co];
    for (yi, &g) in dy.iter().enumerate() {
        db[(yi / (ho * wo)) % c.co] += g as f64;
    }
    c.for_each_tap(|xi, wi, yi| {
        dx[xi] += dy[yi] as f64 * wt[wi] as f64;
        dw[wi] += dy[yi] as f64 * x[xi] as f64;
    });
    (dx, dw, db)
}

const CONV_CASES: [ConvCase; 5] = [
    ConvCase { n: 2, ci: 3, h: 9, w: 7, co: 5, k: 3, stride: 1, pad: 1 },
    ConvCase { n: 2, ci: 5, h: 9, w: 11, co: 7, k: 3, stride: 2, pad: 1 },
    ConvCase { n: 1, ci: 4, h: 8, w: 7, co: 3, k: 3, stride: 2, pad: 0 },
    ConvCase { n: 2, ci: 70, h: 9, w: 8, co: 66, k: 1, stride: 1, pad: 0 },
    ConvCase { n: 3, ci: 6, h: 7, w: 9, co: 9, k: 1, stride: 2, pad: 0 },
];

#[test]
fn conv2d_forward_matches_reference() {
    let mut rng = common::rng(1);
    for (i, c) in CONV_CASES.iter().enumerate() {
        let x = rng.values(c.n * c.ci * c.h * c.w);
        let wt = rng.values(c.co * c.ci * c.k * c.k);
        let bias = rng.values(c.co);
        let (ho, wo) = c.out();
        for (with_bias, relu) in [(true, false), (false, true)] {
            let mut y = vec![f32::NAN; c.n * c.co * ho * wo];
            let p = Conv2dParams {
                x: addr(&x),
                weight: addr(&wt),
                bias: if with_bias { addr(&bias) } else { 0 },
                y: addr_mut(&mut y),
                relu: relu as i32,
                ..c.params()
            };
            run(&CONV2D_FORWARD, &p);
            let want = conv_forward_ref(c, &x, &wt, with_bias.then_some(&bias[..]), relu);
            assert_close(&format!("conv fwd case {i} {c:?} bias={with_bias} relu={relu}"), &y, &want, 1e-4, 1e-4);
        }
    }
}

#[test]
fn conv2d_backward_matches_reference() {
    let mut rng = common::rng(2);
    for (i, c) in CONV_CASES.iter().enumerate() {
        let x = rng.values(c.n * c.ci * c.h * c.w);
        let wt = rng.values(c.co * c.ci * c.k * c.k);
        let (ho, wo) = c.out();
        let dy = rng.values(c.n * c.co * ho * wo);
        let (dx_ref, dw_ref, db_ref) = conv_backward_ref(c, &x, &wt, &dy);

        let mut dx = vec![f32::NAN; x.len()];
        let p = Conv2dParams { x: addr(&x), weight: addr(&wt), dy: addr(&dy), dx: addr_mut(&mut dx), ..c.params() };
        run(&CONV2D_BACKWARD_DATA, &p);
        assert_close(&format!("conv dx case {i} {c:?}"), &dx, &dx_ref, 1e-4, 1e-4);

        // Weight/bias gradients accumulate: start from a known value, and try the split-K (atomic) path.
        let base = rng.values(wt.len());
        let base_b = rng.values(c.co);
        let auto_splits = kernels::conv_weight_k_splits(&c.params());
        assert!(auto_splits >= 1);
        for splits in [1, 3] {
            let mut dw = base.clone();
            let mut db = base_b.clone();
            let p = Conv2dParams {
                x: addr(&x),
                dy: addr(&dy),
                dw: addr_mut(&mut dw),
                db: addr_mut(&mut db),
                k_splits: splits,
                ..c.params()
            };
            run(&CONV2D_BACKWARD_WEIGHT, &p);
            run(&CONV2D_BACKWARD_BIAS, &p);
            let want: Vec<f64> = dw_ref.iter().zip(&base).map(|(g, b)| g + *b as f64).collect();
            assert_close(&format!("conv dw case {i} splits {splits}"), &dw, &want, 1e-4, 1e-4);
            let want_b: Vec<f64> = db_ref.iter().zip(&base_b).map(|(g, b)| g + *b as f64).collect();
            assert_close(&format!("conv db case {i}"), &db, &want_b, 1e-4, 1e-4);
        }
    }
}

// ---------- batch norm ----------

struct BnRef {
    mean: Vec<f64>,
    var: Vec<f64>,
}

fn bn_stats_ref(x: &[f32], n: usize, c: usize, hw: usize) -> BnRef {
    let m = (n * hw) as f64;
    let mut mean = vec![0.0; c];
    let mut var = vec![0.0; c];
    for ch in 0..c {
        let vals =
            (0..n).flat_map(|img| (0..hw).map(move |q| (img, q))).map(|(img, q)| x[(img * c + ch) * hw + q] as f64);
        mean[ch] = vals.clone().sum::<f64>() / m;
        var[ch] = vals.map(|v| (v - mean[ch]).powi(2)).sum::<f64>() / m;
    }
    BnRef { mean, var }
}

#[test]
fn batchnorm_train_forward_backward_and_eval() {
    let mut rng = common::rng(3);
    for &(n, c, h, w) in &[(2usize, 3usize, 5usize, 7usize), (3, 5, 9, 11), (1, 2, 1, 3)] {
        let hw = h * w;
        let count = n * hw;
        let x: Vec<f32> = rng.values(n * c * hw).iter().map(|v| v * 3.0 + 0.5).collect();
        let gamma = rng.values(c);
        let beta = rng.values(c);
        let rm0 = rng.values(c);
        let rv0: Vec<f32> = rng.values(c).iter().map(|v| v.abs() + 0.5).collect();
        let (mut rm, mut rv) = (rm0.clone(), rv0.clone());
        let (mut save_mean, mut save_invstd) = (vec![0.0f32; c], vec![0.0f32; c]);
        let mut y = vec![f32::NAN; x.len()];
        let (momentum, eps) = (0.1f32, 1e-5f32);
        let mut p = BatchNormParams {
            x: addr(&x),
            y: addr_mut(&mut y),
            gamma: addr(&gamma),
            beta: addr(&beta),
            running_mean: addr_mut(&mut rm),
            running_var: addr_mut(&mut rv),
            save_mean: addr_mut(&mut save_mean),
            save_invstd: addr_mut(&mut save_invstd),
            n: n as i32,
            c: c as i32,
            hw: hw as i32,
            momentum,
            eps,
            ..Default::default()
        };
        run(&BN_TRAIN_STATS, &p);
        run(&BN_TRAIN_APPLY, &p);
        let r = bn_stats_ref(&x, n, c, hw);
        let m = momentum as f64;
        let unbiased = |ch: usize| if count > 1 { r.var[ch] * count as f64 / (count - 1) as f64 } else { r.var[ch] };
        let want_rm: Vec<f64> = (0..c).map(|ch| (1.0 - m) * rm0[ch] as f64 + m * r.mean[ch]).collect();
        let want_rv: Vec<f64> = (0..c).map(|ch| (1.0 - m) * rv0[ch] as f64 + m * unbiased(ch)).collect();
        assert_close("bn running_mean", &rm, &want_rm, 1e-5, 1e-5);
        assert_close("bn running_var", &rv, &want_rv, 1e-5, 1e-5);
        let xhat = |i: usize| {
            let ch = i / hw % c;
            (x[i] as f64 - r.mean[ch]) / (r.var[ch] + eps as f64).sqrt()
        };
        let want_y: Vec<f64> =
            (0..x.len()).map(|i| xhat(i) * gamma[i / hw % c] as f64 + beta[i / hw % c] as f64).collect();
        assert_close("bn train y", &y, &want_y, 1e-4, 1e-4);

        // Fused BN+ReLU equals the unfused rung (apply, then relu_forward).
        let mut y_fused = vec![f32::NAN; x.len()];
        run(&BN_TRAIN_APPLY_RELU, &BatchNormParams { y: addr_mut(&mut y_fused), ..p });
        let mut y_relu = vec![f32::NAN; x.len()];
        run(
            &RELU_FORWARD,
            &EltwiseParams { a: addr(&y), out: addr_mut(&mut y_relu), n: y.len() as i64, ..Default::default() },
        );
        assert_eq!(y_fused, y_relu, "fused bn+relu differs from bn then relu");
        // And against the CPU ops directly: relu(batch_norm_train(x)) from the same running buffers.
        let t = |shape: &[usize], v: &[f32]| hrk::Tensor::from_f32(shape, v.to_vec()).unwrap();
        let (gamma_t, beta_t, x_t) = (t(&[c], &gamma), t(&[c], &beta), t(&[n, c, h, w], &x));
        let (mut rm_t, mut rv_t) = (t(&[c], &rm0), t(&[c], &rv0));
        let cpu_train =
            hrk::ops::batch_norm_train(&x_t, &gamma_t, &beta_t, &mut rm_t, &mut rv_t, momentum as f64, eps as f64)
                .unwrap();
        let cpu_train_relu: Vec<f64> = hrk::ops::relu(&cpu_train).unwrap().to_f64_vec();
        assert_close("fused bn_train_apply_relu vs cpu relu(batch_norm_train)", &y_fused, &cpu_train_relu, 1e-4, 1e-4);

        // Backward.
        let dy = rng.values(x.len());
        let (mut sum_dy, mut sum_dy_xhat) = (vec![0.0f32; c], vec![0.0f32; c]);
        let gg0 = rng.values(c);
        let gb0 = rng.values(c);
        let (mut gg, mut gb) = (gg0.clone(), gb0.clone());
        let mut dx = vec![f32::NAN; x.len()];
        p.dy = addr(&dy);
        p.dx = addr_mut(&mut dx);
        p.sum_dy = addr_mut(&mut sum_dy);
        p.sum_dy_xhat = addr_mut(&mut sum_dy_xhat);
        p.grad_gamma = addr_mut(&mut gg);
        p.grad_beta = addr_mut(&mut gb);
        run(&BN_BACKWARD_REDUCE, &p);
        run(&BN_BACKWARD_DATA, &p);
        let mut s_dy = vec![0.0f64; c];
        let mut s_dyx = vec![0.0f64; c];
        for i in 0..x.len() {
            s_dy[i / hw % c] += dy[i] as f64;
            s_dyx[i / hw % c] += dy[i] as f64 * xhat(i);
        }
        let want_gg: Vec<f64> = (0..c).map(|ch| gg0[ch] as f64 + s_dyx[ch]).collect();
        let want_gb: Vec<f64> = (0..c).map(|ch| gb0[ch] as f64 + s_dy[ch]).collect();
        assert_close("bn grad_gamma", &gg, &want_gg, 1e-4, 1e-4);
        assert_close("bn grad_beta", &gb, &want_gb, 1e-4, 1e-4);
        let mf = count as f64;
        let want_dx: Vec<f64> = (0..x.len())
            .map(|i| {
                let ch = i / hw % c;
                let invstd = 1.0 / (r.var[ch] + eps as f64).sqrt();
                gamma[ch] as f64 * invstd / mf * (mf * dy[i] as f64 - s_dy[ch] - xhat(i) * s_dyx[ch])
            })
            .collect();
        assert_close("bn dx", &dx, &want_dx, 2e-4, 2e-4);

        // Eval forward with running statistics, fused and unfused.
        let mut ye = vec![f32::NAN; x.len()];
        let mut ye_relu = vec![f32::NAN; x.len()];
        let pe = BatchNormParams { y: addr_mut(&mut ye), ..p };
        run(&BN_EVAL_FORWARD, &pe);
        run(&BN_EVAL_FORWARD_RELU, &BatchNormParams { y: addr_mut(&mut ye_relu), ..p });
        let want_e: Vec<f64> = (0..x.len())
            .map(|i| {
                let ch = i / hw % c;
                (x[i] as f64 - rm[ch] as f64) / (rv[ch] as f64 + eps as f64).sqrt() * gamma[ch] as f64 + beta[ch] as f64
            })
            .collect();
        assert_close("bn eval y", &ye, &want_e, 1e-4, 1e-4);
        let want_er: Vec<f64> = want_e.iter().map(|v| v.max(0.0)).collect();
        assert_close("bn eval y relu", &ye_relu, &want_er, 1e-4, 1e-4);
        // The fused eval kernel against the CPU ops: relu(batch_norm_eval(x)) with the updated running stats.
        let cpu_eval =
            hrk::ops::batch_norm_eval(&x_t, &gamma_t, &beta_t, &t(&[c], &rm), &t(&[c], &rv), eps as f64).unwrap();
        let cpu_eval_relu: Vec<f64> = hrk::ops::relu(&cpu_eval).unwrap().to_f64_vec();
        assert_close("fused bn_eval_forward_relu vs cpu relu(batch_norm_eval)", &ye_relu, &cpu_eval_relu, 1e-4, 1e-4);
    }
}

// ---------- bilinear ----------

/// PyTorch upsample_bilinear2d (align_corners=false, output size given) weights for one axis.
fn axis_taps(out_idx: usize, input: usize, output: usize) -> (usize, usize, f64, f64) {
    let scale = input as f64 / output as f64;
    let src = (scale * (out_idx as f64 + 0.5) - 0.5).max(0.0);
    let i0 = src.floor() as usize;
    let i1 = if i0 < input - 1 { i0 + 1 } else { i0 };
    let l1 = src - i0 as f64;
    (i0, i1, 1.0 - l1, l1)
}

#[test]
fn bilinear_forward_backward_match_reference() {
    let mut rng = common::rng(4);
    for &(planes, ih, iw, oh, ow) in
        &[(3usize, 5usize, 7usize, 12usize, 9usize), (2, 9, 6, 4, 5), (2, 4, 3, 8, 6), (1, 1, 3, 3, 7)]
    {
        let x = rng.values(planes * ih * iw);
        let dy = rng.values(planes * oh * ow);
        let mut y = vec![f32::NAN; dy.len()];
        let mut dx = vec![0.0f32; x.len()];
        let p = UpsampleParams {
            x: addr(&x),
            y: addr_mut(&mut y),
            dy: addr(&dy),
            dx: addr_mut(&mut dx),
            planes: planes as i32,
            in_h: ih as i32,
            in_w: iw as i32,
            out_h: oh as i32,
            out_w: ow as i32,
            scale_h: ih as f32 / oh as f32,
            scale_w: iw as f32 / ow as f32,
            ..Default::default()
        };
        run(&BILINEAR_FORWARD, &p);
        run(&BILINEAR_BACKWARD, &p);
        let mut want_y = vec![0.0f64; y.len()];
        let mut want_dx = vec![0.0f64; x.len()];
        for pl in 0..planes {
            for oy in 0..oh {
                let (y0, y1, wy0, wy1) = axis_taps(oy, ih, oh);
                for ox in 0..ow {
                    let (x0, x1, wx0, wx1) = axis_taps(ox, iw, ow);
                    let o = (pl * oh + oy) * ow + ox;
                    for (yy, wy) in [(y0, wy0), (y1, wy1)] {
                        for (xx, wx) in [(x0, wx0), (x1, wx1)] {
                            let i = (pl * ih + yy) * iw + xx;
                            want_y[o] += wy * wx * x[i] as f64;
                            want_dx[i] += wy * wx * dy[o] as f64;
                        }
                    }
                }
            }
        }
        assert_close(&format!("bilinear fwd {ih}x{iw}->{oh}x{ow}"), &y, &want_y, 1e-5, 1e-5);
        assert_close(&format!("bilinear bwd {ih}x{iw}->{oh}x{ow}"), &dx, &want_dx, 1e-5, 1e-5);
    }
}

// ---------- elementwise, concat, loss ----------

#[test]
fn relu_add_concat_split() {
    let mut rng = common::rng(5);
    let n = 1000 + 37; // several blocks plus a partial warp
    let a = rng.values(n);
    let b = rng.values(n);
    let mut out = vec![f32::NAN; n];
    let p = EltwiseParams { a: addr(&a), b: addr(&b), out: addr_mut(&mut out), n: n as i64 };
    run(&RELU_FORWARD, &p);
    assert_close("relu fwd", &out, &a.iter().map(|&v| (v as f64).max(0.0)).collect::<Vec<_>>(), 0.0, 0.0);
    run(&RELU_BACKWARD, &p);
    assert_close(
        "relu bwd",
        &out,
        &a.iter().zip(&b).map(|(&x, &g)| if x > 0.0 { g as f64 } else { 0.0 }).collect::<Vec<_>>(),
        0.0,
        0.0,
    );
    run(&ADD, &p);
    assert_close("add", &out, &a.iter().zip(&b).map(|(&x, &y)| (x + y) as f64).collect::<Vec<_>>(), 0.0, 0.0);

    // Concat three parts along channels, then split back.
    let (imgs, hw) = (2usize, 15usize);
    let chans = [3usize, 1, 4];
    let c_whole: usize = chans.iter().sum();
    let parts: Vec<Vec<f32>> = chans.iter().map(|&c| rng.values(imgs * c * hw)).collect();
    let mut whole = vec![f32::NAN; imgs * c_whole * hw];
    // One part's params: `part` holds c channels that sit at channel `offset` of `whole`.
    let concat_params = |part: u64, whole: u64, c: usize, offset: usize| ConcatParams {
        part,
        whole,
        n: imgs as i32,
        c_part: c as i32,
        c_whole: c_whole as i32,
        c_offset: offset as i32,
        hw: hw as i32,
        ..Default::default()
    };
    let mut offset = 0;
    for (part, &c) in parts.iter().zip(&chans) {
        let p = concat_params(addr(part), addr_mut(&mut whole), c, offset);
        run(&CONCAT_CHANNELS, &p);
        offset += c;
    }
    let mut want = Vec::new();
    for img in 0..imgs {
        for (part, &c) in parts.iter().zip(&chans) {
            want.extend(part[img * c * hw..(img + 1) * c * hw].iter().map(|&v| v as f64));
        }
    }
    assert_close("concat", &whole, &want, 0.0, 0.0);
    let mut offset = 0;
    for (part, &c) in parts.iter().zip(&chans) {
        let mut back = vec![f32::NAN; part.len()];
        let p = concat_params(addr_mut(&mut back), addr_mut(&mut whole), c, offset);
        run(&SPLIT_CHANNELS, &p);
        assert_eq!(&back, part, "split of channels at offset {offset}");
        offset += c;
    }
}

#[test]
fn mse_loss_forward_backward() {
    let mut rng = common::rng(6);
    for n in [1usize, 255, 3 * 256 + 17] {
        let pred = rng.values(n);
        let target = rng.values(n);
        let parts = kernels::mse_num_partials(n as i64);
        let mut partial = vec![f32::NAN; parts as usize];
        let mut loss = [f32::NAN];
        let grad_loss = [0.5f32];
        let mut grad = vec![f32::NAN; n];
        let p = MseParams {
            pred: addr(&pred),
            target: addr(&target),
            partial: addr_mut(&mut partial),
            loss: addr_mut(&mut loss),
            grad_loss: addr(&grad_loss),
            grad_pred: addr_mut(&mut grad),
            n: n as i64,
            num_partials: parts,
            ..Default::default()
        };
        run(&MSE_LOSS_PARTIAL, &p);
        run(&MSE_LOSS_FINALIZE, &p);
        run(&MSE_LOSS_BACKWARD, &p);
        let want = pred.iter().zip(&target).map(|(&a, &b)| (a as f64 - b as f64).powi(2)).sum::<f64>() / n as f64;
        assert_close(&format!("mse n={n}"), &loss, &[want], 1e-6, 1e-5);
        let want_g: Vec<f64> =
            pred.iter().zip(&target).map(|(&a, &b)| 2.0 * 0.5 * (a as f64 - b as f64) / n as f64).collect();
        assert_close(&format!("mse grad n={n}"), &grad, &want_g, 1e-7, 1e-5);
    }
}

// ---------- optimizers ----------

#[test]
fn adam_matches_pytorch_formula() {
    let mut rng = common::rng(7);
    let n = 300;
    let mut param = rng.values(n);
    let (mut m, mut v) = (vec![0.0f32; n], vec![0.0f32; n]);
    let mut p_ref: Vec<f64> = param.iter().map(|&x| x as f64).collect();
    let (mut m_ref, mut v_ref) = (vec![0.0f64; n], vec![0.0f64; n]);
    let (lr, b1, b2, eps, wd) = (1e-3f64, 0.9f64, 0.999f64, 1e-8f64, 1e-2f64);
    for step in 1..=4 {
        let grad = rng.values(n);
        let bc1 = 1.0 - b1.powi(step);
        let bc2 = 1.0 - b2.powi(step);
        let p = OptimParams {
            param: addr_mut(&mut param),
            grad: addr(&grad),
            exp_avg: addr_mut(&mut m),
            exp_avg_sq: addr_mut(&mut v),
            n: n as i64,
            lr: lr as f32,
            weight_decay: wd as f32,
            beta1: b1 as f32,
            beta2: b2 as f32,
            eps: eps as f32,
            bias_correction1: bc1 as f32,
            bias_correction2_sqrt: bc2.sqrt() as f32,
            ..Default::default()
        };
        run(&ADAM_STEP, &p);
        for i in 0..n {
            let g = grad[i] as f64 + wd * p_ref[i];
            m_ref[i] = b1 * m_ref[i] + (1.0 - b1) * g;
            v_ref[i] = b2 * v_ref[i] + (1.0 - b2) * g * g;
            p_ref[i] -= lr / bc1 * m_ref[i] / (v_ref[i].sqrt() / bc2.sqrt() + eps);
        }
    }
    assert_close("adam exp_avg", &m, &m_ref, 1e-6, 1e-5);
    assert_close("adam exp_avg_sq", &v, &v_ref, 1e-7, 1e-5);
    assert_close("adam param", &param, &p_ref, 1e-6, 1e-5);
}

#[test]
fn sgd_momentum_nesterov_weight_decay() {
    let mut rng = common::rng(8);
    let n = 261;
    for (momentum, dampening, nesterov, wd) in
        [(0.0f64, 0.0f64, false, 0.0f64), (0.9, 0.0, false, 1e-4), (0.9, 0.0, true, 5e-4), (0.5, 0.1, false, 0.0)]
    {
        let mut param = rng.values(n);
        let mut buf = vec![f32::NAN; n];
        let mut p_ref: Vec<f64> = param.iter().map(|&x| x as f64).collect();
        let mut buf_ref = vec![0.0f64; n];
        let lr = 0.05f64;
        for step in 0..3 {
            let grad = rng.values(n);
            let p = OptimParams {
                param: addr_mut(&mut param),
                grad: addr(&grad),
                momentum_buf: addr_mut(&mut buf),
                n: n as i64,
                lr: lr as f32,
                weight_decay: wd as f32,
                momentum: momentum as f32,
                dampening: dampening as f32,
                nesterov: nesterov as i32,
                first_step: (step == 0) as i32,
                ..Default::default()
            };
            run(&SGD_STEP, &p);
            for i in 0..n {
                let mut g = grad[i] as f64 + wd * p_ref[i];
                if momentum != 0.0 {
                    buf_ref[i] = if step == 0 { g } else { momentum * buf_ref[i] + (1.0 - dampening) * g };
                    g = if nesterov { g + momentum * buf_ref[i] } else { buf_ref[i] };
                }
                p_ref[i] -= lr * g;
            }
        }
        assert_close(&format!("sgd m={momentum} nesterov={nesterov} wd={wd}"), &param, &p_ref, 1e-6, 1e-5);
    }
}

// ---------- heatmap decoding ----------

#[test]
fn heatmap_argmax_with_quarter_shift() {
    let mut rng = common::rng(9);
    let (h, w) = (7usize, 9usize);
    let mut maps: Vec<Vec<f32>> = Vec::new();
    let interior_peak = |rng: &mut Rng, py: usize, px: usize| {
        let mut m: Vec<f32> = rng.values(h * w).iter().map(|v| v * 0.1).collect();
        m[py * w + px] = 2.0;
        m
    };
    maps.push(interior_peak(&mut rng, 3, 4));
    maps.push(interior_peak(&mut rng, 0, 5)); // top row: no shift
    maps.push(interior_peak(&mut rng, 6, 8)); // bottom-right corner
    maps.push(interior_peak(&mut rng, 1, 7)); // last interior column
    let mut tie = vec![0.0f32; h * w];
    tie[2 * w + 3] = 1.5;
    tie[4 * w + 1] = 1.5; // later in row-major order: the first one wins
    tie[2 * w + 4] = 0.7; // right neighbour larger than left: +0.25 in x; equal above/below: 0 in y
    maps.push(tie);
    maps.push(rng.values(h * w).iter().map(|v| -v.abs() - 0.1).collect()); // max <= 0 -> (0, 0)
    let heat: Vec<f32> = maps.concat();
    let k = maps.len();
    let mut coords = vec![f32::NAN; 2 * k];
    let mut maxvals = vec![f32::NAN; k];
    let p = HeatmapParams {
        heatmaps: addr(&heat),
        coords: addr_mut(&mut coords),
        maxvals: addr_mut(&mut maxvals),
        maps: k as i32,
        h: h as i32,
        w: w as i32,
        ..Default::default()
    };
    run(&HEATMAP_ARGMAX, &p);
    let sign = |d: f32| {
        if d > 0.0 {
            1.0
        } else if d < 0.0 {
            -1.0
        } else {
            0.0
        }
    };
    let mut want = Vec::new();
    let mut want_max = Vec::new();
    for m in &maps {
        let (mut best, mut idx) = (f32::NEG_INFINITY, 0usize);
        for (i, &v) in m.iter().enumerate() {
            if v > best {
                best = v;
                idx = i;
            }
        }
        want_max.push(best as f64);
        let (mut x, mut y) = ((idx % w + 1) as f64, (idx / w + 1) as f64);
        if best <= 0.0 {
            (x, y) = (0.0, 0.0);
        }
        let (px, py) = (x as usize, y as usize);
        if px > 1 && px < w && py > 1 && py < h {
            x += 0.25 * sign(m[(py - 1) * w + px] - m[(py - 1) * w + px - 2]);
            y += 0.25 * sign(m[py * w + px - 1] - m[(py - 2) * w + px - 1]);
        }
        want.push(x);
        want.push(y);
    }
    assert_close("heatmap coords", &coords, &want, 0.0, 0.0);
    assert_close("heatmap maxvals", &maxvals, &want_max, 0.0, 0.0);
    // And exactly what the CPU decode path (data::codec) gives for each map; the kernel stops
    // before the reference's +0.5.
    let cpu: Vec<f64> = maps
        .iter()
        .flat_map(|m| hrk::data::codec::refine_coords(m, h, w, [w, h]))
        .map(|v| f64::from(v - 0.5))
        .collect();
    assert_close("heatmap coords vs data::codec", &coords, &cpu, 0.0, 0.0);
    assert_eq!(&coords[8..10], &[4.25, 3.0], "tie-break / shift on the crafted map");
}
