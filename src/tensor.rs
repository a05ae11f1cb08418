//! The tensor type: a shape, an element type and storage, plus the autograd link of the op that made it.
//!
//! Layout is dense row-major NCHW; the layout is private to the engine (ops take and return `Tensor`).
//! Tensors are cheap to clone (storage is shared); values are immutable except through
//! [`Tensor::update`], which optimizers and BN running statistics use.

use crate::autograd::{self, BackwardOp, Edge, Node};
use crate::cuda::{GpuBuffer, GpuDevice};
use crate::float::Float;
use crate::host::{HostData, HostTensor};
use anyhow::{bail, Result};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Element type of a tensor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DType {
    F32,
    F64,
}

/// Where a tensor's storage lives: host memory, or a GPU device (CUDA, or the host emulator of the same
/// kernels). GPU storage is f32 only.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub enum Device {
    #[default]
    Cpu,
    Gpu(GpuDevice),
}

impl std::fmt::Display for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Device::Cpu => write!(f, "cpu"),
            Device::Gpu(d) => write!(f, "{}", d.name()),
        }
    }
}

impl Device {
    /// The process-wide emulated GPU (kernels run on the host; for tests).
    pub fn emulated() -> Device {
        Device::Gpu(GpuDevice::emulated())
    }
    pub fn is_gpu(&self) -> bool {
        matches!(self, Device::Gpu(_))
    }
}

/// Host values of one element type. Large f32 buffers come from and return to a process-wide pool
/// ([`pool`]), so steady-state training steps reuse pages instead of faulting in fresh ones.
#[derive(Debug, PartialEq)]
pub enum CpuStorage {
    F32(Vec<f32>),
    F64(Vec<f64>),
}

impl Clone for CpuStorage {
    fn clone(&self) -> CpuStorage {
        match self {
            CpuStorage::F32(v) => {
                let mut out = pool::take_f32(v.len());
                out.copy_from_slice(v);
                CpuStorage::F32(out)
            }
            CpuStorage::F64(v) => CpuStorage::F64(v.clone()),
        }
    }
}

impl Drop for CpuStorage {
    fn drop(&mut self) {
        if let CpuStorage::F32(v) = self {
            pool::give_f32(std::mem::take(v));
        }
    }
}

