//! Procedural synthetic face data set: drawn faces with 68-point (300W) or 98-point (WFLW)
//! landmarks, written as JPEG images plus CSVs in the official format, so `hrk train` can show
//! learning on a fresh machine without downloading anything.
//!
//! Coordinates are continuous pixel coordinates: pixel column i covers [i, i+1), so the official
//! flip `x → W − x` maps the drawn features exactly onto the mirrored image.

mod face;
mod raster;

use crate::atomic_file::{write_atomically, write_atomically_unsynced};
use crate::rng::Rng;
use anyhow::{bail, Context, Result};
use face::{FaceShape, IMAGE_LEFT, IMAGE_RIGHT};
use raster::{Canvas, Mask, Pt, Rgb};
use rayon::prelude::*;
use std::path::{Path, PathBuf};

/// Side of the square images.
pub const IMAGE_SIZE: usize = 256;
/// CSV file names inside the output folder.
pub const TRAIN_CSV: &str = "face_landmarks_synthetic_train.csv";
pub const TEST_CSV: &str = "face_landmarks_synthetic_test.csv";
/// Training config written next to the data (official YAML layout).
pub const CONFIG_YAML: &str = "synthetic_hrnet_w18.yaml";
const JPEG_QUALITY: u8 = 92;

/// What `generate` wrote.
#[derive(Clone, Debug)]
pub struct SynthSummary {
    pub out_dir: PathBuf,
    pub joints: usize,
    pub image_size: usize,
    pub train_csv: PathBuf,
    pub test_csv: PathBuf,
    /// A ready-to-train YAML config for this data set (see `config_yaml`).
    pub config: PathBuf,
    pub train_count: usize,
    pub test_count: usize,
}

/// One rendered sample (RGB, row-major, 3 bytes per pixel).
#[derive(Clone, Debug)]
pub struct SynthSample {
    pub width: usize,
    pub height: usize,
    pub rgb: Vec<u8>,
    /// Landmarks in the official index order, continuous pixel coordinates.
    pub landmarks: Vec<[f32; 2]>,
    /// Box centre and scale (= box side / 200) of the tight landmark box, COFW-style rounding.
    pub center: [f64; 2],
    pub scale: f64,
    /// An occluding rectangle was drawn over part of the face.
    pub occluded: bool,
}

fn check_joints(joints: usize) -> Result<()> {
    if joints != 68 && joints != 98 {
        bail!("synth: joints must be 68 (300W layout) or 98 (WFLW layout), got {joints}");
    }
    Ok(())
}

/// The canonical mean shape (face half-width ≈ 1, y down) in the official index order.
/// It is exactly left-right symmetric under the official mirror pairs.
pub fn canonical_shape(joints: usize) -> Result<Vec<[f32; 2]>> {
    check_joints(joints)?;
    Ok(FaceShape::mean().landmarks(joints))
}

/// Most images one `generate` writes: 20× WFLW's 10,000, about 4 GB of JPEGs (a typo like
/// 10¹² would otherwise write until the disk is full, holding every CSV row in memory).
pub const MAX_COUNT: usize = 200_000;

/// Whether sample `index` goes to the test split (every fifth sample: an 80/20 split).
pub fn is_test_index(index: usize) -> bool {
    index % 5 == 4
}

