//! The host CPU's instruction sets, read once per process: every CPU kernel that picks a build by the
//! features of the machine asks here, and `HRK_NO_AVX512` and `HRK_BF16_KERNELS` are honoured here only.
//!
//! | level / query   | features required              | what runs on it                                       |
//! |-----------------|--------------------------------|-------------------------------------------------------|
//! | `Isa::Avx512`   | AVX-512 F, BW, DQ, VL          | conv direct + Winograd f32, BatchNorm, detector convs |
//! | `Isa::Avx2`     | AVX2, FMA                      | the same kernels' AVX2 builds, the detector's loops   |
//! | `simd()` = None | (baseline SSE2)                | im2col + GEMM convs, BatchNorm's portable build       |
//! | `avx512bf16()`  | `Isa::Avx512` + AVX512-BF16    | the `vdpbf16ps` convs (`Bf16Kernels::Avx512Bf16`)     |
//! | `amx_usable()`  | AMX-TILE + AMX-BF16, XCR0 tile state, the kernel's permission | the tile convs (`Bf16Kernels::AmxTiles`) |
//! | `cpu().avx2`    | AVX2                           | `data::pillow`'s samplers (integer, no FMA)           |
//!
//! AVX-512 is one feature set, the union of what the kernels use: the convs' builds enable F and VL
//! (without VL LLVM allocates only 20 of the 32 vector registers and spills), the bf16 convs add BW,
//! and BatchNorm's f64 passes enable F, VL, DQ and BW. Every CPU with AVX-512 VL has BW and DQ too
//! (Skylake-SP onward, Zen 4), so the union changes no choice on real hardware.
//!
//! The bf16 conv kernels of `--precision bf16` come in families, one chosen per CPU (`bf16_kernels`):
//!
//! | CPU                                              | family (auto)  | why                                      |
//! |--------------------------------------------------|----------------|------------------------------------------|
//! | AMX usable (Sapphire Rapids and later, Linux grants the tile state) | `AmxTiles` | 16×16×32 products per instruction |
//! | AVX512-BF16 on the AVX-512 level, AMD (Zen 4+)   | `Avx512Bf16`   | `vdpbf16ps` doubles the f32 FMA rate     |
//! | AVX512-BF16 elsewhere (Intel without AMX)         | `F32`          | measured slower than hrk's f32 there     |
//! | no AVX512-BF16, or no AVX2                        | `F32`          | no bf16 products: never a slower path    |
//!
//! `HRK_BF16_KERNELS` forces a family for A/B runs and tests (`tile-model` runs the tile kernels on the
//! software model, on any CPU with AVX2); a family the CPU cannot run falls back to auto's, with one
//! warning. Tests override it per thread with `with_bf16_kernels`.

pub use crate::switches::Bf16Kernels;
use std::cell::Cell;
use std::sync::OnceLock;

/// The x86 features the kernels use, as the CPU reports them (regardless of the switches).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CpuFeatures {
    pub avx2: bool,
    pub fma: bool,
    pub avx512f: bool,
    pub avx512bw: bool,
    pub avx512dq: bool,
    pub avx512vl: bool,
    pub avx512bf16: bool,
    /// AMX-TILE and AMX-BF16 (CPUID.7.0:EDX bits 24 and 22), and the OS saves the tile state (XCR0
    /// bits 17 and 18): the tiles may run once the kernel grants the permission (`amx_usable`).
    pub amx: bool,
    /// CPUID vendor "AuthenticAMD".
    pub amd: bool,
}

/// This CPU's features, detected on first use.
pub fn cpu() -> CpuFeatures {
    static FEATURES: OnceLock<CpuFeatures> = OnceLock::new();
    *FEATURES.get_or_init(detect)
}

#[cfg(target_arch = "x86_64")]
fn detect() -> CpuFeatures {
    use std::arch::is_x86_feature_detected as has;
    CpuFeatures {
        avx2: has!("avx2"),
        fma: has!("fma"),
        avx512f: has!("avx512f"),
        avx512bw: has!("avx512bw"),
        avx512dq: has!("avx512dq"),
        avx512vl: has!("avx512vl"),
        avx512bf16: has!("avx512bf16"),
        amx: amx_in_cpuid_and_xcr0(),
        amd: vendor() == *b"AuthenticAMD",
    }
}

