// Elementwise and small reduction kernels, NCHW f32. All grid-stride, block 256.
//   relu_forward   out = max(a, 0)
//   relu_backward  out = b where a > 0 else 0   (a = forward input or output, b = upstream grad)
//   add            out = a + b
//   concat_channels / split_channels: copy `part` into / out of channels [c_offset, c_offset+c_part) of `whole`
//                  (split is concat's backward)
//   mse_loss_partial (grid = num_partials) + mse_loss_finalize (1 block): loss = mean((pred-target)^2),
//                  deterministic two-stage sum
//   mse_loss_backward grad_pred = 2*(pred-target)/n * grad_loss
#include "common.cuh"

extern "C" __global__ void __launch_bounds__(256) relu_forward(const EltwiseParams p) {
    for (long long i = global_thread(); i < p.n; i += grid_threads()) p.out[i] = fmaxf(p.a[i], 0.0f);
}

extern "C" __global__ void __launch_bounds__(256) relu_backward(const EltwiseParams p) {
    for (long long i = global_thread(); i < p.n; i += grid_threads()) p.out[i] = p.a[i] > 0.0f ? p.b[i] : 0.0f;
}

extern "C" __global__ void __launch_bounds__(256) add(const EltwiseParams p) {
    for (long long i = global_thread(); i < p.n; i += grid_threads()) p.out[i] = p.a[i] + p.b[i];
}

template <bool TO_WHOLE>
__device__ __forceinline__ void copy_channels(const ConcatParams& p) {
    const long long part_plane = (long long)p.c_part * p.hw;
    const long long total = (long long)p.n * part_plane;
    for (long long i = global_thread(); i < total; i += grid_threads()) {
        const long long img = i / part_plane, rest = i % part_plane;
        const long long j = (img * p.c_whole + p.c_offset) * p.hw + rest;
        if (TO_WHOLE)
            p.whole[j] = p.part[i];
        else
            p.part[i] = p.whole[j];
    }
}

extern "C" __global__ void __launch_bounds__(256) concat_channels(const ConcatParams p) { copy_channels<true>(p); }
extern "C" __global__ void __launch_bounds__(256) split_channels(const ConcatParams p) { copy_channels<false>(p); }

extern "C" __global__ void __launch_bounds__(256) mse_loss_partial(const MseParams p) {
    __shared__ float scratch[32];
    float sum = 0.0f;
    for (long long i = global_thread(); i < p.n; i += grid_threads()) {
        const float d = p.pred[i] - p.target[i];
        sum = fmaf(d, d, sum);
    }
    sum = block_sum(sum, scratch);
    if (threadIdx.x == 0) p.partial[blockIdx.x] = sum;
}

extern "C" __global__ void __launch_bounds__(256) mse_loss_finalize(const MseParams p) {
    __shared__ float scratch[32];
    float sum = 0.0f;
    for (int i = threadIdx.x; i < p.num_partials; i += blockDim.x) sum += p.partial[i];
    sum = block_sum(sum, scratch);
    if (threadIdx.x == 0) p.loss[0] = sum / (float)p.n;
}

extern "C" __global__ void __launch_bounds__(256) mse_loss_backward(const MseParams p) {
    const float k = 2.0f * p.grad_loss[0] / (float)p.n;
    for (long long i = global_thread(); i < p.n; i += grid_threads()) p.grad_pred[i] = k * (p.pred[i] - p.target[i]);
}

HRK_EMU_EXPORT(relu_forward, EltwiseParams)
HRK_EMU_EXPORT(relu_backward, EltwiseParams)
HRK_EMU_EXPORT(add, EltwiseParams)
HRK_EMU_EXPORT(concat_channels, ConcatParams)
HRK_EMU_EXPORT(split_channels, ConcatParams)
HRK_EMU_EXPORT(mse_loss_partial, MseParams)
HRK_EMU_EXPORT(mse_loss_finalize, MseParams)
HRK_EMU_EXPORT(mse_loss_backward, MseParams)

#ifndef __CUDACC__
// The emulator's thread mode (fibers or OS threads), chosen by src/cuda/emu.rs before its first launch.
extern "C" void hrk_emu_set_os_threads(int on) { hrk_emu::os_threads_requested.store(on != 0, std::memory_order_relaxed); }
#endif

// Struct sizes, checked against the Rust mirrors (src/cuda/params.rs) by a test (with every field's offset:
// the table build.rs generates from params.h).
HRK_EMU_SIZEOF(Conv2dParams)
HRK_EMU_SIZEOF(BatchNormParams)
HRK_EMU_SIZEOF(UpsampleParams)
HRK_EMU_SIZEOF(EltwiseParams)
HRK_EMU_SIZEOF(ConcatParams)
HRK_EMU_SIZEOF(MseParams)
HRK_EMU_SIZEOF(OptimParams)
HRK_EMU_SIZEOF(HeatmapParams)
