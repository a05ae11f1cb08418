// Host emulation of the CUDA execution model, so the same .cu kernels run (and are tested) on a machine
// without a GPU. Compiled only by the host build (g++ -std=c++20 -include emu.h); nvcc never sees it.
//
// Model (TOOLCHAIN §5): the blocks of the grid run one after another; because only one block is live at a
// time, `__shared__` can be `static`. The blockDim threads of a block run in one of two ways:
// - fibers (default): one ucontext per CUDA thread on the launching OS thread, switched at every barrier
//   by a small scheduler — about 10x faster than OS threads on models (a barrier costs 2 context switches
//   per thread instead of a futex wake-up of 256 threads on 2 cores);
// - OS threads (a persistent pool; always under ThreadSanitizer, which cannot see races between fibers,
//   or with env HRK_EMU_OS_THREADS=1, passed in by src/cuda/emu.rs): __syncthreads is a std::barrier over the block.
// Warp shuffles go through a 32-slot exchange with a per-warp barrier; atomicAdd uses std::atomic_ref.
// Limits: every thread must reach every __syncthreads (no early return before a barrier), shuffles must be
// full-warp (no divergent partial masks), no inter-block sync, no inline PTX: the tensor-core instructions
// the kernels use go through kernels/mma.cuh, whose host side calls the emulations at the end of this file
// (mma.sync m16n8k8 tf32 and m16n8k16 bf16 as warp collectives, cvt to tf32/bf16, cp.async as copies
// deferred to the wait that makes them visible).
#pragma once
#ifndef __CUDACC__

#include <atomic>
#include <barrier>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <functional>
#include <memory>
#include <mutex>
#include <semaphore>
#include <cstdio>
#include <cstdlib>
#include <thread>
#include <ucontext.h>
#include <vector>

struct dim3 {
    unsigned x = 1, y = 1, z = 1;
};

namespace hrk_emu {

// Static shared memory is process-global on the host, so emulated launches run one at a time.
inline std::mutex g_launch_mutex;

struct FiberSched;

// The fragment registers one lane passes to an mma (the largest shapes emulated: 4 A and 2 B registers).
struct MmaSlot {
    uint32_t a[4];
    uint32_t b[2];
};

// One thread's cp.async copies: `open` since the last commit, `committed` as groups, oldest first.
struct CpAsyncCopy {
    float* dst;
    const float* src;  // null: zero-fill
};
struct CpAsyncQueue {
    std::vector<CpAsyncCopy> open;
    std::vector<std::vector<CpAsyncCopy>> committed;
};

struct Launch {
    dim3 grid, block;
    unsigned nthreads = 1;
    FiberSched* fibers = nullptr;  // fiber mode; null with OS threads
    std::unique_ptr<std::barrier<>> block_bar;
    std::vector<std::unique_ptr<std::barrier<>>> warp_bars;
    std::vector<uint64_t> exchange;  // one 8-byte slot per thread, for shuffles
    std::vector<unsigned char> dyn_smem;
    std::vector<struct MmaSlot> mma_slots;         // one per thread, for the mma warp collectives
    std::vector<struct CpAsyncQueue> cp_async;     // one per thread: its cp.async copies not yet waited for
};

inline thread_local dim3 tl_thread_idx;
inline thread_local dim3 tl_block_idx;
inline thread_local unsigned tl_linear_tid = 0;
inline thread_local Launch* tl_launch = nullptr;

// ---- fiber mode ----

enum class FiberState { Runnable, AtBlockBarrier, AtWarpBarrier, Done };

// On x86-64 a fiber switch saves the callee-saved registers, MXCSR and the x87 control word on the
// fiber's own stack and swaps stack pointers: ucontext's swapcontext also saves and restores the signal
// mask with a system call on every switch, which was most of the emulator's time (each CUDA thread of each
// block switches at least twice). Other targets keep ucontext.
#if defined(__x86_64__)
#define HRK_EMU_ASM_FIBERS 1
// Saves the caller's registers on its stack, stores its stack pointer in *save_sp, continues on load_sp.
__attribute__((naked, noinline)) static void fiber_switch(void** /*save_sp*/, void* /*load_sp*/) {
    asm volatile(
        "pushq %rbp\n\t"
        "pushq %rbx\n\t"
        "pushq %r12\n\t"
        "pushq %r13\n\t"
        "pushq %r14\n\t"
        "pushq %r15\n\t"
        "subq $8, %rsp\n\t"
        "stmxcsr (%rsp)\n\t"
        "fnstcw 4(%rsp)\n\t"
        "movq %rsp, (%rdi)\n\t"
        "movq %rsi, %rsp\n\t"
        "ldmxcsr (%rsp)\n\t"
        "fldcw 4(%rsp)\n\t"
        "addq $8, %rsp\n\t"
        "popq %r15\n\t"
        "popq %r14\n\t"
        "popq %r13\n\t"
        "popq %r12\n\t"
        "popq %rbx\n\t"
        "popq %rbp\n\t"
        "ret\n\t");
}
#endif

struct Fiber {
#ifdef HRK_EMU_ASM_FIBERS
    void* sp = nullptr;
#else
    ucontext_t ctx;
#endif
    FiberState state = FiberState::Runnable;
};

// Runs the threads of one block as fibers: each runs until it waits at a barrier (or finishes); a barrier
// releases its waiters once every live thread of its scope (block, or warp) has arrived.
struct FiberSched {
    static constexpr size_t STACK_BYTES = 256 << 10;
#ifdef HRK_EMU_ASM_FIBERS
    void* main_sp = nullptr;
#else
    ucontext_t main;
#endif
    std::vector<Fiber> fibers;
    std::vector<std::unique_ptr<char[]>> stacks;  // reused by every block and launch
    std::vector<unsigned> warp_waiting, warp_done;
    unsigned block_waiting = 0, done = 0, current = 0, nthreads = 0;
    const std::function<void()>* body = nullptr;

