//! `hrk export` checked by real consumers: the exported file passes the onnx checker (full check, shape
//! inference included) and ONNX Runtime's outputs equal hrk's own f32 inference within 1e-4 × max|output|
//! at batch 3 and batch 1 from the same file, on tiny configs (every option), the synthetic demo config
//! and HRNetV2-W18. The comparison is tests/python/check_onnx.py, run with a python that has onnx,
//! onnxruntime and numpy (skipped with a printed reason when there is none; CI installs them).

mod common;

use common::model::{randomize, tiny_config};
use common::{assert_cli_error, hrk, python_with, rng, s, scratch};
use hrk::model::HrNet;
use std::path::Path;
use std::process::Command;

/// A config at `dir/model.yaml` and random weights (BN statistics included) for it at
/// `dir/model.safetensors`; returns the model.
fn write_model(dir: &Path, yaml: &str, seed: u64) -> HrNet {
    std::fs::write(dir.join("model.yaml"), yaml).unwrap();
    let cfg = hrk::cli::common::config(&dir.join("model.yaml")).unwrap();
    let mut net = hrk::cli::common::model(&cfg, seed).unwrap();
    randomize(&mut net, seed);
    hrk::io::safetensors::save_safetensors(&dir.join("model.safetensors"), &net.store.state_dict(), &[]).unwrap();
    net
}

fn write_f32(path: &Path, v: &[f32]) {
    std::fs::write(path, v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>()).unwrap();
}

/// Exports `dir/model.*` with `flags`, runs hrk on a batch of 3 and on its first image, and has the
/// python script compare ONNX Runtime with both. Returns the script's JSON report (None: skipped).
fn export_and_compare(dir: &Path, net: &mut HrNet, hw: [usize; 2], flags: &[&str]) -> Option<serde_json::Value> {
    let python = python_with("onnx, onnxruntime, numpy")?;
    let onnx = dir.join("model.onnx");
    let (cfg, weights) = (dir.join("model.yaml"), dir.join("model.safetensors"));
    let mut args = vec!["export", "--cfg", s(&cfg), "--model-file", s(&weights), "--onnx", s(&onnx)];
    args.extend_from_slice(flags);
    let out = hrk(&args);
    assert!(out.status.success(), "hrk export: {}", String::from_utf8_lossy(&out.stderr));

    let [h, w] = hw;
    let mut r = rng(11);
    let x: Vec<f32> = (0..3 * 3 * h * w).map(|_| r.normal() as f32).collect();
    let mut cases = Vec::new();
    for n in [3usize, 1] {
        let input = x[..n * 3 * h * w].to_vec();
        let (hm, dims) = net.eval_heatmaps(input.clone(), [n, 3, h, w]).unwrap();
        write_f32(&dir.join(format!("x{n}.bin")), &input);
        write_f32(&dir.join(format!("hm{n}.bin")), &hm);
        cases.push(serde_json::json!({
            "input": format!("x{n}.bin"), "shape": [n, 3, h, w],
            "heatmaps": format!("hm{n}.bin"), "hm_shape": dims,
        }));
    }
    let spec = serde_json::json!({"cases": cases, "decode": flags.contains(&"--decode")});
    std::fs::write(dir.join("case.json"), spec.to_string()).unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/check_onnx.py");
    let run = Command::new(python).arg(script).arg(dir).output().expect("run python");
    let stdout = String::from_utf8_lossy(&run.stdout);
    eprintln!("{stdout}");
    assert!(run.status.success(), "ONNX check failed: {stdout}{}", String::from_utf8_lossy(&run.stderr));
    let report: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    let rows = report["cases"].as_array().unwrap();
    assert_eq!(rows.len(), 2);
    for row in rows {
        assert!(row["ok"].as_bool().unwrap() && row["rel"].as_f64().unwrap() <= 1e-4, "{row}");
    }
    Some(report)
}

/// Tiny config, non-square input whose branch sizes do not divide (44×36 → 11×9, 6×5, 3×3, 2×2), so
/// the resizes run at fractional ratios and clamp at the borders.
fn tiny_yaml(dir: &Path) -> String {
    let y = tiny_config(dir, 5, 36, 9, "test.csv");
    let y = common::replace_once(&y, "IMAGE_SIZE: [36, 36]", "IMAGE_SIZE: [36, 44]");
    // The config check holds HEATMAP_SIZE to the model's output, IMAGE_SIZE / 4 per axis.
    common::replace_once(&y, "HEATMAP_SIZE: [9, 9]", "HEATMAP_SIZE: [9, 11]")
}

