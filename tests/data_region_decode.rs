//! Region decoding (`HRK_JPEG_REGION`): a JPEG's rectangle decoded alone (libjpeg-turbo's
//! skip/crop of scanlines) holds exactly the pixels of the whole decode, on every layout of the
//! JPEG corpus (4:2:0, 4:2:2, 4:4:4, grey, progressive, restart markers, odd sizes) and for
//! rectangles at every edge; the crop from a rectangle equals the crop from the whole image;
//! and whole training/test samples are the same with region decoding on and off.

use hrk::config::DatasetKind;
use hrk::data::augment::Augmentation;
use hrk::data::dataset::{DatasetSpec, FaceDataset};
use hrk::data::imageio::{decode_rgb8, decode_rgb8_region_opts, Rect, Rgb8};
use hrk::data::transforms::{crop_rgb8, crop_rgb8_region, crop_source, CropSource, InputType};
use hrk::rng::Rng;
use std::path::{Path, PathBuf};

mod common;
use common::crop_case::{random_crop_case, CropCase};

fn corpus() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/jpeg");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "jpg"))
        .collect();
    files.sort();
    assert!(files.len() >= 8, "JPEG corpus incomplete in {}", dir.display());
    files
}

/// The pixels of `r` cut from a whole image.
fn cut(img: &Rgb8, r: Rect) -> Vec<u8> {
    let mut out = Vec::with_capacity(r.w * r.h * 3);
    for y in r.y..r.y + r.h {
        out.extend_from_slice(&img.data[(y * img.width + r.x) * 3..(y * img.width + r.x + r.w) * 3]);
    }
    out
}

fn random_rect(rng: &mut Rng, w: usize, h: usize) -> Rect {
    let span = |rng: &mut Rng, n: usize| {
        // Edges, single pixels, iMCU boundaries ±1 and arbitrary spans.
        let a = match rng.below(5) {
            0 => 0,
            1 => (rng.below(n.div_ceil(16)) * 16).saturating_sub(rng.below(2)),
            _ => rng.below(n),
        };
        let len = match rng.below(5) {
            0 => n - a,
            1 => 1,
            _ => 1 + rng.below(n - a),
        };
        (a.min(n - 1), len.min(n - a.min(n - 1)).max(1))
    };
    let (x, rw) = span(rng, w);
    let (y, rh) = span(rng, h);
    Rect { x, y, w: rw, h: rh }
}

/// A photo-like picture saved as a JPEG.
fn photo_jpeg(path: &Path, w: u32, h: u32, k: u32) {
    common::photo::photo_like(w, h, k).save_with_format(path, image::ImageFormat::Jpeg).unwrap();
}

#[test]
fn region_pixels_equal_whole_decode_on_every_layout() {
    let tmp = common::scratch("region-decode");
    let mut files = corpus();
    // Larger than the corpus: many iMCU rows and columns on both sides of a rectangle.
    let big = tmp.path().join("photo_1024x768.jpg");
    photo_jpeg(&big, 1024, 768, 3);
    files.push(big);
    let mut rng = Rng::for_tests(11);
    let mut checked = 0;
    for file in &files {
        let whole = decode_rgb8(file).unwrap();
        let (w, h) = (whole.width, whole.height);
        for k in 0..60 {
            let r = random_rect(&mut rng, w, h);
            let d = decode_rgb8_region_opts(file, false, |fw, fh| {
                assert_eq!([fw, fh], [w, h]);
                Some(r)
            })
            .unwrap_or_else(|e| panic!("{}: {e}", file.display()));
            assert_eq!(d.full, [w, h]);
            if d.is_whole() {
                assert_eq!(d.pixels, whole, "{} rect {r:?}", file.display());
            } else {
                assert_eq!((d.origin, d.pixels.width, d.pixels.height), ([r.x, r.y], r.w, r.h));
                let want = cut(&whole, r);
                let diff = d.pixels.data.iter().zip(&want).filter(|(a, b)| a != b).count();
                assert_eq!(
                    diff,
                    0,
                    "{} case {k} rect {r:?}: {diff} values differ from the whole decode",
                    file.display()
                );
            }
            checked += 1;
        }
        // `None` is the whole image; a rectangle outside it is a one-line error.
        assert_eq!(decode_rgb8_region_opts(file, false, |_, _| None).unwrap().pixels, whole);
        let err = decode_rgb8_region_opts(file, false, |fw, _| Some(Rect { x: fw, y: 0, w: 1, h: 1 })).unwrap_err();
        common::assert_one_line(&format!("{err:#}"), &["outside"]);
    }
    assert!(checked >= 9 * 60);
}

