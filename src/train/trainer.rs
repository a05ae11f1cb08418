//! The training run (`Trainer`): setup, resume, per epoch training (`epoch.rs`), validation,
//! checkpoint and record, then the final state and pictures.

use super::checkpoint::{self, CheckpointMeta, BEST, FINAL, FORMAT, LATEST};
use super::logger::Logger;
use super::metrics::{append_metrics, restore_metrics, EpochMetrics, METRICS};
use super::optimizer::Optimizer;
use super::schedule::MultiStepLr;
use super::synthetic::{generate_synthetic, synthetic_root};
use super::{graph, pictures, EpochTraining, TrainObserver, TrainOptions, TrainSummary};
use crate::config::{config_name, Config};
use crate::data::dataset::{DatasetSpec, FaceDataset};
use crate::data::loader::{DataLoader, LoaderConfig};
use crate::eval::EvalResult;
use crate::host_tensor::HostTensor;
use crate::io::tfevents::EventWriter;
use crate::model::{HrNet, HrnetSpec};
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

/// A TensorBoard scalar; a failed write warns once and stops the events file (training goes on).
pub(super) fn log_scalar(events: &mut Option<EventWriter>, log: &mut Logger, tag: &str, value: f64, step: i64) {
    if let Some(w) = events {
        if let Err(e) = w.scalar(tag, value, step) {
            log.info(&format!("warning: TensorBoard events stopped: {e:#}"));
            *events = None;
        }
    }
}

/// The bare state_dict (official names), as final_state / model_best hold it.
fn save_state_dict(path: &Path, net: &HrNet) -> Result<()> {
    crate::io::save_safetensors(path, &net.store.state_dict(), &[])
}

/// One training run, step by step: `setup` (config, output folder, log, model, data sets,
/// optimizer, schedule), `resume` (the latest checkpoint, if TRAIN.RESUME), then per epoch
/// `run_epoch`, `validate` and `checkpoint`, and `finish`. `run` is that loop.
pub struct Trainer {
    pub(super) opts: TrainOptions,
    pub(super) cfg: Config,
    out_dir: PathBuf,
    pub(super) log: Logger,
    pub(super) net: HrNet,
    pub(super) optimizer: Optimizer,
    pub(super) schedule: MultiStepLr,
    train_set: Arc<FaceDataset>,
    val_set: Arc<FaceDataset>,
    /// Data order and augmentation seed: `--seed`, or the checkpoint's after a resume.
    seed: u64,
    start_epoch: usize,
    best_nme: f64,
    resumed_from: Option<usize>,
    /// Set by `prepare` once a resume can no longer change the weights or the seed.
    pub(super) loader: Option<DataLoader>,
    history: Vec<EpochMetrics>,
    pub(super) last_good: Option<PathBuf>,
    epochs_run: usize,
    last_predictions: Option<Vec<[f32; 2]>>,
    /// The TensorBoard events file of this invocation (opened by `prepare`; dropped after a write error).
    pub(super) events: Option<EventWriter>,
    /// The captured training steps, on a GPU with HRK_CUDA_GRAPHS on (created by the first epoch).
    pub(super) graphs: Option<graph::TrainGraphs>,
}

impl Trainer {
    /// Loads the config, creates the output folder and its log, generates the synthetic demo data
    /// when asked, builds the model (ImageNet init if configured), the data sets, the optimizer and
    /// the LR schedule. Every message goes to the log file and to `observer`.
    pub fn setup(opts: &TrainOptions, observer: Box<dyn TrainObserver>) -> Result<Trainer> {
        let cfg = Config::load(&opts.cfg_path)?;
        // Refused before anything is written: absurd widths or depths in MODEL.EXTRA.
        HrnetSpec::from_config(&cfg)?;
        // A batch this process cannot hold is refused here, not by an allocation failure mid-step.
        crate::model::hrnet::memory::check_batch_memory(
            &cfg,
            &opts.device,
            crate::model::hrnet::memory::Pass::Train,
            cfg.train_batch_size(),
            Some(cfg.workers),
            "TRAIN.BATCH_SIZE_PER_GPU, MODEL.IMAGE_SIZE or WORKERS",
        )?;
        let out_dir = cfg.output_dir_for(&opts.cfg_path);
        std::fs::create_dir_all(&out_dir)
            .with_context(|| format!("cannot create output folder {}", out_dir.display()))?;
        // A run killed while writing a checkpoint leaves its temp file behind; the checkpoints themselves
        // are intact (written by rename), so the leftovers are only clutter.
        let stale = crate::atomic_file::remove_stale_temp_files(&out_dir);
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
    pub(super) fn prepare(&mut self) -> Result<()> {
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
        if let Some(why) = self.nothing_to_train() {
            self.log.info(&format!("=> nothing to train: {why}; nothing written"));
            return Ok(self.summary(None));
        }
        self.prepare()?;
        for epoch in self.start_epoch..self.cfg.train.end_epoch {
            if self.opts.stop_after_epochs.is_some_and(|k| self.epochs_run >= k) {
                self.log.info(&format!(
                    "=> stopping after {} epoch(s) as asked; resume with TRAIN.RESUME true",
                    self.epochs_run
                ));
                return Ok(self.summary(None));
            }
            self.stop_if_asked(epoch)?;
            let started = Instant::now();
            let trained = self.run_epoch(epoch)?;
            let validation = self.validate(epoch)?;
            let is_best = self.checkpoint(epoch, trained.lr, &validation)?;
            self.log.info(&format!("best: {is_best}"));
            self.record_epoch(epoch, &trained, validation, started)?;
        }
        self.finish()
    }

    /// Ends the run with an error when the observer asks to stop (`TrainObserver::wants_stop`): the
    /// checkpoints of the epochs before `epoch` are complete files (written atomically), so the run
    /// resumes from them.
    pub(super) fn stop_if_asked(&mut self, epoch: usize) -> Result<()> {
        if !self.log.observer().wants_stop() {
            return Ok(());
        }
        let kept = match &self.last_good {
            Some(path) => format!("the last checkpoint, {}, is intact", path.display()),
            None => "no checkpoint was written in this run".to_string(),
        };
        self.log.info(&format!("=> interrupted in epoch {epoch}; {kept} (resume with TRAIN.RESUME true)"));
        bail!("training interrupted in epoch {epoch}; {kept} (resume with TRAIN.RESUME true)")
    }

    /// Why a resumed run has nothing left to do: its checkpoint is past TRAIN.END_EPOCH, or at it
    /// with `final_state` written (a run killed between its last checkpoint and `final_state`
    /// still finishes).
    fn nothing_to_train(&self) -> Option<String> {
        let (at, end) = (self.start_epoch, self.cfg.train.end_epoch);
        if at > end {
            return Some(format!(
                "the checkpoint has {at} epochs and TRAIN.END_EPOCH is {end}; raise END_EPOCH to train on"
            ));
        }
        if at == end && self.out_dir.join(FINAL).is_file() {
            return Some(format!(
                "all {end} epochs (TRAIN.END_EPOCH) are trained and {FINAL} is written; raise END_EPOCH to train on"
            ));
        }
        None
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
        self.log.observer().epoch_recorded(&m);
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
