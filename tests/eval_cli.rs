//! `hrk test` and `eval::evaluate` on a tiny synthetic dataset with a tiny random-init model:
//! the printed result line matches the library, .safetensors and torch-format .pth weights give
//! the same NME, metrics.json / predictions / CED plot are written, threaded and inline batch
//! building agree, and decoding the ground-truth heatmaps gives (quantisation-bounded) zero NME.

use hrk::data::dataset::FaceDataset;
use hrk::data::loader::build_batch;
use hrk::eval::{decode_and_score, evaluate};
use std::path::{Path, PathBuf};
use std::process::Command;

mod common;
use common::model::{tiny_config, write_tiny_model};
use common::{assert_cli_ok, hrk_model, s, scratch, Scratch};

struct Setup {
    dir: Scratch,
    cfg: PathBuf,
    weights: PathBuf,
}

fn setup(name: &str) -> Setup {
    let dir = scratch(&format!("eval-{name}"));
    hrk::synth::generate(&dir, 68, 12, 3).unwrap();
    let (cfg, weights) = write_tiny_model(&dir, &tiny_config(&dir, 68, 64, 16, hrk::synth::TRAIN_CSV), 7);
    Setup { dir, cfg, weights }
}

/// The value after `key` in the result line (`nme:0.1234`).
fn field(line: &str, key: &str) -> f64 {
    let rest = &line[line.find(key).unwrap_or_else(|| panic!("{key} in {line}")) + key.len()..];
    rest.split_whitespace().next().unwrap().parse().unwrap()
}

fn library_eval(st: &Setup, testset: &Path) -> hrk::eval::EvalResult {
    let config = hrk::config::Config::load(&st.cfg).unwrap();
    let mut net = hrk::cli::common::model(&config, 99).unwrap();
    hrk::cli::common::load_weights(&mut net, &st.weights).unwrap();
    let ds = FaceDataset::open(hrk::data::dataset::DatasetSpec::from_config(&config, false, Some(testset)).unwrap())
        .unwrap();
    evaluate(&mut net, &ds, config.test_batch_size(), 0).unwrap()
}

/// Writes the safetensors state_dict as a torch zip .pth with `module.` prefixes (the
/// HR18-300W.pth style), via the stdlib-only torch.save stand-in of tests/common.
fn write_pth(weights: &Path, out: &Path) -> bool {
    if Command::new("python3").arg("--version").output().map(|o| !o.status.success()).unwrap_or(true) {
        eprintln!("skipped: python3 not available to write a .pth");
        return false;
    }
    let entries = hrk::io::load_state_dict(weights).unwrap();
    let mut raw = Vec::new();
    let mut manifest = Vec::new();
    for (name, t) in &entries {
        let offset = raw.len();
        let dtype = match &t.data {
            hrk::host_tensor::HostData::F32(v) => {
                v.iter().for_each(|x| raw.extend_from_slice(&x.to_le_bytes()));
                "f32"
            }
            hrk::host_tensor::HostData::I64(v) => {
                v.iter().for_each(|x| raw.extend_from_slice(&x.to_le_bytes()));
                "i64"
            }
            hrk::host_tensor::HostData::F64(_) => panic!("f64 tensor {name} in a model state_dict"),
        };
        manifest.push(
            serde_json::json!({"name": format!("module.{name}"), "dtype": dtype, "shape": t.shape, "offset": offset}),
        );
    }
    let dir = out.parent().unwrap();
    let (mpath, rpath) = (dir.join("pth_manifest.json"), dir.join("pth_raw.bin"));
    std::fs::write(&mpath, serde_json::to_string(&manifest).unwrap()).unwrap();
    std::fs::write(&rpath, raw).unwrap();
    let script = r#"
import collections, json, struct, sys
sys.path.insert(0, sys.argv[1])
import make_pth as m
manifest = json.load(open(sys.argv[2]))
raw = open(sys.argv[3], 'rb').read()
sd = collections.OrderedDict()
for i, e in enumerate(manifest):
    n = 1
    for d in e['shape']:
        n *= d
    code, kind = ('f', 'FloatStorage') if e['dtype'] == 'f32' else ('q', 'LongStorage')
    vals = struct.unpack_from('<%d%s' % (n, code), raw, e['offset'])
    sd[e['name']] = m.Tensor(m.Storage(kind, str(i), vals), 0, e['shape'])
m.write_zip(sys.argv[4], sd)
"#;
    let gen = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/common");
    let o = Command::new("python3").args(["-c", script, s(&gen), s(&mpath), s(&rpath), s(out)]).output().unwrap();
    assert!(o.status.success(), "pth writer: {}", String::from_utf8_lossy(&o.stderr));
    true
}

