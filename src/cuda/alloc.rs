//! The caching allocator's books, shared by the emulated and the CUDA backend: size classes, the per-class
//! free lists (`BlockCache`, with a capture's own lists), the figures they keep (`MemoryStats`) and the
//! one-line messages of a request that cannot be served.
use anyhow::{bail, Result};

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
