// 2-D convolution on tensor cores: the same implicit GEMMs as kernels/conv.cu (forward, backward-data,
// backward-weight; see there for the index maps), the same launch geometry (64x64 output tiles, 256
// threads, 16-deep k tiles, split-K over gridDim.z for backward-weight) and the same forward epilogue
// (bias, residual, ReLU, per-block channel sums Σy/Σy² in double), with the multiply-adds done by
// mma.sync: m16n8k8 on tf32 operands (`*_tf32`), or m16n8k16 on bf16 operands (`conv2d_forward_bf16`).
// Operands are rounded from f32 as they go into the fragments (cvt.rna.tf32 / cvt.rn.bf16x2); products and
// sums stay f32. Tiles stream into shared memory with cp.async, double-buffered: tile t+1 loads while tile
// t is multiplied. Everything goes through kernels/mma.cuh, so the host emulator runs this same code.
#include "mma.cuh"

namespace convmma {

constexpr int TILE_M = 64, TILE_N = 64, TILE_K = 16, THREADS = 256;
// Row stride of the tiles in shared memory: 16 k values + 4 of padding, so the fragment loads (8 rows x 4
// k per instruction) hit 32 distinct banks.
constexpr int LD = TILE_K + 4;
constexpr int PER_THREAD = TILE_M * TILE_K / THREADS;  // elements of each operand tile one thread copies
static_assert(TILE_N * TILE_K / THREADS == PER_THREAD, "tile shapes");
// 8 warps: 2 along M (32 rows each) x 4 along N (16 columns each); a warp holds 2x2 m16n8 accumulators.
constexpr int WARP_ROWS = 32, WARP_COLS = 16;

enum class Math { Tf32, Bf16 };

// A (M x K, stored [m][k]) and B (K x N, stored [n][k]) tiles, two stages.
struct Tiles {
    float a[2][TILE_M][LD];
    float b[2][TILE_N][LD];
};

// Queues the cp.async copies of k tile [k0, k0 + TILE_K) into stage `s`. addr_a(m, k) / addr_b(k, n) give
// the global address of an element, or null where the implicit matrix is zero (padding, a stride gap);
// rows, columns and k beyond the GEMM are zero too. A_K_CONTIG / B_K_CONTIG: which index neighbouring
// threads walk, so that their global reads coalesce.
template <bool A_K_CONTIG, bool B_K_CONTIG, class AddrA, class AddrB>
__device__ __forceinline__ void load_stage(Tiles& t, int s, int M, int N, int k0, int k_end, int m0, int n0,
                                           const AddrA& addr_a, const AddrB& addr_b, const float* valid) {
    const int tid = threadIdx.x;
#pragma unroll
    for (int r = 0; r < PER_THREAD; ++r) {
        const int e = tid + r * THREADS;
        const int kk = A_K_CONTIG ? e % TILE_K : e / TILE_M;
        const int mm = A_K_CONTIG ? e / TILE_K : e % TILE_M;
        const int m = m0 + mm, k = k0 + kk;
        cp_async4(&t.a[s][mm][kk], (m < M && k < k_end) ? addr_a(m, k) : nullptr, valid);
    }
#pragma unroll
    for (int r = 0; r < PER_THREAD; ++r) {
        const int e = tid + r * THREADS;
        const int kk = B_K_CONTIG ? e % TILE_K : e / TILE_N;
        const int nn = B_K_CONTIG ? e / TILE_K : e % TILE_N;
        const int n = n0 + nn, k = k0 + kk;
        cp_async4(&t.b[s][nn][kk], (n < N && k < k_end) ? addr_b(k, n) : nullptr, valid);
    }
}

// This warp's share of one k tile of stage `s`: acc[mt][nt] += A[rows of mt] · B[cols of nt].
template <Math MATH>
__device__ __forceinline__ void multiply_stage(const Tiles& t, int s, float (&acc)[2][2][4]) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int g = lane >> 2, q = lane & 3;  // PTX's groupID and threadID_in_group
    const int row0 = (warp & 1) * WARP_ROWS, col0 = (warp >> 1) * WARP_COLS;
    if constexpr (MATH == Math::Tf32) {
#pragma unroll
        for (int ks = 0; ks < TILE_K; ks += 8) {
            uint32_t a[2][4], b[2][2];
#pragma unroll
            for (int mt = 0; mt < 2; ++mt) {
                const float(*rows)[LD] = &t.a[s][row0 + mt * 16];
                // a0 (g, q), a1 (g+8, q), a2 (g, q+4), a3 (g+8, q+4)
                a[mt][0] = to_tf32(rows[g][ks + q]);
                a[mt][1] = to_tf32(rows[g + 8][ks + q]);
                a[mt][2] = to_tf32(rows[g][ks + q + 4]);
                a[mt][3] = to_tf32(rows[g + 8][ks + q + 4]);
            }
#pragma unroll
            for (int nt = 0; nt < 2; ++nt) {
                const float* col = t.b[s][col0 + nt * 8 + g];
                // b0 (k = q, n = g), b1 (k = q+4, n = g)
                b[nt][0] = to_tf32(col[ks + q]);
                b[nt][1] = to_tf32(col[ks + q + 4]);
            }
#pragma unroll
            for (int mt = 0; mt < 2; ++mt)
#pragma unroll
                for (int nt = 0; nt < 2; ++nt) mma_tf32_m16n8k8(acc[mt][nt], a[mt], b[nt], acc[mt][nt]);
        }
    } else {
        uint32_t a[2][4], b[2][2];
#pragma unroll
        for (int mt = 0; mt < 2; ++mt) {
            const float(*rows)[LD] = &t.a[s][row0 + mt * 16];
            // {a0,a1} (g, 2q..2q+1), {a2,a3} (g+8, 2q..), {a4,a5} (g, 2q+8..), {a6,a7} (g+8, 2q+8..)
            a[mt][0] = to_bf16x2(rows[g][2 * q], rows[g][2 * q + 1]);
            a[mt][1] = to_bf16x2(rows[g + 8][2 * q], rows[g + 8][2 * q + 1]);
            a[mt][2] = to_bf16x2(rows[g][2 * q + 8], rows[g][2 * q + 9]);
            a[mt][3] = to_bf16x2(rows[g + 8][2 * q + 8], rows[g + 8][2 * q + 9]);
        }
#pragma unroll
        for (int nt = 0; nt < 2; ++nt) {
            const float* col = t.b[s][col0 + nt * 8 + g];
            // {b0,b1} (k = 2q..2q+1, n = g), {b2,b3} (k = 2q+8..2q+9, n = g)
            b[nt][0] = to_bf16x2(col[2 * q], col[2 * q + 1]);
            b[nt][1] = to_bf16x2(col[2 * q + 8], col[2 * q + 9]);
        }
#pragma unroll
        for (int mt = 0; mt < 2; ++mt)
#pragma unroll
            for (int nt = 0; nt < 2; ++nt) mma_bf16_m16n8k16(acc[mt][nt], a[mt], b[nt], acc[mt][nt]);
    }
}