/// Writes `count` images to `out_dir/images/` and the train/test CSVs to `out_dir`
/// (300W CSV layout for 68 joints, WFLW layout for 98). Image paths in the CSVs are relative to
/// `out_dir`, which is the config's `DATASET.ROOT`. Deterministic for a seed.
pub fn generate(out_dir: &Path, joints: usize, count: usize, seed: u64) -> Result<SynthSummary> {
    check_joints(joints)?;
    if count == 0 || count > MAX_COUNT {
        bail!("synth: --count {count} is out of range: give 1 to {MAX_COUNT} images");
    }
    let image_dir = out_dir.join("images");
    std::fs::create_dir_all(&image_dir)
        .with_context(|| format!("synth: cannot create folder {}", image_dir.display()))?;
    let rows: Vec<String> = (0..count)
        .into_par_iter()
        .map(|index| -> Result<String> {
            let sample = render_sample(joints, seed, index)?;
            let rel = format!("images/s{joints}_{index:06}.jpg");
            let path = out_dir.join(&rel);
            write_jpeg(&path, &sample)?;
            Ok(csv_row(&rel, &sample))
        })
        .collect::<Result<Vec<_>>>()?;
    let header = csv_header(joints);
    let train_csv = out_dir.join(TRAIN_CSV);
    let test_csv = out_dir.join(TEST_CSV);
    let mut train = String::with_capacity(rows.len() * 1200);
    let mut test = String::new();
    train.push_str(&header);
    test.push_str(&header);
    let (mut train_count, mut test_count) = (0, 0);
    for (index, row) in rows.iter().enumerate() {
        if is_test_index(index) {
            test.push_str(row);
            test_count += 1;
        } else {
            train.push_str(row);
            train_count += 1;
        }
    }
    for (path, text) in [(&train_csv, &train), (&test_csv, &test)] {
        write_atomically(path, text.as_bytes()).context("synth")?;
    }
    let config = out_dir.join(CONFIG_YAML);
    write_atomically(&config, config_yaml(out_dir, joints).as_bytes()).context("synth")?;
    Ok(SynthSummary {
        config,
        out_dir: out_dir.to_path_buf(),
        joints,
        image_size: IMAGE_SIZE,
        train_csv,
        test_csv,
        train_count,
        test_count,
    })
}

/// A config in the layout of the official experiments/*/face_alignment_*_hrnet_w18.yaml, pointing at
/// the synthetic set in `out_dir`: the 300W body for 68 joints (flip pairs, σ = 1.0, inter-ocular NME), the WFLW body
/// for 98 (σ = 1.5). Differences from the official files, so it trains from scratch quickly and
/// without downloads: no ImageNet weights, 20 epochs, LR 5e-4 stepped at 12 and 17.
pub fn config_yaml(out_dir: &Path, joints: usize) -> String {
    let quote = |p: &Path| format!("'{}'", p.display().to_string().replace('\'', "''"));
    let (dataset, sigma) = if joints == 98 { ("WFLW", "1.5") } else { ("300W", "1.0") };
    let mut y = String::new();
    y.push_str("GPUS: (0,)\nWORKERS: 4\nPRINT_FREQ: 50\n");
    y.push_str(&format!(
        "DATASET:\n  DATASET: {dataset}\n  ROOT: {}\n  TRAINSET: {}\n  TESTSET: {}\n  FLIP: true\n  SCALE_FACTOR: 0.25\n  ROT_FACTOR: 30\n",
        quote(out_dir),
        quote(&out_dir.join(TRAIN_CSV)),
        quote(&out_dir.join(TEST_CSV)),
    ));
    y.push_str(&format!(
        "MODEL:\n  NAME: 'hrnet'\n  NUM_JOINTS: {joints}\n  INIT_WEIGHTS: true\n  PRETRAINED: ''\n  SIGMA: {sigma}\n  IMAGE_SIZE:\n    - 256\n    - 256\n  HEATMAP_SIZE:\n    - 64\n    - 64\n"
    ));
    y.push_str("  EXTRA:\n    FINAL_CONV_KERNEL: 1\n");
    let stages: [(&str, usize, &[usize]); 3] =
        [("STAGE2", 1, &[18, 36]), ("STAGE3", 4, &[18, 36, 72]), ("STAGE4", 3, &[18, 36, 72, 144])];
    for (name, modules, channels) in stages {
        y.push_str(&format!(
            "    {name}:\n      NUM_MODULES: {modules}\n      NUM_BRANCHES: {}\n      BLOCK: BASIC\n      NUM_BLOCKS:\n",
            channels.len()
        ));
        for _ in channels {
            y.push_str("        - 4\n");
        }
        y.push_str("      NUM_CHANNELS:\n");
        for c in channels {
            y.push_str(&format!("        - {c}\n"));
        }
        y.push_str("      FUSE_METHOD: SUM\n");
    }
    y.push_str(
        "TRAIN:\n  BATCH_SIZE_PER_GPU: 16\n  SHUFFLE: true\n  BEGIN_EPOCH: 0\n  END_EPOCH: 20\n  RESUME: true\n  OPTIMIZER: 'adam'\n  LR: 0.0005\n  WD: 0.0\n  LR_STEP: [12, 17]\n  MOMENTUM: 0.0\n  NESTEROV: false\nTEST:\n  BATCH_SIZE_PER_GPU: 8\n",
    );
    y
}

