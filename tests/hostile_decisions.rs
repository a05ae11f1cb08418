//! The "also seen" decisions of issue 25, each as the behaviour a demanding user expects: an image
//! too small for a face is named as such; a face box entirely outside its image, or at 1e30, is
//! refused naming file:line (in `predict`, only that image fails); COCO files without bbox warn once;
//! a key written twice in a YAML is refused; END_EPOCH ≤ BEGIN_EPOCH is refused and a finished run
//! resumed writes nothing; non-UTF-8 image names keep their bytes in the JSON; a full disk still
//! ends `predict` with its summary line; a `.pth` declaring a huge storage is refused before any
//! of it is inflated.

mod common;

use common::model::{tiny_setup, TinySetup as Setup};
use common::{alloc_guard, assert_cli_error, assert_cli_ok, hrk, hrk_model, line_of, s, scratch};
use std::path::{Path, PathBuf};
use std::process::Output;

#[global_allocator]
static GLOBAL: alloc_guard::TrackingAlloc = alloc_guard::TrackingAlloc;

/// Held while a test measures its largest allocation, and while another builds its fixtures in
/// this process, so that neither sees the other's allocations.
static ALLOCATIONS: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// [`alloc_guard::LARGEST_ALLOC`] over `f`, with [`ALLOCATIONS`] held.
fn largest_allocation_of<T>(f: impl FnOnce() -> T) -> (T, usize) {
    let _alone = ALLOCATIONS.lock().unwrap_or_else(|e| e.into_inner());
    alloc_guard::LARGEST_ALLOC.store(0, std::sync::atomic::Ordering::Relaxed);
    let got = f();
    (got, alloc_guard::LARGEST_ALLOC.load(std::sync::atomic::Ordering::Relaxed))
}

