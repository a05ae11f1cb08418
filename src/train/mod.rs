//! `hrk train`: the reference's tools/train.py loop (REFERENCE §1.2, §6) with checkpoints that
//! resume bit for bit on the CPU.
//!
//! Determinism: data order and augmentation are pure functions of (seed, epoch, sample index)
//! (`data::loader`), the model init is seeded, the loss and optimizers are sequential, and the conv
//! kernels split work over rayon threads without splitting reductions across threads differently
//! from run to run; so for a fixed thread count two runs give the same bits, and a run resumed
//! from `latest.safetensors` gives the same bits as one that was never interrupted.

pub mod checkpoint;
pub mod logger;
pub mod pictures;
pub mod schedule;

use crate::autograd::backward;
use crate::config::{config_name, Config, OptimizerKind};
use crate::data::dataset::FaceDataset;
use crate::data::loader::{DataLoader, LoaderConfig};
use crate::host::HostTensor;
use crate::model::HrNet;
use crate::ops;
use crate::optim::{Adam, Sgd};
use crate::tensor::{Storage, Tensor};
use anyhow::{anyhow, bail, Context, Result};
use checkpoint::{CheckpointMeta, BEST, FINAL, FORMAT, LATEST};
use logger::Logger;
use schedule::MultiStepLr;
use serde::{Deserialize, Serialize};
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

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
    /// No console output (the log file still gets everything).
    pub quiet: bool,
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
            quiet: false,
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

struct EpochResult {
    loss: f64,
    nme: Option<f64>,
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
            let m: EpochMetrics =
                serde_json::from_str(line).map_err(|e| anyhow!("{}:{}: not a metrics line: {e}", path.display(), i + 1))?;
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

fn progress_bar(total: usize, epoch: usize) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(total as u64);
    if let Ok(style) = indicatif::ProgressStyle::with_template("{prefix} {wide_bar} {pos}/{len} [{elapsed_precise} < {eta_precise}] {msg}") {
        bar.set_style(style);
    }
    bar.set_prefix(format!("epoch {epoch}"));
    bar
}

#[allow(clippy::too_many_arguments)]
fn train_epoch(
    net: &mut HrNet,
    opt: &mut Optimizer,
    loader: &DataLoader,
    epoch: usize,
    print_freq: usize,
    log: &Logger,
    show_bar: bool,
    last_good: &Option<PathBuf>,
) -> Result<EpochResult> {
    let iter = loader.epoch(epoch as u64);
    let n = iter.num_batches();
    let bar = show_bar.then(|| progress_bar(n, epoch));
    log.set_bar(bar.clone());
    let (mut batch_time, mut data_time, mut losses) = (Meter::default(), Meter::default(), Meter::default());
    let (mut nme_sum, mut nme_count, mut nme_ok) = (0.0f64, 0usize, true);
    let mut end = Instant::now();
    let epoch_start = Instant::now();
    for (i, batch) in iter.enumerate() {
        let batch = batch.with_context(|| format!("epoch {epoch}, iteration {i}"))?;
        data_time.update(end.elapsed().as_secs_f64(), 1);
        let bs = batch.len();
        let dev = net.device();
        let x = Tensor::from_f32(&batch.input_shape, batch.input.clone())?.to_device(&dev)?;
        let t = Tensor::from_f32(&batch.target_shape, batch.target.clone())?.to_device(&dev)?;
        let out = net.forward(&x, true)?;
        let loss = ops::mse_loss(&out, &t)?;
        let lv = loss.item()?;
        if !lv.is_finite() {
            let kept = match last_good {
                Some(p) => format!("the last good checkpoint is {}", p.display()),
                None => "no checkpoint was written yet".to_string(),
            };
            bail!("non-finite training loss ({lv}) at epoch {epoch}, iteration {i}/{n}: stopping (weights of this step not applied; {kept}); lower TRAIN.LR");
        }
        let mut grads = backward(&loss)?;
        let grad_list: Vec<Storage> = net
            .store
            .params()
            .iter()
            .zip(net.store.param_names())
            .map(|(p, name)| grads.take(p).ok_or_else(|| anyhow!("epoch {epoch}, iteration {i}: no gradient for `{name}`")))
            .collect::<Result<_>>()?;
        drop(grads);
        opt.step(&mut net.store.params_mut(), &grad_list.iter().collect::<Vec<_>>())?;
        losses.update(lv, bs);
        if nme_ok {
            // Training NME as the reference logs it (ignores rotation; indicative only).
            match crate::eval::decode_and_score(&out.to_f32_vec(), batch.target_shape, &batch.metas) {
                Ok((_, e)) => {
                    nme_sum += e.iter().sum::<f64>();
                    nme_count += e.len();
                }
                Err(_) => nme_ok = false,
            }
        }
        batch_time.update(end.elapsed().as_secs_f64(), 1);
        if let Some(b) = &bar {
            b.inc(1);
            let rate = losses.count / epoch_start.elapsed().as_secs_f64().max(1e-9);
            b.set_message(format!("{rate:.1} img/s  loss {:.5}", losses.avg()));
        }
        if i % print_freq.max(1) == 0 {
            log.info(&format!(
                "Epoch: [{epoch}][{i}/{n}]\tTime {:.3}s ({:.3}s)\tSpeed {:.1} samples/s\tData {:.3}s ({:.3}s)\tLoss {:.5} ({:.5})\t",
                batch_time.val,
                batch_time.avg(),
                bs as f64 / batch_time.val.max(1e-9),
                data_time.val,
                data_time.avg(),
                losses.val,
                losses.avg()
            ));
        }
        end = Instant::now();
    }
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    log.set_bar(None);
    let nme = (nme_ok && nme_count > 0).then(|| nme_sum / nme_count as f64);
    log.info(&format!(
        "Train Epoch {epoch} time:{:.4} loss:{:.4} nme:{:.4}",
        batch_time.avg(),
        losses.avg(),
        nme.unwrap_or(f64::NAN)
    ));
    Ok(EpochResult { loss: losses.avg(), nme })
}