// One 64x64 tile of C = A·B over k in [k_begin, k_end), this block's (blockIdx.y, blockIdx.x) tile, left in
// the accumulators: acc[mt][nt][i] is C[m0 + row(mt, i)][n0 + col(nt, i)] (see `acc_row` / `acc_col`).
template <Math MATH, bool A_K_CONTIG, bool B_K_CONTIG, class AddrA, class AddrB>
__device__ __forceinline__ void gemm_tile(Tiles& t, int M, int N, int k_begin, int k_end, const AddrA& addr_a,
                                          const AddrB& addr_b, const float* valid, float (&acc)[2][2][4]) {
    const int m0 = blockIdx.y * TILE_M, n0 = blockIdx.x * TILE_N;
#pragma unroll
    for (int mt = 0; mt < 2; ++mt)
#pragma unroll
        for (int nt = 0; nt < 2; ++nt)
#pragma unroll
            for (int i = 0; i < 4; ++i) acc[mt][nt][i] = 0.0f;
    const int tiles = k_end > k_begin ? (k_end - k_begin + TILE_K - 1) / TILE_K : 0;
    if (tiles > 0) load_stage<A_K_CONTIG, B_K_CONTIG>(t, 0, M, N, k_begin, k_end, m0, n0, addr_a, addr_b, valid);
    cp_async_commit();
    for (int i = 0; i < tiles; ++i) {
        // Stage (i+1)&1 was last read in iteration i-1, which ended with a barrier.
        if (i + 1 < tiles)
            load_stage<A_K_CONTIG, B_K_CONTIG>(t, (i + 1) & 1, M, N, k_begin + (i + 1) * TILE_K, k_end, m0, n0,
                                               addr_a, addr_b, valid);
        // One group per iteration (possibly empty) keeps "all but the newest" meaning "tile i is in".
        cp_async_commit();
        cp_async_wait<1>();
        __syncthreads();  // everyone's copies of tile i are visible
        multiply_stage<MATH>(t, i & 1, acc);
        __syncthreads();  // stage i&1 is free for tile i+2
    }
    cp_async_wait<0>();
}

