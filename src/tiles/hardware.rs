//! The tile unit's hardware instructions (Intel AMX-TILE and AMX-BF16) through `asm!`.

use super::{check_dot, check_tile, configured, TileConfig, TileUnit};
use std::marker::PhantomData;

/// The hardware tile unit of the current thread. The tile configuration and registers are per-thread
/// state, so this value is neither Send nor Sync; dropping it releases the tiles (TILERELEASE).
/// Made only through `new_unchecked`, whose caller vouches that the CPU and the OS let this process use
/// the tiles (`crate::host_isa::amx_usable`; `ops::conv2d::direct::amx::amx_unit` checks it and makes one).
#[derive(Debug)]
pub struct AmxTiles {
    /// The configuration loaded, kept to check each instruction's operands as the model does (a wrong
    /// shape then panics with the model's message instead of raising #UD).
    cfg: Option<TileConfig>,
    not_send: PhantomData<*const ()>,
}

impl AmxTiles {
    /// The tile unit, unconfigured.
    ///
    /// # Safety
    /// The CPU must have AMX-TILE and AMX-BF16 and the OS must have granted this process the tile state
    /// (`arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA)` on Linux): `crate::host_isa::amx_usable()`.
    pub unsafe fn new_unchecked() -> AmxTiles {
        AmxTiles { cfg: None, not_send: PhantomData }
    }
}

impl Drop for AmxTiles {
    fn drop(&mut self) {
        if self.cfg.is_some() {
            self.release();
        }
    }
}

#[cfg(target_arch = "x86_64")]
impl TileUnit for AmxTiles {
    fn configure(&mut self, cfg: &TileConfig) {
        // SAFETY: the CPU has AMX and the OS granted the tile state (new_unchecked's contract); the
        // operand is a valid palette-1 configuration (TileConfig::new checked it), 64 bytes, aligned.
        unsafe { std::arch::asm!("ldtilecfg [{0}]", in(reg) cfg.as_bytes().as_ptr(), options(nostack, readonly)) };
        self.cfg = Some(*cfg);
    }

    fn zero<const T: u8>(&mut self) {
        check_tile(configured(&self.cfg, "tilezero"), T, "tilezero");
        // SAFETY: AMX usable (new_unchecked); tile T is configured (checked).
        unsafe { std::arch::asm!("tilezero tmm{t}", t = const T, options(nostack, nomem)) };
    }

    unsafe fn load<const T: u8>(&mut self, base: *const u8, stride: usize) {
        check_tile(configured(&self.cfg, "tileloadd"), T, "tileloadd");
        // SAFETY: AMX usable (new_unchecked); tile T is configured (checked); the caller vouches for the
        // rows × row_bytes read at base + r·stride.
        unsafe {
            std::arch::asm!(
                "tileloadd tmm{t}, [{p} + {s}*1]", t = const T, p = in(reg) base, s = in(reg) stride,
                options(nostack, readonly)
            )
        };
    }

    unsafe fn store<const T: u8>(&mut self, base: *mut u8, stride: usize) {
        check_tile(configured(&self.cfg, "tilestored"), T, "tilestored");
        // SAFETY: as load; the caller vouches for the rows × row_bytes written.
        unsafe {
            std::arch::asm!(
                "tilestored [{p} + {s}*1], tmm{t}", t = const T, p = in(reg) base, s = in(reg) stride,
                options(nostack)
            )
        };
    }

    fn dot_bf16<const C: u8, const A: u8, const B: u8>(&mut self) {
        check_dot(configured(&self.cfg, "tdpbf16ps"), C, A, B);
        // SAFETY: AMX usable (new_unchecked); the three tiles' shapes meet TDPBF16PS's conditions (checked).
        unsafe {
            std::arch::asm!("tdpbf16ps tmm{c}, tmm{a}, tmm{b}", c = const C, a = const A, b = const B, options(nostack, nomem))
        };
    }

    fn release(&mut self) {
        // SAFETY: AMX usable (new_unchecked); TILERELEASE has no operands.
        unsafe { std::arch::asm!("tilerelease", options(nostack, nomem)) };
        self.cfg = None;
    }
}

/// Off x86-64 there are no tiles: `host_isa::amx_usable()` is false, so no value is ever made.
#[cfg(not(target_arch = "x86_64"))]
impl TileUnit for AmxTiles {
    fn configure(&mut self, _cfg: &TileConfig) {
        unreachable!("AMX tiles exist only on x86-64")
    }
    fn zero<const T: u8>(&mut self) {
        unreachable!("AMX tiles exist only on x86-64")
    }
    unsafe fn load<const T: u8>(&mut self, _base: *const u8, _stride: usize) {
        unreachable!("AMX tiles exist only on x86-64")
    }
    unsafe fn store<const T: u8>(&mut self, _base: *mut u8, _stride: usize) {
        unreachable!("AMX tiles exist only on x86-64")
    }
    fn dot_bf16<const C: u8, const A: u8, const B: u8>(&mut self) {
        unreachable!("AMX tiles exist only on x86-64")
    }
    fn release(&mut self) {
        unreachable!("AMX tiles exist only on x86-64")
    }
}
