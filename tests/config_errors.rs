//! Bad configs fail with ONE line that names the file, the line (where there is one) and the
//! full key path — the error matrix of unknown keys, wrong types, wrong nesting, inconsistent
//! stages, bad sizes and YAML syntax errors.

use hrk::config::{load_config, Config};
use std::path::Path;

mod common;
use common::line_of;

const W18: &str = include_str!("../experiments/wflw/face_alignment_wflw_hrnet_w18.yaml");

fn err(text: &str) -> String {
    match Config::from_yaml_str(text, "bad.yaml") {
        Ok(_) => panic!("accepted:\n{text}"),
        Err(e) => {
            let msg = format!("{e:#}");
            assert!(!msg.contains('\n'), "not one line: {msg}");
            assert!(msg.starts_with("bad.yaml"), "does not name the file: {msg}");
            msg
        }
    }
}

/// `text` fails with ONE line naming the file that holds every needle and, where `line` is given,
/// starts with `bad.yaml:<line>:`.
#[track_caller]
fn fails(text: &str, line: Option<usize>, needles: &[&str]) -> String {
    let msg = err(text);
    if let Some(line) = line {
        assert!(msg.starts_with(&format!("bad.yaml:{line}:")), "{msg}");
    }
    for needle in needles {
        assert!(msg.contains(needle), "{msg}");
    }
    msg
}

/// The official WFLW file with one line replaced.
fn w18_with(old: &str, new: &str) -> String {
    common::replace_once(W18, old, new)
}

#[test]
fn unknown_key_top_level() {
    fails("GPUS: (0,)\nGPU: (0,)\n", Some(2), &["unknown config key GPU ", "did you mean GPUS?"]);
}

#[test]
fn unknown_key_nested_names_full_path() {
    let text = w18_with(
        "      NUM_CHANNELS:\n        - 18\n        - 36\n",
        "      NUM_CHANELS:\n        - 18\n        - 36\n",
    );
    let needles = ["MODEL.EXTRA.STAGE2.NUM_CHANELS", "did you mean MODEL.EXTRA.STAGE2.NUM_CHANNELS?"];
    fails(&text, Some(line_of(&text, "NUM_CHANELS")), &needles);
    // Keys that only exist in other HRNet forks are unknown here as well (reference HEAD); the
    // pose code's TEST.FLIP_TEST / SHIFT_HEATMAP are hrk extensions now (issue #15), POST_PROCESS is not.
    fails("TEST:\n  POST_PROCESS: false\n", None, &["TEST.POST_PROCESS"]);
    fails("LOSS:\n  USE_TARGET_WEIGHT: true\n", None, &["unknown config key LOSS"]);
    // Keys are case-sensitive, like yacs.
    fails("model:\n  NUM_JOINTS: 5\n", None, &["unknown config key model", "did you mean MODEL?"]);
}

#[test]
fn wrong_type_names_expected_and_found() {
    fails("MODEL:\n  NUM_JOINTS: 9.5\n", Some(2), &["MODEL.NUM_JOINTS", "expected int, found float"]);
    fails("MODEL:\n  SIGMA: 2\n", None, &["MODEL.SIGMA", "expected float, found int", "decimal point"]);
    fails("DATASET:\n  FLIP: 1\n", None, &["DATASET.FLIP", "expected bool, found int"]);
    fails("MODEL:\n  NAME: 5\n", None, &["MODEL.NAME", "expected str, found int"]);
    fails("GPUS: 0\n", None, &["GPUS", "expected tuple of int, found int"]);
    // A quoted number is decoded by literal_eval first, so it is an int for a str key too.
    fails("DATASET:\n  ROOT: '12'\n", None, &["DATASET.ROOT", "found int"]);
    fails("MODEL:\n  IMAGE_SIZE: [256, '256']\n", None, &["MODEL.IMAGE_SIZE[1]", "expected int, found str"]);
    fails("MODEL:\n  NUM_JOINTS: ~\n", None, &["MODEL.NUM_JOINTS", "null"]);
}

