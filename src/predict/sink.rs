//! Faces → outputs: the [`OutputSink`] a stream's finished frames go to, the JSON values of a
//! result on their own ([`image_json`], [`face_json`]), and [`FileSink`], the CLI's files: one
//! `<name>.json` and `<name>_landmarks.png` per image and one CSV per run.

use super::aligned::{aligned_face, png_bytes};
use super::engine::{FaceResult, ImageResult};
use super::stream::FrameOutcome;
use crate::atomic_file::write_atomically;
use crate::data::imageio::Rgb8;
use anyhow::{anyhow, Context, Result};
use rayon::prelude::*;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// Where a stream's finished frames go.
pub trait OutputSink {
    /// Takes one wave of frames in stream order, failed frames included (with their error), and
    /// gives back, per frame, why its outputs could not be written (`None`: written, or nothing
    /// to write). An `Err` ends the stream.
    fn write_frames(&mut self, frames: &[FrameOutcome]) -> Result<Vec<Option<anyhow::Error>>>;
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

/// One face of the per-image JSON document (`"pose"`: yaw, pitch, roll in degrees, or null for a
/// layout without pose points); a frame stream's faces add their track `id`.
pub fn face_json(f: &FaceResult) -> serde_json::Value {
    let mut v = serde_json::json!({
        "box": f.face.bbox.iter().map(|&v| json_num(v)).collect::<Vec<_>>(),
        "score": f.face.score,
        "landmarks": f.landmarks.iter().map(|p| [p[0], p[1]]).collect::<Vec<_>>(),
        "landmark_scores": f.landmark_scores,
        "pose": f.pose.map(|p| serde_json::json!({
            "yaw": json_num(p.yaw as f64),
            "pitch": json_num(p.pitch as f64),
            "roll": json_num(p.roll as f64),
        })),
    });
    if let Some(id) = f.id {
        v["id"] = serde_json::json!(id);
    }
    v
}

/// The per-image JSON document (the schema of README's predict section). A path that is not
/// UTF-8 is written lossily (U+FFFD) in `"image"`, and exactly, as hex of its bytes, in
/// `"image_bytes_hex"`.
pub fn image_json(r: &ImageResult) -> serde_json::Value {
    let mut doc = serde_json::json!({
        "image": r.path.display().to_string(),
        "width": r.width,
        "height": r.height,
        "faces": r.faces.iter().map(face_json).collect::<Vec<_>>(),
    });
    if r.path.to_str().is_none() {
        let hex: String = r.path.as_os_str().as_encoded_bytes().iter().map(|b| format!("{b:02x}")).collect();
        doc["image_bytes_hex"] = serde_json::Value::String(hex);
    }
    doc
}

/// The dataset CSV layout, a row per face, so the output can be fed back as annotations
/// (`hrk test` on it makes the same crops): scale is the annotation scale.
fn csv_rows(r: &ImageResult) -> String {
    let mut s = String::new();
    for f in &r.faces {
        let (image, face) = (crate::io::csv::field(&r.path.display().to_string()).into_owned(), &f.face);
        let _ = write!(s, "{image},{},{},{}", face.annotation_scale, face.center[0], face.center[1]);
        for q in &f.landmarks {
            let _ = write!(s, ",{},{}", q[0], q[1]);
        }
        s.push('\n');
    }
    s
}

/// Draws each face's box, its landmarks (with `labels`, their indices) and, for a tracked face,
/// its `id`: the overlay PNGs and a frame stream's overlay video look alike.
pub(super) fn draw_faces(img: &mut image::RgbImage, faces: &[FaceResult], labels: bool) {
    for f in faces {
        crate::draw::draw_box(img, f.face.bbox);
        crate::draw::draw_landmarks(img, &f.landmarks, labels);
        if let Some(id) = f.id {
            crate::draw::draw_face_id(img, f.face.bbox, id);
        }
    }
}

/// The image with each face's box and landmarks drawn, as PNG bytes (`overlay`: the file's path,
/// for messages).
fn overlay_png(r: &ImageResult, rgb: &Rgb8, labels: bool, overlay: &Path) -> Result<Vec<u8>> {
    let mut img = image::RgbImage::from_raw(rgb.width as u32, rgb.height as u32, rgb.data.clone())
        .ok_or_else(|| anyhow!("image {}: pixel buffer does not match its size", r.path.display()))?;
    draw_faces(&mut img, &r.faces, labels);
    let mut bytes = std::io::Cursor::new(Vec::new());
    img.write_to(&mut bytes, image::ImageFormat::Png)
        .map_err(|e| anyhow!("{}: PNG encoding failed: {e}", overlay.display()))?;
    Ok(bytes.into_inner())
}

/// The CLI's files, written into `out` as frames finish, the CSV (a row per face, in stream
/// order) in [`FileSink::finish`]. Every write is atomic (temporary file + rename).
pub struct FileSink {
    out: PathBuf,
    /// Draw landmark indices on the overlays.
    labels: bool,
    joints: usize,
    csv_rows: String,
    /// `--aligned SIZE`: each face's aligned crop as `<name>_face<i>.png`.
    aligned: Option<usize>,
}

impl FileSink {
    /// Creates `out` if needed; `joints` is the model's landmark count (the CSV's columns).
    pub fn new(out: &Path, labels: bool, joints: usize) -> Result<Self> {
        std::fs::create_dir_all(out).with_context(|| format!("cannot create output folder {}", out.display()))?;
        Ok(FileSink { out: out.to_path_buf(), labels, joints, csv_rows: String::new(), aligned: None })
    }

