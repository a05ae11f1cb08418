//! .pth loading: files written in torch's zip and legacy formats by a stdlib-only Python
//! script (tests/common/make_pth.py), read back and compared with the values the script
//! recorded; hostile files refused with one-line errors; real torch.save files when torch exists.

use hrk::host_tensor::HostData;
use hrk::io::{convert_pth_to_safetensors, load_safetensors, load_state_dict};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

mod common;
use common::{scratch, Scratch};

fn python3_ok() -> bool {
    Command::new("python3").arg("-c").arg("pass").status().map(|s| s.success()).unwrap_or(false)
}

/// Runs the fixture generator; None (with a printed reason) if python3 is missing.
fn generate(tag: &str) -> Option<(Scratch, serde_json::Value)> {
    if !python3_ok() {
        eprintln!("skipped: python3 not available to generate .pth fixtures");
        return None;
    }
    let dir = scratch(&format!("io-{tag}"));
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/common/make_pth.py");
    let out = Command::new("python3").arg(&script).arg(dir.path()).output().unwrap();
    assert!(out.status.success(), "generator failed: {}", String::from_utf8_lossy(&out.stderr));
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("manifest.json")).unwrap()).unwrap();
    Some((dir, manifest))
}

fn check_case(case: &serde_json::Value) {
    let name = case["name"].as_str().unwrap();
    let file = case["file"].as_str().unwrap();
    let got = load_state_dict(Path::new(file)).unwrap_or_else(|e| panic!("{name}: {e}"));
    let want = case["tensors"].as_array().unwrap();
    let got_keys: Vec<&str> = got.iter().map(|(k, _)| k.as_str()).collect();
    let want_keys: Vec<&str> = want.iter().map(|t| t["key"].as_str().unwrap()).collect();
    assert_eq!(got_keys, want_keys, "{name}: keys / order");
    for ((key, t), w) in got.iter().zip(want) {
        let shape: Vec<usize> = common::json_usizes(&w["shape"]);
        assert_eq!(t.shape, shape, "{name}/{key}: shape");
        let vals = w["values"].as_array().unwrap();
        assert_eq!(t.data.len(), vals.len(), "{name}/{key}: element count");
        match (w["dtype"].as_str().unwrap(), &t.data) {
            ("f32", HostData::F32(v)) => {
                for (i, (a, b)) in v.iter().zip(vals).enumerate() {
                    assert_eq!(*a, b.as_f64().unwrap() as f32, "{name}/{key}[{i}]");
                }
            }
            ("f64", HostData::F64(v)) => {
                for (i, (a, b)) in v.iter().zip(vals).enumerate() {
                    assert_eq!(*a, b.as_f64().unwrap(), "{name}/{key}[{i}]");
                }
            }
            ("i64", HostData::I64(v)) => {
                for (i, (a, b)) in v.iter().zip(vals).enumerate() {
                    assert_eq!(*a, b.as_i64().unwrap(), "{name}/{key}[{i}]");
                }
            }
            (d, data) => panic!("{name}/{key}: expected {d}, got {}", data.dtype_name()),
        }
    }
}

#[test]
fn generated_checkpoints_read_back_exactly() {
    let Some((_dir, manifest)) = generate("gen-read") else {
        return;
    };
    let cases = manifest["cases"].as_array().unwrap();
    assert!(cases.len() >= 14);
    for case in cases {
        check_case(case);
    }
    // The torch-2 layout really is 64-byte aligned (so the case tests what it claims).
    let c = cases.iter().find(|c| c["name"] == "zip_torch2_layout").unwrap();
    let bytes = std::fs::read(c["file"].as_str().unwrap()).unwrap();
    let mut z = zip::ZipArchive::new(std::io::Cursor::new(&bytes[..])).unwrap();
    for i in 0..z.len() {
        let f = z.by_index(i).unwrap();
        assert_eq!(f.data_start().unwrap_or(1) % 64, 0, "{:?}", f.name());
    }
}

#[test]
fn convert_to_safetensors_round_trips() {
    let Some((dir, manifest)) = generate("gen-convert") else {
        return;
    };
    for case in manifest["cases"].as_array().unwrap() {
        let src = PathBuf::from(case["file"].as_str().unwrap());
        let out = dir.join(format!("{}.safetensors", case["name"].as_str().unwrap()));
        let n = convert_pth_to_safetensors(&src, &out).unwrap();
        let a = load_state_dict(&src).unwrap();
        let b = load_safetensors(&out).unwrap();
        assert_eq!(n, a.len());
        assert_eq!(a, b.tensors, "{}", src.display());
        assert!(b.metadata.iter().any(|(k, v)| k == "format" && v == "pt"));
        // And through the format-detecting loader.
        assert_eq!(load_state_dict(&out).unwrap(), a);
    }
}

