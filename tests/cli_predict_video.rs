//! Video files as input (issue 26, the `video` feature): small videos made at test time with PyAV
//! (tests/python/videos.py: libx264 High profile with B-frames in .mp4/.mov/.mkv, Motion-JPEG .avi,
//! a phone's rotation, a truncated copy, a corrupted packet) are decoded by hrk exactly as PyAV
//! decodes them (frames, order, times, pixels), and `hrk predict clip.mp4` writes one JSONL line per
//! frame, with --start/--end, the truncated and the corrupt files' errors, and a real face moving
//! along a known path tracked by the demo model.
#![cfg(feature = "video")]

mod common;

use common::model::one_face_tiny_model;
use common::{assert_cli_error, assert_cli_ok, hrk_cmd, python_with, s, scratch, Scratch};
use hrk::video::decode::{Decoded, VideoDecoder};
use hrk::video::TimeRange;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

const FRAMES: usize = 24;
const FPS: f64 = 25.0;

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/videos.py")
}

/// A python with PyAV and numpy (HRK_PYTHON set: a failure if it lacks them, not a skip).
fn pyav() -> Option<PathBuf> {
    python_with("av, numpy")
}

fn run_python(python: &Path, args: &[&str]) {
    let o = Command::new(python).arg(script()).args(args).output().unwrap();
    assert!(o.status.success(), "videos.py {args:?}: {}", String::from_utf8_lossy(&o.stderr));
}

/// The fixture set, made once per test binary.
fn fixtures() -> Option<&'static Path> {
    static DIR: OnceLock<Option<Scratch>> = OnceLock::new();
    DIR.get_or_init(|| {
        let python = pyav()?;
        let dir = scratch("predict-video-fixtures");
        run_python(&python, &["make", s(&dir)]);
        Some(dir)
    })
    .as_ref()
    .map(|d| d.path())
}

/// PyAV's decode of `file`: frame size, times, rgb24 frames.
struct Reference {
    width: usize,
    height: usize,
    times: Vec<f64>,
    frames: Vec<Vec<u8>>,
}

fn reference(file: &Path) -> Reference {
    let python = pyav().unwrap();
    // A name per call: tests run in parallel on the same files.
    static CALLS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let call = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let out = file.with_extension(format!("{call}"));
    run_python(&python, &["decode", s(file), s(&out)]);
    let info: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.with_extension(format!("{call}.json"))).unwrap()).unwrap();
    let (width, height) = (info["width"].as_u64().unwrap() as usize, info["height"].as_u64().unwrap() as usize);
    let times: Vec<f64> = info["times"].as_array().unwrap().iter().map(|t| t.as_f64().unwrap()).collect();
    let raw = std::fs::read(out.with_extension(format!("{call}.rgb"))).unwrap();
    let frames = raw.chunks_exact(width * height * 3).map(<[u8]>::to_vec).collect();
    Reference { width, height, times, frames }
}

/// A frame as hrk decodes it: index, time, width, height, rgb24.
type GotFrame = (usize, f64, usize, usize, Vec<u8>);

/// hrk's frames of `file`, its skipped frames ("index: error"), and the error that ended it, if any.
fn decode(file: &Path, range: TimeRange) -> (Vec<GotFrame>, Vec<String>, Option<String>) {
    let mut d = VideoDecoder::open(file, range).unwrap();
    let (mut frames, mut skipped) = (Vec::new(), Vec::new());
    loop {
        match d.next_frame() {
            Ok(Some(Decoded::Frame(f))) => frames.push((f.index, f.time, f.rgb.width, f.rgb.height, f.rgb.data)),
            Ok(Some(Decoded::Skipped { index, error })) => skipped.push(format!("{index}: {error:#}")),
            Ok(None) => return (frames, skipped, None),
            Err(e) => return (frames, skipped, Some(format!("{e:#}"))),
        }
    }
}

