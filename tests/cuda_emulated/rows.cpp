// fused.cu's kernels over rows, run on the CPU through emulate.h with the launch shapes
// model/fused_cuda.rs gives them, against references computed here in double. Each runs both
// ways it can read memory: 16 bytes at a time (rows or vectors that are a whole number of aligned
// packs) and one number at a time (the others), and in f32 and bf16 where the kernel has both.
// - the norms (LayerNorm and RMSNorm: forward, backward for the input and for the gain): the
//   forward by its definition, the gradients by central finite differences of Σ dy ⊙ y, on rows of
//   70 numbers (lanes that take three columns and lanes that take two) and of 160 (40 packs of 4
//   f32, or 20 of 8 bf16) over several blocks;
// - the column sums of the bias gradient, the sum of squares of the gradient norm, AdamW's
//   moments and its update of a weight, the embedding lookup and its backward;
// - GELU, forward and backward, and the bias add, in f32 and bf16;
// - the masked softmax of the composed attention and its backward, with a causal mask shared by
//   the batch and a document mask per batch row, on rows of 70 and 80;
// - the cross-entropy, forward and backward, in f32 and bf16, on rows of 5,000 logits and of
//   4,999 (a thread takes several packs or numbers of a row), among them rows whose maximum keeps
//   growing or comes first, one that starts with −∞ logits, an ignored target and one out of
//   range.
// bf16 results are held to the bound rounding allows (2⁻⁸ of each number).
// Exits non-zero on a mismatch. Built and run by scripts/cuda-kernels.sh.
#include <cstdio>
#include <cstdint>
#include "emulate.h"
#include "../../tinygpt-lib/src/model/fused.cu"

static double next_uniform(uint64_t& s) {
    s = s * 6364136223846793005ull + 1442695040888963407ull;
    return (double)(s >> 11) / 9007199254740992.0 * 2.0 - 1.0;
}

// y = norm(x) ⊙ w for one row, in double.
static std::vector<double> norm_row(const double* x, const std::vector<double>& w, int c, bool rms, double eps) {
    double m = 0, v = 0;
    if (!rms) {
        for (int j = 0; j < c; j++) m += x[j];
        m /= c;
    }
    for (int j = 0; j < c; j++) v += (x[j] - m) * (x[j] - m);
    double rstd = 1.0 / std::sqrt(v / c + eps);
    std::vector<double> y(c);
    for (int j = 0; j < c; j++) y[j] = (x[j] - m) * rstd * w[j];
    return y;
}

// The largest error, where NaN (a number a kernel did not write, or a wrong one) beats all.
static double max_error(const std::vector<float>& got, const std::vector<double>& want) {
    double e = 0;
    for (size_t i = 0; i < want.size(); i++) {
        double d = std::fabs(got[i] - want[i]);
        if (std::isnan(d) || d > e) e = d;
        if (std::isnan(e)) return INFINITY;
    }
    return e;
}

// The largest error relative to the wanted number (exact zeros must come out exactly).
static double max_relative_error(const std::vector<float>& got, const std::vector<double>& want) {
    double e = 0;
    for (size_t i = 0; i < want.size(); i++) {
        double d = std::fabs(got[i] - want[i]) / std::max(std::fabs(want[i]), 1e-30);
        if (std::isnan(d) || d > e) e = d;
        if (std::isnan(e)) return INFINITY;
    }
    return e;
}

// The largest error as a share of what rounding to T allows: |got − want| ≤ rel·|want| + abs.
static double max_share_of_bound(const std::vector<float>& got, const std::vector<double>& want, double rel, double abs) {
    double e = 0;
    for (size_t i = 0; i < want.size(); i++) {
        double d = std::fabs(got[i] - want[i]) / (rel * std::fabs(want[i]) + abs);
        if (std::isnan(d) || d > e) e = d;
        if (std::isnan(e)) return INFINITY;
    }
    return e;
}

