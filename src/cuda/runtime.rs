//! The CUDA device (feature `cuda`): context + one stream, the embedded PTX modules, a caching device
//! allocator. Every launch (`CudaDev::launch`, reached through device.rs's `KernelParams`) passes the same
//! `#[repr(C)]` parameter struct and launch geometry (`Kernel::dims`) that the emulator tests exercise.
//! Launches are asynchronous; launch errors are checked at submission and execution errors surface at the
//! next synchronising call.
use super::kernels::{self, Kernel};
use super::params::*;
use super::{cuda_ready, ptx};
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
            "CUDA error while {what}: the driver is older than hrk's PTX (ISA 9.0 needs CUDA 13.0 / driver R580); update the NVIDIA driver or rebuild with an older nvcc"
        ),
        sys::CUresult::CUDA_ERROR_NO_DEVICE => anyhow!("CUDA error while {what}: no CUDA device is visible (check CUDA_VISIBLE_DEVICES)"),
        _ => anyhow!("CUDA error while {what}: {}", format!("{e:?}").replace('\n', " ")),
    }
}

/// Size class of a request: 512-byte granules below 64 KiB, then quarter steps between powers of two
/// (at most 25 % slack), so freed blocks are found again by later requests of similar size.
pub fn size_class(bytes: usize) -> usize {
    let bytes = bytes.max(1);
    if bytes <= 64 << 10 {
        return bytes.div_ceil(512) * 512;
    }
    let pow = usize::BITS - 1 - bytes.leading_zeros(); // 2^pow <= bytes
    let quarter = 1usize << (pow - 2);
    bytes.div_ceil(quarter) * quarter
}

struct Pool {
    stream: Arc<CudaStream>,
    free: HashMap<usize, Vec<sys::CUdeviceptr>>,
    cached_bytes: usize,
    live_bytes: usize,
}

impl Pool {
    fn release_cached(&mut self) {
        for (_, ptrs) in self.free.drain() {
            for p in ptrs {
                // Best effort: a failing free at teardown has nothing useful to report.
                // SAFETY: `p` came from malloc_async on this stream and sits in the free list, so no live
                // buffer refers to it; the stream orders the free after every kernel that used it.
                let _ = unsafe { result::free_async(p, self.stream.cu_stream()) };
            }
        }
        self.cached_bytes = 0;
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        self.release_cached();
    }
}

/// Device memory from the caching allocator; returns to its size class's free list on drop.
pub struct DeviceBuffer {
    ptr: sys::CUdeviceptr,
    bytes: usize,
    class: usize,
    pool: Arc<Mutex<Pool>>,
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
        if let Ok(mut pool) = self.pool.lock() {
            pool.live_bytes -= self.class;
            pool.cached_bytes += self.class;
            pool.free.entry(self.class).or_default().push(self.ptr);
        }
    }
}

pub struct CudaDev {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    functions: HashMap<&'static str, CudaFunction>,
    pool: Arc<Mutex<Pool>>,
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
        let stream = ctx.default_stream();
        let mut modules = HashMap::new();
        for (module, text) in ptx::PTX_MODULES {
            let m = ctx
                .load_module(cudarc::nvrtc::Ptx::from_src(*text))
                .map_err(|e| driver_error(&format!("loading kernels/{module}.cu PTX"), e))?;
            modules.insert(*module, m);
        }
        let mut functions = HashMap::new();
        for (module, name) in kernels::ALL {
            let m = modules.get(module).ok_or_else(|| anyhow!("PTX module {module} not embedded"))?;
            let f = m.load_function(name).map_err(|e| driver_error(&format!("finding kernel {name}"), e))?;
            functions.insert(*name, f);
        }
        let pool =
            Arc::new(Mutex::new(Pool { stream: stream.clone(), free: HashMap::new(), cached_bytes: 0, live_bytes: 0 }));
        Ok(CudaDev { ctx, stream, functions, pool, name })
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
        Ok(())
    }

    /// Waits for all queued work; reports asynchronous kernel failures.
    pub fn synchronize(&self) -> Result<()> {
        self.stream.synchronize().map_err(|e| driver_error("running queued kernels", e))
    }

    /// Device memory of at least `bytes` (uninitialised). Steady state reuses freed blocks; on OOM the
    /// cache is released and the allocation retried once.
    pub fn alloc(&self, bytes: usize) -> Result<DeviceBuffer> {
        let class = size_class(bytes);
        let mut pool = self.pool.lock().map_err(|_| anyhow!("CUDA allocator poisoned"))?;
        let ptr = match pool.free.get_mut(&class).and_then(|v| v.pop()) {
            Some(p) => {
                pool.cached_bytes -= class;
                p
            }
            None => {
                self.ctx.bind_to_thread().map_err(|e| driver_error("binding the CUDA context", e))?;
                // SAFETY: the context is bound to this thread and the stream belongs to it.
                match unsafe { result::malloc_async(self.stream.cu_stream(), class) } {
                    Ok(p) => p,
                    Err(e) if e.0 == sys::CUresult::CUDA_ERROR_OUT_OF_MEMORY => {
                        pool.release_cached();
                        self.stream.synchronize().map_err(|e| driver_error("freeing cached memory", e))?;
                        // SAFETY: as above (same context, same stream).
                        unsafe { result::malloc_async(self.stream.cu_stream(), class) }.map_err(|_| {
                            anyhow!(
                                "CUDA out of memory allocating {:.1} MiB ({:.1} MiB in use by hrk); use a smaller batch size",
                                class as f64 / 1048576.0,
                                pool.live_bytes as f64 / 1048576.0
                            )
                        })?
                    }
                    Err(e) => return Err(driver_error("allocating device memory", e)),
                }
            }
        };
        pool.live_bytes += class;
        Ok(DeviceBuffer { ptr, bytes, class, pool: self.pool.clone() })
    }

    /// (live, cached) bytes held by the allocator.
    pub fn memory_stats(&self) -> (usize, usize) {
        self.pool.lock().map(|p| (p.live_bytes, p.cached_bytes)).unwrap_or((0, 0))
    }

    pub fn upload(&self, data: &[f32]) -> Result<DeviceBuffer> {
        let buf = self.alloc(std::mem::size_of_val(data))?;
        self.ctx.bind_to_thread().map_err(|e| driver_error("binding the CUDA context", e))?;
        // SAFETY: `buf` holds at least size_of_val(data) bytes (allocated just above for it) and the host slice
        // stays borrowed until the synchronize below.
        unsafe { result::memcpy_htod_async(buf.ptr, data, self.stream.cu_stream()) }
            .map_err(|e| driver_error("copying to the device", e))?;
        // The host slice is borrowed only for this call: wait until the copy has read it.
        self.synchronize()?;
        Ok(buf)
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
            .map_err(|e| driver_error("clearing device memory", e))
    }
}