/// The largest difference of one channel value, and how many values differ.
fn difference(a: &[u8], b: &[u8]) -> (u8, usize) {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).fold((0, 0), |(m, n), (x, y)| (m.max(x.abs_diff(*y)), n + usize::from(x != y)))
}

/// Frames, display order, times and pixels as PyAV (FFmpeg's own conversion, BT.601 limited range
/// for H.264, full range for Motion-JPEG's yuvj) gives them.
#[test]
fn decoded_frames_equal_pyavs() {
    let Some(dir) = fixtures() else { return };
    let info: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("h264.json")).unwrap()).unwrap();
    assert_eq!(info["profile"], "High");
    assert_eq!(info["has_b_frames"], true);
    for name in ["h264.mp4", "h264.mov", "h264.mkv", "mjpeg.avi"] {
        let file = dir.join(name);
        let want = reference(&file);
        let (got, skipped, error) = decode(&file, TimeRange::all());
        assert_eq!((skipped.len(), error), (0, None), "{name}");
        assert_eq!(got.len(), FRAMES, "{name}");
        assert_eq!(want.times.len(), FRAMES, "{name}");
        let d = VideoDecoder::open(&file, TimeRange::all()).unwrap();
        assert_eq!((d.info().width, d.info().height, d.info().rotation), (want.width, want.height, 0), "{name}");
        assert!((d.info().fps - FPS).abs() < 1e-9, "{name}: {} fps", d.info().fps);
        for (k, (index, time, w, h, rgb)) in got.iter().enumerate() {
            assert_eq!((*index, *w, *h), (k, want.width, want.height), "{name} frame {k}");
            assert!((time - want.times[k]).abs() < 1e-9, "{name} frame {k}: time {time} != {}", want.times[k]);
            assert!((time - k as f64 / FPS).abs() < 1e-6, "{name} frame {k}: time {time}");
            let (max, count) = difference(rgb, &want.frames[k]);
            assert_eq!((max, count), (0, 0), "{name} frame {k}: pixels differ from PyAV's");
        }
    }
}

/// `rgb` (w × h) turned 90 degrees clockwise, pixel by pixel: the stored frame's left column
/// becomes the displayed top row, read bottom to top.
fn turned_clockwise(rgb: &[u8], w: usize, h: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(rgb.len());
    for col in 0..w {
        for row in (0..h).rev() {
            out.extend_from_slice(&rgb[(row * w + col) * 3..][..3]);
        }
    }
    out
}

/// A phone's display matrix (90 degrees) gives upright frames: the size turned, the pixels
/// PyAV's (stored) frames turned clockwise, as `ffmpeg`'s autorotate shows them.
#[test]
fn rotation_metadata_turns_the_frames() {
    let Some(dir) = fixtures() else { return };
    let want = reference(&dir.join("h264.mp4"));
    let d = VideoDecoder::open(&dir.join("rotated.mp4"), TimeRange::all()).unwrap();
    assert_eq!((d.info().width, d.info().height, d.info().rotation), (want.height, want.width, 90));
    let (got, skipped, error) = decode(&dir.join("rotated.mp4"), TimeRange::all());
    assert_eq!((got.len(), skipped.len(), error), (FRAMES, 0, None));
    for (k, (_, _, w, h, rgb)) in got.iter().enumerate() {
        assert_eq!((*w, *h), (want.height, want.width));
        assert!(*rgb == turned_clockwise(&want.frames[k], want.width, want.height), "frame {k}");
    }
}

