//! MODEL.INIT_WEIGHTS + MODEL.PRETRAINED (the official `HighResolutionNet.init_weights`): a fake
//! ImageNet checkpoint (the model's backbone entries with their own values + classifier-only keys)
//! written as safetensors and as torch-format .pth (zip and legacy, by the stdlib-only
//! tests/common/make_pth.py), loaded by key name; shape mismatches, missing files and the config
//! switch; `hrk convert` of a stdlib-written .pth loaded back into the model.

use hrk::config::Config;
use hrk::host_tensor::{HostData, HostTensor};
use hrk::model::pretrained::{load_from_config, load_imagenet};
use hrk::model::{HrNet, HrnetSpec};
use std::path::Path;
use std::process::Command;

mod common;
use common::model::small_spec;
use common::scratch;

/// The backbone entries of `spec`'s state_dict with values unlike any init (so a load is visible),
/// counters 4242.
fn backbone_entries(spec: &HrnetSpec) -> Vec<(String, HostTensor)> {
    let net = HrNet::new(spec, 7).unwrap();
    net.store
        .state_dict()
        .into_iter()
        .filter(|(k, _)| !k.starts_with("head."))
        .enumerate()
        .map(|(i, (k, t))| {
            let t = match t.data {
                HostData::I64(_) => HostTensor::i64(vec![], vec![4242]),
                _ => {
                    let n = t.numel();
                    let v = (0..n).map(|j| (((i * 131 + j * 17) % 1009) as f32 - 504.0) / 997.0 + 0.25).collect();
                    HostTensor::f32(t.shape.clone(), v)
                }
            };
            (k, t)
        })
        .collect()
}

/// Keys of the ImageNet classifier that the face model does not have.
fn classifier_entries() -> Vec<(String, HostTensor)> {
    let f = |shape: Vec<usize>| {
        let n = shape.iter().product();
        HostTensor::f32(shape, (0..n).map(|i| i as f32 * 0.5).collect())
    };
    vec![
        ("incre_modules.0.0.conv1.weight".into(), f(vec![32, 4, 1, 1])),
        ("incre_modules.0.0.bn1.num_batches_tracked".into(), HostTensor::i64(vec![], vec![9])),
        ("downsamp_modules.0.0.weight".into(), f(vec![256, 128, 3, 3])),
        ("final_layer.0.weight".into(), f(vec![2048, 1024, 1, 1])),
        ("classifier.weight".into(), f(vec![1000, 2048])),
        ("classifier.bias".into(), f(vec![1000])),
    ]
}

/// Named tensors, as a state_dict file holds them.
type Entries = Vec<(String, HostTensor)>;

fn fake_imagenet(spec: &HrnetSpec) -> (Entries, Entries) {
    let backbone = backbone_entries(spec);
    // Interleave like a real file: classifier keys after the backbone, one stray key in between.
    let mut all = backbone.clone();
    all.insert(3, ("stage9.0.weight".into(), HostTensor::f32(vec![2], vec![1.0, 2.0])));
    all.extend(classifier_entries());
    (backbone, all)
}

fn python3_ok() -> bool {
    Command::new("python3").args(["-c", "pass"]).status().map(|s| s.success()).unwrap_or(false)
}

