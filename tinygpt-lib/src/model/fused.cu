// The fused kernels of model/fused.rs (and fused_norm.rs, fused_attention.rs, embedding.rs,
// train/adamw_fused.rs, train/sum_squares.rs) on a CUDA GPU, compiled at first use by NVRTC
// (model/fused_cuda.rs launches them).
//
// A thread block per row of the logits, a warp per row of the activations or the scores, the
// whole grid striding over element-wise work; blocks of four warps per 64 tokens for the
// tensor-core attention. Arithmetic is f32 whatever the storage: `bf16` values (stored as 16-bit
// integers) are widened on load and rounded to nearest-even on store.

typedef unsigned short bf16;

__device__ __forceinline__ float load(const float* p, long i) { return p[i]; }
__device__ __forceinline__ float load(const bf16* p, long i) {
    return __uint_as_float(((unsigned int)p[i]) << 16);
}
__device__ __forceinline__ void store(float* p, long i, float x) { p[i] = x; }
__device__ __forceinline__ bf16 to_bf16(float x) {
    unsigned int u = __float_as_uint(x);
    if ((u & 0x7fffffffu) > 0x7f800000u) return 0x7fc0;  // NaN stays NaN
    u += 0x7fffu + ((u >> 16) & 1u);
    return (bf16)(u >> 16);
}
__device__ __forceinline__ void store(bf16* p, long i, float x) { p[i] = to_bf16(x); }

#define NEG_INF __int_as_float(0xff800000)

// Dynamic shared memory (its size is given at launch), for the kernels that carve it up.
// (tests/cuda_emulated/emulate.h has its own.)
#ifndef TINYGPT_EMULATED
extern __shared__ uint4 smem[];
#endif

