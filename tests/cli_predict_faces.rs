//! `hrk predict` with faces from folders, boxes and the detector (issue #14), on synthetic images
//! with a tiny random-init model: the per-image JSON schema exactly, folder recursion, `--shard`
//! splits, bad images among good ones, `--boxes` CSVs, `--detector none` equal to the whole-image
//! pipeline, a CSV row's own box equal to `hrk test` / `predict --csv`, the emulated GPU equal to
//! the CPU; and, where the detector's fixture photos are present, faces from MTCNN.

mod common;

use common::model::{tiny_config, write_tiny_model};
use common::{assert_cli_error, assert_cli_ok, hrk_cmd, s, scratch, Scratch};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Output;

struct Setup {
    dir: Scratch,
    cfg: PathBuf,
    weights: PathBuf,
}

impl Setup {
    /// Runs `hrk predict --cfg … --model-file … <rest…>` in the setup folder (relative paths work).
    fn predict(&self, rest: &[&str]) -> Output {
        hrk_cmd()
            .current_dir(&*self.dir)
            .args(["predict", "--cfg", s(&self.cfg), "--model-file", s(&self.weights)])
            .args(rest)
            .env_remove("HRK_DEVICE_EMU")
            .output()
            .expect("run hrk")
    }

    fn image(&self, i: usize) -> PathBuf {
        self.dir.join(format!("images/s68_{i:06}.jpg"))
    }
}

fn setup(name: &str, count: usize) -> Setup {
    let dir = scratch(&format!("predict-faces-{name}"));
    hrk::synth::generate(&dir, 68, count, 11).unwrap();
    let (cfg, weights) = write_tiny_model(&dir, &tiny_config(&dir, 68, 64, 16, hrk::synth::TEST_CSV), 3);
    Setup { dir, cfg, weights }
}

fn read_json(p: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))).unwrap()
}

fn stdout_last(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).lines().last().unwrap_or("").to_string()
}

/// The JSON files of a folder, by name.
fn json_names(dir: &Path) -> BTreeSet<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".json"))
        .collect()
}

/// The CSV's rows (header skipped) split into fields.
fn csv_rows(path: &Path) -> Vec<Vec<String>> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    text.lines().skip(1).map(|l| l.split(',').map(str::to_string).collect()).collect()
}

fn numbers(v: &serde_json::Value) -> Vec<f64> {
    v.as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect()
}

/// JSON numbers written from f32 values, back as those f32 values.
fn as_f32(v: &[f64]) -> Vec<f32> {
    v.iter().map(|&x| x as f32).collect()
}

fn landmarks(face: &serde_json::Value) -> Vec<f64> {
    face["landmarks"].as_array().unwrap().iter().flat_map(numbers).collect()
}

/// The schema of issue #14, exactly: these keys and no others, with these types.
fn check_schema(doc: &serde_json::Value, joints: usize) {
    let keys: BTreeSet<&str> = doc.as_object().unwrap().keys().map(String::as_str).collect();
    assert_eq!(keys, BTreeSet::from(["image", "width", "height", "faces"]), "{doc}");
    assert!(doc["image"].is_string());
    assert!(doc["width"].as_u64().unwrap() > 0 && doc["height"].as_u64().unwrap() > 0);
    for face in doc["faces"].as_array().unwrap() {
        let keys: BTreeSet<&str> = face.as_object().unwrap().keys().map(String::as_str).collect();
        assert_eq!(keys, BTreeSet::from(["box", "score", "landmarks", "landmark_scores", "pose"]), "{face}");
        // Head pose (issue 26): yaw, pitch, roll for the 68/98 layouts, or null when the landmarks give none.
        assert!(face["pose"].is_null() || face["pose"].as_object().unwrap().len() == 3, "{face}");
        let b = numbers(&face["box"]);
        assert!(b.len() == 4 && b[2] > b[0] && b[3] > b[1], "{face}");
        assert!(face["score"].is_null() || face["score"].is_f64(), "{face}");
        let pts = face["landmarks"].as_array().unwrap();
        assert_eq!(pts.len(), joints);
        assert!(pts.iter().all(|p| numbers(p).len() == 2));
        assert_eq!(numbers(&face["landmark_scores"]).len(), joints);
    }
}

