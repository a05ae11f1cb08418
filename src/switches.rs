//! Every `HRK_*` environment switch of the library and the binary, declared once here (name, values,
//! default, one-line doc) and read only here, once per process. README's switch table is checked
//! against `ALL` by a test (tests/switches_doc.rs).
//!
//! Build-time variables (`HRK_NVCC`, `HRK_CUDA_ARCH`, `HRK_REQUIRE_PTX`, `HRK_EMU_TSAN`) belong to
//! build.rs and test-only ones (`HRK_SHARED`, `HRK_PARITY_CASE`, `HRK_FUZZ_*`, …) to tests/common;
//! both are listed in `BUILD_AND_TEST` so that the README test knows them.

use std::sync::OnceLock;

/// One declared switch, as README's table shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Switch {
    pub name: &'static str,
    /// The accepted values, e.g. `0\|1` or `a size like 64M`.
    pub values: &'static str,
    /// What an unset variable means.
    pub default: &'static str,
    pub doc: &'static str,
}

/// Parses one variable's text; `Err` carries what was expected (the value is then the default,
/// with a one-line warning through `log`).
type Parse<T> = fn(&str) -> Result<T, &'static str>;

fn read<T: Clone>(name: &str, default: T, parse: Parse<T>) -> T {
    match std::env::var(name) {
        Err(_) => default,
        Ok(text) => parse(text.trim()).unwrap_or_else(|expected| {
            log::warn!("{name}={text:?} is not {expected}; using the default");
            default
        }),
    }
}

macro_rules! switches {
    ($( #[doc = $doc:literal] fn $getter:ident() -> $ty:ty { $name:literal, $values:literal, default $default_doc:literal => $default:expr, $parse:expr } )*) => {
        /// Every runtime switch, in README order.
        pub const ALL: &[Switch] = &[$(Switch { name: $name, values: $values, default: $default_doc, doc: $doc.trim_ascii() }),*];
        $(
            #[doc = $doc]
            pub fn $getter() -> $ty {
                static VALUE: OnceLock<$ty> = OnceLock::new();
                VALUE.get_or_init(|| read($name, $default, $parse)).clone()
            }
        )*
    };
}

fn flag(text: &str) -> Result<bool, &'static str> {
    match text.to_ascii_lowercase().as_str() {
        "1" | "on" | "true" | "yes" => Ok(true),
        "0" | "off" | "false" | "no" => Ok(false),
        _ => Err("0 or 1"),
    }
}

fn megabytes(text: &str) -> Result<usize, &'static str> {
    text.parse().map_err(|_| "a whole number of MiB")
}

fn path(text: &str) -> Result<String, &'static str> {
    if text.is_empty() {
        Err("a path")
    } else {
        Ok(text.to_string())
    }
}

/// A byte count with an optional K/M/G suffix (binary units), e.g. `64M`.
pub fn parse_size(text: &str) -> Result<usize, &'static str> {
    const EXPECTED: &str = "a size like 64M";
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (digits, unit) = (&text[..split], text[split..].trim().to_ascii_uppercase());
    let scale: usize = match unit.trim_end_matches("IB").trim_end_matches('B') {
        "" => 1,
        "K" => 1 << 10,
        "M" => 1 << 20,
        "G" => 1 << 30,
        _ => return Err(EXPECTED),
    };
    digits.parse::<usize>().ok().and_then(|n| n.checked_mul(scale)).ok_or(EXPECTED)
}

fn some_size(text: &str) -> Result<Option<usize>, &'static str> {
    parse_size(text).map(Some)
}

/// How evaluation runs the model on a device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EvalEngine {
    /// The BN-folded plan (the default; on a GPU its fuse rows are one kernel each).
    Folded,
    /// GPU only: the folded plan with the unfused fuse-row kernels (the reference rung).
    FoldedUnfused,
    /// The plain autograd forward, no folding.
    Graph,
}

fn cpu_engine(text: &str) -> Result<EvalEngine, &'static str> {
    match text {
        "folded" | "fast" => Ok(EvalEngine::Folded),
        "graph" => Ok(EvalEngine::Graph),
        _ => Err("folded or graph"),
    }
}

fn gpu_engine(text: &str) -> Result<EvalEngine, &'static str> {
    match text {
        "fused" => Ok(EvalEngine::Folded),
        "unfused" => Ok(EvalEngine::FoldedUnfused),
        "graph" => Ok(EvalEngine::Graph),
        _ => Err("fused, unfused or graph"),
    }
}

/// Arithmetic of the GPU convolutions (`--gpu-math`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GpuMath {
    /// f32 FMA kernels: the reference rung.
    Fp32,
    /// Tensor cores on tf32 operands (10-bit mantissa, f32 accumulation), as PyTorch's default for convs.
    Tf32,
    /// Forward convs on bf16 tensor cores (7-bit mantissa, f32 accumulation); backward as tf32.
    Bf16,
}

impl GpuMath {
    pub fn name(self) -> &'static str {
        match self {
            GpuMath::Fp32 => "fp32",
            GpuMath::Tf32 => "tf32",
            GpuMath::Bf16 => "bf16",
        }
    }
}