__device__ __forceinline__ float warp_sum(float v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}
__device__ __forceinline__ float warp_max(float v) {
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

// The index of the calling thread's warp in the grid (kernels that give each warp one item).
__device__ __forceinline__ long warp_index() { return ((long)blockIdx.x * blockDim.x + threadIdx.x) >> 5; }

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

// ---- 16 bytes at a time ----
// Most kernels here are memory-bound, and keeping the memory busy takes many bytes in flight: a
// thread that reads one bf16 (2 bytes) and waits for it before the next read leaves it idle most
// of the time. (Read that way, the cross-entropy's forward took 2.65 ms for the 1.65 GB of bf16
// logits on an H200, 0.6 TB/s, an eighth of the card's bandwidth; the MLP's first layer with its
// bias add and GELU took 0.4 ms, most of it those two passes at about that speed.) So the kernels
// read and write 16 bytes at once, 8 bf16 or 4 f32 numbers, where the data allow it (a whole
// number of packs, 16-byte aligned: the activations' rows of 512 or 2,048 numbers, the logits'
// of 50,304), and one number at a time elsewhere.
template <typename T> struct Pack { static constexpr int N = 16 / sizeof(T); };
__device__ __forceinline__ bool aligned16(const void* p) { return ((unsigned long long)p & 15) == 0; }
__device__ __forceinline__ void load16(const float* p, long i, float* f) {
    uint4 u = *(const uint4*)(p + i);
    f[0] = __uint_as_float(u.x); f[1] = __uint_as_float(u.y);
    f[2] = __uint_as_float(u.z); f[3] = __uint_as_float(u.w);
}
__device__ __forceinline__ void load16(const bf16* p, long i, float* f) {
    uint4 u = *(const uint4*)(p + i);
    unsigned w[4] = {u.x, u.y, u.z, u.w};
    for (int k = 0; k < 4; k++) {
        f[2 * k] = __uint_as_float(w[k] << 16);  // the lower half is the element at the lower address
        f[2 * k + 1] = __uint_as_float(w[k] & 0xffff0000u);
    }
}
__device__ __forceinline__ void store16(float* p, long i, const float* f) {
    *(uint4*)(p + i) = make_uint4(__float_as_uint(f[0]), __float_as_uint(f[1]), __float_as_uint(f[2]), __float_as_uint(f[3]));
}
__device__ __forceinline__ void store16(bf16* p, long i, const float* f) {
    unsigned w[4];
    for (int k = 0; k < 4; k++) w[k] = (unsigned)to_bf16(f[2 * k]) | ((unsigned)to_bf16(f[2 * k + 1]) << 16);
    *(uint4*)(p + i) = make_uint4(w[0], w[1], w[2], w[3]);
}

// A warp walks a row of c numbers (the softmax's and the norms' rows): lane l takes the packs l,
// l + 32, … — or, where the row cannot be read in packs, the numbers l, l + 32, … — and
// f(j, a_j) sees every column j once. `row_each2` walks two rows side by side, f(j, a_j, b_j);
// `row_map` and `row_map2` also write out_j = f(…).
template <typename T, typename F>
__device__ __forceinline__ void row_each(const T* a, int c, F f) {
    constexpr int P = Pack<T>::N;
    int lane = threadIdx.x & 31;
    if (c % P == 0 && aligned16(a)) {
        for (int j = lane * P; j < c; j += 32 * P) {
            float u[P];
            load16(a, j, u);
            for (int k = 0; k < P; k++) f(j + k, u[k]);
        }
    } else {
        for (int j = lane; j < c; j += 32) f(j, load(a, j));
    }
}
template <typename T, typename F>
__device__ __forceinline__ void row_each2(const T* a, const T* b, int c, F f) {
    constexpr int P = Pack<T>::N;
    int lane = threadIdx.x & 31;
    if (c % P == 0 && aligned16(a) && aligned16(b)) {
        for (int j = lane * P; j < c; j += 32 * P) {
            float u[P], v[P];
            load16(a, j, u);
            load16(b, j, v);
            for (int k = 0; k < P; k++) f(j + k, u[k], v[k]);
        }
    } else {
        for (int j = lane; j < c; j += 32) f(j, load(a, j), load(b, j));
    }
}
template <typename T, typename F>
__device__ __forceinline__ void row_map(const T* a, T* out, int c, F f) {
    constexpr int P = Pack<T>::N;
    int lane = threadIdx.x & 31;
    if (c % P == 0 && aligned16(a) && aligned16(out)) {
        for (int j = lane * P; j < c; j += 32 * P) {
            float u[P];
            load16(a, j, u);
            for (int k = 0; k < P; k++) u[k] = f(j + k, u[k]);
            store16(out, j, u);
        }
    } else {
        for (int j = lane; j < c; j += 32) store(out, j, f(j, load(a, j)));
    }
}
template <typename T, typename F>
__device__ __forceinline__ void row_map2(const T* a, const T* b, T* out, int c, F f) {
    constexpr int P = Pack<T>::N;
    int lane = threadIdx.x & 31;
    if (c % P == 0 && aligned16(a) && aligned16(b) && aligned16(out)) {
        for (int j = lane * P; j < c; j += 32 * P) {
            float u[P], v[P];
            load16(a, j, u);
            load16(b, j, v);
            for (int k = 0; k < P; k++) u[k] = f(j + k, u[k], v[k]);
            store16(out, j, u);
        }
    } else {
        for (int j = lane; j < c; j += 32) store(out, j, f(j, load(a, j), load(b, j)));
    }
}

// Element-wise over n numbers, the whole grid striding over them: out_i = f(a_i) or f(a_i, b_i),
// in packs where every pointer is aligned (then the last n mod P numbers one at a time).
template <typename T, typename F>
__device__ __forceinline__ void map_each(const T* a, T* out, long n, F f) {
    constexpr int P = Pack<T>::N;
    long first = (long)blockIdx.x * blockDim.x + threadIdx.x, stride = (long)gridDim.x * blockDim.x;
    long packs = aligned16(a) && aligned16(out) ? n / P : 0;
    for (long p = first; p < packs; p += stride) {
        float u[P];
        load16(a, p * P, u);
        for (int k = 0; k < P; k++) u[k] = f(u[k]);
        store16(out, p * P, u);
    }
    for (long i = packs * P + first; i < n; i += stride) store(out, i, f(load(a, i)));
}
template <typename T, typename F>
__device__ __forceinline__ void map_each2(const T* a, const T* b, T* out, long n, F f) {
    constexpr int P = Pack<T>::N;
    long first = (long)blockIdx.x * blockDim.x + threadIdx.x, stride = (long)gridDim.x * blockDim.x;
    long packs = aligned16(a) && aligned16(b) && aligned16(out) ? n / P : 0;
    for (long p = first; p < packs; p += stride) {
        float u[P], v[P];
        load16(a, p * P, u);
        load16(b, p * P, v);
        for (int k = 0; k < P; k++) u[k] = f(u[k], v[k]);
        store16(out, p * P, u);
    }
    for (long i = packs * P + first; i < n; i += stride) store(out, i, f(load(a, i), load(b, i)));
}

// y = softmax(x + mask) over rows of `tk`; x, y: (B, H, T, Tk); mask: (B or 1, 1, T, Tk).
// One warp per row (n = B·H·T rows), as the norms below: rows of a few hundred scores.
template <typename T>
__device__ void masked_softmax(const T* x, const T* mask, T* y, long n, int h, int t, int tk, int mask_batch) {
    long row = warp_index();
    if (row >= n) return;  // a whole warp leaves together
    long b = row / ((long)h * t), i = row % t;
    const T* xr = x + row * tk;
    const T* mr = mask + (mask_batch == 1 ? i : b * t + i) * tk;
    float mx = NEG_INF;
    row_each2(xr, mr, tk, [&](int, float a, float m) { mx = fmaxf(mx, a + m); });
    mx = warp_max(mx);
    float s = 0.0f;
    row_each2(xr, mr, tk, [&](int, float a, float m) { s += __expf(a + m - mx); });
    float inv = 1.0f / warp_sum(s);
    row_map2(xr, mr, y + row * tk, tk, [&](int, float a, float m) { return __expf(a + m - mx) * inv; });
}

// dx = y ⊙ (dy − Σ dy⊙y) over `n` rows of `c`, one warp per row.
template <typename T>
__device__ void softmax_backward(const T* y, const T* dy, T* dx, long n, int c) {
    long row = warp_index();
    if (row >= n) return;
    const T *yr = y + row * c, *dyr = dy + row * c;
    float dot = 0.0f;
    row_each2(yr, dyr, c, [&](int, float a, float g) { dot += a * g; });
    dot = warp_sum(dot);
    row_map2(yr, dyr, dx + row * c, c, [&](int, float a, float g) { return a * (g - dot); });
}

extern "C" __global__ void masked_softmax_f32(const float* x, const float* mask, float* y, long n, int h, int t, int tk, int mb) {
    masked_softmax(x, mask, y, n, h, t, tk, mb);
}
extern "C" __global__ void masked_softmax_bf16(const bf16* x, const bf16* mask, bf16* y, long n, int h, int t, int tk, int mb) {
    masked_softmax(x, mask, y, n, h, t, tk, mb);
}
extern "C" __global__ void softmax_backward_f32(const float* y, const float* dy, float* dx, long n, int c) {
    softmax_backward(y, dy, dx, n, c);
}
extern "C" __global__ void softmax_backward_bf16(const bf16* y, const bf16* dy, bf16* dx, long n, int c) {
    softmax_backward(y, dy, dx, n, c);
}

#define IGNORE 0xffffffffu

// The maximum M of a block's row (v numbers at x + r) and Σ_j exp(x_j − M), in one pass over
// the row (the online softmax of Milakov & Gimelshein 2018): each thread keeps the maximum and
// the sum of its own numbers, rescaling the sum when the maximum grows, and the block combines
// them. Rows of the logits are 50,304 numbers: one read of them instead of two.
// The running maximum starts at the lowest finite float rather than −∞, so that a −∞ logit adds
// exp(−∞) = 0 to the sum instead of exp(−∞ + ∞) = NaN.
template <typename T>
__device__ void row_max_and_sum(const T* x, long r, int v, float* max, float* sum) {
    constexpr int P = Pack<T>::N;
    float m = -3.402823466e38f, s = 0.0f;
    if (v % P == 0 && aligned16(x + r)) {  // the logits' rows: 50,304 numbers
        for (int j = threadIdx.x * P; j < v; j += blockDim.x * P) {
            float f[P];
            load16(x, r + j, f);
            float fm = f[0];
            for (int k = 1; k < P; k++) fm = fmaxf(fm, f[k]);
            if (fm > m) {  // rescale once per pack, not once per number
                s *= __expf(m - fm);
                m = fm;
            }
            for (int k = 0; k < P; k++) s += __expf(f[k] - m);
        }
    } else {
        for (int j = threadIdx.x; j < v; j += blockDim.x) {
            float xj = load(x, r + j);
            if (xj > m) {
                s = s * __expf(m - xj) + 1.0f;
                m = xj;
            } else {
                s += __expf(xj - m);
            }
        }
    }
    float mx = block_max(m);
    *max = mx;
    *sum = block_sum(s * __expf(m - mx));
}

// loss_i = logsumexp(x_i) − x_i[t_i] (0 where t_i is IGNORE); x: (N, V) f32 or bf16, loss f32.
template <typename T>
__device__ void cross_entropy(const T* x, const unsigned int* targets, float* loss, int v) {
    long row = blockIdx.x, r = row * (long)v;
    unsigned int t = targets[row];
    if (t == IGNORE) { if (threadIdx.x == 0) loss[row] = 0.0f; return; }
    if (t >= (unsigned int)v) { if (threadIdx.x == 0) loss[row] = __int_as_float(0x7fc00000); return; }  // NaN
    float mx, s;
    row_max_and_sum(x, r, v, &mx, &s);
    if (threadIdx.x == 0) loss[row] = logf(s) + mx - load(x, r + t);
}

// dx_i = (softmax(x_i) − onehot(t_i)) · dloss_i (0 where t_i is IGNORE or out of range); dx in
// x's dtype. The forward's own output gives the row's log-normaliser back,
// logsumexp(x_i) = loss_i + x_i[t_i], so softmax(x_i)_j = exp(x_ij − loss_i − x_i[t_i]): one
// pass over the row, reading each logit once and writing each gradient once.
template <typename T>
__device__ void cross_entropy_backward(const T* x, const unsigned int* targets, const float* loss, const float* dloss, T* dx, int v) {
    constexpr int P = Pack<T>::N;
    long row = blockIdx.x, r = row * (long)v;
    unsigned int t = targets[row];
    bool live = t < (unsigned int)v;  // IGNORE is out of range too
    float g = live ? dloss[row] : 0.0f, lse = live ? loss[row] + load(x, r + t) : 0.0f;
    if (v % P == 0 && aligned16(x + r) && aligned16(dx + r)) {
        for (int j = threadIdx.x * P; j < v; j += blockDim.x * P) {
            float f[P];
            load16(x, r + j, f);
            for (int k = 0; k < P; k++) f[k] = live ? __expf(f[k] - lse) * g - (j + k == (int)t ? g : 0.0f) : 0.0f;
            store16(dx, r + j, f);
        }
    } else {
        for (int j = threadIdx.x; j < v; j += blockDim.x)
            store(dx, r + j, live ? __expf(load(x, r + j) - lse) * g - (j == (int)t ? g : 0.0f) : 0.0f);
    }
}

extern "C" __global__ void cross_entropy_f32(const float* x, const unsigned int* t, float* loss, int v) {
    cross_entropy(x, t, loss, v);
}
extern "C" __global__ void cross_entropy_bf16(const bf16* x, const unsigned int* t, float* loss, int v) {
    cross_entropy(x, t, loss, v);
}
extern "C" __global__ void cross_entropy_backward_f32(const float* x, const unsigned int* t, const float* loss, const float* dl, float* dx, int v) {
    cross_entropy_backward(x, t, loss, dl, dx, v);
}
extern "C" __global__ void cross_entropy_backward_bf16(const bf16* x, const unsigned int* t, const float* loss, const float* dl, bf16* dx, int v) {
    cross_entropy_backward(x, t, loss, dl, dx, v);
}

// LayerNorm (rms = 0) and RMSNorm (rms = 1) of rows of `c`; x, y, dy, dx in T, the gain w in f32.
// See model/fused_norm.rs for the formulas. One warp per row, walked by `row_each` (a row of 512
// bf16 is 64 packs, two per lane), and the row's sums go round the warp by shuffles. (A block per
// row of a few hundred numbers spends its time waiting at its barriers.) The row's statistics are
// recomputed in backward.
template <typename T>
__device__ void row_stats(const T* x, int c, int rms, float eps, float* mean, float* rstd) {
    float m = 0.0f;
    if (!rms) {
        row_each(x, c, [&](int, float a) { m += a; });
        m = warp_sum(m) / c;
    }
    float v = 0.0f;
    row_each(x, c, [&](int, float a) { v += (a - m) * (a - m); });
    v = warp_sum(v) / c;
    *mean = m;
    *rstd = rsqrtf(v + eps);
}

template <typename T>
__device__ void norm_forward(const T* x, const float* w, T* y, long n, int c, int rms, float eps) {
    long row = warp_index();
    if (row >= n) return;  // a whole warp leaves together
    const T* xr = x + row * c;
    float mean, rstd;
    row_stats(xr, c, rms, eps, &mean, &rstd);
    row_map(xr, y + row * c, c, [&](int j, float a) { return (a - mean) * rstd * w[j]; });
}

template <typename T>
__device__ void norm_backward_x(const T* x, const float* w, const T* dy, T* dx, long n, int c, int rms, float eps) {
    long row = warp_index();
    if (row >= n) return;
    const T *xr = x + row * c, *dyr = dy + row * c;
    float mean, rstd;
    row_stats(xr, c, rms, eps, &mean, &rstd);
    float sg = 0.0f, sgx = 0.0f;
    row_each2(xr, dyr, c, [&](int j, float a, float d) {
        float g = d * w[j];
        sg += g;
        sgx += g * (a - mean) * rstd;
    });
    sg = rms ? 0.0f : warp_sum(sg) / c;
    sgx = warp_sum(sgx) / c;
    row_map2(xr, dyr, dx + row * c, c, [&](int j, float a, float d) {
        return rstd * (d * w[j] - sg - (a - mean) * rstd * sgx);
    });
}

// Partial sums of dy ⊙ x̂ over rows, (gridDim.x, c) f32: warp w of block b takes the rows
// b·W + w, then gridDim.x·W further, … (W warps a block) and its lanes add into the warp's own
// row of the shared accumulator (W, c); the block then adds its W rows into partial[b, :].
template <typename T>
__device__ void norm_backward_w(const T* x, const T* dy, float* partial, int n, int c, int rms, float eps) {
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, W = blockDim.x >> 5;
    float* acc = (float*)smem;
    float* mine = acc + warp * c;
    for (int j = lane; j < c; j += 32) mine[j] = 0.0f;
    __syncwarp();  // a lane may add into columns another lane zeroed (16-byte packs)
    for (long row = (long)blockIdx.x * W + warp; row < n; row += (long)gridDim.x * W) {
        const T* xr = x + row * c;
        float mean, rstd;
        row_stats(xr, c, rms, eps, &mean, &rstd);
        row_each2(xr, dy + row * c, c, [&](int j, float a, float d) { mine[j] += d * (a - mean) * rstd; });
    }
    __syncthreads();
    for (int j = threadIdx.x; j < c; j += blockDim.x) {
        float s = 0.0f;
        for (int k = 0; k < W; k++) s += acc[k * c + j];
        partial[(long)blockIdx.x * c + j] = s;
    }
}

// out[j] = Σ_i partial[i, j] over `n` rows of `c`: a block of 32 × 32 threads per 32 columns.
// Thread (x, y) adds the rows y, y + 32, … of column x; then the 32 sums of a column are added in
// shared memory, in a fixed order: the same result on every run (no atomics).
template <typename T>
__device__ void sum_columns(const float* partial, T* out, int n, int c) {
    float* part = (float*)smem;  // (32, 33): the padding puts a column's 32 sums in different banks
    int x = threadIdx.x & 31, y = threadIdx.x >> 5, j = blockIdx.x * 32 + x;
    float s = 0.0f;
    if (j < c)
        for (int i = y; i < n; i += 32) s += partial[(long)i * c + j];
    part[y * 33 + x] = s;
    __syncthreads();
    if (y == 0 && j < c) {
        float t = 0.0f;
        for (int k = 0; k < 32; k++) t += part[k * 33 + x];
        store(out, j, t);
    }
}
extern "C" __global__ void sum_columns_f32(const float* p, float* out, int n, int c) { sum_columns(p, out, n, c); }
extern "C" __global__ void sum_columns_bf16(const float* p, bf16* out, int n, int c) { sum_columns(p, out, n, c); }

// The bias of a linear layer: y = x + b row by row, x (N, C), b (C); backward db = Σ_rows dy, in
// two steps: blockIdx.y sums its strided set of rows into partial[blockIdx.y, :] (neighbouring
// threads read neighbouring columns: coalesced), then sum_columns adds the partial sums.
// (In packs where rows are a whole number of them: a pack of x then meets one of b.)
template <typename T>
__device__ void add_bias(const T* x, const T* b, T* y, long n, int c) {
    constexpr int P = Pack<T>::N;
    long first = (long)blockIdx.x * blockDim.x + threadIdx.x, stride = (long)gridDim.x * blockDim.x;
    long packs = c % P == 0 && aligned16(x) && aligned16(b) && aligned16(y) ? n / P : 0;
    for (long p = first; p < packs; p += stride) {
        float u[P], v[P];
        load16(x, p * P, u);
        load16(b, p * P % c, v);
        for (int k = 0; k < P; k++) u[k] += v[k];
        store16(y, p * P, u);
    }
    for (long i = packs * P + first; i < n; i += stride) store(y, i, load(x, i) + load(b, i % c));
}

template <typename T>
__device__ void column_partial_sums(const T* x, float* partial, int n, int c) {
    int j = blockIdx.x * blockDim.x + threadIdx.x;
    if (j >= c) return;
    float s = 0.0f;
    for (long row = blockIdx.y; row < n; row += gridDim.y) s += load(x, row * c + j);
    partial[(long)blockIdx.y * c + j] = s;
}

extern "C" __global__ void add_bias_f32(const float* x, const float* b, float* y, long n, int c) { add_bias(x, b, y, n, c); }
extern "C" __global__ void add_bias_bf16(const bf16* x, const bf16* b, bf16* y, long n, int c) { add_bias(x, b, y, n, c); }
extern "C" __global__ void column_partial_sums_f32(const float* x, float* p, int n, int c) { column_partial_sums(x, p, n, c); }
extern "C" __global__ void column_partial_sums_bf16(const bf16* x, float* p, int n, int c) { column_partial_sums(x, p, n, c); }

extern "C" __global__ void norm_forward_f32(const float* x, const float* w, float* y, long n, int c, int rms, float eps) {
    norm_forward(x, w, y, n, c, rms, eps);
}
extern "C" __global__ void norm_forward_bf16(const bf16* x, const float* w, bf16* y, long n, int c, int rms, float eps) {
    norm_forward(x, w, y, n, c, rms, eps);
}
extern "C" __global__ void norm_backward_x_f32(const float* x, const float* w, const float* dy, float* dx, long n, int c, int rms, float eps) {
    norm_backward_x(x, w, dy, dx, n, c, rms, eps);
}
extern "C" __global__ void norm_backward_x_bf16(const bf16* x, const float* w, const bf16* dy, bf16* dx, long n, int c, int rms, float eps) {
    norm_backward_x(x, w, dy, dx, n, c, rms, eps);
}
extern "C" __global__ void norm_backward_w_f32(const float* x, const float* dy, float* partial, int n, int c, int rms, float eps) {
    norm_backward_w(x, dy, partial, n, c, rms, eps);
}
extern "C" __global__ void norm_backward_w_bf16(const bf16* x, const bf16* dy, float* partial, int n, int c, int rms, float eps) {
    norm_backward_w(x, dy, partial, n, c, rms, eps);
}

// GELU, exact form, element by element: y = x·Φ(x); backward dx = dy·(Φ(x) + x·φ(x)).
__device__ __forceinline__ float gelu_cdf(float x) { return 0.5f * (1.0f + erff(x * 0.70710678118654752f)); }
__device__ __forceinline__ float gelu_pdf(float x) { return __expf(-0.5f * x * x) * 0.39894228040143268f; }

template <typename T>
__device__ void gelu_forward(const T* x, T* y, long n) {
    map_each(x, y, n, [](float a) { return a * gelu_cdf(a); });
}

template <typename T>
__device__ void gelu_backward(const T* x, const T* dy, T* dx, long n) {
    map_each2(x, dy, dx, n, [](float a, float g) { return g * (gelu_cdf(a) + a * gelu_pdf(a)); });
}

extern "C" __global__ void gelu_forward_f32(const float* x, float* y, long n) { gelu_forward(x, y, n); }
extern "C" __global__ void gelu_forward_bf16(const bf16* x, bf16* y, long n) { gelu_forward(x, y, n); }
extern "C" __global__ void gelu_backward_f32(const float* x, const float* dy, float* dx, long n) { gelu_backward(x, dy, dx, n); }
extern "C" __global__ void gelu_backward_bf16(const bf16* x, const bf16* dy, bf16* dx, long n) { gelu_backward(x, dy, dx, n); }

// AdamW in place (train/adamw_fused.rs), f32 master weights and moments. The moments of all
// weights at once, mv = [m; v] (2, n): m ← β1·m + (1−β1)·(s·g), v ← β2·v + (1−β2)·(s·g)²; then
// per weight θ ← θ·decay − step · m / (√v / bias2_sqrt + ε).
extern "C" __global__ void adamw_moments(float* mv, const float* g, long n, float beta1, float beta2, float scale) {
    float* v = mv + n;
    for (long i = (long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (long)gridDim.x * blockDim.x) {
        float x = scale * g[i];
        mv[i] = beta1 * mv[i] + (1.0f - beta1) * x;
        v[i] = beta2 * v[i] + (1.0f - beta2) * (x * x);
    }
}

extern "C" __global__ void adamw_update(float* theta, const float* m, const float* v, long n, float decay, float step, float bias2_sqrt, float eps) {
    for (long i = (long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (long)gridDim.x * blockDim.x)
        theta[i] = theta[i] * decay - step * (m[i] / (sqrtf(v[i]) / bias2_sqrt + eps));
}

// Σ x² over n f32 numbers (train/sum_squares.rs) in two launches: each block of
// `sum_squares_partial` sums a fixed share of x (16 bytes at a time where x is aligned) and writes
// its sum; then one block of `sum_in_order` adds those sums. The grid depends only on n, so the
// same numbers always give the same sum.
extern "C" __global__ void sum_squares_partial(const float* x, float* partial, long n) {
    long stride = (long)gridDim.x * blockDim.x, first = (long)blockIdx.x * blockDim.x + threadIdx.x;
    long packs = ((unsigned long long)x & 15) == 0 ? n / 4 : 0;  // the rest, one number at a time
    float s = 0.0f;
    for (long i = first; i < packs; i += stride) {
        float f[4];
        load16(x, 4 * i, f);
        s += f[0] * f[0] + f[1] * f[1] + f[2] * f[2] + f[3] * f[3];
    }
    for (long i = 4 * packs + first; i < n; i += stride) s += x[i] * x[i];
    s = block_sum(s);
    if (threadIdx.x == 0) partial[blockIdx.x] = s;
}

extern "C" __global__ void sum_in_order(const float* x, float* out, int n) {
    float s = 0.0f;
    for (int i = threadIdx.x; i < n; i += blockDim.x) s += x[i];
    s = block_sum(s);
    if (threadIdx.x == 0) out[0] = s;
}

// Embedding (model/embedding.rs): out[i, :] = table[ids[i], :]; backward d_table[ids[i], :] += dy[i, :]
// with one thread per (i, column) and an atomic add (f32). Ids outside the table write NaN / nothing.
extern "C" __global__ void embedding_forward(const float* table, const unsigned int* ids, float* out, long n, int c, int rows) {
    for (long k = (long)blockIdx.x * blockDim.x + threadIdx.x; k < n * c; k += (long)gridDim.x * blockDim.x) {
        unsigned int id = ids[k / c];
        out[k] = id < (unsigned int)rows ? table[(long)id * c + k % c] : __int_as_float(0x7fc00000);
    }
}

extern "C" __global__ void embedding_backward(const unsigned int* ids, const float* dy, float* dtable, long n, int c, int rows) {
    for (long k = (long)blockIdx.x * blockDim.x + threadIdx.x; k < n * c; k += (long)gridDim.x * blockDim.x) {
        unsigned int id = ids[k / c];
        if (id < (unsigned int)rows) atomicAdd(&dtable[(long)id * c + k % c], dy[k]);
    }
}

// start[b·T + i] = where token i's story begins in row b (the loader numbers a row's stories in
// order, so a story starts wherever the id changes): the running maximum over the row of
// "i if doc[i] ≠ doc[i − 1], else 0". One block of SCAN threads per row takes SCAN positions at
// a time: Hillis & Steele's scan in shared memory, log2(SCAN) steps, then the carry.
#define SCAN 256
extern "C" __global__ void document_starts(const unsigned int* doc, unsigned int* start, int t) {
    unsigned int* run = (unsigned int*)smem;  // SCAN numbers
    const unsigned int* d = doc + (long)blockIdx.x * t;
    unsigned int* s = start + (long)blockIdx.x * t;
    unsigned int carry = 0, x = threadIdx.x;
    for (int i0 = 0; i0 < t; i0 += SCAN) {
        int i = i0 + (int)x;
        run[x] = i < t && i > 0 && d[i] != d[i - 1] ? (unsigned int)i : 0u;
        __syncthreads();
        for (unsigned int o = 1; o < SCAN; o <<= 1) {
            unsigned int before = x >= o ? run[x - o] : 0u;
            __syncthreads();
            if (before > run[x]) run[x] = before;
            __syncthreads();
        }
        if (i < t) s[i] = run[x] > carry ? run[x] : carry;
        if (run[SCAN - 1] > carry) carry = run[SCAN - 1];
        __syncthreads();  // everyone has read run[SCAN − 1] before the next chunk overwrites it
    }
}

// Document-masked causal attention (model/fused_attention.rs), flash style: the (T, T) scores
// are never stored. qkv is c_attn's output (B, T, (nh + 2·nkv)·hd): token i's query head h at
// h·hd, key head kh at (nh + kh)·hd, value head at (nh + nkv + kh)·hd; query head h uses key and
// value head h / (nh / nkv). Token i sees the keys start[b·T + i] ..= i (its own story).
// One warp per query (forward, backward_q) or per key (backward_kv); lane l holds the numbers
// l, l + 32, … of a head (hd ≤ 32·ATT_E). Scores, softmax and sums in f32.
#define ATT_E 8

// Loads a head (hd numbers at p + at) into the lane's registers, times `scale`.
template <typename T>
__device__ __forceinline__ void load_head(const T* p, long at, int hd, float scale, float* r) {
    int lane = threadIdx.x & 31;
    for (int e = 0; e < ATT_E; e++) {
        int d = lane + 32 * e;
        r[e] = d < hd ? load(p, at + d) * scale : 0.0f;
    }
}

// Σ_d r[d] · p[at + d] over the warp.
template <typename T>
__device__ __forceinline__ float dot_head(const float* r, const T* p, long at, int hd) {
    int lane = threadIdx.x & 31;
    float s = 0.0f;
    for (int e = 0; e < ATT_E; e++) {
        int d = lane + 32 * e;
        if (d < hd) s += r[e] * load(p, at + d);
    }
    return warp_sum(s);
}

// acc[d] = acc[d] · c + w · p[at + d].
template <typename T>
__device__ __forceinline__ void axpy_head(float* acc, float c, float w, const T* p, long at, int hd) {
    int lane = threadIdx.x & 31;
    for (int e = 0; e < ATT_E; e++) {
        int d = lane + 32 * e;
        if (d < hd) acc[e] = acc[e] * c + w * load(p, at + d);
    }
}

template <typename T>
__device__ __forceinline__ void store_head(T* p, long at, int hd, const float* r, float scale) {
    int lane = threadIdx.x & 31;
    for (int e = 0; e < ATT_E; e++) {
        int d = lane + 32 * e;
        if (d < hd) store(p, at + d, r[e] * scale);
    }
}

// The online softmax over token i's keys (Milakov & Gimelshein 2018): returns log Σ_j exp(s_j)
// (s_j = q · k_j, q already scaled) and leaves Σ_j softmax(s)_j v_j in y.
template <typename T>
__device__ float attend(const T* row, const float* q, int i, int j0, long k_at, long v_at, int width, int hd, float* y) {
    float m = NEG_INF, l = 0.0f;
    for (int e = 0; e < ATT_E; e++) y[e] = 0.0f;
    for (int j = j0; j <= i; j++) {
        float s = dot_head(q, row, (long)j * width + k_at, hd);
        float m_new = fmaxf(m, s);
        float c = __expf(m - m_new);  // 0 at the first key (m = −∞)
        float p = __expf(s - m_new);
        l = l * c + p;
        axpy_head(y, c, p, row, (long)j * width + v_at, hd);
        m = m_new;
    }
    for (int e = 0; e < ATT_E; e++) y[e] /= l;
    return m + __logf(l);
}

// y (B, T, nh·hd) = softmax(q k^T / √hd) v over each query's story.
template <typename T>
__device__ void attention_forward(const T* qkv, const unsigned int* start, T* y, int t, int nh, int nkv, int hd, float scale, long n) {
    long w = warp_index();
    if (w >= n) return;  // n = B·nh·T warps; a whole warp leaves together
    int i = (int)(w % t), h = (int)(w / t % nh);
    long b = w / t / nh;
    int width = (nh + 2 * nkv) * hd, kh = h / (nh / nkv);
    const T* row = qkv + b * t * width;
    float q[ATT_E], acc[ATT_E];
    load_head(row, (long)i * width + h * hd, hd, scale, q);
    attend(row, q, i, (int)start[b * t + i], (long)(nh + kh) * hd, (long)(nh + nkv + kh) * hd, width, hd, acc);
    store_head(y, (b * t + i) * nh * hd + h * hd, hd, acc, 1.0f);
}

// Backward, query side (one warp per query): recomputes the query's softmax, saves its
// log-normaliser L_i and D_i = dy_i · y_i (= Σ_j p_j dp_j), and writes
// dq_i = Σ_j p_j (dy_i · v_j − D_i) k_j / √hd into dqkv's query slot.
template <typename T>
__device__ void attention_backward_q(const T* qkv, const T* dy, const unsigned int* start, T* dqkv, float* lse, float* dsum, int t, int nh, int nkv, int hd, float scale, long n) {
    long w = warp_index();
    if (w >= n) return;
    int i = (int)(w % t), h = (int)(w / t % nh);
    long b = w / t / nh;
    int width = (nh + 2 * nkv) * hd, kh = h / (nh / nkv);
    long k_at = (long)(nh + kh) * hd, v_at = (long)(nh + nkv + kh) * hd;
    const T* row = qkv + b * t * width;
    int j0 = (int)start[b * t + i];
    float q[ATT_E], g[ATT_E], acc[ATT_E];
    load_head(row, (long)i * width + h * hd, hd, scale, q);
    load_head(dy, (b * t + i) * nh * hd + h * hd, hd, 1.0f, g);
    float L = attend(row, q, i, j0, k_at, v_at, width, hd, acc);
    int lane = threadIdx.x & 31;
    float D = 0.0f;
    for (int e = 0; e < ATT_E; e++) D += g[e] * acc[e];  // zeros past hd
    D = warp_sum(D);
    for (int e = 0; e < ATT_E; e++) acc[e] = 0.0f;
    for (int j = j0; j <= i; j++) {
        float p = __expf(dot_head(q, row, (long)j * width + k_at, hd) - L);
        float ds = p * (dot_head(g, row, (long)j * width + v_at, hd) - D);
        axpy_head(acc, 1.0f, ds, row, (long)j * width + k_at, hd);
    }
    store_head(dqkv + b * t * width, (long)i * width + h * hd, hd, acc, scale);
    if (lane == 0) {
        long s = (b * nh + h) * t + i;
        lse[s] = L;
        dsum[s] = D;
    }
}

// Backward, key side (one warp per key j of key/value head kh): over the query heads that share
// it and the queries i ≥ j of j's story, dv_j = Σ p_ij dy_i and dk_j = Σ p_ij (dp_ij − D_i) q_i / √hd,
// written into dqkv's key and value slots.
template <typename T>
__device__ void attention_backward_kv(const T* qkv, const T* dy, const unsigned int* start, const float* lse, const float* dsum, T* dqkv, int t, int nh, int nkv, int hd, float scale, long n) {
    long w = warp_index();
    if (w >= n) return;  // n = B·nkv·T warps
    int j = (int)(w % t), kh = (int)(w / t % nkv);
    long b = w / t / nkv;
    int width = (nh + 2 * nkv) * hd, g = nh / nkv;
    long k_at = (long)j * width + (nh + kh) * hd, v_at = (long)j * width + (nh + nkv + kh) * hd;
    const T* row = qkv + b * t * width;
    float k[ATT_E], v[ATT_E], dk[ATT_E], dv[ATT_E];
    load_head(row, k_at, hd, scale, k);
    load_head(row, v_at, hd, 1.0f, v);
    for (int e = 0; e < ATT_E; e++) dk[e] = dv[e] = 0.0f;
    for (int h = kh * g; h < (kh + 1) * g; h++) {
        for (int i = j; i < t && (int)start[b * t + i] <= j; i++) {
            long s = (b * nh + h) * t + i;
            long q_at = (long)i * width + h * hd, g_at = (b * t + i) * nh * hd + h * hd;
            float p = __expf(dot_head(k, row, q_at, hd) - lse[s]);
            float ds = p * (dot_head(v, dy, g_at, hd) - dsum[s]);
            axpy_head(dv, 1.0f, p, dy, g_at, hd);
            axpy_head(dk, 1.0f, ds, row, q_at, hd);
        }
    }
    store_head(dqkv + b * t * width, k_at, hd, dk, scale);
    store_head(dqkv + b * t * width, v_at, hd, dv, 1.0f);
}

extern "C" __global__ void attention_forward_f32(const float* qkv, const unsigned int* start, float* y, int t, int nh, int nkv, int hd, float scale, long n) {
    attention_forward(qkv, start, y, t, nh, nkv, hd, scale, n);
}
extern "C" __global__ void attention_forward_bf16(const bf16* qkv, const unsigned int* start, bf16* y, int t, int nh, int nkv, int hd, float scale, long n) {
    attention_forward(qkv, start, y, t, nh, nkv, hd, scale, n);
}
extern "C" __global__ void attention_backward_q_f32(const float* qkv, const float* dy, const unsigned int* start, float* dqkv, float* lse, float* dsum, int t, int nh, int nkv, int hd, float scale, long n) {
    attention_backward_q(qkv, dy, start, dqkv, lse, dsum, t, nh, nkv, hd, scale, n);
}
extern "C" __global__ void attention_backward_q_bf16(const bf16* qkv, const bf16* dy, const unsigned int* start, bf16* dqkv, float* lse, float* dsum, int t, int nh, int nkv, int hd, float scale, long n) {
    attention_backward_q(qkv, dy, start, dqkv, lse, dsum, t, nh, nkv, hd, scale, n);
}
extern "C" __global__ void attention_backward_kv_f32(const float* qkv, const float* dy, const unsigned int* start, const float* lse, const float* dsum, float* dqkv, int t, int nh, int nkv, int hd, float scale, long n) {
    attention_backward_kv(qkv, dy, start, lse, dsum, dqkv, t, nh, nkv, hd, scale, n);
}
extern "C" __global__ void attention_backward_kv_bf16(const bf16* qkv, const bf16* dy, const unsigned int* start, const float* lse, const float* dsum, bf16* dqkv, int t, int nh, int nkv, int hd, float scale, long n) {
    attention_backward_kv(qkv, dy, start, lse, dsum, dqkv, t, nh, nkv, hd, scale, n);
}

// ---------------------------------------------------------------------------------------------
// The same attention on tensor cores: bf16, heads of 64 or 128 numbers, compute capability 8.0
// and later (A100, RTX 30xx/40xx, H100/H200), FlashAttention-2 style (Dao 2023). A block of
// MMA_WARPS warps takes MMA_ROWS queries (forward, backward_q) or keys (backward_kv) of one head;
// each warp owns 16 of them and multiplies tiles with `mma.sync` (16×16 bf16 times 16×8 bf16,
// sums in f32) while the block walks over the other side's tokens in tiles copied to shared
// memory: only the tiles that hold keys of the block's stories. Scores are kept in base 2
// (s · log2(e), so that exp2f is one instruction); lse holds log2 Σ 2^s.
//
// Fragments (PTX ISA, "Matrix Fragments for mma.m16n8k16"): lane l of a warp, g = l / 4 and
// c = l % 4, holds of A (16×16) a[0] = row g, columns 2c and 2c+1 (two bf16 in a u32, the first
// in the low half), a[1] = row g+8, a[2] = row g, columns 2c+8 and 2c+9, a[3] = row g+8, same;
// of B (16×8) b[0] = rows 2c and 2c+1 of column g, b[1] = rows 2c+8 and 2c+9; of the f32
// product C (16×8) d[0], d[1] = row g, columns 2c and 2c+1, d[2], d[3] = row g+8. So the
// products of two neighbouring 8-column tiles are, rounded to bf16, the A operand of a next
// product (c_to_a): that is how p feeds p·v without leaving the registers.
#if !defined(__CUDA_ARCH__) || __CUDA_ARCH__ >= 800

#define MMA_WARPS 4
#define MMA_ROWS (16 * MMA_WARPS)
#define LOG2E 1.4426950408889634f

#ifdef TINYGPT_EMULATED  // tests/cuda_emulated runs this file on a CPU; emulate.h has mma_16816
__device__ __forceinline__ unsigned pack_bf16(float lo, float hi) { return to_bf16(lo) | ((unsigned)to_bf16(hi) << 16); }
__device__ __forceinline__ unsigned ld32(const bf16* p) { return p[0] | ((unsigned)p[1] << 16); }
__device__ __forceinline__ void st32(bf16* p, unsigned v) { p[0] = (bf16)v; p[1] = (bf16)(v >> 16); }
__device__ __forceinline__ void copy16(bf16* to, const bf16* from) { for (int e = 0; e < 8; e++) to[e] = from[e]; }
__device__ __forceinline__ void zero16(bf16* to) { for (int e = 0; e < 8; e++) to[e] = 0; }
#else
__device__ __forceinline__ unsigned pack_bf16(float lo, float hi) {
    unsigned r;
    asm("cvt.rn.bf16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo));
    return r;
}
__device__ __forceinline__ unsigned ld32(const bf16* p) { return *(const unsigned*)p; }
__device__ __forceinline__ void st32(bf16* p, unsigned v) { *(unsigned*)p = v; }
__device__ __forceinline__ void copy16(bf16* to, const bf16* from) { *(uint4*)to = *(const uint4*)from; }
__device__ __forceinline__ void zero16(bf16* to) { *(uint4*)to = make_uint4(0, 0, 0, 0); }
// d (16×8, f32) += a (16×16, bf16) · b (16×8, bf16).
__device__ __forceinline__ void mma_16816(float* d, const unsigned* a, const unsigned* b) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}
#endif

__device__ __forceinline__ float bf16_lo(unsigned u) { return __uint_as_float(u << 16); }
__device__ __forceinline__ float bf16_hi(unsigned u) { return __uint_as_float(u & 0xffff0000u); }

__device__ __forceinline__ float quad_max(float v) {  // over the four lanes of a row (same g)
    v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 1));
    return fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 2));
}
__device__ __forceinline__ float quad_sum(float v) {
    v += __shfl_xor_sync(0xffffffffu, v, 1);
    return v + __shfl_xor_sync(0xffffffffu, v, 2);
}

