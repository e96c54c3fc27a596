// The CUDA attention kernels (kernels/cuda/attention.cu, ported by port_kernel.py) on the CUDA
// emulator (cuda_emulator.h) against the CPU reference (kernels/cpu/attention.cpp): both paths
// (tensor cores for bf16 with Dh = 64, generic for f32 and other head dims), causal and not,
// with and without dropout, ragged batches (empty and length-1 sequences, lengths on either side
// of the 64-row tiles), row-strided views of fused buffers, and both cp.async completion orders.
// Each case also checks which kernels ran, so that a dispatch change cannot move it to another path.
// Sizes are small: the emulator runs every CUDA thread as a fiber.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <map>
#include <memory>
#include <random>
#include <ostream>
#include <string>
#include <vector>

#include "attention_emulated.h"
#include "core/dtype.h"
#include "core/error.h"
#include "core/rng.h"
#include "cuda_emulator.h"
#include "emulated_backend.h"
#include "kernels/cpu/attention.h"

namespace qarac {
namespace {

const RngKey kKey{1234, 7, 3};

// Where a tensor of d = heads·head_dim columns lies: alone (row stride d), or as a slice of a
// fused [T, first + 3d + after] buffer holding Q|K|V (or dQ|dK|dV) from column `first` on.
struct Layout {
  bool fused = false;
  int64_t first = 0, after = 0;
};

// The kernels a case must run: the tensor-core forward with the tiled tensor-core backward, or
// with the one-block backward (every sequence up to 128 tokens), or with the generic backward
// (gradients at strides the tensor cores cannot take); or the generic kernels throughout.
enum class Path { tensor_cores, short_tensor_cores, generic_backward, generic };

struct Case {
  std::string name;
  Path path;
  std::vector<int32_t> lengths;
  int64_t heads, head_dim;
  bool causal;
  double dropout;
  DType dtype;
  Layout inputs{}, grads{};
  bool eager_cp_async = false;
  uint64_t seed = 1;
  // The tiled backward kernels even where every sequence fits the one-block kernel.
  bool tiled = false;
};
void PrintTo(const Case& c, std::ostream* os) { *os << c.name; }

// One [rows, ld] matrix in emulated device memory, NaN where nothing was written.
class DeviceMatrix {
 public:
  DeviceMatrix(int64_t rows, int64_t ld, DType dtype)
      : rows_(rows), ld_(ld), dtype_(dtype), memory_(static_cast<size_t>(std::max<int64_t>(1, rows * ld)) * size()) {
    for (int64_t i = 0; i < rows * ld; ++i) set(i, NAN);
  }
  // values [rows, cols] into columns [c0, c0 + cols)
  void write(const std::vector<float>& values, int64_t cols, int64_t c0) {
    for (int64_t r = 0; r < rows_; ++r)
      for (int64_t c = 0; c < cols; ++c) set(r * ld_ + c0 + c, values[static_cast<size_t>(r * cols + c)]);
  }
  std::vector<float> read(int64_t cols, int64_t c0) const {
    std::vector<float> v(static_cast<size_t>(rows_ * cols));
    for (int64_t r = 0; r < rows_; ++r)
      for (int64_t c = 0; c < cols; ++c) v[static_cast<size_t>(r * cols + c)] = at(r * ld_ + c0 + c);
    return v;
  }
  // Elements outside columns [c0, c0 + cols) that are no longer NaN.
  int64_t written_outside(int64_t c0, int64_t cols) const {
    int64_t n = 0;
    for (int64_t r = 0; r < rows_; ++r)
      for (int64_t c = 0; c < ld_; ++c)
        if ((c < c0 || c >= c0 + cols) && !std::isnan(at(r * ld_ + c))) ++n;
    return n;
  }
  void* column(int64_t c0) const { return static_cast<char*>(memory_.data()) + c0 * size(); }
  int64_t ld() const { return ld_; }