/// Header as in the official CSVs: name, scale, centre, then interleaved x/y per landmark.
pub fn csv_header(joints: usize) -> String {
    let mut h = String::from("image_name,scale,center_w,center_h");
    for j in 0..joints {
        h.push_str(&format!(",original_{j}_x,original_{j}_y"));
    }
    h.push('\n');
    h
}

fn csv_row(rel: &str, s: &SynthSample) -> String {
    let mut row = format!("{rel},{:.3},{:.1},{:.1}", s.scale, s.center[0], s.center[1]);
    for p in &s.landmarks {
        row.push_str(&format!(",{:.3},{:.3}", p[0], p[1]));
    }
    row.push('\n');
    row
}

fn write_jpeg(path: &Path, s: &SynthSample) -> Result<()> {
    let mut jpeg = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut jpeg, JPEG_QUALITY)
        .encode(&s.rgb, s.width as u32, s.height as u32, image::ExtendedColorType::Rgb8)
        .with_context(|| format!("synth: cannot encode {}", path.display()))?;
    write_atomically_unsynced(path, &jpeg).context("synth")
}

/// Head pose and placement: canonical → image mapping.
struct Pose {
    yaw: f32,
    pitch: f32,
    roll: f32,
    scale: f32,
    tx: f32,
    ty: f32,
}

impl Pose {
    fn map(&self, shape: &FaceShape, p: Pt) -> Pt {
        let z = shape.depth(p);
        let (sy, cy) = self.yaw.sin_cos();
        let (sp, cp) = self.pitch.sin_cos();
        let x1 = p[0] * cy + z * sy;
        let z1 = -p[0] * sy + z * cy;
        let y1 = p[1] * cp + z1 * sp;
        let (sr, cr) = self.roll.sin_cos();
        let (xs, ys) = (x1 * self.scale, y1 * self.scale);
        [cr * xs - sr * ys + self.tx, sr * xs + cr * ys + self.ty]
    }

    fn map_all(&self, shape: &FaceShape, pts: &[Pt]) -> Vec<Pt> {
        pts.iter().map(|&p| self.map(shape, p)).collect()
    }
}

fn scale_rgb(c: Rgb, f: f32) -> Rgb {
    [c[0] * f, c[1] * f, c[2] * f]
}

fn mix_rgb(a: Rgb, b: Rgb, t: f32) -> Rgb {
    [a[0] + (b[0] - a[0]) * t, a[1] + (b[1] - a[1]) * t, a[2] + (b[2] - a[2]) * t]
}

fn random_color(rng: &mut Rng) -> Rgb {
    [rng.range_f32(15.0, 240.0), rng.range_f32(15.0, 240.0), rng.range_f32(15.0, 240.0)]
}

fn luminance(c: Rgb) -> f32 {
    0.299 * c[0] + 0.587 * c[1] + 0.114 * c[2]
}