fn setup(name: &str) -> Setup {
    let _alone = ALLOCATIONS.lock().unwrap_or_else(|e| e.into_inner());
    tiny_setup(&format!("decisions-{name}"))
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn last_line(o: &Output) -> String {
    stderr(o).trim_end().lines().last().unwrap_or_default().to_string()
}

fn write_png(path: &Path, w: u32, h: u32) {
    image::RgbImage::from_pixel(w, h, image::Rgb([90, 100, 110])).save(path).unwrap();
}

/// The first data row of the synthetic test CSV with its image field replaced by `image`.
fn csv_with_image(st: &Setup, image: &str, edit: impl Fn(&mut Vec<String>)) -> PathBuf {
    let text = std::fs::read_to_string(st.dir.join(hrk::synth::TEST_CSV)).unwrap();
    let mut lines = text.lines();
    let header = lines.next().unwrap();
    let mut fields: Vec<String> = lines.next().unwrap().split(',').map(str::to_string).collect();
    fields[0] = image.to_string();
    edit(&mut fields);
    let path = st.dir.join(format!("edited_{}.csv", image.replace('/', "_")));
    std::fs::write(&path, format!("{header}\n{}\n", fields.join(","))).unwrap();
    path
}

/// A 1×1 image once failed deep inside the crop ("window 0x0 … is empty or too large").
#[test]
fn an_image_too_small_for_a_face_is_named_with_its_size() {
    let st = setup("tiny-image");
    let one = st.dir.join("one.png");
    write_png(&one, 1, 1);
    let out = st.dir.join("out");
    let o = hrk_model(
        "predict",
        &st.cfg,
        &st.weights,
        &[s(&one), s(&st.images[0]), "--detector", "none", "--out", s(&out)],
    );
    let err = stderr(&o);
    assert!(err.contains(&format!("image {}: image too small (1x1 pixels", one.display())), "{err}");
    assert_eq!(last_line(&o), "hrk: error: 2 images, 1 faces, 1 failed");
    assert!(out.join("s68_000000.json").is_file());
    // hrk test (and training, through the same pipeline) names the CSV line too.
    let csv = csv_with_image(&st, "one.png", |_| {});
    let o = hrk_model("test", &st.cfg, &st.weights, &["--testset", s(&csv)]);
    assert_cli_error(&o, &["one.png", "edited_one.png.csv:2", "image too small (1x1 pixels"]);
}

/// Boxes entirely outside the image, or at 1e30, were accepted silently.
#[test]
fn face_boxes_entirely_outside_or_absurd_are_refused_by_file_and_line() {
    let st = setup("boxes");
    let [a, b] = [&st.images[0], &st.images[1]];
    let boxes = st.dir.join("boxes.csv");
    // Row 2 lies partly outside (fine: the crop pads), row 3 entirely outside its image.
    std::fs::write(&boxes, format!("image,x1,y1,x2,y2\n{},-20,-20,150,150\n{},5000,5000,5100,5100\n", s(a), s(b)))
        .unwrap();
    let out = st.dir.join("out");
    let o = hrk_model("predict", &st.cfg, &st.weights, &[s(a), s(b), "--boxes", s(&boxes), "--out", s(&out)]);
    let err = stderr(&o);
    assert!(err.contains("boxes.csv:3: box [5000.0, 5000.0, 5100.0, 5100.0] lies entirely outside the"), "{err}");
    assert_eq!(last_line(&o), "hrk: error: 2 images, 1 faces, 1 failed");
    assert!(out.join("s68_000000.json").is_file());
    std::fs::write(&boxes, format!("{},0,0,1e30,1e30\n", s(a))).unwrap();
    let o = hrk_model("predict", &st.cfg, &st.weights, &[s(a), "--boxes", s(&boxes), "--out", s(&out)]);
    assert_cli_error(&o, &["boxes.csv:1", "beyond ±65536 pixels"]);
    // A dataset row: centre far outside its image, or a scale of 1e30.
    let outside = csv_with_image(&st, "images/s68_000000.jpg", |f| (f[2], f[3]) = ("9000".into(), "9000".into()));
    let o = hrk_model("test", &st.cfg, &st.weights, &["--testset", s(&outside)]);
    assert_cli_error(&o, &["s68_000000.jpg", ".csv:2", "lies entirely outside the"]);
    let huge = csv_with_image(&st, "images/s68_000001.jpg", |f| f[1] = "1e30".into());
    let o = hrk_model("test", &st.cfg, &st.weights, &["--testset", s(&huge)]);
    assert_cli_error(&o, &[".csv:2: face box out of range (scale 1000000000000000000000000000000"]);
}

/// A COCO annotation without bbox took the landmark box without a word.
#[test]
fn coco_annotations_without_bbox_warn_once_with_the_count() {
    let dir = scratch("decisions-coco");
    let coco = dir.join("c.json");
    let kp = "[12, 25, 2, 40, 60, 2]";
    std::fs::write(
        &coco,
        format!(
            r#"{{"images": [{{"id": 1, "file_name": "a.jpg"}}], "annotations": [
            {{"id": 1, "image_id": 1, "keypoints": {kp}}}, {{"id": 2, "image_id": 1, "keypoints": {kp}}},
            {{"id": 3, "image_id": 1, "bbox": [10, 20, 40, 50], "keypoints": {kp}}}]}}"#
        ),
    )
    .unwrap();
    let out = dir.join("o.csv");
    let o = hrk(&["annotations", "--coco", s(&coco), "--out", s(&out)]);
    assert_cli_ok(&o);
    let err = stderr(&o);
    assert_eq!(err.matches("have no bbox").count(), 1, "{err}");
    assert!(err.contains("2 of 3 annotations have no bbox"), "{err}");
}

/// A repeated YAML key silently took its last value.
#[test]
fn a_config_key_written_twice_is_refused_with_both_lines() {
    let st = setup("dup-key");
    let text = std::fs::read_to_string(&st.cfg).unwrap();
    let dup = st.dir.join("dup.yaml");
    let doubled = text.replace("  SIGMA: 1.0\n", "  SIGMA: 1.0\n  NAME: hrnet\n");
    std::fs::write(&dup, &doubled).unwrap();
    let (first, second) = (line_of(&doubled, "NAME: hrnet"), line_of(&doubled, "SIGMA: 1.0") + 1);
    let o = hrk_model("predict", &dup, &st.weights, &[s(&st.images[0])]);
    let (d, name) = (dup.display(), "dup.yaml");
    assert_cli_error(
        &o,
        &[
            &format!("{d}:{second}: YAML refused: key 'NAME' is written twice"),
            &format!("{name}:{first} and "),
            &format!("{name}:{second} "),
        ],
    );
}