/// A folder tree of the synthetic images in five formats (grey PGM among them) and a text file:
/// tree/a/x.JPG, tree/b/x.png, tree/b/c/y.ppm, tree/g.pgm, tree/z.bmp, tree/notes.txt.
fn make_tree(st: &Setup) -> Vec<&'static str> {
    let tree = st.dir.join("tree");
    std::fs::create_dir_all(tree.join("a")).unwrap();
    std::fs::create_dir_all(tree.join("b/c")).unwrap();
    std::fs::copy(st.image(0), tree.join("a/x.JPG")).unwrap();
    let rgb = |i: usize| image::open(st.image(i)).unwrap().to_rgb8();
    rgb(1).save(tree.join("b/x.png")).unwrap();
    rgb(2).save_with_format(tree.join("b/c/y.ppm"), image::ImageFormat::Pnm).unwrap();
    image::DynamicImage::ImageRgb8(rgb(3))
        .to_luma8()
        .save_with_format(tree.join("g.pgm"), image::ImageFormat::Pnm)
        .unwrap();
    rgb(4).save(tree.join("z.bmp")).unwrap();
    std::fs::write(tree.join("notes.txt"), "not an image").unwrap();
    // Sorted walk order; x.JPG and x.png share a stem, so both are named by their flattened path.
    vec!["tree/a/x.JPG", "tree/b/c/y.ppm", "tree/b/x.png", "tree/g.pgm", "tree/z.bmp"]
}

const TREE_NAMES: [&str; 5] = ["tree__a__x.JPG", "y", "tree__b__x.png", "g", "z"];

#[test]
fn folders_are_walked_and_the_json_schema_is_exact() {
    let st = setup("tree", 6);
    let listed = make_tree(&st);
    let o = st.predict(&["tree", "--detector", "none", "--out", "out"]);
    assert_cli_ok(&o);
    assert_eq!(stdout_last(&o), "5 images, 5 faces, 0 failed");
    let out = st.dir.join("out");
    let want: BTreeSet<String> = TREE_NAMES.iter().map(|n| format!("{n}.json")).collect();
    assert_eq!(json_names(&out), want);
    for (name, path) in TREE_NAMES.iter().zip(&listed) {
        let doc = read_json(&out.join(format!("{name}.json")));
        check_schema(&doc, 68);
        assert_eq!(doc["image"].as_str().unwrap(), *path);
        assert_eq!((doc["width"].as_u64().unwrap(), doc["height"].as_u64().unwrap()), (256, 256));
        assert_eq!(doc["faces"].as_array().unwrap().len(), 1);
        assert!(doc["faces"][0]["score"].is_null(), "no detector score for the whole image");
        assert!(out.join(format!("{name}_landmarks.png")).is_file());
    }
    let rows = csv_rows(&out.join("predictions.csv"));
    assert_eq!(rows.iter().map(|r| r[0].as_str()).collect::<Vec<_>>(), listed);
}

#[test]
fn shards_split_the_list_and_cover_every_image_once() {
    let st = setup("shard", 6);
    let listed = make_tree(&st);
    assert_cli_ok(&st.predict(&["tree", "--detector", "none", "--out", "all"]));
    let mut seen = Vec::new();
    for i in 0..3 {
        let shard = format!("{i}/3");
        let o = st.predict(&["tree", "--detector", "none", "--shard", &shard, "--out", "sharded"]);
        assert_cli_ok(&o);
        let rows = csv_rows(&st.dir.join(format!("sharded/predictions.shard-{i}-of-3.csv")));
        // Every third image of the sorted list, starting at the i-th.
        let want: Vec<&str> = listed.iter().skip(i).step_by(3).copied().collect();
        assert_eq!(rows.iter().map(|r| r[0].as_str()).collect::<Vec<_>>(), want);
        seen.extend(rows.into_iter().map(|r| r[0].clone()));
    }
    seen.sort();
    let mut all: Vec<String> = listed.iter().map(|s| s.to_string()).collect();
    all.sort();
    assert_eq!(seen, all, "each image in exactly one shard");
    // The shards together wrote what one run writes, under the same names.
    let (one, many) = (st.dir.join("all"), st.dir.join("sharded"));
    assert_eq!(json_names(&one), json_names(&many));
    for n in json_names(&one) {
        assert_eq!(read_json(&one.join(&n)), read_json(&many.join(&n)), "{n}");
    }
}

