//! Multi-threaded batch loader. Worker threads decode, crop and build targets for whole
//! batches in parallel; batches come out in order, with at most `prefetch` batches built
//! ahead of the consumer. Sample order and augmentation depend only on (seed, epoch), so
//! the batches are identical for any number of threads (0 = build in the caller's thread).

use super::augment::epoch_order;
use super::dataset::FaceDataset;
use super::sample::SampleMeta;
use crate::memory_budget::try_zeroed_vec;
use anyhow::{anyhow, bail, Result};
use std::collections::BTreeMap;
use std::sync::mpsc::{channel, Receiver};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoaderConfig {
    pub batch_size: usize,
    /// TRAIN.SHUFFLE for training; the reference never shuffles the validation/test loader.
    pub shuffle: bool,
    /// The reference keeps the last partial batch (no drop_last).
    pub drop_last: bool,
    /// Worker threads (WORKERS); 0 builds batches in the consumer thread.
    pub threads: usize,
    /// Batches built ahead of the consumer (at least 1).
    pub prefetch: usize,
    pub seed: u64,
}

impl LoaderConfig {
    pub fn new(batch_size: usize, shuffle: bool, threads: usize, seed: u64) -> Self {
        Self { batch_size, shuffle, drop_last: false, threads, prefetch: (2 * threads).max(2), seed }
    }

    /// Batches alive at once at most: those built ahead and the one the consumer holds.
    pub fn batches_held(&self) -> usize {
        self.prefetch + 1
    }
}

/// A batch: `input` [N,3,H,W] and `target` [N,J,h,w], contiguous float32.
#[derive(Clone, Debug, PartialEq)]
pub struct Batch {
    /// Position of the batch in its epoch.
    pub batch_index: usize,
    pub input: Vec<f32>,
    pub target: Vec<f32>,
    pub input_shape: [usize; 4],
    pub target_shape: [usize; 4],
    pub metas: Vec<SampleMeta>,
}

impl Batch {
    pub fn len(&self) -> usize {
        self.metas.len()
    }

    pub fn is_empty(&self) -> bool {
        self.metas.is_empty()
    }
}

/// Builds one batch from dataset indices (augmentation drawn from (seed, epoch, index)).
pub fn build_batch(ds: &FaceDataset, indices: &[usize], seed: u64, epoch: u64, batch_index: usize) -> Result<Batch> {
    let (il, tl) = (ds.input_len(), ds.target_len());
    let n = indices.len();
    let mut input = try_zeroed_vec(n * il, "the batch's input crops")?;
    let mut target = try_zeroed_vec(n * tl, "the batch's target heatmaps")?;
    let mut metas = Vec::with_capacity(n);
    for (k, &idx) in indices.iter().enumerate() {
        let aug = ds.augmentation_for(idx, seed, epoch);
        // (fresh zeroed buffers: the targets need no second zeroing)
        let meta =
            ds.fill_sample_on_zeros(idx, &aug, &mut input[k * il..(k + 1) * il], &mut target[k * tl..(k + 1) * tl])?;
        metas.push(meta);
    }
    let s = &ds.spec;
    Ok(Batch {
        batch_index,
        input,
        target,
        input_shape: [n, 3, s.image_size[0], s.image_size[1]],
        target_shape: [n, s.num_joints, s.heatmap_size[0], s.heatmap_size[1]],
        metas,
    })
}

pub struct DataLoader {
    dataset: Arc<FaceDataset>,
    cfg: LoaderConfig,
}

/// Keeps glibc malloc from returning every multi-megabyte image/target buffer to the kernel:
/// with its defaults each sample's decode/crop/target buffers are fresh mmaps, and the page
/// faults and page clearing cost about a third of a sample's CPU time. Raises the mmap and
/// trim thresholds once per process (no effect on other allocators or platforms).
pub fn tune_allocator_for_images() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        static ONCE: std::sync::Once = std::sync::Once::new();
        ONCE.call_once(|| {
            extern "C" {
                fn mallopt(param: i32, value: i32) -> i32;
            }
            const M_TRIM_THRESHOLD: i32 = -1;
            const M_MMAP_THRESHOLD: i32 = -3;
            // SAFETY: mallopt only changes allocator tuning parameters; glibc documents it as
            // callable at any time and these values are within its accepted ranges.
            unsafe {
                mallopt(M_MMAP_THRESHOLD, 32 << 20);
                mallopt(M_TRIM_THRESHOLD, 256 << 20);
            }
        });
    }
}

impl DataLoader {
    pub fn new(dataset: Arc<FaceDataset>, cfg: LoaderConfig) -> Result<Self> {
        if cfg.batch_size == 0 {
            bail!("data loader for {}: batch size must be positive", dataset.spec.annotations.display());
        }
        tune_allocator_for_images();
        Ok(Self { dataset, cfg })
    }

    pub fn dataset(&self) -> &Arc<FaceDataset> {
        &self.dataset
    }

    pub fn config(&self) -> &LoaderConfig {
        &self.cfg
    }