/// The CPUID vendor string (leaf 0: EBX, EDX, ECX).
#[cfg(target_arch = "x86_64")]
fn vendor() -> [u8; 12] {
    let r = std::arch::x86_64::__cpuid(0);
    let mut v = [0; 12];
    for (chunk, reg) in v.chunks_exact_mut(4).zip([r.ebx, r.edx, r.ecx]) {
        chunk.copy_from_slice(&reg.to_le_bytes());
    }
    v
}

/// AMX-TILE and AMX-BF16 in CPUID, and XCR0's tile configuration and data state enabled by the OS.
#[cfg(target_arch = "x86_64")]
fn amx_in_cpuid_and_xcr0() -> bool {
    use std::arch::x86_64::{__cpuid, __cpuid_count};
    // Leaf 7 is read only when leaf 0 says it exists.
    let max_leaf = __cpuid(0).eax;
    let osxsave = __cpuid(1).ecx & (1 << 27) != 0;
    let leaf7_edx = if max_leaf >= 7 { __cpuid_count(7, 0).edx } else { 0 };
    let (amx_bf16, amx_tile) = (leaf7_edx & (1 << 22) != 0, leaf7_edx & (1 << 24) != 0);
    if max_leaf < 7 || !osxsave || !amx_bf16 || !amx_tile {
        return false;
    }
    let (lo, _hi): (u32, u32);
    // SAFETY: OSXSAVE is set (checked), so XGETBV is enabled; XCR0 is register 0.
    unsafe { std::arch::asm!("xgetbv", in("ecx") 0u32, out("eax") lo, out("edx") _hi, options(nomem, nostack)) };
    const XTILECFG: u32 = 1 << 17;
    const XTILEDATA: u32 = 1 << 18;
    lo & (XTILECFG | XTILEDATA) == XTILECFG | XTILEDATA
}

#[cfg(not(target_arch = "x86_64"))]
fn detect() -> CpuFeatures {
    CpuFeatures::default()
}

/// Whether the AMX tile unit may run in this process: the CPU and OS have it (`cpu().amx`) and Linux
/// granted the tile data state on the one request (`arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA)`,
/// made on first use; without it the first tile instruction faults).
pub fn amx_usable() -> bool {
    amx_permission().is_ok()
}

/// The kernel's answer to the tile-state request, asked once: Err says why AMX does not run.
fn amx_permission() -> Result<(), &'static str> {
    static ANSWER: OnceLock<Result<(), &'static str>> = OnceLock::new();
    *ANSWER.get_or_init(|| {
        if !cpu().amx {
            return Err("no AMX-BF16 tiles on this CPU (or not enabled by the OS)");
        }
        request_tile_state()
    })
}

#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
fn request_tile_state() -> Result<(), &'static str> {
    extern "C" {
        fn syscall(num: i64, ...) -> i64;
    }
    const SYS_ARCH_PRCTL: i64 = 158;
    const ARCH_REQ_XCOMP_PERM: i64 = 0x1023;
    const XFEATURE_XTILEDATA: i64 = 18;
    // SAFETY: arch_prctl(ARCH_REQ_XCOMP_PERM, feature) takes two integers and touches no memory of ours.
    let rc = unsafe { syscall(SYS_ARCH_PRCTL, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) };
    if rc == 0 {
        Ok(())
    } else {
        Err("Linux refused the AMX tile state (arch_prctl ARCH_REQ_XCOMP_PERM)")
    }
}

#[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
fn request_tile_state() -> Result<(), &'static str> {
    Err("AMX tiles are used on Linux only (the tile-state request is Linux's arch_prctl)")
}

/// The vector instruction-set levels the CPU kernels are built for, widest first (see the module
/// table for the features each requires).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Isa {
    /// AVX-512 F/BW/DQ/VL: 16-float vectors, 32 registers.
    Avx512,
    /// AVX2 + FMA: 8-float vectors, 16 registers.
    Avx2,
}

impl Isa {
    /// Every level, widest first.
    pub const ALL: [Isa; 2] = [Isa::Avx512, Isa::Avx2];

