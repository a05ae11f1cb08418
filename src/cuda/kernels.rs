//! Kernel descriptors: name, PTX module, host-emulator entry and launch geometry. The GPU launcher
//! (runtime.rs) and the emulator (emu.rs) both take a `&Kernel<P>` and the same parameter struct, so the
//! geometry tested under emulation is the geometry launched on the device.
use super::params::*;
use crate::switches::GpuMath;
use std::ffi::c_void;

/// Host-emulator entry: (params, grid[3], block[3], dynamic shared bytes) -> 0 on success.
pub type EmuFn = unsafe extern "C" fn(*const c_void, *const u32, *const u32, usize) -> i32;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LaunchDims {
    pub grid: [u32; 3],
    pub block: [u32; 3],
    pub shared_bytes: u32,
}

pub struct Kernel<P: 'static> {
    /// `extern "C"` symbol in the PTX.
    pub name: &'static str,
    /// kernels/<module>.cu
    pub module: &'static str,
    pub emu: EmuFn,
    pub dims: fn(&P) -> LaunchDims,
}

const THREADS: u32 = 256;
/// Grid-stride kernels never need more blocks than this to fill an H100 (132 SMs × 8 blocks of 256).
const MAX_1D_BLOCKS: u64 = 4096;
const CONV_TILE: u64 = 64;

fn div_ceil_u32(a: u64, b: u64) -> u32 {
    a.div_ceil(b).clamp(1, u32::MAX as u64) as u32
}
fn dims(grid: [u32; 3]) -> LaunchDims {
    LaunchDims { grid, block: [THREADS, 1, 1], shared_bytes: 0 }
}
fn grid_1d(total: u64) -> LaunchDims {
    dims([div_ceil_u32(total, THREADS as u64).min(MAX_1D_BLOCKS as u32), 1, 1])
}
fn nn(v: i32) -> u64 {
    v.max(0) as u64
}
/// Plane-walking kernels (BN apply/backward-data): x over the plane, y over planes (grid-stride in both).
fn grid_planes(planes: i32, hw: i32) -> LaunchDims {
    dims([div_ceil_u32(nn(hw), THREADS as u64).min(64), (nn(planes).clamp(1, 65535)) as u32, 1])
}

fn conv_forward_dims(p: &Conv2dParams) -> LaunchDims {
    let cols = nn(p.n) * nn(p.h_out) * nn(p.w_out);
    dims([div_ceil_u32(cols, CONV_TILE), div_ceil_u32(nn(p.c_out), CONV_TILE), 1])
}
fn conv_backward_data_dims(p: &Conv2dParams) -> LaunchDims {
    let cols = nn(p.n) * nn(p.h) * nn(p.w);
    dims([div_ceil_u32(cols, CONV_TILE), div_ceil_u32(nn(p.c_in), CONV_TILE), 1])
}
fn conv_backward_weight_dims(p: &Conv2dParams) -> LaunchDims {
    let cols = nn(p.c_in) * nn(p.kh) * nn(p.kw);
    dims([div_ceil_u32(cols, CONV_TILE), div_ceil_u32(nn(p.c_out), CONV_TILE), p.k_splits.clamp(1, 65535) as u32])
}

fn one_warp() -> LaunchDims {
    LaunchDims { grid: [1, 1, 1], block: [32, 1, 1], shared_bytes: 0 }
}

// The conv kernels of each `GpuMath`. The tensor-core kernels (kernels/conv_mma.cu) take the same
// parameters, grid and block as the FMA ones, and cover every shape: one choice per math, none per shape.

/// Forward conv (with its bias/residual/ReLU/statistics epilogue) for `math`.
pub fn conv_forward_kernel(math: GpuMath) -> &'static Kernel<Conv2dParams> {
    match math {
        GpuMath::Fp32 => &CONV2D_FORWARD,
        GpuMath::Tf32 => &CONV2D_FORWARD_TF32,
        GpuMath::Bf16 => &CONV2D_FORWARD_BF16,
    }
}
/// Backward-data conv for `math` (bf16 mode keeps the gradients on tf32).
pub fn conv_backward_data_kernel(math: GpuMath) -> &'static Kernel<Conv2dParams> {
    match math {
        GpuMath::Fp32 => &CONV2D_BACKWARD_DATA,
        GpuMath::Tf32 | GpuMath::Bf16 => &CONV2D_BACKWARD_DATA_TF32,
    }
}
/// Backward-weight conv for `math` (bf16 mode keeps the gradients on tf32).
pub fn conv_backward_weight_kernel(math: GpuMath) -> &'static Kernel<Conv2dParams> {
    match math {
        GpuMath::Fp32 => &CONV2D_BACKWARD_WEIGHT,
        GpuMath::Tf32 | GpuMath::Bf16 => &CONV2D_BACKWARD_WEIGHT_TF32,
    }
}

