//! Training augmentation: the random draws of the reference `__getitem__`, in its order,
//! from a small seeded generator so that every sample's draws depend only on
//! (seed, epoch, index) and parallel loading gives the same batches as serial loading.
//!
//! Reference order (Python `random`): scale = U(1-sf, 1+sf); rotation coin
//! `random() <= 0.6`, then (only if it passes) r = U(-rf, rf); flip coin `random() <= 0.5`
//! (drawn even when DATASET.FLIP is off, because the coin comes first in `and`).
//! The numbers themselves differ from Python's Mersenne Twister; the distribution and the
//! draw order are the same.

/// SplitMix64: tiny, fast, and good enough for augmentation draws.
#[derive(Clone, Debug)]
pub struct SplitMix64 {
    state: u64,
}

/// The SplitMix64 output function, also used to hash seeds together.
pub fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

const GOLDEN: u64 = 0x9e37_79b9_7f4a_7c15;

impl SplitMix64 {
    pub fn new(seed: u64) -> Self {
        Self { state: seed }
    }

    /// A generator for one (seed, epoch, stream) triple; distinct triples give unrelated streams.
    pub fn for_stream(seed: u64, epoch: u64, stream: u64) -> Self {
        let h = mix64(seed.wrapping_add(GOLDEN));
        let h = mix64(h ^ epoch.wrapping_mul(0xd1b5_4a32_d192_ed03).wrapping_add(GOLDEN));
        let h = mix64(h ^ stream.wrapping_mul(0x8cb9_2ba7_2f3d_8dd7).wrapping_add(GOLDEN));
        Self::new(h)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(GOLDEN);
        mix64(self.state)
    }

    /// Uniform in [0, 1) with 53 random bits (like Python's `random.random()`).
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Python's `random.uniform(a, b)`: a + (b - a)·random().
    pub fn uniform(&mut self, a: f64, b: f64) -> f64 {
        a + (b - a) * self.next_f64()
    }

    /// Uniform integer in [0, n) (n > 0), without modulo bias worth caring about for n < 2^32.
    pub fn below(&mut self, n: usize) -> usize {
        (((self.next_u64() >> 32) * n as u64) >> 32) as usize
    }
}

/// The augmentation of one sample.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Augmentation {
    /// Multiplies the (already ×1.25) scale.
    pub scale_mult: f64,
    /// Degrees, counter-clockwise; 0 = no rotation.
    pub rot: f64,
    pub flip: bool,
}

impl Augmentation {
    /// Test-time: nothing.
    pub const NONE: Augmentation = Augmentation { scale_mult: 1.0, rot: 0.0, flip: false };

    pub fn is_none(&self) -> bool {
        *self == Self::NONE
    }
}

/// The reference's draws, in its order, from `rng`.
pub fn draw_augmentation(rng: &mut SplitMix64, scale_factor: f64, rot_factor: f64, flip_enabled: bool) -> Augmentation {
    let scale_mult = rng.uniform(1.0 - scale_factor, 1.0 + scale_factor);
    let rot = if rng.next_f64() <= 0.6 { rng.uniform(-rot_factor, rot_factor) } else { 0.0 };
    let flip = rng.next_f64() <= 0.5 && flip_enabled;
    Augmentation { scale_mult, rot, flip }
}

/// The augmentation of dataset sample `index` in `epoch` for `seed`.
pub fn sample_augmentation(seed: u64, epoch: u64, index: usize, scale_factor: f64, rot_factor: f64, flip_enabled: bool) -> Augmentation {
    let mut rng = SplitMix64::for_stream(seed, epoch, index as u64);
    draw_augmentation(&mut rng, scale_factor, rot_factor, flip_enabled)
}

/// Sample order of an epoch: identity, or a Fisher–Yates shuffle seeded by (seed, epoch).
pub fn epoch_order(len: usize, seed: u64, epoch: u64, shuffle: bool) -> Vec<usize> {
    let mut order: Vec<usize> = (0..len).collect();
    if shuffle {
        // u64::MAX keeps the shuffle stream apart from every per-sample stream.
        let mut rng = SplitMix64::for_stream(seed, epoch, u64::MAX);
        for i in (1..len).rev() {
            let j = rng.below(i + 1);
            order.swap(i, j);
        }
    }
    order
}
