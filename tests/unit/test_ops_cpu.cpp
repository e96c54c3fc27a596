// The CPU reference backend of the op interface (kernels/ops.h): every op with a backward pass
// against central finite differences in f64 (packed batches with ragged lengths, 0 and 1
// included), forwards against naive loops where the op is not self-evident, f32 against f64, the
// dropout mask's properties, and the argument checks.
#include <gtest/gtest-spi.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <initializer_list>
#include <limits>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "core/error.h"
#include "core/rng.h"
#include "core/tensor.h"
#include "kernels/cpu/gelu.h"
#include "kernels/cpu/gemm.h"
#include "kernels/ops.h"

using namespace qarac;

namespace {

// ---- Helpers ----------------------------------------------------------------------------------

int64_t draw(std::mt19937& rng, int64_t lo, int64_t hi) {  // uniform in [lo, hi]
  return std::uniform_int_distribution<int64_t>(lo, hi)(rng);
}

Tensor uniform(const Shape& shape, std::mt19937& rng, double lo = -1, double hi = 1) {
  std::uniform_real_distribution<double> dist(lo, hi);
  std::vector<double> v(static_cast<size_t>(shape_numel(shape)));
  for (double& x : v) x = dist(rng);
  return Tensor::from_vector(v, shape);
}

Tensor ints(const std::vector<int32_t>& v, const Shape& shape) {
  return Tensor::from_vector(v, shape);
}

Tensor f64(const std::vector<double>& v) {
  return Tensor::from_vector(v, {static_cast<int64_t>(v.size())});
}

std::vector<double> values(const Tensor& t) { return t.to_vector<double>(); }

// a - b elementwise, as a flat f64 tensor: how much an accumulating op added.
Tensor difference(const Tensor& a, const Tensor& b) {
  std::vector<double> d = values(a);
  const std::vector<double> bv = values(b);
  for (size_t i = 0; i < d.size(); ++i) d[i] -= bv[i];
  return Tensor::from_vector(d, a.shape());
}

// Runs f and expects a qarac::Error whose message contains every one of `parts`.
void expect_error(const std::function<void()>& f, std::initializer_list<std::string> parts) {
  try {
    f();
    ADD_FAILURE() << "no qarac::Error raised; expected one mentioning " << *parts.begin();
  } catch (const Error& e) {
    const std::string msg = e.what();
    for (const std::string& p : parts)
      EXPECT_NE(msg.find(p), std::string::npos) << "'" << p << "' missing from: " << msg;
  }
}

// ---- Gradient check ---------------------------------------------------------------------------
// L = Σ out ⊙ R, accumulated in long double so that the sum adds no rounding of its own. The
// numeric gradient is (L(x + h) - L(x - h)) / 2h with h = 1e-6 in f64: the truncation error is
// O(h² |L'''|) ≈ 1e-12 and the rounding error O(ε Σ|out ⊙ R| / h) ≈ 1e-10 per affected output
// (ε ≈ 1.1e-16), so for gradients of order 1 the two agree to ~1e-9. The tolerance,
// |analytic - numeric| <= 1e-6 max(|analytic|, |numeric|) + 1e-8, leaves a margin of ~10-100 over
// that noise while any error in a backward formula (a missing term, a wrong sign or transpose, a
// mask not applied) shows up at the 1e-3..1 level.
constexpr double kStep = 1e-6;
constexpr double kRtol = 1e-6;
constexpr double kAtol = 1e-8;
constexpr int64_t kMaxProbes = 64;  // elements probed per input when it has more

long double weighted_sum(const Tensor& out, const Tensor& r) {
  const std::vector<double> o = values(out), w = values(r);
  long double s = 0;
  for (size_t i = 0; i < o.size(); ++i) s += static_cast<long double>(o[i]) * w[i];
  return s;
}

// Checks `analytic` = ∂L/∂input, L = Σ forward() ⊙ r, at every element of `input` (or kMaxProbes
// distinct random ones), perturbing input's storage in place and restoring it.
void expect_gradient(const std::string& what, const Tensor& input, const Tensor& analytic,
                     const std::function<Tensor()>& forward, const Tensor& r, std::mt19937& rng) {
  SCOPED_TRACE(what);
  ASSERT_EQ(analytic.numel(), input.numel());
  std::vector<int64_t> probes(static_cast<size_t>(input.numel()));
  std::iota(probes.begin(), probes.end(), 0);
  if (input.numel() > kMaxProbes) {
    std::shuffle(probes.begin(), probes.end(), rng);
    probes.resize(kMaxProbes);
  }
  double* x = input.data<double>();
  const std::vector<double> grad = values(analytic);
  for (int64_t i : probes) {
    const double saved = x[i];
    x[i] = saved + kStep;
    const long double plus = weighted_sum(forward(), r);
    x[i] = saved - kStep;
    const long double minus = weighted_sum(forward(), r);
    x[i] = saved;
    const double numeric = static_cast<double>((plus - minus) / (2 * kStep));
    const double a = grad[static_cast<size_t>(i)];
    EXPECT_LE(std::abs(a - numeric), kRtol * std::max(std::abs(a), std::abs(numeric)) + kAtol)
        << "element " << i << ": analytic " << a << ", numeric " << numeric;
  }
}

// f32 against f64 on the same data: |f32 - f64| <= 1e-5 max(1, |f64|). f32 rounds at 6e-8 per
// operation; the sums here have at most a few hundred terms of order 1, so the honest error is
// ~1e-6, while a dtype-specific bug (a constant truncated, a wrong instantiation) is far above.
void expect_f32_matches_f64(const std::string& what, const Tensor& t32, const Tensor& t64) {
  SCOPED_TRACE(what);
  ASSERT_EQ(t32.dtype(), DType::f32);
  ASSERT_EQ(t64.dtype(), DType::f64);
  ASSERT_EQ(t32.shape(), t64.shape());
  const std::vector<float> a = t32.to_vector<float>();
  const std::vector<double> b = values(t64);
  for (size_t i = 0; i < a.size(); ++i)
    ASSERT_LE(std::abs(a[i] - b[i]), 1e-5 * std::max(1.0, std::abs(b[i])))
        << "element " << i << ": f32 " << a[i] << ", f64 " << b[i];
}

void expect_near_all(const std::vector<double>& got, const std::vector<double>& want, double tol,
                     const std::string& what) {
  ASSERT_EQ(got.size(), want.size()) << what;
  for (size_t i = 0; i < got.size(); ++i)
    ASSERT_NEAR(got[i], want[i], tol) << what << " element " << i;
}

// ---- Naive references -------------------------------------------------------------------------

// c = alpha op(a) op(b) + beta c0 by the definition, a, b, c0 flat f64.
std::vector<double> naive_gemm(const std::vector<double>& a, const std::vector<double>& b,
                               const std::vector<double>& c0, int64_t m, int64_t n, int64_t k,
                               bool ta, bool tb, double alpha, double beta) {
  std::vector<double> c(static_cast<size_t>(m * n));
  for (int64_t i = 0; i < m; ++i)
    for (int64_t j = 0; j < n; ++j) {
      double s = 0;
      for (int64_t l = 0; l < k; ++l)
        s += a[ta ? l * m + i : i * k + l] * b[tb ? j * k + l : l * n + j];
      c[i * n + j] = alpha * s + beta * c0[i * n + j];
    }
  return c;
}

// GELU (erf form) and dense layers by their definitions: y = act(x wᵀ + b), x [n,in], w [out,in].
double naive_gelu(double x) { return 0.5 * x * (1 + std::erf(x / std::sqrt(2.0))); }

std::vector<double> naive_linear(const std::vector<double>& x, const std::vector<double>& w,
                                 const std::vector<double>& b, int64_t n, int64_t in, int64_t out,
                                 bool gelu) {
  std::vector<double> y(static_cast<size_t>(n * out));
  for (int64_t i = 0; i < n; ++i)
    for (int64_t o = 0; o < out; ++o) {
      double s = b[o];
      for (int64_t j = 0; j < in; ++j) s += x[i * in + j] * w[o * in + j];
      y[i * out + o] = gelu ? naive_gelu(s) : s;
    }
  return y;
}

// cos(x, y) = x·y / max(‖x‖ ‖y‖, eps) by the definition, for d-vectors at x and y.
double naive_cosine(const double* x, const double* y, int64_t d, double eps) {
  double dot = 0, xx = 0, yy = 0;
  for (int64_t e = 0; e < d; ++e) {
    dot += x[e] * y[e];
    xx += x[e] * x[e];
    yy += y[e] * y[e];
  }
  return dot / std::max(std::sqrt(xx) * std::sqrt(yy), eps);
}

ops::Sequences sequences(const std::vector<int32_t>& lengths,
                         const std::vector<uint64_t>& ids = {}) {
  return ops::Sequences::from_lengths(lengths, Device::cpu(), ids);
}

// n sequence ids spread over the whole 64-bit range (both counter words of the id take part).
std::vector<uint64_t> random_ids(std::mt19937& rng, size_t n) {
  std::uniform_int_distribution<uint64_t> dist;
  std::vector<uint64_t> ids(n);
  for (uint64_t& id : ids) id = dist(rng);
  return ids;
}

// `batch` >= 2 sequence lengths drawn from [2, longest], except that one sequence is empty and
// one has a single token, at random places: the ragged edge cases every packed op must handle.
std::vector<int32_t> ragged_lengths(std::mt19937& rng, int64_t batch, int64_t longest) {
  std::vector<int32_t> lengths(static_cast<size_t>(batch));
  for (int32_t& len : lengths) len = static_cast<int32_t>(draw(rng, 2, longest));
  std::vector<size_t> order(lengths.size());
  std::iota(order.begin(), order.end(), 0);
  std::shuffle(order.begin(), order.end(), rng);
  lengths[order[0]] = 0;
  lengths[order[1]] = 1;
  return lengths;
}

int64_t total(const std::vector<int32_t>& lengths) {
  return std::accumulate(lengths.begin(), lengths.end(), int64_t{0});
}

// The dropout contract of core/rng.h restated from its text, apart from the code under test:
// element e of sequence `id` takes the 16-bit half e % 2 of word (e % 8) / 2 of the Philox-4x32-10
// output at counter (g bits 0..31, g bits 32..39 | step bits 0..23 << 8, id bits 0..31, id bits
// 32..63), g = e rounded down to a multiple of 8, and key (seed bits 0..31 ^ tensor · 0x85EBCA6B,
// seed bits 32..63 ^ step >> 24); it is kept when that half >= round(p · 2^16), and a kept
// element is scaled by 2^16 / (2^16 - round(p · 2^16)).
bool kept_by_contract(const RngKey& key, uint64_t id, uint64_t element, double p) {
  const uint64_t g = element / 8 * 8;
  const Philox4x32 ctr = {{static_cast<uint32_t>(g),
                           static_cast<uint32_t>(g >> 32) | static_cast<uint32_t>(key.step << 8),
                           static_cast<uint32_t>(id), static_cast<uint32_t>(id >> 32)}};
  const Philox4x32 r = philox4x32_10(ctr, static_cast<uint32_t>(key.seed) ^ key.tensor * 0x85EBCA6Bu,
                                     static_cast<uint32_t>(key.seed >> 32) ^
                                         static_cast<uint32_t>(key.step >> 24));
  const uint32_t half = (r.c[element % 8 / 2] >> (16 * (element % 2))) & 0xFFFFu;
  return half >= static_cast<uint32_t>(std::lround(p * 65536));
}
double keep_scale_by_contract(double p) { return 65536.0 / (65536.0 - std::lround(p * 65536)); }

struct AttentionCase {
  std::string name;
  std::vector<int32_t> lengths;
  std::vector<uint64_t> ids;
  int64_t heads, head_dim;
  bool causal;
  double dropout_p;

  Shape tokens() const { return {total(lengths), heads * head_dim}; }
  Shape lse() const { return {heads, total(lengths)}; }
};

// Attention by its definition, one query at a time over the keys of its own sequence: the
// scores, their log-sum-exp, the softmax, the dropout mask of the contract (kept_by_contract) at
// the element ops.h specifies, (sequence id, attention_element(h, i, j)), and the weighted sum of
// values.
void naive_attention(const AttentionCase& c, const std::vector<double>& q,
                     const std::vector<double>& k, const std::vector<double>& v, const RngKey& key,
                     std::vector<double>& out, std::vector<double>& lse) {
  const int64_t T = total(c.lengths), H = c.heads, D = c.head_dim, ld = H * D;
  out.assign(static_cast<size_t>(T * ld), 0.0);
  lse.assign(static_cast<size_t>(H * T), 0.0);
  int64_t begin = 0;
  for (size_t b = 0; b < c.lengths.size(); ++b) {
    const int64_t len = c.lengths[b];
    for (int64_t h = 0; h < H; ++h)
      for (int64_t i = 0; i < len; ++i) {
        const int64_t t = begin + i, visible = c.causal ? i + 1 : len;
        std::vector<double> s(static_cast<size_t>(visible));
        for (int64_t j = 0; j < visible; ++j) {
          double dot = 0;
          for (int64_t d = 0; d < D; ++d)
            dot += q[t * ld + h * D + d] * k[(begin + j) * ld + h * D + d];
          s[j] = dot / std::sqrt(static_cast<double>(D));
        }
        const double max = *std::max_element(s.begin(), s.end());
        double sum = 0;
        for (double x : s) sum += std::exp(x - max);
        lse[h * T + t] = max + std::log(sum);
        for (int64_t j = 0; j < visible; ++j) {
          const double p = std::exp(s[j] - max) / sum;
          const uint64_t element = attention_element(static_cast<uint64_t>(h),
                                                     static_cast<uint64_t>(i),
                                                     static_cast<uint64_t>(j));
          const bool keep = kept_by_contract(key, c.ids[b], element, c.dropout_p);
          const double dropped = keep ? p * keep_scale_by_contract(c.dropout_p) : 0.0;
          for (int64_t d = 0; d < D; ++d)
            out[t * ld + h * D + d] += dropped * v[(begin + j) * ld + h * D + d];
        }
      }
    begin += len;
  }
}

// Bidirectional and causal, with and without dropout, over ragged batches with an empty and a
// one-token sequence.
std::vector<AttentionCase> attention_cases(std::mt19937& rng) {
  std::vector<AttentionCase> cases;
  for (bool causal : {false, true})
    for (double p : {0.0, 0.2}) {
      AttentionCase c;
      c.lengths = ragged_lengths(rng, draw(rng, 3, 5), 6);
      c.ids = random_ids(rng, c.lengths.size());
      c.heads = draw(rng, 1, 3);
      c.head_dim = draw(rng, 2, 5);
      c.causal = causal;
      c.dropout_p = p;
      c.name = std::string(causal ? "causal" : "bidirectional") + (p > 0 ? " with dropout" : "");
      cases.push_back(c);
    }
  return cases;
}

const RngKey kKey{1234, 7, 3};

}  // namespace

// ---- The gradient check itself can fail -------------------------------------------------------

TEST(GradientCheck, DetectsAWrongGradient) {
  std::mt19937 rng(1);
  const Tensor x = uniform({6}, rng, 0.5, 2);
  const Tensor r = uniform({6}, rng);
  auto square = [&] {
    std::vector<double> v = values(x);
    for (double& e : v) e *= e;
    return f64(v);
  };
  std::vector<double> g = values(x), rv = values(r);
  for (size_t i = 0; i < g.size(); ++i) g[i] = 2 * g[i] * rv[i];
  expect_gradient("x²", x, f64(g), square, r, rng);  // right: passes
  g[3] *= 1.0001;                                    // off by 1e-4 relative: must fail
  EXPECT_NONFATAL_FAILURE(expect_gradient("x² perturbed", x, f64(g), square, r, rng), "element 3");
}

// ---- GEMM -------------------------------------------------------------------------------------

