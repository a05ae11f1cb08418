//! CPU conv2d throughput on the HRNetV2-W18 shapes (PERFORMANCE.md), forward and backward.
//! Throughput is declared in FLOPs (2·MACs; backward = dX + dW = 2× forward), so criterion's
//! "elem/s" reads as FLOP/s.
//!
//! Each shape runs two paths: `gemm` (im2col + GEMM, the reference rung) and `auto` (what the conv
//! op dispatches: the direct 3×3 kernels where they apply, unless `HRK_CONV_DIRECT=0`), and
//! forward 3×3 stride-1 shapes a third, `winograd` (F(2×2, 3×3) with the weights transformed once,
//! as the inference engine runs them), and where the CPU has AVX512-BF16 a fourth, `bf16` (the
//! `--precision bf16` kernels: Winograd where f32 takes it, else direct, weights packed once; for the
//! `weight` pass, the weight gradient alone, the bf16 weight gradient). Filter with e.g. `cargo bench --bench conv -- 'forward/branch1.*b8'`.
//!
//! On a loaded machine wall-clock rates mean little; `HRK_BENCH_CPU=1` instead prints GFLOP per
//! CPU-second summed over the process's threads (from /proc/self/task/*/schedstat), which other
//! processes barely disturb. Run it with `RAYON_NUM_THREADS=1` so no idle worker spins:
//! `HRK_BENCH_CPU=1 RAYON_NUM_THREADS=1 cargo bench --bench conv -- branch1`.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use hrk::ops::conv2d::algorithm::{choose, Arithmetic, ConvAlgorithm, Pass};
use hrk::ops::conv2d::cpu_kernel as cpu;
use hrk::ops::conv2d::direct::{bf16, winograd};
use hrk::ops::Conv2dGeom;
use std::hint::black_box;
use std::time::Duration;

/// (name, cin, cout, k, stride, input side)
const SHAPES: &[(&str, usize, usize, usize, usize, usize)] = &[
    ("conv1_3x3s2_3-64@256", 3, 64, 3, 2, 256),
    ("stem2_3x3s2_64-64@128", 64, 64, 3, 2, 128),
    ("layer1_3x3_64@64", 64, 64, 3, 1, 64),
    ("branch1_3x3_18@64", 18, 18, 3, 1, 64),
    ("branch2_3x3_36@32", 36, 36, 3, 1, 32),
    ("branch3_3x3_72@16", 72, 72, 3, 1, 16),
    ("branch4_3x3_144@8", 144, 144, 3, 1, 8),
    ("down_3x3s2_18-36@64", 18, 36, 3, 2, 64),
    ("layer1_1x1_256-64@64", 256, 64, 1, 1, 64),
    ("layer1_1x1_64-256@64", 64, 256, 1, 1, 64),
    ("head_1x1_270@64", 270, 270, 1, 1, 64),
];

fn data(n: usize, seed: u32) -> Vec<f32> {
    // Deterministic, never zero (denormal-free) values.
    (0..n).map(|i| ((i as u32).wrapping_mul(2654435761).wrapping_add(seed) >> 8) as f32 / 16777216.0 - 0.5).collect()
}

fn geom(n: usize, cin: usize, cout: usize, k: usize, stride: usize, side: usize) -> Conv2dGeom {
    Conv2dGeom::new([n, cin, side, side], &[cout, cin, k, k], stride, k / 2).expect("valid shape")
}

/// CPU time of all this process's threads, in seconds.
fn cpu_seconds() -> f64 {
    let mut ns = 0u64;
    for t in std::fs::read_dir("/proc/self/task").into_iter().flatten().flatten() {
        if let Ok(s) = std::fs::read_to_string(t.path().join("schedstat")) {
            ns += s.split_whitespace().next().and_then(|v| v.parse().ok()).unwrap_or(0);
        }
    }
    ns as f64 * 1e-9
}

/// GFLOP per CPU-second of `f`, run until ≥ 0.3 CPU-seconds (after one warm-up call); the median
/// of 5 such rounds.
fn cpu_rate(flop: u64, mut f: impl FnMut()) -> f64 {
    f();
    let mut rates: Vec<f64> = (0..5)
        .map(|_| {
            let (t0, mut k) = (cpu_seconds(), 0);
            while cpu_seconds() - t0 < 0.3 || k == 0 {
                f();
                k += 1;
            }
            k as f64 * flop as f64 / (cpu_seconds() - t0) * 1e-9
        })
        .collect();
    rates.sort_by(f64::total_cmp);
    rates[2]
}

