//! Writes a preview grid (samples with their landmarks drawn) to look at by eye:
//! `cargo test --release --test synth_preview -- --ignored` → $TMPDIR/synth_preview.png.

use hrk::synth;

mod common;

#[test]
#[ignore]
fn write_preview_grid() {
    let joints: usize = common::env_parsed("SYNTH_PREVIEW_JOINTS", 68);
    let first: usize = common::env_parsed("SYNTH_PREVIEW_FIRST", 0);
    let seed: u64 = common::env_parsed("SYNTH_PREVIEW_SEED", 7);
    let zoom: usize = common::env_parsed("SYNTH_PREVIEW_ZOOM", 2);
    let cols: usize = common::env_parsed("SYNTH_PREVIEW_COLS", 4);
    let rows: usize = common::env_parsed("SYNTH_PREVIEW_ROWS", 2);
    let tile = synth::IMAGE_SIZE * zoom;
    let (w, h) = (tile * cols, tile * rows);
    let mut grid = vec![0u8; w * h * 3];
    for k in 0..cols * rows {
        let sample = synth::render_sample(joints, seed, first + k).unwrap();
        let img = synth::draw_landmarks(&sample, zoom);
        let (ox, oy) = ((k % cols) * tile, (k / cols) * tile);
        for y in 0..tile {
            let dst = ((oy + y) * w + ox) * 3;
            grid[dst..dst + tile * 3].copy_from_slice(&img[y * tile * 3..(y + 1) * tile * 3]);
        }
    }
    let path = std::env::temp_dir().join("synth_preview.png");
    image::save_buffer(&path, &grid, w as u32, h as u32, image::ExtendedColorType::Rgb8).unwrap();
    assert!(path.exists());
}

/// Timing check for the "2000 images well under a minute on one core" goal:
/// `RAYON_NUM_THREADS=1 cargo test --release --test synth_preview -- --ignored --nocapture timing`.
#[test]
#[ignore]
fn timing_2000_images() {
    let dir = common::scratch("synth-timing");
    let start = std::time::Instant::now();
    let summary = synth::generate(&dir, 98, 2000, 1).unwrap();
    let secs = start.elapsed().as_secs_f64();
    eprintln!("2000 images (98 joints) in {secs:.1} s on {} thread(s)", rayon::current_num_threads());
    assert_eq!(summary.train_count + summary.test_count, 2000);
    let bytes: u64 = std::fs::read_dir(dir.join("images")).unwrap().map(|e| e.unwrap().metadata().unwrap().len()).sum();
    eprintln!("images: {:.1} MB", bytes as f64 / 1e6);
}
