// The GEMM algorithm cache of kernels/cuda/gemm.cu (ported) on the emulated cuBLASLt: with ragged
// batches the token count T changes every step, and the linear layers' three GEMMs must ask the
// heuristic once per bucket of 64 token counts, not once per T; where cuBLASLt refuses a bucket's
// algorithm for a smaller T (emu::AlgorithmRule: cuBLASLt promises an algorithm only for the sizes
// it was chosen for; its check says so before the run, or the run refuses it), the exact size is
// asked and the result is still right. The values
// are compared with the CPU backend (test_backend_ops covers the GEMMs' numerics; this only checks
// that every path computes). The operands' alignments are part of the cache key; the caching
// allocator's blocks on the GPU all have the largest (256 bytes), host tensors only 64, so the
// tensors here are 256-byte aligned views.
#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <string>
#include <vector>

#include "core/tensor.h"
#include "emulated_backend.h"
#include "emulated_libraries.h"
#include "kernels/ops.h"

namespace qarac {
namespace {

// An f32 tensor of `shape` whose data starts on a 256-byte boundary, zeros.
Tensor aligned(const Shape& shape) {
  const int64_t n = shape_numel(shape);
  const Tensor block = Tensor::zeros({n + 64}, DType::f32);
  const int64_t skip = static_cast<int64_t>((256 - reinterpret_cast<uintptr_t>(block.raw()) % 256) % 256 / 4);
  return block.slice(0, skip, skip + n).reshape(shape);
}

Tensor random(const Shape& shape, std::mt19937& rng) {
  std::uniform_real_distribution<float> dist(-1.f, 1.f);
  std::vector<float> v(static_cast<size_t>(shape_numel(shape)));
  for (float& x : v) x = dist(rng);
  Tensor t = aligned(shape);
  t.copy_(Tensor::from_vector(v, shape));
  return t;
}

// The outputs of one linear layer's forward and backward pass on x [tokens, in], in f32.
struct Linear {
  Tensor y, dx, dw, dbias;
};
Linear run_linear(const Tensor& x, const Tensor& w, const Tensor& bias, const Tensor& dy) {
  Linear r{aligned({x.size(0), w.size(0)}), aligned(x.shape()), aligned(w.shape()), aligned(bias.shape())};
  ops::linear_forward(x, w, bias, r.y);
  ops::linear_backward(x, w, dy, &r.dx, r.dw, &r.dbias);
  return r;
}

void expect_close(const Tensor& got, const Tensor& want, const std::string& what) {
  const std::vector<float> g = got.to_vector<float>(), w = want.to_vector<float>();
  ASSERT_EQ(g.size(), w.size()) << what;
  size_t bad = 0;
  for (size_t i = 0; i < g.size(); ++i)
    if (!(std::fabs(g[i] - w[i]) <= 1e-4f * (1.f + std::fabs(w[i])))) ++bad;
  EXPECT_EQ(bad, 0u) << what << ": " << bad << " of " << g.size() << " elements differ from the CPU";
}

// The heuristic queries one linear layer's forward and backward pass with `tokens` rows costs on
// the emulated CUDA backend, whose results it checks against the CPU backend.
uint64_t queries_of_linear(int64_t tokens, int64_t in, int64_t out, uint32_t seed) {
  std::mt19937 rng(seed);
  const Tensor x = random({tokens, in}, rng), w = random({out, in}, rng), bias = random({out}, rng),
               dy = random({tokens, out}, rng);
  const Linear want = run_linear(x, w, bias, dy);
  const uint64_t before = emu::heuristic_queries();
  Linear got;
  {
    const ops::HostBackendOverride on_emulator(ops::cuda_emulated_backend());
    got = run_linear(x, w, bias, dy);
  }
  const std::string what = "T " + std::to_string(tokens) + ": ";
  expect_close(got.y, want.y, what + "y");
  expect_close(got.dx, want.dx, what + "dx");
  expect_close(got.dw, want.dw, what + "dw");
  expect_close(got.dbias, want.dbias, what + "dbias");
  return emu::heuristic_queries() - before;
}

// Each test uses widths of its own: the cache lives as long as the process.
TEST(GemmAlgorithmCache, RaggedTokenCountsAskOncePerBucket) {
  emu::set_algorithm_rule(emu::AlgorithmRule::any_size);
  // y = x wᵀ + b, dx = dy w, dw += dyᵀ x: three shapes with T in them, asked once.
  EXPECT_EQ(queries_of_linear(1000, 48, 40, 1), 3u) << "the first T of a bucket";
  for (const int64_t tokens : {1001, 961, 1024, 1000})
    EXPECT_EQ(queries_of_linear(tokens, 48, 40, 2), 0u) << "T " << tokens << " shares the bucket (960, 1024]";
  EXPECT_EQ(queries_of_linear(1025, 48, 40, 3), 3u) << "T 1025 opens the bucket (1024, 1088]";
  EXPECT_EQ(queries_of_linear(1088, 48, 40, 4), 0u);
}

TEST(GemmAlgorithmCache, AnAlgorithmRefusedForASmallerSizeFallsBackToTheExactSize) {
  emu::set_algorithm_rule(emu::AlgorithmRule::chosen_size);
  const uint64_t refused = emu::refused_runs();
  // The bucket's three queries, each algorithm refused at T 1000 by cublasLtMatmulAlgoCheck (never
  // run: a refused run may fail other than cleanly), then the three exact ones.
  EXPECT_EQ(queries_of_linear(1000, 56, 24, 5), 6u);
  EXPECT_EQ(queries_of_linear(1000, 56, 24, 6), 0u) << "the exact algorithms are cached";
  EXPECT_EQ(queries_of_linear(1024, 56, 24, 7), 0u) << "the bucket's own size takes its algorithms";
  EXPECT_EQ(queries_of_linear(990, 56, 24, 8), 3u) << "another T of the bucket needs its own";
  EXPECT_EQ(emu::refused_runs(), refused);
  // A check that passes an algorithm the run then refuses: the exact size is asked all the same.
  emu::set_algorithm_rule(emu::AlgorithmRule::chosen_size_unchecked);
  EXPECT_EQ(queries_of_linear(900, 56, 24, 9), 6u);
  EXPECT_EQ(emu::refused_runs(), refused + 3);
  EXPECT_EQ(queries_of_linear(900, 56, 24, 10), 0u);
  EXPECT_EQ(emu::refused_runs(), refused + 3) << "an exact algorithm, once found, is used";
  emu::set_algorithm_rule(emu::AlgorithmRule::any_size);
}

// A batched product has every size in its batch strides: no bucket, one query per exact shape.
TEST(GemmAlgorithmCache, BatchedProductsAreNotBucketed) {
  emu::set_algorithm_rule(emu::AlgorithmRule::any_size);
  std::mt19937 rng(9);
  const ops::HostBackendOverride on_emulator(ops::cuda_emulated_backend());
  const int64_t sizes[] = {30, 31, 30};
  const uint64_t asked[] = {1, 1, 0};
  for (int i = 0; i < 3; ++i) {
    const Tensor a = random({3, sizes[i], 16}, rng), b = random({3, 16, 8}, rng);
    Tensor c = aligned({3, sizes[i], 8});
    const uint64_t before = emu::heuristic_queries();
    ops::gemm_batched(a, b, c, false, false);
    EXPECT_EQ(emu::heuristic_queries() - before, asked[i]) << "m " << sizes[i];
  }
}

}  // namespace
}  // namespace qarac
