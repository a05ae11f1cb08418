//! Per-epoch validation on DATASET.TESTSET: val loss, decoded predictions, NME and FR.
//!
//! TEMPORARY (swap at merge): this is the trainer's own copy of the evaluation loop, written
//! because `src/eval.rs` (the eval helper's module) was not in this tree yet. When it lands,
//! `validate` should delegate to it; the reference semantics below are what both implement.

use crate::autograd::no_grad;
use crate::data::decode::decode_preds;
use crate::data::loader::{Batch, DataLoader};
use crate::data::metrics::{compute_nme, Summary};
use crate::model::HrNet;
use crate::ops;
use crate::tensor::Tensor;
use anyhow::{Context, Result};
use std::time::Instant;

#[derive(Clone, Debug)]
pub struct Validation {
    /// Mean MSE over batches, weighted by batch size (the reference's AverageMeter).
    pub loss: f64,
    pub summary: Summary,
    /// Per-image NME in dataset order.
    pub nme: Vec<f64>,
    /// Predictions (original-image pixels), `N·J` points in dataset order.
    pub preds: Vec<[f32; 2]>,
    /// Mean seconds per batch.
    pub batch_time: f64,
}

/// Decoded predictions and per-image NME for a batch's output heatmaps (the reference's
/// `decode_preds` + `compute_nme` against `meta['pts']`).
pub fn batch_nme(out: &[f32], batch: &Batch) -> Result<(Vec<[f32; 2]>, Vec<f64>)> {
    let [n, j, h, w] = batch.target_shape;
    let centers: Vec<[f32; 2]> = batch.metas.iter().map(|m| m.center).collect();
    let scales: Vec<f64> = batch.metas.iter().map(|m| m.scale).collect();
    let preds = decode_preds(out, n, j, h, w, &centers, &scales)?;
    let gts: Vec<[f32; 2]> = batch.metas.iter().flat_map(|m| m.pts.iter().copied()).collect();
    let boxes: Option<Vec<f64>> = batch.metas.iter().map(|m| m.box_size).collect();
    let nme = compute_nme(&preds, &gts, j, boxes.as_deref())?;
    Ok((preds, nme))
}

/// Runs the model in eval mode (BN running statistics, no autograd tape) over every batch.
pub fn validate(net: &mut HrNet, loader: &DataLoader) -> Result<Validation> {
    let (mut loss_sum, mut count) = (0.0f64, 0usize);
    let (mut nme, mut preds) = (Vec::new(), Vec::new());
    let start = Instant::now();
    let mut batches = 0usize;
    for batch in loader.epoch(0) {
        let batch = batch?;
        let x = Tensor::from_f32(&batch.input_shape, batch.input.clone())?;
        let t = Tensor::from_f32(&batch.target_shape, batch.target.clone())?;
        let (out, loss) = no_grad(|| -> Result<(Tensor, f64)> {
            let out = net.forward(&x, false)?;
            let loss = ops::mse_loss(&out, &t)?.item()?;
            Ok((out, loss))
        })
        .with_context(|| format!("validation batch {batches}"))?;
        loss_sum += loss * batch.len() as f64;
        count += batch.len();
        let (p, e) = batch_nme(&out.to_f32_vec(), &batch)?;
        preds.extend(p);
        nme.extend(e);
        batches += 1;
    }
    let batch_size = loader.config().batch_size;
    Ok(Validation {
        loss: loss_sum / count.max(1) as f64,
        summary: Summary::from_nme(&nme, batch_size),
        nme,
        preds,
        batch_time: start.elapsed().as_secs_f64() / batches.max(1) as f64,
    })
}
