// Just enough of CUDA to run fused.cu's kernels on a CPU (attention.cpp and rows.cpp run every
// one of them), for checking them where there is no GPU
// (scripts/cuda-kernels.sh, in CI). Each thread of a block is a coroutine (a `ucontext_t` with a
// stack of its own); the blocks run one after another. `__syncthreads` is a barrier of the block;
// a warp shuffle, `__syncwarp` or a tensor-core product (`mma_16816`) is a barrier of the warp (a
// product: a write of every lane's part, a barrier and a read). Shared memory belongs to the
// block running at the time: `__shared__` arrays become `static` ones, and the dynamic shared
// memory is one global array.
//
// One thread runs at a time, until it reaches a barrier or its end; then the next one that may
// run does, in the order `schedule` says: lowest thread index first, or highest first. So the
// threads of a block run as far apart as they can between two barriers, and every check runs in
// both orders (`both_orders`): a missing barrier, where one thread reads what another writes
// before the barrier that should separate them, gives the read the value from before the write
// in one of the two orders, and so a wrong result. A GPU shows such a race only sometimes. A
// barrier that some threads of a block never reach (on a GPU: a hang, or worse) is reported.
// Not seen: a missing `__syncwarp` between lanes that shuffle in between, since the emulated
// shuffles order memory, which a GPU's do not promise.
#define TINYGPT_EMULATED
#include <ucontext.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <vector>

struct Dim3 {
    unsigned x = 0, y = 0, z = 0;
};
Dim3 threadIdx, blockIdx, blockDim, gridDim;  // of the thread running now
struct uint4 {
    unsigned x, y, z, w;
};
inline uint4 make_uint4(unsigned x, unsigned y, unsigned z, unsigned w) { return {x, y, z, w}; }

#define __global__
#define __device__
#define __forceinline__ inline
#define __shared__ static
uint4 smem[4096];  // fused.cu's dynamic shared memory (64 KB)

struct Warp {
    float slot[32];
    unsigned frag[32][6];  // each lane's a[0..3], b[0..1] of an mma_16816
};
Warp* warp;  // the running thread's

enum class Order { LowestFirst, HighestFirst };
Order schedule = Order::LowestFirst;

// The threads of the block running now: where each one is, and its saved registers and stack.
namespace block {
enum State { Runnable, AtBlockBarrier, AtWarpBarrier, Done };
const size_t STACK = 256 * 1024;
std::vector<State> state;
std::vector<ucontext_t> context;
std::vector<std::unique_ptr<char[]>> stacks;  // kept from launch to launch
std::vector<Warp> warps;
ucontext_t launcher;
int running;

inline int next() {  // the thread to run next, −1 if none may
    int n = (int)state.size();
    for (int k = 0; k < n; k++) {
        int i = schedule == Order::LowestFirst ? k : n - 1 - k;
        if (state[i] == Runnable) return i;
    }
    return -1;
}

// The running thread has changed its state: hands the block to the next thread that may run
// (it goes on itself if it is that one), or back to `launch` when all are done.
inline void pass_on() {
    int me = running, to = next();
    if (to == me) return;
    if (to < 0) {
        for (State s : state)
            if (s != Done) {
                std::fprintf(stderr, "emulate.h: block (%u, %u, %u): some threads wait at a barrier that others never reach\n",
                             blockIdx.x, blockIdx.y, blockIdx.z);
                std::abort();
            }
        swapcontext(&context[me], &launcher);
        return;
    }
    running = to;
    threadIdx = Dim3{(unsigned)to, 0, 0};
    warp = &warps[to / 32];
    swapcontext(&context[me], &context[to]);
}

// The running thread arrives at a barrier of its block (`of_warp` false) or of its warp.
inline void arrive(bool of_warp) {
    int me = running, lo = of_warp ? me / 32 * 32 : 0, hi = of_warp ? lo + 32 : (int)state.size();
    State at = of_warp ? AtWarpBarrier : AtBlockBarrier;
    state[me] = at;
    bool all = true;
    for (int i = lo; i < hi; i++) all = all && state[i] == at;
    if (all)
        for (int i = lo; i < hi; i++) state[i] = Runnable;
    pass_on();
}
}  // namespace block

inline void __syncthreads() { block::arrive(false); }
inline void __syncwarp(unsigned = 0xffffffffu) { block::arrive(true); }

