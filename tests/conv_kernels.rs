//! The direct 3×3 conv kernels (forward with every epilogue, backward data and weight), Winograd's
//! forward (every layout, plain and pre-transformed weights) and the im2col + GEMM path they replace,
//! against direct-loop references in f64, on odd shapes — each build of the kernels (AVX-512,
//! AVX2 + FMA) that this CPU runs, with a printed note for those it cannot.

use hrk::ops::conv2d::algorithm::{choose, Arithmetic, ConvAlgorithm, Pass};
use hrk::ops::conv2d::cpu_kernel as cpu;
use hrk::ops::conv2d::direct::{self, winograd, Isa};
use hrk::ops::Conv2dGeom;
use hrk::rng::Rng;

mod common;
use common::TestValues;

fn randv(rng: &mut Rng, n: usize) -> Vec<f32> {
    rng.normals(n)
}

/// max |a − b| / max |b|; infinite when `a` holds a non-finite value (f64::max would skip a NaN,
/// and outputs start as NaN so that an unwritten element shows).
fn max_rel(a: &[f32], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    if a.iter().any(|v| !v.is_finite()) {
        return f64::INFINITY;
    }
    let scale = b.iter().fold(1e-12f64, |m, v| m.max(v.abs()));
    a.iter().zip(b).map(|(&x, y)| (x as f64 - y).abs()).fold(0.0, f64::max) / scale
}

fn geom(n: usize, cin: usize, cout: usize, h: usize, w: usize) -> Conv2dGeom {
    Conv2dGeom::new([n, cin, h, w], &[cout, cin, 3, 3], 1, 1).unwrap()
}

