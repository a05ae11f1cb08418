//! Real `torch.save` files of the tiny model's state_dict, read by `io::load_state_dict` and by
//! `hrk convert`. Needs a python with torch: set HRK_TORCH_PYTHON=/path/to/python (skipped with
//! a printed reason otherwise). Formats: zip (torch ≥ 1.6), legacy
//! (`_use_new_zipfile_serialization=False`), `module.` keys, a `{'state_dict': …}` wrapper,
//! nn.Parameter values, and float16 storages.

use hrk::host_tensor::{HostData, HostTensor};
use hrk::io::load_state_dict;
use hrk::model::HrNet;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

mod common;
use common::model::small_spec;
use common::{scratch, Scratch};

/// The python named by HRK_TORCH_PYTHON if it can import torch.
fn torch_python() -> Option<PathBuf> {
    let Some(py) = common::torch_python() else {
        eprintln!(
            "skipped: HRK_TORCH_PYTHON is not set (point it at a python with torch to test real torch.save files)"
        );
        return None;
    };
    let ok = Command::new(&py).args(["-c", "import torch"]).status().map(|s| s.success()).unwrap_or(false);
    if !ok {
        eprintln!("skipped: HRK_TORCH_PYTHON={py} cannot import torch");
        return None;
    }
    Some(PathBuf::from(py))
}

/// Reads `src` (safetensors, F32/I64) with torch and writes every checkpoint variant into `dir`,
/// plus `f16_expected.safetensors`: the float16-rounded values as float32.
const WRITER: &str = r#"
import sys, json, struct, collections, torch
src, d = sys.argv[1:3]
raw = open(src, 'rb').read()
n = struct.unpack('<Q', raw[:8])[0]
header = json.loads(raw[8:8 + n]); header.pop('__metadata__', None)
dtypes = {'F32': torch.float32, 'I64': torch.int64}
sd = collections.OrderedDict()
for key, h in sorted(header.items(), key=lambda kv: kv[1]['data_offsets'][0]):
    a, b = h['data_offsets']
    sd[key] = torch.frombuffer(bytearray(raw[8 + n + a:8 + n + b]), dtype=dtypes[h['dtype']]).reshape(h['shape']).clone()

def half(sd):
    return collections.OrderedDict((k, v.half() if v.is_floating_point() else v) for k, v in sd.items())

module = collections.OrderedDict(('module.' + k, v) for k, v in sd.items())
params = collections.OrderedDict((k, torch.nn.Parameter(v) if v.is_floating_point() else v) for k, v in sd.items())
wrapper = {'epoch': 7, 'state_dict': module, 'best_nme': 0.0432,
           'optimizer': {'state': {}, 'param_groups': [{'lr': 1e-4, 'params': list(range(3))}]}}
torch.save(sd, d + '/zip.pth')
torch.save(sd, d + '/legacy.pth', _use_new_zipfile_serialization=False)
torch.save(module, d + '/module_zip.pth')
torch.save(module, d + '/module_legacy.pth', _use_new_zipfile_serialization=False)
torch.save(wrapper, d + '/wrapper_zip.pth')
torch.save(wrapper, d + '/wrapper_legacy.pth', _use_new_zipfile_serialization=False)
torch.save(params, d + '/params_zip.pth')
torch.save(half(sd), d + '/f16_zip.pth')
torch.save(half(sd), d + '/f16_legacy.pth', _use_new_zipfile_serialization=False)

# float16-rounded expectations, written as a plain safetensors file (no safetensors package needed)
exp = collections.OrderedDict((k, v.half().float() if v.is_floating_point() else v) for k, v in sd.items())
meta, blobs, off = {}, [], 0
for k, v in exp.items():
    b = v.contiguous().numpy().tobytes()
    meta[k] = {'dtype': 'F32' if v.is_floating_point() else 'I64', 'shape': list(v.shape), 'data_offsets': [off, off + len(b)]}
    blobs.append(b); off += len(b)
h = json.dumps(meta).encode(); h += b' ' * (-len(h) % 8)
open(d + '/f16_expected.safetensors', 'wb').write(struct.pack('<Q', len(h)) + h + b''.join(blobs))
print(torch.__version__)
"#;