#[test]
fn bad_images_lose_nothing() {
    let st = setup("bad", 3);
    let dir = st.dir.join("mixed");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(st.image(0), dir.join("a_good.jpg")).unwrap();
    std::fs::copy(st.image(1), dir.join("d_good.jpg")).unwrap();
    let bytes = std::fs::read(st.image(2)).unwrap();
    std::fs::write(dir.join("b_truncated.jpg"), &bytes[..bytes.len() / 2]).unwrap();
    std::fs::write(dir.join("c_garbage.png"), b"\x89PNG\r\n\x1a\n but then nothing").unwrap();
    let o = st.predict(&["mixed", "--detector", "none", "--out", "out"]);
    assert!(!o.status.success(), "bad images must make the exit status non-zero");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!err.contains("panicked"), "{err}");
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 3, "{err}");
    assert!(lines[0].contains("b_truncated.jpg") && lines[0].contains("truncated"), "{err}");
    assert!(lines[1].contains("c_garbage.png"), "{err}");
    assert_eq!(lines[2], "hrk: error: 4 images, 2 faces, 2 failed");
    let out = st.dir.join("out");
    assert_eq!(json_names(&out), BTreeSet::from(["a_good.json".to_string(), "d_good.json".to_string()]));
    assert!(out.join("a_good_landmarks.png").is_file() && out.join("d_good_landmarks.png").is_file());
    assert_eq!(csv_rows(&out.join("predictions.csv")).len(), 2);
}

#[test]
fn a_photo_too_big_for_the_detector_is_one_failed_input() {
    use image::codecs::png::{CompressionType, FilterType, PngEncoder};
    use image::ImageEncoder;
    let st = setup("huge", 1);
    // A solid 10000x10000 PNG: at --min-face 3 its pyramid is 3.2e9 pixels (minutes of P-Net); it is
    // refused from its size, before any level is resampled, and the other photo is still processed.
    let big = st.dir.join("huge.png");
    let file = std::io::BufWriter::new(std::fs::File::create(&big).unwrap());
    let encoder = PngEncoder::new_with_quality(file, CompressionType::Fast, FilterType::NoFilter);
    encoder.write_image(&vec![90u8; 10000 * 10000 * 3], 10000, 10000, image::ExtendedColorType::Rgb8).unwrap();
    let started = std::time::Instant::now();
    let o = st.predict(&["huge.png", s(&st.image(0)), "--min-face", "3", "--out", "out"]);
    assert!(started.elapsed().as_secs() < 30, "took {:?}", started.elapsed());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && !err.contains("panicked"), "{err}");
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 2, "{err}");
    assert!(lines[0].contains("huge.png") && lines[0].contains("10000x10000"), "{err}");
    assert!(lines[0].contains("pyramid pixels") && lines[0].ends_with("use --min-face 11 or larger"), "{err}");
    assert!(lines[1].starts_with("hrk: error: 2 images,") && lines[1].ends_with(", 1 failed"), "{err}");
    assert_eq!(json_names(&st.dir.join("out")), BTreeSet::from(["s68_000000.json".to_string()]));
}