#[test]
fn hrk_test_prints_the_library_numbers_and_writes_outputs() {
    let st = setup("cli");
    let train = st.dir.join(hrk::synth::TRAIN_CSV);
    let test = st.dir.join(hrk::synth::TEST_CSV);
    let out = st.dir.join("out");
    let o = hrk_model("test", &st.cfg, &st.weights, &["--out", s(&out)]);
    assert_cli_ok(&o);
    let stdout = String::from_utf8_lossy(&o.stdout);
    let line = stdout.lines().find(|l| l.starts_with("Test Results time:")).expect("result line");
    for key in ["loss:", "nme:", "[008]:", "[010]:"] {
        assert!(line.contains(key), "{line}");
    }
    assert!(stdout.contains("AUC@0.08:") && stdout.contains("AUC@0.10:"), "{stdout}");

    let lib = library_eval(&st, &train);
    assert_eq!(lib.len(), 10);
    assert_eq!(field(line, "nme:"), (lib.summary.nme * 1e4).round() / 1e4);
    assert_eq!(field(line, "[008]:"), (lib.summary.fr_008 * 1e4).round() / 1e4);
    assert_eq!(field(line, "[010]:"), (lib.summary.fr_010 * 1e4).round() / 1e4);

    let metrics: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("metrics.json")).unwrap()).unwrap();
    let row = &metrics["subsets"][0];
    assert_eq!(row["nme"].as_f64().unwrap(), lib.summary.nme);
    assert_eq!(row["auc_010"].as_f64().unwrap(), lib.summary.auc_010);
    assert_eq!(row["images"].as_u64().unwrap(), 10);
    let ced = image::open(out.join("ced.png")).unwrap();
    assert_eq!((ced.width(), ced.height()), (800, 500));
    let name = train.file_stem().unwrap().to_str().unwrap();
    let csv = std::fs::read_to_string(out.join(format!("predictions_{name}.csv"))).unwrap();
    assert_eq!(csv.lines().count(), 11);
    let first: Vec<&str> = csv.lines().nth(1).unwrap().split(',').collect();
    assert_eq!(first.len(), 3 + 2 * 68);
    let pred_st = hrk::io::load_state_dict(&out.join(format!("predictions_{name}.safetensors"))).unwrap();
    let preds = pred_st.iter().find(|(n, _)| n == "predictions").unwrap();
    assert_eq!(preds.1.shape, vec![10, 68, 2]);
    assert_eq!(preds.1.to_f32_vec(), lib.predictions.iter().flat_map(|p| [p[0], p[1]]).collect::<Vec<_>>());

    // Two subsets: one row each, both in metrics.json and the table.
    let out2 = st.dir.join("out2");
    let o =
        hrk_model("test", &st.cfg, &st.weights, &["--out", s(&out2), "--testset", s(&train), "--testset", s(&test)]);
    assert_cli_ok(&o);
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert_eq!(stdout.lines().filter(|l| l.starts_with("Test Results")).count(), 2);
    let metrics: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out2.join("metrics.json")).unwrap()).unwrap();
    let rows = metrics["subsets"].as_array().unwrap();
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[1]["images"].as_u64().unwrap(), 2);
    assert_eq!(rows[1]["nme"].as_f64().unwrap(), library_eval(&st, &test).summary.nme);

    // The same weights as an official-style .pth (module. prefixes) give the same line.
    let pth = st.dir.join("tiny.pth");
    if write_pth(&st.weights, &pth) {
        let o = hrk_model("test", &st.cfg, &pth, &["--out", s(&st.dir.join("out3"))]);
        assert_cli_ok(&o);
        let stdout3 = String::from_utf8_lossy(&o.stdout);
        let line3 = stdout3.lines().find(|l| l.starts_with("Test Results")).unwrap();
        assert_eq!(field(line3, "nme:"), field(line, "nme:"));
        let m3: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(st.dir.join("out3/metrics.json")).unwrap()).unwrap();
        assert_eq!(m3["subsets"][0]["nme"].as_f64().unwrap(), lib.summary.nme);
    }
}

