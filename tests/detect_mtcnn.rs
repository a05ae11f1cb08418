//! The MTCNN detector against facenet-pytorch (tests/fixtures/mtcnn, made by make.py there): the pieces
//! (area resampling, ceil-mode max-pool, PReLU, channel softmax, both NMS rules) against PyTorch-produced
//! values, the new ops' CUDA kernels under the emulator against the CPU, and whole detections on the
//! fixture photos on the CPU and on the emulated GPU.

mod common;

use hrk::data::image::Image;
use hrk::data::imageio::load_image;
use hrk::detect::nms::{nms_iou, nms_min};
use hrk::detect::resample::{area_resample_normalized, area_window, Region};
use hrk::detect::{Detection, DetectorOptions, Mtcnn};
use hrk::ops::{max_pool2d_ceil, prelu, softmax_channels};
use hrk::{Device, Tensor};
use serde_json::Value;
use std::path::{Path, PathBuf};

fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/mtcnn")
}

fn json(name: &str) -> Value {
    let path = fixture_dir().join(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn f32s(v: &Value) -> Vec<f32> {
    v.as_array().expect("array").iter().map(|x| x.as_f64().expect("number") as f32).collect()
}

fn usizes(v: &Value) -> Vec<usize> {
    v.as_array().expect("array").iter().map(|x| x.as_u64().expect("integer") as usize).collect()
}

/// Largest |a − b| over two equal-length slices.
fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

#[test]
fn area_window_is_pytorch_adaptive_pool_rule() {
    // 5 inputs to 3 outputs: [0,2), [1,4), [3,5) (start ⌊i·5/3⌋, end ⌈(i+1)·5/3⌉).
    assert_eq!((0..3).map(|i| area_window(i, 3, 5)).collect::<Vec<_>>(), vec![(0, 2), (1, 4), (3, 5)]);
    // Upsampling 2 → 4: each input pixel repeated.
    assert_eq!((0..4).map(|i| area_window(i, 4, 2)).collect::<Vec<_>>(), vec![(0, 1), (0, 1), (1, 2), (1, 2)]);
}

#[test]
fn area_resampling_matches_pytorch_interpolate_area() {
    for case in json("units.json")["area"].as_array().unwrap() {
        let (h, w) = (case["h"].as_u64().unwrap() as usize, case["w"].as_u64().unwrap() as usize);
        let out = usizes(&case["out"]);
        let image = Image { width: w, height: h, data: f32s(&case["hwc"]) };
        let mut got = vec![0f32; 3 * out[0] * out[1]];
        area_resample_normalized(&image, Region::whole(&image), out[0], out[1], &mut got);
        // The reference is the resampled value; normalise it with the same f32 arithmetic.
        let want: Vec<f32> = f32s(&case["chw"]).iter().map(|v| (v - 127.5) * 0.0078125).collect();
        assert_eq!(got, want, "{h}x{w} -> {out:?}");
    }
}

#[test]
fn area_resampling_of_a_region_equals_resampling_the_cropped_image() {
    let whole = Image { width: 9, height: 7, data: (0..9 * 7 * 3).map(|i| ((i * 37) % 256) as f32).collect() };
    let region = Region { x0: 2, y0: 1, x1: 8, y1: 6 };
    let mut cropped = Image::zeros(6, 5);
    for y in 0..5 {
        for x in 0..6 {
            for c in 0..3 {
                cropped.data[(y * 6 + x) * 3 + c] = whole.data[((y + 1) * 9 + x + 2) * 3 + c];
            }
        }
    }
    let (mut a, mut b) = (vec![0f32; 3 * 4 * 4], vec![0f32; 3 * 4 * 4]);
    area_resample_normalized(&whole, region, 4, 4, &mut a);
    area_resample_normalized(&cropped, Region::whole(&cropped), 4, 4, &mut b);
    assert_eq!(a, b);
}

#[test]
fn pyramid_matches_facenet_for_640x480() {
    // Python: m = 0.6, minl = 288·0.709^k ≥ 12 for k = 0..9.
    let s = hrk::detect::pyramid_scales(640, 480, 20.0, 0.709);
    assert_eq!(s.len(), 10);
    assert_eq!(s[0], 0.6);
    assert!((s[9] - 0.6 * 0.709f64.powi(9)).abs() < 1e-15);
}

#[test]
fn a_pyramid_over_the_bound_is_refused_with_the_smallest_min_face_that_fits() {
    use hrk::detect::{pyramid_pixels, DetectorOptions, MAX_PYRAMID_PIXELS};
    // The measured reference point of the bound: a 4000x3000 photo at the default --min-face 20.
    let reference = pyramid_pixels(4000, 3000, 20.0, 0.709);
    assert!((8.6e6..8.8e6).contains(&reference), "{reference}");
    assert!(DetectorOptions::default().check_work(4000, 3000).is_ok());
    assert!(DetectorOptions::default().check_work(10000, 10000).is_ok());
    let at = |min_face: f32| DetectorOptions { min_face, ..Default::default() };
    let e = at(1.0).check_work(10000, 10000).unwrap_err().to_string();
    assert_eq!(
        e,
        "detector: a 10000x10000 photo at --min-face 1 is 2.90e10 pyramid pixels of P-Net work, more than the \
         2.8e8 allowed; use --min-face 11 or larger"
    );
    // 11 is the smallest that fits.
    assert!(pyramid_pixels(10000, 10000, 11.0, 0.709) <= MAX_PYRAMID_PIXELS);
    assert!(pyramid_pixels(10000, 10000, 10.0, 0.709) > MAX_PYRAMID_PIXELS);
    assert!(at(11.0).check_work(10000, 10000).is_ok());
    // A tall strip: the suggestion still fits.
    let e = at(1.0).check_work(100, 10000).unwrap_err().to_string();
    let suggested: f32 = e.split("--min-face ").nth(2).unwrap().split(' ').next().unwrap().parse().unwrap();
    assert!(at(suggested).check_work(100, 10000).is_ok() && at(suggested - 1.0).check_work(100, 10000).is_err(), "{e}");
}

#[test]
fn crop_region_uses_one_based_clipped_bounds() {
    use hrk::detect::crop_region;
    assert_eq!(crop_region([-5.7, 2.9, 10.2, 400.0], 100, 50), Some(Region { x0: 0, y0: 1, x1: 10, y1: 50 }));
    assert_eq!(crop_region([120.0, 2.0, 130.0, 9.0], 100, 50), None);
}

#[test]
fn rerec_squares_about_the_centre() {
    assert_eq!(hrk::detect::rerec([10.0, 20.0, 14.0, 30.0]), [7.0, 20.0, 17.0, 30.0]);
}

#[test]
fn nms_rules_match_torchvision_and_facenet_numpy() {
    let nms = &json("units.json")["nms"];
    let boxes: Vec<[f32; 4]> = nms["boxes"].as_array().unwrap().iter().map(|b| f32s(b).try_into().unwrap()).collect();
    let scores = f32s(&nms["scores"]);
    for t in ["0.3", "0.5", "0.7"] {
        assert_eq!(nms_iou(&boxes, &scores, t.parse().unwrap()), usizes(&nms[format!("iou_{t}")]), "IoU {t}");
    }
    for t in ["0.3", "0.7"] {
        assert_eq!(nms_min(&boxes, &scores, t.parse().unwrap()), usizes(&nms[format!("min_{t}")]), "Min {t}");
    }
}

#[test]
fn nms_hand_checked_cases() {
    // IoU of [0,0,10,10] and [5,0,15,10] is 50/150 = 1/3: kept at 0.5, dropped at 0.3.
    let boxes = [[0.0, 0.0, 10.0, 10.0], [5.0, 0.0, 15.0, 10.0]];
    assert_eq!(nms_iou(&boxes, &[0.9, 0.8], 0.5), vec![0, 1]);
    assert_eq!(nms_iou(&boxes, &[0.8, 0.9], 0.3), vec![1]);
    // 'Min': a box inside another overlaps it fully (inter / smaller area = 1).
    let nested = [[0.0, 0.0, 99.0, 99.0], [10.0, 10.0, 19.0, 19.0]];
    assert_eq!(nms_min(&nested, &[0.5, 0.9], 0.7), vec![1]);
    assert_eq!(nms_iou(&nested, &[0.5, 0.9], 0.7), vec![1, 0]);
    assert!(nms_iou(&[], &[], 0.5).is_empty() && nms_min(&[], &[], 0.5).is_empty());
}

fn tensor(shape: &[usize], data: Vec<f32>) -> Tensor {
    Tensor::from_f32(shape, data).unwrap()
}

/// The op's CPU result, and its emulated-GPU result which must equal it bit for bit.
fn cpu_and_emu(op: impl Fn(&Device) -> Tensor) -> Vec<f32> {
    let cpu = op(&Device::Cpu).to_f32_vec();
    let emu = op(&Device::emulated()).to_cpu().unwrap().to_f32_vec();
    // Bit patterns, so that NaN outputs compare too.
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    assert_eq!(bits(&cpu), bits(&emu), "emulated GPU differs from the CPU: {cpu:?} vs {emu:?}");
    cpu
}

#[test]
fn max_pool_ceil_mode_matches_pytorch_on_cpu_and_emulated_gpu() {
    for case in json("units.json")["max_pool"].as_array().unwrap() {
        let shape = usizes(&case["shape"]);
        let k = case["k"].as_u64().unwrap() as usize;
        let x = tensor(&shape, f32s(&case["x"]));
        let run = |d: &Device| {
            let y = max_pool2d_ceil(&x.to_device(d).unwrap(), k, 2).unwrap();
            assert_eq!(y.shape(), usizes(&case["out_shape"]).as_slice(), "{shape:?} k {k}");
            y
        };
        assert_eq!(cpu_and_emu(run), f32s(&case["y"]), "{shape:?} k {k}");
    }
}

#[test]
fn max_pool_ceil_extent_needs_the_last_window_to_start_inside() {
    use hrk::ops::max_pool::ceil_pool_extent;
    // 22 → 11 (k3 s2), 46 → 23, 9 → 4, 4 → 2 (k2), 5 → 3 (k2: last window [4, 5) is clipped).
    assert_eq!([22, 46, 9].map(|n| ceil_pool_extent(n, 3, 2)), [Some(11), Some(23), Some(4)]);
    assert_eq!([4, 5].map(|n| ceil_pool_extent(n, 2, 2)), [Some(2), Some(3)]);
    assert_eq!(ceil_pool_extent(2, 3, 2), None);
    let x = tensor(&[1, 1, 2, 2], vec![1.0; 4]);
    assert!(max_pool2d_ceil(&x, 3, 2).unwrap_err().to_string().contains("smaller than the 3x3 window"));
}

#[test]
fn max_pool_propagates_nan_like_pytorch() {
    let x = tensor(&[1, 1, 2, 4], vec![1.0, f32::NAN, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0]);
    let y = cpu_and_emu(|d| max_pool2d_ceil(&x.to_device(d).unwrap(), 2, 2).unwrap());
    assert!(y[0].is_nan());
    assert_eq!(y[1], 8.0);
}

#[test]
fn prelu_matches_pytorch_on_cpu_and_emulated_gpu() {
    let case = &json("units.json")["prelu"];
    let shape = usizes(&case["shape"]);
    let (x, a) = (tensor(&shape, f32s(&case["x"])), tensor(&[shape[1]], f32s(&case["slopes"])));
    let y = cpu_and_emu(|d| prelu(&x.to_device(d).unwrap(), &a.to_device(d).unwrap()).unwrap());
    assert_eq!(y, f32s(&case["y"]));
    let wrong = tensor(&[shape[1] + 1], vec![0.25; shape[1] + 1]);
    assert!(prelu(&x, &wrong).unwrap_err().to_string().contains("prelu: slopes"));
}

#[test]
fn softmax_matches_pytorch_on_cpu_and_emulated_gpu() {
    let case = &json("units.json")["softmax"];
    let x = tensor(&usizes(&case["shape"]), f32s(&case["x"]));
    let y = cpu_and_emu(|d| softmax_channels(&x.to_device(d).unwrap()).unwrap());
    let err = max_abs_diff(&y, &f32s(&case["y"]));
    assert!(err <= 2e-7, "softmax differs from PyTorch by {err}");
}

#[test]
fn inference_only_ops_refuse_inputs_that_need_gradients() {
    let x = tensor(&[1, 2, 4, 4], vec![0.5; 32]).requires_grad();
    assert!(max_pool2d_ceil(&x, 2, 2).unwrap_err().to_string().contains("inference-only"));
    assert!(softmax_channels(&x).unwrap_err().to_string().contains("inference-only"));
    // Under no_grad the same call is fine.
    assert!(hrk::no_grad(|| softmax_channels(&x)).is_ok());
}

// ---- whole detections against facenet-pytorch -------------------------------------------------

/// The fixture photos (each with `<stem>.json` beside it): a face, four faces of 40–150 px on a 640×480
/// scene, four faces of 26–32 px, a grey JPEG, a rotated face, a PPM, no face, an odd size.
const FIXTURES: [&str; 8] = [
    "astronaut.jpg",
    "group.jpg",
    "small.jpg",
    "grey.jpg",
    "rotated.jpg",
    "astronaut_small.ppm",
    "noface.jpg",
    "odd.png",
];

fn expected(name: &str) -> Vec<Detection> {
    let doc = json(&format!("{}.json", Path::new(name).file_stem().unwrap().to_str().unwrap()));
    doc["faces"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| Detection {
            bbox: f32s(&f["box"]).try_into().unwrap(),
            score: f["score"].as_f64().unwrap() as f32,
            points: f["points"]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| f32s(p).try_into().unwrap())
                .collect::<Vec<_>>()
                .try_into()
                .unwrap(),
        })
        .collect()
}

fn iou(a: &[f32; 4], b: &[f32; 4]) -> f32 {
    let iw = (a[2].min(b[2]) - a[0].max(b[0])).max(0.0);
    let ih = (a[3].min(b[3]) - a[1].max(b[1])).max(0.0);
    let inter = iw * ih;
    inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)
}