// The A operand from a row-major bf16 matrix at p (row stride ld): rows 0..15, columns 0..15;
// rows n and past are zeros.
__device__ __forceinline__ void load_a(const bf16* p, long ld, int n, unsigned* a) {
    int g = (threadIdx.x & 31) >> 2, c = threadIdx.x & 3;
    const bf16* r0 = p + g * ld + 2 * c;
    const bf16* r8 = r0 + 8 * ld;
    a[0] = g < n ? ld32(r0) : 0u;
    a[1] = g + 8 < n ? ld32(r8) : 0u;
    a[2] = g < n ? ld32(r0 + 8) : 0u;
    a[3] = g + 8 < n ? ld32(r8 + 8) : 0u;
}

// The B operand B[k][n] = m[n·ld + k] (eight rows of m, 16 numbers each): the transpose of a
// row-major tile, as in q·kᵀ.
__device__ __forceinline__ void load_bt(const bf16* m, int ld, unsigned* b) {
    int g = (threadIdx.x & 31) >> 2, c = threadIdx.x & 3;
    const bf16* p = m + g * ld + 2 * c;
    b[0] = ld32(p);
    b[1] = ld32(p + 8);
}

// The B operand B[k][n] = m[k·ld + n] (16 rows of m, eight columns): a row-major tile itself,
// as in p·v. Its pairs lie in two rows: two 16-bit loads per register.
__device__ __forceinline__ void load_b(const bf16* m, int ld, unsigned* b) {
    int g = (threadIdx.x & 31) >> 2, c = threadIdx.x & 3;
    const bf16* p = m + 2 * c * ld + g;
    b[0] = p[0] | ((unsigned)p[ld] << 16);
    b[1] = p[8 * ld] | ((unsigned)p[9 * ld] << 16);
}

