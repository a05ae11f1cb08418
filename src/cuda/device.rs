//! The GPU device as the engine sees it: a `GpuDevice` handle (emulated on the host, or a real CUDA device
//! with feature `cuda`) and `GpuBuffer`, the f32 buffer behind `Storage::Gpu`. Ops fill the kernels'
//! `#[repr(C)]` parameter structs with `addr`/`addr_mut` of these buffers and call `GpuDevice::launch`;
//! the emulated backend runs exactly the kernels and launch geometry the CUDA backend runs.
use super::kernels::{self, Kernel};
use super::params::*;
use anyhow::{anyhow, bail, Result};
use std::fmt;
use std::sync::{Arc, Mutex, OnceLock};

#[cfg(feature = "cuda")]
use super::runtime::{CudaDev, DeviceBuffer};

enum Backend {
    /// Buffers are host vectors, launches go through `cuda::emu` (slow; tests on small shapes).
    Emulated(EmuDevice),
    #[cfg(feature = "cuda")]
    Cuda { dev: CudaDev, ordinal: usize },
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

/// What a device's caching allocator holds, in bytes of size classes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MemoryStats {
    /// Held by live buffers.
    pub in_use: usize,
    pub peak_in_use: usize,
    /// Taken from the device: in use + cached (freed, kept for reuse).
    pub reserved: usize,
    pub peak_reserved: usize,
    /// Requests the cache could not serve (each took fresh device memory).
    pub device_allocations: u64,
    /// Requests served from the cache.
    pub reuses: u64,
    /// Times the cache was handed back to the device to retry an allocation that did not fit.
    pub cache_flushes: u64,
}

impl MemoryStats {
    /// Freed bytes the allocator keeps for reuse.
    pub fn cached(&self) -> usize {
        self.reserved - self.in_use
    }
    /// Cached-but-free bytes over reserved bytes, in [0, 1] (0 when nothing is reserved).
    pub fn fragmentation(&self) -> f64 {
        if self.reserved == 0 {
            0.0
        } else {
            self.cached() as f64 / self.reserved as f64
        }
    }
    /// "in use 1.2 MiB (peak 3.4 MiB), reserved 4.0 MiB (peak 4.0 MiB), 12 % cached".
    pub fn summary(&self) -> String {
        format!(
            "in use {} (peak {}), reserved {} (peak {}), {:.0} % of it cached-free, {} device allocations, {} reuses",
            human_bytes(self.in_use),
            human_bytes(self.peak_in_use),
            human_bytes(self.reserved),
            human_bytes(self.peak_reserved),
            self.fragmentation() * 100.0,
            self.device_allocations,
            self.reuses
        )
    }
}

/// The caching allocator's books, shared by both backends (`B` is a host vector or a device address):
/// freed blocks wait in per-size-class free lists. While a graph is being captured, blocks freed by the
/// captured work go to the capture's own lists instead (only the captured work may reuse them, in the
/// same order on every replay) and end up owned by the graph.
pub(crate) struct BlockCache<B> {
    free: std::collections::HashMap<usize, Vec<B>>,
    capture: Option<std::collections::HashMap<usize, Vec<B>>>,
    pub(crate) stats: MemoryStats,
}

