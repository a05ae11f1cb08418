//! Wall time of one f32 conv2d forward, called repeatedly from inside the rayon pool as the
//! inference engine calls it (all threads, `RAYON_NUM_THREADS` to change):
//!
//! `cargo run --release --example conv_probe -- CIN COUT STRIDE SIDE K ITERS [PATH]`
//!
//! PATH: `auto` (the conv op's dispatch, default), `gemm` (im2col + GEMM), `winograd` (F(2×2, 3×3)
//! with the weights transformed once, 3×3 stride 1 only). `PROBE_RESIDUAL=1` adds a residual to the
//! epilogue (bias and ReLU always). Prints µs per call and GFLOP/s of the direct convolution's FLOPs.

use hrk::ops::conv2d::cpu_kernel as cpu;
use hrk::ops::conv2d::direct::winograd;
use hrk::ops::Conv2dGeom;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let usage = "usage: conv_probe CIN COUT STRIDE SIDE K ITERS [auto|gemm|winograd]";
    let num = |i: usize| -> usize {
        args.get(i).and_then(|v| v.parse().ok()).unwrap_or_else(|| {
            eprintln!("{usage}");
            std::process::exit(2)
        })
    };
    let (cin, cout, stride, side, k, iters) = (num(0), num(1), num(2), num(3), num(4), num(5));
    let path = args.get(6).map_or("auto", String::as_str);
    let g = match Conv2dGeom::new([1, cin, side, side], &[cout, cin, k, k], stride, k / 2) {
        Ok(g) => g,
        Err(e) => {
            eprintln!("conv_probe: {e}");
            std::process::exit(2)
        }
    };
    if path == "winograd" && !winograd::applies(&g) {
        eprintln!("conv_probe: Winograd does not apply to {g:?}");
        std::process::exit(2)
    }
    // Deterministic values in [-0.5, 0.5).
    let values = |n: usize, seed: usize| -> Vec<f32> {
        (0..n).map(|i| ((i * 7919 + seed * 104729) % 1000) as f32 / 1000.0 - 0.5).collect()
    };
    let (x, w, b) = (values(cin * side * side, 1), values(cout * cin * k * k, 2), values(cout, 3));
    let res = values(cout * g.ho * g.wo, 4);
    let mut y = vec![0.0f32; cout * g.ho * g.wo];
    let residual = std::env::var("PROBE_RESIDUAL").is_ok_and(|v| v == "1").then_some(&res[..]);
    let ep = cpu::Epilogue { bias: Some(&b[..]), residual, relu: true };
    let mut u = Vec::new();
    if path == "winograd" {
        u = vec![0.0; winograd::transformed_len(cin, cout)];
        winograd::transform_weights(&w, cin, cout, &mut u);
    }
    let mut call = || match path {
        "winograd" => winograd::forward_transformed(&g, &x, &u, ep, &mut y),
        "gemm" => cpu::forward_fused_gemm(&g, &x, &w, ep, &mut y),
        _ => cpu::forward_fused(&g, &x, &w, ep, &mut y),
    };
    let secs = rayon::scope(|_| {
        for _ in 0..10 {
            call();
        }
        let t0 = std::time::Instant::now();
        for _ in 0..iters.max(1) {
            call();
        }
        t0.elapsed().as_secs_f64() / iters.max(1) as f64
    });
    println!(
        "{cin}->{cout} k{k} s{stride} @{side} {path}: {:.1} us, {:.1} GFLOP/s",
        secs * 1e6,
        2.0 * g.macs() as f64 / secs * 1e-9
    );
}
