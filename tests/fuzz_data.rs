//! Bounded in-tree fuzzing of the data and config readers: the CSV dataset reader (mutated
//! CSVs over tiny images, opened and sampled), the COFW .mat reader (mutated small HDF5
//! files), image decoding (mutated PNG/JPEG/PPM/BMP) and the YAML loader with structure-aware
//! mutations (values swapped between keys, deep nesting, huge numbers, anchors/aliases).
//!
//! Seeds: tests/corpus/{csv,mat,images,yaml}. HRK_FUZZ_SECS = seconds per target (default 2),
//! HRK_FUZZ_SEED = PRNG seed. A failing input (panic, or an allocation far beyond its size,
//! or a single run over HRK_FUZZ_SLOW_SECS) is saved under target/fuzz-crashes/ and
//! the test fails listing them; replay one with HRK_FUZZ_REPLAY=path (and the target's name in
//! the path decides which reader runs). HRK_WRITE_CORPUS=1 regenerates the seed files.

mod common;

use common::alloc_guard;
use common::fuzz::FuzzLimits;
use common::hostile::*;
use common::scratch;
use hrk::rng::Rng;
use std::path::{Path, PathBuf};
use std::time::Duration;

#[global_allocator]
static GLOBAL: alloc_guard::TrackingAlloc = alloc_guard::TrackingAlloc;

/// Byte-level mutations (format-agnostic).
fn mutate_bytes(rng: &mut Rng, input: &[u8], others: &[Vec<u8>]) -> Vec<u8> {
    common::fuzz::mutate_bytes(rng, input, others, &[])
}

/// Runs `target` on seeds then mutants until the time is up. Returns (executions, accepted).
fn fuzz(
    name: &str, seeds: &[Vec<u8>], mutate: impl FnMut(&mut Rng, &[u8], &[Vec<u8>]) -> Vec<u8>,
    target: impl FnMut(&[u8]) -> bool,
) -> (u64, u64) {
    let limits = FuzzLimits {
        budget: Duration::from_secs_f64(common::fuzz_secs(2.0)),
        slow: Some(Duration::from_secs_f64(common::fuzz_slow_secs(5.0))),
        seed: common::fuzz_seed(7),
    };
    common::fuzz::fuzz(name, seeds, &limits, mutate, target)
}

fn corpus_dir(kind: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus").join(kind)
}

fn corpus(kind: &str) -> Vec<(String, Vec<u8>)> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(corpus_dir(kind))
        .unwrap_or_else(|e| panic!("{kind} corpus: {e}"))
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    files.iter().map(|f| (f.file_name().unwrap().to_string_lossy().into_owned(), std::fs::read(f).unwrap())).collect()
}

fn seeds(kind: &str) -> Vec<Vec<u8>> {
    corpus(kind).into_iter().map(|(_, b)| b).collect()
}

/// An error must be one line naming the file (or the given source name).
fn check_error(e: &anyhow::Error, source: &str) {
    let msg = format!("{e:#}");
    assert!(!msg.contains('\n'), "multi-line error: {msg:?}");
    assert!(msg.contains(source), "error does not name {source}: {msg}");
}

// ---- CSV dataset ---------------------------------------------------------------------------

/// Images the CSV seeds refer to (a.png, b.jpg, c.png grey), written once per run.
fn csv_images(dir: &Path) {
    for (name, bytes) in corpus("images") {
        if name.starts_with("csv_") {
            std::fs::write(dir.join(name.trim_start_matches("csv_")), bytes).unwrap();
        }
    }
}

/// Line-aware CSV mutations on top of the byte-level ones: cells replaced by odd numbers,
/// rows duplicated/dropped, columns added/removed.
fn mutate_csv(rng: &mut Rng, input: &[u8], others: &[Vec<u8>]) -> Vec<u8> {
    if rng.below(3) == 0 {
        return mutate_bytes(rng, input, others);
    }
    let text = String::from_utf8_lossy(input).into_owned();
    let mut rows: Vec<Vec<String>> = text.lines().map(|l| l.split(',').map(str::to_owned).collect()).collect();
    if rows.is_empty() {
        return mutate_bytes(rng, input, others);
    }
    const CELLS: &[&str] = &[
        "",
        "nan",
        "-inf",
        "1e308",
        "-1e308",
        "1e-320",
        "0",
        "-0",
        "-1",
        "3.4e38",
        "1e12",
        "\"",
        "\"a,b\"",
        "../../etc/passwd",
        "/",
        ".",
        "a.png\u{0}",
        "1,2",
        " 7 ",
        "0x10",
        "1_0",
        "999999999999999999999999999999999999999999999999999999999999999999999999999999e99",
    ];
    for _ in 0..1 + rng.below(3) {
        let r = rng.below(rows.len());
        match rng.below(5) {
            0 | 1 if !rows[r].is_empty() => {
                let c = rng.below(rows[r].len());
                rows[r][c] = rng.pick(CELLS).to_string();
            }
            2 => {
                let copy = rows[r].clone();
                let at = rng.below(rows.len() + 1);
                rows.insert(at, copy);
            }
            3 if rows.len() > 1 => {
                rows.remove(r);
            }
            _ => {
                if rng.below(2) == 0 {
                    rows[r].push(rng.pick(CELLS).to_string());
                } else {
                    rows[r].pop();
                }
            }
        }
    }
    let mut out =
        rows.iter().map(|r| r.join(",")).collect::<Vec<_>>().join(if rng.below(4) == 0 { "\r\n" } else { "\n" });
    out.push('\n');
    out.into_bytes()
}

