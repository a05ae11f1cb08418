// Tensor-core and async-copy primitives: inline PTX on the device, the emulations of kernels/emu.h on the
// host. Both sides take the same registers, so a kernel written with these runs unchanged under both.
#pragma once
#include "common.cuh"

#ifdef __CUDACC__
#include <cstdint>
#endif

// f32 -> tf32 (cvt.rna.tf32.f32: nearest, ties away from zero), as the .b32 register mma takes.
__device__ __forceinline__ uint32_t to_tf32(float x) {
#ifdef __CUDACC__
    uint32_t r;
    asm("cvt.rna.tf32.f32 %0, %1;" : "=r"(r) : "f"(x));
    return r;
#else
    return hrk_emu::cvt_rna_tf32(x);
#endif
}

// Two f32 -> one bf16x2 register (cvt.rn: nearest even): `lo` in bits 0-15, `hi` in bits 16-31.
__device__ __forceinline__ uint32_t to_bf16x2(float lo, float hi) {
#ifdef __CUDACC__
    uint32_t r;
    asm("cvt.rn.bf16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo));
    return r;
#else
    return hrk_emu::cvt_rn_bf16x2(hi, lo);
#endif
}

// d = a·b + c, mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 (every lane of the warp calls it).
__device__ __forceinline__ void mma_tf32_m16n8k8(float d[4], const uint32_t a[4], const uint32_t b[2], const float c[4]) {
#ifdef __CUDACC__
    asm volatile(
        "mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%10,%11,%12,%13};"
        : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]), "f"(c[0]), "f"(c[1]), "f"(c[2]),
          "f"(c[3]));
#else
    hrk_emu::mma_warp<8, false>(d, a, b, c);
#endif
}

// d = a·b + c, mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 (every lane of the warp calls it).
__device__ __forceinline__ void mma_bf16_m16n8k16(float d[4], const uint32_t a[4], const uint32_t b[2], const float c[4]) {
#ifdef __CUDACC__
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%10,%11,%12,%13};"
        : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]), "f"(c[0]), "f"(c[1]), "f"(c[2]),
          "f"(c[3]));
#else
    hrk_emu::mma_warp<16, true>(d, a, b, c);
#endif
}

// 4-byte global -> shared async copy; `src` null writes 0 (src-size 0: zero-fill; `valid` is any mapped
// global address, never read, because the instruction still takes one).
__device__ __forceinline__ void cp_async4(float* dst, const float* src, const float* valid) {
#ifdef __CUDACC__
    const unsigned s = (unsigned)__cvta_generic_to_shared(dst);
    asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;" ::"r"(s), "l"(src ? src : valid), "r"(src ? 4 : 0)
                 : "memory");
#else
    (void)valid;
    hrk_emu::cp_async4(dst, src);
#endif
}

__device__ __forceinline__ void cp_async_commit() {
#ifdef __CUDACC__
    asm volatile("cp.async.commit_group;" ::: "memory");
#else
    hrk_emu::cp_async_commit();
#endif
}

// Waits until at most PENDING of this thread's committed groups are still in flight.
template <int PENDING>
__device__ __forceinline__ void cp_async_wait() {
#ifdef __CUDACC__
    asm volatile("cp.async.wait_group %0;" ::"n"(PENDING) : "memory");
#else
    hrk_emu::cp_async_wait(PENDING);
#endif
}
