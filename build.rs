//! Build script: (1) compiles every kernels/*.cu to PTX (NVRTC 12.2 from the pinned wheels, or an nvcc of the
//! user's choice) and assembles each PTX with ptxas for sm_80 and sm_90 as a hard check (a register spill in any
//! kernel fails the build too), embedding the PTX and its ISA version (with the oldest driver that loads it)
//! through a generated .rs; (2) compiles the same .cu files as host C++ (kernels/emu.h) into a static library for
//! the CPU emulator used by the tests; (3) compiles the small C driver probe (src/cuda/probe.c).
//!
//! Env: HRK_NVCC (an nvcc to use instead of the wheels; its CUDA release sets the PTX ISA and so the driver
//! floor), CUDA_HOME / CUDA_PATH / PATH (nvcc when the wheels are absent), HRK_CUDA_ARCH (default compute_80;
//! never probed from nvidia-smi), HRK_REQUIRE_PTX=1 (a missing compiler is an error instead of a warning),
//! HRK_EMU_TSAN=1 (build the emulator with ThreadSanitizer).
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

/// What turns kernels/*.cu into PTX, and the ptxas that checks the PTX.
enum PtxCompiler {
    /// NVRTC from the pinned CUDA 12.2 wheels (`.cuda/`, requirements-cuda.txt): PTX ISA 8.2, which drivers from
    /// the R535 branch on load.
    Nvrtc { library: PathBuf, ptxas: PathBuf },
    /// An nvcc of the user's choice (HRK_NVCC, CUDA_HOME, CUDA_PATH, PATH): the PTX ISA of that CUDA release.
    Nvcc { nvcc: PathBuf, ptxas: PathBuf },
}

impl PtxCompiler {
    fn ptxas(&self) -> &Path {
        match self {
            Self::Nvrtc { ptxas, .. } | Self::Nvcc { ptxas, .. } => ptxas,
        }
    }
    fn describe(&self) -> String {
        match self {
            Self::Nvrtc { library, .. } => format!("NVRTC ({})", library.display()),
            Self::Nvcc { nvcc, .. } => format!("nvcc ({})", nvcc.display()),
        }
    }
}

/// The wheels' layout under `.cuda/` (pip install --target .cuda -r requirements-cuda.txt).
const WHEEL_NVRTC: &str = ".cuda/nvidia/cuda_nvrtc/lib/libnvrtc.so.12";
const WHEEL_PTXAS: &str = ".cuda/nvidia/cuda_nvcc/bin/ptxas";

/// HRK_NVCC first (an explicit choice), then the pinned wheels, then CUDA_HOME, CUDA_PATH and PATH.
fn find_compiler(manifest: &Path) -> Option<PtxCompiler> {
    let nvcc_at = |nvcc: PathBuf| PtxCompiler::Nvcc { ptxas: nvcc.with_file_name("ptxas"), nvcc };
    if let Ok(p) = env::var("HRK_NVCC") {
        let p = PathBuf::from(p);
        if !p.is_file() {
            panic!("HRK_NVCC={} is not a file: point it at nvcc or unset it", p.display());
        }
        return Some(nvcc_at(p));
    }
    let (library, ptxas) = (manifest.join(WHEEL_NVRTC), manifest.join(WHEEL_PTXAS));
    if library.is_file() && ptxas.is_file() {
        return Some(PtxCompiler::Nvrtc { library, ptxas });
    }
    for var in ["CUDA_HOME", "CUDA_PATH"] {
        if let Ok(root) = env::var(var) {
            let p = Path::new(&root).join("bin/nvcc");
            if p.is_file() {
                return Some(nvcc_at(p));
            }
        }
    }
    let path = env::var_os("PATH")?;
    env::split_paths(&path).map(|dir| dir.join("nvcc")).find(|p| p.is_file()).map(nvcc_at)
}

/// CUDA C++ the kernels get from nvcc's implicit includes but NVRTC lacks: `<cstdint>`'s fixed-width types
/// and math.h's INFINITY (pre-included in every file, as an in-memory header).
const NVRTC_PRELUDE: &str = "#pragma once\n\
    typedef unsigned char uint8_t; typedef signed char int8_t; typedef unsigned short uint16_t; typedef short int16_t;\n\
    typedef unsigned int uint32_t; typedef int int32_t; typedef unsigned long long uint64_t; typedef long long int64_t;\n\
    #define INFINITY __int_as_float(0x7f800000)\n";

