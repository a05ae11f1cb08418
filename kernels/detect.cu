// Layers of the MTCNN face detector (inference only), NCHW f32, grid-stride over outputs, block 256:
//   prelu_forward            y = x > 0 ? x : weight[c] * x              (per-channel PReLU)
//   max_pool2d_ceil_forward  PyTorch MaxPool2d(k, stride, padding 0, ceil_mode=True): the output extent is
//                            ceil((in - k) / stride) + 1, less one when the last window would start past the
//                            input; windows are clipped at the edge (NaN propagates, as PyTorch)
//   softmax_channels_forward softmax over C at each (n, pixel): exp(x - max) / sum, sum in channel order
#include "common.cuh"

extern "C" __global__ void __launch_bounds__(256) prelu_forward(const ChannelOpParams p) {
    const long long total = (long long)p.n * p.c * p.hw;
    for (long long i = global_thread(); i < total; i += grid_threads()) {
        const int c = (int)((i / p.hw) % p.c);
        const float v = p.x[i];
        p.y[i] = v > 0.0f ? v : p.weight[c] * v;
    }
}

extern "C" __global__ void __launch_bounds__(256) max_pool2d_ceil_forward(const MaxPoolParams p) {
    const long long total = (long long)p.planes * (p.out_h * p.out_w);
    for (long long i = global_thread(); i < total; i += grid_threads()) {
        const PlanePos at = plane_pos(i, p.out_h, p.out_w);
        const float* plane = p.x + at.plane * p.in_h * p.in_w;
        const int y0 = at.oy * p.stride, x0 = at.ox * p.stride;
        const int y1 = min(y0 + p.k, p.in_h), x1 = min(x0 + p.k, p.in_w);
        float best = -INFINITY;
        for (int y = y0; y < y1; ++y)
            for (int x = x0; x < x1; ++x) {
                const float v = plane[y * p.in_w + x];
                if (v > best || v != v) best = v;  // PyTorch's rule: a NaN is taken (and kept: NaN > v is false)
            }
        p.y[i] = best;
    }
}

extern "C" __global__ void __launch_bounds__(256) softmax_channels_forward(const ChannelOpParams p) {
    const long long total = (long long)p.n * p.hw;
    for (long long i = global_thread(); i < total; i += grid_threads()) {
        const long long img = i / p.hw, px = i % p.hw;
        const float* x = p.x + img * p.c * p.hw + px;
        float* y = p.y + img * p.c * p.hw + px;
        float m = -INFINITY;
        for (int c = 0; c < p.c; ++c) m = fmaxf(m, x[(long long)c * p.hw]);
        float sum = 0.0f;
        for (int c = 0; c < p.c; ++c) {
            const float e = expf(x[(long long)c * p.hw] - m);
            y[(long long)c * p.hw] = e;
            sum += e;
        }
        for (int c = 0; c < p.c; ++c) y[(long long)c * p.hw] /= sum;
    }
}

HRK_EMU_EXPORT(prelu_forward, ChannelOpParams)
HRK_EMU_EXPORT(max_pool2d_ceil_forward, MaxPoolParams)
HRK_EMU_EXPORT(softmax_channels_forward, ChannelOpParams)
HRK_EMU_SIZEOF(ChannelOpParams)
HRK_EMU_SIZEOF(MaxPoolParams)
