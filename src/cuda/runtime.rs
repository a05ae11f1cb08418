//! The CUDA device (feature `cuda`): context + one stream, the embedded PTX modules, a caching device
//! allocator. Every launch (`CudaDev::launch`, reached through device.rs's `KernelParams`) passes the same
//! `#[repr(C)]` parameter struct and launch geometry (`Kernel::dims`) that the emulator tests exercise.
//! Launches are asynchronous; launch errors are checked at submission and execution errors surface at the
//! next synchronising call.
use super::alloc::{capture_alloc_message, out_of_memory_message, size_class, BlockCache, MemoryStats};
use super::driver::{cuda_ready, ptx};
use super::kernels::{self, Kernel};
use super::params::*;
use anyhow::{anyhow, bail, Result};
use cudarc::driver::{
    result, sys, CudaContext, CudaFunction, CudaStream, DeviceRepr, DriverError, LaunchConfig, PushKernelArg,
};
use std::collections::HashMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, Mutex};

macro_rules! device_repr {
    ($($t:ty),*) => {$(
        // SAFETY: a plain #[repr(C)] struct of integers, floats and device addresses (no references or
        // padding-dependent values), laid out as in params.h (checked field by field by tests/cuda_emu.rs).
        unsafe impl DeviceRepr for $t {}
    )*};
}
with_params_structs!(device_repr);

/// One-line message for a driver error, with the fix for the common ones.
pub fn driver_error(what: &str, e: DriverError) -> anyhow::Error {
    match e.0 {
        sys::CUresult::CUDA_ERROR_OUT_OF_MEMORY => anyhow!("CUDA out of memory while {what}; use a smaller batch size"),
        sys::CUresult::CUDA_ERROR_UNSUPPORTED_PTX_VERSION => anyhow!(
            "CUDA error while {what}: the driver is older than hrk's PTX (ISA {} needs CUDA {}.{} / driver {}); update the NVIDIA driver",
            super::driver::ptx::PTX_ISA, super::driver::MIN_DRIVER_VERSION / 1000, super::driver::MIN_DRIVER_VERSION % 1000 / 10, super::driver::ptx::PTX_MIN_DRIVER_BRANCH
        ),
        sys::CUresult::CUDA_ERROR_NO_DEVICE => anyhow!("CUDA error while {what}: no CUDA device is visible (check CUDA_VISIBLE_DEVICES)"),
        _ => anyhow!("CUDA error while {what}: {}", format!("{e:?}").replace('\n', " ")),
    }
}

type Pool = BlockCache<sys::CUdeviceptr>;

/// The pool and the stream its blocks are ordered on.
struct Allocator {
    stream: Arc<CudaStream>,
    pool: Mutex<Pool>,
}

impl Allocator {
    /// Returns the cached blocks to the driver.
    fn release_cached(&self, pool: &mut Pool) {
        for (_, p) in pool.drain_free() {
            // Best effort: a failing free has nothing useful to report (the memory stays reserved).
            // SAFETY: `p` came from malloc_async on this stream and sat in the free list, so no live buffer
            // refers to it; the stream orders the free after every kernel that used it.
            let _ = unsafe { result::free_async(p, self.stream.cu_stream()) };
        }
    }
}

impl Drop for Allocator {
    fn drop(&mut self) {
        if let Ok(mut pool) = self.pool.lock() {
            self.release_cached(&mut pool);
        }
    }
}

/// Device memory from the caching allocator; returns to its size class's free list on drop.
pub struct DeviceBuffer {
    ptr: sys::CUdeviceptr,
    bytes: usize,
    class: usize,
    alloc: Arc<Allocator>,
}