fn gpu_math_value(text: &str) -> Result<GpuMath, &'static str> {
    match text.to_ascii_lowercase().as_str() {
        "fp32" | "f32" => Ok(GpuMath::Fp32),
        "tf32" => Ok(GpuMath::Tf32),
        "bf16" => Ok(GpuMath::Bf16),
        _ => Err("fp32, tf32 or bf16"),
    }
}

impl std::str::FromStr for GpuMath {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        gpu_math_value(text).map_err(|expected| format!("unknown GPU math {text:?}: expected {expected}"))
    }
}

/// The families of bf16 conv kernels a CPU can run (`host_isa::bf16_kernels` picks one per CPU).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Bf16Kernels {
    /// The AMX tile unit (`tdpbf16ps`), through `asm!`.
    AmxTiles,
    /// The same tile kernels on the software model of the tile unit (any CPU with AVX2; slow: tests, A/B).
    TileModel,
    /// AVX512-BF16 dot products (`vdpbf16ps`) in the direct and Winograd kernels.
    Avx512Bf16,
    /// No bf16 kernels: `--precision bf16` runs the f32 kernels.
    F32,
}

impl Bf16Kernels {
    /// The switch's spelling.
    pub fn name(self) -> &'static str {
        match self {
            Bf16Kernels::AmxTiles => "amx",
            Bf16Kernels::TileModel => "tile-model",
            Bf16Kernels::Avx512Bf16 => "avx512-bf16",
            Bf16Kernels::F32 => "f32",
        }
    }
}

fn bf16_kernels_value(text: &str) -> Result<Option<Bf16Kernels>, &'static str> {
    match text.to_ascii_lowercase().as_str() {
        "auto" => Ok(None),
        "amx" => Ok(Some(Bf16Kernels::AmxTiles)),
        "tile-model" => Ok(Some(Bf16Kernels::TileModel)),
        "avx512-bf16" => Ok(Some(Bf16Kernels::Avx512Bf16)),
        "f32" => Ok(Some(Bf16Kernels::F32)),
        _ => Err("auto, amx, tile-model, avx512-bf16 or f32"),
    }
}

switches! {
    /// Direct 3×3 conv kernels on the CPU (AVX-512 or AVX2+FMA); 0 sends every conv through im2col + GEMM.
    fn conv_direct() -> bool { "HRK_CONV_DIRECT", "0\\|1", default "1" => true, flag }
    /// Winograd F(2×2, 3×3) for 3×3 stride-1 convs in the CPU inference engine; 0 computes them directly.
    fn conv_winograd() -> bool { "HRK_CONV_WINOGRAD", "0\\|1", default "1" => true, flag }
    /// 1 keeps the CPU kernels off AVX-512: convs and BatchNorm take their AVX2+FMA builds (BatchNorm its portable one without AVX2).
    fn no_avx512() -> bool { "HRK_NO_AVX512", "0\\|1", default "0" => false, flag }
    /// `--precision bf16` without bf16 kernels for this CPU: 1 emulates bf16 numerics in f32 arithmetic (slower than f32; for accuracy checks), 0 falls back to f32.
    fn bf16_emulate() -> bool { "HRK_BF16_EMULATE", "0\\|1", default "0" => false, flag }
    /// The bf16 conv kernels of `--precision bf16`: auto picks per CPU (AMX tiles, else AVX512-BF16 on AMD, else f32); the others force a family (one the CPU cannot run falls back to auto's, with a warning; tile-model runs the AMX kernels on the software tile unit).
    fn bf16_kernels_forced() -> Option<Bf16Kernels> { "HRK_BF16_KERNELS", "auto\\|amx\\|tile-model\\|avx512-bf16\\|f32", default "auto" => None, bf16_kernels_value }
    /// Cap of the CPU buffer pool in MiB (0 turns the pool off).
    fn pool_mb() -> usize { "HRK_POOL_MB", "MiB", default "4096" => 4096, megabytes }
    /// Caps the memory hrk assumes it may allocate (MiB), below what the address-space, cgroup and available-memory limits leave; for testing the out-of-memory refusals.
    fn memory_limit_mb() -> Option<usize> { "HRK_MEMORY_LIMIT_MB", "MiB", default "unset" => None, |t| megabytes(t).map(Some) }
    /// CPU evaluation engine of `hrk test` / `predict` / validation: the folded engine or the autograd graph.
    fn cpu_eval_engine() -> EvalEngine { "HRK_CPU_INFER", "folded\\|graph", default "folded" => EvalEngine::Folded, cpu_engine }
    /// GPU evaluation engine: fused fuse rows, the unfused reference rung, or the autograd graph.
    fn gpu_eval_engine() -> EvalEngine { "HRK_GPU_INFER", "fused\\|unfused\\|graph", default "fused" => EvalEngine::Folded, gpu_engine }
    /// BN statistics summed in the GPU conv epilogue during training; 0 runs the separate statistics pass.
    fn gpu_conv_bn_stats() -> bool { "HRK_GPU_CONV_BN_STATS", "0\\|1", default "1" => true, flag }
    /// GPU conv arithmetic: tf32 tensor cores, bf16 tensor-core forward, or the f32 FMA kernels (`--gpu-math` overrides).
    fn gpu_math() -> GpuMath { "HRK_GPU_MATH", "fp32\\|tf32\\|bf16", default "tf32" => GpuMath::Tf32, gpu_math_value }
    /// GPU inference and training capture each input shape's forward (training: forward, backward and update) into CUDA graphs and replay them; 0 launches every kernel eagerly.
    fn cuda_graphs() -> bool { "HRK_CUDA_GRAPHS", "0\\|1", default "1" => true, flag }
    /// 1 makes `--device cuda` and `auto` use the emulated GPU (the CUDA kernels run on the host; slow, for tests).
    fn device_emu() -> bool { "HRK_DEVICE_EMU", "0\\|1", default "0" => false, flag }
    /// The CUDA driver library to load.
    fn libcuda() -> String { "HRK_LIBCUDA", "a path", default "libcuda.so.1" => "libcuda.so.1".to_string(), path }
    /// Memory of the emulated GPU (unset: unlimited); the out-of-memory tests use it.
    fn emu_device_memory() -> Option<usize> { "HRK_EMU_DEVICE_MEMORY", "a size like 64M", default "unlimited" => None, some_size }
    /// 1 runs emulated GPU threads as OS threads instead of fibers (always so under TSan).
    fn emu_os_threads() -> bool { "HRK_EMU_OS_THREADS", "0\\|1", default "0" => false, flag }
    /// `cargo bench --bench kernels`: the rungs to time, comma-separated.
    fn bench_rungs() -> String { "HRK_BENCH_RUNGS", "cpu,emu,cuda", default "cpu,emu,cuda" => "cpu,emu,cuda".to_string(), path }
    /// `cargo bench --bench conv`: 1 reports GFLOP per CPU-second instead of wall-clock rates.
    fn bench_cpu() -> bool { "HRK_BENCH_CPU", "0\\|1", default "0" => false, flag }
    /// Training/test samples decode only the JPEG rows and columns their crop reads (same pixels); 0 decodes whole images.
    fn jpeg_region() -> bool { "HRK_JPEG_REGION", "0\\|1", default "1" => true, flag }
    /// `hrk serve`: the bearer token every endpoint but `/healthz`, `/readyz` and the page requires (`/v1/live` takes it in its first message; `--api-key` overrides).
    fn serve_api_key() -> Option<String> { "HRK_API_KEY", "a token", default "unset" => None, |t| path(t).map(Some) }
}