// ---- hostile and broken files ----------------------------------------------------------

/// Pickle bytes calling `os.system(cmd)`, as a malicious checkpoint would.
fn evil_pickle(cmd: &str) -> Vec<u8> {
    let mut p = b"\x80\x02cos\nsystem\nq\x00X".to_vec();
    p.extend_from_slice(&(cmd.len() as u32).to_le_bytes());
    p.extend_from_slice(cmd.as_bytes());
    p.extend_from_slice(b"q\x01\x85q\x02Rq\x03.");
    p
}

fn write_zip(path: &Path, entries: &[(&str, &[u8])]) {
    let f = std::fs::File::create(path).unwrap();
    let mut z = zip::ZipWriter::new(f);
    let opts = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    for (name, data) in entries {
        z.start_file(*name, opts).unwrap();
        z.write_all(data).unwrap();
    }
    z.finish().unwrap();
}

fn legacy_header() -> Vec<u8> {
    // magic, protocol version 1001, sys_info {} — each its own pickle.
    let mut b = hrk::io::pth::LEGACY_MAGIC.to_vec();
    b.extend_from_slice(b".\x80\x02M\xe9\x03.\x80\x02}q\x00.");
    b
}

fn err_of(path: &Path) -> String {
    let e = load_state_dict(path).expect_err("must be refused").to_string();
    assert!(!e.contains('\n'), "error is not one line: {e}");
    assert!(e.contains(&path.display().to_string()), "error does not name the file: {e}");
    e
}

#[test]
fn os_system_global_is_refused_and_nothing_runs() {
    let dir = scratch("io-evil");
    let marker = dir.join("PWNED");
    let cmd = format!("touch {}", marker.display());
    let zip_path = dir.join("evil_zip.pth");
    write_zip(&zip_path, &[("archive/data.pkl", &evil_pickle(&cmd))]);
    let legacy_path = dir.join("evil_legacy.pth");
    let mut legacy = legacy_header();
    legacy.extend_from_slice(&evil_pickle(&cmd));
    std::fs::write(&legacy_path, legacy).unwrap();
    for p in [&zip_path, &legacy_path] {
        let e = err_of(p);
        assert!(e.contains("os.system"), "{e}");
        assert!(e.contains("refused global"), "{e}");
    }
    // eval through STACK_GLOBAL (protocol 4) too.
    let mut p4 = b"\x80\x04\x8c\x08builtins\x8c\x04eval\x93\x8c\x061+1)\x85R.".to_vec();
    p4[0] = 0x80;
    let p4_path = dir.join("eval.pth");
    write_zip(&p4_path, &[("archive/data.pkl", &p4)]);
    assert!(err_of(&p4_path).contains("builtins.eval"));
    assert!(!marker.exists(), "the pickle's command ran");
}

