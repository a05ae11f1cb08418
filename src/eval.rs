//! Evaluation with the reference protocol (tools/test.py, `function.inference` / `validate`):
//! test-mode crops (no flip, no augmentation), one forward pass in eval mode under `no_grad`,
//! `decode_preds` on the model's heatmap size, per-image NME, the logged summary and the mean
//! MSE loss against the heatmap targets. Used by `hrk test` and by the trainer's validation, so
//! it prints nothing. [`TestOptions`] adds the opt-in test-time options of issue #15 (flip test,
//! heatmap shift, DARK decoding); the default is the reference protocol.

use crate::config::DecodeMode;
use crate::data::codec::decode_preds_with;
use crate::data::dataset::FaceDataset;
use crate::data::loader::{build_batch, Batch};
use crate::data::metrics::{compute_nme_with, NmeNorm, Summary};
use crate::data::sample::SampleMeta;
use crate::model::HrNet;
use anyhow::{anyhow, bail, Context, Result};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::sync_channel;
use std::time::Instant;

/// What one evaluation pass produced, in dataset order.
#[derive(Clone, Debug, PartialEq)]
pub struct EvalResult {
    /// Landmarks per image.
    pub joints: usize,
    /// `n·joints` predicted points (x, y) in original-image pixels (integer-valued, §7.2).
    pub predictions: Vec<[f32; 2]>,
    /// Per-image NME (fraction).
    pub nme: Vec<f64>,
    /// Mean NME, FR@0.08/0.10, AUC@0.08/0.10 (fractions).
    pub summary: Summary,
    /// Mean MSE of the heatmaps against the targets, weighted by batch size like the
    /// reference's `AverageMeter` in `validate`.
    pub loss: f64,
    /// Average wall time per batch in seconds (data + forward + decode), as the reference logs.
    pub batch_time: f64,
}

impl EvalResult {
    pub fn len(&self) -> usize {
        self.nme.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nme.is_empty()
    }

    /// The body of the reference's log line: `time:… loss:… nme:… [008]:… [010]:…`.
    /// test.py prefixes it with `Test Results `, validation with `Test Epoch {e} `.
    pub fn log_fields(&self) -> String {
        format!(
            "time:{:.4} loss:{:.4} nme:{:.4} [008]:{:.4} [010]:{:.4}",
            self.batch_time, self.loss, self.summary.nme, self.summary.fr_008, self.summary.fr_010
        )
    }
}

/// Test-time options (TEST.FLIP_TEST, TEST.SHIFT_HEATMAP, TEST.DECODE); `Default` is the reference.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TestOptions {
    /// Average with the flipped-back heatmaps of the horizontally flipped crop.
    pub flip_test: bool,
    /// Shift the flipped-back heatmaps one column right before averaging (flip test only).
    pub shift_heatmap: bool,
    /// Sub-pixel refinement after the argmax.
    pub decode: DecodeMode,
}

impl TestOptions {
    /// The TEST.* keys of a (validated) config.
    pub fn from_config(cfg: &crate::config::Config) -> Result<TestOptions> {
        Ok(TestOptions {
            flip_test: cfg.test.flip_test,
            shift_heatmap: cfg.test.shift_heatmap,
            decode: cfg.test.decode.parse().map_err(|e| anyhow!("config key TEST.DECODE: {e}"))?,
        })
    }

    /// These options with the test-time flags of `hrk test` / `hrk predict` (and the Python
    /// package's arguments) applied: `--flip-test` and `--shift-heatmap` switch on, `--decode` replaces.
    pub fn with_overrides(mut self, flip_test: bool, shift_heatmap: bool, decode: Option<&str>) -> Result<TestOptions> {
        self.flip_test |= flip_test;
        self.shift_heatmap |= shift_heatmap;
        if let Some(d) = decode {
            self.decode = d.parse().context("--decode")?;
        }
        if self.shift_heatmap && !self.flip_test {
            log::warn!("--shift-heatmap / TEST.SHIFT_HEATMAP has no effect without the flip test");
        }
        Ok(self)
    }

    /// A short label for logs and metrics.json.
    pub fn describe(&self) -> String {
        let mut s = format!("decode={}", self.decode.name());
        if self.flip_test {
            s += if self.shift_heatmap { " flip_test shift_heatmap" } else { " flip_test" };
        }
        s
    }
}