    pub fn name(self) -> &'static str {
        match self {
            Isa::Avx512 => "AVX-512",
            Isa::Avx2 => "AVX2+FMA",
        }
    }

    /// Whether this CPU has every feature of the level (regardless of `HRK_NO_AVX512`).
    pub fn supported(self) -> bool {
        let f = cpu();
        match self {
            Isa::Avx512 => f.avx512f && f.avx512bw && f.avx512dq && f.avx512vl,
            Isa::Avx2 => f.avx2 && f.fma,
        }
    }
}

/// The level the CPU kernels run: the widest this CPU supports, AVX-512 skipped when
/// `HRK_NO_AVX512=1`; None on a CPU with neither (the convs take im2col + GEMM, BatchNorm its
/// portable build).
pub fn simd() -> Option<Isa> {
    static LEVEL: OnceLock<Option<Isa>> = OnceLock::new();
    *LEVEL.get_or_init(|| {
        Isa::ALL.into_iter().find(|&i| i.supported() && !(i == Isa::Avx512 && crate::switches::no_avx512()))
    })
}

/// Whether the bf16 dot-product kernels run: the AVX-512 level is in use (`simd()`) and the CPU has
/// AVX512-BF16.
pub fn avx512bf16() -> bool {
    simd() == Some(Isa::Avx512) && cpu().avx512bf16
}

thread_local! {
    /// A scoped choice of the family on this thread (`with_bf16_kernels`), over the switch.
    static FORCED: Cell<Option<Bf16Kernels>> = const { Cell::new(None) };
}

/// Runs `f` with the bf16 family forced to `family` on the calling thread (where the convs choose their
/// kernels; tests and A/B runs). A family the CPU cannot run still falls back to auto's.
pub fn with_bf16_kernels<R>(family: Bf16Kernels, f: impl FnOnce() -> R) -> R {
    crate::scoped::with(&FORCED, Some(family), f)
}

/// The bf16 conv kernels of this CPU (see the module table): forced by `with_bf16_kernels` or
/// `HRK_BF16_KERNELS`, else auto's choice.
pub fn bf16_kernels() -> Bf16Kernels {
    match FORCED.with(Cell::get) {
        Some(family) => runnable(family).map_or_else(|_| auto_bf16_kernels().0, |()| family),
        None => process_bf16_kernels().0,
    }
}

/// The process's family (the switch or auto) and why, decided once; a forced family the CPU cannot run
/// warns once and falls back to auto's.
fn process_bf16_kernels() -> (Bf16Kernels, String) {
    static CHOICE: OnceLock<(Bf16Kernels, String)> = OnceLock::new();
    CHOICE
        .get_or_init(|| match crate::switches::bf16_kernels_forced() {
            None => auto_bf16_kernels(),
            Some(family) => match runnable(family) {
                Ok(()) => (family, format!("forced by HRK_BF16_KERNELS={}", family.name())),
                Err(why) => {
                    let (auto, auto_why) = auto_bf16_kernels();
                    log::warn!("HRK_BF16_KERNELS={}: {why}; using {} ({auto_why})", family.name(), auto.name());
                    (auto, format!("HRK_BF16_KERNELS={} cannot run: {why}; auto: {auto_why}", family.name()))
                }
            },
        })
        .clone()
}

/// Whether this CPU runs `family`, or why not.
fn runnable(family: Bf16Kernels) -> Result<(), &'static str> {
    // The tile kernels pad their planes and store through the direct kernels' AVX2 / AVX-512 builds.
    let tiles_host = if simd().is_some() { Ok(()) } else { Err("the tile kernels need AVX2+FMA") };
    match family {
        Bf16Kernels::AmxTiles => amx_permission().and(tiles_host),
        Bf16Kernels::TileModel => tiles_host,
        Bf16Kernels::Avx512Bf16 if avx512bf16() => Ok(()),
        Bf16Kernels::Avx512Bf16 if cpu().avx512bf16 => {
            Err("AVX512-BF16 needs the AVX-512 level (HRK_NO_AVX512 is set)")
        }
        Bf16Kernels::Avx512Bf16 => Err("no AVX512-BF16 on this CPU"),
        Bf16Kernels::F32 => Ok(()),
    }
}