// Two neighbouring 8-column products (16×16 in all), rounded to bf16, as an A operand.
__device__ __forceinline__ void c_to_a(const float* x0, const float* x1, unsigned* a) {
    a[0] = pack_bf16(x0[0], x0[1]);
    a[1] = pack_bf16(x0[2], x0[3]);
    a[2] = pack_bf16(x1[0], x1[1]);
    a[3] = pack_bf16(x1[2], x1[3]);
}

// Copies the heads of tokens j0 .. j0 + rows − 1 (HD numbers each, token j's at base + j·stride;
// zeros past t) into a shared tile of row stride HD + 8: the padding puts the rows of a column
// in different memory banks. The whole block takes part.
template <int HD>
__device__ void load_tile(bf16* tile, int rows, const bf16* base, long stride, int j0, int t) {
    for (int e = threadIdx.x; e < rows * (HD / 8); e += blockDim.x) {
        int r = e / (HD / 8), d = e % (HD / 8) * 8;
        if (j0 + r < t) copy16(tile + r * (HD + 8) + d, base + (j0 + r) * stride + d);
        else zero16(tile + r * (HD + 8) + d);
    }
}

// s (16 × 8·N) = the warp's queries (A fragments qa) · the tile's keys (ks, N·8 rows)ᵀ.
template <int HD, int N>
__device__ __forceinline__ void scores(unsigned (*qa)[4], const bf16* ks, float (*s)[4]) {
#pragma unroll
    for (int n = 0; n < N; n++) s[n][0] = s[n][1] = s[n][2] = s[n][3] = 0.0f;
#pragma unroll
    for (int k = 0; k < HD / 16; k++)
#pragma unroll
        for (int n = 0; n < N; n++) {
            unsigned b[2];
            load_bt(ks + n * 8 * (HD + 8) + 16 * k, HD + 8, b);
            mma_16816(s[n], qa[k], b);
        }
}