    unsigned warp_lanes(unsigned w) const { return std::min(32u, nthreads - w * 32); }

    static void entry();

    void run_block(unsigned n, const std::function<void()>& b) {
        nthreads = n;
        body = &b;
        fibers.resize(n);
        // Uninitialised: only the pages a fiber touches get committed.
        while (stacks.size() < n) stacks.push_back(std::unique_ptr<char[]>(new char[STACK_BYTES]));
        warp_waiting.assign((n + 31) / 32, 0);
        warp_done.assign((n + 31) / 32, 0);
        block_waiting = done = 0;
        for (unsigned t = 0; t < n; ++t) {
            Fiber& f = fibers[t];
            f.state = FiberState::Runnable;
#ifdef HRK_EMU_ASM_FIBERS
            f.sp = initial_stack(stacks[t].get());
#else
            getcontext(&f.ctx);
            f.ctx.uc_stack.ss_sp = stacks[t].get();
            f.ctx.uc_stack.ss_size = STACK_BYTES;
            f.ctx.uc_link = &main;
            makecontext(&f.ctx, &FiberSched::entry, 0);
#endif
        }
        while (done < n) {
            bool ran = false;
            for (unsigned t = 0; t < n; ++t) {
                if (fibers[t].state != FiberState::Runnable) continue;
                resume(t);
                ran = true;
            }
            if (!ran) {
                std::fprintf(stderr, "hrk emulator: deadlock: %u of %u threads finished, the rest wait at barriers the others never reach (an early return before __syncthreads?)\n", done, n);
                std::abort();
            }
        }
    }
    void resume(unsigned t);
#ifdef HRK_EMU_ASM_FIBERS
    static void* initial_stack(char* stack);
    // Called on the fiber: back to the scheduler (which resumes it later unless it is Done).
    void to_scheduler(unsigned t) { fiber_switch(&fibers[t].sp, main_sp); }
#else
    void to_scheduler(unsigned t) { swapcontext(&fibers[t].ctx, &main); }
#endif
    // Called on the fiber: park at a barrier of `scope` and switch back to the scheduler.
    void wait_block();
    void wait_warp();
};

inline thread_local FiberSched* tl_sched = nullptr;

inline void FiberSched::resume(unsigned t) {
    current = t;
    tl_linear_tid = t;
    tl_thread_idx.x = t % tl_launch->block.x;
    tl_thread_idx.y = (t / tl_launch->block.x) % tl_launch->block.y;
    tl_thread_idx.z = t / (tl_launch->block.x * tl_launch->block.y);
#ifdef HRK_EMU_ASM_FIBERS
    fiber_switch(&main_sp, fibers[t].sp);
#else
    swapcontext(&main, &fibers[t].ctx);
#endif
}

inline void FiberSched::entry() {
    FiberSched& s = *tl_sched;
    (*s.body)();
    const unsigned t = s.current, w = t / 32;
    s.fibers[t].state = FiberState::Done;
    ++s.done;
    ++s.warp_done[w];
    // A finished thread no longer holds back barriers the others wait at (on the GPU that would be a
    // hang or undefined; the deadlock check above reports kernels that rely on it).
    if (s.block_waiting > 0 && s.block_waiting + s.done == s.nthreads) {
        for (auto& f : s.fibers)
            if (f.state == FiberState::AtBlockBarrier) f.state = FiberState::Runnable;
        s.block_waiting = 0;
    }
    if (s.warp_waiting[w] > 0 && s.warp_waiting[w] + s.warp_done[w] == s.warp_lanes(w)) {
        for (unsigned l = w * 32; l < w * 32 + s.warp_lanes(w); ++l)
            if (s.fibers[l].state == FiberState::AtWarpBarrier) s.fibers[l].state = FiberState::Runnable;
        s.warp_waiting[w] = 0;
    }
#ifdef HRK_EMU_ASM_FIBERS
    s.to_scheduler(t);  // never resumed: the thread is Done
    __builtin_unreachable();
#endif
    // Returning resumes `main` through uc_link.
}

#ifdef HRK_EMU_ASM_FIBERS
// A new fiber's first switch "returns" into this, on the fiber's stack.
static void fiber_start() {
    FiberSched::entry();
}

// The frame `fiber_switch` pops for a fiber that has not run: the caller's MXCSR and x87 control word,
// zeroed callee-saved registers, and `fiber_start` as the return address, placed so that it starts with
// the stack alignment of a called function.
inline void* FiberSched::initial_stack(char* stack) {
    const uintptr_t top = (reinterpret_cast<uintptr_t>(stack) + STACK_BYTES) & ~uintptr_t(15);
    uint64_t* ret = reinterpret_cast<uint64_t*>(top - 16);  // 16-byte aligned: rsp % 16 == 8 after `ret`
    ret[0] = reinterpret_cast<uint64_t>(&fiber_start);
    ret[1] = 0;
    uint64_t* regs = ret - 6;  // r15, r14, r13, r12, rbx, rbp
    for (int i = 0; i < 6; ++i) regs[i] = 0;
    uint32_t* control = reinterpret_cast<uint32_t*>(regs - 1);
    uint32_t mxcsr;
    uint16_t fpu_cw;
    asm volatile("stmxcsr %0" : "=m"(mxcsr));
    asm volatile("fnstcw %0" : "=m"(fpu_cw));
    control[0] = mxcsr;
    control[1] = fpu_cw;
    return control;
}
#endif

inline void FiberSched::wait_block() {
    const unsigned t = current;
    if (++block_waiting + done == nthreads) {
        // Last to arrive: everyone (this thread included) may go on.
        for (auto& f : fibers)
            if (f.state == FiberState::AtBlockBarrier) f.state = FiberState::Runnable;
        block_waiting = 0;
        fibers[t].state = FiberState::Runnable;
    } else {
        fibers[t].state = FiberState::AtBlockBarrier;
    }
    to_scheduler(t);
}

inline void FiberSched::wait_warp() {
    const unsigned t = current, w = t / 32;
    if (++warp_waiting[w] + warp_done[w] == warp_lanes(w)) {
        for (unsigned l = w * 32; l < w * 32 + warp_lanes(w); ++l)
            if (fibers[l].state == FiberState::AtWarpBarrier) fibers[l].state = FiberState::Runnable;
        warp_waiting[w] = 0;
        fibers[t].state = FiberState::Runnable;
    } else {
        fibers[t].state = FiberState::AtWarpBarrier;
    }
    to_scheduler(t);
}

// Set once by the Rust side (src/cuda/emu.rs, from HRK_EMU_OS_THREADS as src/switches.rs reads it) before
// the first launch, through hrk_emu_set_os_threads (kernels/elementwise.cu).
inline std::atomic<bool> os_threads_requested{false};

inline bool use_os_threads() {
#if defined(__SANITIZE_THREAD__)
    return true;
#else
    return os_threads_requested.load(std::memory_order_relaxed);
#endif
}

// Barrier entry points used by __syncthreads / __syncwarp / shuffles in both modes.
inline void block_sync() {
    if (tl_launch->fibers)
        tl_launch->fibers->wait_block();
    else
        tl_launch->block_bar->arrive_and_wait();
}
inline void warp_sync() {
    if (tl_launch->fibers)
        tl_launch->fibers->wait_warp();
    else
        tl_launch->warp_bars[tl_linear_tid / 32]->arrive_and_wait();
}

// Persistent worker threads, one per CUDA thread of the largest block launched so far: spawning
// blockDim OS threads per launch dominated the emulator's time on models (thousands of launches).
// Workers are never joined (the pool is leaked on purpose: joining at static destruction would race
// with exit); they sleep on their own semaphore between launches.
struct Pool {
    struct Worker {
        std::binary_semaphore go{0};
        std::thread th;
    };
    std::vector<std::unique_ptr<Worker>> workers;
    const std::function<void(unsigned)>* job = nullptr;
    std::atomic<unsigned> remaining{0};
    std::binary_semaphore done{0};