static int check(const char* what, double err, double tol) {
    bool ok = err < tol;
    std::printf("%s: max error %.2e %s\n", what, err, ok ? "ok" : "FAILED");
    return ok ? 0 : 1;
}

// x stored as T (f32 or bf16); x itself becomes the numbers as stored, for the references.
template <typename T>
static std::vector<T> stored_as(std::vector<double>& x) {
    std::vector<T> t(x.size());
    for (size_t i = 0; i < x.size(); i++) {
        store(t.data(), (long)i, (float)x[i]);
        x[i] = load(t.data(), (long)i);
    }
    return t;
}

template <typename T>
static std::vector<float> floats(const std::vector<T>& t) {
    std::vector<float> f(t.size());
    for (size_t i = 0; i < t.size(); i++) f[i] = load(t.data(), (long)i);
    return f;
}

// NaN as T: what a kernel must overwrite.
template <typename T>
static std::vector<T> nans(size_t n) {
    std::vector<T> t(n);
    for (size_t i = 0; i < n; i++) store(t.data(), (long)i, NAN);
    return t;
}

// The error of a result stored as T: for f32 the largest difference, to be held to `tol`; for
// bf16, rounding to 2⁻⁸ of each number allowed (plus `tol`), as a share of that bound (≤ 1
// passes). A pack with its halves swapped is off by far more.
template <typename T>
static int check_as(const char* what, const std::vector<T>& got, const std::vector<double>& want, double tol) {
    if (sizeof(T) == 4) return check(what, max_error(floats(got), want), tol);
    char bound[128];
    std::snprintf(bound, sizeof bound, "%s, share of the bf16 bound", what);
    return check(bound, max_share_of_bound(floats(got), want, 1.0 / 256, tol), 1.0);
}

// softmax(x + mask) over rows of tk, x (B, H, T, Tk), mask (B or 1, 1, T, Tk), and its backward
// dx = y ⊙ (dy − Σ dy ⊙ y), in T (f32 or bf16), against double; one warp per row, blocks of four
// warps.
template <typename T>
static int check_softmax(uint64_t& seed, int tk, const char* type) {
    const int b = 2, h = 3, t = 5, n = b * h * t;
    std::vector<double> x(n * tk), dy(n * tk);
    for (auto& v : x) v = 3.0 * next_uniform(seed);
    for (auto& v : dy) v = next_uniform(seed);
    std::vector<T> xt = stored_as<T>(x), dyt = stored_as<T>(dy);
    int failed = 0;
    for (int mb : {1, b}) {
        // The row i of the mask lets i see the columns up to tk − t + i (a causal mask past 65
        // cached columns), and, per batch row (mb = b), not the columns below 3·bi.
        std::vector<double> mask(mb * t * tk);
        for (int bi = 0; bi < mb; bi++)
            for (int i = 0; i < t; i++)
                for (int j = 0; j < tk; j++)
                    mask[(bi * t + i) * tk + j] = j <= tk - t + i && j >= 3 * bi * (mb > 1) ? 0.0 : -INFINITY;
        std::vector<double> y(n * tk), dx(n * tk);
        for (int row = 0; row < n; row++) {
            int bi = row / (h * t), i = row % t;
            const double* mr = &mask[((mb == 1 ? 0 : bi) * t + i) * tk];
            double m = -INFINITY, s = 0;
            for (int j = 0; j < tk; j++) m = std::max(m, x[row * tk + j] + mr[j]);
            for (int j = 0; j < tk; j++) s += std::exp(x[row * tk + j] + mr[j] - m);
            for (int j = 0; j < tk; j++) y[row * tk + j] = std::exp(x[row * tk + j] + mr[j] - m) / s;
        }
        // The backward takes the probabilities as stored in T, and so does its reference.
        std::vector<double> y_in = y;
        std::vector<T> mt = stored_as<T>(mask), yin = stored_as<T>(y_in), yt = nans<T>(n * tk), dxt = nans<T>(n * tk);
        for (int row = 0; row < n; row++) {
            double dot = 0;
            for (int j = 0; j < tk; j++) dot += y_in[row * tk + j] * dy[row * tk + j];
            for (int j = 0; j < tk; j++) dx[row * tk + j] = y_in[row * tk + j] * (dy[row * tk + j] - dot);
        }
        unsigned blocks = (n * 32 + 127) / 128;
        launch(Dim3{blocks, 1, 1}, 128, [&] { masked_softmax(xt.data(), mt.data(), yt.data(), n, h, t, tk, mb); });
        launch(Dim3{blocks, 1, 1}, 128, [&] { softmax_backward(yin.data(), dyt.data(), dxt.data(), n, tk); });
        char what[96];
        std::snprintf(what, sizeof what, "masked softmax %s (%d rows of %d, mask batch %d)", type, n, tk, mb);
        failed += check_as(what, yt, y, 1e-6);
        std::snprintf(what, sizeof what, "softmax backward %s (rows of %d, mask batch %d)", type, tk, mb);
        failed += check_as(what, dxt, dx, 1e-6);
    }
    return failed;
}

