//! The MTCNN face detector (P-Net, R-Net, O-Net cascade) with facenet-pytorch's `detect_face` pipeline:
//! scale pyramid, area resampling, per-scale and cross-scale NMS, box regression, squaring and cropping
//! between stages, landmarks from O-Net. The networks run on hrk's ops on the CPU or a GPU device; the
//! resampling, box arithmetic and NMS run on the host in f32 as facenet does.
//!
//! Layer: beside `model` (uses ops, tensor, data, io).

mod crops_cpu;
mod layers_cpu;
pub mod nets;
pub mod nms;
mod pnet_cpu;
pub mod resample;

use crate::data::image::Image;
use crate::tensor::{Device, Tensor};
use anyhow::{anyhow, bail, Result};
use crops_cpu::{CropConvs, CropNetCpu, ONetConvs, RNetConvs};
use nets::{CropNet, PNet, Weights, ONET, RNET};
use pnet_cpu::PNetCpu;
use rayon::prelude::*;
use resample::{area_resample_normalized, Region};
use std::collections::HashMap;
use std::path::Path;

/// The weights embedded in the binary: facenet-pytorch 2.6.0's pnet.pt, rnet.pt, onet.pt converted by
/// `weights/make_mtcnn_weights.sh` (see weights/NOTICE).
pub static EMBEDDED_WEIGHTS: &[u8] = include_bytes!("../../weights/mtcnn.safetensors");

/// One detected face.
#[derive(Clone, Debug, PartialEq)]
pub struct Detection {
    /// x1, y1, x2, y2 in original-image pixels.
    pub bbox: [f32; 4],
    pub score: f32,
    /// Eyes, nose, mouth corners (facenet's order: left eye, right eye, nose, left mouth, right mouth, as
    /// seen in the image), (x, y) in original-image pixels.
    pub points: [[f32; 2]; 5],
}

/// Detector settings; the defaults are facenet-pytorch's `MTCNN()`.
#[derive(Clone, Debug)]
pub struct DetectorOptions {
    /// Smallest face side searched for, in pixels.
    pub min_face: f32,
    /// Score thresholds of P-Net, R-Net and O-Net.
    pub thresholds: [f32; 3],
    /// Pyramid scale step.
    pub factor: f32,
}

impl Default for DetectorOptions {
    fn default() -> Self {
        DetectorOptions { min_face: 20.0, thresholds: [0.6, 0.7, 0.7], factor: 0.709 }
    }
}

impl DetectorOptions {
    fn check(&self) -> Result<()> {
        if !(self.min_face.is_finite() && self.min_face > 0.0) {
            bail!("detector: minimum face size must be a positive number of pixels (got {})", self.min_face);
        }
        if !(self.factor > 0.0 && self.factor < 1.0) {
            bail!("detector: pyramid factor must lie in (0, 1) (got {})", self.factor);
        }
        if let Some(t) = self.thresholds.iter().find(|t| !(0.0..=1.0).contains(*t)) {
            bail!("detector: thresholds must lie in [0, 1] (got {t})");
        }
        Ok(())
    }
}

/// Where one detection's time went: wall milliseconds of P-Net (pyramid, NMS), R-Net and O-Net (crops,
/// network, NMS), and the boxes each stage passed on.
#[derive(Clone, Copy, Debug, Default)]
pub struct DetectStats {
    pub stage_ms: [f64; 3],
    pub candidates: [usize; 3],
}

/// The three networks on one device.
pub struct Mtcnn {
    pnet: PNet,
    /// P-Net's own CPU loops, used when the device is the CPU.
    pnet_cpu: PNetCpu,
    rnet: CropNet,
    /// R-Net's and O-Net's own CPU loops, likewise.
    rnet_cpu: CropNetCpu<RNetConvs>,
    onet: CropNet,
    onet_cpu: CropNetCpu<ONetConvs>,
    device: Device,
}

/// A candidate box between stages: x1, y1, x2, y2, score, and the regression of the stage that made it.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Candidate {
    b: [f32; 4],
    score: f32,
    reg: [f32; 4],
}

