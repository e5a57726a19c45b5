// fused.cu's document-masked attention kernels (forward, backward_q, backward_kv), run on the
// CPU through emulate.h, against dense attention computed here in double: the outputs and the
// gradients of Σ y ⊙ w with respect to qkv. The warp-per-item kernels in f32 and bf16, for
// grouped heads, heads whose size is not a multiple of 32, and stories that start mid-row; the
// tensor-core ones (bf16, heads of 64 and 128) on rows longer than their tiles, with stories that
// cross tile boundaries. Exits non-zero on a mismatch.
// Built and run by scripts/cuda-kernels.sh.
#include <cstdio>
#include <cstdint>
#include "emulate.h"
#include "../../tinygpt-lib/src/model/fused.cu"

struct Case {
    int b, t, nh, nkv, hd;
    int story;  // a story starts at i when (i·(b + 3) + b) % story == 0
};

// The larger error, where NaN (a number a kernel did not write, or a wrong one) beats all.
static double worst(double e, double d) { return std::isnan(e) || d <= e ? e : d; }

static double next_normal(uint64_t& s) {  // a small deterministic generator (sum of uniforms)
    double a = 0;
    for (int k = 0; k < 12; k++) {
        s = s * 6364136223846793005ull + 1442695040888963407ull;
        a += (double)(s >> 11) / 9007199254740992.0;
    }
    return a - 6.0;
}

// Dense reference: y (B, T, nh·hd) and dqkv for the loss Σ y ⊙ w, from the document ids.
static void reference(const Case& c, const std::vector<double>& qkv, const std::vector<int>& doc,
                      const std::vector<double>& w, std::vector<double>& y, std::vector<double>& dqkv) {
    int width = (c.nh + 2 * c.nkv) * c.hd, g = c.nh / c.nkv;
    double scale = 1.0 / std::sqrt((double)c.hd);
    y.assign((size_t)c.b * c.t * c.nh * c.hd, 0.0);
    dqkv.assign(qkv.size(), 0.0);
    for (int b = 0; b < c.b; b++)
        for (int h = 0; h < c.nh; h++) {
            int kh = h / g;
            auto at = [&](int i, int slot) { return ((size_t)b * c.t + i) * width + (size_t)slot * c.hd; };
            auto yat = [&](int i) { return ((size_t)b * c.t + i) * c.nh * c.hd + (size_t)h * c.hd; };
            for (int i = 0; i < c.t; i++) {
                std::vector<double> p(c.t, 0.0);
                double mx = -INFINITY;
                for (int j = 0; j <= i; j++) {
                    if (doc[b * c.t + j] != doc[b * c.t + i]) continue;
                    double s = 0;
                    for (int d = 0; d < c.hd; d++) s += qkv[at(i, h) + d] * qkv[at(j, c.nh + kh) + d];
                    p[j] = s * scale;
                    mx = std::max(mx, p[j]);
                }
                double sum = 0;
                for (int j = 0; j <= i; j++) {
                    bool seen = doc[b * c.t + j] == doc[b * c.t + i];
                    p[j] = seen ? std::exp(p[j] - mx) : 0.0;
                    sum += p[j];
                }
                for (int j = 0; j <= i; j++) p[j] /= sum;
                for (int j = 0; j <= i; j++)
                    for (int d = 0; d < c.hd; d++) y[yat(i) + d] += p[j] * qkv[at(j, c.nh + c.nkv + kh) + d];
                // dp_j = w_i · v_j, ds_j = p_j (dp_j − Σ p dp); dq, dk, dv.
                std::vector<double> dp(c.t, 0.0);
                double D = 0;
                for (int j = 0; j <= i; j++) {
                    for (int d = 0; d < c.hd; d++) dp[j] += w[yat(i) + d] * qkv[at(j, c.nh + c.nkv + kh) + d];
                    D += p[j] * dp[j];
                }
                for (int j = 0; j <= i; j++) {
                    double ds = p[j] * (dp[j] - D) * scale;
                    for (int d = 0; d < c.hd; d++) {
                        dqkv[at(i, h) + d] += ds * qkv[at(j, c.nh + kh) + d];
                        dqkv[at(j, c.nh + kh) + d] += ds * qkv[at(i, h) + d];
                        dqkv[at(j, c.nh + c.nkv + kh) + d] += p[j] * w[yat(i) + d];
                    }
                }
            }
        }
}

