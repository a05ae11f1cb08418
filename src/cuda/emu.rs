//! Host emulator: runs the kernels compiled as host C++ (kernels/emu.h) with the same parameter structs
//! and launch geometry as the GPU. Pointer fields hold HOST addresses here. Slow (one OS thread per CUDA
//! thread): meant for tests on small shapes.
use super::kernels::Kernel;
use super::params::{layouts, FieldLayout};
use anyhow::{bail, Result};
use std::ffi::{c_char, c_int, c_void, CStr};
use std::sync::Once;

/// Runs `kernel` over its grid on the host.
///
/// # Safety
/// Every pointer in `params` must be a valid host address of a buffer as large as the kernel reads or
/// writes for the sizes in `params`, and written buffers must not alias read-only ones.
pub unsafe fn launch<P: Copy>(kernel: &Kernel<P>, params: &P) -> Result<()> {
    static THREAD_MODE: Once = Once::new();
    // SAFETY: a plain store into the emulator's atomic flag, before any launch reads it.
    THREAD_MODE.call_once(|| unsafe { hrk_emu_set_os_threads(crate::switches::emu_os_threads() as c_int) });
    let d = (kernel.dims)(params);
    // SAFETY: the caller vouches for the buffers behind `params` (see above); grid and block are 3-element
    // arrays that outlive the call, and the entry copies `params` as the struct it was compiled against
    // (the ABI test checks every field's offset).
    let rc = unsafe {
        (kernel.emu)(params as *const P as *const c_void, d.grid.as_ptr(), d.block.as_ptr(), d.shared_bytes as usize)
    };
    if rc != 0 {
        bail!("emulated launch of {} rejected: grid {:?} block {:?}", kernel.name, d.grid, d.block);
    }
    Ok(())
}

/// One row of the table build.rs generates from kernels/params.h (`offsetof` / `sizeof` per field).
#[repr(C)]
struct CField {
    strukt: *const c_char,
    field: *const c_char,
    offset: usize,
    size: usize,
}

extern "C" {
    fn hrk_emu_set_os_threads(on: c_int);
    fn hrk_emu_param_fields(out: *mut *const CField) -> usize;
    fn hrk_emu_sizeof_Conv2dParams() -> usize;
    fn hrk_emu_sizeof_BatchNormParams() -> usize;
    fn hrk_emu_sizeof_UpsampleParams() -> usize;
    fn hrk_emu_sizeof_EltwiseParams() -> usize;
    fn hrk_emu_sizeof_ConcatParams() -> usize;
    fn hrk_emu_sizeof_MseParams() -> usize;
    fn hrk_emu_sizeof_OptimParams() -> usize;
    fn hrk_emu_sizeof_HeatmapParams() -> usize;
    fn hrk_emu_sizeof_FusionParams() -> usize;
    fn hrk_emu_sizeof_ChannelOpParams() -> usize;
    fn hrk_emu_sizeof_MaxPoolParams() -> usize;
    fn hrk_emu_sizeof_MmaProbeParams() -> usize;
}

/// (struct, field, offset, size) of every field of kernels/params.h, as the C++ compiler lays them out.
fn c_fields() -> Vec<(String, String, usize, usize)> {
    let mut table: *const CField = std::ptr::null();
    // SAFETY: the generated function stores the address of a static array and returns its length.
    let n = unsafe { hrk_emu_param_fields(&mut table) };
    // SAFETY: `table` points at `n` rows of a static array that lives as long as the process.
    let rows = unsafe { std::slice::from_raw_parts(table, n) };
    // SAFETY: every name is a string literal of the generated table (NUL-terminated, static).
    let text = |p: *const c_char| unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned();
    rows.iter().map(|r| (text(r.strukt), text(r.field), r.offset, r.size)).collect()
}

