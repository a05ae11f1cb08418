//! The GPU device as the engine sees it: a `GpuDevice` handle on one of two backends, the emulated device
//! (`emu_device`) or a real CUDA device (`runtime`, feature `cuda`). Ops fill the kernels' `#[repr(C)]`
//! parameter structs with `addr`/`addr_mut` of `GpuBuffer`s and call `GpuDevice::launch`; the emulated
//! backend runs exactly the kernels and launch geometry the CUDA backend runs. Everything else the handle
//! does goes through the `Backend` trait, chosen in one place (`GpuDevice::backend`).
use super::alloc::MemoryStats;
use super::emu_device::{EmuDevice, EmuStep};
use super::kernels::Kernel;
use super::params::*;
use anyhow::{anyhow, bail, Result};
use std::fmt;
use std::sync::{Arc, Mutex, OnceLock};

#[cfg(feature = "cuda")]
use super::runtime::{CapturedGraph, CudaDev, DeviceBuffer};

/// Device memory of either backend: a host vector under emulation, a block of the CUDA allocator.
pub(super) enum Mem {
    Host(Vec<f32>),
    #[cfg(feature = "cuda")]
    Cuda(DeviceBuffer),
}

#[allow(unreachable_patterns)] // the `wrong backend` arms are reachable with feature `cuda`
impl Mem {
    pub(super) fn addr(&self) -> u64 {
        match self {
            Mem::Host(v) => v.as_ptr() as u64,
            #[cfg(feature = "cuda")]
            Mem::Cuda(b) => b.addr(),
        }
    }
    pub(super) fn addr_mut(&mut self) -> u64 {
        match self {
            Mem::Host(v) => v.as_mut_ptr() as u64,
            #[cfg(feature = "cuda")]
            Mem::Cuda(b) => b.addr(),
        }
    }
    /// Floats the block holds (a graph's block: its whole size class on CUDA).
    pub(super) fn floats(&self) -> usize {
        match self {
            Mem::Host(v) => v.len(),
            #[cfg(feature = "cuda")]
            Mem::Cuda(b) => b.bytes() / 4,
        }
    }
    fn host(&self) -> Result<&Vec<f32>> {
        match self {
            Mem::Host(v) => Ok(v),
            _ => bail!("GPU buffer on the wrong backend"),
        }
    }
    fn host_mut(&mut self) -> Result<&mut Vec<f32>> {
        match self {
            Mem::Host(v) => Ok(v),
            _ => bail!("GPU buffer on the wrong backend"),
        }
    }
    #[cfg(feature = "cuda")]
    fn cuda(&self) -> Result<&DeviceBuffer> {
        match self {
            Mem::Cuda(b) => Ok(b),
            _ => bail!("GPU buffer on the wrong backend"),
        }
    }
}

/// Work captured by a backend: the recorded launch list (emulated) or an instantiated CUDA graph.
pub(super) enum CapturedWork {
    Emu(Vec<EmuStep>),
    #[cfg(feature = "cuda")]
    Cuda(CapturedGraph),
}

impl CapturedWork {
    pub(super) fn replay(&self) -> Result<()> {
        match self {
            CapturedWork::Emu(steps) => steps.iter().try_for_each(|step| step()),
            #[cfg(feature = "cuda")]
            CapturedWork::Cuda(g) => g.launch(),
        }
    }
    /// Nodes of the graph: the recorded steps, or what the driver's graph holds (`cuGraphGetNodes`).
    pub(super) fn node_count(&self) -> Result<usize> {
        match self {
            CapturedWork::Emu(steps) => Ok(steps.len()),
            #[cfg(feature = "cuda")]
            CapturedWork::Cuda(g) => g.node_count(),
        }
    }
}

/// The capture's result as a backend hands it over: the work with its launch count (or why there is
/// none), and the blocks the captured work freed (the graph's to own, also when the graph is discarded).
pub(super) type EndedCapture = (Result<(CapturedWork, usize)>, Vec<Mem>);

