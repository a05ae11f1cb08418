// Bilinear resize, NCHW f32, PyTorch align_corners=false semantics with an explicit output size:
// src = max(scale*(dst+0.5) - 0.5, 0), scale = in/out, the upper neighbour clamped at the edge.
//   bilinear_forward  grid-stride over planes*out_h*out_w, block 256
//   bilinear_backward same grid; scatters each output gradient to its 4 inputs with atomicAdd
//                     (dx is accumulated: zero it first; summation order on the GPU is not deterministic)
#include "common.cuh"

// The taps of output (oy, ox): common.cuh's bilinear_taps (its clamp of y0/x0 never binds for these scales).
__device__ __forceinline__ BilinearTaps bilinear_tap(const UpsampleParams& p, int oy, int ox) {
    return bilinear_taps(p.in_h, p.in_w, p.scale_h, p.scale_w, oy, ox);
}

extern "C" __global__ void __launch_bounds__(256) bilinear_forward(const UpsampleParams p) {
    const long long total = (long long)p.planes * (p.out_h * p.out_w);
    for (long long i = global_thread(); i < total; i += grid_threads()) {
        const PlanePos at = plane_pos(i, p.out_h, p.out_w);
        p.y[i] = bilinear_sample(p.x + at.plane * p.in_h * p.in_w, p.in_w, bilinear_tap(p, at.oy, at.ox));
    }
}

extern "C" __global__ void __launch_bounds__(256) bilinear_backward(const UpsampleParams p) {
    const long long total = (long long)p.planes * (p.out_h * p.out_w);
    for (long long i = global_thread(); i < total; i += grid_threads()) {
        const PlanePos at = plane_pos(i, p.out_h, p.out_w);
        bilinear_scatter(p.dx + at.plane * p.in_h * p.in_w, p.in_w, bilinear_tap(p, at.oy, at.ox), p.dy[i]);
    }
}

HRK_EMU_EXPORT(bilinear_forward, UpsampleParams)
HRK_EMU_EXPORT(bilinear_backward, UpsampleParams)
