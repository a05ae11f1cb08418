//! The host CPU's instruction sets, read once per process: every CPU kernel that picks a build by the
//! features of the machine asks here, and `HRK_NO_AVX512` is honoured here only.
//!
//! | level / query   | features required              | what runs on it                                       |
//! |-----------------|--------------------------------|-------------------------------------------------------|
//! | `Isa::Avx512`   | AVX-512 F, BW, DQ, VL          | conv direct + Winograd f32, BatchNorm, detector convs |
//! | `Isa::Avx2`     | AVX2, FMA                      | the same kernels' AVX2 builds, the detector's loops   |
//! | `simd()` = None | (baseline SSE2)                | im2col + GEMM convs, BatchNorm's portable build       |
//! | `avx512bf16()`  | `Isa::Avx512` + AVX512-BF16    | the bf16 convs (`vdpbf16ps`)                          |
//! | `cpu().avx2`    | AVX2                           | `data::pillow`'s samplers (integer, no FMA)           |
//!
//! AVX-512 is one feature set, the union of what the kernels use: the convs' builds enable F and VL
//! (without VL LLVM allocates only 20 of the 32 vector registers and spills), the bf16 convs add BW,
//! and BatchNorm's f64 passes enable F, VL, DQ and BW. Every CPU with AVX-512 VL has BW and DQ too
//! (Skylake-SP onward, Zen 4), so the union changes no choice on real hardware.
//!
//! The AMX tile unit (`amx_bf16`) is not detected here yet: it needs CPUID and XCR0 and a request
//! for the tile state from the kernel, which belong with the AMX kernels.

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
    }
}

#[cfg(not(target_arch = "x86_64"))]
fn detect() -> CpuFeatures {
    CpuFeatures::default()
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

/// One line for logs: the level the kernels run and whether the bf16 kernels do, e.g.
/// "CPU kernels: AVX-512 (F+BW+DQ+VL); bf16 products: AVX512-BF16".
pub fn describe() -> String {
    let level = match simd() {
        Some(Isa::Avx512) => "AVX-512 (F+BW+DQ+VL)".to_string(),
        Some(isa) if Isa::Avx512.supported() => format!("{} (AVX-512 switched off by HRK_NO_AVX512)", isa.name()),
        Some(isa) => isa.name().to_string(),
        None => "portable (no AVX2+FMA)".to_string(),
    };
    let bf16 = if avx512bf16() {
        "AVX512-BF16"
    } else if cpu().avx512bf16 {
        "off (needs the AVX-512 level)"
    } else {
        "none (no AVX512-BF16)"
    };
    format!("CPU kernels: {level}; bf16 products: {bf16}")
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
}
