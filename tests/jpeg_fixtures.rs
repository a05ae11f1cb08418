//! JPEGs read exactly as the reference reads them (tests/fixtures/jpeg, made by its
//! make_jpeg_fixtures.py with Pillow): the decoded pixels of every file (4:2:0, 4:2:2, 4:4:4,
//! grey, progressive, restart markers, odd sizes, EXIF orientation ignored) hash to what
//! Pillow decoded, and crops of them by the reference pipeline match with 0 differing values.
//! Mutated copies of the corpus must give one-line errors naming the file, never a panic or
//! libjpeg's `exit()`.

use std::path::{Path, PathBuf};

use hrk::data::image::Image;
use hrk::data::imageio::{decode_rgb8, load_image};
use hrk::data::transforms::crop;
use serde_json::Value;
use std::time::Duration;

mod common;

#[global_allocator]
static GLOBAL: common::alloc_guard::TrackingAlloc = common::alloc_guard::TrackingAlloc;

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/jpeg")
}

fn cases() -> Value {
    let p = dir().join("cases.json");
    serde_json::from_slice(&std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))).unwrap()
}

/// The hash the generator writes (FNV-1a 64), so a mismatch needs no Pillow to be detected.
fn fnv1a64(bytes: &[u8]) -> String {
    let mut h: u64 = 0xCBF2_9CE4_8422_2325;
    for &b in bytes {
        h = (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01B3);
    }
    format!("{h:016x}")
}

#[test]
fn decoded_pixels_match_pillow() {
    let meta = cases();
    let images = meta["images"].as_array().unwrap();
    let mut failures = Vec::new();
    for case in images {
        let name = case["image"].as_str().unwrap();
        let rgb = decode_rgb8(&dir().join(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
        let want = [case["size_wh"][0].as_u64().unwrap() as usize, case["size_wh"][1].as_u64().unwrap() as usize];
        assert_eq!([rgb.width, rgb.height], want, "{name}: size (EXIF orientation must be ignored)");
        let got = fnv1a64(&rgb.data);
        // How far the generic (zune-jpeg) decoder is from Pillow on the same file, for the record.
        let other = image::open(dir().join(name)).unwrap().to_rgb8().into_raw();
        let zune_diff = other.iter().zip(&rgb.data).filter(|(a, b)| a != b).count();
        println!("{name}: hash {got} (want {}), zune-jpeg differs in {zune_diff} values", case["rgb_fnv1a64"]);
        if got != case["rgb_fnv1a64"].as_str().unwrap() {
            failures.push(name.to_string());
        }
    }
    assert!(images.len() >= 8, "corpus incomplete");
    assert!(failures.is_empty(), "decoded pixels differ from Pillow's: {failures:?}");
}

#[test]
fn crops_bit_exact() {
    let meta = cases();
    let crops = meta["crops"].as_array().unwrap();
    let mut failures = Vec::new();
    for case in crops {
        let id = case["id"].as_str().unwrap();
        let img = load_image(&dir().join(case["image"].as_str().unwrap())).unwrap();
        let center = [case["center"][0].as_f64().unwrap() as f32, case["center"][1].as_f64().unwrap() as f32];
        let res = [case["res"][0].as_u64().unwrap() as usize, case["res"][1].as_u64().unwrap() as usize];
        let out: Image =
            crop(&img, center, case["scale"].as_f64().unwrap(), res, case["rot"].as_f64().unwrap()).unwrap();
        let want = image::open(dir().join(case["expected"].as_str().unwrap())).unwrap().to_rgb8();
        assert_eq!((out.width, out.height), (want.width() as usize, want.height() as usize), "{id}: size");
        let diff = out.to_u8().iter().zip(want.as_raw()).filter(|(a, b)| a != b).count();
        println!("crop {id} ({}): {diff} differing values", case["note"]);
        if diff > 0 {
            failures.push(id.to_string());
        }
    }
    assert!(crops.len() >= 4, "crop cases missing");
    assert!(failures.is_empty(), "JPEG crops not bit-exact: {failures:?}");
}

#[test]
fn fuzz_libjpeg_errors_are_one_line() {
    let meta = cases();
    let seeds: Vec<Vec<u8>> = meta["images"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| std::fs::read(dir().join(c["image"].as_str().unwrap())).unwrap())
        .collect();
    // JPEG markers (SOF0/SOF2/DHT/SOS/DRI/RST0/EOI/DQT) for the mutator to splice in.
    let dictionary = [0xFF, 0xC0, 0xFF, 0xC2, 0xFF, 0xC4, 0xFF, 0xDA, 0xFF, 0xDD, 0xFF, 0xD0, 0xFF, 0xD9, 0xFF, 0xDB];
    let limits = common::fuzz::FuzzLimits {
        budget: Duration::from_secs_f64(common::fuzz_secs(3.0)),
        slow: Some(Duration::from_secs_f64(common::fuzz_slow_secs(5.0))),
        seed: common::fuzz_seed(15),
    };
    let name = Path::new("mutant.jpg");
    let (execs, accepted) = common::fuzz::fuzz(
        "libjpeg",
        &seeds,
        &limits,
        |rng, input, others| common::fuzz::mutate_bytes(rng, input, others, &dictionary),
        |bytes| match hrk::data::imageio::decode_rgb8_bytes(bytes, name) {
            Ok(img) => {
                assert_eq!(img.data.len(), img.width * img.height * 3);
                true
            }
            Err(e) => {
                let msg = format!("{e:#}");
                assert!(!msg.contains('\n') && msg.contains("mutant.jpg"), "bad error: {msg:?}");
                false
            }
        },
    );
    println!("libjpeg fuzz: {execs} inputs, {accepted} decoded");
    assert!(execs > seeds.len() as u64 && accepted >= seeds.len() as u64);
}
