//! What the tape records: each op output that needs a gradient carries a `Node` (its backward half
//! and the edges to its inputs). Recording is on unless `no_grad` turns it off. `autograd` walks these
//! nodes backward; this side only builds them, so the tensor needs nothing from the walk.

use crate::storage::Storage;
use crate::tensor::Tensor;
use anyhow::Result;
use std::cell::{Cell, RefCell};
use std::sync::{Arc, Mutex};

/// The backward half of a recorded op.
pub trait BackwardOp: Send + Sync {
    fn name(&self) -> &'static str;
    /// The name the debug trace records the output under (a fused op reports the op whose output
    /// it produces, e.g. "relu" for BN+ReLU).
    fn trace_name(&self) -> &'static str {
        self.name()
    }
    /// Gradients w.r.t. each input, given the output's gradient, which the op owns (the engine no longer
    /// needs it: ops whose input gradient has the output's shape reuse its buffer). `needs[i]` says
    /// whether input i wants one; return `None` for those that do not. The one method every op writes.
    fn backward_owned(&self, grad_out: Storage, needs: &[bool]) -> Result<Vec<Option<Storage>>>;
    /// `backward_owned` when the caller keeps the gradient (a copy by default; an op that can do
    /// without one overrides it).
    fn backward(&self, grad_out: &Storage, needs: &[bool]) -> Result<Vec<Option<Storage>>> {
        self.backward_owned(grad_out.try_clone()?, needs)
    }
}

/// Graph link to an input: its id and producing node, but not its storage.
pub struct Edge {
    pub(crate) id: u64,
    pub(crate) node: Option<Arc<Node>>,
    pub(crate) requires_grad: bool,
}

pub struct Node {
    /// Taken out (and its saved tensors freed) by a graph-freeing `backward`.
    pub(crate) op: Mutex<Option<Box<dyn BackwardOp>>>,
    pub(crate) name: &'static str,
    pub(crate) inputs: Vec<Edge>,
}

thread_local! {
    static GRAD_ENABLED: Cell<bool> = const { Cell::new(true) };
}

pub fn grad_enabled() -> bool {
    GRAD_ENABLED.with(|g| g.get())
}

/// Runs `f` with recording off (inference): ops build no graph and keep nothing for backward.
/// The previous mode comes back afterwards, also when `f` unwinds.
pub fn no_grad<R>(f: impl FnOnce() -> R) -> R {
    crate::scoped::with(&GRAD_ENABLED, false, f)
}

thread_local! {
    static TRACE: RefCell<Option<Vec<(String, Tensor)>>> = const { RefCell::new(None) };
}

/// Debug aid: while tracing is on, every recorded op output is kept (name, tensor) so tests can
/// retain and compare intermediate gradients op by op.
pub fn trace_start() {
    TRACE.with(|t| *t.borrow_mut() = Some(Vec::new()));
}
pub fn trace_take() -> Vec<(String, Tensor)> {
    TRACE.with(|t| t.borrow_mut().take().unwrap_or_default())
}
pub(crate) fn trace_push(t: &Tensor, name: &str) {
    TRACE.with(|tr| {
        if let Some(v) = tr.borrow_mut().as_mut() {
            v.push((name.to_string(), t.clone()));
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_grad_nests_and_restores_after_a_panic() {
        assert!(grad_enabled());
        no_grad(|| {
            assert!(!grad_enabled());
            no_grad(|| assert!(!grad_enabled()));
            assert!(!grad_enabled());
        });
        assert!(grad_enabled());
        let caught = std::panic::catch_unwind(|| no_grad(|| panic!("unwinding through no_grad")));
        assert!(caught.is_err());
        assert!(grad_enabled());
    }
}
