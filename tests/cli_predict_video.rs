//! Video files as input (issue 26, the `video` feature): small videos made at test time with PyAV
//! (tests/python/videos.py: libx264 High profile with B-frames in .mp4/.mov/.mkv, Motion-JPEG .avi,
//! a phone's rotation, a truncated copy, a corrupted packet) are decoded by hrk exactly as PyAV
//! decodes them (frames, order, times, pixels), and `hrk predict clip.mp4` writes one JSONL line per
//! frame, with --start/--end, the truncated and the corrupt files' errors, and a real face moving
//! along a known path tracked by the demo model.
#![cfg(feature = "video")]

mod common;

use common::model::{tiny_config, write_tiny_model};
use common::{assert_cli_error, assert_cli_ok, hrk_cmd, python_with, s, scratch, Scratch};
use hrk::video::decode::{Decoded, TimeRange, VideoDecoder};
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
    let out = file.with_extension("ref");
    run_python(&python, &["decode", s(file), s(&out)]);
    let info: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.with_extension("ref.json")).unwrap()).unwrap();
    let (width, height) = (info["width"].as_u64().unwrap() as usize, info["height"].as_u64().unwrap() as usize);
    let times: Vec<f64> = info["times"].as_array().unwrap().iter().map(|t| t.as_f64().unwrap()).collect();
    let raw = std::fs::read(out.with_extension("ref.rgb")).unwrap();
    let frames = raw.chunks_exact(width * height * 3).map(<[u8]>::to_vec).collect();
    Reference { width, height, times, frames }
}

/// hrk's frames of `file` (time, size, pixels), and the error that ended it, if any.
fn decode(file: &Path, range: TimeRange) -> (Vec<(usize, f64, usize, usize, Vec<u8>)>, Vec<String>, Option<String>) {
    let mut d = VideoDecoder::open(file, range).unwrap();
    let (mut frames, mut skipped) = (Vec::new(), Vec::new());
    loop {
        match d.next() {
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