#[test]
fn boxes_csv_gives_each_image_its_faces() {
    let st = setup("boxes", 3);
    let (a, b) = (st.image(0), st.image(1));
    // Image a by its path as given (twice: two faces), image b by file name only; a header.
    let csv = st.dir.join("boxes.csv");
    std::fs::write(
        &csv,
        "image,x1,y1,x2,y2\nimages/s68_000000.jpg,48,40,208,200\n./images/s68_000000.jpg,10.5,20,90,100\ns68_000001.jpg,30,30,230,220,extra\n",
    )
    .unwrap();
    let o = st.predict(&["images/s68_000000.jpg", "images/s68_000001.jpg", "--boxes", "boxes.csv", "--out", "out"]);
    assert_cli_ok(&o);
    assert_eq!(stdout_last(&o), "2 images, 3 faces, 0 failed");
    let out = st.dir.join("out");
    let da = read_json(&out.join("s68_000000.json"));
    let db = read_json(&out.join("s68_000001.json"));
    check_schema(&da, 68);
    assert_eq!(numbers(&da["faces"][0]["box"]), [48.0, 40.0, 208.0, 200.0]);
    assert_eq!(numbers(&da["faces"][1]["box"]), [10.5, 20.0, 90.0, 100.0]);
    assert_eq!(numbers(&db["faces"][0]["box"]), [30.0, 30.0, 230.0, 220.0]);
    assert!(da["faces"][0]["score"].is_null());
    // A face from the file equals the same box given with --box.
    for (img, face, b) in [(&a, &da["faces"][1], "10.5,20,90,100"), (&b, &db["faces"][0], "30,30,230,220")] {
        let one = st.dir.join(format!("one-{}", img.file_stem().unwrap().to_string_lossy()));
        assert_cli_ok(&st.predict(&[s(img), "--box", b, "--out", s(&one)]));
        let doc = read_json(&one.join(format!("{}.json", img.file_stem().unwrap().to_string_lossy())));
        assert_eq!(landmarks(&doc["faces"][0]), landmarks(face));
        assert_eq!(doc["faces"][0]["landmark_scores"], face["landmark_scores"]);
    }

    // A header-less file with a UTF-8 byte-order mark: its first row still names image a.
    std::fs::write(st.dir.join("bom.csv"), "\u{feff}images/s68_000000.jpg,48,40,208,200\n").unwrap();
    let o = st.predict(&["images/s68_000000.jpg", "--boxes", "bom.csv", "--out", "out-bom"]);
    assert_cli_ok(&o);
    assert_eq!(stdout_last(&o), "1 images, 1 faces, 0 failed");
    let bom = read_json(&st.dir.join("out-bom/s68_000000.json"));
    assert_eq!(numbers(&bom["faces"][0]["box"]), [48.0, 40.0, 208.0, 200.0]);
    assert_eq!(landmarks(&bom["faces"][0]), landmarks(&da["faces"][0]));

    // Bad rows: one line naming file:line.
    let bad = |name: &str, text: &str, needles: &[&str]| {
        std::fs::write(st.dir.join(name), text).unwrap();
        let o = st.predict(&["images/s68_000000.jpg", "--boxes", name, "--out", "out-bad"]);
        assert_cli_error(&o, needles);
    };
    bad("short.csv", "image,x1,y1,x2,y2\ns68_000000.jpg,1,2,3\n", &["short.csv:2", "4 fields"]);
    bad("nan.csv", "s68_000000.jpg,1,2,3,4\ns68_000000.jpg,1,b,3,4\n", &["nan.csv:2", "'b'"]);
    bad("empty.csv", "s68_000000.jpg,10,10,5,50\n", &["empty.csv:1", "x2 must exceed x1"]);
    bad(
        "quote.csv",
        "s68_000000.jpg,1,1,50,50\n\"s68_000000.jpg,1,1,50,50\n",
        &["quote.csv:2", "unterminated quoted field"],
    );
    let o = st.predict(&["images/s68_000000.jpg", "--boxes", "missing.csv"]);
    assert_cli_error(&o, &["missing.csv"]);
    // One name for two different images: that image fails, named, the run reports it.
    std::fs::write(st.dir.join("two.csv"), "x/s68_000000.jpg,1,1,50,50\ny/s68_000000.jpg,1,1,50,50\n").unwrap();
    let o = st.predict(&["images/s68_000000.jpg", "--boxes", "two.csv", "--out", "out-two"]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("two.csv names 2 different images called s68_000000.jpg"), "{err}");
    assert_eq!(err.lines().last(), Some("hrk: error: 1 images, 0 faces, 1 failed"));
}

