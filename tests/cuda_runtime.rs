//! Device selection and driver guards: no libcuda, a driver without a device (fake libcuda.so.1 built
//! with gcc), and a driver too old for our PTX. The probing runs in child processes (this test binary,
//! re-run with one test selected) so the loader environment is fresh.
use hrk::cuda::{self, CudaUnavailable, DeviceChoice, DeviceRequest};
use std::path::{Path, PathBuf};
use std::process::Command;

/// A tiny libcuda.so.1 whose cuInit / version / count behave as asked.
fn build_fake_libcuda(dir: &Path, init_rc: i32, version: i32, count: i32) -> Option<PathBuf> {
    std::fs::create_dir_all(dir).unwrap();
    let src = dir.join("fake_cuda.c");
    std::fs::write(
        &src,
        format!(
            "int cuInit(unsigned f) {{ (void)f; return {init_rc}; }}\n\
             int cuDriverGetVersion(int* v) {{ *v = {version}; return 0; }}\n\
             int cuDeviceGetCount(int* c) {{ *c = {count}; return {init_rc}; }}\n\
             int cuGetErrorString(int e, const char** s) {{ (void)e; *s = \"fake\"; return 0; }}\n\
             int cuGetErrorName(int e, const char** s) {{ (void)e; *s = \"FAKE\"; return 0; }}\n"
        ),
    )
    .unwrap();
    let lib = dir.join("libcuda.so.1");
    let status = Command::new("gcc").args(["-shared", "-fPIC", "-o"]).arg(&lib).arg(&src).status().ok()?;
    status.success().then_some(lib)
}

mod common;
use common::scratch;

/// This binary, set to run only its `child_probe` test in `mode`.
fn child_command(mode: &str) -> Command {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args(["--exact", "child_probe", "--nocapture", "--test-threads=1"]).env("HRK_PROBE_CHILD", mode);
    cmd
}

/// Re-runs this binary's `child_probe` test with `mode` and the extra environment; returns its output.
fn run_child(mode: &str, env: &[(&str, &str)]) -> String {
    let mut cmd = child_command(mode);
    cmd.env_remove("HRK_LIBCUDA");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("spawning the test binary");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "child mode {mode} failed:\n{text}");
    assert!(text.contains("child ok"), "child mode {mode} did not run its checks:\n{text}");
    text
}

/// The checks each child performs, in its own process.
#[test]
fn child_probe() {
    assert_eq!(cuda::select_device(DeviceRequest::Cpu).unwrap(), DeviceChoice::Cpu { fallback_reason: None });
    let Some(mode) = common::probe_child_mode() else { return };
    if mode == "oom_panic" {
        // A device copy that runs out of memory where the caller cannot return the error (it panics with
        // it, as the infallible host accessors do), with the CLI's hook installed.
        hrk::cli::common::install_gpu_panic_hook();
        let dev = hrk::cuda::device::GpuDevice::emulated_with_memory(1024);
        let buf = dev.upload(&[1.0; 200]).unwrap();
        eprintln!("child ok: cloning");
        let copy = buf.try_clone().unwrap_or_else(|e| panic!("{e:#}"));
        unreachable!("copied {} floats beyond the limit", copy.len());
    }
    let probe = cuda::probe_driver();
    let want_msg = match mode.as_str() {
        "nolib" => {
            assert!(matches!(probe, Err(CudaUnavailable::NoDriver { .. })), "{probe:?}");
            "no CUDA driver"
        }
        "nodevice" => {
            assert_eq!(probe, Err(CudaUnavailable::NoDevice));
            "no CUDA device is visible"
        }
        "oldriver" => {
            assert_eq!(probe, Err(CudaUnavailable::DriverTooOld { driver_version: 11080 }));
            "supports CUDA 11.8"
        }
        other => panic!("unknown child mode {other}"),
    };
    let msg = probe.unwrap_err().to_string();
    assert!(msg.contains(want_msg) && !msg.contains('\n'), "message: {msg}");

    // `cuda` fails with one line; `auto` falls back to the CPU with the reason.
    let err = cuda::select_device(DeviceRequest::Cuda).unwrap_err().to_string();
    assert!(!err.contains('\n'), "multi-line error: {err}");
    if cfg!(feature = "cuda") && !cuda::ptx::PTX_MODULES.is_empty() {
        assert!(err.contains(want_msg), "{err}");
    } else {
        assert!(err.contains("built without"), "{err}");
    }
    match cuda::select_device(DeviceRequest::Auto).unwrap() {
        DeviceChoice::Cpu { fallback_reason: Some(r) } => assert_eq!(r, err),
        other => panic!("auto picked {other:?}"),
    }
    #[cfg(feature = "cuda")]
    {
        // Opening the device returns the error instead of panicking inside cudarc.
        let e = cuda::runtime::CudaDev::new(0).err().expect("CudaDev::new succeeded without a GPU");
        assert!(!e.to_string().contains('\n'), "{e}");
    }
    println!("child ok ({mode}): {msg}");
}

