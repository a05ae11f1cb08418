//! `hrk train`: the reference's tools/train.py loop (REFERENCE §1.2, §6) with checkpoints that
//! resume bit for bit on the CPU.
//!
//! Determinism: data order and augmentation are pure functions of (seed, epoch, sample index)
//! (`data::loader`), the model init is seeded, the loss and optimizers are sequential, and the conv
//! kernels split work over rayon threads without splitting reductions across threads differently
//! from run to run; so for a fixed thread count two runs give the same bits, and a run resumed
//! from `latest.safetensors` gives the same bits as one that was never interrupted.

pub mod checkpoint;
pub mod graph;
pub mod logger;
pub mod pictures;
pub mod schedule;

use crate::autograd::backward;
use crate::config::{config_name, Config, OptimizerKind};
use crate::data::dataset::{DatasetSpec, FaceDataset};
use crate::data::loader::{DataLoader, LoaderConfig};
use crate::eval::EvalResult;
use crate::host_tensor::HostTensor;
use crate::io::tfevents::EventWriter;
use crate::model::{HrNet, HrnetSpec};
use crate::ops;
use crate::optim::{Adam, Sgd, SplitStep};
use crate::tensor::{Storage, Tensor};
use anyhow::{anyhow, bail, Context, Result};
use checkpoint::{CheckpointMeta, BEST, FINAL, FORMAT, LATEST};
use logger::Logger;
pub use logger::{BatchProgress, LogRecords, TrainObserver};
use schedule::MultiStepLr;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

/// The per-epoch metrics file in the output folder.
const METRICS: &str = "metrics.jsonl";

/// A TensorBoard scalar; a failed write warns once and stops the events file (training goes on).
fn log_scalar(events: &mut Option<EventWriter>, log: &mut Logger, tag: &str, value: f64, step: i64) {
    if let Some(w) = events {
        if let Err(e) = w.scalar(tag, value, step) {
            log.info(&format!("warning: TensorBoard events stopped: {e:#}"));
            *events = None;
        }
    }
}

/// Images generated for the synthetic demo when its CSVs are missing (80 % train, 20 % test).
pub const DEFAULT_SYNTH_COUNT: usize = 1000;

#[derive(Clone, Debug)]
pub struct TrainOptions {
    pub cfg_path: PathBuf,
    /// Model init and data order/augmentation seed.
    pub seed: u64,
    /// Return after this many epochs of this invocation (an interruption, for tests and for
    /// splitting a long run); no final_state is written then.
    pub stop_after_epochs: Option<usize>,
    /// Images to generate for the synthetic demo (see `synthetic_root`).
    pub synth_count: usize,
    /// Where the model and each batch live (`--device`).
    pub device: crate::tensor::Device,
}

impl TrainOptions {
    pub fn new(cfg_path: impl Into<PathBuf>) -> Self {
        Self {
            cfg_path: cfg_path.into(),
            seed: 0,
            stop_after_epochs: None,
            synth_count: DEFAULT_SYNTH_COUNT,
            device: crate::tensor::Device::Cpu,
        }
    }
}

/// One line of `<out>/metrics.jsonl`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EpochMetrics {
    pub epoch: usize,
    pub lr: f64,
    pub train_loss: f64,
    /// Training NME as the reference computes it (against un-rotated GT, so only indicative).
    pub train_nme: Option<f64>,
    pub val_loss: f64,
    pub nme: f64,
    pub fr_008: f64,
    pub fr_010: f64,
    pub auc_010: f64,
    pub seconds: f64,
}

#[derive(Clone, Debug)]
pub struct TrainSummary {
    pub out_dir: PathBuf,
    pub log_file: PathBuf,
    pub epochs_run: usize,
    pub resumed_from: Option<usize>,
    pub best_nme: f64,
    pub history: Vec<EpochMetrics>,
    /// Set when END_EPOCH was reached.
    pub final_state: Option<PathBuf>,
}

enum Optimizer {
    Adam(Adam),
    Sgd(Sgd),
}