TEST(Gemm, ForwardMatchesDefinitionForAllTransposes) {
  std::mt19937 rng(11);
  for (bool ta : {false, true})
    for (bool tb : {false, true}) {
      SCOPED_TRACE(std::string("trans_a=") + (ta ? "1" : "0") + " trans_b=" + (tb ? "1" : "0"));
      const int64_t m = draw(rng, 1, 9), n = draw(rng, 1, 9), k = draw(rng, 1, 9);
      const Tensor a = uniform(ta ? Shape{k, m} : Shape{m, k}, rng);
      const Tensor b = uniform(tb ? Shape{n, k} : Shape{k, n}, rng);
      const Tensor c0 = uniform({m, n}, rng);
      Tensor c = c0.clone();
      ops::gemm(a, b, c, ta, tb, 0.75, -0.5);
      expect_near_all(values(c),
                      naive_gemm(values(a), values(b), values(c0), m, n, k, ta, tb, 0.75, -0.5),
                      1e-13, "gemm");

      Tensor c32 = c0.to(DType::f32);
      ops::gemm(a.to(DType::f32), b.to(DType::f32), c32, ta, tb, 0.75, -0.5);
      expect_f32_matches_f64("gemm f32", c32, c);
    }
}

TEST(Gemm, BetaZeroOverwritesAndEmptyInnerDimensionScales) {
  std::mt19937 rng(12);
  const Tensor a = uniform({3, 4}, rng), b = uniform({4, 2}, rng);
  Tensor c = Tensor::from_vector(std::vector<double>(6, std::nan("")), {3, 2});
  ops::gemm(a, b, c, false, false);  // beta = 0: the NaNs in c must not survive
  expect_near_all(
      values(c),
      naive_gemm(values(a), values(b), std::vector<double>(6, 0.0), 3, 2, 4, false, false, 1, 0),
      1e-13, "beta=0");
  const Tensor c0 = c.clone();
  ops::gemm(Tensor::zeros({3, 0}, DType::f64), Tensor::zeros({0, 2}, DType::f64), c, false, false,
            1.0, 2.0);
  std::vector<double> twice = values(c0);
  for (double& x : twice) x *= 2;
  expect_near_all(values(c), twice, 0, "k=0");
}

// One row of output (decoding at batch 1) takes its own path (a gemv) when b is large, a GEMM's
// when small (2^18 elements, kernels/cpu/gemm.cpp): both, for every transpose, operands that are
// sub-matrices (leading dimensions beyond their widths, as attention passes them), both betas,
// NaNs in c overwritten at beta = 0.
TEST(Gemm, OneRowProductsMatchTheDefinitionForAllTransposesAndStrides) {
  std::mt19937 rng(13);
  const int64_t pad = 3;
  for (const auto& [n, k] : {std::pair<int64_t, int64_t>{7, 5}, {32769, 8}})
    for (bool ta : {false, true})
      for (bool tb : {false, true})
        for (double beta : {0.0, -0.5}) {
          SCOPED_TRACE("n=" + std::to_string(n) + " k=" + std::to_string(k) + " trans_a=" + (ta ? "1" : "0") +
                       " trans_b=" + (tb ? "1" : "0") + " beta=" + std::to_string(beta));
          // a as stored: [1,k] or [k,1]; b: [k,n] or [n,k]; each row `pad` elements wider.
          const int64_t lda = (ta ? 1 : k) + pad, ldb = (tb ? k : n) + pad;
          const std::vector<double> a = values(uniform({(ta ? k : 1) * lda}, rng));
          const std::vector<double> b = values(uniform({(tb ? n : k) * ldb}, rng));
          std::vector<double> c0 = values(uniform({n}, rng));
          if (beta == 0) std::fill(c0.begin(), c0.end(), std::nan(""));
          std::vector<double> expected(n);
          for (int64_t j = 0; j < n; ++j) {
            double sum = 0;
            for (int64_t i = 0; i < k; ++i)
              sum += a[ta ? i * lda : i] * b[tb ? j * ldb + i : i * ldb + j];
            expected[j] = 0.75 * sum + (beta == 0 ? 0 : beta * c0[j]);
          }
          std::vector<double> c = c0;
          cpu::gemm(ta, tb, 1, n, k, 0.75, a.data(), lda, b.data(), ldb, beta, c.data(), n);
          expect_near_all(c, expected, 1e-13, "one row f64");

          const std::vector<float> a32(a.begin(), a.end()), b32(b.begin(), b.end());
          std::vector<float> c32(c0.begin(), c0.end());
          cpu::gemm(ta, tb, 1, n, k, 0.75f, a32.data(), lda, b32.data(), ldb, float(beta),
                    c32.data(), n);
          expect_near_all(std::vector<double>(c32.begin(), c32.end()), expected, 1e-6,
                          "one row f32");
        }
}

// OpenBLAS's fallback cores on CPUs it does not know get the core of the CPU's features; cores
// with AVX2 kernels, and CPUs without AVX2, get none.
TEST(Gemm, OpenBlasFallbackCoresGetTheCoreOfTheCpu) {
  const cpu::CpuFeatures sapphire{true, true, true}, skylake{false, true, true}, haswell{false, false, true}, old{};
  EXPECT_EQ(cpu::blas_core_for("Prescott", sapphire), "Cooperlake");
  EXPECT_EQ(cpu::blas_core_for("Prescott", skylake), "SkylakeX");
  EXPECT_EQ(cpu::blas_core_for("Nehalem", haswell), "Haswell");
  EXPECT_EQ(cpu::blas_core_for("Barcelona", skylake), "SkylakeX");
  EXPECT_EQ(cpu::blas_core_for("Prescott", old), "");
  for (const char* own : {"Haswell", "SkylakeX", "Cooperlake", "Zen", "SapphireRapids"})
    EXPECT_EQ(cpu::blas_core_for(own, sapphire), "") << own;
}

// The advice on OpenBLAS's kernels names the core to set, or nothing: nothing when the user set
// one already (whatever OpenBLAS then chose).
TEST(Gemm, OpenBlasCoreAdviceNamesACoreOrNothing) {
  const char* env = std::getenv("OPENBLAS_CORETYPE");
  const std::string set = env ? env : "";  // setenv may free what getenv gave
  const std::string advice = cpu::blas_core_advice();
  if (!advice.empty()) {
    EXPECT_EQ(env, nullptr);
    EXPECT_EQ(advice.rfind("OpenBLAS runs its ", 0), 0u) << advice;
    EXPECT_NE(advice.find("set the environment variable OPENBLAS_CORETYPE=" + cpu::blas_core_to_set()),
              std::string::npos)
        << advice;
    EXPECT_NE(cpu::blas_kernels().find("; this CPU's own: OPENBLAS_CORETYPE=" + cpu::blas_core_to_set()),
              std::string::npos);
  }
  ASSERT_EQ(setenv("OPENBLAS_CORETYPE", "Haswell", 1), 0);
  EXPECT_EQ(cpu::blas_core_advice(), "");
  EXPECT_EQ(cpu::blas_kernels().find("this CPU's own"), std::string::npos);
  if (env)
    setenv("OPENBLAS_CORETYPE", set.c_str(), 1);
  else
    unsetenv("OPENBLAS_CORETYPE");
}

// c = alpha op(a) op(b) + beta c0 with dc = R:
//   da = alpha R op(b)ᵀ (or its transpose alpha op(b) Rᵀ when a is stored transposed),
//   db = alpha op(a)ᵀ R (or alpha Rᵀ op(a)), dc0 = beta R; each computed with the gemm op itself.
TEST(Gemm, GradientsForAllTransposes) {
  std::mt19937 rng(13);
  const double alpha = 0.8, beta = 0.3;
  for (bool batched : {false, true})
    for (bool ta : {false, true})
      for (bool tb : {false, true}) {
        const std::string name = std::string(batched ? "gemm_batched" : "gemm") +
                                 " trans_a=" + (ta ? "1" : "0") + " trans_b=" + (tb ? "1" : "0");
        const int64_t z = batched ? draw(rng, 1, 3) : 0;
        const int64_t m = draw(rng, 1, 6), n = draw(rng, 1, 6), k = draw(rng, 1, 6);
        auto shape = [&](int64_t r, int64_t c) { return batched ? Shape{z, r, c} : Shape{r, c}; };
        auto mul = [&](const Tensor& x, const Tensor& y, Tensor& out, bool tx, bool ty, double al,
                       double be) {
          if (batched)
            ops::gemm_batched(x, y, out, tx, ty, al, be);
          else
            ops::gemm(x, y, out, tx, ty, al, be);
        };
        const Tensor a = uniform(ta ? shape(k, m) : shape(m, k), rng);
        const Tensor b = uniform(tb ? shape(n, k) : shape(k, n), rng);
        const Tensor c0 = uniform(shape(m, n), rng);
        const Tensor r = uniform(shape(m, n), rng);
        auto forward = [&] {
          Tensor c = c0.clone();
          mul(a, b, c, ta, tb, alpha, beta);
          return c;
        };
        Tensor da = Tensor::empty(a.shape(), DType::f64), db = Tensor::empty(b.shape(), DType::f64);
        if (ta)
          mul(b, r, da, tb, true, alpha, 0);
        else
          mul(r, b, da, false, !tb, alpha, 0);
        if (tb)
          mul(r, a, db, true, ta, alpha, 0);
        else
          mul(a, r, db, !ta, false, alpha, 0);
        Tensor dc0 = r.clone();
        ops::scale(dc0, beta);
        expect_gradient(name + " da", a, da, forward, r, rng);
        expect_gradient(name + " db", b, db, forward, r, rng);
        expect_gradient(name + " dc", c0, dc0, forward, r, rng);
      }
}

// ---- Elementwise and bias ---------------------------------------------------------------------

TEST(Elementwise, AddAccumulateScale) {
  const Tensor a = f64({1, 2, 3}), b = f64({10, 20, 30});
  Tensor out = Tensor::empty({3}, DType::f64);
  ops::add(a, b, out);
  EXPECT_EQ(values(out), (std::vector<double>{11, 22, 33}));
  Tensor alias = a.clone();
  ops::add(alias, b, alias);  // out aliasing a
  EXPECT_EQ(values(alias), (std::vector<double>{11, 22, 33}));
  ops::accumulate(alias, b);
  EXPECT_EQ(values(alias), (std::vector<double>{21, 42, 63}));
  ops::scale(alias, -0.5);
  EXPECT_EQ(values(alias), (std::vector<double>{-10.5, -21, -31.5}));
}

TEST(Bias, ForwardAndAccumulatedGradient) {
  std::mt19937 rng(21);
  const int64_t n = draw(rng, 2, 7), c = draw(rng, 2, 9);
  const Tensor y0 = uniform({n, c}, rng), bias = uniform({c}, rng), r = uniform({n, c}, rng);
  auto forward = [&] {
    Tensor y = y0.clone();
    ops::bias_add(y, bias);
    return y;
  };
  const std::vector<double> y = values(forward()), yv = values(y0), bv = values(bias);
  for (int64_t i = 0; i < n * c; ++i) ASSERT_EQ(y[i], yv[i] + bv[i % c]);

  const Tensor d0 = uniform({c}, rng);  // dbias accumulates onto what is there
  Tensor dbias = d0.clone();
  ops::bias_backward(r, dbias);
  expect_gradient("bias", bias, difference(dbias, d0), forward, r, rng);

  Tensor y32 = y0.to(DType::f32);
  ops::bias_add(y32, bias.to(DType::f32));
  expect_f32_matches_f64("bias_add f32", y32, forward());
}

// ---- Embedding --------------------------------------------------------------------------------

TEST(Embedding, ForwardAccumulateAndGradientWithRepeatedIds) {
  std::mt19937 rng(31);
  const int64_t vocab = draw(rng, 3, 6), dim = draw(rng, 2, 5), n = draw(rng, 8, 12);
  std::vector<int32_t> idv(static_cast<size_t>(n));
  for (int32_t& id : idv) id = static_cast<int32_t>(draw(rng, 0, vocab - 1));  // n > vocab: repeats
  const Tensor ids = ints(idv, {n});
  const Tensor table = uniform({vocab, dim}, rng), r = uniform({n, dim}, rng);
  auto forward = [&] {
    Tensor out = Tensor::empty({n, dim}, DType::f64);
    ops::embedding_forward(ids, table, out);
    return out;
  };
  const std::vector<double> out = values(forward()), tv = values(table);
  for (int64_t i = 0; i < n; ++i)
    for (int64_t c = 0; c < dim; ++c) ASSERT_EQ(out[i * dim + c], tv[idv[i] * dim + c]);

  const Tensor base = uniform({n, dim}, rng);  // accumulate = true adds onto out
  Tensor sum = base.clone();
  ops::embedding_forward(ids, table, sum, true);
  const std::vector<double> added = values(difference(sum, base));
  expect_near_all(added, out, 1e-15, "accumulate");

  Tensor out32 = Tensor::empty({n, dim}, DType::f32);
  ops::embedding_forward(ids, table.to(DType::f32), out32);
  expect_f32_matches_f64("embedding f32", out32, forward());

  const Tensor d0 = uniform({vocab, dim}, rng);
  Tensor dtable = d0.clone();
  ops::embedding_backward(ids, r, dtable);
  expect_gradient("table", table, difference(dtable, d0), forward, r, rng);
}

// ---- LayerNorm --------------------------------------------------------------------------------

TEST(LayerNorm, NormalisesRowsAndSavesStatistics) {
  std::mt19937 rng(41);
  const int64_t n = 5, c = 64;
  const double eps = 1e-5;
  const Tensor x = uniform({n, c}, rng, -3, 7);  // mean ≈ 2, far from 0
  Tensor y = Tensor::empty({n, c}, DType::f64), mean = Tensor::empty({n}, DType::f64),
         rstd = Tensor::empty({n}, DType::f64);
  ops::layernorm_forward(x, Tensor::from_vector(std::vector<double>(c, 1.0), {c}),
                         Tensor::zeros({c}, DType::f64), eps, y, mean, rstd);
  const std::vector<double> xv = values(x), yv = values(y), mv = values(mean), rv = values(rstd);
  for (int64_t i = 0; i < n; ++i) {
    double mx = 0, vx = 0, my = 0, vy = 0;
    for (int64_t j = 0; j < c; ++j) mx += xv[i * c + j] / c;
    for (int64_t j = 0; j < c; ++j) vx += (xv[i * c + j] - mx) * (xv[i * c + j] - mx) / c;
    for (int64_t j = 0; j < c; ++j) my += yv[i * c + j] / c;
    for (int64_t j = 0; j < c; ++j) vy += (yv[i * c + j] - my) * (yv[i * c + j] - my) / c;
    EXPECT_NEAR(mv[i], mx, 1e-13);
    EXPECT_NEAR(rv[i], 1 / std::sqrt(vx + eps), 1e-13);
    EXPECT_NEAR(my, 0, 1e-13);
    EXPECT_NEAR(vy, vx / (vx + eps), 1e-13);  // 1 up to eps
  }
}

TEST(LayerNorm, ForwardMatchesDefinitionAndGradients) {
  std::mt19937 rng(42);
  const int64_t n = draw(rng, 2, 6), c = draw(rng, 3, 12);
  const double eps = 1e-5;
  const Tensor x = uniform({n, c}, rng, -2, 3), gamma = uniform({c}, rng, 0.5, 1.5),
               beta = uniform({c}, rng), r = uniform({n, c}, rng);
  Tensor mean = Tensor::empty({n}, DType::f64), rstd = Tensor::empty({n}, DType::f64);
  auto forward = [&] {
    Tensor y = Tensor::empty({n, c}, DType::f64);
    ops::layernorm_forward(x, gamma, beta, eps, y, mean, rstd);
    return y;
  };
  const std::vector<double> y = values(forward()), xv = values(x), gv = values(gamma),
                            bv = values(beta);
  for (int64_t i = 0; i < n; ++i) {
    double mu = 0, var = 0;
    for (int64_t j = 0; j < c; ++j) mu += xv[i * c + j] / c;
    for (int64_t j = 0; j < c; ++j) var += (xv[i * c + j] - mu) * (xv[i * c + j] - mu) / c;
    for (int64_t j = 0; j < c; ++j)
      ASSERT_NEAR(y[i * c + j], (xv[i * c + j] - mu) / std::sqrt(var + eps) * gv[j] + bv[j], 1e-13);
  }

  const Tensor dg0 = uniform({c}, rng), db0 = uniform({c}, rng);
  Tensor dx = Tensor::empty({n, c}, DType::f64), dgamma = dg0.clone(), dbeta = db0.clone();
  ops::layernorm_backward(r, x, gamma, mean, rstd, dx, dgamma, dbeta);
  expect_gradient("layernorm dx", x, dx, forward, r, rng);
  expect_gradient("layernorm dgamma", gamma, difference(dgamma, dg0), forward, r, rng);
  expect_gradient("layernorm dbeta", beta, difference(dbeta, db0), forward, r, rng);
}

