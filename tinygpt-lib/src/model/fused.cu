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

// loss_i = logsumexp(x_i) − x_i[t_i] (0 where t_i is IGNORE); x: (N, V) f32 or bf16, loss f32.
template <typename T>
__device__ void cross_entropy(const T* x, const unsigned int* targets, float* loss, int v) {
    long row = blockIdx.x, r = row * (long)v;
    unsigned int t = targets[row];
    if (t == IGNORE) { if (threadIdx.x == 0) loss[row] = 0.0f; return; }
    if (t >= (unsigned int)v) { if (threadIdx.x == 0) loss[row] = __int_as_float(0x7fc00000); return; }  // NaN
    float mx = NEG_INF;
    for (int j = threadIdx.x; j < v; j += blockDim.x) mx = fmaxf(mx, load(x, r + j));
    mx = block_max(mx);
    float s = 0.0f;
    for (int j = threadIdx.x; j < v; j += blockDim.x) s += __expf(load(x, r + j) - mx);
    s = block_sum(s);
    if (threadIdx.x == 0) loss[row] = logf(s) + mx - load(x, r + t);
}

// dx_i = (softmax(x_i) − onehot(t_i)) · dloss_i (0 where t_i is IGNORE); dx in x's dtype.
template <typename T>
__device__ void cross_entropy_backward(const T* x, const unsigned int* targets, const float* dloss, T* dx, int v) {
    long row = blockIdx.x, r = row * (long)v;
    unsigned int t = targets[row];
    if (t == IGNORE || t >= (unsigned int)v) { for (int j = threadIdx.x; j < v; j += blockDim.x) store(dx, r + j, 0.0f); return; }
    float mx = NEG_INF;
    for (int j = threadIdx.x; j < v; j += blockDim.x) mx = fmaxf(mx, load(x, r + j));
    mx = block_max(mx);
    float s = 0.0f;
    for (int j = threadIdx.x; j < v; j += blockDim.x) s += __expf(load(x, r + j) - mx);
    float g = dloss[row] / block_sum(s);
    float d = dloss[row];
    for (int j = threadIdx.x; j < v; j += blockDim.x)
        store(dx, r + j, __expf(load(x, r + j) - mx) * g - (j == (int)t ? d : 0.0f));
}

extern "C" __global__ void cross_entropy_f32(const float* x, const unsigned int* t, float* loss, int v) {
    cross_entropy(x, t, loss, v);
}
extern "C" __global__ void cross_entropy_bf16(const bf16* x, const unsigned int* t, float* loss, int v) {
    cross_entropy(x, t, loss, v);
}
extern "C" __global__ void cross_entropy_backward_f32(const float* x, const unsigned int* t, const float* dl, float* dx, int v) {
    cross_entropy_backward(x, t, dl, dx, v);
}
extern "C" __global__ void cross_entropy_backward_bf16(const bf16* x, const unsigned int* t, const float* dl, bf16* dx, int v) {
    cross_entropy_backward(x, t, dl, dx, v);
}

// LayerNorm (rms = 0) and RMSNorm (rms = 1) of rows of `c`; x, y, dy, dx in T, the gain w in f32.
// See model/fused_norm.rs for the formulas. The row's statistics are recomputed in backward.
template <typename T>
__device__ void row_stats(const T* x, long r, int c, int rms, float eps, float* mean, float* rstd) {
    float m = 0.0f;
    if (!rms) {
        for (int j = threadIdx.x; j < c; j += blockDim.x) m += load(x, r + j);
        m = block_sum(m) / c;
    }
    float v = 0.0f;
    for (int j = threadIdx.x; j < c; j += blockDim.x) { float d = load(x, r + j) - m; v += d * d; }
    v = block_sum(v) / c;
    *mean = m;
    *rstd = rsqrtf(v + eps);
}

template <typename T>
__device__ void norm_forward(const T* x, const float* w, T* y, int c, int rms, float eps) {
    long r = (long)blockIdx.x * c;
    float mean, rstd;
    row_stats(x, r, c, rms, eps, &mean, &rstd);
    for (int j = threadIdx.x; j < c; j += blockDim.x) store(y, r + j, (load(x, r + j) - mean) * rstd * w[j]);
}

template <typename T>
__device__ void norm_backward_x(const T* x, const float* w, const T* dy, T* dx, int c, int rms, float eps) {
    long r = (long)blockIdx.x * c;
    float mean, rstd;
    row_stats(x, r, c, rms, eps, &mean, &rstd);
    float sg = 0.0f, sgx = 0.0f;
    for (int j = threadIdx.x; j < c; j += blockDim.x) {
        float g = load(dy, r + j) * w[j];
        sg += g;
        sgx += g * (load(x, r + j) - mean) * rstd;
    }
    sg = rms ? 0.0f : block_sum(sg) / c;
    sgx = block_sum(sgx) / c;
    for (int j = threadIdx.x; j < c; j += blockDim.x) {
        float xh = (load(x, r + j) - mean) * rstd;
        store(dx, r + j, rstd * (load(dy, r + j) * w[j] - sg - xh * sgx));
    }
}