/// Rewrites a safetensors file as torch-format .pth files (zip and legacy) with the stdlib-only
/// writer of tests/common/make_pth.py. None when python3 is missing.
fn safetensors_to_pth(src: &Path, zip_out: &Path, legacy_out: &Path) -> Option<()> {
    if !python3_ok() {
        eprintln!("skipped: python3 not available to write .pth files");
        return None;
    }
    let script = r#"
import sys, json, struct, collections
gen_dir, src, zip_out, legacy_out = sys.argv[1:5]
sys.path.insert(0, gen_dir)
import make_pth as mp
raw = open(src, 'rb').read()
n = struct.unpack('<Q', raw[:8])[0]
header = json.loads(raw[8:8 + n])
header.pop('__metadata__', None)
codes = {'F32': ('FloatStorage', 'f', 4), 'I64': ('LongStorage', 'q', 8)}
sd = collections.OrderedDict()
for i, (key, h) in enumerate(sorted(header.items(), key=lambda kv: kv[1]['data_offsets'][0])):
    kind, code, size = codes[h['dtype']]
    a, b = h['data_offsets']
    values = list(struct.unpack('<%d%s' % ((b - a) // size, code), raw[8 + n + a:8 + n + b]))
    sd[key] = mp.Tensor(mp.Storage(kind, str(i), values), 0, h['shape'])
mp.write_zip(zip_out, sd)
mp.write_legacy(legacy_out, sd)
"#;
    let gen_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/common");
    let out = Command::new("python3")
        .args(["-c", script])
        .arg(&gen_dir)
        .arg(src)
        .arg(zip_out)
        .arg(legacy_out)
        .output()
        .unwrap();
    assert!(out.status.success(), "pth writer failed: {}", String::from_utf8_lossy(&out.stderr));
    Some(())
}

/// The loaded net holds the backbone values, and its head is what it was before the load.
fn check_loaded(net: &HrNet, before: &[(String, HostTensor)], backbone: &[(String, HostTensor)], what: &str) {
    let after = net.store.state_dict();
    let want: std::collections::HashMap<&str, &HostTensor> = backbone.iter().map(|(k, t)| (k.as_str(), t)).collect();
    let mut checked = 0;
    for ((k, got), (k0, old)) in after.iter().zip(before) {
        assert_eq!(k, k0);
        match want.get(k.as_str()) {
            Some(w) => {
                assert_eq!(got.shape, w.shape, "{what}: {k}");
                assert_eq!(got.to_f64_vec(), w.to_f64_vec(), "{what}: {k} not loaded");
                checked += 1;
            }
            None => {
                assert!(k.starts_with("head."), "{what}: {k} should come from the checkpoint");
                assert_eq!(got.to_f64_vec(), old.to_f64_vec(), "{what}: {k} must keep its init");
            }
        }
    }
    assert_eq!(checked, backbone.len(), "{what}");
}

/// The state_dict of `net` equals `before`, tensor by tensor (`what` names the case).
fn assert_unchanged(net: &HrNet, before: &[(String, HostTensor)], what: &str) {
    for ((k, a), (_, b)) in net.store.state_dict().iter().zip(before) {
        assert_eq!(a.to_f64_vec(), b.to_f64_vec(), "{what}: {k} changed");
    }
}

/// A fake ImageNet checkpoint of the 19-landmark small model saved as `imagenet.safetensors` in a fresh
/// scratch folder `tag`: (folder, file, backbone entries).
fn saved_imagenet(tag: &str) -> (common::Scratch, std::path::PathBuf, Entries) {
    let (backbone, all) = fake_imagenet(&small_spec(19));
    let dir = scratch(tag);
    let st = dir.join("imagenet.safetensors");
    hrk::io::save_safetensors(&st, &all, &[]).unwrap();
    (dir, st, backbone)
}

#[test]
fn imagenet_checkpoint_loads_backbone_by_name() {
    let spec = small_spec(19);
    let (dir, st, backbone) = saved_imagenet("pretrained-formats");
    let mut files = vec![st.clone()];
    let (zip, legacy) = (dir.join("imagenet_zip.pth"), dir.join("imagenet_legacy.pth"));
    if safetensors_to_pth(&st, &zip, &legacy).is_some() {
        files.push(zip);
        files.push(legacy);
    }
    let head_count = HrNet::new(&spec, 0).unwrap().store.names().iter().filter(|k| k.starts_with("head.")).count();
    assert!(head_count > 0);
    for f in &files {
        let mut net = HrNet::new(&spec, 0).unwrap();
        let before = net.store.state_dict();
        let r = load_imagenet(&mut net, f, true).unwrap_or_else(|e| panic!("{e:#}"));
        let what = f.display().to_string();
        assert!(r.found, "{what}");
        assert_eq!(r.loaded, backbone.len(), "{what}");
        assert_eq!(r.skipped_classifier, classifier_entries().len(), "{what}");
        assert_eq!(r.skipped_unknown, vec!["stage9.0.weight".to_string()], "{what}");
        assert_eq!(r.kept_init.len(), head_count, "{what}");
        assert!(r.kept_init.iter().all(|k| k.starts_with("head.")), "{what}: {:?}", r.kept_init);
        check_loaded(&net, &before, &backbone, &what);
        let text = r.to_string();
        assert!(text.contains(&format!("loaded {} tensors", backbone.len())) && text.contains("skipped 7"), "{text}");
        // The loaded model runs.
        let x = hrk::Tensor::from_f32(&[1, 3, 64, 64], vec![0.1; 3 * 64 * 64]).unwrap();
        let y = hrk::no_grad(|| net.forward(&x, false)).unwrap();
        assert_eq!(y.shape(), &[1, 19, 16, 16]);
    }
}

#[test]
fn module_prefix_and_missing_counters_still_load() {
    // Older torch omits num_batches_tracked; DataParallel saves add `module.`.
    let spec = small_spec(5);
    let (backbone, _) = fake_imagenet(&spec);
    let floats: Vec<(String, HostTensor)> =
        backbone.iter().filter(|(_, t)| !matches!(t.data, HostData::I64(_))).cloned().collect();
    let prefixed: Vec<(String, HostTensor)> = floats.iter().map(|(k, t)| (format!("module.{k}"), t.clone())).collect();
    let dir = scratch("pretrained-prefix");
    let p = dir.join("prefixed.safetensors");
    hrk::io::save_safetensors(&p, &prefixed, &[]).unwrap();
    let mut net = HrNet::new(&spec, 0).unwrap();
    let before = net.store.state_dict();
    let r = load_imagenet(&mut net, &p, false).unwrap();
    assert_eq!(r.loaded, floats.len());
    assert_eq!(r.skipped(), 0);
    let counters = backbone.len() - floats.len();
    assert!(counters > 0);
    // Counters absent from the file keep their init, like the head.
    assert_eq!(r.kept_init.iter().filter(|k| k.ends_with("num_batches_tracked")).count(), counters + 1);
    for ((k, got), (_, old)) in net.store.state_dict().iter().zip(&before) {
        if let Some((_, w)) = floats.iter().find(|(n, _)| n == k) {
            assert_eq!(got.to_f64_vec(), w.to_f64_vec(), "{k}");
        } else {
            assert_eq!(got.to_f64_vec(), old.to_f64_vec(), "{k}");
        }
    }
}

#[test]
fn shape_mismatch_fails_naming_tensor_and_shapes() {
    let spec = small_spec(19);
    let (_, mut all) = fake_imagenet(&spec);
    // An ImageNet W18 file on a narrower model: same names, other shapes.
    let key = "transition1.0.0.weight";
    let i = all.iter().position(|(k, _)| k == key).unwrap();
    assert_eq!(all[i].1.shape, vec![4, 256, 3, 3]);
    all[i].1 = HostTensor::f32(vec![18, 256, 3, 3], vec![0.0; 18 * 256 * 9]);
    let dir = scratch("pretrained-shape");
    let p = dir.join("w18_imagenet.safetensors");
    hrk::io::save_safetensors(&p, &all, &[]).unwrap();
    let mut net = HrNet::new(&spec, 0).unwrap();
    let before = net.store.state_dict();
    let e = format!("{:#}", load_imagenet(&mut net, &p, false).unwrap_err());
    assert!(e.contains(key) && e.contains("[18, 256, 3, 3]") && e.contains("[4, 256, 3, 3]"), "{e}");
    assert!(e.contains("w18_imagenet.safetensors") && !e.contains('\n'), "{e}");
    // Nothing was half-loaded.
    assert_unchanged(&net, &before, "failed load");
    // int64 where the model has floats is refused too.
    let (_, mut all) = fake_imagenet(&spec);
    let j = all.iter().position(|(k, _)| k == "bn1.running_mean").unwrap();
    all[j].1 = HostTensor::i64(vec![64], vec![0; 64]);
    hrk::io::save_safetensors(&p, &all, &[]).unwrap();
    let e = format!("{:#}", load_imagenet(&mut net, &p, false).unwrap_err());
    assert!(e.contains("bn1.running_mean") && e.contains("int64"), "{e}");
}

#[test]
fn missing_file_warns_unless_strict() {
    let spec = small_spec(3);
    let mut net = HrNet::new(&spec, 0).unwrap();
    let before = net.store.state_dict();
    let dir = scratch("pretrained-missing");
    let p = dir.join("hrnetv2_w18_imagenet_pretrained.pth");
    let r = load_imagenet(&mut net, &p, false).unwrap();
    assert!(!r.found);
    assert_eq!(r.loaded, 0);
    assert!(r.to_string().contains("not found"));
    assert_unchanged(&net, &before, "missing file");
    let e = format!("{:#}", load_imagenet(&mut net, &p, true).unwrap_err());
    assert!(e.contains("hrnetv2_w18_imagenet_pretrained.pth") && e.contains("not found"), "{e}");
}

#[test]
fn config_switch() {
    let spec = small_spec(19);
    let (_dir, p, backbone) = saved_imagenet("pretrained-config");
    let mut cfg = Config::default();
    cfg.model.init_weights = false;
    cfg.model.pretrained = p.display().to_string();
    let mut net = HrNet::new(&spec, 0).unwrap();
    assert!(load_from_config(&mut net, &cfg, true).unwrap().is_none(), "INIT_WEIGHTS false loads nothing");
    cfg.model.init_weights = true;
    cfg.model.pretrained.clear();
    assert!(load_from_config(&mut net, &cfg, true).unwrap().is_none(), "PRETRAINED '' loads nothing");
    cfg.model.pretrained = p.display().to_string();
    let before = net.store.state_dict();
    let r = load_from_config(&mut net, &cfg, true).unwrap().unwrap();
    assert_eq!(r.loaded, backbone.len());
    check_loaded(&net, &before, &backbone, "config");
}

#[test]
fn convert_cli_on_stdlib_pth_loads_into_model() {
    let spec = small_spec(19);
    let src = HrNet::new(&spec, 11).unwrap();
    let sd = src.store.state_dict();
    let dir = scratch("pretrained-convert");
    let st = dir.join("model.safetensors");
    hrk::io::save_safetensors(&st, &sd, &[]).unwrap();
    let (zip, legacy) = (dir.join("model_zip.pth"), dir.join("model_legacy.pth"));
    if safetensors_to_pth(&st, &zip, &legacy).is_none() {
        return;
    }
    for pth in [&zip, &legacy] {
        let out = dir.join(format!("{}.safetensors", pth.file_stem().unwrap().to_string_lossy()));
        let o = common::hrk_cmd().arg("convert").arg(pth).arg(&out).output().unwrap();
        assert!(o.status.success(), "hrk convert: {}", String::from_utf8_lossy(&o.stderr));
        assert!(String::from_utf8_lossy(&o.stdout).contains(&format!("wrote {} tensors", sd.len())));
        let mut net = HrNet::new(&spec, 0).unwrap();
        hrk::cli::common::load_weights(&mut net, &out).unwrap_or_else(|e| panic!("{e:#}"));
        for ((k, a), (_, b)) in net.store.state_dict().iter().zip(&sd) {
            assert_eq!(a.data, b.data, "{}: {k}", pth.display());
        }
    }
}
