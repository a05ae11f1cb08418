//! Dataset reading, per-sample pipeline and loader (data2 branch). Every test builds its
//! own tiny dataset in a temporary directory.

use hrk::config::DatasetKind;
use hrk::data::augment::{draw_augmentation, epoch_order, sample_augmentation, Augmentation};
use hrk::data::codec::HeatmapCodec;
use hrk::data::cofw::{cofw_center_scale, read_cofw};
use hrk::data::dataset::{read_csv_annotations, DatasetSpec, FaceDataset};
use hrk::data::flip::{flip_center, fliplr_image, fliplr_joints};
use hrk::data::imageio::{decode_rgb8, decode_rgb8_bytes, decode_rgb8_opts, jpeg_is_truncated, load_image};
use hrk::data::loader::{DataLoader, LoaderConfig};
use hrk::data::sample::{MEAN, STD};
use hrk::data::transforms::crop;
use hrk::rng::Rng;
use std::path::{Path, PathBuf};
use std::sync::Arc;

mod common;
use common::{scratch, shared_dir};

/// A smooth, textured RGB test picture.
fn picture(w: u32, h: u32, seed: u32) -> image::RgbImage {
    image::RgbImage::from_fn(w, h, |x, y| {
        let v = ((x * 7 + y * 3 + seed * 11) % 256) as u8;
        let ring = (((x as f32 - w as f32 / 2.0).hypot(y as f32 - h as f32 / 2.0) / 6.0) as u32 % 2 * 90) as u8;
        image::Rgb([v, (y * 255 / h.max(1)) as u8, ring.wrapping_add((x % 17) as u8)])
    })
}

/// Landmarks inside a box around the image centre, plus the CSV center/scale of that box.
fn landmarks(j: usize, w: u32, h: u32, seed: u64) -> (Vec<[f64; 2]>, [f64; 2], f64) {
    let mut rng = Rng::for_tests(seed);
    let (cx, cy, half) = (w as f64 / 2.0, h as f64 / 2.0, w.min(h) as f64 * 0.3);
    let pts: Vec<[f64; 2]> = (0..j).map(|_| [cx + rng.range(-half, half), cy + rng.range(-half, half)]).collect();
    (pts, [cx, cy], 2.0 * half / 200.0)
}

fn csv_row(path: &str, scale: f64, center: [f64; 2], box_size: Option<f64>, pts: &[[f64; 2]]) -> String {
    let mut s = format!("{path},{scale}");
    if let Some(b) = box_size {
        s += &format!(",{b}");
    }
    s += &format!(",{},{}", center[0], center[1]);
    for p in pts {
        s += &format!(",{},{}", p[0], p[1]);
    }
    s
}

fn csv_header(j: usize, aflw: bool) -> String {
    let mut s = String::from(if aflw {
        "image_name,scale,box_size,center_w,center_h"
    } else {
        "image_name,scale,center_w,center_h"
    });
    for i in 0..j {
        s += &format!(",original_{i}_x,original_{i}_y");
    }
    s
}

/// A WFLW-style dataset: PNG, JPEG and greyscale PNG images, `n` rows. Returns (root, csv).
fn make_wflw(dir: &Path, n: usize) -> (PathBuf, PathBuf) {
    let root = dir.join("images");
    std::fs::create_dir_all(root.join("sub")).unwrap();
    let mut lines = vec![csv_header(98, false)];
    for i in 0..n {
        let (w, h) = [(160u32, 120u32), (200, 150), (90, 130)][i % 3];
        let rel = match i % 3 {
            0 => format!("sub/img{i}.png"),
            1 => format!("sub/img{i}.jpg"),
            _ => format!("sub/grey{i}.png"),
        };
        let pic = picture(w, h, i as u32);
        match i % 3 {
            2 => image::DynamicImage::ImageRgb8(pic).to_luma8().save(root.join(&rel)).unwrap(),
            _ => pic.save(root.join(&rel)).unwrap(),
        }
        let (pts, c, s) = landmarks(98, w, h, i as u64);
        lines.push(csv_row(&rel, s, c, None, &pts));
    }
    let csv = dir.join("train.csv");
    std::fs::write(&csv, lines.join("\n") + "\n").unwrap();
    (root, csv)
}

