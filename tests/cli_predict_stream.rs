//! `hrk predict --stdin-frames` (issue 26): raw rgb24/gray frames of a synthetic face moving along a
//! known path, piped on stdin to a tiny random-init model: one JSONL line per frame in order with
//! the photo JSON's face fields plus `id`, the CSV's rows, the detector (here given boxes or the
//! whole frame) run on the frames it should, a truncated last frame kept out with a one-line error
//! and exit 1. How well tracking follows a face: src/predict/track.rs's tests (landmarks known), and
//! here with the trained demo model where output/ holds it (MTCNN finds the face).

mod common;

use common::model::one_face_tiny_model;
use common::{assert_cli_error, assert_cli_ok, hrk_cmd, s, scratch, Scratch};
use std::collections::BTreeSet;
use std::io::Write;
use std::path::PathBuf;
use std::process::{Output, Stdio};

const W: usize = 320;
const H: usize = 256;
const FRAMES: usize = 12;

struct Setup {
    dir: Scratch,
    cfg: PathBuf,
    weights: PathBuf,
    /// The frames, rgb24, back to back.
    frames: Vec<u8>,
}

fn setup(name: &str) -> Setup {
    let dir = scratch(&format!("predict-stream-{name}"));
    let (cfg, weights) = one_face_tiny_model(&dir);
    let face = image::open(dir.join("images/s68_000000.jpg")).unwrap().to_rgb8();
    // The 256² face moves right 4 px a frame on a grey 320×256 canvas.
    let mut frames = Vec::with_capacity(FRAMES * W * H * 3);
    for i in 0..FRAMES {
        let mut canvas = image::RgbImage::from_pixel(W as u32, H as u32, image::Rgb([90, 90, 90]));
        image::imageops::overlay(&mut canvas, &face, 4 * i as i64, 0);
        frames.extend_from_slice(canvas.as_raw());
    }
    Setup { dir, cfg, weights, frames }
}

impl Setup {
    fn predict(&self, stdin: &[u8], rest: &[&str]) -> Output {
        let mut child = common::spawn_predict(&self.dir, &self.cfg, &self.weights, rest);
        let mut pipe = child.stdin.take().unwrap();
        // hrk may stop reading early on an error: a broken pipe is its answer, not the test's.
        let _ = pipe.write_all(stdin);
        drop(pipe);
        child.wait_with_output().unwrap()
    }

    fn lines(&self) -> Vec<serde_json::Value> {
        let text = std::fs::read_to_string(self.dir.join("out/stdin.jsonl")).unwrap();
        assert!(text.is_empty() || text.ends_with('\n'), "whole lines only");
        text.lines().map(|l| serde_json::from_str(l).unwrap()).collect()
    }
}

fn stdout_last(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).lines().last().unwrap_or("").to_string()
}

/// One JSONL line per frame, in order, with the photo JSON's face fields plus `id`.
fn check_lines(lines: &[serde_json::Value], fps: f64) -> usize {
    let mut faces = 0;
    for (i, line) in lines.iter().enumerate() {
        let keys: BTreeSet<&str> = line.as_object().unwrap().keys().map(String::as_str).collect();
        assert_eq!(keys, BTreeSet::from(["frame", "time", "faces"]), "{line}");
        assert_eq!(line["frame"].as_u64().unwrap() as usize, i);
        assert!((line["time"].as_f64().unwrap() - i as f64 / fps).abs() < 1e-9, "{line}");
        for face in line["faces"].as_array().unwrap() {
            let keys: BTreeSet<&str> = face.as_object().unwrap().keys().map(String::as_str).collect();
            assert_eq!(keys, BTreeSet::from(["id", "box", "score", "landmarks", "landmark_scores", "pose"]), "{face}");
            // Null where the (random-init) model's landmarks determine no pose.
            if let Some(pose) = face["pose"].as_object() {
                assert!(["yaw", "pitch", "roll"].iter().all(|k| pose[*k].is_f64()), "{face}");
            }
            assert!(face["id"].is_u64(), "{face}");
            assert_eq!(face["landmarks"].as_array().unwrap().len(), 68);
            faces += 1;
        }
    }
    faces
}

