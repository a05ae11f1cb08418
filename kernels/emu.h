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
// full-warp (no divergent partial masks), no inter-block sync, no inline PTX / mma / cp.async.
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

struct Launch {
    dim3 grid, block;
    unsigned nthreads = 1;
    FiberSched* fibers = nullptr;  // fiber mode; null with OS threads
    std::unique_ptr<std::barrier<>> block_bar;
    std::vector<std::unique_ptr<std::barrier<>>> warp_bars;
    std::vector<uint64_t> exchange;  // one 8-byte slot per thread, for shuffles
    std::vector<unsigned char> dyn_smem;
};

inline thread_local dim3 tl_thread_idx;
inline thread_local dim3 tl_block_idx;
inline thread_local unsigned tl_linear_tid = 0;
inline thread_local Launch* tl_launch = nullptr;

// ---- fiber mode ----

enum class FiberState { Runnable, AtBlockBarrier, AtWarpBarrier, Done };

struct Fiber {
    ucontext_t ctx;
    FiberState state = FiberState::Runnable;
};

// Runs the threads of one block as fibers: each runs until it waits at a barrier (or finishes); a barrier
// releases its waiters once every live thread of its scope (block, or warp) has arrived.
struct FiberSched {
    static constexpr size_t STACK_BYTES = 256 << 10;
    ucontext_t main;
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
            getcontext(&f.ctx);
            f.ctx.uc_stack.ss_sp = stacks[t].get();
            f.ctx.uc_stack.ss_size = STACK_BYTES;
            f.ctx.uc_link = &main;
            makecontext(&f.ctx, &FiberSched::entry, 0);
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
    swapcontext(&main, &fibers[t].ctx);
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
    // Returning resumes `main` through uc_link.
}

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
    swapcontext(&fibers[t].ctx, &main);
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
    swapcontext(&fibers[t].ctx, &main);
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