fn normalized(img: &hrk::data::image::Image) -> Vec<f32> {
    let hw = img.width * img.height;
    let mut out = vec![0f32; 3 * hw];
    for i in 0..hw {
        for c in 0..3 {
            out[c * hw + i] = (img.data[i * 3 + c] / 255.0 - MEAN[c]) / STD[c];
        }
    }
    out
}

#[test]
fn samples_have_reference_shapes_and_values() {
    let dir = scratch("data-shapes");
    let (root, csv) = make_wflw(&dir, 3);
    for is_train in [false, true] {
        let ds = FaceDataset::open(DatasetSpec::new(DatasetKind::Wflw, &root, &csv, is_train)).unwrap();
        assert_eq!(ds.len(), 3);
        for i in 0..3 {
            let s = ds.get(i, 7, 0).unwrap();
            assert_eq!(s.input.len(), 3 * 256 * 256);
            assert_eq!(s.target.len(), 98 * 64 * 64);
            assert_eq!(s.meta.index, i);
            assert_eq!(s.meta.pts.len(), 98);
            assert_eq!(s.meta.tpts.len(), 98);
            let (lo, hi) = ((0.0 - MEAN[0]) / STD[0], (1.0 - MEAN[2]) / STD[2]);
            assert!(s.input.iter().all(|&v| v >= lo - 1e-5 && v <= hi + 1e-5));
            // a landmark inside the heatmap has its peak 1 at tpts-1 (σ = 1.5 quirk: one
            // pixel further for coordinates 0..4); at test time all are inside
            let mut inside = 0;
            for j in 0..98 {
                let [tx, ty] = s.meta.tpts[j];
                if !(1.0..=64.0).contains(&tx) || !(1.0..=64.0).contains(&ty) {
                    assert!(is_train, "test-time landmark outside the crop");
                    continue;
                }
                inside += 1;
                let quirk = |v: f32| if v - 1.0 <= 4.0 { v as usize } else { v as usize - 1 };
                let (x, y) = (quirk(tx), quirk(ty));
                assert_eq!(s.target[j * 4096 + y * 64 + x], 1.0, "sample {i} joint {j} peak at {tx},{ty}");
            }
            assert!(inside > 80);
            if !is_train {
                assert!(s.meta.augmentation.is_none());
                assert_eq!(s.meta.scale, ds.annotation(i).unwrap().scale * 1.25);
            }
        }
    }
}

#[test]
fn pipeline_matches_direct_calls() {
    let dir = scratch("data-direct");
    let (root, csv) = make_wflw(&dir, 3);
    let recs = read_csv_annotations(&csv, &root, DatasetKind::Wflw, 98).unwrap();
    // test mode: crop(center, 1.25·scale, rot 0) + targets
    let ds = FaceDataset::open(DatasetSpec::new(DatasetKind::Wflw, &root, &csv, false)).unwrap();
    for (i, r) in recs.iter().enumerate() {
        let s = ds.get(i, 1, 0).unwrap();
        let img = load_image(&r.image_path).unwrap();
        let c = crop(&img, r.center, r.scale * 1.25, [256, 256], 0.0).unwrap();
        assert_eq!(s.input, normalized(&c), "input of sample {i}");
        let (t, tp) = HeatmapCodec::gaussian([64, 64], 1.5).encode_new(&r.pts, r.center, r.scale * 1.25, 0.0).unwrap();
        assert_eq!(s.target, t);
        assert_eq!(s.meta.tpts, tp);
        assert_eq!(s.meta.center, r.center);
    }
    // train mode with a fixed augmentation: flip image/points/centre, jittered scale, rotation
    let ds = FaceDataset::open(DatasetSpec::new(DatasetKind::Wflw, &root, &csv, true)).unwrap();
    let aug = Augmentation { scale_mult: 1.1, rot: 12.5, flip: true };
    for (i, r) in recs.iter().enumerate() {
        let s = ds.get_with(i, &aug).unwrap();
        let img = fliplr_image(&load_image(&r.image_path).unwrap()).unwrap();
        let mut pts = r.pts.clone();
        fliplr_joints(&mut pts, img.width).unwrap();
        let center = flip_center(r.center, img.width);
        let scale = r.scale * 1.25 * 1.1;
        let c = crop(&img, center, scale, [256, 256], 12.5).unwrap();
        assert_eq!(s.input, normalized(&c), "augmented input of sample {i}");
        let (t, tp) = HeatmapCodec::gaussian([64, 64], 1.5).encode_new(&pts, center, scale, 12.5).unwrap();
        assert_eq!(s.target, t);
        assert_eq!(s.meta.tpts, tp);
        assert_eq!(s.meta.center, center);
        assert_eq!(s.meta.scale, scale);
        let pts32: Vec<[f32; 2]> = pts.iter().map(|p| [p[0] as f32, p[1] as f32]).collect();
        assert_eq!(s.meta.pts, pts32, "meta pts are flipped, not rotated");
    }
}