#[test]
fn fuzz_csv_dataset() {
    let dir = scratch("fuzz-csv");
    csv_images(&dir);
    let csv = dir.join("ann.csv");
    let shown = csv.display().to_string();
    fuzz("csv", &seeds("csv"), mutate_csv, |bytes| {
        std::fs::write(&csv, bytes).unwrap();
        let mut any_ok = false;
        for is_train in [false, true] {
            let ds = match hrk::data::dataset::FaceDataset::open(tiny_dataset_spec(&dir, &csv, is_train)) {
                Ok(ds) => ds,
                Err(e) => {
                    check_error(&e, &shown);
                    return false;
                }
            };
            for i in 0..ds.len().min(3) {
                match ds.get(i, 11, 1) {
                    Ok(s) => {
                        assert!(s.input.iter().all(|v| v.is_finite()), "non-finite input");
                        any_ok = true;
                    }
                    Err(e) => check_error(&e, ""),
                }
            }
        }
        any_ok
    });
}

// ---- COFW .mat -----------------------------------------------------------------------------

#[test]
fn fuzz_cofw_mat() {
    let dir = scratch("fuzz-mat");
    let mat = dir.join("cofw.mat");
    let shown = mat.display().to_string();
    fuzz("mat", &seeds("mat"), mutate_bytes, |bytes| {
        std::fs::write(&mat, bytes).unwrap();
        let mut ok = false;
        for is_train in [false, true] {
            match hrk::data::cofw::read_cofw(&mat, is_train) {
                Ok(d) => {
                    ok = true;
                    assert_eq!(d.images.len(), d.pts.len());
                    for im in &d.images {
                        assert_eq!(im.data.len(), im.width * im.height * 3);
                    }
                }
                Err(e) => check_error(&e, &shown),
            }
        }
        ok
    });
}

// ---- images --------------------------------------------------------------------------------

#[test]
fn fuzz_image_decode() {
    let dir = scratch("fuzz-img");
    let all = seeds("images");
    let mut n = 0u64;
    fuzz("image", &all, mutate_bytes, |bytes| {
        n += 1;
        let name = Path::new("fuzz-input.img");
        let truncated = hrk::data::imageio::jpeg_is_truncated(bytes);
        let r = hrk::data::imageio::decode_rgb8_bytes(bytes, name);
        // Every 16th input goes through the file path as well (load_image).
        if n.is_multiple_of(16) {
            let f = dir.join("in.img");
            std::fs::write(&f, bytes).unwrap();
            if let Err(e) = hrk::data::imageio::load_image(&f) {
                check_error(&e, &f.display().to_string());
            }
        }
        match r {
            Ok(img) => {
                assert_eq!(img.data.len(), img.width * img.height * 3);
                assert!(img.width > 0 && img.height > 0);
                let _ = truncated;
                true
            }
            Err(e) => {
                check_error(&e, "fuzz-input.img");
                false
            }
        }
    });
}

// ---- YAML (structure-aware) ----------------------------------------------------------------

/// `KEY: value` lines of a YAML text (indent, key, value).
fn kv_lines(text: &str) -> Vec<(usize, String, String)> {
    text.lines()
        .enumerate()
        .filter_map(|(i, l)| {
            let (k, v) = l.split_once(':')?;
            let k = k.trim();
            (!k.is_empty() && !k.starts_with('#') && !k.starts_with('-'))
                .then(|| (i, k.to_string(), v.trim().to_string()))
        })
        .collect()
}

