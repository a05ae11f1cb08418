//! End-to-end `hrk train` on a tiny config and a 20-image synthetic set in a temp folder:
//! loss falls, interrupted + resumed == uninterrupted bit for bit, final_state loads into a fresh
//! model, the Trainer's steps give what `train` gives, non-finite loss stops the run, CLI errors
//! are one line and non-zero.

use hrk::io::load_safetensors;
use hrk::train::{train, BatchProgress, TrainObserver, TrainOptions, Trainer};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

mod common;
use common::{hrk_cmd, scratch, Scratch};

/// The synthetic data, generated once per test process (20 images: 16 train, 4 test; a static is
/// never dropped, so the folder outlives the tests like the binary's other temp files).
fn data_dir() -> &'static Path {
    static DIR: OnceLock<Scratch> = OnceLock::new();
    DIR.get_or_init(|| {
        let d = scratch("train-e2e-data");
        hrk::synth::generate(&d, 68, 20, 7).unwrap();
        d
    })
}

fn stage(name: &str, branches: usize) -> String {
    let chans = [2, 4, 8, 16];
    let mut s = format!(
        "    {name}:\n      NUM_MODULES: 1\n      NUM_BRANCHES: {branches}\n      BLOCK: BASIC\n      NUM_BLOCKS:\n"
    );
    for _ in 0..branches {
        s.push_str("        - 1\n");
    }
    s.push_str("      NUM_CHANNELS:\n");
    for c in &chans[..branches] {
        s.push_str(&format!("        - {c}\n"));
    }
    s.push_str("      FUSE_METHOD: SUM\n");
    s
}

/// A tiny config (32×32 input, 8×8 heatmaps, channels [2,4,8,16], one block) writing to `out`.
fn write_config(dir: &Path, name: &str, out: &Path, lr: &str, epochs: usize, trainset: Option<&Path>) -> PathBuf {
    let data = data_dir();
    let q = |p: &Path| format!("'{}'", p.display());
    let train_csv = trainset.map(Path::to_path_buf).unwrap_or_else(|| data.join(hrk::synth::TRAIN_CSV));
    let mut y = format!(
        "OUTPUT_DIR: {}\nGPUS: (0,)\nWORKERS: 2\nPRINT_FREQ: 2\nDATASET:\n  DATASET: 300W\n  ROOT: {}\n  TRAINSET: {}\n  TESTSET: {}\n  FLIP: true\n  SCALE_FACTOR: 0.25\n  ROT_FACTOR: 30\n",
        q(out),
        q(data),
        q(&train_csv),
        q(&data.join(hrk::synth::TEST_CSV))
    );
    y.push_str("MODEL:\n  NAME: 'hrnet'\n  NUM_JOINTS: 68\n  INIT_WEIGHTS: false\n  PRETRAINED: ''\n  SIGMA: 1.0\n  IMAGE_SIZE:\n    - 32\n    - 32\n  HEATMAP_SIZE:\n    - 8\n    - 8\n  EXTRA:\n    FINAL_CONV_KERNEL: 1\n");
    y.push_str(&stage("STAGE2", 2));
    y.push_str(&stage("STAGE3", 3));
    y.push_str(&stage("STAGE4", 4));
    y.push_str(&format!(
        "TRAIN:\n  BATCH_SIZE_PER_GPU: 4\n  SHUFFLE: true\n  BEGIN_EPOCH: 0\n  END_EPOCH: {epochs}\n  RESUME: true\n  OPTIMIZER: 'adam'\n  LR: {lr}\n  WD: 0.0\n  LR_STEP: [1]\n  MOMENTUM: 0.0\n  NESTEROV: false\nTEST:\n  BATCH_SIZE_PER_GPU: 4\n"
    ));
    let path = dir.join(format!("{name}.yaml"));
    std::fs::write(&path, y).unwrap();
    path
}

fn opts(cfg: &Path) -> TrainOptions {
    let mut o = TrainOptions::new(cfg);
    o.seed = 3;
    o
}