/// Same number of faces; each reference face has a detection with IoU ≥ 0.8 and a score within 0.02.
/// Returns (worst IoU, worst score difference, worst landmark distance in pixels).
fn compare(name: &str, got: &[Detection], want: &[Detection]) -> (f32, f32, f32) {
    assert_eq!(
        got.len(),
        want.len(),
        "{name}: {} faces found, facenet-pytorch found {}: {got:?}",
        got.len(),
        want.len()
    );
    let (mut worst_iou, mut worst_score, mut worst_point) = (1.0f32, 0.0f32, 0.0f32);
    for w in want {
        let best = got.iter().max_by(|a, b| iou(&a.bbox, &w.bbox).total_cmp(&iou(&b.bbox, &w.bbox))).unwrap();
        let overlap = iou(&best.bbox, &w.bbox);
        assert!(overlap >= 0.8, "{name}: reference box {:?} best IoU {overlap} ({:?})", w.bbox, best.bbox);
        let ds = (best.score - w.score).abs();
        assert!(ds <= 0.02, "{name}: score {} vs reference {}", best.score, w.score);
        let dp = best.points.iter().zip(&w.points).map(|(p, q)| (p[0] - q[0]).hypot(p[1] - q[1])).fold(0.0, f32::max);
        worst_iou = worst_iou.min(overlap);
        worst_score = worst_score.max(ds);
        worst_point = worst_point.max(dp);
    }
    for pair in got.windows(2) {
        assert!(pair[0].score >= pair[1].score, "{name}: faces not sorted by score");
    }
    (worst_iou, worst_score, worst_point)
}