/// --start 0.3 --end 0.6 at 25 fps: the frames at 0.32 … 0.56 s (file frames 8 to 14), numbered
/// from 0, with their file times, after a seek (Motion-JPEG: every frame a keyframe) or decoding
/// from the one keyframe (H.264, a keyframe every 250 frames).
#[test]
fn start_and_end_select_the_frames_between() {
    let Some(dir) = fixtures() else { return };
    for name in ["h264.mp4", "mjpeg.avi"] {
        let want = reference(&dir.join(name));
        let range = TimeRange::new(Some(0.3), Some(0.6)).unwrap();
        let (got, skipped, error) = decode(&dir.join(name), range);
        assert_eq!((skipped.len(), error), (0, None), "{name}");
        let picked: Vec<usize> = (0..FRAMES).filter(|&k| (0.3..0.6).contains(&(k as f64 / FPS))).collect();
        assert_eq!(picked, (8..15).collect::<Vec<_>>());
        assert_eq!(got.len(), picked.len(), "{name}");
        for ((index, time, _, _, rgb), (i, &k)) in got.iter().zip(picked.iter().enumerate()) {
            assert_eq!(*index, i, "{name}");
            assert!((time - want.times[k]).abs() < 1e-9, "{name}: time {time} for file frame {k}");
            assert!(*rgb == want.frames[k], "{name}: file frame {k}");
        }
    }
    // A start past the end: no frames, no error.
    let (got, _, error) = decode(&dir.join("h264.mp4"), TimeRange::new(Some(5.0), None).unwrap());
    assert_eq!((got.len(), error), (0, None));
}

/// A file cut at 60 %: the frames before the cut, as PyAV decodes them from the whole file, then
/// one error line naming the file.
#[test]
fn a_truncated_file_gives_its_frames_then_one_error() {
    let Some(dir) = fixtures() else { return };
    let want = reference(&dir.join("front.mp4"));
    let (got, skipped, error) = decode(&dir.join("truncated.mp4"), TimeRange::all());
    assert!(skipped.is_empty(), "{skipped:?}");
    assert!(got.len() > 3 && got.len() < FRAMES, "{} frames", got.len());
    for (k, (index, _, _, _, rgb)) in got.iter().enumerate() {
        assert_eq!(*index, k);
        assert!(*rgb == want.frames[k], "frame {k}");
    }
    let error = error.expect("an error for the cut file");
    common::assert_one_line(&error, &["truncated.mp4: the file is truncated: it ends after ", "of the 24 frames"]);
}

/// A packet the decoder rejects (frame 5 of a Motion-JPEG AVI, its bytes zeroed) is reported with
/// its index and skipped; the frames after it keep their indices and pixels.
#[test]
fn a_corrupt_frame_is_skipped_by_index() {
    let Some(dir) = fixtures() else { return };
    let want = reference(&dir.join("mjpeg.avi"));
    let (got, skipped, error) = decode(&dir.join("corrupt.avi"), TimeRange::all());
    assert_eq!(error, None);
    assert_eq!(skipped.len(), 1, "{skipped:?}");
    assert!(
        skipped[0].starts_with("5: ") && skipped[0].contains("corrupt.avi: frame 5 cannot be decoded"),
        "{skipped:?}"
    );
    let indices: Vec<usize> = got.iter().map(|f| f.0).collect();
    assert_eq!(indices, (0..FRAMES).filter(|&k| k != 5).collect::<Vec<_>>());
    for (index, time, _, _, rgb) in &got {
        assert!(*rgb == want.frames[*index], "frame {index}");
        assert!((time - want.times[*index]).abs() < 1e-9, "frame {index}");
    }
}

// ---- hrk predict on video files -------------------------------------------------------------------

struct Setup {
    dir: Scratch,
    cfg: PathBuf,
    weights: PathBuf,
}

fn setup(name: &str) -> Setup {
    let dir = scratch(&format!("predict-video-{name}"));
    let (cfg, weights) = one_face_tiny_model(&dir);
    Setup { dir, cfg, weights }
}

impl Setup {
    fn predict(&self, rest: &[&str]) -> Output {
        hrk_cmd()
            .current_dir(&*self.dir)
            .args(["predict", "--cfg", s(&self.cfg), "--model-file", s(&self.weights), "--out", "out"])
            .args(rest)
            .env_remove("HRK_DEVICE_EMU")
            .output()
            .unwrap()
    }

