//! `#[repr(C)]` mirrors of kernels/params.h. Every kernel takes one of these by value; the same struct is
//! passed to the GPU launch and to the host emulator. Pointer fields are device addresses (u64; host
//! addresses under emulation); 0 means null where the header allows it.

use anyhow::Result;

/// Converts a size to the kernels' `int`, naming the op when it does not fit.
pub fn i32_of(op: &str, v: usize) -> Result<i32> {
    i32::try_from(v).map_err(|_| anyhow::anyhow!("{op}: size {v} exceeds the CUDA kernels' 32-bit indexing"))
}

/// Where one field of a parameter struct sits: its name, byte offset and byte size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FieldLayout {
    pub name: &'static str,
    pub offset: usize,
    pub size: usize,
}

macro_rules! params_struct {
    ($(#[$m:meta])* $name:ident { $($(#[$fm:meta])* $field:ident : $ty:ty),* $(,)? }) => {
        $(#[$m])*
        #[repr(C)]
        #[derive(Clone, Copy, Debug, Default, PartialEq)]
        pub struct $name { $($(#[$fm])* pub $field: $ty),* }

        impl $name {
            /// Every field's offset and size, for the field-by-field ABI check against kernels/params.h.
            pub const FIELDS: &'static [FieldLayout] = &[$(FieldLayout {
                name: stringify!($field),
                offset: std::mem::offset_of!($name, $field),
                size: std::mem::size_of::<$ty>(),
            }),*];
        }
    };
}

params_struct!(
    /// Convolution (NCHW): forward, backward-data, backward-weight (accumulates), backward-bias (accumulates).
    Conv2dParams {
    x: u64, weight: u64, bias: u64, y: u64, dy: u64, dx: u64, dw: u64, db: u64,
    /// Forward epilogue: output-shaped tensor added after the bias, before the ReLU (0 = none).
    residual: u64,
    /// Forward epilogue: per-block channel sums of y as f64, [grid.x][2][c_out] (Σy, Σy²) (0 = none).
    stats: u64,
    n: i32, c_in: i32, h: i32, w: i32,
    c_out: i32, h_out: i32, w_out: i32,
    kh: i32, kw: i32, stride: i32, pad: i32,
    /// Forward epilogue: 1 = fused ReLU after the bias.
    relu: i32,
    /// Backward-weight: reduction split over grid z (atomicAdd when > 1).
    k_splits: i32,
    pad_: i32,
});

params_struct!(
    /// BatchNorm2d training/eval forward and backward.
    BatchNormParams {
    x: u64, y: u64, dy: u64, dx: u64, gamma: u64, beta: u64,
    running_mean: u64, running_var: u64, save_mean: u64, save_invstd: u64,
    sum_dy: u64, sum_dy_xhat: u64, grad_gamma: u64, grad_beta: u64,
    /// bn_stats_from_partials: f64 [num_partials][2][c] (Σx, Σx²), as written by conv2d_forward's stats.
    partials: u64,
    n: i32, c: i32, hw: i32,
    momentum: f32, eps: f32,
    num_partials: i32,
});

params_struct!(
    /// Bilinear resize (align_corners=false); backward accumulates into dx.
    UpsampleParams {
    x: u64, y: u64, dy: u64, dx: u64,
    planes: i32, in_h: i32, in_w: i32, out_h: i32, out_w: i32,
    scale_h: f32, scale_w: f32,
    pad_: i32,
});

params_struct!(
    /// relu_forward / relu_backward / add.
    EltwiseParams { a: u64, b: u64, out: u64, n: i64 });

params_struct!(
    /// concat_channels (part -> whole) and split_channels (whole -> part).
    ConcatParams { part: u64, whole: u64, n: i32, c_part: i32, c_whole: i32, c_offset: i32, hw: i32, pad_: i32 });

params_struct!(
    /// MSE loss (mean): partial sums, finalize, gradient.
    MseParams {
    pred: u64, target: u64, partial: u64, loss: u64, grad_loss: u64, grad_pred: u64,
    n: i64, num_partials: i32, pad_: i32,
});

params_struct!(
    /// Adam and SGD updates (PyTorch semantics).
    OptimParams {
    param: u64, grad: u64, exp_avg: u64, exp_avg_sq: u64, momentum_buf: u64,
    step_scalars: u64,
    n: i64,
    lr: f32, weight_decay: f32,
    beta1: f32, beta2: f32, eps: f32,
    bias_correction1: f32, bias_correction2_sqrt: f32,
    momentum: f32, dampening: f32,
    nesterov: i32, first_step: i32,
    pad_: i32,
});

params_struct!(
    /// Heatmap argmax + quarter-pixel shift: coords [maps, 2] (1-based x, y), maxvals [maps].
    HeatmapParams { heatmaps: u64, coords: u64, maxvals: u64, maps: i32, h: i32, w: i32, pad_: i32 });

/// Most terms besides the identity the fusion kernel sums per kind (up to 4 inputs in all in HRNet).
pub const FUSION_MAX_TERMS: usize = 3;

params_struct!(
    /// Multi-resolution fusion: y = ReLU(x + Σ bilinear_up(up[k]) + Σ down[k]) and its backward.
    FusionParams {
    x: u64,
    up: [u64; FUSION_MAX_TERMS],
    down: [u64; FUSION_MAX_TERMS],
    y: u64, dy: u64, dx: u64,
    d_up: [u64; FUSION_MAX_TERMS],
    planes: i32, h: i32, w: i32,
    num_up: i32, num_down: i32,
    up_h: [i32; FUSION_MAX_TERMS], up_w: [i32; FUSION_MAX_TERMS],
    up_scale_h: [f32; FUSION_MAX_TERMS], up_scale_w: [f32; FUSION_MAX_TERMS],
    pad_: i32,
});

params_struct!(
    /// Per-channel detector layers: prelu_forward (weight = slopes), softmax_channels_forward (weight unused).
    ChannelOpParams { x: u64, weight: u64, y: u64, n: i32, c: i32, hw: i32, pad_: i32 });

params_struct!(
    /// MaxPool2d with ceil_mode and no padding (windows clipped at the input's edge).
    MaxPoolParams {
    x: u64, y: u64,
    planes: i32, in_h: i32, in_w: i32, out_h: i32, out_w: i32,
    k: i32, stride: i32,
    pad_: i32,
});

impl Conv2dParams {
    /// Output size of a convolution along one axis; None when the window does not fit.
    pub fn out_extent(input: i32, kernel: i32, stride: i32, pad: i32) -> Option<i32> {
        let span = input.checked_add(pad.checked_mul(2)?)?.checked_sub(kernel)?;
        if span < 0 || stride <= 0 {
            return None;
        }
        Some(span / stride + 1)
    }
}

params_struct!(
    /// Probes of the tensor-core primitives (kernels/conv_mma.cu): per-lane mma registers, and conversions.
    MmaProbeParams {
    a: u64, b: u64, c: u64, d: u64,
    src: u64, tf32: u64, bf16x2: u64,
    n: i32,
    pad_: i32,
});

/// Calls `$m!(Conv2dParams, BatchNormParams, …)` with every parameter struct: the one list that the ABI
/// check (`layouts`), `KernelParams` (device.rs) and `DeviceRepr` (runtime.rs) are implemented over.
macro_rules! with_params_structs {
    ($m:ident) => {
        $m!(
            Conv2dParams,
            BatchNormParams,
            UpsampleParams,
            EltwiseParams,
            ConcatParams,
            MseParams,
            OptimParams,
            HeatmapParams,
            FusionParams,
            ChannelOpParams,
            MaxPoolParams,
            MmaProbeParams
        );
    };
}
pub(crate) use with_params_structs;

/// (struct name, size, fields) of every parameter struct, for the ABI check against kernels/params.h.
pub fn layouts() -> Vec<(&'static str, usize, &'static [FieldLayout])> {
    use std::mem::size_of;
    let mut all = Vec::new();
    macro_rules! push_layouts {
        ($($t:ident),*) => {$(
            all.push((stringify!($t), size_of::<$t>(), $t::FIELDS));
        )*};
    }
    with_params_structs!(push_layouts);
    all
}

// The one builder of each struct's shape fields: the ops' cuda_kernel.rs (autograd and the GPU engine) and
// the buffer helpers fill the pointer fields on top of these with struct-update syntax.

impl Conv2dParams {
    /// The shape of a convolution of x [n, c_in, h, w] by [c_out, c_in, k, k] with output [h_out, w_out];
    /// `op` names the error when a size exceeds the kernels' 32-bit indexing. Pointers are null, no epilogue,
    /// one backward-weight split.
    pub fn new(
        op: &str, [n, c_in, h, w]: [usize; 4], c_out: usize, k: usize, stride: usize, pad: usize,
        [h_out, w_out]: [usize; 2],
    ) -> Result<Conv2dParams> {
        let i = |v| i32_of(op, v);
        Ok(Conv2dParams {
            n: i(n)?,
            c_in: i(c_in)?,
            h: i(h)?,
            w: i(w)?,
            c_out: i(c_out)?,
            h_out: i(h_out)?,
            w_out: i(w_out)?,
            kh: i(k)?,
            kw: i(k)?,
            stride: i(stride)?,
            pad: i(pad)?,
            k_splits: 1,
            ..Default::default()
        })
    }
}

impl BatchNormParams {
    /// The shape of a BatchNorm over x [n, c, h, w] with `eps`; pointers null.
    pub fn new(op: &str, [n, c, h, w]: [usize; 4], eps: f64) -> Result<BatchNormParams> {
        Ok(BatchNormParams {
            n: i32_of(op, n)?,
            c: i32_of(op, c)?,
            hw: i32_of(op, h * w)?,
            eps: eps as f32,
            ..Default::default()
        })
    }
}

impl UpsampleParams {
    /// A bilinear resize of `planes` planes from `from` to `to`; pointers null.
    pub fn new(op: &str, planes: usize, from: [usize; 2], to: [usize; 2]) -> Result<UpsampleParams> {
        Ok(UpsampleParams {
            planes: i32_of(op, planes)?,
            in_h: i32_of(op, from[0])?,
            in_w: i32_of(op, from[1])?,
            out_h: i32_of(op, to[0])?,
            out_w: i32_of(op, to[1])?,
            scale_h: resize_scale(from[0], to[0]),
            scale_w: resize_scale(from[1], to[1]),
            ..Default::default()
        })
    }
}

/// in/out of a resize axis, rounded once from f64 as the CPU path does.
pub fn resize_scale(input: usize, output: usize) -> f32 {
    (input as f64 / output as f64) as f32
}

impl ConcatParams {
    /// Channels [c_offset, c_offset + c_part) of `whole` [n, c_whole, hw] and `part` [n, c_part, hw].
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        op: &str, part: u64, whole: u64, n: usize, c_part: usize, c_whole: usize, c_offset: usize, hw: usize,
    ) -> Result<ConcatParams> {
        Ok(ConcatParams {
            part,
            whole,
            n: i32_of(op, n)?,
            c_part: i32_of(op, c_part)?,
            c_whole: i32_of(op, c_whole)?,
            c_offset: i32_of(op, c_offset)?,
            hw: i32_of(op, hw)?,
            pad_: 0,
        })
    }
}

impl EltwiseParams {
    /// out = f(a, b) over `n` floats (b = 0 for unary kernels).
    pub fn new(a: u64, b: u64, out: u64, n: usize) -> EltwiseParams {
        EltwiseParams { a, b, out, n: n as i64 }
    }
}

impl ChannelOpParams {
    /// The shape of a per-channel layer over x [n, c, hw]; pointers null.
    pub fn new(op: &str, [n, c, hw]: [usize; 3]) -> Result<ChannelOpParams> {
        Ok(ChannelOpParams { n: i32_of(op, n)?, c: i32_of(op, c)?, hw: i32_of(op, hw)?, ..Default::default() })
    }
}

impl MaxPoolParams {
    /// The shape of a ceil-mode max-pool of `planes` planes `from` → `to` with window `k` and `stride`.
    pub fn new(
        op: &str, planes: usize, from: [usize; 2], to: [usize; 2], k: usize, stride: usize,
    ) -> Result<MaxPoolParams> {
        let i = |v| i32_of(op, v);
        Ok(MaxPoolParams {
            planes: i(planes)?,
            in_h: i(from[0])?,
            in_w: i(from[1])?,
            out_h: i(to[0])?,
            out_w: i(to[1])?,
            k: i(k)?,
            stride: i(stride)?,
            ..Default::default()
        })
    }
}
