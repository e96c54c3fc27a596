// The two paths of the CUDA LayerNorm backward (kernels/cuda/layernorm.cu, ported by
// port_kernel.py) on the CUDA emulator: the one kernel that holds rows in registers and the
// rows-then-columns pass, forced by LayerNormBackwardPath, give the same bits. Both form dx by the
// same row formula with the same lanes, and both take the column sums (dγ, dβ, the branch's bias
// gradient) in column_sums' order. (On a GPU the compiler may contract dy·x̂ into a sum in one
// kernel and not the other: dγ and dx may then differ there by rounding; dβ and the bias
// gradients, sums of stored values, may not.) Batches of one chunk of the column sums (29 rows),
// several added by the one-kernel path's second kernel and the column sums' own block (200),
// several blocks (1000); widths of one to four packs per lane; with the branch dropout and its
// bias gradient, with the bias gradient of dx, and neither. And the forward kernel's rows whose
// squares overflow.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <map>
#include <ostream>
#include <random>
#include <string>
#include <vector>

#include "core/dtype.h"
#include "core/error.h"
#include "core/rng.h"
#include "cuda_emulator.h"
#include "dropout_emulated.h"
#include "emulated_backend.h"
#include "layernorm_emulated.h"

namespace qarac {
namespace {

using cuda_emulated::LayerNormBackwardPath;

const RngKey kKey{20261205, 3, 9};

enum class Branch { none, bias_of_dx, dropout_and_bias };

struct Case {
  std::string name;
  int64_t rows, cols;
  DType dtype;
  Branch branch;
};
void PrintTo(const Case& c, std::ostream* os) { *os << c.name; }

// A [n] array of dtype in host memory (the emulator's device memory), from floats.
class Array {
 public:
  Array(const std::vector<float>& values, DType dtype) : dtype_(dtype), bytes_(values.size() * dtype_size(dtype)) {
    for (size_t i = 0; i < values.size(); ++i) set(i, values[i]);
  }
  Array(size_t n, DType dtype) : Array(std::vector<float>(n, NAN), dtype) {}
  void* data() { return bytes_.data(); }
  const void* data() const { return bytes_.data(); }
  bool same_bits(const Array& other) const { return bytes_ == other.bytes_; }

