// 2-D convolution, NCHW f32, as implicit GEMM with shared-memory tiling (no im2col buffer).
//   forward:         y[co, (n,oh,ow)]  = sum_{(ci,r,s)} w[co,(ci,r,s)] * x_patch[(ci,r,s),(n,oh,ow)]
//                    (+bias, +residual, +ReLU: the epilogue of a BN-folded conv in inference;
//                     optional per-block channel sums of y in double for a following training BN)
//   backward-data:   dx[ci, (n,h,w)]   = sum_{(co,r,s)} w[co,ci,r,s] * dy_scatter[(co,r,s),(n,h,w)]
//   backward-weight: dw[co, (ci,r,s)] += sum_{(n,oh,ow)} dy[co,(n,oh,ow)] * x_patch[(n,oh,ow),(ci,r,s)]
//                    (split-K over gridDim.z with atomicAdd when k_splits > 1)
//   backward-bias:   db[co] += sum dy[n,co,:,:]
// Plain FMA path only (no mma / cp.async), so the host emulator runs exactly this code.
#include "conv_maps.cuh"

namespace conv {

constexpr int TILE_M = 64, TILE_N = 64, TILE_K = 16, THREADS = 256;
constexpr int PER_THREAD = (TILE_M * TILE_K) / THREADS;  // 4 elements of each tile loaded per thread
static_assert(TILE_N == TILE_M, "both operand tiles have TILE_M rows");

// Loads one operand's k tile [k0, k0 + TILE_K) into `tile` (k-major, TILE_M columns): element (row0 + rr, k)
// = load(row, k), zero for rows past `rows` and k past k_end. K_CONTIG: neighbouring threads walk k (else the
// row), for coalescing.
template <bool K_CONTIG, class Load>
__device__ __forceinline__ void load_operand(float (&tile)[TILE_K][TILE_M + 1], int rows, int row0, int k0, int k_end,
                                             const Load& load) {
    const int tid = threadIdx.x;
    for (int r = 0; r < PER_THREAD; ++r) {
        const int e = tid + r * THREADS;
        const int kk = K_CONTIG ? e % TILE_K : e / TILE_M;
        const int rr = K_CONTIG ? e / TILE_K : e % TILE_M;
        const int row = row0 + rr, k = k0 + kk;
        tile[kk][rr] = (row < rows && k < k_end) ? load(row, k) : 0.0f;
    }
}

// One 64x64 output tile of C = A·B over k in [k_begin, k_end). Each thread owns a 4x4 micro-tile: rows
// ty*4+i, columns tx+16*j (so neighbouring threads store neighbouring columns).
// A_K_CONTIG / B_K_CONTIG pick which index neighbouring threads walk when loading, for coalescing.
template <bool A_K_CONTIG, bool B_K_CONTIG, class LoadA, class LoadB, class Store>
__device__ __forceinline__ void gemm_tile(int M, int N, int k_begin, int k_end, const LoadA& load_a,
                                          const LoadB& load_b, const Store& store) {
    // +1 column of padding keeps the transposed stores of A free of bank conflicts.
    __shared__ float a_tile[TILE_K][TILE_M + 1];
    __shared__ float b_tile[TILE_K][TILE_N + 1];
    const int tid = threadIdx.x;
    const int tx = tid % 16, ty = tid / 16;
    const int m0 = blockIdx.y * TILE_M, n0 = blockIdx.x * TILE_N;
    float acc[4][4];
    for (int i = 0; i < 4; ++i)
        for (int j = 0; j < 4; ++j) acc[i][j] = 0.0f;

    for (int k0 = k_begin; k0 < k_end; k0 += TILE_K) {
        load_operand<A_K_CONTIG>(a_tile, M, m0, k0, k_end, load_a);
        load_operand<B_K_CONTIG>(b_tile, N, n0, k0, k_end, [&](int n, int k) { return load_b(k, n); });
        __syncthreads();
        for (int kk = 0; kk < TILE_K; ++kk) {
            float a[4], b[4];
            for (int i = 0; i < 4; ++i) a[i] = a_tile[kk][ty * 4 + i];
            for (int j = 0; j < 4; ++j) b[j] = b_tile[kk][tx + 16 * j];
            for (int i = 0; i < 4; ++i)
                for (int j = 0; j < 4; ++j) acc[i][j] = fmaf(a[i], b[j], acc[i][j]);
        }
        // The next iteration overwrites the tiles.
        __syncthreads();
    }
    for (int i = 0; i < 4; ++i) {
        const int m = m0 + ty * 4 + i;
        if (m >= M) continue;
        for (int j = 0; j < 4; ++j) {
            const int n = n0 + tx + 16 * j;
            if (n < N) store(m, n, acc[i][j]);
        }
    }
}

}  // namespace conv