// Cross-entropy of rows of v logits: loss = logsumexp(x) − x[t], dx = (softmax(x) − onehot(t))·dl,
// the backward from the forward's own losses, as on the GPU. T is float or bf16 (the reference
// takes the logits as rounded to T); v a multiple of 16 bytes' worth of T (rows read 16 bytes at
// a time) or not (a number at a time).
template <typename T, typename F, typename B>
static int check_cross_entropy(uint64_t& seed, int v, const char* type, F forward, B backward) {
    const int n = 6;
    std::vector<T> x(n * v);
    std::vector<double> dl(n);
    // Row 0's maximum grows to 150, far above row 1's (0, first): a block that read a maximum left
    // in shared memory by the block before would lose row 1's sum to underflow.
    for (int r = 0; r < n; r++)
        for (int j = 0; j < v; j++) {
            float a = r == 0 ? 0.03f * j : r == 1 ? -0.01f * j : 5.0f * (float)next_uniform(seed);
            store(x.data(), r * v + j, j < 300 && r == 2 ? NEG_INF : a);  // row 2 starts with −∞ logits
        }
    for (auto& d : dl) d = next_uniform(seed);
    std::vector<unsigned> t = {(unsigned)v - 1, 3, 500, IGNORE, 7, (unsigned)v};  // an ignored row, one out of range
    std::vector<double> loss(n, 0.0), dx(n * v, 0.0);
    for (int r = 0; r < n; r++) {
        if (t[r] == IGNORE) continue;
        if (t[r] >= (unsigned)v) { loss[r] = NAN; continue; }
        double m = -INFINITY, s = 0;
        auto xr = [&](int j) { return (double)load(x.data(), r * v + j); };
        for (int j = 0; j < v; j++) m = std::max(m, xr(j));
        for (int j = 0; j < v; j++) s += std::exp(xr(j) - m);
        loss[r] = std::log(s) + m - xr(t[r]);
        for (int j = 0; j < v; j++) dx[r * v + j] = (std::exp(xr(j) - m) / s - (j == (int)t[r])) * dl[r];
    }
    std::vector<float> dlf(dl.begin(), dl.end()), lossf(n, 12345.0f), dxf(n * v);
    std::vector<T> d(n * v);
    for (int i = 0; i < n * v; i++) store(d.data(), i, NAN);
    launch(Dim3{n, 1, 1}, 256, [&] { forward(x.data(), t.data(), lossf.data(), v); });
    launch(Dim3{n, 1, 1}, 256, [&] { backward(x.data(), t.data(), lossf.data(), dlf.data(), d.data(), v); });
    for (int i = 0; i < n * v; i++) dxf[i] = load(d.data(), i);
    // The out-of-range row must give NaN; compare the others.
    bool nan_ok = std::isnan(lossf[5]);
    lossf[5] = 0.0f;
    loss[5] = 0.0;
    bool packed = v * sizeof(T) % 16 == 0;
    char what[96];
    std::snprintf(what, sizeof what, "cross-entropy %s forward (rows of %d, %s)", type, v, packed ? "16-byte loads" : "one number at a time");
    int failed = check(what, max_error(lossf, loss), 1e-5);
    // Relative: most of the gradient is tiny probabilities, which an absolute error would not see.
    std::snprintf(what, sizeof what, "cross-entropy %s backward (rows of %d), relative", type, v);
    failed += check(what, max_relative_error(dxf, dx), sizeof(T) == 4 ? 1e-5 : 5e-3);  // bf16 rounds to 2⁻⁸ relative
    std::printf("cross-entropy with a target out of range: %s\n", nan_ok ? "NaN, ok" : "not NaN, FAILED");
    if (packed && (((uintptr_t)x.data() | (uintptr_t)d.data()) & 15)) {
        std::printf("the test's rows are not 16-byte aligned: the packed path was not run, FAILED\n");
        return failed + 1;
    }
    return failed + !nan_ok;
}

