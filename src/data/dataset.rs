//! Dataset annotations as the official code reads them: the CSV files of WFLW, 300W and
//! AFLW (header row, columns by position, image paths relative to DATASET.ROOT) and, via
//! `cofw`, the COFW `.mat` files. `FaceDataset` is the common front the sample pipeline
//! (`sample.rs`) and the loader use.

use super::cofw::{self, CofwData};
use super::image::MAX_BOX_COORDINATE;
use crate::config::DatasetKind;
use anyhow::{anyhow, bail, Result};
use std::path::{Path, PathBuf};

/// CSV columns before the landmarks (path, scale, [box_size,] center_w, center_h).
fn csv_leading_columns(kind: DatasetKind) -> usize {
    if kind == DatasetKind::Aflw {
        5
    } else {
        4
    }
}

/// Everything the data pipeline needs, filled by the caller from the config
/// (DATASET.*, MODEL.*). `annotations` is DATASET.TRAINSET or TESTSET (CSV or COFW .mat).
#[derive(Clone, Debug, PartialEq)]
pub struct DatasetSpec {
    pub kind: DatasetKind,
    /// DATASET.ROOT: CSV image paths are joined onto it (unused for COFW).
    pub root: PathBuf,
    pub annotations: PathBuf,
    pub is_train: bool,
    /// MODEL.IMAGE_SIZE as [rows, cols] (the reference indexes res[0] = height).
    pub image_size: [usize; 2],
    /// MODEL.HEATMAP_SIZE as [rows, cols].
    pub heatmap_size: [usize; 2],
    pub sigma: f64,
    pub scale_factor: f64,
    pub rot_factor: f64,
    pub flip: bool,
    pub num_joints: usize,
    /// MODEL.TARGET_TYPE ('Gaussian'; anything else is the Cauchy-like target).
    pub target_type: String,
    /// DATASET.FLIP_PAIRS (hrk extension): mirrored pairs, 0-based; None = the built-in table.
    pub flip_pairs: Option<Vec<(usize, usize)>>,
    /// DATASET.NORM_INDICES (hrk extension): the NME normaliser's landmarks; None = built-in.
    pub norm_indices: Option<Vec<usize>>,
    /// Decode only the part of a JPEG its crop reads (same pixels; `HRK_JPEG_REGION`).
    pub region_decode: bool,
}

impl DatasetSpec {
    /// The official YAML values for `kind` (256² input, 64² heatmaps, σ 1.5, 1.0 for 300W,
    /// scale ±0.25, rotation ±30°, flip on).
    pub fn new(kind: DatasetKind, root: impl Into<PathBuf>, annotations: impl Into<PathBuf>, is_train: bool) -> Self {
        Self {
            kind,
            root: root.into(),
            annotations: annotations.into(),
            is_train,
            image_size: [256, 256],
            heatmap_size: [64, 64],
            sigma: if kind == DatasetKind::W300 { 1.0 } else { 1.5 },
            scale_factor: 0.25,
            rot_factor: 30.0,
            flip: true,
            num_joints: kind.default_joints(),
            target_type: "Gaussian".to_string(),
            flip_pairs: None,
            norm_indices: None,
            region_decode: crate::switches::jpeg_region(),
        }
    }

    /// The mirrored pairs of this layout: DATASET.FLIP_PAIRS, else the official table for the count.
    pub fn mirror_pairs(&self) -> Result<Vec<(usize, usize)>> {
        match &self.flip_pairs {
            Some(p) => Ok(p.clone()),
            None => Ok(crate::data::flip::mirror_pairs(self.num_joints)?.to_vec()),
        }
    }

    /// The NME normaliser of this layout: DATASET.NORM_INDICES, else the official one for the count.
    pub fn nme_norm(&self) -> Result<crate::data::metrics::NmeNorm> {
        crate::data::metrics::NmeNorm::from_indices(self.norm_indices.as_deref().unwrap_or(&[]), self.num_joints)
    }

    /// The train (`is_train`) or test set a config describes: DATASET.* and the MODEL.* sizes;
    /// `annotations` overrides DATASET.TRAINSET / TESTSET.
    pub fn from_config(cfg: &crate::config::Config, is_train: bool, annotations: Option<&Path>) -> Result<Self> {
        let Some(kind) = cfg.dataset_kind() else {
            bail!("DATASET.DATASET {:?} is not one of WFLW, 300W, COFW, AFLW", cfg.dataset.dataset);
        };
        let annotations: PathBuf = match annotations {
            Some(path) => path.to_path_buf(),
            None => PathBuf::from(if is_train { &cfg.dataset.trainset } else { &cfg.dataset.testset }),
        };
        let mut spec = Self::new(kind, &cfg.dataset.root, annotations, is_train);
        spec.image_size = cfg.model.image_size;
        spec.heatmap_size = cfg.model.heatmap_size;
        spec.sigma = cfg.model.sigma;
        spec.scale_factor = cfg.dataset.scale_factor;
        spec.rot_factor = cfg.dataset.rot_factor as f64;
        spec.flip = cfg.dataset.flip;
        spec.num_joints = cfg.model.num_joints;
        spec.target_type = cfg.model.target_type.clone();
        if !cfg.dataset.flip_pairs.is_empty() {
            spec.flip_pairs = Some(cfg.dataset.flip_pairs.chunks_exact(2).map(|p| (p[0], p[1])).collect());
        }
        if !cfg.dataset.norm_indices.is_empty() {
            spec.norm_indices = Some(cfg.dataset.norm_indices.clone());
        }
        Ok(spec)
    }
}

