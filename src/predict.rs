//! `hrk predict`'s work: image files and folders → faces (the MTCNN detector, given boxes, or the
//! whole image) → crops → batched landmark inference → one JSON and one overlay PNG per image and
//! one CSV per run. The CLI parses flags and prints; everything else is here.
//!
//! # From a face box to the dataset convention
//!
//! The official CSVs store a face as `center` and `scale` where the box is the **tight box of the
//! ground-truth landmarks** (REFERENCE §3.1, issue #3; the published .0/.5 centres and whole-pixel
//! sides are the COFW rounding rule `floor(min)`, `ceil(max)`), `center` its centre and `scale` its
//! longer side / 200. Every dataset class then enlarges the scale by 1.25 at test time (REFERENCE
//! §3.3, §7.1): the crop is `crop(img, center, 1.25·scale, IMAGE_SIZE)`. A box (x1, y1, x2, y2)
//! therefore becomes
//!
//! ```text
//! center = ((x1 + x2) / 2, (y1 + y2) / 2)          (f32, as the datasets store it)
//! scale  = max(x2 − x1, y2 − y1) / 200 × margin     (the annotation scale, f64)
//! crop   = crop(img, center, scale × 1.25, IMAGE_SIZE)
//! ```
//!
//! `margin` maps the box's own convention to the tight landmark box: 1.0 for boxes the user gives
//! (`--box`, `--boxes`: they are taken to be drawn like the CSVs' boxes, so a CSV row's own box
//! reproduces `hrk test`'s crop exactly, `tests/cli_predict_faces.rs`), and [`MTCNN_MARGIN`] for
//! detector boxes (how it was measured is documented there). Detector boxes also sit higher on the
//! face than the landmark box (they hold the forehead), so for them the centre moves down by
//! [`MTCNN_CENTER_SHIFT`] × the box side before the crop:
//!
//! ```text
//! center = ((x1 + x2) / 2, (y1 + y2) / 2 + shift × max(x2 − x1, y2 − y1))   (shift 0 for given boxes)
//! ```

use crate::data::annotations::box_center_scale;
use crate::data::codec::decode_preds_with;
use crate::data::dataset::{Annotations, FaceDataset};
use crate::data::imageio::{decode_rgb8, rgb8_to_image, Rgb8};
use crate::data::sample::normalize_rgb8_into;
use crate::data::transforms::{crop_rgb8, InputType};
use crate::detect::{DetectorOptions, Mtcnn};
use crate::eval::{test_heatmaps, TestOptions};
use crate::model::HrNet;
use crate::tensor::Device;
use anyhow::{anyhow, bail, Context, Result};
use rayon::prelude::*;
use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::path::{Component, Path, PathBuf};

/// The test-time enlargement of the annotation scale (`scale *= 1.25` in every dataset class).
pub const SCALE_ENLARGEMENT: f64 = 1.25;

/// Detector box side → tight-landmark-box side, measured with facenet-pytorch's MTCNN (the
/// reference the detector matches, default options) on faces whose landmarks are known:
/// `experiments/mtcnn_margin/measure.py` over the 240 train faces of `hrk synth --joints 68
/// --count 300 --seed 7` paired 226 MTCNN boxes with a face (the box holding the landmark box's
/// centre, best IoU); landmark side / MTCNN side had median 0.894, mean 0.891, p10–p90
/// 0.806–0.973. No real photos with landmarks were at hand (no WFLW/300W images here), so the
/// margin comes from synthetic faces only. The same run found the landmark box's centre 0.093 ×
/// side below the MTCNN box's (MTCNN's boxes hold the forehead): [`MTCNN_CENTER_SHIFT`].
pub const MTCNN_MARGIN: f64 = 0.89;

/// Detector box centre → tight-landmark-box centre, downward, as a fraction of the detector box's
/// side: the median dy (+0.093, p10–p90 +0.056…+0.137; dx median 0.000) of the same measurement
/// as [`MTCNN_MARGIN`] (`experiments/mtcnn_margin/`).
pub const MTCNN_CENTER_SHIFT: f64 = 0.093;

/// File extensions taken from folders (compared case-insensitively).
pub const IMAGE_EXTENSIONS: [&str; 6] = ["jpg", "jpeg", "png", "ppm", "pgm", "bmp"];

/// A face box in original-image pixels.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct FaceBox {
    pub x1: f64,
    pub y1: f64,
    pub x2: f64,
    pub y2: f64,
}

impl FaceBox {
    /// A box from its corners: finite, x2 > x1 and y2 > y1.
    pub fn new(x1: f64, y1: f64, x2: f64, y2: f64) -> Result<FaceBox> {
        if ![x1, y1, x2, y2].iter().all(|v| v.is_finite()) {
            bail!("not finite");
        }
        if x2 <= x1 || y2 <= y1 {
            bail!("x2 must exceed x1 and y2 must exceed y1");
        }
        Ok(FaceBox { x1, y1, x2, y2 })
    }