impl DeviceBuffer {
    /// Device address, for parameter structs.
    pub fn addr(&self) -> u64 {
        self.ptr
    }
    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

impl Drop for DeviceBuffer {
    fn drop(&mut self) {
        if let Ok(mut pool) = self.alloc.pool.lock() {
            pool.put(self.class, self.ptr);
        }
    }
}

/// An instantiated CUDA graph (cudarc's handle; the graph API is not thread-safe, so calls go through
/// the mutex).
pub struct CapturedGraph(Mutex<cudarc::driver::CudaGraph>);

// SAFETY: the CUgraph/CUgraphExec handles are only touched under the mutex (one thread at a time), which
// is the serialisation the driver documentation asks of graph objects.
unsafe impl Send for CapturedGraph {}
// SAFETY: as above: every access goes through the mutex.
unsafe impl Sync for CapturedGraph {}

impl CapturedGraph {
    pub fn launch(&self) -> Result<()> {
        let g = self.0.lock().map_err(|_| anyhow!("CUDA graph poisoned"))?;
        g.launch().map_err(|e| driver_error("launching a CUDA graph", e))
    }

    /// Nodes of the captured graph (`cuGraphGetNodes` with no node array: the count only).
    pub fn node_count(&self) -> Result<usize> {
        let g = self.0.lock().map_err(|_| anyhow!("CUDA graph poisoned"))?;
        let mut n = 0usize;
        // SAFETY: `cu_graph` is the live graph this handle owns (under the mutex); a null node array asks
        // only for the count, written to the local `n`.
        unsafe { sys::cuGraphGetNodes(g.cu_graph(), std::ptr::null_mut(), &mut n) }
            .result()
            .map_err(|e| driver_error("counting a CUDA graph's nodes", e))?;
        Ok(n)
    }
}

pub struct CudaDev {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    functions: HashMap<&'static str, CudaFunction>,
    alloc: Arc<Allocator>,
    /// Launches and fills queued since the current capture began (None when not capturing).
    capture_launches: Mutex<Option<usize>>,
    pub name: String,
}

impl CudaDev {
    /// Opens device `ordinal`: probes the driver first (no libcuda / no GPU / old driver give one-line
    /// errors), then creates the context and loads every embedded PTX module.
    pub fn new(ordinal: usize) -> Result<Self> {
        let info = cuda_ready()?;
        if ordinal >= info.device_count as usize {
            bail!("CUDA device {ordinal} requested but only {} visible", info.device_count);
        }
        // cudarc panics when it cannot load libcuda; the probe makes that unlikely, this makes it harmless.
        let ctx = catch_unwind(AssertUnwindSafe(|| CudaContext::new(ordinal)))
            .map_err(|_| anyhow!("CUDA unavailable: loading the CUDA driver library failed"))?
            .map_err(|e| driver_error("creating the CUDA context", e))?;
        let name = ctx.name().unwrap_or_else(|_| "CUDA device".to_string());
        // A stream of our own: the legacy default stream cannot be captured into a graph.
        let stream = ctx.new_stream().map_err(|e| driver_error("creating a CUDA stream", e))?;
        let mut modules = HashMap::new();
        for (module, text) in ptx::PTX_MODULES {
            let m = ctx.load_module(cudarc::nvrtc::Ptx::from_src(*text)).map_err(|e| match e.0 {
                // One line naming the driver found (cuDriverGetVersion, from the probe) and the one needed.
                sys::CUresult::CUDA_ERROR_UNSUPPORTED_PTX_VERSION => anyhow!(
                    "loading kernels/{module}.cu PTX: {}",
                    super::driver::CudaUnavailable::DriverTooOld { driver_version: info.driver_version }
                ),
                _ => driver_error(&format!("loading kernels/{module}.cu PTX"), e),
            })?;
            modules.insert(*module, m);
        }
        let mut functions = HashMap::new();
        for (module, name) in kernels::ALL {
            let m = modules.get(module).ok_or_else(|| anyhow!("PTX module {module} not embedded"))?;
            let f = m.load_function(name).map_err(|e| driver_error(&format!("finding kernel {name}"), e))?;
            functions.insert(*name, f);
        }
        let alloc = Arc::new(Allocator { stream: stream.clone(), pool: Mutex::new(BlockCache::new()) });
        Ok(CudaDev { ctx, stream, functions, alloc, capture_launches: Mutex::new(None), name })
    }

    pub fn capturing(&self) -> bool {
        self.capture_launches.lock().map(|c| c.is_some()).unwrap_or(false)
    }

