//! safetensors: the real parity files, round trips (order and metadata kept), f16/bf16
//! conversion, and every kind of malformed header refused with a one-line error.

use hrk::host_tensor::{HostData, HostTensor};
use hrk::io::{load_safetensors, load_state_dict, read_safetensors_bytes, save_safetensors};
use std::path::{Path, PathBuf};

mod common;
use common::hostile::safetensors_raw as file_bytes;
use common::scratch;

/// The shared folder, if it holds the parity/tiny files (else a printed skip).
fn shared_dir() -> Option<PathBuf> {
    common::shared_or_skip("parity/tiny/weights.safetensors").map(|_| common::shared_dir())
}

#[test]
fn parity_files_load_in_header_order_with_metadata() {
    let Some(shared) = shared_dir() else { return };
    for name in ["weights.safetensors", "inputs.safetensors", "expected.safetensors"] {
        let path = shared.join("parity/tiny").join(name);
        let bytes = std::fs::read(&path).unwrap();
        let st = load_safetensors(&path).unwrap();
        assert!(!st.tensors.is_empty());
        // Header order: each key's quoted name appears later in the header than the previous one.
        let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
        let header = std::str::from_utf8(&bytes[8..8 + n]).unwrap();
        let json: serde_json::Value = serde_json::from_str(header).unwrap();
        let mut last = 0;
        for (k, t) in &st.tensors {
            let pos = header.find(&format!("\"{k}\":")).unwrap();
            assert!(pos >= last, "{name}: {k} out of order");
            last = pos;
            // Values equal an independent decode of the bytes at data_offsets.
            let e = &json[k.as_str()];
            let begin = 8 + n + e["data_offsets"][0].as_u64().unwrap() as usize;
            let end = 8 + n + e["data_offsets"][1].as_u64().unwrap() as usize;
            let shape: Vec<usize> = common::json_usizes(&e["shape"]);
            assert_eq!(t.shape, shape);
            match (e["dtype"].as_str().unwrap(), &t.data) {
                ("F32", HostData::F32(v)) => {
                    let w: Vec<f32> =
                        bytes[begin..end].chunks(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect();
                    assert_eq!(
                        v.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
                        w.iter().map(|x| x.to_bits()).collect::<Vec<_>>()
                    );
                }
                ("I64", HostData::I64(v)) => {
                    let w: Vec<i64> =
                        bytes[begin..end].chunks(8).map(|c| i64::from_le_bytes(c.try_into().unwrap())).collect();
                    assert_eq!(v, &w);
                }
                (d, _) => panic!("{name}/{k}: unexpected dtype {d}"),
            }
        }
        assert_eq!(st.tensors.len(), json.as_object().unwrap().keys().filter(|k| *k != "__metadata__").count());
        if let Some(meta) = json.get("__metadata__") {
            assert_eq!(st.metadata.len(), meta.as_object().unwrap().len());
            for (k, v) in &st.metadata {
                assert_eq!(meta[k.as_str()].as_str().unwrap(), v);
            }
        }
        // Round trip through our writer.
        let dir = scratch("io-st-parity");
        let out = dir.join(name);
        save_safetensors(&out, &st.tensors, &st.metadata).unwrap();
        assert_eq!(load_safetensors(&out).unwrap(), st);
        assert_eq!(load_state_dict(&out).unwrap(), st.tensors);
    }
}

#[test]
fn writer_keeps_order_metadata_and_dtypes_and_is_atomic() {
    let dir = scratch("io-st-write");
    let tensors = vec![
        ("zeta".to_string(), HostTensor::f32(vec![2, 2], vec![1.0, -2.5, f32::MIN_POSITIVE, 3.0e38])),
        ("alpha.num_batches_tracked".to_string(), HostTensor::i64(vec![], vec![i64::MIN + 1])),
        ("mid".to_string(), HostTensor { shape: vec![3], data: HostData::F64(vec![0.1, -1e-300, 7.0]) }),
        ("empty".to_string(), HostTensor::f32(vec![0, 5], vec![])),
        ("quote\"d ünï".to_string(), HostTensor::f32(vec![1], vec![4.0])),
    ];
    let meta = vec![("z".to_string(), "last?".to_string()), ("a".to_string(), "\"quoted\"\n".to_string())];
    let path = dir.join("out.safetensors");
    std::fs::write(&path, b"old contents").unwrap();
    save_safetensors(&path, &tensors, &meta).unwrap();
    let back = load_safetensors(&path).unwrap();
    assert_eq!(back.tensors, tensors);
    assert_eq!(back.metadata, meta);
    let bytes = std::fs::read(&path).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap());
    assert_eq!((8 + n) % 8, 0, "data section aligned");
    let leftovers: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(leftovers.len(), 1, "temporary file left behind: {leftovers:?}");
    // Inconsistent tensors are refused, naming them; the old file stays.
    let bad = vec![("bad".to_string(), HostTensor { shape: vec![3], data: HostData::F32(vec![1.0]) })];
    let e = save_safetensors(&path, &bad, &[]).unwrap_err().to_string();
    assert!(e.contains("'bad'"), "{e}");
    assert_eq!(load_safetensors(&path).unwrap().tensors, tensors);
}