/// END_EPOCH 0 wrote an untrained final_state and exited 0; a finished run resumed rewrote it.
#[test]
fn nothing_to_train_is_refused_or_writes_nothing() {
    let st = setup("epochs");
    let text = std::fs::read_to_string(&st.cfg).unwrap();
    let zero = st.dir.join("zero.yaml");
    let yaml = format!("{text}TRAIN:\n  END_EPOCH: 0\n");
    std::fs::write(&zero, &yaml).unwrap();
    let o = hrk(&["train", "--cfg", s(&zero)]);
    assert_cli_error(&o, &[&format!("zero.yaml:{}: config key TRAIN.END_EPOCH", line_of(&yaml, "END_EPOCH"))]);
    assert!(!st.dir.join("output").exists(), "a refused config wrote output");
    let one = st.dir.join("one.yaml");
    std::fs::write(&one, format!("{text}TRAIN:\n  END_EPOCH: 1\n  RESUME: true\n  BATCH_SIZE_PER_GPU: 2\n")).unwrap();
    assert_cli_ok(&hrk(&["train", "--cfg", s(&one)]));
    let out = st.dir.join("output/300W/one");
    let final_state = out.join("final_state.safetensors");
    let listing = |dir: &Path| {
        let mut v: Vec<(PathBuf, std::time::SystemTime)> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap())
            .filter(|e| !e.file_name().to_string_lossy().ends_with(".log"))
            .map(|e| (e.path(), e.metadata().unwrap().modified().unwrap()))
            .collect();
        v.sort();
        v
    };
    let before = listing(&out);
    assert!(final_state.is_file());
    let o = hrk(&["train", "--cfg", s(&one)]);
    assert_cli_ok(&o);
    let said = format!("{}{}", String::from_utf8_lossy(&o.stdout), stderr(&o));
    assert!(said.contains("nothing to train"), "{said}");
    assert_eq!(listing(&out), before, "a run with nothing to train wrote files");
}

/// A file name with byte 0xff came out as U+FFFD only: the JSON now also holds its bytes.
#[test]
fn a_non_utf8_image_name_keeps_its_bytes_in_the_json() {
    use std::os::unix::ffi::OsStrExt;
    let st = setup("non-utf8");
    let odd = st.dir.join(std::ffi::OsStr::from_bytes(b"face\xff.jpg"));
    if std::fs::copy(&st.images[0], &odd).is_err() {
        eprintln!("skipped: this filesystem refuses a non-UTF-8 file name");
        return;
    }
    let out = st.dir.join("out");
    let o =
        hrk_cmd_os(&st, &[odd.as_os_str(), "--detector".as_ref(), "none".as_ref(), "--out".as_ref(), out.as_os_str()]);
    assert_cli_ok(&o);
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("face\u{fffd}.json")).unwrap()).unwrap();
    let hex: String = odd.as_os_str().as_bytes().iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(json["image_bytes_hex"], hex.as_str());
    assert!(json["image"].as_str().unwrap().ends_with("face\u{fffd}.jpg"));
    // UTF-8 names keep the schema as it was.
    let o = hrk_cmd_os(
        &st,
        &[st.images[1].as_os_str(), "--detector".as_ref(), "none".as_ref(), "--out".as_ref(), out.as_os_str()],
    );
    assert_cli_ok(&o);
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("s68_000001.json")).unwrap()).unwrap();
    assert!(json.get("image_bytes_hex").is_none());
}

fn hrk_cmd_os(st: &Setup, rest: &[&std::ffi::OsStr]) -> Output {
    common::hrk_cmd()
        .args(["predict", "--cfg", s(&st.cfg), "--model-file", s(&st.weights)])
        .args(rest)
        .output()
        .unwrap()
}

/// Unmounts the tmpfs when the test ends, passed or not.
struct Mounted(PathBuf);

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
    }
}

