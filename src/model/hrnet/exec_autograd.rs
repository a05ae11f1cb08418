//! The autograd engine: every node through `ops::*`, recording the tape (training and gradient
//! checks) or not (under `no_grad`). `train` selects BN batch statistics and updates the running
//! buffers and counters in the store.

use super::plan::ConvBn;
use super::walk::{Executor, Term};
use crate::model::store::Store;
use crate::ops;
use crate::tensor::Tensor;
use anyhow::{anyhow, Result};

/// The official code's BN momentum for this model.
pub const BN_MOMENTUM: f64 = 0.01;

/// Where the named intermediate activations of the parity cases go (`eval_act.*` names).
pub type ActivationSink<'a> = Option<&'a mut Vec<(String, Tensor)>>;

pub(super) struct AutogradExec<'a> {
    pub store: &'a mut Store,
    pub train: bool,
    pub sink: ActivationSink<'a>,
}

impl AutogradExec<'_> {
    /// Adds a fuse-row term to the sum, left to right; the row's last term brings its ReLU.
    fn accumulate(sum: &mut Option<Tensor>, term: Tensor, ends_row: bool) -> Result<()> {
        *sum = Some(match sum.take() {
            None if ends_row => ops::relu(&term)?,
            None => term,
            Some(a) if ends_row => ops::elementwise::add_relu(&a, &term)?,
            Some(a) => ops::add(&a, &term)?,
        });
        Ok(())
    }
}

impl Executor for AutogradExec<'_> {
    type Act = Tensor;
    type Conv = ConvBn;
    type Row = Option<Tensor>;

    fn conv(&mut self, l: &ConvBn, x: &Tensor) -> Result<Tensor> {
        let c = &l.conv;
        let w = self.store.tensor(c.weight).clone();
        let bias = c.bias.map(|b| self.store.tensor(b).clone());
        let Some(bn) = l.bn else {
            let y = ops::conv2d(x, &w, bias.as_ref(), c.stride, c.pad)?;
            return if l.relu { ops::relu(&y) } else { Ok(y) };
        };
        let (g, b) = (self.store.tensor(bn.gamma).clone(), self.store.tensor(bn.beta).clone());
        if self.train {
            // conv2d, then BN with its ReLU as one op (one pass each way on the CPU); on a GPU the BN's
            // batch statistics come from the conv kernel's epilogue (conv_batch_norm_train).
            let (rm, rv) = self.store.two_tensors_mut(bn.running_mean, bn.running_var);
            let y = ops::batchnorm::conv_batch_norm_train(
                x,
                &w,
                bias.as_ref(),
                c.stride,
                c.pad,
                &g,
                &b,
                rm,
                rv,
                BN_MOMENTUM,
                ops::BN_EPS,
                l.relu,
            )?;
            self.store.bump_count(bn.batches_tracked);
            return Ok(y);
        }
        let y = ops::conv2d(x, &w, bias.as_ref(), c.stride, c.pad)?;
        let (rm, rv) = (self.store.tensor(bn.running_mean), self.store.tensor(bn.running_var));
        let y = ops::batch_norm_eval(&y, &g, &b, rm, rv, ops::BN_EPS)?;
        if l.relu {
            ops::relu(&y)
        } else {
            Ok(y)
        }
    }

    fn block_out(&mut self, last: &ConvBn, y: &Tensor, x: &Tensor, downsample: Option<&ConvBn>) -> Result<Tensor> {
        let y = self.conv(last, y)?;
        let shortcut = match downsample {
            Some(d) => self.conv(d, x)?,
            None => x.clone(),
        };
        ops::elementwise::add_relu(&y, &shortcut)
    }

    fn copy(&mut self, x: &Tensor) -> Result<Tensor> {
        Ok(x.clone())
    }

    fn row_begin(&mut self, _row: usize, _target: &Tensor) -> Result<Option<Tensor>> {
        Ok(None)
    }

    fn row_identity(&mut self, sum: &mut Option<Tensor>, y: &Tensor, term: Term) -> Result<()> {
        Self::accumulate(sum, y.clone(), term.ends_row)
    }

    fn row_up(
        &mut self, sum: &mut Option<Tensor>, conv: &ConvBn, y: &Tensor, target: &Tensor, term: Term,
    ) -> Result<()> {
        let size = [target.shape()[2], target.shape()[3]];
        let t = ops::upsample_bilinear(&self.conv(conv, y)?, size)?;
        Self::accumulate(sum, t, term.ends_row)
    }

    fn row_down(&mut self, sum: &mut Option<Tensor>, last_link: &ConvBn, y: &Tensor, term: Term) -> Result<()> {
        let t = self.conv(last_link, y)?;
        Self::accumulate(sum, t, term.ends_row)
    }

    fn row_end(&mut self, sum: Option<Tensor>, target: &Tensor) -> Result<Tensor> {
        sum.ok_or_else(|| anyhow!("hrnet: an empty fuse row for a branch of shape {:?}", target.shape()))
    }

    fn head_input(&mut self, branches: &[Tensor]) -> Result<Tensor> {
        let (first, rest) = branches.split_first().ok_or_else(|| anyhow!("hrnet: the head got no branch"))?;
        let size = [first.shape()[2], first.shape()[3]];
        let mut parts = vec![first.clone()];
        for y in rest {
            parts.push(ops::upsample_bilinear(y, size)?);
        }
        ops::concat_channels(&parts.iter().collect::<Vec<_>>())
    }

    fn record(&mut self, name: impl FnOnce() -> String, x: &Tensor) {
        if let Some(sink) = self.sink.as_deref_mut() {
            sink.push((name(), x.clone()));
        }
    }
}
