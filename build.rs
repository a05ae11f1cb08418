//! Build script: (1) compiles every kernels/*.cu to PTX with nvcc and assembles each PTX with ptxas for
//! sm_80 and sm_90 as a hard check (a register spill in any kernel fails the build too), embedding the PTX
//! through a generated .rs; (2) compiles the same .cu files as host C++ (kernels/emu.h) into a static
//! library for the CPU emulator used by the tests; (3) compiles the small C driver probe (src/cuda/probe.c).
//!
//! Env: HRK_NVCC (nvcc path), CUDA_HOME / CUDA_PATH, HRK_CUDA_ARCH (default compute_80; never probed from
//! nvidia-smi), HRK_REQUIRE_PTX=1 (a missing nvcc is an error instead of a warning), HRK_EMU_TSAN=1 (build
//! the emulator with ThreadSanitizer).
use std::env;
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

const PTXAS_TARGETS: [u32; 2] = [80, 90];

fn main() {
    let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR").unwrap());
    let out = PathBuf::from(env::var("OUT_DIR").unwrap());
    let kernel_dir = manifest.join("kernels");
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=kernels");
    println!("cargo:rerun-if-changed=src/cuda/probe.c");
    for var in ["HRK_NVCC", "CUDA_HOME", "CUDA_PATH", "HRK_CUDA_ARCH", "HRK_REQUIRE_PTX", "HRK_EMU_TSAN", "PATH"] {
        println!("cargo:rerun-if-env-changed={var}");
    }

    let mut sources: Vec<PathBuf> = fs::read_dir(&kernel_dir)
        .expect("kernels/ directory missing")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "cu"))
        .collect();
    sources.sort();
    for entry in fs::read_dir(&kernel_dir).unwrap().flatten() {
        println!("cargo:rerun-if-changed={}", entry.path().display());
    }

    build_ptx(&manifest, &out, &kernel_dir, &sources);
    build_emulator(&kernel_dir, &sources);
    cc::Build::new().file(manifest.join("src/cuda/probe.c")).warnings(true).compile("hrk_cuda_probe");
    println!("cargo:rustc-link-lib=dl");
}

fn find_nvcc(manifest: &Path) -> Option<PathBuf> {
    if let Ok(p) = env::var("HRK_NVCC") {
        let p = PathBuf::from(p);
        if !p.is_file() {
            panic!("HRK_NVCC={} is not a file: point it at nvcc or unset it", p.display());
        }
        return Some(p);
    }
    for var in ["CUDA_HOME", "CUDA_PATH"] {
        if let Ok(root) = env::var(var) {
            let p = Path::new(&root).join("bin/nvcc");
            if p.is_file() {
                return Some(p);
            }
        }
    }
    if let Some(path) = env::var_os("PATH") {
        for dir in env::split_paths(&path) {
            let p = dir.join("nvcc");
            if p.is_file() {
                return Some(p);
            }
        }
    }
    let wheel = manifest.join(".cuda/nvidia/cu13/bin/nvcc");
    wheel.is_file().then_some(wheel)
}