    void grow(unsigned n) {
        while (workers.size() < n) {
            auto w = std::make_unique<Worker>();
            const unsigned id = (unsigned)workers.size();
            Worker* raw = w.get();
            w->th = std::thread([this, raw, id] {
                for (;;) {
                    raw->go.acquire();
                    (*job)(id);
                    if (remaining.fetch_sub(1, std::memory_order_acq_rel) == 1) done.release();
                }
            });
            w->th.detach();
            workers.push_back(std::move(w));
        }
    }
    // Runs f(0..n) on n workers and waits for all of them. Callers hold g_launch_mutex.
    void run(unsigned n, const std::function<void(unsigned)>& f) {
        grow(n);
        job = &f;
        remaining.store(n, std::memory_order_release);
        for (unsigned i = 0; i < n; ++i) workers[i]->go.release();
        done.acquire();
        job = nullptr;
    }
};

inline Pool& pool() {
    static Pool* p = new Pool();  // leaked: see above
    return *p;
}

// Calls f() once per block of `grid` (x fastest), with this thread's blockIdx set to that block.
template <class F>
inline void for_each_block(dim3 grid, const F& f) {
    for (unsigned bz = 0; bz < grid.z; ++bz)
        for (unsigned by = 0; by < grid.y; ++by)
            for (unsigned bx = 0; bx < grid.x; ++bx) {
                tl_block_idx.x = bx;
                tl_block_idx.y = by;
                tl_block_idx.z = bz;
                f();
            }
}

// Runs `body` (the kernel call with its parameter struct bound) over the whole grid. Returns 0, or a
// nonzero code for a launch shape the hardware would reject too.
template <class Body>
int launch(const Body& body, dim3 grid, dim3 block, size_t dyn_smem_bytes) {
    unsigned long nthreads = (unsigned long)block.x * block.y * block.z;
    if (nthreads == 0 || nthreads > 1024 || grid.x == 0 || grid.y == 0 || grid.z == 0 || grid.y > 65535 ||
        grid.z > 65535)
        return 1;
    std::lock_guard<std::mutex> serialise(g_launch_mutex);
    Launch l;
    l.grid = grid;
    l.block = block;
    l.nthreads = (unsigned)nthreads;
    l.block_bar = std::make_unique<std::barrier<>>((ptrdiff_t)nthreads);
    for (unsigned w = 0; w * 32 < nthreads; ++w) {
        unsigned lanes = (unsigned)std::min<unsigned long>(32, nthreads - w * 32);
        l.warp_bars.push_back(std::make_unique<std::barrier<>>((ptrdiff_t)lanes));
    }
    l.exchange.assign(nthreads, 0);
    l.dyn_smem.assign(dyn_smem_bytes + 16, 0);
    l.mma_slots.assign(nthreads, MmaSlot{});
    l.cp_async.assign(nthreads, CpAsyncQueue{});
    if (!use_os_threads()) {
        static FiberSched* sched = new FiberSched();  // leaked: its stacks are reused by every launch
        l.fibers = sched;
        tl_launch = &l;
        tl_sched = sched;
        const std::function<void()> block_body = [&body] { body(); };
        for_each_block(l.grid, [&] { sched->run_block(l.nthreads, block_body); });
        tl_launch = nullptr;
        tl_sched = nullptr;
        return 0;
    }
    const std::function<void(unsigned)> thread_body = [&l, &body](unsigned t) {
        tl_launch = &l;
        tl_linear_tid = t;
        tl_thread_idx.x = t % l.block.x;
        tl_thread_idx.y = (t / l.block.x) % l.block.y;
        tl_thread_idx.z = t / (l.block.x * l.block.y);
        for_each_block(l.grid, [&] {
            body();
            // No thread may start the next block (and reuse static shared memory) early.
            l.block_bar->arrive_and_wait();
        });
        tl_launch = nullptr;
    };
    pool().run(l.nthreads, thread_body);
    return 0;
}

template <class T>
inline T shfl_exchange(T v, int src_lane_of_warp) {
    static_assert(sizeof(T) <= 8, "shuffle of a type larger than 8 bytes");
    Launch& l = *tl_launch;
    unsigned warp_base = tl_linear_tid / 32 * 32;
    uint64_t slot = 0;
    std::memcpy(&slot, &v, sizeof(T));
    std::atomic_ref<uint64_t>(l.exchange[tl_linear_tid]).store(slot, std::memory_order_relaxed);
    warp_sync();
    unsigned lanes = std::min<unsigned>(32, l.nthreads - warp_base);
    unsigned src = (src_lane_of_warp >= 0 && (unsigned)src_lane_of_warp < lanes) ? (unsigned)src_lane_of_warp
                                                                                   : tl_linear_tid - warp_base;
    uint64_t got = std::atomic_ref<uint64_t>(l.exchange[warp_base + src]).load(std::memory_order_relaxed);
    // Everyone has read before anyone may overwrite its slot in the next shuffle.
    warp_sync();
    T out;
    std::memcpy(&out, &got, sizeof(T));
    return out;
}

// ---- tensor-core instructions (kernels/mma.cuh calls these on the host) ----

inline uint32_t f32_bits(float x) {
    uint32_t u;
    std::memcpy(&u, &x, 4);
    return u;
}
inline float f32_from_bits(uint32_t u) {
    float x;
    std::memcpy(&x, &u, 4);
    return x;
}

// cvt.rna.tf32.f32: round to nearest, ties away from zero, on the 13 dropped mantissa bits; the result is
// an f32 bit pattern whose 13 low bits are zero. As the SASS of sm_80 does it: finite inputs get 0x1000
// added to their bits (a carry out of the mantissa bumps the exponent, so the largest finite values round
// to infinity), then the low 13 bits are cleared; inf and NaN are only masked (a NaN stays a NaN unless
// its payload lies entirely in the 13 dropped bits). Subnormals round like any other value (no flush).
inline uint32_t cvt_rna_tf32(float x) {
    uint32_t u = f32_bits(x);
    if (!(std::fabs(x) >= INFINITY) && !std::isnan(x)) u += 0x1000u;
    return u & 0xffffe000u;
}

// cvt.rn.bf16.f32: round to nearest even on the 16 dropped bits (overflow rounds to infinity, subnormals are
// kept); NaN becomes the canonical bf16 NaN 0x7fff.
inline uint16_t cvt_rn_bf16(float x) {
    if (std::isnan(x)) return 0x7fffu;
    const uint32_t u = f32_bits(x);
    return (uint16_t)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}
// cvt.rn.bf16x2.f32 d, hi, lo: `hi` into the upper half of d, `lo` into the lower half.
inline uint32_t cvt_rn_bf16x2(float hi, float lo) {
    return ((uint32_t)cvt_rn_bf16(hi) << 16) | cvt_rn_bf16(lo);
}

// The value the tensor core multiplies for a .tf32 operand register: its 13 low bits are not part of a tf32
// and are ignored (the kernels round with cvt_rna_tf32 first, so nothing is lost there).
inline float tf32_operand(uint32_t r) { return f32_from_bits(r & 0xffffe000u); }
inline float bf16_operand(uint16_t h) { return f32_from_bits((uint32_t)h << 16); }

// Where fragment element i of lane (group g = lane >> 2, t = lane % 4) sits, per the PTX ISA "Matrix
// Fragments for mma.m16n8k8" (.tf32) and "for mma.m16n8k16 with floating point type" (.bf16). For the
// bf16 shapes, element i is half (i & 1) of register i / 2, the lower-indexed element in the low 16 bits.
struct RowCol {
    int row, col;
};
inline RowCol tf32_a_at(int g, int t, int i) { return {g + 8 * (i & 1), t + 4 * (i >> 1)}; }    // a0..a3, 16x8
inline RowCol tf32_b_at(int g, int t, int i) { return {t + 4 * i, g}; }                        // b0..b1, 8x8 (k, n)
inline RowCol bf16_a_at(int g, int t, int i) { return {g + 8 * ((i >> 1) & 1), 2 * t + (i & 1) + 8 * (i >> 2)}; }  // a0..a7, 16x16
inline RowCol bf16_b_at(int g, int t, int i) { return {2 * t + (i & 1) + 8 * (i >> 1), g}; }   // b0..b3, 16x8 (k, n)
inline RowCol acc_at(int g, int t, int i) { return {g + 8 * (i >> 1), 2 * t + (i & 1)}; }      // c0..c3 / d0..d3, 16x8

// One warp-wide mma.sync m16n8kK with f32 accumulators. Every lane publishes its A and B registers, the
// warp meets, each lane rebuilds the whole A (16xK) and B (Kx8) from the 32 slots and computes its own four
// D elements, and the warp meets again before any slot is reused. Arithmetic: the operands as the tensor
// core sees them (tf32: the register's top 19 bits; bf16: the 16-bit value), every product exact, summed in
// f32 in order k = 0, 1, ..., K-1 starting from C, one rounding per step (fmaf: product and sum rounded
// once together). The hardware's internal order and width are not documented; this is the order chosen.
template <int K, bool BF16>
inline void mma_warp(float d[4], const uint32_t* a, const uint32_t* b, const float c[4]) {
    Launch& l = *tl_launch;
    if (l.nthreads % 32 != 0) {
        std::fprintf(stderr, "hrk emulator: mma.sync in a block of %u threads (not whole warps)\n", l.nthreads);
        std::abort();
    }
    const unsigned warp_base = tl_linear_tid / 32 * 32;
    MmaSlot& mine = l.mma_slots[tl_linear_tid];
    for (int r = 0; r < 4; ++r) mine.a[r] = a[r];
    for (int r = 0; r < 2; ++r) mine.b[r] = b[r];
    warp_sync();
    float A[16][K], B[K][8];
    for (int lane = 0; lane < 32; ++lane) {
        const MmaSlot& s = l.mma_slots[warp_base + lane];
        const int g = lane >> 2, t = lane & 3;
        if constexpr (BF16) {
            for (int i = 0; i < 8; ++i) {
                const RowCol at = bf16_a_at(g, t, i);
                A[at.row][at.col] = bf16_operand((uint16_t)(s.a[i / 2] >> (16 * (i & 1))));
            }
            for (int i = 0; i < 4; ++i) {
                const RowCol at = bf16_b_at(g, t, i);
                B[at.row][at.col] = bf16_operand((uint16_t)(s.b[i / 2] >> (16 * (i & 1))));
            }
        } else {
            for (int i = 0; i < 4; ++i) {
                const RowCol at = tf32_a_at(g, t, i);
                A[at.row][at.col] = tf32_operand(s.a[i]);
            }
            for (int i = 0; i < 2; ++i) {
                const RowCol at = tf32_b_at(g, t, i);
                B[at.row][at.col] = tf32_operand(s.b[i]);
            }
        }
    }
    const int lane = (int)(tl_linear_tid - warp_base), g = lane >> 2, t = lane & 3;
    float out[4];
    for (int i = 0; i < 4; ++i) {
        const RowCol at = acc_at(g, t, i);
        float acc = c[i];
        for (int k = 0; k < K; ++k) acc = std::fmaf(A[at.row][k], B[k][at.col], acc);
        out[i] = acc;
    }
    // d may alias c: written only after every read.
    for (int i = 0; i < 4; ++i) d[i] = out[i];
    warp_sync();
}

// cp.async of 4 bytes (src null: zero-fill). The copy is queued and happens when a cp.async.wait_group lets
// its group complete, so a kernel that reads shared memory before waiting (or before the barrier that
// publishes other threads' copies) reads stale data here too.
inline void cp_async4(float* dst, const float* src) { tl_launch->cp_async[tl_linear_tid].open.push_back({dst, src}); }
inline void cp_async_commit() {
    CpAsyncQueue& q = tl_launch->cp_async[tl_linear_tid];
    q.committed.push_back(std::move(q.open));
    q.open.clear();
}
// Completes this thread's committed groups until at most `pending` remain (oldest first).
inline void cp_async_wait(int pending) {
    CpAsyncQueue& q = tl_launch->cp_async[tl_linear_tid];
    while ((int)q.committed.size() > pending) {
        for (const CpAsyncCopy& c : q.committed.front()) *c.dst = c.src ? *c.src : 0.0f;
        q.committed.erase(q.committed.begin());
    }
}

}  // namespace hrk_emu