// A finite f32 row whose squares overflow has no normalisation to give: NaN, not β (before: r =
// 1/sqrt(inf) = 0, and the row ±1e20 came out 0 0 0 0, the same as any other such row). ±1e18,
// squares of 1e36, still normalise to ±1.
TEST(LayerNorm, RowsWhoseSquaresOverflowAreNaN) {
  const Tensor x = Tensor::from_vector(std::vector<float>{1e18f, -1e18f, 1e18f, -1e18f, 1e20f, -1e20f, 1e20f, -1e20f},
                                       {2, 4});
  Tensor y = Tensor::empty({2, 4}, DType::f32), mean = Tensor::empty({2}, DType::f32),
         rstd = Tensor::empty({2}, DType::f32);
  ops::layernorm_forward(x, Tensor::from_vector(std::vector<float>(4, 1.0f), {4}), Tensor::zeros({4}, DType::f32), 1e-5,
                         y, mean, rstd);
  const std::vector<float> out = y.to_vector<float>();
  for (int c = 0; c < 4; ++c) {
    EXPECT_NEAR(out[static_cast<size_t>(c)], c % 2 ? -1.0f : 1.0f, 1e-6f) << c;
    EXPECT_TRUE(std::isnan(out[static_cast<size_t>(4 + c)])) << out[static_cast<size_t>(4 + c)];
  }
}

TEST(LayerNorm, F32MatchesF64) {
  std::mt19937 rng(43);
  const int64_t n = 8, c = 256;
  const Tensor x = uniform({n, c}, rng, -2, 3), gamma = uniform({c}, rng, 0.5, 1.5),
               beta = uniform({c}, rng), dy = uniform({n, c}, rng);
  std::vector<Tensor> results[2];
  for (DType dt : {DType::f32, DType::f64}) {
    Tensor y = Tensor::empty({n, c}, dt), mean = Tensor::empty({n}, dt),
           rstd = Tensor::empty({n}, dt);
    ops::layernorm_forward(x.to(dt), gamma.to(dt), beta.to(dt), 1e-5, y, mean, rstd);
    Tensor dx = Tensor::empty({n, c}, dt), dgamma = Tensor::zeros({c}, dt),
           dbeta = Tensor::zeros({c}, dt);
    ops::layernorm_backward(dy.to(dt), x.to(dt), gamma.to(dt), mean, rstd, dx, dgamma, dbeta);
    results[dt == DType::f64] = {y, mean, rstd, dx, dgamma, dbeta};
  }
  const char* names[] = {"y", "mean", "rstd", "dx", "dgamma", "dbeta"};
  for (size_t i = 0; i < 6; ++i) expect_f32_matches_f64(names[i], results[0][i], results[1][i]);
}

// The fused post-LN residual block: sum is a + b exactly and y is layernorm_forward of that sum,
// bit for bit; both inputs get the gradient layernorm_backward gives for the sum.
TEST(LayerNorm, AddLayerNormForwardAndGradients) {
  std::mt19937 rng(44);
  const int64_t n = draw(rng, 2, 6), c = draw(rng, 3, 12);
  const double eps = 1e-5;
  const Tensor a = uniform({n, c}, rng, -2, 3), b = uniform({n, c}, rng),
               gamma = uniform({c}, rng, 0.5, 1.5), beta = uniform({c}, rng),
               r = uniform({n, c}, rng);
  Tensor sum = Tensor::empty({n, c}, DType::f64), mean = Tensor::empty({n}, DType::f64),
         rstd = Tensor::empty({n}, DType::f64);
  auto forward = [&] {
    Tensor y = Tensor::empty({n, c}, DType::f64);
    ops::add_layernorm_forward(a, b, gamma, beta, eps, sum, y, mean, rstd);
    return y;
  };
  const Tensor y = forward();
  Tensor want_sum = Tensor::empty({n, c}, DType::f64), want_y = Tensor::empty({n, c}, DType::f64),
         want_mean = Tensor::empty({n}, DType::f64), want_rstd = Tensor::empty({n}, DType::f64);
  ops::add(a, b, want_sum);
  ops::layernorm_forward(want_sum, gamma, beta, eps, want_y, want_mean, want_rstd);
  EXPECT_EQ(values(sum), values(want_sum));
  EXPECT_EQ(values(y), values(want_y));
  EXPECT_EQ(values(mean), values(want_mean));
  EXPECT_EQ(values(rstd), values(want_rstd));

  Tensor dx = Tensor::empty({n, c}, DType::f64), dgamma = Tensor::zeros({c}, DType::f64),
         dbeta = Tensor::zeros({c}, DType::f64);
  ops::layernorm_backward(r, sum, gamma, mean, rstd, dx, dgamma, dbeta);
  expect_gradient("add_layernorm da", a, dx, forward, r, rng);
  expect_gradient("add_layernorm db", b, dx, forward, r, rng);

  Tensor sum32 = Tensor::empty({n, c}, DType::f32), y32 = Tensor::empty({n, c}, DType::f32),
         mean32 = Tensor::empty({n}, DType::f32), rstd32 = Tensor::empty({n}, DType::f32);
  ops::add_layernorm_forward(a.to(DType::f32), b.to(DType::f32), gamma.to(DType::f32),
                             beta.to(DType::f32), eps, sum32, y32, mean32, rstd32);
  expect_f32_matches_f64("sum f32", sum32, want_sum);
  expect_f32_matches_f64("y f32", y32, want_y);
  expect_f32_matches_f64("rstd f32", rstd32, want_rstd);
}

// ---- GELU -------------------------------------------------------------------------------------

TEST(Gelu, ForwardValuesAndGradient) {
  std::mt19937 rng(51);
  // gelu(1) = Φ(1) = 0.8413447460685429...; gelu(-1) = -(1 - Φ(1)); gelu(0) = 0.
  Tensor y = Tensor::empty({3}, DType::f64);
  ops::gelu_forward(f64({1, -1, 0}), y);
  expect_near_all(values(y), {0.8413447460685429, -0.15865525393145707, 0}, 1e-15, "gelu values");

  const int64_t n = draw(rng, 20, 60);
  const Tensor x = uniform({n}, rng, -4, 4), r = uniform({n}, rng);
  auto forward = [&] {
    Tensor out = Tensor::empty({n}, DType::f64);
    ops::gelu_forward(x, out);
    return out;
  };
  Tensor dx = Tensor::empty({n}, DType::f64);
  ops::gelu_backward(x, r, dx);
  expect_gradient("gelu", x, dx, forward, r, rng);

  Tensor inplace = x.clone();
  ops::gelu_forward(inplace, inplace);  // y aliasing x
  expect_near_all(values(inplace), values(forward()), 0, "in place");

  for (bool backward : {false, true}) {
    Tensor o32 = Tensor::empty({n}, DType::f32), o64 = Tensor::empty({n}, DType::f64);
    if (backward) {
      ops::gelu_backward(x.to(DType::f32), r.to(DType::f32), o32);
      ops::gelu_backward(x, r, o64);
    } else {
      ops::gelu_forward(x.to(DType::f32), o32);
      ops::gelu_forward(x, o64);
    }
    expect_f32_matches_f64(backward ? "gelu_backward" : "gelu_forward", o32, o64);
  }
}

// f32 GELU takes its own erf and exp2 (polynomials; kernels/cpu/gelu.cpp), f64 libm's. Over
// [-12, 12] in steps of 1e-4, across both of the erf's branch ends (|x| = √2 and 4√2), f32 is
// within the bound its erf error (2.5 ulp of 1 at most) allows: |x| 2^-22 (Φ's absolute error
// times x; measured: 2.3 |x| 2^-24) plus an ulp of the result, and for the derivative
// (1 + |x|) 2^-23 (measured: 1.3 (1 + |x|) 2^-24) plus an ulp. Infinities and NaN give what f64
// gives.
TEST(Gelu, F32StaysWithinItsErfBoundOfF64) {
  std::vector<double> xs;
  for (int i = -120000; i <= 120000; ++i) xs.push_back(i * 1e-4);
  for (double edge : {std::sqrt(2.0), 4 * std::sqrt(2.0)})
    for (double s : {-1.0, 1.0})
      for (int k = -8; k <= 8; ++k) xs.push_back(s * edge * (1 + k * 1e-7));
  const double inf = std::numeric_limits<double>::infinity();
  for (double special : {1e-30, -1e-30, 1e30, -1e30, 60.0, -60.0, inf, -inf, std::nan("")})
    xs.push_back(special);
  std::vector<double> x32s(xs.size());  // the f64 reference at f32's inputs
  for (size_t i = 0; i < xs.size(); ++i) x32s[i] = static_cast<float>(xs[i]);
  const int64_t n = static_cast<int64_t>(xs.size());
  const Tensor x = f64(x32s), ones = Tensor::from_vector(std::vector<double>(xs.size(), 1.0), {n});
  Tensor y64 = Tensor::empty({n}, DType::f64), g64 = y64.clone();
  Tensor y32 = Tensor::empty({n}, DType::f32), g32 = y32.clone();
  ops::gelu_forward(x, y64);
  ops::gelu_backward(x, ones, g64);
  ops::gelu_forward(x.to(DType::f32), y32);
  ops::gelu_backward(x.to(DType::f32), ones.to(DType::f32), g32);
  const std::vector<double> want_y = values(y64), want_g = values(g64);
  const std::vector<double> got_y = values(y32.to(DType::f64)), got_g = values(g32.to(DType::f64));
  auto ulp = [](double v) {
    const float f = std::fabs(static_cast<float>(v));
    return double(std::nextafter(f, std::numeric_limits<float>::infinity()) - f);
  };
  for (size_t i = 0; i < xs.size(); ++i) {
    const double v = x32s[i];
    for (bool backward : {false, true}) {
      const double want = backward ? want_g[i] : want_y[i];
      const double got = backward ? got_g[i] : got_y[i];
      const char* what = backward ? "gelu'" : "gelu";
      if (!std::isfinite(want) || !std::isfinite(v)) {
        ASSERT_TRUE(std::isnan(got) == std::isnan(want) && (std::isnan(got) || got == want))
            << what << "(" << v << "): f32 " << got << ", f64 " << want;
        continue;
      }
      const double bound =
          (backward ? std::ldexp(1 + std::fabs(v), -23) : std::ldexp(std::fabs(v), -22)) + ulp(want);
      ASSERT_LE(std::fabs(got - want), bound) << what << "(" << v << "): f32 " << got
                                              << ", f64 " << want;
    }
  }
}

// f32 GELU is a fixed sequence of IEEE operations (no libm call, no FMA: kernels/CMakeLists.txt
// builds kernels/cpu with -ffp-contract=off), so its bits are the same on every CPU and in each
// of gelu.cpp's instruction-set clones. The hash is of the x86-64 baseline build's bits (SSE, no
// clones): a CPU with AVX2 or AVX-512 runs a clone and must give the same, and so must aarch64
// (checked under qemu). Inputs: [-12, 12] in steps of 2^-10, an odd count so that the vector
// loops end in a scalar tail, and the specials.
TEST(Gelu, F32BitsAreTheSameOnEveryInstructionSet) {
  std::vector<float> x;
  for (int i = -12288; i <= 12288; ++i) x.push_back(std::ldexp(static_cast<float>(i), -10));
  const float inf = std::numeric_limits<float>::infinity();
  for (float special : {1e-30f, -1e-30f, 1e30f, -1e30f, inf, -inf, std::nanf("")}) x.push_back(special);
  const int64_t n = static_cast<int64_t>(x.size());
  std::vector<float> dy(x.size()), y(x.size()), dx(x.size());
  for (size_t i = 0; i < x.size(); ++i) dy[i] = 1 + static_cast<float>(i % 7) / 8;
  cpu::gelu_forward(x.data(), y.data(), n);
  cpu::gelu_backward(x.data(), dy.data(), dx.data(), n);
  uint64_t hash = 1469598103934665603ull;  // FNV-1a over the bits of y, then of dx
  for (const std::vector<float>* out : {&y, &dx})
    for (float v : *out) {
      // One NaN for all: an invalid operation (∞·0) makes x86's negative default NaN and Arm's
      // positive one, a difference of encoding, not of arithmetic.
      uint32_t bits = 0x7FC00000u;
      if (!std::isnan(v)) std::memcpy(&bits, &v, sizeof bits);
      for (int byte = 0; byte < 4; ++byte) hash = (hash ^ ((bits >> (8 * byte)) & 0xff)) * 1099511628211ull;
    }
  EXPECT_EQ(hash, 0xbda8df23eb9a1402ull) << "f32 GELU's bits differ from the x86-64 baseline's (y[1] = " << y[1]
                          << "): an FMA, or a reordering, in this CPU's code path";
}

// ---- Dropout ----------------------------------------------------------------------------------

TEST(Dropout, KeepsAboutOneMinusPAndScalesTheKept) {
  const ops::Sequences seqs = sequences({100, 0, 150, 250});
  const int64_t rows = seqs.tokens(), cols = 400, n = rows * cols;
  const double p = 0.3;
  const Tensor x = Tensor::from_vector(std::vector<double>(n, 2.0), {rows, cols});
  Tensor y = Tensor::empty({rows, cols}, DType::f64);
  ops::dropout_forward(x, p, kKey, seqs, y);
  int64_t kept = 0;
  for (double v : values(y)) {
    ASSERT_TRUE(v == 0 || v == 2.0 * keep_scale_by_contract(p)) << v;
    kept += v != 0;
  }
  // Binomial(n, 0.7): standard deviation sqrt(n p (1-p)) ≈ 205 draws, i.e. 0.001; allow 5σ.
  EXPECT_NEAR(static_cast<double>(kept) / n, 1 - p, 0.005);
}

// Element (t, c) of row t at position i of sequence b is kept exactly when the contract keeps
// element hidden_element(i, c) of ids[b], as ops.h says, and scaled as it says.
TEST(Dropout, MaskMatchesItsDefinition) {
  std::mt19937 rng(60);
  const std::vector<int32_t> lengths = ragged_lengths(rng, 5, 9);
  const std::vector<uint64_t> ids = random_ids(rng, lengths.size());
  const ops::Sequences seqs = sequences(lengths, ids);
  const int64_t rows = seqs.tokens(), cols = draw(rng, 3, 40);
  const double p = 0.4, scale = keep_scale_by_contract(p);
  const Tensor x = uniform({rows, cols}, rng, 1, 2);
  Tensor y = Tensor::empty({rows, cols}, DType::f64);
  ops::dropout_forward(x, p, kKey, seqs, y);
  const std::vector<double> xv = values(x), yv = values(y);
  for (size_t b = 0; b < lengths.size(); ++b)
    for (int64_t i = 0; i < lengths[b]; ++i)
      for (int64_t c = 0; c < cols; ++c) {
        const size_t e = static_cast<size_t>((seqs.host[b] + i) * cols + c);
        const bool keep = kept_by_contract(kKey, ids[b], hidden_element(i, c), p);
        ASSERT_EQ(yv[e], keep ? xv[e] * scale : 0.0) << "sequence " << b << ", position " << i
                                                     << ", column " << c;
      }
}