    fn lines(&self, stem: &str) -> Vec<serde_json::Value> {
        let text = std::fs::read_to_string(self.dir.join(format!("out/{stem}.jsonl"))).unwrap();
        assert!(text.is_empty() || text.ends_with('\n'), "whole lines only");
        text.lines().map(|l| serde_json::from_str(l).unwrap()).collect()
    }
}

/// Each line's frame number and time.
fn frames_and_times(lines: &[serde_json::Value]) -> Vec<(u64, f64)> {
    lines.iter().map(|l| (l["frame"].as_u64().unwrap(), l["time"].as_f64().unwrap())).collect()
}

fn stdout_lines(o: &Output) -> Vec<String> {
    String::from_utf8_lossy(&o.stdout).lines().map(str::to_string).collect()
}

#[test]
fn a_video_and_a_photo_in_one_call_write_their_own_outputs() {
    let Some(fixtures) = fixtures() else { return };
    let st = setup("mixed");
    let clip = fixtures.join("h264.mkv");
    let o = st.predict(&[s(&clip), "images/s68_000000.jpg", "--detector", "none"]);
    assert_cli_ok(&o);
    let lines = st.lines("h264");
    let want: Vec<(u64, f64)> = (0..FRAMES).map(|k| (k as u64, k as f64 / FPS)).collect();
    let got = frames_and_times(&lines);
    assert_eq!(got.len(), FRAMES);
    for ((f, t), (wf, wt)) in got.iter().zip(&want) {
        assert_eq!(f, wf);
        assert!((t - wt).abs() < 1e-6, "time {t} for frame {f}");
    }
    // The whole frame, on every frame.
    assert!(lines.iter().all(|l| l["faces"].as_array().unwrap().len() == 1));
    let csv = std::fs::read_to_string(st.dir.join("out/h264.csv")).unwrap();
    assert_eq!(csv.lines().count(), 1 + FRAMES);
    // The photo as before: its JSON, overlay and the run's CSV.
    assert!(st.dir.join("out/s68_000000.json").is_file());
    assert!(st.dir.join("out/predictions.csv").is_file());
    let out = stdout_lines(&o);
    let video_line =
        format!("{}: {FRAMES} frames, {FRAMES} faces, 0 failed, detector on {FRAMES} frames", clip.display());
    assert!(out.contains(&video_line), "{out:?}");
    assert_eq!(out.last().unwrap(), "1 images, 1 faces, 0 failed");
}

#[test]
fn a_folder_of_videos_with_start_and_end() {
    let Some(fixtures) = fixtures() else { return };
    let st = setup("folder");
    let videos = st.dir.join("videos");
    std::fs::create_dir_all(&videos).unwrap();
    for name in ["h264.mp4", "mjpeg.avi"] {
        std::fs::copy(fixtures.join(name), videos.join(name)).unwrap();
    }
    let o = st.predict(&["videos", "--detector", "none", "--start", "0.3", "--end", "0.6", "-q"]);
    assert_cli_ok(&o);
    for stem in ["h264", "mjpeg"] {
        let got = frames_and_times(&st.lines(stem));
        assert_eq!(got.iter().map(|g| g.0).collect::<Vec<_>>(), (0..7).collect::<Vec<_>>(), "{stem}");
        for (i, (_, t)) in got.iter().enumerate() {
            assert!((t - (8 + i) as f64 / FPS).abs() < 1e-6, "{stem}: time {t} for line {i}");
        }
    }
    assert_eq!(stdout_lines(&o).len(), 2, "one summary per video with -q");
    let bad = |rest: &[&str], needle: &str| assert_cli_error(&st.predict(rest), &[needle]);
    bad(&["videos", "--start=-1"], "--start -1");
    bad(&["videos", "--start", "2", "--end", "1"], "--end 1");
    bad(&["images/s68_000000.jpg", "--start", "1"], "--start and --end select the frames of video inputs");
    bad(&["videos", "--shard", "0/2"], "--shard splits photos only");
}

