// The dense CUDA ops (GEMMs and linear layers, elementwise, GELU, dropout, embeddings, LayerNorm,
// cross-entropy) against the CPU reference backend: each op runs through qarac::ops on CUDA
// tensors and on CPU f32 tensors holding the same values, on random data with ragged row counts
// and column counts that exercise the 16-byte vector paths (768), their scalar tails (50, 7) and
// misaligned starts. Every test skips when no GPU is present.
//
// Tolerances, as |got - want| <= tol (|want| + rms(want)) per element (rms over the whole output,
// so that elements near zero are judged on the output's scale):
// - f32 mode, tol = 1e-5: both sides round at 6e-8 per operation and differ only in summation
//   order (cuBLASLt's tiles against OpenBLAS's, a warp tree against a loop) and in libm against
//   CUDA's erff/expf (1-2 ulp); sums of a few hundred terms keep that near 1e-6.
// - bf16 mode: the CPU runs on the bf16-rounded inputs, so only the GPU's own roundings remain.
//   Outputs stored in bf16 (8-bit mantissa, rounding error <= 2^-9 = 2e-3 relative, and for
//   compound ops one more rounding of an intermediate such as a linear layer's pre-activation)
//   use tol = 1e-2. Outputs in f32 from bf16 inputs computed by our own kernels (bias and
//   embedding gradients, dγ and dβ, LayerNorm statistics, losses) keep tol = 1e-5: products of
//   two bf16 numbers are exact in f32, so they again differ only in summation order. f32 GEMM
//   outputs from bf16 inputs (weight gradients) use tol = 5e-5: the tensor cores add each
//   MMA's products to the accumulator with alignment and truncation rather than IEEE rounding
//   (Fasi, Higham, Mikaitis, Pranesh, "Numerical behavior of NVIDIA tensor cores", 2021), about
//   one ulp of the running sum per step of 8-16 products and biased, so for a few hundred terms
//   a few tens of ulps.
// Dropout is compared bit for bit; the embedding gradient is checked for identical bits across
// runs (its determinism is what keeps data-parallel replicas identical).
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <initializer_list>
#include <random>
#include <sstream>
#include <string>
#include <tuple>
#include <vector>

#include "support/test_support.h"
#include "core/memory.h"
#include "core/rng.h"
#include "core/tensor.h"
#include "kernels/ops.h"

using namespace qarac;

