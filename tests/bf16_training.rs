//! `hrk train --precision bf16`: the conv op's forward, input- and weight-gradient convs on the bf16 kernels
//! (process-wide switch, hence this test binary of its own), against the same op in f32.

use hrk::ops::conv2d::{bf16_convs, conv2d, direct::bf16, with_bf16_convs};
use hrk::Tensor;

mod common;
use common::TestValues;

/// y, dx, dW, db of one conv under an MSE loss against 0.5.
fn grads(x: &[f32], w: &[f32], b: &[f32], xs: [usize; 4], ws: [usize; 4], stride: usize) -> [Vec<f32>; 4] {
    let x = Tensor::from_f32(&xs, x.to_vec()).unwrap().requires_grad();
    let w = Tensor::from_f32(&ws, w.to_vec()).unwrap().requires_grad();
    let b = Tensor::from_f32(&[ws[0]], b.to_vec()).unwrap().requires_grad();
    let y = conv2d(&x, &w, Some(&b), stride, ws[2] / 2).unwrap();
    let target = Tensor::from_f32(y.shape(), vec![0.5; y.numel()]).unwrap();
    let loss = hrk::ops::mse_loss(&y, &target).unwrap();
    let g = hrk::backward(&loss).unwrap();
    let get = |t: &Tensor| g.get(t).expect("gradient").to_f32_vec();
    [y.to_f32_vec(), get(&x), get(&w), get(&b)]
}

fn rel(a: &[f32], b: &[f32]) -> f32 {
    let scale = b.iter().fold(1e-30f32, |m, v| m.max(v.abs()));
    a.iter().zip(b).fold(0.0f32, |m, (p, q)| m.max((p - q).abs())) / scale
}

#[test]
fn bf16_convs_stay_near_f32_and_switch_back() {
    if !bf16::available() {
        eprintln!("skipped: this CPU has no AVX512-BF16 (or HRK_NO_AVX512 is set); training stays f32");
        return;
    }
    let mut rng = common::rng(81);
    // (n, cin, cout, side, k, stride): direct 3×3, Winograd-sized 3×3 (≥ 32 channels, width 32),
    // stride 2 (bf16 forward, f32 backward), 1×1 — all with ≥ 10×10 outputs, where the op takes bf16.
    for (n, cin, cout, side, k, stride) in
        [(2, 5, 7, 13, 3, 1), (2, 33, 6, 32, 3, 1), (2, 9, 4, 21, 3, 2), (3, 7, 11, 11, 1, 1)]
    {
        let (xs, ws) = ([n, cin, side, side], [cout, cin, k, k]);
        let x = rng.normals(xs.iter().product());
        let w = rng.normals(ws.iter().product());
        let b = rng.normals(cout);
        let f32_run = with_bf16_convs(false, || grads(&x, &w, &b, xs, ws, stride));
        let bf16_run = with_bf16_convs(true, || {
            assert!(bf16_convs());
            grads(&x, &w, &b, xs, ws, stride)
        });
        assert!(!bf16_convs(), "the bf16 convs stay on after with_bf16_convs");
        assert_eq!(grads(&x, &w, &b, xs, ws, stride), f32_run, "{xs:?} k{k} s{stride}: f32 again differs");
        for (name, (got, want)) in ["y", "dx", "dW", "db"].iter().zip(bf16_run.iter().zip(&f32_run)) {
            let e = rel(got, want);
            eprintln!("{xs:?} k{k} s{stride} {name}: bf16 vs f32 {e:.2e} of max");
            // Operands rounded to 8 significant bits: a few 2⁻⁹ of the largest value at most.
            assert!(e < 2e-2, "{xs:?} k{k} s{stride} {name}: bf16 deviates {e:e}");
        }
        assert!(bf16_run[0] != f32_run[0], "{xs:?} k{k} s{stride}: the forward did not run in bf16");
        if stride == 1 {
            assert!(bf16_run[1] != f32_run[1], "{xs:?} k{k}: dx did not run in bf16");
        }
        // The 3×3 stride-1 weight gradient from 512 positions over the batch (`algorithm::choose`).
        if stride == 1 && k == 3 && n * side * side >= 512 {
            assert!(bf16_run[2] != f32_run[2], "{xs:?} k{k}: dW did not run in bf16");
        }
    }
    // The tile family on the software model of AMX: forward, dx and dW on the tile kernels.
    use hrk::host_isa::{bf16_kernels, with_bf16_kernels, Bf16Kernels};
    let (xs, ws) = ([2, 9, 16, 16], [5, 9, 3, 3]);
    let (x, w, b) = (rng.normals(2 * 9 * 256), rng.normals(5 * 9 * 9), rng.normals(5));
    let f32_run = grads(&x, &w, &b, xs, ws, 1);
    let tile_run = with_bf16_kernels(Bf16Kernels::TileModel, || {
        (bf16_kernels() == Bf16Kernels::TileModel).then(|| with_bf16_convs(true, || grads(&x, &w, &b, xs, ws, 1)))
    });
    let Some(tile_run) = tile_run else {
        eprintln!("skipped: the tile model does not run on this CPU (no AVX2)");
        return;
    };
    for (name, (got, want)) in ["y", "dx", "dW", "db"].iter().zip(tile_run.iter().zip(&f32_run)) {
        let e = rel(got, want);
        eprintln!("tile model {xs:?} {name}: bf16 vs f32 {e:.2e} of max");
        assert!(e < 2e-2, "tile model {xs:?} {name}: bf16 deviates {e:e}");
    }
    for (i, name) in [(0, "y"), (1, "dx"), (2, "dW")] {
        assert!(tile_run[i] != f32_run[i], "tile model: {name} did not run in bf16");
    }
}