static int check_cross_entropy(uint64_t& seed) {
    int failed = 0;
    for (int v : {5000, 4999}) {  // several packs (or numbers) per thread: the running maximum grows
        failed += check_cross_entropy<float>(seed, v, "f32", cross_entropy_f32, cross_entropy_backward_f32);
        failed += check_cross_entropy<bf16>(seed, v, "bf16", cross_entropy_bf16, cross_entropy_backward_bf16);
    }
    return failed;
}

// Σ x² in two launches as fused_cuda.rs makes them (blocks of 256 over 4,096 numbers or more,
// then one block of 1,024), from an aligned start (16-byte packs, then a tail) and an odd one.
static int check_sum_of_squares(uint64_t& seed) {
    const long n = 10003;
    std::vector<float> x(n + 1);
    for (auto& v : x) v = (float)next_uniform(seed);
    int failed = 0;
    for (int from : {0, 1}) {
        const float* xs = x.data() + from;
        double want = 0;
        for (long i = 0; i < n; i++) want += (double)xs[i] * xs[i];
        unsigned blocks = (unsigned)((n + 4095) / 4096);
        std::vector<float> partial(blocks, NAN), out(1, NAN);
        launch(Dim3{blocks, 1, 1}, 256, [&] { sum_squares_partial(xs, partial.data(), n); });
        launch(Dim3{1, 1, 1}, 1024, [&] { sum_in_order(partial.data(), out.data(), (int)blocks); });
        char what[96];
        std::snprintf(what, sizeof what, "sum of squares (%ld numbers from offset %d), relative", n, from);
        failed += check(what, std::fabs(out[0] - want) / want, 1e-6);
    }
    return failed;
}