 private:
  size_t size() const { return dtype_ == DType::bf16 ? 2 : 4; }
  void set(int64_t i, float x) {
    if (dtype_ == DType::bf16)
      static_cast<uint16_t*>(memory_.data())[i] = bf16(x).bits;
    else
      static_cast<float*>(memory_.data())[i] = x;
  }
  float at(int64_t i) const {
    if (dtype_ == DType::f32) return static_cast<const float*>(memory_.data())[i];
    bf16 b;
    b.bits = static_cast<const uint16_t*>(memory_.data())[i];
    return static_cast<float>(b);
  }
  int64_t rows_, ld_;
  DType dtype_;
  emu::DeviceMemory memory_;
};

// Q, K, V (or their gradients) in the case's layout.
struct Triple {
  std::unique_ptr<DeviceMatrix> fused, q, k, v;
  void* ptr[3];
  int64_t ld;
  Triple(const Layout& layout, int64_t tokens, int64_t d, DType dtype) {
    if (layout.fused) {
      fused = std::make_unique<DeviceMatrix>(tokens, layout.first + 3 * d + layout.after, dtype);
      for (int i = 0; i < 3; ++i) ptr[i] = fused->column(layout.first + i * d);
      ld = fused->ld();
    } else {
      for (auto* m : {&q, &k, &v}) *m = std::make_unique<DeviceMatrix>(tokens, d, dtype);
      ptr[0] = q->column(0), ptr[1] = k->column(0), ptr[2] = v->column(0);
      ld = d;
    }
  }
  void write(int i, const std::vector<float>& values, int64_t d, int64_t first) {
    if (fused)
      fused->write(values, d, first + i * d);
    else
      (i == 0 ? q : i == 1 ? k : v)->write(values, d, 0);
  }
  std::vector<float> read(int i, int64_t d, int64_t first) const {
    return fused ? fused->read(d, first + i * d) : (i == 0 ? q : i == 1 ? k : v)->read(d, 0);
  }
};

// |got - want| <= tol · max|want| everywhere (the GPU tests' bound, test_cuda_runtime.cpp).
void expect_close(const std::vector<float>& got, const std::vector<float>& want, int64_t cols,
                  double tol, const std::string& what) {  // what: "case: tensor"
  double scale = 0;
  for (float x : want) scale = std::max(scale, std::fabs(static_cast<double>(x)));
  size_t bad = 0, worst = 0;
  double worst_err = -1;
  for (size_t i = 0; i < want.size(); ++i) {
    const double err = std::fabs(static_cast<double>(got[i]) - want[i]);
    if (!(err <= tol * scale)) {
      ++bad;
      if (!(err <= worst_err)) worst_err = err, worst = i;  // NaN counts as worst
    }
  }
  if (bad > 0)
    ADD_FAILURE() << what << ": " << bad << " of " << want.size() << " elements off by more than " << tol
                  << " of max |want| = " << scale << "; worst at row " << worst / static_cast<size_t>(cols)
                  << ", column " << worst % static_cast<size_t>(cols) << ": got " << got[worst]
                  << ", want " << want[worst];
}

void check(const Case& c) {
  std::mt19937 rng(static_cast<uint32_t>(c.seed));
  std::vector<int32_t> offsets{0};
  int64_t max_len = 0;
  for (int32_t n : c.lengths) {
    offsets.push_back(offsets.back() + n);
    max_len = std::max<int64_t>(max_len, n);
  }
  const int64_t tokens = offsets.back(), d = c.heads * c.head_dim, batch = static_cast<int64_t>(c.lengths.size());
  auto random = [&](float sd) {
    std::normal_distribution<float> dist(0.f, sd);
    std::vector<float> v(static_cast<size_t>(tokens * d));
    for (float& x : v) x = c.dtype == DType::bf16 ? static_cast<float>(bf16(dist(rng))) : dist(rng);
    return v;
  };
  const std::vector<float> in[3] = {random(1.5f), random(1.5f), random(1.f)};
  const std::vector<float> dout_values = random(1.f);
  std::vector<uint64_t> ids(static_cast<size_t>(batch));
  for (uint64_t& id : ids) id = (static_cast<uint64_t>(rng()) << 32) | rng();

  // The reference in f32 on the same (rounded) values, contiguous.
  std::vector<float> out_ref(static_cast<size_t>(tokens * d)), lse_ref(static_cast<size_t>(c.heads * tokens));
  std::vector<float> grad_ref[3];
  for (auto& g : grad_ref) g.resize(static_cast<size_t>(tokens * d));
  cpu::attention_forward<float>(in[0].data(), in[1].data(), in[2].data(), d, offsets.data(), ids.data(), batch,
                                max_len, c.heads, c.head_dim, c.causal, c.dropout, kKey, out_ref.data(), d,
                                lse_ref.data());
  cpu::attention_backward<float>(dout_values.data(), in[0].data(), in[1].data(), in[2].data(), out_ref.data(),
                                 lse_ref.data(), d, d, offsets.data(), ids.data(), batch, max_len, c.heads,
                                 c.head_dim, c.causal, c.dropout, kKey, grad_ref[0].data(), grad_ref[1].data(),
                                 grad_ref[2].data(), d);

  Triple qkv(c.inputs, tokens, d, c.dtype), grads(c.grads, tokens, d, c.dtype);
  for (int i = 0; i < 3; ++i) qkv.write(i, in[i], d, c.inputs.first);
  DeviceMatrix out(tokens, d, c.dtype), dout(tokens, d, c.dtype), lse(c.heads, tokens, DType::f32);
  dout.write(dout_values, d, 0);
  emu::DeviceMemory offsets_dev(offsets.size() * sizeof(int32_t)), ids_dev(std::max<size_t>(1, ids.size()) * 8);
  memcpy(offsets_dev.data(), offsets.data(), offsets.size() * sizeof(int32_t));
  memcpy(ids_dev.data(), ids.data(), ids.size() * sizeof(uint64_t));

  cuda_emulated::AttentionShape s;
  s.offsets = static_cast<const int32_t*>(offsets_dev.data());
  s.ids = static_cast<const uint64_t*>(ids_dev.data());
  s.batch = batch;
  s.tokens = tokens;
  s.max_len = max_len;
  s.heads = c.heads;
  s.head_dim = c.head_dim;
  s.ld_qkv = qkv.ld;
  s.ld_grad_qkv = grads.ld;
  s.ld_out = d;
  emu::set_schedule_seed(c.seed);
  emu::set_eager_cp_async(c.eager_cp_async);
  emu::reset_launch_counts();
  auto* lse_ptr = static_cast<float*>(lse.column(0));
  cuda_emulated::attention_forward(c.dtype, s, qkv.ptr[0], qkv.ptr[1], qkv.ptr[2], c.causal, c.dropout, kKey,
                                   out.column(0), lse_ptr);
  cuda_emulated::attention_backward(c.dtype, s, dout.column(0), qkv.ptr[0], qkv.ptr[1], qkv.ptr[2], out.column(0),
                                    lse_ptr, c.causal, c.dropout, kKey, grads.ptr[0], grads.ptr[1], grads.ptr[2],
                                    c.tiled ? cuda_emulated::AttentionBackwardPath::tiled
                                            : cuda_emulated::AttentionBackwardPath::automatic);

  std::map<std::string, uint64_t> launches = emu::launch_counts();
  const bool tiled_tc = c.path == Path::tensor_cores, short_tc = c.path == Path::short_tensor_cores;
  EXPECT_EQ(launches["attention_forward_tc"], c.path != Path::generic ? 1u : 0u) << c.name;
  EXPECT_EQ(launches["attention_backward_short_tc"], short_tc ? 1u : 0u) << c.name;
  EXPECT_EQ(launches["attention_backward_dkdv_tc"], tiled_tc ? 1u : 0u) << c.name;
  EXPECT_EQ(launches["attention_backward_dq_tc"], tiled_tc ? 1u : 0u) << c.name;

  const bool b16 = c.dtype == DType::bf16;
  const double tol = b16 ? 2e-2 : 1e-5;
  expect_close(out.read(d, 0), out_ref, d, tol, c.name + ": out");
  // lse stays f32 in both dtypes (tests/unit/test_backend_ops.cpp, kLse).
  expect_close(lse.read(tokens, 0), lse_ref, tokens, 1e-5, c.name + ": lse");
  const char* names[3] = {"dq", "dk", "dv"};
  for (int i = 0; i < 3; ++i)
    expect_close(grads.read(i, d, c.grads.first), grad_ref[i], d, tol, c.name + ": " + names[i]);
  if (grads.fused) {
    const int64_t n = grads.fused->written_outside(c.grads.first, 3 * d);
    EXPECT_EQ(n, 0) << c.name << ": gradient buffer: " << n << " elements outside the dq|dk|dv columns written";
  }
}

class AttentionEmulated : public ::testing::TestWithParam<Case> {};

TEST_P(AttentionEmulated, MatchesCpuReference) {
  const Case& c = GetParam();
  try {
    check(c);
  } catch (const Error& e) {
    ADD_FAILURE() << c.name << ": " << e.what();
  }
}

// Lengths: empty and length-1 sequences, and 70, 130 (past one and two 64-row tiles).
const std::vector<int32_t> kRagged = {0, 70, 1, 130, 33};
// Lengths on either side of tile boundaries: 63, 65, 129.
const std::vector<int32_t> kStraddling = {65, 0, 63, 129, 1};
// At most 128 tokens, empty and length-1 sequences among them.
const std::vector<int32_t> kShort = {0, 70, 1, 128, 33};

constexpr DType kBf16 = DType::bf16, kF32 = DType::f32;
constexpr Layout kAlone{}, kFused{true, 0, 0};
constexpr Path kTc = Path::tensor_cores, kShortTc = Path::short_tensor_cores,
               kGenericBackward = Path::generic_backward, kGeneric = Path::generic;

// Each case is one run of forward and backward; name, path, lengths, heads, Dh, causal, dropout, dtype,
// input layout, gradient layout, eager cp.async, seed (and the tiled backward where given).
const Case kCases[] = {
    // Tensor cores (bf16, Dh = 64).
    {"TensorCoresDropout", kTc, kRagged, 2, 64, false, 0.1, kBf16, kAlone, kAlone, false, 1},
    {"TensorCoresCausalTileEdgesEager", kTc, kStraddling, 1, 64, true, 0.0, kBf16, kAlone, kAlone, true, 2},
    {"TensorCoresFusedQkvCausalDropout", kTc, kRagged, 2, 64, true, 0.1, kBf16, kFused, kFused, false, 3},
    {"TensorCoresGradsOtherStrideEager", kTc, kRagged, 1, 64, false, 0.0, kBf16, kFused, {true, 8, 8}, true, 4},
    {"TensorCoresLongerSequencesEager", kTc, {200, 3, 129}, 3, 64, false, 0.1, kBf16, kAlone, kAlone, true, 13},
    // Batches of sequences of at most 128 tokens: the one-block backward (attention_backward_short_tc),
    // one key half (lengths up to 64) or two, strips and query chunks cut by the ends.
    {"ShortTensorCoresDropout", kShortTc, kShort, 2, 64, false, 0.1, kBf16, kAlone, kAlone, false, 16},
    {"ShortTensorCoresCausalFusedDropoutEager", kShortTc, {65, 0, 63, 17, 1, 64}, 1, 64, true, 0.1, kBf16, kFused,
     kFused, true, 17},
    {"ShortTensorCoresGradsOtherStride", kShortTc, {128, 5, 96}, 2, 64, false, 0.0, kBf16, kFused, {true, 8, 8}, false,
     18},
    {"ShortTensorCoresCausal", kShortTc, {128, 31, 32, 33, 48}, 1, 64, true, 0.0, kBf16, kAlone, kAlone, false, 19},
    {"ShortTensorCoresOneHalf", kShortTc, {40, 64, 2}, 1, 64, true, 0.2, kBf16, kAlone, kAlone, true, 20},
    {"ShortSequencesTiledKernels", kTc, kShort, 2, 64, true, 0.1, kBf16, kFused, kFused, false, 21, true},
    // Row strides the tensor-core path cannot take (not whole 16 bytes, or a slice at column 1):
    // the generic path on bf16 Dh = 64 (for the backward alone where only the gradients have them).
    {"UnalignedStrideGeneric", kGeneric, kRagged, 1, 64, true, 0.1, kBf16, {true, 0, 1}, {true, 0, 1}, false, 5},
    {"SliceAtColumnOneGeneric", kGeneric, kStraddling, 1, 64, false, 0.0, kBf16, {true, 1, 7}, {true, 1, 7}, true, 6},
    {"AlignedInputsUnalignedGrads", kGenericBackward, kRagged, 1, 64, false, 0.1, kBf16, kFused, {true, 0, 1}, false, 7},
    // The generic path in f32 and bf16 at other head dims (NC = 1..4 columns per lane); Dh = 128
    // needs more than 48 KiB of shared memory in the backward kernels.
    {"GenericF32Dim24FusedCausalDropout", kGeneric, kRagged, 2, 24, true, 0.1, kF32, {true, 2, 3}, {true, 5, 0}, false,
     8},
    {"GenericF32Dim64Dropout", kGeneric, kStraddling, 1, 64, false, 0.1, kF32, kAlone, kAlone, true, 9},
    {"GenericF32Dim100", kGeneric, kRagged, 1, 100, false, 0.0, kF32, kAlone, kAlone, false, 10},
    {"GenericBf16Dim32CausalDropout", kGeneric, kStraddling, 2, 32, true, 0.1, kBf16, kAlone, kAlone, false, 11},
    {"GenericF32Dim128CausalDropout", kGeneric, kRagged, 1, 128, true, 0.2, kF32, kAlone, kAlone, false, 12},
    {"GenericBf16Dim128Eager", kGeneric, kStraddling, 1, 128, false, 0.0, kBf16, kAlone, kAlone, true, 14},
    {"GenericF32Dim8Dropout", kGeneric, kRagged, 2, 8, false, 0.5, kF32, kAlone, kAlone, false, 15},
};

std::string case_name(const ::testing::TestParamInfo<Case>& param) { return param.param.name; }
INSTANTIATE_TEST_SUITE_P(Cases, AttentionEmulated, ::testing::ValuesIn(kCases), case_name);

}  // namespace
}  // namespace qarac