#define threadIdx (hrk_emu::tl_thread_idx)
#define blockIdx (hrk_emu::tl_block_idx)
#define blockDim (hrk_emu::tl_launch->block)
#define gridDim (hrk_emu::tl_launch->grid)
#define warpSize 32

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __shared__ static
#define HRK_DYN_SHARED(type, name) type* name = reinterpret_cast<type*>(hrk_emu::tl_launch->dyn_smem.data())

inline void __syncthreads() { hrk_emu::block_sync(); }
inline void __syncwarp(unsigned = 0xffffffffu) { hrk_emu::warp_sync(); }

template <class T>
inline T __shfl_sync(unsigned, T v, int src_lane, int = 32) {
    return hrk_emu::shfl_exchange(v, src_lane);
}
template <class T>
inline T __shfl_down_sync(unsigned, T v, unsigned delta, int = 32) {
    unsigned lane = hrk_emu::tl_linear_tid % 32;
    // Out-of-range sources return the caller's own value, as on the GPU.
    return hrk_emu::shfl_exchange(v, lane + delta < 32 ? (int)(lane + delta) : -1);
}
template <class T>
inline T __shfl_xor_sync(unsigned, T v, int lane_mask, int = 32) {
    unsigned lane = hrk_emu::tl_linear_tid % 32;
    return hrk_emu::shfl_exchange(v, (int)(lane ^ (unsigned)lane_mask));
}