/// Detects on each fixture photo, checks against facenet-pytorch, returns the detections.
fn run_fixtures(device: &Device, names: &[&str]) -> Vec<Vec<Detection>> {
    let mtcnn = Mtcnn::load(None, device).unwrap();
    let mut all = Vec::new();
    for &name in names {
        let image = load_image(&fixture_dir().join(name)).unwrap();
        let got = mtcnn.detect(&image, &DetectorOptions::default()).unwrap();
        let (iou, ds, dp) = compare(name, &got, &expected(name));
        println!(
            "{device:?} {name}: {} faces, worst IoU {iou:.4}, score diff {ds:.2e}, landmarks {dp:.3} px",
            got.len()
        );
        all.push(got);
    }
    all
}

#[test]
fn detections_match_facenet_pytorch_on_cpu() {
    run_fixtures(&Device::Cpu, &FIXTURES);
}

#[test]
fn detections_on_emulated_gpu_match_facenet_pytorch_and_the_cpu() {
    // Two small photos: the emulator runs every CUDA thread on the host, the P-Net pyramid is slow there.
    let names = ["astronaut_small.ppm", "noface.jpg"];
    let emu = run_fixtures(&Device::emulated(), &names);
    let cpu = run_fixtures(&Device::Cpu, &names);
    // Different conv kernels (summation order): equal up to f32 rounding of the networks' outputs.
    for (c, e) in cpu.iter().zip(&emu) {
        assert_eq!(c.len(), e.len());
        for (a, b) in c.iter().zip(e) {
            assert!(iou(&a.bbox, &b.bbox) > 0.999 && (a.score - b.score).abs() < 1e-4, "{a:?} vs {b:?}");
        }
    }
}

