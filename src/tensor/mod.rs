//! The tensor type: a shape, an element type and storage, plus the autograd link of the op that made it.
//!
//! Layout is dense row-major NCHW; the layout is private to the engine (ops take and return `Tensor`).
//! Tensors are cheap to clone (storage is shared); values are immutable except through
//! [`Tensor::update`], which optimizers and BN running statistics use.

pub mod tape;

use crate::host_tensor::{HostData, HostTensor};
use anyhow::{bail, Result};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tape::{BackwardOp, Edge, Node};

pub use crate::storage::{CpuStorage, DType, Device, Storage};

/// How many times any tensor's storage was written in place (`Tensor::update`, `set_storage`): caches
/// derived from tensor values (the GPU inference plan) compare it to know they are still valid.
pub fn storage_writes() -> u64 {
    STORAGE_WRITES.load(Ordering::Relaxed)
}
static STORAGE_WRITES: AtomicU64 = AtomicU64::new(0);

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

pub(crate) fn fresh_id() -> u64 {
    NEXT_ID.fetch_add(1, Ordering::Relaxed)
}

/// A tensor: shape + storage + (optionally) the op that produced it, for backward.
#[derive(Clone)]
pub struct Tensor {
    pub(crate) id: u64,
    shape: Vec<usize>,
    storage: Arc<Storage>,
    pub(crate) node: Option<Arc<Node>>,
    requires_grad: bool,
}

impl std::fmt::Debug for Tensor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Tensor{:?}<{:?}>", self.shape, self.dtype())
    }
}

pub fn shape_str(shape: &[usize]) -> String {
    format!("{:?}", shape)
}

impl Tensor {
    /// A leaf tensor from storage; errors when the element count does not match the shape.
    pub fn new(shape: Vec<usize>, storage: Storage) -> Result<Tensor> {
        let n: usize = shape.iter().product();
        if n != storage.len() {
            bail!("tensor: shape {:?} needs {} elements, storage has {}", shape, n, storage.len());
        }
        Ok(Tensor { id: fresh_id(), shape, storage: Arc::new(storage), node: None, requires_grad: false })
    }
    pub fn from_f32(shape: &[usize], data: Vec<f32>) -> Result<Tensor> {
        Tensor::new(shape.to_vec(), Storage::f32(data))
    }
    pub fn from_f64(shape: &[usize], data: Vec<f64>) -> Result<Tensor> {
        Tensor::new(shape.to_vec(), Storage::f64(data))
    }
    pub fn zeros(shape: &[usize], dtype: DType) -> Tensor {
        let n = shape.iter().product();
        Tensor {
            id: fresh_id(),
            shape: shape.to_vec(),
            storage: Arc::new(Storage::zeros(dtype, n)),
            node: None,
            requires_grad: false,
        }
    }
    pub fn full(shape: &[usize], dtype: DType, value: f64) -> Tensor {
        let n: usize = shape.iter().product();
        let storage = match dtype {
            DType::F32 => Storage::f32(vec![value as f32; n]),
            DType::F64 => Storage::f64(vec![value; n]),
        };
        Tensor { id: fresh_id(), shape: shape.to_vec(), storage: Arc::new(storage), node: None, requires_grad: false }
    }
    /// From a host array (f32/f64 kept; i64 converted to f32).
    pub fn from_host(h: &HostTensor) -> Result<Tensor> {
        let storage = match &h.data {
            HostData::F32(v) => Storage::f32(v.clone()),
            HostData::F64(v) => Storage::f64(v.clone()),
            HostData::I64(v) => Storage::f32(v.iter().map(|&x| x as f32).collect()),
        };
        Tensor::new(h.shape.clone(), storage)
    }
    pub fn to_host(&self) -> HostTensor {
        let data = match &*self.storage {
            Storage::Cpu(CpuStorage::F32(v)) => HostData::F32(v.clone()),
            Storage::Cpu(CpuStorage::F64(v)) => HostData::F64(v.clone()),
            Storage::Gpu(_) => HostData::F32(self.storage.to_f32_vec()),
        };
        HostTensor { shape: self.shape.clone(), data }
    }

