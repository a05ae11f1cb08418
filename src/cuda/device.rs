//! The GPU device as the engine sees it: a `GpuDevice` handle (emulated on the host, or a real CUDA device
//! with feature `cuda`) and `GpuBuffer`, the f32 buffer behind `Storage::Gpu`. Ops fill the kernels'
//! `#[repr(C)]` parameter structs with `addr`/`addr_mut` of these buffers and call `GpuDevice::launch`;
//! the emulated backend runs exactly the kernels and launch geometry the CUDA backend runs.
use super::kernels::{self, Kernel};
use super::params::*;
use anyhow::{bail, Result};
use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

#[cfg(feature = "cuda")]
use super::runtime::{CudaDev, DeviceBuffer};

enum Backend {
    /// Buffers are host vectors, launches go through `cuda::emu` (slow; tests on small shapes).
    Emulated(EmuMemory),
    #[cfg(feature = "cuda")]
    Cuda { dev: CudaDev, ordinal: usize },
}

/// Device memory accounting of an emulated device, so out-of-memory paths can be tested: `limit` bytes
/// (None = unlimited) of which `used` are held by live buffers.
struct EmuMemory {
    limit: Option<usize>,
    used: AtomicUsize,
}

impl EmuMemory {
    fn reserve(&self, bytes: usize, what: &str) -> Result<()> {
        let Some(limit) = self.limit else {
            self.used.fetch_add(bytes, Ordering::Relaxed);
            return Ok(());
        };
        let mut used = self.used.load(Ordering::Relaxed);
        loop {
            let fits = used.checked_add(bytes).filter(|&total| total <= limit);
            let Some(total) = fits else {
                bail!("{}", out_of_memory_message(what, bytes, Some((used, limit))));
            };
            match self.used.compare_exchange_weak(used, total, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => return Ok(()),
                Err(now) => used = now,
            }
        }
    }
    fn release(&self, bytes: usize) {
        self.used.fetch_sub(bytes, Ordering::Relaxed);
    }
}

/// "1.2 GiB", "640.0 KiB", "12 B".
pub fn human_bytes(bytes: usize) -> String {
    let b = bytes as f64;
    match bytes {
        0..=1023 => format!("{bytes} B"),
        1024..=1048575 => format!("{:.1} KiB", b / 1024.0),
        1048576..=1073741823 => format!("{:.1} MiB", b / 1048576.0),
        _ => format!("{:.1} GiB", b / 1073741824.0),
    }
}

/// The one-line out-of-memory error of both backends: "CUDA out of memory allocating a 1.2 GiB buffer ...".
pub fn out_of_memory_message(what: &str, bytes: usize, usage: Option<(usize, usize)>) -> String {
    let usage = usage
        .map_or(String::new(), |(used, limit)| format!(" ({} of {} in use)", human_bytes(used), human_bytes(limit)));
    format!("CUDA out of memory {what} a {} buffer{usage}; use a smaller batch size", human_bytes(bytes))
}