#[test]
fn bad_options_and_weights_give_one_line_errors() {
    let mtcnn = Mtcnn::load(None, &Device::Cpu).unwrap();
    let image = Image::zeros(64, 48);
    let bad = DetectorOptions { min_face: 0.0, ..Default::default() };
    assert!(mtcnn.detect(&image, &bad).unwrap_err().to_string().contains("minimum face size"));
    let bad = DetectorOptions { factor: 1.5, ..Default::default() };
    assert!(mtcnn.detect(&image, &bad).unwrap_err().to_string().contains("pyramid factor"));
    // A blank image has no face; a tiny one has no pyramid level at all.
    assert!(mtcnn.detect(&image, &DetectorOptions::default()).unwrap().is_empty());
    assert!(mtcnn.detect(&Image::zeros(5, 5), &DetectorOptions::default()).unwrap().is_empty());
    let dir = common::scratch("detect");
    let path = dir.join("not_mtcnn.safetensors");
    let t = hrk::host_tensor::HostTensor::f32(vec![2], vec![1.0, 2.0]);
    hrk::io::save_safetensors(&path, &[("pnet.conv1.weight".to_string(), t)], &[]).unwrap();
    let e = Mtcnn::load(Some(&path), &Device::Cpu).err().unwrap().to_string();
    assert!(e.contains("not_mtcnn.safetensors") && e.contains("pnet.conv1.weight") && !e.contains('\n'), "{e}");
}