#[test]
fn no_libcuda_gives_clear_error() {
    let dir = scratch("cuda-nolib");
    let missing = dir.join("libcuda.so.1");
    let out =
        run_child("nolib", &[("HRK_LIBCUDA", missing.to_str().unwrap()), ("LD_LIBRARY_PATH", dir.to_str().unwrap())]);
    eprintln!("{out}");
}

/// Runs the child probe `mode` against a fake libcuda.so.1 built with `build_fake_libcuda`'s arguments.
fn run_child_with_fake_driver(mode: &str, init_rc: i32, version: i32, count: i32) {
    let dir = scratch(&format!("cuda-{mode}"));
    let Some(_) = build_fake_libcuda(&dir, init_rc, version, count) else {
        eprintln!("skipped: gcc could not build the fake libcuda.so.1");
        return;
    };
    let out = run_child(mode, &[("LD_LIBRARY_PATH", dir.to_str().unwrap())]);
    eprintln!("{out}");
}

#[test]
fn driver_without_device_gives_clear_error() {
    run_child_with_fake_driver("nodevice", 100, 13000, 0);
}

#[test]
fn driver_older_than_ptx_gives_clear_error() {
    run_child_with_fake_driver("oldriver", 0, 11080, 1);
}

#[test]
fn device_request_parsing_and_size_classes() {
    assert_eq!("CUDA".parse::<DeviceRequest>().unwrap(), DeviceRequest::Cuda);
    assert_eq!("auto".parse::<DeviceRequest>().unwrap(), DeviceRequest::Auto);
    let e = "tpu".parse::<DeviceRequest>().unwrap_err().to_string();
    assert!(e.contains("cpu, cuda or auto"), "{e}");
    use hrk::cuda::alloc::size_class;
    for bytes in [1usize, 511, 512, 513, 65536, 65537, 1 << 20, (1 << 20) + 1, 3_000_000, 1 << 30] {
        let c = size_class(bytes);
        assert!(c >= bytes && (c as f64) <= bytes as f64 * 1.25 + 512.0, "{bytes} -> {c}");
        assert_eq!(size_class(c), c, "classes are fixed points");
    }
}

// ---------- out of device memory (emulated device with a memory limit) ----------

#[test]
fn out_of_device_memory_is_a_one_line_error_not_a_panic() {
    use hrk::cuda::device::GpuDevice;
    use hrk::{Device, Tensor};
    let dev = GpuDevice::emulated_with_memory(64 << 10);
    let check = |e: anyhow::Error, what: &str| {
        let msg = format!("{e:#}");
        assert!(msg.contains("CUDA out of memory") && msg.contains(what) && !msg.contains('\n'), "{msg}");
        eprintln!("{msg}");
    };
    // Allocation and upload beyond the limit.
    check(dev.empty(20_000).unwrap_err(), "allocating a 78.1 KiB buffer");
    check(dev.upload(&vec![1.0; 20_000]).unwrap_err(), "uploading");
    // A device copy (the path of Storage::try_clone) that does not fit.
    let big = dev.upload(&vec![1.0; 10_000]).unwrap();
    assert_eq!(dev.emulated_bytes_in_use(), Some(40_448)); // its size class
    check(big.try_clone().unwrap_err(), "copying a 39.1 KiB buffer");
    drop(big);
    // Copy-on-write of shared GPU storage in Tensor::update.
    let gpu = Device::Gpu(dev.clone());
    let mut t = Tensor::from_f32(&[10_000], vec![2.0; 10_000]).unwrap().to_device(&gpu).unwrap();
    let _shared = t.clone();
    check(t.update(|_| {}).unwrap_err(), "copying");
    // An op whose output does not fit.
    let x = Tensor::from_f32(&[1, 1, 40, 40], vec![1.0; 1600]).unwrap().to_device(&gpu).unwrap();
    check(hrk::ops::upsample_bilinear(&x, [100, 100]).unwrap_err(), "allocating");
    // Freed buffers give their memory back.
    drop((t, _shared, x));
    assert_eq!(dev.emulated_bytes_in_use(), Some(0));
    assert!(dev.empty(16_000).is_ok());
}

