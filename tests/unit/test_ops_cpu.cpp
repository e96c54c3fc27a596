// The CPU reference backend of the op interface (kernels/ops.h): every op with a backward pass
// against central finite differences in f64, forwards against naive loops where the op is not
// self-evident, f32 against f64, the dropout mask's properties, and the argument checks.
#include <gtest/gtest-spi.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <initializer_list>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "core/error.h"
#include "core/rng.h"
#include "core/tensor.h"
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

struct AttentionCase {
  std::string name;
  ops::AttentionDims dims;
  std::vector<int32_t> mask;  // [B, S]
  bool causal;
  double dropout_p;
};

// Attention by its definition, one query at a time: the scores, the masked softmax, the dropout
// mask drawn directly from uniform01, the weighted sum of values.
void naive_attention(const AttentionCase& c, const std::vector<double>& q,
                     const std::vector<double>& k, const std::vector<double>& v, const RngKey& key,
                     std::vector<double>& out, std::vector<double>& probs) {
  const int64_t B = c.dims.batch, S = c.dims.seq, H = c.dims.heads, D = c.dims.head_dim;
  const int64_t ld = H * D;
  out.assign(static_cast<size_t>(B * S * ld), 0.0);
  probs.assign(static_cast<size_t>(B * H * S * S), 0.0);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t h = 0; h < H; ++h)
      for (int64_t i = 0; i < S; ++i) {
        std::vector<double> p(static_cast<size_t>(S), 0.0);
        std::vector<bool> visible(static_cast<size_t>(S));
        double max = -1e300;
        for (int64_t j = 0; j < S; ++j) {
          visible[j] = c.mask[b * S + j] == 1 && (!c.causal || j <= i);
          if (!visible[j]) continue;
          double s = 0;
          for (int64_t d = 0; d < D; ++d)
            s += q[(b * S + i) * ld + h * D + d] * k[(b * S + j) * ld + h * D + d];
          p[j] = s / std::sqrt(static_cast<double>(D));
          max = std::max(max, p[j]);
        }
        double sum = 0;
        for (int64_t j = 0; j < S; ++j)
          if (visible[j]) sum += (p[j] = std::exp(p[j] - max));
        for (int64_t j = 0; j < S; ++j) {
          const double pj = visible[j] ? p[j] / sum : 0.0;
          const uint64_t index = static_cast<uint64_t>(((b * H + h) * S + i) * S + j);
          probs[index] = pj;
          const bool keep = uniform01(key, index) >= static_cast<float>(c.dropout_p);
          const double dropped = keep ? pj / (1 - c.dropout_p) : 0.0;
          for (int64_t d = 0; d < D; ++d)
            out[(b * S + i) * ld + h * D + d] += dropped * v[(b * S + j) * ld + h * D + d];
        }
      }
}

// Ragged key masks: sequence 0 full, sequence 1 of length 1, sequence 2 of random length; the
// "left-padded" case hides key 0 of a sequence so that, with the causal mask, query 0 sees nothing.
std::vector<AttentionCase> attention_cases(std::mt19937& rng) {
  std::vector<AttentionCase> cases;
  for (bool causal : {false, true})
    for (double p : {0.0, 0.2}) {
      AttentionCase c;
      c.dims = {3, draw(rng, 4, 6), draw(rng, 1, 3), draw(rng, 2, 5)};
      const int64_t S = c.dims.seq, len2 = draw(rng, 2, S - 1);
      c.mask.assign(static_cast<size_t>(3 * S), 0);
      for (int64_t j = 0; j < S; ++j) c.mask[j] = 1;
      c.mask[S] = 1;
      for (int64_t j = 0; j < len2; ++j) c.mask[2 * S + j] = 1;
      c.causal = causal;
      c.dropout_p = p;
      c.name = std::string(causal ? "causal" : "bidirectional") + (p > 0 ? " with dropout" : "");
      cases.push_back(c);
    }
  AttentionCase left;
  left.dims = {2, 5, 2, 3};
  left.mask = {0, 1, 1, 0, 1, /**/ 1, 1, 1, 1, 1};
  left.causal = true;
  left.dropout_p = 0.0;
  left.name = "causal with key 0 padded";
  cases.push_back(left);
  return cases;
}

