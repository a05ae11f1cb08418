//! Named parameter/buffer storage in the official state_dict order, shared by every device path.

use crate::host_tensor::{HostData, HostTensor};
use crate::rng::Rng;
use crate::tensor::{DType, Tensor};
use anyhow::{bail, Result};
use std::collections::HashMap;

/// One state_dict entry.
#[derive(Clone, Debug)]
pub enum Slot {
    /// A trainable parameter (requires grad).
    Param(Tensor),
    /// A float buffer (BN running statistics).
    Buffer(Tensor),
    /// BN's `num_batches_tracked` (int64 in PyTorch).
    Count(i64),
}

#[derive(Clone, Debug, Default)]
pub struct Store {
    names: Vec<String>,
    slots: Vec<Slot>,
    index: HashMap<String, usize>,
}

/// What a state_dict load did.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LoadReport {
    pub loaded: usize,
    /// Keys in the file that the model does not have (allowed only for non-strict loads).
    pub skipped: Vec<String>,
    /// `num_batches_tracked` counters absent from the file (older PyTorch omits them).
    pub counters_missing: usize,
}

impl Store {
    pub fn len(&self) -> usize {
        self.slots.len()
    }
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }
    fn push(&mut self, name: String, slot: Slot) -> usize {
        let i = self.slots.len();
        self.index.insert(name.clone(), i);
        self.names.push(name);
        self.slots.push(slot);
        i
    }
    pub(crate) fn add_param(&mut self, name: String, t: Tensor) -> usize {
        self.push(name, Slot::Param(t.requires_grad()))
    }
    pub(crate) fn add_buffer(&mut self, name: String, t: Tensor) -> usize {
        self.push(name, Slot::Buffer(t))
    }
    pub(crate) fn add_count(&mut self, name: String) -> usize {
        self.push(name, Slot::Count(0))
    }
    pub fn name(&self, i: usize) -> &str {
        &self.names[i]
    }
    pub fn names(&self) -> &[String] {
        &self.names
    }
    pub fn slot(&self, i: usize) -> &Slot {
        &self.slots[i]
    }
    pub fn get(&self, name: &str) -> Option<&Slot> {
        self.index.get(name).map(|&i| &self.slots[i])
    }
    /// The tensor of a param or buffer slot.
    pub fn tensor(&self, i: usize) -> &Tensor {
        match &self.slots[i] {
            Slot::Param(t) | Slot::Buffer(t) => t,
            Slot::Count(_) => panic!("slot {} ({}) is a counter, not a tensor", i, self.names[i]),
        }
    }
    pub fn tensor_mut(&mut self, i: usize) -> &mut Tensor {
        match &mut self.slots[i] {
            Slot::Param(t) | Slot::Buffer(t) => t,
            Slot::Count(_) => panic!("slot {i} is a counter, not a tensor"),
        }
    }
    pub(crate) fn bump_count(&mut self, i: usize) {
        if let Slot::Count(c) = &mut self.slots[i] {
            *c += 1;
        }
    }
    /// The `num_batches_tracked` counters in slot order (a replayed training-step graph does not run the
    /// host code that bumps them, so `train::graph` adds each step's increments itself).
    pub(crate) fn counts(&self) -> Vec<i64> {
        self.slots.iter().filter_map(|s| if let Slot::Count(c) = s { Some(*c) } else { None }).collect()
    }
    /// Sets the counters `counts` returned (same order).
    pub(crate) fn set_counts(&mut self, counts: &[i64]) {
        let slots = self.slots.iter_mut().filter_map(|s| if let Slot::Count(c) = s { Some(c) } else { None });
        for (slot, &c) in slots.zip(counts) {
            *slot = c;
        }
    }
    /// The tensors of the param and buffer slots, with their names.
    pub(crate) fn tensors(&self) -> impl Iterator<Item = (&str, &Tensor)> {
        self.names.iter().zip(&self.slots).filter_map(|(n, s)| match s {
            Slot::Param(t) | Slot::Buffer(t) => Some((n.as_str(), t)),
            Slot::Count(_) => None,
        })
    }

    /// Two running buffers at once (BN updates mean and var together).
    pub(crate) fn two_tensors_mut(&mut self, a: usize, b: usize) -> (&mut Tensor, &mut Tensor) {
        assert!(a < b);
        let (lo, hi) = self.slots.split_at_mut(b);
        match (&mut lo[a], &mut hi[0]) {
            (Slot::Param(x) | Slot::Buffer(x), Slot::Param(y) | Slot::Buffer(y)) => (x, y),
            _ => panic!("slots {a} and {b} must both hold tensors"),
        }
    }

    /// Parameters in state_dict order (what optimizers step).
    pub fn params(&self) -> Vec<&Tensor> {
        self.slots.iter().filter_map(|s| if let Slot::Param(t) = s { Some(t) } else { None }).collect()
    }
    pub fn params_mut(&mut self) -> Vec<&mut Tensor> {
        self.slots.iter_mut().filter_map(|s| if let Slot::Param(t) = s { Some(t) } else { None }).collect()
    }
    pub fn param_names(&self) -> Vec<&str> {
        self.names
            .iter()
            .zip(&self.slots)
            .filter(|(_, s)| matches!(s, Slot::Param(_)))
            .map(|(n, _)| n.as_str())
            .collect()
    }
    pub fn num_params(&self) -> usize {
        self.params().iter().map(|t| t.numel()).sum()
    }

    /// Converts every float tensor to `dtype` (f64 for exact checks).
    pub fn cast(&mut self, dtype: DType) {
        for s in &mut self.slots {
            match s {
                Slot::Param(t) => *t = t.cast(dtype).detach().requires_grad(),
                Slot::Buffer(t) => *t = t.cast(dtype).detach(),
                Slot::Count(_) => {}
            }
        }
    }

    /// Moves every float tensor to `device` (parameters keep requiring grad).
    pub fn to_device(&mut self, device: &crate::tensor::Device) -> Result<()> {
        for (name, s) in self.names.iter().zip(&mut self.slots) {
            match s {
                Slot::Param(t) | Slot::Buffer(t) => {
                    *t = t.to_device(device).map_err(|e| anyhow::anyhow!("moving `{name}`: {e}"))?;
                }
                Slot::Count(_) => {}
            }
        }
        Ok(())
    }

    /// The state_dict: official names, float tensors as they are, counters as i64 scalars.
    pub fn state_dict(&self) -> Vec<(String, HostTensor)> {
        self.names
            .iter()
            .zip(&self.slots)
            .map(|(n, s)| {
                let h = match s {
                    Slot::Param(t) | Slot::Buffer(t) => t.to_host(),
                    Slot::Count(c) => HostTensor::i64(vec![], vec![*c]),
                };
                (n.clone(), h)
            })
            .collect()
    }

    /// Loads tensors by name. `strict`: every model key must be present (counters may be absent)
    /// and no unknown key may appear. Shapes must match exactly; values keep the model's dtype.
    pub fn load(&mut self, entries: &[(String, HostTensor)], strict: bool, source: &str) -> Result<LoadReport> {
        // Check every entry first, so a failed load leaves the model untouched.
        let mut report = LoadReport::default();
        let mut seen = vec![false; self.slots.len()];
        let mut plan: Vec<(usize, &HostTensor)> = Vec::new();
        for (name, h) in entries {
            let Some(&i) = self.index.get(name) else {
                if strict {
                    bail!("{source}: unexpected tensor `{name}` (shape {:?}) not in the model", h.shape);
                }
                report.skipped.push(name.clone());
                continue;
            };
            seen[i] = true;
            match &self.slots[i] {
                Slot::Param(t) | Slot::Buffer(t) => {
                    if h.shape != t.shape() {
                        bail!("{source}: tensor `{name}` has shape {:?}, the model expects {:?}", h.shape, t.shape());
                    }
                    if let HostData::I64(_) = h.data {
                        bail!("{source}: tensor `{name}` is int64, the model expects floats");
                    }
                }
                Slot::Count(_) => {
                    if h.numel() != 1 {
                        bail!("{source}: counter `{name}` has shape {:?}, expected a scalar", h.shape);
                    }
                }
            }
            plan.push((i, h));
        }
        for (i, s) in self.slots.iter().enumerate() {
            if !seen[i] {
                match s {
                    Slot::Count(_) => report.counters_missing += 1,
                    _ if strict => {
                        bail!("{source}: missing tensor `{}` (shape {:?})", self.names[i], self.tensor(i).shape())
                    }
                    _ => {}
                }
            }
        }
        for (i, h) in plan {
            match &mut self.slots[i] {
                Slot::Param(t) | Slot::Buffer(t) => {
                    let values = crate::tensor::Storage::f64(h.to_f64_vec()).cast(t.dtype())?;
                    t.set_storage(values)?;
                }
                Slot::Count(c) => *c = h.to_f64_vec()[0] as i64,
            }
            report.loaded += 1;
        }
        Ok(report)
    }

    /// Random init tensor helpers used by the model builder.
    pub(crate) fn normal(rng: &mut Rng, shape: &[usize], std: f64) -> Tensor {
        let n: usize = shape.iter().product();
        Tensor::from_f32(shape, (0..n).map(|_| (rng.normal() * std) as f32).collect()).expect("shape")
    }
    pub(crate) fn uniform(rng: &mut Rng, shape: &[usize], bound: f64) -> Tensor {
        let n: usize = shape.iter().product();
        Tensor::from_f32(shape, (0..n).map(|_| rng.range(-bound, bound) as f32).collect()).expect("shape")
    }
}