/// A predict run on a full disk ended with the write error and no summary line.
#[test]
fn a_full_disk_still_ends_predict_with_its_summary_line() {
    let st = setup("disk-full");
    let full = st.dir.join("full");
    std::fs::create_dir(&full).unwrap();
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=64k", "tmpfs", s(&full)])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !mounted {
        eprintln!("skipped: cannot mount a small tmpfs (needs root)");
        return;
    }
    let _unmount = Mounted(full.clone());
    let out = full.join("out");
    let all_images = st.dir.join("images");
    let o = hrk_model("predict", &st.cfg, &st.weights, &[s(&all_images), "--detector", "none", "--out", s(&out)]);
    assert!(!o.status.success());
    let err = stderr(&o);
    assert!(err.contains("No space left on device"), "{err}");
    let last = last_line(&o);
    let counts: Vec<&str> = last.trim_start_matches("hrk: error: ").split(", ").collect();
    assert!(
        counts.len() >= 3
            && counts[0].ends_with(" images")
            && counts[1].ends_with(" faces")
            && counts[2].ends_with(" failed")
            && !counts[2].starts_with("0 "),
        "last line is not the summary: {last}\n{err}"
    );
}

/// A 64×64 PNG holding a 64 MiB ICC profile (deflated to a few tens of KB) had the profile
/// inflated whole by the decoder (a 1 MB file made 1 GB); the unused profile is now skipped.
#[test]
fn a_png_with_a_huge_icc_profile_decodes_without_inflating_it() {
    use image::ImageEncoder;
    let pixels: Vec<u8> = (0..64 * 64 * 3).map(|i| (i % 251) as u8).collect();
    let mut png = Vec::new();
    {
        let _alone = ALLOCATIONS.lock().unwrap_or_else(|e| e.into_inner());
        let mut encoder = image::codecs::png::PngEncoder::new(&mut png);
        encoder.set_icc_profile(vec![0; 64 << 20]).unwrap();
        encoder.write_image(&pixels, 64, 64, image::ExtendedColorType::Rgb8).unwrap();
    }
    let (rgb, largest) = largest_allocation_of(|| hrk::data::imageio::decode_rgb8_bytes(&png, Path::new("icc.png")));
    let rgb = rgb.unwrap();
    assert_eq!((rgb.width, rgb.height, rgb.data), (64, 64, pixels));
    assert!(largest < 16 << 20, "{largest} bytes allocated in one go for a {}-byte PNG", png.len());
}

/// A zip `.pth` whose pickle declares a 1 GiB storage (its record "deflated" into 1.1 MB) was
/// inflated (1 GiB allocated) before the size was refused.
#[test]
fn a_pth_declaring_a_huge_storage_is_refused_before_inflating_it() {
    let dir = scratch("decisions-pth");
    let numel: u64 = 1 << 28; // 1 GiB of float32
    let mut pkl = b"\x80\x02}q\x00X\x01\x00\x00\x00wctorch._utils\n_rebuild_tensor_v2\n((X\x07\x00\x00\x00storagectorch\nFloatStorage\nX\x01\x00\x00\x000X\x03\x00\x00\x00cpu\x8a\x08".to_vec();
    pkl.extend_from_slice(&numel.to_le_bytes());
    pkl.extend_from_slice(b"tQK\x00K\x02\x85K\x01\x85\x89)tRs.");
    let deflated = vec![0u8; 1100 << 10];
    let path = dir.join("huge.pth");
    std::fs::write(
        &path,
        zip_declaring(&[("archive/data.pkl", &pkl, pkl.len() as u64, 0), ("archive/data/0", &deflated, numel * 4, 8)]),
    )
    .unwrap();
    let (loaded, largest) = largest_allocation_of(|| hrk::io::load_state_dict(&path));
    let e = format!("{:#}", loaded.unwrap_err());
    common::assert_one_line(&e, &["huge.pth", "tensor 'w'", "archive/data/0", "268435456 elements"]);
    assert!(largest < 64 << 20, "{largest} bytes allocated in one go before refusing: {e}");
}

/// CRC-32 (IEEE), bit by bit: the zip reader checks it on stored records.
fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= b as u32;
        for _ in 0..8 {
            crc = if crc & 1 == 1 { (crc >> 1) ^ 0xEDB8_8320 } else { crc >> 1 };
        }
    }
    !crc
}

