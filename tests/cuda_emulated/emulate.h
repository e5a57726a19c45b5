// Just enough of CUDA to run fused.cu's warp-per-item kernels on a CPU, for checking them where
// there is no GPU (scripts/cuda-kernels.sh, in CI): each lane of a warp is a thread, and a warp
// shuffle is a barrier, a write of every lane's value, a barrier and a read. Kernels that need
// shared memory or several warps per block compile (their `__shared__` arrays become locals) but
// are not run.
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

#define __global__
#define __device__
#define __forceinline__ inline
#define __shared__
inline void __syncthreads() {}
float acc[1];  // the one `extern __shared__` array of fused.cu (norm_backward_w's; not run here)

inline float __int_as_float(int i) { float f; std::memcpy(&f, &i, 4); return f; }
inline float __uint_as_float(unsigned i) { float f; std::memcpy(&f, &i, 4); return f; }
inline unsigned __float_as_uint(float f) { unsigned i; std::memcpy(&i, &f, 4); return i; }
inline float __expf(float x) { return std::exp(x); }
inline float __logf(float x) { return std::log(x); }
inline float rsqrtf(float x) { return 1.0f / std::sqrt(x); }
inline float atomicAdd(float* p, float v) { float old = *p; *p += v; return old; }

struct Warp {
    std::barrier<> sync{32};
    float slot[32];
};
thread_local Warp* warp;

inline float __shfl_xor_sync(unsigned, float v, int o) {
    int lane = threadIdx.x & 31;
    warp->slot[lane] = v;
    warp->sync.arrive_and_wait();
    float r = warp->slot[lane ^ o];
    warp->sync.arrive_and_wait();
    return r;
}

// Runs `kernel()` as `n` blocks of one warp each (blockDim.x = 32), a warp at a time.
template <class F>
void launch_warps(long n, F kernel) {
    gridDim.x = (unsigned)n;
    blockDim.x = 32;
    for (long w = 0; w < n; w++) {
        Warp wp;
        std::vector<std::thread> lanes;
        for (unsigned l = 0; l < 32; l++)
            lanes.emplace_back([&, l] {
                threadIdx.x = l;
                blockIdx.x = (unsigned)w;
                warp = &wp;
                kernel();
            });
        for (auto& t : lanes) t.join();
    }
}
