// BatchNorm2d (NCHW f32), PyTorch semantics: training normalises with the biased batch variance and updates
// running_var with the UNBIASED one; eps inside the sqrt.
//   bn_train_stats      grid (c), block 256: batch mean / invstd (two passes for accuracy), running stats
//   bn_train_apply      grid (ceil(hw/256) capped, min(n*c, 65535)), block 256: y = (x-mean)*invstd*gamma+beta
//   bn_train_apply_relu same, fused with ReLU (the unfused rung is bn_train_apply + relu_forward)
//   bn_eval_forward(_relu) same grid, normalising with the running statistics
//   bn_stats_from_partials grid (c), block 256: bn_train_stats from conv2d_forward's per-block f64 sums
//   bn_backward_reduce  grid (c), block 256: sum(dy), sum(dy*xhat) (+ accumulate grad_beta / grad_gamma)
//   bn_backward_data    same grid as apply: dx = gamma*invstd/M * (M*dy - sum(dy) - xhat*sum(dy*xhat))
// Plain shared-memory + shuffle reductions only (emulator-safe).
#include "common.cuh"

extern "C" __global__ void __launch_bounds__(256) bn_train_stats(const BatchNormParams p) {
    __shared__ float scratch[32];
    __shared__ float mean_shared;
    const int ch = blockIdx.x;
    const long long count = (long long)p.n * p.hw;
    float sum = 0.0f;
    for (int img = 0; img < p.n; ++img) {
        const float* plane = p.x + ((long long)img * p.c + ch) * p.hw;
        for (int q = threadIdx.x; q < p.hw; q += blockDim.x) sum += plane[q];
    }
    sum = block_sum(sum, scratch);
    if (threadIdx.x == 0) mean_shared = sum / (float)count;
    __syncthreads();
    const float mean = mean_shared;
    float sq = 0.0f;
    for (int img = 0; img < p.n; ++img) {
        const float* plane = p.x + ((long long)img * p.c + ch) * p.hw;
        for (int q = threadIdx.x; q < p.hw; q += blockDim.x) {
            const float d = plane[q] - mean;
            sq = fmaf(d, d, sq);
        }
    }
    sq = block_sum(sq, scratch);
    if (threadIdx.x == 0) {
        const float var = sq / (float)count;
        p.save_mean[ch] = mean;
        p.save_invstd[ch] = rsqrtf(var + p.eps);
        if (p.running_mean) {
            const float unbiased = count > 1 ? sq / (float)(count - 1) : var;
            p.running_mean[ch] = (1.0f - p.momentum) * p.running_mean[ch] + p.momentum * mean;
            p.running_var[ch] = (1.0f - p.momentum) * p.running_var[ch] + p.momentum * unbiased;
        }
    }
}

// Same outputs as bn_train_stats, from sums the conv already made (no pass over x). Variance as
// E[x^2] - mean^2 in double: f32 data keep ~1e-16 * mean^2 / var relative error, far below f32 rounding.
extern "C" __global__ void __launch_bounds__(256) bn_stats_from_partials(const BatchNormParams p) {
    __shared__ double scratch[32];
    const int ch = blockIdx.x;
    double sum = 0.0, sq = 0.0;
    for (int i = threadIdx.x; i < p.num_partials; i += blockDim.x) {
        const double* part = p.partials + (long long)i * 2 * p.c;
        sum += part[ch];
        sq += part[p.c + ch];
    }
    sum = block_sum(sum, scratch);
    sq = block_sum(sq, scratch);
    if (threadIdx.x == 0) {
        const double count = (double)((long long)p.n * p.hw);
        const double mean = sum / count;
        const double var = fmax(sq / count - mean * mean, 0.0);
        p.save_mean[ch] = (float)mean;
        p.save_invstd[ch] = (float)(1.0 / sqrt(var + (double)p.eps));
        if (p.running_mean) {
            const float unbiased = (float)(count > 1.0 ? var * count / (count - 1.0) : var);
            p.running_mean[ch] = (1.0f - p.momentum) * p.running_mean[ch] + p.momentum * (float)mean;
            p.running_var[ch] = (1.0f - p.momentum) * p.running_var[ch] + p.momentum * unbiased;
        }
    }
}

