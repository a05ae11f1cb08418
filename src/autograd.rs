//! Reverse-mode autograd: each recorded op keeps exactly what its backward needs (not its inputs'
//! storage unless it uses them) plus edges to its inputs; `backward` walks the graph once in reverse
//! topological order and returns the gradients of the leaves that asked for them.

use crate::tensor::{DType, Storage, Tensor};
use anyhow::{bail, Context, Result};
use std::cell::Cell;
use std::collections::HashMap;
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
pub fn no_grad<R>(f: impl FnOnce() -> R) -> R {
    let prev = GRAD_ENABLED.with(|g| g.replace(false));
    struct Restore(bool);
    impl Drop for Restore {
        fn drop(&mut self) {
            GRAD_ENABLED.with(|g| g.set(self.0));
        }
    }
    let _restore = Restore(prev);
    f()
}

/// Gradients of the leaf tensors that required them, keyed by tensor id.
#[derive(Default)]
pub struct Gradients {
    map: HashMap<u64, Storage>,
}

impl Gradients {
    pub fn get(&self, t: &Tensor) -> Option<&Storage> {
        self.map.get(&t.id)
    }
    pub fn take(&mut self, t: &Tensor) -> Option<Storage> {
        self.map.remove(&t.id)
    }
    pub fn len(&self) -> usize {
        self.map.len()
    }
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

/// Backward from a scalar (one-element) output, seeded with 1. Like PyTorch's `loss.backward()`
/// (retain_graph=False), each op's saved tensors are freed as soon as its gradient is computed, so
/// their memory is reused by the gradients; a second backward through the same graph is an error.
pub fn backward(loss: &Tensor) -> Result<Gradients> {
    if loss.numel() != 1 {
        bail!("backward: loss must have one element, got shape {:?}", loss.shape());
    }
    let seed = match loss.dtype() {
        DType::F64 => Storage::f64(vec![1.0]),
        DType::F32 => Storage::f32(vec![1.0]).to_device(&loss.device())?,
    };
    run_backward(loss, seed, &[], true)
}

/// `backward` with the loss gradient supplied, already on the loss's device (a CUDA graph capture cannot
/// upload the seed), freeing saved values as it goes.
pub fn backward_seeded(loss: &Tensor, seed: Storage) -> Result<Gradients> {
    if loss.numel() != 1 {
        bail!("backward: loss must have one element, got shape {:?}", loss.shape());
    }
    run_backward(loss, seed, &[], true)
}

/// Backward from any output with an explicit output gradient (vector-Jacobian product).
pub fn backward_with(out: &Tensor, grad_out: Storage) -> Result<Gradients> {
    backward_retaining(out, grad_out, &[])
}

/// Like `backward_with`, also reporting the gradients of the non-leaf tensors in `retain`
/// (PyTorch's `retain_grad`), for debugging and tests.
pub fn backward_retaining(out: &Tensor, grad_out: Storage, retain: &[&Tensor]) -> Result<Gradients> {
    run_backward(out, grad_out, retain, false)
}

fn run_backward(out: &Tensor, grad_out: Storage, retain: &[&Tensor], free_graph: bool) -> Result<Gradients> {
    if grad_out.device() != out.device() {
        bail!("backward: output gradient on {} but the output is on {}", grad_out.device(), out.device());
    }
    if grad_out.len() != out.numel() || grad_out.dtype() != out.dtype() {
        bail!("backward: output gradient {:?}[{}] does not match output {:?}", grad_out.dtype(), grad_out.len(), out);
    }
    let mut grads = Gradients::default();
    let Some(root) = out.node.clone() else {
        if out.is_requires_grad() {
            grads.map.insert(out.id, grad_out);
        }
        return Ok(grads);
    };
    // Post-order DFS (iterative: HRNet graphs are thousands of nodes deep).
    let mut order: Vec<(u64, Arc<Node>)> = Vec::new();
    let mut visited = std::collections::HashSet::new();
    let mut stack: Vec<(u64, Arc<Node>, bool)> = vec![(out.id, root, false)];
    while let Some((id, node, expanded)) = stack.pop() {
        if expanded {
            order.push((id, node));
            continue;
        }
        if !visited.insert(id) {
            continue;
        }
        stack.push((id, node.clone(), true));
        for e in &node.inputs {
            if let Some(n) = &e.node {
                if !visited.contains(&e.id) {
                    stack.push((e.id, n.clone(), false));
                }
            }
        }
    }
    let mut pending: HashMap<u64, Storage> = HashMap::new();
    pending.insert(out.id, grad_out);
    for (id, node) in order.into_iter().rev() {
        let mut slot = node.op.lock().unwrap_or_else(|e| e.into_inner());
        let taken = if free_graph { slot.take() } else { None };
        let Some(g) = pending.remove(&id) else { continue };
        if retain.iter().any(|t| t.id == id) {
            grads.map.insert(id, g.try_clone()?);
        }
        let Some(op) = taken.as_deref().or(slot.as_deref()) else {
            bail!(
                "backward: the graph through {} was freed by an earlier backward() (it keeps no saved values)",
                node.name
            )
        };
        let needs: Vec<bool> = node.inputs.iter().map(|e| e.requires_grad).collect();
        let input_grads = op.backward_owned(g, &needs).with_context(|| format!("backward of {}", node.name))?;
        // Frees what the op saved (returned to the buffer pool for the gradients that follow).
        drop(taken);
        drop(slot);
        for (edge, ig) in node.inputs.iter().zip(input_grads) {
            let Some(ig) = ig else { continue };
            if !edge.requires_grad {
                continue;
            }
            let target = if edge.node.is_some() { &mut pending } else { &mut grads.map };
            match target.get_mut(&edge.id) {
                Some(acc) => acc.add_assign(&ig).with_context(|| format!("backward of {}", node.name))?,
                None => {
                    target.insert(edge.id, ig);
                }
            }
        }
    }
    Ok(grads)
}

thread_local! {
    static TRACE: std::cell::RefCell<Option<Vec<(String, Tensor)>>> = const { std::cell::RefCell::new(None) };
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