fn write_variants(py: &Path, tag: &str) -> (Scratch, Vec<(String, HostTensor)>, String) {
    let dir = scratch(&format!("torch-real-{tag}"));
    let mut net = HrNet::new(&small_spec(19), 3).unwrap();
    // Non-trivial BN buffers and counters, so every entry kind is checked with real values.
    let mut sd = net.store.state_dict();
    for (i, (k, t)) in sd.iter_mut().enumerate() {
        if k.ends_with("num_batches_tracked") {
            *t = HostTensor::i64(vec![], vec![1000 + i as i64]);
        } else if k.contains("running_") {
            let v = (0..t.numel()).map(|j| 0.5 + ((i + 3 * j) % 17) as f32 / 16.0).collect();
            *t = HostTensor::f32(t.shape.clone(), v);
        }
    }
    net.store.load(&sd, true, "test").unwrap();
    let src = dir.join("src.safetensors");
    hrk::io::save_safetensors(&src, &sd, &[]).unwrap();
    let out = Command::new(py).args(["-c", WRITER]).arg(&src).arg(dir.path()).output().unwrap();
    assert!(out.status.success(), "torch writer failed: {}", String::from_utf8_lossy(&out.stderr));
    (dir, sd, String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn assert_same(got: &[(String, HostTensor)], want: &[(String, HostTensor)], what: &str) {
    let keys: Vec<&str> = got.iter().map(|(k, _)| k.as_str()).collect();
    let want_keys: Vec<&str> = want.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(keys, want_keys, "{what}: keys / order");
    for ((k, a), (_, b)) in got.iter().zip(want) {
        assert_eq!(a.shape, b.shape, "{what}: {k} shape");
        assert_eq!(a.data, b.data, "{what}: {k} values");
    }
}

#[test]
fn real_torch_save_files_load_identically() {
    let Some(py) = torch_python() else { return };
    let (dir, sd, version) = write_variants(&py, "load");
    println!("torch {version}");
    for f in ["zip", "legacy", "module_zip", "module_legacy", "wrapper_zip", "wrapper_legacy", "params_zip"] {
        let path = dir.join(format!("{f}.pth"));
        let got = load_state_dict(&path).unwrap_or_else(|e| panic!("{e:#}"));
        assert_same(&got, &sd, f);
        let mut net = HrNet::new(&small_spec(19), 0).unwrap();
        hrk::cli::common::load_weights(&mut net, &path).unwrap_or_else(|e| panic!("{e:#}"));
        assert_same(&net.store.state_dict(), &sd, &format!("{f} in the model"));
    }
    let want16: Vec<(String, HostTensor)> =
        hrk::io::load_safetensors(&dir.join("f16_expected.safetensors")).unwrap().tensors;
    // The f16 values really are rounded (the check would be vacuous otherwise).
    let differs = want16.iter().zip(&sd).any(|((_, a), (_, b))| a.data != b.data);
    assert!(differs, "float16 rounding changed nothing");
    for f in ["f16_zip", "f16_legacy"] {
        let got = load_state_dict(&dir.join(format!("{f}.pth"))).unwrap_or_else(|e| panic!("{e:#}"));
        for (_, t) in &got {
            assert!(matches!(t.data, HostData::F32(_) | HostData::I64(_)), "{f}: half storages come back as f32");
        }
        assert_same(&got, &want16, f);
    }
}

#[test]
fn convert_real_torch_pth_then_load_into_model() {
    let Some(py) = torch_python() else { return };
    let (dir, sd, _) = write_variants(&py, "convert");
    let by_name: HashMap<&str, &HostTensor> = sd.iter().map(|(k, t)| (k.as_str(), t)).collect();
    for f in ["zip", "legacy", "wrapper_legacy"] {
        let out = dir.join(format!("{f}.safetensors"));
        let o = common::hrk_cmd().arg("convert").arg(dir.join(format!("{f}.pth"))).arg(&out).output().unwrap();
        assert!(o.status.success(), "hrk convert {f}: {}", String::from_utf8_lossy(&o.stderr));
        let mut net = HrNet::new(&small_spec(19), 0).unwrap();
        hrk::cli::common::load_weights(&mut net, &out).unwrap_or_else(|e| panic!("{e:#}"));
        let got = net.store.state_dict();
        assert_eq!(got.len(), sd.len());
        for (k, t) in &got {
            assert_eq!(&t.data, &by_name[k.as_str()].data, "{f}: {k}");
        }
        // Same forward as the model the file was written from.
        let mut reference = HrNet::new(&small_spec(19), 0).unwrap();
        reference.store.load(&sd, true, "reference").unwrap();
        let x =
            hrk::Tensor::from_f32(&[1, 3, 64, 64], (0..3 * 64 * 64).map(|i| ((i % 29) as f32 - 14.0) / 7.0).collect())
                .unwrap();
        let a = hrk::no_grad(|| net.forward(&x, false)).unwrap().to_f64_vec();
        let b = hrk::no_grad(|| reference.forward(&x, false)).unwrap().to_f64_vec();
        assert_eq!(a, b, "{f}");
    }
}
