// fused.cu's kernels over rows, run on the CPU through emulate.h with the launch shapes
// model/fused_cuda.rs gives them, against references computed here in double:
// - the norms (LayerNorm and RMSNorm: forward, backward for the input and for the gain): the
//   forward by its definition, the gradients by central finite differences of Σ dy ⊙ y, on rows of
//   70 numbers (lanes that take three columns and lanes that take two) over several blocks;
// - the column sums of the bias gradient;
// - the masked softmax of the composed attention and its backward, with a causal mask shared by
//   the batch and a document mask per batch row;
// - the cross-entropy, forward and backward, on rows of 1,000 logits, among them rows whose
//   maximum keeps growing or comes first, one that starts with −∞ logits, an ignored target and one
//   out of range.
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

static int check(const char* what, double err, double tol) {
    bool ok = err < tol;
    std::printf("%s: max error %.2e %s\n", what, err, ok ? "ok" : "FAILED");
    return ok ? 0 : 1;
}

// softmax(x + mask) over rows of tk, x (B, H, T, Tk), mask (B or 1, 1, T, Tk), and its backward
// dx = y ⊙ (dy − Σ dy ⊙ y), against double; one warp per row, blocks of four warps.
static int check_softmax(uint64_t& seed) {
    const int b = 2, h = 3, t = 5, tk = 70, n = b * h * t;
    std::vector<double> x(n * tk), dy(n * tk);
    for (auto& v : x) v = 3.0 * next_uniform(seed);
    for (auto& v : dy) v = next_uniform(seed);
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
            double m = -INFINITY, s = 0, dot = 0;
            for (int j = 0; j < tk; j++) m = std::max(m, x[row * tk + j] + mr[j]);
            for (int j = 0; j < tk; j++) s += std::exp(x[row * tk + j] + mr[j] - m);
            for (int j = 0; j < tk; j++) y[row * tk + j] = std::exp(x[row * tk + j] + mr[j] - m) / s;
            for (int j = 0; j < tk; j++) dot += y[row * tk + j] * dy[row * tk + j];
            for (int j = 0; j < tk; j++) dx[row * tk + j] = y[row * tk + j] * (dy[row * tk + j] - dot);
        }
        std::vector<float> xf(x.begin(), x.end()), mf(mask.begin(), mask.end()), dyf(dy.begin(), dy.end());
        std::vector<float> yf(n * tk, NAN), yin(y.begin(), y.end()), dxf(n * tk, NAN);
        unsigned blocks = (n * 32 + 127) / 128;
        launch(Dim3{blocks, 1, 1}, 128, [&] { masked_softmax_f32(xf.data(), mf.data(), yf.data(), n, h, t, tk, mb); });
        launch(Dim3{blocks, 1, 1}, 128, [&] { softmax_backward_f32(yin.data(), dyf.data(), dxf.data(), n, tk); });
        char what[96];
        std::snprintf(what, sizeof what, "masked softmax (%d rows of %d, mask batch %d)", n, tk, mb);
        failed += check(what, max_error(yf, y), 1e-6);
        std::snprintf(what, sizeof what, "softmax backward (mask batch %d)", mb);
        failed += check(what, max_error(dxf, dx), 1e-6);
    }
    return failed;
}

