//! MultiStepLR with the reference's epoch semantics.
//!
//! The reference (tools/train.py, PyTorch < 1.1 idiom) builds `MultiStepLR(opt, LR_STEP, LR_FACTOR,
//! last_epoch = BEGIN_EPOCH − 1)` and calls `scheduler.step()` at the START of every epoch, before
//! training it. PyTorch's closed form is `lr = base · γ^bisect_right(milestones, last_epoch)`, and
//! during 0-based epoch `e` the scheduler's `last_epoch` is `e + 1`. So LR_STEP [30, 50] drops the
//! LR at 0-based epochs 29 and 49 (not 30 and 50); hrk reproduces exactly that.

#[derive(Clone, Debug, PartialEq)]
pub struct MultiStepLr {
    pub base_lr: f64,
    pub milestones: Vec<usize>,
    pub gamma: f64,
}

impl MultiStepLr {
    pub fn new(base_lr: f64, milestones: &[usize], gamma: f64) -> Self {
        let mut m = milestones.to_vec();
        m.sort_unstable();
        Self { base_lr, milestones: m, gamma }
    }

    /// The scheduler's `last_epoch` while 0-based epoch `epoch` trains (stepped before the epoch).
    pub fn position_for_epoch(epoch: usize) -> usize {
        epoch + 1
    }

    /// The LR used throughout 0-based epoch `epoch`.
    pub fn lr_for_epoch(&self, epoch: usize) -> f64 {
        let pos = Self::position_for_epoch(epoch);
        // bisect_right: milestones ≤ pos.
        let drops = self.milestones.iter().filter(|&&m| m <= pos).count();
        self.base_lr * self.gamma.powi(drops as i32)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drops_one_epoch_early_like_the_reference() {
        let s = MultiStepLr::new(1e-4, &[30, 50], 0.1);
        for e in 0..60 {
            let want = if e < 29 {
                1e-4
            } else if e < 49 {
                1e-4 * 0.1
            } else {
                1e-4 * 0.1 * 0.1
            };
            assert_eq!(s.lr_for_epoch(e), want, "epoch {e}");
        }
    }
}