/// One .cu file to PTX text.
fn compile_to_ptx(
    compiler: &PtxCompiler, nvrtc: Option<&nvrtc::Nvrtc>, arch: &str, kernel_dir: &Path, src: &Path, ptx: &Path,
) {
    match compiler {
        PtxCompiler::Nvrtc { .. } => {
            let nvrtc = nvrtc.expect("NVRTC opened");
            let source = fs::read_to_string(src).unwrap_or_else(|e| panic!("reading {}: {e}", src.display()));
            let options = [
                format!("--gpu-architecture={arch}"),
                "-std=c++17".to_string(),
                "--generate-line-info".to_string(),
                format!("--include-path={}", kernel_dir.display()),
                "--pre-include=hrk_nvrtc_prelude.h".to_string(),
            ];
            let headers = [("hrk_nvrtc_prelude.h", NVRTC_PRELUDE), ("cstdint", "#pragma once\n")];
            let text = nvrtc
                .compile(&source, &src.display().to_string(), &options, &headers)
                .unwrap_or_else(|log| panic!("NVRTC failed on {}:\n{log}", src.display()));
            fs::write(ptx, text).unwrap();
        }
        PtxCompiler::Nvcc { nvcc, .. } => {
            let status = Command::new(nvcc)
                .args(["-ptx", &format!("-arch={arch}"), "-O3", "-std=c++17", "-lineinfo", "-I"])
                .arg(kernel_dir)
                .arg("-o")
                .arg(ptx)
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
        }
    }
}

/// `.version X.Y` of a PTX text.
fn ptx_isa(ptx: &str) -> Option<(u32, u32)> {
    let v = ptx.lines().find_map(|l| l.trim().strip_prefix(".version "))?;
    let (major, minor) = v.trim().split_once('.')?;
    Some((major.parse().ok()?, minor.parse().ok()?))
}