/// An NCHW batch mirrored along W (the flipped crop: `np.flip(input, 3)` of the HRNet pose code).
pub fn flip_input_w(input: &[f32], shape: [usize; 4]) -> Result<Vec<f32>> {
    let [n, c, h, w] = shape;
    if n * c * h * w != input.len() {
        bail!("flip test: input has {} values, expected {n}x{c}x{h}x{w}", input.len());
    }
    let mut out = vec![0f32; input.len()];
    for (src, dst) in input.chunks_exact(w.max(1)).zip(out.chunks_exact_mut(w.max(1))) {
        for (d, s) in dst.iter_mut().zip(src.iter().rev()) {
            *d = *s;
        }
    }
    Ok(out)
}

/// The flip test's merge, in place: `heatmaps = (heatmaps + back) · 0.5` where `back` is `flipped`
/// mirrored along W with the `pairs` channels swapped and, with `shift`, moved one column right
/// (column 0 keeps its own value). float32 like the pose code's torch tensors.
pub fn flip_back_average(
    heatmaps: &mut [f32], flipped: &[f32], shape: [usize; 4], pairs: &[(usize, usize)], shift: bool,
) -> Result<()> {
    let [n, joints, h, w] = shape;
    let per = h * w;
    if heatmaps.len() != n * joints * per || flipped.len() != heatmaps.len() {
        bail!("flip test: heatmaps {} and {} values for {n}x{joints}x{h}x{w}", heatmaps.len(), flipped.len());
    }
    // partner[j] = the flipped output channel that becomes joint j.
    let mut partner: Vec<usize> = (0..joints).collect();
    for &(a, b) in pairs {
        if a >= joints || b >= joints {
            bail!("flip test: pair ({a}, {b}) out of range for {joints} landmarks");
        }
        partner.swap(a, b);
    }
    let mut back = vec![0f32; w];
    for b in 0..n {
        for (j, &pj) in partner.iter().enumerate() {
            let src = &flipped[(b * joints + pj) * per..(b * joints + pj + 1) * per];
            let dst = &mut heatmaps[(b * joints + j) * per..(b * joints + j + 1) * per];
            for y in 0..h {
                let row = &src[y * w..(y + 1) * w];
                for (x, v) in back.iter_mut().enumerate() {
                    *v = row[w - 1 - x];
                }
                if shift && w > 1 {
                    back.copy_within(0..w - 1, 1);
                }
                for (d, v) in dst[y * w..(y + 1) * w].iter_mut().zip(&back) {
                    *d = (*d + *v) * 0.5f32;
                }
            }
        }
    }
    Ok(())
}

/// The heatmaps used for decoding: one forward pass, or with `opts.flip_test` the average with the
/// flipped crop's flipped-back maps (`pairs`: the dataset's mirrored landmarks).
pub fn test_heatmaps(
    net: &mut HrNet, input: Vec<f32>, shape: [usize; 4], opts: &TestOptions, pairs: &[(usize, usize)],
) -> Result<(Vec<f32>, [usize; 4])> {
    if !opts.flip_test {
        return forward_heatmaps(net, input, shape);
    }
    let flipped_input = flip_input_w(&input, shape)?;
    let (mut hm, hshape) = forward_heatmaps(net, input, shape)?;
    let (hf, fshape) = forward_heatmaps(net, flipped_input, shape)?;
    if fshape != hshape {
        bail!("flip test: heatmap shapes {hshape:?} and {fshape:?} differ");
    }
    flip_back_average(&mut hm, &hf, hshape, pairs, opts.shift_heatmap)?;
    Ok((hm, hshape))
}

/// Decodes a batch of heatmaps (`[n, joints, h, w]`) with each sample's center/scale and scores
/// them against the samples' original landmarks: (points, per-image NME).
pub fn decode_and_score(
    heatmaps: &[f32], shape: [usize; 4], metas: &[SampleMeta],
) -> Result<(Vec<[f32; 2]>, Vec<f64>)> {
    let norm = NmeNorm::builtin(shape[1])?;
    decode_and_score_with(heatmaps, shape, metas, DecodeMode::Quarter, &norm)
}

