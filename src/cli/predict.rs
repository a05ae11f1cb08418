//! `hrk predict`: landmarks for your own images (what the reference's issues #51, #90, #91 ask
//! for). The face region is given by `--box x1,y1,x2,y2` (center = box center, scale = box side
//! / 200 × 1.25, the enlargement every dataset applies at test time), or is the whole image
//! (center = image center, scale = longer side / 200, no enlargement), or comes from a CSV in the
//! dataset format (`--csv`, the test-time pipeline of `hrk test`). Writes JSON, CSV and one
//! overlay PNG per image; coordinates are original-image pixels.

use crate::data::augment::Augmentation;
use crate::data::codec::decode_preds_with;
use crate::data::dataset::{Annotations, FaceDataset};
use crate::data::image::Image;
use crate::data::imageio::load_image;
use crate::data::sample::normalize_into;
use crate::data::transforms::crop;
use crate::eval::{test_heatmaps, TestOptions};
use crate::model::HrNet;
use anyhow::{anyhow, bail, Context, Result};
use clap::Args;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

#[derive(Args, Debug)]
pub struct PredictArgs {
    /// Experiment YAML (official schema): model layout, IMAGE_SIZE, HEATMAP_SIZE.
    #[arg(long)]
    pub cfg: PathBuf,
    /// Weights: .safetensors or an official .pth.
    #[arg(long = "model-file")]
    pub model_file: PathBuf,
    /// Images (JPEG, PNG, PPM, BMP).
    pub images: Vec<PathBuf>,
    /// Face box x1,y1,x2,y2 in pixels: once for all images, or once per image in order.
    #[arg(long = "box", allow_hyphen_values = true)]
    pub boxes: Vec<String>,
    /// Annotation CSV in the dataset format (image paths relative to --root).
    #[arg(long)]
    pub csv: Option<PathBuf>,
    /// Root for the CSV's image paths (default: DATASET.ROOT).
    #[arg(long)]
    pub root: Option<PathBuf>,
    /// Output folder (default: OUTPUT_DIR/DATASET/<cfg name>/predict).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Draw landmark indices on the overlays.
    #[arg(long)]
    pub labels: bool,
    /// cpu, cuda or auto.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    #[command(flatten)]
    pub options: super::common::TestOptionArgs,
}

/// A face box in pixels.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct FaceBox {
    pub x1: f64,
    pub y1: f64,
    pub x2: f64,
    pub y2: f64,
}

impl FaceBox {
    /// Parses `x1,y1,x2,y2` (x2 > x1, y2 > y1, finite).
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
        if v.iter().any(|x| !x.is_finite()) {
            return Err(bad("not finite"));
        }
        if v[2] <= v[0] || v[3] <= v[1] {
            return Err(bad("x2 must exceed x1 and y2 must exceed y1"));
        }
        Ok(FaceBox { x1: v[0], y1: v[1], x2: v[2], y2: v[3] })
    }

    /// Center and the annotation scale (box side / 200, before the ×1.25 enlargement), the
    /// convention of the dataset CSVs (REFERENCE §3.1, issue #3).
    pub fn center_scale(&self) -> ([f32; 2], f64) {
        let c = [((self.x1 + self.x2) / 2.0) as f32, ((self.y1 + self.y2) / 2.0) as f32];
        (c, (self.x2 - self.x1).max(self.y2 - self.y1) / 200.0)
    }
}

/// The test-time enlargement of the annotation scale (`scale *= 1.25` in every dataset class).
pub const SCALE_ENLARGEMENT: f64 = 1.25;

/// One image's result.
struct Prediction {
    image: PathBuf,
    width: usize,
    height: usize,
    face_box: Option<FaceBox>,
    center: [f32; 2],
    /// Crop scale actually used (box side × 1.25 / 200, or the whole image).
    scale: f64,
    points: Vec<[f32; 2]>,
    overlay: PathBuf,
}

/// Crop, normalise, forward and decode one face.
fn predict_one(
    net: &mut HrNet, img: &Image, center: [f32; 2], scale: f64, image_size: [usize; 2], opts: &TestOptions,
    pairs: &[(usize, usize)],
) -> Result<Vec<[f32; 2]>> {
    let c = crop(img, center, scale, image_size, 0.0)?;
    if c.height != image_size[0] || c.width != image_size[1] {
        bail!("crop returned {}x{}, expected {}x{}", c.height, c.width, image_size[0], image_size[1]);
    }
    let mut input = vec![0f32; 3 * image_size[0] * image_size[1]];
    normalize_into(&c, &mut input)?;
    let (hm, [n, j, h, w]) = test_heatmaps(net, input, [1, 3, image_size[0], image_size[1]], opts, pairs)?;
    decode_preds_with(&hm, n, j, h, w, &[center], &[scale], opts.decode)
}

fn overlay_path(out: &Path, image: &Path, used: &mut Vec<String>) -> PathBuf {
    let stem = image.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "image".into());
    let mut name = format!("{stem}_landmarks.png");
    let mut k = 2;
    while used.contains(&name) {
        name = format!("{stem}_{k}_landmarks.png");
        k += 1;
    }
    used.push(name.clone());
    out.join(name)
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

