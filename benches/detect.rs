//! MTCNN face detection on a 640×480 photo (tests/fixtures/mtcnn/group.jpg, four faces), CPU, interleaved
//! with facenet-pytorch on the same image (benches/detect_torch.py, torch threads = 2) when a Python with
//! facenet-pytorch is found (HRK_PYTHON alone when set, else the crate's .venv/bin/python, else python3).
//! `cargo bench --bench detect [-- ROUNDS]` prints median / min ms per round for both.

use hrk::data::imageio::load_image;
use hrk::detect::{DetectorOptions, Mtcnn};
use hrk::Device;
use std::path::Path;
use std::process::Command;
use std::time::Instant;

/// Median and min ms per image, faces found, and the per-stage medians (ms) and box counts.
fn hrk_round(mtcnn: &Mtcnn, image: &hrk::data::image::Image, runs: usize) -> (f64, f64, usize, [f64; 3], [usize; 3]) {
    let opts = DetectorOptions::default();
    let mut faces = 0;
    let mut stages: [Vec<f64>; 3] = Default::default();
    let mut counts = [0; 3];
    let mut times: Vec<f64> = (0..runs)
        .map(|_| {
            let t = Instant::now();
            let (found, stats) = mtcnn.detect_with_stats(image, &opts).expect("detect");
            let ms = t.elapsed().as_secs_f64() * 1e3;
            faces = found.len();
            counts = stats.candidates;
            for (s, v) in stages.iter_mut().zip(stats.stage_ms) {
                s.push(v);
            }
            ms
        })
        .collect();
    times.sort_by(f64::total_cmp);
    let stage_medians = stages.map(|mut s| {
        s.sort_by(f64::total_cmp);
        s[s.len() / 2]
    });
    (times[runs / 2], times[0], faces, stage_medians, counts)
}

/// HRK_PYTHON when set (and only it: a set but unusable one times hrk alone), else the first of the
/// crate's .venv/bin/python and python3 that imports facenet_pytorch.
fn python() -> Option<String> {
    let candidates = match std::env::var("HRK_PYTHON") {
        Ok(py) => vec![py],
        Err(_) => {
            let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python");
            vec![venv.to_string_lossy().into_owned(), "python3".into()]
        }
    };
    candidates
        .into_iter()
        .find(|py| Command::new(py).args(["-c", "import facenet_pytorch"]).output().is_ok_and(|o| o.status.success()))
}

fn main() {
    let rounds: usize = std::env::args().skip(1).find_map(|a| a.parse().ok()).unwrap_or(3);
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let photo = root.join("tests/fixtures/mtcnn/group.jpg");
    let image = load_image(&photo).expect("fixture photo");
    let mtcnn = Mtcnn::load(None, &Device::Cpu).expect("embedded weights");
    let py = python();
    if py.is_none() {
        println!("facenet-pytorch not found (HRK_PYTHON): timing hrk only");
    }
    hrk_round(&mtcnn, &image, 3);
    println!("MTCNN on {} ({}x{}), ms per image", photo.display(), image.width, image.height);
    for round in 1..=rounds {
        let (median, min, faces, [p, r, o], [np, nr, no]) = hrk_round(&mtcnn, &image, 20);
        println!(
            "round {round}: hrk {median:.2} (min {min:.2}), {faces} faces; stages P {p:.2} ({np} boxes), R {r:.2} ({nr}), O {o:.2} ({no})"
        );
        if let Some(py) = &py {
            let out = Command::new(py)
                .arg(root.join("benches/detect_torch.py"))
                .arg(&photo)
                .output()
                .expect("run detect_torch.py");
            let text = String::from_utf8_lossy(&out.stdout);
            println!("round {round}: {}", text.trim());
        }
    }
}
