//! `hrk predict` on synthetic images with a tiny random-init model: per-image JSON / run CSV /
//! overlay PNGs with the right number of points inside the image, for the whole image, --box and
//! a dataset CSV; and the one-line errors (missing / mismatched model file, missing image, bad
//! --box, a file that is not an image). Detector, folders, shards, --boxes: cli_predict_faces.rs.

mod common;

use common::model::{tiny_config, write_tiny_model};
use common::{assert_cli_error, assert_cli_ok, hrk_model, s, scratch, Scratch};
use std::path::{Path, PathBuf};

struct Setup {
    dir: Scratch,
    cfg: PathBuf,
    weights: PathBuf,
    images: Vec<PathBuf>,
}

impl Setup {
    /// Runs `hrk <cmd> --cfg … --model-file … <rest…>` with this setup's model.
    fn hrk(&self, cmd: &str, rest: &[&str]) -> std::process::Output {
        hrk_model(cmd, &self.cfg, &self.weights, rest)
    }
}

fn setup(name: &str) -> Setup {
    let dir = scratch(&format!("predict-{name}"));
    hrk::synth::generate(&dir, 68, 5, 11).unwrap();
    let (cfg, weights) = write_tiny_model(&dir, &tiny_config(&dir, 68, 64, 16, hrk::synth::TEST_CSV), 3);
    let images = (0..2).map(|i| dir.join(format!("images/s68_{i:06}.jpg"))).collect();
    Setup { dir, cfg, weights, images }
}

fn read_json(p: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))).unwrap()
}

/// Checks `<name>.json` / `<name>_landmarks.png` in `out` for each of `names` (one face of 68
/// points inside the image each) and the run's CSV; returns the JSON documents.
fn check_outputs(out: &Path, names: &[&str]) -> Vec<serde_json::Value> {
    let mut docs = Vec::new();
    for name in names {
        let doc = read_json(&out.join(format!("{name}.json")));
        let (w, h) = (doc["width"].as_f64().unwrap(), doc["height"].as_f64().unwrap());
        let faces = doc["faces"].as_array().unwrap();
        assert_eq!(faces.len(), 1, "{name}: {doc}");
        let pts = faces[0]["landmarks"].as_array().unwrap();
        assert_eq!(pts.len(), 68);
        for p in pts {
            let (x, y) = (p[0].as_f64().unwrap(), p[1].as_f64().unwrap());
            assert!((0.0..=w).contains(&x) && (0.0..=h).contains(&y), "point ({x}, {y}) outside {w}x{h}");
        }
        let img = image::open(out.join(format!("{name}_landmarks.png"))).unwrap().to_rgb8();
        assert_eq!((img.width() as f64, img.height() as f64), (w, h));
        // The overlay has the point colour where the first landmark is.
        let (x, y) = (pts[0][0].as_f64().unwrap() as u32, pts[0][1].as_f64().unwrap() as u32);
        assert_eq!(img.get_pixel(x.min(img.width() - 1), y.min(img.height() - 1)).0, [0, 255, 0]);
        docs.push(doc);
    }
    let csv = std::fs::read_to_string(out.join("predictions.csv")).unwrap();
    assert_eq!(csv.lines().count(), names.len() + 1);
    assert!(csv.lines().all(|l| l.split(',').count() == 4 + 2 * 68));
    docs
}

/// The CSV's rows as (image, annotation scale, center).
fn csv_rows(out: &Path, file: &str) -> Vec<(String, f64, [f64; 2])> {
    let csv = std::fs::read_to_string(out.join(file)).unwrap();
    csv.lines()
        .skip(1)
        .map(|l| {
            let f: Vec<&str> = l.split(',').collect();
            (f[0].to_string(), f[1].parse().unwrap(), [f[2].parse().unwrap(), f[3].parse().unwrap()])
        })
        .collect()
}