/// A handle to one GPU device; clones are the same device (equality is identity).
#[derive(Clone)]
pub struct GpuDevice(Arc<Backend>);

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
pub trait KernelParams: Copy + 'static {
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
    /// The process-wide emulated GPU (always available).
    /// Its memory is unlimited unless `HRK_EMU_DEVICE_MEMORY` caps it (for out-of-memory tests of the CLI).
    pub fn emulated() -> GpuDevice {
        static EMU: OnceLock<GpuDevice> = OnceLock::new();
        EMU.get_or_init(|| {
            GpuDevice(Arc::new(Backend::Emulated(EmuMemory {
                limit: crate::switches::emu_device_memory(),
                used: AtomicUsize::new(0),
            })))
        })
        .clone()
    }

    /// A separate emulated GPU with `bytes` of device memory (not equal to `emulated()`), so tests can
    /// run out of memory without affecting others.
    pub fn emulated_with_memory(bytes: usize) -> GpuDevice {
        GpuDevice(Arc::new(Backend::Emulated(EmuMemory { limit: Some(bytes), used: AtomicUsize::new(0) })))
    }

    /// Bytes held by live buffers of an emulated device (None for CUDA).
    pub fn emulated_bytes_in_use(&self) -> Option<usize> {
        match &*self.0 {
            Backend::Emulated(m) => Some(m.used.load(Ordering::Relaxed)),
            #[cfg(feature = "cuda")]
            Backend::Cuda { .. } => None,
        }
    }

    /// Reserves the device memory of an emulated buffer of `len` floats.
    #[allow(irrefutable_let_patterns)] // refutable with feature `cuda`
    fn emu_reserve(&self, len: usize, what: &str) -> Result<()> {
        if let Backend::Emulated(m) = &*self.0 {
            let bytes = len.checked_mul(4).ok_or_else(|| anyhow::anyhow!("GPU buffer of {len} floats overflows"))?;
            m.reserve(bytes, what)?;
        }
        Ok(())
    }

    /// CUDA device `ordinal` (opened once per process; later calls share it).
    #[cfg(feature = "cuda")]
    pub fn cuda(ordinal: usize) -> Result<GpuDevice> {
        use std::sync::Mutex;
        static OPENED: OnceLock<Mutex<Vec<(usize, GpuDevice)>>> = OnceLock::new();
        let opened = OPENED.get_or_init(|| Mutex::new(Vec::new()));
        let mut opened = opened.lock().map_err(|_| anyhow::anyhow!("CUDA device table poisoned"))?;
        if let Some((_, d)) = opened.iter().find(|(o, _)| *o == ordinal) {
            return Ok(d.clone());
        }
        let dev = GpuDevice(Arc::new(Backend::Cuda { dev: CudaDev::new(ordinal)?, ordinal }));
        opened.push((ordinal, dev.clone()));
        Ok(dev)
    }

    pub fn is_emulated(&self) -> bool {
        matches!(*self.0, Backend::Emulated(_))
    }

    /// `emu` or `cuda:N`.
    pub fn name(&self) -> String {
        match &*self.0 {
            Backend::Emulated(_) => "emu".to_string(),
            #[cfg(feature = "cuda")]
            Backend::Cuda { ordinal, .. } => format!("cuda:{ordinal}"),
        }
    }

    /// A buffer of `len` floats whose contents the caller overwrites entirely (zeroed under emulation).
    pub fn empty(&self, len: usize) -> Result<GpuBuffer> {
        let mem = match &*self.0 {
            Backend::Emulated(_) => {
                self.emu_reserve(len, "allocating")?;
                Mem::Host(vec![0.0; len])
            }
            #[cfg(feature = "cuda")]
            Backend::Cuda { dev, .. } => Mem::Cuda(dev.alloc(bytes_of(len)?)?),
        };
        Ok(GpuBuffer { dev: self.clone(), mem, len })
    }

    /// A zero-filled buffer (for outputs the kernels accumulate into).
    pub fn zeros(&self, len: usize) -> Result<GpuBuffer> {
        let buf = self.empty(len)?;
        #[cfg(feature = "cuda")]
        if let (Backend::Cuda { dev, .. }, Mem::Cuda(b)) = (&*self.0, &buf.mem) {
            dev.zero(b)?;
        }
        Ok(buf)
    }

    pub fn upload(&self, data: &[f32]) -> Result<GpuBuffer> {
        let mem = match &*self.0 {
            Backend::Emulated(_) => {
                self.emu_reserve(data.len(), "uploading")?;
                Mem::Host(data.to_vec())
            }
            #[cfg(feature = "cuda")]
            Backend::Cuda { dev, .. } => Mem::Cuda(if data.is_empty() { dev.alloc(4)? } else { dev.upload(data)? }),
        };
        Ok(GpuBuffer { dev: self.clone(), mem, len: data.len() })
    }

    /// Queues `kernel` (runs it to completion under emulation).
    ///
    /// # Safety
    /// Every address in `params` must come from a live `GpuBuffer` of this device large enough for the
    /// sizes in `params`; written buffers must have been taken with `addr_mut` and alias no read buffer
    /// (except where the kernel reads and writes the same element, like `add`).
    pub unsafe fn launch<P: KernelParams>(&self, kernel: &Kernel<P>, params: &P) -> Result<()> {
        match &*self.0 {
            Backend::Emulated(_) => super::emu::launch(kernel, params),
            #[cfg(feature = "cuda")]
            Backend::Cuda { dev, .. } => P::launch_cuda(dev, kernel, params),
        }
    }

    /// Waits for queued work (a no-op under emulation).
    pub fn synchronize(&self) -> Result<()> {
        match &*self.0 {
            Backend::Emulated(_) => Ok(()),
            #[cfg(feature = "cuda")]
            Backend::Cuda { dev, .. } => dev.synchronize(),
        }
    }
}

#[cfg(feature = "cuda")]
fn bytes_of(len: usize) -> Result<usize> {
    // The allocator's size classes need ≥ 1 byte; kernels never touch a 0-length buffer.
    len.max(1).checked_mul(4).ok_or_else(|| anyhow::anyhow!("GPU buffer of {len} floats overflows"))
}

enum Mem {
    Host(Vec<f32>),
    #[cfg(feature = "cuda")]
    Cuda(DeviceBuffer),
}

