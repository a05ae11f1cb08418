//! The fast byte crop (`crop_rgb8`) against the reference fixtures, against the plain float
//! transcription (`crop_input`) on many random cases, and the COFW uint8 input type against
//! the python reference (`ref_data.py`) when a python with numpy + Pillow < 13 is available.

use hrk::data::imageio::{decode_rgb8, rgb8_to_image};
use hrk::data::transforms::{crop_input, crop_rgb8, InputType};
use hrk::rng::Rng;
use std::path::PathBuf;
use std::process::Command;

mod common;
use common::crop_case::{random_crop_case, CropCase};
use common::{random_image, scratch, shared_dir};

#[test]
fn fast_crop_reproduces_reference_fixtures() {
    let Some(json) = common::shared_json_or_skip("fixtures/crops/cases.json") else { return };
    let dir = shared_dir().join("fixtures/crops");
    let mut checked = 0;
    for case in json["cases"].as_array().unwrap() {
        let id = case["id"].as_str().unwrap();
        let img = decode_rgb8(&dir.join(case["image"].as_str().unwrap())).unwrap();
        let flip = case["flip_image_first"].as_bool().unwrap_or(false);
        let center = [case["center"][0].as_f64().unwrap() as f32, case["center"][1].as_f64().unwrap() as f32];
        let scale = case["scale"].as_f64().unwrap();
        let rot = case["rot"].as_f64().unwrap();
        let res = [case["res"][0].as_u64().unwrap() as usize, case["res"][1].as_u64().unwrap() as usize];
        let out =
            crop_rgb8(&img, flip, InputType::Float32, center, scale, res, rot).unwrap_or_else(|e| panic!("{id}: {e}"));
        let expected = decode_rgb8(&dir.join(case["expected"].as_str().unwrap())).unwrap();
        assert_eq!((out.width, out.height), (expected.width, expected.height), "{id}: size");
        let diff = out.data.iter().zip(&expected.data).filter(|(a, b)| a != b).count();
        assert_eq!(diff, 0, "{id}: {diff} values differ from the reference crop");
        checked += 1;
    }
    assert!(checked > 0);
}

/// Same bytes (or the same error) as the plain float path on random crops: windows inside,
/// across the border and outside the image, with and without rotation, pre-downscale (sf ≥ 2),
/// flip, both input types, non-square outputs.
#[test]
fn fast_crop_matches_float_path_on_random_cases() {
    let mut rng = Rng::for_tests(7);
    let mut compared = 0;
    for k in 0..400 {
        let (w, h) = (40 + (rng.range(0.0, 120.0) as usize), 40 + (rng.range(0.0, 120.0) as usize));
        let (lo, hi) = if k % 3 == 0 { (0, 255) } else { (rng.range(0.0, 100.0) as u8, rng.range(150.0, 255.0) as u8) };
        let img = random_image(&mut rng, w, h, lo, hi);
        let flip = k % 2 == 1;
        let input = if k % 4 < 2 { InputType::Float32 } else { InputType::Uint8 };
        let CropCase { center, scale, res, rot } = random_crop_case(&mut rng, k, w, h);
        let fast = crop_rgb8(&img, flip, input, center, scale, res, rot);
        let slow = crop_input(&rgb8_to_image(&img, flip).unwrap(), input, center, scale, res, rot);
        match (fast, slow) {
            (Ok(f), Ok(s)) => {
                assert_eq!((f.width, f.height), (s.width, s.height), "case {k}");
                assert!(
                    f.data == s.to_u8(),
                    "case {k}: {w}x{h} flip {flip} {input:?} c {center:?} s {scale} rot {rot} res {res:?}"
                );
                compared += 1;
            }
            (Err(f), Err(s)) => assert_eq!(f.to_string(), s.to_string(), "case {k}"),
            (f, s) => panic!("case {k}: fast {:?} vs float {:?}", f.map(|_| ()), s.map(|_| ())),
        }
    }
    assert!(compared > 300, "only {compared} successful crops");
}

/// A python with numpy and Pillow < 13, from `common::python_candidates` (HRK_PYTHON, `.venv`, python3).
fn reference_python() -> Option<PathBuf> {
    let candidates = common::python_candidates();
    let probe = "import numpy, PIL, sys; sys.exit(0 if int(PIL.__version__.split('.')[0]) < 13 else 1)";
    candidates.into_iter().find(|p| Command::new(p).args(["-c", probe]).output().is_ok_and(|o| o.status.success()))
}

