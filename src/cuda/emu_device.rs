//! The emulated device: host vectors from the caching allocator's books (size classes, as on CUDA) under
//! an optional memory limit, kernels run to completion through `emu::launch`, and while a graph is
//! captured the list of launches and fills in place of a CUDA graph.
use super::alloc::{capture_alloc_message, out_of_memory_message, size_class, BlockCache, MemoryStats};
use super::kernels::Kernel;
use anyhow::{anyhow, bail, Result};
use std::sync::Mutex;

/// One step of an emulated graph: a kernel launch (or a fill) with its parameters, replayed as recorded.
pub(super) type EmuStep = Box<dyn Fn() -> Result<()> + Send + Sync>;

pub(super) struct EmuDevice {
    limit: Option<usize>,
    cache: Mutex<BlockCache<Vec<f32>>>,
    /// The launch list of the graph being captured (None when not capturing).
    recording: Mutex<Option<Vec<EmuStep>>>,
}

impl EmuDevice {
    pub(super) fn new(limit: Option<usize>) -> Self {
        EmuDevice { limit, cache: Mutex::new(BlockCache::new()), recording: Mutex::new(None) }
    }

    pub(super) fn memory_stats(&self) -> MemoryStats {
        self.cache.lock().map(|c| c.stats).unwrap_or_default()
    }

    /// A host vector of `len` floats (its capacity rounded to the size class); a reused block keeps its
    /// stale values, as device memory does.
    pub(super) fn alloc(&self, len: usize, what: &str) -> Result<Vec<f32>> {
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

    pub(super) fn free(&self, v: Vec<f32>) {
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

    pub(super) fn capturing(&self) -> bool {
        self.recording.lock().map(|r| r.is_some()).unwrap_or(false)
    }

    /// Zero-fills `v` now, or records the fill during a capture.
    pub(super) fn zero(&self, v: &mut [f32]) -> Result<()> {
        let (addr, n) = (v.as_mut_ptr() as u64, v.len());
        let fill = move || {
            // SAFETY: replayed only by the graph that owns (or whose caller keeps) this buffer, so the `n`
            // floats at `addr` are live and not borrowed elsewhere while the replay runs.
            unsafe { std::slice::from_raw_parts_mut(addr as *mut f32, n) }.fill(0.0);
            Ok(())
        };
        if !self.record(fill)? {
            v.fill(0.0);
        }
        Ok(())
    }

    /// Runs `kernel` to completion, or records it during a capture.
    ///
    /// # Safety
    /// As `GpuDevice::launch`: every address in `params` is a live host buffer of this device, large enough.
    pub(super) unsafe fn launch<P: Copy + Send + Sync + 'static>(&self, kernel: &Kernel<P>, params: &P) -> Result<()> {
        let recorded = Kernel { name: kernel.name, module: kernel.module, emu: kernel.emu, dims: kernel.dims };
        let p = *params;
        // SAFETY: the caller's promise above holds at capture time, and `GpuGraph::replay`'s contract keeps
        // those buffers alive for every replay.
        if self.record(move || unsafe { super::emu::launch(&recorded, &p) })? {
            return Ok(());
        }
        // SAFETY: the caller's promise above.
        unsafe { super::emu::launch(kernel, params) }
    }

    /// A vector copy of `v` from the allocator, or None during a capture (a copy is then device work: the
    /// caller launches the copy kernel so that the capture records it).
    pub(super) fn copy_now(&self, v: &[f32], what: &str) -> Result<Option<Vec<f32>>> {
        if self.capturing() {
            return Ok(None);
        }
        let mut copy = self.alloc(v.len(), what)?;
        copy.copy_from_slice(v);
        Ok(Some(copy))
    }

    pub(super) fn begin_capture(&self) -> Result<()> {
        let mut rec = self.recording.lock().map_err(|_| anyhow!("emulated GPU graph recorder poisoned"))?;
        let mut cache = self.cache.lock().map_err(|_| anyhow!("emulated GPU allocator poisoned"))?;
        cache.begin_capture()?;
        *rec = Some(Vec::new());
        Ok(())
    }

    /// Ends the capture (always: the device is not capturing afterwards): the recorded steps and the blocks
    /// the captured work freed.
    pub(super) fn end_capture(&self) -> (Vec<EmuStep>, Vec<(usize, Vec<f32>)>) {
        let steps = match self.recording.lock() {
            Ok(mut r) => r.take().unwrap_or_default(),
            Err(poisoned) => poisoned.into_inner().take().unwrap_or_default(),
        };
        let blocks = match self.cache.lock() {
            Ok(mut c) => c.end_capture(),
            Err(poisoned) => poisoned.into_inner().end_capture(),
        };
        (steps, blocks)
    }
}