fn assert_same_tensors(a: &Path, b: &Path) {
    let (ta, tb) = (load_safetensors(a).unwrap().tensors, load_safetensors(b).unwrap().tensors);
    assert_eq!(ta.len(), tb.len(), "{} vs {}", a.display(), b.display());
    for ((na, va), (nb, vb)) in ta.iter().zip(&tb) {
        assert_eq!(na, nb);
        assert_eq!(va.shape, vb.shape, "{na}");
        // Bit-exact: compare the f64 images of the values bitwise (f32 → f64 is injective).
        let (xa, xb) = (va.to_f64_vec(), vb.to_f64_vec());
        let diff = xa.iter().zip(&xb).filter(|(x, y)| x.to_bits() != y.to_bits()).count();
        assert_eq!(diff, 0, "tensor {na}: {diff} values differ between {} and {}", a.display(), b.display());
    }
}

#[test]
fn trains_and_resumes_bit_for_bit() {
    let dir = scratch("train-e2e-resume");
    // Uninterrupted: 2 epochs.
    let out_a = dir.join("out_a");
    let cfg_a = write_config(&dir, "tiny", &out_a, "0.002", 2, None);
    let a = train(&opts(&cfg_a)).unwrap();
    assert_eq!(a.epochs_run, 2);
    assert_eq!(a.history.len(), 2);
    let (l0, l1) = (a.history[0].train_loss, a.history[1].train_loss);
    assert!(l0.is_finite() && l1 < l0, "training loss did not fall: {l0} -> {l1}");
    // LR_STEP [1] with the reference's step-before-epoch: epoch 0 already runs at 0.1·LR.
    assert_eq!(a.history[0].lr, 0.002 * 0.1);
    let run_a = a.out_dir.clone();
    for f in [
        "checkpoint_0.safetensors",
        "checkpoint_1.safetensors",
        "latest.safetensors",
        "model_best.safetensors",
        "final_state.safetensors",
        "metrics.jsonl",
        "curves.png",
        "test_predictions.png",
        "current_pred.safetensors",
    ] {
        assert!(run_a.join(f).is_file(), "missing {f}");
    }
    assert_eq!(std::fs::read_to_string(run_a.join("metrics.jsonl")).unwrap().lines().count(), 2);
    let log = std::fs::read_to_string(&a.log_file).unwrap();
    assert!(log.contains("Epoch: [1][0/4]") && log.contains("Test Epoch 1"), "log lacks iteration/validation lines");

    // Interrupted after epoch 0, then resumed from latest for epoch 1 (same config name → same
    // folder layout; a different OUTPUT_DIR keeps the runs apart).
    let out_b = dir.join("out_b");
    let cfg_b = write_config(&dir, "tiny", &out_b, "0.002", 2, None);
    let mut o = opts(&cfg_b);
    o.stop_after_epochs = Some(1);
    let b1 = train(&o).unwrap();
    assert_eq!((b1.epochs_run, b1.final_state.is_none()), (1, true));
    let run_b = b1.out_dir.clone();
    assert!(!run_b.join("final_state.safetensors").exists());
    // A second interruption point: also check the first checkpoints agree already.
    assert_same_tensors(&run_a.join("checkpoint_0.safetensors"), &run_b.join("checkpoint_0.safetensors"));
    let b2 = train(&opts(&cfg_b)).unwrap();
    assert_eq!((b2.resumed_from, b2.epochs_run), (Some(1), 1));
    assert_same_tensors(&run_a.join("final_state.safetensors"), &run_b.join("final_state.safetensors"));
    assert_same_tensors(&run_a.join("checkpoint_1.safetensors"), &run_b.join("checkpoint_1.safetensors"));
    assert_eq!(a.history[1].nme, b2.history[1].nme);
    assert_eq!(std::fs::read_to_string(run_b.join("metrics.jsonl")).unwrap().lines().count(), 2);

    // final_state holds the reference's state_dict names and loads strictly into a fresh model.
    let cfg = hrk::config::Config::load(&cfg_a).unwrap();
    let mut fresh = hrk::cli::common::model(&cfg, 99).unwrap();
    hrk::cli::common::load_weights(&mut fresh, &run_a.join("final_state.safetensors")).unwrap();
    let saved = load_safetensors(&run_a.join("final_state.safetensors")).unwrap().tensors;
    let names: Vec<String> = fresh.store.state_dict().into_iter().map(|(n, _)| n).collect();
    assert_eq!(names, saved.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>());
    assert!(names.iter().any(|n| n == "head.3.weight") && names.iter().any(|n| n.ends_with("num_batches_tracked")));
    for ((n, h), (_, s)) in fresh.store.state_dict().iter().zip(&saved) {
        assert_eq!(h.to_f64_vec(), s.to_f64_vec(), "{n}");
    }
}