#[test]
fn predict_writes_points_inside_the_image() {
    let st = setup("ok");
    let out = st.dir.join("whole");
    let o = st.hrk("predict", &[s(&st.images[0]), s(&st.images[1]), "--detector", "none", "--out", s(&out)]);
    assert_cli_ok(&o);
    assert_eq!(String::from_utf8_lossy(&o.stdout).lines().last(), Some("2 images, 2 faces, 0 failed"));
    let docs = check_outputs(&out, &["s68_000000", "s68_000001"]);
    // Whole image: center = image center, crop scale = side / 200 (no enlargement), box = the image.
    let rows = csv_rows(&out, "predictions.csv");
    assert_eq!(rows[0].2, [128.0, 128.0]);
    assert!((rows[0].1 * 1.25 - 256.0 / 200.0).abs() < 1e-12);
    assert_eq!(docs[0]["faces"][0]["box"], serde_json::json!([0.0, 0.0, 256.0, 256.0]));
    assert_eq!(docs[0]["image"].as_str().unwrap(), s(&st.images[0]));

    let out = st.dir.join("boxed");
    assert_cli_ok(&st.hrk("predict", &[s(&st.images[0]), "--box", "48,40,208,200", "--labels", "--out", s(&out)]));
    let doc = &check_outputs(&out, &["s68_000000"])[0];
    let rows = csv_rows(&out, "predictions.csv");
    assert_eq!(rows[0].2, [128.0, 120.0]);
    assert_eq!(rows[0].1, 160.0 / 200.0);
    let face = &doc["faces"][0];
    assert_eq!(face["box"], serde_json::json!([48.0, 40.0, 208.0, 200.0]));
    assert!(face["score"].is_null());
    // The crop (box × 1.25 around its center) bounds the points.
    for p in face["landmarks"].as_array().unwrap() {
        let (x, y) = (p[0].as_f64().unwrap(), p[1].as_f64().unwrap());
        assert!((28.0..=229.0).contains(&x) && (20.0..=221.0).contains(&y), "({x}, {y}) outside the crop");
    }

    // A dataset CSV: the test-time pipeline, one entry per row.
    let out = st.dir.join("csv");
    let csv = st.dir.join(hrk::synth::TRAIN_CSV);
    assert_cli_ok(&st.hrk("predict", &["--csv", s(&csv), "--out", s(&out)]));
    let names: Vec<String> = csv_rows(&st.dir, hrk::synth::TRAIN_CSV)
        .iter()
        .map(|r| Path::new(&r.0).file_stem().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names.len(), 4);
    check_outputs(&out, &names.iter().map(String::as_str).collect::<Vec<_>>());
}

#[test]
fn predict_and_test_errors_are_one_line() {
    let st = setup("errors");
    let img = s(&st.images[0]);
    let missing = st.dir.join("nope.safetensors");
    let o = hrk_model("predict", &st.cfg, &missing, &[img]);
    assert_cli_error(&o, &["nope.safetensors"]);
    let o = hrk_model("test", &st.cfg, &missing, &[]);
    assert_cli_error(&o, &["nope.safetensors"]);

    // Weights of a 5-landmark model: the head tensor's shape does not fit.
    let cfg5 = st.dir.join("five.yaml");
    std::fs::write(&cfg5, tiny_config(&st.dir, 5, 64, 16, hrk::synth::TEST_CSV)).unwrap();
    let net5 = hrk::cli::common::model(&hrk::config::Config::load(&cfg5).unwrap(), 1).unwrap();
    let w5 = st.dir.join("five.safetensors");
    hrk::io::safetensors::save_safetensors(&w5, &net5.store.state_dict(), &[]).unwrap();
    let o = hrk_model("predict", &st.cfg, &w5, &[img]);
    assert_cli_error(&o, &["five.safetensors", "head.3"]);
    let o = hrk_model("test", &st.cfg, &w5, &[]);
    assert_cli_error(&o, &["five.safetensors", "head.3"]);

    let o = st.hrk("predict", &[s(&st.dir.join("missing.jpg"))]);
    assert_cli_error(&o, &["missing.jpg"]);
    let o = st.hrk("predict", &[img, "--box", "10,10,5,50"]);
    assert_cli_error(&o, &["--box", "10,10,5,50"]);
    let o = st.hrk("predict", &[img, "--box", "1,2,3"]);
    assert_cli_error(&o, &["--box"]);
    let o = st.hrk("test", &["--testset", s(&st.dir.join("none.csv"))]);
    assert_cli_error(&o, &["none.csv"]);
    // A file that is not an image: reported by name, then the summary as the last line.
    let bogus = st.dir.join("bogus.jpg");
    std::fs::write(&bogus, b"not an image").unwrap();
    let o = st.hrk("predict", &[s(&bogus), "--detector", "none", "--out", s(&st.dir.join("bogus"))]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 2, "{err}");
    assert!(lines[0].contains("bogus.jpg") && !err.contains("panicked"), "{err}");
    assert_eq!(lines[1], "hrk: error: 1 images, 0 faces, 1 failed");
}

#[test]
fn overlay_marks_the_given_points() {
    let dir = scratch("predict-overlay");
    let sample = hrk::synth::render_sample(68, 4, 0).unwrap();
    let img = hrk::data::image::Image {
        width: sample.width,
        height: sample.height,
        data: sample.rgb.iter().map(|&v| v as f32).collect(),
    };
    let png = dir.join("gt.png");
    hrk::draw::save_overlay(&png, &img, &sample.landmarks, true).unwrap();
    let out = image::open(&png).unwrap().to_rgb8();
    assert_eq!((out.width() as usize, out.height() as usize), (sample.width, sample.height));
    // Labels of neighbouring points may cover a dot; most dots stay visible.
    let visible = sample
        .landmarks
        .iter()
        .filter(|p| out.get_pixel(p[0].floor() as u32, p[1].floor() as u32).0 == [0, 255, 0])
        .count();
    assert!(visible >= 68 / 2, "{visible} of 68 dots visible");
    assert!(out.pixels().any(|p| p.0 == [255, 255, 0]), "index labels drawn");
}