fn write_outputs(out: &Path, preds: &[Prediction], joints: usize) -> Result<()> {
    let items: Vec<serde_json::Value> = preds
        .iter()
        .map(|p| {
            serde_json::json!({
                "image": p.image.display().to_string(),
                "width": p.width,
                "height": p.height,
                "box": p.face_box.map(|b| vec![b.x1, b.y1, b.x2, b.y2]),
                "center": [p.center[0], p.center[1]],
                "scale": p.scale,
                "landmarks": p.points.iter().map(|q| vec![q[0], q[1]]).collect::<Vec<_>>(),
                "overlay": p.overlay.display().to_string(),
            })
        })
        .collect();
    let doc = serde_json::json!({
        "coordinates": "original image pixels (x, y)",
        "landmarks": joints,
        "images": items,
    });
    let json_path = out.join("predictions.json");
    std::fs::write(&json_path, serde_json::to_string_pretty(&doc)? + "\n")
        .with_context(|| format!("cannot write {}", json_path.display()))?;

    // The dataset CSV layout, so the output can be fed back as annotations: `scale` is the
    // annotation scale (crop scale / 1.25).
    let mut csv = String::from("image_name,scale,center_w,center_h");
    for k in 0..joints {
        let _ = write!(csv, ",original_{k}_x,original_{k}_y");
    }
    csv.push('\n');
    for p in preds {
        let _ = write!(
            csv,
            "{},{},{},{}",
            csv_field(&p.image.display().to_string()),
            p.scale / SCALE_ENLARGEMENT,
            p.center[0],
            p.center[1]
        );
        for q in &p.points {
            let _ = write!(csv, ",{},{}", q[0], q[1]);
        }
        csv.push('\n');
    }
    let csv_path = out.join("predictions.csv");
    std::fs::write(&csv_path, csv).with_context(|| format!("cannot write {}", csv_path.display()))?;
    Ok(())
}

pub fn run(args: PredictArgs) -> Result<()> {
    let device = super::common::device(&args.device)?;
    let cfg = super::common::config(&args.cfg)?;
    if args.images.is_empty() && args.csv.is_none() {
        bail!("hrk predict: give image files and/or --csv FILE");
    }
    let boxes: Vec<FaceBox> = args.boxes.iter().map(|s| FaceBox::parse(s)).collect::<Result<_>>()?;
    if boxes.len() > 1 && boxes.len() != args.images.len() {
        bail!(
            "--box given {} times for {} images (give it once for all, or once per image)",
            boxes.len(),
            args.images.len()
        );
    }
    for img in &args.images {
        if !img.is_file() {
            bail!("image {} not found", img.display());
        }
    }
    let mut net = super::common::model(&cfg, 0)?;
    super::common::load_weights(&mut net, &args.model_file)?;
    net.to_device(&device)?;
    net.set_precision(args.options.precision()?);
    let image_size = cfg.model.image_size;
    let opts = args.options.resolve(&cfg)?;
    let pairs = if opts.flip_test {
        super::common::dataset_spec(&cfg, false, None)?.mirror_pairs().context("--flip-test")?
    } else {
        Vec::new()
    };
    let out = args.out.clone().unwrap_or_else(|| cfg.output_dir_for(&args.cfg).join("predict"));
    std::fs::create_dir_all(&out).with_context(|| format!("cannot create output folder {}", out.display()))?;

    let mut used = Vec::new();
    let mut preds = Vec::new();
    for (i, path) in args.images.iter().enumerate() {
        let img = load_image(path)?;
        let face_box = match boxes.len() {
            0 => None,
            1 => Some(boxes[0]),
            _ => Some(boxes[i]),
        };
        let (center, scale) = match face_box {
            Some(b) => {
                let (c, s) = b.center_scale();
                (c, s * SCALE_ENLARGEMENT)
            }
            None => ([img.width as f32 / 2.0, img.height as f32 / 2.0], img.width.max(img.height) as f64 / 200.0),
        };
        let points = predict_one(&mut net, &img, center, scale, image_size, &opts, &pairs)
            .with_context(|| format!("image {}", path.display()))?;
        let overlay = overlay_path(&out, path, &mut used);
        crate::draw::save_overlay(&overlay, &img, &points, args.labels)?;
        preds.push(Prediction {
            image: path.clone(),
            width: img.width,
            height: img.height,
            face_box,
            center,
            scale,
            points,
            overlay,
        });
    }

    if let Some(csv) = &args.csv {
        let mut spec = super::common::dataset_spec(&cfg, false, Some(csv))?;
        if let Some(root) = &args.root {
            spec.root = root.clone();
        }
        let ds = FaceDataset::open(spec)?;
        let mut input = vec![0f32; ds.input_len()];
        let mut target = vec![0f32; ds.target_len()];
        for i in 0..ds.len() {
            let meta = ds.fill_sample(i, &Augmentation::NONE, &mut input, &mut target)?;
            let (hm, [n, j, h, w]) =
                test_heatmaps(&mut net, input.clone(), [1, 3, image_size[0], image_size[1]], &opts, &pairs)?;
            let points = decode_preds_with(&hm, n, j, h, w, &[meta.center], &[meta.scale], opts.decode)
                .with_context(|| ds.describe(i))?;
            let img = ds.source_image(i, false)?;
            let image = match &ds.annotations {
                Annotations::Csv(r) => r[i].image_path.clone(),
                Annotations::Cofw(_) => PathBuf::from(ds.describe(i)),
            };
            let overlay = overlay_path(&out, &image, &mut used);
            crate::draw::save_overlay(&overlay, &img, &points, args.labels)?;
            preds.push(Prediction {
                image,
                width: img.width,
                height: img.height,
                face_box: None,
                center: meta.center,
                scale: meta.scale,
                points,
                overlay,
            });
        }
    }

    write_outputs(&out, &preds, net.spec.num_joints)?;
    for p in &preds {
        println!("{}: {} landmarks -> {}", p.image.display(), p.points.len(), p.overlay.display());
    }
    println!("wrote predictions.json and predictions.csv to {}", out.display());
    Ok(())
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
}
