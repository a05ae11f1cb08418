//! CUDA graphs: `GpuDevice::capture` records device work without running it (a CUDA stream capture in
//! THREAD_LOCAL mode; under emulation the launch list), `GpuGraph::replay` runs it again, and
//! `GraphCache` keeps one captured entry per key (an input shape) for the inference engine and the
//! training step.
use super::buffer::GpuBuffer;
use super::device::{capture_abandoned, CapturedWork, GpuDevice};
use anyhow::Result;
use std::fmt;
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};

/// Device work captured once and replayed (a CUDA graph; under emulation the recorded launch list, run
/// in order). It owns the buffers the captured work freed.
pub struct GpuGraph {
    dev: GpuDevice,
    work: CapturedWork,
    _memory: Vec<GpuBuffer>,
    launches: usize,
}

impl GpuDevice {
    /// Captures the device work of `body` into a graph (CUDA stream capture; under emulation the launch
    /// list), without running it: replay it with `GpuGraph::replay`. Capture-safe work only: no
    /// allocation the cache cannot serve (run the same work once eagerly first), no upload, download or
    /// synchronisation — each is an error that also invalidates the capture, as the driver does. The
    /// capture ends on every path: when `body` fails or panics the graph is discarded (and the panic goes
    /// on), and the device is not capturing afterwards. Buffers the work frees are kept by the graph
    /// (replays reuse them in the same order); what `body` returns stays the caller's.
    pub fn capture<T>(&self, body: impl FnOnce() -> Result<T>) -> Result<(GpuGraph, T)> {
        let backend = self.backend();
        backend.begin_capture()?;
        self.take_refusal(); // what an earlier capture was refused is not this one's
        let out = catch_unwind(AssertUnwindSafe(body));
        let refused = self.take_refusal();
        let (work, blocks) = backend.end_capture(matches!(out, Ok(Ok(_))) && refused.is_none());
        let memory: Vec<GpuBuffer> = blocks
            .into_iter()
            .map(|mem| {
                let len = mem.floats();
                GpuBuffer::from_block(self, mem, len)
            })
            .collect();
        let out = match out {
            Ok(out) => out?,
            Err(panic) => {
                drop(memory);
                resume_unwind(panic)
            }
        };
        if let Some(refused) = refused {
            return Err(capture_abandoned().context(refused));
        }
        let (work, launches) = work?;
        Ok((GpuGraph { dev: self.clone(), work, _memory: memory, launches }, out))
    }
}

impl GpuGraph {
    /// Launches (and fills) captured.
    pub fn launches(&self) -> usize {
        self.launches
    }

    /// Nodes in the graph: on CUDA what the driver captured (`cuGraphGetNodes`), under emulation the
    /// recorded steps. Equal to `launches` when nothing escaped the capture.
    pub fn node_count(&self) -> Result<usize> {
        self.work.node_count()
    }

    /// Runs the captured work again (queued on CUDA; to completion under emulation).
    ///
    /// # Safety
    /// Every buffer the captured work used that the graph does not own (weights, inputs, outputs: whatever
    /// was live when the capture ended or was allocated before it) must still be alive.
    pub unsafe fn replay(&self) -> Result<()> {
        self.dev.refuse_during_capture("replaying a graph")?;
        self.work.replay()
    }
}

impl fmt::Debug for GpuGraph {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "GpuGraph({}, {} launches)", self.dev.name(), self.launches)
    }
}

/// How often graphs were captured and replayed (inference forwards in `GpuInferNet`, training steps in
/// `train::graph`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GraphCounts {
    pub captures: usize,
    pub replays: usize,
    /// Launches in the most recently used graph (training: the last captured step, forward to update).
    pub last_launches: usize,
}

/// What `GraphCache::lookup` found for a key.
pub enum Lookup<'a, T> {
    /// A captured entry, now the most recently used.
    Captured(&'a mut T),
    /// The key's capture failed before: it runs eagerly.
    Eager,
    /// Never seen, evicted, or dropped as stale: warm up and capture.
    Missing,
}