impl Mtcnn {
    /// `weights: None` = the weights embedded in the binary (weights/mtcnn.safetensors).
    pub fn load(weights: Option<&Path>, device: &Device) -> Result<Mtcnn> {
        let tensors = match weights {
            Some(path) => crate::io::load_state_dict(path)?,
            None => crate::io::state_dict_from_bytes(EMBEDDED_WEIGHTS)
                .map_err(|e| anyhow!("embedded MTCNN weights: {e:#}"))?,
        };
        let shown = weights.map_or("the embedded MTCNN weights".to_string(), |p| p.display().to_string());
        let mut map: HashMap<String, _> = tensors.into_iter().collect();
        let nets = (|| -> Result<_> {
            let pnet = PNet::load(&mut Weights { tensors: &mut map, device, net: "pnet" })?;
            let rnet = CropNet::load(&mut Weights { tensors: &mut map, device, net: "rnet" }, &RNET)?;
            let onet = CropNet::load(&mut Weights { tensors: &mut map, device, net: "onet" }, &ONET)?;
            Ok((pnet, rnet, onet))
        })()
        .map_err(|e| anyhow!("{shown}: {e:#}"))?;
        if let Some(extra) = map.keys().min() {
            bail!("{shown}: unexpected tensor '{extra}' (want pnet.*, rnet.*, onet.* of facenet-pytorch's MTCNN)");
        }
        let ((pnet, pnet_raw), (rnet, rnet_raw), (onet, onet_raw)) = nets;
        Ok(Mtcnn {
            pnet,
            pnet_cpu: PNetCpu::new(&pnet_raw),
            rnet,
            rnet_cpu: CropNetCpu::new(&rnet_raw, &RNET),
            onet,
            onet_cpu: CropNetCpu::new(&onet_raw, &ONET),
            device: device.clone(),
        })
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Every face in `image` (RGB HWC f32 0..255), sorted by score, descending.
    pub fn detect(&self, image: &Image, opts: &DetectorOptions) -> Result<Vec<Detection>> {
        Ok(self.detect_with_stats(image, opts)?.0)
    }

    /// `detect`, with each stage's wall time and output count (for benches and `--verbose`).
    pub fn detect_with_stats(&self, image: &Image, opts: &DetectorOptions) -> Result<(Vec<Detection>, DetectStats)> {
        if image.width == 0 || image.height == 0 || image.data.len() != image.width * image.height * 3 {
            bail!("detector: image {}x{} holds {} values (want RGB)", image.width, image.height, image.data.len());
        }
        opts.check_work(image.width, image.height)?;
        let mut stats = DetectStats::default();
        let mut faces = crate::autograd::no_grad(|| -> Result<Vec<Detection>> {
            let t = std::time::Instant::now();
            let candidates = self.stage_one(image, opts)?;
            stats.stage_ms[0] = t.elapsed().as_secs_f64() * 1e3;
            stats.candidates[0] = candidates.len();
            let t = std::time::Instant::now();
            let candidates = self.stage_two(image, candidates, opts.thresholds[1])?;
            stats.stage_ms[1] = t.elapsed().as_secs_f64() * 1e3;
            stats.candidates[1] = candidates.len();
            let t = std::time::Instant::now();
            let faces = self.stage_three(image, candidates, opts.thresholds[2])?;
            stats.stage_ms[2] = t.elapsed().as_secs_f64() * 1e3;
            stats.candidates[2] = faces.len();
            Ok(faces)
        })?;
        faces.sort_by(|a, b| b.score.total_cmp(&a.score));
        Ok((faces, stats))
    }

    /// P-Net over the pyramid: per-scale NMS 0.5, cross-scale NMS 0.7, regression, squaring.
    fn stage_one(&self, image: &Image, opts: &DetectorOptions) -> Result<Vec<Candidate>> {
        let scales = pyramid_scales(image.width, image.height, opts.min_face as f64, opts.factor as f64);
        let found = if matches!(self.device, Device::Cpu) {
            self.pyramid_cpu(image, &scales, opts.thresholds[0])
        } else {
            self.pyramid_device(image, &scales, opts.thresholds[0])?
        };
        // Per scale, candidates in row-major order, NMS 0.5; then all scales in scale order.
        let all: Vec<Candidate> = found
            .into_iter()
            .flat_map(|boxes| {
                let keep = nms_candidates(&boxes, 0.5);
                keep.into_iter().map(move |i| boxes[i])
            })
            .collect();
        let keep = nms_candidates(&all, 0.7);
        Ok(keep
            .into_iter()
            .map(|i| {
                let c = all[i];
                let (rw, rh) = (c.b[2] - c.b[0], c.b[3] - c.b[1]);
                let b =
                    [c.b[0] + c.reg[0] * rw, c.b[1] + c.reg[1] * rh, c.b[2] + c.reg[2] * rw, c.b[3] + c.reg[3] * rh];
                Candidate { b: rerec(b), score: c.score, reg: [0.0; 4] }
            })
            .collect())
    }

    /// Each scale's P-Net boxes on the CPU. The scales are cut into bands of output rows, each run
    /// from its own input rows (resampled for it alone), so the rayon threads share the large scales
    /// and each band's maps stay small enough for the caches.
    fn pyramid_cpu(&self, image: &Image, scales: &[f64], threshold: f32) -> Vec<Vec<Candidate>> {
        let mut bands = Vec::new();
        for (level, &scale) in scales.iter().enumerate() {
            let (sh, sw) = level_size(image, scale);
            let Some([oh, _]) = pnet_cpu::pnet_out_extent(sh, sw) else { continue };
            let mut r0 = 0;
            while r0 < oh {
                let r1 = (r0 + PNET_BAND_ROWS).min(oh);
                bands.push((level, sh, sw, r0, r1));
                r0 = r1;
            }
        }
        let per_band: Vec<(usize, Vec<Candidate>)> = bands
            .par_iter()
            .map_init(
                || (Vec::new(), pnet_cpu::PNetScratch::default()),
                |(input, scratch), &(level, sh, sw, r0, r1)| {
                    let rows = pnet_cpu::pnet_input_rows(r0, r1, sh);
                    let x = pnet_cpu::grown(input, rows.len() * sw * 3);
                    resample::area_resample_rows_hwc(image, Region::whole(image), sh, sw, rows.clone(), x);
                    let [oh, ow] = self.pnet_cpu.run(scratch, x, rows.len(), sw);
                    debug_assert_eq!(oh, r1 - r0);
                    let out = &scratch.out[..oh * ow * pnet_cpu::HEAD_OUT];
                    (level, boxes_from_heads(out, ow, r0, scales[level], threshold))
                },
            )
            .collect();
        let mut found = vec![Vec::new(); scales.len()];
        for (level, boxes) in per_band {
            found[level].extend(boxes);
        }
        found
    }

    /// Each scale's P-Net boxes on a GPU device.
    fn pyramid_device(&self, image: &Image, scales: &[f64], threshold: f32) -> Result<Vec<Vec<Candidate>>> {
        scales
            .iter()
            .map(|&scale| {
                let (sh, sw) = level_size(image, scale);
                let mut input = vec![0f32; 3 * sh * sw];
                area_resample_normalized(image, Region::whole(image), sh, sw, &mut input);
                let x = Tensor::from_f32(&[1, 3, sh, sw], input)?.to_device(&self.device)?;
                let (reg, probs) = self.pnet.forward(&x)?;
                let [_, _, oh, ow] = probs.dims4("P-Net output")?;
                let (reg, probs) = (reg.to_cpu()?.to_f32_vec(), probs.to_cpu()?.to_f32_vec());
                Ok(generate_boxes(&reg, &probs, [oh, ow], scale, threshold))
            })
            .collect()
    }

    /// R-Net's or O-Net's heads on `n` crops (planar, normalised): the CPU's own loops on the CPU, else
    /// the ops on the device; face probabilities [n][2] first, then the other heads, as host vectors.
    fn crop_net<C: CropConvs>(
        &self, net: &CropNet, cpu: &CropNetCpu<C>, crops: Vec<f32>, n: usize,
    ) -> Result<Vec<Vec<f32>>> {
        if matches!(self.device, Device::Cpu) {
            return cpu.forward(&crops);
        }
        let side = net.shape().side;
        let x = Tensor::from_f32(&[n, 3, side, side], crops)?.to_device(&self.device)?;
        net.forward(&x)?.iter().map(|head| Ok(head.to_cpu()?.to_f32_vec())).collect()
    }

    /// R-Net on 24×24 crops: threshold, NMS 0.7, regression, squaring.
    fn stage_two(&self, image: &Image, candidates: Vec<Candidate>, threshold: f32) -> Result<Vec<Candidate>> {
        let (kept, crops) = crop_batch(image, &candidates, RNET.side);
        if kept.is_empty() {
            return Ok(Vec::new());
        }
        let out = self.crop_net(&self.rnet, &self.rnet_cpu, crops, kept.len())?;
        let (probs, reg) = (&out[0], &out[1]);
        let passed: Vec<Candidate> = kept
            .iter()
            .enumerate()
            .filter(|&(k, _)| probs[2 * k + 1] > threshold)
            .map(|(k, &c)| Candidate {
                b: candidates[c].b,
                score: probs[2 * k + 1],
                reg: [reg[4 * k], reg[4 * k + 1], reg[4 * k + 2], reg[4 * k + 3]],
            })
            .collect();
        Ok(nms_candidates(&passed, 0.7)
            .into_iter()
            .map(|i| Candidate { b: rerec(bbreg(passed[i].b, passed[i].reg)), score: passed[i].score, reg: [0.0; 4] })
            .collect())
    }

    /// O-Net on 48×48 crops: threshold, landmarks, regression, NMS 0.7 over the smaller area.
    fn stage_three(&self, image: &Image, candidates: Vec<Candidate>, threshold: f32) -> Result<Vec<Detection>> {
        let (kept, crops) = crop_batch(image, &candidates, ONET.side);
        if kept.is_empty() {
            return Ok(Vec::new());
        }
        let out = self.crop_net(&self.onet, &self.onet_cpu, crops, kept.len())?;
        let (probs, reg, marks) = (&out[0], &out[1], &out[2]);
        let mut faces = Vec::new();
        for (k, &c) in kept.iter().enumerate() {
            let score = probs[2 * k + 1];
            if score <= threshold {
                continue;
            }
            let b = candidates[c].b;
            let (wi, hi) = (b[2] - b[0] + 1.0, b[3] - b[1] + 1.0);
            let m = &marks[10 * k..10 * k + 10];
            let points = std::array::from_fn(|p| [wi * m[p] + b[0] - 1.0, hi * m[5 + p] + b[1] - 1.0]);
            let r = [reg[4 * k], reg[4 * k + 1], reg[4 * k + 2], reg[4 * k + 3]];
            faces.push(Detection { bbox: bbreg(b, r), score, points });
        }
        let keep = nms::nms_min(
            &faces.iter().map(|f| f.bbox).collect::<Vec<_>>(),
            &faces.iter().map(|f| f.score).collect::<Vec<_>>(),
            0.7,
        );
        Ok(keep.into_iter().map(|i| faces[i].clone()).collect())
    }
}

/// The pyramid level's size at `scale`: facenet's int(h·scale + 1) × int(w·scale + 1).
fn level_size(image: &Image, scale: f64) -> (usize, usize) {
    ((image.height as f64 * scale + 1.0) as usize, (image.width as f64 * scale + 1.0) as usize)
}

/// Output rows of P-Net per band of [`Mtcnn::pyramid_cpu`]: each band also computes 4 pooled rows
/// (and 2 conv2 rows) its neighbour computes too, so short bands waste work; long ones outgrow the
/// caches and leave the two threads unevenly loaded.
const PNET_BAND_ROWS: usize = 16;

/// The most pyramid pixels (Σ over the levels of their width × height: P-Net's input) one photo may
/// cost. Measured with `hrk predict` (tiny landmark model, one photo with three faces, wall time of the
/// whole run) on a 2-core AMD EPYC (Zen 4):
///
/// ```text
/// photo        --min-face  pyramid pixels  wall
/// 2000x1500    20          2.2 M           0.7 s
/// 4000x3000    20          8.7 M           2.3 s
/// 4000x3000    10          34.8 M          5.5 s
/// 4000x3000    5           139 M           20.5 s
/// ```
///
/// so about 7 M pyramid pixels a second. The bound is 32× a 4000×3000 photo at the default
/// `--min-face 20` (about 40 s): a 10000×10000 photo runs at 20 (72 M) and is refused at 1
/// (2.9e10, hours).
pub const MAX_PYRAMID_PIXELS: f64 = 2.8e8;

/// Σ width × height of the pyramid's levels for a `width`×`height` photo (f64: never overflows).
pub fn pyramid_pixels(width: usize, height: usize, min_face: f64, factor: f64) -> f64 {
    pyramid_scales(width, height, min_face, factor)
        .iter()
        .map(|&s| (height as f64 * s + 1.0).floor() * (width as f64 * s + 1.0).floor())
        .sum()
}

impl DetectorOptions {
    /// Refuses a photo whose pyramid exceeds [`MAX_PYRAMID_PIXELS`] (before any pixel is resampled),
    /// naming the work and the smallest whole `--min-face` that fits.
    pub fn check_work(&self, width: usize, height: usize) -> Result<()> {
        self.check()?;
        let (min_face, factor) = (self.min_face as f64, self.factor as f64);
        let work = pyramid_pixels(width, height, min_face, factor);
        if work <= MAX_PYRAMID_PIXELS {
            return Ok(());
        }
        // The work falls as the minimum face grows: the smallest whole size that fits, by bisection
        // (the shorter side always fits: one 12-pixel level).
        let (mut lo, mut hi) = (min_face.floor().max(1.0) as u64, width.min(height).max(12) as u64);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            if pyramid_pixels(width, height, mid as f64, factor) <= MAX_PYRAMID_PIXELS {
                hi = mid;
            } else {
                lo = mid + 1;
            }
        }
        bail!(
            "detector: a {width}x{height} photo at --min-face {} is {work:.2e} pyramid pixels of P-Net work, more than the \
             {MAX_PYRAMID_PIXELS:.1e} allowed; use --min-face {lo} or larger",
            self.min_face
        )
    }
}