// Walks planes (n*c) over gridDim.y and the spatial extent over gridDim.x / blockDim.x.
template <bool EVAL, bool RELU>
__device__ __forceinline__ void bn_apply(const BatchNormParams& p) {
    const int planes = p.n * p.c;
    for (int plane = blockIdx.y; plane < planes; plane += gridDim.y) {
        const int ch = plane % p.c;
        const float mean = EVAL ? p.running_mean[ch] : p.save_mean[ch];
        const float invstd = EVAL ? rsqrtf(p.running_var[ch] + p.eps) : p.save_invstd[ch];
        const float scale = invstd * (p.gamma ? p.gamma[ch] : 1.0f);
        const float shift = (p.beta ? p.beta[ch] : 0.0f) - mean * scale;
        const float* x = p.x + (long long)plane * p.hw;
        float* y = p.y + (long long)plane * p.hw;
        for (int q = blockIdx.x * blockDim.x + threadIdx.x; q < p.hw; q += gridDim.x * blockDim.x) {
            float v = fmaf(x[q], scale, shift);
            if (RELU) v = fmaxf(v, 0.0f);
            y[q] = v;
        }
    }
}

extern "C" __global__ void __launch_bounds__(256) bn_train_apply(const BatchNormParams p) { bn_apply<false, false>(p); }
extern "C" __global__ void __launch_bounds__(256) bn_train_apply_relu(const BatchNormParams p) { bn_apply<false, true>(p); }
extern "C" __global__ void __launch_bounds__(256) bn_eval_forward(const BatchNormParams p) { bn_apply<true, false>(p); }
extern "C" __global__ void __launch_bounds__(256) bn_eval_forward_relu(const BatchNormParams p) { bn_apply<true, true>(p); }

extern "C" __global__ void __launch_bounds__(256) bn_backward_reduce(const BatchNormParams p) {
    __shared__ float scratch[32];
    const int ch = blockIdx.x;
    const float mean = p.save_mean[ch], invstd = p.save_invstd[ch];
    float s_dy = 0.0f, s_dy_xhat = 0.0f;
    for (int img = 0; img < p.n; ++img) {
        const long long base = ((long long)img * p.c + ch) * p.hw;
        for (int q = threadIdx.x; q < p.hw; q += blockDim.x) {
            const float g = p.dy[base + q];
            s_dy += g;
            s_dy_xhat = fmaf(g, (p.x[base + q] - mean) * invstd, s_dy_xhat);
        }
    }
    s_dy = block_sum(s_dy, scratch);
    s_dy_xhat = block_sum(s_dy_xhat, scratch);
    if (threadIdx.x == 0) {
        p.sum_dy[ch] = s_dy;
        p.sum_dy_xhat[ch] = s_dy_xhat;
        if (p.grad_beta) p.grad_beta[ch] += s_dy;
        if (p.grad_gamma) p.grad_gamma[ch] += s_dy_xhat;
    }
}

extern "C" __global__ void __launch_bounds__(256) bn_backward_data(const BatchNormParams p) {
    const int planes = p.n * p.c;
    const float count = (float)((long long)p.n * p.hw);
    for (int plane = blockIdx.y; plane < planes; plane += gridDim.y) {
        const int ch = plane % p.c;
        const float mean = p.save_mean[ch], invstd = p.save_invstd[ch];
        const float k = (p.gamma ? p.gamma[ch] : 1.0f) * invstd / count;
        const float s_dy = p.sum_dy[ch], s_dy_xhat = p.sum_dy_xhat[ch];
        const long long base = (long long)plane * p.hw;
        for (int q = blockIdx.x * blockDim.x + threadIdx.x; q < p.hw; q += gridDim.x * blockDim.x) {
            const float xhat = (p.x[base + q] - mean) * invstd;
            p.dx[base + q] = k * (count * p.dy[base + q] - s_dy - xhat * s_dy_xhat);
        }
    }
}

HRK_EMU_EXPORT(bn_train_stats, BatchNormParams)
HRK_EMU_EXPORT(bn_train_apply, BatchNormParams)
HRK_EMU_EXPORT(bn_train_apply_relu, BatchNormParams)
HRK_EMU_EXPORT(bn_eval_forward, BatchNormParams)
HRK_EMU_EXPORT(bn_eval_forward_relu, BatchNormParams)
HRK_EMU_EXPORT(bn_stats_from_partials, BatchNormParams)
HRK_EMU_EXPORT(bn_backward_reduce, BatchNormParams)
HRK_EMU_EXPORT(bn_backward_data, BatchNormParams)