#[test]
fn loader_is_deterministic_across_thread_counts() {
    let dir = scratch("data-loader");
    let (root, csv) = make_wflw(&dir, 7);
    let ds = Arc::new(FaceDataset::open(DatasetSpec::new(DatasetKind::Wflw, &root, &csv, true)).unwrap());
    let run = |threads: usize, epoch: u64| -> Vec<hrk::data::loader::Batch> {
        let dl = DataLoader::new(ds.clone(), LoaderConfig::new(3, true, threads, 42)).unwrap();
        assert_eq!(dl.num_batches(), 3);
        dl.epoch(epoch).map(|b| b.unwrap()).collect()
    };
    let serial = run(0, 0);
    assert_eq!(serial.len(), 3);
    assert_eq!(serial.iter().map(|b| b.len()).collect::<Vec<_>>(), vec![3, 3, 1], "last partial batch kept");
    assert_eq!(serial[0].input_shape, [3, 3, 256, 256]);
    assert_eq!(serial[0].target_shape, [3, 98, 64, 64]);
    assert_eq!(serial[0].input.len(), 3 * 3 * 256 * 256);
    assert_eq!(run(1, 0), serial);
    assert_eq!(run(4, 0), serial);
    // a batch's sample k is exactly dataset.get(index, seed, epoch)
    let m = &serial[1].metas[2];
    let single = ds.get(m.index, 42, 0).unwrap();
    assert_eq!(&serial[1].input[2 * 3 * 65536..3 * 3 * 65536], &single.input[..]);
    // the order is a permutation and changes with the epoch
    let mut seen: Vec<usize> = serial.iter().flat_map(|b| b.metas.iter().map(|m| m.index)).collect();
    let order0 = seen.clone();
    seen.sort();
    assert_eq!(seen, (0..7).collect::<Vec<_>>());
    let e1 = run(4, 1);
    let order1: Vec<usize> = e1.iter().flat_map(|b| b.metas.iter().map(|m| m.index)).collect();
    assert_ne!(order0, order1);
    // dropping an epoch half-way stops the workers cleanly
    let dl = DataLoader::new(ds.clone(), LoaderConfig::new(1, false, 4, 42)).unwrap();
    let mut it = dl.epoch(0);
    assert_eq!(it.next().unwrap().unwrap().metas[0].index, 0);
    drop(it);
}