#[test]
fn tiny_folded_default_opset() {
    let dir = scratch("onnx-tiny");
    let mut net = write_model(&dir, &tiny_yaml(&dir), 1);
    export_and_compare(&dir, &mut net, [44, 36], &[]);
}

#[test]
fn tiny_unfolded_decode_every_opset_end() {
    for (k, flags) in [
        ["--fold-bn=false", "--decode", "--opset", "13"],
        ["--fold-bn=true", "--decode", "--opset", "21"],
        ["--fold-bn=false", "--decode", "--opset", "18"],
    ]
    .iter()
    .enumerate()
    {
        let dir = scratch("onnx-tiny-opts");
        let mut net = write_model(&dir, &tiny_yaml(&dir), 2 + k as u64);
        export_and_compare(&dir, &mut net, [44, 36], flags);
    }
}

#[test]
fn synthetic_demo_config() {
    let dir = scratch("onnx-synth");
    let yaml = hrk::synth::config_yaml(&dir, 68);
    let mut net = write_model(&dir, &yaml, 5);
    export_and_compare(&dir, &mut net, [256, 256], &["--decode"]);
}

#[test]
fn hrnet_w18_wflw() {
    let dir = scratch("onnx-w18");
    let yaml = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("experiments/wflw/face_alignment_wflw_hrnet_w18.yaml"),
    )
    .unwrap();
    let mut net = write_model(&dir, &yaml, 6);
    export_and_compare(&dir, &mut net, [256, 256], &[]);
}

#[test]
fn bad_opset_and_mismatched_weights_are_one_line_errors() {
    let dir = scratch("onnx-bad");
    write_model(&dir, &tiny_yaml(&dir), 7);
    let cfg = dir.join("model.yaml");
    let weights = dir.join("model.safetensors");
    let onnx = dir.join("out.onnx");
    let base = ["export", "--cfg", s(&cfg), "--model-file", s(&weights), "--onnx", s(&onnx)];
    let out = hrk(&[&base[..], &["--opset", "9"]].concat());
    assert_cli_error(&out, &["--opset 9", "13 to 21"]);
    // Weights of another network: the strict load names the file and a tensor.
    let other = scratch("onnx-bad-other");
    let yaml = common::replace_once(&tiny_yaml(&other), "NUM_JOINTS: 5", "NUM_JOINTS: 7");
    write_model(&other, &yaml, 8);
    let wrong = other.join("model.safetensors");
    let out = hrk(&["export", "--cfg", s(&cfg), "--model-file", s(&wrong), "--onnx", s(&onnx)]);
    assert_cli_error(&out, &["model.safetensors", "head.3"]);
    assert!(!onnx.exists(), "no file written on error");
}

/// `--init-seed S` exports the official init of seed S: the same bytes as exporting that init's weights
/// from a file; it cannot be combined with `--model-file`.
#[test]
fn init_seed_matches_the_saved_init() {
    let dir = scratch("onnx-seed");
    std::fs::write(dir.join("model.yaml"), tiny_yaml(&dir)).unwrap();
    let cfg = dir.join("model.yaml");
    let net = hrk::cli::common::model(&hrk::cli::common::config(&cfg).unwrap(), 4).unwrap();
    let weights = dir.join("init.safetensors");
    hrk::io::safetensors::save_safetensors(&weights, &net.store.state_dict(), &[]).unwrap();
    let (a, b) = (dir.join("a.onnx"), dir.join("b.onnx"));
    let out = hrk(&["export", "--cfg", s(&cfg), "--init-seed", "4", "--onnx", s(&a)]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = hrk(&["export", "--cfg", s(&cfg), "--model-file", s(&weights), "--onnx", s(&b)]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());
    let out = hrk(&["export", "--cfg", s(&cfg), "--init-seed", "4", "--model-file", s(&weights), "--onnx", s(&a)]);
    assert!(!out.status.success());
}