/// Split of the backward-weight reduction: enough blocks to fill ~2 waves of 132 SMs, each split still
/// reducing at least 1024 products.
pub fn conv_weight_k_splits(p: &Conv2dParams) -> i32 {
    let tiles = conv_backward_weight_dims(&Conv2dParams { k_splits: 1, ..*p });
    let tiles = (tiles.grid[0] as u64) * (tiles.grid[1] as u64);
    let k = nn(p.n) * nn(p.h_out) * nn(p.w_out);
    let by_occupancy = 264u64.div_ceil(tiles.max(1));
    let by_work = (k / 1024).max(1);
    by_occupancy.min(by_work).clamp(1, 256) as i32
}

/// Number of per-block partials conv2d_forward writes with `stats` set (its grid x): the stats buffer
/// holds `2 * this * c_out` f64 values.
pub fn conv_stats_partials(p: &Conv2dParams) -> usize {
    conv_forward_dims(p).grid[0] as usize
}

/// Number of partial sums for the MSE loss (the size of the `partial` workspace).
pub fn mse_num_partials(n: i64) -> i32 {
    (nn(n.clamp(0, i32::MAX as i64) as i32).div_ceil(THREADS as u64)).clamp(1, 1024) as i32
}

macro_rules! kernels {
    ($($const_name:ident, $sym:ident, $emu:ident, $module:literal, $P:ty, $dims:expr;)*) => {
        extern "C" {
            $(fn $emu(params: *const c_void, grid: *const u32, block: *const u32, dyn_smem: usize) -> i32;)*
        }
        $(pub static $const_name: Kernel<$P> =
            Kernel { name: stringify!($sym), module: $module, emu: $emu, dims: $dims };)*
        /// Every kernel's (module, symbol), for load-time checks.
        pub const ALL: &[(&str, &str)] = &[$(($module, stringify!($sym))),*];
    };
}