/// Counts what a run reports to its observer.
#[derive(Default)]
struct Seen {
    messages: Vec<String>,
    epochs_started: Vec<(usize, usize)>,
    batches: usize,
    epochs_finished: usize,
}

struct Recorder(Arc<Mutex<Seen>>);

impl TrainObserver for Recorder {
    fn message(&mut self, text: &str) {
        self.0.lock().unwrap().messages.push(text.to_string());
    }
    fn epoch_started(&mut self, epoch: usize, batches: usize) {
        self.0.lock().unwrap().epochs_started.push((epoch, batches));
    }
    fn batch_done(&mut self, progress: &BatchProgress) {
        assert!(progress.mean_loss.is_finite() && progress.iteration < progress.batches);
        self.0.lock().unwrap().batches += 1;
    }
    fn epoch_finished(&mut self, _epoch: usize) {
        self.0.lock().unwrap().epochs_finished += 1;
    }
}

#[test]
fn trainer_steps_match_train_and_report_progress() {
    let dir = scratch("train-e2e-steps");
    let cfg_whole = write_config(&dir, "tiny", &dir.join("whole"), "0.002", 1, None);
    let whole = train(&opts(&cfg_whole)).unwrap();

    let cfg_steps = write_config(&dir, "tiny", &dir.join("steps"), "0.002", 1, None);
    let seen = Arc::new(Mutex::new(Seen::default()));
    let mut trainer = Trainer::setup(&opts(&cfg_steps), Box::new(Recorder(seen.clone()))).unwrap();
    assert_eq!(trainer.resume().unwrap(), None);
    assert_eq!(trainer.start_epoch(), 0);
    let trained = trainer.run_epoch(0).unwrap();
    let validation = trainer.validate(0).unwrap();
    assert!(trainer.checkpoint(0, trained.lr, &validation).unwrap(), "the first epoch is the best so far");
    assert!(trainer.resume().is_err(), "resume after an epoch must be refused");
    let steps = trainer.finish().unwrap();

    assert_eq!(trained.loss, whole.history[0].train_loss);
    assert_eq!(validation.summary.nme, whole.history[0].nme);
    for f in ["checkpoint_0.safetensors", "final_state.safetensors"] {
        assert_same_tensors(&whole.out_dir.join(f), &steps.out_dir.join(f));
    }
    let seen = seen.lock().unwrap();
    assert_eq!(seen.epochs_started, vec![(0, 4)]);
    assert_eq!((seen.batches, seen.epochs_finished), (4, 1));
    assert!(seen.messages.iter().any(|m| m.starts_with("Test Epoch 0 ")), "{:?}", seen.messages);
}

#[test]
fn non_finite_loss_stops_with_epoch_and_iteration() {
    let dir = scratch("train-e2e-nan");
    let cfg = write_config(&dir, "boom", &dir.join("out"), "1.0e+30", 2, None);
    let err = train(&opts(&cfg)).unwrap_err();
    let msg = format!("{err:#}");
    assert!(msg.contains("non-finite training loss") && msg.contains("epoch 0, iteration"), "{msg}");
    assert!(!msg.contains('\n'), "message must be one line: {msg}");
}

fn run_cli(args: &[&str]) -> (i32, String) {
    let out = hrk_cmd().args(args).output().unwrap();
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stderr).into_owned())
}

fn assert_one_line_error(args: &[&str], needle: &str) {
    let (code, err) = run_cli(args);
    assert_ne!(code, 0, "{args:?} succeeded");
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "expected one error line, got: {err}");
    assert!(lines[0].contains(needle), "error `{}` lacks `{needle}`", lines[0]);
}

#[test]
fn cli_errors_are_one_line() {
    let dir = scratch("train-e2e-cli");
    let missing = dir.join("nope.yaml");
    assert_one_line_error(&["train", "--cfg", missing.to_str().unwrap(), "--quiet"], "nope.yaml");

    let bad_key = dir.join("bad_key.yaml");
    std::fs::write(&bad_key, "GPUS: (0,)\nTRAIN:\n  LR_STEPS: [1]\n").unwrap();
    assert_one_line_error(&["train", "--cfg", bad_key.to_str().unwrap(), "--quiet"], "LR_STEPS");

    let absent = dir.join("absent_train.csv");
    let cfg = write_config(&dir, "nodata", &dir.join("out"), "0.001", 1, Some(&absent));
    assert_one_line_error(&["train", "--cfg", cfg.to_str().unwrap(), "--quiet"], "absent_train.csv");
}