impl<B> BlockCache<B> {
    pub(crate) fn new() -> Self {
        BlockCache { free: Default::default(), capture: None, stats: MemoryStats::default() }
    }
    pub(crate) fn capturing(&self) -> bool {
        self.capture.is_some()
    }
    /// A cached block of `class` (the capture's own first), counted as in use.
    pub(crate) fn take(&mut self, class: usize) -> Option<B> {
        let from_capture = self.capture.as_mut().and_then(|c| c.get_mut(&class)?.pop());
        let block = from_capture.or_else(|| self.free.get_mut(&class)?.pop())?;
        self.stats.reuses += 1;
        self.note_in_use(class);
        Some(block)
    }
    /// A fresh block of `class` was taken from the device and is in use.
    pub(crate) fn note_fresh(&mut self, class: usize) {
        self.stats.device_allocations += 1;
        self.stats.reserved += class;
        self.stats.peak_reserved = self.stats.peak_reserved.max(self.stats.reserved);
        self.note_in_use(class);
    }
    fn note_in_use(&mut self, class: usize) {
        self.stats.in_use += class;
        self.stats.peak_in_use = self.stats.peak_in_use.max(self.stats.in_use);
    }
    /// A live block was freed: back to a free list.
    pub(crate) fn put(&mut self, class: usize, block: B) {
        self.stats.in_use -= class;
        let lists = self.capture.as_mut().unwrap_or(&mut self.free);
        lists.entry(class).or_default().push(block);
    }
    /// Empties the (non-capture) free lists; the caller returns the blocks to the device.
    pub(crate) fn drain_free(&mut self) -> Vec<(usize, B)> {
        let blocks: Vec<(usize, B)> =
            self.free.drain().flat_map(|(class, v)| v.into_iter().map(move |b| (class, b))).collect();
        self.stats.reserved -= blocks.iter().map(|(c, _)| c).sum::<usize>();
        if !blocks.is_empty() {
            self.stats.cache_flushes += 1;
        }
        blocks
    }
    pub(crate) fn begin_capture(&mut self) -> Result<()> {
        if self.capture.is_some() {
            bail!("a CUDA graph capture is already in progress on this device");
        }
        self.capture = Some(Default::default());
        Ok(())
    }
    /// Ends the capture: the blocks its work freed, now owned by the graph (counted as in use).
    pub(crate) fn end_capture(&mut self) -> Vec<(usize, B)> {
        let blocks: Vec<(usize, B)> = self
            .capture
            .take()
            .unwrap_or_default()
            .into_iter()
            .flat_map(|(class, v)| v.into_iter().map(move |b| (class, b)))
            .collect();
        for (class, _) in &blocks {
            self.note_in_use(*class);
        }
        blocks
    }
}

/// One step of an emulated graph: a kernel launch (or a fill) with its parameters, replayed as recorded.
type EmuStep = Box<dyn Fn() -> Result<()> + Send + Sync>;

/// The emulated device: host vectors from a caching allocator (size classes, as on CUDA) under an
/// optional memory `limit`, and the launch list of a graph being captured.
struct EmuDevice {
    limit: Option<usize>,
    cache: Mutex<BlockCache<Vec<f32>>>,
    recording: Mutex<Option<Vec<EmuStep>>>,
}

impl EmuDevice {
    fn new(limit: Option<usize>) -> Self {
        EmuDevice { limit, cache: Mutex::new(BlockCache::new()), recording: Mutex::new(None) }
    }

    /// A host vector of `len` floats (its capacity rounded to the size class); a reused block keeps its
    /// stale values, as device memory does.
    fn alloc(&self, len: usize, what: &str) -> Result<Vec<f32>> {
        let bytes = len.max(1).checked_mul(4).ok_or_else(|| anyhow!("GPU buffer of {len} floats overflows"))?;
        let class = size_class(bytes);
        let mut cache = self.cache.lock().map_err(|_| anyhow!("emulated GPU allocator poisoned"))?;
        if let Some(mut v) = cache.take(class) {
            v.resize(len, 0.0); // within the class's capacity: no reallocation
            return Ok(v);
        }
        if cache.capturing() {
            bail!("{}", capture_alloc_message(what, bytes));
        }
        if let Some(limit) = self.limit {
            if cache.stats.reserved + class > limit {
                // Hand the cache back and retry once (dropping the vectors is the emulated cudaFree).
                drop(cache.drain_free());
                if cache.stats.reserved + class > limit {
                    bail!("{}", out_of_memory_message(what, bytes, &cache.stats, Some(limit)));
                }
            }
        }
        cache.note_fresh(class);
        let mut v = Vec::with_capacity(class / 4);
        v.resize(len, 0.0);
        Ok(v)
    }

    fn free(&self, v: Vec<f32>) {
        let class = size_class(v.capacity().max(1) * 4);
        if let Ok(mut cache) = self.cache.lock() {
            cache.put(class, v);
        }
    }

    /// Records `step` when a capture is running on this device (Ok(true)); Ok(false): run it now.
    fn record(&self, step: impl Fn() -> Result<()> + Send + Sync + 'static) -> Result<bool> {
        let mut rec = self.recording.lock().map_err(|_| anyhow!("emulated GPU graph recorder poisoned"))?;
        match rec.as_mut() {
            Some(steps) => {
                steps.push(Box::new(step));
                Ok(true)
            }
            None => Ok(false),
        }
    }

