//! The crate's one pseudo-random generator: SplitMix64, written here once, with a named constructor per
//! stream (weight init, augmentation, synthetic data, tests). Own implementation so every stream is
//! bit-identical for a seed on every platform, independent of any external crate's algorithm, and
//! cheap to seed per sample so parallel work gives the same numbers as serial work.
//!
//! Python's fixtures (../shared) are made by NumPy/Python generators and are read from disk, never
//! regenerated here, so nothing in this file needs to match Mersenne Twister.

const GOLDEN: u64 = 0x9E37_79B9_7F4A_7C15;

/// The SplitMix64 output function (a strong 64-bit mixer); also hashes seeds together.
pub fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rng {
    state: u64,
}

impl Rng {
    /// A generator for `seed` (weight init, benchmarks, gradient checks).
    pub fn new(seed: u64) -> Rng {
        Rng { state: seed ^ GOLDEN }
    }

    /// Weight initialisation of a model built from `seed`.
    pub fn for_init(seed: u64) -> Rng {
        Rng::new(seed)
    }

    /// The stream of one (seed, epoch, stream) triple; distinct triples give unrelated streams, so a
    /// sample's draws depend only on (run seed, epoch, sample index) and parallel loading gives the
    /// same batches as serial loading.
    pub fn for_augment(seed: u64, epoch: u64, stream: u64) -> Rng {
        let h = mix64(seed.wrapping_add(GOLDEN));
        let h = mix64(h ^ epoch.wrapping_mul(0xD1B5_4A32_D192_ED03).wrapping_add(GOLDEN));
        let h = mix64(h ^ stream.wrapping_mul(0x8CB9_2BA7_2F3D_8DD7).wrapping_add(GOLDEN));
        Rng { state: h }
    }

    /// The stream of synthetic image `index` of the data set made from `seed`: mixing (seed, index)
    /// gives independent streams, so images can be rendered in parallel and match a sequential run.
    pub fn for_synth(seed: u64, index: u64) -> Rng {
        let mut mixer = Rng { state: seed ^ 0x5851_F42D_4C95_7F2D };
        let a = mixer.next_u64();
        let mut rng = Rng { state: a ^ index.wrapping_mul(GOLDEN) };
        // Warm up so nearby indices decorrelate immediately.
        rng.next_u64();
        rng
    }

    /// Test data and fuzzing: one stream per seed.
    pub fn for_tests(seed: u64) -> Rng {
        Rng::new(seed)
    }

    pub fn state(&self) -> u64 {
        self.state
    }
    pub fn from_state(state: u64) -> Rng {
        Rng { state }
    }

    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(GOLDEN);
        mix64(self.state)
    }
    /// Uniform in [0, 1) with 53 random bits (like Python's `random.random()`).
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }
    /// Uniform in [lo, hi): `lo + (hi - lo)·uniform()`, Python's `random.uniform`.
    pub fn range(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.uniform()
    }
    /// Standard normal (Box–Muller).
    pub fn normal(&mut self) -> f64 {
        let u1 = self.uniform().max(f64::MIN_POSITIVE);
        let u2 = self.uniform();
        (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
    }
    /// Uniform integer in [0, n).
    pub fn below(&mut self, n: usize) -> usize {
        (self.uniform() * n as f64) as usize % n.max(1)
    }
    /// A uniformly chosen element (panics on an empty slice, like indexing).
    pub fn pick<'a, T>(&mut self, v: &'a [T]) -> &'a T {
        &v[self.below(v.len())]
    }
    /// Fisher–Yates shuffle.
    pub fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            let j = self.below(i + 1);
            v.swap(i, j);
        }
    }

    // Cheap f32 draws: the synthetic renderer takes millions per data set (per-pixel noise).

    /// Uniform in [0, 1) with 24 random bits.
    pub fn uniform_f32(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 * (1.0 / (1u64 << 24) as f32)
    }
    pub fn range_f32(&mut self, lo: f32, hi: f32) -> f32 {
        lo + (hi - lo) * self.uniform_f32()
    }
    /// True with probability `p`.
    pub fn chance_f32(&mut self, p: f32) -> bool {
        self.uniform_f32() < p
    }
    /// Approximately standard normal (Irwin–Hall with 4 terms from one draw, rescaled): cheap enough
    /// for per-pixel noise and smooth enough for shape jitter.
    pub fn normal_f32(&mut self) -> f32 {
        let bits = self.next_u64();
        let mut sum = 0.0f32;
        for k in 0..4 {
            sum += ((bits >> (16 * k)) & 0xFFFF) as f32 * (1.0 / 65536.0);
        }
        (sum - 2.0) * 1.732_050_8
    }
    /// A uniformly chosen element from one [`Rng::uniform_f32`] draw (panics on an empty slice).
    pub fn pick_f32<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        let i = ((self.uniform_f32() * items.len() as f32) as usize).min(items.len() - 1);
        &items[i]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_are_reproducible_and_distinct() {
        let draw = |mut r: Rng| (0..4).map(|_| r.next_u64()).collect::<Vec<_>>();
        assert_eq!(draw(Rng::for_augment(1, 2, 3)), draw(Rng::for_augment(1, 2, 3)));
        assert_ne!(draw(Rng::for_augment(1, 2, 3)), draw(Rng::for_augment(1, 2, 4)));
        assert_ne!(draw(Rng::for_synth(1, 0)), draw(Rng::for_synth(1, 1)));
        let mut r = Rng::for_init(7);
        r.next_u64();
        assert_eq!(draw(Rng::from_state(r.state())), draw(r));
    }

    #[test]
    fn draws_stay_in_range() {
        let mut r = Rng::for_tests(5);
        for _ in 0..1000 {
            assert!((0.0..1.0).contains(&r.uniform()));
            assert!((0.0..1.0).contains(&r.uniform_f32()));
            assert!(r.below(7) < 7);
        }
        let mut v: Vec<usize> = (0..50).collect();
        r.shuffle(&mut v);
        v.sort_unstable();
        assert_eq!(v, (0..50).collect::<Vec<_>>());
    }
}