Tensor attention_mask_tensor(const AttentionCase& c) {
  return ints(c.mask, {c.dims.batch, c.dims.seq});
}

Shape token_shape(const ops::AttentionDims& d) { return {d.batch * d.seq, d.heads * d.head_dim}; }

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

// ---- Dropout ----------------------------------------------------------------------------------

TEST(Dropout, KeepsAboutOneMinusPAndScalesTheKept) {
  const int64_t n = 200000;
  const double p = 0.3;
  const Tensor x = Tensor::from_vector(std::vector<double>(n, 2.0), {n});
  Tensor y = Tensor::empty({n}, DType::f64);
  ops::dropout_forward(x, p, kKey, y);
  int64_t kept = 0;
  for (double v : values(y)) {
    ASSERT_TRUE(v == 0 || v == 2.0 * (1.0 / (1 - p))) << v;
    kept += v != 0;
  }
  // Binomial(n, 0.7): standard deviation sqrt(n p (1-p)) ≈ 205 draws, i.e. 0.001; allow 5σ.
  EXPECT_NEAR(static_cast<double>(kept) / n, 1 - p, 0.005);
}

TEST(Dropout, MaskIsAFunctionOfKeyAndIndexOnly) {
  std::mt19937 rng(61);
  const int64_t n = 4096;
  const double p = 0.4;
  const Tensor x = uniform({n}, rng, 1, 2);  // never 0, so y == 0 exactly where dropped
  auto mask = [&](const RngKey& key, DType dt) {
    Tensor y = Tensor::empty({n}, dt);
    ops::dropout_forward(x.to(dt), p, key, y);
    const std::vector<double> v = values(y.to(DType::f64));
    std::vector<bool> m(v.size());
    for (size_t i = 0; i < v.size(); ++i) m[i] = v[i] != 0;
    return m;
  };
  auto fraction_differing = [](const std::vector<bool>& a, const std::vector<bool>& b) {
    int64_t d = 0;
    for (size_t i = 0; i < a.size(); ++i) d += a[i] != b[i];
    return static_cast<double>(d) / a.size();
  };
  const std::vector<bool> base = mask(kKey, DType::f64);
  EXPECT_EQ(mask(kKey, DType::f64), base);  // same key: same mask
  EXPECT_EQ(mask(kKey, DType::f32), base);  // the dtype does not enter the draw
  RngKey next_step = kKey, other_tensor = kKey, other_seed = kKey;
  ++next_step.step;
  ++other_tensor.tensor;
  ++other_seed.seed;
  // Independent masks differ at a fraction 2 p (1 - p) = 0.48 of the elements.
  for (const RngKey& k : {next_step, other_tensor, other_seed})
    EXPECT_NEAR(fraction_differing(mask(k, DType::f64), base), 2 * p * (1 - p), 0.05);
}

TEST(Dropout, ZeroCopiesInPlaceMatchesAndGradient) {
  std::mt19937 rng(62);
  const int64_t n = draw(rng, 30, 80);
  const Tensor x = uniform({n}, rng), r = uniform({n}, rng);
  Tensor y = Tensor::empty({n}, DType::f64);
  ops::dropout_forward(x, 0.0, kKey, y);
  EXPECT_EQ(values(y), values(x));

  const double p = 0.35;
  auto forward = [&] {
    Tensor out = Tensor::empty({n}, DType::f64);
    ops::dropout_forward(x, p, kKey, out);
    return out;
  };
  Tensor inplace = x.clone();
  ops::dropout_forward(inplace, p, kKey, inplace);
  EXPECT_EQ(values(inplace), values(forward()));

  Tensor dx = r.clone();
  ops::dropout_backward(dx, p, kKey, dx);  // dx aliasing dy
  expect_gradient("dropout", x, dx, forward, r, rng);

  Tensor y32 = Tensor::empty({n}, DType::f32);
  ops::dropout_forward(x.to(DType::f32), p, kKey, y32);
  expect_f32_matches_f64("dropout f32", y32, forward());
}

