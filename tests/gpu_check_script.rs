//! `benches/gpu_check.sh`, the lent-GPU check: `--device --dry-run` lists every device step in order, each a
//! carried executable (no cargo, nothing built there), and runs none; `--prepare` fills `target/gpu-carry/` within
//! its size limit, with a manifest that matches the files.
//!
//! `--prepare` builds the whole crate in its own Cargo profile (minutes on a 2-core machine), so this test runs it
//! only with HRK_GPU_CHECK_PREPARE=1; otherwise it checks the carry a previous `--prepare` left, and skips (with the
//! reason printed) when there is none.
mod common;

use std::path::Path;
use std::process::Command;

const CARRY_LIMIT_BYTES: u64 = 48 << 20;

#[test]
fn gpu_check_device_dry_run_lists_every_step_without_cargo() {
    let out = common::scratch("gpu-check");
    let report = out.join("report");
    let root = env!("CARGO_MANIFEST_DIR");
    let run = Command::new("bash")
        .args([&format!("{root}/benches/gpu_check.sh"), "--device", "--dry-run"])
        .env("OUT", &report)
        .output()
        .expect("running bash");
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(run.status.success(), "dry run failed:\n{stdout}\n{}", String::from_utf8_lossy(&run.stderr));

    let steps: Vec<(&str, &str)> = stdout
        .lines()
        .filter_map(|l| l.strip_prefix("[dry-run] "))
        .map(|l| l.split_once(": ").unwrap_or_else(|| panic!("no command in {l:?}")))
        .collect();
    // Most information per second first: the carry, the driver, PTX loading, the mma probes, the convs, the
    // whole-model checks; then the timings and PyTorch.
    let order = [
        "manifest",
        "nvidia-smi",
        "ptx-load",
        "mma-probes",
        "conv-tf32-bf16",
        "ops-tiny-model",
        "w18-infer-train",
        "tiny-model-tf32",
        "infer-b1-graphs",
        "infer-b1-eager",
        "infer-b64-graphs",
        "infer-b64-eager",
        "train-b16-graphs",
        "train-b16-eager",
        "train-b64-graphs",
        "train-b64-eager",
        "kernels",
        "pytorch",
    ];
    let names: Vec<&str> = steps.iter().map(|(head, _)| head.split(" (").next().unwrap()).collect();
    assert_eq!(names, order, "{stdout}");
    for (head, command) in &steps {
        assert!(head.contains("(timeout "), "{head}: no timeout");
        assert!(!command.contains("cargo"), "{head} runs cargo on the device: {command}");
    }
    let command_of = |name: &str| steps.iter().find(|(h, _)| h.starts_with(&format!("{name} ("))).unwrap().1;
    assert_eq!(command_of("ptx-load"), "target/gpu-carry/bin/device_check cuda_ptx --nocapture");
    assert_eq!(command_of("mma-probes"), "target/gpu-carry/bin/device_check cuda_mma --nocapture");
    assert_eq!(command_of("conv-tf32-bf16"), "target/gpu-carry/bin/device_check cuda_conv --nocapture");
    assert_eq!(command_of("w18-infer-train"), "target/gpu-carry/bin/cuda_graphs cuda_ --nocapture");
    assert_eq!(
        command_of("infer-b1-graphs"),
        "target/gpu-carry/bin/hrk bench --cfg target/gpu-carry/cfg/face_alignment_wflw_hrnet_w18.yaml --device cuda \
         --batch 1 --iters 50 --warmup 3 --graphs on"
    );
    assert!(command_of("train-b64-eager").ends_with("--batch 64 --train --iters 5 --warmup 2 --graphs off"));
    assert_eq!(command_of("kernels"), "env HRK_BENCH_RUNGS=cuda target/gpu-carry/bin/kernels");
    assert!(command_of("pytorch").ends_with("torch_bench.py target/gpu-carry/shared/reference-py"));
    // Ran none: no report, not even its folder.
    assert!(!report.exists(), "a dry run wrote {}", report.display());
    // Every executable a step runs is one --prepare carries (the list the manifest test below checks).
    for (head, command) in &steps {
        if let Some(exe) = command.split_whitespace().find_map(|w| w.strip_prefix("target/gpu-carry/bin/")) {
            assert!(CARRIED_EXECUTABLES.contains(&exe), "{head} runs {exe}, which --prepare does not carry");
        }
    }
}

const CARRIED_EXECUTABLES: [&str; 5] = ["hrk", "device_check", "device_parity", "cuda_graphs", "kernels"];