impl CpuStorage {
    pub fn len(&self) -> usize {
        match self {
            CpuStorage::F32(v) => v.len(),
            CpuStorage::F64(v) => v.len(),
        }
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    pub fn dtype(&self) -> DType {
        match self {
            CpuStorage::F32(_) => DType::F32,
            CpuStorage::F64(_) => DType::F64,
        }
    }
    fn to_f32_vec(&self) -> Vec<f32> {
        match self {
            // A plain copy: the caller keeps a Vec that never returns to the pool.
            CpuStorage::F32(v) => v.clone(),
            CpuStorage::F64(v) => v.iter().map(|&x| x as f32).collect(),
        }
    }
    fn to_f64_vec(&self) -> Vec<f64> {
        match self {
            CpuStorage::F32(v) => v.iter().map(|&x| x as f64).collect(),
            CpuStorage::F64(v) => v.clone(),
        }
    }
}

/// Dense element storage: the device (host or GPU) first, the element type second (GPU storage is f32).
/// Not `Clone`: a copy of device memory can run out of memory, so copies go through [`Storage::try_clone`].
#[derive(Debug, PartialEq)]
pub enum Storage {
    Cpu(CpuStorage),
    /// f32 values on a GPU device (ops dispatch on this variant to their CUDA kernels).
    Gpu(GpuBuffer),
}

impl Storage {
    /// Host f32 values.
    pub fn f32(values: Vec<f32>) -> Storage {
        Storage::Cpu(CpuStorage::F32(values))
    }
    /// Host f64 values.
    pub fn f64(values: Vec<f64>) -> Storage {
        Storage::Cpu(CpuStorage::F64(values))
    }
    /// The host f32 values (None for f64 or GPU storage).
    pub fn as_f32(&self) -> Option<&[f32]> {
        f32::of(self)
    }
    pub fn as_f32_mut(&mut self) -> Option<&mut [f32]> {
        f32::of_mut(self)
    }
    /// The host f64 values (None for f32 or GPU storage).
    pub fn as_f64(&self) -> Option<&[f64]> {
        f64::of(self)
    }
    pub fn as_f64_mut(&mut self) -> Option<&mut [f64]> {
        f64::of_mut(self)
    }
    /// `n` elements whose values are unspecified (stale pooled values or zeros): for kernels that
    /// write every element, so no zero-fill pass is paid.
    pub fn for_overwrite(dtype: DType, n: usize) -> Storage {
        match dtype {
            DType::F32 => Storage::f32(pool::take_f32(n)),
            DType::F64 => Storage::f64(vec![0.0; n]),
        }
    }
    pub fn len(&self) -> usize {
        match self {
            Storage::Cpu(c) => c.len(),
            Storage::Gpu(b) => b.len(),
        }
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    pub fn dtype(&self) -> DType {
        match self {
            Storage::Cpu(c) => c.dtype(),
            Storage::Gpu(_) => DType::F32,
        }
    }
    pub fn device(&self) -> Device {
        match self {
            Storage::Gpu(b) => Device::Gpu(b.device().clone()),
            Storage::Cpu(_) => Device::Cpu,
        }
    }
    /// The GPU buffer, or an error naming `op` for host storage.
    pub fn gpu(&self, op: &str) -> Result<&GpuBuffer> {
        match self {
            Storage::Gpu(b) => Ok(b),
            other => bail!("{op}: expected GPU storage, got {:?} on the cpu", other.dtype()),
        }
    }
    pub fn gpu_mut(&mut self, op: &str) -> Result<&mut GpuBuffer> {
        match self {
            Storage::Gpu(b) => Ok(b),
            other => bail!("{op}: expected GPU storage, got {:?} on the cpu", other.dtype()),
        }
    }
    /// The same values on `device` (f64 cannot go to a GPU).
    pub fn to_device(&self, device: &Device) -> Result<Storage> {
        match (self, device) {
            (Storage::Gpu(b), Device::Gpu(d)) if b.device() == d => self.try_clone(),
            (Storage::Gpu(b), Device::Gpu(d)) => Ok(Storage::Gpu(d.upload(&b.to_vec()?)?)),
            (Storage::Gpu(b), Device::Cpu) => Ok(Storage::f32(b.to_vec()?)),
            (Storage::Cpu(CpuStorage::F64(_)), Device::Gpu(d)) => {
                bail!("to_device: f64 tensors stay on the cpu (the {} kernels are f32); cast to f32 first", d.name())
            }
            (Storage::Cpu(CpuStorage::F32(v)), Device::Gpu(d)) => Ok(Storage::Gpu(d.upload(v)?)),
            (Storage::Cpu(c), Device::Cpu) => Ok(Storage::Cpu(c.clone())),
        }
    }
    pub fn zeros(dtype: DType, n: usize) -> Storage {
        match dtype {
            DType::F32 => Storage::f32(pool::take_f32_zeroed(n)),
            DType::F64 => Storage::f64(vec![0.0; n]),
        }
    }
    /// `self += other`, elementwise (same dtype and length, checked by callers).
    pub fn add_assign(&mut self, other: &Storage) -> Result<()> {
        match (self, other) {
            (Storage::Cpu(CpuStorage::F32(a)), Storage::Cpu(CpuStorage::F32(b))) if a.len() == b.len() => {
                add_into(a, b)
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
    /// A copy; for GPU storage a device copy whose failure (out of memory) is an error.
    pub fn try_clone(&self) -> Result<Storage> {
        Ok(match self {
            Storage::Gpu(b) => Storage::Gpu(b.try_clone()?),
            Storage::Cpu(c) => Storage::Cpu(c.clone()),
        })
    }
    pub fn try_to_f32_vec(&self) -> Result<Vec<f32>> {
        match self {
            Storage::Gpu(b) => b.to_vec(),
            Storage::Cpu(c) => Ok(c.to_f32_vec()),
        }
    }
    pub fn try_to_f64_vec(&self) -> Result<Vec<f64>> {
        match self {
            Storage::Gpu(b) => Ok(b.to_vec()?.iter().map(|&x| x as f64).collect()),
            Storage::Cpu(c) => Ok(c.to_f64_vec()),
        }
    }
    pub fn to_f64_vec(&self) -> Vec<f64> {
        match self {
            Storage::Cpu(c) => c.to_f64_vec(),
            Storage::Gpu(b) => gpu_values(b).iter().map(|&x| x as f64).collect(),
        }
    }
    pub fn to_f32_vec(&self) -> Vec<f32> {
        match self {
            Storage::Cpu(c) => c.to_f32_vec(),
            Storage::Gpu(b) => gpu_values(b),
        }
    }
    /// The same values converted to `dtype` (GPU storage stays on its device as f32, a device copy that
    /// can fail; f64 comes to the cpu).
    pub fn cast(&self, dtype: DType) -> Result<Storage> {
        Ok(match dtype {
            DType::F32 if matches!(self, Storage::Gpu(_)) => self.try_clone()?,
            DType::F32 => Storage::f32(self.try_to_f32_vec()?),
            DType::F64 => Storage::f64(self.try_to_f64_vec()?),
        })
    }
}

/// How many times any tensor's storage was written in place (`Tensor::update`, `set_storage`): caches
/// derived from tensor values (the GPU inference plan) compare it to know they are still valid.
pub fn storage_writes() -> u64 {
    STORAGE_WRITES.load(Ordering::Relaxed)
}
static STORAGE_WRITES: AtomicU64 = AtomicU64::new(0);

/// Host copy of a GPU buffer for the infallible accessors; a device that fails a download is unusable.
fn gpu_values(b: &GpuBuffer) -> Vec<f32> {
    b.to_vec().unwrap_or_else(|e| panic!("reading a {} buffer: {e:#}", b.device().name()))
}

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
            Storage::Gpu(b) => HostData::F32(gpu_values(b)),
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
        let needs = autograd::grad_enabled() && inputs.iter().any(|t| t.requires_grad);
        let mut out = Tensor { id: fresh_id(), shape, storage, requires_grad: needs, node: None };
        if needs {
            let op = make(out.detach());
            crate::autograd::trace_push(&out, op.trace_name());
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

/// `a += b` in blocks the compiler vectorises (gradient accumulation).
fn add_into(a: &mut [f32], b: &[f32]) {
    crate::float::par_zip(a, [b], |a, [b]| a.iter_mut().zip(b).for_each(|(x, y)| *x += *y))
}

/// Reuse of large f32 buffers across ops and training steps.
///
/// A training step allocates and frees the same activation and gradient sizes every time; through
/// malloc those big blocks are mmap'd (or trimmed) and every step faults their pages in and the
/// kernel zeroes them. The pool keeps freed buffers by exact length and hands them out again.
/// It holds at most as many bytes as were ever handed out at once (the workload's own high-water
/// mark, so a repeat of it is served entirely while the resident size stays near its peak), and
/// at most `HRK_POOL_MB` (default 4096; 0 turns the pool off); a request it cannot serve first
/// frees pooled buffers until pooled + live bytes fit within 1.25× that mark again. Buffers below `MIN_POOLED` elements
/// go straight to malloc, which serves them from its bins.
pub mod pool {
    use std::collections::HashMap;
    use std::sync::{Mutex, OnceLock};

    /// 64 KiB: below this malloc reuses freed blocks without returning them to the OS.
    const MIN_POOLED: usize = 16 * 1024;

    #[derive(Default)]
    struct Pool {
        by_len: HashMap<usize, Vec<Vec<f32>>>,
        /// Bytes held in `by_len`.
        bytes: usize,
        /// Bytes handed out and not yet given back (approximate: buffers made elsewhere and given
        /// back count against it, which only makes the pool smaller), and its high-water mark.
        live: usize,
        peak_live: usize,
    }

    fn pool() -> &'static Mutex<Pool> {
        static POOL: OnceLock<Mutex<Pool>> = OnceLock::new();
        POOL.get_or_init(Default::default)
    }

    fn cap_bytes() -> usize {
        static CAP: OnceLock<usize> = OnceLock::new();
        *CAP.get_or_init(|| crate::switches::pool_mb().saturating_mul(1 << 20))
    }

    fn lock() -> std::sync::MutexGuard<'static, Pool> {
        pool().lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A pooled buffer of exactly `n` elements, if one is free (counts the hand-out either way).
    fn reuse(n: usize) -> Option<Vec<f32>> {
        if n < MIN_POOLED || cap_bytes() == 0 {
            return None;
        }
        let mut p = lock();
        p.live += n * 4;
        p.peak_live = p.peak_live.max(p.live);
        if let Some(v) = p.by_len.get_mut(&n).and_then(|b| b.pop()) {
            p.bytes -= n * 4;
            return Some(v);
        }
        // A miss with new sizes (e.g. a smaller last batch) must not grow the resident size to the
        // pool plus a second workload: free pooled buffers until pooled + live is within the
        // high-water mark plus a quarter (the slack leaves a steady workload's pool alone: at its
        // peak a few buffers that only the backward reuses are still pooled).
        let limit = p.peak_live + p.peak_live / 4;
        let mut evicted = Vec::new();
        while p.bytes > 0 && p.bytes + p.live > limit {
            let Some((&len, _)) = p.by_len.iter().find(|(_, b)| !b.is_empty()) else { break };
            if let Some(v) = p.by_len.get_mut(&len).and_then(|b| b.pop()) {
                p.bytes -= len * 4;
                evicted.push(v);
            }
        }
        p.by_len.retain(|_, b| !b.is_empty());
        drop(p);
        drop(evicted);
        None
    }

    /// `n` elements with unspecified values (stale values of a reused buffer, or zeros).
    pub fn take_f32(n: usize) -> Vec<f32> {
        reuse(n).unwrap_or_else(|| vec![0.0; n])
    }

    /// `n` zeros (a fresh allocation comes zeroed from the OS; only a reused one is cleared).
    pub fn take_f32_zeroed(n: usize) -> Vec<f32> {
        match reuse(n) {
            Some(mut v) => {
                v.fill(0.0);
                v
            }
            None => vec![0.0; n],
        }
    }

    /// Returns a buffer to the pool (dropped instead when small, oddly sized or over the cap).
    pub fn give_f32(v: Vec<f32>) {
        let n = v.len();
        if n < MIN_POOLED || cap_bytes() == 0 {
            return;
        }
        let mut p = lock();
        p.live = p.live.saturating_sub(n * 4);
        if n != v.capacity() || p.bytes + n * 4 > cap_bytes().min(p.peak_live) {
            drop(p);
            return;
        }
        p.bytes += n * 4;
        p.by_len.entry(n).or_default().push(v);
    }

    /// Bytes held by the pool now.
    pub fn pooled_bytes() -> usize {
        lock().bytes
    }

    /// Frees every pooled buffer and forgets the high-water mark (e.g. after training, before a
    /// phase with other sizes).
    pub fn release() {
        let mut p = lock();
        p.by_len.clear();
        p.bytes = 0;
        p.peak_live = p.live;
    }
}