// acc (16 × HD) += x (16 × 16·K, products in C layout) · m (16·K rows of a shared tile).
template <int HD, int K>
__device__ __forceinline__ void mix(float (*x)[4], const bf16* m, float (*acc)[4]) {
#pragma unroll
    for (int k = 0; k < K; k++) {
        unsigned a[4];
        c_to_a(x[2 * k], x[2 * k + 1], a);
#pragma unroll
        for (int d = 0; d < HD / 8; d++) {
            unsigned b[2];
            load_b(m + 16 * k * (HD + 8) + 8 * d, HD + 8, b);
            mma_16816(acc[d], a, b);
        }
    }
}

// Who sees whom, for the lane's entries of a 16 × 8·N tile of scores: query rows[r] (r = 0 for
// d[0], d[1], 1 for d[2], d[3]) sees key j when from[r] ≤ j ≤ rows[r]. Others become −∞; the
// rest are scaled to base 2.
template <int N>
__device__ __forceinline__ void mask_scores(float (*s)[4], int j0, const int* rows, const int* from, float sl2) {
    int c = threadIdx.x & 3;
#pragma unroll
    for (int n = 0; n < N; n++)
#pragma unroll
        for (int e = 0; e < 4; e++) {
            int j = j0 + 8 * n + 2 * c + (e & 1), r = e >> 1;
            s[n][e] = from[r] <= j && j <= rows[r] ? s[n][e] * sl2 : NEG_INF;
        }
}