/// facenet's pyramid: m = 12 / min_face, scales m·factor^k while the scaled shorter side is ≥ 12
/// (in f64, as Python does).
pub fn pyramid_scales(width: usize, height: usize, min_face: f64, factor: f64) -> Vec<f64> {
    let m = 12.0 / min_face;
    let mut minl = width.min(height) as f64 * m;
    let mut scale = m;
    let mut scales = Vec::new();
    while minl >= 12.0 {
        scales.push(scale);
        scale *= factor;
        minl *= factor;
    }
    scales
}

/// facenet's `generateBoundingBox`: every P-Net cell with face probability ≥ `threshold`, in row-major
/// order, as the 12×12 window it sees mapped back to the image (stride 2, f32 floor of (2·pos + 1) / scale
/// and (2·pos + 12) / scale).
fn generate_boxes(reg: &[f32], probs: &[f32], [oh, ow]: [usize; 2], scale: f64, threshold: f32) -> Vec<Candidate> {
    let plane = oh * ow;
    let scale = scale as f32;
    let mut out = Vec::new();
    for y in 0..oh {
        for x in 0..ow {
            let i = y * ow + x;
            let score = probs[plane + i];
            if score >= threshold {
                let b = cell_box(x as f32, y as f32, scale);
                out.push(Candidate { b, score, reg: [reg[i], reg[plane + i], reg[2 * plane + i], reg[3 * plane + i]] });
            }
        }
    }
    out
}

