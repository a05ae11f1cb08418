//! The official experiment YAMLs, the parity fixture config and the synthetic config load with
//! the official lib/config/defaults.py and experiments/*.yaml values; absent keys keep the reference defaults.

use hrk::config::{load_config, schema_keys, BlockKind, Config, DatasetKind, OptimizerKind, StageConfig};
use std::path::{Path, PathBuf};

fn repo(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

mod common;
use common::shared_dir;

fn w18_stages(cfg: &Config) {
    let extra = &cfg.model.extra;
    assert_eq!(extra.final_conv_kernel, 1);
    let expect = |s: &StageConfig, modules: usize, channels: &[usize]| {
        assert_eq!(s.num_modules, modules);
        assert_eq!(s.num_branches, channels.len());
        assert_eq!(s.block, BlockKind::Basic);
        assert_eq!(s.num_blocks, vec![4; channels.len()]);
        assert_eq!(s.num_channels, channels);
        assert_eq!(s.fuse_method, "SUM");
    };
    expect(&extra.stage2, 1, &[18, 36]);
    expect(&extra.stage3, 4, &[18, 36, 72]);
    expect(&extra.stage4, 3, &[18, 36, 72, 144]);
    // Keys no YAML sets keep their defaults.
    assert_eq!(extra.pretrained_layers, vec!["*".to_string()]);
    assert_eq!(extra.stem_inplanes, 64);
    assert!(extra.with_head);
}

fn common_w18(cfg: &Config) {
    assert_eq!(cfg.gpus, vec![0]);
    assert_eq!(cfg.gpus_count(), 1);
    assert_eq!(cfg.workers, 4);
    assert_eq!(cfg.model.name, "hrnet");
    assert!(cfg.model.init_weights);
    assert_eq!(cfg.model.pretrained, "hrnetv2_pretrained/hrnetv2_w18_imagenet_pretrained.pth");
    assert_eq!(cfg.model.image_size, [256, 256]);
    assert_eq!(cfg.model.heatmap_size, [64, 64]);
    assert!(cfg.dataset.flip);
    assert_eq!(cfg.dataset.scale_factor, 0.25);
    assert_eq!(cfg.dataset.rot_factor, 30);
    let t = &cfg.train;
    assert_eq!((t.batch_size_per_gpu, t.begin_epoch, t.end_epoch), (16, 0, 60));
    assert!(t.shuffle && t.resume && !t.nesterov);
    assert_eq!(t.optimizer, OptimizerKind::Adam);
    assert_eq!((t.wd, t.momentum), (0.0, 0.0));
    assert_eq!(t.lr_step, vec![30, 50]);
    assert_eq!(cfg.test.batch_size_per_gpu, 8);
    assert_eq!((cfg.train_batch_size(), cfg.test_batch_size()), (16, 8));
    // Not set by any YAML: defaults (§2.3 last paragraph).
    assert_eq!((cfg.output_dir.as_str(), cfg.log_dir.as_str()), ("output", "log"));
    assert!(cfg.cudnn.benchmark && cfg.cudnn.enabled && !cfg.cudnn.deterministic);
    assert_eq!(cfg.model.target_type, "Gaussian");
    assert_eq!(cfg.train.lr_factor, 0.1);
    assert!(cfg.pin_memory && !cfg.auto_resume);
    assert_eq!(cfg.train.checkpoint, "");
    w18_stages(cfg);
}

/// What sets the official W18 experiment files apart from each other.
struct Official {
    print_freq: usize,
    kind: DatasetKind,
    root: &'static str,
    trainset: &'static str,
    testset: &'static str,
    num_joints: usize,
    sigma: f64,
    lr: f64,
}

/// Loads the official experiment file `rel`: the W18 values every one shares and its own `want`.
fn official_w18(rel: &str, want: Official) -> (PathBuf, Config) {
    let path = repo(rel);
    let cfg = load_config(&path).unwrap();
    common_w18(&cfg);
    assert_eq!(cfg.print_freq, want.print_freq);
    assert_eq!(cfg.dataset_kind(), Some(want.kind));
    assert_eq!(cfg.dataset.root, want.root);
    assert_eq!(cfg.dataset.trainset, want.trainset);
    assert_eq!(cfg.dataset.testset, want.testset);
    assert_eq!(cfg.model.num_joints, want.num_joints);
    assert_eq!(cfg.model.sigma, want.sigma);
    assert_eq!(cfg.train.lr, want.lr);
    (path, cfg)
}

#[test]
fn wflw_yaml() {
    let (path, cfg) = official_w18(
        "experiments/wflw/face_alignment_wflw_hrnet_w18.yaml",
        Official {
            print_freq: 50,
            kind: DatasetKind::Wflw,
            root: "./data/wflw/images/",
            trainset: "./data/wflw/face_landmarks_wflw_train.csv",
            testset: "./data/wflw/face_landmarks_wflw_test.csv",
            num_joints: 98,
            sigma: 1.5,
            lr: 0.0001,
        },
    );
    assert_eq!(cfg.dataset.dataset, "WFLW");
    let in_repo = Path::new("experiments/wflw/face_alignment_wflw_hrnet_w18.yaml");
    assert_eq!(cfg.output_dir_for(in_repo), Path::new("output/WFLW/face_alignment_wflw_hrnet_w18"));
    assert_eq!(cfg.output_dir_for(&path), Path::new("output/WFLW/face_alignment_wflw_hrnet_w18"));
    assert_eq!(
        cfg.tensorboard_dir_for(in_repo, "2019-08-30-12-00"),
        Path::new("log/WFLW/hrnet/face_alignment_wflw_hrnet_w18_2019-08-30-12-00")
    );
}

#[test]
fn w300_yaml_with_trailing_space_sigma() {
    let rel = "experiments/300w/face_alignment_300w_hrnet_w18.yaml";
    let text = std::fs::read_to_string(repo(rel)).unwrap();
    assert!(text.contains("SIGMA: 1.0 \n"), "the file keeps the original trailing space");
    assert!(text.contains("GPUS: (0, )\n"));
    let (path, cfg) = official_w18(
        rel,
        Official {
            print_freq: 50,
            kind: DatasetKind::W300,
            root: "./data/300w/images",
            trainset: "./data/300w/face_landmarks_300w_train.csv",
            testset: "./data/300w/face_landmarks_300w_valid.csv",
            num_joints: 68,
            sigma: 1.0,
            lr: 0.0001,
        },
    );
    assert_eq!(cfg.output_dir_for(&path), Path::new("output/300W/face_alignment_300w_hrnet_w18"));
}

#[test]
fn aflw_yaml() {
    official_w18(
        "experiments/aflw/face_alignment_aflw_hrnet_w18.yaml",
        Official {
            print_freq: 50,
            kind: DatasetKind::Aflw,
            root: "./data/aflw/images/",
            trainset: "./data/aflw/face_landmarks_aflw_train.csv",
            testset: "./data/aflw/face_landmarks_aflw_test.csv",
            num_joints: 19,
            sigma: 1.5,
            lr: 0.0002,
        },
    );
}

#[test]
fn cofw_yaml() {
    official_w18(
        "experiments/cofw/face_alignment_cofw_hrnet_w18.yaml",
        Official {
            print_freq: 20,
            kind: DatasetKind::Cofw,
            root: "./data",
            trainset: "./data/cofw/COFW_train_color.mat",
            testset: "./data/cofw/COFW_test_color.mat",
            num_joints: 29,
            sigma: 1.5,
            lr: 0.0001,
        },
    );
}

#[test]
fn parity_tiny_config() {
    let path = shared_dir().join("parity/tiny/config.yaml");
    if !path.exists() {
        eprintln!("skipped: {} not found (set HRK_SHARED)", path.display());
        return;
    }
    let cfg = load_config(&path).unwrap();
    assert_eq!(cfg.model.num_joints, 19);
    assert!(!cfg.model.init_weights);
    assert_eq!(cfg.model.pretrained, "");
    assert_eq!(cfg.model.image_size, [64, 64]);
    assert_eq!(cfg.model.heatmap_size, [16, 16]);
    let extra = &cfg.model.extra;
    assert_eq!(extra.stage2.num_channels, vec![4, 8]);
    assert_eq!(extra.stage3.num_channels, vec![4, 8, 16]);
    assert_eq!(extra.stage4.num_channels, vec![4, 8, 16, 32]);
    assert_eq!(extra.stage4.num_modules, 2);
    assert_eq!(extra.stage4.num_blocks, vec![1, 1, 1, 1]);
    assert_eq!(cfg.train.lr, 0.0002);
    assert_eq!(cfg.dataset_kind(), Some(DatasetKind::Aflw));
}

#[test]
fn synthetic_tiny_config() {
    let path = repo("experiments/synthetic/synthetic_hrnet_tiny.yaml");
    let cfg = load_config(&path).unwrap();
    assert_eq!(cfg.dataset_kind(), Some(DatasetKind::W300));
    assert_eq!(cfg.model.num_joints, 68);
    assert_eq!(cfg.dataset.root, "data/synthetic/");
    assert_eq!(cfg.dataset.trainset, "data/synthetic/face_landmarks_synthetic_train.csv");
    assert_eq!(cfg.dataset.testset, "data/synthetic/face_landmarks_synthetic_test.csv");
    // The demo's sizes are tuned for speed; the network's output is a quarter of its input.
    assert_eq!(cfg.model.heatmap_size.map(|v| v * 4), cfg.model.image_size);
    assert!(!cfg.model.init_weights);
    assert_eq!(cfg.train.optimizer, OptimizerKind::Adam);
    assert_eq!(cfg.model.extra.stage4.num_channels, vec![8, 16, 32, 64]);
    for s in [&cfg.model.extra.stage2, &cfg.model.extra.stage3, &cfg.model.extra.stage4] {
        assert_eq!(s.num_modules, 1);
    }
    assert_eq!(cfg.output_dir_for(&path), Path::new("output/300W/synthetic_hrnet_tiny"));
}

#[test]
fn defaults_are_the_reference_defaults() {
    let d = Config::default();
    assert_eq!(d.gpus, vec![0, 1, 2, 4]);
    assert_eq!((d.workers, d.print_freq), (16, 20));
    assert_eq!(d.model.num_joints, 17);
    assert_eq!(d.model.sigma, 1.5);
    assert_eq!(d.model.extra.stage3.num_modules, 1);
    assert_eq!(d.model.extra.stage4.num_channels, vec![18, 32, 72, 144]);
    assert_eq!(d.dataset.dataset, "AFLW");
    assert_eq!(d.train.lr, 0.0001);
    assert_eq!(d.test.batch_size_per_gpu, 32);
    // An empty file and a comment-only file are the defaults, as with yacs.
    assert_eq!(Config::from_yaml_str("", "empty.yaml").unwrap(), d);
    assert_eq!(Config::from_yaml_str("# nothing\n", "c.yaml").unwrap(), d);
    // A partial file changes only what it names.
    let cfg = Config::from_yaml_str("MODEL:\n  NUM_JOINTS: 68\nTRAIN:\n  LR: 0.01\n", "p.yaml").unwrap();
    let mut expect = d.clone();
    expect.model.num_joints = 68;
    expect.train.lr = 0.01;
    assert_eq!(cfg, expect);
    // §2.2: 7 top-level + 3 CUDNN + 8 MODEL + 4 EXTRA + 3x6 STAGE + 7 DATASET + 13 TRAIN + 1 TEST.
    assert_eq!(schema_keys().len(), 66);
}

#[test]
fn yacs_decoding_rules() {
    // Strings go through literal_eval: a quoted number is a number, a tuple string a tuple.
    let cfg = Config::from_yaml_str(
        "GPUS: '(0, 1)'\nTRAIN:\n  LR: '1e-3'\n  LR_STEP: (10, 20)\nMODEL:\n  NUM_JOINTS: '68'\n",
        "d.yaml",
    )
    .unwrap();
    assert_eq!(cfg.gpus, vec![0, 1]);
    assert_eq!(cfg.train.lr, 1e-3);
    assert_eq!(cfg.train.lr_step, vec![10, 20]);
    assert_eq!(cfg.model.num_joints, 68);
    // A list may stand for the GPUS tuple; YAML 1.1 booleans are booleans.
    let cfg = Config::from_yaml_str("GPUS: [0, 1, 2]\nDATASET:\n  FLIP: no\n", "d.yaml").unwrap();
    assert_eq!(cfg.gpus_count(), 3);
    assert!(!cfg.dataset.flip);
    // Unparseable text stays a string.
    let cfg = Config::from_yaml_str("DATASET:\n  DATASET: 300W\n  ROOT: a/b\n", "d.yaml").unwrap();
    assert_eq!(cfg.dataset.dataset, "300W");
    assert_eq!(cfg.dataset.root, "a/b");
    // A repeated key or section, where PyYAML silently keeps the last (issue 25), is refused with
    // both lines.
    let e = Config::from_yaml_str("DATASET:\n  DATASET: 300W\n  ROOT: a/b\n  ROOT: c\n", "d.yaml").unwrap_err();
    assert!(
        format!("{e:#}").starts_with("d.yaml:4: YAML refused: key 'ROOT' is written twice, at d.yaml:3 and d.yaml:4")
    );
    let e = Config::from_yaml_str("MODEL:\n  NUM_JOINTS: 5\nMODEL:\n  SIGMA: 2.0\n", "d.yaml").unwrap_err();
    assert!(
        format!("{e:#}").starts_with("d.yaml:3: YAML refused: key 'MODEL' is written twice, at d.yaml:1 and d.yaml:3")
    );
    // Anchors, aliases and merge keys work as in PyYAML.
    let cfg = Config::from_yaml_str(
        "MODEL:\n  EXTRA:\n    STAGE2: &s {NUM_MODULES: 2}\n    STAGE3:\n      <<: *s\n      NUM_BRANCHES: 3\n",
        "d.yaml",
    )
    .unwrap();
    assert_eq!((cfg.model.extra.stage2.num_modules, cfg.model.extra.stage3.num_modules), (2, 2));
    // Inline and block forms are the same.
    let inline =
        Config::from_yaml_str("MODEL: {NUM_JOINTS: 98, IMAGE_SIZE: [256,256], SIGMA: 1.5}\n", "i.yaml").unwrap();
    let block = Config::from_yaml_str(
        "MODEL:\n  NUM_JOINTS: 98\n  IMAGE_SIZE:\n    - 256\n    - 256\n  SIGMA: 1.5\n",
        "b.yaml",
    )
    .unwrap();
    assert_eq!(inline, block);
}

#[test]
fn to_yaml_round_trips() {
    for rel in [
        "experiments/wflw/face_alignment_wflw_hrnet_w18.yaml",
        "experiments/300w/face_alignment_300w_hrnet_w18.yaml",
        "experiments/synthetic/synthetic_hrnet_tiny.yaml",
    ] {
        let cfg = load_config(&repo(rel)).unwrap();
        let text = cfg.to_yaml();
        let again = Config::from_yaml_str(&text, "dump.yaml").unwrap_or_else(|e| panic!("{e}\n{text}"));
        assert_eq!(again, cfg, "{rel}");
    }
    // Strings that look like Python literals survive too.
    let mut cfg = Config::default();
    cfg.dataset.root = "(0,)".into();
    cfg.model.name = "it's \"odd\"\n".into();
    cfg.train.checkpoint = "123".into();
    let again = Config::from_yaml_str(&cfg.to_yaml(), "dump.yaml").unwrap();
    assert_eq!(again, cfg);
}

#[test]
fn output_dir_uses_name_before_first_dot() {
    let cfg = Config::default();
    assert_eq!(cfg.output_dir_for(Path::new("/x/y/my.cfg.v2.yaml")), Path::new("output/AFLW/my"));
    assert_eq!(hrk::config::config_name(Path::new("a/b/c.yaml")), "c");
}