#[test]
fn wrong_nesting() {
    fails("MODEL: 5\n", Some(1), &["MODEL", "expected a mapping"]);
    fails("MODEL:\n  EXTRA:\n    STAGE2: [1, 2]\n", Some(3), &["MODEL.EXTRA.STAGE2", "found list"]);
    fails("MODEL:\n", None, &["MODEL", "found null"]);
    fails("MODEL:\n  SIGMA:\n    VALUE: 1.5\n", None, &["MODEL.SIGMA", "found a mapping"]);
    // A value one level too high: NUM_JOINTS at the top.
    fails("NUM_JOINTS: 68\n", None, &["unknown config key NUM_JOINTS"]);
    fails("- 1\n- 2\n", None, &["top level must be a mapping"]);
}

#[test]
fn stage_list_lengths_must_match_branches() {
    let text = w18_with(
        "        - 18\n        - 36\n        - 72\n      FUSE_METHOD",
        "        - 18\n        - 36\n      FUSE_METHOD",
    );
    let msg = fails(&text, None, &["MODEL.EXTRA.STAGE3.NUM_CHANNELS", "has 2 entries but NUM_BRANCHES is 3"]);
    // It points at STAGE3's NUM_CHANNELS (the key line or its first item).
    let stage3 = line_of(&text, "STAGE3:");
    let key_line = stage3 + text.lines().skip(stage3).position(|l| l.contains("NUM_CHANNELS")).expect("key") + 1;
    let reported: usize = msg.split(':').nth(1).and_then(|l| l.parse().ok()).expect("line");
    assert!(reported == key_line || reported == key_line + 1, "{msg} (key at {key_line})");
    fails(
        "MODEL:\n  EXTRA:\n    STAGE4:\n      NUM_BLOCKS: [4, 4, 4]\n",
        Some(4),
        &["MODEL.EXTRA.STAGE4.NUM_BLOCKS", "has 3 entries but NUM_BRANCHES is 4"],
    );
    fails("MODEL:\n  EXTRA:\n    STAGE2:\n      NUM_BRANCHES: 3\n", None, &["MODEL.EXTRA.STAGE2.NUM_BRANCHES"]);
    fails(
        "MODEL:\n  EXTRA:\n    STAGE3:\n      BLOCK: BASICBLOCK\n",
        None,
        &["MODEL.EXTRA.STAGE3.BLOCK", "BASIC or BOTTLENECK"],
    );
}

#[test]
fn sizes_must_be_positive() {
    fails("MODEL:\n  IMAGE_SIZE: [256, -256]\n", Some(2), &["MODEL.IMAGE_SIZE[1]", "negative"]);
    fails("MODEL:\n  HEATMAP_SIZE: [64, 0]\n", None, &["MODEL.HEATMAP_SIZE", "2 positive ints"]);
    fails("MODEL:\n  HEATMAP_SIZE: [64, 64, 64]\n", None, &["MODEL.HEATMAP_SIZE", "expected 2 ints"]);
    fails("MODEL:\n  NUM_JOINTS: -5\n", None, &["MODEL.NUM_JOINTS", "negative"]);
    fails("TRAIN:\n  BATCH_SIZE_PER_GPU: 0\n", Some(2), &["TRAIN.BATCH_SIZE_PER_GPU", "at least 1"]);
    fails(
        "MODEL:\n  EXTRA:\n    STAGE2:\n      NUM_CHANNELS: [18, 0]\n",
        None,
        &["MODEL.EXTRA.STAGE2.NUM_CHANNELS[1]"],
    );
    fails("MODEL:\n  SIGMA: -1.0\n", None, &["MODEL.SIGMA", "positive"]);
    fails("GPUS: ()\n", None, &["GPUS", "at least one"]);
    fails("TRAIN:\n  BEGIN_EPOCH: 10\n  END_EPOCH: 5\n", None, &["TRAIN.END_EPOCH"]);
    fails("MODEL:\n  NUM_JOINTS: 99999999999999999999999\n", None, &["MODEL.NUM_JOINTS"]);
}

#[test]
fn enumerated_values() {
    fails("TRAIN:\n  OPTIMIZER: 'Adam'\n", None, &["TRAIN.OPTIMIZER", "unknown optimizer 'Adam'"]);
    fails("TRAIN:\n  OPTIMIZER: rmsprop\n", None, &["TRAIN.OPTIMIZER", "rmsprop"]);
    fails("DATASET:\n  DATASET: 300VW\n", Some(2), &["DATASET.DATASET", "300VW"]);
    fails("MODEL:\n  EXTRA:\n    FINAL_CONV_KERNEL: 5\n", None, &["MODEL.EXTRA.FINAL_CONV_KERNEL"]);
    fails("TRAIN:\n  OPTIMIZER: sgd\n  NESTEROV: true\n", None, &["TRAIN.NESTEROV"]);
}

