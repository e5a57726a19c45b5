// Just enough of CUDA to run fused.cu's kernels on a CPU (the tests run the attention, norm,
// softmax, column-sum and cross-entropy ones), for checking them where there is no GPU
// (scripts/cuda-kernels.sh, in CI): each thread of a block is a thread, the blocks run one after
// another, `__syncthreads` is a barrier of the block, and a warp shuffle or a tensor-core product
// (`mma_16816`) is a barrier of the warp, a write of every lane's part, a barrier and a read.
// Shared memory belongs to the block running at the time: `__shared__` arrays become `static`
// ones, and the dynamic shared memory is one global array.
#define TINYGPT_EMULATED
#include <barrier>
#include <cmath>
#include <cstring>
#include <thread>
#include <vector>

struct Dim3 {
    unsigned x = 0, y = 0, z = 0;
};
thread_local Dim3 threadIdx, blockIdx;
Dim3 blockDim, gridDim;
struct uint4 {
    unsigned x, y, z, w;
};
inline uint4 make_uint4(unsigned x, unsigned y, unsigned z, unsigned w) { return {x, y, z, w}; }

#define __global__
#define __device__
#define __forceinline__ inline
#define __shared__ static
thread_local std::barrier<>* block_sync;
inline void __syncthreads() { block_sync->arrive_and_wait(); }
uint4 smem[4096];  // fused.cu's dynamic shared memory (64 KB)

inline float __int_as_float(int i) { float f; std::memcpy(&f, &i, 4); return f; }
inline float __uint_as_float(unsigned i) { float f; std::memcpy(&f, &i, 4); return f; }
inline unsigned __float_as_uint(float f) { unsigned i; std::memcpy(&i, &f, 4); return i; }
inline float __expf(float x) { return std::exp(x); }
inline float __logf(float x) { return std::log(x); }
inline float exp2f(float x) { return std::exp2(x); }
inline float log2f(float x) { return std::log2(x); }
inline float rsqrtf(float x) { return 1.0f / std::sqrt(x); }
inline float atomicAdd(float* p, float v) { float old = *p; *p += v; return old; }

struct Warp {
    std::barrier<> sync{32};
    float slot[32];
    unsigned frag[32][6];  // each lane's a[0..3], b[0..1] of an mma_16816
};
thread_local Warp* warp;

inline void __syncwarp(unsigned = 0xffffffffu) { warp->sync.arrive_and_wait(); }

inline float __shfl_xor_sync(unsigned, float v, int o) {
    int lane = threadIdx.x & 31;
    warp->slot[lane] = v;
    warp->sync.arrive_and_wait();
    float r = warp->slot[lane ^ o];
    warp->sync.arrive_and_wait();
    return r;
}

// mma.sync.m16n8k16 (bf16 in, f32 sums): d += a · b, with the fragment layout fused.cu describes.
inline void mma_16816(float* d, const unsigned* a, const unsigned* b) {
    int lane = threadIdx.x & 31, g = lane >> 2, c = lane & 3;
    for (int e = 0; e < 4; e++) warp->frag[lane][e] = a[e];
    warp->frag[lane][4] = b[0];
    warp->frag[lane][5] = b[1];
    warp->sync.arrive_and_wait();
    auto number = [](unsigned u, int k) { return __uint_as_float((k % 2 ? u >> 16 : u & 0xffffu) << 16); };
    auto A = [&](int r, int k) { return number(warp->frag[r % 8 * 4 + k % 8 / 2][(r >= 8) + 2 * (k >= 8)], k); };
    auto B = [&](int k, int n) { return number(warp->frag[n * 4 + k % 8 / 2][4 + (k >= 8)], k); };
    for (int e = 0; e < 4; e++) {
        int r = g + 8 * (e >> 1), n = 2 * c + (e & 1);
        float s = 0.0f;
        for (int k = 0; k < 16; k++) s += A(r, k) * B(k, n);
        d[e] += s;
    }
    warp->sync.arrive_and_wait();
}

// Runs `kernel()` over a grid of blocks of `threads` threads (a multiple of 32), a block at a time.
template <class F>
void launch(Dim3 grid, unsigned threads, F kernel) {
    gridDim = grid;
    blockDim = Dim3{threads, 1, 1};
    for (unsigned z = 0; z < grid.z; z++)
        for (unsigned y = 0; y < grid.y; y++)
            for (unsigned x = 0; x < grid.x; x++) {
                std::barrier<> block(threads);
                std::vector<Warp> warps(threads / 32);
                std::vector<std::thread> lanes;
                for (unsigned l = 0; l < threads; l++)
                    lanes.emplace_back([&, l] {
                        threadIdx = Dim3{l, 0, 0};
                        blockIdx = Dim3{x, y, z};
                        warp = &warps[l / 32];
                        block_sync = &block;
                        kernel();
                    });
                for (auto& t : lanes) t.join();
            }
}

// Runs `kernel()` as `n` blocks of one warp each (blockDim.x = 32).
template <class F>
void launch_warps(long n, F kernel) {
    launch(Dim3{(unsigned)n, 1, 1}, 32, kernel);
}
