//! Reverse-mode autograd: each recorded op keeps exactly what its backward needs (not its inputs'
//! storage unless it uses them) plus edges to its inputs; `backward` walks the graph once in reverse
//! topological order and returns the gradients of the leaves that asked for them. The nodes are
//! recorded by `tensor::tape` (re-exported here: `BackwardOp`, `no_grad`, the trace); this module walks them.

use crate::float::par_zip;
use crate::storage::{CpuStorage, DType, Storage};
use crate::tensor::tape::Node;
use crate::tensor::Tensor;
use anyhow::{bail, Context, Result};
use std::collections::HashMap;
use std::sync::Arc;

pub use crate::tensor::tape::{grad_enabled, no_grad, trace_start, trace_take, BackwardOp};

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
                Some(acc) => accumulate(acc, &ig).with_context(|| format!("backward of {}", node.name))?,
                None => {
                    target.insert(edge.id, ig);
                }
            }
        }
    }
    Ok(grads)
}

/// `acc += g`, elementwise (same dtype and length, checked by callers): gradient accumulation.
fn accumulate(acc: &mut Storage, g: &Storage) -> Result<()> {
    match (acc, g) {
        (Storage::Cpu(CpuStorage::F32(a)), Storage::Cpu(CpuStorage::F32(b))) if a.len() == b.len() => {
            // In blocks the compiler vectorises, spread over the rayon threads when large.
            par_zip(&mut a[..], [&b[..]], |a, [b]| a.iter_mut().zip(b).for_each(|(x, y)| *x += *y))
        }
        (Storage::Cpu(CpuStorage::F64(a)), Storage::Cpu(CpuStorage::F64(b))) if a.len() == b.len() => {
            a.iter_mut().zip(b).for_each(|(x, y)| *x += *y)
        }
        (Storage::Gpu(a), Storage::Gpu(b)) if a.len() == b.len() && a.device() == b.device() => {
            crate::cuda::buffer::add_assign(a, b)?
        }
        (a, b) if a.device() != b.device() => {
            bail!("gradient accumulation: device mismatch ({} vs {})", a.device(), b.device())
        }
        (a, b) => bail!(
            "gradient accumulation: storage mismatch ({:?}[{}] vs {:?}[{}])",
            a.dtype(),
            a.len(),
            b.dtype(),
            b.len()
        ),
    }
    Ok(())
}
