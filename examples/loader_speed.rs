//! Data-loader throughput on WFLW-like samples: 1024×768 quality-90 JPEGs of photo-like
//! content, 98 landmarks, faces of 100–400 px (some at the picture's border), 256² crops and
//! 64² targets, all generated deterministically. Rates are images per CPU-second of the
//! working thread (wall-clock is useless on a shared machine), in rounds that interleave whole
//! and region JPEG decoding (`DatasetSpec::region_decode`, `HRK_JPEG_REGION`) so that load hits
//! both alike; then the per-stage CPU split of a training sample and the threaded loader.
//!
//!   cargo run --release --example loader_speed [-- N_SAMPLES ROUNDS THREADS [SET]]
//!
//! With SET (0..3: train whole/region, test whole/region) only that set's samples are built, once
//! (for a profiler).

use hrk::config::DatasetKind;
use hrk::data::codec::HeatmapCodec;
use hrk::data::dataset::{DatasetSpec, FaceDataset};
use hrk::data::flip::fliplr_joints_with;
use hrk::data::imageio::{decode_rgb8, decode_rgb8_region_opts, Rect};
use hrk::data::loader::{DataLoader, LoaderConfig};
use hrk::data::sample::normalize_rgb8_into;
use hrk::data::transforms::{crop_rgb8, crop_rgb8_region, crop_source, CropSource, InputType};
use hrk::rng::Rng;
use std::path::Path;
use std::sync::Arc;

#[path = "../tests/common/photo.rs"]
mod photo;
#[path = "../tests/common/wflw_csv.rs"]
mod wflw_csv;
use std::time::Instant;

/// CPU seconds of the calling thread (Linux schedstat, nanoseconds).
fn thread_cpu_s() -> f64 {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|v| v.parse::<f64>().ok()))
        .map_or(f64::NAN, |ns| ns * 1e-9)
}

/// CPU seconds of the whole process (all threads), from /proc/self/stat (clock ticks of 10 ms).
fn process_cpu_s() -> f64 {
    let Ok(s) = std::fs::read_to_string("/proc/self/stat") else { return f64::NAN };
    let Some(rest) = s.rsplit(')').next() else { return f64::NAN };
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(f64::NAN);
    (ticks(11) + ticks(12)) / 100.0
}

/// Images per CPU-second of this thread for `n` runs of `f`.
fn per_cpu_s(n: usize, mut f: impl FnMut(usize) -> anyhow::Result<()>) -> anyhow::Result<f64> {
    let c = thread_cpu_s();
    for i in 0..n {
        f(i)?;
    }
    Ok(n as f64 / (thread_cpu_s() - c))
}

/// The 8 pictures and the annotation CSV (`n` faces) in `dir`.
fn make_dataset(dir: &Path, n: usize) -> anyhow::Result<std::path::PathBuf> {
    let (w, h) = (1024u32, 768u32);
    for k in 0..8u32 {
        let img = photo::photo_like(w, h, k);
        let f = std::fs::File::create(dir.join(format!("img{k}.jpg")))?;
        image::codecs::jpeg::JpegEncoder::new_with_quality(std::io::BufWriter::new(f), 90).encode_image(&img)?;
    }
    // One face in ten near a corner (WFLW has faces cut by the border).
    let layout = wflw_csv::FaceLayout {
        images: 8,
        corner_every: 10,
        corner: [(20.0, 120.0), (20.0, 120.0)],
        inside: [(200.0, 824.0), (150.0, 618.0)],
        side: (100.0, 400.0),
    };
    let csv = wflw_csv::wflw_csv(&mut Rng::for_tests(1), n, &layout);
    let csv_path = dir.join("train.csv");
    std::fs::write(&csv_path, csv)?;
    Ok(csv_path)
}