fn c_sizeof(name: &str) -> Option<usize> {
    // SAFETY: the sizeof exports take no arguments and only return a constant.
    unsafe {
        Some(match name {
            "Conv2dParams" => hrk_emu_sizeof_Conv2dParams(),
            "BatchNormParams" => hrk_emu_sizeof_BatchNormParams(),
            "UpsampleParams" => hrk_emu_sizeof_UpsampleParams(),
            "EltwiseParams" => hrk_emu_sizeof_EltwiseParams(),
            "ConcatParams" => hrk_emu_sizeof_ConcatParams(),
            "MseParams" => hrk_emu_sizeof_MseParams(),
            "OptimParams" => hrk_emu_sizeof_OptimParams(),
            "HeatmapParams" => hrk_emu_sizeof_HeatmapParams(),
            "FusionParams" => hrk_emu_sizeof_FusionParams(),
            "ChannelOpParams" => hrk_emu_sizeof_ChannelOpParams(),
            "MaxPoolParams" => hrk_emu_sizeof_MaxPoolParams(),
            "MmaProbeParams" => hrk_emu_sizeof_MmaProbeParams(),
            _ => return None,
        })
    }
}

/// Every difference between the Rust parameter structs (src/cuda/params.rs) and kernels/params.h, one line
/// each naming the struct and field: a size, an offset or a field size that differ, or a field (or struct)
/// on one side only. Empty when the two agree byte for byte.
pub fn abi_mismatches() -> Vec<String> {
    compare_layouts(&layouts(), &c_fields(), c_sizeof)
}

type CLayout = (String, String, usize, usize);

fn compare_layouts(
    rust: &[(&str, usize, &[FieldLayout])], c: &[CLayout], c_size: impl Fn(&str) -> Option<usize>,
) -> Vec<String> {
    let mut out = Vec::new();
    for (name, size, fields) in rust {
        match c_size(name) {
            Some(c_size) if c_size != *size => out.push(format!("{name}: size {size} in Rust vs {c_size} in C")),
            None => out.push(format!("{name}: no sizeof export on the C side")),
            _ => {}
        }
        for f in fields.iter() {
            match c.iter().find(|(s, field, ..)| s == name && field == f.name) {
                None => out.push(format!("{name}.{}: in params.rs, missing in params.h", f.name)),
                Some((.., offset, size)) if (*offset, *size) != (f.offset, f.size) => out.push(format!(
                    "{name}.{}: offset {} size {} in Rust vs offset {offset} size {size} in C",
                    f.name, f.offset, f.size
                )),
                _ => {}
            }
        }
    }
    for (s, field, ..) in c {
        match rust.iter().find(|(name, ..)| name == s) {
            None => out.push(format!("{s}: in params.h, missing in params.rs")),
            Some((_, _, fields)) if !fields.iter().any(|f| f.name == field) => {
                out.push(format!("{s}.{field}: in params.h, missing in params.rs"))
            }
            _ => {}
        }
    }
    out.dedup();
    out
}

/// Host address of a slice, for parameter structs under emulation.
pub fn addr<T>(v: &[T]) -> u64 {
    v.as_ptr() as u64
}
/// Host address of a mutable slice.
pub fn addr_mut<T>(v: &mut [T]) -> u64 {
    v.as_mut_ptr() as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_moved_or_missing_field_is_named() {
        const FIELDS: &[FieldLayout] =
            &[FieldLayout { name: "a", offset: 0, size: 8 }, FieldLayout { name: "n", offset: 8, size: 4 }];
        let rust = [("P", 16, FIELDS)];
        let c = |f: &str, offset| ("P".to_string(), f.to_string(), offset, if f == "a" { 8 } else { 4 });
        assert!(compare_layouts(&rust, &[c("a", 0), c("n", 8)], |_| Some(16)).is_empty());
        let moved = compare_layouts(&rust, &[c("a", 0), c("n", 12)], |_| Some(16));
        assert_eq!(moved, ["P.n: offset 8 size 4 in Rust vs offset 12 size 4 in C"]);
        let extra = compare_layouts(&rust, &[c("a", 0), c("n", 8), c("m", 12)], |_| Some(24));
        assert_eq!(extra, ["P: size 16 in Rust vs 24 in C", "P.m: in params.h, missing in params.rs"]);
    }
}
