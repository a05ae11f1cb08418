//! Helpers shared by the model and kernel tests: deterministic test values and a randomised HRNet.
#![allow(dead_code)]

use hrk::model::{HrNet, Slot};
use hrk::rng::Rng;
use hrk::Storage;

/// `n` deterministic values in [-1, 1) (xorshift, so no two seeds give shifted copies).
pub fn values(seed: u64, n: usize) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E3779B97F4A7C15) | 1;
    (0..n)
        .map(|_| {
            s ^= s >> 12;
            s ^= s << 25;
            s ^= s >> 27;
            ((s.wrapping_mul(0x2545F4914F6CDD1D) >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

/// Gives every tensor of the model a random, well-scaled value (BN statistics included), so folding
/// BN into the convs is exercised with non-trivial γ, β, μ, σ².
pub fn randomize(net: &mut HrNet, seed: u64) {
    let mut rng = Rng::new(seed);
    for i in 0..net.store.len() {
        if matches!(net.store.slot(i), Slot::Count(_)) {
            continue;
        }
        let name = net.store.name(i).to_string();
        let t = net.store.tensor(i);
        let shape = t.shape().to_vec();
        let fan_in: usize = shape.iter().skip(1).product::<usize>().max(1);
        let v: Vec<f32> = (0..t.numel())
            .map(|_| {
                (if shape.len() == 4 {
                    rng.normal() / (fan_in as f64).sqrt()
                } else if name.ends_with("running_var") || (name.ends_with(".weight") && shape.len() == 1) {
                    rng.range(0.5, 1.5)
                } else {
                    rng.range(-0.1, 0.1)
                }) as f32
            })
            .collect();
        net.store.tensor_mut(i).set_storage(Storage::f32(v)).unwrap();
    }
}