// ---- Attention --------------------------------------------------------------------------------

TEST(Attention, ForwardMatchesDefinition) {
  std::mt19937 rng(71);
  for (const AttentionCase& c : attention_cases(rng)) {
    SCOPED_TRACE(c.name);
    const Shape tokens = token_shape(c.dims);
    const Tensor q = uniform(tokens, rng, -2, 2), k = uniform(tokens, rng, -2, 2),
                 v = uniform(tokens, rng);
    Tensor out = Tensor::empty(tokens, DType::f64);
    Tensor probs = Tensor::empty({c.dims.batch, c.dims.heads, c.dims.seq, c.dims.seq}, DType::f64);
    ops::attention_forward(q, k, v, attention_mask_tensor(c), c.dims, c.causal, c.dropout_p, kKey,
                           out, probs);
    std::vector<double> want_out, want_probs;
    naive_attention(c, values(q), values(k), values(v), kKey, want_out, want_probs);
    expect_near_all(values(probs), want_probs, 1e-14, "probs");
    expect_near_all(values(out), want_out, 1e-13, "out");

    Tensor out32 = Tensor::empty(tokens, DType::f32);
    Tensor probs32 = Tensor::empty(probs.shape(), DType::f32);
    ops::attention_forward(q.to(DType::f32), k.to(DType::f32), v.to(DType::f32),
                           attention_mask_tensor(c), c.dims, c.causal, c.dropout_p, kKey, out32,
                           probs32);
    expect_f32_matches_f64("out f32", out32, out);
    expect_f32_matches_f64("probs f32", probs32, probs);
  }
}

// Every output row enters L, padded queries included: they attend to the real keys of their
// sequence, so their outputs are real functions of q, k, v like any other.
TEST(Attention, Gradients) {
  std::mt19937 rng(72);
  for (const AttentionCase& c : attention_cases(rng)) {
    SCOPED_TRACE(c.name);
    const Shape tokens = token_shape(c.dims);
    const Tensor q = uniform(tokens, rng, -2, 2), k = uniform(tokens, rng, -2, 2),
                 v = uniform(tokens, rng), r = uniform(tokens, rng);
    const Tensor mask = attention_mask_tensor(c);
    Tensor probs = Tensor::empty({c.dims.batch, c.dims.heads, c.dims.seq, c.dims.seq}, DType::f64);
    auto forward = [&] {
      Tensor out = Tensor::empty(tokens, DType::f64);
      ops::attention_forward(q, k, v, mask, c.dims, c.causal, c.dropout_p, kKey, out, probs);
      return out;
    };
    forward();
    Tensor dq = Tensor::empty(tokens, DType::f64), dk = Tensor::empty(tokens, DType::f64),
           dv = Tensor::empty(tokens, DType::f64);
    ops::attention_backward(r, q, k, v, probs, c.dims, c.dropout_p, kKey, dq, dk, dv);
    expect_gradient("dq", q, dq, forward, r, rng);
    expect_gradient("dk", k, dk, forward, r, rng);
    expect_gradient("dv", v, dv, forward, r, rng);

    // f32 backward against f64 on the same data.
    Tensor out32 = Tensor::empty(tokens, DType::f32),
           probs32 = Tensor::empty(probs.shape(), DType::f32);
    ops::attention_forward(q.to(DType::f32), k.to(DType::f32), v.to(DType::f32), mask, c.dims,
                           c.causal, c.dropout_p, kKey, out32, probs32);
    Tensor dq32 = Tensor::empty(tokens, DType::f32), dk32 = Tensor::empty(tokens, DType::f32),
           dv32 = Tensor::empty(tokens, DType::f32);
    ops::attention_backward(r.to(DType::f32), q.to(DType::f32), k.to(DType::f32), v.to(DType::f32),
                            probs32, c.dims, c.dropout_p, kKey, dq32, dk32, dv32);
    expect_f32_matches_f64("dq f32", dq32, dq);
    expect_f32_matches_f64("dk f32", dk32, dk);
    expect_f32_matches_f64("dv f32", dv32, dv);
  }
}