/// The bare state_dict (official names), as final_state / model_best hold it.
fn save_state_dict(path: &Path, net: &HrNet) -> Result<()> {
    crate::io::save_safetensors(path, &net.store.state_dict(), &[])
}

/// Runs `hrk train`.
pub fn train(opts: &TrainOptions) -> Result<TrainSummary> {
    let cfg = crate::cli::common::config(&opts.cfg_path)?;
    let out_dir = cfg.output_dir_for(&opts.cfg_path);
    std::fs::create_dir_all(&out_dir).with_context(|| format!("cannot create output folder {}", out_dir.display()))?;
    // A run killed while writing a checkpoint leaves its temp file behind; the checkpoints themselves
    // are intact (written by rename), so the leftovers are only clutter.
    let stale = crate::io::safetensors::remove_stale_temp_files(&out_dir);
    let log = Logger::create(&out_dir, &config_name(&opts.cfg_path), opts.quiet)?;
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
        log.info(&format!(
            "=> {} does not exist: generating the synthetic demo data set ({} images, {} landmarks) in {}",
            cfg.dataset.trainset,
            opts.synth_count,
            cfg.model.num_joints,
            root.display()
        ));
        let t = Instant::now();
        let s = crate::synth::generate(&root, cfg.model.num_joints, opts.synth_count, opts.seed)
            .with_context(|| format!("generating the synthetic data set into {}", root.display()))?;
        log.info(&format!("=> wrote {} train + {} test images in {:.1}s", s.train_count, s.test_count, t.elapsed().as_secs_f64()));
        if !Path::new(&cfg.dataset.trainset).exists() {
            bail!(
                "{}: DATASET.TRAINSET {} is still missing after generating synthetic data (expected {})",
                opts.cfg_path.display(),
                cfg.dataset.trainset,
                s.train_csv.display()
            );
        }
    }

    let mut net = crate::cli::common::model(&cfg, opts.seed)?;
    // MODEL.INIT_WEIGHTS + MODEL.PRETRAINED: ImageNet backbone by key name (a missing file only warns,
    // as in the reference).
    if let Some(report) = crate::model::pretrained::load_from_config(&mut net, &cfg, false)? {
        log.info(&format!("=> ImageNet init: {report}"));
    }

    let train_ds = Arc::new(FaceDataset::open(crate::cli::common::dataset_spec(&cfg, true, None)?)?);
    let val_ds = Arc::new(FaceDataset::open(crate::cli::common::dataset_spec(&cfg, false, None)?)?);
    let train_bs = cfg.train_batch_size();
    log.info(&format!(
        "=> train set {} ({} images, batch {train_bs}), validation set {} ({} images, batch {})",
        cfg.dataset.trainset,
        train_ds.len(),
        cfg.dataset.testset,
        val_ds.len(),
        cfg.test_batch_size()
    ));

    let mut opt = Optimizer::from_config(&cfg);
    let sched = MultiStepLr::new(cfg.train.lr, &cfg.train.lr_step, cfg.train.lr_factor);
    let mut start_epoch = cfg.train.begin_epoch;
    let mut best_nme = 100.0f64;
    let mut seed = opts.seed;
    let mut resumed_from = None;
    let latest = out_dir.join(LATEST);
    if cfg.train.resume && latest.is_file() {
        let ck = checkpoint::load(&latest)?;
        let src = latest.display().to_string();
        net.store.load(&ck.model, true, &src)?;
        if ck.meta.optimizer != opt.name() {
            bail!("{src}: checkpoint was trained with {}, the config asks for {}", ck.meta.optimizer, opt.name());
        }
        opt.load_state(&ck.optim, &net.store.params()).with_context(|| src.clone())?;
        if ck.meta.seed != seed {
            log.info(&format!("=> resuming with the checkpoint's seed {} (not --seed {seed}) so the data order continues", ck.meta.seed));
            seed = ck.meta.seed;
        }
        if ck.meta.threads != rayon::current_num_threads() {
            log.info(&format!(
                "warning: checkpoint ran with {} threads, this run has {}: results stay correct but are not bit-identical to an uninterrupted run",
                ck.meta.threads,
                rayon::current_num_threads()
            ));
        }
        if ck.meta.train_batch_size != train_bs {
            log.info(&format!("warning: checkpoint used batch {}, the config now gives {train_bs}", ck.meta.train_batch_size));
        }
        start_epoch = ck.meta.epoch;
        best_nme = ck.meta.best_nme;
        resumed_from = Some(start_epoch);
        log.info(&format!("=> loaded checkpoint {src} (epoch {start_epoch}, best NME {best_nme:.4})"));
    } else {
        log.info("=> no checkpoint found");
    }
    if opts.device != crate::tensor::Device::Cpu {
        log.info(&format!("=> training on {:?}", opts.device));
        net.to_device(&opts.device)?;
    }

    let workers = cfg.workers;
    let mut train_lc = LoaderConfig::new(train_bs, cfg.train.shuffle, workers, seed);
    // A 1-sample last batch with a 1x1 lowest-resolution branch would make BN's batch variance
    // undefined (PyTorch raises); drop that batch instead.
    let branches = cfg.model.extra.stage4.num_branches.max(1) as u32;
    let smallest = (cfg.model.image_size[0] / 4) >> (branches - 1);
    let smallest_w = (cfg.model.image_size[1] / 4) >> (branches - 1);
    if train_ds.len() % train_bs == 1 && smallest * smallest_w <= 1 {
        log.info("warning: dropping the 1-image last training batch (BN needs more than one value per channel)");
        train_lc.drop_last = true;
    }
    let train_loader = DataLoader::new(train_ds.clone(), train_lc)?;

    let metrics_path = out_dir.join("metrics.jsonl");
    let mut history = restore_metrics(&metrics_path, start_epoch)?;
    let show_bar = !opts.quiet && std::io::stdout().is_terminal();
    let print_freq = cfg.print_freq.max(1);
    let mut last_good = latest.is_file().then(|| latest.clone());
    let mut epochs_run = 0usize;
    let mut last_preds = None;
    for epoch in start_epoch..cfg.train.end_epoch {
        if opts.stop_after_epochs.is_some_and(|k| epochs_run >= k) {
            log.info(&format!("=> stopping after {epochs_run} epoch(s) as asked; resume with TRAIN.RESUME true"));
            return Ok(TrainSummary { out_dir, log_file: log.path().to_path_buf(), epochs_run, resumed_from, best_nme, history, final_state: None });
        }
        let t0 = Instant::now();
        let lr = sched.lr_for_epoch(epoch);
        opt.set_lr(lr);
        log.info(&format!("=> epoch {epoch}: lr {lr:e}"));
        let tr = train_epoch(&mut net, &mut opt, &train_loader, epoch, print_freq, &log, show_bar, &last_good)?;
        let val = crate::eval::evaluate(&mut net, &val_ds, cfg.test_batch_size(), workers)?;
        let s = val.summary;
        log.info(&format!("Test Epoch {epoch} {}", val.log_fields()));
        let is_best = s.nme < best_nme;
        best_nme = best_nme.min(s.nme);
        log.info(&format!("=> saving checkpoint to {}", out_dir.display()));
        let meta = CheckpointMeta {
            format: FORMAT.to_string(),
            epoch: epoch + 1,
            best_nme,
            scheduler_last_epoch: MultiStepLr::position_for_epoch(epoch),
            lr,
            optimizer: opt.name().to_string(),
            seed,
            data_rng: "stateless: order = shuffle(seed, epoch); augmentation = f(seed, epoch, sample index)".to_string(),
            train_batch_size: train_bs,
            threads: rayon::current_num_threads(),
        };
        let bytes = checkpoint::encode(&meta, &net.store.state_dict(), &opt.state())?;
        let ck_path = checkpoint::save(&out_dir, epoch, &bytes)?;
        if is_best {
            save_state_dict(&out_dir.join(BEST), &net)?;
        }
        let (n_img, j) = (val_ds.len(), cfg.model.num_joints);
        let flat: Vec<f32> = val.predictions.iter().flat_map(|p| [p[0], p[1]]).collect();
        crate::io::save_safetensors(&out_dir.join("current_pred.safetensors"), &[("predictions".to_string(), HostTensor::f32(vec![n_img, j, 2], flat))], &[])?;
        last_good = Some(ck_path);
        log.info(&format!("best: {is_best}"));
        let m = EpochMetrics {
            epoch,
            lr,
            train_loss: tr.loss,
            train_nme: tr.nme,
            val_loss: val.loss,
            nme: s.nme,
            fr_008: s.fr_008,
            fr_010: s.fr_010,
            auc_010: s.auc_010,
            seconds: t0.elapsed().as_secs_f64(),
        };
        append_metrics(&metrics_path, &m)?;
        history.push(m);
        let col = |f: fn(&EpochMetrics) -> f64| history.iter().map(f).collect::<Vec<f64>>();
        if let Err(e) = pictures::write_curves(&out_dir.join("curves.png"), &col(|m| m.train_loss), &col(|m| m.val_loss), &col(|m| m.nme), &col(|m| m.fr_008), &col(|m| m.fr_010)) {
            log.info(&format!("warning: curves.png not written: {e:#}"));
        }
        last_preds = Some(val.predictions);
        epochs_run += 1;
    }
    let final_path = out_dir.join(FINAL);
    save_state_dict(&final_path, &net)?;
    log.info(&format!("=> saved final state to {}", final_path.display()));
    let preds = match last_preds {
        Some(p) => p,
        None => crate::eval::evaluate(&mut net, &val_ds, cfg.test_batch_size(), workers)?.predictions,
    };
    let shown = val_ds.len().min(8);
    let mut items = Vec::new();
    for i in 0..shown {
        let img = val_ds.source_image(i, false)?;
        let gt: Vec<[f32; 2]> = val_ds.annotation(i)?.pts.iter().map(|p| [p[0] as f32, p[1] as f32]).collect();
        let j = cfg.model.num_joints;
        items.push((img, gt, preds[i * j..(i + 1) * j].to_vec()));
    }
    let overlay = out_dir.join("test_predictions.png");
    match pictures::write_overlay(&overlay, &items, 256) {
        Ok(()) => log.info(&format!("=> wrote {} (ground truth red, predictions green)", overlay.display())),
        Err(e) => log.info(&format!("warning: {} not written: {e:#}", overlay.display())),
    }
    if let Some(m) = history.last() {
        log.info(&format!(
            "=> done: validation NME {:.4} ({:.2} %), FR@0.08 {:.4}, FR@0.10 {:.4}; best NME {best_nme:.4}",
            m.nme,
            m.nme * 100.0,
            m.fr_008,
            m.fr_010
        ));
    }
    Ok(TrainSummary { out_dir, log_file: log.path().to_path_buf(), epochs_run, resumed_from, best_nme, history, final_state: Some(final_path) })
}
