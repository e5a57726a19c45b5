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

// Document-masked causal attention (model/fused_attention.rs), flash style: the (T, T) scores
// are never stored. qkv is c_attn's output (B, T, (nh + 2·nkv)·hd): token i's query head h at
// h·hd, key head kh at (nh + kh)·hd, value head at (nh + nkv + kh)·hd; query head h uses key and
// value head h / (nh / nkv). Token i sees the keys start[b·T + i] ..= i (its own story).
// One warp per query (forward, backward_q) or per key (backward_kv); lane l holds the numbers
// l, l + 32, … of a head (hd ≤ 32·ATT_E). Scores, softmax and sums in f32.
#define ATT_E 8

__device__ __forceinline__ float warp_sum(float v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

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
    long w = ((long)blockIdx.x * blockDim.x + threadIdx.x) >> 5;
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
    long w = ((long)blockIdx.x * blockDim.x + threadIdx.x) >> 5;
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
    long w = ((long)blockIdx.x * blockDim.x + threadIdx.x) >> 5;
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