fn build_ptx(manifest: &Path, out: &Path, kernel_dir: &Path, sources: &[PathBuf]) {
    let require = env::var("HRK_REQUIRE_PTX").is_ok_and(|v| v == "1");
    let arch = env::var("HRK_CUDA_ARCH").unwrap_or_else(|_| "compute_80".to_string());
    let arch_number: u32 = arch
        .trim_start_matches("compute_")
        .trim_start_matches("sm_")
        .parse()
        .unwrap_or_else(|_| panic!("HRK_CUDA_ARCH={arch}: expected compute_NN (for example compute_80)"));
    let generated = out.join("kernels_ptx.rs");
    let Some(nvcc) = find_nvcc(manifest) else {
        let hint = "install the pinned wheels with `python3 -m pip install --no-cache-dir --target .cuda -r \
                    requirements-cuda.txt`, or set HRK_NVCC / CUDA_HOME";
        if require {
            panic!("HRK_REQUIRE_PTX=1 but nvcc was not found (HRK_NVCC, CUDA_HOME, CUDA_PATH, PATH, .cuda/): {hint}");
        }
        println!("cargo:warning=nvcc not found: building without CUDA kernels (PTX not embedded); {hint} (then `touch build.rs`)");
        fs::write(&generated, "pub const PTX_ARCH: &str = \"\";\npub static PTX_MODULES: &[(&str, &str)] = &[];\n")
            .unwrap();
        return;
    };
    let ptxas = nvcc.with_file_name("ptxas");
    let ptx_dir = out.join("ptx");
    fs::create_dir_all(&ptx_dir).unwrap();

    // One thread per file: nvcc is ~1 s a file and mostly single-threaded.
    let results: Vec<(String, PathBuf)> = std::thread::scope(|scope| {
        let handles: Vec<_> = sources
            .iter()
            .map(|src| {
                let (nvcc, ptxas, ptx_dir, arch) = (&nvcc, &ptxas, &ptx_dir, &arch);
                scope.spawn(move || {
                    let stem = src.file_stem().unwrap().to_string_lossy().into_owned();
                    let ptx = ptx_dir.join(format!("{stem}.ptx"));
                    let status = Command::new(nvcc)
                        .args(["-ptx", &format!("-arch={arch}"), "-O3", "-std=c++17", "-lineinfo", "-I"])
                        .arg(kernel_dir)
                        .arg("-o")
                        .arg(&ptx)
                        .arg(src)
                        .output()
                        .unwrap_or_else(|e| panic!("cannot run {}: {e}", nvcc.display()));
                    if !status.status.success() {
                        panic!(
                            "nvcc failed on {}:\n{}{}",
                            src.display(),
                            String::from_utf8_lossy(&status.stdout),
                            String::from_utf8_lossy(&status.stderr)
                        );
                    }
                    // Hard check: the PTX must assemble for the real chips, without spills (the register report
                    // is kept for review).
                    let mut report = String::new();
                    for sm in PTXAS_TARGETS.iter().filter(|&&sm| sm >= arch_number) {
                        let o = Command::new(ptxas)
                            .args([&format!("-arch=sm_{sm}"), "-v", "-o", "/dev/null"])
                            .arg(&ptx)
                            .output()
                            .unwrap_or_else(|e| panic!("cannot run {}: {e}", ptxas.display()));
                        let text = String::from_utf8_lossy(&o.stderr).into_owned();
                        if !o.status.success() {
                            panic!("ptxas -arch=sm_{sm} rejected {}:\n{text}", ptx.display());
                        }
                        if let Some(spill) = first_spill(&text) {
                            panic!(
                                "ptxas -arch=sm_{sm}: {spill} in {} (kernels must not spill: shrink the tile or \
                                 the live values)",
                                src.display()
                            );
                        }
                        report.push_str(&text);
                    }
                    fs::write(ptx_dir.join(format!("{stem}.ptxas.txt")), report).unwrap();
                    (stem, ptx)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap_or_else(|_| panic!("kernel build failed (see above)"))).collect()
    });

    let mut rs = format!("pub const PTX_ARCH: &str = {arch:?};\npub static PTX_MODULES: &[(&str, &str)] = &[\n");
    for (stem, ptx) in &results {
        writeln!(rs, "    ({stem:?}, include_str!({:?})),", ptx.display().to_string()).unwrap();
    }
    rs.push_str("];\n");
    fs::write(&generated, rs).unwrap();
}

/// The first kernel that `ptxas -v` reports with spill stores or loads ("kernel X: 8 bytes spill stores, 8
/// bytes spill loads"), if any. A spill is a build error for every kernel: local-memory traffic in an inner
/// loop costs more than any tiling gains, and none of the kernels needs it.
fn first_spill(ptxas_report: &str) -> Option<String> {
    let mut kernel = "?";
    for line in ptxas_report.lines() {
        if let Some(rest) = line.split("Compiling entry function '").nth(1) {
            kernel = rest.split('\'').next().unwrap_or("?");
        }
        if line.contains("spill stores") {
            let bytes = |what: &str| -> u64 {
                line.split(',')
                    .find(|part| part.contains(what))
                    .and_then(|part| part.split_whitespace().next())
                    .and_then(|n| n.parse().ok())
                    .unwrap_or(0)
            };
            if bytes("spill stores") > 0 || bytes("spill loads") > 0 {
                return Some(format!("kernel {kernel}: {}", line.trim()));
            }
        }
    }
    None
}

fn build_emulator(kernel_dir: &Path, sources: &[PathBuf]) {
    let mut b = cc::Build::new();
    b.cpp(true)
        .std("c++20")
        .include(kernel_dir)
        .flag("-x")
        .flag("c++")
        .flag("-include")
        .flag(kernel_dir.join("emu.h").to_str().unwrap())
        .flag("-pthread")
        .warnings(false);
    if env::var("HRK_EMU_TSAN").is_ok_and(|v| v == "1") {
        b.flag("-fsanitize=thread").flag("-g").opt_level(1);
        println!("cargo:rustc-link-lib=dylib=tsan");
    }
    for src in sources {
        b.file(src);
    }
    b.file(write_param_layout_table(kernel_dir));
    b.compile("hrk_cuda_emu");
}

/// Generates a C++ table of `offsetof` and `sizeof` of every field of every struct in kernels/params.h
/// (`hrk_emu_param_fields`), so tests/cuda_emu.rs compares the Rust mirrors field by field.
fn write_param_layout_table(kernel_dir: &Path) -> PathBuf {
    let header = fs::read_to_string(kernel_dir.join("params.h")).expect("kernels/params.h missing");
    let mut rows = String::new();
    let mut current: Option<String> = None;
    for line in header.lines() {
        let code = line.split("//").next().unwrap_or("").trim();
        if let Some(name) = code.strip_prefix("struct ").and_then(|r| r.strip_suffix('{')) {
            current = Some(name.trim().to_string());
            continue;
        }
        if code.starts_with('}') {
            current = None;
            continue;
        }
        let Some(strukt) = &current else { continue };
        // `type a, b[N], c;`: the last word of each comma-separated declarator, without its array bounds.
        for declarator in code.trim_end_matches(';').split(',').filter(|d| !d.trim().is_empty()) {
            let word = declarator.split('[').next().unwrap_or("").split_whitespace().last().unwrap_or("");
            let field = word.trim_start_matches('*');
            writeln!(rows, "    {{\"{strukt}\", \"{field}\", offsetof({strukt}, {field}), sizeof(static_cast<{strukt}*>(nullptr)->{field})}},").unwrap();
        }
    }
    let table = format!(
        "#include <cstddef>\n#include \"params.h\"\nstruct HrkParamField {{ const char* strukt; const char* field; size_t offset; size_t size; }};\n\
         static const HrkParamField HRK_PARAM_FIELDS[] = {{\n{rows}}};\n\
         extern \"C\" size_t hrk_emu_param_fields(const HrkParamField** out) {{\n    *out = HRK_PARAM_FIELDS;\n    return sizeof(HRK_PARAM_FIELDS) / sizeof(HRK_PARAM_FIELDS[0]);\n}}\n"
    );
    let path = PathBuf::from(env::var("OUT_DIR").unwrap()).join("param_layout.cpp");
    fs::write(&path, table).unwrap();
    path
}