impl Optimizer {
    fn from_config(cfg: &Config) -> Self {
        let t = &cfg.train;
        match t.optimizer {
            // The reference's Adam ignores WD and MOMENTUM (REFERENCE §6.2).
            OptimizerKind::Adam => Optimizer::Adam(Adam::new(t.lr, 0.0)),
            OptimizerKind::Sgd => Optimizer::Sgd(Sgd::new(t.lr, t.momentum, t.wd, t.nesterov)),
        }
    }
    fn name(&self) -> &'static str {
        match self {
            Optimizer::Adam(_) => "adam",
            Optimizer::Sgd(_) => "sgd",
        }
    }
    fn set_lr(&mut self, lr: f64) {
        match self {
            Optimizer::Adam(a) => a.lr = lr,
            Optimizer::Sgd(s) => s.lr = lr,
        }
    }
    fn step(&mut self, params: &mut [&mut Tensor], grads: &[&Storage]) -> Result<()> {
        match self {
            Optimizer::Adam(a) => a.step(params, grads),
            Optimizer::Sgd(s) => s.step(params, grads),
        }
    }
    fn split(&mut self) -> &mut dyn SplitStep {
        match self {
            Optimizer::Adam(a) => a,
            Optimizer::Sgd(s) => s,
        }
    }
    fn state(&self) -> Vec<(String, HostTensor)> {
        match self {
            Optimizer::Adam(a) => a.state(),
            Optimizer::Sgd(s) => s.state(),
        }
    }
    fn load_state(&mut self, state: &[(String, HostTensor)], params: &[&Tensor]) -> Result<()> {
        match self {
            Optimizer::Adam(a) => a.load_state(state, params),
            Optimizer::Sgd(s) => s.load_state(state, params),
        }
    }
}

/// The synthetic-demo rule: DATASET.ROOT's last component is `synthetic` (e.g. `data/synthetic/`)
/// and DATASET.TRAINSET does not exist yet. Returns the folder to generate into.
pub fn synthetic_root(cfg: &Config) -> Option<PathBuf> {
    let root = PathBuf::from(&cfg.dataset.root);
    let is_synth = root.file_name().is_some_and(|n| n == "synthetic");
    (is_synth && !Path::new(&cfg.dataset.trainset).exists()).then_some(root)
}

/// Mean weighted by count (the reference's AverageMeter).
#[derive(Default)]
struct Meter {
    val: f64,
    sum: f64,
    count: f64,
}

impl Meter {
    fn update(&mut self, v: f64, n: usize) {
        self.val = v;
        self.sum += v * n as f64;
        self.count += n as f64;
    }
    fn avg(&self) -> f64 {
        if self.count > 0.0 {
            self.sum / self.count
        } else {
            f64::NAN
        }
    }
}

/// Rebuilds metrics.jsonl from the lines of epochs before `keep_below` (a resume drops what an
/// interrupted run logged after its last checkpoint) and returns them.
fn restore_metrics(path: &Path, keep_below: usize) -> Result<Vec<EpochMetrics>> {
    let mut kept = Vec::new();
    if let Ok(text) = std::fs::read_to_string(path) {
        for (i, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let m: EpochMetrics = serde_json::from_str(line)
                .map_err(|e| anyhow!("{}:{}: not a metrics line: {e}", path.display(), i + 1))?;
            if m.epoch < keep_below {
                kept.push(m);
            }
        }
    }
    let mut text = String::new();
    for m in &kept {
        text.push_str(&serde_json::to_string(m)?);
        text.push('\n');
    }
    crate::io::safetensors::write_atomically(path, text.as_bytes())?;
    Ok(kept)
}