inline float __int_as_float(int i) { float f; std::memcpy(&f, &i, 4); return f; }
inline float __uint_as_float(unsigned i) { float f; std::memcpy(&f, &i, 4); return f; }
inline unsigned __float_as_uint(float f) { unsigned i; std::memcpy(&i, &f, 4); return i; }
inline float __expf(float x) { return std::exp(x); }
inline float __logf(float x) { return std::log(x); }
// These two replace the C library's functions of the same names, so they must not call them
// (std::exp2 of a float does, when not optimised): through double.
inline float exp2f(float x) { return (float)std::exp2((double)x); }
inline float log2f(float x) { return (float)std::log2((double)x); }
inline float rsqrtf(float x) { return 1.0f / std::sqrt(x); }
inline float atomicAdd(float* p, float v) { float old = *p; *p += v; return old; }  // one thread runs at a time

inline float __shfl_xor_sync(unsigned, float v, int o) {
    int lane = threadIdx.x & 31;
    warp->slot[lane] = v;
    block::arrive(true);
    float r = warp->slot[lane ^ o];
    block::arrive(true);
    return r;
}

// mma.sync.m16n8k16 (bf16 in, f32 sums): d += a · b, with the fragment layout fused.cu describes.
inline void mma_16816(float* d, const unsigned* a, const unsigned* b) {
    int lane = threadIdx.x & 31, g = lane >> 2, c = lane & 3;
    for (int e = 0; e < 4; e++) warp->frag[lane][e] = a[e];
    warp->frag[lane][4] = b[0];
    warp->frag[lane][5] = b[1];
    block::arrive(true);
    auto number = [](unsigned u, int k) { return __uint_as_float((k % 2 ? u >> 16 : u & 0xffffu) << 16); };
    auto A = [&](int r, int k) { return number(warp->frag[r % 8 * 4 + k % 8 / 2][(r >= 8) + 2 * (k >= 8)], k); };
    auto B = [&](int k, int n) { return number(warp->frag[n * 4 + k % 8 / 2][4 + (k >= 8)], k); };
    for (int e = 0; e < 4; e++) {
        int r = g + 8 * (e >> 1), n = 2 * c + (e & 1);
        float s = 0.0f;
        for (int k = 0; k < 16; k++) s += A(r, k) * B(k, n);
        d[e] += s;
    }
    block::arrive(true);
}

// Runs `kernel()` over a grid of blocks of `threads` threads (a multiple of 32), a block at a time,
// its threads one at a time as `block::pass_on` hands them the block.
template <class F>
void launch(Dim3 grid, unsigned threads, F kernel) {
    static F* run;  // for `start`, which takes no arguments
    run = &kernel;
    void (*start)() = [] {
        (*run)();
        block::state[block::running] = block::Done;
        block::pass_on();
    };
    gridDim = grid;
    blockDim = Dim3{threads, 1, 1};
    if (block::stacks.size() < threads) block::stacks.resize(threads);
    for (unsigned z = 0; z < grid.z; z++)
        for (unsigned y = 0; y < grid.y; y++)
            for (unsigned x = 0; x < grid.x; x++) {
                blockIdx = Dim3{x, y, z};
                block::state.assign(threads, block::Runnable);
                block::context.assign(threads, ucontext_t{});
                block::warps.assign(threads / 32, Warp{});
                for (unsigned l = 0; l < threads; l++) {
                    if (!block::stacks[l]) block::stacks[l].reset(new char[block::STACK]);
                    getcontext(&block::context[l]);
                    block::context[l].uc_stack.ss_sp = block::stacks[l].get();
                    block::context[l].uc_stack.ss_size = block::STACK;
                    block::context[l].uc_link = nullptr;
                    makecontext(&block::context[l], start, 0);
                }
                int first = block::next();
                block::running = first;
                threadIdx = Dim3{(unsigned)first, 0, 0};
                warp = &block::warps[first / 32];
                swapcontext(&block::launcher, &block::context[first]);
            }
}

// Runs `checks()` (which returns its number of failures) with the threads of every block run
// lowest index first, then highest first; returns the failures of both.
inline int both_orders(int (*checks)()) {
    int failed = 0;
    for (Order o : {Order::LowestFirst, Order::HighestFirst}) {
        schedule = o;
        std::printf("-- threads of a block run %s first between barriers\n", o == Order::LowestFirst ? "lowest" : "highest");
        failed += checks();
    }
    return failed;
}

// Runs `kernel()` as `n` blocks of one warp each (blockDim.x = 32).
template <class F>
void launch_warps(long n, F kernel) {
    launch(Dim3{(unsigned)n, 1, 1}, 32, kernel);
}