/// `generate_boxes` over the CPU P-Net's output rows r0.. ([rows][ow][2 logits, 4 regression]).
fn boxes_from_heads(out: &[f32], ow: usize, r0: usize, scale: f64, threshold: f32) -> Vec<Candidate> {
    let scale = scale as f32;
    let mut boxes = Vec::new();
    for (i, o) in out.chunks_exact(pnet_cpu::HEAD_OUT).enumerate() {
        let score = layers_cpu::softmax2(o[0], o[1])[1];
        if score >= threshold {
            let (fx, fy) = ((i % ow) as f32, (r0 + i / ow) as f32);
            boxes.push(Candidate { b: cell_box(fx, fy, scale), score, reg: [o[2], o[3], o[4], o[5]] });
        }
    }
    boxes
}

/// The 12×12 window P-Net cell (x, y) sees, mapped back to the image: facenet's f32 floor of
/// (2·pos + 1) / scale and (2·pos + 12) / scale.
fn cell_box(fx: f32, fy: f32, scale: f32) -> [f32; 4] {
    [
        ((2.0 * fx + 1.0) / scale).floor(),
        ((2.0 * fy + 1.0) / scale).floor(),
        ((2.0 * fx + 12.0) / scale).floor(),
        ((2.0 * fy + 12.0) / scale).floor(),
    ]
}