    /// Parses `x1,y1,x2,y2` (the `--box` flag).
    pub fn parse(s: &str) -> Result<FaceBox> {
        let bad = |why: &str| anyhow!("--box '{s}': {why} (expected x1,y1,x2,y2 in pixels)");
        let v: Vec<f64> = s
            .split(',')
            .map(|t| t.trim().parse::<f64>())
            .collect::<Result<_, _>>()
            .map_err(|_| bad("not four numbers"))?;
        if v.len() != 4 {
            return Err(bad(&format!("{} numbers", v.len())));
        }
        FaceBox::new(v[0], v[1], v[2], v[3]).map_err(|e| bad(&e.to_string()))
    }

    /// Center and the annotation scale (box side / 200, before the ×1.25 enlargement), the
    /// convention of the dataset CSVs.
    pub fn center_scale(&self) -> ([f32; 2], f64) {
        let (c, s) = box_center_scale([self.x1, self.y1, self.x2, self.y2]);
        ([c[0] as f32, c[1] as f32], s)
    }

    fn corners(&self) -> [f64; 4] {
        [self.x1, self.y1, self.x2, self.y2]
    }
}

/// Where each image's faces come from.
pub enum FaceSource<'a> {
    /// The whole image is the face: center = image center, scale = longer side / 200, no
    /// enlargement (the behaviour of `hrk predict` before the detector; `--detector none`).
    WholeImage,
    /// Boxes the user gives (`--box`, `--boxes`), margin 1.0.
    Given(&'a GivenBoxes),
    /// Every face MTCNN finds; its boxes are scaled by `margin` (normally [`MTCNN_MARGIN`]) and
    /// their centres moved down by `center_shift` × side (normally [`MTCNN_CENTER_SHIFT`]).
    Detector { mtcnn: &'a Mtcnn, options: DetectorOptions, margin: f64, center_shift: f64 },
}

// ---- given boxes ----------------------------------------------------------------------------------

/// Boxes per image: one box for every image (`--box` once), or looked up by path (`--box` per
/// image, `--boxes FILE.csv`).
#[derive(Debug, Default)]
pub struct GivenBoxes {
    for_all: Option<FaceBox>,
    /// Normalised path → boxes, in file order.
    by_path: HashMap<PathBuf, Vec<FaceBox>>,
    /// File name → the distinct paths of rows with that name (for the fallback match).
    by_name: HashMap<String, Vec<PathBuf>>,
    /// Where the boxes came from, for messages.
    source: String,
}

/// `p` without `.` components (so `./a.jpg` and `a.jpg` are the same image).
fn normalised(p: &Path) -> PathBuf {
    p.components().filter(|c| !matches!(c, Component::CurDir)).collect()
}

fn file_name_of(p: &Path) -> Option<String> {
    p.file_name().map(|n| n.to_string_lossy().into_owned())
}

/// Splits one CSV line into fields (double quotes around a field allowed, `""` inside them).
fn split_csv_line(line: &str) -> Vec<String> {
    let mut fields = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    let mut chars = line.chars().peekable();
    while let Some(ch) = chars.next() {
        match ch {
            '"' if quoted && chars.peek() == Some(&'"') => {
                cur.push('"');
                chars.next();
            }
            '"' => quoted = !quoted,
            ',' if !quoted => fields.push(std::mem::take(&mut cur)),
            _ => cur.push(ch),
        }
    }
    fields.push(cur);
    fields
}

impl GivenBoxes {
    /// The same box for every image.
    pub fn same_for_all(b: FaceBox) -> GivenBoxes {
        GivenBoxes { for_all: Some(b), source: "--box".into(), ..Default::default() }
    }

    /// One box per image path.
    pub fn per_image(pairs: &[(PathBuf, FaceBox)]) -> GivenBoxes {
        let mut g = GivenBoxes { source: "--box".into(), ..Default::default() };
        for (p, b) in pairs {
            g.add(p, *b);
        }
        g
    }

    fn add(&mut self, path: &Path, b: FaceBox) {
        let key = normalised(path);
        if !self.by_path.contains_key(&key) {
            if let Some(name) = file_name_of(&key) {
                self.by_name.entry(name).or_default().push(key.clone());
            }
        }
        self.by_path.entry(key).or_default().push(b);
    }

    /// Reads `image,x1,y1,x2,y2` rows (further columns are ignored, several rows per image allowed;
    /// a first line whose box fields are not numbers is a header). Bad rows: a one-line error
    /// naming `file:line`.
    pub fn from_csv(path: &Path) -> Result<GivenBoxes> {
        let text = std::fs::read_to_string(path).with_context(|| format!("cannot read --boxes {}", path.display()))?;
        let mut g = GivenBoxes { source: path.display().to_string(), ..Default::default() };
        for (i, line) in text.lines().enumerate() {
            let at = || format!("{}:{}", path.display(), i + 1);
            if line.trim().is_empty() {
                continue;
            }
            let f = split_csv_line(line.trim_end_matches('\r'));
            let nums: Vec<Option<f64>> = f.iter().skip(1).take(4).map(|t| t.trim().parse::<f64>().ok()).collect();
            if i == 0 && nums.iter().all(Option::is_none) {
                continue; // header
            }
            if f.len() < 5 {
                bail!("{}: {} fields, expected image,x1,y1,x2,y2", at(), f.len());
            }
            let image = f[0].trim();
            if image.is_empty() {
                bail!("{}: empty image field", at());
            }
            let v: Vec<f64> = nums
                .iter()
                .zip(&f[1..5])
                .map(|(n, t)| n.ok_or_else(|| anyhow!("{}: '{}' is not a number", at(), t.trim())))
                .collect::<Result<_>>()?;
            let b = FaceBox::new(v[0], v[1], v[2], v[3]).map_err(|e| anyhow!("{}: box {v:?}: {e}", at()))?;
            g.add(Path::new(image), b);
        }
        Ok(g)
    }

    /// The boxes of `image`: rows whose image field equals its path as listed (`./` ignored),
    /// else rows whose image field has its file name when only one path in the file does.
    pub fn for_image(&self, image: &Path) -> Result<Vec<FaceBox>> {
        if let Some(b) = self.for_all {
            return Ok(vec![b]);
        }
        let key = normalised(image);
        if let Some(v) = self.by_path.get(&key) {
            return Ok(v.clone());
        }
        let Some(name) = file_name_of(&key) else { return Ok(Vec::new()) };
        match self.by_name.get(&name).map(Vec::as_slice) {
            None | Some([]) => Ok(Vec::new()),
            Some([one]) => Ok(self.by_path[one].clone()),
            Some(many) => bail!(
                "{} names {} different images called {name} ({}); give the path as listed",
                self.source,
                many.len(),
                many.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
            ),
        }
    }

    /// Image fields of the file that match none of `images` (for a warning).
    pub fn unmatched(&self, images: &[PathBuf]) -> Vec<PathBuf> {
        if self.for_all.is_some() {
            return Vec::new();
        }
        let keys: std::collections::HashSet<PathBuf> = images.iter().map(|p| normalised(p)).collect();
        let names: std::collections::HashSet<String> = keys.iter().filter_map(|p| file_name_of(p)).collect();
        let mut out: Vec<PathBuf> = self
            .by_path
            .keys()
            .filter(|k| !keys.contains(*k) && !file_name_of(k).is_some_and(|n| names.contains(&n)))
            .cloned()
            .collect();
        out.sort();
        out
    }
}

// ---- the image list ---------------------------------------------------------------------------------

fn has_image_extension(p: &Path) -> bool {
    p.extension()
        .map(|e| e.to_string_lossy().to_ascii_lowercase())
        .is_some_and(|e| IMAGE_EXTENSIONS.contains(&e.as_str()))
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    let rd = std::fs::read_dir(dir).with_context(|| format!("cannot list folder {}", dir.display()))?;
    let mut entries: Vec<(PathBuf, bool)> = Vec::new();
    for e in rd {
        let e = e.with_context(|| format!("cannot list folder {}", dir.display()))?;
        let path = e.path();
        // Symlinked folders are not entered (no loops); symlinked files are taken.
        let is_dir = e.file_type().map(|t| t.is_dir()).unwrap_or(false);
        entries.push((path, is_dir));
    }
    entries.sort();
    for (path, is_dir) in entries {
        if is_dir {
            walk(&path, out)?;
        } else if has_image_extension(&path) && path.is_file() {
            out.push(path);
        }
    }
    Ok(())
}

/// The images of the arguments, in argument order: a file is taken as given (whatever its
/// extension), a folder contributes every file with an image extension below it, recursively,
/// sorted by path. A path listed twice is kept once. A missing argument is an error.
pub fn collect_images(args: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for a in args {
        if a.is_dir() {
            walk(a, &mut out)?;
        } else if a.is_file() {
            out.push(a.clone());
        } else {
            bail!("image {} not found", a.display());
        }
    }
    let mut seen = std::collections::HashSet::new();
    out.retain(|p| seen.insert(normalised(p)));
    Ok(out)
}

/// Parses `--shard i/n` (0 ≤ i < n).
pub fn parse_shard(s: &str) -> Result<(usize, usize)> {
    let bad = || anyhow!("--shard '{s}': expected i/n with 0 <= i < n (e.g. 0/4)");
    let (i, n) = s.split_once('/').ok_or_else(bad)?;
    let (i, n): (usize, usize) = (i.trim().parse().map_err(|_| bad())?, n.trim().parse().map_err(|_| bad())?);
    if n == 0 || i >= n {
        return Err(bad());
    }
    Ok((i, n))
}

/// The positions `shard.0, shard.0 + n, …` of a list of `len` items: every n-th image.
pub fn shard_indices(len: usize, shard: (usize, usize)) -> Vec<usize> {
    (shard.0..len).step_by(shard.1.max(1)).collect()
}

/// The path flattened into one file name: components joined by `__`, `..` as `up`, the root
/// and `.` dropped.
fn flattened(p: &Path) -> String {
    let parts: Vec<String> = p
        .components()
        .filter_map(|c| match c {
            Component::Normal(s) => Some(s.to_string_lossy().into_owned()),
            Component::ParentDir => Some("up".into()),
            _ => None,
        })
        .collect();
    parts.join("__")
}

/// Output names (without extension) for a list of images: the file stem (`photo.jpg` →
/// `photo`), unless several images of the list share that stem; those are named by their path
/// as listed, flattened (`a/photo.jpg` → `a__photo.jpg`). A name still shared gets `~2`, `~3`, …
/// in list order. The names depend on the whole (unsharded) list only, so every shard of a
/// `--shard` job array names an image the same way.
pub fn output_names(images: &[PathBuf]) -> Vec<String> {
    let stem = |p: &PathBuf| p.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "image".into());
    let mut stem_count: HashMap<String, usize> = HashMap::new();
    for p in images {
        *stem_count.entry(stem(p)).or_default() += 1;
    }
    let mut names: Vec<String> =
        images.iter().map(|p| if stem_count[&stem(p)] > 1 { flattened(p) } else { stem(p) }).collect();
    let mut used: HashMap<String, usize> = HashMap::new();
    for n in names.iter_mut() {
        let k = used.entry(n.clone()).or_default();
        *k += 1;
        if *k > 1 {
            *n = format!("{n}~{k}");
        }
    }
    names
}