// The online softmax's step for one tile of masked scores: the running maxima m and the lane's
// partial sums l of its two rows are updated, s becomes 2^(s − m); returns the factors by which
// earlier sums (and outputs) shrink.
template <int N>
__device__ __forceinline__ void online_softmax(float (*s)[4], float* m, float* l, float* shrink) {
#pragma unroll
    for (int r = 0; r < 2; r++) {
        float mx = m[r];
#pragma unroll
        for (int n = 0; n < N; n++) mx = fmaxf(mx, fmaxf(s[n][2 * r], s[n][2 * r + 1]));
        mx = quad_max(mx);
        float base = mx == NEG_INF ? 0.0f : mx;  // a row with nothing seen yet: all zeros
        shrink[r] = exp2f(m[r] - base);
        l[r] *= shrink[r];
        m[r] = mx;
#pragma unroll
        for (int n = 0; n < N; n++)
#pragma unroll
            for (int e = 2 * r; e < 2 * r + 2; e++) {
                s[n][e] = exp2f(s[n][e] - base);
                l[r] += s[n][e];
            }
    }
}

// The lane's two queries of the warp's 16 (q0 = the first), and where their stories start
// (INT_MAX past t: they see nothing).
__device__ __forceinline__ void lane_queries(int q0, const unsigned* st, int t, int* rows, int* from) {
    int g = (threadIdx.x & 31) >> 2;
    rows[0] = q0 + g;
    rows[1] = q0 + g + 8;
    for (int r = 0; r < 2; r++) from[r] = rows[r] < t ? (int)st[rows[r]] : 0x7fffffff;
}