// Sequence 0 has key 0 padded and causal masking: its query 0 sees no key at all.
TEST(Attention, QueriesWithNoVisibleKeyGiveZeroOutputAndGradients) {
  std::mt19937 rng(73);
  const AttentionCase c = attention_cases(rng).back();
  const int64_t ld = c.dims.heads * c.dims.head_dim, S = c.dims.seq;
  const Shape tokens = token_shape(c.dims);
  const Tensor q = uniform(tokens, rng), k = uniform(tokens, rng), v = uniform(tokens, rng),
               dout = uniform(tokens, rng);
  Tensor out = Tensor::empty(tokens, DType::f64);
  Tensor probs = Tensor::empty({c.dims.batch, c.dims.heads, S, S}, DType::f64);
  ops::attention_forward(q, k, v, attention_mask_tensor(c), c.dims, true, 0.0, kKey, out, probs);
  Tensor dq = Tensor::empty(tokens, DType::f64), dk = Tensor::empty(tokens, DType::f64),
         dv = Tensor::empty(tokens, DType::f64);
  ops::attention_backward(dout, q, k, v, probs, c.dims, 0.0, kKey, dq, dk, dv);
  const std::vector<double> o = values(out), gq = values(dq), gk = values(dk), gv = values(dv);
  for (int64_t e = 0; e < ld; ++e) {
    EXPECT_EQ(o[e], 0.0);  // token 0 of sequence 0: no visible key
    EXPECT_EQ(gq[e], 0.0);
    EXPECT_EQ(gk[e], 0.0);  // key 0 and key 3 are padding: no query uses them
    EXPECT_EQ(gv[e], 0.0);
    EXPECT_EQ(gk[3 * ld + e], 0.0);
    EXPECT_EQ(gv[3 * ld + e], 0.0);
  }
  EXPECT_NE(o[ld], 0.0);  // token 1 sees key 1
}

// ---- Softmax cross-entropy ----------------------------------------------------------------------

