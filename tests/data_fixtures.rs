//! The data-pipeline fixtures (shared/fixtures, made by reference-py/make_data_fixtures.py)
//! checked bit for bit: crops, targets, decode, metrics, flips. Every case listed in the
//! fixture files is checked; the directory comes from HRK_FIXTURES (default
//! `<manifest>/../shared/fixtures`, or `$HRK_SHARED/fixtures`).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use hrk::data::codec::{argmax_1based, decode_preds, exp_f32, gaussian_patch, refine_coords, HeatmapCodec};
use hrk::data::flip::{flip_center, fliplr_image, fliplr_joints, mirror_pairs};
use hrk::data::image::Image;
use hrk::data::metrics::{auc_error, compute_nme, failure_rate, mean_nme, Summary};
use hrk::data::transforms::{crop_traced, CropTrace};
use serde_json::Value;

mod common;

fn fixtures_dir() -> Option<PathBuf> {
    let dir = common::fixtures_dir();
    if dir.is_dir() {
        Some(dir)
    } else {
        eprintln!("skipped: fixture directory {} not found (set HRK_FIXTURES)", dir.display());
        None
    }
}

fn family(name: &str) -> Option<PathBuf> {
    let d = fixtures_dir()?.join(name);
    if d.is_dir() {
        Some(d)
    } else {
        eprintln!("skipped: {} not found", d.display());
        None
    }
}