// Stores the lane's numbers of a 16 × HD result (C layout, times `scale`) into rows rows[0] and
// rows[1] (those before t) of a matrix at p with row stride ld.
template <int HD>
__device__ __forceinline__ void store_rows(bf16* p, long ld, const int* rows, int t, float (*x)[4], const float* scale) {
    int c = threadIdx.x & 3;
    for (int r = 0; r < 2; r++) {
        if (rows[r] >= t) continue;
#pragma unroll
        for (int d = 0; d < HD / 8; d++)
            st32(p + rows[r] * ld + 8 * d + 2 * c, pack_bf16(x[d][2 * r] * scale[r], x[d][2 * r + 1] * scale[r]));
    }
}

// y (B, T, nh·hd): grid (⌈T / MMA_ROWS⌉, nh, B); shared memory: two tiles of 64 keys.
template <int HD>
__device__ void attention_mma_forward(const bf16* qkv, const unsigned* start, bf16* y, int t, int nh, int nkv, float scale) {
    const int TILE = 64;
    bf16* ks = (bf16*)smem;     // keys j0 .. j0 + TILE − 1
    bf16* vs = ks + TILE * (HD + 8);  // their values
    int h = blockIdx.y, kh = h / (nh / nkv), width = (nh + 2 * nkv) * HD;
    long b = blockIdx.z;
    const bf16* row = qkv + b * t * width;
    const unsigned* st = start + b * t;
    int i0 = blockIdx.x * MMA_ROWS, q0 = i0 + (threadIdx.x >> 5) * 16;  // the block's, the warp's
    int rows[2], from[2];
    lane_queries(q0, st, t, rows, from);
    unsigned qa[HD / 16][4];
#pragma unroll
    for (int k = 0; k < HD / 16; k++) load_a(row + (long)q0 * width + h * HD + 16 * k, width, t - q0, qa[k]);
    float o[HD / 8][4] = {}, m[2] = {NEG_INF, NEG_INF}, l[2] = {0.0f, 0.0f};
    int last = (i0 + MMA_ROWS < t ? i0 + MMA_ROWS : t) - 1;
    int warp_from = q0 < t ? (int)st[q0] : t, warp_last = q0 + 15 < t ? q0 + 15 : t - 1;
    for (int j0 = (int)st[i0]; j0 <= last; j0 += TILE) {
        __syncthreads();  // every warp is done with the previous tile
        load_tile<HD>(ks, TILE, row + (nh + kh) * HD, width, j0, t);
        load_tile<HD>(vs, TILE, row + (nh + nkv + kh) * HD, width, j0, t);
        __syncthreads();
        if (q0 >= t || j0 > warp_last || j0 + TILE <= warp_from) continue;  // none of its keys
        float s[TILE / 8][4], shrink[2];
        scores<HD, TILE / 8>(qa, ks, s);
        mask_scores<TILE / 8>(s, j0, rows, from, scale * LOG2E);
        online_softmax<TILE / 8>(s, m, l, shrink);
#pragma unroll
        for (int d = 0; d < HD / 8; d++)
            for (int e = 0; e < 4; e++) o[d][e] *= shrink[e >> 1];
        mix<HD, TILE / 16>(s, vs, o);
    }
    float inv[2];
    for (int r = 0; r < 2; r++) inv[r] = 1.0f / quad_sum(l[r]);
    store_rows<HD>(y + (b * t * nh + h) * HD, (long)nh * HD, rows, t, o, inv);
}

// Backward, query side: grid (⌈T / MMA_ROWS⌉, nh, B). For each query i of the warp: its
// log-normaliser L_i (a first pass over its keys, scores only), D_i = dy_i · y_i, then
// dq_i = Σ_j p_ij (dy_i · v_j − D_i) k_j / √hd; L and D are saved for backward_kv.
template <int HD>
__device__ void attention_mma_backward_q(const bf16* qkv, const bf16* y, const bf16* dy, const unsigned* start, bf16* dqkv, float* lse, float* dsum, int t, int nh, int nkv, float scale) {
    const int TILE = 32;
    bf16* ks = (bf16*)smem;
    bf16* vs = ks + TILE * (HD + 8);
    int h = blockIdx.y, kh = h / (nh / nkv), width = (nh + 2 * nkv) * HD, c = threadIdx.x & 3;
    long b = blockIdx.z;
    const bf16* row = qkv + b * t * width;
    const unsigned* st = start + b * t;
    int i0 = blockIdx.x * MMA_ROWS, q0 = i0 + (threadIdx.x >> 5) * 16;
    int rows[2], from[2];
    lane_queries(q0, st, t, rows, from);
    long y_at = (b * t * nh + h) * HD, ld = (long)nh * HD;  // head h of token 0 in y and dy
    unsigned qa[HD / 16][4], ga[HD / 16][4];  // the warp's queries and their gradients dy
    float D[2] = {0.0f, 0.0f};
#pragma unroll
    for (int k = 0; k < HD / 16; k++) {
        load_a(row + (long)q0 * width + h * HD + 16 * k, width, t - q0, qa[k]);
        load_a(dy + y_at + q0 * ld + 16 * k, ld, t - q0, ga[k]);
        for (int e = 0; e < 4; e++) {  // ga[k][e]: row e % 2, columns 16k + 8(e / 2) + 2c, +1
            int r = e & 1;
            if (rows[r] >= t) continue;
            unsigned yy = ld32(y + y_at + rows[r] * ld + 16 * k + 8 * (e >> 1) + 2 * c);
            D[r] += bf16_lo(ga[k][e]) * bf16_lo(yy) + bf16_hi(ga[k][e]) * bf16_hi(yy);
        }
    }
    for (int r = 0; r < 2; r++) D[r] = quad_sum(D[r]);
    float sl2 = scale * LOG2E;
    int last = (i0 + MMA_ROWS < t ? i0 + MMA_ROWS : t) - 1;
    int warp_from = q0 < t ? (int)st[q0] : t, warp_last = q0 + 15 < t ? q0 + 15 : t - 1;
    // Pass 1: L = m + log2 Σ 2^(s − m).
    float m[2] = {NEG_INF, NEG_INF}, l[2] = {0.0f, 0.0f}, L[2];
    for (int j0 = (int)st[i0]; j0 <= last; j0 += TILE) {
        __syncthreads();
        load_tile<HD>(ks, TILE, row + (nh + kh) * HD, width, j0, t);
        __syncthreads();
        if (q0 >= t || j0 > warp_last || j0 + TILE <= warp_from) continue;
        float s[TILE / 8][4], shrink[2];
        scores<HD, TILE / 8>(qa, ks, s);
        mask_scores<TILE / 8>(s, j0, rows, from, sl2);
        online_softmax<TILE / 8>(s, m, l, shrink);
    }
    for (int r = 0; r < 2; r++) {
        float sum = quad_sum(l[r]);  // every lane takes part in the shuffles
        L[r] = rows[r] < t ? m[r] + log2f(sum) : 0.0f;
    }
    // Pass 2: p, dp = dy · vᵀ, ds = p (dp − D), dq += ds · k.
    float dq[HD / 8][4] = {};
    for (int j0 = (int)st[i0]; j0 <= last; j0 += TILE) {
        __syncthreads();
        load_tile<HD>(ks, TILE, row + (nh + kh) * HD, width, j0, t);
        load_tile<HD>(vs, TILE, row + (nh + nkv + kh) * HD, width, j0, t);
        __syncthreads();
        if (q0 >= t || j0 > warp_last || j0 + TILE <= warp_from) continue;
        float s[TILE / 8][4], dp[TILE / 8][4];
        scores<HD, TILE / 8>(qa, ks, s);
        mask_scores<TILE / 8>(s, j0, rows, from, sl2);
        scores<HD, TILE / 8>(ga, vs, dp);
#pragma unroll
        for (int n = 0; n < TILE / 8; n++)
            for (int e = 0; e < 4; e++) {
                float p = exp2f(s[n][e] - L[e >> 1]);  // 0 where masked (−∞)
                dp[n][e] = p * (dp[n][e] - D[e >> 1]);
            }
        mix<HD, TILE / 16>(dp, ks, dq);
    }
    float sc[2] = {scale, scale};
    store_rows<HD>(dqkv + b * t * width + h * HD, width, rows, t, dq, sc);
    if (c == 0)
        for (int r = 0; r < 2; r++)
            if (rows[r] < t) {
                lse[(b * nh + h) * t + rows[r]] = L[r];
                dsum[(b * nh + h) * t + rows[r]] = D[r];
            }
}