    fn capturing(&self) -> bool {
        self.recording.lock().map(|r| r.is_some()).unwrap_or(false)
    }
}

/// The one-line error of an allocation during a graph capture (its warm-up should have cached one).
pub fn capture_alloc_message(what: &str, bytes: usize) -> String {
    format!(
        "CUDA graph capture: {what} a {} buffer needs fresh device memory, which a capture may not take",
        human_bytes(bytes)
    )
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

/// The one-line out-of-memory error of both backends, naming the request and what the allocator holds:
/// "CUDA out of memory allocating a 1.2 GiB buffer (in use 3.0 GiB, reserved 3.1 GiB of 4.0 GiB after
/// freeing the cache); use a smaller batch size".
pub fn out_of_memory_message(what: &str, bytes: usize, stats: &MemoryStats, limit: Option<usize>) -> String {
    let limit = limit.map_or(String::new(), |l| format!(" of {}", human_bytes(l)));
    format!(
        "CUDA out of memory {what} a {} buffer (in use {}, reserved {}{limit} after freeing the cache); use a smaller batch size",
        human_bytes(bytes),
        human_bytes(stats.in_use),
        human_bytes(stats.reserved)
    )
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
    /// The process-wide emulated GPU (always available).
    /// Its memory is unlimited unless `HRK_EMU_DEVICE_MEMORY` caps it (for out-of-memory tests of the CLI).
    pub fn emulated() -> GpuDevice {
        static EMU: OnceLock<GpuDevice> = OnceLock::new();
        EMU.get_or_init(|| GpuDevice(Arc::new(Backend::Emulated(EmuDevice::new(crate::switches::emu_device_memory())))))
            .clone()
    }

    /// A separate emulated GPU with `bytes` of device memory (not equal to `emulated()`), so tests can
    /// run out of memory, or capture graphs, without affecting others.
    pub fn emulated_with_memory(bytes: usize) -> GpuDevice {
        GpuDevice(Arc::new(Backend::Emulated(EmuDevice::new(Some(bytes)))))
    }

    /// Bytes (of size classes) held by live buffers of an emulated device (None for CUDA).
    pub fn emulated_bytes_in_use(&self) -> Option<usize> {
        match &*self.0 {
            Backend::Emulated(_) => Some(self.memory_stats().in_use),
            #[cfg(feature = "cuda")]
            Backend::Cuda { .. } => None,
        }
    }

    /// The caching allocator's figures: in use, reserved, their peaks, fragmentation.
    pub fn memory_stats(&self) -> MemoryStats {
        match &*self.0 {
            Backend::Emulated(e) => e.cache.lock().map(|c| c.stats).unwrap_or_default(),
            #[cfg(feature = "cuda")]
            Backend::Cuda { dev, .. } => dev.memory_stats(),
        }
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

    /// True while a graph capture runs on this device (host reads, uploads and syncs are then errors).
    pub fn capturing(&self) -> bool {
        match &*self.0 {
            Backend::Emulated(e) => e.capturing(),
            #[cfg(feature = "cuda")]
            Backend::Cuda { dev, .. } => dev.capturing(),
        }
    }

    fn refuse_during_capture(&self, what: &str) -> Result<()> {
        if self.capturing() {
            bail!(
                "CUDA graph capture: {what} is not allowed while capturing (the captured work must stay on the device)"
            );
        }
        Ok(())
    }

    /// A buffer of `len` floats whose contents the caller overwrites entirely (stale values of a reused
    /// block, as on the device).
    pub fn empty(&self, len: usize) -> Result<GpuBuffer> {
        let mem = match &*self.0 {
            Backend::Emulated(e) => Mem::Host(e.alloc(len, "allocating")?),
            #[cfg(feature = "cuda")]
            Backend::Cuda { dev, .. } => Mem::Cuda(dev.alloc(bytes_of(len)?, "allocating")?),
        };
        Ok(GpuBuffer { dev: self.clone(), mem, len })
    }

    /// A zero-filled buffer (for outputs the kernels accumulate into); the fill is device work, so a
    /// graph capture records it.
    pub fn zeros(&self, len: usize) -> Result<GpuBuffer> {
        let mut buf = self.empty(len)?;
        match (&*self.0, &mut buf.mem) {
            (Backend::Emulated(e), Mem::Host(v)) => {
                let (addr, n) = (v.as_mut_ptr() as u64, v.len());
                let fill = move || {
                    // SAFETY: replayed only by the graph that owns (or whose caller keeps) this buffer, so
                    // the `n` floats at `addr` are live and not borrowed elsewhere while the replay runs.
                    unsafe { std::slice::from_raw_parts_mut(addr as *mut f32, n) }.fill(0.0);
                    Ok(())
                };
                if !e.record(fill)? {
                    v.fill(0.0);
                }
            }
            #[cfg(feature = "cuda")]
            (Backend::Cuda { dev, .. }, Mem::Cuda(b)) => dev.zero(b)?,
            #[allow(unreachable_patterns)] // reachable with feature `cuda`
            _ => bail!("GPU buffer on the wrong backend"),
        }
        Ok(buf)
    }

    pub fn upload(&self, data: &[f32]) -> Result<GpuBuffer> {
        self.refuse_during_capture("uploading host data")?;
        let mut buf = self.empty(data.len()).map_err(|e| rename_oom(e, "allocating", "uploading"))?;
        buf.write_from_host(data)?;
        Ok(buf)
    }

    /// Queues `kernel` (runs it to completion under emulation; records it while a graph is captured).
    ///
    /// # Safety
    /// Every address in `params` must come from a live `GpuBuffer` of this device large enough for the
    /// sizes in `params`; written buffers must have been taken with `addr_mut` and alias no read buffer
    /// (except where the kernel reads and writes the same element, like `add`).
    pub unsafe fn launch<P: KernelParams>(&self, kernel: &Kernel<P>, params: &P) -> Result<()> {
        match &*self.0 {
            Backend::Emulated(e) => {
                let recorded = Kernel { name: kernel.name, module: kernel.module, emu: kernel.emu, dims: kernel.dims };
                let p = *params;
                // SAFETY: the caller's promise above holds at capture time, and `GpuGraph::replay`'s contract
                // keeps those buffers alive for every replay.
                if e.record(move || unsafe { super::emu::launch(&recorded, &p) })? {
                    return Ok(());
                }
                // SAFETY: the caller's promise above.
                unsafe { super::emu::launch(kernel, params) }
            }
            #[cfg(feature = "cuda")]
            Backend::Cuda { dev, .. } => P::launch_cuda(dev, kernel, params),
        }
    }

    /// Waits for queued work (a no-op under emulation; an error during a graph capture).
    pub fn synchronize(&self) -> Result<()> {
        self.refuse_during_capture("waiting for the device")?;
        match &*self.0 {
            Backend::Emulated(_) => Ok(()),
            #[cfg(feature = "cuda")]
            Backend::Cuda { dev, .. } => dev.synchronize(),
        }
    }

    /// Captures the device work of `body` into a graph (CUDA stream capture; under emulation the launch
    /// list), without running it: replay it with `GpuGraph::replay`. Capture-safe work only: no
    /// allocation the cache cannot serve (run the same work once eagerly first), no upload, download or
    /// synchronisation — each is an error, and the capture is then abandoned. Buffers the work frees are
    /// kept by the graph (replays reuse them in the same order); what `body` returns stays the caller's.
    pub fn capture<T>(&self, body: impl FnOnce() -> Result<T>) -> Result<(GpuGraph, T)> {
        match &*self.0 {
            Backend::Emulated(e) => {
                {
                    let mut rec = e.recording.lock().map_err(|_| anyhow!("emulated GPU graph recorder poisoned"))?;
                    let mut cache = e.cache.lock().map_err(|_| anyhow!("emulated GPU allocator poisoned"))?;
                    cache.begin_capture()?;
                    *rec = Some(Vec::new());
                }
                let out = body();
                let steps = e.recording.lock().map(|mut r| r.take().unwrap_or_default()).unwrap_or_default();
                let blocks = e.cache.lock().map(|mut c| c.end_capture()).unwrap_or_default();
                let memory: Vec<GpuBuffer> = blocks
                    .into_iter()
                    .map(|(_, v)| GpuBuffer { dev: self.clone(), len: v.len(), mem: Mem::Host(v) })
                    .collect();
                let out = out?;
                let launches = steps.len();
                Ok((GpuGraph { dev: self.clone(), exec: GraphExec::Emu(steps), _memory: memory, launches }, out))
            }
            #[cfg(feature = "cuda")]
            Backend::Cuda { dev, .. } => {
                dev.begin_capture()?;
                let out = body();
                let (graph, blocks) = dev.end_capture(out.is_ok());
                let memory: Vec<GpuBuffer> = blocks
                    .into_iter()
                    .map(|b| GpuBuffer { dev: self.clone(), len: b.bytes() / 4, mem: Mem::Cuda(b) })
                    .collect();
                let out = out?;
                let (graph, launches) = graph?;
                Ok((GpuGraph { dev: self.clone(), exec: GraphExec::Cuda(graph), _memory: memory, launches }, out))
            }
        }
    }
}

enum GraphExec {
    Emu(Vec<EmuStep>),
    #[cfg(feature = "cuda")]
    Cuda(super::runtime::CapturedGraph),
}

/// Device work captured once and replayed (a CUDA graph; under emulation the recorded launch list, run
/// in order). It owns the buffers the captured work freed.
pub struct GpuGraph {
    dev: GpuDevice,
    exec: GraphExec,
    _memory: Vec<GpuBuffer>,
    launches: usize,
}

impl GpuGraph {
    /// Launches (and fills) captured.
    pub fn launches(&self) -> usize {
        self.launches
    }

    /// Runs the captured work again (queued on CUDA; to completion under emulation).
    ///
    /// # Safety
    /// Every buffer the captured work used that the graph does not own (weights, inputs, outputs: whatever
    /// was live when the capture ended or was allocated before it) must still be alive.
    pub unsafe fn replay(&self) -> Result<()> {
        self.dev.refuse_during_capture("replaying a graph")?;
        match &self.exec {
            GraphExec::Emu(steps) => steps.iter().try_for_each(|step| step()),
            #[cfg(feature = "cuda")]
            GraphExec::Cuda(g) => g.launch(),
        }
    }
}

impl fmt::Debug for GpuGraph {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "GpuGraph({}, {} launches)", self.dev.name(), self.launches)
    }
}