// ---- results ----------------------------------------------------------------------------------------

/// How the model is run.
#[derive(Clone, Debug)]
pub struct PredictOptions {
    pub test: TestOptions,
    /// Mirrored landmark pairs (flip test only).
    pub pairs: Vec<(usize, usize)>,
    /// Faces per forward pass (across images).
    pub batch: usize,
    /// Draw landmark indices on the overlays.
    pub labels: bool,
}

/// One face's result, in original-image pixels.
#[derive(Clone, Debug, PartialEq)]
pub struct FaceResult {
    /// The box as given or detected (x1, y1, x2, y2); the whole image for [`FaceSource::WholeImage`].
    pub bbox: [f64; 4],
    /// Detector score; None for given boxes and the whole image.
    pub score: Option<f32>,
    /// Crop center and annotation scale (the crop uses `scale × 1.25`, or `scale` for the whole image).
    pub center: [f32; 2],
    pub annotation_scale: f64,
    pub crop_scale: f64,
    pub landmarks: Vec<[f32; 2]>,
    /// Each landmark's heatmap maximum.
    pub landmark_scores: Vec<f32>,
}

/// One image's result.
#[derive(Clone, Debug, PartialEq)]
pub struct ImageResult {
    pub path: PathBuf,
    pub width: usize,
    pub height: usize,
    pub faces: Vec<FaceResult>,
}

