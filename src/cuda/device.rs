//! The GPU device as the engine sees it: a `GpuDevice` handle (emulated on the host, or a real CUDA device
//! with feature `cuda`) and `GpuBuffer`, the f32 buffer behind `Storage::Gpu`. Ops fill the kernels'
//! `#[repr(C)]` parameter structs with `addr`/`addr_mut` of these buffers and call `GpuDevice::launch`;
//! the emulated backend runs exactly the kernels and launch geometry the CUDA backend runs.
use super::kernels::{self, Kernel};
use super::params::*;
use anyhow::{bail, Result};
use std::fmt;
use std::sync::{Arc, OnceLock};

#[cfg(feature = "cuda")]
use super::runtime::{CudaDev, DeviceBuffer};

enum Backend {
    /// Buffers are host vectors, launches go through `cuda::emu` (slow; tests on small shapes).
    Emulated,
    #[cfg(feature = "cuda")]
    Cuda { dev: CudaDev, ordinal: usize },
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
kernel_params!(Conv2dParams, BatchNormParams, UpsampleParams, EltwiseParams, ConcatParams, MseParams, OptimParams, HeatmapParams, FusionParams);

impl GpuDevice {
    /// The process-wide emulated GPU (always available).
    pub fn emulated() -> GpuDevice {
        static EMU: OnceLock<GpuDevice> = OnceLock::new();
        EMU.get_or_init(|| GpuDevice(Arc::new(Backend::Emulated))).clone()
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
        matches!(*self.0, Backend::Emulated)
    }

    /// `emu` or `cuda:N`.
    pub fn name(&self) -> String {
        match &*self.0 {
            Backend::Emulated => "emu".to_string(),
            #[cfg(feature = "cuda")]
            Backend::Cuda { ordinal, .. } => format!("cuda:{ordinal}"),
        }
    }

    /// A buffer of `len` floats whose contents the caller overwrites entirely (zeroed under emulation).
    pub fn empty(&self, len: usize) -> Result<GpuBuffer> {
        let mem = match &*self.0 {
            Backend::Emulated => Mem::Host(vec![0.0; len]),
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
            Backend::Emulated => Mem::Host(data.to_vec()),
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
            Backend::Emulated => super::emu::launch(kernel, params),
            #[cfg(feature = "cuda")]
            Backend::Cuda { dev, .. } => P::launch_cuda(dev, kernel, params),
        }
    }

    /// Waits for queued work (a no-op under emulation).
    pub fn synchronize(&self) -> Result<()> {
        match &*self.0 {
            Backend::Emulated => Ok(()),
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

/// `len` f32 values on a GPU device. Cloning copies the values on the device (storage has value
/// semantics: `Tensor::update` clones shared storage before writing).
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
    let Ok(hw) = i32::try_from(src.len) else {
        bail!("GPU copy: {} floats exceed the kernels' 32-bit indexing", src.len);
    };
    if hw == 0 {
        return Ok(());
    }
    let p = ConcatParams { part: src.addr(), whole: dst.addr_mut(), n: 1, c_part: 1, c_whole: 1, c_offset: 0, hw, pad_: 0 };
    // Safety: both buffers live and hold `hw` floats.
    unsafe { src.dev.launch(&kernels::CONCAT_CHANNELS, &p) }
}

impl Clone for GpuBuffer {
    fn clone(&self) -> Self {
        // Storage::clone cannot fail; a failed device copy (out of memory) is fatal here.
        self.try_clone().unwrap_or_else(|e| panic!("copying a GPU buffer: {e:#}"))
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
    let p = EltwiseParams { a: out, b: b.addr(), out, n: a.len as i64 };
    // Safety: both buffers live with `n` floats.
    unsafe { a.dev.clone().launch(&kernels::ADD, &p) }
}