#[test]
fn stdin_frames_give_one_line_per_frame_and_a_csv_row_per_face() {
    let st = setup("lines");
    // A box on the face: the detector's stand-in on frames 0 and 5, 10 (and after a lost track).
    let o = st.predict(&st.frames, &["--stdin-frames", "320x256", "--fps", "25", "--box", "40,40,220,230"]);
    assert_cli_ok(&o);
    let lines = st.lines();
    assert_eq!(lines.len(), FRAMES);
    let faces = check_lines(&lines, 25.0);
    let last = stdout_last(&o);
    assert!(last.starts_with(&format!("{FRAMES} frames, {faces} faces, 0 failed, detector on ")), "{last}");
    let csv = std::fs::read_to_string(st.dir.join("out/stdin.csv")).unwrap();
    let mut rows = csv.lines();
    let head = rows.next().unwrap();
    assert!(head.starts_with("frame,time,id,box_x1,box_y1,box_x2,box_y2,original_0_x,original_0_y,"), "{head}");
    assert!(head.ends_with(",original_67_y,yaw,pitch,roll"), "{head}");
    assert_eq!(head.split(',').count(), 7 + 2 * 68 + 3);
    let rows: Vec<&str> = rows.collect();
    assert_eq!(rows.len(), faces);
    assert!(rows.iter().all(|r| r.split(',').count() == 7 + 2 * 68 + 3));
    // Frame 0 holds the given box and its face starts track 0.
    assert_eq!(lines[0]["faces"][0]["id"], 0);
    assert_eq!(lines[0]["faces"][0]["box"], serde_json::json!([40.0, 40.0, 220.0, 230.0]));
}

#[test]
fn the_detector_runs_every_redetect_frames_or_on_every_frame_for_the_whole_image() {
    let st = setup("redetect");
    let detections = |o: &Output| -> usize {
        assert_cli_ok(o);
        let last = stdout_last(o);
        last.rsplit("detector on ").next().unwrap().trim_end_matches(" frames").parse().unwrap()
    };
    let every = st.predict(
        &st.frames,
        &["--stdin-frames", "320x256:rgb24", "--fps", "30", "--box", "40,40,220,230", "--redetect", "1"],
    );
    assert_eq!(detections(&every), FRAMES);
    let whole = st.predict(
        &st.frames,
        &["--stdin-frames", "320x256", "--fps", "30", "--detector", "none", "--aligned", "56", "--aligned-every", "5"],
    );
    assert_eq!(detections(&whole), FRAMES, "the whole frame has nothing to track");
    assert_eq!(check_lines(&st.lines(), 30.0), FRAMES, "one face per frame");
    // Aligned crops of frames 0, 5 and 10, one face each, in stdin_faces/<id>/<frame>.png.
    let mut crops = Vec::new();
    for id in std::fs::read_dir(st.dir.join("out/stdin_faces")).unwrap().flatten() {
        for f in std::fs::read_dir(id.path()).unwrap().flatten() {
            let img = image::open(f.path()).unwrap();
            assert_eq!((img.width(), img.height()), (56, 56));
            crops.push(f.file_name().to_string_lossy().into_owned());
        }
    }
    crops.sort();
    assert_eq!(crops, ["000000.png", "000005.png", "000010.png"]);
    // Grey frames: one byte per pixel.
    let grey: Vec<u8> = st.frames.chunks_exact(3).map(|p| p[1]).collect();
    let o =
        st.predict(&grey, &["--stdin-frames", "320x256:gray", "--fps", "30", "--detector", "none", "--smooth", "none"]);
    assert_eq!(detections(&o), FRAMES);
}

#[test]
fn a_truncated_last_frame_keeps_the_frames_before_it_and_fails_in_one_line() {
    let st = setup("truncated");
    let short = &st.frames[..5 * W * H * 3 + 1000];
    let o = st.predict(short, &["--stdin-frames", "320x256", "--fps", "25", "--detector", "none", "-q"]);
    assert_cli_error(&o, &["stdin: frame 5 is truncated: 1000 of 245760 bytes", "5 frames"]);
    assert_eq!(check_lines(&st.lines(), 25.0), 5);
    let csv = std::fs::read_to_string(st.dir.join("out/stdin.csv")).unwrap();
    assert_eq!(csv.lines().count(), 1 + 5);
}