/// Captured entries by key (an input shape), most recently used last, at most `capacity` of them (each
/// holds the memory of one captured run). `T` is what a captured entry holds: the graphs and the
/// buffers they read and write. A key whose capture failed is remembered and runs eagerly.
pub struct GraphCache<K, T> {
    entries: Vec<(K, Option<T>)>,
    capacity: usize,
    counts: GraphCounts,
}

impl<K: PartialEq, T> GraphCache<K, T> {
    pub fn new(capacity: usize) -> Self {
        GraphCache { entries: Vec::new(), capacity: capacity.max(1), counts: GraphCounts::default() }
    }

    /// Captures and replays so far (`last_launches` as the owner last set it).
    pub fn counts(&self) -> GraphCounts {
        self.counts
    }

    /// The owner's launch count of the graph it used last (`GraphCounts::last_launches`).
    pub fn set_last_launches(&mut self, launches: usize) {
        self.counts.last_launches = launches;
    }

    /// A replay happened.
    pub fn note_replay(&mut self) {
        self.counts.replays += 1;
    }

    /// The entry of `key`, which becomes the most recently used. A captured entry that `valid` rejects
    /// (its addresses moved) is dropped: `Missing`, so the key is captured again.
    pub fn lookup(&mut self, key: &K, valid: impl FnOnce(&T) -> bool) -> Lookup<'_, T> {
        let Some(i) = self.entries.iter().position(|(k, _)| k == key) else { return Lookup::Missing };
        let entry = self.entries.remove(i);
        if entry.1.as_ref().is_some_and(|t| !valid(t)) {
            return Lookup::Missing;
        }
        self.entries.push(entry);
        match self.entries.last_mut() {
            Some((_, Some(t))) => Lookup::Captured(t),
            _ => Lookup::Eager,
        }
    }

    /// The captured entry of `key`, without touching the order.
    pub fn get(&self, key: &K) -> Option<&T> {
        self.entries.iter().find(|(k, _)| k == key).and_then(|(_, t)| t.as_ref())
    }

    /// True when `key`'s capture failed before (it runs eagerly).
    pub fn failed(&self, key: &K) -> bool {
        self.entries.iter().any(|(k, t)| k == key && t.is_none())
    }

    /// The most recently used captured entry.
    pub fn most_recent(&self) -> Option<&T> {
        self.entries.iter().rev().find_map(|(_, t)| t.as_ref())
    }

    /// Stores the outcome of `key`'s capture as the most recently used entry (replacing the key's entry,
    /// evicting the least recently used one when full): a captured entry is counted; a failure is handed
    /// to `on_failure` (the owner logs it) and the key runs eagerly from then on.
    pub fn store(&mut self, key: K, captured: Result<T>, on_failure: impl FnOnce(&anyhow::Error)) {
        let entry = match captured {
            Ok(t) => {
                self.counts.captures += 1;
                Some(t)
            }
            Err(e) => {
                on_failure(&e);
                None
            }
        };
        self.entries.retain(|(k, _)| *k != key);
        if self.entries.len() >= self.capacity {
            self.entries.remove(0);
        }
        self.entries.push((key, entry));
    }

    /// The whole flow for work whose eager run and capture happen in one call: a captured key replays
    /// (`replay`), a failed one runs `eager`, a new one runs `warm_up` (eagerly: its answer is returned,
    /// and its allocations leave in the device's cache every block the capture then takes) and then
    /// `capture` with what the warm-up handed over.
    pub fn run<R, W>(
        &mut self, key: K, replay: impl FnOnce(&mut T) -> Result<R>, eager: impl FnOnce() -> Result<R>,
        warm_up: impl FnOnce() -> Result<(R, W)>, capture: impl FnOnce(W) -> Result<T>,
        on_failure: impl FnOnce(&anyhow::Error),
    ) -> Result<R> {
        match self.lookup(&key, |_| true) {
            Lookup::Captured(t) => {
                let out = replay(t)?;
                self.note_replay();
                Ok(out)
            }
            Lookup::Eager => eager(),
            Lookup::Missing => {
                let (out, handed_over) = warm_up()?;
                let captured = capture(handed_over);
                self.store(key, captured, on_failure);
                Ok(out)
            }
        }
    }
}

impl<K, T> fmt::Debug for GraphCache<K, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "GraphCache({} entries, {:?})", self.entries.len(), self.counts)
    }
}