/// Renders sample `index` of the data set for `seed` (the same image `generate` writes).
pub fn render_sample(joints: usize, seed: u64, index: usize) -> Result<SynthSample> {
    check_joints(joints)?;
    // The stream does not depend on `joints`, so the 68 and 98 sets show the same faces.
    let mut rng = Rng::for_synth(seed, index as u64);
    let (w, h) = (IMAGE_SIZE, IMAGE_SIZE);
    let shape = FaceShape::random(&mut rng);

    // Pose: in-plane rotation up to ±30° (mostly small), yaw up to ±35°, a little pitch.
    let roll_deg = if rng.chance_f32(0.5) { rng.range_f32(-30.0, 30.0) } else { rng.range_f32(-8.0, 8.0) };
    let mut pose = Pose {
        yaw: rng.range_f32(-35.0, 35.0).to_radians() * if rng.chance_f32(0.3) { 0.3 } else { 1.0 },
        pitch: rng.range_f32(-12.0, 12.0).to_radians(),
        roll: roll_deg.to_radians(),
        scale: rng.range_f32(32.0, 70.0),
        tx: 0.0,
        ty: 0.0,
    };
    let canon = shape.landmarks(joints);
    // Place the face so all landmarks are inside the image with a margin; shrink if needed.
    let margin = 3.0f32;
    let landmarks = loop {
        pose.tx = 0.0;
        pose.ty = 0.0;
        let pts = pose.map_all(&shape, &canon);
        let (lo, hi) = bbox(&pts);
        let room_x = (w as f32 - 2.0 * margin) - (hi[0] - lo[0]);
        let room_y = (h as f32 - 2.0 * margin) - (hi[1] - lo[1]);
        if room_x < 0.0 || room_y < 0.0 {
            pose.scale *= 0.9;
            continue;
        }
        pose.tx = margin - lo[0] + rng.uniform_f32() * room_x;
        pose.ty = margin - lo[1] + rng.uniform_f32() * room_y;
        break pose.map_all(&shape, &canon);
    };

    let mut canvas = Canvas::new(w, h);
    draw_background(&mut canvas, &mut rng);
    let occluded = draw_face(&mut canvas, &shape, &pose, &mut rng);
    finish_image(&mut canvas, &mut rng);

    let rgb: Vec<u8> = canvas.rgb.iter().map(|&v| v.round().clamp(0.0, 255.0) as u8).collect();
    let (center, scale) = center_scale(&landmarks);
    Ok(SynthSample { width: w, height: h, rgb, landmarks, center, scale, occluded })
}

fn bbox(pts: &[Pt]) -> (Pt, Pt) {
    let mut lo = [f32::MAX; 2];
    let mut hi = [f32::MIN; 2];
    for p in pts {
        for k in 0..2 {
            lo[k] = lo[k].min(p[k]);
            hi[k] = hi[k].max(p[k]);
        }
    }
    (lo, hi)
}

/// Tight landmark box with the COFW rounding rule (official lib/datasets/cofw.py; the published CSV
/// centres follow it too): centre ends in .0/.5, scale = integer side / 200.
fn center_scale(pts: &[Pt]) -> ([f64; 2], f64) {
    let (lo, hi) = bbox(pts);
    let (x0, y0) = ((lo[0] as f64).floor(), (lo[1] as f64).floor());
    let (x1, y1) = ((hi[0] as f64).ceil(), (hi[1] as f64).ceil());
    ([(x0 + x1) / 2.0, (y0 + y1) / 2.0], (x1 - x0).max(y1 - y0) / 200.0)
}

fn draw_background(canvas: &mut Canvas, rng: &mut Rng) {
    let (w, h) = (canvas.width, canvas.height);
    let c1 = random_color(rng);
    let c2 = random_color(rng);
    let angle = rng.range_f32(0.0, std::f32::consts::TAU);
    let (s, c) = angle.sin_cos();
    for y in 0..h {
        for x in 0..w {
            let t =
                (((x as f32 - w as f32 / 2.0) * c + (y as f32 - h as f32 / 2.0) * s) / w as f32 + 0.5).clamp(0.0, 1.0);
            let col = mix_rgb(c1, c2, t);
            let o = (y * w + x) * 3;
            canvas.rgb[o..o + 3].copy_from_slice(&col);
        }
    }
    // Clutter: blobs, boxes and sometimes stripes, so the background is not a clean gradient.
    let shapes = 3 + (rng.uniform_f32() * 7.0) as usize;
    for _ in 0..shapes {
        let col = random_color(rng);
        let alpha = rng.range_f32(0.25, 0.9);
        let center = [rng.range_f32(0.0, w as f32), rng.range_f32(0.0, h as f32)];
        let radii = [rng.range_f32(6.0, 70.0), rng.range_f32(6.0, 70.0)];
        let angle = rng.range_f32(0.0, 3.2);
        let mask = if rng.chance_f32(0.5) {
            Mask::ellipse(center, radii, angle, w, h)
        } else {
            Mask::polygon(&rect_points(center, radii, angle), w, h)
        };
        canvas.paint_solid(&mask, alpha, col);
    }
    if rng.chance_f32(0.25) {
        let col = random_color(rng);
        let angle = rng.range_f32(0.0, 3.2);
        let period = rng.range_f32(8.0, 30.0);
        let thick = period * rng.range_f32(0.2, 0.5);
        let (s, c) = angle.sin_cos();
        let mut k = -(w as f32);
        while k < w as f32 {
            let center = [w as f32 / 2.0 + k * c, h as f32 / 2.0 + k * s];
            let mask = Mask::polygon(&rect_points(center, [thick / 2.0, w as f32], angle), w, h);
            canvas.paint_solid(&mask, 0.5, col);
            k += period;
        }
    }
}

