//! Tiny models for the tests: small HRNet specs, a randomised HRNet, and a tiny config over a synthetic
//! data set with its random-init weights on disk (for the `hrk test` / `hrk predict` tests).

use hrk::model::{HrNet, HrnetSpec, Slot};
use hrk::Storage;
use std::path::{Path, PathBuf};

/// HRNetV2-W18's layout with `joints` outputs cut down to one block per branch, `modules` modules in
/// stages 2, 3, 4 and channels c, 2c, 4c, 8c.
fn cut_down_w18(joints: usize, modules: [usize; 3], c: usize) -> HrnetSpec {
    let mut s = HrnetSpec::w18(joints);
    for (k, (st, m)) in s.stages.iter_mut().zip(modules).enumerate() {
        st.num_modules = m;
        st.num_blocks = vec![1; k + 2];
        st.num_channels = (0..k + 2).map(|i| c << i).collect();
    }
    s
}

/// One module of one block per stage and channels 2, 4, 8, 16: every branch and fuse path, at a few
/// hundred parameters.
pub fn tiny_spec(joints: usize) -> HrnetSpec {
    cut_down_w18(joints, [1, 1, 1], 2)
}

/// A small spec with channels 4..32 and two modules in stage 4 (so module chaining is exercised).
pub fn small_spec(joints: usize) -> HrnetSpec {
    cut_down_w18(joints, [1, 1, 2], 4)
}

/// Gives every tensor of the model a random, well-scaled value (BN statistics included), so folding
/// BN into the convs is exercised with non-trivial γ, β, μ, σ².
pub fn randomize(net: &mut HrNet, seed: u64) {
    let mut rng = super::rng(seed);
    for i in 0..net.store.len() {
        if matches!(net.store.slot(i), Slot::Count(_)) {
            continue;
        }
        let name = net.store.name(i).to_string();
        let t = net.store.tensor(i);
        let shape = t.shape().to_vec();
        let fan_in: usize = shape.iter().skip(1).product::<usize>().max(1);
        let v: Vec<f32> = (0..t.numel())
            .map(|_| {
                (if shape.len() == 4 {
                    rng.normal() / (fan_in as f64).sqrt()
                } else if name.ends_with("running_var") || (name.ends_with(".weight") && shape.len() == 1) {
                    rng.range(0.5, 1.5)
                } else {
                    rng.range(-0.1, 0.1)
                }) as f32
            })
            .collect();
        net.store.tensor_mut(i).set_storage(Storage::f32(v)).unwrap();
    }
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
fn positive_head_bias(
    mut sd: Vec<(String, hrk::host_tensor::HostTensor)>,
) -> Vec<(String, hrk::host_tensor::HostTensor)> {
    for (name, t) in sd.iter_mut() {
        if name == "head.3.bias" {
            t.data = hrk::host_tensor::HostData::F32(vec![0.5; t.numel()]);
        }
    }
    sd
}

/// One synthetic 68-point face photo (`dir/images/s68_000000.jpg`, the test CSV) and a tiny
/// random-init 68-point model for it in `dir`: what the frame-stream CLI tests run on; returns
/// (config path, weights path).
pub fn one_face_tiny_model(dir: &Path) -> (PathBuf, PathBuf) {
    hrk::synth::generate(dir, 68, 1, 11).unwrap();
    write_tiny_model(dir, &tiny_config(dir, 68, 64, 16, hrk::synth::TEST_CSV), 3)
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

/// A scratch folder with a 5-image synthetic 68-point set, the tiny config over it (64² input, 16²
/// heatmaps) and its random-init weights, and the first two images.
pub struct TinySetup {
    pub dir: super::Scratch,
    pub cfg: PathBuf,
    pub weights: PathBuf,
    pub images: Vec<PathBuf>,
}

/// [`TinySetup`] in a scratch folder named after `tag`.
pub fn tiny_setup(tag: &str) -> TinySetup {
    let dir = super::scratch(tag);
    hrk::synth::generate(&dir, 68, 5, 11).unwrap();
    let (cfg, weights) = write_tiny_model(&dir, &tiny_config(&dir, 68, 64, 16, hrk::synth::TEST_CSV), 3);
    let images = (0..2).map(|i| dir.join(format!("images/s68_{i:06}.jpg"))).collect();
    TinySetup { dir, cfg, weights, images }
}

/// A synthetic face the demo model knows, and its 68 landmarks: the first face of the test split of a
/// small synthetic set generated into `dir` (seeded: the same face every time).
pub fn synthetic_face(dir: &Path) -> (image::RgbImage, Vec<[f64; 2]>) {
    hrk::synth::generate(dir, 68, 5, 3).unwrap();
    let text = std::fs::read_to_string(dir.join(hrk::synth::TEST_CSV)).unwrap();
    let row: Vec<&str> = text.lines().nth(1).unwrap().split(',').collect();
    let face = image::open(dir.join(row[0])).unwrap().to_rgb8();
    let points = (0..68).map(|k| [row[4 + 2 * k].parse().unwrap(), row[5 + 2 * k].parse().unwrap()]).collect();
    (face, points)
}