/// A zip archive whose entries declare the given uncompressed sizes and methods (0 stored, 8
/// deflated) whatever their data: (name, data, declared size, method).
fn zip_declaring(entries: &[(&str, &[u8], u64, u16)]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut central = Vec::new();
    for (name, data, size, method) in entries {
        let offset = out.len() as u32;
        // The deflated record is never read to its end, so only the stored pickle needs its CRC.
        let crc = if *method == 0 { crc32(data) } else { 0 };
        let fields = |sig: u32, central: bool| {
            let mut h = sig.to_le_bytes().to_vec();
            if central {
                h.extend_from_slice(&20u16.to_le_bytes()); // made by
            }
            h.extend_from_slice(&20u16.to_le_bytes()); // version needed
            h.extend_from_slice(&0u16.to_le_bytes()); // flags
            h.extend_from_slice(&method.to_le_bytes());
            h.extend_from_slice(&[0; 4]); // time, date
            h.extend_from_slice(&crc.to_le_bytes());
            h.extend_from_slice(&(data.len() as u32).to_le_bytes());
            h.extend_from_slice(&(*size as u32).to_le_bytes());
            h.extend_from_slice(&(name.len() as u16).to_le_bytes());
            h.extend_from_slice(&0u16.to_le_bytes()); // extra
            if central {
                h.extend_from_slice(&[0; 8]); // comment length, disk, internal and external attributes
                h.extend_from_slice(&[0; 2]);
                h.extend_from_slice(&offset.to_le_bytes());
            }
            h.extend_from_slice(name.as_bytes());
            h
        };
        out.extend(fields(0x0403_4b50, false));
        out.extend_from_slice(data);
        central.extend(fields(0x0201_4b50, true));
    }
    let (cd_offset, cd_len, n) = (out.len() as u32, central.len() as u32, entries.len() as u16);
    out.extend(central);
    out.extend_from_slice(&0x0605_4b50u32.to_le_bytes());
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(&n.to_le_bytes());
    out.extend_from_slice(&n.to_le_bytes());
    out.extend_from_slice(&cd_len.to_le_bytes());
    out.extend_from_slice(&cd_offset.to_le_bytes());
    out.extend_from_slice(&0u16.to_le_bytes());
    out
}

// ---- fixes from the second sweep (docs/SWEEP.md) ------------------------------------------------

/// Runs `hrk args…`, killing it after `secs` (then `None`).
fn hrk_within(args: &[&str], secs: u64) -> Option<Output> {
    let mut child = common::hrk_cmd()
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let started = std::time::Instant::now();
    while child.try_wait().unwrap().is_none() {
        if started.elapsed().as_secs() >= secs {
            child.kill().unwrap();
            child.wait().unwrap();
            return None;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    Some(child.wait_with_output().unwrap())
}

/// `hrk synth --count 0` wrote an empty data set and exited 0; `--count 1000000000000` wrote
/// images until the disk was full.
#[test]
fn synth_refuses_a_count_of_zero_or_past_its_bound() {
    let dir = scratch("decisions-synth");
    for count in ["0", "1000000000000"] {
        let out = dir.join(format!("s{count}"));
        let o = hrk_within(&["synth", "--out", s(&out), "--joints", "68", "--count", count], 20)
            .unwrap_or_else(|| panic!("--count {count} still running after 20 s"));
        assert_cli_error(&o, &[&format!("--count {count} is out of range: give 1 to 200000 images")]);
        assert!(!out.join("images").exists(), "--count {count} wrote a folder");
    }
}

/// `hrk annotations` on a file without faces wrote a header-only CSV (which `hrk test` and
/// `hrk train` then refuse) and exited 0.
#[test]
fn annotations_without_faces_are_refused_and_write_nothing() {
    let dir = scratch("decisions-empty-annotations");
    let (csv, coco) = (dir.join("a.csv"), dir.join("c.json"));
    std::fs::write(&csv, "image,x1,y1,x2,y2,p0x,p0y\n").unwrap();
    std::fs::write(&coco, r#"{"images": [], "annotations": []}"#).unwrap();
    for (flag, input) in [("--csv", &csv), ("--coco", &coco)] {
        let out = dir.join("out.csv");
        let o = hrk(&["annotations", flag, s(input), "--out", s(&out)]);
        assert_cli_error(&o, &[s(input), "no faces to convert; nothing written"]);
        assert!(!out.exists());
    }
}