/// Corners of a rectangle with half sizes `half` rotated by `angle` about `center`.
fn rect_points(center: Pt, half: [f32; 2], angle: f32) -> Vec<Pt> {
    let (s, c) = angle.sin_cos();
    [[-1.0, -1.0], [1.0, -1.0], [1.0, 1.0], [-1.0, 1.0]]
        .iter()
        .map(|&[a, b]: &[f32; 2]| {
            let (x, y) = (a * half[0], b * half[1]);
            [center[0] + c * x - s * y, center[1] + s * x + c * y]
        })
        .collect()
}

const HAIR_COLORS: [Rgb; 6] = [
    [25.0, 20.0, 18.0],
    [60.0, 40.0, 25.0],
    [100.0, 65.0, 35.0],
    [150.0, 110.0, 60.0],
    [120.0, 50.0, 25.0],
    [170.0, 165.0, 160.0],
];
const IRIS_COLORS: [Rgb; 4] = [[70.0, 45.0, 25.0], [50.0, 90.0, 140.0], [70.0, 100.0, 60.0], [40.0, 30.0, 25.0]];

/// Draws the face; returns whether an occluder was drawn.
fn draw_face(canvas: &mut Canvas, shape: &FaceShape, pose: &Pose, rng: &mut Rng) -> bool {
    let (w, h) = (canvas.width, canvas.height);
    let s = pose.scale;
    let m = |pts: &[Pt]| pose.map_all(shape, pts);

    // Colours: skin from light to dark with a small cast; features keep a visible contrast.
    let tone = rng.uniform_f32();
    let skin = mix_rgb([238.0, 205.0, 180.0], [100.0, 65.0, 48.0], tone);
    let skin = [
        skin[0] + rng.range_f32(-10.0, 10.0),
        skin[1] + rng.range_f32(-10.0, 10.0),
        skin[2] + rng.range_f32(-10.0, 10.0),
    ];
    let hair = *rng.pick_f32(&HAIR_COLORS);
    let hair = scale_rgb(hair, rng.range_f32(0.85, 1.15));
    let brow = if luminance(hair) < 0.55 * luminance(skin) { hair } else { scale_rgb(skin, 0.45) };
    let iris = *rng.pick_f32(&IRIS_COLORS);
    let lips = [skin[0] * 0.85 + 20.0, skin[1] * 0.55, skin[2] * 0.58];
    let sclera = scale_rgb([240.0, 238.0, 230.0], rng.range_f32(0.85, 1.0));
    let light = {
        let a = rng.range_f32(0.0, std::f32::consts::TAU);
        let k = rng.range_f32(0.0, 0.25);
        [a.cos() * k, a.sin() * k]
    };
    let face_center = pose.map(shape, [0.0, 0.2]);
    let shaded_skin = move |base: Rgb| {
        move |x: f32, y: f32| {
            let (dx, dy) = ((x - face_center[0]) / s, (y - face_center[1]) / s);
            let f = (1.0 + light[0] * dx + light[1] * dy) * (1.0 - 0.1 * (dx * dx + dy * dy).min(1.5));
            scale_rgb(base, f)
        }
    };

    // Hair behind the head (long hair frames the jaw with a contrasting edge).
    if rng.chance_f32(0.4) {
        let hw = shape.half_width * rng.range_f32(1.15, 1.35);
        let bottom = shape.chin_y * rng.range_f32(0.4, 1.0);
        let mut pts = vec![[-hw, bottom], [hw, bottom]];
        for i in 0..=24 {
            let a = i as f32 / 24.0 * std::f32::consts::PI;
            pts.push([hw * a.cos(), shape.jaw_top_y - (shape.forehead_height + 0.1) * a.sin()]);
        }
        canvas.paint_solid(&Mask::polygon(&m(&pts), w, h), 1.0, scale_rgb(hair, 0.85));
    }
    // Neck, in shadow under the jaw.
    let neck_w = 0.5 * shape.half_width;
    let neck = [[-neck_w, 0.2], [neck_w, 0.2], [neck_w * 1.2, 2.6], [-neck_w * 1.2, 2.6]];
    canvas.paint(&Mask::polygon(&m(&neck), w, h), 1.0, shaded_skin(scale_rgb(skin, 0.7)));
    // Ears, mostly hidden behind the face outline.
    if rng.chance_f32(0.7) {
        for side in [IMAGE_LEFT, IMAGE_RIGHT] {
            let ear =
                raster::ellipse_points([side * shape.half_width * 0.97, shape.eye_y + 0.12], [0.11, 0.22], 0.0, 24);
            canvas.paint(&Mask::polygon(&m(&ear), w, h), 1.0, shaded_skin(scale_rgb(skin, 0.88)));
        }
    }
    // Face.
    let outline = m(&shape.face_outline());
    canvas.paint(&Mask::polygon(&outline, w, h), 1.0, shaded_skin(skin));
    let jaw = m(&shape.jaw_dense());
    canvas.paint_solid(&Mask::stroke(&jaw, (0.025 * s).max(1.0), w, h), 0.5, scale_rgb(skin, 0.6));
    // Hair cap above a hairline that stays above the brows.
    {
        let hair_y = shape.brow_y - shape.brow_raise - rng.range_f32(0.25, 0.45);
        let curve = rng.range_f32(0.0, 0.12);
        let hw = shape.half_width * 1.06;
        let mut cap: Vec<Pt> = Vec::new();
        for i in 0..=32 {
            let a = i as f32 / 32.0 * std::f32::consts::PI;
            cap.push([hw * a.cos(), shape.jaw_top_y - (shape.forehead_height + 0.08) * a.sin()]);
        }
        let mut above: Vec<Pt> = vec![[-3.0, -4.0], [3.0, -4.0]];
        for i in 0..=24 {
            let x = 3.0 - 6.0 * i as f32 / 24.0;
            let xr = (x / shape.half_width).clamp(-1.0, 1.0);
            above.push([x, (hair_y + curve * xr * xr).min(shape.jaw_top_y)]);
        }
        let mask = Mask::polygon(&m(&cap), w, h).intersect(&Mask::polygon(&m(&above), w, h));
        canvas.paint_solid(&mask, 1.0, hair);
    }

    // Eyebrows.
    for side in [IMAGE_LEFT, IMAGE_RIGHT] {
        canvas.paint_solid(&Mask::polygon(&m(&shape.brow_polygon(side)), w, h), 0.92, brow);
    }
    // Eyes: sclera, iris and pupil clipped to the eye opening, dark upper lid line.
    let lid_dark = scale_rgb(brow, 0.6);
    for side in [IMAGE_LEFT, IMAGE_RIGHT] {
        let eye_mask = Mask::polygon(&m(&shape.eye_polygon(side)), w, h);
        canvas.paint_solid(&eye_mask, 1.0, sclera);
        let pupil = shape.pupil(side);
        let iris_pts = raster::ellipse_points(pupil, [shape.iris_r, shape.iris_r], 0.0, 28);
        canvas.paint_solid(&Mask::polygon(&m(&iris_pts), w, h).intersect(&eye_mask), 1.0, iris);
        let pupil_pts = raster::ellipse_points(pupil, [shape.iris_r * 0.45, shape.iris_r * 0.45], 0.0, 20);
        canvas.paint_solid(&Mask::polygon(&m(&pupil_pts), w, h).intersect(&eye_mask), 1.0, [15.0, 12.0, 12.0]);
        let upper = m(&shape.eye_upper_dense(side));
        canvas.paint_solid(&Mask::stroke(&upper, (0.03 * s).max(1.2), w, h), 0.9, lid_dark);
        let lower = m(&shape.eye_lower_dense(side));
        canvas.paint_solid(&Mask::stroke(&lower, (0.015 * s).max(0.8), w, h), 0.5, scale_rgb(skin, 0.5));
    }
    // Nose: bridge highlight and side shadow, lower outline, nostrils.
    {
        let bridge: Vec<Pt> = FaceShape::dense(|f| shape.nose_bridge(f), 12);
        canvas.paint_solid(&Mask::stroke(&m(&bridge), (0.06 * s).max(1.0), w, h), 0.3, scale_rgb(skin, 1.18));
        let shadow_side = if light[0] > 0.0 { IMAGE_LEFT } else { IMAGE_RIGHT };
        let side_line: Vec<Pt> = bridge.iter().map(|p| [p[0] + shadow_side * 0.08, p[1]]).collect();
        canvas.paint_solid(&Mask::stroke(&m(&side_line), (0.04 * s).max(1.0), w, h), 0.25, scale_rgb(skin, 0.6));
        let tip = raster::ellipse_points([0.0, shape.nose_tip_y], [0.07, 0.05], 0.0, 20);
        canvas.paint_solid(&Mask::polygon(&m(&tip), w, h), 0.35, scale_rgb(skin, 1.15));
        for side in [IMAGE_LEFT, IMAGE_RIGHT] {
            let nostril = raster::ellipse_points(shape.nostril(side), [0.05, 0.022], side * 0.25, 20);
            canvas.paint_solid(&Mask::polygon(&m(&nostril), w, h), 0.85, scale_rgb(skin, 0.3));
        }
        let outline = m(&shape.nose_outline());
        canvas.paint_solid(&Mask::stroke(&outline, (0.025 * s).max(1.0), w, h), 0.75, scale_rgb(skin, 0.5));
    }
    // Mouth: lips, dark interior when open, lip line.
    {
        let mut lip_poly = FaceShape::dense(|t| shape.lip_outer_upper(t), 30);
        lip_poly.extend(FaceShape::dense(|t| shape.lip_outer_lower(t), 30).into_iter().rev());
        canvas.paint_solid(&Mask::polygon(&m(&lip_poly), w, h), 0.95, lips);
        if shape.mouth_open > 0.005 {
            let mut inner = FaceShape::dense(|t| shape.lip_inner_upper(t), 24);
            inner.extend(FaceShape::dense(|t| shape.lip_inner_lower(t), 24).into_iter().rev());
            let inner_mask = Mask::polygon(&m(&inner), w, h);
            canvas.paint_solid(&inner_mask, 1.0, [55.0, 18.0, 22.0]);
            // Upper teeth: a light band just under the upper inner lip.
            let mut teeth = FaceShape::dense(|t| shape.lip_inner_upper(t), 16);
            teeth.extend(
                FaceShape::dense(|t| shape.lip_inner_upper(t), 16)
                    .into_iter()
                    .rev()
                    .map(|p| [p[0], p[1] + 0.35 * shape.mouth_open]),
            );
            canvas.paint_solid(&Mask::polygon(&m(&teeth), w, h).intersect(&inner_mask), 0.9, [225.0, 220.0, 205.0]);
        }
        let mut line = vec![shape.lip_outer_upper(0.0)];
        line.extend(FaceShape::dense(|t| shape.lip_inner_upper(t), 24));
        line.push(shape.lip_outer_upper(1.0));
        canvas.paint_solid(&Mask::stroke(&m(&line), (0.025 * s).max(1.0), w, h), 0.85, scale_rgb(lips, 0.45));
    }
    // Occluder: a rectangle over some part of the face (hand, object, ...).
    if rng.chance_f32(0.15) {
        let anchors = [
            shape.pupil(IMAGE_LEFT),
            shape.pupil(IMAGE_RIGHT),
            [0.0, shape.mouth_y],
            [0.0, shape.nose_tip_y],
            shape.jaw(0.2),
            shape.jaw(0.8),
        ];
        let anchor = *rng.pick_f32(&anchors);
        let c = pose.map(shape, [anchor[0] + rng.range_f32(-0.2, 0.2), anchor[1] + rng.range_f32(-0.2, 0.2)]);
        let half = [s * rng.range_f32(0.2, 0.5), s * rng.range_f32(0.15, 0.4)];
        let col = if rng.chance_f32(0.4) { scale_rgb(skin, rng.range_f32(0.8, 1.05)) } else { random_color(rng) };
        canvas.paint_solid(&Mask::polygon(&rect_points(c, half, rng.range_f32(0.0, 3.2)), w, h), 1.0, col);
        return true;
    }
    false
}

