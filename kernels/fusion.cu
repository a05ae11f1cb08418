// Multi-resolution fusion in one pass, NCHW f32: HRNet module output i (the official lib/models/hrnet.py,
// `HighResolutionModule._make_fuse_layers` and its forward):
//   fusion_forward   y = ReLU(x + sum_k bilinear_up(up[k] -> h x w) + sum_k down[k])
//                    The up terms are the low-resolution conv+BN outputs z_j (j > i), resized here instead of
//                    being materialised at full size; the down terms d_j (j < i) are already at h x w.
//                    Reads every input once and writes y once; the unfused rung is bilinear_forward + add
//                    (per term) + relu_forward.
//   fusion_backward  g = dy where y > 0 else 0; dx = g (the gradient of x and of every down term);
//                    d_up[k] += bilinear_backward(g) with atomicAdd (zero d_up first; order not deterministic)
// Both grid-stride over planes*h*w, block 256. Plain loads only (emulator-safe).
#include "common.cuh"

__device__ __forceinline__ float sample_up(const FusionParams& p, int k, long long plane, int oy, int ox) {
    const BilinearTaps t = bilinear_taps(p.up_h[k], p.up_w[k], p.up_scale_h[k], p.up_scale_w[k], oy, ox);
    return bilinear_sample(p.up[k] + plane * p.up_h[k] * p.up_w[k], p.up_w[k], t);
}

extern "C" __global__ void __launch_bounds__(256) fusion_forward(const FusionParams p) {
    const long long total = (long long)p.planes * (p.h * p.w);
    for (long long i = global_thread(); i < total; i += grid_threads()) {
        const PlanePos at = plane_pos(i, p.h, p.w);
        float v = p.x ? p.x[i] : 0.0f;
        for (int k = 0; k < p.num_down; ++k) v += p.down[k][i];
        for (int k = 0; k < p.num_up; ++k) v += sample_up(p, k, at.plane, at.oy, at.ox);
        p.y[i] = fmaxf(v, 0.0f);
    }
}

extern "C" __global__ void __launch_bounds__(256) fusion_backward(const FusionParams p) {
    const long long total = (long long)p.planes * (p.h * p.w);
    for (long long i = global_thread(); i < total; i += grid_threads()) {
        const PlanePos at = plane_pos(i, p.h, p.w);
        const float g = p.y[i] > 0.0f ? p.dy[i] : 0.0f;
        p.dx[i] = g;
        if (g == 0.0f) continue;
        for (int k = 0; k < p.num_up; ++k) {
            const BilinearTaps t = bilinear_taps(p.up_h[k], p.up_w[k], p.up_scale_h[k], p.up_scale_w[k], at.oy, at.ox);
            bilinear_scatter(p.d_up[k] + at.plane * p.up_h[k] * p.up_w[k], p.up_w[k], t, g);
        }
    }
}

HRK_EMU_EXPORT(fusion_forward, FusionParams)
HRK_EMU_EXPORT(fusion_backward, FusionParams)
HRK_EMU_SIZEOF(FusionParams)