    /// Dataset indices of every batch of `epoch`, in order.
    pub fn batch_indices(&self, epoch: u64) -> Vec<Vec<usize>> {
        let order = epoch_order(self.dataset.len(), self.cfg.seed, epoch, self.cfg.shuffle);
        let mut batches: Vec<Vec<usize>> = order.chunks(self.cfg.batch_size).map(|c| c.to_vec()).collect();
        if self.cfg.drop_last && batches.last().is_some_and(|b| b.len() < self.cfg.batch_size) {
            batches.pop();
        }
        batches
    }

    pub fn num_batches(&self) -> usize {
        let (n, b) = (self.dataset.len(), self.cfg.batch_size);
        if self.cfg.drop_last {
            n / b
        } else {
            n.div_ceil(b)
        }
    }

    /// The batches of `epoch`; stops after the first error.
    pub fn epoch(&self, epoch: u64) -> EpochIter {
        let batches = Arc::new(self.batch_indices(epoch));
        let total = batches.len();
        let shared = Arc::new(Shared {
            state: Mutex::new(State { next_to_build: 0, handed_out: 0, cancelled: false }),
            cv: Condvar::new(),
        });
        let mut workers = Vec::new();
        let mut rx = None;
        if self.cfg.threads > 0 {
            let (tx, r) = channel();
            rx = Some(r);
            for t in 0..self.cfg.threads {
                let (ds, batches, shared, tx) = (self.dataset.clone(), batches.clone(), shared.clone(), tx.clone());
                let (seed, prefetch) = (self.cfg.seed, self.cfg.prefetch.max(1));
                let spawned = std::thread::Builder::new().name(format!("hrk-loader-{t}")).spawn(move || loop {
                    let b = {
                        let Ok(mut st) = shared.state.lock() else { return };
                        while !st.cancelled && st.next_to_build < total && st.next_to_build >= st.handed_out + prefetch
                        {
                            st = match shared.cv.wait(st) {
                                Ok(s) => s,
                                Err(_) => return,
                            };
                        }
                        if st.cancelled || st.next_to_build >= total {
                            return;
                        }
                        st.next_to_build += 1;
                        st.next_to_build - 1
                    };
                    let res = build_batch(&ds, &batches[b], seed, epoch, b);
                    if tx.send((b, res)).is_err() {
                        return;
                    }
                });
                match spawned {
                    Ok(h) => workers.push(h),
                    Err(e) => {
                        // Fall back to fewer workers; with none at all, build serially.
                        log::warn!("data loader: cannot start worker thread {t}: {e}");
                        break;
                    }
                }
            }
            if workers.is_empty() {
                rx = None;
            }
        }
        EpochIter {
            dataset: self.dataset.clone(),
            batches,
            seed: self.cfg.seed,
            epoch,
            next: 0,
            pending: BTreeMap::new(),
            rx,
            shared,
            workers,
            failed: false,
        }
    }
}

struct State {
    next_to_build: usize,
    handed_out: usize,
    cancelled: bool,
}

struct Shared {
    state: Mutex<State>,
    cv: Condvar,
}

/// Iterator over the batches of one epoch (in order). Dropping it stops the workers.
pub struct EpochIter {
    dataset: Arc<FaceDataset>,
    batches: Arc<Vec<Vec<usize>>>,
    seed: u64,
    epoch: u64,
    next: usize,
    pending: BTreeMap<usize, Result<Batch>>,
    rx: Option<Receiver<(usize, Result<Batch>)>>,
    shared: Arc<Shared>,
    workers: Vec<JoinHandle<()>>,
    failed: bool,
}

impl EpochIter {
    pub fn num_batches(&self) -> usize {
        self.batches.len()
    }
}

impl Iterator for EpochIter {
    type Item = Result<Batch>;

    fn next(&mut self) -> Option<Result<Batch>> {
        if self.failed || self.next >= self.batches.len() {
            return None;
        }
        let b = self.next;
        let res = match &self.rx {
            None => build_batch(&self.dataset, &self.batches[b], self.seed, self.epoch, b),
            Some(rx) => loop {
                if let Some(r) = self.pending.remove(&b) {
                    break r;
                }
                match rx.recv() {
                    Ok((i, r)) => {
                        self.pending.insert(i, r);
                    }
                    Err(_) => {
                        break Err(anyhow!(
                            "data loader for {}: worker threads stopped unexpectedly",
                            self.dataset.spec.annotations.display()
                        ))
                    }
                }
            },
        };
        self.next += 1;
        if let Ok(mut st) = self.shared.state.lock() {
            st.handed_out = self.next;
        }
        self.shared.cv.notify_all();
        if res.is_err() {
            self.failed = true;
        }
        Some(res)
    }
}

impl Drop for EpochIter {
    fn drop(&mut self) {
        if let Ok(mut st) = self.shared.state.lock() {
            st.cancelled = true;
        }
        self.shared.cv.notify_all();
        self.rx = None;
        for h in self.workers.drain(..) {
            let _ = h.join();
        }
    }
}