TEST(CrossEntropy, ForwardIgnoredRowsAndGradient) {
  std::mt19937 rng(81);
  const int64_t n = draw(rng, 4, 8), vocab = draw(rng, 3, 11);
  const int32_t ignore = -100;
  std::vector<int32_t> tv(static_cast<size_t>(n));
  for (int32_t& t : tv) t = static_cast<int32_t>(draw(rng, 0, vocab - 1));
  tv[1] = ignore;
  tv[n - 1] = ignore;
  const Tensor targets = ints(tv, {n});
  const Tensor logits = uniform({n, vocab}, rng, -3, 3);
  auto forward = [&] {
    Tensor losses = Tensor::empty({n}, DType::f64);
    ops::softmax_cross_entropy(logits, targets, ignore, losses);
    return losses;
  };
  const std::vector<double> losses = values(forward()), lv = values(logits);
  for (int64_t i = 0; i < n; ++i) {
    if (tv[i] == ignore) {
      EXPECT_EQ(losses[i], 0.0);
      continue;
    }
    double z = 0;
    for (int64_t j = 0; j < vocab; ++j) z += std::exp(lv[i * vocab + j]);
    EXPECT_NEAR(losses[i], -std::log(std::exp(lv[i * vocab + tv[i]]) / z), 1e-13);
  }

  // The op takes a scalar upstream gradient: L = dloss Σ losses, i.e. R filled with dloss.
  const double dloss = 0.7;
  const Tensor r = Tensor::from_vector(std::vector<double>(n, dloss), {n});
  Tensor dlogits = uniform({n, vocab}, rng);  // overwritten, ignored rows included
  Tensor again = Tensor::empty({n}, DType::f64);
  ops::softmax_cross_entropy(logits, targets, ignore, again, &dlogits, dloss);
  EXPECT_EQ(values(again), losses);
  const std::vector<double> dv = values(dlogits);
  for (int64_t j = 0; j < vocab; ++j) EXPECT_EQ(dv[vocab + j], 0.0);
  expect_gradient("dlogits", logits, dlogits, forward, r, rng);

  Tensor l32 = Tensor::empty({n}, DType::f32), d32 = Tensor::empty({n, vocab}, DType::f32);
  ops::softmax_cross_entropy(logits.to(DType::f32), targets, ignore, l32, &d32, dloss);
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

// ---- Argument checks ----------------------------------------------------------------------------

TEST(OpErrors, ShapeDtypeAndLayoutMismatchesNameTheOpAndArgument) {
  const Tensor x = Tensor::zeros({4, 6}, DType::f64);
  Tensor y = Tensor::zeros({4, 6}, DType::f64);
  Tensor c = Tensor::zeros({4, 4}, DType::f64);
  Tensor rows = Tensor::zeros({4}, DType::f64), rows2 = Tensor::zeros({4}, DType::f64);

  expect_error([&] { ops::gemm(x, x, c, false, false); }, {"gemm", "b"});  // 6 != 4 inner
  expect_error([&] { ops::gemm(x, x, y, false, true); }, {"gemm", "c", "[4, 4]"});
  expect_error([&] { ops::gemm_batched(x, x, c, false, true); }, {"gemm_batched", "a"});
  expect_error(
      [&] {
        ops::layernorm_forward(x, Tensor::zeros({5}, DType::f64), Tensor::zeros({6}, DType::f64),
                               1e-5, y, rows, rows2);
      },
      {"layernorm_forward", "gamma", "[6]"});
  expect_error([&] { ops::gelu_forward(x, c); }, {"gelu_forward", "y"});
  Tensor y32 = Tensor::zeros({4, 6}, DType::f32);
  expect_error([&] { ops::gelu_forward(x, y32); }, {"gelu_forward", "y", "f32"});
  expect_error([&] { ops::add(x, Tensor(), y); }, {"add", "b", "undefined"});
  expect_error([&] { ops::accumulate(y, x.slice(1, 0, 3)); }, {"accumulate", "src", "contiguous"});
  Tensor half = Tensor::zeros({3}, DType::bf16);
  expect_error([&] { ops::scale(half, 2); }, {"scale", "x", "bf16"});
  expect_error([&] { ops::bias_add(y, Tensor::zeros({4}, DType::f64)); }, {"bias_add", "bias"});
  expect_error([&] { ops::bias_backward(x, rows); }, {"bias_backward", "dbias"});
  expect_error([&] { ops::dropout_forward(x, 1.0, kKey, y); }, {"dropout_forward", "probability"});

  const Tensor table = Tensor::zeros({5, 6}, DType::f64);
  expect_error([&] { ops::embedding_forward(Tensor::zeros({4}, DType::i64), table, y); },
               {"embedding_forward", "ids", "i32"});
  expect_error(
      [&] {
        ops::embedding_backward(ints({0, 1, 2}, {3}), x, y);
      },
      {"embedding_backward", "dout"});

  const ops::AttentionDims dims{2, 2, 2, 3};
  Tensor probs = Tensor::zeros({2, 2, 2, 2}, DType::f64);
  expect_error(
      [&] {
        ops::attention_forward(x, x, x, ints({1, 1, 1}, {3}), dims, false, 0, kKey, y, probs);
      },
      {"attention_forward", "key_mask"});
  expect_error(
      [&] {
        ops::attention_forward(x, x, x, ints({1, 1, 1, 1}, {2, 2}), {2, 2, 1, 3}, false, 0, kKey, y,
                               probs);
      },
      {"attention_forward", "q"});
  expect_error([&] { ops::attention_backward(x, x, x, x, probs, dims, 0, kKey, y, y, c); },
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
}