/// What `GpuDevice`, `GpuBuffer` and `GpuGraph` ask of a backend, besides launching kernels.
pub(super) trait Backend: Send + Sync {
    fn memory_stats(&self) -> MemoryStats;
    fn capturing(&self) -> bool;
    /// `len` floats (stale values of a reused block) for `what` ("allocating", "copying").
    fn alloc(&self, len: usize, what: &str) -> Result<Mem>;
    /// Back to the allocator's free lists.
    fn release(&self, mem: Mem);
    /// Device work: recorded during a capture.
    fn zero(&self, mem: &mut Mem) -> Result<()>;
    fn write(&self, mem: &mut Mem, data: &[f32]) -> Result<()>;
    fn read(&self, mem: &Mem, len: usize) -> Result<Vec<f32>>;
    /// A copy made without a kernel launch, where the backend has one (None: launch the copy kernel).
    fn copy_now(&self, mem: &Mem, what: &str) -> Result<Option<Mem>>;
    fn synchronize(&self) -> Result<()>;
    fn begin_capture(&self) -> Result<()>;
    /// Ends the capture on every path (the backend is not capturing afterwards); `keep` false discards it.
    fn end_capture(&self, keep: bool) -> EndedCapture;
}

impl Backend for EmuDevice {
    fn memory_stats(&self) -> MemoryStats {
        EmuDevice::memory_stats(self)
    }
    fn capturing(&self) -> bool {
        EmuDevice::capturing(self)
    }
    fn alloc(&self, len: usize, what: &str) -> Result<Mem> {
        Ok(Mem::Host(EmuDevice::alloc(self, len, what)?))
    }
    #[allow(irrefutable_let_patterns)] // refutable with feature `cuda`
    fn release(&self, mem: Mem) {
        if let Mem::Host(v) = mem {
            self.free(v);
        }
    }
    fn zero(&self, mem: &mut Mem) -> Result<()> {
        EmuDevice::zero(self, mem.host_mut()?)
    }
    fn write(&self, mem: &mut Mem, data: &[f32]) -> Result<()> {
        mem.host_mut()?.copy_from_slice(data);
        Ok(())
    }
    fn read(&self, mem: &Mem, _len: usize) -> Result<Vec<f32>> {
        Ok(mem.host()?.clone())
    }
    fn copy_now(&self, mem: &Mem, what: &str) -> Result<Option<Mem>> {
        Ok(EmuDevice::copy_now(self, mem.host()?, what)?.map(Mem::Host))
    }
    fn synchronize(&self) -> Result<()> {
        Ok(())
    }
    fn begin_capture(&self) -> Result<()> {
        EmuDevice::begin_capture(self)
    }
    fn end_capture(&self, keep: bool) -> EndedCapture {
        let (steps, blocks) = EmuDevice::end_capture(self);
        let blocks = blocks.into_iter().map(|(_, v)| Mem::Host(v)).collect();
        let launches = steps.len();
        let work = if keep { Ok((CapturedWork::Emu(steps), launches)) } else { Err(capture_abandoned()) };
        (work, blocks)
    }
}

