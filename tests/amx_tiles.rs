//! The tile kernels through the whole bf16 inference engine: `Bf16Kernels::TileModel` (every machine
//! with AVX2) against the f32 engine, and AMX against the model bit for bit where the CPU has it.

mod common;
use common::model::{randomize, small_spec};
use common::TestValues;

use hrk::host_isa::{amx_usable, avx512bf16, bf16_kernels, with_bf16_kernels, Bf16Kernels};
use hrk::model::{HrNet, InferNet, Precision};
use hrk::Tensor;

/// The bf16 engine's heatmaps with `family`'s kernels. The engine runs on a pool thread (`rayon::scope`
/// from inside the pool stays on that thread), where the scoped family is set, as the convs choose their
/// kernels on the calling thread.
fn bf16_heatmaps(net: &HrNet, x: &Tensor, family: Bf16Kernels) -> Vec<f32> {
    rayon::scope(|_| {
        with_bf16_kernels(family, || {
            assert_eq!(bf16_kernels(), family);
            let engine = InferNet::with_precision(net, Precision::Bf16).unwrap();
            engine.forward(x).unwrap().to_f32_vec()
        })
    })
}

/// The bound of tests/perf_infer.rs's bf16 engine test: 3 % of the largest heatmap value.
#[test]
fn tile_model_engine_stays_near_f32() {
    let mut net = HrNet::new(&small_spec(8), 0).unwrap();
    randomize(&mut net, 31);
    let mut rng = common::rng(32);
    let x = Tensor::from_f32(&[2, 3, 64, 64], rng.normals(2 * 3 * 64 * 64)).unwrap();
    let want = InferNet::with_precision(&net, Precision::F32).unwrap().forward(&x).unwrap().to_f32_vec();
    let got = bf16_heatmaps(&net, &x, Bf16Kernels::TileModel);
    let scale = want.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    let dev = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
    eprintln!("tile-model bf16 vs f32 engine: max |Δ| {dev:e} of max |y| {scale:e} ({:.3} %)", 100.0 * dev / scale);
    assert!(dev > 0.0, "bf16 rounding changed nothing: the engine did not round");
    assert!(dev < 0.03 * scale, "bf16 deviates by {dev} (max |y| {scale})");
    if avx512bf16() {
        // Other kernels, other sums: the tile path really ran, and agrees with the vdpbf16ps one.
        let dots = bf16_heatmaps(&net, &x, Bf16Kernels::Avx512Bf16);
        let apart = got.iter().zip(&dots).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
        assert!(apart > 0.0, "the tile model gave the AVX512-BF16 engine's bits");
        assert!(apart < 0.03 * scale, "tile model vs AVX512-BF16 engine: {apart}");
    }
    if amx_usable() {
        let hw = bf16_heatmaps(&net, &x, Bf16Kernels::AmxTiles);
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&hw), bits(&got), "AMX engine vs tile-model engine");
    } else {
        eprintln!("AMX engine check skipped: no AMX on this CPU");
    }
}