#[test]
fn half_precision_converts_to_f32() {
    // f16: 1.5 = 0x3e00, -2 = 0xc000; bf16: 1.5 = 0x3fc0, -0.0078125 = 0xbc00; i32 widened.
    let mut data = vec![];
    for h in [0x3e00u16, 0xc000] {
        data.extend_from_slice(&h.to_le_bytes());
    }
    for h in [0x3fc0u16, 0xbc00] {
        data.extend_from_slice(&h.to_le_bytes());
    }
    data.extend_from_slice(&(-7i32).to_le_bytes());
    let header = r#"{"h":{"dtype":"F16","shape":[2],"data_offsets":[0,4]},"b":{"dtype":"BF16","shape":[2,1],"data_offsets":[4,8]},"i":{"dtype":"I32","shape":[],"data_offsets":[8,12]}}"#;
    let st = read_safetensors_bytes(&file_bytes(header, &data)).unwrap();
    assert_eq!(st.tensors[0].1, HostTensor::f32(vec![2], vec![1.5, -2.0]));
    assert_eq!(st.tensors[1].1, HostTensor::f32(vec![2, 1], vec![1.5, -0.0078125]));
    assert_eq!(st.tensors[2].1, HostTensor::i64(vec![], vec![-7]));
}

#[test]
fn module_prefix_is_stripped_and_collisions_refused() {
    let dir = scratch("io-st-prefix");
    let p = dir.join("m.safetensors");
    let t = HostTensor::f32(vec![1], vec![1.0]);
    save_safetensors(&p, &[("module.a".into(), t.clone()), ("b".into(), t.clone())], &[]).unwrap();
    let sd = load_state_dict(&p).unwrap();
    assert_eq!(sd.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>(), ["a", "b"]);
    save_safetensors(&p, &[("module.a".into(), t.clone()), ("a".into(), t)], &[]).unwrap();
    let e = load_state_dict(&p).unwrap_err().to_string();
    assert!(e.contains("'a'") && e.contains("twice"), "{e}");
}

fn refused(dir: &Path, name: &str, bytes: &[u8], needle: &str) {
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    for e in [load_safetensors(&p).unwrap_err().to_string(), load_state_dict(&p).unwrap_err().to_string()] {
        assert!(!e.contains('\n'), "{name}: multi-line error {e}");
        assert!(e.contains(&p.display().to_string()), "{name}: file not named in {e}");
        assert!(e.contains(needle), "{name}: expected {needle:?} in {e}");
    }
}

#[test]
fn malformed_files_are_refused() {
    let dir = scratch("io-st-bad");
    let good = r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}"#;
    let d8 = [0u8; 8];
    // Header length beyond the file, and beyond the limit.
    let mut b = file_bytes(good, &d8);
    b[..8].copy_from_slice(&1000u64.to_le_bytes());
    b[8] = b'{';
    refused(&dir, "hlen.st", &b, "runs past the end");
    let mut b = file_bytes(good, &d8);
    b[..8].copy_from_slice(&(1u64 << 40).to_le_bytes());
    let p = dir.join("huge.st");
    std::fs::write(&p, &b).unwrap();
    assert!(load_safetensors(&p).unwrap_err().to_string().contains("limit"));
    let p = dir.join("short.st");
    std::fs::write(&p, &file_bytes(good, &d8)[..6]).unwrap();
    assert!(load_safetensors(&p).unwrap_err().to_string().contains("shorter"));
    assert!(load_state_dict(&p).unwrap_err().to_string().contains("unknown weights format"));
    // (file, header, bytes of data (zeros), expected in the message)
    for (name, header, data, needle) in [
        ("json.st", r#"{"a":{"dtype":"F32","#, 8, "JSON"),
        (
            "dtype.st",
            r#"{"w1":{"dtype":"F8_E4M3","shape":[8],"data_offsets":[0,8]}}"#,
            8,
            "tensor 'w1': unsupported dtype F8_E4M3",
        ),
        ("range.st", r#"{"w2":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}}"#, 8, "tensor 'w2'"),
        ("size.st", r#"{"w3":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}}"#, 8, "tensor 'w3'"),
        ("rev.st", r#"{"w4":{"dtype":"F32","shape":[0],"data_offsets":[8,0]}}"#, 8, "tensor 'w4'"),
        (
            "overlap.st",
            r#"{"p":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"q":{"dtype":"F32","shape":[1],"data_offsets":[2,6]}}"#,
            8,
            "overlapping",
        ),
        (
            "overflow.st",
            r#"{"w5":{"dtype":"F64","shape":[4294967296,4294967296,16],"data_offsets":[0,8]}}"#,
            8,
            "tensor 'w5'",
        ),
        ("neg.st", r#"{"w6":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}}"#, 8, "tensor 'w6'"),
        (
            "dup.st",
            r#"{"w7":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"w7":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}"#,
            8,
            "'w7'",
        ),
        ("meta.st", r#"{"__metadata__":{"k":3}}"#, 0, "'k'"),
        ("notobj.st", r#"{"w8":[1,2]}"#, 0, "tensor 'w8'"),
    ] {
        refused(&dir, name, &file_bytes(header, &vec![0; data]), needle);
    }
    let p = dir.join("brace.st");
    std::fs::write(&p, file_bytes(r#"[{"a":1}]"#, &[])).unwrap();
    assert!(load_safetensors(&p).unwrap_err().to_string().contains("does not start with"));
    assert!(load_state_dict(&p).unwrap_err().to_string().contains("unknown weights format"));
}

#[test]
fn stale_temp_files_from_a_killed_write_are_removed() {
    let dir = scratch("io-stale-tmp");
    std::fs::write(dir.join(".latest.safetensors.4242.tmp"), b"half a checkpoint").unwrap();
    std::fs::write(dir.join("latest.safetensors"), b"kept").unwrap();
    std::fs::write(dir.join("notes.tmp"), b"not ours: no leading dot").unwrap();
    assert_eq!(hrk::atomic_file::remove_stale_temp_files(&dir), 1);
    assert!(!dir.join(".latest.safetensors.4242.tmp").exists());
    assert!(dir.join("latest.safetensors").exists() && dir.join("notes.tmp").exists());
}
