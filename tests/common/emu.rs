//! Running CUDA kernels under the host emulator from the kernel tests.

use hrk::cuda::emu;
use hrk::cuda::kernels::Kernel;

/// Launches `k` with `p` under the emulator; a launch error fails the test with the kernel's name.
pub fn run<P: Copy>(k: &Kernel<P>, p: &P) {
    // SAFETY: every caller builds `p` from `addr`/`addr_mut` of live host buffers sized for the
    // launch's shape, which is the contract `emu::launch` needs.
    unsafe { emu::launch(k, p) }.unwrap_or_else(|e| panic!("{}: {e}", k.name));
}