#[test]
fn augmentation_draws_follow_the_reference_distribution() {
    let n = 20000;
    let (mut rotated, mut flipped) = (0, 0);
    for i in 0..n {
        let a = sample_augmentation(3, 5, i, 0.25, 30.0, true);
        assert!((0.75..1.25).contains(&a.scale_mult));
        assert!(a.rot.abs() <= 30.0);
        rotated += (a.rot != 0.0) as usize;
        flipped += a.flip as usize;
        // same stream with flips off: same scale and rotation (the coin is still drawn), no flip
        let b = sample_augmentation(3, 5, i, 0.25, 30.0, false);
        assert_eq!((a.scale_mult, a.rot, false), (b.scale_mult, b.rot, b.flip));
    }
    let (pr, pf) = (rotated as f64 / n as f64, flipped as f64 / n as f64);
    assert!((pr - 0.6).abs() < 0.02, "rotation rate {pr}");
    assert!((pf - 0.5).abs() < 0.02, "flip rate {pf}");
    // draw order: scale, rotation coin, [angle], flip coin
    let mut r1 = Rng::for_tests(9);
    let a = draw_augmentation(&mut r1, 0.25, 30.0, true);
    let mut r2 = Rng::for_tests(9);
    let u = [r2.uniform(), r2.uniform(), r2.uniform(), r2.uniform()];
    assert_eq!(a.scale_mult, 0.75 + 0.5 * u[0]);
    if u[1] <= 0.6 {
        assert_eq!(a.rot, -30.0 + 60.0 * u[2]);
        assert_eq!(a.flip, u[3] <= 0.5);
    } else {
        assert_eq!(a.rot, 0.0);
        assert_eq!(a.flip, u[2] <= 0.5);
    }
    let o = epoch_order(100, 1, 2, true);
    let mut s = o.clone();
    s.sort();
    assert_eq!(s, (0..100).collect::<Vec<_>>());
    assert_eq!(epoch_order(5, 1, 2, false), vec![0, 1, 2, 3, 4]);
}

#[test]
fn aflw_box_size_and_300w_misspelling() {
    let dir = scratch("data-aflw300w");
    let root = dir.join("img");
    std::fs::create_dir_all(root.join("ibug")).unwrap();
    picture(120, 100, 1).save(root.join("a.png")).unwrap();
    let (pts, c, s) = landmarks(19, 120, 100, 5);
    let csv = dir.join("aflw.csv");
    std::fs::write(&csv, format!("{}\n{}\n", csv_header(19, true), csv_row("a.png", s, c, Some(37.5), &pts))).unwrap();
    let ds = FaceDataset::open(DatasetSpec::new(DatasetKind::Aflw, &root, &csv, false)).unwrap();
    let smp = ds.get(0, 0, 0).unwrap();
    assert_eq!(smp.meta.box_size, Some(37.5));
    assert_eq!(smp.meta.center, [c[0] as f32, c[1] as f32]);
    assert_eq!(smp.target.len(), 19 * 64 * 64);

    picture(120, 100, 2).save(root.join("ibug/image_092 _01.jpg")).unwrap();
    let (pts, c, s) = landmarks(68, 120, 100, 6);
    let csv = dir.join("300w.csv");
    std::fs::write(
        &csv,
        format!("{}\r\n{}\r\n", csv_header(68, false), csv_row("ibug/image_092_01.jpg", s, c, None, &pts)),
    )
    .unwrap();
    let recs = read_csv_annotations(&csv, &root, DatasetKind::W300, 68).unwrap();
    assert_eq!(recs[0].image_path, root.join("ibug/image_092 _01.jpg"));
    // A UTF-8 byte-order mark (as Excel writes) changes nothing.
    let bom_csv = dir.join("300w-bom.csv");
    std::fs::write(&bom_csv, [b"\xef\xbb\xbf".as_slice(), &std::fs::read(&csv).unwrap()].concat()).unwrap();
    let bom_recs = read_csv_annotations(&bom_csv, &root, DatasetKind::W300, 68).unwrap();
    assert_eq!(bom_recs.len(), recs.len());
    assert_eq!(bom_recs[0].image_path, recs[0].image_path);
    assert_eq!(FaceDataset::open(DatasetSpec::new(DatasetKind::W300, &root, &bom_csv, true)).unwrap().len(), 1);
    let ds = FaceDataset::open(DatasetSpec::new(DatasetKind::W300, &root, &csv, true)).unwrap();
    assert_eq!(ds.spec.sigma, 1.0);
    assert_eq!(ds.get(0, 1, 1).unwrap().target.len(), 68 * 64 * 64);
}