#[test]
fn infallible_gpu_copy_out_of_memory_ends_with_one_line() {
    let out = child_command("oom_panic").output().expect("spawning the test binary");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    let lines: Vec<&str> = err.lines().filter(|l| l.starts_with("hrk: error:")).collect();
    assert_eq!(lines.len(), 1, "{err}");
    assert!(lines[0].contains("CUDA out of memory copying a 800 B buffer"), "{err}");
    assert!(!err.contains("panicked"), "the default panic report leaked: {err}");
}

// ---------- the layering inside src/cuda ----------

/// The sibling files a file of src/cuda imports (`super::x` / `crate::cuda::x`, also inside `{..}` lists);
/// an item of mod.rs counts as an import of `mod`.
fn cuda_imports(text: &str, files: &[String]) -> Vec<String> {
    let code: String = text.lines().map(|l| l.split("//").next().unwrap_or("")).collect::<Vec<_>>().join("\n");
    let mut out = Vec::new();
    let mut note = |name: &str| {
        if name.is_empty() {
            return; // `super::*` in a file's own test module names that file
        }
        let name = if files.iter().any(|f| f == name) { name } else { "mod" };
        if !out.iter().any(|o| o == name) {
            out.push(name.to_string());
        }
    };
    for prefix in ["super::", "crate::cuda::"] {
        for (at, _) in code.match_indices(prefix) {
            let rest = &code[at + prefix.len()..];
            if let Some(list) = rest.strip_prefix('{') {
                let list = &list[..list.find('}').unwrap_or(0)];
                list.split(',')
                    .map(|i| i.trim().split("::").next().unwrap_or(""))
                    .filter(|i| !i.is_empty())
                    .for_each(&mut note);
            } else {
                note(rest.split(|c: char| !(c.is_alphanumeric() || c == '_')).next().unwrap_or(""));
            }
        }
    }
    out
}

#[test]
fn no_import_cycle_between_the_files_of_src_cuda() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/cuda");
    let mut files: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| e.unwrap().file_name().to_str()?.strip_suffix(".rs").map(String::from))
        .collect();
    files.sort();
    let edges: Vec<(String, Vec<String>)> = files
        .iter()
        .map(|f| {
            let text = std::fs::read_to_string(dir.join(format!("{f}.rs"))).unwrap();
            let mut to = cuda_imports(&text, &files);
            if f == "mod" {
                // mod.rs re-exports its children (`pub use x::..`): edges from mod to them.
                to.extend(
                    text.lines().filter_map(|l| l.strip_prefix("pub use ")?.split("::").next().map(String::from)),
                );
            }
            to.retain(|t| t != f && files.contains(t));
            (f.clone(), to)
        })
        .collect();
    // Depth-first search for a back edge.
    fn visit(f: &str, edges: &[(String, Vec<String>)], path: &mut Vec<String>, done: &mut Vec<String>) {
        if let Some(at) = path.iter().position(|p| p == f) {
            panic!("import cycle in src/cuda: {} -> {f}", path[at..].join(" -> "));
        }
        if done.iter().any(|d| d == f) {
            return;
        }
        path.push(f.to_string());
        for to in edges.iter().find(|(g, _)| g == f).map(|(_, t)| t.as_slice()).unwrap_or(&[]) {
            visit(to, edges, path, done);
        }
        path.pop();
        done.push(f.to_string());
    }
    let mut done = Vec::new();
    for (f, _) in &edges {
        visit(f, &edges, &mut Vec::new(), &mut done);
    }
    // The check sees the edges it should: device.rs uses the allocator's books.
    assert!(edges.iter().any(|(f, to)| f == "device" && to.iter().any(|t| t == "alloc")), "{edges:?}");
}