/// One CSV row.
#[derive(Clone, Debug, PartialEq)]
pub struct CsvRecord {
    pub image_path: PathBuf,
    /// Column `scale` (box side / 200), float64 as pandas reads it.
    pub scale: f64,
    /// (center_w, center_h) as the reference's float32 tensor.
    pub center: [f32; 2],
    /// Landmarks (x, y), float64 as in the reference.
    pub pts: Vec<[f64; 2]>,
    /// AFLW only: the NME normaliser (column 2).
    pub box_size: Option<f64>,
    /// 1-based line in the CSV file.
    pub line: usize,
}

/// The 300W CSV names `ibug/image_092_01.jpg`; the file in the official 300W release is
/// `ibug/image_092 _01.jpg` (with a space).
fn w300_known_misspelling(rel: &str) -> Option<&'static str> {
    let norm = rel.replace('\\', "/");
    let norm = norm.trim_start_matches("./");
    (norm == "ibug/image_092_01.jpg").then_some("ibug/image_092 _01.jpg")
}

/// Reads a WFLW / 300W / AFLW annotation CSV. Errors name the file and the 1-based line.
pub fn read_csv_annotations(csv: &Path, root: &Path, kind: DatasetKind, num_joints: usize) -> Result<Vec<CsvRecord>> {
    if kind == DatasetKind::Cofw {
        bail!("{}: COFW annotations are a .mat file, not a CSV", csv.display());
    }
    let text = std::fs::read(csv).map_err(|e| anyhow!("cannot read annotation file {}: {}", csv.display(), e))?;
    let text = String::from_utf8(text)
        .map_err(|e| anyhow!("{}: not UTF-8 text (byte {})", csv.display(), e.utf8_error().valid_up_to()))?;
    let lead = csv_leading_columns(kind);
    let expected_cols = lead + 2 * num_joints;
    let file = csv.display();
    let source = file.to_string();

    // pandas skips blank lines, including before the header.
    let mut rows = crate::io::csv::records(&text, &source);
    let Some(header) = rows.next() else { bail!("{file}: empty file (expected a header row and data rows)") };
    let (header_line, header_cols) = header?;
    if header_cols.len() != expected_cols {
        bail!(
            "{file}:{header_line}: header has {} columns, expected {expected_cols} for {} with {num_joints} landmarks",
            header_cols.len(),
            kind.name()
        );
    }

    let mut records = Vec::new();
    for row in rows {
        let (line_no, fields) = row?;
        if fields.len() != expected_cols {
            bail!(
                "{file}:{line_no}: row has {} columns, expected {expected_cols} ({} with {num_joints} landmarks)",
                fields.len(),
                kind.name()
            );
        }
        let num = |col: usize| -> Result<f64> {
            let s = fields[col].trim();
            let name = header_cols[col].trim();
            if s.is_empty() {
                bail!("{file}:{line_no}: column {} ('{name}') is empty", col + 1);
            }
            let v: f64 = s
                .parse()
                .map_err(|_| anyhow!("{file}:{line_no}: column {} ('{name}') is not a number: '{s}'", col + 1))?;
            if !v.is_finite() {
                bail!("{file}:{line_no}: column {} ('{name}') is not finite: '{s}'", col + 1);
            }
            Ok(v)
        };
        let rel = fields[0].as_str();
        if rel.trim().is_empty() {
            bail!("{file}:{line_no}: empty image path");
        }
        let scale = num(1)?;
        if scale <= 0.0 {
            bail!("{file}:{line_no}: scale must be positive, got {scale}");
        }
        let (box_size, cx_col) = if kind == DatasetKind::Aflw { (Some(num(2)?), 3) } else { (None, 2) };
        let (cx, cy) = (num(cx_col)?, num(cx_col + 1)?);
        if scale * 200.0 > MAX_BOX_COORDINATE || cx.abs() > MAX_BOX_COORDINATE || cy.abs() > MAX_BOX_COORDINATE {
            bail!(
                "{file}:{line_no}: face box out of range (scale {scale}, center ({cx}, {cy})): sides and centres beyond {MAX_BOX_COORDINATE} pixels are refused"
            );
        }
        let center = [cx as f32, cy as f32];
        let mut pts = Vec::with_capacity(num_joints);
        for j in 0..num_joints {
            pts.push([num(lead + 2 * j)?, num(lead + 2 * j + 1)?]);
        }
        let mut image_path = root.join(rel);
        if kind == DatasetKind::W300 {
            if let Some(alt) = w300_known_misspelling(rel) {
                let alt_path = root.join(alt);
                if !image_path.exists() && alt_path.exists() {
                    log::warn!(
                        "{file}:{line_no}: '{}' does not exist, using '{}' (known 300W CSV misspelling)",
                        image_path.display(),
                        alt_path.display()
                    );
                    image_path = alt_path;
                }
            }
        }
        records.push(CsvRecord { image_path, scale, center, pts, box_size, line: line_no });
    }
    if records.is_empty() {
        bail!("{file}: no data rows after the header");
    }
    Ok(records)
}