fn assert_one_line(err: &anyhow::Error, must_contain: &[&str]) {
    common::assert_one_line(&format!("{err:#}"), must_contain);
}

#[test]
fn bad_csv_inputs_give_one_line_errors() {
    let dir = scratch("data-badcsv");
    let header = csv_header(19, false);
    let (pts, c, s) = landmarks(19, 100, 100, 1);
    let good = csv_row("x.png", s, c, None, &pts);
    let mut nan = pts.clone();
    nan[4][1] = f64::NAN;
    let cases: Vec<(&str, String, &[&str])> = vec![
        ("empty.csv", String::new(), &["empty file"]),
        ("blank.csv", "\n\n".into(), &["empty file"]),
        ("header_only.csv", header.clone() + "\n", &["no data rows"]),
        ("bad_header.csv", "a,b,c\n".into(), &[":1:", "header has 3 columns"]),
        ("short_row.csv", format!("{header}\n{good}\n{good},1\n"), &[":3:", "row has 43 columns, expected 42"]),
        (
            "text.csv",
            format!("{header}\n{}\n", good.replacen(&format!(",{}", pts[0][0]), ",abc", 1)),
            &[":2:", "not a number", "'abc'"],
        ),
        ("nan.csv", format!("{header}\n{good}\n\n{}\n", csv_row("x.png", s, c, None, &nan)), &[":4:", "not finite"]),
        (
            "empty_cell.csv",
            format!("{header}\n{}\n", good.replacen(",", ",,", 1).replacen(&format!(",{}", c[0]), "", 1)),
            &[":2:", "empty"],
        ),
        ("bad_scale.csv", format!("{header}\n{}\n", csv_row("x.png", -1.0, c, None, &pts)), &[":2:", "scale"]),
        ("quote.csv", format!("{header}\n\"x.png,{s}\n"), &[":2:", "unterminated"]),
    ];
    for (name, text, needles) in cases {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        let err = match read_csv_annotations(&p, &dir, DatasetKind::Wflw, 19) {
            Err(e) => e,
            Ok(_) => panic!("{name}: accepted"),
        };
        let mut want = vec![p.to_str().unwrap()];
        want.extend_from_slice(needles);
        assert_one_line(&err, &want);
    }
    // wrong landmark count for the config, and a missing file
    let p = dir.join("ok.csv");
    std::fs::write(&p, format!("{header}\n{good}\n")).unwrap();
    assert!(read_csv_annotations(&p, &dir, DatasetKind::Wflw, 19).is_ok());
    assert_one_line(
        &read_csv_annotations(&p, &dir, DatasetKind::Wflw, 98).unwrap_err(),
        &["ok.csv:1:", "expected 200"],
    );
    assert_one_line(
        &read_csv_annotations(&dir.join("nope.csv"), &dir, DatasetKind::Wflw, 19).unwrap_err(),
        &["nope.csv"],
    );
    // a row whose image is missing fails when the sample is loaded, naming the image
    let mut spec = DatasetSpec::new(DatasetKind::Wflw, dir.path(), &p, false);
    spec.num_joints = 19;
    let ds = FaceDataset::open(spec).unwrap();
    assert_one_line(&ds.get(0, 0, 0).unwrap_err(), &["x.png"]);
}