// Output row / column (relative to the block's tile) of accumulator element i of acc[mt][nt].
__device__ __forceinline__ int acc_row(int mt, int i) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    return (warp & 1) * WARP_ROWS + mt * 16 + (lane >> 2) + 8 * (i >> 1);
}
__device__ __forceinline__ int acc_col(int nt, int i) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    return (warp >> 1) * WARP_COLS + nt * 8 + 2 * (lane & 3) + (i & 1);
}

template <Math MATH>
__device__ __forceinline__ void forward(const Conv2dParams& p) {
    __shared__ Tiles tiles;
    // Stats epilogue: per-warp-column partial channel sums, reduced in a fixed order (deterministic).
    __shared__ double red_sum[TILE_N / WARP_COLS][TILE_M], red_sq[TILE_N / WARP_COLS][TILE_M];
    const int khw = p.kh * p.kw, K = p.c_in * khw, out_hw = p.h_out * p.w_out;
    const int M = p.c_out, N = p.n * out_hw;
    auto addr_w = [&](int co, int k) -> const float* { return p.weight + (long long)co * K + k; };
    auto addr_x = [&](int k, int col) -> const float* {
        const int ci = k / khw, rs = k % khw, r = rs / p.kw, s = rs % p.kw;
        const int img = col / out_hw, q = col % out_hw, oh = q / p.w_out, ow = q % p.w_out;
        const int ih = oh * p.stride - p.pad + r, iw = ow * p.stride - p.pad + s;
        if (ih < 0 || ih >= p.h || iw < 0 || iw >= p.w) return nullptr;
        return p.x + (((long long)img * p.c_in + ci) * p.h + ih) * p.w + iw;
    };
    float acc[2][2][4];
    gemm_tile<MATH, true, false>(tiles, M, N, 0, K, addr_w, addr_x, p.weight, acc);

    const int m0 = blockIdx.y * TILE_M, n0 = blockIdx.x * TILE_N;
    double row_sum[2][2] = {{0.0, 0.0}, {0.0, 0.0}}, row_sq[2][2] = {{0.0, 0.0}, {0.0, 0.0}};
#pragma unroll
    for (int mt = 0; mt < 2; ++mt)
#pragma unroll
        for (int nt = 0; nt < 2; ++nt)
#pragma unroll
            for (int i = 0; i < 4; ++i) {
                const int co = m0 + acc_row(mt, i), col = n0 + acc_col(nt, i);
                if (co >= M || col >= N) continue;
                float v = acc[mt][nt][i] + (p.bias ? p.bias[co] : 0.0f);
                const int img = col / out_hw, q = col % out_hw;
                const long long at = ((long long)img * p.c_out + co) * out_hw + q;
                if (p.residual) v += p.residual[at];
                if (p.relu) v = fmaxf(v, 0.0f);
                p.y[at] = v;
                const double d = v;
                row_sum[mt][i >> 1] += d;
                row_sq[mt][i >> 1] = fma(d, d, row_sq[mt][i >> 1]);
            }
    if (p.stats) {
        // The 4 lanes of a group hold the same 4 rows: a fixed xor tree, then one lane per group writes the
        // warp's partial for its rows, and 64 threads add the 4 warp columns in order.
        const int lane = threadIdx.x & 31, warp_col = (threadIdx.x >> 5) >> 1;
#pragma unroll
        for (int mt = 0; mt < 2; ++mt)
#pragma unroll
            for (int h = 0; h < 2; ++h) {
                double s = row_sum[mt][h], q = row_sq[mt][h];
                s += __shfl_xor_sync(FULL_MASK, s, 1);
                q += __shfl_xor_sync(FULL_MASK, q, 1);
                s += __shfl_xor_sync(FULL_MASK, s, 2);
                q += __shfl_xor_sync(FULL_MASK, q, 2);
                if ((lane & 3) == 0) {
                    const int row = acc_row(mt, 2 * h);
                    red_sum[warp_col][row] = s;
                    red_sq[warp_col][row] = q;
                }
            }
        __syncthreads();
        const int row = threadIdx.x;
        if (row < TILE_M && m0 + row < M) {
            double s = 0.0, q = 0.0;
            for (int c = 0; c < TILE_N / WARP_COLS; ++c) {
                s += red_sum[c][row];
                q += red_sq[c][row];
            }
            double* part = p.stats + (long long)blockIdx.x * 2 * p.c_out;
            part[m0 + row] = s;
            part[p.c_out + m0 + row] = q;
        }
    }
}

}  // namespace convmma

