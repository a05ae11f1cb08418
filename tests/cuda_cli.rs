//! `hrk predict --device emu` (the CUDA kernels under the host emulator) runs the BN-folded GPU
//! inference path and gives the CPU's landmarks; an emulated device that runs out of memory
//! (HRK_EMU_DEVICE_MEMORY) makes the command fail with one line, not a panic.
use std::path::Path;
use std::process::Output;

mod common;
use common::model::{tiny_config, write_tiny_model};
use common::{hrk_cmd, s, scratch};

fn hrk_env(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut c = hrk_cmd();
    c.args(args).env_remove("HRK_DEVICE_EMU").env_remove("HRK_EMU_DEVICE_MEMORY").env_remove("HRK_GPU_INFER");
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().expect("run hrk")
}

fn landmarks(out: &Path) -> Vec<f64> {
    let doc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("s68_000000.json")).unwrap()).unwrap();
    doc["faces"][0]["landmarks"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| [p[0].as_f64().unwrap(), p[1].as_f64().unwrap()])
        .collect()
}

#[test]
fn predict_on_the_emulated_gpu_matches_cpu_and_oom_is_one_line() {
    let dir = scratch("cuda_cli-predict");
    hrk::synth::generate(&dir, 68, 3, 5).unwrap();
    let (cfg, weights) = write_tiny_model(&dir, &tiny_config(&dir, 68, 64, 16, hrk::synth::TEST_CSV), 3);
    let img = dir.join("images/s68_000000.jpg");
    let run = |device: &str, out: &str, env: &[(&str, &str)]| {
        hrk_env(
            &[
                "predict",
                "--cfg",
                s(&cfg),
                "--model-file",
                s(&weights),
                s(&img),
                "--detector",
                "none",
                "--device",
                device,
                "--out",
                s(&dir.join(out)),
            ],
            env,
        )
    };
    let o = run("cpu", "cpu", &[]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let t0 = std::time::Instant::now();
    let o = run("emu", "emu", &[]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    eprintln!("predict on the emulated gpu: {:.1}s", t0.elapsed().as_secs_f64());
    let (cpu, emu) = (landmarks(&dir.join("cpu")), landmarks(&dir.join("emu")));
    assert_eq!(cpu.len(), 136);
    // Sub-pixel refinement can flip on a near-tie between f32 summation orders: allow a quarter pixel
    // of heatmap (4 image pixels at this 4x scale) but require most points to agree exactly.
    let same = cpu.iter().zip(&emu).filter(|(a, b)| (*a - *b).abs() < 1e-3).count();
    assert!(cpu.iter().zip(&emu).all(|(a, b)| (a - b).abs() <= 4.0), "cpu {cpu:?}\nemu {emu:?}");
    assert!(same * 10 >= cpu.len() * 9, "only {same} of {} coordinates agree", cpu.len());

    let o = run("emu", "oom", &[("HRK_EMU_DEVICE_MEMORY", "256K")]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "ran within 256 KiB of emulated device memory");
    assert!(err.contains("CUDA out of memory") && !err.contains("panicked"), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "not one line: {err}");
}
