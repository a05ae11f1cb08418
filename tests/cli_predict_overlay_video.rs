//! The overlay video of a frame stream (issue 26): `hrk predict --stdin-frames` writes
//! `stdin_landmarks.mp4`, which PyAV (FFmpeg) opens as H.264 yuv420p at the stream's size and frame
//! rate with every frame, tagged BT.601 limited range; a plain-colour frame comes back close to its
//! colour; an odd size is padded by one repeated pixel; the drawing (the photo overlay's box, plus
//! the face id) is there; a killed run leaves no `stdin_landmarks.mp4`, and its temporary file is
//! cleared by the next run; `--no-overlay-video` writes none. Frames are synthetic, on stdin.
#![cfg(feature = "video")]

mod common;

use common::model::one_face_tiny_model;
use common::{assert_cli_ok, python_with, s, scratch, Scratch};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Output};

const W: usize = 320;
const H: usize = 256;
const FRAMES: usize = 12;
/// The grey behind the moving face.
const GREY: u8 = 90;

/// Decodes an MP4 with PyAV: its stream facts as one JSON line on stdout, and every frame as RGB24
/// (FFmpeg's own YUV→RGB conversion), back to back, into argv[2].
const PYAV_DECODE: &str = r#"
import sys, json, av
c = av.open(sys.argv[1])
st = c.streams.video[0]
frames = []
with open(sys.argv[2], "wb") as out:
    for f in c.decode(st):
        frames.append(f)
        out.write(f.to_ndarray(format="rgb24").tobytes())
f0 = frames[0]
print(json.dumps({
    "codec": st.codec_context.name, "pix_fmt": f0.format.name, "width": f0.width, "height": f0.height,
    "frames": len(frames), "rate": [st.average_rate.numerator, st.average_rate.denominator],
    "colorspace": int(f0.colorspace), "color_range": int(f0.color_range),
    "audio_streams": len(c.streams.audio),
}))
"#;

struct Setup {
    dir: Scratch,
    cfg: PathBuf,
    weights: PathBuf,
}

/// A tiny random-init 68-point model and one synthetic face photo in a scratch folder.
fn setup(name: &str) -> Setup {
    let dir = scratch(&format!("overlay-video-{name}"));
    let (cfg, weights) = one_face_tiny_model(&dir);
    Setup { dir, cfg, weights }
}

impl Setup {
    /// FRAMES frames, rgb24: the 256² face moving right 4 px a frame on a grey 320×256 canvas.
    fn moving_face(&self) -> Vec<u8> {
        let face = image::open(self.dir.join("images/s68_000000.jpg")).unwrap().to_rgb8();
        let mut frames = Vec::with_capacity(FRAMES * W * H * 3);
        for i in 0..FRAMES {
            let mut canvas = image::RgbImage::from_pixel(W as u32, H as u32, image::Rgb([GREY; 3]));
            image::imageops::overlay(&mut canvas, &face, 4 * i as i64, 0);
            frames.extend_from_slice(canvas.as_raw());
        }
        frames
    }

    fn spawn(&self, rest: &[&str]) -> Child {
        common::spawn_predict(&self.dir, &self.cfg, &self.weights, rest)
    }

    fn predict(&self, stdin: &[u8], rest: &[&str]) -> Output {
        let mut child = self.spawn(rest);
        child.stdin.take().unwrap().write_all(stdin).unwrap();
        child.wait_with_output().unwrap()
    }

    fn out(&self) -> PathBuf {
        self.dir.join("out")
    }
}

/// What PyAV reads from `mp4`: its facts and its frames as RGB24.
fn decode(python: &Path, mp4: &Path) -> (serde_json::Value, Vec<u8>) {
    let rgb = mp4.with_extension("rgb");
    let o = std::process::Command::new(python).args(["-c", PYAV_DECODE, s(mp4), s(&rgb)]).output().unwrap();
    assert!(o.status.success(), "PyAV: {}", String::from_utf8_lossy(&o.stderr));
    let facts = serde_json::from_slice(&o.stdout).unwrap();
    let pixels = std::fs::read(&rgb).unwrap();
    std::fs::remove_file(&rgb).unwrap();
    (facts, pixels)
}

fn names_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> =
        std::fs::read_dir(dir).unwrap().flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect();
    names.sort();
    names
}