/// `len` f32 values on a GPU device. Not `Clone`: a copy of device memory can fail (out of memory), so
/// it is `try_clone` (storage has value semantics: `Tensor::update` copies shared storage before writing).
pub struct GpuBuffer {
    dev: GpuDevice,
    mem: Mem,
    len: usize,
}

impl GpuBuffer {
    pub fn len(&self) -> usize {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    pub fn device(&self) -> &GpuDevice {
        &self.dev
    }
    /// Address for a kernel argument the kernel only reads.
    pub fn addr(&self) -> u64 {
        match &self.mem {
            Mem::Host(v) => v.as_ptr() as u64,
            #[cfg(feature = "cuda")]
            Mem::Cuda(b) => b.addr(),
        }
    }
    /// Address for a kernel argument the kernel writes.
    pub fn addr_mut(&mut self) -> u64 {
        match &mut self.mem {
            Mem::Host(v) => v.as_mut_ptr() as u64,
            #[cfg(feature = "cuda")]
            Mem::Cuda(b) => b.addr(),
        }
    }
    /// The values, copied to the host (waits for queued kernels).
    pub fn to_vec(&self) -> Result<Vec<f32>> {
        match &self.mem {
            Mem::Host(v) => Ok(v.clone()),
            #[cfg(feature = "cuda")]
            Mem::Cuda(b) => {
                let mut out = vec![0.0f32; self.len];
                if self.len > 0 {
                    if let Backend::Cuda { dev, .. } = &*self.dev.0 {
                        dev.download(b, &mut out)?;
                    }
                }
                Ok(out)
            }
        }
    }
    /// A copy on the same device (the channel-copy kernel on CUDA; a vector copy under emulation).
    #[allow(irrefutable_let_patterns)] // refutable with feature `cuda`
    pub fn try_clone(&self) -> Result<GpuBuffer> {
        if let Mem::Host(v) = &self.mem {
            self.dev.emu_reserve(self.len, "copying")?;
            return Ok(GpuBuffer { dev: self.dev.clone(), mem: Mem::Host(v.clone()), len: self.len });
        }
        let mut out = self.dev.empty(self.len)?;
        copy(self, &mut out)?;
        Ok(out)
    }
}

/// dst = src (same length, same device) with the concat kernel as a plain copy.
pub fn copy(src: &GpuBuffer, dst: &mut GpuBuffer) -> Result<()> {
    if src.len != dst.len || src.dev != dst.dev {
        bail!("GPU copy: {}[{}] into {}[{}]", src.dev.name(), src.len, dst.dev.name(), dst.len);
    }
    if src.len == 0 {
        return Ok(());
    }
    // One plane of `len` floats copied as a one-channel concat.
    let p = ConcatParams::new("GPU copy", src.addr(), dst.addr_mut(), 1, 1, 1, 0, src.len)?;
    // SAFETY: both buffers are live, on one device, and hold `len` floats (checked above); dst is written only.
    unsafe { src.dev.launch(&kernels::CONCAT_CHANNELS, &p) }
}

impl Drop for GpuBuffer {
    #[allow(irrefutable_let_patterns)] // refutable with feature `cuda`
    fn drop(&mut self) {
        if let (Backend::Emulated(m), Mem::Host(_)) = (&*self.dev.0, &self.mem) {
            m.release(self.len * 4);
        }
    }
}

impl fmt::Debug for GpuBuffer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "GpuBuffer({}, {} f32)", self.dev.name(), self.len)
    }
}

impl PartialEq for GpuBuffer {
    fn eq(&self, other: &Self) -> bool {
        self.dev == other.dev && self.len == other.len && self.to_vec().ok() == other.to_vec().ok()
    }
}

/// Converts a size to the kernels' `int`, naming the op when it does not fit.
pub fn i32_of(op: &str, v: usize) -> Result<i32> {
    i32::try_from(v).map_err(|_| anyhow::anyhow!("{op}: size {v} exceeds the CUDA kernels' 32-bit indexing"))
}

/// a += b elementwise with the `add` kernel (it reads and writes one index per thread, so out = a is safe).
pub fn add_assign(a: &mut GpuBuffer, b: &GpuBuffer) -> Result<()> {
    if a.len != b.len || a.dev != b.dev {
        bail!("GPU add: {}[{}] += {}[{}]", a.dev.name(), a.len, b.dev.name(), b.len);
    }
    let out = a.addr_mut();
    let p = EltwiseParams::new(out, b.addr(), out, a.len);
    // SAFETY: both buffers are live on one device with `n` floats (checked above); `add` reads and writes one
    // index per thread, so out = a is sound.
    unsafe { a.dev.clone().launch(&kernels::ADD, &p) }
}