/// What the observer hears after each image.
#[derive(Debug)]
pub struct ImageReport<'a> {
    pub path: &'a Path,
    /// Faces found and written (0 on failure).
    pub faces: usize,
    /// Why the image was skipped (one line, naming the image).
    pub error: Option<String>,
}

/// Counts of a run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Summary {
    pub images: usize,
    pub faces: usize,
    pub failed: usize,
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} images, {} faces, {} failed", self.images, self.faces, self.failed)
    }
}

/// A face waiting for the model: where it came from and its normalised crop.
struct FaceJob {
    bbox: [f64; 4],
    score: Option<f32>,
    center: [f32; 2],
    annotation_scale: f64,
    crop_scale: f64,
}

/// An image decoded, its faces found and cropped.
struct Prepared {
    rgb: Rgb8,
    faces: Vec<FaceJob>,
    /// The faces' inputs, [faces, 3, H, W] concatenated.
    inputs: Vec<f32>,
}

/// A value as JSON: f32-exact values in their shortest f32 form (detector boxes print as
/// `12.3`, not `12.300000190734863`), others as f64.
fn json_num(v: f64) -> serde_json::Value {
    if (v as f32) as f64 == v {
        serde_json::json!(v as f32)
    } else {
        serde_json::json!(v)
    }
}

fn one_line(e: &anyhow::Error) -> String {
    format!("{e:#}").split_whitespace().collect::<Vec<_>>().join(" ")
}