#[test]
fn syntax_errors_name_file_and_line() {
    let text = w18_with("  ROT_FACTOR: 30\n", "  ROT_FACTOR: [30\n");
    let msg = fails(&text, None, &["YAML syntax error"]);
    let reported: usize =
        msg.split(':').nth(1).and_then(|l| l.parse().ok()).unwrap_or_else(|| panic!("no line: {msg}"));
    assert!(reported >= line_of(&text, "ROT_FACTOR"), "{msg}");
    fails("MODEL:\n  NAME: 'hrnet\n", Some(2), &["YAML syntax error"]);
    fails("MODEL:\n  NUM_JOINTS: 68\n NAME: x\n", Some(3), &["YAML syntax error"]);
    fails("GPUS: (0,)\n---\nWORKERS: 2\n", None, &["YAML syntax error"]);
    fails("GPUS: !!python/tuple [0]\n", None, &["YAML syntax error", "tag"]);
}

#[test]
fn load_config_names_the_path() {
    let dir = common::scratch("config-test");
    let path = dir.join("broken.yaml");
    std::fs::write(&path, "MODEL:\n  NUM_JOINT: 68\n").unwrap();
    let msg = format!("{:#}", load_config(&path).unwrap_err());
    assert!(msg.starts_with(&format!("{}:2:", path.display())) && msg.contains("MODEL.NUM_JOINT"), "{msg}");
    std::fs::write(&path, b"GPUS: (0,)\nMODEL:\n  NAME: \xff\n").unwrap();
    let msg = format!("{:#}", load_config(&path).unwrap_err());
    assert!(msg.contains(&path.display().to_string()) && msg.contains("UTF-8") && !msg.contains('\n'), "{msg}");
    let missing = dir.join("missing.yaml");
    let msg = format!("{:#}", load_config(Path::new(&missing)).unwrap_err());
    assert!(msg.contains("missing.yaml") && !msg.contains('\n'), "{msg}");
}

/// A HEATMAP_SIZE that is not the model's output (IMAGE_SIZE / 4) used to fail only inside
/// training as `mse_loss: shape mismatch`.
#[test]
fn heatmap_size_must_match_the_model_output() {
    let text = w18_with("  HEATMAP_SIZE:\n    - 64\n    - 64\n", "  HEATMAP_SIZE:\n    - 25\n    - 24\n");
    // A block list is placed at its first item, as for the other list keys.
    let line = line_of(&text, "HEATMAP_SIZE") + 1;
    let msg = fails(&text, Some(line), &["MODEL.HEATMAP_SIZE", "[25, 24]", "[64, 64]", "MODEL.IMAGE_SIZE [256, 256]"]);
    assert!(msg.contains("does not match the model's output"), "{msg}");
    // Only IMAGE_SIZE changed: the default HEATMAP_SIZE (64) no longer fits, and the error says so.
    fails("MODEL:\n  IMAGE_SIZE: [96, 96]\n", None, &["MODEL.HEATMAP_SIZE", "[24, 24]"]);
    // Odd sizes round up as the stride-2 stem does.
    Config::from_yaml_str("MODEL:\n  IMAGE_SIZE: [98, 97]\n  HEATMAP_SIZE: [25, 25]\n", "ok.yaml").unwrap();
}

/// An alias bomb is refused with one complete sentence naming the file and the limit (it was
/// once cut mid-phrase: "… Nodes { nodes: 250001 } … (used").
#[test]
fn alias_bomb_refusal_is_one_sentence_naming_the_limit() {
    let mut text = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
    for i in 1..12 {
        let p = i - 1;
        text += &format!("a{i}: &a{i} [*a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}]\n");
    }
    let msg = err(&text);
    assert!(msg.contains("250000") && msg.contains("limit"), "{msg}");
    assert!(msg.ends_with('.') && !msg.contains("Nodes {") && !msg.contains("(used"), "{msg}");
}
