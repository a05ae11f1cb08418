// Shared device helpers: warp/block reductions. Works under nvcc and the host emulator (emu.h).
#pragma once
#include "emu.h"  // empty under nvcc except the HRK_* macros
#include "params.h"

constexpr unsigned FULL_MASK = 0xffffffffu;

// Warp and block sums in float or double (the BN statistics from the conv's f64 partials).
template <class T>
__device__ __forceinline__ T warp_sum(T v) {
    for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_down_sync(FULL_MASK, v, offset);
    return v;
}

// Sum over a block of `threads` (a multiple of 32, <= 1024). The result is valid in thread 0.
// `scratch` holds 32 values of shared memory. Every thread of the block must call it.
template <class T>
__device__ __forceinline__ T block_sum(T v, T* scratch) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    v = warp_sum(v);
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    const int warps = (blockDim.x + 31) >> 5;
    if (warp == 0) {
        v = lane < warps ? scratch[lane] : T(0);
        v = warp_sum(v);
    }
    // scratch may be reused by the caller's next reduction.
    __syncthreads();
    return v;
}

// Grid-stride range helper for 1-D elementwise kernels.
__device__ __forceinline__ long long global_thread() { return (long long)blockIdx.x * blockDim.x + threadIdx.x; }
__device__ __forceinline__ long long grid_threads() { return (long long)gridDim.x * blockDim.x; }

// Where flat NCHW index i lies among planes of h x w: its plane and its pixel (oy, ox) there.
struct PlanePos {
    long long plane;
    int oy, ox;
};

__device__ __forceinline__ PlanePos plane_pos(long long i, int h, int w) {
    const int hw = h * w;
    const int q = (int)(i % hw);
    return PlanePos{i / hw, q / w, q % w};
}

// PyTorch bilinear (align_corners=false, explicit output size) taps of output (oy, ox):
// src = max(scale*(dst+0.5) - 0.5, 0), the upper neighbour clamped at the edge.
struct BilinearTaps {
    int y0, y1, x0, x1;
    float wy0, wy1, wx0, wx1;
};

__device__ __forceinline__ BilinearTaps bilinear_taps(int in_h, int in_w, float scale_h, float scale_w, int oy, int ox) {
    BilinearTaps t;
    const float sy = fmaxf(scale_h * (oy + 0.5f) - 0.5f, 0.0f);
    const float sx = fmaxf(scale_w * (ox + 0.5f) - 0.5f, 0.0f);
    t.y0 = min((int)sy, in_h - 1);
    t.x0 = min((int)sx, in_w - 1);
    t.y1 = t.y0 + (t.y0 < in_h - 1 ? 1 : 0);
    t.x1 = t.x0 + (t.x0 < in_w - 1 ? 1 : 0);
    t.wy1 = sy - t.y0;
    t.wy0 = 1.0f - t.wy1;
    t.wx1 = sx - t.x0;
    t.wx0 = 1.0f - t.wx1;
    return t;
}

// One plane's bilinear sample at taps t (row stride in_w): the same two-row blend as the CPU op.
__device__ __forceinline__ float bilinear_sample(const float* plane, int in_w, const BilinearTaps& t) {
    const float top = t.wx0 * plane[t.y0 * in_w + t.x0] + t.wx1 * plane[t.y0 * in_w + t.x1];
    const float bottom = t.wx0 * plane[t.y1 * in_w + t.x0] + t.wx1 * plane[t.y1 * in_w + t.x1];
    return t.wy0 * top + t.wy1 * bottom;
}

// The transpose of bilinear_sample: adds g's share to each of the 4 taps (atomically: taps overlap).
__device__ __forceinline__ void bilinear_scatter(float* plane, int in_w, const BilinearTaps& t, float g) {
    atomicAdd(&plane[t.y0 * in_w + t.x0], t.wy0 * t.wx0 * g);
    atomicAdd(&plane[t.y0 * in_w + t.x1], t.wy0 * t.wx1 * g);
    atomicAdd(&plane[t.y1 * in_w + t.x0], t.wy1 * t.wx0 * g);
    atomicAdd(&plane[t.y1 * in_w + t.x1], t.wy1 * t.wx1 * g);
}