/// A run of `hrk predict`: writes `<name>.json` and `<name>_landmarks.png` per image into `out`
/// as images finish, and the CSV (a row per face) in [`PredictRun::finish`]. Every write is
/// atomic (temporary file + rename).
pub struct PredictRun<'a> {
    net: &'a mut HrNet,
    opts: PredictOptions,
    image_size: [usize; 2],
    out: PathBuf,
    /// CSV rows per image, keyed by (run order) so the file is in input order.
    csv_rows: BTreeMap<usize, String>,
    next_order: usize,
    summary: Summary,
}

impl<'a> PredictRun<'a> {
    /// Creates `out` if needed.
    pub fn new(net: &'a mut HrNet, opts: PredictOptions, image_size: [usize; 2], out: &Path) -> Result<Self> {
        if opts.batch == 0 {
            bail!("predict: batch size must be positive");
        }
        std::fs::create_dir_all(out).with_context(|| format!("cannot create output folder {}", out.display()))?;
        Ok(PredictRun {
            net,
            opts,
            image_size,
            out: out.to_path_buf(),
            csv_rows: BTreeMap::new(),
            next_order: 0,
            summary: Summary::default(),
        })
    }

    fn input_len(&self) -> usize {
        3 * self.image_size[0] * self.image_size[1]
    }

    /// Runs the landmark model on `n` faces (inputs concatenated): landmarks and heatmap maxima.
    fn infer(&mut self, inputs: Vec<f32>, centers: &[[f32; 2]], scales: &[f64]) -> Result<(Vec<[f32; 2]>, Vec<f32>)> {
        let n = centers.len();
        let [ih, iw] = self.image_size;
        let (hm, [hn, j, h, w]) = test_heatmaps(self.net, inputs, [n, 3, ih, iw], &self.opts.test, &self.opts.pairs)?;
        let points = decode_preds_with(&hm, hn, j, h, w, centers, scales, self.opts.test.decode)?;
        let scores =
            hm.chunks_exact((h * w).max(1)).map(|m| m.iter().copied().fold(f32::NEG_INFINITY, f32::max)).collect();
        Ok((points, scores))
    }

    /// Runs every face of `prepared` through the model in batches of `opts.batch`.
    fn infer_all(&mut self, prepared: &[Option<Prepared>]) -> Result<Vec<Vec<FaceResult>>> {
        let per = self.input_len();
        let mut results: Vec<Vec<FaceResult>> = prepared.iter().map(|_| Vec::new()).collect();
        let refs: Vec<(usize, usize)> = prepared
            .iter()
            .enumerate()
            .filter_map(|(i, p)| p.as_ref().map(|p| (i, p)))
            .flat_map(|(i, p)| (0..p.faces.len()).map(move |f| (i, f)))
            .collect();
        for chunk in refs.chunks(self.opts.batch) {
            let mut inputs = Vec::with_capacity(chunk.len() * per);
            let (mut centers, mut scales) = (Vec::new(), Vec::new());
            for &(i, f) in chunk {
                let p = prepared[i].as_ref().expect("listed faces belong to prepared images");
                inputs.extend_from_slice(&p.inputs[f * per..(f + 1) * per]);
                centers.push(p.faces[f].center);
                scales.push(p.faces[f].crop_scale);
            }
            let (points, scores) = self.infer(inputs, &centers, &scales)?;
            let joints = points.len() / chunk.len().max(1);
            for (k, &(i, f)) in chunk.iter().enumerate() {
                let job = &prepared[i].as_ref().expect("listed faces belong to prepared images").faces[f];
                results[i].push(FaceResult {
                    bbox: job.bbox,
                    score: job.score,
                    center: job.center,
                    annotation_scale: job.annotation_scale,
                    crop_scale: job.crop_scale,
                    landmarks: points[k * joints..(k + 1) * joints].to_vec(),
                    landmark_scores: scores[k * joints..(k + 1) * joints].to_vec(),
                });
            }
        }
        Ok(results)
    }

