// Heatmap decoding (HRNet get_preds + the quarter-pixel shift of decode_preds), one block (256) per map:
// argmax over the row-major map (FIRST maximum wins), 1-based (x, y) = (col+1, row+1); if the maximum is
// <= 0 the coordinates are (0, 0); if 1 < x < W and 1 < y < H, add 0.25*sign of the neighbour differences
// (right-left, below-above; sign(0) = 0). The +0.5 and the affine back-transform are the caller's.
#include "common.cuh"

// Larger value wins; equal values go to the smaller index (first in row-major order).
__device__ __forceinline__ void better_of(float& v, int& idx, float ov, int oidx) {
    if (ov > v || (ov == v && oidx < idx)) {
        v = ov;
        idx = oidx;
    }
}

extern "C" __global__ void __launch_bounds__(256) heatmap_argmax(const HeatmapParams p) {
    __shared__ float best_val[32];
    __shared__ int best_idx[32];
    const int map = blockIdx.x, count = p.h * p.w;
    const float* hm = p.heatmaps + (long long)map * count;
    float v = -INFINITY;
    int idx = 0x7fffffff;
    for (int i = threadIdx.x; i < count; i += blockDim.x) better_of(v, idx, hm[i], i);
    for (int offset = 16; offset > 0; offset >>= 1) {
        const float ov = __shfl_down_sync(FULL_MASK, v, offset);
        const int oidx = __shfl_down_sync(FULL_MASK, idx, offset);
        better_of(v, idx, ov, oidx);
    }
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = (blockDim.x + 31) >> 5;
    if (lane == 0) {
        best_val[warp] = v;
        best_idx[warp] = idx;
    }
    __syncthreads();
    if (warp == 0) {
        v = lane < warps ? best_val[lane] : -INFINITY;
        idx = lane < warps ? best_idx[lane] : 0x7fffffff;
        for (int offset = 16; offset > 0; offset >>= 1) {
            const float ov = __shfl_down_sync(FULL_MASK, v, offset);
            const int oidx = __shfl_down_sync(FULL_MASK, idx, offset);
            better_of(v, idx, ov, oidx);
        }
        if (lane == 0) {
            float x = 0.0f, y = 0.0f;
            if (v > 0.0f && idx < count) {
                const int col = idx % p.w, row = idx / p.w;
                x = (float)(col + 1);
                y = (float)(row + 1);
                if (col >= 1 && col + 1 < p.w && row >= 1 && row + 1 < p.h) {
                    const float dx = hm[row * p.w + col + 1] - hm[row * p.w + col - 1];
                    const float dy = hm[(row + 1) * p.w + col] - hm[(row - 1) * p.w + col];
                    x += 0.25f * (float)((dx > 0.0f) - (dx < 0.0f));
                    y += 0.25f * (float)((dy > 0.0f) - (dy < 0.0f));
                }
            }
            p.coords[2 * map] = x;
            p.coords[2 * map + 1] = y;
            p.maxvals[map] = v;
        }
    }
}

HRK_EMU_EXPORT(heatmap_argmax, HeatmapParams)
