// Bilinear resize, NCHW f32, PyTorch align_corners=false semantics with an explicit output size:
// src = max(scale*(dst+0.5) - 0.5, 0), scale = in/out, the upper neighbour clamped at the edge.
//   bilinear_forward  grid-stride over planes*out_h*out_w, block 256
//   bilinear_backward same grid; scatters each output gradient to its 4 inputs with atomicAdd
//                     (dx is accumulated: zero it first; summation order on the GPU is not deterministic)
#include "common.cuh"

struct BilinearTap {
    int y0, y1, x0, x1;
    float wy0, wy1, wx0, wx1;
};

__device__ __forceinline__ BilinearTap bilinear_tap(const UpsampleParams& p, int oy, int ox) {
    BilinearTap t;
    const float sy = fmaxf(p.scale_h * (oy + 0.5f) - 0.5f, 0.0f);
    const float sx = fmaxf(p.scale_w * (ox + 0.5f) - 0.5f, 0.0f);
    t.y0 = (int)sy;
    t.x0 = (int)sx;
    t.y1 = t.y0 + (t.y0 < p.in_h - 1 ? 1 : 0);
    t.x1 = t.x0 + (t.x0 < p.in_w - 1 ? 1 : 0);
    t.wy1 = sy - t.y0;
    t.wy0 = 1.0f - t.wy1;
    t.wx1 = sx - t.x0;
    t.wx0 = 1.0f - t.wx1;
    return t;
}

extern "C" __global__ void __launch_bounds__(256) bilinear_forward(const UpsampleParams p) {
    const int out_hw = p.out_h * p.out_w;
    const long long total = (long long)p.planes * out_hw;
    for (long long i = global_thread(); i < total; i += grid_threads()) {
        const long long plane = i / out_hw;
        const int q = (int)(i % out_hw), oy = q / p.out_w, ox = q % p.out_w;
        const BilinearTap t = bilinear_tap(p, oy, ox);
        const float* x = p.x + plane * p.in_h * p.in_w;
        const float top = t.wx0 * x[t.y0 * p.in_w + t.x0] + t.wx1 * x[t.y0 * p.in_w + t.x1];
        const float bottom = t.wx0 * x[t.y1 * p.in_w + t.x0] + t.wx1 * x[t.y1 * p.in_w + t.x1];
        p.y[i] = t.wy0 * top + t.wy1 * bottom;
    }
}

extern "C" __global__ void __launch_bounds__(256) bilinear_backward(const UpsampleParams p) {
    const int out_hw = p.out_h * p.out_w;
    const long long total = (long long)p.planes * out_hw;
    for (long long i = global_thread(); i < total; i += grid_threads()) {
        const long long plane = i / out_hw;
        const int q = (int)(i % out_hw), oy = q / p.out_w, ox = q % p.out_w;
        const BilinearTap t = bilinear_tap(p, oy, ox);
        float* dx = p.dx + plane * p.in_h * p.in_w;
        const float g = p.dy[i];
        atomicAdd(&dx[t.y0 * p.in_w + t.x0], t.wy0 * t.wx0 * g);
        atomicAdd(&dx[t.y0 * p.in_w + t.x1], t.wy0 * t.wx1 * g);
        atomicAdd(&dx[t.y1 * p.in_w + t.x0], t.wy1 * t.wx0 * g);
        atomicAdd(&dx[t.y1 * p.in_w + t.x1], t.wy1 * t.wx1 * g);
    }
}

HRK_EMU_EXPORT(bilinear_forward, UpsampleParams)
HRK_EMU_EXPORT(bilinear_backward, UpsampleParams)
