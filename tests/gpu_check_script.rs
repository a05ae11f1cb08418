//! `benches/gpu_check.sh --dry-run` on a machine without a GPU: it walks every step, prints each step's
//! exact command and whether it needs the device, runs nothing that does (and, with --skip-build, not
//! the build either), writes its markdown and JSON report under $OUT, and exits 0.
mod common;

use std::process::Command;

#[test]
fn gpu_check_dry_run_walks_every_step_and_writes_its_report() {
    let out = common::scratch("gpu-check");
    let root = env!("CARGO_MANIFEST_DIR");
    let run = Command::new("bash")
        .args([&format!("{root}/benches/gpu_check.sh"), "--dry-run", "--skip-build"])
        .env("OUT", out.path())
        .output()
        .expect("running bash");
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(run.status.success(), "dry run failed:\n{stdout}\n{}", String::from_utf8_lossy(&run.stderr));

    let steps = [
        ("nvidia-smi", true),
        ("build", false),
        ("cuda-tests", true),
        ("infer-b1-graphs", true),
        ("infer-b1-eager", true),
        ("infer-b64-graphs", true),
        ("infer-b64-eager", true),
        ("train-b16-graphs", true),
        ("train-b16-eager", true),
        ("train-b64-graphs", true),
        ("train-b64-eager", true),
        ("kernels", true),
        ("pytorch", true),
    ];
    for (name, needs_device) in steps {
        let line = stdout
            .lines()
            .find(|l| l.starts_with(&format!("[dry-run] {name} (")))
            .unwrap_or_else(|| panic!("step {name} not announced:\n{stdout}"));
        let where_ = if needs_device { "needs the device" } else { "runs here" };
        assert!(line.contains(where_), "{line}");
    }
    // The exact commands: the bench rungs with and without graphs, the training batches, the CUDA tests.
    for cmd in [
        "hrk bench --cfg experiments/wflw/face_alignment_wflw_hrnet_w18.yaml --device cuda --batch 1 --iters 50 --warmup 3 --graphs on",
        "--batch 64 --iters 10 --warmup 2 --graphs off",
        "--batch 16 --train --iters 5 --warmup 2 --graphs on",
        "--batch 64 --train --iters 5 --warmup 2 --graphs off",
        "bash -c 'cargo test --release --test device_parity cuda_ -- --nocapture && ",
        "HRK_BENCH_RUNGS=cuda cargo bench --bench kernels",
    ] {
        assert!(stdout.contains(cmd), "no {cmd:?} in:\n{stdout}");
    }

    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("gpu_check.json")).unwrap()).unwrap();
    assert_eq!(json["dry_run"], true);
    let recorded = json["steps"].as_array().unwrap();
    assert!(recorded.len() >= steps.len(), "{json}");
    for s in recorded {
        assert_eq!(s["status"], "not run (dry run)", "{s}");
    }
    let md = std::fs::read_to_string(out.join("gpu_check.md")).unwrap();
    assert!(md.contains("| nvidia-smi | needs the device | not run (dry run) |"), "{md}");
}
