// 2-D convolution on tensor cores: the same implicit GEMMs as kernels/conv.cu (forward, backward-data,
// backward-weight; see there for the index maps), the same launch geometry (64x64 output tiles, 256
// threads, 16-deep k tiles, split-K over gridDim.z for backward-weight) and the same forward epilogue
// (bias, residual, ReLU, per-block channel sums Σy/Σy² in double), with the multiply-adds done by
// mma.sync: m16n8k8 on tf32 operands (`*_tf32`), or m16n8k16 on bf16 operands (`conv2d_forward_bf16`).
// Operands are rounded from f32 as they go into the fragments (cvt.rna.tf32 / cvt.rn.bf16x2); products and
// sums stay f32. Tiles stream into shared memory with cp.async, double-buffered: tile t+1 loads while tile
// t is multiplied. Everything goes through kernels/mma.cuh, so the host emulator runs this same code.
#include "conv_maps.cuh"
#include "mma.cuh"

namespace convmma {

constexpr int TILE_M = 64, TILE_N = 64, TILE_K = 16, THREADS = 256;
// Row stride of the tiles in shared memory: 16 k values + 4 of padding, so the fragment loads (8 rows x 4
// k per instruction) hit 32 distinct banks.
constexpr int LD = TILE_K + 4;
constexpr int PER_THREAD = TILE_M * TILE_K / THREADS;  // elements of each operand tile one thread copies
static_assert(TILE_N == TILE_M, "both operand tiles have TILE_M rows");
// 8 warps: 2 along M (32 rows each) x 4 along N (16 columns each); a warp holds 2x2 m16n8 accumulators.
constexpr int WARP_ROWS = 32, WARP_COLS = 16;

enum class Math { Tf32, Bf16 };

// A (M x K, stored [m][k]) and B (K x N, stored [n][k]) tiles, two stages.
struct Tiles {
    float a[2][TILE_M][LD];
    float b[2][TILE_N][LD];
};

// Queues the cp.async copies of one operand's k tile [k0, k0 + TILE_K) into `tile` (TILE_M rows of the
// stage): element (row0 + rr, k) from addr(row, k), the global address of an element or null where the
// implicit matrix is zero (padding, a stride gap); rows past `rows` and k past k_end are zero too.
// K_CONTIG: neighbouring threads walk k (else the row), so that their global reads coalesce.
template <bool K_CONTIG, class Addr>
__device__ __forceinline__ void load_operand(float (&tile)[TILE_M][LD], int rows, int row0, int k0, int k_end,
                                             const Addr& addr, const float* valid) {
    const int tid = threadIdx.x;
#pragma unroll
    for (int r = 0; r < PER_THREAD; ++r) {
        const int e = tid + r * THREADS;
        const int kk = K_CONTIG ? e % TILE_K : e / TILE_M;
        const int rr = K_CONTIG ? e / TILE_K : e % TILE_M;
        const int row = row0 + rr, k = k0 + kk;
        cp_async4(&tile[rr][kk], (row < rows && k < k_end) ? addr(row, k) : nullptr, valid);
    }
}

// Queues the copies of k tile [k0, k0 + TILE_K) of both operands into stage `s`: addr_a(m, k) / addr_b(k, n)
// as `load_operand`'s addr.
template <bool A_K_CONTIG, bool B_K_CONTIG, class AddrA, class AddrB>
__device__ __forceinline__ void load_stage(Tiles& t, int s, int M, int N, int k0, int k_end, int m0, int n0,
                                           const AddrA& addr_a, const AddrB& addr_b, const float* valid) {
    load_operand<A_K_CONTIG>(t.a[s], M, m0, k0, k_end, addr_a, valid);
    load_operand<B_K_CONTIG>(t.b[s], N, n0, k0, k_end, [&](int n, int k) { return addr_b(k, n); }, valid);
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
    for (auto& row : acc)
#pragma unroll
        for (auto& fragment : row)
#pragma unroll
            for (float& v : fragment) v = 0.0f;
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

// Calls f(mt, i, row, col, v) for each accumulator element v = acc[mt][nt][i] whose output (row, col) lies
// inside the M x N GEMM, row and col absolute, in (mt, nt, i) order.
template <class F>
__device__ __forceinline__ void for_each_output(const float (&acc)[2][2][4], int M, int N, const F& f) {
    const int m0 = blockIdx.y * TILE_M, n0 = blockIdx.x * TILE_N;
#pragma unroll
    for (int mt = 0; mt < 2; ++mt)
#pragma unroll
        for (int nt = 0; nt < 2; ++nt)
#pragma unroll
            for (int i = 0; i < 4; ++i) {
                const int row = m0 + acc_row(mt, i), col = n0 + acc_col(nt, i);
                if (row < M && col < N) f(mt, i, row, col, acc[mt][nt][i]);
            }
}

template <Math MATH>
__device__ __forceinline__ void forward(const Conv2dParams& p) {
    __shared__ Tiles tiles;
    // Stats epilogue: per-warp-column partial channel sums, reduced in a fixed order (deterministic).
    __shared__ double red_sum[TILE_N / WARP_COLS][TILE_M], red_sq[TILE_N / WARP_COLS][TILE_M];
    const int khw = p.kh * p.kw, K = p.c_in * khw, out_hw = p.h_out * p.w_out;
    const int M = p.c_out, N = p.n * out_hw;
    auto addr_w = [&](int co, int k) -> const float* { return p.weight + (long long)co * K + k; };
    auto addr_x = [&](int k, int col) { return conv_patch_at(p, k, col); };
    float acc[2][2][4];
    gemm_tile<MATH, true, false>(tiles, M, N, 0, K, addr_w, addr_x, p.weight, acc);

    double row_sum[2][2] = {{0.0, 0.0}, {0.0, 0.0}}, row_sq[2][2] = {{0.0, 0.0}, {0.0, 0.0}};
    for_each_output(acc, M, N, [&](int mt, int i, int co, int col, float a) {
        const double d = conv_store_y(p, co, col, a);
        row_sum[mt][i >> 1] += d;
        row_sq[mt][i >> 1] = fma(d, d, row_sq[mt][i >> 1]);
    });
    if (p.stats) {
        const int m0 = blockIdx.y * TILE_M;
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

// Test probe of one mma primitive (tests/cuda_mma.rs), one warp: each lane passes its own registers, so the
// test's fragment map, not this file's, decides where every matrix element goes.
template <Math MATH>
__device__ __forceinline__ void mma_probe(const MmaProbeParams& p) {
    const int lane = threadIdx.x;
    uint32_t a[4], b[2];
    float c[4], d[4];
    for (int i = 0; i < 4; ++i) a[i] = p.a[lane * 4 + i], c[i] = p.c[lane * 4 + i];
    for (int i = 0; i < 2; ++i) b[i] = p.b[lane * 2 + i];
    if constexpr (MATH == Math::Tf32)
        mma_tf32_m16n8k8(d, a, b, c);
    else
        mma_bf16_m16n8k16(d, a, b, c);
    for (int i = 0; i < 4; ++i) p.d[lane * 4 + i] = d[i];
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
    auto addr_w = [&](int ci, int k) { return conv_weight_t_at(p, ci, k); };
    auto addr_dy = [&](int k, int col) { return conv_scatter_at(p, k, col); };
    float acc[2][2][4];
    gemm_tile<Math::Tf32, true, false>(tiles, M, N, 0, K, addr_w, addr_dy, p.weight, acc);
    for_each_output(acc, M, N, [&](int, int, int ci, int col, float a) { conv_store_dx(p, ci, col, a); });
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
    auto addr_dy = [&](int co, int k) { return conv_dy_at(p, co, k); };
    auto addr_x = [&](int k, int j) { return conv_patch_at(p, j, k); };
    float acc[2][2][4];
    // An empty chunk (k_begin >= K) runs no tile and adds zeros.
    gemm_tile<Math::Tf32, true, true>(tiles, p.c_out, N, k_begin, k_end, addr_dy, addr_x, p.dy, acc);
    for_each_output(acc, p.c_out, N, [&](int, int, int co, int j, float a) { conv_add_dw(p, co, j, a); });
}

// The probes of the two mma shapes (see convmma::mma_probe).
extern "C" __global__ void __launch_bounds__(32) mma_probe_tf32(const MmaProbeParams p) {
    convmma::mma_probe<convmma::Math::Tf32>(p);
}

extern "C" __global__ void __launch_bounds__(32) mma_probe_bf16(const MmaProbeParams p) {
    convmma::mma_probe<convmma::Math::Bf16>(p);
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
