//! Which CPU algorithm computes a conv: one place decides, per geometry, instruction set (through
//! `crate::host_isa`, via the kernels' `available` checks) and arithmetic. The kernels' entry points
//! (`cpu_kernel::forward_fused` and `backward`, the conv op, `direct::bf16::forward`, the inference
//! engine) all ask `choose`.
//!
//! | pass         | arithmetic | algorithm     | when                                                            |
//! |--------------|------------|---------------|-----------------------------------------------------------------|
//! | inference    | bf16       | AMX tiles     | bf16 family AmxTiles / TileModel (3×3 pad 1 s1/s2, 1×1 s1)      |
//! | inference    | bf16       | bf16 Winograd | family Avx512Bf16, 3×3 s1, Winograd pays (f32 rule), cin ≥ 32   |
//! | inference    | bf16       | bf16 direct   | family Avx512Bf16 (3×3 pad 1 s1/s2, 1×1 s1), otherwise          |
//! | inference    | f32        | Winograd      | `HRK_CONV_WINOGRAD`, `HRK_CONV_DIRECT`, Winograd pays           |
//! | forward (op) | bf16       | bf16 …        | as inference bf16, from 10×10 outputs (weights packed per call) |
//! | any fwd / dx | f32        | direct        | `HRK_CONV_DIRECT`, 3×3 pad 1 (dx: s1), ≥ 10×10 outputs, AVX2+   |
//! | dx           | bf16       | bf16 …        | s1, as the op's forward; the form of the transposed conv        |
//! | dW           | bf16       | AMX tiles     | family AmxTiles / TileModel, 3×3 pad 1 or 1×1, s1, n·h·w ≥ 512   |
//! | dW           | bf16       | bf16 direct   | family Avx512Bf16, 3×3 pad 1 s1/s2, n·ho·wo ≥ 512               |
//! | dW           | f32, bf16  | direct        | `HRK_CONV_DIRECT`, 3×3 pad 1 s1, batch × plane vectors ≥ 32     |
//! | otherwise    | any        | im2col + GEMM | f64, other geometries, no AVX2+FMA                              |
//!
//! Why these thresholds:
//! - Direct below 10×10 outputs loses to im2col: the two junk columns per row and the short tiles
//!   cost more (8×8 measured ~5 % slower).
//! - The direct weight gradient ends each (co, ci, tap) sum in a horizontal reduction, which small
//!   planes at batch 1 (16×16, 8×8) do not amortise: it needs ≥ 32 vectors of padded positions over
//!   the batch.
//! - Winograd beats direct where whole vectors of tiles are stored as vectors (widths of 32k, or 16
//!   and 8 with matching heights); on the generic grid the junk tiles and per-tile stores cost more
//!   than the saved multiply-adds (72 channels at 16×16 measured 12 % slower). The inference engine
//!   only: training keeps the direct kernels, whose rounding the PyTorch parity bounds of Adam steps
//!   are set for (`HRK_CONV_WINOGRAD=0` turns it off).
//! - bf16 Winograd from 32 input channels: at 18 its transforms outweigh the halved products (82 vs
//!   100 GFLOP/CPU-s on 18 channels at 64×64, even at 36 on 32×32, 2.2× faster at 64 channels and
//!   up; `benches/conv.rs`).
//! - The tile families (`host_isa::bf16_kernels`: AMX, or its software model) take every bf16 form with the
//!   tile kernels, no Winograd: a 16×16×32 tile product leaves no transform worth its rounding (AMX speed
//!   itself is not yet measured; the family is chosen per CPU in `host_isa`).
//! - The conv op's bf16 convs from 10×10 outputs: below, the per-call packing of weights and planes
//!   costs more than the halved products save.
//! - The bf16 weight gradient pairs positions, not channels (`direct::bf16::weight_grad`): 1.9× the
//!   f32 direct one on W18's 3×3 stride-1 convs (b8, `benches/conv.rs` weight pass), 1.5–3.2× the
//!   GEMM that f32 takes at stride 2 (on the forward's phase planes; the 3-channel stem included). Its
//!   1×1 form (nine input channels in place of nine taps) does not beat GEMM, so 1×1 convs keep f32
//!   weight gradients.

use super::direct::{self, amx::Unit, winograd};
use super::tile_weight_grad;
use super::Conv2dGeom;
use crate::host_isa::Bf16Kernels;

/// How one conv pass is computed on the CPU.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConvAlgorithm {
    /// im2col (none for 1×1) + the `gemm` crate: every geometry and dtype.
    Gemm,
    /// The direct 3×3 f32 kernels (`direct`).
    Direct,
    /// Winograd F(2×2, 3×3) in f32 (`direct::winograd`).
    Winograd,
    /// The direct bf16 kernels (`direct::bf16`).
    Bf16Direct,
    /// Winograd with bf16 products (`direct::bf16` → `winograd::forward_bf16`).
    Bf16Winograd,
    /// The tile kernels (`direct::bf16` → `direct::amx`) on the AMX unit or its software model.
    AmxTiles(direct::amx::Unit),
}

/// The conv pass being computed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pass {
    /// The inference engine's forward (BN folded, bf16 weights packed once per model).
    Inference,
    /// A forward without Winograd: the autograd conv op's (training), and `cpu_kernel::forward_fused`
    /// (direct or GEMM) wherever it is called.
    Forward,
    /// The input gradient.
    BackwardData,
    /// The weight gradient.
    BackwardWeight,
}