#[test]
fn broken_files_give_one_line_errors() {
    let Some((dir, manifest)) = generate("gen-broken") else {
        return;
    };
    let case_file = |name: &str| {
        let c = manifest["cases"].as_array().unwrap().iter().find(|c| c["name"] == name).unwrap();
        std::fs::read(c["file"].as_str().unwrap()).unwrap()
    };
    let write = |name: &str, bytes: &[u8]| {
        let p = dir.join(name);
        std::fs::write(&p, bytes).unwrap();
        p
    };
    // Truncated zip and legacy files.
    let zip = case_file("zip_plain");
    err_of(&write("trunc_zip.pth", &zip[..zip.len() / 2]));
    let legacy = case_file("legacy_module");
    let e = err_of(&write("trunc_legacy.pth", &legacy[..legacy.len() - 10]));
    assert!(e.contains("legacy storage"), "{e}");
    let e = err_of(&write("trunc_legacy_pickle.pth", &legacy[..200]));
    assert!(e.contains("truncated"), "{e}");
    // Not a zip / unknown format.
    assert!(err_of(&write("text.pth", b"hello, this is not a checkpoint")).contains("unknown weights format"));
    // Legacy with a wrong magic number.
    let mut wrong = legacy.clone();
    wrong[6] ^= 0x55;
    assert!(err_of(&write("wrong_magic.pth", &wrong)).contains("magic"));
    // A zip without data.pkl.
    let p = dir.join("nopkl.pth");
    write_zip(&p, &[("archive/other", b"x")]);
    assert!(err_of(&p).contains("data.pkl"));
    // Storage record missing / absurd declared storage sizes (refused before allocating).
    let pkl = |numel: u64| {
        let mut v = b"\x80\x02}q\x00X\x01\x00\x00\x00wctorch._utils\n_rebuild_tensor_v2\n((X\x07\x00\x00\x00storagectorch\nFloatStorage\nX\x01\x00\x00\x000X\x03\x00\x00\x00cpu\x8a\x08".to_vec();
        v.extend_from_slice(&numel.to_le_bytes());
        v.extend_from_slice(b"tQK\x00K\x02\x85K\x01\x85\x89)tRs.");
        v
    };
    let p = dir.join("absurd.pth");
    write_zip(&p, &[("archive/data.pkl", &pkl(1 << 60)), ("archive/data/0", &[0u8; 8])]);
    let e = err_of(&p);
    assert!(e.contains("archive/data/0"), "{e}");
    let p = dir.join("missing_storage.pth");
    write_zip(&p, &[("archive/data.pkl", &pkl(2))]);
    assert!(err_of(&p).contains("missing"));
    let p = dir.join("ok_storage.pth");
    write_zip(&p, &[("archive/data.pkl", &pkl(2)), ("archive/data/0", &[0, 0, 128, 63, 0, 0, 0, 64])]);
    let sd = load_state_dict(&p).unwrap();
    assert_eq!(sd[0].0, "w");
    assert_eq!(sd[0].1.data, HostData::F32(vec![1.0, 2.0]));
    // View past the end of its storage.
    let p = dir.join("view_oob.pth");
    write_zip(&p, &[("archive/data.pkl", &pkl(1)), ("archive/data/0", &[0u8; 4])]);
    assert!(err_of(&p).contains("reaches element"));
    // Deep nesting: a million nested tuples must be refused, not overflow the stack.
    let mut deep = b"\x80\x02".to_vec();
    deep.push(b')');
    deep.extend(std::iter::repeat_n(0x85u8, 1_000_000));
    deep.push(b'.');
    let p = dir.join("deep.pth");
    write_zip(&p, &[("archive/data.pkl", &deep)]);
    err_of(&p);
    // A million MARKs: bounded mark stack.
    let mut marks = b"\x80\x02".to_vec();
    marks.extend(std::iter::repeat_n(b'(', 1_000_000));
    let p = dir.join("marks.pth");
    write_zip(&p, &[("archive/data.pkl", &marks)]);
    assert!(err_of(&p).contains("MARK"));
    // Unsupported opcode names itself.
    let p = dir.join("inst.pth");
    write_zip(&p, &[("archive/data.pkl", b"\x80\x02(ios\nsystem\n.")]);
    assert!(err_of(&p).contains("INST"));
    // A pickled nn.Module under 'state_dict'.
    let p = dir.join("module_obj.pth");
    write_zip(
        &p,
        &[("archive/data.pkl", b"\x80\x02}X\x0a\x00\x00\x00state_dictclib.models.hrnet\nHighResolutionNet\n)\x81s.")],
    );
    let e = err_of(&p);
    assert!(e.contains("lib.models.hrnet.HighResolutionNet"), "{e}");
}

// ---- real torch files, when torch is installed -------------------------------------------

#[test]
fn real_torch_save_files() {
    let has_torch = Command::new("python3")
        .args(["-c", "import torch"])
        .stderr(std::process::Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !has_torch {
        eprintln!("skipped: python3 cannot import torch; real torch.save files not tested");
        return;
    }
    let dir = scratch("io-torch");
    let script = r#"
import sys, json, torch, collections
d = sys.argv[1]
torch.manual_seed(0)
sd = collections.OrderedDict()
sd['conv.weight'] = torch.randn(4, 3, 3, 3)
sd['bn.num_batches_tracked'] = torch.tensor(7)
sd['half'] = torch.randn(5).half()
sd['dbl'] = torch.randn(2, 2, dtype=torch.float64)
sd['t'] = torch.randn(3, 4).t()
sd['slice'] = torch.arange(10.0)[3:7]
torch.save(sd, d + '/zip.pth')
torch.save({'state_dict': {'module.' + k: v for k, v in sd.items()}}, d + '/legacy.pth', _use_new_zipfile_serialization=False)
exp = {k: dict(shape=list(v.shape), values=v.double().flatten().tolist()) for k, v in sd.items()}
json.dump(exp, open(d + '/exp.json', 'w'))
"#;
    let st = Command::new("python3").args(["-c", script]).arg(dir.path()).status().unwrap();
    assert!(st.success());
    let exp: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.join("exp.json")).unwrap()).unwrap();
    for f in ["zip.pth", "legacy.pth"] {
        let sd = load_state_dict(&dir.join(f)).unwrap();
        assert_eq!(sd.len(), 6);
        for (k, t) in &sd {
            let e = &exp[k.as_str()];
            let vals: Vec<f64> = e["values"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
            assert_eq!(t.to_f64_vec(), vals, "{f}/{k}");
        }
    }
}
