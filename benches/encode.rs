//! The overlay video's encoder alone (src/video/encode.rs: RGB → swscale yuv420p → libx264 → MP4,
//! faststart included) at 640×480: a real photo (tests/fixtures/mtcnn/group.jpg, four faces) panned
//! 3 px a frame, 150 frames a round. Needs the `video` feature:
//! `cargo bench --features video --bench encode [-- ROUNDS]` prints median / min frames per second
//! and the file size.

use hrk::data::imageio::{decode_rgb8, Rgb8};
use hrk::video::encode::Mp4Writer;
use std::path::Path;
use std::time::Instant;

const FRAMES: usize = 150;

/// The photo shifted left by `dx` pixels, wrapping around.
fn panned(photo: &Rgb8, dx: usize) -> Rgb8 {
    let (w, h) = (photo.width, photo.height);
    let mut data = Vec::with_capacity(w * h * 3);
    for row in photo.data.chunks_exact(w * 3) {
        let cut = (dx % w) * 3;
        data.extend_from_slice(&row[cut..]);
        data.extend_from_slice(&row[..cut]);
    }
    Rgb8::new(w, h, data).expect("same size")
}

fn main() {
    let rounds: usize = std::env::args().skip(1).find_map(|a| a.parse().ok()).unwrap_or(3);
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let photo = decode_rgb8(&root.join("tests/fixtures/mtcnn/group.jpg")).expect("fixture photo");
    assert_eq!((photo.width, photo.height), (640, 480));
    let frames: Vec<Rgb8> = (0..FRAMES).map(|i| panned(&photo, 3 * i)).collect();
    let dir = tempfile::tempdir().expect("scratch folder");
    let path = dir.path().join("bench_landmarks.mp4");
    let mut rates = Vec::new();
    for _ in 0..rounds {
        let t = Instant::now();
        let mut writer = Mp4Writer::create(&path, 640, 480, 25.0).expect("writer");
        for f in &frames {
            writer.push(f, None).expect("frame");
        }
        writer.finish().expect("finish");
        rates.push(FRAMES as f64 / t.elapsed().as_secs_f64());
    }
    rates.sort_by(f64::total_cmp);
    let bytes = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
    println!(
        "encode 640x480 ({FRAMES} frames, {rounds} rounds): median {:.0} frames/s, min {:.0} frames/s; {:.0} KiB ({:.1} KiB/frame)",
        rates[rates.len() / 2],
        rates[0],
        bytes as f64 / 1024.0,
        bytes as f64 / 1024.0 / FRAMES as f64
    );
}