// The norms on rows of c numbers in T (70: a number at a time; 160: 40 packs of 4 f32 or 20 of 8
// bf16, lanes taking two or one), forward and both gradients; the gain stays f32, as in the model.
template <typename T>
static int check_norms(uint64_t& seed, int c, const char* type) {
    const int n = 37;
    const float eps = 1e-5f;
    std::vector<double> x(n * c), dy(n * c), w(c);
    for (auto& v : x) v = 2.0 * next_uniform(seed) + 0.5;
    for (auto& v : dy) v = next_uniform(seed);
    for (auto& v : w) v = 1.0 + 0.5 * next_uniform(seed);
    std::vector<T> xt = stored_as<T>(x), dyt = stored_as<T>(dy);
    std::vector<float> wf = stored_as<float>(w);
    int failed = 0;
    for (int rms = 0; rms < 2; rms++) {
        const char* name = rms ? "RMSNorm" : "LayerNorm";
        // References: y; dx by central differences of Σ dy ⊙ y; dw = Σ_rows dy ⊙ x̂ (= ∂/∂w).
        std::vector<double> y(n * c), dx(n * c), dw(c, 0.0);
        std::vector<double> ones(c, 1.0);
        for (int r = 0; r < n; r++) {
            const double* xr = &x[r * c];
            auto yr = norm_row(xr, w, c, rms, eps);
            auto xh = norm_row(xr, ones, c, rms, eps);
            for (int j = 0; j < c; j++) {
                y[r * c + j] = yr[j];
                dw[j] += dy[r * c + j] * xh[j];
            }
            std::vector<double> xp(xr, xr + c);
            for (int j = 0; j < c; j++) {
                const double h = 1e-6;
                double keep = xp[j], up = 0, down = 0;
                xp[j] = keep + h;
                auto a = norm_row(xp.data(), w, c, rms, eps);
                xp[j] = keep - h;
                auto b = norm_row(xp.data(), w, c, rms, eps);
                xp[j] = keep;
                for (int k = 0; k < c; k++) {
                    up += dy[r * c + k] * a[k];
                    down += dy[r * c + k] * b[k];
                }
                dx[r * c + j] = (up - down) / (2 * h);
            }
        }
        // Forward and backward for x: a warp per row, blocks of four warps (fused_cuda::warps).
        std::vector<T> yt = nans<T>(n * c), dxt = nans<T>(n * c);
        unsigned blocks = (n * 32 + 127) / 128;
        launch(Dim3{blocks, 1, 1}, 128, [&] { norm_forward(xt.data(), wf.data(), yt.data(), n, c, rms, eps); });
        launch(Dim3{blocks, 1, 1}, 128, [&] {
            norm_backward_x(xt.data(), wf.data(), dyt.data(), dxt.data(), n, c, rms, eps);
        });
        char what[96];
        std::snprintf(what, sizeof what, "%s %s forward (%d rows of %d)", name, type, n, c);
        failed += check_as(what, yt, y, 1e-5);
        std::snprintf(what, sizeof what, "%s %s backward, dx", name, type);
        failed += check_as(what, dxt, dx, 1e-4);
        // Backward for the gain (f32): 3 blocks of 4 warps, so that rows stride over blocks and
        // warps, then the column sums of the partial sums.
        std::vector<float> partial(3 * c, NAN), dwf(c, NAN);
        launch(Dim3{3, 1, 1}, 128, [&] { norm_backward_w(xt.data(), dyt.data(), partial.data(), n, c, rms, eps); });
        launch(Dim3{(unsigned)(c + 31) / 32, 1, 1}, 1024, [&] { sum_columns_f32(partial.data(), dwf.data(), 3, c); });
        std::snprintf(what, sizeof what, "%s %s backward, dw", name, type);
        failed += check(what, max_error(dwf, dw), 1e-4);
    }
    // The bias gradient: column sums of dy in chunks of rows, then the chunks' sums.
    std::vector<double> sums(c, 0.0);
    for (int r = 0; r < n; r++)
        for (int j = 0; j < c; j++) sums[j] += dy[r * c + j];
    const int chunks = 45;  // more than 32: the threads of sum_columns take several rows each
    std::vector<float> partial(chunks * c, NAN);
    std::vector<T> out = nans<T>(c);
    launch(Dim3{1, chunks, 1}, 256, [&] { column_partial_sums(dyt.data(), partial.data(), n, c); });
    launch(Dim3{(unsigned)(c + 31) / 32, 1, 1}, 1024, [&] { sum_columns(partial.data(), out.data(), chunks, c); });
    char what[96];
    std::snprintf(what, sizeof what, "column sums %s (bias gradient, rows of %d)", type, c);
    failed += check_as(what, out, sums, 1e-5);
    return failed;
}