fn main() -> anyhow::Result<()> {
    let args: Vec<usize> = std::env::args().skip(1).filter_map(|a| a.parse().ok()).collect();
    // What the DataLoader does for its workers; here it also covers the 1-thread figures.
    hrk::data::loader::tune_allocator_for_images();
    let n = args.first().copied().unwrap_or(200);
    let rounds = args.get(1).copied().unwrap_or(3);
    let threads = args.get(2).copied().unwrap_or(2);
    let dir = std::env::temp_dir().join(format!("hrk-loader-speed-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let csv_path = make_dataset(&dir, n)?;
    let open = |is_train: bool, region: bool| -> anyhow::Result<FaceDataset> {
        let mut spec = DatasetSpec::new(DatasetKind::Wflw, &dir, &csv_path, is_train);
        spec.region_decode = region;
        FaceDataset::open(spec)
    };
    let sets = [open(true, false)?, open(true, true)?, open(false, false)?, open(false, true)?];
    let names = ["train, whole decode", "train, region decode", "test, whole decode", "test, region decode"];
    if let Some(&only) = args.get(3) {
        let ds = sets.get(only).ok_or_else(|| anyhow::anyhow!("SET {only} is not 0..3"))?;
        let r = per_cpu_s(n, |i| ds.get(i, 0, 0).map(|s| drop(std::hint::black_box(s))))?;
        println!("{}: {r:.1} images per CPU-second", names[only]);
        std::fs::remove_dir_all(&dir)?;
        return Ok(());
    }

    println!("1024x768 JPEG q90, 98 landmarks, faces 100-400 px, {n} samples; images per CPU-second of one thread");
    println!("round  {}", names.map(|s| format!("{s:>22}")).join(""));
    let mut all = vec![Vec::new(); sets.len()];
    for round in 0..rounds {
        let mut line = format!("{round:>5}  ");
        for (k, ds) in sets.iter().enumerate() {
            let r = per_cpu_s(n, |i| ds.get(i, 0, 0).map(|s| drop(std::hint::black_box(s))))?;
            all[k].push(r);
            line += &format!("{r:>22.1}");
        }
        println!("{line}");
    }
    let median = |v: &[f64]| {
        let mut v = v.to_vec();
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let mut line = String::from("median ");
    for v in &all {
        line += &format!("{:>22.1}", median(v));
    }
    println!("{line}");
    println!(
        "region/whole (median of per-round ratios): train {:.2}x, test {:.2}x",
        median(&all[1].iter().zip(&all[0]).map(|(a, b)| a / b).collect::<Vec<_>>()),
        median(&all[3].iter().zip(&all[2]).map(|(a, b)| a / b).collect::<Vec<_>>())
    );

    // Per-stage CPU of a training sample with region decoding: the steps of `fill_sample`, timed.
    let ds = &sets[1];
    let spec = &ds.spec;
    let codec = HeatmapCodec::for_spec(spec);
    let pairs = spec.mirror_pairs()?;
    let (mut input, mut target) = (vec![0f32; ds.input_len()], vec![0f32; ds.target_len()]);
    let mut stage = [0f64; 5];
    let mut whole_decode = 0f64;
    for i in 0..n {
        let aug = ds.augmentation_for(i, 0, 0);
        let ann = ds.annotation(i)?;
        let scale = ann.scale * 1.25 * aug.scale_mult;
        let path = dir.join(format!("img{}.jpg", i % 8));
        let t0 = thread_cpu_s();
        std::hint::black_box(decode_rgb8(&path)?);
        let t1 = thread_cpu_s();
        whole_decode += t1 - t0;
        let want = |w: usize, h: usize| {
            let c = if aug.flip { [w as f32 - ann.center[0], ann.center[1]] } else { ann.center };
            match crop_source([w, h], aug.flip, InputType::Float32, c, scale, spec.image_size, aug.rot) {
                CropSource::Whole => None,
                CropSource::Rect { x, y, w, h } => Some(Rect { x, y, w, h }),
            }
        };
        let t1 = thread_cpu_s();
        let d = decode_rgb8_region_opts(&path, false, want)?;
        let t2 = thread_cpu_s();
        let mut pts = ann.pts.to_vec();
        let mut center = ann.center;
        if aug.flip {
            fliplr_joints_with(&mut pts, d.full[0], &pairs)?;
            center[0] = d.full[0] as f32 - center[0];
        }
        let (res, rot) = (spec.image_size, aug.rot);
        let crop =
            match crop_rgb8_region(&d.pixels, d.full, d.origin, aug.flip, InputType::Float32, center, scale, res, rot)?
            {
                Some(c) => c,
                None => crop_rgb8(&decode_rgb8(&path)?, aug.flip, InputType::Float32, center, scale, res, rot)?,
            };
        let t3 = thread_cpu_s();
        normalize_rgb8_into(&crop, &mut input)?;
        let t4 = thread_cpu_s();
        codec.encode(&pts, center, scale, rot, &mut target)?;
        let t5 = thread_cpu_s();
        for (s, dt) in stage.iter_mut().zip([t2 - t1, t3 - t2, t4 - t3, t5 - t4]) {
            *s += dt;
        }
        stage[4] += t5 - t1;
    }
    let ms = |s: f64| s * 1e3 / n as f64;
    let share = |s: f64| 100.0 * s / stage[4];
    println!(
        "train sample stages, CPU ms/img (share): region decode {:.3} ({:.0}%)  crop {:.3} ({:.0}%)  normalise {:.3} \
         ({:.0}%)  targets {:.3} ({:.0}%)  total {:.3}; whole decode for comparison {:.3}",
        ms(stage[0]),
        share(stage[0]),
        ms(stage[1]),
        share(stage[1]),
        ms(stage[2]),
        share(stage[2]),
        ms(stage[3]),
        share(stage[3]),
        ms(stage[4]),
        ms(whole_decode)
    );

    // The rotation stage alone (Pillow's bilinear affine over a 330² kept part of a 470² window,
    // 20°): the AVX2 sampler against the portable one, interleaved.
    {
        use hrk::data::pillow::{affine_bilinear_region, affine_bilinear_region_portable, rotate_matrix, Rgb8};
        let mut rng = Rng::for_tests(2);
        let side = 470;
        let win = Rgb8::new(side, side, (0..side * side * 3).map(|_| rng.below(256) as u8).collect())?;
        let m = rotate_matrix(20.0, side, side);
        let part = ((side - 330) / 2, 330);
        let reps = 40;
        let (mut simd, mut portable) = (Vec::new(), Vec::new());
        for _ in 0..rounds {
            simd.push(per_cpu_s(reps, |_| affine_bilinear_region(&win, side, side, m, part, part).map(drop))?);
            portable
                .push(per_cpu_s(reps, |_| affine_bilinear_region_portable(&win, side, side, m, part, part).map(drop))?);
        }
        println!(
            "rotation stage, CPU ms per 330² region (median of {rounds} interleaved rounds): AVX2 {:.3}, portable {:.3}",
            1e3 / median(&simd),
            1e3 / median(&portable)
        );
    }

    // The final resize alone (Pillow's two-pass BILINEAR, a 330² kept part to 256², and a 150²
    // one up to 256²): compiled for AVX2 against the baseline build, interleaved.
    {
        use hrk::data::pillow::{resize_bilinear_region, resize_bilinear_region_portable, Rgb8, RowView};
        let mut rng = Rng::for_tests(3);
        for side in [330usize, 150] {
            let img = Rgb8::new(side, side, (0..side * side * 3).map(|_| rng.below(256) as u8).collect())?;
            let view = RowView::plain(&img);
            let reps = 40;
            let (mut simd, mut portable) = (Vec::new(), Vec::new());
            for _ in 0..rounds {
                simd.push(per_cpu_s(reps, |_| resize_bilinear_region(view, 256, 256, (0, 256), (0, 256)).map(drop))?);
                portable.push(per_cpu_s(reps, |_| {
                    resize_bilinear_region_portable(view, 256, 256, (0, 256), (0, 256)).map(drop)
                })?);
            }
            println!(
                "resize stage, CPU ms per {side}² -> 256² (median of {rounds} interleaved rounds): AVX2 build {:.3}, \
                 baseline build {:.3}",
                1e3 / median(&simd),
                1e3 / median(&portable)
            );
        }
    }

    let ds = Arc::new(open(true, true)?);
    let dl = DataLoader::new(ds, LoaderConfig::new(16, true, threads, 0))?;
    let (t, c) = (Instant::now(), process_cpu_s());
    let mut count = 0;
    for b in dl.epoch(0) {
        count += b?.len();
    }
    println!(
        "loader, {threads} threads, batch 16, train: {:.1} img/s wall, {:.1} img per process CPU-second",
        count as f64 / t.elapsed().as_secs_f64(),
        count as f64 / (process_cpu_s() - c)
    );
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}