fn mutate_yaml(rng: &mut Rng, input: &[u8], others: &[Vec<u8>]) -> Vec<u8> {
    let text = String::from_utf8_lossy(input).into_owned();
    let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
    let kvs = kv_lines(&text);
    if kvs.is_empty() || rng.below(8) == 0 {
        return mutate_bytes(rng, input, others);
    }
    const VALUES: &[&str] = &[
        "1e999",
        "-1e999",
        ".nan",
        ".inf",
        "-.inf",
        "99999999999999999999999999999",
        "-9223372036854775809",
        "18446744073709551616",
        "0",
        "-1",
        "-0",
        "0x7fffffff",
        "0o777",
        "1_000_000",
        "true",
        "null",
        "~",
        "''",
        "\"\"",
        "[]",
        "{}",
        "[[[]]]",
        "[1, 2, 3]",
        "(0,1,2,3,4,5,6,7)",
        "'(0,'",
        "!!binary aGVsbG8=",
        "!!float 1",
        "!!str 5",
        "*undefined",
        "&x 5",
        "|\n  text",
        ">-\n  folded",
        "\"\\u0000\"",
        "'\u{202e}'",
        "{a: 1, a: 2}",
        "? complex\n: key",
    ];
    for _ in 0..1 + rng.below(3) {
        let (line, key, value) = rng.pick(&kvs).clone();
        let Some(l) = lines.get(line).cloned() else { continue };
        let indent = l.len() - l.trim_start().len();
        let pad = " ".repeat(indent);
        match rng.below(7) {
            // a value from another key (type confusion with realistic values)
            0 => {
                let (_, _, other) = rng.pick(&kvs).clone();
                lines[line] = format!("{pad}{key}: {other}");
            }
            1 => lines[line] = format!("{pad}{key}: {}", rng.pick(VALUES)),
            // deep nesting: flow sequences or block mappings
            2 => {
                let depth = 1 + rng.below(3000);
                lines[line] = if rng.below(2) == 0 {
                    format!("{pad}{key}: {}{value}{}", "[".repeat(depth), "]".repeat(depth))
                } else {
                    format!("{pad}{key}: {}{value}{}", "{a: ".repeat(depth), "}".repeat(depth))
                };
            }
            // anchors and aliases, including an exponential alias bomb
            3 => {
                if rng.below(2) == 0 {
                    lines[line] = format!("{pad}{key}: &anchor {value}");
                    let (l2, k2, _) = rng.pick(&kvs).clone();
                    if let Some(x) = lines.get(l2).cloned() {
                        let ind = x.len() - x.trim_start().len();
                        lines[l2] = format!("{}{k2}: *anchor", " ".repeat(ind));
                    }
                } else {
                    let mut bomb = vec![format!(
                        "{pad}{key}: &b0 [{value}, {value}, {value}, {value}, {value}, {value}, {value}, {value}]"
                    )];
                    for i in 1..1 + rng.below(10) {
                        bomb.push(format!(
                            "{pad}X{i}: &b{i} [*b{p}, *b{p}, *b{p}, *b{p}, *b{p}, *b{p}, *b{p}, *b{p}]",
                            p = i - 1
                        ));
                    }
                    lines.splice(line..line + 1, bomb);
                }
            }
            // a key moved to another nesting level
            4 => {
                let shift = *rng.pick(&[0usize, 2, 4, 6]);
                lines[line] = format!("{}{}", " ".repeat(shift), l.trim_start());
            }
            // a whole section duplicated or merged in with <<
            5 => {
                let copy = lines[line].clone();
                let at = rng.below(lines.len() + 1);
                lines.insert(at, if rng.below(2) == 0 { copy } else { format!("{pad}<<: {{{key}: {value}}}") });
            }
            _ => {
                lines.remove(line);
                break;
            }
        }
    }
    lines.join("\n").into_bytes()
}

#[test]
fn fuzz_yaml_structured() {
    let mut all = seeds("yaml");
    for f in ["wflw/face_alignment_wflw_hrnet_w18.yaml", "cofw/face_alignment_cofw_hrnet_w18.yaml"] {
        all.push(std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("experiments").join(f)).unwrap());
    }
    fuzz("yaml", &all, mutate_yaml, |bytes| {
        let Ok(text) = std::str::from_utf8(bytes) else { return false };
        match hrk::config::Config::from_yaml_str(text, "fuzz.yaml") {
            Ok(cfg) => {
                cfg.validate("fuzz.yaml").expect("accepted config fails validation");
                // whatever is accepted must build a model spec or give a one-line error
                if let Err(e) = hrk::model::HrnetSpec::from_config(&cfg) {
                    check_error(&e, "");
                }
                let again = hrk::config::Config::from_yaml_str(&cfg.to_yaml(), "dump.yaml")
                    .expect("dump of an accepted config reloads");
                assert_eq!(again, cfg);
                true
            }
            Err(e) => {
                check_error(&e, "fuzz.yaml");
                false
            }
        }
    });
}

// ---- seed corpus ---------------------------------------------------------------------------