#[test]
fn bad_images_give_one_line_errors() {
    let dir = scratch("data-badimg");
    let png = dir.join("a.png");
    picture(64, 48, 3).save(&png).unwrap();
    let jpg = dir.join("a.jpg");
    picture(64, 48, 3).save(&jpg).unwrap();
    let ok = decode_rgb8(&png).unwrap();
    assert_eq!((ok.width, ok.height, ok.data.len()), (64, 48, 64 * 48 * 3));
    assert_eq!(&ok.data[..3], &picture(64, 48, 3).get_pixel(0, 0).0);
    // grey → R = G = B; RGBA → alpha dropped
    let grey = dir.join("g.png");
    image::GrayImage::from_fn(5, 4, |x, y| image::Luma([(x * 40 + y) as u8])).save(&grey).unwrap();
    let g = decode_rgb8(&grey).unwrap();
    assert_eq!(&g.data[3 * 6..3 * 7], &[41, 41, 41]);
    let rgba = dir.join("rgba.png");
    image::RgbaImage::from_fn(3, 2, |x, _| image::Rgba([x as u8, 9, 8, 7])).save(&rgba).unwrap();
    assert_eq!(decode_rgb8(&rgba).unwrap().data, vec![0, 9, 8, 1, 9, 8, 2, 9, 8, 0, 9, 8, 1, 9, 8, 2, 9, 8]);
    let ppm = dir.join("p.ppm");
    std::fs::write(&ppm, b"P6\n2 1\n255\n\x01\x02\x03\x04\x05\x06").unwrap();
    assert_eq!(decode_rgb8(&ppm).unwrap().data, vec![1, 2, 3, 4, 5, 6]);
    let bmp = dir.join("b.bmp");
    picture(7, 5, 1).save(&bmp).unwrap();
    assert_eq!(decode_rgb8(&bmp).unwrap().data, picture(7, 5, 1).into_raw());

    let cases: Vec<(&str, Vec<u8>)> = {
        let pb = std::fs::read(&png).unwrap();
        let jb = std::fs::read(&jpg).unwrap();
        vec![
            ("trunc.png", pb[..pb.len() / 2].to_vec()),
            ("trunc.jpg", jb[..jb.len() / 3].to_vec()),
            ("trunc90.jpg", jb[..jb.len() * 9 / 10].to_vec()),
            ("garbage.png", b"\x89PNG\r\n\x1a\nthis is not a png".to_vec()),
            ("text.jpg", b"hello, world".to_vec()),
            ("empty.png", vec![]),
            ("huge.ppm", b"P6\n20000 20000\n255\n\x00\x00\x00".to_vec()),
            ("wide.ppm", b"P6\n17000 1\n255\n\x00".to_vec()),
        ]
    };
    for (name, bytes) in cases {
        let p = dir.join(name);
        std::fs::write(&p, &bytes).unwrap();
        let err = decode_rgb8(&p).expect_err(name);
        assert_one_line(&err, &[p.to_str().unwrap()]);
        if name.ends_with(".ppm") {
            assert_one_line(&err, &["larger than supported"]);
        }
        if name != "trunc90.jpg" {
            let err = decode_rgb8_bytes(&bytes, Path::new(name)).expect_err(name);
            assert_one_line(&err, &[name]);
        } else {
            // AFLW mode (LOAD_TRUNCATED_IMAGES) decodes it
            assert!(jpeg_is_truncated(&bytes) && !jpeg_is_truncated(&std::fs::read(&jpg).unwrap()));
            assert_eq!(decode_rgb8_opts(&p, true).unwrap().width, 64);
        }
    }
    assert_one_line(&decode_rgb8(&dir.join("missing.png")).unwrap_err(), &["missing.png"]);
}

/// Writes a MATLAB v7.3 COFW-style file with hdf5-pure's MAT builder: a cell array of uint8
/// images (column-major, MATLAB dims H×W[×3]) and an N×87 double matrix.
fn write_cofw(
    path: &Path, img_var: &str, phis_var: &str, images: &[(usize, usize, usize, Vec<u8>)], phis_rows: &[Vec<f64>],
) {
    use hdf5_pure::mat::{options::Options, MatBuilder};
    let mut mb = MatBuilder::new(Options::default());
    mb.cell(img_var, &[images.len(), 1], |cw| {
        for (h, w, c, data) in images {
            if *c == 1 {
                cw.push_u8(&[*h, *w], data)?;
            } else {
                cw.push_u8(&[*h, *w, *c], data)?;
            }
        }
        Ok(())
    })
    .unwrap();
    let (n, cols) = (phis_rows.len(), phis_rows[0].len());
    let mut colmajor = vec![0f64; n * cols];
    for (i, row) in phis_rows.iter().enumerate() {
        for (j, v) in row.iter().enumerate() {
            colmajor[j * n + i] = *v;
        }
    }
    mb.write_f64(phis_var, &[n, cols], &colmajor).unwrap();
    mb.write(path).unwrap();
}

