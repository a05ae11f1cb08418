//! Crash safety of `hrk train`: the run is killed with SIGKILL at random moments (and at the
//! moment a checkpoint temp file appears, i.e. during a checkpoint write), resumed with
//! TRAIN.RESUME true, killed again, ... until it finishes. After every kill every
//! `.safetensors` in the output folder must load (never a torn file) and `latest` must be a
//! training checkpoint; the final weights must be bit-identical to an uninterrupted run
//! (CPU, one thread, same seed).
//!
//! Skips (with a message) while `hrk train` is the CLI stub. HRK_CRASH_SEED picks the kill
//! schedule, HRK_CRASH_KILLS the number of kills (default 6).

mod common;

use common::{hrk_cmd, scratch};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const TINY_YAML: &str = include_str!("../experiments/synthetic/synthetic_hrnet_tiny.yaml");

/// The tiny synthetic config, smaller and shorter: 64×64 input, 3 epochs, batch 4, resumable.
fn config(dir: &Path, name: &str) -> PathBuf {
    let text = TINY_YAML
        .replace("  IMAGE_SIZE:\n    - 128\n    - 128", "  IMAGE_SIZE:\n    - 64\n    - 64")
        .replace("  HEATMAP_SIZE:\n    - 32\n    - 32", "  HEATMAP_SIZE:\n    - 16\n    - 16")
        .replace("  END_EPOCH: 8", "  END_EPOCH: 3")
        .replace("  LR_STEP: [6]", "  LR_STEP: [2]")
        .replace("  RESUME: false", "  RESUME: true")
        .replace("BATCH_SIZE_PER_GPU: 16", "BATCH_SIZE_PER_GPU: 4")
        .replace("WORKERS: 2", "WORKERS: 0");
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

fn train_cmd(dir: &Path, cfg: &Path) -> Command {
    let mut c = hrk_cmd();
    c.args(["train", "--cfg", cfg.to_str().unwrap(), "--threads", "1", "--seed", "5", "--quiet"]).current_dir(dir);
    c
}

/// Every weights file in `out` loads; `latest` (if any) carries the checkpoint metadata.
fn assert_not_corrupt(out: &Path, when: &str) {
    let Ok(rd) = std::fs::read_dir(out) else { return };
    for e in rd {
        let p = e.unwrap().path();
        let name = p.file_name().unwrap().to_string_lossy().into_owned();
        if name.starts_with('.') || !name.ends_with(".safetensors") {
            continue; // temp files of a killed write are not results
        }
        let bytes = std::fs::read(&p).unwrap();
        let st = hrk::io::read_safetensors_bytes(&bytes)
            .unwrap_or_else(|e| panic!("{when}: {} is corrupt: {e:#}", p.display()));
        assert!(!st.tensors.is_empty(), "{when}: {} is empty", p.display());
        if name == "latest.safetensors" || name.starts_with("checkpoint_") {
            assert!(
                st.metadata.iter().any(|(k, _)| k == "hrk_checkpoint"),
                "{when}: {} lacks checkpoint metadata",
                p.display()
            );
        }
    }
}

fn has_temp_file(out: &Path) -> bool {
    std::fs::read_dir(out)
        .map(|rd| rd.flatten().any(|e| e.file_name().to_string_lossy().ends_with(".tmp")))
        .unwrap_or(false)
}

fn final_weights(out: &Path) -> Vec<(String, Vec<u64>)> {
    let p = out.join("final_state.safetensors");
    hrk::io::load_state_dict(&p)
        .unwrap_or_else(|e| panic!("{e:#}"))
        .into_iter()
        .map(|(k, t)| (k, t.to_f64_vec().iter().map(|v| v.to_bits()).collect()))
        .collect()
}

fn find_output(dir: &Path, cfg_name: &str) -> PathBuf {
    let cfg = hrk::config::load_config(&dir.join(cfg_name)).unwrap();
    dir.join(cfg.output_dir_for(Path::new(cfg_name)))
}

#[test]
fn sigkill_during_training_never_corrupts_and_resume_matches() {
    let dir = scratch("hostile-crash");
    // Is `hrk train` implemented in this build (the stub has no --stop-after-epochs)?
    let help = hrk_cmd().args(["train", "--help"]).output().unwrap();
    if !String::from_utf8_lossy(&help.stdout).contains("--stop-after-epochs") {
        eprintln!("skipped: hrk train is the CLI stub in this build");
        return;
    }
    let synth = hrk_cmd()
        .args(["synth", "--out", "data/synthetic", "--count", "16", "--seed", "3"])
        .current_dir(&dir)
        .output()
        .unwrap();
    assert!(synth.status.success(), "synth: {}", String::from_utf8_lossy(&synth.stderr));

    // Uninterrupted reference.
    let ref_cfg = config(&dir, "reference.yaml");
    let t0 = Instant::now();
    let r = train_cmd(&dir, &ref_cfg).stdout(Stdio::null()).output().unwrap();
    assert!(r.status.success(), "reference run: {}", String::from_utf8_lossy(&r.stderr));
    let full = t0.elapsed();
    let ref_out = find_output(&dir, "reference.yaml");
    let reference = final_weights(&ref_out);

    // Killed and resumed.
    let crash_cfg = config(&dir, "crashed.yaml");
    let crash_out = find_output(&dir, "crashed.yaml");
    let kills = common::crash_kills();
    let mut rng = common::rng(common::crash_seed());
    let mut next = move || rng.next_u64();
    let (mut killed, mut during_write, mut finished) = (0usize, 0usize, false);
    // Kill moments are fractions of the reference run's time; when the machine speeds up and a run
    // finishes before it was killed twice, start over from scratch killing sooner.
    let mut scale = 1.0;
    for attempt in 0..kills + 8 {
        if killed >= kills {
            break;
        }
        let mut child = train_cmd(&dir, &crash_cfg).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
        let started = Instant::now();
        // Odd attempts: kill as soon as a checkpoint temp file shows up (mid-write);
        // even ones: at a random moment of the expected run time.
        let deadline = if attempt % 2 == 0 {
            full.mul_f64(scale * (0.1 + 0.6 * (next() % 1000) as f64 / 1000.0))
        } else {
            full * 2
        };
        let mut exited = None;
        loop {
            if let Some(st) = child.try_wait().unwrap() {
                exited = Some(st);
                break;
            }
            let writing = attempt % 2 == 1 && has_temp_file(&crash_out);
            if writing || started.elapsed() >= deadline {
                child.kill().unwrap(); // SIGKILL
                child.wait().unwrap();
                killed += 1;
                during_write += writing as usize;
                break;
            }
            std::thread::sleep(Duration::from_micros(300));
        }
        assert_not_corrupt(&crash_out, &format!("after kill #{attempt}"));
        if let Some(st) = exited {
            assert!(st.success(), "attempt {attempt}: training failed on its own ({st:?})");
            if killed >= 2 {
                finished = true;
                break;
            }
            std::fs::remove_dir_all(&crash_out).unwrap();
            (killed, during_write, scale) = (0, 0, scale * 0.5);
        }
    }
    if !finished {
        let r = train_cmd(&dir, &crash_cfg).stdout(Stdio::null()).output().unwrap();
        assert!(r.status.success(), "final resume: {}", String::from_utf8_lossy(&r.stderr));
    }
    assert_not_corrupt(&crash_out, "at the end");
    eprintln!("crash test: {killed} kills ({during_write} during a checkpoint write), reference run {full:?}");
    assert!(killed >= 2, "the crash test killed the run only {killed} times: it proved nothing");
    let resumed = final_weights(&crash_out);
    assert_eq!(resumed.len(), reference.len());
    for ((ka, va), (kb, vb)) in reference.iter().zip(&resumed) {
        assert_eq!(ka, kb);
        assert!(va == vb, "tensor `{ka}` differs between the uninterrupted and the killed+resumed run");
    }
}
