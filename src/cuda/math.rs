//! The arithmetic of the GPU convolutions (`--gpu-math`, `HRK_GPU_MATH`, `with_gpu_math`).
use super::device::GpuDevice;
use crate::switches::GpuMath;
use std::cell::Cell;
use std::sync::atomic::{AtomicU8, Ordering};

/// Process-wide math set by `--gpu-math` (0: unset, then `HRK_GPU_MATH` decides).
static PROCESS_MATH: AtomicU8 = AtomicU8::new(0);

thread_local! {
    /// `with_gpu_math` on this thread, above the process-wide choice.
    static SCOPED_MATH: Cell<Option<GpuMath>> = const { Cell::new(None) };
}

fn math_code(m: GpuMath) -> u8 {
    match m {
        GpuMath::Fp32 => 1,
        GpuMath::Tf32 => 2,
        GpuMath::Bf16 => 3,
    }
}

/// The arithmetic the GPU convolutions launched from this thread use now: `with_gpu_math`, else
/// `set_gpu_math` (`--gpu-math`), else `HRK_GPU_MATH` (default tf32).
pub fn gpu_math() -> GpuMath {
    if let Some(m) = SCOPED_MATH.with(Cell::get) {
        return m;
    }
    match PROCESS_MATH.load(Ordering::Relaxed) {
        1 => GpuMath::Fp32,
        2 => GpuMath::Tf32,
        3 => GpuMath::Bf16,
        _ => crate::switches::gpu_math(),
    }
}

/// The math of a convolution launched on `dev` from this thread: as `gpu_math`, except that the emulated device
/// keeps the fp32 kernels unless the math was chosen explicitly (`with_gpu_math`, `--gpu-math`, `HRK_GPU_MATH`):
/// the emulated warp-collective mma runs about 6× slower than the FMA kernels on the host, and only the tests
/// that exercise the tensor-core path (`*mma*`) need it there.
pub fn gpu_math_on(dev: &GpuDevice) -> GpuMath {
    let chosen = SCOPED_MATH.with(Cell::get).is_some()
        || PROCESS_MATH.load(Ordering::Relaxed) != 0
        || crate::switches::gpu_math_is_set();
    if dev.is_emulated() && !chosen {
        GpuMath::Fp32
    } else {
        gpu_math()
    }
}

/// Sets the GPU math of the whole process (the CLI's `--gpu-math`).
pub fn set_gpu_math(m: GpuMath) {
    PROCESS_MATH.store(math_code(m), Ordering::Relaxed);
}

/// Runs `f` with the GPU convolutions launched from this thread using `m` (tests and benchmarks compare
/// the rungs side by side); the previous choice comes back afterwards, also when `f` unwinds.
pub fn with_gpu_math<R>(m: GpuMath, f: impl FnOnce() -> R) -> R {
    crate::scoped::with(&SCOPED_MATH, Some(m), f)
}