template <typename T>
static double run(const Case& c, const std::vector<double>& qkv64, const std::vector<unsigned>& start,
                  const std::vector<double>& w64, const std::vector<double>& y_ref,
                  const std::vector<double>& d_ref,
                  void (*fwd)(const T*, const unsigned*, T*, int, int, int, int, float, long),
                  void (*bq)(const T*, const T*, const unsigned*, T*, float*, float*, int, int, int, int, float, long),
                  void (*bkv)(const T*, const T*, const unsigned*, const float*, const float*, T*, int, int, int, int, float, long)) {
    auto to = [](const std::vector<double>& x) {
        std::vector<T> v(x.size());
        for (size_t i = 0; i < x.size(); i++) store(v.data(), (long)i, (float)x[i]);
        return v;
    };
    std::vector<T> qkv = to(qkv64), w = to(w64);
    std::vector<T> y(y_ref.size()), dqkv(qkv.size());
    long nq = (long)c.b * c.nh * c.t, nk = (long)c.b * c.nkv * c.t;
    std::vector<float> lse(nq), dsum(nq);
    float scale = 1.0f / std::sqrt((float)c.hd);
    // The kernels take the gradient of y: here w itself (the loss is Σ y ⊙ w). NaN everywhere
    // first, so that a number a kernel does not write shows.
    for (size_t i = 0; i < y.size(); i++) store(y.data(), (long)i, NAN);
    for (size_t i = 0; i < dqkv.size(); i++) store(dqkv.data(), (long)i, NAN);
    launch_warps(nq, [&] { fwd(qkv.data(), start.data(), y.data(), c.t, c.nh, c.nkv, c.hd, scale, nq); });
    launch_warps(nq, [&] { bq(qkv.data(), w.data(), start.data(), dqkv.data(), lse.data(), dsum.data(), c.t, c.nh, c.nkv, c.hd, scale, nq); });
    launch_warps(nk, [&] { bkv(qkv.data(), w.data(), start.data(), lse.data(), dsum.data(), dqkv.data(), c.t, c.nh, c.nkv, c.hd, scale, nk); });
    double err = 0;
    for (size_t i = 0; i < y.size(); i++) err = worst(err, std::fabs(load(y.data(), (long)i) - y_ref[i]));
    for (size_t i = 0; i < dqkv.size(); i++) err = worst(err, std::fabs(load(dqkv.data(), (long)i) - d_ref[i]));
    return std::isnan(err) ? INFINITY : err;
}

// The tensor-core kernels of head size HD: grids of MMA_ROWS queries (or keys) per block.
template <int HD>
static double run_mma(const Case& c, const std::vector<double>& qkv64, const std::vector<unsigned>& start,
                      const std::vector<double>& w64, const std::vector<double>& y_ref,
                      const std::vector<double>& d_ref) {
    auto to = [](const std::vector<double>& x) {
        std::vector<bf16> v(x.size());
        for (size_t i = 0; i < x.size(); i++) store(v.data(), (long)i, (float)x[i]);
        return v;
    };
    std::vector<bf16> qkv = to(qkv64), w = to(w64), y(y_ref.size()), dqkv(qkv.size());
    std::vector<float> lse((size_t)c.b * c.nh * c.t), dsum(lse.size());
    float scale = 1.0f / std::sqrt((float)HD);
    for (size_t i = 0; i < y.size(); i++) store(y.data(), (long)i, NAN);
    for (size_t i = 0; i < dqkv.size(); i++) store(dqkv.data(), (long)i, NAN);
    unsigned blocks = (unsigned)((c.t + MMA_ROWS - 1) / MMA_ROWS);
    launch(Dim3{blocks, (unsigned)c.nh, (unsigned)c.b}, 32 * MMA_WARPS, [&] {
        attention_mma_forward<HD>(qkv.data(), start.data(), y.data(), c.t, c.nh, c.nkv, scale);
    });
    launch(Dim3{blocks, (unsigned)c.nh, (unsigned)c.b}, 32 * MMA_WARPS, [&] {
        attention_mma_backward_q<HD>(qkv.data(), y.data(), w.data(), start.data(), dqkv.data(), lse.data(), dsum.data(), c.t, c.nh, c.nkv, scale);
    });
    launch(Dim3{blocks, (unsigned)c.nkv, (unsigned)c.b}, 32 * MMA_WARPS, [&] {
        attention_mma_backward_kv<HD>(qkv.data(), w.data(), start.data(), lse.data(), dsum.data(), dqkv.data(), c.t, c.nh, c.nkv, scale);
    });
    double err = 0;
    for (size_t i = 0; i < y.size(); i++) err = worst(err, std::fabs(load(y.data(), (long)i) - y_ref[i]));
    for (size_t i = 0; i < dqkv.size(); i++) err = worst(err, std::fabs(load(dqkv.data(), (long)i) - d_ref[i]));
    return std::isnan(err) ? INFINITY : err;
}