// grid (ceil(n*h_out*w_out / 64), ceil(c_out / 64)), block 256 (as conv2d_forward).
extern "C" __global__ void __launch_bounds__(256) conv2d_forward_tf32(const Conv2dParams p) {
    convmma::forward<convmma::Math::Tf32>(p);
}

// The same on bf16 operands (m16n8k16).
extern "C" __global__ void __launch_bounds__(256) conv2d_forward_bf16(const Conv2dParams p) {
    convmma::forward<convmma::Math::Bf16>(p);
}

// grid (ceil(n*h*w / 64), ceil(c_in / 64)), block 256 (as conv2d_backward_data).
extern "C" __global__ void __launch_bounds__(256) conv2d_backward_data_tf32(const Conv2dParams p) {
    using namespace convmma;
    __shared__ Tiles tiles;
    const int khw = p.kh * p.kw, K = p.c_out * khw, in_hw = p.h * p.w;
    const int M = p.c_in, N = p.n * in_hw;
    auto addr_w = [&](int ci, int k) -> const float* {
        const int co = k / khw, rs = k % khw;
        return p.weight + ((long long)co * p.c_in + ci) * khw + rs;
    };
    auto addr_dy = [&](int k, int col) -> const float* {
        const int co = k / khw, rs = k % khw, r = rs / p.kw, s = rs % p.kw;
        const int img = col / in_hw, q = col % in_hw, ih = q / p.w, iw = q % p.w;
        // Output position that read x[ih, iw] through tap (r, s), if it exists.
        const int th = ih + p.pad - r, tw = iw + p.pad - s;
        if (th < 0 || tw < 0 || th % p.stride != 0 || tw % p.stride != 0) return nullptr;
        const int oh = th / p.stride, ow = tw / p.stride;
        if (oh >= p.h_out || ow >= p.w_out) return nullptr;
        return p.dy + (((long long)img * p.c_out + co) * p.h_out + oh) * p.w_out + ow;
    };
    float acc[2][2][4];
    gemm_tile<Math::Tf32, true, false>(tiles, M, N, 0, K, addr_w, addr_dy, p.weight, acc);
    const int m0 = blockIdx.y * TILE_M, n0 = blockIdx.x * TILE_N;
#pragma unroll
    for (int mt = 0; mt < 2; ++mt)
#pragma unroll
        for (int nt = 0; nt < 2; ++nt)
#pragma unroll
            for (int i = 0; i < 4; ++i) {
                const int ci = m0 + acc_row(mt, i), col = n0 + acc_col(nt, i);
                if (ci >= M || col >= N) continue;
                const int img = col / in_hw, q = col % in_hw;
                p.dx[((long long)img * p.c_in + ci) * in_hw + q] = acc[mt][nt][i];
            }
}

