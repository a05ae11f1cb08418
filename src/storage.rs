//! Element storage beneath the tensor: the element types (`DType`), the devices (`Device`), host
//! and GPU values (`Storage`) and the pool that large host buffers return to. No shapes, no autograd:
//! `float` views storage by element type, `tensor` gives it a shape and a tape node.

use crate::cuda::{GpuBuffer, GpuDevice};
use crate::memory_budget::try_zeroed_vec;
use anyhow::{bail, Result};

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

    /// `cpu`, `cuda` or `auto` (`--device`; the Python package's `device=`): the device the model and
    /// its inputs go to. Hidden choice `emu` (or env `HRK_DEVICE_EMU=1` with cuda/auto): the emulated GPU,
    /// which runs the CUDA kernels on the host — slow, for tests of the device path without a GPU.
    pub fn open(arg: &str) -> Result<Device> {
        use crate::cuda::{select_device, DeviceChoice, DeviceRequest};
        use anyhow::Context;
        if arg.eq_ignore_ascii_case("emu") || (crate::switches::device_emu() && !arg.eq_ignore_ascii_case("cpu")) {
            return Ok(Device::emulated());
        }
        let req: DeviceRequest = arg.parse()?;
        match select_device(req).context("--device")? {
            DeviceChoice::Cpu { fallback_reason } => {
                if let Some(r) = fallback_reason {
                    log::info!("--device auto: using the CPU ({r})");
                }
                Ok(Device::Cpu)
            }
            DeviceChoice::Cuda { ordinal, .. } => cuda_device(ordinal),
        }
    }
}

#[cfg(feature = "cuda")]
fn cuda_device(ordinal: usize) -> Result<Device> {
    use anyhow::Context;
    Ok(Device::Gpu(GpuDevice::cuda(ordinal).context("--device cuda")?))
}

#[cfg(not(feature = "cuda"))]
fn cuda_device(_ordinal: usize) -> Result<Device> {
    // select_device answers NotCompiled first; kept for completeness.
    bail!("{}", crate::cuda::CudaUnavailable::NotCompiled)
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
        match self {
            Storage::Cpu(CpuStorage::F32(v)) => Some(v),
            _ => None,
        }
    }
    pub fn as_f32_mut(&mut self) -> Option<&mut [f32]> {
        match self {
            Storage::Cpu(CpuStorage::F32(v)) => Some(v),
            _ => None,
        }
    }
    /// The host f64 values (None for f32 or GPU storage).
    pub fn as_f64(&self) -> Option<&[f64]> {
        match self {
            Storage::Cpu(CpuStorage::F64(v)) => Some(v),
            _ => None,
        }
    }
    pub fn as_f64_mut(&mut self) -> Option<&mut [f64]> {
        match self {
            Storage::Cpu(CpuStorage::F64(v)) => Some(v),
            _ => None,
        }
    }
    /// `n` elements whose values are unspecified (stale pooled values or zeros): for kernels that
    /// write every element, so no zero-fill pass is paid. An allocation that fails is an error naming
    /// `what` (e.g. "conv2d output") and its size.
    pub fn for_overwrite(dtype: DType, n: usize, what: &str) -> Result<Storage> {
        Ok(match dtype {
            DType::F32 => Storage::f32(pool::try_take_f32(n, what)?),
            DType::F64 => Storage::f64(try_zeroed_vec(n, what)?),
        })
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
    /// A copy whose failure (out of memory, on the host or a device) is an error.
    pub fn try_clone(&self) -> Result<Storage> {
        Ok(match self {
            Storage::Gpu(b) => Storage::Gpu(b.try_clone()?),
            Storage::Cpu(CpuStorage::F32(v)) => {
                let mut out = pool::try_take_f32(v.len(), "tensor copy")?;
                out.copy_from_slice(v);
                Storage::f32(out)
            }
            Storage::Cpu(CpuStorage::F64(v)) => {
                let mut out = try_zeroed_vec(v.len(), "tensor copy")?;
                out.copy_from_slice(v);
                Storage::f64(out)
            }
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

/// Host copy of a GPU buffer for the infallible accessors; a device that fails a download is unusable.
fn gpu_values(b: &GpuBuffer) -> Vec<f32> {
    b.to_vec().unwrap_or_else(|e| panic!("reading a {} buffer: {e:#}", b.device().name()))
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

    /// `take_f32`, with an allocation failure as an error naming `what` instead of an abort.
    pub fn try_take_f32(n: usize, what: &str) -> anyhow::Result<Vec<f32>> {
        // (A size past the address space is refused by the allocator's layout check, and must not
        // reach the pool's byte counts.)
        let fits = n <= isize::MAX as usize / 4;
        match fits.then(|| reuse(n)).flatten() {
            Some(v) => Ok(v),
            None => crate::memory_budget::try_zeroed_vec(n, what),
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_storage_allocation_names_the_tensor() {
        for dtype in [DType::F32, DType::F64] {
            // 2^46 elements: more than x86-64's user address space.
            let e = Storage::for_overwrite(dtype, 1 << 46, "conv2d output").unwrap_err().to_string();
            assert!(e.starts_with("out of memory: conv2d output (70368744177664 values of "), "{e}");
            let e = Storage::for_overwrite(dtype, usize::MAX / 2, "conv2d output").unwrap_err().to_string();
            assert!(e.contains("conv2d output"), "{e}");
        }
        assert_eq!(Storage::for_overwrite(DType::F32, 100_000, "x").unwrap().len(), 100_000);
    }
}