    /// Starts capturing the stream's work into a graph, in THREAD_LOCAL mode: the driver itself rejects a
    /// capture-unsafe call from this thread (and invalidates the capture), behind our own rules that
    /// forbid syncs, copies and fresh allocations during the capture.
    pub fn begin_capture(&self) -> Result<()> {
        let mut launches = self.capture_launches.lock().map_err(|_| anyhow!("CUDA capture state poisoned"))?;
        self.alloc.pool.lock().map_err(|_| anyhow!("CUDA allocator poisoned"))?.begin_capture()?;
        if let Err(e) = self.stream.begin_capture(sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL) {
            if let Ok(mut pool) = self.alloc.pool.lock() {
                pool.end_capture();
            }
            return Err(driver_error("beginning a CUDA graph capture", e));
        }
        *launches = Some(0);
        Ok(())
    }

    /// Ends the capture (on every path: the stream is not capturing afterwards) and, when `keep`,
    /// instantiates the graph (an instantiation that runs out of memory is a one-line error); otherwise the
    /// captured graph is destroyed. Returns the graph with its launch count, and the blocks the captured
    /// work freed (the graph's to own).
    #[allow(clippy::type_complexity)]
    pub fn end_capture(&self, keep: bool) -> (Result<(CapturedGraph, usize)>, Vec<DeviceBuffer>) {
        let launches = match self.capture_launches.lock() {
            Ok(mut c) => c.take(),
            Err(poisoned) => poisoned.into_inner().take(),
        };
        // THREAD_LOCAL mode: this runs on the thread that began the capture (`GpuDevice::capture` is one call).
        let graph = self.stream.end_capture(sys::CUgraphInstantiate_flags(0));
        let blocks = match self.alloc.pool.lock() {
            Ok(mut p) => p.end_capture(),
            Err(poisoned) => poisoned.into_inner().end_capture(),
        };
        let launches = launches.unwrap_or(0);
        let blocks = blocks
            .into_iter()
            .map(|(class, ptr)| DeviceBuffer { ptr, bytes: class, class, alloc: self.alloc.clone() })
            .collect();
        let graph = match graph {
            _ if !keep => Err(anyhow!("CUDA graph capture abandoned")), // a captured graph drops here
            Ok(Some(g)) => Ok((CapturedGraph(Mutex::new(g)), launches)),
            Ok(None) => Err(anyhow!("CUDA graph capture produced no graph")),
            Err(e) => Err(driver_error("instantiating a CUDA graph", e)),
        };
        (graph, blocks)
    }

    /// Queues `kernel` with `params` on the stream.
    pub fn launch<P: DeviceRepr + Copy>(&self, kernel: &Kernel<P>, params: &P) -> Result<()> {
        let d = (kernel.dims)(params);
        let f = self.functions.get(kernel.name).ok_or_else(|| anyhow!("kernel {} not loaded", kernel.name))?;
        let cfg = LaunchConfig {
            grid_dim: (d.grid[0], d.grid[1], d.grid[2]),
            block_dim: (d.block[0], d.block[1], d.block[2]),
            shared_mem_bytes: d.shared_bytes,
        };
        let mut builder = self.stream.launch_builder(f);
        builder.arg(params);
        // SAFETY: the kernel takes exactly one argument, the #[repr(C)] struct `P` (as params.h declares it);
        // the addresses inside it are the caller's promise (GpuDevice::launch is unsafe for that reason).
        unsafe { builder.launch(cfg) }.map_err(|e| driver_error(&format!("launching {}", kernel.name), e))?;
        self.count_captured();
        Ok(())
    }

    /// One more graph node queued, when a capture is running.
    fn count_captured(&self) {
        if let Ok(mut c) = self.capture_launches.lock() {
            if let Some(n) = c.as_mut() {
                *n += 1;
            }
        }
    }

    /// Waits for all queued work; reports asynchronous kernel failures.
    pub fn synchronize(&self) -> Result<()> {
        self.stream.synchronize().map_err(|e| driver_error("running queued kernels", e))
    }