#[test]
fn a_truncated_video_keeps_its_lines_and_fails_in_one_line() {
    let Some(fixtures) = fixtures() else { return };
    let st = setup("truncated");
    let (decoded, _, _) = decode(&fixtures.join("truncated.mp4"), TimeRange::all());
    let o = st.predict(&[s(&fixtures.join("truncated.mp4")), "--detector", "none", "-q"]);
    assert_cli_error(
        &o,
        &[
            "truncated.mp4: the file is truncated",
            "truncated.jsonl, truncated.csv and truncated_landmarks.mp4 hold the frames",
        ],
    );
    assert_eq!(st.lines("truncated").len(), decoded.len());
    let csv = std::fs::read_to_string(st.dir.join("out/truncated.csv")).unwrap();
    assert_eq!(csv.lines().count(), 1 + decoded.len());
}

#[test]
fn a_corrupt_frame_is_reported_and_the_rest_processed() {
    let Some(fixtures) = fixtures() else { return };
    let st = setup("corrupt");
    let o = st.predict(&[s(&fixtures.join("corrupt.avi")), "--detector", "none", "-q"]);
    assert!(!o.status.success());
    let stderr = String::from_utf8_lossy(&o.stderr);
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 2, "{stderr}");
    assert!(lines[0].contains("corrupt.avi: frame 5 cannot be decoded"), "{stderr}");
    assert!(lines[1].contains(&format!("{FRAMES} frames, {} faces, 1 failed", FRAMES - 1)), "{stderr}");
    let frames: Vec<u64> = frames_and_times(&st.lines("corrupt")).iter().map(|f| f.0).collect();
    assert_eq!(frames, (0..FRAMES as u64).filter(|&k| k != 5).collect::<Vec<_>>());
}

#[test]
fn a_file_that_is_no_video_fails_in_one_line() {
    let st = setup("novideo");
    std::fs::write(st.dir.join("clip.mp4"), b"no video here").unwrap();
    assert_cli_error(&st.predict(&["clip.mp4", "--detector", "none"]), &["clip.mp4: cannot open as a video"]);
}

/// The demo model (README's first command writes it to output/), or None (the test skips).
fn demo_model() -> Option<(PathBuf, PathBuf)> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let model = "output/300W/synthetic_hrnet_tiny/final_state.safetensors";
    let weights = common::existing_or_skip(root.join(model), "trained demo model")?;
    Some((root.join("experiments/synthetic/synthetic_hrnet_tiny.yaml"), weights))
}

/// `n` frames of `w` × `h`: `face` scaled by `scale(i)` with its top-left corner at `offset(i)` on
/// grey, encoded by libx264 (its defaults: High profile, B-frames) at 30 fps into `dir/name`.
fn moving_face_video(
    dir: &Path, name: &str, face: &image::RgbImage, (w, h, n): (u32, u32, usize), scale: impl Fn(usize) -> f64,
    offset: impl Fn(usize) -> (f64, f64),
) -> PathBuf {
    let mut raw = Vec::new();
    for i in 0..n {
        let (fw, fh) =
            ((face.width() as f64 * scale(i)).round() as u32, (face.height() as f64 * scale(i)).round() as u32);
        let scaled = image::imageops::resize(face, fw, fh, image::imageops::FilterType::Triangle);
        let mut canvas = image::RgbImage::from_pixel(w, h, image::Rgb([90, 90, 90]));
        let (x, y) = offset(i);
        image::imageops::overlay(&mut canvas, &scaled, x as i64, y as i64);
        raw.extend_from_slice(canvas.as_raw());
    }
    let raw_path = dir.join(format!("{name}.rgb"));
    std::fs::write(&raw_path, &raw).unwrap();
    let (ws, hs, ns) = (w.to_string(), h.to_string(), n.to_string());
    let video = dir.join(name);
    run_python(&pyav().unwrap(), &["encode", s(&raw_path), &ws, &hs, &ns, "30", s(&video)]);
    video
}