// GELU forward and backward and the bias add, element-wise over the grid (blocks of 256 as
// fused_cuda.rs launches them; 2 blocks, so that threads stride), in T: from an aligned start
// (packs, then a tail of 3) and from one number on (a number at a time); the bias on rows of 16
// (packs) and of 10 (not). Errors are given as a share of what rounding allows (≤ 1 passes).
template <typename T>
static int check_elementwise(uint64_t& seed, const char* type) {
    const long n = 1123;
    std::vector<T> xt(n), dyt(n), bt(16);
    std::vector<double> x(n), dy(n), b(16);  // the same numbers, as rounded to T
    auto put = [&](std::vector<T>& t, std::vector<double>& v, double a) {
        for (size_t i = 0; i < t.size(); i++) {
            store(t.data(), (long)i, (float)(a * next_uniform(seed)));
            v[i] = load(t.data(), (long)i);
        }
    };
    put(xt, x, 3.0);
    put(dyt, dy, 1.0);
    put(bt, b, 1.0);
    auto got = [](const std::vector<T>& t) {
        std::vector<float> f(t.size());
        for (size_t i = 0; i < t.size(); i++) f[i] = load(t.data(), (long)i);
        return f;
    };
    auto cdf = [](double a) { return 0.5 * (1.0 + std::erf(a / std::sqrt(2.0))); };
    auto pdf = [](double a) { return std::exp(-0.5 * a * a) / std::sqrt(2.0 * M_PI); };
    // Rounding to bf16 errs by up to 2⁻⁸ of the number; f32 arithmetic by a few units of 2⁻²⁴.
    double rel = sizeof(T) == 4 ? 1e-6 : 1.0 / 256 + 1e-5, abs = 1e-6;
    auto error = [&](const std::vector<T>& y, const std::vector<double>& want) {
        return max_share_of_bound(got(y), want, rel, abs);
    };
    int failed = 0;
    char what[96];
    for (int from : {0, 1}) {
        long m = n - from;
        std::vector<T> y(m), dx(m);
        std::vector<double> y_ref(m), dx_ref(m);
        for (long i = 0; i < m; i++) {
            double a = x[i + from];
            y_ref[i] = a * cdf(a);
            dx_ref[i] = dy[i + from] * (cdf(a) + a * pdf(a));
        }
        launch(Dim3{2, 1, 1}, 256, [&] { gelu_forward(xt.data() + from, y.data(), m); });
        launch(Dim3{2, 1, 1}, 256, [&] { gelu_backward(xt.data() + from, dyt.data() + from, dx.data(), m); });
        std::snprintf(what, sizeof what, "GELU %s (%ld numbers from offset %d), share of the bound", type, m, from);
        failed += check(what, error(y, y_ref), 1.0);
        std::snprintf(what, sizeof what, "GELU %s backward (from offset %d)", type, from);
        failed += check(what, error(dx, dx_ref), 1.0);
    }
    for (int c : {16, 10}) {
        long m = 1120;  // 70 rows of 16, 112 of 10
        std::vector<T> y(m);
        std::vector<double> y_ref(m);
        for (long i = 0; i < m; i++) y_ref[i] = x[i] + b[i % c];
        launch(Dim3{2, 1, 1}, 256, [&] { add_bias(xt.data(), bt.data(), y.data(), m, c); });
        std::snprintf(what, sizeof what, "bias add %s (rows of %d)", type, c);
        failed += check(what, error(y, y_ref), 1.0);
    }
    return failed;
}

// AdamW's moments of all weights at once, [m; v] (2, n), against double.
static int check_adamw_moments(uint64_t& seed) {
    const long n = 1003;
    std::vector<float> mv(2 * n), g(n);
    for (auto& x : mv) x = (float)next_uniform(seed);
    for (long i = n; i < 2 * n; i++) mv[i] *= mv[i];  // second moments are squares
    for (auto& x : g) x = (float)next_uniform(seed);
    std::vector<double> want(2 * n);
    const double beta1 = 0.9, beta2 = 0.95, scale = 0.7;
    for (long i = 0; i < n; i++) {
        double x = scale * g[i];
        want[i] = beta1 * mv[i] + (1 - beta1) * x;
        want[n + i] = beta2 * mv[n + i] + (1 - beta2) * x * x;
    }
    launch(Dim3{2, 1, 1}, 256, [&] { adamw_moments(mv.data(), g.data(), n, 0.9f, 0.95f, 0.7f); });
    return check("AdamW moments ([m; v] of 1,003 numbers)", max_error(mv, want), 1e-6);
}