    /// Device memory of at least `bytes` (uninitialised) for `what` ("allocating", "copying"). Steady state
    /// reuses freed blocks; on out-of-memory the cache is handed back and the allocation retried once.
    /// During a capture only cached blocks may be used.
    pub fn alloc(&self, bytes: usize, what: &str) -> Result<DeviceBuffer> {
        let class = size_class(bytes);
        let mut pool = self.alloc.pool.lock().map_err(|_| anyhow!("CUDA allocator poisoned"))?;
        if let Some(ptr) = pool.take(class) {
            return Ok(DeviceBuffer { ptr, bytes, class, alloc: self.alloc.clone() });
        }
        if pool.capturing() {
            bail!("{}", capture_alloc_message(what, bytes));
        }
        self.ctx.bind_to_thread().map_err(|e| driver_error("binding the CUDA context", e))?;
        // SAFETY: the context is bound to this thread and the stream belongs to it.
        let ptr = match unsafe { result::malloc_async(self.stream.cu_stream(), class) } {
            Ok(p) => p,
            Err(e) if e.0 == sys::CUresult::CUDA_ERROR_OUT_OF_MEMORY => {
                self.alloc.release_cached(&mut pool);
                // The frees are stream-ordered: let them complete before asking again.
                self.stream.synchronize().map_err(|e| driver_error("freeing cached memory", e))?;
                // SAFETY: as above (same context, same stream).
                unsafe { result::malloc_async(self.stream.cu_stream(), class) }.map_err(|e| {
                    if e.0 == sys::CUresult::CUDA_ERROR_OUT_OF_MEMORY {
                        anyhow!("{}", out_of_memory_message(what, bytes, &pool.stats, None))
                    } else {
                        driver_error("allocating device memory", e)
                    }
                })?
            }
            Err(e) => return Err(driver_error("allocating device memory", e)),
        };
        pool.note_fresh(class);
        Ok(DeviceBuffer { ptr, bytes, class, alloc: self.alloc.clone() })
    }

    /// The allocator's figures.
    pub fn memory_stats(&self) -> MemoryStats {
        self.alloc.pool.lock().map(|p| p.stats).unwrap_or_default()
    }

    /// Copies host data into `buf` (synchronously: the host slice is only borrowed for the call).
    pub fn upload_into(&self, buf: &DeviceBuffer, data: &[f32]) -> Result<()> {
        if std::mem::size_of_val(data) > buf.bytes {
            bail!("upload of {} floats into a {}-byte device buffer", data.len(), buf.bytes);
        }
        if data.is_empty() {
            return Ok(());
        }
        self.ctx.bind_to_thread().map_err(|e| driver_error("binding the CUDA context", e))?;
        // SAFETY: `data` fits in `buf` (checked above) and stays borrowed until the synchronize below.
        unsafe { result::memcpy_htod_async(buf.ptr, data, self.stream.cu_stream()) }
            .map_err(|e| driver_error("copying to the device", e))?;
        self.synchronize()
    }

    pub fn download(&self, buf: &DeviceBuffer, out: &mut [f32]) -> Result<()> {
        if std::mem::size_of_val(out) > buf.bytes {
            bail!("download of {} floats from a {}-byte device buffer", out.len(), buf.bytes);
        }
        self.ctx.bind_to_thread().map_err(|e| driver_error("binding the CUDA context", e))?;
        // SAFETY: `out` fits in `buf` (checked above) and stays borrowed until the synchronize below.
        unsafe { result::memcpy_dtoh_async(out, buf.ptr, self.stream.cu_stream()) }
            .map_err(|e| driver_error("copying from the device", e))?;
        self.synchronize()
    }

    pub fn zero(&self, buf: &DeviceBuffer) -> Result<()> {
        self.ctx.bind_to_thread().map_err(|e| driver_error("binding the CUDA context", e))?;
        // SAFETY: `buf.bytes` bytes from `buf.ptr` belong to this live buffer (its class is at least that large).
        unsafe { result::memset_d8_async(buf.ptr, 0, buf.bytes, self.stream.cu_stream()) }
            .map_err(|e| driver_error("clearing device memory", e))?;
        self.count_captured(); // a memset node, counted as the emulator counts its fills
        Ok(())
    }
}