// A sequence's mask depends on the key, its id and the positions inside it only: the same
// sequences packed in another order, between other sequences, get the same rows, bit for bit;
// the step, the tensor, the seed and the id each give an independent mask; the dtype takes no
// part; without ids, sequence b has id b.
TEST(Dropout, MaskFollowsTheSequenceNotItsPlaceInTheBatch) {
  std::mt19937 rng(61);
  const int64_t cols = 37;
  const double p = 0.4;
  const std::vector<int32_t> lengths = {7, 0, 12, 3};
  const std::vector<uint64_t> ids = random_ids(rng, lengths.size());
  std::vector<Tensor> rows_of;  // each sequence's input rows, never 0
  for (int32_t len : lengths) rows_of.push_back(uniform({len, cols}, rng, 1, 2));

  // Packs sequences `order` (indices into the above) with their ids; returns each one's output
  // rows as a flat vector, in `order`.
  auto run = [&](const std::vector<size_t>& order, const RngKey& key, DType dt,
                 const std::vector<uint64_t>& with_ids) {
    std::vector<int32_t> lens;
    std::vector<uint64_t> pack_ids;
    std::vector<double> xv;
    for (size_t s : order) {
      lens.push_back(lengths[s]);
      pack_ids.push_back(with_ids[s]);
      const std::vector<double> r = values(rows_of[s]);
      xv.insert(xv.end(), r.begin(), r.end());
    }
    const ops::Sequences seqs = sequences(lens, pack_ids);
    const Tensor x = Tensor::from_vector(xv, {seqs.tokens(), cols}).to(dt);
    Tensor y = Tensor::empty({seqs.tokens(), cols}, dt);
    ops::dropout_forward(x, p, key, seqs, y);
    return values(y.to(DType::f64));
  };
  auto masks = [](const std::vector<double>& y) {
    std::vector<bool> m(y.size());
    for (size_t i = 0; i < y.size(); ++i) m[i] = y[i] != 0;
    return m;
  };
  auto fraction_differing = [](const std::vector<bool>& a, const std::vector<bool>& b) {
    int64_t d = 0;
    for (size_t i = 0; i < a.size(); ++i) d += a[i] != b[i];
    return static_cast<double>(d) / static_cast<double>(a.size());
  };
  const std::vector<size_t> in_order = {0, 1, 2, 3};
  const std::vector<double> base = run(in_order, kKey, DType::f64, ids);

  // Reversed, and one at a time: the same values per sequence.
  const std::vector<double> reversed = run({3, 2, 1, 0}, kKey, DType::f64, ids);
  size_t at = 0;
  for (size_t s = 0; s < lengths.size(); ++s) {
    const size_t n = static_cast<size_t>(lengths[s] * cols);
    size_t at_reversed = 0;
    for (size_t r = lengths.size() - 1; r > s; --r) at_reversed += static_cast<size_t>(lengths[r] * cols);
    const std::vector<double> alone = run({s}, kKey, DType::f64, ids);
    for (size_t e = 0; e < n; ++e) {
      ASSERT_EQ(reversed[at_reversed + e], base[at + e]) << "sequence " << s << " reversed";
      ASSERT_EQ(alone[e], base[at + e]) << "sequence " << s << " alone";
    }
    at += n;
  }

  EXPECT_EQ(masks(run(in_order, kKey, DType::f32, ids)), masks(base));  // not the dtype
  std::vector<uint64_t> positional(lengths.size());
  std::iota(positional.begin(), positional.end(), uint64_t{0});
  const Tensor x_all = uniform({22, cols}, rng);
  Tensor by_default = Tensor::empty({22, cols}, DType::f64), by_index = by_default.clone();
  ops::dropout_forward(x_all, p, kKey, sequences(lengths), by_default);
  ops::dropout_forward(x_all, p, kKey, sequences(lengths, positional), by_index);
  EXPECT_EQ(values(by_default), values(by_index));  // no ids: ids[b] = b

  // Independent masks differ at a fraction 2 p (1 - p) = 0.48 of the 814 elements (σ ≈ 0.018).
  RngKey next_step = kKey, other_tensor = kKey, other_seed = kKey, far_step = kKey;
  ++next_step.step;
  ++other_tensor.tensor;
  ++other_seed.seed;
  far_step.step += uint64_t{1} << 24;  // the step's bits beyond the counter's 24, in the key
  std::vector<uint64_t> other_ids = ids;
  for (uint64_t& id : other_ids) id ^= uint64_t{1} << 40;  // a bit of the id's high word
  for (const RngKey& k : {next_step, other_tensor, other_seed, far_step})
    EXPECT_NEAR(fraction_differing(masks(run(in_order, k, DType::f64, ids)), masks(base)),
                2 * p * (1 - p), 0.1);
  EXPECT_NEAR(fraction_differing(masks(run(in_order, kKey, DType::f64, other_ids)), masks(base)),
              2 * p * (1 - p), 0.1);
}

TEST(Dropout, ZeroCopiesInPlaceMatchesAndGradient) {
  std::mt19937 rng(62);
  const std::vector<int32_t> lengths = ragged_lengths(rng, 4, 6);
  const ops::Sequences seqs = sequences(lengths, random_ids(rng, lengths.size()));
  const Shape shape = {seqs.tokens(), draw(rng, 3, 9)};
  const Tensor x = uniform(shape, rng), r = uniform(shape, rng);
  Tensor y = Tensor::empty(shape, DType::f64);
  ops::dropout_forward(x, 0.0, kKey, seqs, y);
  EXPECT_EQ(values(y), values(x));

  const double p = 0.35;
  auto forward = [&] {
    Tensor out = Tensor::empty(shape, DType::f64);
    ops::dropout_forward(x, p, kKey, seqs, out);
    return out;
  };
  Tensor inplace = x.clone();
  ops::dropout_forward(inplace, p, kKey, seqs, inplace);
  EXPECT_EQ(values(inplace), values(forward()));

  Tensor dx = r.clone();
  ops::dropout_backward(dx, p, kKey, seqs, dx);  // dx aliasing dy
  expect_gradient("dropout", x, dx, forward, r, rng);

  Tensor y32 = Tensor::empty(shape, DType::f32);
  ops::dropout_forward(x.to(DType::f32), p, kKey, seqs, y32);
  expect_f32_matches_f64("dropout f32", y32, forward());
}

// The sizes a dropout element index holds (core/rng.h): rows of at most 2^24 columns, sequences
// of at most 2^16 tokens, at most 2^8 heads. Beyond them the ops refuse to draw, naming the
// limit; without dropout the same shapes run.
TEST(Dropout, RefusesSizesBeyondTheDrawLimits) {
  const ops::Sequences none = sequences({});
  const Tensor wide = Tensor::empty({0, (int64_t{1} << 24) + 1}, DType::f32);  // no storage
  Tensor wide_out = Tensor::empty(wide.shape(), DType::f32);
  expect_error([&] { ops::dropout_forward(wide, 0.1, kKey, none, wide_out); },
               {"dropout_forward", "row width", "16777217", "2^24"});
  ops::dropout_forward(wide, 0.0, kKey, none, wide_out);

  const int64_t longest = (int64_t{1} << 16) + 1;
  const ops::Sequences one_long = sequences({2, static_cast<int32_t>(longest)});
  const Tensor tall = Tensor::zeros({longest + 2, 1}, DType::f32);
  Tensor tall_out = Tensor::empty(tall.shape(), DType::f32);
  expect_error([&] { ops::dropout_backward(tall, 0.1, kKey, one_long, tall_out); },
               {"dropout_backward", "longest sequence", "65537", "2^16"});
  ops::dropout_backward(tall, 0.0, kKey, one_long, tall_out);
  Tensor lse = Tensor::empty({1, longest + 2}, DType::f32);
  expect_error(
      [&] { ops::attention_forward(tall, tall, tall, one_long, 1, true, 0.1, kKey, tall_out, lse); },
      {"attention_forward", "longest sequence", "2^16"});

  const int64_t heads = 257;
  const ops::Sequences two = sequences({2});
  const Tensor q = Tensor::zeros({2, heads}, DType::f64);
  Tensor out = Tensor::empty(q.shape(), DType::f64), dq = out.clone(), dk = out.clone(),
         dv = out.clone();
  Tensor heads_lse = Tensor::empty({heads, 2}, DType::f64);
  expect_error(
      [&] { ops::attention_forward(q, q, q, two, heads, false, 0.1, kKey, out, heads_lse); },
      {"attention_forward", "heads", "257", "2^8"});
  ops::attention_forward(q, q, q, two, heads, false, 0.0, kKey, out, heads_lse);
  expect_error(
      [&] {
        ops::attention_backward(q, q, q, q, out, heads_lse, two, heads, false, 0.1, kKey, dq, dk,
                                dv);
      },
      {"attention_backward", "heads", "2^8"});
}

// ---- Dense layers -----------------------------------------------------------------------------

TEST(Linear, ForwardMatchesDefinition) {
  std::mt19937 rng(91);
  for (bool gelu : {false, true}) {
    SCOPED_TRACE(gelu ? "gelu" : "none");
    const int64_t n = draw(rng, 1, 7), in = draw(rng, 1, 9), out = draw(rng, 1, 9);
    const Tensor x = uniform({n, in}, rng), w = uniform({out, in}, rng), b = uniform({out}, rng);
    const ops::Activation act = gelu ? ops::Activation::gelu : ops::Activation::none;
    Tensor y = Tensor::empty({n, out}, DType::f64), pre = Tensor::empty({n, out}, DType::f64);
    ops::linear_forward(x, w, b, y, act, gelu ? &pre : nullptr);
    expect_near_all(values(y), naive_linear(values(x), values(w), values(b), n, in, out, gelu),
                    1e-14, "y");
    if (gelu) {
      expect_near_all(values(pre), naive_linear(values(x), values(w), values(b), n, in, out, false),
                      1e-14, "pre");
      Tensor y_alone = Tensor::empty({n, out}, DType::f64);  // no pre kept: the same y
      ops::linear_forward(x, w, b, y_alone, act);
      EXPECT_EQ(values(y_alone), values(y));
    }
    Tensor y32 = Tensor::empty({n, out}, DType::f32), pre32 = Tensor::empty({n, out}, DType::f32);
    ops::linear_forward(x.to(DType::f32), w.to(DType::f32), b.to(DType::f32), y32, act,
                        gelu ? &pre32 : nullptr);
    expect_f32_matches_f64("y f32", y32, y);
    if (gelu) expect_f32_matches_f64("pre f32", pre32, pre);
  }
}

// dw and dbias accumulate onto what is there; dx is overwritten, or accumulated on request.
TEST(Linear, Gradients) {
  std::mt19937 rng(92);
  const int64_t n = draw(rng, 2, 7), in = draw(rng, 1, 8), out = draw(rng, 1, 8);
  const Tensor x = uniform({n, in}, rng), w = uniform({out, in}, rng), b = uniform({out}, rng),
               r = uniform({n, out}, rng);
  auto forward = [&] {
    Tensor y = Tensor::empty({n, out}, DType::f64);
    ops::linear_forward(x, w, b, y);
    return y;
  };
  const Tensor dw0 = uniform({out, in}, rng), db0 = uniform({out}, rng);
  Tensor dx = uniform({n, in}, rng), dw = dw0.clone(), db = db0.clone();
  ops::linear_backward(x, w, r, &dx, dw, &db);
  expect_gradient("linear dx", x, dx, forward, r, rng);
  expect_gradient("linear dw", w, difference(dw, dw0), forward, r, rng);
  expect_gradient("linear dbias", b, difference(db, db0), forward, r, rng);

  const Tensor base = uniform({n, in}, rng);
  Tensor sum = base.clone(), dw2 = dw0.clone(), db2 = db0.clone();
  ops::linear_backward(x, w, r, &sum, dw2, &db2, nullptr, true);
  expect_near_all(values(difference(sum, base)), values(dx), 1e-15, "accumulate_dx");
  Tensor dw3 = dw0.clone(), db3 = db0.clone();
  ops::linear_backward(x, w, r, nullptr, dw3, &db3);  // no dx wanted: the same dw, dbias
  EXPECT_EQ(values(dw3), values(dw));
  EXPECT_EQ(values(db3), values(db));

  Tensor dx32 = Tensor::empty({n, in}, DType::f32), dw32 = dw0.to(DType::f32),
         db32 = db0.to(DType::f32);
  ops::linear_backward(x.to(DType::f32), w.to(DType::f32), r.to(DType::f32), &dx32, dw32, &db32);
  expect_f32_matches_f64("dx f32", dx32, dx);
  expect_f32_matches_f64("dw f32", dw32, dw);
  expect_f32_matches_f64("dbias f32", db32, db);
}

// The FFN of a RoBERTa layer, y = (gelu(x w1ᵀ + b1)) w2ᵀ + b2: the first layer's GELU epilogue
// keeps `pre`, the second layer's backward turns dy into d loss/d pre through input_gelu_pre,
// and the first layer's backward takes that as its dy. Every parameter and x is checked.
TEST(Linear, GeluEpilogueAndInputGeluPreGradients) {
  std::mt19937 rng(93);
  const int64_t n = draw(rng, 2, 6), d = draw(rng, 2, 6), hidden = draw(rng, 3, 9);
  const Tensor x = uniform({n, d}, rng, -2, 2), w1 = uniform({hidden, d}, rng),
               b1 = uniform({hidden}, rng), w2 = uniform({d, hidden}, rng), b2 = uniform({d}, rng),
               r = uniform({n, d}, rng);
  Tensor pre = Tensor::empty({n, hidden}, DType::f64), h = Tensor::empty({n, hidden}, DType::f64);
  auto forward = [&] {
    Tensor y = Tensor::empty({n, d}, DType::f64);
    ops::linear_forward(x, w1, b1, h, ops::Activation::gelu, &pre);
    ops::linear_forward(h, w2, b2, y);
    return y;
  };
  forward();
  Tensor dpre = Tensor::empty({n, hidden}, DType::f64), dx = Tensor::empty({n, d}, DType::f64);
  Tensor dw1 = Tensor::zeros({hidden, d}, DType::f64), db1 = Tensor::zeros({hidden}, DType::f64),
         dw2 = Tensor::zeros({d, hidden}, DType::f64), db2 = Tensor::zeros({d}, DType::f64);
  ops::linear_backward(h, w2, r, &dpre, dw2, &db2, &pre);
  ops::linear_backward(x, w1, dpre, &dx, dw1, &db1);
  expect_gradient("ffn dx", x, dx, forward, r, rng);
  expect_gradient("ffn dw1", w1, dw1, forward, r, rng);
  expect_gradient("ffn db1", b1, db1, forward, r, rng);
  expect_gradient("ffn dw2", w2, dw2, forward, r, rng);
  expect_gradient("ffn db2", b2, db2, forward, r, rng);
}

// ---- Attention --------------------------------------------------------------------------------

TEST(Attention, ForwardMatchesDefinition) {
  std::mt19937 rng(71);
  for (const AttentionCase& c : attention_cases(rng)) {
    SCOPED_TRACE(c.name);
    const ops::Sequences seqs = sequences(c.lengths, c.ids);
    const Tensor q = uniform(c.tokens(), rng, -2, 2), k = uniform(c.tokens(), rng, -2, 2),
                 v = uniform(c.tokens(), rng);
    Tensor out = Tensor::empty(c.tokens(), DType::f64), lse = Tensor::empty(c.lse(), DType::f64);
    ops::attention_forward(q, k, v, seqs, c.heads, c.causal, c.dropout_p, kKey, out, lse);
    std::vector<double> want_out, want_lse;
    naive_attention(c, values(q), values(k), values(v), kKey, want_out, want_lse);
    expect_near_all(values(lse), want_lse, 1e-13, "lse");
    expect_near_all(values(out), want_out, 1e-13, "out");

    Tensor out32 = Tensor::empty(c.tokens(), DType::f32),
           lse32 = Tensor::empty(c.lse(), DType::f32);
    ops::attention_forward(q.to(DType::f32), k.to(DType::f32), v.to(DType::f32), seqs, c.heads,
                           c.causal, c.dropout_p, kKey, out32, lse32);
    expect_f32_matches_f64("out f32", out32, out);
    expect_f32_matches_f64("lse f32", lse32, lse);
  }
}