fn append_metrics(path: &Path, m: &EpochMetrics) -> Result<()> {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    writeln!(f, "{}", serde_json::to_string(m)?).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

/// The bare state_dict (official names), as final_state / model_best hold it.
fn save_state_dict(path: &Path, net: &HrNet) -> Result<()> {
    crate::io::save_safetensors(path, &net.store.state_dict(), &[])
}

/// The network of the config; one that cannot be built is refused naming MODEL.EXTRA in the file.
/// What one epoch's training iterations produced.
#[derive(Clone, Debug, PartialEq)]
pub struct EpochTraining {
    pub lr: f64,
    /// Mean training loss (weighted by batch size).
    pub loss: f64,
    /// Training NME as the reference logs it, when every batch could be decoded.
    pub nme: Option<f64>,
    /// Training images per second over the epoch.
    pub images_per_second: f64,
}

/// One training run, step by step: `setup` (config, output folder, log, model, data sets,
/// optimizer, schedule), `resume` (the latest checkpoint, if TRAIN.RESUME), then per epoch
/// `run_epoch`, `validate` and `checkpoint`, and `finish`. `run` is that loop.
pub struct Trainer {
    opts: TrainOptions,
    cfg: Config,
    out_dir: PathBuf,
    log: Logger,
    net: HrNet,
    optimizer: Optimizer,
    schedule: MultiStepLr,
    train_set: Arc<FaceDataset>,
    val_set: Arc<FaceDataset>,
    /// Data order and augmentation seed: `--seed`, or the checkpoint's after a resume.
    seed: u64,
    start_epoch: usize,
    best_nme: f64,
    resumed_from: Option<usize>,
    /// Set by `prepare` once a resume can no longer change the weights or the seed.
    loader: Option<DataLoader>,
    history: Vec<EpochMetrics>,
    last_good: Option<PathBuf>,
    epochs_run: usize,
    last_predictions: Option<Vec<[f32; 2]>>,
    /// The TensorBoard events file of this invocation (opened by `prepare`; dropped after a write error).
    events: Option<EventWriter>,
    /// The captured training steps, on a GPU with HRK_CUDA_GRAPHS on (created by the first epoch).
    graphs: Option<graph::TrainGraphs>,
}

impl Trainer {
    /// Loads the config, creates the output folder and its log, generates the synthetic demo data
    /// when asked, builds the model (ImageNet init if configured), the data sets, the optimizer and
    /// the LR schedule. Every message goes to the log file and to `observer`.
    pub fn setup(opts: &TrainOptions, observer: Box<dyn TrainObserver>) -> Result<Trainer> {
        let cfg = Config::load(&opts.cfg_path)?;
        // Refused before anything is written: absurd widths or depths in MODEL.EXTRA.
        HrnetSpec::from_config(&cfg)?;
        let out_dir = cfg.output_dir_for(&opts.cfg_path);
        std::fs::create_dir_all(&out_dir)
            .with_context(|| format!("cannot create output folder {}", out_dir.display()))?;
        // A run killed while writing a checkpoint leaves its temp file behind; the checkpoints themselves
        // are intact (written by rename), so the leftovers are only clutter.
        let stale = crate::io::safetensors::remove_stale_temp_files(&out_dir);
        let mut log = Logger::create(&out_dir, &config_name(&opts.cfg_path), observer)?;
        log.info(&format!(
            "=> hrk train --cfg {} --seed {} (rayon threads: {})",
            opts.cfg_path.display(),
            opts.seed,
            rayon::current_num_threads()
        ));
        log.info(&cfg.to_yaml());
        log.info(&format!("=> output folder {}, log file {}", out_dir.display(), log.path().display()));
        if stale > 0 {
            log.info(&format!("=> removed {stale} temp file(s) left by an interrupted checkpoint write"));
        }
        if let Some(root) = synthetic_root(&cfg) {
            generate_synthetic(&cfg, opts, &root, &mut log)?;
        }

        // MODEL.INIT_WEIGHTS + MODEL.PRETRAINED: ImageNet backbone by key name (a missing file only warns,
        // as in the reference).
        let (net, pretrained) = HrNet::for_training(&cfg, opts.seed)?;
        if let Some(report) = pretrained {
            log.info(&format!("=> ImageNet init: {report}"));
        }
        let train_set = Arc::new(FaceDataset::open(DatasetSpec::from_config(&cfg, true, None)?)?);
        let val_set = Arc::new(FaceDataset::open(DatasetSpec::from_config(&cfg, false, None)?)?);
        log.info(&format!(
            "=> train set {} ({} images, batch {}), validation set {} ({} images, batch {})",
            cfg.dataset.trainset,
            train_set.len(),
            cfg.train_batch_size(),
            cfg.dataset.testset,
            val_set.len(),
            cfg.test_batch_size()
        ));
        let optimizer = Optimizer::from_config(&cfg);
        let schedule = MultiStepLr::new(cfg.train.lr, &cfg.train.lr_step, cfg.train.lr_factor);
        Ok(Trainer {
            opts: opts.clone(),
            start_epoch: cfg.train.begin_epoch,
            cfg,
            out_dir,
            log,
            net,
            optimizer,
            schedule,
            train_set,
            val_set,
            seed: opts.seed,
            best_nme: 100.0,
            resumed_from: None,
            loader: None,
            history: Vec::new(),
            last_good: None,
            epochs_run: 0,
            last_predictions: None,
            events: None,
            graphs: None,
        })
    }

    /// With TRAIN.RESUME and a `latest.safetensors` in the output folder, continues from it: weights,
    /// optimizer state, epoch, best NME and seed (so the data order continues bit for bit). Returns
    /// the epoch training restarts at. Must come before the first epoch.
    pub fn resume(&mut self) -> Result<Option<usize>> {
        if self.loader.is_some() {
            bail!("{}: resume must come before the first epoch", self.opts.cfg_path.display());
        }
        let latest = self.out_dir.join(LATEST);
        if !(self.cfg.train.resume && latest.is_file()) {
            self.log.info("=> no checkpoint found");
            return Ok(None);
        }
        let ck = checkpoint::load(&latest)?;
        let src = latest.display().to_string();
        self.net.store.load(&ck.model, true, &src)?;
        if ck.meta.optimizer != self.optimizer.name() {
            bail!(
                "{src}: checkpoint was trained with {}, the config asks for {}",
                ck.meta.optimizer,
                self.optimizer.name()
            );
        }
        self.optimizer.load_state(&ck.optim, &self.net.store.params()).with_context(|| src.clone())?;
        if ck.meta.seed != self.seed {
            self.log.info(&format!(
                "=> resuming with the checkpoint's seed {} (not --seed {}) so the data order continues",
                ck.meta.seed, self.seed
            ));
            self.seed = ck.meta.seed;
        }
        if ck.meta.threads != rayon::current_num_threads() {
            self.log.info(&format!(
                "warning: checkpoint ran with {} threads, this run has {}: results stay correct but are not bit-identical to an uninterrupted run",
                ck.meta.threads,
                rayon::current_num_threads()
            ));
        }
        let train_bs = self.cfg.train_batch_size();
        if ck.meta.train_batch_size != train_bs {
            self.log.info(&format!(
                "warning: checkpoint used batch {}, the config now gives {train_bs}",
                ck.meta.train_batch_size
            ));
        }
        self.start_epoch = ck.meta.epoch;
        self.best_nme = ck.meta.best_nme;
        self.resumed_from = Some(self.start_epoch);
        self.log
            .info(&format!("=> loaded checkpoint {src} (epoch {}, best NME {:.4})", self.start_epoch, self.best_nme));
        Ok(self.resumed_from)
    }

    /// Once, before the first epoch: moves the model to its device, builds the training loader and
    /// trims metrics.jsonl to the epochs before the start epoch.
    fn prepare(&mut self) -> Result<()> {
        if self.loader.is_some() {
            return Ok(());
        }
        if self.opts.device != crate::tensor::Device::Cpu {
            self.log.info(&format!("=> training on {:?}", self.opts.device));
            self.net.to_device(&self.opts.device)?;
        }
        let train_bs = self.cfg.train_batch_size();
        let mut train_lc = LoaderConfig::new(train_bs, self.cfg.train.shuffle, self.cfg.workers, self.seed);
        // A 1-sample last batch with a 1x1 lowest-resolution branch would make BN's batch variance
        // undefined (PyTorch raises); drop that batch instead.
        let branches = self.cfg.model.extra.stage4.num_branches.max(1) as u32;
        let smallest = (self.cfg.model.image_size[0] / 4) >> (branches - 1);
        let smallest_w = (self.cfg.model.image_size[1] / 4) >> (branches - 1);
        if self.train_set.len() % train_bs == 1 && smallest * smallest_w <= 1 {
            self.log
                .info("warning: dropping the 1-image last training batch (BN needs more than one value per channel)");
            train_lc.drop_last = true;
        }
        let loader = DataLoader::new(self.train_set.clone(), train_lc)?;
        self.history = restore_metrics(&self.out_dir.join(METRICS), self.start_epoch)?;
        let latest = self.out_dir.join(LATEST);
        self.last_good = latest.is_file().then_some(latest);
        self.loader = Some(loader);
        match EventWriter::create(&self.out_dir) {
            Ok(w) => {
                self.log.info(&format!("=> TensorBoard events: {}", w.path().display()));
                self.events = Some(w);
            }
            Err(e) => self.log.info(&format!("warning: no TensorBoard events file: {e:#}")),
        }
        Ok(())
    }

    /// The whole run: resume, then train / validate / checkpoint each epoch up to TRAIN.END_EPOCH
    /// (or `stop_after_epochs`), then the final state and pictures.
    pub fn run(mut self) -> Result<TrainSummary> {
        self.resume()?;
        self.prepare()?;
        for epoch in self.start_epoch..self.cfg.train.end_epoch {
            if self.opts.stop_after_epochs.is_some_and(|k| self.epochs_run >= k) {
                self.log.info(&format!(
                    "=> stopping after {} epoch(s) as asked; resume with TRAIN.RESUME true",
                    self.epochs_run
                ));
                return Ok(self.summary(None));
            }
            let started = Instant::now();
            let trained = self.run_epoch(epoch)?;
            let validation = self.validate(epoch)?;
            let is_best = self.checkpoint(epoch, trained.lr, &validation)?;
            self.log.info(&format!("best: {is_best}"));
            self.record_epoch(epoch, &trained, validation, started)?;
        }
        self.finish()
    }

    /// Trains one epoch at the scheduled LR: one optimizer step per batch of the loader.
    pub fn run_epoch(&mut self, epoch: usize) -> Result<EpochTraining> {
        self.prepare()?;
        let lr = self.schedule.lr_for_epoch(epoch);
        self.optimizer.set_lr(lr);
        self.log.info(&format!("=> epoch {epoch}: lr {lr:e}"));
        let Some(loader) = &self.loader else {
            bail!("{}: the training loader is missing", self.opts.cfg_path.display());
        };
        let print_freq = self.cfg.print_freq.max(1);
        let iter = loader.epoch(epoch as u64);
        let n = iter.num_batches();
        self.log.observer().epoch_started(epoch, n);
        let (mut batch_time, mut data_time, mut losses) = (Meter::default(), Meter::default(), Meter::default());
        let (mut nme_sum, mut nme_count, mut nme_ok) = (0.0f64, 0usize, true);
        let mut end = Instant::now();
        let epoch_start = Instant::now();
        if self.graphs.is_none() && self.net.device().is_gpu() && crate::switches::cuda_graphs() {
            self.graphs = Some(graph::TrainGraphs::new(&self.net)?);
        }
        for (i, batch) in iter.enumerate() {
            let batch = batch.with_context(|| format!("epoch {epoch}, iteration {i}"))?;
            data_time.update(end.elapsed().as_secs_f64(), 1);
            let bs = batch.len();
            let refuse_non_finite = |lv: f64, last_good: &Option<PathBuf>| -> Result<()> {
                if lv.is_finite() {
                    return Ok(());
                }
                let kept = match last_good {
                    Some(p) => format!("the last good checkpoint is {}", p.display()),
                    None => "no checkpoint was written yet".to_string(),
                };
                bail!("non-finite training loss ({lv}) at epoch {epoch}, iteration {i}/{n}: stopping (weights of this step not applied; {kept}); lower TRAIN.LR")
            };
            let (lv, heatmaps) = match &mut self.graphs {
                Some(graphs) => {
                    let step = graphs
                        .forward_backward(
                            &mut self.net,
                            &batch.input,
                            batch.input_shape,
                            &batch.target,
                            batch.target_shape,
                            self.optimizer.split(),
                        )
                        .with_context(|| format!("epoch {epoch}, iteration {i}"))?;
                    refuse_non_finite(step.loss, &self.last_good)?;
                    graphs.update(&mut self.net, self.optimizer.split())?;
                    (step.loss, step.heatmaps)
                }
                None => {
                    let dev = self.net.device();
                    let x = Tensor::from_f32(&batch.input_shape, batch.input.clone())?.to_device(&dev)?;
                    let t = Tensor::from_f32(&batch.target_shape, batch.target.clone())?.to_device(&dev)?;
                    let out = self.net.forward(&x, true)?;
                    let loss = ops::mse_loss(&out, &t)?;
                    let lv = loss.item()?;
                    refuse_non_finite(lv, &self.last_good)?;
                    let mut grads = backward(&loss)?;
                    let grad_list = graph::take_param_grads(&self.net, &mut grads)
                        .with_context(|| format!("epoch {epoch}, iteration {i}"))?;
                    drop(grads);
                    let grad_refs: Vec<&Storage> = grad_list.iter().collect();
                    self.optimizer.step(&mut self.net.store.params_mut(), &grad_refs)?;
                    (lv, out.to_f32_vec())
                }
            };
            losses.update(lv, bs);
            if nme_ok {
                // Training NME as the reference logs it (ignores rotation; indicative only).
                match crate::eval::decode_and_score(&heatmaps, batch.target_shape, &batch.metas) {
                    Ok((_, e)) => {
                        nme_sum += e.iter().sum::<f64>();
                        nme_count += e.len();
                    }
                    Err(_) => nme_ok = false,
                }
            }
            batch_time.update(end.elapsed().as_secs_f64(), 1);
            let images_per_second = losses.count / epoch_start.elapsed().as_secs_f64().max(1e-9);
            let progress =
                BatchProgress { epoch, iteration: i, batches: n, images_per_second, mean_loss: losses.avg() };
            self.log.observer().batch_done(&progress);
            if i % print_freq == 0 {
                self.log.info(&format!(
                    "Epoch: [{epoch}][{i}/{n}]\tTime {:.3}s ({:.3}s)\tSpeed {:.1} samples/s\tData {:.3}s ({:.3}s)\tLoss {:.5} ({:.5})\t",
                    batch_time.val,
                    batch_time.avg(),
                    bs as f64 / batch_time.val.max(1e-9),
                    data_time.val,
                    data_time.avg(),
                    losses.val,
                    losses.avg()
                ));
                // The reference's writer_dict logs train_loss at the print points; hrk's step is the
                // global iteration, so the curve stays in place across resumes.
                log_scalar(&mut self.events, &mut self.log, "train_loss", losses.val, (epoch * n + i) as i64);
            }
            end = Instant::now();
        }
        self.log.observer().epoch_finished(epoch);
        let nme = (nme_ok && nme_count > 0).then(|| nme_sum / nme_count as f64);
        self.log.info(&format!(
            "Train Epoch {epoch} time:{:.4} loss:{:.4} nme:{:.4}",
            batch_time.avg(),
            losses.avg(),
            nme.unwrap_or(f64::NAN)
        ));
        let images_per_second = losses.count / epoch_start.elapsed().as_secs_f64().max(1e-9);
        Ok(EpochTraining { lr, loss: losses.avg(), nme, images_per_second })
    }

    /// Evaluates the model on the validation set (the reference's `validate`) and logs the result
    /// as epoch `epoch`'s.
    pub fn validate(&mut self, epoch: usize) -> Result<EvalResult> {
        self.prepare()?;
        let result = crate::eval::evaluate(&mut self.net, &self.val_set, self.cfg.test_batch_size(), self.cfg.workers)?;
        self.log.info(&format!("Test Epoch {epoch} {}", result.log_fields()));
        Ok(result)
    }

    /// Saves what epoch `epoch` (trained at `lr`) ends with: `checkpoint_{epoch}` and `latest` (model,
    /// optimizer, metadata), `model_best` when the validation NME is the best so far, and the
    /// validation predictions. Returns whether the epoch is the best.
    pub fn checkpoint(&mut self, epoch: usize, lr: f64, validation: &EvalResult) -> Result<bool> {
        let nme = validation.summary.nme;
        let is_best = nme < self.best_nme;
        self.best_nme = self.best_nme.min(nme);
        self.log.info(&format!("=> saving checkpoint to {}", self.out_dir.display()));
        let meta = CheckpointMeta {
            format: FORMAT.to_string(),
            epoch: epoch + 1,
            best_nme: self.best_nme,
            scheduler_last_epoch: MultiStepLr::position_for_epoch(epoch),
            lr,
            optimizer: self.optimizer.name().to_string(),
            seed: self.seed,
            data_rng: "stateless: order = shuffle(seed, epoch); augmentation = f(seed, epoch, sample index)"
                .to_string(),
            train_batch_size: self.cfg.train_batch_size(),
            threads: rayon::current_num_threads(),
        };
        let bytes = checkpoint::encode(&meta, &self.net.store.state_dict(), &self.optimizer.state())?;
        let ck_path = checkpoint::save(&self.out_dir, epoch, &bytes)?;
        if is_best {
            save_state_dict(&self.out_dir.join(BEST), &self.net)?;
        }
        let (images, joints) = (self.val_set.len(), self.cfg.model.num_joints);
        let flat: Vec<f32> = validation.predictions.iter().flat_map(|p| [p[0], p[1]]).collect();
        let predictions = [("predictions".to_string(), HostTensor::f32(vec![images, joints, 2], flat))];
        crate::io::save_safetensors(&self.out_dir.join("current_pred.safetensors"), &predictions, &[])?;
        self.last_good = Some(ck_path);
        Ok(is_best)
    }

    /// Appends the epoch to metrics.jsonl and the history, and redraws curves.png.
    fn record_epoch(
        &mut self, epoch: usize, trained: &EpochTraining, validation: EvalResult, started: Instant,
    ) -> Result<()> {
        let s = &validation.summary;
        let m = EpochMetrics {
            epoch,
            lr: trained.lr,
            train_loss: trained.loss,
            train_nme: trained.nme,
            val_loss: validation.loss,
            nme: s.nme,
            fr_008: s.fr_008,
            fr_010: s.fr_010,
            auc_010: s.auc_010,
            seconds: started.elapsed().as_secs_f64(),
        };
        append_metrics(&self.out_dir.join(METRICS), &m)?;
        let step = epoch as i64;
        self.scalar("valid_loss", m.val_loss, step);
        self.scalar("valid_nme", m.nme, step);
        self.scalar("learning_rate", m.lr, step);
        self.scalar("img_per_s", trained.images_per_second, step);
        self.history.push(m);
        let col = |f: fn(&EpochMetrics) -> f64| self.history.iter().map(f).collect::<Vec<f64>>();
        let curves = pictures::write_curves(
            &self.out_dir.join("curves.png"),
            &col(|m| m.train_loss),
            &col(|m| m.val_loss),
            &col(|m| m.nme),
            &col(|m| m.fr_008),
            &col(|m| m.fr_010),
        );
        if let Err(e) = curves {
            self.log.info(&format!("warning: curves.png not written: {e:#}"));
        }
        self.last_predictions = Some(validation.predictions);
        self.epochs_run += 1;
        Ok(())
    }

    /// After the last epoch: `final_state`, an overlay of a few validation predictions and the
    /// closing summary line.
    pub fn finish(mut self) -> Result<TrainSummary> {
        self.prepare()?;
        let final_path = self.out_dir.join(FINAL);
        save_state_dict(&final_path, &self.net)?;
        self.log.info(&format!("=> saved final state to {}", final_path.display()));
        let preds = match self.last_predictions.take() {
            Some(p) => p,
            None => {
                crate::eval::evaluate(&mut self.net, &self.val_set, self.cfg.test_batch_size(), self.cfg.workers)?
                    .predictions
            }
        };
        let joints = self.cfg.model.num_joints;
        let mut items = Vec::new();
        for i in 0..self.val_set.len().min(8) {
            let img = self.val_set.source_image(i, false)?;
            let gt: Vec<[f32; 2]> =
                self.val_set.annotation(i)?.pts.iter().map(|p| [p[0] as f32, p[1] as f32]).collect();
            items.push((img, gt, preds[i * joints..(i + 1) * joints].to_vec()));
        }
        let overlay = self.out_dir.join("test_predictions.png");
        match pictures::write_overlay(&overlay, &items, 256) {
            Ok(()) => self.log.info(&format!("=> wrote {} (ground truth red, predictions green)", overlay.display())),
            Err(e) => self.log.info(&format!("warning: {} not written: {e:#}", overlay.display())),
        }
        if let Some(m) = self.history.last() {
            let line = format!(
                "=> done: validation NME {:.4} ({:.2} %), FR@0.08 {:.4}, FR@0.10 {:.4}; best NME {:.4}",
                m.nme,
                m.nme * 100.0,
                m.fr_008,
                m.fr_010,
                self.best_nme
            );
            self.log.info(&line);
        }
        if let crate::tensor::Device::Gpu(dev) = &self.opts.device {
            self.log.info(&format!("=> {} memory: {}", dev.name(), dev.memory_stats().summary()));
        }
        Ok(self.summary(Some(final_path)))
    }

    fn scalar(&mut self, tag: &str, value: f64, step: i64) {
        log_scalar(&mut self.events, &mut self.log, tag, value, step);
    }

    fn summary(&self, final_state: Option<PathBuf>) -> TrainSummary {
        TrainSummary {
            out_dir: self.out_dir.clone(),
            log_file: self.log.path().to_path_buf(),
            epochs_run: self.epochs_run,
            resumed_from: self.resumed_from,
            best_nme: self.best_nme,
            history: self.history.clone(),
            final_state,
        }
    }

    pub fn config(&self) -> &Config {
        &self.cfg
    }

    pub fn model(&self) -> &HrNet {
        &self.net
    }

    pub fn out_dir(&self) -> &Path {
        &self.out_dir
    }

    /// The first epoch `run` trains (TRAIN.BEGIN_EPOCH, or the checkpoint's after a resume).
    pub fn start_epoch(&self) -> usize {
        self.start_epoch
    }
}

/// Writes the synthetic demo data set into `root` (DATASET.TRAINSET is missing there).
fn generate_synthetic(cfg: &Config, opts: &TrainOptions, root: &Path, log: &mut Logger) -> Result<()> {
    log.info(&format!(
        "=> {} does not exist: generating the synthetic demo data set ({} images, {} landmarks) in {}",
        cfg.dataset.trainset,
        opts.synth_count,
        cfg.model.num_joints,
        root.display()
    ));
    let t = Instant::now();
    let s = crate::synth::generate(root, cfg.model.num_joints, opts.synth_count, opts.seed)
        .with_context(|| format!("generating the synthetic data set into {}", root.display()))?;
    log.info(&format!(
        "=> wrote {} train + {} test images in {:.1}s",
        s.train_count,
        s.test_count,
        t.elapsed().as_secs_f64()
    ));
    if !Path::new(&cfg.dataset.trainset).exists() {
        bail!(
            "{}: DATASET.TRAINSET {} is still missing after generating synthetic data (expected {})",
            opts.cfg_path.display(),
            cfg.dataset.trainset,
            s.train_csv.display()
        );
    }
    Ok(())
}

/// Runs a whole training with progress reported as `log` records (`Trainer::setup` + `run`).
pub fn train(opts: &TrainOptions) -> Result<TrainSummary> {
    Trainer::setup(opts, Box::new(LogRecords))?.run()
}