/// Where a dataset's samples come from.
#[derive(Debug)]
pub enum Annotations {
    Csv(Vec<CsvRecord>),
    Cofw(CofwData),
}

/// One sample's annotation as the reference reads it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AnnotationRef<'a> {
    /// Box center, float32.
    pub center: [f32; 2],
    /// Box side / 200 as annotated (before the ×1.25 enlargement).
    pub scale: f64,
    /// Landmarks (x, y) in original pixels.
    pub pts: &'a [[f64; 2]],
    /// AFLW only: the NME normaliser.
    pub box_size: Option<f64>,
}

/// A dataset opened from a `DatasetSpec`; samples are produced by `sample.rs`.
#[derive(Debug)]
pub struct FaceDataset {
    pub spec: DatasetSpec,
    pub annotations: Annotations,
}

impl FaceDataset {
    /// Reads and validates the annotations (images are decoded per sample, except COFW whose
    /// images live in the .mat file).
    pub fn open(spec: DatasetSpec) -> Result<Self> {
        if spec.num_joints == 0 {
            bail!("dataset {}: num_joints must be positive", spec.annotations.display());
        }
        for (what, s) in [("image_size", spec.image_size), ("heatmap_size", spec.heatmap_size)] {
            if s[0] == 0 || s[1] == 0 || s[0] > 8192 || s[1] > 8192 {
                bail!("dataset {}: {what} {:?} out of range (1..=8192)", spec.annotations.display(), s);
            }
        }
        if !(spec.sigma > 0.0 && spec.sigma.is_finite()) {
            bail!("dataset {}: sigma must be positive, got {}", spec.annotations.display(), spec.sigma);
        }
        let annotations = match spec.kind {
            DatasetKind::Cofw => {
                if spec.num_joints != 29 {
                    bail!("{}: COFW has 29 landmarks, config asks for {}", spec.annotations.display(), spec.num_joints);
                }
                Annotations::Cofw(cofw::read_cofw(&spec.annotations, spec.is_train)?)
            }
            kind => Annotations::Csv(read_csv_annotations(&spec.annotations, &spec.root, kind, spec.num_joints)?),
        };
        Ok(Self { spec, annotations })
    }

    pub fn len(&self) -> usize {
        match &self.annotations {
            Annotations::Csv(r) => r.len(),
            Annotations::Cofw(c) => c.images.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The annotation of sample `index`.
    pub fn annotation(&self, index: usize) -> Result<AnnotationRef<'_>> {
        match &self.annotations {
            Annotations::Csv(r) => {
                let rec = r.get(index).ok_or_else(|| {
                    anyhow!("{}: sample index {index} out of range (len {})", self.spec.annotations.display(), r.len())
                })?;
                Ok(AnnotationRef { center: rec.center, scale: rec.scale, pts: &rec.pts, box_size: rec.box_size })
            }
            Annotations::Cofw(c) => {
                let pts = c.pts.get(index).ok_or_else(|| {
                    anyhow!(
                        "{}: sample index {index} out of range (len {})",
                        self.spec.annotations.display(),
                        c.pts.len()
                    )
                })?;
                let (center, scale) = cofw::cofw_center_scale(pts);
                Ok(AnnotationRef { center, scale, pts, box_size: None })
            }
        }
    }

    /// A name for the sample in messages (image path, or `file.mat[IsTr{i}]`).
    pub fn describe(&self, index: usize) -> String {
        match &self.annotations {
            Annotations::Csv(r) => match r.get(index) {
                Some(rec) => format!("{} ({}:{})", rec.image_path.display(), self.spec.annotations.display(), rec.line),
                None => format!("{}[{index}]", self.spec.annotations.display()),
            },
            Annotations::Cofw(_) => {
                format!(
                    "{}[{}{{{}}}]",
                    self.spec.annotations.display(),
                    if self.spec.is_train { "IsTr" } else { "IsT" },
                    index + 1
                )
            }
        }
    }
}