/// Calls `f([n, co, y, x, ci, ky, kx, iy, ix])` for every in-image tap of the conv.
fn each_tap(g: &Conv2dGeom, mut f: impl FnMut([usize; 9])) {
    for n in 0..g.n {
        for co in 0..g.cout {
            for y in 0..g.ho {
                for x in 0..g.wo {
                    for ci in 0..g.cin {
                        for ky in 0..g.k {
                            for kx in 0..g.k {
                                let iy = (y * g.stride + ky) as isize - g.pad as isize;
                                let ix = (x * g.stride + kx) as isize - g.pad as isize;
                                if iy >= 0 && ix >= 0 && (iy as usize) < g.h && (ix as usize) < g.w {
                                    f([n, co, y, x, ci, ky, kx, iy as usize, ix as usize]);
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

fn at_in(g: &Conv2dGeom, n: usize, ch: usize, y: usize, x: usize) -> usize {
    ((n * g.cin + ch) * g.h + y) * g.w + x
}
fn at_out(g: &Conv2dGeom, n: usize, ch: usize, y: usize, x: usize) -> usize {
    ((n * g.cout + ch) * g.ho + y) * g.wo + x
}
fn at_w(g: &Conv2dGeom, co: usize, ci: usize, ky: usize, kx: usize) -> usize {
    ((co * g.cin + ci) * g.k + ky) * g.k + kx
}

/// Epilogue number `mask` of the eight: bit 0 the bias, bit 1 the residual, bit 2 the ReLU.
fn epilogue<'a>(mask: usize, bias: &'a [f32], res: &'a [f32]) -> cpu::Epilogue<'a, f32> {
    cpu::Epilogue {
        bias: (mask & 1 != 0).then_some(bias),
        residual: (mask & 2 != 0).then_some(res),
        relu: mask & 4 != 0,
    }
}

fn naive_forward(g: &Conv2dGeom, x: &[f32], wt: &[f32], ep: &cpu::Epilogue<f32>) -> Vec<f64> {
    let mut y = vec![0.0f64; g.n * g.cout * g.ho * g.wo];
    each_tap(g, |[n, co, oy, ox, ci, ky, kx, iy, ix]| {
        y[at_out(g, n, co, oy, ox)] += x[at_in(g, n, ci, iy, ix)] as f64 * wt[at_w(g, co, ci, ky, kx)] as f64;
    });
    for (i, v) in y.iter_mut().enumerate() {
        let co = (i / (g.ho * g.wo)) % g.cout;
        *v += ep.bias.map_or(0.0, |b| b[co] as f64) + ep.residual.map_or(0.0, |r| r[i] as f64);
        if ep.relu {
            *v = v.max(0.0);
        }
    }
    y
}

/// (dx, dW) of Σ y·dy.
fn naive_backward(g: &Conv2dGeom, x: &[f32], wt: &[f32], dy: &[f32]) -> (Vec<f64>, Vec<f64>) {
    let mut dx = vec![0.0f64; x.len()];
    let mut dw = vec![0.0f64; wt.len()];
    each_tap(g, |[n, co, oy, ox, ci, ky, kx, iy, ix]| {
        let d = dy[at_out(g, n, co, oy, ox)] as f64;
        let wi = at_w(g, co, ci, ky, kx);
        dx[at_in(g, n, ci, iy, ix)] += d * wt[wi] as f64;
        dw[wi] += d * x[at_in(g, n, ci, iy, ix)] as f64;
    });
    (dx, dw)
}

/// (n, cin, cout, h, w): channel counts around the kernel blocks (6 forward, 3 weight-grad),
/// planes from 1×1 to wider than one 64-position tile, with odd pitches and whole-vector widths.
const SHAPES: &[(usize, usize, usize, usize, usize)] = &[
    (1, 1, 1, 1, 1),
    (3, 3, 17, 2, 2),
    (1, 17, 19, 5, 7),
    (3, 19, 3, 7, 5),
    (1, 37, 1, 13, 13),
    (3, 1, 37, 13, 2),
    (1, 18, 18, 64, 64),
    (3, 19, 17, 1, 13),
    // Widths of whole 16-position vectors (16, 32; stride 2 → 8, 16): vectors start at row starts.
    (3, 7, 13, 5, 16),
    (2, 9, 8, 4, 32),
    // Winograd's vector layouts: groups of 2 tile rows (width 16), of 4 (width 8), whole rows.
    (2, 7, 13, 8, 16),
    (1, 9, 14, 16, 8),
    (1, 5, 7, 6, 64),
    // Over 128 input channels Winograd takes fewer vectors per task.
    (1, 130, 7, 8, 32),
];

/// The kernel builds this CPU runs; prints a note for each it cannot.
fn builds() -> Vec<Isa> {
    Isa::ALL
        .into_iter()
        .filter(|isa| {
            if !isa.supported() {
                eprintln!("note: this CPU cannot run the direct kernels' {} build; not tested here", isa.name());
            }
            isa.supported()
        })
        .collect()
}

#[test]
fn forward_matches_direct_loops_with_every_epilogue() {
    let builds = builds();
    let mut rng = common::rng(71);
    // Stride 1, then stride 2 on odd and even sides (the four parity phases differ in size).
    let strided = SHAPES.iter().map(|&(n, ci, co, h, w)| (n, ci, co, h, w, 1));
    let halved = SHAPES.iter().map(|&(n, ci, co, h, w)| (n, ci.max(8) + (ci & 1), co, h + 1, w + 2, 2));
    for (n, cin, cout, h, w, stride) in strided.chain(halved) {
        let g = Conv2dGeom::new([n, cin, h, w], &[cout, cin, 3, 3], stride, 1).unwrap();
        let x = randv(&mut rng, n * cin * h * w);
        let wt = randv(&mut rng, cout * cin * 9);
        let bias = randv(&mut rng, cout);
        let res = randv(&mut rng, n * cout * g.ho * g.wo);
        for mask in 0..8 {
            let ep = epilogue(mask, &bias, &res);
            let want = naive_forward(&g, &x, &wt, &ep);
            let mut y = vec![f32::NAN; want.len()];
            cpu::forward_fused_gemm(&g, &x, &wt, ep, &mut y);
            let e_gemm = max_rel(&y, &want);
            y.fill(f32::NAN);
            cpu::forward_fused(&g, &x, &wt, ep, &mut y);
            let e_auto = max_rel(&y, &want);
            assert!(e_gemm < 1e-5 && e_auto < 1e-5, "{g:?} epilogue {mask}: gemm {e_gemm:e} dispatch {e_auto:e}");
            // Each build: the direct kernel, and Winograd in every layout with plain and transformed
            // weights. The builds add in the same order, so they also agree bit for bit.
            let mut first: Option<(Vec<f32>, Vec<f32>)> = None;
            for &isa in &builds {
                y.fill(f32::NAN);
                assert!(direct::forward_fused_on(isa, &g, &x, &wt, ep, &mut y), "3x3 s1 p1 must take the direct path");
                let e_direct = max_rel(&y, &want);
                let direct_y = y.clone();
                let mut e_winograd = 0.0f64;
                let mut winograd_y = Vec::new();
                if winograd::applies(&g) {
                    let mut u = vec![f32::NAN; winograd::transformed_len(cin, cout)];
                    winograd::transform_weights(&wt, cin, cout, &mut u);
                    for (tile_by_tile, transformed) in [(false, false), (true, false), (false, true)] {
                        y.fill(f32::NAN);
                        let weights = if transformed { &u[..] } else { &wt[..] };
                        winograd::forward_on(isa, tile_by_tile, transformed, &g, &x, weights, ep, &mut y);
                        e_winograd = e_winograd.max(max_rel(&y, &want));
                        winograd_y.extend_from_slice(&y);
                    }
                }
                let name = isa.name();
                assert!(
                    e_direct < 1e-5 && e_winograd < 1e-5,
                    "{g:?} epilogue {mask} {name}: direct {e_direct:e} winograd {e_winograd:e}"
                );
                match &first {
                    None => first = Some((direct_y, winograd_y)),
                    Some(f) => assert!(*f == (direct_y, winograd_y), "{g:?} epilogue {mask}: {name} differs"),
                }
            }
        }
    }
}

#[test]
fn backward_matches_direct_loops() {
    let mut rng = common::rng(72);
    for &(n, cin, cout, h, w) in SHAPES {
        let g = geom(n, cin, cout, h, w);
        check_backward(&mut rng, &g);
    }
}

#[test]
fn gemm_backward_of_other_geometries_matches_direct_loops() {
    // Stride 2, 1×1 (shrinking and expanding) and 5×5: the GEMM path, with dW computed either
    // transposed or not depending on the shape.
    let mut rng = common::rng(73);
    for (n, cin, cout, h, w, k, s, p) in [
        (2, 3, 17, 19, 17, 3, 2, 1),
        (1, 19, 37, 20, 20, 3, 2, 1),
        (3, 37, 5, 18, 18, 1, 1, 0),
        (1, 5, 37, 17, 19, 1, 1, 0),
        (2, 4, 6, 9, 11, 5, 1, 2),
        (1, 7, 5, 36, 34, 3, 2, 1),
    ] {
        let g = Conv2dGeom::new([n, cin, h, w], &[cout, cin, k, k], s, p).unwrap();
        check_backward(&mut rng, &g);
    }
}

fn check_backward(rng: &mut Rng, g: &Conv2dGeom) {
    let (n, cin, cout) = (g.n, g.cin, g.cout);
    let g = *g;
    let plane = g.ho * g.wo;
    let x = randv(rng, n * cin * g.h * g.w);
    let wt = randv(rng, cout * cin * g.k * g.k);
    let dy = randv(rng, n * cout * plane);
    let (want_dx, want_dw) = naive_backward(&g, &x, &wt, &dy);
    let want_db: Vec<f64> = (0..cout)
        .map(|co| (0..n).flat_map(|b| &dy[(b * cout + co) * plane..][..plane]).map(|&v| v as f64).sum())
        .collect();
    // dW accumulates onto what is there: start every path from the same non-zero values.
    let dw0 = randv(rng, wt.len());
    let want_dw: Vec<f64> = want_dw.iter().zip(&dw0).map(|(a, &b)| a + b as f64).collect();
    type Path = fn(&Conv2dGeom, &[f32], &[f32], &[f32], Option<&mut [f32]>, Option<&mut [f32]>, Option<&mut [f32]>);
    let avx512: Path = |g, x, wt, dy, dx, dw, _db| assert!(direct::backward_on(Isa::Avx512, g, x, wt, dy, dx, dw));
    let avx2: Path = |g, x, wt, dy, dx, dw, _db| assert!(direct::backward_on(Isa::Avx2, g, x, wt, dy, dx, dw));
    let mut paths: Vec<(&str, Path)> = vec![("gemm", cpu::backward_gemm::<f32>), ("dispatch", cpu::backward::<f32>)];
    if direct::applies_backward(&g) {
        for isa in builds() {
            paths.push((isa.name(), if isa == Isa::Avx512 { avx512 } else { avx2 }));
        }
    }
    for (name, run) in paths {
        let mut dx = vec![f32::NAN; x.len()];
        let mut dw = dw0.clone();
        let mut db = vec![f32::NAN; cout];
        run(&g, &x, &wt, &dy, Some(&mut dx), Some(&mut dw), Some(&mut db));
        let (ex, ew) = (max_rel(&dx, &want_dx), max_rel(&dw, &want_dw));
        assert!(ex < 1e-5 && ew < 1e-5, "{name} {g:?}: dx {ex:e} dW {ew:e}");
        if !Isa::ALL.iter().any(|i| i.name() == name) {
            let eb = max_rel(&db, &want_db);
            assert!(eb < 1e-5, "{name} {g:?}: db {eb:e}");
        }
        // Each gradient alone gives the same values.
        let mut dx_only = vec![f32::NAN; x.len()];
        run(&g, &x, &wt, &dy, Some(&mut dx_only), None, None);
        assert_eq!(dx_only, dx, "{name} {g:?}: dx alone");
        let mut dw_only = dw0.clone();
        run(&g, &x, &wt, &dy, None, Some(&mut dw_only), None);
        assert!(max_rel(&dw_only, &want_dw) < 1e-5, "{name} {g:?}: dW alone");
    }
}

#[test]
fn other_geometries_fall_back() {
    // 1×1, 5×5 and stride 3 are not the direct kernel's, stride 2 only forward; the dispatcher
    // must still be right (the backward test above runs stride 2 through it).
    let g = Conv2dGeom::new([1, 4, 9, 9], &[5, 4, 3, 3], 2, 1).unwrap();
    assert!(!direct::applies(&g) && !direct::applies_backward(&g), "stride 2 from 3 channels only");
    let g8 = Conv2dGeom::new([1, 8, 9, 9], &[5, 8, 3, 3], 2, 1).unwrap();
    assert!(direct::applies(&g8) && !direct::applies_backward(&g8));
    let g1 = Conv2dGeom::new([1, 4, 9, 9], &[5, 4, 1, 1], 1, 0).unwrap();
    assert!(!direct::applies(&g1));
    let g3 = Conv2dGeom::new([1, 4, 9, 9], &[5, 4, 3, 3], 3, 1).unwrap();
    assert!(!direct::applies(&g3));
    let x = vec![1.0f32; 4 * 81];
    let mut y = vec![0.0f32; 5 * g3.ho * g3.wo];
    assert!(!direct::forward_fused(
        &g3,
        &x,
        &[0.0; 180],
        cpu::Epilogue { bias: None, residual: None, relu: false },
        &mut y
    ));
    let dy = vec![1.0f32; 5 * g.ho * g.wo];
    assert!(!direct::backward(&g, &x, &[0.0; 180], &dy, None, None));
    assert!(direct::applies(&geom(2, 3, 4, 5, 6)) && direct::applies_backward(&geom(2, 3, 4, 5, 6)));
}

#[test]
fn empty_channel_counts_take_the_gemm_path() {
    // No input channels: the output is the bias; no output channels: nothing to write.
    let g = Conv2dGeom::new([2, 0, 5, 6], &[3, 0, 3, 3], 1, 1).unwrap();
    assert!(!direct::applies(&g) && !direct::applies_backward(&g));
    let bias = [1.0f32, -2.0, 3.0];
    let mut y = vec![f32::NAN; 2 * 3 * 30];
    cpu::forward_fused(&g, &[], &[], cpu::Epilogue { bias: Some(&bias), residual: None, relu: true }, &mut y);
    assert!(y.chunks(30).enumerate().all(|(i, c)| c.iter().all(|&v| v == bias[i % 3].max(0.0))));
    let g0 = Conv2dGeom::new([2, 4, 5, 6], &[0, 4, 3, 3], 1, 1).unwrap();
    assert!(!direct::applies(&g0) && !direct::applies_backward(&g0));
    let x = vec![1.0f32; 2 * 4 * 30];
    let mut dx = vec![f32::NAN; x.len()];
    cpu::backward(&g0, &x, &[], &[], Some(&mut dx), Some(&mut []), None);
    assert!(dx.iter().all(|&v| v == 0.0));
}

/// A frozen weight (no grad) saves no input for dW; the input's gradient must still come out, equal to
/// the one computed with a trainable weight, on the direct and the GEMM shapes.
#[test]
fn frozen_weight_still_gives_input_gradient() {
    use hrk::ops::conv2d::conv2d;
    use hrk::Tensor;
    let mut rng = common::rng(41);
    // (cin, cout, k, stride, side): direct 3×3, stride 2, 1×1.
    for (cin, cout, k, s, side) in [(5, 7, 3, 1, 13), (3, 4, 3, 2, 9), (6, 2, 1, 1, 5)] {
        let xv = randv(&mut rng, 2 * cin * side * side);
        let wv = randv(&mut rng, cout * cin * k * k);
        let dx_with = |trainable_w: bool| {
            let x = Tensor::from_f32(&[2, cin, side, side], xv.clone()).unwrap().requires_grad();
            let mut w = Tensor::from_f32(&[cout, cin, k, k], wv.clone()).unwrap();
            if trainable_w {
                w = w.requires_grad();
            }
            let y = conv2d(&x, &w, None, s, k / 2).unwrap();
            let loss = hrk::ops::mse_loss(&y, &Tensor::from_f32(y.shape(), vec![0.5; y.numel()]).unwrap()).unwrap();
            let grads = hrk::backward(&loss).unwrap();
            assert_eq!(grads.get(&w).is_some(), trainable_w);
            grads.get(&x).expect("dx").to_f32_vec()
        };
        let (frozen, trained) = (dx_with(false), dx_with(true));
        assert!(frozen.iter().any(|v| *v != 0.0), "k{k} s{s}: dx is all zero");
        assert_eq!(frozen, trained, "k{k} s{s}: dx with a frozen weight differs");
    }
}

/// The bf16 kernels (AVX512-BF16) on odd shapes of every form they take — 3×3 at stride 1 (direct,
/// and Winograd on each layout) and 2, 1×1 — with every epilogue, against f64 sums of the operands
/// rounded to bf16. Direct products of bf16 values are exact in f32, so the direct forms must agree
/// to f32 summation error (far below bf16's 2⁻⁸); Winograd rounds its transformed tiles instead, so it
/// is held to a bound of bf16's order, relative to the sum of |products| of each output.
#[test]
fn bf16_forward_matches_f64_sums_of_rounded_operands() {
    use hrk::float::round_bf16;
    use hrk::ops::conv2d::direct::bf16;
    if !bf16::available() {
        eprintln!("skipped: this CPU has no AVX512-BF16 (or HRK_NO_AVX512 is set); the bf16 kernels cannot run");
        return;
    }
    let mut rng = common::rng(73);
    // (n, cin, cout, h, w, k, stride): odd channel counts pair the last channel with zeros.
    let shapes = [
        (1, 5, 7, 11, 13, 3, 1),  // direct (generic grid)
        (1, 9, 13, 8, 32, 3, 1),  // direct below 32 channels, whole-vector rows
        (2, 33, 13, 8, 32, 3, 1), // Winograd, whole rows
        (1, 32, 6, 4, 16, 3, 1),  // Winograd, groups of 8 tiles
        (1, 35, 8, 8, 8, 3, 1),   // Winograd, groups of 4 tiles
        (1, 3, 10, 17, 15, 3, 2), // stride 2 from 3 channels (the stem)
        (2, 18, 5, 9, 10, 3, 2),
        (1, 7, 11, 9, 10, 1, 1), // 1×1
        (2, 2, 19, 16, 16, 1, 1),
    ];
    for (n, cin, cout, h, w, k, stride) in shapes {
        let g = Conv2dGeom::new([n, cin, h, w], &[cout, cin, k, k], stride, k / 2).unwrap();
        assert!(bf16::applies(&g), "{g:?}");
        let winograd = choose(&g, Pass::Inference, Arithmetic::Bf16) == ConvAlgorithm::Bf16Winograd;
        let x = randv(&mut rng, n * cin * h * w);
        let wt = randv(&mut rng, cout * cin * k * k);
        let (xr, wr): (Vec<f32>, Vec<f32>) =
            (x.iter().map(|&v| round_bf16(v)).collect(), wt.iter().map(|&v| round_bf16(v)).collect());
        let bias = randv(&mut rng, cout);
        let res = randv(&mut rng, n * cout * g.ho * g.wo);
        let abs = |v: &[f32]| v.iter().map(|a| a.abs()).collect::<Vec<f32>>();
        let (xa, wa, ba, ra) = (abs(&xr), abs(&wr), abs(&bias), abs(&res));
        let packed = bf16::Bf16Weights::default();
        for mask in 0..8 {
            let ep = epilogue(mask, &bias, &res);
            let want = naive_forward(&g, &xr, &wr, &ep);
            let ep_abs =
                cpu::Epilogue { bias: ep.bias.map(|_| &ba[..]), residual: ep.residual.map(|_| &ra[..]), relu: false };
            let magnitude = naive_forward(&g, &xa, &wa, &ep_abs);
            let mut y = vec![f32::NAN; want.len()];
            bf16::forward(&g, &x, &wt, &packed, ep, &mut y);
            assert!(y.iter().all(|v| v.is_finite()), "{g:?} epilogue {mask}: an output was not written");
            // Worst error in units of each output's Σ|terms| (products, bias, residual).
            let worst = y
                .iter()
                .zip(&want)
                .zip(&magnitude)
                .map(|((&a, &b), &m)| (a as f64 - b).abs() / m.max(1e-30))
                .fold(0.0f64, f64::max);
            let bound = if winograd { 2f64.powi(-6) } else { 1e-6 };
            if mask == 7 {
                eprintln!("bf16 {g:?} winograd {winograd}: worst error {worst:.2e} of Σ|terms| (bound {bound:.1e})");
            }
            assert!(worst < bound, "{g:?} epilogue {mask} (winograd {winograd}): error {worst:e} of Σ|terms|");
            if mask == 0 && winograd {
                // Winograd's own rounding shows: it is not the direct sum of rounded operands.
                assert!(worst > 1e-6, "{g:?}: winograd bf16 equals the direct sum ({worst:e})");
            }
        }
    }
}

/// The bf16 weight gradient (AVX512-BF16: positions paired, f32 sums) on odd shapes — 3×3 pad 1 at
/// stride 1 and 2, and 1×1, odd sizes and channel counts, batch 1 and 2, planes that end mid-vector — against f64 sums
/// of dy and x rounded to bf16: products of bf16 values are exact in f32, so only the f32 additions
/// differ, held to 1e-6 of each weight's Σ|terms|. dW accumulates onto what it holds.
#[test]
fn bf16_weight_grad_matches_f64_sums_of_rounded_operands() {
    use hrk::float::round_bf16;
    use hrk::ops::conv2d::direct::bf16;
    if !bf16::weight_grad_available() {
        eprintln!("skipped: this CPU has no AVX512-BF16 (or HRK_NO_AVX512 is set); the bf16 kernels cannot run");
        return;
    }
    let mut rng = common::rng(74);
    // (n, cin, cout, h, w, k, stride)
    let shapes = [
        (1, 5, 7, 11, 13, 3, 1),
        (2, 3, 4, 5, 6, 3, 1),
        (2, 13, 11, 9, 17, 3, 1),
        (1, 1, 1, 1, 1, 3, 1),
        (2, 7, 10, 8, 32, 3, 1),
        (1, 11, 5, 7, 9, 1, 1),
        (2, 19, 4, 16, 16, 1, 1),
        (2, 2, 3, 3, 5, 1, 1),
        (2, 9, 5, 17, 15, 3, 2),
        (1, 3, 10, 8, 9, 3, 2),
        (2, 18, 7, 32, 32, 3, 2),
        (1, 1, 1, 1, 1, 3, 2),
    ];
    for (n, cin, cout, h, w, k, stride) in shapes {
        let g = Conv2dGeom::new([n, cin, h, w], &[cout, cin, k, k], stride, k / 2).unwrap();
        assert!(bf16::weight_grad_applies(&g), "{g:?}");
        let x = randv(&mut rng, n * cin * h * w);
        let dy = randv(&mut rng, n * cout * g.ho * g.wo);
        let round = |v: &[f32]| v.iter().map(|&a| round_bf16(a)).collect::<Vec<f32>>();
        let abs = |v: &[f32]| v.iter().map(|a| a.abs()).collect::<Vec<f32>>();
        let (xr, dyr) = (round(&x), round(&dy));
        let wt = vec![0.0; cout * cin * k * k];
        let (_, want) = naive_backward(&g, &xr, &wt, &dyr);
        let (_, magnitude) = naive_backward(&g, &abs(&xr), &wt, &abs(&dyr));
        let start = randv(&mut rng, want.len());
        let mut dw = start.clone();
        bf16::weight_grad(&g, &x, &dy, &mut dw);
        let worst = dw
            .iter()
            .zip(&start)
            .zip(want.iter().zip(&magnitude))
            .map(|((&got, &s), (&b, &m))| ((got - s) as f64 - b).abs() / (m + s.abs() as f64).max(1e-30))
            .fold(0.0f64, f64::max);
        eprintln!("bf16 dW {g:?}: worst error {worst:.2e} of Σ|terms|");
        assert!(worst < 1e-6, "{g:?}: bf16 dW error {worst:e} of Σ|terms|");
        // Not the f32 result: the operands were rounded.
        let (_, exact) = naive_backward(&g, &x, &wt, &dy);
        let off =
            dw.iter().zip(&start).zip(&exact).map(|((&d, &s), &e)| ((d - s) as f64 - e).abs()).fold(0.0, f64::max);
        assert!(off > 1e-6, "{g:?}: the bf16 dW equals the f32 one");
    }
}

/// With the op's bf16 convs on and the AVX512-BF16 family, `choose` puts 3×3 weight gradients (stride
/// 1 and 2, the stem too) on the bf16 kernel and keeps 1×1 (GEMM is as fast) and tiny problems in f32.
#[test]
fn bf16_weight_grad_is_chosen_for_3x3_convs() {
    use hrk::host_isa::{with_bf16_kernels, Bf16Kernels};
    with_bf16_kernels(Bf16Kernels::Avx512Bf16, bf16_weight_grad_choices);
}

fn bf16_weight_grad_choices() {
    use hrk::host_isa::{bf16_kernels, Bf16Kernels};
    let on = bf16_kernels() == Bf16Kernels::Avx512Bf16;
    let pick = |n, cin, cout, h, w, k, s| {
        let g = Conv2dGeom::new([n, cin, h, w], &[cout, cin, k, k], s, k / 2).unwrap();
        choose(&g, Pass::BackwardWeight, Arithmetic::Bf16) == ConvAlgorithm::Bf16Direct
    };
    assert_eq!(pick(8, 18, 18, 64, 64, 3, 1), on);
    assert!(!pick(8, 72, 18, 16, 16, 1, 1));
    assert_eq!(pick(8, 18, 36, 64, 64, 3, 2), on);
    assert_eq!(pick(8, 3, 64, 256, 256, 3, 2), on, "the stem");
    assert!(!pick(1, 18, 18, 4, 4, 3, 1));
    let g = Conv2dGeom::new([8, 18, 64, 64], &[18, 18, 3, 3], 1, 1).unwrap();
    assert_ne!(choose(&g, Pass::BackwardWeight, Arithmetic::F32), ConvAlgorithm::Bf16Direct);
}