/// The CUDA release (as cuDriverGetVersion reports it, 1000·major + 10·minor) whose drivers first load PTX ISA
/// `isa`, and that driver branch, from the PTX ISA release notes.
fn driver_floor(isa: (u32, u32)) -> Option<(i32, &'static str)> {
    let cuda = match isa {
        (8, m @ 0..=5) => (12, m),
        (8, m @ 6..=8) => (12, m + 1),
        (9, m) => (13, m),
        _ => return None,
    };
    let branch = match cuda {
        (12, 0) => "R525",
        (12, 1) => "R530",
        (12, 2) => "R535",
        (12, 3) => "R545",
        (12, 4) => "R550",
        (12, 5) => "R555",
        (12, 6) => "R560",
        (12, 8) => "R570",
        (12, 9) => "R575",
        (13, 0) => "R580",
        _ => "a matching",
    };
    Some((1000 * cuda.0 + 10 * cuda.1 as i32, branch))
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
    let Some(compiler) = find_compiler(manifest) else {
        let hint = "install the pinned wheels with `python3 -m pip install --no-cache-dir --upgrade --target .cuda -r \
                    requirements-cuda.txt`, or set HRK_NVCC / CUDA_HOME";
        if require {
            panic!(
                "HRK_REQUIRE_PTX=1 but no CUDA compiler was found (HRK_NVCC, {WHEEL_NVRTC} with {WHEEL_PTXAS}, \
                 CUDA_HOME, CUDA_PATH, PATH): {hint}"
            );
        }
        println!("cargo:warning=no CUDA compiler found: building without CUDA kernels (PTX not embedded); {hint} (then `touch build.rs`)");
        fs::write(
            &generated,
            "pub const PTX_ARCH: &str = \"\";\npub const PTX_ISA: &str = \"\";\npub const PTX_MIN_DRIVER_VERSION: i32 = 0;\n\
             pub const PTX_MIN_DRIVER_BRANCH: &str = \"\";\npub static PTX_MODULES: &[(&str, &str)] = &[];\n",
        )
        .unwrap();
        return;
    };
    let nvrtc = match &compiler {
        PtxCompiler::Nvrtc { library, .. } => Some(nvrtc::Nvrtc::open(library).unwrap_or_else(|e| panic!("{e}"))),
        PtxCompiler::Nvcc { .. } => None,
    };
    let ptxas = compiler.ptxas();
    let ptx_dir = out.join("ptx");
    fs::create_dir_all(&ptx_dir).unwrap();

    // One thread per file: a compile is ~1 s a file and mostly single-threaded.
    let results: Vec<(String, PathBuf)> = std::thread::scope(|scope| {
        let handles: Vec<_> = sources
            .iter()
            .map(|src| {
                let (compiler, nvrtc, ptx_dir, arch) = (&compiler, nvrtc.as_ref(), &ptx_dir, &arch);
                scope.spawn(move || {
                    let stem = src.file_stem().unwrap().to_string_lossy().into_owned();
                    let ptx = ptx_dir.join(format!("{stem}.ptx"));
                    compile_to_ptx(compiler, nvrtc, arch, kernel_dir, src, &ptx);
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

    // Every module's header names one PTX ISA; the oldest driver that loads it is the floor hrk checks at start-up.
    let mut isas: Vec<(u32, u32)> = results
        .iter()
        .map(|(_, ptx)| {
            let text = fs::read_to_string(ptx).unwrap();
            ptx_isa(&text).unwrap_or_else(|| panic!("{}: no `.version X.Y` header", ptx.display()))
        })
        .collect();
    isas.sort();
    isas.dedup();
    let isa = *isas.last().expect("no kernels/*.cu");
    let (min_driver, branch) = driver_floor(isa).unwrap_or_else(|| {
        panic!(
            "{} emitted PTX ISA {}.{}: build.rs does not know which driver loads it (add it to driver_floor)",
            compiler.describe(),
            isa.0,
            isa.1
        )
    });
    let mut rs = format!(
        "pub const PTX_ARCH: &str = {arch:?};\npub const PTX_ISA: &str = \"{}.{}\";\n\
         pub const PTX_MIN_DRIVER_VERSION: i32 = {min_driver};\npub const PTX_MIN_DRIVER_BRANCH: &str = {branch:?};\n\
         pub static PTX_MODULES: &[(&str, &str)] = &[\n",
        isa.0, isa.1
    );
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

/// NVRTC through dlopen (the library is the pinned wheel's; nothing links against it).
mod nvrtc {
    use std::ffi::{c_char, c_int, c_void, CStr, CString};
    use std::path::Path;

    #[link(name = "dl")]
    extern "C" {
        fn dlopen(filename: *const c_char, flags: c_int) -> *mut c_void;
        fn dlsym(handle: *mut c_void, symbol: *const c_char) -> *mut c_void;
        fn dlerror() -> *const c_char;
    }
    const RTLD_NOW: c_int = 2;

    type Program = *mut c_void;
    type Create = unsafe extern "C" fn(
        *mut Program,
        *const c_char,
        *const c_char,
        c_int,
        *const *const c_char,
        *const *const c_char,
    ) -> c_int;
    type Compile = unsafe extern "C" fn(Program, c_int, *const *const c_char) -> c_int;
    type Size = unsafe extern "C" fn(Program, *mut usize) -> c_int;
    type Text = unsafe extern "C" fn(Program, *mut c_char) -> c_int;
    type Destroy = unsafe extern "C" fn(*mut Program) -> c_int;

    /// The NVRTC entry points the build needs (the library stays loaded for the build script's life).
    pub struct Nvrtc {
        create: Create,
        compile: Compile,
        ptx_size: Size,
        ptx: Text,
        log_size: Size,
        log: Text,
        destroy: Destroy,
    }

    impl Nvrtc {
        pub fn open(library: &Path) -> Result<Self, String> {
            let name = CString::new(library.as_os_str().as_encoded_bytes()).map_err(|e| e.to_string())?;
            // SAFETY: `name` is a NUL-terminated path; dlopen/dlerror have no other preconditions.
            let handle = unsafe { dlopen(name.as_ptr(), RTLD_NOW) };
            if handle.is_null() {
                // SAFETY: dlerror has no preconditions.
                let why = unsafe { dlerror() };
                let why = if why.is_null() {
                    "?".to_string()
                } else {
                    // SAFETY: a non-null dlerror result is a NUL-terminated message owned by libdl, read at once.
                    unsafe { CStr::from_ptr(why) }.to_string_lossy().into_owned()
                };
                return Err(format!("cannot load NVRTC from {}: {why}", library.display()));
            }
            let symbol = |sym: &str| -> Result<*mut c_void, String> {
                let c = CString::new(sym).unwrap();
                // SAFETY: `handle` is a live dlopen handle and `c` a NUL-terminated name.
                let p = unsafe { dlsym(handle, c.as_ptr()) };
                if p.is_null() {
                    Err(format!("{} lacks {sym}", library.display()))
                } else {
                    Ok(p)
                }
            };
            // SAFETY: each symbol is NVRTC's C function of that name, whose signature (nvrtc.h) the type states.
            unsafe {
                Ok(Nvrtc {
                    create: std::mem::transmute::<*mut c_void, Create>(symbol("nvrtcCreateProgram")?),
                    compile: std::mem::transmute::<*mut c_void, Compile>(symbol("nvrtcCompileProgram")?),
                    ptx_size: std::mem::transmute::<*mut c_void, Size>(symbol("nvrtcGetPTXSize")?),
                    ptx: std::mem::transmute::<*mut c_void, Text>(symbol("nvrtcGetPTX")?),
                    log_size: std::mem::transmute::<*mut c_void, Size>(symbol("nvrtcGetProgramLogSize")?),
                    log: std::mem::transmute::<*mut c_void, Text>(symbol("nvrtcGetProgramLog")?),
                    destroy: std::mem::transmute::<*mut c_void, Destroy>(symbol("nvrtcDestroyProgram")?),
                })
            }
        }

        /// PTX of `source` (its file `name` for messages and relative includes), or the compiler's log.
        /// `headers` are (include name, contents) served from memory.
        pub fn compile(
            &self, source: &str, name: &str, options: &[String], headers: &[(&str, &str)],
        ) -> Result<String, String> {
            let cstr = |s: &str| CString::new(s).map_err(|e| e.to_string());
            let (source, name) = (cstr(source)?, cstr(name)?);
            let header_names = headers.iter().map(|h| cstr(h.0)).collect::<Result<Vec<_>, _>>()?;
            let header_texts = headers.iter().map(|h| cstr(h.1)).collect::<Result<Vec<_>, _>>()?;
            let options = options.iter().map(|o| cstr(o)).collect::<Result<Vec<_>, _>>()?;
            let ptrs = |v: &[CString]| v.iter().map(|c| c.as_ptr()).collect::<Vec<_>>();
            let (names, texts, opts) = (ptrs(&header_names), ptrs(&header_texts), ptrs(&options));
            let mut program: Program = std::ptr::null_mut();
            // SAFETY: every pointer is a live NUL-terminated string (or an array of `headers.len()` of them) that
            // outlives the call; `program` receives the handle.
            let rc = unsafe {
                (self.create)(
                    &mut program,
                    source.as_ptr(),
                    name.as_ptr(),
                    names.len() as c_int,
                    texts.as_ptr(),
                    names.as_ptr(),
                )
            };
            if rc != 0 {
                return Err(format!("nvrtcCreateProgram returned {rc}"));
            }
            // SAFETY: `program` is live; `opts` holds `opts.len()` live option strings.
            let rc = unsafe { (self.compile)(program, opts.len() as c_int, opts.as_ptr()) };
            let result = if rc == 0 {
                self.read(program, self.ptx_size, self.ptx).ok_or_else(|| "nvrtcGetPTX failed".to_string())
            } else {
                Err(self
                    .read(program, self.log_size, self.log)
                    .unwrap_or_else(|| format!("nvrtcCompileProgram returned {rc}")))
            };
            // SAFETY: `program` is live and not used after this.
            unsafe { (self.destroy)(&mut program) };
            result
        }

        /// One of the program's texts (PTX or log) through its size and copy functions.
        fn read(&self, program: Program, size: Size, copy: Text) -> Option<String> {
            let mut len = 0usize;
            // SAFETY: `program` is live and `len` receives the size, including the terminating NUL.
            if unsafe { size(program, &mut len) } != 0 {
                return None;
            }
            let mut buf = vec![0u8; len.max(1)];
            // SAFETY: `buf` holds `len` bytes, the size NVRTC just reported for this text.
            if unsafe { copy(program, buf.as_mut_ptr().cast()) } != 0 {
                return None;
            }
            let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
            Some(String::from_utf8_lossy(&buf[..end]).into_owned())
        }
    }
}