#[cfg(feature = "cuda")]
fn bytes_of(len: usize) -> Result<usize> {
    // The allocator's size classes need ≥ 1 byte; kernels never touch a 0-length buffer.
    len.max(1).checked_mul(4).ok_or_else(|| anyhow!("GPU buffer of {len} floats overflows"))
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
    /// The values, copied to the host (waits for queued kernels; an error during a graph capture).
    pub fn to_vec(&self) -> Result<Vec<f32>> {
        self.dev.refuse_during_capture("reading device memory on the host")?;
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
    /// Overwrites the values with host data of the same length (the buffer keeps its address, so a
    /// graph that reads it sees the new values on its next replay).
    pub fn write_from_host(&mut self, data: &[f32]) -> Result<()> {
        if data.len() != self.len {
            bail!("GPU upload of {} floats into a buffer of {}", data.len(), self.len);
        }
        self.dev.refuse_during_capture("uploading host data")?;
        match &mut self.mem {
            Mem::Host(v) => v.copy_from_slice(data),
            #[cfg(feature = "cuda")]
            Mem::Cuda(b) => {
                if let Backend::Cuda { dev, .. } = &*self.dev.0 {
                    dev.upload_into(b, data)?;
                }
            }
        }
        Ok(())
    }
    /// A copy on the same device (the channel-copy kernel on CUDA and during a capture; a vector copy
    /// under emulation otherwise).
    pub fn try_clone(&self) -> Result<GpuBuffer> {
        if let (Backend::Emulated(e), Mem::Host(v)) = (&*self.dev.0, &self.mem) {
            if !e.capturing() {
                let mut copy = e.alloc(self.len, "copying")?;
                copy.copy_from_slice(v);
                return Ok(GpuBuffer { dev: self.dev.clone(), mem: Mem::Host(copy), len: self.len });
            }
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

impl Drop for GpuBuffer {
    fn drop(&mut self) {
        if let (Backend::Emulated(e), Mem::Host(v)) = (&*self.dev.0, &mut self.mem) {
            e.free(std::mem::take(v));
        }
        // A CUDA block returns to its allocator when its DeviceBuffer drops.
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