/// Loads the tiny model as the CLI does.
fn tiny_net(st: &Setup) -> hrk::model::HrNet {
    let cfg = hrk::cli::common::config(&st.cfg).unwrap();
    let mut net = hrk::cli::common::model(&cfg, 0).unwrap();
    hrk::cli::common::load_weights(&mut net, &st.weights).unwrap();
    net
}

#[test]
fn detector_none_is_the_whole_image_pipeline() {
    let st = setup("none", 3);
    let o = st.predict(&["images/s68_000000.jpg", "images/s68_000001.jpg", "--detector", "none", "--out", "out"]);
    assert_cli_ok(&o);
    // What `hrk predict` without a box did before the detector: crop the whole image (center =
    // image center, scale = longer side / 200, no enlargement), one forward pass, decode.
    let mut net = tiny_net(&st);
    for i in 0..2 {
        let img = hrk::data::imageio::load_image(&st.image(i)).unwrap();
        let center = [img.width as f32 / 2.0, img.height as f32 / 2.0];
        let scale = img.width.max(img.height) as f64 / 200.0;
        let c = hrk::data::transforms::crop(&img, center, scale, [64, 64], 0.0).unwrap();
        let mut input = vec![0f32; 3 * 64 * 64];
        hrk::data::sample::normalize_into(&c, &mut input).unwrap();
        let (hm, [n, j, h, w]) =
            hrk::eval::test_heatmaps(&mut net, input, [1, 3, 64, 64], &hrk::eval::TestOptions::default(), &[]).unwrap();
        let want =
            hrk::data::codec::decode_preds_with(&hm, n, j, h, w, &[center], &[scale], Default::default()).unwrap();
        let want_scores: Vec<f32> = hm.chunks(h * w).map(|m| m.iter().copied().fold(f32::MIN, f32::max)).collect();
        let doc = read_json(&st.dir.join(format!("out/s68_{i:06}.json")));
        let face = &doc["faces"][0];
        let want: Vec<f32> = want.iter().flat_map(|p| [p[0], p[1]]).collect();
        assert_eq!(as_f32(&landmarks(face)), want, "image {i}");
        assert_eq!(as_f32(&numbers(&face["landmark_scores"])), want_scores, "image {i}");
    }
}