/// With the demo model trained (README's first command writes it to output/, else this skips): a
/// synthetic face moving 3 px a frame right and along a vertical wave, found by MTCNN, is tracked
/// with one id, the detector runs on frames 0, 10, 20 only, and the landmarks stay within a few
/// pixels of the face's own (measured: 2.1 px mean).
#[test]
fn a_face_moving_on_stdin_is_tracked_by_the_demo_model() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let model = "output/300W/synthetic_hrnet_tiny/final_state.safetensors";
    let Some(weights) = common::existing_or_skip(root.join(model), "trained demo model") else { return };
    let dir = scratch("predict-stream-demo");
    let (face, points) = common::model::synthetic_face(&dir);
    let (w, h, n) = (400usize, 300usize, 30usize);
    let mut frames = Vec::new();
    let mut truth = Vec::new();
    for i in 0..n {
        let (dx, dy) = (3 * i as i64, 20 + (10.0 * (i as f64 / 8.0).sin()) as i64);
        let mut canvas = image::RgbImage::from_pixel(w as u32, h as u32, image::Rgb([90, 90, 90]));
        image::imageops::overlay(&mut canvas, &face, dx, dy);
        frames.extend_from_slice(canvas.as_raw());
        truth.push(points.iter().map(|p| [p[0] + dx as f64, p[1] + dy as f64]).collect::<Vec<_>>());
    }
    let mut child = hrk_cmd()
        .current_dir(&*dir)
        .args(["predict", "--cfg", s(&root.join("experiments/synthetic/synthetic_hrnet_tiny.yaml"))])
        .args(["--model-file", s(&weights), "--out", "out", "--stdin-frames", "400x300", "--fps", "30"])
        .args(["--redetect", "10", "--smooth", "none"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(&frames).unwrap();
    let o = child.wait_with_output().unwrap();
    assert_cli_ok(&o);
    assert_eq!(stdout_last(&o), format!("{n} frames, {n} faces, 0 failed, detector on 3 frames"));
    let text = std::fs::read_to_string(dir.join("out/stdin.jsonl")).unwrap();
    for (i, line) in text.lines().enumerate() {
        let line: serde_json::Value = serde_json::from_str(line).unwrap();
        let face = &line["faces"][0];
        assert_eq!(face["id"], 0, "frame {i}");
        // Scores null on tracked frames (no detector ran), a probability on detection frames.
        assert_eq!(face["score"].is_null(), i % 10 != 0, "frame {i}");
        let got = face["landmarks"].as_array().unwrap();
        let err: f64 = got
            .iter()
            .zip(&truth[i])
            .map(|(g, t)| (g[0].as_f64().unwrap() - t[0]).hypot(g[1].as_f64().unwrap() - t[1]))
            .sum::<f64>()
            / 68.0;
        assert!(err < 4.0, "frame {i}: landmarks {err:.2} px off the face's on average");
    }
}

#[test]
fn photos_get_one_aligned_crop_per_face() {
    let st = setup("aligned");
    let o = hrk_cmd()
        .current_dir(&*st.dir)
        .args(["predict", "--cfg", s(&st.cfg), "--model-file", s(&st.weights), "--out", "out"])
        .args(["images/s68_000000.jpg", "--detector", "none", "--aligned", "64"])
        .output()
        .unwrap();
    assert_cli_ok(&o);
    let img = image::open(st.dir.join("out/s68_000000_face0.png")).unwrap();
    assert_eq!((img.width(), img.height()), (64, 64));
    assert!(!st.dir.join("out/s68_000000_face1.png").exists());
}

#[test]
fn stream_flags_are_checked() {
    let st = setup("flags");
    let bad = |rest: &[&str], needle: &str| {
        let o = st.predict(&[], rest);
        assert_cli_error(&o, &[needle]);
    };
    bad(&["--stdin-frames", "320x256"], "--fps");
    bad(&["--stdin-frames", "320", "--fps", "25"], "--stdin-frames '320'");
    bad(&["--stdin-frames", "320x256", "--fps", "0"], "--fps 0");
    bad(&["--stdin-frames", "320x256", "--fps", "25", "--smooth", "1"], "--smooth '1'");
    bad(&["--stdin-frames", "320x256", "--fps", "25", "--redetect", "0"], "--redetect 0");
    bad(&["--stdin-frames", "320x256", "--fps", "25", "x.jpg"], "--stdin-frames reads frames from stdin alone");
    bad(&["--stdin-frames", "320x256", "--fps", "25", "--aligned", "8"], "--aligned 8");
    bad(&["--stdin-frames", "320x256", "--fps", "25", "--aligned-every", "0"], "--aligned-every 0");
}