/// Runs the demo model on `video` in `dir` with `rest`; the JSONL's lines.
fn demo_predict(dir: &Path, video: &Path, rest: &[&str]) -> (Output, Vec<serde_json::Value>) {
    let (cfg, weights) = demo_model().unwrap();
    let o = hrk_cmd()
        .current_dir(dir)
        .args(["predict", "--cfg", s(&cfg), "--model-file", s(&weights), "--out", "out", s(video)])
        .args(rest)
        .output()
        .unwrap();
    assert_cli_ok(&o);
    let stem = video.file_stem().unwrap().to_string_lossy();
    let text = std::fs::read_to_string(dir.join(format!("out/{stem}.jsonl"))).unwrap();
    (o, text.lines().map(|l| serde_json::from_str(l).unwrap()).collect())
}

/// The first face's landmarks of a JSONL line.
fn landmarks(line: &serde_json::Value) -> Vec<[f64; 2]> {
    let points = line["faces"][0]["landmarks"].as_array().unwrap();
    points.iter().map(|p| [p[0].as_f64().unwrap(), p[1].as_f64().unwrap()]).collect()
}

/// The mean distance of `got` to `want`.
fn mean_distance(got: &[[f64; 2]], want: &[[f64; 2]]) -> f64 {
    assert_eq!(got.len(), want.len());
    got.iter().zip(want).map(|(g, w)| (g[0] - w[0]).hypot(g[1] - w[1])).sum::<f64>() / got.len() as f64
}

/// Frame `i`'s line: one face, track 0, a detector score exactly on frames 0, N, 2N.
fn check_track(lines: &[serde_json::Value], n: usize, redetect: usize) {
    assert_eq!(lines.len(), n);
    for (i, line) in lines.iter().enumerate() {
        let faces = line["faces"].as_array().unwrap();
        assert_eq!(faces.len(), 1, "frame {i}");
        assert_eq!(faces[0]["id"], 0, "frame {i}");
        // Scores null on tracked frames (no detector ran), a probability on detection frames.
        assert_eq!(faces[0]["score"].is_null(), i % redetect != 0, "frame {i}");
    }
}

/// With the demo model trained (else this skips): a synthetic face (landmarks known) moving right
/// along a vertical wave and growing, in an H.264 video, is tracked with one id, the detector runs
/// on frames 0, 10, 20 only (MTCNN finds the face), and the landmarks stay within a few pixels of
/// the face's own on every frame (measured: 2.4 px mean at most).
#[test]
fn a_face_moving_in_an_h264_video_is_tracked_by_the_demo_model() {
    if demo_model().is_none() || pyav().is_none() {
        return;
    }
    let dir = scratch("predict-video-demo-synth");
    let (face, points) = common::model::synthetic_face(&dir);
    let n = 30;
    let scale = |i: usize| 1.0 + 0.004 * i as f64;
    let offset = |i: usize| (3.0 * i as f64, (20.0 + 10.0 * (i as f64 / 8.0).sin()).round());
    let video = moving_face_video(&dir, "synth.mp4", &face, (400, 340, n), scale, offset);
    let (o, lines) = demo_predict(&dir, &video, &["--redetect", "10", "--smooth", "none"]);
    assert_eq!(
        stdout_lines(&o).last().unwrap(),
        &format!("{}: {n} frames, {n} faces, 0 failed, detector on 3 frames", video.display())
    );
    check_track(&lines, n, 10);
    let errors: Vec<f64> = (0..n)
        .map(|i| {
            let (x, y) = offset(i);
            let truth: Vec<[f64; 2]> = points.iter().map(|p| [p[0] * scale(i) + x, p[1] * scale(i) + y]).collect();
            mean_distance(&landmarks(&lines[i]), &truth)
        })
        .collect();
    eprintln!("mean landmark error per frame (px): {errors:.2?}");
    assert!(errors.iter().all(|&e| e < 4.0), "mean landmark error per frame (px): {errors:.2?}");
}