/// Writes the seed corpora (small; run with HRK_WRITE_CORPUS=1 after changing a builder).
#[test]
fn write_corpus() {
    if !common::write_corpus() {
        return;
    }
    let tmp = scratch("fuzz-corpus");
    let put = |kind: &str, name: &str, bytes: &[u8]| {
        std::fs::create_dir_all(corpus_dir(kind)).unwrap();
        std::fs::write(corpus_dir(kind).join(name), bytes).unwrap();
    };
    // images: the CSV seeds' images (csv_*) and format variety for the decoder
    put("images", "csv_a.png", &png_bytes(40, 32, 1));
    put("images", "csv_b.jpg", &jpeg_bytes(36, 30, 2));
    let mut grey = std::io::Cursor::new(Vec::new());
    image::DynamicImage::ImageRgb8(picture(24, 20, 3)).to_luma8().write_to(&mut grey, image::ImageFormat::Png).unwrap();
    put("images", "csv_c.png", grey.get_ref());
    let mut c16 = std::io::Cursor::new(Vec::new());
    image::DynamicImage::ImageRgb8(picture(9, 7, 4)).to_rgba16().write_to(&mut c16, image::ImageFormat::Png).unwrap();
    put("images", "rgba16.png", c16.get_ref());
    let mut bmp = std::io::Cursor::new(Vec::new());
    picture(11, 6, 5).write_to(&mut bmp, image::ImageFormat::Bmp).unwrap();
    put("images", "small.bmp", bmp.get_ref());
    let mut ppm = b"P6\n4 3\n255\n".to_vec();
    ppm.extend((0..36).map(|k| (k * 7) as u8));
    put("images", "small.ppm", &ppm);
    put("images", "small.pgm", b"P5\n3 2\n255\n\x00\x40\x80\xc0\xff\x10");
    put("images", "tiny.jpg", &jpeg_bytes(9, 8, 6));
    // CSVs over those images (300W layout, 5 landmarks)
    let h = csv_header(TINY_JOINTS);
    put(
        "csv",
        "three_rows.csv",
        format!("{h}\n{}\n{}\n{}\n", csv_row("a.png", 5), csv_row("b.jpg", 5), csv_row("c.png", 5)).as_bytes(),
    );
    put("csv", "crlf_bom.csv", format!("\u{feff}{h}\r\n{}\r\n", csv_row("b.jpg", 5)).as_bytes());
    put("csv", "quoted.csv", format!("{h}\n\"a.png\",{}\n", csv_row("x", 5).split_once(',').unwrap().1).as_bytes());
    // COFW .mat: train and test variables, RGB and grey images
    put("mat", "test_rgb_grey.mat", &cofw_mat_bytes("IsT", "phisT", &[(12, 10, 3), (8, 9, 1)], 87, &tmp));
    put("mat", "train_one.mat", &cofw_mat_bytes("IsTr", "phisTr", &[(6, 5, 1)], 87, &tmp));
    // YAML: the tiny synthetic config and a minimal one
    put("yaml", "tiny.yaml", include_str!("../experiments/synthetic/synthetic_hrnet_tiny.yaml").as_bytes());
    put(
        "yaml",
        "minimal.yaml",
        b"GPUS: (0,)\nDATASET:\n  DATASET: WFLW\nMODEL:\n  NUM_JOINTS: 98\n  IMAGE_SIZE: [256, 256]\n",
    );
}

/// Replays a saved input through the reader its file name names.
#[test]
fn replay() {
    let Some(path) = common::fuzz_replay() else { return };
    let bytes = std::fs::read(&path).unwrap();
    let name = path.file_name().unwrap().to_string_lossy().into_owned();
    let dir = scratch("fuzz-replay");
    if name.starts_with("csv") {
        csv_images(&dir);
        let csv = dir.join("ann.csv");
        std::fs::write(&csv, &bytes).unwrap();
        for is_train in [false, true] {
            let r = hrk::data::dataset::FaceDataset::open(tiny_dataset_spec(&dir, &csv, is_train))
                .and_then(|ds| (0..ds.len().min(3)).try_for_each(|i| ds.get(i, 11, 1).map(|_| ())));
            eprintln!("replay train={is_train}: {r:?}");
        }
    } else if name.starts_with("mat") {
        let f = dir.join("cofw.mat");
        std::fs::write(&f, &bytes).unwrap();
        eprintln!("replay: {:?}", hrk::data::cofw::read_cofw(&f, false).map(|d| d.images.len()));
    } else if name.starts_with("image") {
        eprintln!(
            "replay: {:?}",
            hrk::data::imageio::decode_rgb8_bytes(&bytes, Path::new("x")).map(|i| (i.width, i.height))
        );
    } else {
        let text = String::from_utf8_lossy(&bytes);
        eprintln!("replay: {:?}", hrk::config::Config::from_yaml_str(&text, "replay.yaml").map(|_| ()));
    }
}