/// torchvision NMS over candidates: kept indices, descending score.
fn nms_candidates(c: &[Candidate], threshold: f64) -> Vec<usize> {
    nms::nms_iou(&c.iter().map(|c| c.b).collect::<Vec<_>>(), &c.iter().map(|c| c.score).collect::<Vec<_>>(), threshold)
}

/// facenet's `bbreg`: offsets scaled by the pixel-inclusive width and height.
fn bbreg(b: [f32; 4], r: [f32; 4]) -> [f32; 4] {
    let (w, h) = (b[2] - b[0] + 1.0, b[3] - b[1] + 1.0);
    [b[0] + r[0] * w, b[1] + r[1] * h, b[2] + r[2] * w, b[3] + r[3] * h]
}

/// facenet's `rerec`: the square of side max(w, h) with the same centre.
pub fn rerec(b: [f32; 4]) -> [f32; 4] {
    let (h, w) = (b[3] - b[1], b[2] - b[0]);
    let l = w.max(h);
    let x1 = b[0] + w * 0.5 - l * 0.5;
    let y1 = b[1] + h * 0.5 - l * 0.5;
    [x1, y1, x1 + l, y1 + l]
}

/// facenet's `pad` + crop: the box truncated to integers, clipped to 1..=w / 1..=h, rows y−1..ey and
/// columns x−1..ex (its 1-based convention); None when nothing of the box lies in the image.
pub fn crop_region(b: [f32; 4], width: usize, height: usize) -> Option<Region> {
    // trunc() then int(): toward zero, saturating like a cast.
    let t = |v: f32| v.trunc() as i64;
    let (x, y) = (t(b[0]).max(1), t(b[1]).max(1));
    let (ex, ey) = (t(b[2]).min(width as i64), t(b[3]).min(height as i64));
    if ey > y - 1 && ex > x - 1 {
        Some(Region { x0: (x - 1) as usize, y0: (y - 1) as usize, x1: ex as usize, y1: ey as usize })
    } else {
        None
    }
}

/// The area-resampled, normalised crops (size×size, NCHW) of the candidates that lie in the image, with
/// the indices of those candidates. Each crop is independent, so they are resampled on the rayon
/// threads (the same values in the same places as one by one).
fn crop_batch(image: &Image, candidates: &[Candidate], size: usize) -> (Vec<usize>, Vec<f32>) {
    let per = 3 * size * size;
    let (kept, regions): (Vec<usize>, Vec<Region>) = candidates
        .iter()
        .enumerate()
        .filter_map(|(i, c)| crop_region(c.b, image.width, image.height).map(|r| (i, r)))
        .unzip();
    let mut data = vec![0f32; regions.len() * per];
    data.par_chunks_mut(per.max(1))
        .zip(regions.par_iter())
        .for_each(|(dst, &region)| area_resample_normalized(image, region, size, size, dst));
    (kept, data)
}