// The backward pass takes the forward's out and lse at the unperturbed point; the finite
// differences rerun the whole forward pass, dropout masks included.
TEST(Attention, Gradients) {
  std::mt19937 rng(72);
  for (const AttentionCase& c : attention_cases(rng)) {
    SCOPED_TRACE(c.name);
    const ops::Sequences seqs = sequences(c.lengths, c.ids);
    const Tensor q = uniform(c.tokens(), rng, -2, 2), k = uniform(c.tokens(), rng, -2, 2),
                 v = uniform(c.tokens(), rng), r = uniform(c.tokens(), rng);
    auto run = [&](const Tensor& qq, const Tensor& kk, const Tensor& vv, Tensor& out, Tensor& lse) {
      ops::attention_forward(qq, kk, vv, seqs, c.heads, c.causal, c.dropout_p, kKey, out, lse);
    };
    auto forward = [&] {
      Tensor out = Tensor::empty(c.tokens(), DType::f64), lse = Tensor::empty(c.lse(), DType::f64);
      run(q, k, v, out, lse);
      return out;
    };
    Tensor out = Tensor::empty(c.tokens(), DType::f64), lse = Tensor::empty(c.lse(), DType::f64);
    run(q, k, v, out, lse);
    Tensor dq = Tensor::empty(c.tokens(), DType::f64), dk = Tensor::empty(c.tokens(), DType::f64),
           dv = Tensor::empty(c.tokens(), DType::f64);
    ops::attention_backward(r, q, k, v, out, lse, seqs, c.heads, c.causal, c.dropout_p, kKey, dq,
                            dk, dv);
    expect_gradient("dq", q, dq, forward, r, rng);
    expect_gradient("dk", k, dk, forward, r, rng);
    expect_gradient("dv", v, dv, forward, r, rng);

    // f32 backward against f64 on the same data.
    const Tensor q32 = q.to(DType::f32), k32 = k.to(DType::f32), v32 = v.to(DType::f32);
    Tensor out32 = Tensor::empty(c.tokens(), DType::f32),
           lse32 = Tensor::empty(c.lse(), DType::f32);
    run(q32, k32, v32, out32, lse32);
    Tensor dq32 = Tensor::empty(c.tokens(), DType::f32),
           dk32 = Tensor::empty(c.tokens(), DType::f32),
           dv32 = Tensor::empty(c.tokens(), DType::f32);
    ops::attention_backward(r.to(DType::f32), q32, k32, v32, out32, lse32, seqs, c.heads, c.causal,
                            c.dropout_p, kKey, dq32, dk32, dv32);
    expect_f32_matches_f64("dq f32", dq32, dq);
    expect_f32_matches_f64("dk f32", dk32, dk);
    expect_f32_matches_f64("dv f32", dv32, dv);
  }
}

// With dropout, a sequence's attention (out, lse and the three gradients) is the same, bit for
// bit, in a batch with others and alone with its id: the masks follow the sequence. With another
// id it changes.
TEST(Attention, DropoutFollowsTheSequenceNotItsPlaceInTheBatch) {
  std::mt19937 rng(74);
  const int64_t heads = 2, head_dim = 3, ld = heads * head_dim;
  const std::vector<int32_t> lengths = {4, 6, 0, 5};
  const std::vector<uint64_t> ids = random_ids(rng, lengths.size());
  const ops::Sequences seqs = sequences(lengths, ids);
  const int64_t tokens = seqs.tokens();
  const Tensor q = uniform({tokens, ld}, rng, -2, 2), k = uniform({tokens, ld}, rng, -2, 2),
               v = uniform({tokens, ld}, rng), dout = uniform({tokens, ld}, rng);
  struct Result {
    std::vector<double> out, lse, dq, dk, dv;
  };
  auto run = [&](const ops::Sequences& s, const Tensor& qq, const Tensor& kk, const Tensor& vv,
                 const Tensor& dd) {
    const int64_t t = s.tokens();
    Tensor out = Tensor::empty({t, ld}, DType::f64), lse = Tensor::empty({heads, t}, DType::f64);
    Tensor dq = out.clone(), dk = out.clone(), dv = out.clone();
    ops::attention_forward(qq, kk, vv, s, heads, true, 0.3, kKey, out, lse);
    ops::attention_backward(dd, qq, kk, vv, out, lse, s, heads, true, 0.3, kKey, dq, dk, dv);
    return Result{values(out), values(lse), values(dq), values(dk), values(dv)};
  };
  const Result together = run(seqs, q, k, v, dout);
  const int64_t first = seqs.host[1];  // sequence 1, rows [4, 10)
  const int32_t len = lengths[1];
  auto rows = [&](const Tensor& t) { return t.slice(0, first, first + len).clone(); };
  const Result alone =
      run(sequences({len}, {ids[1]}), rows(q), rows(k), rows(v), rows(dout));
  for (int64_t e = 0; e < len * ld; ++e) {
    const size_t at = static_cast<size_t>(first * ld + e), i = static_cast<size_t>(e);
    ASSERT_EQ(alone.out[i], together.out[at]) << "out element " << e;
    ASSERT_EQ(alone.dq[i], together.dq[at]) << "dq element " << e;
    ASSERT_EQ(alone.dk[i], together.dk[at]) << "dk element " << e;
    ASSERT_EQ(alone.dv[i], together.dv[at]) << "dv element " << e;
  }
  for (int64_t h = 0; h < heads; ++h)
    for (int64_t i = 0; i < len; ++i)
      ASSERT_EQ(alone.lse[static_cast<size_t>(h * len + i)],
                together.lse[static_cast<size_t>(h * tokens + first + i)]);
  const Result renamed =
      run(sequences({len}, {ids[1] + 1}), rows(q), rows(k), rows(v), rows(dout));
  double changed = 0;
  for (int64_t e = 0; e < len * ld; ++e)
    changed = std::max(changed, std::abs(renamed.out[static_cast<size_t>(e)] -
                                         alone.out[static_cast<size_t>(e)]));
  EXPECT_GT(changed, 1e-3) << "another id, the same masks";
}

// A one-token sequence attends to itself only: out = v, lse = its one score, dv = dout and no
// gradient reaches q or k (the softmax of a single score is constant). Empty sequences around it
// and a batch with no tokens at all have nothing to compute.
TEST(Attention, SingleTokenAndEmptySequences) {
  std::mt19937 rng(73);
  const int64_t heads = 2, head_dim = 3, ld = heads * head_dim;
  const ops::Sequences one = sequences({0, 1, 0});
  const Tensor q = uniform({1, ld}, rng), k = uniform({1, ld}, rng), v = uniform({1, ld}, rng),
               dout = uniform({1, ld}, rng);
  Tensor out = Tensor::empty({1, ld}, DType::f64), lse = Tensor::empty({heads, 1}, DType::f64);
  ops::attention_forward(q, k, v, one, heads, true, 0.0, kKey, out, lse);
  EXPECT_EQ(values(out), values(v));
  const std::vector<double> qv = values(q), kv = values(k), lv = values(lse);
  for (int64_t h = 0; h < heads; ++h) {
    double s = 0;
    for (int64_t e = 0; e < head_dim; ++e) s += qv[h * head_dim + e] * kv[h * head_dim + e];
    EXPECT_NEAR(lv[h], s / std::sqrt(3.0), 1e-15);
  }
  Tensor dq = Tensor::empty({1, ld}, DType::f64), dk = Tensor::empty({1, ld}, DType::f64),
         dv = Tensor::empty({1, ld}, DType::f64);
  ops::attention_backward(dout, q, k, v, out, lse, one, heads, true, 0.0, kKey, dq, dk, dv);
  EXPECT_EQ(values(dv), values(dout));
  expect_near_all(values(dq), std::vector<double>(ld, 0.0), 1e-15, "dq");
  expect_near_all(values(dk), std::vector<double>(ld, 0.0), 1e-15, "dk");

  const ops::Sequences none = sequences({0, 0});
  const Tensor empty = Tensor::empty({0, ld}, DType::f64);
  Tensor e_out = Tensor::empty({0, ld}, DType::f64), e_lse = Tensor::empty({heads, 0}, DType::f64);
  Tensor e_dq = Tensor::empty({0, ld}, DType::f64), e_dk = Tensor::empty({0, ld}, DType::f64),
         e_dv = Tensor::empty({0, ld}, DType::f64);
  ops::attention_forward(empty, empty, empty, none, heads, false, 0.1, kKey, e_out, e_lse);
  ops::attention_backward(empty, empty, empty, empty, e_out, e_lse, none, heads, false, 0.1, kKey,
                          e_dq, e_dk, e_dv);
}

namespace {

// Expects the same bits: shape, dtype and bytes (of a view, those of its elements).
void expect_same_bits(const Tensor& got, const Tensor& want, const std::string& what) {
  ASSERT_EQ(got.shape(), want.shape()) << what;
  ASSERT_EQ(got.dtype(), want.dtype()) << what;
  const Tensor a = got.clone(), b = want.clone();
  // An empty tensor has no buffer: memcmp of null pointers is undefined even for 0 bytes.
  EXPECT_TRUE(a.nbytes() == 0 || std::memcmp(a.raw(), b.raw(), a.nbytes()) == 0) << what << ": bits differ";
}

Tensor nans(const Shape& shape, DType dtype) {
  return Tensor::from_vector(std::vector<double>(static_cast<size_t>(shape_numel(shape)),
                                                 std::numeric_limits<double>::quiet_NaN()),
                             shape)
      .to(dtype);
}

}  // namespace

// q, k, v read as the column slices [0, d), [d, 2d), [2d, 3d) of one [T, 3d] tensor (a fused
// Q|K|V projection's output) and dq, dk, dv written into the slices of another give the bits of
// contiguous copies: the same GEMMs on the same values, with other leading dimensions. The
// gradients go once to a [T, 3d] tensor and once to a [T, 3d + 3] one (a row stride other than
// q's), whose last 3 columns must keep their NaNs. The small random cases and a larger one, whose
// GEMMs take OpenBLAS's blocked kernels.
TEST(Attention, RowStridedViewsGiveTheBitsOfContiguousCopies) {
  std::mt19937 rng(75);
  std::vector<AttentionCase> cases = attention_cases(rng);
  cases.push_back({"larger, causal with dropout", {70, 0, 1, 45}, random_ids(rng, 4), 3, 16, true,
                   0.1});
  for (const AttentionCase& c : cases)
    for (const DType dtype : {DType::f64, DType::f32}) {
      SCOPED_TRACE(c.name + " " + dtype_name(dtype));
      const ops::Sequences seqs = sequences(c.lengths, c.ids);
      const int64_t tokens = total(c.lengths), d = c.heads * c.head_dim;
      const Tensor qkv = uniform({tokens, 3 * d}, rng, -2, 2).to(dtype),
                   dout = uniform(c.tokens(), rng).to(dtype);
      const Tensor q = qkv.slice(1, 0, d), k = qkv.slice(1, d, 2 * d),
                   v = qkv.slice(1, 2 * d, 3 * d);
      auto forward = [&](const Tensor& qq, const Tensor& kk, const Tensor& vv, Tensor& out,
                         Tensor& lse) {
        ops::attention_forward(qq, kk, vv, seqs, c.heads, c.causal, c.dropout_p, kKey, out, lse);
      };
      auto backward = [&](const Tensor& qq, const Tensor& kk, const Tensor& vv, const Tensor& out,
                          const Tensor& lse, Tensor& dq, Tensor& dk, Tensor& dv) {
        ops::attention_backward(dout, qq, kk, vv, out, lse, seqs, c.heads, c.causal, c.dropout_p,
                                kKey, dq, dk, dv);
      };
      const Tensor qc = q.clone(), kc = k.clone(), vc = v.clone();
      Tensor out = Tensor::empty(c.tokens(), dtype), lse = Tensor::empty(c.lse(), dtype);
      Tensor dq = Tensor::empty(c.tokens(), dtype), dk = Tensor::empty(c.tokens(), dtype),
             dv = Tensor::empty(c.tokens(), dtype);
      forward(qc, kc, vc, out, lse);
      backward(qc, kc, vc, out, lse, dq, dk, dv);

      Tensor s_out = nans(c.tokens(), dtype), s_lse = nans(c.lse(), dtype);
      forward(q, k, v, s_out, s_lse);
      expect_same_bits(s_out, out, "out");
      expect_same_bits(s_lse, lse, "lse");
      for (const int64_t width : {3 * d, 3 * d + 3}) {
        SCOPED_TRACE("gradients of row stride " + std::to_string(width));
        const Tensor grads = nans({tokens, width}, dtype);
        Tensor gq = grads.slice(1, 0, d), gk = grads.slice(1, d, 2 * d),
               gv = grads.slice(1, 2 * d, 3 * d);
        backward(q, k, v, s_out, s_lse, gq, gk, gv);
        expect_same_bits(gq, dq, "dq");
        expect_same_bits(gk, dk, "dk");
        expect_same_bits(gv, dv, "dv");
        expect_same_bits(grads.slice(1, 3 * d, width), nans({tokens, width - 3 * d}, dtype),
                         "columns past dv");
      }
    }
}

// attention_over_ranges is causal attention when each query row's range is its sequence up to
// itself: over the packed Q, K, V of ragged sequences (a one-token one, an empty one), the rows
// of causal attention_forward, in f64 to rounding; and bidirectional attention when every range
// is its whole sequence. A range that is empty or leaves the rows is refused, naming the query
// row, before anything is written.
TEST(Attention, OverRangesIsAttentionWhenTheRangesSaySo) {
  std::mt19937 rng(77);
  const std::vector<int32_t> lengths = {5, 1, 0, 9};
  const ops::Sequences seqs = sequences(lengths, {});
  const int64_t heads = 3, head_dim = 4, d = heads * head_dim, tokens = 15;
  const Tensor qkv = uniform({tokens, 3 * d}, rng, -2, 2);
  const Tensor q = qkv.slice(1, 0, d), k = qkv.slice(1, d, 2 * d), v = qkv.slice(1, 2 * d, 3 * d);
  for (const bool causal : {true, false}) {
    SCOPED_TRACE(causal ? "causal" : "bidirectional");
    Tensor want = Tensor::empty({tokens, d}, DType::f64), lse = Tensor::empty({heads, tokens}, DType::f64);
    ops::attention_forward(q, k, v, seqs, heads, causal, 0.0, kKey, want, lse);
    std::vector<int32_t> ranges;
    for (size_t b = 0; b + 1 < seqs.host.size(); ++b)
      for (int32_t t = seqs.host[b]; t < seqs.host[b + 1]; ++t)
        ranges.insert(ranges.end(), {seqs.host[b], causal ? t + 1 : seqs.host[b + 1]});
    Tensor got = nans({tokens, d}, DType::f64);
    ops::attention_over_ranges(q, k, v, ints(ranges, {tokens, 2}), heads, got);
    const std::vector<double> g = values(got), w = values(want);
    for (size_t i = 0; i < w.size(); ++i) EXPECT_NEAR(g[i], w[i], 1e-14) << "element " << i;
  }
  Tensor out = nans({2, d}, DType::f64);
  expect_error([&] { ops::attention_over_ranges(q.slice(0, 0, 2), k, v, ints({0, 3, 4, 4}, {2, 2}), heads, out); },
               {"attention_over_ranges", "query row 1", "[4, 4)"});
  expect_error([&] { ops::attention_over_ranges(q.slice(0, 0, 2), k, v, ints({14, 16, 0, 1}, {2, 2}), heads, out); },
               {"attention_over_ranges", "query row 0", "[14, 16)", "[0, 15)"});
  const std::vector<double> untouched = values(out);
  EXPECT_TRUE(std::all_of(untouched.begin(), untouched.end(), [](double x) { return std::isnan(x); }));
  expect_error([&] { ops::attention_over_ranges(q.slice(0, 0, 2), k, v.clone(), ints({0, 1, 0, 1}, {2, 2}), heads, out); },
               {"attention_over_ranges", "v", "row stride"});
}

// ---- Softmax cross-entropy ----------------------------------------------------------------------