// Partial sums of dy ⊙ x̂ over the rows blockIdx.x, blockIdx.x + gridDim.x, …: (gridDim.x, c) f32.
// Each thread owns the columns j ≡ threadIdx.x (mod blockDim.x) of the shared accumulator.
template <typename T>
__device__ void norm_backward_w(const T* x, const T* dy, float* partial, int n, int c, int rms, float eps) {
    extern __shared__ float acc[];
    for (int j = threadIdx.x; j < c; j += blockDim.x) acc[j] = 0.0f;
    for (long row = blockIdx.x; row < n; row += gridDim.x) {
        long r = row * c;
        float mean, rstd;
        row_stats(x, r, c, rms, eps, &mean, &rstd);
        for (int j = threadIdx.x; j < c; j += blockDim.x) acc[j] += load(dy, r + j) * (load(x, r + j) - mean) * rstd;
    }
    for (int j = threadIdx.x; j < c; j += blockDim.x) partial[(long)blockIdx.x * c + j] = acc[j];
}

// out[j] = Σ_i partial[i, j] over `n` rows of `c`: one thread per column.
template <typename T>
__device__ void sum_columns(const float* partial, T* out, int n, int c) {
    int j = blockIdx.x * blockDim.x + threadIdx.x;
    if (j >= c) return;
    float s = 0.0f;
    for (int i = 0; i < n; i++) s += partial[(long)i * c + j];
    store(out, j, s);
}
extern "C" __global__ void sum_columns_f32(const float* p, float* out, int n, int c) { sum_columns(p, out, n, c); }
extern "C" __global__ void sum_columns_bf16(const float* p, bf16* out, int n, int c) { sum_columns(p, out, n, c); }

// The bias of a linear layer: y = x + b row by row, x (N, C), b (C); backward db = Σ_rows dy, in
// two steps: blockIdx.y sums its strided set of rows into partial[blockIdx.y, :] (neighbouring
// threads read neighbouring columns: coalesced), then sum_columns adds the partial sums.
template <typename T>
__device__ void add_bias(const T* x, const T* b, T* y, long n, int c) {
    for (long i = (long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (long)gridDim.x * blockDim.x)
        store(y, i, load(x, i) + load(b, i % c));
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

extern "C" __global__ void norm_forward_f32(const float* x, const float* w, float* y, int c, int rms, float eps) {
    norm_forward(x, w, y, c, rms, eps);
}
extern "C" __global__ void norm_forward_bf16(const bf16* x, const float* w, bf16* y, int c, int rms, float eps) {
    norm_forward(x, w, y, c, rms, eps);
}
extern "C" __global__ void norm_backward_x_f32(const float* x, const float* w, const float* dy, float* dx, int c, int rms, float eps) {
    norm_backward_x(x, w, dy, dx, c, rms, eps);
}
extern "C" __global__ void norm_backward_x_bf16(const bf16* x, const float* w, const bf16* dy, bf16* dx, int c, int rms, float eps) {
    norm_backward_x(x, w, dy, dx, c, rms, eps);
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
    for (long i = (long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (long)gridDim.x * blockDim.x) {
        float a = load(x, i);
        store(y, i, a * gelu_cdf(a));
    }
}

template <typename T>
__device__ void gelu_backward(const T* x, const T* dy, T* dx, long n) {
    for (long i = (long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (long)gridDim.x * blockDim.x) {
        float a = load(x, i);
        store(dx, i, load(dy, i) * (gelu_cdf(a) + a * gelu_pdf(a)));
    }
}

extern "C" __global__ void gelu_forward_f32(const float* x, float* y, long n) { gelu_forward(x, y, n); }
extern "C" __global__ void gelu_forward_bf16(const bf16* x, bf16* y, long n) { gelu_forward(x, y, n); }
extern "C" __global__ void gelu_backward_f32(const float* x, const float* dy, float* dx, long n) { gelu_backward(x, dy, dx, n); }
extern "C" __global__ void gelu_backward_bf16(const bf16* x, const bf16* dy, bf16* dx, long n) { gelu_backward(x, dy, dx, n); }

// AdamW in place (train/adamw_fused.rs): m ← β·m + (1−β)·(s·g), or (s·g)² when `square`;
// θ ← θ·decay − step · m / (√v / bias2_sqrt + ε). f32 master weights and moments.
extern "C" __global__ void adamw_moment(float* m, const float* g, long n, float beta, float scale, int square) {
    for (long i = (long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (long)gridDim.x * blockDim.x) {
        float x = scale * g[i];
        if (square) x = x * x;
        m[i] = beta * m[i] + (1.0f - beta) * x;
    }
}

extern "C" __global__ void adamw_update(float* theta, const float* m, const float* v, long n, float decay, float step, float bias2_sqrt, float eps) {
    for (long i = (long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (long)gridDim.x * blockDim.x)
        theta[i] = theta[i] * decay - step * (m[i] / (sqrtf(v[i]) / bias2_sqrt + eps));
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
