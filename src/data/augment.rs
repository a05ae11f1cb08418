//! Training augmentation: the random draws of the reference `__getitem__`, in its order,
//! from a small seeded generator so that every sample's draws depend only on
//! (seed, epoch, index) and parallel loading gives the same batches as serial loading.
//!
//! Reference order (Python `random`): scale = U(1-sf, 1+sf); rotation coin
//! `random() <= 0.6`, then (only if it passes) r = U(-rf, rf); flip coin `random() <= 0.5`
//! (drawn even when DATASET.FLIP is off, because the coin comes first in `and`).
//! The numbers themselves differ from Python's Mersenne Twister; the distribution and the
//! draw order are the same.

use crate::rng::Rng;

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
pub fn draw_augmentation(rng: &mut Rng, scale_factor: f64, rot_factor: f64, flip_enabled: bool) -> Augmentation {
    let scale_mult = rng.range(1.0 - scale_factor, 1.0 + scale_factor);
    let rot = if rng.uniform() <= 0.6 { rng.range(-rot_factor, rot_factor) } else { 0.0 };
    let flip = rng.uniform() <= 0.5 && flip_enabled;
    Augmentation { scale_mult, rot, flip }
}

/// The augmentation of dataset sample `index` in `epoch` for `seed`.
pub fn sample_augmentation(
    seed: u64, epoch: u64, index: usize, scale_factor: f64, rot_factor: f64, flip_enabled: bool,
) -> Augmentation {
    let mut rng = Rng::for_augment(seed, epoch, index as u64);
    draw_augmentation(&mut rng, scale_factor, rot_factor, flip_enabled)
}

/// Sample order of an epoch: identity, or a Fisher–Yates shuffle seeded by (seed, epoch).
pub fn epoch_order(len: usize, seed: u64, epoch: u64, shuffle: bool) -> Vec<usize> {
    let mut order: Vec<usize> = (0..len).collect();
    if shuffle {
        // u64::MAX keeps the shuffle stream apart from every per-sample stream.
        Rng::for_augment(seed, epoch, u64::MAX).shuffle(&mut order);
    }
    order
}