#[test]
fn gpu_check_prepare_fills_the_carry_within_its_limit() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let carry = root.join("target/gpu-carry");
    if std::env::var("HRK_GPU_CHECK_PREPARE").is_ok_and(|v| v == "1") {
        let run = Command::new("bash")
            .arg(root.join("benches/gpu_check.sh"))
            .arg("--prepare")
            .output()
            .expect("running bash");
        let stdout = String::from_utf8_lossy(&run.stdout);
        assert!(run.status.success(), "--prepare failed:\n{stdout}\n{}", String::from_utf8_lossy(&run.stderr));
        // The device call it prints: the command and the carry list.
        assert!(stdout.contains("command:   bash target/gpu-carry/gpu_check.sh --device"), "{stdout}");
        assert!(stdout.contains("carry:     [\"target/gpu-carry\"]"), "{stdout}");
    } else if !carry.join("manifest.tsv").is_file() {
        eprintln!(
            "skipped: no target/gpu-carry/manifest.tsv (run `bash benches/gpu_check.sh --prepare`, or set \
             HRK_GPU_CHECK_PREPARE=1 to have this test run it)"
        );
        return;
    }

    let manifest = std::fs::read_to_string(carry.join("manifest.tsv")).unwrap();
    let mut total = 0u64;
    let mut listed = Vec::new();
    for line in manifest.lines() {
        let fields: Vec<&str> = line.split('\t').collect();
        let [path, bytes, sha256] = fields[..] else { panic!("manifest line {line:?}: want path, bytes, sha256") };
        let file = carry.join(path);
        let size = std::fs::metadata(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display())).len();
        assert_eq!(size.to_string(), bytes, "{path}: size");
        let sum = Command::new("sha256sum").arg(&file).output().expect("sha256sum");
        assert!(String::from_utf8_lossy(&sum.stdout).starts_with(sha256), "{path}: sha256");
        total += size;
        listed.push(path.to_string());
    }
    assert!(total <= CARRY_LIMIT_BYTES, "the carry is {total} bytes, over 48 MiB");
    let mut required: Vec<String> = CARRIED_EXECUTABLES.iter().map(|e| format!("bin/{e}")).collect();
    required.extend(["gpu_check.sh", "commit.txt", "cfg/face_alignment_wflw_hrnet_w18.yaml"].map(String::from));
    for path in &required {
        assert!(listed.contains(path), "{path} not in the manifest");
    }
    // Stripped: no debug sections (the release profile's debug info would put the binary near 100 MB).
    for exe in CARRIED_EXECUTABLES {
        let bytes = std::fs::read(carry.join("bin").join(exe)).unwrap();
        let sections = elf_section_names(&bytes);
        assert!(sections.iter().any(|n| n == ".text"), "bin/{exe}: sections {sections:?}");
        // (.debug_gdb_scripts is a loaded section rustc adds; strip keeps it.)
        let debug: Vec<&String> =
            sections.iter().filter(|n| n.starts_with(".debug_info") || n.starts_with(".debug_line")).collect();
        assert!(debug.is_empty(), "bin/{exe} carries debug sections {debug:?}");
        // Built without the `video` feature: the GPU machine has no FFmpeg libraries to load.
        for lib in ["libavformat.so", "libavcodec.so", "libswscale.so", "libavutil.so"] {
            assert!(!bytes.windows(lib.len()).any(|w| w == lib.as_bytes()), "bin/{exe} needs {lib}");
        }
    }
    eprintln!("carry: {} files, {:.1} MiB", listed.len(), total as f64 / (1 << 20) as f64);
}

/// The section names of a little-endian ELF64 file (from its section headers and their string table).
fn elf_section_names(elf: &[u8]) -> Vec<String> {
    assert!(elf.starts_with(b"\x7fELF\x02\x01"), "not a little-endian ELF64 file");
    let u16_at = |at: usize| u16::from_le_bytes(elf[at..at + 2].try_into().unwrap()) as usize;
    let u32_at = |at: usize| u32::from_le_bytes(elf[at..at + 4].try_into().unwrap()) as usize;
    let u64_at = |at: usize| u64::from_le_bytes(elf[at..at + 8].try_into().unwrap()) as usize;
    let (table, entry, count, names) = (u64_at(0x28), u16_at(0x3a), u16_at(0x3c), u16_at(0x3e));
    let strings = u64_at(table + names * entry + 0x18);
    (0..count)
        .map(|i| {
            let name = &elf[strings + u32_at(table + i * entry)..];
            String::from_utf8_lossy(&name[..name.iter().position(|&b| b == 0).unwrap()]).into_owned()
        })
        .collect()
}