#[test]
fn cofw_mat_v73_is_read_like_hdf5storage() {
    let dir = scratch("data-cofw");
    // image 0: RGB 6×5 (H×W), pixel (y,x,c) = 100c + 10y + x; image 1: grey 4×7
    let (h0, w0) = (6usize, 5usize);
    let mut rgb = vec![0u8; h0 * w0 * 3];
    for c in 0..3 {
        for x in 0..w0 {
            for y in 0..h0 {
                rgb[c * h0 * w0 + x * h0 + y] = (100 * c + 10 * y + x) as u8;
            }
        }
    }
    let (h1, w1) = (4usize, 7usize);
    let grey: Vec<u8> = (0..h1 * w1).map(|k| (k % h1 * 10 + k / h1) as u8).collect(); // (y,x) -> 10y + x
    let mut rows = Vec::new();
    for i in 0..2 {
        let mut r: Vec<f64> = (0..29).map(|j| 10.0 + j as f64 + i as f64 * 0.25).collect();
        r.extend((0..29).map(|j| 20.5 + 2.0 * j as f64));
        r.extend((0..29).map(|j| (j % 2) as f64)); // occlusion flags, ignored
        rows.push(r);
    }
    let train = dir.join("COFW_train_color.mat");
    write_cofw(&train, "IsTr", "phisTr", &[(h0, w0, 3, rgb), (h1, w1, 1, grey)], &rows);
    let d = read_cofw(&train, true).unwrap();
    assert_eq!(d.images.len(), 2);
    let im0 = &d.images[0];
    assert_eq!((im0.width, im0.height), (w0, h0));
    for (y, x, c) in [(0, 0, 0), (5, 4, 2), (2, 3, 1)] {
        assert_eq!(im0.data[(y * w0 + x) * 3 + c] as usize, 100 * c + 10 * y + x);
    }
    let im1 = &d.images[1];
    assert_eq!((im1.width, im1.height), (w1, h1));
    assert_eq!(&im1.data[(3 * w1 + 6) * 3..(3 * w1 + 6) * 3 + 3], &[36, 36, 36]);
    assert_eq!(d.pts[1][3], [13.25, 26.5]);
    assert_eq!(d.pts[0][28], [38.0, 76.5]);
    let (center, scale) = cofw_center_scale(&d.pts[1]);
    // x 10.25..38.25 → floor 10, ceil 39; y 20.5..76.5 → floor 20, ceil 77
    assert_eq!(center, [24.5, 48.5]);
    assert_eq!(scale, 57.0 / 200.0);

    // the dataset front end: the test file uses IsT/phisT
    let test = dir.join("COFW_test_color.mat");
    let (hb, wb) = (90usize, 60usize); // large enough to hold the landmark box
    let big: Vec<u8> = (0..hb * wb).map(|k| (k % 251) as u8).collect();
    write_cofw(&test, "IsT", "phisT", &[(hb, wb, 1, big)], &rows[..1]);
    let ds = FaceDataset::open(DatasetSpec::new(DatasetKind::Cofw, dir.path(), &test, false)).unwrap();
    assert_eq!(ds.len(), 1);
    let s = ds.get(0, 0, 0).unwrap();
    assert_eq!(s.target.len(), 29 * 64 * 64);
    assert_eq!(s.meta.scale, cofw_center_scale(&d.pts[0]).1 * 1.25);

    // wrong variables / shapes → one-line errors naming the file
    let err = read_cofw(&test, true).unwrap_err();
    assert_one_line(&err, &["COFW_test_color.mat", "phisTr"]);
    let bad = dir.join("bad_shape.mat");
    write_cofw(&bad, "IsT", "phisT", &[(h1, w1, 1, vec![0u8; h1 * w1])], &[vec![1.0; 40]]);
    assert_one_line(&read_cofw(&bad, false).unwrap_err(), &["bad_shape.mat", "phisT", "N×87"]);
    let mismatch = dir.join("mismatch.mat");
    write_cofw(&mismatch, "IsT", "phisT", &[(h1, w1, 1, vec![0u8; h1 * w1])], &rows);
    assert_one_line(&read_cofw(&mismatch, false).unwrap_err(), &["mismatch.mat", "1 images", "2 rows"]);
    let not_h5 = dir.join("plain.mat");
    std::fs::write(&not_h5, b"MATLAB 5.0 MAT-file, not HDF5").unwrap();
    assert_one_line(&read_cofw(&not_h5, false).unwrap_err(), &["plain.mat"]);
}

