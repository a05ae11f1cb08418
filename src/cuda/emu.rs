//! Host emulator: runs the kernels compiled as host C++ (kernels/emu.h) with the same parameter structs
//! and launch geometry as the GPU. Pointer fields hold HOST addresses here. Slow (one OS thread per CUDA
//! thread): meant for tests on small shapes.
use super::kernels::Kernel;
use super::params::*;
use anyhow::{bail, Result};
use std::ffi::c_void;

/// Runs `kernel` over its grid on the host.
///
/// # Safety
/// Every pointer in `params` must be a valid host address of a buffer as large as the kernel reads or
/// writes for the sizes in `params`, and written buffers must not alias read-only ones.
pub unsafe fn launch<P: Copy>(kernel: &Kernel<P>, params: &P) -> Result<()> {
    let d = (kernel.dims)(params);
    let rc = (kernel.emu)(
        params as *const P as *const c_void,
        d.grid.as_ptr(),
        d.block.as_ptr(),
        d.shared_bytes as usize,
    );
    if rc != 0 {
        bail!("emulated launch of {} rejected: grid {:?} block {:?}", kernel.name, d.grid, d.block);
    }
    Ok(())
}

extern "C" {
    fn hrk_emu_sizeof_Conv2dParams() -> usize;
    fn hrk_emu_sizeof_BatchNormParams() -> usize;
    fn hrk_emu_sizeof_UpsampleParams() -> usize;
    fn hrk_emu_sizeof_EltwiseParams() -> usize;
    fn hrk_emu_sizeof_ConcatParams() -> usize;
    fn hrk_emu_sizeof_MseParams() -> usize;
    fn hrk_emu_sizeof_OptimParams() -> usize;
    fn hrk_emu_sizeof_HeatmapParams() -> usize;
    fn hrk_emu_sizeof_FusionParams() -> usize;
}

/// (struct, size in Rust, size in C) for every parameter struct: they must agree.
pub fn param_sizes() -> Vec<(&'static str, usize, usize)> {
    use std::mem::size_of;
    unsafe {
        vec![
            ("Conv2dParams", size_of::<Conv2dParams>(), hrk_emu_sizeof_Conv2dParams()),
            ("BatchNormParams", size_of::<BatchNormParams>(), hrk_emu_sizeof_BatchNormParams()),
            ("UpsampleParams", size_of::<UpsampleParams>(), hrk_emu_sizeof_UpsampleParams()),
            ("EltwiseParams", size_of::<EltwiseParams>(), hrk_emu_sizeof_EltwiseParams()),
            ("ConcatParams", size_of::<ConcatParams>(), hrk_emu_sizeof_ConcatParams()),
            ("MseParams", size_of::<MseParams>(), hrk_emu_sizeof_MseParams()),
            ("OptimParams", size_of::<OptimParams>(), hrk_emu_sizeof_OptimParams()),
            ("HeatmapParams", size_of::<HeatmapParams>(), hrk_emu_sizeof_HeatmapParams()),
            ("FusionParams", size_of::<FusionParams>(), hrk_emu_sizeof_FusionParams()),
        ]
    }
}

/// Host address of a slice, for parameter structs under emulation.
pub fn addr<T>(v: &[T]) -> u64 {
    v.as_ptr() as u64
}
/// Host address of a mutable slice.
pub fn addr_mut<T>(v: &mut [T]) -> u64 {
    v.as_mut_ptr() as u64
}
