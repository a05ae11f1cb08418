//! TRAIN.OPTIMIZER: Adam or SGD behind one type, as the trainer steps, checkpoints and restores it.

use crate::config::{Config, OptimizerKind};
use crate::host_tensor::HostTensor;
use crate::optim::{Adam, Sgd, SplitStep};
use crate::tensor::{Storage, Tensor};
use anyhow::Result;

pub(super) enum Optimizer {
    Adam(Adam),
    Sgd(Sgd),
}

impl Optimizer {
    pub(super) fn from_config(cfg: &Config) -> Self {
        let t = &cfg.train;
        match t.optimizer {
            // The reference's Adam ignores WD and MOMENTUM (official lib/utils/utils.py `get_optimizer`:
            // `optim.Adam(params, lr)`).
            OptimizerKind::Adam => Optimizer::Adam(Adam::new(t.lr, 0.0)),
            OptimizerKind::Sgd => Optimizer::Sgd(Sgd::new(t.lr, t.momentum, t.wd, t.nesterov)),
        }
    }
    pub(super) fn name(&self) -> &'static str {
        match self {
            Optimizer::Adam(_) => "adam",
            Optimizer::Sgd(_) => "sgd",
        }
    }
    pub(super) fn set_lr(&mut self, lr: f64) {
        match self {
            Optimizer::Adam(a) => a.lr = lr,
            Optimizer::Sgd(s) => s.lr = lr,
        }
    }
    pub(super) fn step(&mut self, params: &mut [&mut Tensor], grads: &[&Storage]) -> Result<()> {
        match self {
            Optimizer::Adam(a) => a.step(params, grads),
            Optimizer::Sgd(s) => s.step(params, grads),
        }
    }
    pub(super) fn split(&mut self) -> &mut dyn SplitStep {
        match self {
            Optimizer::Adam(a) => a,
            Optimizer::Sgd(s) => s,
        }
    }
    pub(super) fn state(&self) -> Vec<(String, HostTensor)> {
        match self {
            Optimizer::Adam(a) => a.state(),
            Optimizer::Sgd(s) => s.state(),
        }
    }
    pub(super) fn load_state(&mut self, state: &[(String, HostTensor)], params: &[&Tensor]) -> Result<()> {
        match self {
            Optimizer::Adam(a) => a.load_state(state, params),
            Optimizer::Sgd(s) => s.load_state(state, params),
        }
    }
}