/// Global lighting gradient, exposure, occasional defocus and sensor noise.
fn finish_image(canvas: &mut Canvas, rng: &mut Rng) {
    let (w, h) = (canvas.width, canvas.height);
    if rng.chance_f32(0.2) {
        canvas.box_blur3();
        if rng.chance_f32(0.4) {
            canvas.box_blur3();
        }
    }
    let a = rng.range_f32(0.0, std::f32::consts::TAU);
    let strength = rng.range_f32(0.0, 0.6);
    let exposure = rng.range_f32(0.75, 1.15);
    let (s, c) = a.sin_cos();
    let noise = if rng.chance_f32(0.7) { rng.range_f32(1.0, 8.0) } else { 0.0 };
    for y in 0..h {
        for x in 0..w {
            let d = ((x as f32 - w as f32 / 2.0) * c + (y as f32 - h as f32 / 2.0) * s) / w as f32;
            let f = exposure * (1.0 + strength * d);
            let o = (y * w + x) * 3;
            for ch in 0..3 {
                let n = if noise > 0.0 { noise * rng.normal_f32() } else { 0.0 };
                canvas.rgb[o + ch] = canvas.rgb[o + ch] * f + n;
            }
        }
    }
}

/// A copy of the sample enlarged `zoom`× with its landmarks drawn as coloured dots (jaw red,
/// brows orange, nose yellow, eyes green, mouth cyan, pupils magenta), for looking at.
pub fn draw_landmarks(sample: &SynthSample, zoom: usize) -> Vec<u8> {
    let zoom = zoom.max(1);
    let (w, h) = (sample.width * zoom, sample.height * zoom);
    let mut out = vec![0u8; w * h * 3];
    for y in 0..h {
        for x in 0..w {
            let src = ((y / zoom) * sample.width + x / zoom) * 3;
            out[(y * w + x) * 3..(y * w + x) * 3 + 3].copy_from_slice(&sample.rgb[src..src + 3]);
        }
    }
    let joints = sample.landmarks.len();
    for (i, p) in sample.landmarks.iter().enumerate() {
        let color: [u8; 3] = match (joints, i) {
            (68, 0..=16) | (98, 0..=32) => [255, 0, 0],
            (68, 17..=26) | (98, 33..=50) => [255, 140, 0],
            (68, 27..=35) | (98, 51..=59) => [255, 255, 0],
            (68, 36..=47) | (98, 60..=75) => [0, 255, 0],
            (98, 96..=97) => [255, 0, 255],
            _ => [0, 255, 255],
        };
        let (cx, cy) = (p[0] * zoom as f32, p[1] * zoom as f32);
        for dy in -2i32..=2 {
            for dx in -2i32..=2 {
                if dx * dx + dy * dy > 5 {
                    continue;
                }
                let (x, y) = (cx.floor() as i32 + dx, cy.floor() as i32 + dy);
                if x >= 0 && y >= 0 && (x as usize) < w && (y as usize) < h {
                    let o = (y as usize * w + x as usize) * 3;
                    out[o..o + 3].copy_from_slice(&color);
                }
            }
        }
    }
    out
}
