// CUDA attention over padding-free batches (kernels/cuda/attention.cu) against the CPU reference
// through qarac::ops: out, lse, dq, dk, dv on random ragged batches (a one-token sequence, lengths
// that are not multiples of the kernels' tiles, empty sequences), causal or not, with and without
// dropout, head dims 64 (bf16: the tensor-core path) and others (the generic path), f32 and bf16
// storage; the backward pass's determinism; a RoBERTa-sized case. Outputs start as NaN, so a row
// a kernel forgets to write fails. Every test skips when there is no CUDA device.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <tuple>
#include <vector>

#include "core/error.h"
#include "core/memory.h"
#include "core/rng.h"
#include "core/tensor.h"
#include "kernels/ops.h"

using namespace qarac;

namespace {

const Device kGpu = Device::cuda(0);
const RngKey kKey{20240611, 17, 5};

// ---- Tolerances ----------------------------------------------------------------------------------
// Errors are measured against the largest |value| of the whole reference tensor, not elementwise:
// gradients are sums whose terms cancel (the dq and dk rows of a one-token sequence are exactly 0
// in exact arithmetic and rounding noise in both implementations), so an element's own size says
// nothing about its rounding.
//
// f32: both sides compute in f32 from the same inputs; they differ in the order of the sums (key
// tiles, warp trees and online rescaling against BLAS loops), expf against std::exp, and the
// backward's D = rowsum(dO ⊙ O) (GPU) against rowsum(P̃ ⊙ dP̃) (CPU). Sums of at most 512 O(1)
// terms round to ~1e-6 of the largest value (measured on an H100 against an f64 reference:
// <= 1.2e-6 for every tensor and case below); 1e-5 leaves a margin of ~8 and any formula error (a
// missing term, a wrong mask or dropout index) is O(1e-1).
constexpr double kF32Tol = 1e-5;
// bf16: the reference runs in f32 on the bf16-rounded inputs, so what is measured is the GPU's own
// rounding: P rounded to bf16 (8 significant bits, relative error 2^-9) before P·V, P̃ and dS
// rounded to bf16 before the dV, dK and dQ products, D computed from the bf16-rounded O, and each
// output rounded to bf16 (2^-9 of the largest value). Accumulated over 64..512-term f32 sums that
// gives a few 1e-3 of the largest value (measured: <= 7.1e-3); 2e-2 keeps a margin of ~3 and
// still fails on any formula error.
constexpr double kBf16Tol = 2e-2;
// lse stays f32 on both sides; with bf16 storage the scores are exact products of bf16 values
// accumulated in f32, and the exponentials use the fast ex2-based __expf (relative error ~1e-7
// per term): measured <= 1.5e-7 of the largest |lse|, 1e-4 is far from any formula error's O(1).
constexpr double kBf16LseTol = 1e-4;

double tolerance(DType x) { return x == DType::bf16 ? kBf16Tol : kF32Tol; }
double lse_tolerance(DType x) { return x == DType::bf16 ? kBf16LseTol : kF32Tol; }

// ---- Data ----------------------------------------------------------------------------------------

Tensor normal(const Shape& shape, std::mt19937& rng, float stddev) {
  std::normal_distribution<float> dist(0.f, stddev);
  std::vector<float> v(static_cast<size_t>(shape_numel(shape)));
  for (float& x : v) x = dist(rng);
  return Tensor::from_vector(v, shape);
}
// The values a kernel with storage x reads: f32 CPU values rounded to x, as a new f32 CPU tensor.
Tensor representable(const Tensor& t, DType x) { return t.to(x).to(DType::f32).clone(); }
Tensor to_gpu(const Tensor& t, DType x) { return t.to(x).to(kGpu); }
Tensor to_host(const Tensor& t) { return t.to(Device::cpu()).to(DType::f32); }
// A GPU tensor of NaNs: an output the op fails to overwrite fails every comparison.
Tensor poisoned(const Shape& shape, DType x) {
  const std::vector<float> nan(static_cast<size_t>(shape_numel(shape)),
                               std::numeric_limits<float>::quiet_NaN());
  return to_gpu(Tensor::from_vector(nan, shape), x);
}

// Expects |actual - expected| <= tol · max|expected| for every element (NaN fails).
void expect_close(const Tensor& actual, const Tensor& expected, double tol, const std::string& what) {
  ASSERT_EQ(actual.shape(), expected.shape()) << what;
  const std::vector<float> a = to_host(actual).to_vector<float>();
  const std::vector<float> e = expected.to_vector<float>();
  double scale = 0;
  for (float x : e) scale = std::max(scale, std::fabs(double(x)));
  size_t bad = 0, worst = 0;
  double worst_err = 0;
  for (size_t i = 0; i < e.size(); ++i) {
    const double err = std::fabs(double(a[i]) - double(e[i]));
    if (!(err <= tol * scale)) {
      ++bad;
      if (!(err <= worst_err)) {
        worst_err = err;
        worst = i;
      }
    }
  }
  EXPECT_EQ(bad, 0u) << what << ": " << bad << " of " << e.size()
                     << " elements out of tolerance; worst at " << worst << ": " << a[worst]
                     << " vs " << e[worst] << " (error " << worst_err / scale
                     << " of the largest |value| " << scale << ", tolerance " << tol << ")";
}

// Expects the same bits.
void expect_equal_bits(const Tensor& actual, const Tensor& expected, const std::string& what) {
  ASSERT_EQ(actual.shape(), expected.shape()) << what;
  ASSERT_EQ(actual.dtype(), expected.dtype()) << what;
  const Tensor a = actual.to(Device::cpu()), e = expected.to(Device::cpu());
  EXPECT_EQ(std::memcmp(a.raw(), e.raw(), a.nbytes()), 0) << what << " differs between two runs";
}

// ---- One problem on both backends ------------------------------------------------------------------

struct Problem {
  std::vector<int32_t> lengths;
  int64_t heads = 2, head_dim = 64;
  bool causal = false;
  double dropout = 0.0;
  DType dtype = DType::f32;
};

struct Inputs {
  Tensor q, k, v, dout;  // f32 CPU, representable in the problem's dtype
};

Inputs make_inputs(const Problem& pb, int64_t tokens, std::mt19937& rng) {
  const Shape shape = {tokens, pb.heads * pb.head_dim};
  // q and k with standard deviation 1.5: scores of standard deviation ~2.2 whatever Dh, so the
  // softmax rows range from nearly flat to peaked and the online rescaling has work to do.
  return {representable(normal(shape, rng, 1.5f), pb.dtype),
          representable(normal(shape, rng, 1.5f), pb.dtype),
          representable(normal(shape, rng, 1.f), pb.dtype),
          representable(normal(shape, rng, 1.f), pb.dtype)};
}

struct Outputs {
  Tensor out, lse, dq, dk, dv;
};

Outputs run_cpu(const Problem& pb, const Inputs& in) {
  const ops::Sequences seqs = ops::Sequences::from_lengths(pb.lengths, Device::cpu());
  const Shape shape = in.q.shape();
  Outputs o{Tensor::empty(shape, DType::f32), Tensor::empty({pb.heads, seqs.tokens()}, DType::f32),
            Tensor::empty(shape, DType::f32), Tensor::empty(shape, DType::f32),
            Tensor::empty(shape, DType::f32)};
  ops::attention_forward(in.q, in.k, in.v, seqs, pb.heads, pb.causal, pb.dropout, kKey, o.out, o.lse);
  ops::attention_backward(in.dout, in.q, in.k, in.v, o.out, o.lse, seqs, pb.heads, pb.causal,
                          pb.dropout, kKey, o.dq, o.dk, o.dv);
  return o;
}

struct GpuInputs {
  Tensor q, k, v, dout;
  GpuInputs(const Inputs& in, DType x)
      : q(to_gpu(in.q, x)), k(to_gpu(in.k, x)), v(to_gpu(in.v, x)), dout(to_gpu(in.dout, x)) {}
};

Outputs run_gpu(const Problem& pb, const GpuInputs& in) {
  const ops::Sequences seqs = ops::Sequences::from_lengths(pb.lengths, kGpu);
  const Shape shape = in.q.shape();
  Outputs o{poisoned(shape, pb.dtype), poisoned({pb.heads, seqs.tokens()}, DType::f32),
            poisoned(shape, pb.dtype), poisoned(shape, pb.dtype), poisoned(shape, pb.dtype)};
  ops::attention_forward(in.q, in.k, in.v, seqs, pb.heads, pb.causal, pb.dropout, kKey, o.out, o.lse);
  ops::attention_backward(in.dout, in.q, in.k, in.v, o.out, o.lse, seqs, pb.heads, pb.causal,
                          pb.dropout, kKey, o.dq, o.dk, o.dv);
  return o;
}

// Runs the problem on both backends and compares every output.
void check_against_cpu(const Problem& pb, uint32_t seed) {
  std::mt19937 rng(seed);
  int64_t tokens = 0;
  for (int32_t n : pb.lengths) tokens += n;
  const Inputs in = make_inputs(pb, tokens, rng);
  const Outputs expected = run_cpu(pb, in);
  const Outputs actual = run_gpu(pb, GpuInputs(in, pb.dtype));
  const double tol = tolerance(pb.dtype);
  expect_close(actual.out, expected.out, tol, "out");
  expect_close(actual.lse, expected.lse, lse_tolerance(pb.dtype), "lse");
  expect_close(actual.dq, expected.dq, tol, "dq");
  expect_close(actual.dk, expected.dk, tol, "dk");
  expect_close(actual.dv, expected.dv, tol, "dv");
}

std::string problem_name(DType x, int64_t head_dim, bool causal, double dropout) {
  return std::string(dtype_name(x)) + "_d" + std::to_string(head_dim) +
         (causal ? "_causal" : "_bidirectional") + (dropout > 0 ? "_dropout" : "");
}

class CudaAttention : public ::testing::Test {
 protected:
  void SetUp() override {
    if (cuda_device_count() == 0) GTEST_SKIP() << "no CUDA device";
  }
};

// ---- The matrix: dtype × head dim × causal × dropout on lengths {1, 7, 64, 130} ---------------------
// 1: a single key (P = 1, zero dq and dk); 7: shorter than every tile; 64: exactly one tensor-core
// tile; 130: two full tiles and a 2-row tail (and 130 = 4·32 + 2 for the generic path's tiles).

using MatrixParam = std::tuple<DType, int64_t, bool, double>;
class CudaAttentionMatrix : public CudaAttention, public ::testing::WithParamInterface<MatrixParam> {};

TEST_P(CudaAttentionMatrix, MatchesCpu) {
  const auto [dtype, head_dim, causal, dropout] = GetParam();
  Problem pb;
  pb.lengths = {1, 7, 64, 130};
  // 2, 3, 5 or 12 heads, different per case: heads are the grid's y and part of the dropout index.
  constexpr int64_t kHeads[] = {2, 3, 5, 12};
  pb.heads = kHeads[(head_dim / 32 + (causal ? 2 : 0) + (dropout > 0 ? 1 : 0)) % 4];
  pb.head_dim = head_dim;
  pb.causal = causal;
  pb.dropout = dropout;
  pb.dtype = dtype;
  check_against_cpu(pb, 100 + static_cast<uint32_t>(pb.heads));
}

INSTANTIATE_TEST_SUITE_P(
    Paths, CudaAttentionMatrix,
    ::testing::Combine(::testing::Values(DType::f32, DType::bf16), ::testing::Values(int64_t{64}, int64_t{32}),
                       ::testing::Bool(), ::testing::Values(0.0, 0.1)),
    [](const ::testing::TestParamInfo<MatrixParam>& matrix) {
      return problem_name(std::get<0>(matrix.param), std::get<1>(matrix.param),
                          std::get<2>(matrix.param), std::get<3>(matrix.param));
    });

// ---- Edge cases -----------------------------------------------------------------------------------

// Empty sequences first, between others and last: their blocks exit at once and every other
// sequence's offsets, rows and dropout indices stay right.
TEST_F(CudaAttention, EmptySequences) {
  for (const DType dtype : {DType::f32, DType::bf16}) {
    SCOPED_TRACE(dtype_name(dtype));
    Problem pb;
    pb.lengths = {0, 5, 0, 33, 70, 0};
    pb.heads = 4;
    pb.causal = true;
    pb.dropout = 0.1;
    pb.dtype = dtype;
    check_against_cpu(pb, 7);
  }
}

// Head dims of tiny models (8, 16, 24: fewer columns than a warp's lanes) and the largest one
// (128: the generic backward kernels then need more than 48 KiB of shared memory), both dtypes.
TEST_F(CudaAttention, OtherHeadDims) {
  for (const DType dtype : {DType::f32, DType::bf16})
    for (const int64_t head_dim : {8, 16, 24, 128}) {
      SCOPED_TRACE(problem_name(dtype, head_dim, true, 0.1));
      Problem pb;
      pb.lengths = {1, 7, 64, 130};
      pb.heads = 3;
      pb.head_dim = head_dim;
      pb.causal = true;
      pb.dropout = 0.1;
      pb.dtype = dtype;
      check_against_cpu(pb, 11);
    }
}

// RoBERTa-base's attention (12 heads of 64) on sequences up to 512 tokens, both dtypes.
TEST_F(CudaAttention, RobertaSized) {
  Problem pb;
  pb.lengths = {512, 300, 77, 511};
  pb.heads = 12;
  pb.head_dim = 64;
  {
    SCOPED_TRACE("bf16 bidirectional with dropout");
    pb.dtype = DType::bf16;
    pb.causal = false;
    pb.dropout = 0.1;
    check_against_cpu(pb, 21);
  }
  {
    SCOPED_TRACE("f32 causal");
    pb.dtype = DType::f32;
    pb.causal = true;
    pb.dropout = 0.0;
    check_against_cpu(pb, 22);
  }
}

// No atomics: every gradient element is summed by one thread in a fixed order, so two backward
// passes give the same bits (tensor-core path: bf16 d64; generic path: f32).
TEST_F(CudaAttention, BackwardIsDeterministic) {
  for (const DType dtype : {DType::bf16, DType::f32}) {
    SCOPED_TRACE(dtype_name(dtype));
    Problem pb;
    pb.lengths = {100, 200, 37};
    pb.heads = 4;
    pb.dropout = 0.1;
    pb.dtype = dtype;
    std::mt19937 rng(31);
    const GpuInputs in(make_inputs(pb, 337, rng), dtype);
    const Outputs first = run_gpu(pb, in);
    const Outputs second = run_gpu(pb, in);
    expect_equal_bits(second.out, first.out, "out");
    expect_equal_bits(second.lse, first.lse, "lse");
    expect_equal_bits(second.dq, first.dq, "dq");
    expect_equal_bits(second.dk, first.dk, "dk");
    expect_equal_bits(second.dv, first.dv, "dv");
  }
}

TEST_F(CudaAttention, RejectsHeadDimAbove128) {
  const ops::Sequences seqs = ops::Sequences::from_lengths({3}, kGpu);
  const Tensor q = Tensor::zeros({3, 256}, DType::f32, kGpu);
  Tensor out = Tensor::zeros({3, 256}, DType::f32, kGpu), lse = Tensor::zeros({1, 3}, DType::f32, kGpu);
  try {
    ops::attention_forward(q, q, q, seqs, 1, false, 0.0, kKey, out, lse);
    ADD_FAILURE() << "no error for head_dim 256";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("head_dim"), std::string::npos) << e.what();
  }
}

}  // namespace