#[cfg(feature = "cuda")]
impl Backend for CudaDev {
    fn memory_stats(&self) -> MemoryStats {
        CudaDev::memory_stats(self)
    }
    fn capturing(&self) -> bool {
        CudaDev::capturing(self)
    }
    fn alloc(&self, len: usize, what: &str) -> Result<Mem> {
        // The allocator's size classes need ≥ 1 byte; kernels never touch a 0-length buffer.
        let bytes = len.max(1).checked_mul(4).ok_or_else(|| anyhow!("GPU buffer of {len} floats overflows"))?;
        Ok(Mem::Cuda(CudaDev::alloc(self, bytes, what)?))
    }
    fn release(&self, mem: Mem) {
        drop(mem); // a CUDA block returns to its allocator when its DeviceBuffer drops
    }
    fn zero(&self, mem: &mut Mem) -> Result<()> {
        CudaDev::zero(self, mem.cuda()?)
    }
    fn write(&self, mem: &mut Mem, data: &[f32]) -> Result<()> {
        self.upload_into(mem.cuda()?, data)
    }
    fn read(&self, mem: &Mem, len: usize) -> Result<Vec<f32>> {
        let mut out = vec![0.0f32; len];
        if len > 0 {
            self.download(mem.cuda()?, &mut out)?;
        }
        Ok(out)
    }
    fn copy_now(&self, _mem: &Mem, _what: &str) -> Result<Option<Mem>> {
        Ok(None)
    }
    fn synchronize(&self) -> Result<()> {
        CudaDev::synchronize(self)
    }
    fn begin_capture(&self) -> Result<()> {
        CudaDev::begin_capture(self)
    }
    fn end_capture(&self, keep: bool) -> EndedCapture {
        let (graph, blocks) = CudaDev::end_capture(self, keep);
        let blocks = blocks.into_iter().map(Mem::Cuda).collect();
        (graph.map(|(g, launches)| (CapturedWork::Cuda(g), launches)), blocks)
    }
}

/// Why a capture whose body failed has no graph.
pub(super) fn capture_abandoned() -> anyhow::Error {
    anyhow!("CUDA graph capture abandoned")
}

enum Kind {
    /// Buffers are host vectors, launches go through `cuda::emu` (slow; tests on small shapes).
    Emulated(EmuDevice),
    #[cfg(feature = "cuda")]
    Cuda { dev: CudaDev, ordinal: usize },
}

struct Inner {
    kind: Kind,
    /// The first call refused during the running capture: the driver invalidates a capture on a
    /// capture-unsafe call (THREAD_LOCAL mode), so the capture then ends without a graph.
    refused: Mutex<Option<String>>,
}

/// A handle to one GPU device; clones are the same device (equality is identity).
#[derive(Clone)]
pub struct GpuDevice(Arc<Inner>);

impl PartialEq for GpuDevice {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}
impl Eq for GpuDevice {}

impl fmt::Debug for GpuDevice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.name())
    }
}

/// Parameter structs the device can launch with (the CUDA backend needs `DeviceRepr`, implemented per
/// struct in runtime.rs; this trait hides that bound from the ops).
pub trait KernelParams: Copy + Send + Sync + 'static {
    #[cfg(feature = "cuda")]
    fn launch_cuda(dev: &CudaDev, kernel: &Kernel<Self>, params: &Self) -> Result<()>;
}

macro_rules! kernel_params {
    ($($t:ty),*) => {$(
        impl KernelParams for $t {
            #[cfg(feature = "cuda")]
            fn launch_cuda(dev: &CudaDev, kernel: &Kernel<Self>, params: &Self) -> Result<()> {
                dev.launch(kernel, params)
            }
        }
    )*};
}
with_params_structs!(kernel_params);

impl GpuDevice {
    fn with_kind(kind: Kind) -> GpuDevice {
        GpuDevice(Arc::new(Inner { kind, refused: Mutex::new(None) }))
    }

    /// The process-wide emulated GPU (always available).
    /// Its memory is unlimited unless `HRK_EMU_DEVICE_MEMORY` caps it (for out-of-memory tests of the CLI).
    pub fn emulated() -> GpuDevice {
        static EMU: OnceLock<GpuDevice> = OnceLock::new();
        EMU.get_or_init(|| GpuDevice::with_kind(Kind::Emulated(EmuDevice::new(crate::switches::emu_device_memory()))))
            .clone()
    }

    /// A separate emulated GPU with `bytes` of device memory (not equal to `emulated()`), so tests can
    /// run out of memory, or capture graphs, without affecting others.
    pub fn emulated_with_memory(bytes: usize) -> GpuDevice {
        GpuDevice::with_kind(Kind::Emulated(EmuDevice::new(Some(bytes))))
    }

