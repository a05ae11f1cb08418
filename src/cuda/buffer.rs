//! `GpuBuffer`, the f32 buffer behind `Storage::Gpu`, the device's buffer constructors, and the two
//! kernel-backed buffer primitives storage itself needs below the op layer: a copy (`Storage::try_clone`)
//! and `+=` (gradient accumulation, `Storage::add_assign`).
use super::device::{GpuDevice, Mem};
use super::kernels;
use super::params::{ConcatParams, EltwiseParams};
use anyhow::{anyhow, bail, Result};
use std::fmt;

/// `len` f32 values on a GPU device. Not `Clone`: a copy of device memory can fail (out of memory), so
/// it is `try_clone` (storage has value semantics: `Tensor::update` copies shared storage before writing).
pub struct GpuBuffer {
    dev: GpuDevice,
    mem: Mem,
    len: usize,
}

impl GpuDevice {
    /// A buffer of `len` floats whose contents the caller overwrites entirely (stale values of a reused
    /// block, as on the device).
    pub fn empty(&self, len: usize) -> Result<GpuBuffer> {
        let mem = self.backend().alloc(len, "allocating")?;
        Ok(GpuBuffer { dev: self.clone(), mem, len })
    }

    /// A zero-filled buffer (for outputs the kernels accumulate into); the fill is device work, so a
    /// graph capture records it.
    pub fn zeros(&self, len: usize) -> Result<GpuBuffer> {
        let mut buf = self.empty(len)?;
        self.backend().zero(&mut buf.mem)?;
        Ok(buf)
    }

    pub fn upload(&self, data: &[f32]) -> Result<GpuBuffer> {
        self.refuse_during_capture("uploading host data")?;
        let mut buf = self.empty(data.len()).map_err(|e| rename_oom(e, "allocating", "uploading"))?;
        buf.write_from_host(data)?;
        Ok(buf)
    }
}

impl GpuBuffer {
    /// The buffer that takes over a block the device's allocator handed out (a graph's memory).
    pub(super) fn from_block(dev: &GpuDevice, mem: Mem, len: usize) -> GpuBuffer {
        GpuBuffer { dev: dev.clone(), mem, len }
    }
    pub fn len(&self) -> usize {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    pub fn device(&self) -> &GpuDevice {
        &self.dev
    }
    /// A raw launcher's size check: an error naming `op` and `what` unless the buffer holds `want` floats.
    pub fn expect_len(&self, op: &str, what: &str, want: usize) -> Result<()> {
        if self.len != want {
            bail!("{op}: {what} holds {} floats, the shape needs {want}", self.len);
        }
        Ok(())
    }
    /// A raw launcher's device check: an error naming `op` unless the buffer is on `dev`.
    pub fn expect_device(&self, op: &str, dev: &GpuDevice) -> Result<()> {
        if self.dev != *dev {
            bail!("{op}: buffer on {} but the input is on {}", self.dev.name(), dev.name());
        }
        Ok(())
    }
    /// Address for a kernel argument the kernel only reads.
    pub fn addr(&self) -> u64 {
        self.mem.addr()
    }
    /// Address for a kernel argument the kernel writes.
    pub fn addr_mut(&mut self) -> u64 {
        self.mem.addr_mut()
    }
    /// The values, copied to the host (waits for queued kernels; an error during a graph capture).
    pub fn to_vec(&self) -> Result<Vec<f32>> {
        self.dev.refuse_during_capture("reading device memory on the host")?;
        self.dev.backend().read(&self.mem, self.len)
    }
    /// Overwrites the values with host data of the same length (the buffer keeps its address, so a
    /// graph that reads it sees the new values on its next replay).
    pub fn write_from_host(&mut self, data: &[f32]) -> Result<()> {
        if data.len() != self.len {
            bail!("GPU upload of {} floats into a buffer of {}", data.len(), self.len);
        }
        self.dev.refuse_during_capture("uploading host data")?;
        self.dev.backend().write(&mut self.mem, data)
    }
    /// A copy on the same device (the channel-copy kernel on CUDA and during a capture; a vector copy
    /// under emulation otherwise).
    pub fn try_clone(&self) -> Result<GpuBuffer> {
        if let Some(mem) = self.dev.backend().copy_now(&self.mem, "copying")? {
            return Ok(GpuBuffer { dev: self.dev.clone(), mem, len: self.len });
        }
        let mut out = self.dev.empty(self.len).map_err(|e| rename_oom(e, "allocating", "copying"))?;
        copy(self, &mut out)?;
        Ok(out)
    }
}

/// The out-of-memory message of a copy says "copying" rather than "allocating".
fn rename_oom(e: anyhow::Error, from: &str, to: &str) -> anyhow::Error {
    let msg = e.to_string();
    match msg.strip_prefix(&format!("CUDA out of memory {from}")) {
        Some(rest) => anyhow!("CUDA out of memory {to}{rest}"),
        None => e,
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

impl Drop for GpuBuffer {
    fn drop(&mut self) {
        let mem = std::mem::replace(&mut self.mem, Mem::Host(Vec::new()));
        self.dev.backend().release(mem);
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