// AdamW's update of one weight from its moments, against double.
static int check_adamw_update(uint64_t& seed) {
    const long n = 1003;
    std::vector<float> theta(n), m(n), v(n);
    for (long i = 0; i < n; i++) {
        theta[i] = (float)next_uniform(seed);
        m[i] = (float)next_uniform(seed) * 0.1f;
        v[i] = m[i] * m[i] * (float)(1.5 + next_uniform(seed));
    }
    const float decay = 0.99f, step = 0.01f, bias2_sqrt = 0.3f, eps = 1e-8f;
    std::vector<double> want(n);
    for (long i = 0; i < n; i++)
        want[i] = (double)theta[i] * decay - (double)step * (m[i] / (std::sqrt((double)v[i]) / bias2_sqrt + eps));
    launch(Dim3{2, 1, 1}, 256, [&] { adamw_update(theta.data(), m.data(), v.data(), n, decay, step, bias2_sqrt, eps); });
    return check("AdamW update (1,003 numbers)", max_error(theta, want), 1e-6);
}

// The embedding lookup and its backward (rows of a table by id; gradients added into the rows
// of repeated ids), with two ids outside the table: NaN rows forward, nothing backward.
static int check_embedding(uint64_t& seed) {
    const int rows = 7, c = 10;
    const long n = 20;
    std::vector<float> table(rows * c), dy(n * c), out(n * c, 12345.0f), dtable(rows * c, 0.0f);
    for (auto& x : table) x = (float)next_uniform(seed);
    for (auto& x : dy) x = (float)next_uniform(seed);
    std::vector<unsigned> ids(n);
    for (long i = 0; i < n; i++) ids[i] = (unsigned)(i * 3 % rows);  // every id about three times
    ids[5] = rows;
    ids[11] = 0xffffffffu;
    std::vector<double> want(n * c), dwant(rows * c, 0.0);
    for (long i = 0; i < n; i++)
        for (int j = 0; j < c; j++) {
            bool in = ids[i] < (unsigned)rows;
            want[i * c + j] = in ? table[ids[i] * c + j] : NAN;
            if (in) dwant[ids[i] * c + j] += dy[i * c + j];
        }
    launch(Dim3{1, 1, 1}, 128, [&] { embedding_forward(table.data(), ids.data(), out.data(), n, c, rows); });
    launch(Dim3{1, 1, 1}, 128, [&] { embedding_backward(ids.data(), dy.data(), dtable.data(), n, c, rows); });
    bool nan_ok = true;
    for (long i : {5L, 11L})
        for (int j = 0; j < c; j++) {
            nan_ok = nan_ok && std::isnan(out[i * c + j]);
            out[i * c + j] = 0.0f;
            want[i * c + j] = 0.0;
        }
    int failed = check("embedding forward (20 ids, 2 outside the table)", max_error(out, want), 1e-12);  // copies: exact
    failed += check("embedding backward (repeated ids added)", max_error(dtable, dwant), 1e-6);
    std::printf("embedding rows of ids outside the table: %s\n", nan_ok ? "NaN, ok" : "not NaN, FAILED");
    return failed + !nan_ok;
}

static int checks() {
    uint64_t seed = 11;
    int failed = 0;
    for (int c : {70, 160}) failed += check_norms<float>(seed, c, "f32") + check_norms<bf16>(seed, c, "bf16");
    failed += check_elementwise<float>(seed, "f32");
    failed += check_elementwise<bf16>(seed, "bf16");
    for (int tk : {70, 80})  // a number at a time, or packs of 4 f32 or 8 bf16
        failed += check_softmax<float>(seed, tk, "f32") + check_softmax<bf16>(seed, tk, "bf16");
    failed += check_cross_entropy(seed);
    failed += check_sum_of_squares(seed);
    failed += check_adamw_moments(seed) + check_adamw_update(seed);
    failed += check_embedding(seed);
    return failed;
}

int main() { return both_orders(checks) ? 1 : 0; }