/// Variables read by build.rs or by the tests only (not by the library), for README's table check.
pub const BUILD_AND_TEST: &[&str] = &[
    "HRK_NVCC",
    "HRK_CUDA_ARCH",
    "HRK_REQUIRE_PTX",
    "HRK_EMU_TSAN",
    "HRK_SHARED",
    "HRK_PARITY_CASE",
    "HRK_FIXTURES",
    "HRK_TORCH_PYTHON",
    "HRK_FUZZ_SECS",
    "HRK_FUZZ_SLOW_SECS",
    "HRK_FUZZ_SEED",
    "HRK_FUZZ_REPLAY",
    "HRK_WRITE_CORPUS",
    "HRK_CRASH_SEED",
    "HRK_CRASH_KILLS",
    "HRK_KEEP_TEST_OUTPUT",
    "HRK_PYTHON",
    // tests/device_check.rs (and gpu_check.sh --device): 1 turns "no CUDA device, skipped" into a failure.
    "HRK_REQUIRE_DEVICE",
    // tests/gpu_check_script.rs: 1 runs `gpu_check.sh --prepare` itself (a whole build) before checking the carry.
    "HRK_GPU_CHECK_PREPARE",
    // tests/serve_page.rs: 1 turns "no chromium, skipped" into a failure (CI sets it).
    "HRK_REQUIRE_CHROMIUM",
    // tests/serve_page.rs: 1 rewrites docs/serve_page_photo.png and docs/serve_page_live.png.
    "HRK_WRITE_SCREENSHOTS",
];

/// Whether `HRK_GPU_MATH` is set at all (the emulated device keeps fp32 unless the math is chosen explicitly).
pub fn gpu_math_is_set() -> bool {
    std::env::var_os("HRK_GPU_MATH").is_some()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_binary_suffixes() {
        assert_eq!(parse_size("64M"), Ok(64 << 20));
        assert_eq!(parse_size("2GiB"), Ok(2 << 30));
        assert_eq!(parse_size("512"), Ok(512));
        assert!(parse_size("12X").is_err());
        assert!(parse_size("M").is_err());
    }

    #[test]
    fn names_are_unique_and_prefixed() {
        let mut names: Vec<&str> = ALL.iter().map(|s| s.name).chain(BUILD_AND_TEST.iter().copied()).collect();
        assert!(names.iter().all(|n| n.starts_with("HRK_")));
        let n = names.len();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), n);
    }
}
