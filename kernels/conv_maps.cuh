// The index maps of the conv's implicit GEMMs, shared by the FMA kernels (kernels/conv.cu) and the tensor-core
// ones (kernels/conv_mma.cu); NCHW f32. The operands: where an element of an implicit matrix lives in global
// memory, or null where it is zero (padding, a stride gap). The results: each element's store, with the
// forward epilogue. `tap` indexes (c, r, s) of a kernel window, `pixel` (img, oh, ow) or (img, ih, iw).
#pragma once
#include "common.cuh"

// x_patch[(ci, r, s), (img, oh, ow)] = x[img, ci, oh·stride − pad + r, ow·stride − pad + s]: forward's B
// (k = tap, n = pixel) and backward-weight's B (k = pixel, n = tap).
__device__ __forceinline__ const float* conv_patch_at(const Conv2dParams& p, int tap, int pixel) {
    const int khw = p.kh * p.kw, out_hw = p.h_out * p.w_out;
    const int ci = tap / khw, rs = tap % khw, r = rs / p.kw, s = rs % p.kw;
    const int img = pixel / out_hw, q = pixel % out_hw, oh = q / p.w_out, ow = q % p.w_out;
    const int ih = oh * p.stride - p.pad + r, iw = ow * p.stride - p.pad + s;
    if (ih < 0 || ih >= p.h || iw < 0 || iw >= p.w) return nullptr;
    return p.x + (((long long)img * p.c_in + ci) * p.h + ih) * p.w + iw;
}

// w[co, ci, r, s] as backward-data's A: row ci, column tap = (co, r, s).
__device__ __forceinline__ const float* conv_weight_t_at(const Conv2dParams& p, int ci, int tap) {
    const int khw = p.kh * p.kw, co = tap / khw, rs = tap % khw;
    return p.weight + ((long long)co * p.c_in + ci) * khw + rs;
}

// dy_scatter[(co, r, s), (img, ih, iw)] = dy at the output position that read x[img, ·, ih, iw] through tap
// (r, s), if it exists: backward-data's B.
__device__ __forceinline__ const float* conv_scatter_at(const Conv2dParams& p, int tap, int pixel) {
    const int khw = p.kh * p.kw, in_hw = p.h * p.w;
    const int co = tap / khw, rs = tap % khw, r = rs / p.kw, s = rs % p.kw;
    const int img = pixel / in_hw, q = pixel % in_hw, ih = q / p.w, iw = q % p.w;
    const int th = ih + p.pad - r, tw = iw + p.pad - s;
    if (th < 0 || tw < 0 || th % p.stride != 0 || tw % p.stride != 0) return nullptr;
    const int oh = th / p.stride, ow = tw / p.stride;
    if (oh >= p.h_out || ow >= p.w_out) return nullptr;
    return p.dy + (((long long)img * p.c_out + co) * p.h_out + oh) * p.w_out + ow;
}

// dy[img, co, oh, ow] as backward-weight's A: row co, column pixel = (img, oh, ow).
__device__ __forceinline__ const float* conv_dy_at(const Conv2dParams& p, int co, int pixel) {
    const int out_hw = p.h_out * p.w_out, img = pixel / out_hw, q = pixel % out_hw;
    return p.dy + ((long long)img * p.c_out + co) * out_hw + q;
}

// The value at an address of the maps above: zero where it is null.
__device__ __forceinline__ float value_or_zero(const float* at) { return at ? *at : 0.0f; }

// Forward's result y[co, pixel]: acc + bias, + residual, ReLU (the epilogue of a BN-folded conv), stored in y
// and returned (for the channel statistics).
__device__ __forceinline__ float conv_store_y(const Conv2dParams& p, int co, int pixel, float acc) {
    const int out_hw = p.h_out * p.w_out, img = pixel / out_hw, q = pixel % out_hw;
    float v = acc + (p.bias ? p.bias[co] : 0.0f);
    const long long at = ((long long)img * p.c_out + co) * out_hw + q;
    if (p.residual) v += p.residual[at];
    if (p.relu) v = fmaxf(v, 0.0f);
    p.y[at] = v;
    return v;
}

// Backward-data's result dx[ci, pixel].
__device__ __forceinline__ void conv_store_dx(const Conv2dParams& p, int ci, int pixel, float acc) {
    const int in_hw = p.h * p.w, img = pixel / in_hw, q = pixel % in_hw;
    p.dx[((long long)img * p.c_in + ci) * in_hw + q] = acc;
}

// Backward-weight's result: dw[co, tap] += acc, atomically when the reduction is split over blocks.
__device__ __forceinline__ void conv_add_dw(const Conv2dParams& p, int co, int tap, float acc) {
    float* dst = &p.dw[(long long)co * (p.c_in * p.kh * p.kw) + tap];
    if (p.k_splits > 1)
        atomicAdd(dst, acc);
    else
        *dst += acc;
}