    /// Also writes each face aligned into a `size`² crop (`<name>_face<i>.png`, i from 0 in the
    /// JSON's face order; aligned.rs).
    pub fn with_aligned(mut self, size: Option<usize>) -> Self {
        self.aligned = size;
        self
    }

    fn write_image(&self, name: &str, r: &ImageResult, rgb: &Rgb8) -> Result<()> {
        if r.path.to_str().is_none() {
            log::warn!(
                "image {}: its path is not UTF-8; the JSON's \"image\" and the CSV show it with U+FFFD, \"image_bytes_hex\" holds its bytes",
                r.path.display()
            );
        }
        let json = serde_json::to_string_pretty(&image_json(r))? + "\n";
        write_atomically(&self.out.join(format!("{name}.json")), json.as_bytes())?;
        let overlay = self.out.join(format!("{name}_landmarks.png"));
        let png = overlay_png(r, rgb, self.labels, &overlay)?;
        write_atomically(&overlay, &png)?;
        if let Some(size) = self.aligned {
            for (i, face) in r.faces.iter().enumerate() {
                let path = self.out.join(format!("{name}_face{i}.png"));
                let crop = aligned_face(rgb, face, size)?;
                write_atomically(&path, &png_bytes(&crop, &path.display().to_string())?)?;
            }
        }
        Ok(())
    }

    /// Writes the CSV (`csv_name` in the output folder).
    pub fn finish(self, csv_name: &str) -> Result<()> {
        let mut csv = crate::data::annotations::official_csv_header(self.joints);
        csv.push('\n');
        csv.push_str(&self.csv_rows);
        write_atomically(&self.out.join(csv_name), csv.as_bytes())
    }
}

impl OutputSink for FileSink {
    /// An image whose JSON or overlay cannot be written fails alone (and gets no CSV row).
    fn write_frames(&mut self, frames: &[FrameOutcome]) -> Result<Vec<Option<anyhow::Error>>> {
        let unwritten: Vec<Option<anyhow::Error>> = frames
            .par_iter()
            .map(|o| o.result.as_ref().ok().and_then(|f| self.write_image(&o.name, &f.image, &f.rgb).err()))
            .collect();
        for (o, failed) in frames.iter().zip(&unwritten) {
            if let (Ok(f), None) = (&o.result, failed) {
                self.csv_rows.push_str(&csv_rows(&f.image));
            }
        }
        Ok(unwritten)
    }
}