/// COFW hands uint8 arrays to crop: with sf ≥ 2 the pre-downscale does not stretch the image
/// (a float32 array is stretched). On an image spanning 40..180 the two differ; both must
/// match `ref_data.crop` with the corresponding dtype.
#[test]
fn uint8_input_skips_predownscale_stretch_like_reference() {
    let mut rng = Rng::for_tests(3);
    let img = random_image(&mut rng, 300, 220, 40, 180);
    // sf = 1.9·200/64 ≈ 5.9: pre-downscale; one case with rotation
    let cases: [([f32; 2], f64, f64, bool); 3] =
        [([150.0, 110.0], 1.9, 0.0, false), ([140.5, 100.0], 1.2, 17.5, false), ([120.0, 90.0], 1.5, -8.0, true)];
    let res = [64usize, 64];
    let mut ours = Vec::new();
    for &(center, scale, rot, flip) in &cases {
        let u8_out = crop_rgb8(&img, flip, InputType::Uint8, center, scale, res, rot).unwrap();
        let f32_out = crop_rgb8(&img, flip, InputType::Float32, center, scale, res, rot).unwrap();
        assert_ne!(u8_out.data, f32_out.data, "the input type must matter for {center:?}/{scale}");
        // the slow float transcription agrees
        let slow = crop_input(&rgb8_to_image(&img, flip).unwrap(), InputType::Uint8, center, scale, res, rot).unwrap();
        assert_eq!(u8_out.data, slow.to_u8());
        ours.push((u8_out, f32_out));
    }

    let ref_dir = shared_dir().join("reference-py");
    if !ref_dir.join("ref_data.py").exists() {
        eprintln!("skipped python comparison: no {}", ref_dir.join("ref_data.py").display());
        return;
    }
    let Some(python) = reference_python() else {
        eprintln!("skipped python comparison: no python with numpy and Pillow < 13 (set HRK_PYTHON)");
        return;
    };
    let dir = scratch("crop-u8");
    std::fs::write(dir.join("img.bin"), &img.data).unwrap();
    let case_list: Vec<String> = cases
        .iter()
        .map(|(c, s, r, f)| {
            format!("({:?}, {:?}, {s:?}, {r:?}, {})", c[0] as f64, c[1] as f64, if *f { "True" } else { "False" })
        })
        .collect();
    let script = format!(
        "import sys, numpy as np\nsys.path.insert(0, {ref:?})\nimport ref_data\n\
         img = np.fromfile({bin:?}, dtype=np.uint8).reshape({h}, {w}, 3)\n\
         for k, (cx, cy, s, r, f) in enumerate([{cases}]):\n\
         \x20   a = np.ascontiguousarray(np.fliplr(img)) if f else img\n\
         \x20   for name, arr in (('u8', a), ('f32', a.astype(np.float32))):\n\
         \x20       out = ref_data.crop(arr, [np.float32(cx), np.float32(cy)], s, ({r0}, {r1}), rot=r)\n\
         \x20       np.asarray(out, dtype=np.uint8).tofile({dir:?} + '/out%d_%s.bin' % (k, name))\n",
        ref = ref_dir.display().to_string(),
        bin = dir.join("img.bin").display().to_string(),
        h = img.height,
        w = img.width,
        cases = case_list.join(", "),
        r0 = res[0],
        r1 = res[1],
        dir = dir.display().to_string(),
    );
    let out = Command::new(&python).args(["-c", &script]).output().unwrap();
    assert!(out.status.success(), "python reference failed: {}", String::from_utf8_lossy(&out.stderr));
    for (k, (u8_out, f32_out)) in ours.iter().enumerate() {
        let want_u8 = std::fs::read(dir.join(format!("out{k}_u8.bin"))).unwrap();
        let want_f32 = std::fs::read(dir.join(format!("out{k}_f32.bin"))).unwrap();
        assert_eq!(u8_out.data, want_u8, "case {k}: uint8 input differs from ref_data.crop");
        assert_eq!(f32_out.data, want_f32, "case {k}: float32 input differs from ref_data.crop");
    }
}

/// The truncation check (searches from the end) agrees with the plain forward pair scan.
#[test]
fn jpeg_truncation_check_matches_pair_scan() {
    let naive = |b: &[u8]| {
        if !b.starts_with(&[0xFF, 0xD8]) {
            return false;
        }
        match b.windows(2).rposition(|w| w == [0xFF, 0xDA]) {
            None => true,
            Some(s) => !b[s..].windows(2).any(|w| w == [0xFF, 0xD9]),
        }
    };
    let mut rng = Rng::for_tests(11);
    let alphabet = [0xFFu8, 0xDA, 0xD9, 0x00, 0x12];
    let mut truncated = 0;
    for _ in 0..3000 {
        let len = rng.range(2.0, 24.0) as usize;
        let mut b = vec![0xFF, 0xD8];
        b.extend((0..len).map(|_| alphabet[rng.range(0.0, 5.0) as usize % 5]));
        let want = naive(&b);
        truncated += want as usize;
        assert_eq!(hrk::data::imageio::jpeg_is_truncated(&b), want, "{b:02X?}");
    }
    assert!(truncated > 100 && truncated < 2900);
}

/// Edge shapes the fast path hands to the float path or handles itself: a 3-pixel window
/// (scipy's channel-axis rule), 1-pixel windows, degenerate pre-downscale, windows off the image.
#[test]
fn fast_crop_edge_cases_match_float_path() {
    let mut rng = Rng::for_tests(5);
    let img = random_image(&mut rng, 50, 50, 20, 230);
    let cases: [([f32; 2], f64, f64); 7] = [
        ([25.0, 25.0], 0.015, 0.0),
        ([25.0, 25.0], 1e-12, 0.0),
        ([25.0, 25.0], 1e6, 0.0),
        ([2000.0, 25.0], 0.5, 0.0),
        ([80.0, 25.0], 0.2, 0.0),
        ([25.0, 25.0], 0.02, 45.0),
        ([25.0, 25.0], 0.3, 360.0),
    ];
    for (k, &(center, scale, rot)) in cases.iter().enumerate() {
        for flip in [false, true] {
            for input in [InputType::Float32, InputType::Uint8] {
                let fast = crop_rgb8(&img, flip, input, center, scale, [256, 256], rot);
                let slow = crop_input(&rgb8_to_image(&img, flip).unwrap(), input, center, scale, [256, 256], rot);
                match (fast, slow) {
                    (Ok(f), Ok(s)) => {
                        assert!(f.data == s.to_u8() && f.width == s.width, "case {k} flip {flip} {input:?}")
                    }
                    (Err(f), Err(s)) => assert_eq!(f.to_string(), s.to_string(), "case {k}"),
                    (f, s) => panic!("case {k}: fast {:?} vs float {:?}", f.map(|_| ()), s.map(|_| ())),
                }
            }
        }
    }
}