// Backward, key side: grid (⌈T / MMA_ROWS⌉, nkv, B); the warp's 16 keys j are the rows, and
// the queries i ≥ j of their stories (of every query head sharing them) come in tiles of 16:
// sᵀ = k·qᵀ, pᵀ = 2^(sᵀ − L_i), dpᵀ = v·dyᵀ, dv_j += Σ_i pᵀ dy_i, dk_j += Σ_i pᵀ (dpᵀ − D_i) q_i / √hd.
template <int HD>
__device__ void attention_mma_backward_kv(const bf16* qkv, const bf16* dy, const unsigned* start, const float* lse, const float* dsum, bf16* dqkv, int t, int nh, int nkv, float scale) {
    const int TILE = 16, LD = HD + 8;
    bf16* kb = (bf16*)smem;       // the block's keys
    bf16* vb = kb + MMA_ROWS * LD;    // and values
    bf16* qs = vb + MMA_ROWS * LD;    // a tile of queries
    bf16* gs = qs + TILE * LD;        // their dy
    float* ls = (float*)(gs + TILE * LD);  // their L
    float* ds = ls + TILE;                 // and D
    int kh = blockIdx.y, group = nh / nkv, width = (nh + 2 * nkv) * HD, warp = threadIdx.x >> 5;
    int c = threadIdx.x & 3;
    long b = blockIdx.z;
    const bf16* row = qkv + b * t * width;
    const unsigned* st = start + b * t;
    int j_blk = blockIdx.x * MMA_ROWS, k0 = j_blk + warp * 16;
    int g = (threadIdx.x & 31) >> 2, keys[2] = {k0 + g, k0 + g + 8};
    int last = (j_blk + MMA_ROWS < t ? j_blk + MMA_ROWS : t) - 1;
    int warp_last = k0 + 15 < t ? k0 + 15 : t - 1;
    float sl2 = scale * LOG2E;
    load_tile<HD>(kb, MMA_ROWS, row + (nh + kh) * HD, width, j_blk, t);
    load_tile<HD>(vb, MMA_ROWS, row + (nh + nkv + kh) * HD, width, j_blk, t);
    float dk[HD / 8][4] = {}, dv[HD / 8][4] = {};
    for (int h = kh * group; h < (kh + 1) * group; h++) {
        const bf16* dyh = dy + (b * t * nh + h) * HD;
        for (int i0 = j_blk; i0 < t && (int)st[i0] <= last; i0 += TILE) {
            __syncthreads();
            load_tile<HD>(qs, TILE, row + h * HD, width, i0, t);
            load_tile<HD>(gs, TILE, dyh, (long)nh * HD, i0, t);
            if (threadIdx.x < TILE) {
                int i = i0 + threadIdx.x;
                ls[threadIdx.x] = i < t ? lse[(b * nh + h) * t + i] : 0.0f;
                ds[threadIdx.x] = i < t ? dsum[(b * nh + h) * t + i] : 0.0f;
            }
            __syncthreads();
            if (k0 >= t || i0 + TILE <= k0 || (int)st[i0] > warp_last) continue;  // none of its queries
            float s[TILE / 8][4] = {}, dp[TILE / 8][4] = {};
#pragma unroll
            for (int k = 0; k < HD / 16; k++) {
                unsigned ka[4], va[4];
                load_a(kb + warp * 16 * LD + 16 * k, LD, 16, ka);
                load_a(vb + warp * 16 * LD + 16 * k, LD, 16, va);
#pragma unroll
                for (int n = 0; n < TILE / 8; n++) {
                    unsigned bq[2], bg[2];
                    load_bt(qs + n * 8 * LD + 16 * k, LD, bq);
                    load_bt(gs + n * 8 * LD + 16 * k, LD, bg);
                    mma_16816(s[n], ka, bq);
                    mma_16816(dp[n], va, bg);
                }
            }
#pragma unroll
            for (int n = 0; n < TILE / 8; n++)
                for (int e = 0; e < 4; e++) {
                    int col = 8 * n + 2 * c + (e & 1), i = i0 + col, j = keys[e >> 1];
                    bool seen = i < t && j <= i && (int)st[i] <= j;
                    float p = seen ? exp2f(s[n][e] * sl2 - ls[col]) : 0.0f;
                    s[n][e] = p;
                    dp[n][e] = p * (dp[n][e] - ds[col]);
                }
            mix<HD, TILE / 16>(s, gs, dv);
            mix<HD, TILE / 16>(dp, qs, dk);
        }
    }
    float sc[2] = {scale, scale}, one[2] = {1.0f, 1.0f};
    store_rows<HD>(dqkv + b * t * width + (nh + kh) * HD, width, keys, t, dk, sc);
    store_rows<HD>(dqkv + b * t * width + (nh + nkv + kh) * HD, width, keys, t, dv, one);
}

#define ATTENTION_MMA(HD)                                                                          \
    extern "C" __global__ void attention_mma_forward_hd##HD(const bf16* qkv, const unsigned* start, bf16* y, int t, int nh, int nkv, float scale) { \
        attention_mma_forward<HD>(qkv, start, y, t, nh, nkv, scale);                              \
    }                                                                                              \
    extern "C" __global__ void attention_mma_backward_q_hd##HD(const bf16* qkv, const bf16* y, const bf16* dy, const unsigned* start, bf16* dqkv, float* lse, float* dsum, int t, int nh, int nkv, float scale) { \
        attention_mma_backward_q<HD>(qkv, y, dy, start, dqkv, lse, dsum, t, nh, nkv, scale);     \
    }                                                                                              \
    extern "C" __global__ void attention_mma_backward_kv_hd##HD(const bf16* qkv, const bf16* dy, const unsigned* start, const float* lse, const float* dsum, bf16* dqkv, int t, int nh, int nkv, float scale) { \
        attention_mma_backward_kv<HD>(qkv, dy, start, lse, dsum, dqkv, t, nh, nkv, scale);       \
    }
ATTENTION_MMA(64)
ATTENTION_MMA(128)

#endif  // compute capability 8.0
