use hrk::ops::conv2d::cpu;
use hrk::ops::Conv2dGeom;
fn main() {
    let a: Vec<usize> = std::env::args().skip(1).map(|v| v.parse().unwrap()).collect();
    let (cin, cout, stride, side, iters, gemm) = (a[0], a[1], a[2], a[3], a[4], a.get(5).copied().unwrap_or(0) == 1);
    let k = a.get(6).copied().unwrap_or(3);
    let g = Conv2dGeom::new([1, cin, side, side], &[cout, cin, k, k], stride, k / 2).unwrap();
    let x: Vec<f32> = (0..cin * side * side).map(|i| ((i * 7919) % 1000) as f32 / 1000.0 - 0.5).collect();
    let w: Vec<f32> = (0..cout * cin * k * k).map(|i| ((i * 104729) % 1000) as f32 / 1000.0 - 0.5).collect();
    let b = vec![0.1f32; cout];
    let mut y = vec![0.0f32; cout * g.ho * g.wo];
    let res = vec![0.25f32; cout * g.ho * g.wo];
    let with_res = std::env::var("RES").is_ok();
    let ep = cpu::Epilogue { bias: Some(&b[..]), residual: if with_res { Some(&res[..]) } else { None }, relu: true };
    for _ in 0..10 { cpu::forward_fused(&g, &x, &w, ep, &mut y); }
    let pooled = std::env::var("POOL").is_ok();
    let t0 = std::time::Instant::now();
    let wino = std::env::var("WT").is_ok();
    let mut u = vec![0.0; hrk::ops::conv2d::direct::winograd::transformed_len(cin, cout)];
    if wino { hrk::ops::conv2d::direct::winograd::transform_weights(&w, cin, cout, &mut u); }
    let mut body = || for _ in 0..iters {
        if wino { hrk::ops::conv2d::direct::winograd::forward_transformed(&g, &x, &u, ep, &mut y) }
        else if gemm { cpu::forward_fused_gemm(&g, &x, &w, ep, &mut y) } else { cpu::forward_fused(&g, &x, &w, ep, &mut y) }
    };
    if pooled { rayon::scope(|_| body()) } else { body() }
    let dt = t0.elapsed().as_secs_f64() / iters as f64;
    println!("{cin}->{cout} s{stride} @{side}: {:.1} us, {:.1} GFLOP/s", dt * 1e6, 2.0 * g.macs() as f64 / dt * 1e-9);
}