/// With the demo model trained (else this skips): a real photo (tests/fixtures/mtcnn/astronaut.jpg)
/// moving right and down while growing 0.5 % a frame, in an H.264 video, is tracked with one id
/// and the detector runs on frames 0, 10, 20 only. The demo model knows synthetic faces only: where
/// the detector runs (every frame with --redetect 1), its landmarks follow the known motion of
/// frame 0's within a few pixels (measured: 3.6 px mean at most); between detections, crops from its own landmarks drift on a real
/// face (measured: up to 24 px; the synthetic face above stays within 4).
#[test]
fn a_real_face_moving_in_an_h264_video_keeps_one_track() {
    if demo_model().is_none() || pyav().is_none() {
        return;
    }
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let dir = scratch("predict-video-demo-real");
    let photo = image::open(root.join("tests/fixtures/mtcnn/astronaut.jpg")).unwrap().to_rgb8();
    // The face and its surroundings: 200 × 200 from (70, 0) of the 384² photo.
    let face = image::imageops::crop_imm(&photo, 70, 0, 200, 200).to_image();
    let n = 30;
    let scale = |i: usize| 1.0 + 0.005 * i as f64;
    let offset = |i: usize| (20.0 + 2.0 * i as f64, 10.0 + i as f64);
    let video = moving_face_video(&dir, "real.mp4", &face, (320, 256, n), scale, offset);
    // Frame i's landmarks where frame 0's (from the detector) move with the face.
    let moved = |first: &[[f64; 2]], i: usize| -> Vec<[f64; 2]> {
        let ((x0, y0), (xi, yi)) = (offset(0), offset(i));
        first.iter().map(|p| [(p[0] - x0) / scale(0) * scale(i) + xi, (p[1] - y0) / scale(0) * scale(i) + yi]).collect()
    };
    let (o, lines) = demo_predict(&dir, &video, &["--redetect", "10", "--smooth", "none"]);
    assert_eq!(
        stdout_lines(&o).last().unwrap(),
        &format!("{}: {n} frames, {n} faces, 0 failed, detector on 3 frames", video.display())
    );
    check_track(&lines, n, 10);
    let (_, every) = demo_predict(&dir, &video, &["--redetect", "1", "--smooth", "none"]);
    check_track(&every, n, 1);
    let first = landmarks(&every[0]);
    let errors: Vec<f64> = (0..n).map(|i| mean_distance(&landmarks(&every[i]), &moved(&first, i))).collect();
    eprintln!("mean landmark error per frame (px): {errors:.2?}");
    assert!(errors.iter().all(|&e| e < 4.0), "mean landmark error per frame (px): {errors:.2?}");
    for i in [0, 10, 20] {
        assert_eq!(landmarks(&lines[i]).len(), first.len());
        let e = mean_distance(&landmarks(&lines[i]), &moved(&first, i));
        assert!(e < 4.0, "detection frame {i}: {e:.2} px");
    }
}

/// Decode speed (not a timed test): a 640×480 libx264 video (defaults: High profile, B-frames) of 300
/// frames decoded to RGB by hrk's decoder, frames/s printed.
/// `cargo test --release --features video --test cli_predict_video -- --ignored --nocapture speed`
#[test]
#[ignore]
fn decode_speed_640x480_h264() {
    let Some(python) = pyav() else { return };
    let dir = scratch("predict-video-speed");
    let file = dir.join("speed.mp4");
    run_python(&python, &["pattern", s(&file), "640", "480", "300"]);
    for round in 0..3 {
        let start = std::time::Instant::now();
        let (frames, skipped, error) = decode(&file, TimeRange::all());
        let secs = start.elapsed().as_secs_f64();
        assert_eq!((frames.len(), skipped.len(), error), (300, 0, None));
        eprintln!("round {round}: 300 frames of 640x480 H.264 in {secs:.2} s: {:.0} frames/s", 300.0 / secs);
    }
}