/// A real interruption: the binary is killed as soon as its first `latest` checkpoint exists (wherever it
/// is by then), then resumed in a new process; the final weights equal those of an uninterrupted
/// run in another process bit for bit (so nothing depends on in-process state or allocation).
#[test]
fn killed_process_resumes_bit_for_bit() {
    let dir = scratch("train-e2e-kill");
    let cfg_a = write_config(&dir.join(""), "tiny_kill", &dir.join("out_a"), "0.002", 2, None);
    let base = ["--seed", "5", "--threads", "2", "--quiet"];
    let run = |cfg: &Path| {
        let st = hrk_cmd().args(["train", "--cfg", cfg.to_str().unwrap()]).args(base).status().unwrap();
        assert!(st.success());
    };
    run(&cfg_a);
    let sub_b = dir.join("b");
    std::fs::create_dir_all(&sub_b).unwrap();
    let cfg_b = write_config(&sub_b, "tiny_kill", &dir.join("out_b"), "0.002", 2, None);
    let run_b = dir.join("out_b/300W/tiny_kill");
    let mut child = hrk_cmd().args(["train", "--cfg", cfg_b.to_str().unwrap()]).args(base).spawn().unwrap();
    let t = std::time::Instant::now();
    while !run_b.join("latest.safetensors").exists() && t.elapsed().as_secs() < 60 {
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(run_b.join("latest.safetensors").is_file(), "no checkpoint before the kill");
    run(&cfg_b);
    assert_same_tensors(
        &dir.join("out_a/300W/tiny_kill/final_state.safetensors"),
        &run_b.join("final_state.safetensors"),
    );
}

/// The events file of a 2-epoch run read back by TensorBoard's own reader (tests/python/read_tfevents.py,
/// skipped with a printed reason without a python that has `tensorboard`): the reference's writer_dict
/// tags plus learning rate and img/s, with their steps and values.
#[test]
fn tensorboard_reads_the_events_file() {
    let dir = scratch("train-e2e-tb");
    let out = dir.join("out");
    let cfg = write_config(&dir, "tiny", &out, "0.002", 2, None);
    let run = train(&opts(&cfg)).unwrap();
    let events: Vec<_> = std::fs::read_dir(&run.out_dir)
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with("events.out.tfevents."))
        .collect();
    assert_eq!(events.len(), 1, "one events file in {}", run.out_dir.display());
    let Some(python) = common::python_with("tensorboard") else { return };
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/read_tfevents.py");
    let res = std::process::Command::new(python).arg(script).arg(&run.out_dir).output().unwrap();
    assert!(res.status.success(), "{}", String::from_utf8_lossy(&res.stderr));
    let stdout = String::from_utf8_lossy(&res.stdout);
    eprintln!("{stdout}");
    let tags: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    let series = |tag: &str| -> Vec<(i64, f64)> {
        let v = tags[tag].as_array().unwrap_or_else(|| panic!("no scalar tag {tag}: {tags}"));
        v.iter().map(|p| (p[0].as_i64().unwrap(), p[1].as_f64().unwrap())).collect()
    };
    // 16 training images in batches of 4: 4 iterations per epoch, logged at PRINT_FREQ 2 (0 and 2).
    let train_loss = series("train_loss");
    assert_eq!(train_loss.iter().map(|p| p.0).collect::<Vec<_>>(), [0, 2, 4, 6]);
    assert!(train_loss.iter().all(|p| p.1.is_finite() && p.1 > 0.0));
    let f32_eq = |got: f64, want: f64| (got - want).abs() <= 1e-6 * want.abs().max(1e-30);
    for (tag, want) in [
        ("valid_loss", run.history.iter().map(|m| m.val_loss).collect::<Vec<_>>()),
        ("valid_nme", run.history.iter().map(|m| m.nme).collect()),
        ("learning_rate", run.history.iter().map(|m| m.lr).collect()),
    ] {
        let got = series(tag);
        assert_eq!(got.iter().map(|p| p.0).collect::<Vec<_>>(), [0, 1], "{tag} steps");
        for (g, w) in got.iter().zip(&want) {
            assert!(f32_eq(g.1, *w), "{tag}: {} vs metrics {w}", g.1);
        }
    }
    let ips = series("img_per_s");
    assert_eq!(ips.len(), 2);
    assert!(ips.iter().all(|p| p.1 > 0.0 && p.1.is_finite()));
}
