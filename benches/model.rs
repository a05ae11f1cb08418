//! Whole HRNetV2-W18 (98 joints, 256²): fast inference at batch 1 and 8, training step at batch 8.
//! Throughput in FLOPs (2·MACs from the conv geometry), so "elem/s" reads as FLOP/s.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use hrk::model::{HrNet, HrnetSpec, InferNet};
use hrk::rng::Rng;
use hrk::Tensor;
use std::time::Duration;

fn random(shape: &[usize], rng: &mut Rng) -> Tensor {
    let n: usize = shape.iter().product();
    Tensor::from_f32(shape, (0..n).map(|_| rng.normal() as f32).collect()).expect("shape fits")
}

fn model(c: &mut Criterion) {
    let mut net = HrNet::new(&HrnetSpec::w18(98), 0).expect("W18 builds");
    let fast = InferNet::new(&net).expect("folds");
    let macs = net.macs(256, 256).expect("geometry");
    let mut rng = Rng::new(1);
    let mut group = c.benchmark_group("hrnet_w18");
    group.sample_size(10).warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(5));
    for n in [1u64, 8] {
        let x = random(&[n as usize, 3, 256, 256], &mut rng);
        group.throughput(Throughput::Elements(2 * macs * n));
        group.bench_function(format!("infer_b{n}"), |b| b.iter(|| fast.forward(&x).expect("forward")));
    }
    let x = random(&[8, 3, 256, 256], &mut rng);
    let target = random(&[8, 98, 64, 64], &mut rng);
    let mut adam = hrk::optim::Adam::new(1e-4, 0.0);
    let train_macs = 3 * macs - net.first_conv_macs(256, 256).expect("geometry");
    group.throughput(Throughput::Elements(2 * train_macs * 8));
    group.measurement_time(Duration::from_secs(20));
    group.bench_function("train_step_b8", |b| {
        b.iter(|| hrk::cli::bench::train_step(&mut net, &mut adam, &x, &target).expect("step"))
    });
    group.finish();
}

criterion_group!(benches, model);
criterion_main!(benches);