    /// Predicts `images` (output `names`, same length), `wave` images at a time: decode, find
    /// faces and crop in parallel, run the model on the wave's faces in batches, write. An image
    /// that cannot be decoded or searched is reported (observer) and counted as failed; the run
    /// goes on. Errors of the model or of writing outputs end the run.
    pub fn run_images(
        &mut self, images: &[PathBuf], names: &[String], source: &FaceSource, on_image: &mut dyn FnMut(&ImageReport),
    ) -> Result<()> {
        if images.len() != names.len() {
            bail!("predict: {} images and {} output names", images.len(), names.len());
        }
        // Enough images per wave to keep every core busy and to fill a batch with one face each.
        let wave = (2 * rayon::current_num_threads()).max(self.opts.batch).max(1);
        let parallel_detect = matches!(self.net.device(), Device::Cpu);
        for (paths, names) in images.chunks(wave).zip(names.chunks(wave)) {
            let decoded: Vec<Result<Rgb8>> = paths.par_iter().map(|p| decode_rgb8(p)).collect();
            let find = |(p, d): (&PathBuf, Result<Rgb8>)| -> Result<(Rgb8, Vec<FaceJob>)> {
                let rgb = d?;
                let faces = find_faces(p, &rgb, source).with_context(|| format!("image {}", p.display()))?;
                Ok((rgb, faces))
            };
            let found: Vec<Result<(Rgb8, Vec<FaceJob>)>> = if parallel_detect {
                paths.par_iter().zip(decoded.into_par_iter()).map(find).collect()
            } else {
                // One GPU: its kernels serialise anyway; keep the detector on one thread.
                paths.iter().zip(decoded).map(find).collect()
            };
            let (size, per) = (self.image_size, self.input_len());
            let prepared: Vec<Result<Prepared>> = paths
                .par_iter()
                .zip(found.into_par_iter())
                .map(|(p, f)| {
                    let (rgb, faces) = f?;
                    let mut inputs = vec![0f32; faces.len() * per];
                    for (job, buf) in faces.iter().zip(inputs.chunks_exact_mut(per.max(1))) {
                        let c = crop_rgb8(&rgb, false, InputType::Float32, job.center, job.crop_scale, size, 0.0)
                            .with_context(|| format!("image {}", p.display()))?;
                        normalize_rgb8_into(&c, buf)?;
                    }
                    Ok(Prepared { rgb, faces, inputs })
                })
                .collect();
            let (ok, errors): (Vec<Option<Prepared>>, Vec<Option<String>>) = prepared
                .into_iter()
                .map(|r| match r {
                    Ok(p) => (Some(p), None),
                    Err(e) => (None, Some(one_line(&e))),
                })
                .unzip();
            let faces = self.infer_all(&ok)?;
            self.finish_wave(paths, names, ok, faces, errors, on_image)?;
        }
        Ok(())
    }

    /// Writes a wave's outputs (in parallel), records CSV rows and reports each image in order.
    fn finish_wave(
        &mut self, paths: &[PathBuf], names: &[String], prepared: Vec<Option<Prepared>>, faces: Vec<Vec<FaceResult>>,
        errors: Vec<Option<String>>, on_image: &mut dyn FnMut(&ImageReport),
    ) -> Result<()> {
        let results: Vec<Option<(ImageResult, Rgb8)>> = prepared
            .into_iter()
            .zip(faces)
            .zip(paths)
            .map(|((p, faces), path)| {
                p.map(|p| {
                    let r = ImageResult { path: path.clone(), width: p.rgb.width, height: p.rgb.height, faces };
                    (r, p.rgb)
                })
            })
            .collect();
        let (out, labels) = (&self.out, self.opts.labels);
        results
            .par_iter()
            .zip(names.par_iter())
            .filter_map(|(r, name)| r.as_ref().map(|(r, rgb)| (r, rgb, name)))
            .try_for_each(|(r, rgb, name)| write_image_outputs(out, name, r, rgb, labels))?;
        for ((r, err), path) in results.iter().zip(&errors).zip(paths) {
            self.summary.images += 1;
            let order = self.next_order;
            self.next_order += 1;
            match (r, err) {
                (Some((r, _)), _) => {
                    self.summary.faces += r.faces.len();
                    self.csv_rows.insert(order, csv_rows(r));
                    on_image(&ImageReport { path, faces: r.faces.len(), error: None });
                }
                (None, err) => {
                    self.summary.failed += 1;
                    let msg = err.clone().unwrap_or_else(|| format!("image {}: failed", path.display()));
                    on_image(&ImageReport { path, faces: 0, error: Some(msg) });
                }
            }
        }
        Ok(())
    }