fn read_json(p: &Path) -> Value {
    let s = std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    serde_json::from_str(&s).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// A minimal safetensors reader for the fixtures: name -> (dtype, shape, raw bytes).
struct Tensors(HashMap<String, (String, Vec<usize>, Vec<u8>)>);

impl Tensors {
    fn open(p: &Path) -> Tensors {
        let bytes = std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        let hlen = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
        let header: Value = serde_json::from_slice(&bytes[8..8 + hlen]).expect("safetensors header");
        let body = &bytes[8 + hlen..];
        let mut map = HashMap::new();
        for (name, info) in header.as_object().unwrap() {
            if name == "__metadata__" {
                continue;
            }
            let dtype = info["dtype"].as_str().unwrap().to_string();
            let shape = common::json_usizes(&info["shape"]);
            let off = info["data_offsets"].as_array().unwrap();
            let (a, b) = (off[0].as_u64().unwrap() as usize, off[1].as_u64().unwrap() as usize);
            map.insert(name.clone(), (dtype, shape, body[a..b].to_vec()));
        }
        Tensors(map)
    }
    fn get(&self, name: &str) -> &(String, Vec<usize>, Vec<u8>) {
        self.0.get(name).unwrap_or_else(|| panic!("tensor {name} missing"))
    }
    fn f32(&self, name: &str) -> Vec<f32> {
        let (dt, _, b) = self.get(name);
        assert_eq!(dt, "F32", "{name}");
        b.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect()
    }
    fn f64(&self, name: &str) -> Vec<f64> {
        let (dt, _, b) = self.get(name);
        assert_eq!(dt, "F64", "{name}");
        b.chunks_exact(8).map(|c| f64::from_le_bytes(c.try_into().unwrap())).collect()
    }
    fn shape(&self, name: &str) -> Vec<usize> {
        self.get(name).1.clone()
    }
}

fn load_png_rgb(p: &Path) -> (usize, usize, Vec<u8>) {
    let im = image::open(p).unwrap_or_else(|e| panic!("{}: {e}", p.display())).to_rgb8();
    (im.width() as usize, im.height() as usize, im.into_raw())
}

fn pts2(v: &Value) -> [f64; 2] {
    [v[0].as_f64().unwrap(), v[1].as_f64().unwrap()]
}

#[test]
fn crops_bit_exact() {
    let Some(dir) = family("crops") else { return };
    let cases = read_json(&dir.join("cases.json"));
    let mut failures = Vec::new();
    let mut checked = 0;
    for case in cases["cases"].as_array().unwrap() {
        let id = case["id"].as_str().unwrap();
        let (w, h, rgb) = load_png_rgb(&dir.join(case["image"].as_str().unwrap()));
        let mut img = Image { width: w, height: h, data: rgb.iter().map(|&v| v as f32).collect() };
        if case["flip_image_first"].as_bool().unwrap_or(false) {
            img = fliplr_image(&img).unwrap();
        }
        let c = pts2(&case["center"]);
        let center = [c[0] as f32, c[1] as f32];
        let scale = case["scale"].as_f64().unwrap();
        let rot = case["rot"].as_f64().unwrap();
        let res = [case["res"][0].as_u64().unwrap() as usize, case["res"][1].as_u64().unwrap() as usize];
        let mut trace = CropTrace::default();
        let out = crop_traced(&img, center, scale, res, rot, &mut trace).unwrap_or_else(|e| panic!("{id}: {e}"));
        let (ew, eh, expected) = load_png_rgb(&dir.join(case["expected"].as_str().unwrap()));
        assert_eq!((out.width, out.height), (ew, eh), "{id}: output size");
        let got = out.to_u8();
        let diff = got.iter().zip(&expected).filter(|(a, b)| a != b).count();
        // intermediate checks, to say where a mismatch starts
        let tr = &case["trace"];
        let ul = [tr["ul"][0].as_i64().unwrap(), tr["ul"][1].as_i64().unwrap()];
        let br = [tr["br"][0].as_i64().unwrap(), tr["br"][1].as_i64().unwrap()];
        let mut notes = Vec::new();
        if ul != trace.ul || br != trace.br || tr["pad"].as_i64() != Some(trace.pad) {
            notes.push(format!(
                "ul/br/pad {:?}/{:?}/{} vs {:?}/{:?}/{}",
                trace.ul, trace.br, trace.pad, ul, br, tr["pad"]
            ));
        }
        if let Some(win) = case["debug_window"].as_str() {
            let (dw, dh, dwin) = load_png_rgb(&dir.join(win));
            let (tw, th, twin) = trace.window_u8.clone().unwrap();
            if (tw, th) != (dw, dh) {
                notes.push(format!("window size {tw}x{th} vs {dw}x{dh}"));
            } else {
                let wd = twin.iter().zip(&dwin).filter(|(a, b)| a != b).count();
                if wd > 0 {
                    notes.push(format!("window differs in {wd} values"));
                }
            }
        }
        println!("crop {id}: {} differing values {}", diff, notes.join("; "));
        if diff > 0 || !notes.is_empty() {
            failures.push(id.to_string());
        }
        checked += 1;
    }
    assert!(checked > 0, "no crop cases");
    assert!(failures.is_empty(), "crop cases not bit-exact: {failures:?}");
}

#[test]
fn targets_exact() {
    let Some(dir) = family("targets") else { return };
    let cases = read_json(&dir.join("cases.json"));
    // The Gaussian patch tables first: our float32 exp and the exponents.
    for (sigma_key, table) in cases["gaussian_patch"].as_object().unwrap() {
        let sigma: f64 = sigma_key.parse().unwrap();
        let (n, g) = gaussian_patch(sigma);
        let rows = table["g_correctly_rounded"].as_array().unwrap();
        assert_eq!(n, rows.len(), "sigma {sigma}: patch size");
        let mut libm_diff = 0;
        for (y, row) in rows.iter().enumerate() {
            for (x, v) in row.as_array().unwrap().iter().enumerate() {
                let want = v.as_f64().unwrap() as f32;
                assert_eq!(g[y * n + x].to_bits(), want.to_bits(), "sigma {sigma} patch [{y}][{x}]");
                let q = table["q_float32"][y][x].as_f64().unwrap() as f32;
                assert_eq!(exp_f32(q).to_bits(), want.to_bits());
                if q.exp().to_bits() != want.to_bits() {
                    libm_diff += 1;
                }
            }
        }
        println!("gaussian patch sigma {sigma}: exact ({libm_diff} entries where f32::exp differs)");
    }
    let mut checked = 0;
    for set in cases["sets"].as_array().unwrap() {
        let id = set["id"].as_str().unwrap();
        let t = Tensors::open(&dir.join(set["file"].as_str().unwrap()));
        let pts: Vec<[f64; 2]> = t.f64("pts").chunks_exact(2).map(|c| [c[0], c[1]]).collect();
        let c = t.f32("center");
        let scale = t.f64("scale")[0];
        let rot = t.f64("rot")[0];
        let hm = [set["heatmap_size"][0].as_u64().unwrap() as usize, set["heatmap_size"][1].as_u64().unwrap() as usize];
        let want_tpts = t.f32("tpts");
        for (key, sigma) in [("target_sigma15", 1.5), ("target_sigma10", 1.0)] {
            let (target, tpts) = HeatmapCodec::gaussian(hm, sigma).encode_new(&pts, [c[0], c[1]], scale, rot).unwrap();
            let flat: Vec<f32> = tpts.iter().flat_map(|p| [p[0], p[1]]).collect();
            assert_eq!(
                flat.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                want_tpts.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                "{id}: tpts"
            );
            let want = t.f32(key);
            assert_eq!(t.shape(key), vec![pts.len(), hm[0], hm[1]]);
            let bad = target.iter().zip(&want).filter(|(a, b)| a.to_bits() != b.to_bits()).count();
            assert_eq!(bad, 0, "{id} {key}: {bad} values differ");
        }
        println!("targets {id}: {} landmarks exact", pts.len());
        checked += 1;
    }
    assert!(checked > 0);
}

#[test]
fn decode_exact() {
    let Some(dir) = family("decode") else { return };
    let t = Tensors::open(&dir.join("heatmaps.safetensors"));
    let shape = t.shape("heatmaps");
    let (n, j, h, w) = (shape[0], shape[1], shape[2], shape[3]);
    let maps = t.f32("heatmaps");
    let centers: Vec<[f32; 2]> = t.f32("center").chunks_exact(2).map(|c| [c[0], c[1]]).collect();
    let scales = t.f64("scale");
    let (am, coords, preds) = (t.f32("argmax_1based"), t.f32("coords_heatmap"), t.f32("preds"));
    let got = decode_preds(&maps, n, j, h, w, &centers, &scales).unwrap();
    for b in 0..n {
        for k in 0..j {
            let i = b * j + k;
            let map = &maps[i * h * w..(i + 1) * h * w];
            let a = argmax_1based(map, w);
            let c = refine_coords(map, h, w, [h, w]);
            // Each point bit for bit against entry i of the fixture's flat (x, y) list.
            for (what, point, want) in [("argmax", a, &am), ("coords", c, &coords), ("preds", got[i], &preds)] {
                assert_eq!(
                    point.map(f32::to_bits),
                    [want[2 * i].to_bits(), want[2 * i + 1].to_bits()],
                    "decode [{b},{k}] {what}"
                );
            }
        }
        println!("decode image {b}: {j} maps exact");
    }
}

#[test]
fn metrics_exact() {
    let Some(dir) = family("metrics") else { return };
    let meta = read_json(&dir.join("metrics.json"));
    let mut checked = 0;
    for (key, set) in meta["sets"].as_object().unwrap() {
        let t = Tensors::open(&dir.join(set["file"].as_str().unwrap()));
        let joints = set["J"].as_u64().unwrap() as usize;
        let preds: Vec<[f32; 2]> = t.f32("preds").chunks_exact(2).map(|c| [c[0], c[1]]).collect();
        let gts: Vec<[f32; 2]> = t.f32("gt").chunks_exact(2).map(|c| [c[0], c[1]]).collect();
        let boxes = if joints == 19 { Some(t.f64("box_size")) } else { None };
        let nme = compute_nme(&preds, &gts, joints, boxes.as_deref()).unwrap();
        let want = t.f64("nme");
        for (i, (a, b)) in nme.iter().zip(&want).enumerate() {
            assert_eq!(a.to_bits(), b.to_bits(), "set {key} image {i}: nme {a} vs {b}");
        }
        let json_nme: Vec<f64> = set["nme_per_image"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
        // Everything is reproduced to the last bit (the README allows rel 1e-6).
        let close = |a: f64, b: f64, what: &str| assert_eq!(a.to_bits(), b.to_bits(), "set {key} {what}: {a} vs {b}");
        for (i, (a, b)) in nme.iter().zip(&json_nme).enumerate() {
            close(*a, *b, &format!("json nme image {i}"));
        }
        close(mean_nme(&nme, 8), set["mean_nme"].as_f64().unwrap(), "mean_nme");
        // np.mean = one pairwise sum / N = a single batch
        close(mean_nme(&nme, nme.len()), set["mean_nme_plain"].as_f64().unwrap(), "mean_nme_plain");
        assert_eq!(failure_rate(&nme, 0.08), set["fr_0.08"].as_f64().unwrap(), "set {key} fr 0.08");
        assert_eq!(failure_rate(&nme, 0.10), set["fr_0.10"].as_f64().unwrap(), "set {key} fr 0.10");
        for (thr_key, a) in set["auc"].as_object().unwrap() {
            let (thr, step) = (a["thr"].as_f64().unwrap(), a["step"].as_f64().unwrap());
            let (auc, fr, count) = auc_error(&nme, thr, step);
            assert_eq!(count as u64, a["n_samples"].as_u64().unwrap(), "set {key} auc {thr_key}: samples");
            close(auc, a["auc"].as_f64().unwrap(), &format!("auc {thr_key}"));
            close(fr, a["failure_rate_snippet"].as_f64().unwrap(), &format!("fr snippet {thr_key}"));
        }
        let s = Summary::from_nme(&nme, 8);
        assert_eq!(s.fr_008, set["fr_0.08"].as_f64().unwrap());
        close(s.auc_010, set["auc"]["0.1"]["auc"].as_f64().unwrap(), "summary auc 0.10");
        println!("metrics J={key}: {} images, nme/mean/fr/auc match", nme.len());
        checked += 1;
    }
    assert!(checked > 0);
}

#[test]
fn flips_exact() {
    let Some(dir) = family("flip") else { return };
    let meta = read_json(&dir.join("flip.json"));
    for (name, ds) in meta["datasets"].as_object().unwrap() {
        let joints = ds["J"].as_u64().unwrap() as usize;
        let width = ds["width"].as_u64().unwrap() as usize;
        let base = ds["pairs_base"].as_u64().unwrap() as usize;
        let table: Vec<(usize, usize)> = ds["pairs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| (p[0].as_u64().unwrap() as usize - base, p[1].as_u64().unwrap() as usize - base))
            .collect();
        assert_eq!(mirror_pairs(joints).unwrap(), table.as_slice(), "{name}: pair table");
        let mut pts: Vec<[f64; 2]> = ds["pts"].as_array().unwrap().iter().map(pts2).collect();
        let want: Vec<[f64; 2]> = ds["expected"].as_array().unwrap().iter().map(pts2).collect();
        fliplr_joints(&mut pts, width).unwrap();
        assert_eq!(pts, want, "{name}: flipped landmarks");
        let c = pts2(&ds["center"]);
        let e = pts2(&ds["expected_center"]);
        assert_eq!(flip_center([c[0] as f32, c[1] as f32], width), [e[0] as f32, e[1] as f32], "{name}: center");
        println!("flip {name}: {joints} landmarks exact");
    }
}