 private:
  void set(size_t i, float v) {
    if (dtype_ == DType::bf16) {
      const uint16_t bits = bf16(v).bits;
      std::memcpy(bytes_.data() + 2 * i, &bits, 2);
    } else {
      std::memcpy(bytes_.data() + 4 * i, &v, 4);
    }
  }
  DType dtype_;
  std::vector<unsigned char> bytes_;
};

struct Gradients {
  Array dx, dbranch, dgamma, dbeta, dbias;
};

void check(const Case& c) {
  std::mt19937 rng(static_cast<uint32_t>(c.rows * 131 + c.cols));
  std::uniform_real_distribution<float> u(-1.f, 1.f), pos(0.5f, 1.5f);
  const size_t n = static_cast<size_t>(c.rows * c.cols), cols = static_cast<size_t>(c.cols);
  std::vector<float> dy(n), x(n), gamma(cols), start(cols), mean(static_cast<size_t>(c.rows)),
      rstd(static_cast<size_t>(c.rows));
  for (float& v : dy) v = u(rng);
  for (float& v : x) v = 3.f + u(rng);
  for (float& v : gamma) v = pos(rng);
  for (float& v : start) v = u(rng);
  for (float& v : mean) v = 3.f + 0.1f * u(rng);
  for (float& v : rstd) v = pos(rng);
  const Array a_dy(dy, c.dtype), a_x(x, c.dtype), a_gamma(gamma, c.dtype);
  const Array a_mean(mean, DType::f32), a_rstd(rstd, DType::f32);

  // Two sequences over the rows, for the branch dropout's masks.
  const std::vector<int32_t> offsets = {0, static_cast<int32_t>(c.rows / 3), static_cast<int32_t>(c.rows)};
  const std::vector<uint64_t> ids = {0x0123456789ABCDEFull, 77};
  const cuda_emulated::RowDropout drop =
      c.branch == Branch::dropout_and_bias ? cuda_emulated::row_dropout(offsets.data(), ids.data(), 2, 0.25, kKey)
                                           : cuda_emulated::RowDropout{};

  const auto run = [&](LayerNormBackwardPath path) {
    Gradients g{Array(n, c.dtype), Array(n, c.dtype), Array(start, DType::f32), Array(start, DType::f32),
                Array(start, DType::f32)};
    const bool dropout = c.branch == Branch::dropout_and_bias, bias = c.branch != Branch::none;
    cuda_emulated::layernorm_backward(c.dtype, a_dy.data(), a_x.data(), a_gamma.data(),
                                      static_cast<const float*>(a_mean.data()),
                                      static_cast<const float*>(a_rstd.data()), c.rows, c.cols, g.dx.data(),
                                      static_cast<float*>(g.dgamma.data()), static_cast<float*>(g.dbeta.data()),
                                      drop, dropout ? g.dbranch.data() : nullptr,
                                      bias ? static_cast<float*>(g.dbias.data()) : nullptr, path);
    return g;
  };
  // Each path is the one named: every case's width comes in packs, so `automatic` takes the one
  // kernel (were it to fall back, this would compare a path with itself).
  const auto run_counted = [&](LayerNormBackwardPath path, bool one_kernel) {
    emu::reset_launch_counts();
    Gradients g = run(path);
    std::map<std::string, uint64_t> launches = emu::launch_counts();
    EXPECT_EQ(launches["layernorm_backward_kernel"], one_kernel ? 1u : 0u) << c.name;
    EXPECT_EQ(launches["layernorm_dx_kernel"], one_kernel ? 0u : 1u) << c.name;
    return g;
  };
  const Gradients one = run_counted(LayerNormBackwardPath::automatic, true),
                  two = run_counted(LayerNormBackwardPath::rows_then_columns, false);
  EXPECT_TRUE(one.dx.same_bits(two.dx)) << c.name << ": dx bits differ";
  EXPECT_TRUE(one.dgamma.same_bits(two.dgamma)) << c.name << ": dgamma bits differ";
  EXPECT_TRUE(one.dbeta.same_bits(two.dbeta)) << c.name << ": dbeta bits differ";
  if (c.branch == Branch::dropout_and_bias) {
    EXPECT_TRUE(one.dbranch.same_bits(two.dbranch)) << c.name << ": dbranch bits differ";
  }
  if (c.branch != Branch::none) {
    EXPECT_TRUE(one.dbias.same_bits(two.dbias)) << c.name << ": dbias bits differ";
  }
}

class LayerNormEmulated : public ::testing::TestWithParam<Case> {};

TEST_P(LayerNormEmulated, PathsAgree) {
  const Case& c = GetParam();
  try {
    check(c);
  } catch (const Error& e) {
    ADD_FAILURE() << c.name << ": " << e.what();
  }
}

// The forward kernel, as the CPU reference: a finite row whose squares overflow is NaN, not β
// (before: r = 1/sqrt(inf) = 0, the row ±1e20 came out β, 0); ±1e18 still normalises to ±1.
TEST(LayerNormEmulatedForward, RowsWhoseSquaresOverflowAreNaN) {
  const int64_t cols = 64;
  std::vector<float> x;
  for (const float scale : {1e18f, 1e20f})
    for (int64_t c = 0; c < cols; ++c) x.push_back(c % 2 ? -scale : scale);
  const Array a(x, DType::f32), gamma(std::vector<float>(cols, 1.f), DType::f32),
      beta(std::vector<float>(cols, 0.f), DType::f32);
  Array y(x.size(), DType::f32), mean(2, DType::f32), rstd(2, DType::f32);
  cuda_emulated::layernorm_forward(DType::f32, a.data(), nullptr, gamma.data(), beta.data(), 1e-5, 2, cols, nullptr,
                                   y.data(), static_cast<float*>(mean.data()), static_cast<float*>(rstd.data()));
  const float* out = static_cast<const float*>(y.data());
  for (int64_t c = 0; c < cols; ++c) {
    EXPECT_NEAR(out[c], c % 2 ? -1.f : 1.f, 1e-6f) << c;
    EXPECT_TRUE(std::isnan(out[cols + c])) << c << ": " << out[cols + c];
  }
}

constexpr DType kBf16 = DType::bf16, kF32 = DType::f32;

const Case kCases[] = {
    {"OneChunkBf16Dropout", 29, 768, kBf16, Branch::dropout_and_bias},
    {"SevenChunksBf16BiasOfDx", 200, 768, kBf16, Branch::bias_of_dx},
    {"ManyChunksBf16Dropout", 1000, 256, kBf16, Branch::dropout_and_bias},
    {"ManyChunksBf16Plain", 1000, 1024, kBf16, Branch::none},
    {"SevenChunksF32Dropout", 200, 512, kF32, Branch::dropout_and_bias},
    {"OnePackF32Plain", 70, 64, kF32, Branch::none},
    {"ThreePacksF32BiasOfDx", 33, 384, kF32, Branch::bias_of_dx},
};

std::string case_name(const ::testing::TestParamInfo<Case>& param) { return param.param.name; }
INSTANTIATE_TEST_SUITE_P(Cases, LayerNormEmulated, ::testing::ValuesIn(kCases), case_name);

}  // namespace
}  // namespace qarac