// A vocabulary padded from `valid` to `cols` columns, the padding filled with logits large enough
// to dominate the softmax if it took part; two rows ignored.
TEST(CrossEntropy, ValidColumnsIgnoredRowsAndGradient) {
  std::mt19937 rng(81);
  const int64_t n = draw(rng, 4, 8), valid = draw(rng, 3, 11), cols = valid + draw(rng, 1, 5);
  const int32_t ignore = -100;
  std::vector<int32_t> tv(static_cast<size_t>(n));
  for (int32_t& t : tv) t = static_cast<int32_t>(draw(rng, 0, valid - 1));
  tv[1] = ignore;
  tv[n - 1] = ignore;
  const Tensor targets = ints(tv, {n});
  std::vector<double> lv = values(uniform({n, cols}, rng, -3, 3));
  for (int64_t i = 0; i < n; ++i)
    for (int64_t j = valid; j < cols; ++j) lv[i * cols + j] = 40;
  const Tensor logits = Tensor::from_vector(lv, {n, cols});
  auto forward = [&] {
    Tensor losses = Tensor::empty({n}, DType::f64);
    ops::softmax_cross_entropy(logits, targets, ignore, losses, nullptr, 1.0, valid);
    return losses;
  };
  const std::vector<double> losses = values(forward());
  for (int64_t i = 0; i < n; ++i) {
    if (tv[i] == ignore) {
      EXPECT_EQ(losses[i], 0.0);
      continue;
    }
    double z = 0;
    for (int64_t j = 0; j < valid; ++j) z += std::exp(lv[i * cols + j]);
    EXPECT_NEAR(losses[i], -std::log(std::exp(lv[i * cols + tv[i]]) / z), 1e-13);
  }

  // The op takes a scalar upstream gradient: L = dloss Σ losses, i.e. R filled with dloss.
  const double dloss = 0.7;
  const Tensor r = Tensor::from_vector(std::vector<double>(n, dloss), {n});
  Tensor dlogits = uniform({n, cols}, rng);  // overwritten, ignored rows and padding included
  Tensor again = Tensor::empty({n}, DType::f64);
  ops::softmax_cross_entropy(logits, targets, ignore, again, &dlogits, dloss, valid);
  EXPECT_EQ(values(again), losses);
  const std::vector<double> dv = values(dlogits);
  for (int64_t j = 0; j < cols; ++j) EXPECT_EQ(dv[cols + j], 0.0);  // ignored row 1
  for (int64_t i = 0; i < n; ++i)
    for (int64_t j = valid; j < cols; ++j) EXPECT_EQ(dv[i * cols + j], 0.0);  // padding
  expect_gradient("dlogits", logits, dlogits, forward, r, rng);

  // In place: the logits become their gradient, with the same losses, bit for bit.
  Tensor inplace = logits.clone(), losses_inplace = Tensor::empty({n}, DType::f64);
  ops::softmax_cross_entropy(inplace, targets, ignore, losses_inplace, &inplace, dloss, valid);
  EXPECT_EQ(values(losses_inplace), losses);
  EXPECT_EQ(values(inplace), dv);

  Tensor l32 = Tensor::empty({n}, DType::f32), d32 = Tensor::empty({n, cols}, DType::f32);
  ops::softmax_cross_entropy(logits.to(DType::f32), targets, ignore, l32, &d32, dloss, valid);
  expect_f32_matches_f64("losses f32", l32, again);
  expect_f32_matches_f64("dlogits f32", d32, dlogits);
}

TEST(CrossEntropy, StableForLargeLogits) {
  // Logits near 1000 overflow exp without the maximum taken out; the loss only depends on the
  // differences: -log softmax([1000, 1001, 1003])[1] = log(1 + e + e³) - 1.
  for (DType dt : {DType::f32, DType::f64}) {
    Tensor losses = Tensor::empty({1}, dt), d = Tensor::empty({1, 3}, dt);
    ops::softmax_cross_entropy(f64({1000, 1001, 1003}).reshape({1, 3}).to(dt), ints({1}, {1}), -1,
                               losses, &d);
    const double want = std::log(1 + std::exp(1.0) + std::exp(3.0)) - 1;
    EXPECT_NEAR(values(losses.to(DType::f64))[0], want, dt == DType::f32 ? 1e-5 : 1e-13);
    const std::vector<double> g = values(d.to(DType::f64));
    EXPECT_NEAR(g[0] + g[1] + g[2], 0.0, 1e-6);  // softmax sums to 1, minus the one-hot
  }
}

// ---- Sequences ----------------------------------------------------------------------------------

TEST(Sequences, FromLengths) {
  const ops::Sequences s = sequences({3, 0, 1, 5});
  EXPECT_EQ(s.host, (std::vector<int32_t>{0, 3, 3, 4, 9}));
  EXPECT_EQ(s.count(), 4);
  EXPECT_EQ(s.tokens(), 9);
  EXPECT_EQ(s.max_len, 5);
  EXPECT_EQ(s.offsets.dtype(), DType::i32);
  EXPECT_EQ(s.offsets.shape(), (Shape{5}));
  EXPECT_EQ(s.offsets.to_vector<int32_t>(), s.host);

  // Without ids, sequence b has id b; the device copy holds the same bits as i64.
  EXPECT_EQ(s.host_ids, (std::vector<uint64_t>{0, 1, 2, 3}));
  EXPECT_EQ(s.ids.dtype(), DType::i64);
  EXPECT_EQ(s.ids.to_vector<int64_t>(), (std::vector<int64_t>{0, 1, 2, 3}));
  const std::vector<uint64_t> ids = {7, ~uint64_t{0}, uint64_t{1} << 63, 0};
  const ops::Sequences with_ids = sequences({3, 0, 1, 5}, ids);
  EXPECT_EQ(with_ids.host_ids, ids);
  EXPECT_EQ(with_ids.ids.to_vector<int64_t>(),
            (std::vector<int64_t>{7, -1, std::numeric_limits<int64_t>::min(), 0}));

  const ops::Sequences none = sequences({});
  EXPECT_EQ(none.host, (std::vector<int32_t>{0}));
  EXPECT_EQ(none.count(), 0);
  EXPECT_EQ(none.tokens(), 0);
  EXPECT_EQ(none.max_len, 0);
  EXPECT_TRUE(none.host_ids.empty());

  expect_error([] { sequences({2, -1, 3}); }, {"Sequences::from_lengths", "sequence 1", "-1"});
  expect_error([] { sequences({2, 3}, {5}); }, {"Sequences::from_lengths", "1 ids for 2 sequences"});
}

// ---- Sequence sums and the pooling head ---------------------------------------------------------

TEST(Pooling, SegmentSumAndGradient) {
  std::mt19937 rng(101);
  const std::vector<int32_t> lengths = ragged_lengths(rng, 5, 6);
  const ops::Sequences seqs = sequences(lengths);
  const int64_t tokens = total(lengths), batch = 5, d = draw(rng, 1, 6);
  const Tensor x = uniform({tokens, d}, rng), r = uniform({batch, d}, rng);
  auto forward = [&] {
    Tensor out = uniform({batch, d}, rng);  // overwritten, empty sequences included
    ops::segment_sum(x, seqs, out);
    return out;
  };
  const std::vector<double> out = values(forward()), xv = values(x);
  for (int64_t b = 0; b < batch; ++b)
    for (int64_t e = 0; e < d; ++e) {
      double s = 0;
      for (int64_t t = seqs.host[b]; t < seqs.host[b + 1]; ++t) s += xv[t * d + e];
      EXPECT_NEAR(out[b * d + e], s, 1e-15);
    }

  Tensor dx = uniform({tokens, d}, rng);
  ops::segment_sum_backward(r, seqs, dx);
  expect_gradient("segment_sum", x, dx, forward, r, rng);
  const Tensor base = uniform({tokens, d}, rng);
  Tensor sum = base.clone();
  ops::segment_sum_backward(r, seqs, sum, true);
  expect_near_all(values(difference(sum, base)), values(dx), 1e-15, "accumulate");

  Tensor out32 = Tensor::empty({batch, d}, DType::f32);
  ops::segment_sum(x.to(DType::f32), seqs, out32);
  expect_f32_matches_f64("segment_sum f32", out32, Tensor::from_vector(out, {batch, d}));
}

TEST(Pooling, ForwardMatchesDefinition) {
  std::mt19937 rng(102);
  const std::vector<int32_t> lengths = ragged_lengths(rng, 4, 6);
  const ops::Sequences seqs = sequences(lengths);
  const int64_t tokens = total(lengths), batch = 4, d = draw(rng, 2, 6);
  const double eps = 1e-12;
  const Tensor x = uniform({tokens, d}, rng), l = uniform({tokens, d}, rng),
               g = uniform({batch, d}, rng);
  Tensor v = uniform({batch, d}, rng), a = Tensor::empty({tokens}, DType::f64);
  ops::pooling_forward(x, l, g, seqs, eps, v, a);
  const std::vector<double> xv = values(x), lv = values(l), gv = values(g);
  std::vector<double> want_v(static_cast<size_t>(batch * d), 0.0), want_a(tokens);
  for (int64_t b = 0; b < batch; ++b)
    for (int64_t t = seqs.host[b]; t < seqs.host[b + 1]; ++t) {
      want_a[t] = naive_cosine(&lv[t * d], &gv[b * d], d, eps);
      for (int64_t e = 0; e < d; ++e) want_v[b * d + e] += want_a[t] * xv[t * d + e];
    }
  expect_near_all(values(a), want_a, 1e-15, "a");
  expect_near_all(values(v), want_v, 1e-14, "v");

  Tensor v32 = Tensor::empty({batch, d}, DType::f32), a32 = Tensor::empty({tokens}, DType::f32);
  ops::pooling_forward(x.to(DType::f32), l.to(DType::f32), g.to(DType::f32), seqs, eps, v32, a32);
  expect_f32_matches_f64("v f32", v32, v);
  expect_f32_matches_f64("a f32", a32, a);
}

// Both branches of the cosine: with eps = 0.5 and a third of the l rows shrunk, some tokens have
// ‖l‖ ‖g‖ below eps (a constant denominator) and the rest above. No product lies within 1e-3 of
// eps, so the finite differences never straddle the switch.
TEST(Pooling, Gradients) {
  std::mt19937 rng(103);
  for (double eps : {1e-12, 0.5}) {
    SCOPED_TRACE(eps > 0.1 ? "eps 0.5, both branches" : "eps 1e-12");
    const std::vector<int32_t> lengths = ragged_lengths(rng, 4, 6);
    const ops::Sequences seqs = sequences(lengths);
    const int64_t tokens = total(lengths), batch = 4, d = draw(rng, 3, 6);
    const Tensor x = uniform({tokens, d}, rng), g = uniform({batch, d}, rng),
                 r = uniform({batch, d}, rng);
    std::vector<double> lv = values(uniform({tokens, d}, rng));
    for (int64_t t = 0; t < tokens; t += 3)
      for (int64_t e = 0; e < d; ++e) lv[t * d + e] *= 0.05;
    const Tensor l = Tensor::from_vector(lv, {tokens, d});
    const std::vector<double> gv = values(g);
    int clamped = 0;
    for (int64_t b = 0; b < batch; ++b)
      for (int64_t t = seqs.host[b]; t < seqs.host[b + 1]; ++t) {
        double ll = 0, gg = 0;
        for (int64_t e = 0; e < d; ++e) {
          ll += lv[t * d + e] * lv[t * d + e];
          gg += gv[b * d + e] * gv[b * d + e];
        }
        const double norms = std::sqrt(ll) * std::sqrt(gg);
        ASSERT_GT(std::abs(norms - eps), 1e-3) << "token " << t << ": pick another seed";
        clamped += norms < eps;
      }
    if (eps > 0.1) {
      EXPECT_GT(clamped, 0);
      EXPECT_LT(clamped, tokens);
    }

    auto forward_with = [&](const Tensor& xx, const Tensor& ll, const Tensor& gg, DType dt,
                            Tensor& a) {
      Tensor v = Tensor::empty({batch, d}, dt);
      ops::pooling_forward(xx, ll, gg, seqs, eps, v, a);
      return v;
    };
    auto forward = [&] {
      Tensor a = Tensor::empty({tokens}, DType::f64);
      return forward_with(x, l, g, DType::f64, a);
    };
    Tensor a = Tensor::empty({tokens}, DType::f64);
    forward_with(x, l, g, DType::f64, a);
    const Tensor dx0 = uniform({tokens, d}, rng);
    Tensor dx = dx0.clone(), dl = uniform({tokens, d}, rng), dg = uniform({batch, d}, rng);
    ops::pooling_backward(r, x, l, g, a, seqs, eps, dx, dl, dg);
    expect_gradient("pooling dx", x, difference(dx, dx0), forward, r, rng);
    expect_gradient("pooling dl", l, dl, forward, r, rng);
    expect_gradient("pooling dg", g, dg, forward, r, rng);

    const Tensor x32 = x.to(DType::f32), l32 = l.to(DType::f32), g32 = g.to(DType::f32);
    Tensor a32 = Tensor::empty({tokens}, DType::f32);
    forward_with(x32, l32, g32, DType::f32, a32);
    Tensor dx32 = dx0.to(DType::f32), dl32 = Tensor::empty({tokens, d}, DType::f32),
           dg32 = Tensor::empty({batch, d}, DType::f32);
    ops::pooling_backward(r.to(DType::f32), x32, l32, g32, a32, seqs, eps, dx32, dl32, dg32);
    expect_f32_matches_f64("dx f32", dx32, dx);
    expect_f32_matches_f64("dl f32", dl32, dl);
    expect_f32_matches_f64("dg f32", dg32, dg);
  }
}

// ---- Cosine similarity
// ----------------------------------------------------------------------------

TEST(Cosine, ForwardValues) {
  const Tensor a =
      Tensor::from_vector(std::vector<double>{1, 2, 3, 1, 0, 0, 1, 1, 0, 0, 0, 0}, {4, 3});
  const Tensor b =
      Tensor::from_vector(std::vector<double>{2, 4, 6, 0, 5, 0, -3, -3, 0, 1, 2, 3}, {4, 3});
  for (DType dt : {DType::f32, DType::f64}) {
    Tensor out = Tensor::empty({4}, dt);
    ops::cosine_forward(a.to(dt), b.to(dt), 1e-12, out);
    // parallel, orthogonal, opposite, and a zero vector (0 / eps = 0, not NaN)
    expect_near_all(values(out.to(DType::f64)), {1, 0, -1, 0}, dt == DType::f32 ? 1e-6 : 1e-15,
                    "cosine values");
  }
}

TEST(Cosine, ForwardMatchesDefinitionAndGradients) {
  std::mt19937 rng(111);
  for (double eps : {1e-12, 0.5}) {
    SCOPED_TRACE(eps > 0.1 ? "eps 0.5, both branches" : "eps 1e-12");
    const int64_t n = draw(rng, 4, 8), d = draw(rng, 3, 6);
    std::vector<double> av = values(uniform({n, d}, rng));
    for (int64_t i = 0; i < n; i += 2)  // every other row short: clamped when eps = 0.5
      for (int64_t e = 0; e < d; ++e) av[i * d + e] *= 0.05;
    const Tensor a = Tensor::from_vector(av, {n, d}), b = uniform({n, d}, rng),
                 r = uniform({n}, rng);
    const std::vector<double> bv = values(b);
    std::vector<double> want(static_cast<size_t>(n));
    for (int64_t i = 0; i < n; ++i) {
      double aa = 0, bb = 0;
      for (int64_t e = 0; e < d; ++e) {
        aa += av[i * d + e] * av[i * d + e];
        bb += bv[i * d + e] * bv[i * d + e];
      }
      ASSERT_GT(std::abs(std::sqrt(aa) * std::sqrt(bb) - eps), 1e-3) << "row " << i;
      want[i] = naive_cosine(&av[i * d], &bv[i * d], d, eps);
    }
    auto forward = [&] {
      Tensor out = Tensor::empty({n}, DType::f64);
      ops::cosine_forward(a, b, eps, out);
      return out;
    };
    const Tensor out = forward();
    expect_near_all(values(out), want, 1e-15, "cosine");

    Tensor da = uniform({n, d}, rng), db = uniform({n, d}, rng);  // overwritten
    ops::cosine_backward(r, a, b, eps, da, db);
    expect_gradient("cosine da", a, da, forward, r, rng);
    expect_gradient("cosine db", b, db, forward, r, rng);

    Tensor out32 = Tensor::empty({n}, DType::f32), da32 = Tensor::empty({n, d}, DType::f32),
           db32 = Tensor::empty({n, d}, DType::f32);
    ops::cosine_forward(a.to(DType::f32), b.to(DType::f32), eps, out32);
    ops::cosine_backward(r.to(DType::f32), a.to(DType::f32), b.to(DType::f32), eps, da32, db32);
    expect_f32_matches_f64("out f32", out32, out);
    expect_f32_matches_f64("da f32", da32, da);
    expect_f32_matches_f64("db f32", db32, db);
  }
}

// ---- Optimiser and gradient norm ----------------------------------------------------------------