/// [`decode_and_score`] with a decode mode and an NME normaliser (custom layouts).
pub fn decode_and_score_with(
    heatmaps: &[f32], shape: [usize; 4], metas: &[SampleMeta], mode: DecodeMode, norm: &NmeNorm,
) -> Result<(Vec<[f32; 2]>, Vec<f64>)> {
    let [n, joints, h, w] = shape;
    if metas.len() != n {
        bail!("evaluate: {} samples for a heatmap batch of {n}", metas.len());
    }
    let centers: Vec<[f32; 2]> = metas.iter().map(|m| m.center).collect();
    let scales: Vec<f64> = metas.iter().map(|m| m.scale).collect();
    let preds = decode_preds_with(heatmaps, n, joints, h, w, &centers, &scales, mode)?;
    let mut gts = Vec::with_capacity(n * joints);
    for m in metas {
        if m.pts.len() != joints {
            bail!("evaluate: sample {} has {} landmarks, the model predicts {joints}", m.index, m.pts.len());
        }
        gts.extend_from_slice(&m.pts);
    }
    let boxes: Option<Vec<f64>> = metas.iter().map(|m| m.box_size).collect();
    let nme = compute_nme_with(&preds, &gts, joints, norm, boxes.as_deref())?;
    Ok((preds, nme))
}

/// One inference forward pass (eval-mode BN, no graph) of normalised NCHW `input`; returns the
/// heatmaps as f32 and their shape `[n, joints, h, w]`. The input is cast to the model's dtype.
pub fn forward_heatmaps(net: &mut HrNet, input: Vec<f32>, shape: [usize; 4]) -> Result<(Vec<f32>, [usize; 4])> {
    // The model picks its engine: the folded plan on a GPU or the CPU, else the autograd graph.
    net.eval_heatmaps(input, shape)
}

/// Sum of squared differences in f64 (the MSE numerator).
fn squared_error_sum(a: &[f32], b: &[f32]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(&x, &y)| {
            let d = x as f64 - y as f64;
            d * d
        })
        .sum()
}

/// Runs the model over `dataset` (which should be opened with `is_train = false`) in batches of
/// `batch`; `threads` > 0 builds batches on that many background threads while the model runs.
pub fn evaluate(net: &mut HrNet, dataset: &FaceDataset, batch: usize, threads: usize) -> Result<EvalResult> {
    evaluate_with(net, dataset, batch, threads, &TestOptions::default())
}

/// `hrk test`'s step for one annotation file: opens `file` with the config's dataset settings and
/// evaluates `net` on it ([`evaluate_with`]).
pub fn evaluate_file(
    net: &mut HrNet, cfg: &crate::config::Config, file: &std::path::Path, batch: usize, threads: usize,
    opts: &TestOptions,
) -> Result<(FaceDataset, EvalResult)> {
    let spec = crate::data::dataset::DatasetSpec::from_config(cfg, false, Some(file))?;
    let dataset = FaceDataset::open(spec)?;
    let result =
        evaluate_with(net, &dataset, batch, threads, opts).with_context(|| format!("test set {}", file.display()))?;
    Ok((dataset, result))
}