/// End to end against the reference crops: a CSV row (scale_csv, centre before any flip) goes
/// through decode → [flip] → ×1.25·jitter → crop → normalise, and must give exactly the
/// normalised fixture crop.
#[test]
fn pipeline_reproduces_reference_crop_fixtures() {
    let Some(json) = common::shared_json_or_skip("fixtures/crops/cases.json") else { return };
    let crops = shared_dir().join("fixtures/crops");
    let cases = json["cases"].as_array().unwrap();
    let dir = scratch("data-fixtures");
    let mut lines = vec![csv_header(98, false)];
    for c in cases {
        let center = c.get("center_before_flip").unwrap_or(&c["center"]);
        let (cx, cy) = (center[0].as_f64().unwrap(), center[1].as_f64().unwrap());
        let pts: Vec<[f64; 2]> = (0..98).map(|j| [cx - 20.0 + j as f64 * 0.4, cy + 5.0]).collect();
        lines.push(csv_row(c["image"].as_str().unwrap(), c["scale_csv"].as_f64().unwrap(), [cx, cy], None, &pts));
    }
    let csv = dir.join("fixtures.csv");
    std::fs::write(&csv, lines.join("\n")).unwrap();
    let test_ds = FaceDataset::open(DatasetSpec::new(DatasetKind::Wflw, &crops, &csv, false)).unwrap();
    let train_ds = FaceDataset::open(DatasetSpec::new(DatasetKind::Wflw, &crops, &csv, true)).unwrap();
    let mut checked = 0;
    for (i, c) in cases.iter().enumerate() {
        let id = c["id"].as_str().unwrap();
        let aug = Augmentation {
            scale_mult: c["scale_jitter"].as_f64().unwrap(),
            rot: c["rot"].as_f64().unwrap(),
            flip: c["flip_image_first"].as_bool().unwrap(),
        };
        let s = if aug.is_none() { test_ds.get(i, 0, 0) } else { train_ds.get_with(i, &aug) }.unwrap();
        // (serde_json's default float parsing may be 1 ulp off, hence the tolerance)
        let want_scale = c["scale"].as_f64().unwrap();
        assert!(
            (s.meta.scale - want_scale).abs() <= 4.0 * f64::EPSILON * want_scale,
            "{id}: scale {} vs {want_scale}",
            s.meta.scale
        );
        let want_c = [c["center"][0].as_f64().unwrap() as f32, c["center"][1].as_f64().unwrap() as f32];
        assert_eq!(s.meta.center, want_c, "{id}: center");
        let expected = decode_rgb8(&crops.join(c["expected"].as_str().unwrap())).unwrap();
        let want = normalized(&hrk::data::imageio::rgb8_to_image(&expected, false).unwrap());
        let bad = s.input.iter().zip(&want).filter(|(a, b)| a != b).count();
        assert_eq!(bad, 0, "{id}: {bad} input values differ from the reference crop");
        checked += 1;
    }
    assert_eq!(checked, 24);
}