    /// The samples of a dataset CSV/.mat through the test-time pipeline of `hrk test` (its own
    /// center and scale, `DatasetSpec` crop), grouped by image; `names` are the output names of
    /// [`dataset_images`]'s list.
    pub fn run_dataset(
        &mut self, ds: &FaceDataset, names: &[String], on_image: &mut dyn FnMut(&ImageReport),
    ) -> Result<()> {
        let groups = dataset_groups(ds);
        if groups.len() != names.len() {
            bail!("predict: {} dataset images and {} output names", groups.len(), names.len());
        }
        let per = ds.input_len();
        if per != self.input_len() {
            bail!("predict: dataset input {per} values, model input {}", self.input_len());
        }
        for ((path, samples), name) in groups.iter().zip(names) {
            let prepared = (|| -> Result<Prepared> {
                let mut inputs = vec![0f32; samples.len() * per];
                let mut target = vec![0f32; ds.target_len()];
                let mut faces = Vec::new();
                for (&i, buf) in samples.iter().zip(inputs.chunks_exact_mut(per.max(1))) {
                    let meta = ds.fill_sample(i, &crate::data::augment::Augmentation::NONE, buf, &mut target)?;
                    // The row's own scale (meta.scale / 1.25 need not give it back bit for bit).
                    let annotation_scale = ds.annotation(i)?.scale;
                    // The square box the annotation describes.
                    let half = 100.0 * annotation_scale;
                    let (cx, cy) = (meta.center[0] as f64, meta.center[1] as f64);
                    faces.push(FaceJob {
                        bbox: [cx - half, cy - half, cx + half, cy + half],
                        score: None,
                        center: meta.center,
                        annotation_scale,
                        crop_scale: meta.scale,
                    });
                }
                let rgb = ds.source_rgb8(samples[0])?.into_owned();
                Ok(Prepared { rgb, faces, inputs })
            })();
            let (p, e) = match prepared {
                Ok(p) => (Some(p), None),
                Err(e) => (None, Some(one_line(&e))),
            };
            let ok = vec![p];
            let faces = self.infer_all(&ok)?;
            self.finish_wave(std::slice::from_ref(path), std::slice::from_ref(name), ok, faces, vec![e], on_image)?;
        }
        Ok(())
    }

    /// Writes the CSV (`csv_name` in the output folder) and gives the counts.
    pub fn finish(self, csv_name: &str) -> Result<Summary> {
        let joints = self.net.spec.num_joints;
        let mut csv = String::from("image_name,scale,center_w,center_h");
        for k in 0..joints {
            let _ = write!(csv, ",original_{k}_x,original_{k}_y");
        }
        csv.push('\n');
        for rows in self.csv_rows.values() {
            csv.push_str(rows);
        }
        crate::io::safetensors::write_atomically(&self.out.join(csv_name), csv.as_bytes())?;
        Ok(self.summary)
    }
}

/// The images of a dataset in sample order, each with its samples (a photo may hold several
/// annotated faces): what [`PredictRun::run_dataset`] iterates.
pub fn dataset_images(ds: &FaceDataset) -> Vec<PathBuf> {
    dataset_groups(ds).into_iter().map(|(p, _)| p).collect()
}

fn dataset_groups(ds: &FaceDataset) -> Vec<(PathBuf, Vec<usize>)> {
    let mut groups: Vec<(PathBuf, Vec<usize>)> = Vec::new();
    let mut at: HashMap<PathBuf, usize> = HashMap::new();
    for i in 0..ds.len() {
        let path = match &ds.annotations {
            Annotations::Csv(r) => r[i].image_path.clone(),
            Annotations::Cofw(_) => PathBuf::from(ds.describe(i)),
        };
        match at.get(&path) {
            Some(&g) => groups[g].1.push(i),
            None => {
                at.insert(path.clone(), groups.len());
                groups.push((path, vec![i]));
            }
        }
    }
    groups
}

/// The faces of one image as crops to make.
fn find_faces(path: &Path, rgb: &Rgb8, source: &FaceSource) -> Result<Vec<FaceJob>> {
    let from_box = |b: FaceBox, score: Option<f32>, margin: f64, center_shift: f64| {
        let (center, side_scale) = b.center_scale();
        let center = detector_center(center, side_scale, center_shift);
        let annotation_scale = side_scale * margin;
        FaceJob { bbox: b.corners(), score, center, annotation_scale, crop_scale: annotation_scale * SCALE_ENLARGEMENT }
    };
    Ok(match source {
        FaceSource::WholeImage => {
            let (w, h) = (rgb.width as f64, rgb.height as f64);
            let crop_scale = w.max(h) / 200.0;
            vec![FaceJob {
                bbox: [0.0, 0.0, w, h],
                score: None,
                center: [rgb.width as f32 / 2.0, rgb.height as f32 / 2.0],
                annotation_scale: crop_scale / SCALE_ENLARGEMENT,
                crop_scale,
            }]
        }
        FaceSource::Given(g) => g.for_image(path)?.into_iter().map(|b| from_box(b, None, 1.0, 0.0)).collect(),
        FaceSource::Detector { mtcnn, options, margin, center_shift } => {
            let img = rgb8_to_image(rgb, false);
            let dets = mtcnn.detect(&img, options)?;
            dets.into_iter()
                .filter_map(|d| {
                    let [x1, y1, x2, y2] = d.bbox.map(f64::from);
                    // A degenerate box (possible only at the image border) has no face to crop.
                    FaceBox::new(x1, y1, x2, y2).ok().map(|b| from_box(b, Some(d.score), *margin, *center_shift))
                })
                .collect()
        }
    })
}