// grid (ceil(c_in*kh*kw / 64), ceil(c_out / 64), k_splits), block 256 (as conv2d_backward_weight).
extern "C" __global__ void __launch_bounds__(256) conv2d_backward_weight_tf32(const Conv2dParams p) {
    using namespace convmma;
    __shared__ Tiles tiles;
    const int khw = p.kh * p.kw, N = p.c_in * khw, out_hw = p.h_out * p.w_out;
    const int K = p.n * out_hw;
    // Split the reduction into k_splits chunks aligned to the tile depth (as conv2d_backward_weight).
    const int chunk = ((K + p.k_splits - 1) / p.k_splits + TILE_K - 1) / TILE_K * TILE_K;
    const int k_begin = blockIdx.z * chunk;
    const int k_end = min(K, k_begin + chunk);
    auto addr_dy = [&](int co, int k) -> const float* {
        const int img = k / out_hw, q = k % out_hw;
        return p.dy + ((long long)img * p.c_out + co) * out_hw + q;
    };
    auto addr_x = [&](int k, int j) -> const float* {
        const int ci = j / khw, rs = j % khw, r = rs / p.kw, s = rs % p.kw;
        const int img = k / out_hw, q = k % out_hw, oh = q / p.w_out, ow = q % p.w_out;
        const int ih = oh * p.stride - p.pad + r, iw = ow * p.stride - p.pad + s;
        if (ih < 0 || ih >= p.h || iw < 0 || iw >= p.w) return nullptr;
        return p.x + (((long long)img * p.c_in + ci) * p.h + ih) * p.w + iw;
    };
    float acc[2][2][4];
    // An empty chunk (k_begin >= K) runs no tile and adds zeros.
    gemm_tile<Math::Tf32, true, true>(tiles, p.c_out, N, k_begin, k_end, addr_dy, addr_x, p.dy, acc);
    const int m0 = blockIdx.y * TILE_M, n0 = blockIdx.x * TILE_N;
    const bool split = p.k_splits > 1;
#pragma unroll
    for (int mt = 0; mt < 2; ++mt)
#pragma unroll
        for (int nt = 0; nt < 2; ++nt)
#pragma unroll
            for (int i = 0; i < 4; ++i) {
                const int co = m0 + acc_row(mt, i), j = n0 + acc_col(nt, i);
                if (co >= p.c_out || j >= N) continue;
                float* dst = &p.dw[(long long)co * N + j];
                if (split)
                    atomicAdd(dst, acc[mt][nt][i]);
                else
                    *dst += acc[mt][nt][i];
            }
}

// Test probes of the primitives (tests/cuda_mma.rs), one warp: each lane passes its own registers, so the
// test's fragment map, not this file's, decides where every matrix element goes.
extern "C" __global__ void __launch_bounds__(32) mma_probe_tf32(const MmaProbeParams p) {
    const int lane = threadIdx.x;
    uint32_t a[4], b[2];
    float c[4], d[4];
    for (int i = 0; i < 4; ++i) a[i] = p.a[lane * 4 + i], c[i] = p.c[lane * 4 + i];
    for (int i = 0; i < 2; ++i) b[i] = p.b[lane * 2 + i];
    mma_tf32_m16n8k8(d, a, b, c);
    for (int i = 0; i < 4; ++i) p.d[lane * 4 + i] = d[i];
}

extern "C" __global__ void __launch_bounds__(32) mma_probe_bf16(const MmaProbeParams p) {
    const int lane = threadIdx.x;
    uint32_t a[4], b[2];
    float c[4], d[4];
    for (int i = 0; i < 4; ++i) a[i] = p.a[lane * 4 + i], c[i] = p.c[lane * 4 + i];
    for (int i = 0; i < 2; ++i) b[i] = p.b[lane * 2 + i];
    mma_bf16_m16n8k16(d, a, b, c);
    for (int i = 0; i < 4; ++i) p.d[lane * 4 + i] = d[i];
}

// tf32[i] = cvt.rna.tf32.f32(src[i]); bf16x2[i] = cvt.rn.bf16x2.f32 of (hi = -src[i], lo = src[i]).
extern "C" __global__ void __launch_bounds__(256) mma_probe_cvt(const MmaProbeParams p) {
    for (long long i = global_thread(); i < p.n; i += grid_threads()) {
        p.tf32[i] = to_tf32(p.src[i]);
        p.bf16x2[i] = to_bf16x2(p.src[i], -p.src[i]);
    }
}

HRK_EMU_EXPORT(conv2d_forward_tf32, Conv2dParams)
HRK_EMU_EXPORT(conv2d_forward_bf16, Conv2dParams)
HRK_EMU_EXPORT(conv2d_backward_data_tf32, Conv2dParams)
HRK_EMU_EXPORT(conv2d_backward_weight_tf32, Conv2dParams)
HRK_EMU_EXPORT(mma_probe_tf32, MmaProbeParams)
HRK_EMU_EXPORT(mma_probe_bf16, MmaProbeParams)
HRK_EMU_EXPORT(mma_probe_cvt, MmaProbeParams)
HRK_EMU_SIZEOF(MmaProbeParams)