/// H.264 yuv420p at the stream's size and rate, one video frame per stream frame, tagged BT.601
/// (SMPTE 170M) limited range, no audio; the face's box is drawn in the box colour.
#[test]
fn the_overlay_video_holds_every_frame_at_the_stream_size_and_rate() {
    let Some(python) = python_with("av, numpy") else { return };
    let st = setup("facts");
    let frames = st.moving_face();
    let o = st.predict(&frames, &["--stdin-frames", "320x256", "--fps", "25", "--box", "40,40,220,230"]);
    assert_cli_ok(&o);
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(stdout.contains("wrote stdin.jsonl, stdin.csv and stdin_landmarks.mp4 to"), "{stdout}");
    let (facts, decoded) = decode(&python, &st.out().join("stdin_landmarks.mp4"));
    assert_eq!(
        facts,
        serde_json::json!({
            "codec": "h264", "pix_fmt": "yuv420p", "width": W, "height": H, "frames": FRAMES, "rate": [25, 1],
            // AVCOL_SPC_SMPTE170M, AVCOL_RANGE_MPEG
            "colorspace": 6, "color_range": 1, "audio_streams": 0,
        })
    );
    // Frame 0's box has its left edge at x = 40 from y = 40 to 230: red there (R well above G),
    // where the input is the face photo; 4:2:0 chroma halves a 1-pixel line's colour at most.
    let redness = |px: &[u8], x: usize, y: usize| {
        let at = (y * W + x) * 3;
        px[at] as f64 - px[at + 1] as f64
    };
    let added: f64 = (60..210).map(|y| redness(&decoded, 40, y) - redness(&frames, 40, y)).sum::<f64>() / 150.0;
    assert!(added > 40.0, "the box's edge adds {added:.1} of red over green on average");
}

/// Plain-colour frames with no face: every decoded pixel is close to the colour (BT.601 limited
/// range and back, as FFmpeg does it), and the odd 65×49 size is coded as 66×50, the padding
/// the same colour.
#[test]
fn plain_frames_come_back_close_to_their_colour_and_odd_sizes_are_padded() {
    let Some(python) = python_with("av, numpy") else { return };
    let st = setup("plain");
    let (w, h, n) = (65usize, 49usize, 5usize);
    let colour = [200u8, 60, 30];
    let frames = colour.repeat(w * h * n);
    let o = st.predict(&frames, &["--stdin-frames", "65x49", "--fps", "29.97002997", "-q"]);
    assert_cli_ok(&o);
    assert_eq!(
        String::from_utf8_lossy(&o.stdout).trim(),
        format!("{n} frames, 0 faces, 0 failed, detector on {n} frames")
    );
    let (facts, decoded) = decode(&python, &st.out().join("stdin_landmarks.mp4"));
    assert_eq!(
        (&facts["width"], &facts["height"], &facts["frames"]),
        (&serde_json::json!(66), &serde_json::json!(50), &serde_json::json!(n))
    );
    assert_eq!(facts["rate"], serde_json::json!([30000, 1001]), "29.97002997 frames/s is NTSC's 30000/1001");
    assert_eq!(decoded.len(), 66 * 50 * 3 * n);
    let worst =
        decoded.chunks_exact(3).flat_map(|p| p.iter().zip(colour).map(|(&d, c)| (d as i32 - c as i32).abs())).max();
    // Measured: 2 (8-bit limited-range YUV cannot hold every RGB colour exactly).
    assert!(worst.unwrap() <= 4, "a decoded pixel is {worst:?} off the colour");
}

/// A run killed mid-stream leaves no `stdin_landmarks.mp4`, only a temporary file that the next
/// run into the folder clears; `--no-overlay-video` writes no video.
#[test]
fn a_killed_run_leaves_no_video_and_the_flag_turns_it_off() {
    let st = setup("killed");
    let frames = st.moving_face();
    let mut child = st.spawn(&["--stdin-frames", "320x256", "--fps", "25", "--detector", "none", "-q"]);
    let mut pipe = child.stdin.take().unwrap();
    // Three frames, then the pipe stays open: hrk waits for the fourth.
    pipe.write_all(&frames[..3 * W * H * 3]).unwrap();
    let jsonl = st.out().join("stdin.jsonl");
    let started = std::time::Instant::now();
    while std::fs::read_to_string(&jsonl).map_or(0, |t| t.lines().count()) < 3 {
        assert!(started.elapsed().as_secs() < 120, "hrk did not write three frames");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let temp = format!(".stdin_landmarks.mp4.{}.", child.id());
    assert!(
        names_in(&st.out()).iter().any(|n| n.starts_with(&temp) && n.ends_with(".tmp")),
        "{:?}",
        names_in(&st.out())
    );
    child.kill().unwrap();
    child.wait().unwrap();
    drop(pipe);
    let left = names_in(&st.out());
    assert!(!left.contains(&"stdin_landmarks.mp4".to_string()), "{left:?}");

    let o =
        st.predict(&frames, &["--stdin-frames", "320x256", "--fps", "25", "--detector", "none", "--no-overlay-video"]);
    assert_cli_ok(&o);
    assert!(String::from_utf8_lossy(&o.stdout).contains("wrote stdin.jsonl and stdin.csv to"));
    assert_eq!(
        names_in(&st.out()),
        ["stdin.csv", "stdin.jsonl"],
        "no video, and the dead run's temporary file cleared"
    );
}
