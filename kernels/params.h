// Kernel parameter structs: every kernel takes exactly one of these BY VALUE. Mirrored field for field by
// #[repr(C)] structs in src/cuda/params.rs (pointers there are u64 device addresses); tests/cuda_emu.rs compares
// every field's offset and size (build.rs generates the C side's offsetof table from this header, so keep one
// `struct Name {` per line and plain `type a, b[N];` declarations). Keep pointers first, then 8-byte counts,
// then 4-byte fields, with explicit padding to 8 bytes.
// Layout: NCHW contiguous f32 everywhere.
#pragma once

struct Conv2dParams {
    const float* x;     // [n, c_in, h, w]
    const float* weight;  // [c_out, c_in, kh, kw]
    const float* bias;  // [c_out] or null (forward)
    float* y;           // [n, c_out, h_out, w_out] (forward output)
    const float* dy;    // [n, c_out, h_out, w_out] (backward input)
    float* dx;          // backward-data output (overwritten)
    float* dw;          // backward-weight output (ACCUMULATED: dw += ...)
    float* db;          // backward-bias output (ACCUMULATED)
    const float* residual;  // forward epilogue: [n, c_out, h_out, w_out] added after the bias, before ReLU; or null
    double* stats;      // forward epilogue: per-block channel sums of y, [gridDim.x][2][c_out] (sum, sum of squares); or null
    int n, c_in, h, w;
    int c_out, h_out, w_out;
    int kh, kw, stride, pad;
    int relu;      // forward epilogue: 1 = fused ReLU after bias
    int k_splits;  // backward-weight: reduction split over gridDim.z (atomicAdd when > 1)
    int pad_;
};

struct BatchNormParams {
    const float* x;        // [n, c, hw]
    float* y;              // forward output
    const float* dy;       // backward input
    float* dx;             // backward output (overwritten)
    const float* gamma;    // [c]
    const float* beta;     // [c]
    float* running_mean;   // [c] (train: updated; eval: read)
    float* running_var;    // [c]
    float* save_mean;      // [c] train: batch mean (written by bn_train_stats)
    float* save_invstd;    // [c] train: 1/sqrt(biased batch var + eps)
    float* sum_dy;         // [c] backward workspace (written)
    float* sum_dy_xhat;    // [c] backward workspace (written)
    float* grad_gamma;     // [c] ACCUMULATED, may be null
    float* grad_beta;      // [c] ACCUMULATED, may be null
    const double* partials;  // bn_stats_from_partials: [num_partials][2][c] sums of x and x^2 (conv2d_forward stats)
    int n, c, hw;
    float momentum;  // running = (1 - momentum) * running + momentum * batch
    float eps;
    int num_partials;
};

struct UpsampleParams {
    const float* x;   // [planes, in_h, in_w]
    float* y;         // [planes, out_h, out_w]
    const float* dy;  // [planes, out_h, out_w]
    float* dx;        // [planes, in_h, in_w] ACCUMULATED (zero it first for a plain gradient)
    int planes, in_h, in_w, out_h, out_w;
    float scale_h, scale_w;  // in/out (PyTorch align_corners=false with an output size)
    int pad_;
};

struct EltwiseParams {
    const float* a;
    const float* b;
    float* out;
    long long n;
};

struct ConcatParams {
    float* part;   // [n, c_part, hw]
    float* whole;  // [n, c_whole, hw], part sits at channels [c_offset, c_offset + c_part)
    int n, c_part, c_whole, c_offset, hw;
    int pad_;
};

struct MseParams {
    const float* pred;
    const float* target;
    float* partial;          // [num_partials] workspace
    float* loss;             // [1] mean squared error
    const float* grad_loss;  // [1] upstream gradient of the loss
    float* grad_pred;        // [n]
    long long n;
    int num_partials;
    int pad_;
};

struct OptimParams {
    float* param;
    const float* grad;
    float* exp_avg;       // Adam m
    float* exp_avg_sq;    // Adam v
    float* momentum_buf;  // SGD
    // When set: [lr, bias_correction2_sqrt, first_step] read on the device at run time, so a replayed
    // CUDA graph sees each step's values (the fields below are then ignored for those three).
    const float* step_scalars;
    long long n;
    float lr, weight_decay;
    float beta1, beta2, eps;
    float bias_correction1;       // 1 - beta1^t
    float bias_correction2_sqrt;  // sqrt(1 - beta2^t)
    float momentum, dampening;
    int nesterov;
    int first_step;  // SGD: the momentum buffer starts as a copy of the gradient
    int pad_;
};

struct HeatmapParams {
    const float* heatmaps;  // [maps, h, w]
    float* coords;          // [maps, 2] 1-based (x, y) after the quarter-pixel shift; (0,0) when max <= 0
    float* maxvals;         // [maps]
    int maps, h, w;
    int pad_;
};

// Multi-resolution fusion of one output branch of an HRNet module (kernels/fusion.cu):
//   y = ReLU(x + sum_k bilinear(up[k] -> h x w) + sum_k down[k])
#define HRK_FUSION_MAX_TERMS 3
struct FusionParams {
    const float* x;                          // [planes, h, w] identity term, or null
    const float* up[HRK_FUSION_MAX_TERMS];   // [planes, up_h[k], up_w[k]] low-resolution terms
    const float* down[HRK_FUSION_MAX_TERMS]; // [planes, h, w] terms already at this size
    float* y;                                // [planes, h, w] forward output; read by the backward
    const float* dy;                         // backward: upstream gradient [planes, h, w]
    float* dx;                               // backward: dy masked by y > 0 (the gradient of x and of every down term)
    float* d_up[HRK_FUSION_MAX_TERMS];       // backward: ACCUMULATED gradients of the up terms (zero them first)
    int planes, h, w;
    int num_up, num_down;
    int up_h[HRK_FUSION_MAX_TERMS], up_w[HRK_FUSION_MAX_TERMS];
    float up_scale_h[HRK_FUSION_MAX_TERMS], up_scale_w[HRK_FUSION_MAX_TERMS];  // in/out, as UpsampleParams
    int pad_;
};

// Per-channel layers of the MTCNN detector (kernels/detect.cu): prelu_forward, softmax_channels_forward.
struct ChannelOpParams {
    const float* x;       // [n, c, hw]
    const float* weight;  // [c] (PReLU slopes; unused by softmax)
    float* y;             // [n, c, hw]
    int n, c, hw;
    int pad_;
};

// MaxPool2d with ceil_mode, no padding (kernels/detect.cu): windows clipped at the input's edge.
struct MaxPoolParams {
    const float* x;  // [planes, in_h, in_w]
    float* y;        // [planes, out_h, out_w]
    int planes, in_h, in_w, out_h, out_w;
    int k, stride;
    int pad_;
};

// Probes of the tensor-core primitives (kernels/conv_mma.cu, tests/cuda_mma.rs).
struct MmaProbeParams {
    const unsigned* a;  // mma probes: [32 lanes][4] A registers
    const unsigned* b;  // [32][2] B registers
    const float* c;     // [32][4] C registers
    float* d;           // [32][4] D registers (output)
    const float* src;   // cvt probe: [n] inputs
    unsigned* tf32;     // [n] cvt.rna.tf32.f32(src)
    unsigned* bf16x2;   // [n] cvt.rn.bf16x2.f32(hi = -src, lo = src)
    int n;
    int pad_;
};