/// A box centre moved down by `center_shift` × the box side (`side_scale` = side / 200): the
/// detector-box correction of the module doc; `center_shift` 0 leaves the centre as it is.
pub fn detector_center(center: [f32; 2], side_scale: f64, center_shift: f64) -> [f32; 2] {
    if center_shift == 0.0 {
        return center;
    }
    [center[0], (center[1] as f64 + center_shift * side_scale * 200.0) as f32]
}

/// The per-image JSON document (the schema of README's predict section).
pub fn image_json(r: &ImageResult) -> serde_json::Value {
    let faces: Vec<serde_json::Value> = r
        .faces
        .iter()
        .map(|f| {
            serde_json::json!({
                "box": f.bbox.iter().map(|&v| json_num(v)).collect::<Vec<_>>(),
                "score": f.score,
                "landmarks": f.landmarks.iter().map(|p| [p[0], p[1]]).collect::<Vec<_>>(),
                "landmark_scores": f.landmark_scores,
            })
        })
        .collect();
    serde_json::json!({
        "image": r.path.display().to_string(),
        "width": r.width,
        "height": r.height,
        "faces": faces,
    })
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

/// The dataset CSV layout, a row per face, so the output can be fed back as annotations
/// (`hrk test` on it makes the same crops): scale is the annotation scale.
fn csv_rows(r: &ImageResult) -> String {
    let mut s = String::new();
    for f in &r.faces {
        let _ = write!(
            s,
            "{},{},{},{}",
            csv_field(&r.path.display().to_string()),
            f.annotation_scale,
            f.center[0],
            f.center[1]
        );
        for q in &f.landmarks {
            let _ = write!(s, ",{},{}", q[0], q[1]);
        }
        s.push('\n');
    }
    s
}

fn write_image_outputs(out: &Path, name: &str, r: &ImageResult, rgb: &Rgb8, labels: bool) -> Result<()> {
    let json = serde_json::to_string_pretty(&image_json(r))? + "\n";
    crate::io::safetensors::write_atomically(&out.join(format!("{name}.json")), json.as_bytes())?;
    let overlay = out.join(format!("{name}_landmarks.png"));
    let mut img = image::RgbImage::from_raw(rgb.width as u32, rgb.height as u32, rgb.data.clone())
        .ok_or_else(|| anyhow!("image {}: pixel buffer does not match its size", r.path.display()))?;
    for f in &r.faces {
        crate::draw::draw_box(&mut img, f.bbox);
        crate::draw::draw_landmarks(&mut img, &f.landmarks, labels);
    }
    let mut bytes = std::io::Cursor::new(Vec::new());
    img.write_to(&mut bytes, image::ImageFormat::Png)
        .map_err(|e| anyhow!("{}: PNG encoding failed: {e}", overlay.display()))?;
    crate::io::safetensors::write_atomically(&overlay, &bytes.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn box_parsing() {
        let b = FaceBox::parse("10, 20,110,70").unwrap();
        assert_eq!(b.center_scale(), ([60.0, 45.0], 0.5));
        for bad in ["1,2,3", "a,b,c,d", "5,5,1,10", "0,0,10,nan", ""] {
            let e = FaceBox::parse(bad).unwrap_err().to_string();
            assert!(e.contains("--box"), "{e}");
        }
    }

    #[test]
    fn names_are_stems_unless_shared() {
        let p = |s: &str| PathBuf::from(s);
        let names = output_names(&[p("a/x.jpg"), p("b/x.jpg"), p("a/y.png"), p("./c/x.png"), p("a__x.jpg.png")]);
        assert_eq!(names, ["a__x.jpg", "b__x.jpg", "y", "c__x.png", "a__x.jpg~2"]);
    }

    #[test]
    fn shards_cover_every_index_once() {
        for n in 1..5 {
            let mut all: Vec<usize> = (0..n).flat_map(|i| shard_indices(11, (i, n))).collect();
            all.sort();
            assert_eq!(all, (0..11).collect::<Vec<_>>());
        }
        assert_eq!(parse_shard("1/3").unwrap(), (1, 3));
        for bad in ["3/3", "1", "a/2", "0/0"] {
            assert!(parse_shard(bad).unwrap_err().to_string().contains("--shard"));
        }
    }

    #[test]
    fn detector_centres_move_down_by_the_shift_times_the_side() {
        // A 100-pixel box (scale 0.5) moves down 9.3 pixels; given boxes (shift 0) stay put.
        let moved = detector_center([60.0, 45.0], 0.5, MTCNN_CENTER_SHIFT);
        assert_eq!(moved[0], 60.0);
        assert!((moved[1] - 54.3).abs() < 1e-5, "{moved:?}");
        assert_eq!(detector_center([60.0, 45.0], 0.5, 0.0), [60.0, 45.0]);
    }

    #[test]
    fn csv_lines_split_with_quotes() {
        assert_eq!(split_csv_line(r#""a,b.jpg",1,"2""x""#), ["a,b.jpg", "1", "2\"x"]);
    }
}