// Three steps against torch.optim.AdamW's update written out for one scalar at a time, with
// weight decay and a gradient scale; m and v start at 0 as in torch.
TEST(AdamW, MatchesTheTorchFormulaForThreeSteps) {
  std::mt19937 rng(121);
  const int64_t n = draw(rng, 5, 12);
  ops::AdamW config;
  config.lr = 1e-2;
  config.weight_decay = 0.1;
  config.grad_scale = 0.5;
  const Tensor param0 = uniform({n}, rng);
  std::vector<double> p = values(param0), m(n, 0.0), v(n, 0.0);
  Tensor param = param0.clone(), tm = Tensor::zeros({n}, DType::f64),
         tv = Tensor::zeros({n}, DType::f64), copy = Tensor::zeros({n}, DType::f64);
  Tensor param32 = param0.to(DType::f32), m32 = Tensor::zeros({n}, DType::f32),
         v32 = Tensor::zeros({n}, DType::f32);
  for (int64_t step = 1; step <= 3; ++step) {
    SCOPED_TRACE("step " + std::to_string(step));
    const Tensor grad = uniform({n}, rng);
    const std::vector<double> gv = values(grad);
    const double c1 = 1 - std::pow(config.beta1, step), c2 = 1 - std::pow(config.beta2, step);
    for (int64_t i = 0; i < n; ++i) {
      const double g = config.grad_scale * gv[i];
      p[i] -= config.lr * config.weight_decay * p[i];
      m[i] = config.beta1 * m[i] + (1 - config.beta1) * g;
      v[i] = config.beta2 * v[i] + (1 - config.beta2) * g * g;
      p[i] -= config.lr * (m[i] / c1) / (std::sqrt(v[i] / c2) + config.eps);
    }
    config.step = step;
    ops::adamw_update(param, grad, tm, tv, config, &copy);
    expect_near_all(values(param), p, 1e-14, "param");
    expect_near_all(values(tm), m, 1e-15, "m");
    expect_near_all(values(tv), v, 1e-16, "v");
    EXPECT_EQ(values(copy), values(param));

    ops::adamw_update(param32, grad.to(DType::f32), m32, v32, config);
    expect_f32_matches_f64("param f32", param32, param);
    expect_f32_matches_f64("m f32", m32, tm);
    expect_f32_matches_f64("v f32", v32, tv);
  }
}

// Accumulated in double whatever the dtype: in f32, 1e8 + 1 rounds back to 1e8 (the spacing of
// f32 there is 8), so a float accumulator would return 1e8 for 1e4² followed by a thousand 1².
TEST(SumOfSquares, SumsEveryTensorInDouble) {
  std::mt19937 rng(131);
  const Tensor a = uniform({3, 4}, rng), b = uniform({5}, rng),
               none = Tensor::empty({0}, DType::f64);
  Tensor out = Tensor::empty({1}, DType::f64);
  ops::sum_of_squares({&a, &b, &none}, out);
  long double want = 0;
  for (const Tensor* t : {&a, &b})
    for (double x : values(*t)) want += static_cast<long double>(x) * x;
  EXPECT_NEAR(values(out)[0], static_cast<double>(want), 1e-15);
  ops::sum_of_squares({}, out);
  EXPECT_EQ(values(out)[0], 0.0);

  std::vector<float> big(1001, 1.0f);
  big[0] = 1e4f;
  const Tensor t32 = Tensor::from_vector(big, {1001});
  Tensor out32 = Tensor::empty({1}, DType::f32);
  ops::sum_of_squares({&t32}, out32);
  EXPECT_EQ(out32.to_vector<float>()[0], 100001000.0f);
}

// ---- Argument checks ----------------------------------------------------------------------------

TEST(OpErrors, ShapeDtypeAndLayoutMismatchesNameTheOpAndArgument) {
  const Tensor x = Tensor::zeros({4, 6}, DType::f64);
  Tensor y = Tensor::zeros({4, 6}, DType::f64);
  Tensor c = Tensor::zeros({4, 4}, DType::f64);
  Tensor rows = Tensor::zeros({4}, DType::f64), rows2 = Tensor::zeros({4}, DType::f64);
  Tensor cols = Tensor::zeros({6}, DType::f64);

  expect_error([&] { ops::gemm(x, x, c, false, false); }, {"gemm", "b"});  // 6 != 4 inner
  expect_error([&] { ops::gemm(x, x, y, false, true); }, {"gemm", "c", "[4, 4]"});
  expect_error([&] { ops::gemm_batched(x, x, c, false, true); }, {"gemm_batched", "a"});
  expect_error(
      [&] {
        ops::layernorm_forward(x, Tensor::zeros({5}, DType::f64), cols, 1e-5, y, rows, rows2);
      },
      {"layernorm_forward", "gamma", "[6]"});
  Tensor rows32 = Tensor::zeros({4}, DType::f32);
  expect_error([&] { ops::layernorm_forward(x, cols, cols, 1e-5, y, rows32, rows2); },
               {"layernorm_forward", "mean", "accumulation dtype", "f64"});
  expect_error([&] { ops::add_layernorm_forward(x, x, cols, cols, 1e-5, c, y, rows, rows2); },
               {"add_layernorm_forward", "sum", "[4, 6]"});
  expect_error([&] { ops::gelu_forward(x, c); }, {"gelu_forward", "y"});
  Tensor y32 = Tensor::zeros({4, 6}, DType::f32);
  expect_error([&] { ops::gelu_forward(x, y32); }, {"gelu_forward", "y", "f32"});
  expect_error([&] { ops::add(x, Tensor(), y); }, {"add", "b", "undefined"});
  expect_error([&] { ops::accumulate(y, x.slice(1, 0, 3)); }, {"accumulate", "src", "contiguous"});
  Tensor half = Tensor::zeros({3}, DType::bf16);
  expect_error([&] { ops::scale(half, 2); }, {"scale", "x", "bf16"});
  expect_error([&] { ops::bias_add(y, Tensor::zeros({4}, DType::f64)); }, {"bias_add", "bias"});
  expect_error([&] { ops::bias_backward(x, rows); }, {"bias_backward", "dbias"});
  const ops::Sequences four = sequences({4});
  expect_error([&] { ops::dropout_forward(x, 1.0, kKey, four, y); },
               {"dropout_forward", "probability"});
  expect_error([&] { ops::dropout_forward(x, 0.1, kKey, sequences({3}), y); },
               {"dropout_forward", "seqs covers 3 tokens", "x has 4 rows"});
  expect_error([&] { ops::dropout_backward(rows, 0.1, kKey, four, rows); },
               {"dropout_backward", "dy", "2 dimensions"});

  const Tensor table = Tensor::zeros({5, 6}, DType::f64);
  expect_error([&] { ops::embedding_forward(Tensor::zeros({4}, DType::i64), table, y); },
               {"embedding_forward", "ids", "i32"});
  expect_error(
      [&] {
        ops::embedding_backward(ints({0, 1, 2}, {3}), x, y);
      },
      {"embedding_backward", "dout"});

  // Dense layers: x [4,6], w [3,6].
  const Tensor w = Tensor::zeros({3, 6}, DType::f64), bias3 = Tensor::zeros({3}, DType::f64);
  Tensor y3 = Tensor::zeros({4, 3}, DType::f64), dw = Tensor::zeros({3, 6}, DType::f64);
  Tensor db3 = Tensor::zeros({3}, DType::f64);
  expect_error([&] { ops::linear_forward(x, c, bias3, y3); }, {"linear_forward", "w", "[4, 6]"});
  expect_error([&] { ops::linear_forward(x, w, rows, y3); }, {"linear_forward", "bias", "[3]"});
  expect_error([&] { ops::linear_forward(x, w, bias3, y); }, {"linear_forward", "y", "[4, 3]"});
  expect_error([&] { ops::linear_forward(x, w, bias3, y3, ops::Activation::none, &y3); },
               {"linear_forward", "pre", "gelu"});
  expect_error([&] { ops::linear_backward(x, w, y3, &y, c, &db3); }, {"linear_backward", "dw"});
  expect_error([&] { ops::linear_backward(x, w, y, &y, dw, &db3); }, {"linear_backward", "dy"});
  expect_error([&] { ops::linear_backward(x, w, y3, &y, dw, &db3, &x, true); },
               {"linear_backward", "input_gelu_pre", "accumulate_dx"});
  expect_error([&] { ops::linear_backward(x, w, y3, nullptr, dw, &db3, &x); },
               {"linear_backward", "input_gelu_pre", "dx"});

  // Attention: 4 tokens in sequences {1, 3}, 2 heads of 3.
  const ops::Sequences seqs = sequences({1, 3});
  Tensor lse = Tensor::zeros({2, 4}, DType::f64);
  expect_error([&] { ops::attention_forward(x, x, x, seqs, 2, false, 0, kKey, y, c); },
               {"attention_forward", "lse", "[2, 4]"});
  expect_error([&] { ops::attention_forward(x, x, x, seqs, 4, false, 0, kKey, y, lse); },
               {"attention_forward", "q", "4 heads"});
  expect_error([&] { ops::attention_forward(x, x, c, seqs, 2, false, 0, kKey, y, lse); },
               {"attention_forward", "v"});
  Tensor lse32 = Tensor::zeros({2, 4}, DType::f32);
  expect_error([&] { ops::attention_forward(x, x, x, seqs, 2, false, 0, kKey, y, lse32); },
               {"attention_forward", "lse", "accumulation dtype"});
  expect_error(
      [&] { ops::attention_backward(x, x, x, x, c, lse, seqs, 2, false, 0, kKey, y, y, y); },
      {"attention_backward", "out"});
  expect_error(
      [&] { ops::attention_backward(x, x, x, x, x, lse, seqs, 2, false, 0, kKey, y, y, c); },
      {"attention_backward", "dv"});

  const Tensor logits = Tensor::zeros({4, 6}, DType::f64);
  expect_error(
      [&] {
        ops::softmax_cross_entropy(logits, ints({0, 1, 2}, {3}), -100, rows);
      },
      {"softmax_cross_entropy", "targets"});
  expect_error(
      [&] {
        ops::softmax_cross_entropy(logits, ints({0, 1, 2, 3}, {4}), -100, rows, &c);
      },
      {"softmax_cross_entropy", "dlogits"});
  expect_error(
      [&] {
        ops::softmax_cross_entropy(logits, ints({0, 1, 2, 3}, {4}), -100, cols);
      },
      {"softmax_cross_entropy", "losses"});
  for (int64_t bad : {0, 7, -2})
    expect_error(
        [&] {
          ops::softmax_cross_entropy(logits, ints({0, 1, 2, 3}, {4}), -100, rows, nullptr, 1, bad);
        },
        {"softmax_cross_entropy", "valid_cols"});

  // Pooling over sequences {1, 3} of x [4, 6]: g, v [2, 6], a [4].
  Tensor g2 = Tensor::zeros({2, 6}, DType::f64), v2 = Tensor::zeros({2, 6}, DType::f64);
  expect_error([&] { ops::segment_sum(x, seqs, y); }, {"segment_sum", "out", "[2, 6]"});
  expect_error([&] { ops::segment_sum_backward(g2, seqs, c); }, {"segment_sum_backward", "dx"});
  expect_error([&] { ops::pooling_forward(x, x, x, seqs, 1e-12, v2, rows); },
               {"pooling_forward", "g", "[2, 6]"});
  expect_error([&] { ops::pooling_forward(x, x, g2, seqs, 1e-12, v2, cols); },
               {"pooling_forward", "a", "[4]"});
  expect_error([&] { ops::pooling_forward(x, x, g2, seqs, 0, v2, rows); },
               {"pooling_forward", "eps"});
  expect_error([&] { ops::pooling_backward(g2, x, x, g2, rows, seqs, 1e-12, y, y, y); },
               {"pooling_backward", "dg", "[2, 6]"});

  expect_error([&] { ops::cosine_forward(x, x, 1e-12, cols); }, {"cosine_forward", "out", "[4]"});
  expect_error([&] { ops::cosine_forward(x, c, 1e-12, rows); }, {"cosine_forward", "b"});
  expect_error([&] { ops::cosine_backward(cols, x, x, 1e-12, y, y); },
               {"cosine_backward", "dout", "[4]"});

  Tensor p = Tensor::zeros({6}, DType::f64), m = Tensor::zeros({6}, DType::f64),
         v = Tensor::zeros({5}, DType::f64);
  expect_error([&] { ops::adamw_update(p, cols, m, v, ops::AdamW{}); },
               {"adamw_update", "v", "[6]"});
  ops::AdamW step0;
  step0.step = 0;
  expect_error([&] { ops::adamw_update(p, cols, m, m, step0); }, {"adamw_update", "step"});
  ops::AdamW beta_one;
  beta_one.beta2 = 1;
  expect_error([&] { ops::adamw_update(p, cols, m, m, beta_one); }, {"adamw_update", "betas"});
  Tensor copy32 = Tensor::zeros({6}, DType::f32);
  expect_error([&] { ops::adamw_update(p, cols, m, m, ops::AdamW{}, &copy32); },
               {"adamw_update", "param_copy"});

  expect_error([&] { ops::sum_of_squares({&x}, rows); }, {"sum_of_squares", "out", "[1]"});
  Tensor norm = Tensor::zeros({1}, DType::f64);
  expect_error([&] { ops::sum_of_squares({&x, &y32}, norm); }, {"sum_of_squares", "tensors[1]"});
}

// Sequences that do not describe the activations are refused before anything runs.
TEST(OpErrors, InconsistentSequencesAreNamed) {
  const Tensor x = Tensor::zeros({4, 6}, DType::f64);
  Tensor out = Tensor::zeros({2, 6}, DType::f64);
  expect_error(
      [&] {
        ops::segment_sum(x, sequences({1, 2}), out);
      },
      {"segment_sum", "seqs covers 3 tokens", "x has 4 rows"});
  ops::Sequences wrong_max = sequences({1, 3});
  wrong_max.max_len = 2;
  expect_error([&] { ops::segment_sum(x, wrong_max, out); }, {"segment_sum", "max_len"});
  ops::Sequences stale = sequences({1, 3});
  stale.host = {0, 2, 4};  // the offsets tensor still says {0, 1, 4}
  stale.max_len = 2;
  expect_error([&] { ops::segment_sum(x, stale, out); }, {"segment_sum", "seqs.offsets[1]"});
  ops::Sequences decreasing = sequences({1, 3});
  decreasing.host = {0, 3, 2, 4};
  expect_error([&] { ops::segment_sum(x, decreasing, out); },
               {"segment_sum", "sequence 1", "negative length"});
  Tensor lse = Tensor::zeros({2, 4}, DType::f64);
  Tensor y = Tensor::zeros({4, 6}, DType::f64);
  expect_error(
      [&] { ops::attention_forward(x, x, x, ops::Sequences{}, 2, false, 0, kKey, y, lse); },
      {"attention_forward", "seqs"});
  ops::Sequences few_ids = sequences({1, 3});
  few_ids.host_ids.pop_back();
  expect_error([&] { ops::dropout_forward(x, 0.1, kKey, few_ids, y); },
               {"dropout_forward", "1 ids", "2 sequences"});
  ops::Sequences stale_ids = sequences({1, 3}, {5, 6});
  stale_ids.host_ids[1] = 9;  // the ids tensor still says {5, 6}
  expect_error([&] { ops::attention_forward(x, x, x, stale_ids, 2, false, 0.1, kKey, y, lse); },
               {"attention_forward", "seqs.ids[1] = 6", "seqs.host_ids[1] = 9"});
  ops::Sequences i32_ids = sequences({1, 3});
  i32_ids.ids = ints({0, 1}, {2});
  expect_error([&] { ops::dropout_forward(x, 0.1, kKey, i32_ids, y); },
               {"dropout_forward", "seqs.ids", "i64"});
}

TEST(OpErrors, OutOfRangeIdsAndTargetsAreNamed) {
  const Tensor table = Tensor::zeros({5, 2}, DType::f64);
  Tensor out = Tensor::zeros({3, 2}, DType::f64);
  expect_error(
      [&] {
        ops::embedding_forward(ints({0, 4, 9}, {3}), table, out);
      },
      {"embedding_forward", "row 2", "id 9"});
  expect_error(
      [&] {
        ops::embedding_forward(ints({-1, 0, 0}, {3}), table, out);
      },
      {"embedding_forward", "row 0", "id -1"});
  // A bad id fails before any write: the accumulated gradient is left as it was.
  Tensor dtable = Tensor::from_vector(std::vector<double>(10, 1.0), {5, 2});
  expect_error(
      [&] {
        ops::embedding_backward(ints({0, 1, 5}, {3}),
                                Tensor::from_vector(std::vector<double>(6, 1.0), {3, 2}), dtable);
      },
      {"embedding_backward", "row 2", "id 5"});
  EXPECT_EQ(values(dtable), std::vector<double>(10, 1.0));

  Tensor losses = Tensor::zeros({3}, DType::f64);
  expect_error(
      [&] {
        ops::softmax_cross_entropy(Tensor::zeros({3, 4}, DType::f64), ints({0, -100, 4}, {3}), -1,
                                   losses);
      },
      {"softmax_cross_entropy", "row 1", "target -100"});
  // A target in the padded columns is out of range too, and nothing is written.
  Tensor logits = Tensor::zeros({3, 6}, DType::f64);
  expect_error(
      [&] {
        ops::softmax_cross_entropy(logits, ints({0, 4, 1}, {3}), -1, losses, &logits, 1.0, 4);
      },
      {"softmax_cross_entropy", "row 1", "target 4", "[0, 4)"});
  EXPECT_EQ(values(logits), std::vector<double>(18, 0.0));
}

