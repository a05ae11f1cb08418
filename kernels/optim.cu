// Optimizer updates, PyTorch (single-tensor, non-fused) semantics. Grid-stride, block 256.
//   adam_step: g += wd*p; m = lerp(m, g, 1-b1); v = b2*v + (1-b2)*g^2;
//              p -= lr/bc1 * m / (sqrt(v)/sqrt(bc2) + eps)     (bias corrections computed on the host)
//   With p.step_scalars, lr, sqrt(bc2) and SGD's first-step flag come from device memory the host
//   rewrites before each step: one captured graph then serves every step.
//   sgd_step:  g += wd*p; if momentum: buf = first ? g : momentum*buf + (1-dampening)*g;
//              g = nesterov ? g + momentum*buf : buf; p -= lr*g
#include "common.cuh"

extern "C" __global__ void __launch_bounds__(256) adam_step(const OptimParams p) {
    const float lr = p.step_scalars ? p.step_scalars[0] : p.lr;
    const float bias_correction2_sqrt = p.step_scalars ? p.step_scalars[1] : p.bias_correction2_sqrt;
    const float step_size = lr / p.bias_correction1;
    for (long long i = global_thread(); i < p.n; i += grid_threads()) {
        float g = p.grad[i];
        if (p.weight_decay != 0.0f) g = fmaf(p.weight_decay, p.param[i], g);
        float m = p.exp_avg[i];
        m = m + (1.0f - p.beta1) * (g - m);
        const float v = p.beta2 * p.exp_avg_sq[i] + (1.0f - p.beta2) * g * g;
        p.exp_avg[i] = m;
        p.exp_avg_sq[i] = v;
        const float denom = sqrtf(v) / bias_correction2_sqrt + p.eps;
        p.param[i] -= step_size * (m / denom);
    }
}

extern "C" __global__ void __launch_bounds__(256) sgd_step(const OptimParams p) {
    const float lr = p.step_scalars ? p.step_scalars[0] : p.lr;
    const bool first_step = p.step_scalars ? p.step_scalars[2] != 0.0f : p.first_step != 0;
    for (long long i = global_thread(); i < p.n; i += grid_threads()) {
        float g = p.grad[i];
        if (p.weight_decay != 0.0f) g = fmaf(p.weight_decay, p.param[i], g);
        if (p.momentum != 0.0f) {
            const float buf = first_step ? g : p.momentum * p.momentum_buf[i] + (1.0f - p.dampening) * g;
            p.momentum_buf[i] = buf;
            g = p.nesterov ? fmaf(p.momentum, buf, g) : buf;
        }
        p.param[i] -= lr * g;
    }
}

HRK_EMU_EXPORT(adam_step, OptimParams)
HRK_EMU_EXPORT(sgd_step, OptimParams)