namespace {

constexpr double kTightTol = 1e-5;       // f32 outputs
constexpr double kBf16Tol = 1e-2;        // bf16 outputs
constexpr double kTensorCoreTol = 5e-5;  // f32 outputs of GEMMs on bf16 inputs

// The tolerance for an output stored in `dtype`.
double tol_for(DType dtype) { return dtype == DType::bf16 ? kBf16Tol : kTightTol; }

class CudaDense : public ::testing::Test {
 protected:
  void SetUp() override {
    if (cuda_device_count() == 0) GTEST_SKIP() << "no CUDA device";
  }
};

// ---- Helpers ----------------------------------------------------------------------------------

using test_support::as_seen;
using test_support::on_cpu;
using test_support::on_gpu;
using test_support::uniform;

Tensor gpu_empty(const Shape& shape, DType dtype) {
  return Tensor::empty(shape, dtype, Device::cuda());
}

// Checks every element of `got` (any device, f32 or bf16) against `want` (CPU f32).
void expect_close(const Tensor& got, const Tensor& want, double tol, const std::string& what) {
  ASSERT_EQ(got.shape(), want.shape()) << what;
  const std::vector<float> g = on_cpu(got).to_vector<float>(), w = want.to_vector<float>();
  double squares = 0;
  for (float x : w) squares += static_cast<double>(x) * x;
  const double rms = w.empty() ? 0 : std::sqrt(squares / static_cast<double>(w.size()));
  size_t bad = 0, worst = 0;
  double worst_ratio = 0;
  for (size_t i = 0; i < w.size(); ++i) {
    const double err = std::abs(static_cast<double>(g[i]) - w[i]);
    const double limit = tol * (std::abs(w[i]) + rms);
    if (!(err <= limit)) {  // NaN fails too
      ++bad;
      const double ratio = limit > 0 ? err / limit : HUGE_VAL;
      if (!(ratio <= worst_ratio)) {
        worst_ratio = ratio;
        worst = i;
      }
    }
  }
  EXPECT_EQ(bad, 0u) << what << ": " << bad << " of " << w.size() << " elements off; worst "
                     << "element " << worst << ": got " << g[worst] << ", want " << w[worst]
                     << " (tolerance " << tol << " x (|want| + rms " << rms << "))";
}

// Checks that `got` and `want` hold the same bits (both CPU or GPU, same dtype).
void expect_same_bits(const Tensor& got, const Tensor& want, const std::string& what) {
  ASSERT_EQ(got.shape(), want.shape()) << what;
  ASSERT_EQ(got.dtype(), want.dtype()) << what;
  const Tensor g = got.to(Device::cpu()), w = want.to(Device::cpu());
  EXPECT_EQ(std::memcmp(g.raw(), w.raw(), g.nbytes()), 0) << what << ": bits differ";
}

std::string shape_name(std::initializer_list<int64_t> dims) {
  std::ostringstream os;
  for (int64_t d : dims) os << d << " ";
  return os.str();
}

// ---- GEMM -------------------------------------------------------------------------------------

// c = alpha op(a) op(b) + beta c for every transpose pair, in sizes that are tensor-core friendly
// (768 inner) and that are not (odd leading dimensions of 5, 7, 3 elements).
TEST_F(CudaDense, GemmAllTransposes) {
  std::mt19937 rng(1);
  for (DType dtype : {DType::f32, DType::bf16}) {
    for (auto [m, n, k] : {std::tuple<int64_t, int64_t, int64_t>{37, 50, 768}, {5, 7, 3}}) {
      for (bool ta : {false, true}) {
        for (bool tb : {false, true}) {
          SCOPED_TRACE(std::string(dtype_name(dtype)) + " mnk " + shape_name({m, n, k}) +
                       (ta ? "aT " : "") + (tb ? "bT" : ""));
          const Tensor a = uniform(ta ? Shape{k, m} : Shape{m, k}, rng);
          const Tensor b = uniform(tb ? Shape{n, k} : Shape{k, n}, rng);
          const Tensor c0 = uniform({m, n}, rng);
          const double alpha = 0.5, beta = 0.75;
          Tensor want = as_seen(c0, dtype).clone();
          ops::gemm(as_seen(a, dtype), as_seen(b, dtype), want, ta, tb, alpha, beta);
          Tensor got = on_gpu(c0, dtype);
          ops::gemm(on_gpu(a, dtype), on_gpu(b, dtype), got, ta, tb, alpha, beta);
          expect_close(got, want, tol_for(dtype), "c");
          // beta = 0 overwrites whatever c held.
          Tensor fresh = Tensor::zeros({m, n}, DType::f32);
          ops::gemm(as_seen(a, dtype), as_seen(b, dtype), fresh, ta, tb);
          Tensor over = on_gpu(uniform({m, n}, rng, 1e3f, 2e3f), dtype);
          ops::gemm(on_gpu(a, dtype), on_gpu(b, dtype), over, ta, tb);
          expect_close(over, fresh, tol_for(dtype), "c with beta 0");
        }
      }
    }
  }
}

TEST_F(CudaDense, GemmBatched) {
  std::mt19937 rng(2);
  for (DType dtype : {DType::f32, DType::bf16}) {
    for (auto [z, m, n, k] : {std::tuple<int64_t, int64_t, int64_t, int64_t>{3, 37, 50, 64},
                              {4, 5, 7, 3}}) {
      for (bool ta : {false, true}) {
        for (bool tb : {false, true}) {
          SCOPED_TRACE(std::string(dtype_name(dtype)) + " zmnk " + shape_name({z, m, n, k}) +
                       (ta ? "aT " : "") + (tb ? "bT" : ""));
          const Tensor a = uniform(ta ? Shape{z, k, m} : Shape{z, m, k}, rng);
          const Tensor b = uniform(tb ? Shape{z, n, k} : Shape{z, k, n}, rng);
          const Tensor c0 = uniform({z, m, n}, rng);
          Tensor want = as_seen(c0, dtype).clone();
          ops::gemm_batched(as_seen(a, dtype), as_seen(b, dtype), want, ta, tb, 1.0, 0.5);
          Tensor got = on_gpu(c0, dtype);
          ops::gemm_batched(on_gpu(a, dtype), on_gpu(b, dtype), got, ta, tb, 1.0, 0.5);
          expect_close(got, want, tol_for(dtype), "c");
        }
      }
    }
  }
}

// Weight gradients: bf16 inputs, f32 output accumulated with beta = 1, twice. The products of
// bf16 values are exact in f32, so only the tensor cores' summation differs.
TEST_F(CudaDense, GemmBf16InputsAccumulateIntoF32) {
  std::mt19937 rng(3);
  const int64_t m = 50, n = 768, k = 301;
  const Tensor a = uniform({k, m}, rng), b = uniform({k, n}, rng), c0 = uniform({m, n}, rng);
  Tensor want = c0.clone();
  Tensor got = c0.to(Device::cuda());
  for (int pass = 0; pass < 2; ++pass) {
    ops::gemm(as_seen(a, DType::bf16), as_seen(b, DType::bf16), want, true, false, 1.0, 1.0);
    ops::gemm(on_gpu(a, DType::bf16), on_gpu(b, DType::bf16), got, true, false, 1.0, 1.0);
  }
  expect_close(got, want, kTensorCoreTol, "c (f32)");
}

// ---- Linear layers ----------------------------------------------------------------------------

TEST_F(CudaDense, LinearForwardWithAndWithoutGelu) {
  std::mt19937 rng(4);
  for (DType dtype : {DType::f32, DType::bf16}) {
    for (auto [rows, in, out] :
         {std::tuple<int64_t, int64_t, int64_t>{37, 96, 200}, {300, 768, 50}, {5, 7, 7}}) {
      for (bool gelu : {false, true}) {
        SCOPED_TRACE(std::string(dtype_name(dtype)) + " rows/in/out " +
                     shape_name({rows, in, out}) + (gelu ? "gelu" : "none"));
        const ops::Activation act = gelu ? ops::Activation::gelu : ops::Activation::none;
        const Tensor x = uniform({rows, in}, rng, -2, 2), w = uniform({out, in}, rng, -0.2f, 0.2f),
                     bias = uniform({out}, rng);
        Tensor y_want = Tensor::empty({rows, out}, DType::f32);
        Tensor pre_want = Tensor::empty({rows, out}, DType::f32);
        ops::linear_forward(as_seen(x, dtype), as_seen(w, dtype), as_seen(bias, dtype), y_want,
                            act, gelu ? &pre_want : nullptr);
        const Tensor gx = on_gpu(x, dtype), gw = on_gpu(w, dtype), gb = on_gpu(bias, dtype);
        Tensor y = gpu_empty({rows, out}, dtype), pre = gpu_empty({rows, out}, dtype);
        ops::linear_forward(gx, gw, gb, y, act, gelu ? &pre : nullptr);
        expect_close(y, y_want, tol_for(dtype), "y");
        if (gelu) {
          expect_close(pre, pre_want, tol_for(dtype), "pre");
          Tensor alone = gpu_empty({rows, out}, dtype);  // no pre kept: GELU in place over y
          ops::linear_forward(gx, gw, gb, alone, act);
          expect_close(alone, y_want, tol_for(dtype), "y without pre");
        }
      }
    }
  }
}

// dw, dbias accumulate onto nonzero values; dx is overwritten (with the next layer's input GELU
// folded in), or accumulated.
TEST_F(CudaDense, LinearBackwardGeluPreAndAccumulate) {
  std::mt19937 rng(5);
  for (DType dtype : {DType::f32, DType::bf16}) {
    for (auto [rows, in, out] :
         {std::tuple<int64_t, int64_t, int64_t>{37, 200, 96}, {300, 50, 768}, {5, 7, 7}}) {
      SCOPED_TRACE(std::string(dtype_name(dtype)) + " rows/in/out " + shape_name({rows, in, out}));
      const DType acc = ops::accumulation_dtype(dtype);
      const double dw_tol = dtype == DType::bf16 ? kTensorCoreTol : kTightTol;
      const Tensor pre = uniform({rows, in}, rng, -3, 3), x = uniform({rows, in}, rng),
                   w = uniform({out, in}, rng, -0.2f, 0.2f), dy = uniform({rows, out}, rng),
                   dw0 = uniform({out, in}, rng), db0 = uniform({out}, rng),
                   dx0 = uniform({rows, in}, rng);
      const Tensor sx = as_seen(x, dtype), sw = as_seen(w, dtype), sdy = as_seen(dy, dtype),
                   spre = as_seen(pre, dtype);
      const Tensor gx = on_gpu(x, dtype), gw = on_gpu(w, dtype), gdy = on_gpu(dy, dtype),
                   gpre = on_gpu(pre, dtype);

      // With the input GELU: dx = (dy · w) ⊙ gelu'(pre).
      Tensor dx_want = Tensor::empty({rows, in}, DType::f32), dw_want = dw0.clone(),
             db_want = db0.clone();
      ops::linear_backward(sx, sw, sdy, &dx_want, dw_want, db_want, &spre);
      Tensor dx = on_gpu(dx0, dtype), dw = on_gpu(dw0, acc), db = on_gpu(db0, acc);
      ops::linear_backward(gx, gw, gdy, &dx, dw, db, &gpre);
      expect_close(dx, dx_want, tol_for(dtype), "dx through gelu'");
      expect_close(dw, dw_want, dw_tol, "dw");
      expect_close(db, db_want, kTightTol, "dbias");

      // accumulate_dx: dx += dy · w; the parameter gradients accumulate a second time.
      Tensor acc_want = as_seen(dx0, dtype).clone();
      ops::linear_backward(sx, sw, sdy, &acc_want, dw_want, db_want, nullptr, true);
      Tensor acc_dx = on_gpu(dx0, dtype);
      ops::linear_backward(gx, gw, gdy, &acc_dx, dw, db, nullptr, true);
      expect_close(acc_dx, acc_want, tol_for(dtype), "accumulated dx");
      expect_close(dw, dw_want, dw_tol, "dw, twice");
      expect_close(db, db_want, kTightTol, "dbias, twice");

      // No dx wanted: parameter gradients only.
      ops::linear_backward(sx, sw, sdy, nullptr, dw_want, db_want);
      ops::linear_backward(gx, gw, gdy, nullptr, dw, db);
      expect_close(dw, dw_want, dw_tol, "dw, three times");
      expect_close(db, db_want, kTightTol, "dbias, three times");
    }
  }
}

// ---- Elementwise ------------------------------------------------------------------------------

// Row counts past 256 use several chunks of the deterministic column reduction.
TEST_F(CudaDense, BiasAddAndBackward) {
  std::mt19937 rng(6);
  for (DType dtype : {DType::f32, DType::bf16}) {
    for (int64_t rows : {37, 300, 1000}) {
      for (int64_t cols : {768, 50, 7}) {
        SCOPED_TRACE(std::string(dtype_name(dtype)) + " rows/cols " + shape_name({rows, cols}));
        const Tensor y0 = uniform({rows, cols}, rng), bias = uniform({cols}, rng),
                     db0 = uniform({cols}, rng);
        Tensor y_want = as_seen(y0, dtype).clone();
        ops::bias_add(y_want, as_seen(bias, dtype));
        Tensor y = on_gpu(y0, dtype);
        ops::bias_add(y, on_gpu(bias, dtype));
        expect_close(y, y_want, tol_for(dtype), "bias_add");

        Tensor db_want = db0.clone();
        ops::bias_backward(as_seen(y0, dtype), db_want);
        Tensor db = db0.to(Device::cuda());
        ops::bias_backward(on_gpu(y0, dtype), db);
        expect_close(db, db_want, kTightTol, "bias_backward");
        Tensor again = db0.to(Device::cuda());
        ops::bias_backward(on_gpu(y0, dtype), again);
        expect_same_bits(again, db, "bias_backward run twice");
      }
    }
  }
}

// Whole tensors (aligned, with a scalar tail after the 16-byte packs) and row slices whose start
// is not 16-byte aligned (1 row of 7 elements in), which take the scalar path.
TEST_F(CudaDense, AddAccumulateScale) {
  std::mt19937 rng(7);
  for (DType dtype : {DType::f32, DType::bf16}) {
    for (bool misaligned : {false, true}) {
      SCOPED_TRACE(std::string(dtype_name(dtype)) + (misaligned ? " misaligned" : " aligned"));
      const int64_t rows = 37, cols = 7, first = misaligned ? 1 : 0;
      const Tensor a = uniform({rows + 1, cols}, rng), b = uniform({rows + 1, cols}, rng);
      auto view = [&](const Tensor& t) { return t.slice(0, first, first + rows); };
      const Tensor sa = view(as_seen(a, dtype)), sb = view(as_seen(b, dtype));
      const Tensor ga = on_gpu(a, dtype), gb = on_gpu(b, dtype);

      Tensor sum_want = Tensor::empty({rows, cols}, DType::f32);
      ops::add(sa, sb, sum_want);
      Tensor out_base = gpu_empty({rows + 1, cols}, dtype), out = view(out_base);
      ops::add(view(ga), view(gb), out);
      expect_close(out, sum_want, tol_for(dtype), "add");

      Tensor acc_want = sa.clone();
      ops::accumulate(acc_want, sb);
      Tensor dst = view(ga);  // in place over a's rows
      ops::accumulate(dst, view(gb));
      expect_close(dst, acc_want, tol_for(dtype), "accumulate");

      Tensor scaled_want = sb.clone();
      ops::scale(scaled_want, -1.5);
      Tensor scaled = view(gb);
      ops::scale(scaled, -1.5);
      expect_close(scaled, scaled_want, tol_for(dtype), "scale");
    }
  }
}

// ---- GELU -------------------------------------------------------------------------------------

TEST_F(CudaDense, GeluForwardAndBackward) {
  std::mt19937 rng(8);
  for (DType dtype : {DType::f32, DType::bf16}) {
    for (int64_t n : {37 * 768, 37 * 50, 7}) {
      SCOPED_TRACE(std::string(dtype_name(dtype)) + " n " + std::to_string(n));
      const Tensor x = uniform({n}, rng, -5, 5), dy = uniform({n}, rng);
      const Tensor sx = as_seen(x, dtype), sdy = as_seen(dy, dtype);
      Tensor y_want = Tensor::empty({n}, DType::f32), dx_want = Tensor::empty({n}, DType::f32);
      ops::gelu_forward(sx, y_want);
      ops::gelu_backward(sx, sdy, dx_want);
      const Tensor gx = on_gpu(x, dtype);
      Tensor y = gpu_empty({n}, dtype), dx = on_gpu(dy, dtype);
      ops::gelu_forward(gx, y);
      ops::gelu_backward(gx, dx, dx);  // in place over dy, as the linear backward uses it
      expect_close(y, y_want, tol_for(dtype), "gelu");
      expect_close(dx, dx_want, tol_for(dtype), "gelu backward");
    }
  }
}

// ---- Dropout ----------------------------------------------------------------------------------

// The mask is the CPU's, bit for bit: in f32 the outputs are identical; in bf16 the GPU's output
// is the CPU's f32 result on the same inputs rounded once (x · scale is one f32 multiply).
TEST_F(CudaDense, DropoutMatchesCpuBitForBit) {
  std::mt19937 rng(9);
  const RngKey key{1234, 17, 5};
  for (DType dtype : {DType::f32, DType::bf16}) {
    for (double p : {0.0, 0.1, 0.5}) {
      for (int64_t n : {37 * 768, 301}) {
        SCOPED_TRACE(std::string(dtype_name(dtype)) + " p " + std::to_string(p) + " n " +
                     std::to_string(n));
        const Tensor x = uniform({n}, rng), sx = as_seen(x, dtype);
        Tensor y_want = Tensor::empty({n}, DType::f32), dx_want = Tensor::empty({n}, DType::f32);
        ops::dropout_forward(sx, p, key, y_want);
        ops::dropout_backward(sx, p, key, dx_want);
        const Tensor gx = on_gpu(x, dtype);
        Tensor y = gpu_empty({n}, dtype), dx = gpu_empty({n}, dtype);
        ops::dropout_forward(gx, p, key, y);
        ops::dropout_backward(gx, p, key, dx);
        expect_same_bits(y, y_want.to(dtype), "forward");
        expect_same_bits(dx, dx_want.to(dtype), "backward");
        Tensor inplace = on_gpu(x, dtype);
        ops::dropout_forward(inplace, p, key, inplace);
        expect_same_bits(inplace, y_want.to(dtype), "in place");
      }
    }
  }
}

// ---- Embeddings -------------------------------------------------------------------------------

TEST_F(CudaDense, EmbeddingForward) {
  std::mt19937 rng(10);
  for (DType dtype : {DType::f32, DType::bf16}) {
    for (int64_t d : {768, 50, 7}) {
      SCOPED_TRACE(std::string(dtype_name(dtype)) + " d " + std::to_string(d));
      const int64_t vocab = 97, n = 301;
      std::vector<int32_t> idv(static_cast<size_t>(n));
      for (int32_t& id : idv) id = std::uniform_int_distribution<int32_t>(0, vocab - 1)(rng);
      const Tensor ids = Tensor::from_vector(idv, {n});
      const Tensor table = uniform({vocab, d}, rng), out0 = uniform({n, d}, rng);
      for (bool accumulate : {false, true}) {
        Tensor want = as_seen(out0, dtype).clone();
        ops::embedding_forward(ids, as_seen(table, dtype), want, accumulate);
        Tensor got = on_gpu(out0, dtype);
        ops::embedding_forward(ids.to(Device::cuda()), on_gpu(table, dtype), got, accumulate);
        expect_close(got, want, tol_for(dtype), accumulate ? "accumulate" : "gather");
      }
    }
  }
}

// Few ids over many rows: long runs of equal ids, every id repeated, one id on a third of the
// rows. The gradient matches the CPU's and has the same bits on a second run.
TEST_F(CudaDense, EmbeddingBackwardRepeatedIdsDeterministic) {
  std::mt19937 rng(11);
  for (DType dtype : {DType::f32, DType::bf16}) {
    for (int64_t d : {768, 50, 7}) {
      SCOPED_TRACE(std::string(dtype_name(dtype)) + " d " + std::to_string(d));
      const int64_t vocab = 11, n = 700;
      std::vector<int32_t> idv(static_cast<size_t>(n));
      for (size_t i = 0; i < idv.size(); ++i)
        idv[i] = i % 3 == 0 ? 4 : std::uniform_int_distribution<int32_t>(0, vocab - 1)(rng);
      const Tensor ids = Tensor::from_vector(idv, {n}), gids = ids.to(Device::cuda());
      const Tensor dout = uniform({n, d}, rng), dt0 = uniform({vocab, d}, rng);
      Tensor want = dt0.clone();
      ops::embedding_backward(ids, as_seen(dout, dtype), want);
      const Tensor gdout = on_gpu(dout, dtype);
      Tensor got = dt0.to(Device::cuda()), again = dt0.to(Device::cuda());
      ops::embedding_backward(gids, gdout, got);
      ops::embedding_backward(gids, gdout, again);
      expect_close(got, want, kTightTol, "dtable");
      expect_same_bits(again, got, "dtable, second run");
    }
  }
}

// ---- LayerNorm --------------------------------------------------------------------------------

// Rows of mean 3 (so a one-pass variance would lose digits), plain and with the residual add.
TEST_F(CudaDense, LayerNormAndAddLayerNormForward) {
  std::mt19937 rng(12);
  const double eps = 1e-5;
  for (DType dtype : {DType::f32, DType::bf16}) {
    for (int64_t rows : {37, 300}) {
      for (int64_t cols : {768, 50, 7}) {
        SCOPED_TRACE(std::string(dtype_name(dtype)) + " rows/cols " + shape_name({rows, cols}));
        const DType acc = ops::accumulation_dtype(dtype);
        const Tensor a = uniform({rows, cols}, rng, 2, 4), b = uniform({rows, cols}, rng),
                     gamma = uniform({cols}, rng, 0.5f, 1.5f), beta = uniform({cols}, rng);
        const Tensor sg = as_seen(gamma, dtype), sb = as_seen(beta, dtype);
        const Tensor gg = on_gpu(gamma, dtype), gbeta = on_gpu(beta, dtype);

        Tensor y_want = Tensor::empty({rows, cols}, DType::f32);
        Tensor mean_want = Tensor::empty({rows}, DType::f32), rstd_want = Tensor::empty({rows}, DType::f32);
        ops::layernorm_forward(as_seen(a, dtype), sg, sb, eps, y_want, mean_want, rstd_want);
        Tensor y = gpu_empty({rows, cols}, dtype), mean = gpu_empty({rows}, acc),
               rstd = gpu_empty({rows}, acc);
        ops::layernorm_forward(on_gpu(a, dtype), gg, gbeta, eps, y, mean, rstd);
        expect_close(y, y_want, tol_for(dtype), "y");
        expect_close(mean, mean_want, kTightTol, "mean");
        expect_close(rstd, rstd_want, kTightTol, "rstd");

        // The GPU rounds the residual sum to the dtype before normalising it: so does the
        // reference.
        Tensor sum_want = Tensor::empty({rows, cols}, DType::f32);
        ops::add(as_seen(a, dtype), as_seen(b, dtype), sum_want);
        sum_want = as_seen(sum_want, dtype);
        ops::layernorm_forward(sum_want, sg, sb, eps, y_want, mean_want, rstd_want);
        Tensor sum = gpu_empty({rows, cols}, dtype);
        ops::add_layernorm_forward(on_gpu(a, dtype), on_gpu(b, dtype), gg, gbeta, eps, sum, y, mean,
                                   rstd);
        expect_close(sum, sum_want, tol_for(dtype), "residual sum");
        expect_close(y, y_want, tol_for(dtype), "y of the sum");
        expect_close(mean, mean_want, kTightTol, "mean of the sum");
        expect_close(rstd, rstd_want, kTightTol, "rstd of the sum");
      }
    }
  }
}

// Both backends get the same saved statistics, so the backward pass is compared on its own. 300
// and 1000 rows use several chunks of the deterministic dγ, dβ reduction.
TEST_F(CudaDense, LayerNormBackward) {
  std::mt19937 rng(13);
  for (DType dtype : {DType::f32, DType::bf16}) {
    for (int64_t rows : {37, 300, 1000}) {
      for (int64_t cols : {768, 50, 7}) {
        SCOPED_TRACE(std::string(dtype_name(dtype)) + " rows/cols " + shape_name({rows, cols}));
        const DType acc = ops::accumulation_dtype(dtype);
        const Tensor x = uniform({rows, cols}, rng, -2, 2), dy = uniform({rows, cols}, rng),
                     gamma = uniform({cols}, rng, 0.5f, 1.5f), beta = uniform({cols}, rng),
                     dg0 = uniform({cols}, rng), dbeta0 = uniform({cols}, rng);
        const Tensor sx = as_seen(x, dtype), sdy = as_seen(dy, dtype), sg = as_seen(gamma, dtype);
        Tensor y = Tensor::empty({rows, cols}, DType::f32), mean = Tensor::empty({rows}, DType::f32),
               rstd = Tensor::empty({rows}, DType::f32);
        ops::layernorm_forward(sx, sg, as_seen(beta, dtype), 1e-5, y, mean, rstd);

        Tensor dx_want = Tensor::empty({rows, cols}, DType::f32), dg_want = dg0.clone(),
               dbeta_want = dbeta0.clone();
        ops::layernorm_backward(sdy, sx, sg, mean, rstd, dx_want, dg_want, dbeta_want);
        const Tensor gdy = on_gpu(dy, dtype), gx = on_gpu(x, dtype), gg = on_gpu(gamma, dtype);
        const Tensor gmean = on_gpu(mean, acc), grstd = on_gpu(rstd, acc);
        Tensor dx = gpu_empty({rows, cols}, dtype), dg = on_gpu(dg0, acc),
               dbeta = on_gpu(dbeta0, acc);
        ops::layernorm_backward(gdy, gx, gg, gmean, grstd, dx, dg, dbeta);
        expect_close(dx, dx_want, tol_for(dtype), "dx");
        expect_close(dg, dg_want, kTightTol, "dgamma");
        expect_close(dbeta, dbeta_want, kTightTol, "dbeta");

        Tensor dg2 = on_gpu(dg0, acc), dbeta2 = on_gpu(dbeta0, acc);
        Tensor inplace = on_gpu(dy, dtype);  // dx over dy
        ops::layernorm_backward(inplace, gx, gg, gmean, grstd, inplace, dg2, dbeta2);
        expect_close(inplace, dx_want, tol_for(dtype), "dx in place over dy");
        expect_same_bits(dg2, dg, "dgamma, second run");
        expect_same_bits(dbeta2, dbeta, "dbeta, second run");
      }
    }
  }
}

// ---- Cross-entropy ----------------------------------------------------------------------------

// A vocabulary padded past valid_cols (padding logits set large, so any leak into the softmax
// shows), ignored rows, the gradient written in place over the logits.
TEST_F(CudaDense, CrossEntropyValidColumnsIgnoredRowsInPlace) {
  std::mt19937 rng(14);
  const int32_t ignore = -100;
  const double dloss = 0.7;
  for (DType dtype : {DType::f32, DType::bf16}) {
    for (auto [rows, valid, cols] :
         {std::tuple<int64_t, int64_t, int64_t>{37, 700, 768}, {300, 45, 50}, {5, 6, 7},
          {9, 768, 768}}) {
      SCOPED_TRACE(std::string(dtype_name(dtype)) + " rows/valid/cols " +
                   shape_name({rows, valid, cols}));
      std::vector<int32_t> tv(static_cast<size_t>(rows));
      for (int32_t& t : tv) t = std::uniform_int_distribution<int32_t>(0, valid - 1)(rng);
      tv[1] = ignore;
      tv[rows - 1] = ignore;
      const Tensor targets = Tensor::from_vector(tv, {rows}), gt = targets.to(Device::cuda());
      std::vector<float> lv = uniform({rows, cols}, rng, -4, 4).to_vector<float>();
      for (int64_t i = 0; i < rows; ++i)
        for (int64_t j = valid; j < cols; ++j) lv[i * cols + j] = 40;
      const Tensor logits = as_seen(Tensor::from_vector(lv, {rows, cols}), dtype);

      Tensor loss_want = Tensor::empty({rows}, DType::f32);
      Tensor grad_want = Tensor::empty({rows, cols}, DType::f32);
      ops::softmax_cross_entropy(logits, targets, ignore, loss_want, &grad_want, dloss, valid);

      const DType acc = ops::accumulation_dtype(dtype);
      Tensor losses = gpu_empty({rows}, acc), grad = gpu_empty({rows, cols}, dtype);
      const Tensor glogits = on_gpu(logits, dtype);
      ops::softmax_cross_entropy(glogits, gt, ignore, losses, &grad, dloss, valid);
      expect_close(losses, loss_want, kTightTol, "losses");
      expect_close(grad, grad_want, tol_for(dtype), "dlogits");
      const std::vector<float> g = on_cpu(grad).to_vector<float>();
      for (int64_t i = 0; i < rows; ++i)
        for (int64_t j = 0; j < cols; ++j)
          if (j >= valid || tv[i] == ignore) {
            ASSERT_EQ(g[i * cols + j], 0.f) << "row " << i << ", column " << j;
          }

      Tensor only = gpu_empty({rows}, acc);  // losses alone
      ops::softmax_cross_entropy(glogits, gt, ignore, only, nullptr, dloss, valid);
      expect_same_bits(only, losses, "losses without the gradient");

      Tensor inplace = on_gpu(logits, dtype), losses_inplace = gpu_empty({rows}, acc);
      ops::softmax_cross_entropy(inplace, gt, ignore, losses_inplace, &inplace, dloss, valid);
      expect_same_bits(losses_inplace, losses, "losses in place");
      expect_same_bits(inplace, grad, "dlogits in place");

      // Row weights (the decoder's 1/(B n_b) per target token) scale each row's gradient and
      // leave the losses as they were.
      const Tensor weights = uniform({rows}, rng, 0.1f, 2.f), gweights = weights.to(Device::cuda());
      Tensor weighted_want = Tensor::empty({rows, cols}, DType::f32);
      ops::softmax_cross_entropy(logits, targets, ignore, loss_want, &weighted_want, dloss, valid,
                                 &weights);
      Tensor weighted_losses = gpu_empty({rows}, acc), weighted = on_gpu(logits, dtype);
      ops::softmax_cross_entropy(weighted, gt, ignore, weighted_losses, &weighted, dloss, valid,
                                 &gweights);
      expect_same_bits(weighted_losses, losses, "losses with row weights");
      expect_close(weighted, weighted_want, tol_for(dtype), "dlogits with row weights, in place");
    }
  }
}

}  // namespace
