//! Fixtures shared by the `hrk test` / `hrk predict` tests: temp folders, a tiny HRNet config over a
//! synthetic dataset, and a random-init model that decodes to points on the crop.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// Removes a test folder unless HRK_KEEP_TEST_OUTPUT is set (then prints where it is).
pub fn cleanup(dir: &Path) {
    if std::env::var_os("HRK_KEEP_TEST_OUTPUT").is_some() {
        eprintln!("kept {}", dir.display());
    } else {
        let _ = std::fs::remove_dir_all(dir);
    }
}

/// A fresh temp folder per test.
pub fn temp_dir(prefix: &str, name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("hrk-{prefix}-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Tiny HRNet (1 module, 1 block, 2..16 channels) with `image`² input and `heatmap`² heatmaps (not
/// the reference's hard-coded 64²), 300W layout; TRAINSET is the synthetic train CSV, TESTSET `testset`.
pub fn tiny_config(dir: &Path, joints: usize, image: usize, heatmap: usize, testset: &str) -> String {
    let q = |p: PathBuf| format!("'{}'", p.display());
    let mut y = format!(
        "GPUS: (0,)\nWORKERS: 2\nOUTPUT_DIR: {}\nDATASET:\n  DATASET: 300W\n  ROOT: {}\n  TRAINSET: {}\n  TESTSET: {}\n",
        q(dir.join("output")),
        q(dir.to_path_buf()),
        q(dir.join(hrk::synth::TRAIN_CSV)),
        q(dir.join(testset)),
    );
    y += &format!(
        "MODEL:\n  NAME: hrnet\n  NUM_JOINTS: {joints}\n  SIGMA: 1.0\n  IMAGE_SIZE: [{image}, {image}]\n  HEATMAP_SIZE: [{heatmap}, {heatmap}]\n  EXTRA:\n    FINAL_CONV_KERNEL: 1\n"
    );
    for (k, name) in ["STAGE2", "STAGE3", "STAGE4"].iter().enumerate() {
        let b = k + 2;
        let blocks = vec!["1"; b].join(", ");
        let chans: Vec<String> = (0..b).map(|i| (2usize << i).to_string()).collect();
        y += &format!(
            "    {name}:\n      NUM_MODULES: 1\n      NUM_BRANCHES: {b}\n      BLOCK: BASIC\n      NUM_BLOCKS: [{blocks}]\n      NUM_CHANNELS: [{}]\n      FUSE_METHOD: SUM\n",
            chans.join(", ")
        );
    }
    y += "TEST:\n  BATCH_SIZE_PER_GPU: 4\n";
    y
}

/// A random-init head can have all-negative maps, which the reference decodes to (0, 0) and
/// hence to a point off the crop; a positive head bias keeps every map's maximum above 0.
fn positive_head_bias(mut sd: Vec<(String, hrk::host::HostTensor)>) -> Vec<(String, hrk::host::HostTensor)> {
    for (name, t) in sd.iter_mut() {
        if name == "head.3.bias" {
            t.data = hrk::host::HostData::F32(vec![0.5; t.numel()]);
        }
    }
    sd
}

/// Writes `dir/tiny.yaml` and a random-init model for it (seeded) as `dir/tiny.safetensors`;
/// returns (config path, weights path).
pub fn write_tiny_model(dir: &Path, yaml: &str, seed: u64) -> (PathBuf, PathBuf) {
    let cfg = dir.join("tiny.yaml");
    std::fs::write(&cfg, yaml).unwrap();
    let config = hrk::cli::common::config(&cfg).unwrap();
    let net = hrk::cli::common::model(&config, seed).unwrap();
    let weights = dir.join("tiny.safetensors");
    hrk::io::safetensors::save_safetensors(&weights, &positive_head_bias(net.store.state_dict()), &[]).unwrap();
    (cfg, weights)
}

pub fn hrk(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_hrk")).args(args).output().unwrap()
}

pub fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}