    /// CUDA device `ordinal` (opened once per process; later calls share it).
    #[cfg(feature = "cuda")]
    pub fn cuda(ordinal: usize) -> Result<GpuDevice> {
        static OPENED: OnceLock<Mutex<Vec<(usize, GpuDevice)>>> = OnceLock::new();
        let opened = OPENED.get_or_init(|| Mutex::new(Vec::new()));
        let mut opened = opened.lock().map_err(|_| anyhow!("CUDA device table poisoned"))?;
        if let Some((_, d)) = opened.iter().find(|(o, _)| *o == ordinal) {
            return Ok(d.clone());
        }
        let dev = GpuDevice::with_kind(Kind::Cuda { dev: CudaDev::new(ordinal)?, ordinal });
        opened.push((ordinal, dev.clone()));
        Ok(dev)
    }

    /// The backend behind this handle: the one place that tells the two apart (besides `launch`).
    pub(super) fn backend(&self) -> &dyn Backend {
        match &self.0.kind {
            Kind::Emulated(e) => e,
            #[cfg(feature = "cuda")]
            Kind::Cuda { dev, .. } => dev,
        }
    }

    pub fn is_emulated(&self) -> bool {
        matches!(self.0.kind, Kind::Emulated(_))
    }

    /// `emu` or `cuda:N`.
    pub fn name(&self) -> String {
        match &self.0.kind {
            Kind::Emulated(_) => "emu".to_string(),
            #[cfg(feature = "cuda")]
            Kind::Cuda { ordinal, .. } => format!("cuda:{ordinal}"),
        }
    }

    /// Bytes (of size classes) held by live buffers of an emulated device (None for CUDA).
    pub fn emulated_bytes_in_use(&self) -> Option<usize> {
        self.is_emulated().then(|| self.memory_stats().in_use)
    }

    /// The caching allocator's figures: in use, reserved, their peaks, fragmentation.
    pub fn memory_stats(&self) -> MemoryStats {
        self.backend().memory_stats()
    }

    /// True while a graph capture runs on this device (host reads, uploads and syncs are then errors).
    pub fn capturing(&self) -> bool {
        self.backend().capturing()
    }

    /// An error for host work during a capture; the capture then ends without a graph, as the driver's
    /// does after a capture-unsafe call (also when the caller goes on after this error).
    pub(super) fn refuse_during_capture(&self, what: &str) -> Result<()> {
        if self.capturing() {
            let msg = format!(
                "CUDA graph capture: {what} is not allowed while capturing (the captured work must stay on the device)"
            );
            if let Ok(mut refused) = self.0.refused.lock() {
                refused.get_or_insert_with(|| msg.clone());
            }
            bail!("{msg}");
        }
        Ok(())
    }

    /// Forgets a refusal (a capture begins) or hands it over (a capture ends).
    pub(super) fn take_refusal(&self) -> Option<String> {
        match self.0.refused.lock() {
            Ok(mut r) => r.take(),
            Err(poisoned) => poisoned.into_inner().take(),
        }
    }

    /// Queues `kernel` (runs it to completion under emulation; records it while a graph is captured).
    ///
    /// # Safety
    /// Every address in `params` must come from a live `GpuBuffer` of this device large enough for the
    /// sizes in `params`; written buffers must have been taken with `addr_mut` and alias no read buffer
    /// (except where the kernel reads and writes the same element, like `add`).
    pub unsafe fn launch<P: KernelParams>(&self, kernel: &Kernel<P>, params: &P) -> Result<()> {
        match &self.0.kind {
            // SAFETY: the caller's promise above.
            Kind::Emulated(e) => unsafe { e.launch(kernel, params) },
            #[cfg(feature = "cuda")]
            Kind::Cuda { dev, .. } => P::launch_cuda(dev, kernel, params),
        }
    }

    /// Waits for queued work (a no-op under emulation; an error during a graph capture).
    pub fn synchronize(&self) -> Result<()> {
        self.refuse_during_capture("waiting for the device")?;
        self.backend().synchronize()
    }
}