// grid (ceil(n*h_out*w_out / 64), ceil(c_out / 64)), block 256.
extern "C" __global__ void __launch_bounds__(256) conv2d_forward(const Conv2dParams p) {
    const int khw = p.kh * p.kw, K = p.c_in * khw, out_hw = p.h_out * p.w_out;
    auto load_w = [&](int co, int k) { return p.weight[(long long)co * K + k]; };
    auto load_x = [&](int k, int col) { return value_or_zero(conv_patch_at(p, k, col)); };
    // Stats epilogue: this thread's share of its 4 output rows (channels row0..row0+3), in double.
    const int row0 = blockIdx.y * conv::TILE_M + (threadIdx.x / 16) * 4;
    double row_sum[4] = {0.0, 0.0, 0.0, 0.0}, row_sq[4] = {0.0, 0.0, 0.0, 0.0};
    auto store_y = [&](int co, int col, float acc) {
        const float v = conv_store_y(p, co, col, acc);
        if (p.stats) {
            // Constant indices only, so the sums stay in registers (a computed index puts them on the stack).
            const double d = v;
            const int row = co - row0;
#pragma unroll
            for (int i = 0; i < 4; ++i) {
                if (i == row) {
                    row_sum[i] += d;
                    row_sq[i] = fma(d, d, row_sq[i]);
                }
            }
        }
    };
    conv::gemm_tile<true, false>(p.c_out, p.n * out_hw, 0, K, load_w, load_x, store_y);
    if (p.stats) {
        // The 16 threads sharing a row are lanes 0-15 or 16-31 of one warp: a fixed-order shuffle tree
        // (deterministic, no atomics), then lane 0 of each half writes this block's partial.
        const int tx = threadIdx.x % 16;
        for (int i = 0; i < 4; ++i) {
            double s = row_sum[i], q = row_sq[i];
            for (int offset = 8; offset > 0; offset >>= 1) {
                s += __shfl_down_sync(FULL_MASK, s, offset);
                q += __shfl_down_sync(FULL_MASK, q, offset);
            }
            const int co = row0 + i;
            if (tx == 0 && co < p.c_out) {
                double* part = p.stats + (long long)blockIdx.x * 2 * p.c_out;
                part[co] = s;
                part[p.c_out + co] = q;
            }
        }
    }
}

// grid (ceil(n*h*w / 64), ceil(c_in / 64)), block 256.
extern "C" __global__ void __launch_bounds__(256) conv2d_backward_data(const Conv2dParams p) {
    const int khw = p.kh * p.kw, K = p.c_out * khw, in_hw = p.h * p.w;
    auto load_w = [&](int ci, int k) { return *conv_weight_t_at(p, ci, k); };
    auto load_dy = [&](int k, int col) { return value_or_zero(conv_scatter_at(p, k, col)); };
    auto store_dx = [&](int ci, int col, float acc) { conv_store_dx(p, ci, col, acc); };
    conv::gemm_tile<true, false>(p.c_in, p.n * in_hw, 0, K, load_w, load_dy, store_dx);
}

// grid (ceil(c_in*kh*kw / 64), ceil(c_out / 64), k_splits), block 256.
extern "C" __global__ void __launch_bounds__(256) conv2d_backward_weight(const Conv2dParams p) {
    const int khw = p.kh * p.kw, N = p.c_in * khw, out_hw = p.h_out * p.w_out;
    const int K = p.n * out_hw;
    // Split the reduction into k_splits chunks aligned to the tile depth.
    const int chunk = ((K + p.k_splits - 1) / p.k_splits + conv::TILE_K - 1) / conv::TILE_K * conv::TILE_K;
    const int k_begin = blockIdx.z * chunk;
    const int k_end = min(K, k_begin + chunk);
    auto load_dy = [&](int co, int k) { return *conv_dy_at(p, co, k); };
    auto load_x = [&](int k, int j) { return value_or_zero(conv_patch_at(p, j, k)); };
    auto store_dw = [&](int co, int j, float acc) { conv_add_dw(p, co, j, acc); };
    // An empty chunk (k_begin >= K) still runs the (zero-trip) loop so every thread stays in step.
    conv::gemm_tile<true, true>(p.c_out, N, k_begin, k_end, load_dy, load_x, store_dw);
}

// grid (c_out), block 256: db[co] += sum over (n, h_out, w_out) of dy.
extern "C" __global__ void __launch_bounds__(256) conv2d_backward_bias(const Conv2dParams p) {
    __shared__ float scratch[32];
    const int co = blockIdx.x, out_hw = p.h_out * p.w_out;
    float sum = 0.0f;
    for (int img = 0; img < p.n; ++img) {
        const float* plane = p.dy + ((long long)img * p.c_out + co) * out_hw;
        for (int q = threadIdx.x; q < out_hw; q += blockDim.x) sum += plane[q];
    }
    sum = block_sum(sum, scratch);
    if (threadIdx.x == 0) p.db[co] += sum;
}

HRK_EMU_EXPORT(conv2d_forward, Conv2dParams)
HRK_EMU_EXPORT(conv2d_backward_data, Conv2dParams)
HRK_EMU_EXPORT(conv2d_backward_weight, Conv2dParams)
HRK_EMU_EXPORT(conv2d_backward_bias, Conv2dParams)