/// The crop from the `crop_source` rectangle (or a larger one) is the crop from the whole image,
/// or `None` where it needs the whole image; random windows inside, across and outside the
/// image, rotation, flip, pre-downscale, both input types.
#[test]
fn crop_from_region_equals_crop_from_whole_image() {
    let mut rng = Rng::for_tests(13);
    let (mut from_region, mut fell_back) = (0, 0);
    for k in 0..500 {
        let (w, h) = (40 + rng.below(160), 40 + rng.below(160));
        let (lo, hi) = if k % 3 == 0 { (0, 255) } else { (rng.range(0.0, 60.0) as u8, rng.range(190.0, 255.0) as u8) };
        let img = common::random_image(&mut rng, w, h, lo, hi);
        let flip = k % 2 == 1;
        let input = if k % 4 < 3 { InputType::Float32 } else { InputType::Uint8 };
        let CropCase { center, scale, res, rot } = random_crop_case(&mut rng, k, w, h);
        let whole = crop_rgb8(&img, flip, input, center, scale, res, rot);
        let CropSource::Rect { x, y, w: rw, h: rh } =
            crop_source([w, h], flip, InputType::Uint8, center, scale, res, rot)
        else {
            continue;
        };
        // The rectangle (asked as for a uint8 input, so that float32 pre-downscales run from a
        // region too), or one grown by a few pixels (clipped to the image).
        let grow = if k % 2 == 0 { 0 } else { 1 + rng.below(5) };
        let (x0, y0) = (x.saturating_sub(grow), y.saturating_sub(grow));
        let (x1, y1) = ((x + rw + grow).min(w), (y + rh + grow).min(h));
        let (x1, y1) = if rw == 0 || rh == 0 { (x0, y0) } else { (x1, y1) };
        let part = Rgb8::new(x1 - x0, y1 - y0, cut(&img, Rect { x: x0, y: y0, w: x1 - x0, h: y1 - y0 })).unwrap();
        let region = crop_rgb8_region(&part, [w, h], [x0, y0], flip, input, center, scale, res, rot);
        match (region, whole) {
            (Ok(Some(r)), Ok(wh)) => {
                assert!(r == wh, "case {k}: {w}x{h} flip {flip} {input:?} c {center:?} s {scale} rot {rot}");
                from_region += 1;
            }
            (Ok(None), Ok(_)) => fell_back += 1,
            (Err(r), Err(wh)) => assert_eq!(r.to_string(), wh.to_string(), "case {k}"),
            (r, wh) => panic!("case {k}: region {:?} vs whole {:?}", r.map(|_| ()), wh.map(|_| ())),
        }
    }
    assert!(from_region > 250, "only {from_region} crops from a region ({fell_back} fell back)");
    assert!(fell_back > 0, "the float32 pre-downscale of a partial-range region must ask for the whole image");
    assert_eq!(
        crop_source([100, 80], false, InputType::Float32, [50.0, 40.0], 3.0, [32, 32], 0.0),
        CropSource::Whole,
        "float32 pre-downscale reads the whole image"
    );
}