kernels! {
    CONV2D_FORWARD, conv2d_forward, hrk_emu_conv2d_forward, "conv", Conv2dParams, conv_forward_dims;
    CONV2D_BACKWARD_DATA, conv2d_backward_data, hrk_emu_conv2d_backward_data, "conv", Conv2dParams, conv_backward_data_dims;
    CONV2D_BACKWARD_WEIGHT, conv2d_backward_weight, hrk_emu_conv2d_backward_weight, "conv", Conv2dParams, conv_backward_weight_dims;
    CONV2D_FORWARD_TF32, conv2d_forward_tf32, hrk_emu_conv2d_forward_tf32, "conv_mma", Conv2dParams, conv_forward_dims;
    CONV2D_FORWARD_BF16, conv2d_forward_bf16, hrk_emu_conv2d_forward_bf16, "conv_mma", Conv2dParams, conv_forward_dims;
    CONV2D_BACKWARD_DATA_TF32, conv2d_backward_data_tf32, hrk_emu_conv2d_backward_data_tf32, "conv_mma", Conv2dParams, conv_backward_data_dims;
    CONV2D_BACKWARD_WEIGHT_TF32, conv2d_backward_weight_tf32, hrk_emu_conv2d_backward_weight_tf32, "conv_mma", Conv2dParams, conv_backward_weight_dims;
    MMA_PROBE_TF32, mma_probe_tf32, hrk_emu_mma_probe_tf32, "conv_mma", MmaProbeParams, |_: &MmaProbeParams| one_warp();
    MMA_PROBE_BF16, mma_probe_bf16, hrk_emu_mma_probe_bf16, "conv_mma", MmaProbeParams, |_: &MmaProbeParams| one_warp();
    MMA_PROBE_CVT, mma_probe_cvt, hrk_emu_mma_probe_cvt, "conv_mma", MmaProbeParams, |p: &MmaProbeParams| grid_1d(nn(p.n));
    CONV2D_BACKWARD_BIAS, conv2d_backward_bias, hrk_emu_conv2d_backward_bias, "conv", Conv2dParams, |p: &Conv2dParams| dims([p.c_out.max(1) as u32, 1, 1]);
    BN_TRAIN_STATS, bn_train_stats, hrk_emu_bn_train_stats, "batchnorm", BatchNormParams, |p: &BatchNormParams| dims([p.c.max(1) as u32, 1, 1]);
    BN_TRAIN_APPLY, bn_train_apply, hrk_emu_bn_train_apply, "batchnorm", BatchNormParams, |p: &BatchNormParams| grid_planes(p.n.saturating_mul(p.c), p.hw);
    BN_TRAIN_APPLY_RELU, bn_train_apply_relu, hrk_emu_bn_train_apply_relu, "batchnorm", BatchNormParams, |p: &BatchNormParams| grid_planes(p.n.saturating_mul(p.c), p.hw);
    BN_EVAL_FORWARD, bn_eval_forward, hrk_emu_bn_eval_forward, "batchnorm", BatchNormParams, |p: &BatchNormParams| grid_planes(p.n.saturating_mul(p.c), p.hw);
    BN_EVAL_FORWARD_RELU, bn_eval_forward_relu, hrk_emu_bn_eval_forward_relu, "batchnorm", BatchNormParams, |p: &BatchNormParams| grid_planes(p.n.saturating_mul(p.c), p.hw);
    BN_STATS_FROM_PARTIALS, bn_stats_from_partials, hrk_emu_bn_stats_from_partials, "batchnorm", BatchNormParams, |p: &BatchNormParams| dims([p.c.max(1) as u32, 1, 1]);
    BN_BACKWARD_REDUCE, bn_backward_reduce, hrk_emu_bn_backward_reduce, "batchnorm", BatchNormParams, |p: &BatchNormParams| dims([p.c.max(1) as u32, 1, 1]);
    BN_BACKWARD_DATA, bn_backward_data, hrk_emu_bn_backward_data, "batchnorm", BatchNormParams, |p: &BatchNormParams| grid_planes(p.n.saturating_mul(p.c), p.hw);
    BILINEAR_FORWARD, bilinear_forward, hrk_emu_bilinear_forward, "upsample", UpsampleParams, |p: &UpsampleParams| grid_1d(nn(p.planes) * nn(p.out_h) * nn(p.out_w));
    BILINEAR_BACKWARD, bilinear_backward, hrk_emu_bilinear_backward, "upsample", UpsampleParams, |p: &UpsampleParams| grid_1d(nn(p.planes) * nn(p.out_h) * nn(p.out_w));
    RELU_FORWARD, relu_forward, hrk_emu_relu_forward, "elementwise", EltwiseParams, |p: &EltwiseParams| grid_1d(p.n.max(0) as u64);
    RELU_BACKWARD, relu_backward, hrk_emu_relu_backward, "elementwise", EltwiseParams, |p: &EltwiseParams| grid_1d(p.n.max(0) as u64);
    ADD, add, hrk_emu_add, "elementwise", EltwiseParams, |p: &EltwiseParams| grid_1d(p.n.max(0) as u64);
    CONCAT_CHANNELS, concat_channels, hrk_emu_concat_channels, "elementwise", ConcatParams, |p: &ConcatParams| grid_1d(nn(p.n) * nn(p.c_part) * nn(p.hw));
    SPLIT_CHANNELS, split_channels, hrk_emu_split_channels, "elementwise", ConcatParams, |p: &ConcatParams| grid_1d(nn(p.n) * nn(p.c_part) * nn(p.hw));
    MSE_LOSS_PARTIAL, mse_loss_partial, hrk_emu_mse_loss_partial, "elementwise", MseParams, |p: &MseParams| dims([p.num_partials.max(1) as u32, 1, 1]);
    MSE_LOSS_FINALIZE, mse_loss_finalize, hrk_emu_mse_loss_finalize, "elementwise", MseParams, |_: &MseParams| dims([1, 1, 1]);
    MSE_LOSS_BACKWARD, mse_loss_backward, hrk_emu_mse_loss_backward, "elementwise", MseParams, |p: &MseParams| grid_1d(p.n.max(0) as u64);
    ADAM_STEP, adam_step, hrk_emu_adam_step, "optim", OptimParams, |p: &OptimParams| grid_1d(p.n.max(0) as u64);
    SGD_STEP, sgd_step, hrk_emu_sgd_step, "optim", OptimParams, |p: &OptimParams| grid_1d(p.n.max(0) as u64);
    FUSION_FORWARD, fusion_forward, hrk_emu_fusion_forward, "fusion", FusionParams, |p: &FusionParams| grid_1d(nn(p.planes) * nn(p.h) * nn(p.w));
    FUSION_BACKWARD, fusion_backward, hrk_emu_fusion_backward, "fusion", FusionParams, |p: &FusionParams| grid_1d(nn(p.planes) * nn(p.h) * nn(p.w));
    PRELU_FORWARD, prelu_forward, hrk_emu_prelu_forward, "detect", ChannelOpParams, |p: &ChannelOpParams| grid_1d(nn(p.n) * nn(p.c) * nn(p.hw));
    MAX_POOL2D_CEIL_FORWARD, max_pool2d_ceil_forward, hrk_emu_max_pool2d_ceil_forward, "detect", MaxPoolParams, |p: &MaxPoolParams| grid_1d(nn(p.planes) * nn(p.out_h) * nn(p.out_w));
    SOFTMAX_CHANNELS_FORWARD, softmax_channels_forward, hrk_emu_softmax_channels_forward, "detect", ChannelOpParams, |p: &ChannelOpParams| grid_1d(nn(p.n) * nn(p.hw));
    HEATMAP_ARGMAX, heatmap_argmax, hrk_emu_heatmap_argmax, "heatmap", HeatmapParams, |p: &HeatmapParams| dims([p.maps.max(1) as u32, 1, 1]);
}