#[test]
fn a_csv_rows_own_box_gives_the_dataset_crop() {
    let st = setup("csvbox", 6);
    let csv = st.dir.join(hrk::synth::TRAIN_CSV);
    let rows = csv_rows(&csv);
    assert!(rows.len() >= 4);
    // The CSV's box is the tight landmark box (COFW rounding): its center and side / 200 are the
    // row's center and scale exactly.
    let mut boxes = String::from("image,x1,y1,x2,y2\n");
    let mut images = Vec::new();
    for r in &rows {
        let v: Vec<f64> = r[1..].iter().map(|t| t.parse().unwrap()).collect();
        let pts: Vec<[f64; 2]> = v[3..].chunks(2).map(|p| [p[0], p[1]]).collect();
        let b = hrk::data::annotations::landmark_box(&pts).unwrap();
        let (center, scale) = hrk::data::annotations::box_center_scale(b);
        assert_eq!((scale, center), (v[0], [v[1], v[2]]), "{}", r[0]);
        let path = st.dir.join(&r[0]);
        boxes += &format!("{},{},{},{},{}\n", s(&path), b[0], b[1], b[2], b[3]);
        images.push(path);
    }
    std::fs::write(st.dir.join("own.csv"), boxes).unwrap();
    let mut args: Vec<&str> = images.iter().map(|p| s(p)).collect();
    args.extend(["--boxes", "own.csv", "--out", "boxed"]);
    assert_cli_ok(&st.predict(&args));
    assert_cli_ok(&st.predict(&["--csv", s(&csv), "--out", "dataset"]));
    let o = hrk_cmd()
        .args(["test", "--cfg", s(&st.cfg), "--model-file", s(&st.weights), "--testset", s(&csv)])
        .args(["--out", s(&st.dir.join("test"))])
        .output()
        .unwrap();
    assert_cli_ok(&o);
    let name = csv.file_stem().unwrap().to_string_lossy();
    let tested = hrk::io::load_state_dict(&st.dir.join(format!("test/predictions_{name}.safetensors"))).unwrap();
    let tested = tested.iter().find(|(n, _)| n == "predictions").unwrap().1.to_f32_vec();

    // Same center and scale in the run CSVs, same landmarks as --csv and as hrk test.
    let boxed_rows = csv_rows(&st.dir.join("boxed/predictions.csv"));
    let dataset_rows = csv_rows(&st.dir.join("dataset/predictions.csv"));
    assert_eq!(boxed_rows, dataset_rows);
    for (k, (r, img)) in rows.iter().zip(&images).enumerate() {
        let stem = img.file_stem().unwrap().to_string_lossy();
        let boxed = read_json(&st.dir.join(format!("boxed/{stem}.json")));
        let dataset = read_json(&st.dir.join(format!("dataset/{stem}.json")));
        assert_eq!(boxed["faces"][0]["landmarks"], dataset["faces"][0]["landmarks"], "{}", r[0]);
        assert_eq!(boxed["faces"][0]["landmark_scores"], dataset["faces"][0]["landmark_scores"]);
        assert_eq!(as_f32(&landmarks(&boxed["faces"][0])), &tested[k * 136..(k + 1) * 136], "{} vs hrk test", r[0]);
    }
}

#[test]
fn the_emulated_gpu_gives_the_cpus_faces() {
    let st = setup("emu", 3);
    std::fs::write(st.dir.join("b.csv"), "s68_000000.jpg,48,40,208,200\ns68_000001.jpg,30,30,230,220\n").unwrap();
    let run = |device: &str| {
        let out = format!("out-{device}");
        let args = ["images/s68_000000.jpg", "images/s68_000001.jpg", "--boxes", "b.csv", "--device", device];
        assert_cli_ok(&st.predict(&[&args[..], &["--out", &out]].concat()));
        (0..2).map(|i| read_json(&st.dir.join(format!("{out}/s68_{i:06}.json")))).collect::<Vec<_>>()
    };
    let (cpu, emu) = (run("cpu"), run("emu"));
    for (c, e) in cpu.iter().zip(&emu) {
        let (lc, le) = (landmarks(&c["faces"][0]), landmarks(&e["faces"][0]));
        // Sub-pixel refinement can flip on a near-tie between f32 summation orders (see
        // cuda_cli.rs): a quarter heatmap pixel at most, most coordinates exactly equal.
        let same = lc.iter().zip(&le).filter(|(a, b)| a == b).count();
        // The larger crop is 200 × 1.25 = 250 px over 16 heatmap columns: a quarter column is
        // 3.9 px, plus 1 for the truncation.
        assert!(lc.iter().zip(&le).all(|(a, b)| (a - b).abs() <= 5.0), "cpu {lc:?}\nemu {le:?}");
        assert!(same * 10 >= lc.len() * 9, "only {same} of {} coordinates agree", lc.len());
        let (sc, se) = (numbers(&c["faces"][0]["landmark_scores"]), numbers(&e["faces"][0]["landmark_scores"]));
        common::assert_close("landmark_scores", &se, &sc, 1e-4, 1e-4);
        assert_eq!(c["faces"][0]["box"], e["faces"][0]["box"]);
    }
}

// ---- the detector (needs the detector's fixture photos, tests/fixtures/mtcnn) -------------------------

fn mtcnn_fixture(name: &str) -> Option<(PathBuf, serde_json::Value)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/mtcnn");
    let img = common::existing_or_skip(dir.join(name), "MTCNN fixture photo")?;
    let json = read_json(&dir.join(Path::new(name).with_extension("json")));
    Some((img, json))
}

