//! Tiny deterministic PRNG (SplitMix64). Own implementation so the synthetic data set is
//! bit-identical for a seed on every machine, independent of any external crate's algorithm.

pub(crate) struct Rng {
    state: u64,
}

impl Rng {
    /// A stream for one sample: mixing (seed, index) gives independent streams, so images can be
    /// rendered in parallel and still be identical to a sequential run.
    pub(crate) fn for_sample(seed: u64, index: u64) -> Rng {
        let mut mixer = Rng { state: seed ^ 0x5851_F42D_4C95_7F2D };
        let a = mixer.next_u64();
        let mut rng = Rng { state: a ^ index.wrapping_mul(0x9E37_79B9_7F4A_7C15) };
        // Warm up so nearby indices decorrelate immediately.
        rng.next_u64();
        rng
    }

    pub(crate) fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub(crate) fn uniform(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 * (1.0 / (1u64 << 24) as f32)
    }

    pub(crate) fn range(&mut self, lo: f32, hi: f32) -> f32 {
        lo + (hi - lo) * self.uniform()
    }

    pub(crate) fn chance(&mut self, p: f32) -> bool {
        self.uniform() < p
    }

    /// Approximately standard normal (Irwin–Hall with 4 terms, rescaled): cheap enough for
    /// per-pixel noise and smooth enough for shape jitter.
    pub(crate) fn normal(&mut self) -> f32 {
        let bits = self.next_u64();
        let mut sum = 0.0f32;
        for k in 0..4 {
            sum += ((bits >> (16 * k)) & 0xFFFF) as f32 * (1.0 / 65536.0);
        }
        (sum - 2.0) * 1.732_050_8
    }

    pub(crate) fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        let i = ((self.uniform() * items.len() as f32) as usize).min(items.len() - 1);
        &items[i]
    }
}