/// WFLW-like samples (1024×768 JPEGs, faces of 100–420 px, some at the border) are identical with
/// region decoding on and off, with training augmentation (rotation, scale, flip) and without.
#[test]
fn samples_identical_with_and_without_region_decode() {
    let tmp = common::scratch("region-samples");
    let dir = tmp.path();
    for k in 0..3 {
        photo_jpeg(&dir.join(format!("img{k}.jpg")), 1024, 768, k);
    }
    let mut rng = Rng::for_tests(17);
    let n = 24;
    // Every fourth face sits at a corner, partly outside the picture.
    let layout = common::wflw_csv::FaceLayout {
        images: 3,
        corner_every: 4,
        corner: [(-40.0, 80.0), (690.0, 800.0)],
        inside: [(150.0, 870.0), (120.0, 650.0)],
        side: (100.0, 420.0),
    };
    let csv = common::wflw_csv::wflw_csv(&mut rng, n, &layout);
    let csv_path = dir.join("train.csv");
    std::fs::write(&csv_path, csv).unwrap();
    for is_train in [true, false] {
        let open = |region: bool| {
            let mut spec = DatasetSpec::new(DatasetKind::Wflw, dir, &csv_path, is_train);
            spec.region_decode = region;
            FaceDataset::open(spec).unwrap()
        };
        let (with, without) = (open(true), open(false));
        for i in 0..n {
            let aug = with.augmentation_for(i, 5, 1);
            let a = with.get_with(i, &aug).unwrap();
            let b = without.get_with(i, &aug).unwrap();
            assert!(a == b, "sample {i} (train {is_train}, {aug:?}) differs with region decoding");
            if is_train && i < 3 {
                // Forced flips and the largest rotation too.
                let extra = Augmentation { flip: !aug.flip, rot: 30.0, ..aug };
                assert!(
                    with.get_with(i, &extra).unwrap() == without.get_with(i, &extra).unwrap(),
                    "sample {i} {extra:?}"
                );
            }
        }
    }
}

/// The AVX2 bilinear sampler (rotation) gives the portable sampler's bytes: random images (odd
/// widths, so the last pixel has no 4th byte to read), angles of every quadrant and right angles,
/// regions inside and across the source.
#[test]
fn rotation_sampler_simd_equals_portable() {
    use hrk::data::pillow::{affine_bilinear_region, affine_bilinear_region_portable, rotate_matrix};
    let mut rng = Rng::for_tests(19);
    for k in 0..300 {
        let (w, h) = (1 + rng.below(120), 1 + rng.below(90));
        let img = Rgb8::new(w, h, (0..w * h * 3).map(|_| rng.below(256) as u8).collect()).unwrap();
        let angle = if k % 9 == 0 { 90.0 * (k / 9 % 4) as f64 } else { rng.range(-200.0, 200.0) };
        let m = rotate_matrix(angle, w, h);
        let (x0, y0) = (rng.below(w), rng.below(h));
        let xr = (x0, 1 + rng.below(w - x0));
        let yr = (y0, 1 + rng.below(h - y0));
        let fast = affine_bilinear_region(&img, w, h, m, xr, yr).unwrap();
        let portable = affine_bilinear_region_portable(&img, w, h, m, xr, yr).unwrap();
        assert!(fast == portable, "case {k}: {w}x{h} angle {angle} region {xr:?} {yr:?}");
    }
}

/// The resize compiled for AVX2 (with its gathering horizontal pass) gives the baseline build's
/// bytes: random and saturated images, up- and downscaling (3 to over 11 taps), mirrored views and
/// value tables, output regions at every edge (partial groups of eight outputs).
#[test]
fn resize_simd_equals_portable() {
    use hrk::data::pillow::{resize_bilinear_region, resize_bilinear_region_portable, RowView};
    let mut rng = Rng::for_tests(23);
    let mut lut = [0u8; 256];
    for (v, o) in lut.iter_mut().enumerate() {
        *o = (255 - v) as u8;
    }
    for k in 0..300 {
        let (w, h) = (1 + rng.below(160), 1 + rng.below(120));
        let data: Vec<u8> = match k % 7 {
            0 => vec![255; w * h * 3],
            1 => (0..w * h * 3).map(|i| if i % 2 == 0 { 255 } else { 0 }).collect(),
            _ => (0..w * h * 3).map(|_| rng.below(256) as u8).collect(),
        };
        let img = Rgb8::new(w, h, data).unwrap();
        let (ow, oh) = (1 + rng.below(300), 1 + rng.below(300));
        let view = RowView::whole(&img, k % 3 == 1, (k % 5 == 2).then_some(&lut));
        let (x0, y0) = (rng.below(ow), rng.below(oh));
        let xr = (x0, 1 + rng.below(ow - x0));
        let yr = (y0, 1 + rng.below(oh - y0));
        let fast = resize_bilinear_region(view, ow, oh, xr, yr).unwrap();
        let portable = resize_bilinear_region_portable(view, ow, oh, xr, yr).unwrap();
        assert!(fast == portable, "case {k}: {w}x{h} -> {ow}x{oh} region {xr:?} {yr:?}");
    }
}