/// [`evaluate`] with test-time options (flip test, DARK decoding).
pub fn evaluate_with(
    net: &mut HrNet, dataset: &FaceDataset, batch: usize, threads: usize, opts: &TestOptions,
) -> Result<EvalResult> {
    if batch == 0 {
        bail!("evaluate {}: batch size must be positive", dataset.spec.annotations.display());
    }
    if dataset.is_empty() {
        bail!("evaluate {}: the dataset is empty", dataset.spec.annotations.display());
    }
    if net.spec.num_joints != dataset.spec.num_joints {
        bail!(
            "evaluate {}: the model predicts {} landmarks, the dataset has {}",
            dataset.spec.annotations.display(),
            net.spec.num_joints,
            dataset.spec.num_joints
        );
    }
    let indices: Vec<usize> = (0..dataset.len()).collect();
    let chunks: Vec<&[usize]> = indices.chunks(batch).collect();
    let joints = dataset.spec.num_joints;
    let ann = dataset.spec.annotations.display();
    let norm = dataset.spec.nme_norm().map_err(|e| anyhow!("evaluate {ann}: {e}"))?;
    let pairs = if opts.flip_test {
        dataset.spec.mirror_pairs().map_err(|e| anyhow!("evaluate {ann} with the flip test: {e}"))?
    } else {
        Vec::new()
    };

    let mut predictions = Vec::with_capacity(dataset.len() * joints);
    let mut nme = Vec::with_capacity(dataset.len());
    let mut loss_sum = 0.0f64;
    let started = Instant::now();

    let mut consume = |b: Batch| -> Result<()> {
        let (heatmaps, shape) = test_heatmaps(net, b.input, b.input_shape, opts, &pairs)?;
        if shape != b.target_shape {
            bail!(
                "evaluate {}: the model outputs heatmaps {:?}, MODEL.HEATMAP_SIZE / NUM_JOINTS give {:?} (check IMAGE_SIZE vs HEATMAP_SIZE)",
                dataset.spec.annotations.display(),
                shape,
                b.target_shape
            );
        }
        let per_image = b.target_shape[1] * b.target_shape[2] * b.target_shape[3];
        loss_sum += squared_error_sum(&heatmaps, &b.target) / per_image.max(1) as f64;
        let (p, e) = decode_and_score_with(&heatmaps, shape, &b.metas, opts.decode, &norm)?;
        predictions.extend(p);
        nme.extend(e);
        Ok(())
    };

    if threads == 0 || chunks.len() == 1 {
        for (i, c) in chunks.iter().enumerate() {
            consume(build_batch(dataset, c, 0, 0, i)?)?;
        }
    } else {
        // Workers take batch numbers in order from a counter; the bounded channel keeps them at
        // most a few batches ahead of the model. Out-of-order arrivals wait in `pending`.
        let next = AtomicUsize::new(0);
        let (tx, rx) = sync_channel::<(usize, Result<Batch>)>(threads.max(1));
        std::thread::scope(|scope| -> Result<()> {
            for _ in 0..threads.min(chunks.len()) {
                let (tx, next, chunks) = (tx.clone(), &next, &chunks);
                scope.spawn(move || loop {
                    let i = next.fetch_add(1, Ordering::SeqCst);
                    if i >= chunks.len() {
                        return;
                    }
                    if tx.send((i, build_batch(dataset, chunks[i], 0, 0, i))).is_err() {
                        return;
                    }
                });
            }
            drop(tx);
            let mut pending = BTreeMap::new();
            let result = (|| -> Result<()> {
                for want in 0..chunks.len() {
                    let b = loop {
                        if let Some(b) = pending.remove(&want) {
                            break b;
                        }
                        let (i, b) = rx.recv().map_err(|_| anyhow!("evaluate: batch workers stopped unexpectedly"))?;
                        pending.insert(i, b);
                    };
                    consume(b?)?;
                }
                Ok(())
            })();
            // On error, stop the workers: they see the counter past the end, and a dropped
            // receiver fails their pending send.
            next.store(chunks.len(), Ordering::SeqCst);
            drop(rx);
            result
        })?;
    }

    let n = nme.len();
    Ok(EvalResult {
        joints,
        summary: Summary::from_nme(&nme, batch),
        predictions,
        nme,
        loss: loss_sum / n as f64,
        batch_time: started.elapsed().as_secs_f64() / chunks.len() as f64,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(index: usize, center: [f32; 2], scale: f64, pts: Vec<[f32; 2]>) -> SampleMeta {
        SampleMeta {
            index,
            center,
            scale,
            tpts: pts.clone(),
            pts,
            box_size: Some(100.0),
            augmentation: crate::data::augment::Augmentation::NONE,
        }
    }

    #[test]
    fn one_hot_heatmap_decodes_to_its_cell() {
        // 19 joints (AFLW-style box normaliser) on a 32×32 map: a single peak at (x0, y0)
        // decodes to trunc(c + (x0 + 0.5 - 16)·h/32) + 1 with no quarter shift (flat neighbours).
        let (j, hw) = (19usize, 32usize);
        let mut hm = vec![0f32; j * hw * hw];
        let mut gts = Vec::new();
        for k in 0..j {
            let (x0, y0) = (3 + k, 5 + k / 2);
            hm[k * hw * hw + y0 * hw + x0] = 1.0;
            let h = 200.0 * 1.6;
            let px = (100.0 + (x0 as f64 + 0.5 - 16.0) * h / 32.0).trunc() + 1.0;
            let py = (120.0 + (y0 as f64 + 0.5 - 16.0) * h / 32.0).trunc() + 1.0;
            gts.push([px as f32, py as f32]);
        }
        let m = meta(0, [100.0, 120.0], 1.6, gts.clone());
        let (p, e) = decode_and_score(&hm, [1, j, hw, hw], &[m]).unwrap();
        assert_eq!(p, gts);
        assert_eq!(e, vec![0.0]);
    }

    #[test]
    fn mismatched_batch_is_an_error() {
        let hm = vec![0f32; 2 * 19 * 16];
        let m = meta(0, [0.0, 0.0], 1.0, vec![[0.0; 2]; 19]);
        assert!(decode_and_score(&hm, [2, 19, 4, 4], &[m]).is_err());
    }
}