    pub fn shape(&self) -> &[usize] {
        &self.shape
    }
    pub fn dims4(&self, op: &str) -> Result<[usize; 4]> {
        match self.shape[..] {
            [n, c, h, w] => Ok([n, c, h, w]),
            _ => bail!("{op}: expected a 4-d NCHW tensor, got shape {:?}", self.shape),
        }
    }
    pub fn numel(&self) -> usize {
        self.storage.len()
    }
    pub fn dtype(&self) -> DType {
        self.storage.dtype()
    }
    pub fn device(&self) -> Device {
        self.storage.device()
    }
    /// The same values on `device`, as a leaf (the graph is not followed across devices); keeps the
    /// `requires_grad` flag. f64 tensors cannot go to a GPU.
    pub fn to_device(&self, device: &Device) -> Result<Tensor> {
        // Values are immutable outside `update` (which copies shared storage), so the same device shares.
        let storage =
            if self.device() == *device { self.storage.clone() } else { Arc::new(self.storage.to_device(device)?) };
        Ok(Tensor { id: fresh_id(), shape: self.shape.clone(), storage, node: None, requires_grad: self.requires_grad })
    }
    pub fn to_cpu(&self) -> Result<Tensor> {
        self.to_device(&Device::Cpu)
    }
    pub fn storage(&self) -> &Storage {
        &self.storage
    }
    pub fn id(&self) -> u64 {
        self.id
    }
    pub fn to_f32_vec(&self) -> Vec<f32> {
        self.storage.to_f32_vec()
    }
    /// The values on the host as f32; a failed device download is an error.
    pub fn try_to_f32_vec(&self) -> Result<Vec<f32>> {
        self.storage.try_to_f32_vec()
    }
    /// The values on the host as f64; a failed device download is an error.
    pub fn try_to_f64_vec(&self) -> Result<Vec<f64>> {
        self.storage.try_to_f64_vec()
    }
    pub fn to_f64_vec(&self) -> Vec<f64> {
        self.storage.to_f64_vec()
    }
    /// The same values as `dtype`, as a leaf (GPU tensors cast to f64 come to the cpu).
    pub fn cast(&self, dtype: DType) -> Tensor {
        // Values are immutable outside `update`, so the same dtype shares the storage (no device copy).
        let storage = match dtype {
            _ if dtype == self.dtype() => self.storage.clone(),
            DType::F32 => Arc::new(Storage::f32(self.storage.to_f32_vec())),
            DType::F64 => Arc::new(Storage::f64(self.storage.to_f64_vec())),
        };
        Tensor { id: fresh_id(), shape: self.shape.clone(), storage, node: None, requires_grad: self.requires_grad }
    }
    /// Value of a one-element tensor.
    pub fn item(&self) -> Result<f64> {
        if self.numel() != 1 {
            bail!("item: tensor of shape {:?} is not a scalar", self.shape);
        }
        Ok(self.storage.try_to_f64_vec()?[0])
    }

    /// Marks a leaf tensor as one whose gradient `backward` reports (a parameter or an input).
    pub fn requires_grad(mut self) -> Tensor {
        self.requires_grad = true;
        self
    }
    pub fn set_requires_grad(&mut self, on: bool) {
        self.requires_grad = on;
    }
    pub fn is_requires_grad(&self) -> bool {
        self.requires_grad
    }
    /// The same values cut off from the graph.
    pub fn detach(&self) -> Tensor {
        Tensor {
            id: fresh_id(),
            shape: self.shape.clone(),
            storage: self.storage.clone(),
            node: None,
            requires_grad: false,
        }
    }
    /// Same storage, new shape with the same element count (a view; gradient flows through).
    pub fn reshape(&self, shape: &[usize]) -> Result<Tensor> {
        let n: usize = shape.iter().product();
        if n != self.numel() {
            bail!("reshape: cannot view {:?} as {:?}", self.shape, shape);
        }
        let from = self.shape.clone();
        // A view: the output shares the input's storage (values are immutable outside `update`).
        Ok(Tensor::from_op_shared(shape.to_vec(), self.storage.clone(), |_| ReshapeBackward { from }, &[self]))
    }

    /// Replaces the values in place (optimizer steps, BN running statistics). Keeps the id, so
    /// gradients keyed by this parameter stay valid; a graph that still holds the old values keeps them
    /// (shared storage is copied first: a device copy that is an error, not a panic, when the device is
    /// out of memory).
    /// Whether another tensor shares this storage (so `update` would first copy it).
    pub(crate) fn storage_is_shared(&self) -> bool {
        Arc::strong_count(&self.storage) > 1
    }

