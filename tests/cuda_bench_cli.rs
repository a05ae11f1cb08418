//! `hrk bench --device emu` on a tiny config: inference with graphs on and off and a training step report
//! timings, the allocator's figures and graph counts; an emulated device that holds the model but not the work makes
//! inference and training fail with one `hrk: error:` line naming the out-of-memory request.
use std::process::Output;

mod common;
use common::model::tiny_config;
use common::{hrk_cmd, s, scratch};

fn bench(cfg: &std::path::Path, extra: &[&str], env: &[(&str, &str)]) -> Output {
    let mut c = hrk_cmd();
    c.args(["bench", "--cfg", s(cfg), "--device", "emu", "--batch", "2", "--iters", "2", "--warmup", "1"]);
    c.args(extra).env_remove("HRK_DEVICE_EMU").env_remove("HRK_EMU_DEVICE_MEMORY").env_remove("HRK_CUDA_GRAPHS");
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().expect("run hrk")
}

/// The value of `key=` on the `bench-result` line.
fn field(stdout: &str, key: &str) -> String {
    let line = stdout.lines().find(|l| l.starts_with("bench-result ")).unwrap_or_else(|| panic!("{stdout}"));
    line.split(' ').find_map(|kv| kv.strip_prefix(&format!("{key}="))).unwrap_or_else(|| panic!("{line}")).to_string()
}

#[test]
fn bench_on_the_emulated_gpu_reports_memory_and_graphs_and_oom_is_one_line() {
    let dir = scratch("bench-emu");
    let cfg = dir.join("tiny.yaml");
    std::fs::write(&cfg, tiny_config(&dir, 5, 32, 8, "test.csv")).unwrap();

    let mut peaks = Vec::new();
    for graphs in ["on", "off"] {
        let o = bench(&cfg, &["--graphs", graphs], &[]);
        let out = String::from_utf8_lossy(&o.stdout);
        assert!(o.status.success(), "{out}\n{}", String::from_utf8_lossy(&o.stderr));
        assert_eq!(field(&out, "graphs"), graphs);
        assert!(out.contains("GPU memory: in use"), "{out}");
        let captured = if graphs == "on" { "1 captured" } else { "0 captured" };
        assert!(out.contains(&format!("CUDA graphs: {captured}")), "{out}");
        let frag: f64 = field(&out, "fragmentation").parse().unwrap();
        assert!((0.0..=1.0).contains(&frag), "{out}");
        let (in_use, reserved): (u64, u64) =
            (field(&out, "peak_in_use_bytes").parse().unwrap(), field(&out, "peak_reserved_bytes").parse().unwrap());
        assert!(in_use > 0 && reserved >= in_use, "{out}");
        if graphs == "on" {
            peaks.push((vec!["--graphs", "on"], out.to_string()));
        }
    }
    let o = bench(&cfg, &["--train"], &[]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{out}\n{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(field(&out, "mode"), "train");
    peaks.push((vec!["--train"], out.to_string()));

    // Room for the model and half of what the work needs on top of it: the failure comes mid-work.
    for (extra, out) in peaks {
        let (model, peak): (usize, usize) =
            (field(&out, "model_bytes").parse().unwrap(), field(&out, "peak_in_use_bytes").parse().unwrap());
        assert!(peak > model && model > 0, "{out}");
        let cap = model + (peak - model) / 2;
        let o = bench(&cfg, &extra, &[("HRK_EMU_DEVICE_MEMORY", &cap.to_string())]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "{extra:?} ran in {cap} bytes");
        let lines: Vec<&str> = err.lines().filter(|l| l.starts_with("hrk: error:")).collect();
        assert_eq!(lines.len(), 1, "{extra:?}: {err}");
        assert!(lines[0].contains("CUDA out of memory") && lines[0].contains("in use"), "{extra:?}: {err}");
        assert!(!err.contains("panicked"), "{err}");
    }
}
