//! Inference precision (`--precision` of `hrk test`, `predict`, `bench`): f32, or bf16 convs (BN folded
//! into the weights first, then weights and conv inputs rounded to bf16, products accumulated in f32;
//! everything else stays f32).
//!
//! On a CPU with AVX512-BF16 (`vdpbf16ps`) the convs run on the bf16 kernels of
//! `ops::conv2d::direct::bf16`. Without it, `bf16` runs f32 with a one-line warning, or, with
//! `HRK_BF16_EMULATE=1`, bf16 numerics in f32 arithmetic: a product of two bf16 values (8-bit
//! significands) is exact in f32, so the emulation equals a bf16 dot-product instruction with f32
//! accumulation up to the order of the additions (it is slower than f32: an extra rounding pass per
//! conv, no Winograd) and exists to measure what bf16 costs in accuracy anywhere.

use anyhow::{bail, Result};

/// The arithmetic of the CPU inference engine's convs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Precision {
    #[default]
    F32,
    /// bf16 weights and conv inputs, f32 accumulation (emulated: see the module doc).
    Bf16,
}

impl std::str::FromStr for Precision {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Precision> {
        match s {
            "f32" => Ok(Precision::F32),
            "bf16" => Ok(Precision::Bf16),
            _ => bail!("--precision: expected f32 or bf16, got {s:?}"),
        }
    }
}

impl Precision {
    pub fn name(self) -> &'static str {
        match self {
            Precision::F32 => "f32",
            Precision::Bf16 => "bf16",
        }
    }

    /// What the CPU engine runs when this precision is asked for: bf16 where the CPU has bf16 kernels
    /// that pay (`host_isa::bf16_kernels`) or the emulation is asked for (`HRK_BF16_EMULATE=1`); otherwise f32, with one warning
    /// that says why.
    pub fn resolve_cpu(self) -> Precision {
        if self == Precision::F32 || crate::ops::conv2d::direct::bf16::available() || crate::switches::bf16_emulate() {
            return self;
        }
        log::warn!(
            "--precision bf16: no bf16 kernels for this CPU ({}); running f32 (HRK_BF16_EMULATE=1 emulates bf16 numerics)",
            crate::host_isa::bf16_kernels_why()
        );
        Precision::F32
    }
}