    pub fn update(&mut self, f: impl FnOnce(&mut Storage)) -> Result<()> {
        STORAGE_WRITES.fetch_add(1, Ordering::Relaxed);
        if Arc::get_mut(&mut self.storage).is_none() {
            self.storage = Arc::new(self.storage.try_clone()?);
        }
        let unique = Arc::get_mut(&mut self.storage).expect("storage made unique above");
        f(unique);
        Ok(())
    }
    /// Replaces the values; host values given to a GPU tensor are uploaded to its device.
    pub fn set_storage(&mut self, storage: Storage) -> Result<()> {
        let storage = match self.device() {
            Device::Gpu(_) if storage.device() != self.device() => storage.to_device(&self.device())?,
            _ => storage,
        };
        if storage.len() != self.numel() || storage.dtype() != self.dtype() {
            bail!(
                "set_storage: {:?}[{}] does not fit tensor {:?}<{:?}>",
                storage.dtype(),
                storage.len(),
                self.shape,
                self.dtype()
            );
        }
        STORAGE_WRITES.fetch_add(1, Ordering::Relaxed);
        self.storage = Arc::new(storage);
        Ok(())
    }

    /// Builds an op's output and, when grad mode is on and an input needs a gradient, records the op.
    pub(crate) fn from_op(
        shape: Vec<usize>, storage: Storage, op: impl BackwardOp + 'static, inputs: &[&Tensor],
    ) -> Tensor {
        Tensor::from_op_using_output(shape, storage, |_| op, inputs)
    }

    /// Like `from_op`, for ops whose backward reads their own output (`make` gets a detached view
    /// sharing the output's storage, so nothing is copied).
    pub(crate) fn from_op_using_output<O: BackwardOp + 'static>(
        shape: Vec<usize>, storage: Storage, make: impl FnOnce(Tensor) -> O, inputs: &[&Tensor],
    ) -> Tensor {
        Tensor::from_op_shared(shape, Arc::new(storage), make, inputs)
    }

    fn from_op_shared<O: BackwardOp + 'static>(
        shape: Vec<usize>, storage: Arc<Storage>, make: impl FnOnce(Tensor) -> O, inputs: &[&Tensor],
    ) -> Tensor {
        let needs = tape::grad_enabled() && inputs.iter().any(|t| t.requires_grad);
        let mut out = Tensor { id: fresh_id(), shape, storage, requires_grad: needs, node: None };
        if needs {
            let op = make(out.detach());
            tape::trace_push(&out, op.trace_name());
            let edges = inputs
                .iter()
                .map(|t| Edge { id: t.id, node: t.node.clone(), requires_grad: t.requires_grad })
                .collect();
            out.node =
                Some(Arc::new(Node { name: op.name(), op: std::sync::Mutex::new(Some(Box::new(op))), inputs: edges }));
        }
        out
    }
}

struct ReshapeBackward {
    #[allow(dead_code)]
    from: Vec<usize>,
}
impl BackwardOp for ReshapeBackward {
    fn name(&self) -> &'static str {
        "reshape"
    }
    fn backward(&self, grad: &Storage, _needs: &[bool]) -> Result<Vec<Option<Storage>>> {
        Ok(vec![Some(grad.try_clone()?)])
    }
    fn backward_owned(&self, grad: Storage, _needs: &[bool]) -> Result<Vec<Option<Storage>>> {
        Ok(vec![Some(grad)])
    }
}

/// Checks two tensors have one dtype, naming the op and both shapes otherwise.
pub(crate) fn same_dtype(op: &str, a: &Tensor, b: &Tensor) -> Result<()> {
    if a.dtype() != b.dtype() {
        bail!("{op}: dtype mismatch {:?}{:?} vs {:?}{:?}", a.dtype(), a.shape(), b.dtype(), b.shape());
    }
    Ok(())
}

/// Checks that every tensor of an op is on one device: one line naming the op and both devices otherwise.
pub(crate) fn same_device(op: &str, tensors: &[&Tensor]) -> Result<Device> {
    let first = tensors.first().map(|t| t.device()).unwrap_or_default();
    for t in tensors.iter().skip(1) {
        let d = t.device();
        if d != first {
            bail!("{op}: device mismatch: {:?} on {first} vs {:?} on {d}", tensors[0].shape(), t.shape());
        }
    }
    Ok(first)
}