#[test]
fn threaded_batches_match_inline_and_loss_is_the_target_mse() {
    let st = setup("threads");
    let config = hrk::config::Config::load(&st.cfg).unwrap();
    let mut net = hrk::cli::common::model(&config, 1).unwrap();
    hrk::cli::common::load_weights(&mut net, &st.weights).unwrap();
    let ds = FaceDataset::open(hrk::data::dataset::DatasetSpec::from_config(&config, false, None).unwrap()).unwrap();
    let a = evaluate(&mut net, &ds, 3, 0).unwrap();
    let b = evaluate(&mut net, &ds, 3, 2).unwrap();
    assert_eq!(a.predictions, b.predictions);
    assert_eq!(a.nme, b.nme);
    assert_eq!(a.loss, b.loss);
    assert!(a.loss.is_finite() && a.loss > 0.0);
    // Every prediction is an integer pixel (the reference's trunc + 1).
    assert!(a.predictions.iter().all(|p| p[0].fract() == 0.0 && p[1].fract() == 0.0));
    // Errors: zero batch, and a model whose joint count differs from the data.
    assert!(evaluate(&mut net, &ds, 0, 0).is_err());
    let mut spec = hrk::model::HrnetSpec::from_config(&config).unwrap();
    spec.num_joints = 5;
    let mut other = hrk::model::HrNet::new(&spec, 1).unwrap();
    let e = evaluate(&mut other, &ds, 2, 0).unwrap_err().to_string();
    assert!(e.contains("5 landmarks") && e.contains("68"), "{e}");
    // A missing image fails the evaluation with its name, threaded or not (no hang).
    let victim = st.dir.join("images/s68_000005.jpg");
    std::fs::remove_file(&victim).unwrap();
    for threads in [0, 2] {
        let e = format!("{:#}", evaluate(&mut net, &ds, 2, threads).unwrap_err());
        assert!(e.contains("s68_000005.jpg"), "{e}");
    }
}

/// Decoding the ground-truth heatmaps fed back as the "model output": each point is off by at
/// most one heatmap pixel plus one original pixel per axis (target truncation, +0.5 and quarter
/// shift, the final trunc + 1), so the NME is bounded by that over the normaliser.
#[test]
fn ground_truth_heatmaps_decode_to_near_zero_nme() {
    let dir = scratch("eval-gt");
    hrk::synth::generate(&dir, 68, 12, 5).unwrap();
    let mut curves = Vec::new();
    for (image, heatmap) in [(256, 64), (128, 32), (64, 16)] {
        let cfg_path = dir.join(format!("gt{heatmap}.yaml"));
        std::fs::write(&cfg_path, tiny_config(&dir, 68, image, heatmap, hrk::synth::TRAIN_CSV)).unwrap();
        let config = hrk::config::Config::load(&cfg_path).unwrap();
        let ds =
            FaceDataset::open(hrk::data::dataset::DatasetSpec::from_config(&config, false, None).unwrap()).unwrap();
        let idx: Vec<usize> = (0..ds.len()).collect();
        let b = build_batch(&ds, &idx, 0, 0, 0).unwrap();
        let (preds, nme) = decode_and_score(&b.target, b.target_shape, &b.metas).unwrap();
        assert_eq!(preds.len(), ds.len() * 68);
        for (m, e) in b.metas.iter().zip(&nme) {
            let d = ((m.pts[36][0] - m.pts[45][0]).powi(2) + (m.pts[36][1] - m.pts[45][1]).powi(2)).sqrt() as f64;
            let px = 200.0 * m.scale / heatmap as f64;
            let bound = std::f64::consts::SQRT_2 * (px + 1.0) / d;
            assert!(*e <= bound, "heatmap {heatmap}: nme {e} above the quantisation bound {bound}");
        }
        let mean = nme.iter().sum::<f64>() / nme.len() as f64;
        eprintln!("heatmap {heatmap}: GT-decode mean NME {mean:.4}");
        assert!(mean < 0.1, "heatmap {heatmap}: mean {mean}");
        curves.push(hrk::plot::Series::new(format!("GT decode {heatmap}x{heatmap}"), hrk::plot::ced_points(&nme, 0.1)));
    }
    let mut chart = hrk::plot::Chart::new("CED of decoded targets", "NME", "fraction of images", &curves);
    chart.x_range = Some((0.0, 0.1));
    chart.y_range = Some((0.0, 1.0));
    let png = dir.join("ced_gt.png");
    hrk::plot::save_chart(&png, &chart).unwrap();
    let img = image::open(&png).unwrap().to_rgb8();
    for i in 0..3 {
        let c = hrk::plot::series_color(i);
        assert!(img.pixels().filter(|p| **p == c).count() > 50, "curve {i} drawn");
    }
}