// Document ids as the loader numbers a row's stories (0, 1, …) and where each token's story starts.
static void stories(const Case& c, std::vector<int>& doc, std::vector<unsigned>& start) {
    doc.assign(c.b * c.t, 0);
    start.assign(c.b * c.t, 0);
    for (int b = 0; b < c.b; b++)
        for (int i = 1; i < c.t; i++) {
            int k = b * c.t + i;
            bool new_story = (i * (b + 3) + b) % c.story == 0;
            doc[k] = doc[k - 1] + (new_story ? 1 : 0);
            start[k] = new_story ? i : start[k - 1];
        }
}

// Random qkv and w, the stories, and the dense reference.
static void make_case(const Case& c, uint64_t& seed, std::vector<double>& qkv, std::vector<double>& w,
                      std::vector<int>& doc, std::vector<unsigned>& start, std::vector<double>& y_ref,
                      std::vector<double>& d_ref) {
    int width = (c.nh + 2 * c.nkv) * c.hd;
    qkv.resize((size_t)c.b * c.t * width);
    w.resize((size_t)c.b * c.t * c.nh * c.hd);
    for (auto& x : qkv) x = next_normal(seed);
    for (auto& x : w) x = next_normal(seed);
    stories(c, doc, start);
    reference(c, qkv, doc, w, y_ref, d_ref);
}

// document_starts (the GPU's scan) against the positions make_case counted.
static bool starts_match(const Case& c, const std::vector<int>& doc, const std::vector<unsigned>& start) {
    std::vector<unsigned> ids(doc.begin(), doc.end()), got(start.size(), 12345u);
    launch(Dim3{(unsigned)c.b, 1, 1}, SCAN, [&] { document_starts(ids.data(), got.data(), c.t); });
    return got == start;
}

static int checks() {
    // Grouped heads and hd 40 (lanes past the head); the seed model's 128; 130 (a fifth number
    // per lane); one key/value head for four queries. Stories of at most five tokens.
    Case cases[] = {{2, 13, 4, 2, 40, 5}, {1, 9, 4, 4, 128, 5}, {1, 11, 2, 2, 130, 5}, {2, 7, 4, 1, 32, 5}};
    uint64_t seed = 7;
    int failed = 0;
    std::vector<double> qkv, w, y_ref, d_ref;
    std::vector<int> doc;
    std::vector<unsigned> start;
    for (const Case& c : cases) {
        make_case(c, seed, qkv, w, doc, start, y_ref, d_ref);
        double e32 = run<float>(c, qkv, start, w, y_ref, d_ref, attention_forward_f32, attention_backward_q_f32, attention_backward_kv_f32);
        double e16 = run<bf16>(c, qkv, start, w, y_ref, d_ref, attention_forward_bf16, attention_backward_q_bf16, attention_backward_kv_bf16);
        bool ok = e32 < 1e-4 && e16 < 0.1;
        failed += !ok;
        std::printf("attention (B %d, T %d, nh %d, nkv %d, hd %d): max error f32 %.2e, bf16 %.2e %s\n",
                    c.b, c.t, c.nh, c.nkv, c.hd, e32, e16, ok ? "ok" : "FAILED");
    }
    // Tensor cores: T past one block of queries and past the tiles, stories of up to 61 tokens
    // that start inside tiles, grouped heads.
    Case mma_cases[] = {{2, 150, 4, 2, 64, 61}, {1, 130, 2, 1, 128, 61}};
    for (const Case& c : mma_cases) {
        make_case(c, seed, qkv, w, doc, start, y_ref, d_ref);
        double e = c.hd == 64 ? run_mma<64>(c, qkv, start, w, y_ref, d_ref) : run_mma<128>(c, qkv, start, w, y_ref, d_ref);
        bool ok = e < 0.1;
        failed += !ok;
        std::printf("attention on tensor cores (B %d, T %d, nh %d, nkv %d, hd %d): max error bf16 %.2e %s\n",
                    c.b, c.t, c.nh, c.nkv, c.hd, e, ok ? "ok" : "FAILED");
    }
    // Where stories start, as the GPU finds it: rows shorter and longer than one scan (256).
    Case rows[] = {{3, 150, 1, 1, 16, 61}, {2, 700, 1, 1, 16, 97}};
    for (const Case& c : rows) {
        stories(c, doc, start);
        bool ok = starts_match(c, doc, start);
        failed += !ok;
        std::printf("document starts (B %d, T %d): %s\n", c.b, c.t, ok ? "ok" : "FAILED");
    }
    return failed;
}

int main() { return both_orders(checks) ? 1 : 0; }
