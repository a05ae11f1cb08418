//! One epoch of training (`Trainer::run_epoch`): the loader's batches through the training step,
//! eagerly or as captured CUDA graphs, with the reference's running meters, progress and log lines.

use super::step::{self, LossSeed};
use super::trainer::log_scalar;
use super::{graph, BatchProgress, EpochTraining, Trainer};
use crate::tensor::{Storage, Tensor};
use anyhow::{bail, Context, Result};
use std::path::PathBuf;
use std::time::Instant;

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

impl Trainer {
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
                    let pass = step::forward_backward(&mut self.net, &x, &t, LossSeed::One)
                        .with_context(|| format!("epoch {epoch}, iteration {i}"))?;
                    let lv = pass.loss.item()?;
                    refuse_non_finite(lv, &self.last_good)?;
                    let grad_refs: Vec<&Storage> = pass.grads.iter().collect();
                    self.optimizer.step(&mut self.net.store.params_mut(), &grad_refs)?;
                    (lv, pass.heatmaps.to_f32_vec())
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
            self.stop_if_asked(epoch)?;
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
}