/// The arithmetic asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arithmetic {
    F64,
    F32,
    /// bf16 operands, f32 sums (`--precision bf16`, the op's `with_bf16_convs`): taken where the bf16
    /// kernels run and pay, f32 otherwise.
    Bf16,
}

/// The algorithm for this pass of `g` (see the module table).
pub fn choose(g: &Conv2dGeom, pass: Pass, arithmetic: Arithmetic) -> ConvAlgorithm {
    let bf16 = arithmetic == Arithmetic::Bf16 && bf16_runs(g);
    if pass == Pass::BackwardWeight && arithmetic == Arithmetic::Bf16 {
        if let Some(unit) = tile_weight_grad::chosen_unit() {
            if tile_weight_grad::applies(g) && g.n * g.h * g.w >= 512 {
                return ConvAlgorithm::AmxTiles(unit);
            }
        }
    }
    match pass {
        Pass::Inference if bf16 => bf16_form(g),
        Pass::Forward if bf16 && g.ho * g.wo >= 100 => bf16_form(g),
        Pass::BackwardData if bf16 && g.stride == 1 && g.ho * g.wo >= 100 => bf16_form(&g.transposed()),
        Pass::BackwardWeight if bf16 && bf16_weight_grad_pays(g) => ConvAlgorithm::Bf16Direct,
        _ if arithmetic == Arithmetic::F64 => ConvAlgorithm::Gemm,
        Pass::Inference if arithmetic == Arithmetic::F32 && winograd_pays(g) => ConvAlgorithm::Winograd,
        Pass::Inference | Pass::Forward if direct_pays(g) => ConvAlgorithm::Direct,
        Pass::BackwardData if direct::applies_backward(g) && direct_pays(g) => ConvAlgorithm::Direct,
        Pass::BackwardWeight if weight_grad_pays(g) => ConvAlgorithm::Direct,
        _ => ConvAlgorithm::Gemm,
    }
}

/// The geometries the bf16 kernels compute: 3×3 pad 1 at stride 1 or 2, and 1×1 pad 0 stride 1.
pub fn bf16_applies(g: &Conv2dGeom) -> bool {
    let shape = matches!((g.k, g.pad, g.stride), (3, 1, 1) | (3, 1, 2) | (1, 0, 1));
    shape && g.cin > 0 && g.cout > 0
}

/// Whether the bf16 kernels run for `g` here (the CPU and the geometry).
fn bf16_runs(g: &Conv2dGeom) -> bool {
    direct::bf16_available() && bf16_applies(g)
}

/// Which bf16 kernel computes `g`, given that a bf16 kernel does: the tile kernels for the tile families
/// (every form), else Winograd where it pays, from 32 input channels, else direct.
pub fn bf16_form(g: &Conv2dGeom) -> ConvAlgorithm {
    match crate::host_isa::bf16_kernels() {
        Bf16Kernels::AmxTiles => return ConvAlgorithm::AmxTiles(Unit::Hardware),
        Bf16Kernels::TileModel => return ConvAlgorithm::AmxTiles(Unit::Model),
        Bf16Kernels::Avx512Bf16 | Bf16Kernels::F32 => {}
    }
    if g.k == 3 && crate::switches::conv_winograd() && winograd_beats_direct(g) && g.cin >= 32 {
        ConvAlgorithm::Bf16Winograd
    } else {
        ConvAlgorithm::Bf16Direct
    }
}

/// `HRK_CONV_DIRECT=0` turns the direct 3×3 kernels off (everything then takes im2col + GEMM, and
/// the f32 inference engine no Winograd).
fn direct_enabled() -> bool {
    crate::switches::conv_direct()
}

/// f32 forward (and backward-data) by the direct kernel: from 10×10 outputs.
fn direct_pays(g: &Conv2dGeom) -> bool {
    direct_enabled() && direct::applies(g) && g.ho * g.wo >= 100 && direct::available()
}

/// The direct weight gradient: ≥ 32 vectors of padded positions over the batch.
fn weight_grad_pays(g: &Conv2dGeom) -> bool {
    direct_enabled()
        && direct::applies_backward(g)
        && g.n * direct::plane_vectors(g.h, g.w) >= 32
        && direct::available()
}

/// The bf16 weight gradient (`direct::bf16::weight_grad`): 3×3 at stride 1 and 2 (the stem too), from
/// 16 vectors of 32 output positions over the batch (the f32 rule's count). Not 1×1,
/// which the kernel computes but which there streams nine input planes per task from L2/L3 (59–78
/// GFLOP/CPU-s vs GEMM's 67 at b8).
fn bf16_weight_grad_pays(g: &Conv2dGeom) -> bool {
    let positions = g.n * g.ho * g.wo;
    direct::bf16::weight_grad_available() && direct::bf16::weight_grad_applies(g) && g.k == 3 && positions >= 512
}

/// f32 Winograd in the inference engine.
fn winograd_pays(g: &Conv2dGeom) -> bool {
    crate::switches::conv_winograd() && direct_enabled() && winograd_beats_direct(g)
}

/// Winograd computes `g` (geometry and CPU) with whole vectors of tiles stored as vectors.
fn winograd_beats_direct(g: &Conv2dGeom) -> bool {
    winograd::applies(g) && winograd::stores_whole_vectors(g)
}