inline float atomicAdd(float* p, float v) { return std::atomic_ref<float>(*p).fetch_add(v); }
inline int atomicAdd(int* p, int v) { return std::atomic_ref<int>(*p).fetch_add(v); }

inline float rsqrtf(float x) { return 1.0f / std::sqrt(x); }
inline float __fdividef(float a, float b) { return a / b; }
template <class T>
inline T __ldg(const T* p) { return *p; }
using std::max;
using std::min;

// Exports a host entry point `hrk_emu_<name>` that runs kernel `name` over a grid; called from
// src/cuda/emu.rs with a pointer to the same #[repr(C)] struct the GPU launch passes by value.
#define HRK_EMU_EXPORT(name, Params)                                                                     \
    extern "C" int hrk_emu_##name(const void* params, const unsigned* grid, const unsigned* block,       \
                                  size_t dyn_smem) {                                                     \
        Params p;                                                                                        \
        std::memcpy(&p, params, sizeof(Params));                                                         \
        return hrk_emu::launch([&p] { name(p); }, dim3{grid[0], grid[1], grid[2]},                      \
                               dim3{block[0], block[1], block[2]}, dyn_smem);                            \
    }
#define HRK_EMU_SIZEOF(Params) \
    extern "C" size_t hrk_emu_sizeof_##Params() { return sizeof(Params); }

#else  // __CUDACC__: the real device build

#define HRK_DYN_SHARED(type, name) extern __shared__ type name[]
#define HRK_EMU_EXPORT(name, Params)
#define HRK_EMU_SIZEOF(Params)

#endif
