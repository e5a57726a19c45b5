// The fused kernels of model/fused.rs on a CUDA GPU (compiled at first use by NVRTC).
//
// One thread block per row; the block reduces the row's maximum and sum with warp shuffles.
// Arithmetic is f32 whatever the storage: `bf16` values (stored as 16-bit integers) are widened
// on load and rounded to nearest-even on store.

typedef unsigned short bf16;

__device__ __forceinline__ float load(const float* p, long i) { return p[i]; }
__device__ __forceinline__ float load(const bf16* p, long i) {
    return __uint_as_float(((unsigned int)p[i]) << 16);
}
__device__ __forceinline__ void store(float* p, long i, float x) { p[i] = x; }
__device__ __forceinline__ void store(bf16* p, long i, float x) {
    unsigned int u = __float_as_uint(x);
    if ((u & 0x7fffffffu) > 0x7f800000u) { p[i] = 0x7fc0; return; }  // NaN stays NaN
    u += 0x7fffu + ((u >> 16) & 1u);
    p[i] = (bf16)(u >> 16);
}

#define NEG_INF __int_as_float(0xff800000)

__device__ float block_max(float v) {
    __shared__ float part[32];
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    __syncthreads();  // `part` may still be read from the previous call
    if ((threadIdx.x & 31) == 0) part[threadIdx.x >> 5] = v;
    __syncthreads();
    if (threadIdx.x < 32) {
        v = threadIdx.x < (blockDim.x + 31) / 32 ? part[threadIdx.x] : NEG_INF;
        for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
        if (threadIdx.x == 0) part[0] = v;
    }
    __syncthreads();
    return part[0];
}

__device__ float block_sum(float v) {
    __shared__ float part[32];
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    __syncthreads();
    if ((threadIdx.x & 31) == 0) part[threadIdx.x >> 5] = v;
    __syncthreads();
    if (threadIdx.x < 32) {
        v = threadIdx.x < (blockDim.x + 31) / 32 ? part[threadIdx.x] : 0.0f;
        for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
        if (threadIdx.x == 0) part[0] = v;
    }
    __syncthreads();
    return part[0];
}

// y = softmax(x + mask) over rows of `tk`; x, y: (B, H, T, Tk); mask: (B or 1, 1, T, Tk).
template <typename T>
__device__ void masked_softmax(const T* x, const T* mask, T* y, int h, int t, int tk, int mask_batch) {
    long row = blockIdx.x;
    long b = row / ((long)h * t), i = row % t;
    long m = (mask_batch == 1 ? i : b * t + i) * tk;
    long r = row * tk;
    float mx = NEG_INF;
    for (int j = threadIdx.x; j < tk; j += blockDim.x) mx = fmaxf(mx, load(x, r + j) + load(mask, m + j));
    mx = block_max(mx);
    float s = 0.0f;
    for (int j = threadIdx.x; j < tk; j += blockDim.x) s += __expf(load(x, r + j) + load(mask, m + j) - mx);
    float inv = 1.0f / block_sum(s);
    for (int j = threadIdx.x; j < tk; j += blockDim.x)
        store(y, r + j, __expf(load(x, r + j) + load(mask, m + j) - mx) * inv);
}

// dx = y ⊙ (dy − Σ dy⊙y) over rows of `n`.
template <typename T>
__device__ void softmax_backward(const T* y, const T* dy, T* dx, int n) {
    long r = (long)blockIdx.x * n;
    float dot = 0.0f;
    for (int j = threadIdx.x; j < n; j += blockDim.x) dot += load(y, r + j) * load(dy, r + j);
    dot = block_sum(dot);
    for (int j = threadIdx.x; j < n; j += blockDim.x)
        store(dx, r + j, load(y, r + j) * (load(dy, r + j) - dot));
}

extern "C" __global__ void masked_softmax_f32(const float* x, const float* mask, float* y, int h, int t, int tk, int mb) {
    masked_softmax(x, mask, y, h, t, tk, mb);
}
extern "C" __global__ void masked_softmax_bf16(const bf16* x, const bf16* mask, bf16* y, int h, int t, int tk, int mb) {
    masked_softmax(x, mask, y, h, t, tk, mb);
}
extern "C" __global__ void softmax_backward_f32(const float* y, const float* dy, float* dx, int n) {
    softmax_backward(y, dy, dx, n);
}
extern "C" __global__ void softmax_backward_bf16(const bf16* y, const bf16* dy, bf16* dx, int n) {
    softmax_backward(y, dy, dx, n);
}

#define IGNORE 0xffffffffu

// loss_i = logsumexp(x_i) − x_i[t_i] (0 where t_i is IGNORE); x: (N, V) f32.
extern "C" __global__ void cross_entropy_f32(const float* x, const unsigned int* targets, float* loss, int v) {
    long row = blockIdx.x, r = row * (long)v;
    unsigned int t = targets[row];
    if (t == IGNORE) { if (threadIdx.x == 0) loss[row] = 0.0f; return; }
    if (t >= (unsigned int)v) { if (threadIdx.x == 0) loss[row] = __int_as_float(0x7fc00000); return; }  // NaN
    float mx = NEG_INF;
    for (int j = threadIdx.x; j < v; j += blockDim.x) mx = fmaxf(mx, x[r + j]);
    mx = block_max(mx);
    float s = 0.0f;
    for (int j = threadIdx.x; j < v; j += blockDim.x) s += __expf(x[r + j] - mx);
    s = block_sum(s);
    if (threadIdx.x == 0) loss[row] = logf(s) + mx - x[r + t];
}

// dx_i = (softmax(x_i) − onehot(t_i)) · dloss_i (0 where t_i is IGNORE).
extern "C" __global__ void cross_entropy_backward_f32(const float* x, const unsigned int* targets, const float* dloss, float* dx, int v) {
    long row = blockIdx.x, r = row * (long)v;
    unsigned int t = targets[row];
    if (t == IGNORE || t >= (unsigned int)v) { for (int j = threadIdx.x; j < v; j += blockDim.x) dx[r + j] = 0.0f; return; }
    float mx = NEG_INF;
    for (int j = threadIdx.x; j < v; j += blockDim.x) mx = fmaxf(mx, x[r + j]);
    mx = block_max(mx);
    float s = 0.0f;
    for (int j = threadIdx.x; j < v; j += blockDim.x) s += __expf(x[r + j] - mx);
    float g = dloss[row] / block_sum(s);
    float d = dloss[row];
    for (int j = threadIdx.x; j < v; j += blockDim.x)
        dx[r + j] = __expf(x[r + j] - mx) * g - (j == (int)t ? d : 0.0f);
}