fn iou(a: &[f64], b: &[f64]) -> f64 {
    let ix = (a[2].min(b[2]) - a[0].max(b[0])).max(0.0);
    let iy = (a[3].min(b[3]) - a[1].max(b[1])).max(0.0);
    let inter = ix * iy;
    inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)
}

#[test]
fn the_detector_finds_every_face_of_a_group_photo_and_none_elsewhere() {
    let (Some((group, want)), Some((noface, _))) = (mtcnn_fixture("group.jpg"), mtcnn_fixture("noface.jpg")) else {
        return;
    };
    let st = setup("detect", 3);
    let o = st.predict(&[s(&group), s(&noface), "--out", "out"]);
    assert_cli_ok(&o);
    let doc = read_json(&st.dir.join("out/group.json"));
    check_schema(&doc, 68);
    let (got, want) = (doc["faces"].as_array().unwrap(), want["faces"].as_array().unwrap());
    assert_eq!(got.len(), want.len(), "{doc}");
    assert!(want.len() >= 2, "a group photo");
    for w in want {
        let wb = numbers(&w["box"]);
        let best = got.iter().max_by(|a, b| iou(&numbers(&a["box"]), &wb).total_cmp(&iou(&numbers(&b["box"]), &wb)));
        let g = best.unwrap();
        assert!(iou(&numbers(&g["box"]), &wb) >= 0.8, "{g} vs {w}");
        assert!((g["score"].as_f64().unwrap() - w["score"].as_f64().unwrap()).abs() <= 0.02);
    }
    assert_eq!(stdout_last(&o), format!("2 images, {} faces, 0 failed", want.len()));
    // Each detector box becomes the dataset convention with the measured margin and the centre
    // moved down by the measured shift (src/predict.rs's derivation).
    let rows: Vec<Vec<String>> =
        csv_rows(&st.dir.join("out/predictions.csv")).into_iter().filter(|r| r[0].ends_with("group.jpg")).collect();
    assert_eq!(rows.len(), got.len());
    for (r, face) in rows.iter().zip(got) {
        let [x1, y1, x2, y2] = numbers(&face["box"])[..] else { panic!("{face}") };
        let side = (x2 - x1).max(y2 - y1);
        let v: Vec<f64> = r[1..4].iter().map(|t| t.parse().unwrap()).collect();
        let want_scale = side / 200.0 * hrk::predict::MTCNN_MARGIN;
        let want_center = [(x1 + x2) / 2.0, (y1 + y2) / 2.0 + hrk::predict::MTCNN_CENTER_SHIFT * side];
        assert!((v[0] - want_scale).abs() <= 1e-4 * want_scale, "scale {} vs {want_scale}", v[0]);
        common::assert_close("center", &v[1..3], &want_center, 0.01, 0.0);
    }
    let none = read_json(&st.dir.join("out/noface.json"));
    assert_eq!(none["faces"].as_array().unwrap().len(), 0);
    assert!(st.dir.join("out/noface_landmarks.png").is_file());
}

#[test]
fn the_detector_on_the_emulated_gpu_gives_the_cpus_faces() {
    let Some((group, _)) = mtcnn_fixture("group.jpg") else { return };
    let st = setup("detect-emu", 3);
    let docs: Vec<serde_json::Value> = ["cpu", "emu"]
        .iter()
        .map(|d| {
            let out = format!("out-{d}");
            assert_cli_ok(&st.predict(&[s(&group), "--device", d, "--out", &out]));
            read_json(&st.dir.join(format!("{out}/group.json")))
        })
        .collect();
    let (c, e) = (docs[0]["faces"].as_array().unwrap(), docs[1]["faces"].as_array().unwrap());
    assert_eq!(c.len(), e.len());
    for (fc, fe) in c.iter().zip(e) {
        common::assert_close("box", &numbers(&fe["box"]), &numbers(&fc["box"]), 0.05, 0.0);
        common::assert_close("score", &[fe["score"].as_f64().unwrap()], &[fc["score"].as_f64().unwrap()], 1e-4, 0.0);
    }
}