// Cross-entropy of rows of v logits: loss = logsumexp(x) − x[t], dx = (softmax(x) − onehot(t))·dl.
static int check_cross_entropy(uint64_t& seed) {
    const int n = 6, v = 1000;
    std::vector<double> x(n * v), dl(n);
    for (int r = 0; r < n; r++)
        for (int j = 0; j < v; j++)
            x[r * v + j] = r == 0 ? 0.01 * j : r == 1 ? -0.01 * j : 5.0 * next_uniform(seed);
    for (int j = 0; j < 300; j++) x[2 * v + j] = -INFINITY;  // a masked-out start of a row
    for (auto& d : dl) d = next_uniform(seed);
    std::vector<unsigned> t = {999, 3, 500, IGNORE, 7, (unsigned)v};  // an ignored row, one out of range
    std::vector<double> loss(n, 0.0), dx(n * v, 0.0);
    for (int r = 0; r < n; r++) {
        if (t[r] == IGNORE) continue;
        if (t[r] >= (unsigned)v) { loss[r] = NAN; continue; }
        double m = -INFINITY, s = 0;
        for (int j = 0; j < v; j++) m = std::max(m, x[r * v + j]);
        for (int j = 0; j < v; j++) s += std::exp(x[r * v + j] - m);
        loss[r] = std::log(s) + m - x[r * v + t[r]];
        for (int j = 0; j < v; j++) dx[r * v + j] = (std::exp(x[r * v + j] - m) / s - (j == (int)t[r])) * dl[r];
    }
    std::vector<float> xf(x.begin(), x.end()), dlf(dl.begin(), dl.end()), lossf(n, 12345.0f), dxf(n * v, NAN);
    launch(Dim3{n, 1, 1}, 256, [&] { cross_entropy_f32(xf.data(), t.data(), lossf.data(), v); });
    launch(Dim3{n, 1, 1}, 256, [&] { cross_entropy_backward_f32(xf.data(), t.data(), dlf.data(), dxf.data(), v); });
    // The out-of-range row must give NaN; compare the others.
    bool nan_ok = std::isnan(lossf[5]);
    lossf[5] = 0.0f;
    loss[5] = 0.0;
    int failed = check("cross-entropy forward (rows of 1,000)", max_error(lossf, loss), 1e-5);
    failed += check("cross-entropy backward", max_error(dxf, dx), 1e-6);
    std::printf("cross-entropy with a target out of range: %s\n", nan_ok ? "NaN, ok" : "not NaN, FAILED");
    return failed + !nan_ok;
}

int main() {
    const int n = 37, c = 70;
    const float eps = 1e-5f;
    uint64_t seed = 11;
    std::vector<double> x(n * c), dy(n * c), w(c);
    for (auto& v : x) v = 2.0 * next_uniform(seed) + 0.5;
    for (auto& v : dy) v = next_uniform(seed);
    for (auto& v : w) v = 1.0 + 0.5 * next_uniform(seed);
    std::vector<float> xf(x.begin(), x.end()), dyf(dy.begin(), dy.end()), wf(w.begin(), w.end());
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
        std::vector<float> yf(n * c, NAN), dxf(n * c, NAN);
        unsigned blocks = (n * 32 + 127) / 128;
        launch(Dim3{blocks, 1, 1}, 128, [&] { norm_forward_f32(xf.data(), wf.data(), yf.data(), n, c, rms, eps); });
        launch(Dim3{blocks, 1, 1}, 128, [&] {
            norm_backward_x_f32(xf.data(), wf.data(), dyf.data(), dxf.data(), n, c, rms, eps);
        });
        char what[96];
        std::snprintf(what, sizeof what, "%s forward (%d rows of %d)", name, n, c);
        failed += check(what, max_error(yf, y), 1e-5);
        std::snprintf(what, sizeof what, "%s backward, dx", name);
        failed += check(what, max_error(dxf, dx), 1e-4);
        // Backward for the gain: 3 blocks of 4 warps, so that rows stride over blocks and warps,
        // then the column sums of the partial sums.
        std::vector<float> partial(3 * c, NAN), dwf(c, NAN);
        launch(Dim3{3, 1, 1}, 128, [&] { norm_backward_w_f32(xf.data(), dyf.data(), partial.data(), n, c, rms, eps); });
        launch(Dim3{(c + 31) / 32, 1, 1}, 1024, [&] { sum_columns_f32(partial.data(), dwf.data(), 3, c); });
        std::snprintf(what, sizeof what, "%s backward, dw", name);
        failed += check(what, max_error(dwf, dw), 1e-4);
    }
    // The bias gradient: column sums of dy in chunks of rows, then the chunks' sums.
    std::vector<double> sums(c, 0.0);
    for (int r = 0; r < n; r++)
        for (int j = 0; j < c; j++) sums[j] += dy[r * c + j];
    const int chunks = 45;  // more than 32: the threads of sum_columns take several rows each
    std::vector<float> partial(chunks * c, NAN), out(c, NAN);
    launch(Dim3{1, chunks, 1}, 256, [&] { column_partial_sums_f32(dyf.data(), partial.data(), n, c); });
    launch(Dim3{(c + 31) / 32, 1, 1}, 1024, [&] { sum_columns_f32(partial.data(), out.data(), chunks, c); });
    failed += check("column sums (bias gradient)", max_error(out, sums), 1e-5);
    failed += check_softmax(seed);
    failed += check_cross_entropy(seed);
    return failed ? 1 : 0;
}