fn conv(c: &mut Criterion) {
    let cpu_mode = hrk::switches::bench_cpu();
    // Space-separated words that must all occur in the id (criterion takes one filter argument).
    let filter: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .flat_map(|a| a.split_whitespace().map(String::from).collect::<Vec<_>>())
        .collect();
    // "weight": the weight gradient alone (dx not asked), where `bf16` is `bf16::weight_grad`.
    for (pass, batches) in [("forward", &[1usize, 8][..]), ("backward", &[1, 8][..]), ("weight", &[8][..])] {
        let mut group = c.benchmark_group(format!("conv2d_{pass}"));
        group.sample_size(10).warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(2));
        for &n in batches {
            for &(name, cin, cout, k, stride, side) in SHAPES {
                let g = geom(n, cin, cout, k, stride, side);
                let x = data(n * cin * side * side, 1);
                let w = data(cout * cin * k * k, 2);
                let b = data(cout, 3);
                let dy = data(n * cout * g.ho * g.wo, 4);
                let mut y = vec![0.0f32; n * cout * g.ho * g.wo];
                let flop = 2 * g.macs() * if pass == "backward" { 2 } else { 1 };
                group.throughput(Throughput::Elements(flop));
                let wino = pass == "forward" && choose(&g, Pass::Inference, Arithmetic::F32) == ConvAlgorithm::Winograd;
                let mut u = vec![0.0f32; if wino { winograd::transformed_len(cin, cout) } else { 0 }];
                if wino {
                    winograd::transform_weights(&w, cin, cout, &mut u);
                }
                let packed = bf16::Bf16Weights::default();
                let with_bf16 = bf16::available()
                    && match pass {
                        "forward" => bf16::applies(&g),
                        "weight" => bf16::weight_grad_applies(&g),
                        _ => false,
                    };
                let want_dx = pass == "backward";
                for path in ["gemm", "auto", "winograd", "bf16"] {
                    if (path == "winograd" && !wino) || (path == "bf16" && !with_bf16) {
                        continue;
                    }
                    let gemm = path == "gemm";
                    if cpu_mode {
                        let id = format!("conv2d_{pass}/{name}/b{n}/{path}");
                        if !filter.iter().all(|f| id.contains(f.as_str())) {
                            continue;
                        }
                        let (mut dx, mut dw) = (vec![0.0f32; x.len()], vec![0.0f32; w.len()]);
                        let ep = cpu::Epilogue { bias: Some(&b[..]), residual: None, relu: false };
                        let rate = cpu_rate(flop, || match (pass == "forward", gemm) {
                            (true, _) if path == "winograd" => {
                                winograd::forward_transformed(&g, black_box(&x), &u, ep, &mut y)
                            }
                            (true, _) if path == "bf16" => bf16::forward(&g, black_box(&x), &w, &packed, ep, &mut y),
                            (false, _) if path == "bf16" => bf16::weight_grad(&g, black_box(&x), &dy, &mut dw),
                            (true, true) => cpu::forward_fused_gemm(&g, black_box(&x), &w, ep, &mut y),
                            (true, false) => cpu::forward_fused(&g, black_box(&x), &w, ep, &mut y),
                            (false, true) => {
                                let dx = want_dx.then_some(&mut dx[..]);
                                cpu::backward_gemm(&g, black_box(&x), &w, &dy, dx, Some(&mut dw), None)
                            }
                            (false, false) => cpu::backward(
                                &g,
                                black_box(&x),
                                &w,
                                &dy,
                                want_dx.then_some(&mut dx[..]),
                                Some(&mut dw),
                                None,
                            ),
                        });
                        println!("{id:<48} {rate:7.1} GFLOP/CPU-s");
                        continue;
                    }
                    group.bench_with_input(BenchmarkId::new(name, format!("b{n}/{path}")), &n, |bch, _| {
                        if pass == "forward" {
                            let ep = cpu::Epilogue { bias: Some(&b[..]), residual: None, relu: false };
                            bch.iter(|| {
                                if path == "winograd" {
                                    winograd::forward_transformed(&g, black_box(&x), &u, ep, &mut y)
                                } else if path == "bf16" {
                                    bf16::forward(&g, black_box(&x), &w, &packed, ep, &mut y)
                                } else if gemm {
                                    cpu::forward_fused_gemm(&g, black_box(&x), &w, ep, &mut y)
                                } else {
                                    cpu::forward_fused(&g, black_box(&x), &w, ep, &mut y)
                                }
                            })
                        } else {
                            let mut dx = vec![0.0f32; x.len()];
                            let mut dw = vec![0.0f32; w.len()];
                            bch.iter(|| {
                                dw.fill(0.0);
                                let dx = want_dx.then_some(&mut dx[..]);
                                if path == "bf16" {
                                    bf16::weight_grad(&g, black_box(&x), &dy, &mut dw)
                                } else if gemm {
                                    cpu::backward_gemm(&g, black_box(&x), &w, &dy, dx, Some(&mut dw), None)
                                } else {
                                    cpu::backward(&g, black_box(&x), &w, &dy, dx, Some(&mut dw), None)
                                }
                            })
                        }
                    });
                }
            }
        }
        group.finish();
    }
}

criterion_group!(benches, conv);
criterion_main!(benches);