/// Auto's family for this CPU and why.
fn auto_bf16_kernels() -> (Bf16Kernels, String) {
    let no_amx = match runnable(Bf16Kernels::AmxTiles) {
        Ok(()) => return (Bf16Kernels::AmxTiles, "AMX tiles usable".to_string()),
        Err(why) => why,
    };
    if avx512bf16() && cpu().amd {
        return (Bf16Kernels::Avx512Bf16, format!("AMD with AVX512-BF16; {no_amx}"));
    }
    let why = if avx512bf16() {
        "AVX512-BF16 without AMX measured slower than f32 on Intel"
    } else if cpu().avx512bf16 {
        "AVX512-BF16 needs the AVX-512 level (HRK_NO_AVX512 is set)"
    } else {
        "no AVX512-BF16"
    };
    (Bf16Kernels::F32, format!("{why}; {no_amx}"))
}

/// Why the process runs its family (for warnings when `--precision bf16` falls back to f32).
pub fn bf16_kernels_why() -> String {
    process_bf16_kernels().1
}

/// One line for logs: the level the kernels run and the bf16 family, e.g.
/// "CPU kernels: AVX-512 (F+BW+DQ+VL); bf16 kernels: avx512-bf16 (AMD with AVX512-BF16 (...))".
pub fn describe() -> String {
    let level = match simd() {
        Some(Isa::Avx512) => "AVX-512 (F+BW+DQ+VL)".to_string(),
        Some(isa) if Isa::Avx512.supported() => format!("{} (AVX-512 switched off by HRK_NO_AVX512)", isa.name()),
        Some(isa) => isa.name().to_string(),
        None => "portable (no AVX2+FMA)".to_string(),
    };
    let (family, why) = process_bf16_kernels();
    format!("CPU kernels: {level}; bf16 kernels: {} ({why})", family.name())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn features_match_std_detection() {
        use std::arch::is_x86_feature_detected as has;
        let f = cpu();
        assert_eq!(f.avx2, has!("avx2"));
        assert_eq!(f.fma, has!("fma"));
        assert_eq!(f.avx512f, has!("avx512f"));
        assert_eq!(f.avx512bw, has!("avx512bw"));
        assert_eq!(f.avx512dq, has!("avx512dq"));
        assert_eq!(f.avx512vl, has!("avx512vl"));
        assert_eq!(f.avx512bf16, has!("avx512bf16"));
        let avx512 = has!("avx512f") && has!("avx512bw") && has!("avx512dq") && has!("avx512vl");
        assert_eq!(Isa::Avx512.supported(), avx512);
        assert_eq!(Isa::Avx2.supported(), has!("avx2") && has!("fma"));
    }

    #[test]
    fn the_chosen_level_is_the_widest_supported_one_the_switch_allows() {
        let want = if Isa::Avx512.supported() && !crate::switches::no_avx512() {
            Some(Isa::Avx512)
        } else if Isa::Avx2.supported() {
            Some(Isa::Avx2)
        } else {
            None
        };
        assert_eq!(simd(), want);
        assert_eq!(avx512bf16(), want == Some(Isa::Avx512) && cpu().avx512bf16);
        assert!(describe().starts_with("CPU kernels: "));
    }

    #[test]
    fn the_bf16_family_is_amx_then_amd_avx512_bf16_then_f32() {
        let (auto, why) = auto_bf16_kernels();
        let want = if amx_usable() && simd().is_some() {
            Bf16Kernels::AmxTiles
        } else if avx512bf16() && cpu().amd {
            Bf16Kernels::Avx512Bf16
        } else {
            Bf16Kernels::F32
        };
        assert_eq!(auto, want, "{why}");
        if crate::switches::bf16_kernels_forced().is_none() {
            assert_eq!(bf16_kernels(), want);
            assert!(describe().contains(&format!("bf16 kernels: {}", want.name())), "{}", describe());
        }
    }

    #[test]
    fn a_scoped_tile_model_runs_where_avx2_does_and_amx_falls_back_without_the_tiles() {
        with_bf16_kernels(Bf16Kernels::TileModel, || {
            let want = if simd().is_some() { Bf16Kernels::TileModel } else { auto_bf16_kernels().0 };
            assert_eq!(bf16_kernels(), want);
        });
        with_bf16_kernels(Bf16Kernels::AmxTiles, || {
            let want = if amx_usable() && simd().is_some() { Bf16Kernels::AmxTiles } else { auto_bf16_kernels().0 };
            assert_eq!(bf16_kernels(), want);
        });
        assert_eq!(with_bf16_kernels(Bf16Kernels::F32, bf16_kernels), Bf16Kernels::F32);
    }
}