// ---- NAdam ----------------------------------------------------------------------------------------

// Five steps (the momentum schedule μ_t moves every step) against torch.optim.NAdam's
// _single_tensor_nadam written out for one scalar at a time: the running mu_product, bias
// correction 1 - β2^t, the two addcdiv terms, with coupled (L2 added to the gradient) and
// decoupled weight decay and a gradient scale; f64 to a few ulp, f32 as every op's f32 check.
TEST(NAdam, MatchesTheTorchFormulaForFiveSteps) {
  for (const bool decoupled : {false, true}) {
    SCOPED_TRACE(decoupled ? "decoupled weight decay" : "L2 weight decay");
    std::mt19937 rng(decoupled ? 141 : 142);
    const int64_t n = draw(rng, 5, 12);
    ops::NAdam config;
    config.lr = 1e-2;
    config.weight_decay = 0.1;
    config.grad_scale = 0.5;
    config.decoupled_weight_decay = decoupled;
    const Tensor param0 = uniform({n}, rng);
    std::vector<double> p = values(param0), m(n, 0.0), v(n, 0.0);
    Tensor param = param0.clone(), tm = Tensor::zeros({n}, DType::f64),
           tv = Tensor::zeros({n}, DType::f64), copy = Tensor::zeros({n}, DType::f64);
    Tensor param32 = param0.to(DType::f32), m32 = Tensor::zeros({n}, DType::f32),
           v32 = Tensor::zeros({n}, DType::f32);
    double mu_product = 1.0;
    for (int64_t step = 1; step <= 5; ++step) {
      SCOPED_TRACE("step " + std::to_string(step));
      const Tensor grad = uniform({n}, rng);
      const std::vector<double> gv = values(grad);
      const double psi = config.momentum_decay, b1 = config.beta1, b2 = config.beta2;
      const double mu = b1 * (1 - 0.5 * std::pow(0.96, step * psi));
      const double mu_next = b1 * (1 - 0.5 * std::pow(0.96, (step + 1) * psi));
      mu_product *= mu;
      const double c2 = 1 - std::pow(b2, step);
      for (int64_t i = 0; i < n; ++i) {
        double g = config.grad_scale * gv[i];
        if (decoupled)
          p[i] *= 1 - config.lr * config.weight_decay;
        else
          g += config.weight_decay * p[i];
        m[i] = b1 * m[i] + (1 - b1) * g;
        v[i] = b2 * v[i] + (1 - b2) * g * g;
        const double denom = std::sqrt(v[i] / c2) + config.eps;
        p[i] -= config.lr * (1 - mu) / (1 - mu_product) * g / denom;
        p[i] -= config.lr * mu_next / (1 - mu_product * mu_next) * m[i] / denom;
      }
      config.step = step;
      config.mu_product = ops::nadam_mu_product(config);
      EXPECT_NEAR(config.mu_product, mu_product, 1e-16);
      ops::nadam_update(param, grad, tm, tv, config, &copy);
      expect_near_all(values(param), p, 1e-13, "param");
      expect_near_all(values(tm), m, 1e-15, "m");
      expect_near_all(values(tv), v, 1e-16, "v");
      EXPECT_EQ(values(copy), values(param));

      ops::nadam_update(param32, grad.to(DType::f32), m32, v32, config);
      expect_f32_matches_f64("param f32", param32, param);
      expect_f32_matches_f64("m f32", m32, tm);
      expect_f32_matches_f64("v f32", v32, tv);
    }
  }
}

// The running product of the momentum schedule is the caller's to carry; a call without it
// (the default 0) would be a different optimiser, so it is refused, as are bad rates.
TEST(NAdam, RefusesAnUnsetMomentumProductAndBadHyperParameters) {
  Tensor p = Tensor::zeros({4}, DType::f64), g = p.clone(), m = p.clone(), v = p.clone();
  expect_error([&] { ops::nadam_update(p, g, m, v, ops::NAdam{}); },
               {"nadam_update", "mu_product"});
  ops::NAdam config;
  config.mu_product = ops::nadam_mu_product(config);
  config.momentum_decay = -1;
  expect_error([&] { ops::nadam_update(p, g, m, v, config); }, {"nadam_update", "momentum_decay"});
  config.momentum_decay = 4e-3;
  config.lr = -1;
  expect_error([&] { ops::nadam_update(p, g, m, v, config); }, {"nadam_update", "lr"});
}

// ---- Cross-entropy with row weights -------------------------------------------------------------

// Row weights scale each row's gradient and leave the losses alone: with weights w_r and the
// scalar dloss, dlogits is the gradient of L = dloss Σ_r w_r loss_r (R = dloss w), padded columns
// and ignored rows still zero; in place gives the same bits; f32 agrees with f64.
TEST(CrossEntropy, RowWeightsScaleTheGradientOnly) {
  std::mt19937 rng(83);
  const int64_t n = draw(rng, 4, 8), valid = draw(rng, 3, 9), cols = valid + draw(rng, 0, 4);
  const int32_t ignore = -100;
  std::vector<int32_t> tv(static_cast<size_t>(n));
  for (int32_t& t : tv) t = static_cast<int32_t>(draw(rng, 0, valid - 1));
  tv[2] = ignore;
  const Tensor targets = ints(tv, {n}), logits = uniform({n, cols}, rng, -3, 3);
  const Tensor weights = uniform({n}, rng, 0.1, 2);
  auto forward = [&] {
    Tensor losses = Tensor::empty({n}, DType::f64);
    ops::softmax_cross_entropy(logits, targets, ignore, losses, nullptr, 1.0, valid);
    return losses;
  };
  const double dloss = 0.6;
  std::vector<double> rv = values(weights);
  for (double& x : rv) x *= dloss;
  const Tensor r = f64(rv);

  Tensor losses = Tensor::empty({n}, DType::f64), dlogits = uniform({n, cols}, rng);
  ops::softmax_cross_entropy(logits, targets, ignore, losses, &dlogits, dloss, valid, &weights);
  EXPECT_EQ(values(losses), values(forward()));  // the losses are not weighted
  const std::vector<double> dv = values(dlogits);
  for (int64_t j = 0; j < cols; ++j) EXPECT_EQ(dv[2 * cols + j], 0.0);  // ignored row
  for (int64_t i = 0; i < n; ++i)
    for (int64_t j = valid; j < cols; ++j) EXPECT_EQ(dv[i * cols + j], 0.0);  // padding
  expect_gradient("weighted dlogits", logits, dlogits, forward, r, rng);

  Tensor inplace = logits.clone(), losses_inplace = Tensor::empty({n}, DType::f64);
  ops::softmax_cross_entropy(inplace, targets, ignore, losses_inplace, &inplace, dloss, valid,
                             &weights);
  EXPECT_EQ(values(losses_inplace), values(losses));
  EXPECT_EQ(values(inplace), dv);

  Tensor l32 = Tensor::empty({n}, DType::f32), d32 = Tensor::empty({n, cols}, DType::f32);
  const Tensor w32 = weights.to(DType::f32);
  ops::softmax_cross_entropy(logits.to(DType::f32), targets, ignore, l32, &d32, dloss, valid, &w32);
  expect_f32_matches_f64("losses f32", l32, losses);
  expect_f32_matches_f64("dlogits f32", d32, dlogits);

  // The weights are per row, in the accumulation dtype.
  expect_error(
      [&] {
        const Tensor short_weights = f64({1.0});
        ops::softmax_cross_entropy(logits, targets, ignore, losses, &dlogits, dloss, valid,
                                   &short_weights);
      },
      {"softmax_cross_entropy", "row_weights"});
}

// ---- Mean squared error of rows -----------------------------------------------------------------

// losses_i = mean_j (a_ij - b_ij)² by the definition; da and db are the gradients of
// L = dloss Σ losses (R filled with dloss), together or alone; k = 1 included; f32 against f64.
TEST(Mse, ForwardMatchesDefinitionAndGradients) {
  std::mt19937 rng(151);
  for (const int64_t k : {int64_t{1}, draw(rng, 2, 9)}) {
    SCOPED_TRACE("k " + std::to_string(k));
    const int64_t n = draw(rng, 1, 6);
    const Tensor a = uniform({n, k}, rng, -2, 2), b = uniform({n, k}, rng, -2, 2);
    auto forward = [&] {
      Tensor losses = Tensor::empty({n}, DType::f64);
      ops::mse_loss(a, b, losses);
      return losses;
    };
    const std::vector<double> losses = values(forward()), av = values(a), bv = values(b);
    for (int64_t i = 0; i < n; ++i) {
      double sum = 0;
      for (int64_t j = 0; j < k; ++j) {
        const double e = av[i * k + j] - bv[i * k + j];
        sum += e * e;
      }
      EXPECT_NEAR(losses[i], sum / static_cast<double>(k), 1e-14) << "row " << i;
    }
    const double dloss = 0.35;
    const Tensor r = f64(std::vector<double>(static_cast<size_t>(n), dloss));
    Tensor again = Tensor::empty({n}, DType::f64), da = uniform({n, k}, rng),
           db = uniform({n, k}, rng);
    ops::mse_loss(a, b, again, &da, &db, dloss);
    EXPECT_EQ(values(again), losses);
    expect_gradient("mse da", a, da, forward, r, rng);
    expect_gradient("mse db", b, db, forward, r, rng);

    Tensor only_da = Tensor::empty({n, k}, DType::f64);  // db not wanted: the same da
    ops::mse_loss(a, b, again, &only_da, nullptr, dloss);
    EXPECT_EQ(values(only_da), values(da));

    Tensor l32 = Tensor::empty({n}, DType::f32), da32 = Tensor::empty({n, k}, DType::f32),
           db32 = Tensor::empty({n, k}, DType::f32);
    ops::mse_loss(a.to(DType::f32), b.to(DType::f32), l32, &da32, &db32, dloss);
    expect_f32_matches_f64("losses f32", l32, again);
    expect_f32_matches_f64("da f32", da32, da);
    expect_f32_matches_f64("db f32", db32, db);
  }
  Tensor losses = Tensor::empty({2}, DType::f64);
  const Tensor a3 = Tensor::zeros({2, 3}, DType::f64), b4 = Tensor::zeros({2, 4}, DType::f64),
               empty = Tensor::zeros({2, 0}, DType::f64);
  expect_error([&] { ops::mse_loss(a3, b4, losses); }, {"mse_loss", "b"});
  expect_error([&] { ops::mse_loss(empty, empty, losses); }, {"mse_loss", "no columns"});
}

// ---- Row gather and scatter ---------------------------------------------------------------------

// gather_rows picks rows by index (repeats allowed); scatter_rows writes rows by distinct index
// and leaves the others; with one index they are adjoint, so the gather's gradient is the scatter
// of R into zeros (checked by finite differences) and vice versa.
TEST(Rows, GatherAndScatterAreAdjointRowMoves) {
  std::mt19937 rng(161);
  const int64_t n = draw(rng, 5, 9), d = draw(rng, 1, 5);
  const Tensor src = uniform({n, d}, rng);
  std::vector<int32_t> perm(static_cast<size_t>(n));
  std::iota(perm.begin(), perm.end(), 0);
  std::shuffle(perm.begin(), perm.end(), rng);
  perm.resize(static_cast<size_t>(n - 2));  // distinct, two rows of the large side untouched
  const int64_t m = static_cast<int64_t>(perm.size());
  const Tensor index = ints(perm, {m});

  auto gather = [&] {
    Tensor out = Tensor::empty({m, d}, DType::f64);
    ops::gather_rows(src, index, out);
    return out;
  };
  const std::vector<double> g = values(gather()), sv = values(src);
  for (int64_t i = 0; i < m; ++i)
    for (int64_t c = 0; c < d; ++c) EXPECT_EQ(g[i * d + c], sv[perm[i] * d + c]);

  const Tensor r = uniform({m, d}, rng);
  Tensor scattered = Tensor::zeros({n, d}, DType::f64);
  ops::scatter_rows(r, index, scattered);
  expect_gradient("gather_rows", src, scattered, gather, r, rng);

  const Tensor small = uniform({m, d}, rng), base = uniform({n, d}, rng),
               r_big = uniform({n, d}, rng);
  auto scatter = [&] {
    Tensor out = base.clone();
    ops::scatter_rows(small, index, out);
    return out;
  };
  const std::vector<double> s = values(scatter()), bv = values(base);
  std::vector<bool> hit(static_cast<size_t>(n), false);
  for (int32_t i : perm) hit[static_cast<size_t>(i)] = true;
  for (int64_t i = 0; i < n; ++i) {
    if (hit[static_cast<size_t>(i)]) continue;
    for (int64_t c = 0; c < d; ++c) EXPECT_EQ(s[i * d + c], bv[i * d + c]) << "row " << i;
  }
  Tensor gathered = Tensor::empty({m, d}, DType::f64);
  ops::gather_rows(r_big, index, gathered);
  expect_gradient("scatter_rows", small, gathered, scatter, r_big, rng);

  // A repeated gather index copies the row twice.
  Tensor twice = Tensor::empty({2, d}, DType::f64);
  ops::gather_rows(src, ints({3, 3}, {2}), twice);
  EXPECT_EQ(values(twice.select(0).clone()), values(twice.select(1).clone()));

  Tensor out32 = Tensor::empty({m, d}, DType::f32);
  ops::gather_rows(src.to(DType::f32), index, out32);
  expect_f32_matches_f64("gather f32", out32, gather());
}

// The decoder's use: prepending one row per packed sequence with two scatters, then dropping it
// with a gather, gives back the sequences untouched.
TEST(Rows, PrependAndDropASlotPerSequence) {
  std::mt19937 rng(162);
  const int64_t batch = 3, tokens = 8, d = 2;  // sequences of 3, 1 and 4 tokens
  const Tensor h = uniform({tokens, d}, rng), v = uniform({batch, d}, rng);
  // Sequence b starts at row o_b + b of the extended batch (offsets 0, 3, 4).
  const Tensor slot_rows = ints({0, 4, 6}, {batch}),
               token_rows = ints({1, 2, 3, 5, 7, 8, 9, 10}, {tokens});
  Tensor e = Tensor::empty({tokens + batch, d}, DType::f64);
  ops::scatter_rows(v, slot_rows, e);
  ops::scatter_rows(h, token_rows, e);
  const std::vector<double> ev = values(e), vv = values(v), hv = values(h);
  for (int64_t c = 0; c < d; ++c) {
    EXPECT_EQ(ev[4 * d + c], vv[1 * d + c]);  // sequence 1 starts with v_1
    EXPECT_EQ(ev[5 * d + c], hv[3 * d + c]);  // then its one token
  }
  Tensor back = Tensor::empty({tokens, d}, DType::f64);
  ops::gather_rows(e, token_rows, back);
  EXPECT_EQ(values(back), hv);
}

TEST(OpErrors, RowIndicesOutOfRangeOrRepeatedAreNamed) {
  const Tensor src = Tensor::zeros({4, 2}, DType::f64);
  Tensor out = Tensor::zeros({2, 2}, DType::f64);
  expect_error([&] { ops::gather_rows(src, ints({1, 4}, {2}), out); },
               {"gather_rows", "index[1] = 4", "[0, 4)"});
  Tensor big = Tensor::from_vector(std::vector<double>(8, 1.0), {4, 2});
  expect_error([&] { ops::scatter_rows(out, ints({2, 2}, {2}), big); },
               {"scatter_rows", "index[1] = 2", "repeats"});
  expect_error([&] { ops::scatter_rows(out, ints({0, -1}, {2}), big); },
               {"scatter_rows", "index[1] = -1"});
  EXPECT_EQ(values(big), std::vector<double>(8, 1.0));  // nothing written
  expect_error([&] { ops::gather_rows(src, ints({0, 1}, {2}), big); }, {"gather_rows", "out"});
}
