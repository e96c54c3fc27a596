// What the op table (test_backend_ops.cpp) does not express about the CUDA backend: properties of
// bits rather than bounds (dropout masks identical to the CPU's and to those of the same sequence
// at another place in a batch, reductions that give the same bits on every run, exact zeros, the
// optimiser's compute copy the exact rounding of its master weights), attention beyond the
// table's shapes (head dims of tiny models and the largest one, RoBERTa-sized sequences, empty
// sequences in every position, row-strided q, k, v and gradients, a head dim it must refuse),
// GEMM operands beyond 2^31 elements, and the caching allocator. Every test skips when there is
// no CUDA device; the bits tests that need no CPU reference also run, in every build, on the CUDA
// backend's source under the CUDA emulator (tests/emulation), whose random thread schedules
// make "the same bits on every run" a test of the summation order's independence from timing.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <optional>
#include <random>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "core/error.h"
#include "core/memory.h"
#include "core/rng.h"
#include "core/tensor.h"
#include "emulated_backend.h"
#include "kernels/ops.h"
#include "support/test_support.h"

using namespace qarac;
using test_support::as_seen;
using test_support::on_cpu;
using test_support::on_gpu;
using test_support::uniform;

namespace {

const Device kGpu = Device::cuda(0);
const RngKey kKey{20240611, 17, 5};

class CudaRuntime : public ::testing::Test {
 protected:
  void SetUp() override {
    if (cuda_device_count() == 0) GTEST_SKIP() << "no CUDA device";
  }
};

// The tests of bits that compare the CUDA backend only with itself or with conversions: on the GPU
// (param false) or on the emulator (true), on the fixture's device().
class CudaBits : public ::testing::TestWithParam<bool> {
 protected:
  void SetUp() override {
    if (GetParam())
      emulator_.emplace(ops::cuda_emulated_backend());
    else if (cuda_device_count() == 0)
      GTEST_SKIP() << "no CUDA device";
  }
  Device device() const { return GetParam() ? Device::cpu() : kGpu; }
  Tensor on_device(const Tensor& t, DType dtype) const { return t.to(dtype).to(device()); }

 private:
  std::optional<ops::HostBackendOverride> emulator_;
};
INSTANTIATE_TEST_SUITE_P(Backends, CudaBits, ::testing::Bool(),
                         [](const ::testing::TestParamInfo<bool>& p) {
                           return p.param ? "emulated" : "gpu";
                         });

// Expects the same bits (same dtype, any devices).
void expect_same_bits(const Tensor& actual, const Tensor& expected, const std::string& what) {
  ASSERT_EQ(actual.shape(), expected.shape()) << what;
  ASSERT_EQ(actual.dtype(), expected.dtype()) << what;
  const Tensor a = actual.to(Device::cpu()), e = expected.to(Device::cpu());
  // An empty tensor has no buffer: memcmp of null pointers is undefined even for 0 bytes.
  EXPECT_TRUE(a.nbytes() == 0 || std::memcmp(a.raw(), e.raw(), a.nbytes()) == 0) << what << ": bits differ";
}

// ---- Bits ---------------------------------------------------------------------------------------

// n sequence ids spread over the whole 64-bit range.
std::vector<uint64_t> random_ids(std::mt19937& rng, size_t n) {
  std::vector<uint64_t> ids(n);
  for (uint64_t& id : ids) id = (uint64_t{rng()} << 32) | rng();
  return ids;
}

// The mask is the CPU's, bit for bit: in f32 the outputs are identical; in bf16 the GPU's output
// is the CPU's f32 result on the same inputs rounded once (x · scale is one f32 multiply). Ragged
// sequences (empty ones first, between and last) with random ids: the GPU finds each row's
// sequence, position and id as the CPU does; 768 columns take the 16-byte path, 301 the scalar
// one. A step past 2^24 and a tensor id past 2^16 exercise every word of the Philox key.
TEST_F(CudaRuntime, DropoutMatchesCpuBitForBit) {
  std::mt19937 rng(9);
  const std::vector<int32_t> lengths = {0, 37, 1, 0, 120, 9, 0};
  const std::vector<uint64_t> ids = random_ids(rng, lengths.size());
  const ops::Sequences cpu_seqs = ops::Sequences::from_lengths(lengths, Device::cpu(), ids),
                       gpu_seqs = ops::Sequences::from_lengths(lengths, kGpu, ids);
  const RngKey key{kKey.seed, (uint64_t{1} << 24) + 17, (1u << 16) + 5};
  for (DType dtype : {DType::f32, DType::bf16}) {
    for (double p : {0.0, 0.1, 0.5}) {
      for (int64_t cols : {768, 301}) {
        SCOPED_TRACE(std::string(dtype_name(dtype)) + " p " + std::to_string(p) + " cols " +
                     std::to_string(cols));
        const Shape shape = {cpu_seqs.tokens(), cols};
        const Tensor x = uniform(shape, rng), sx = as_seen(x, dtype);
        Tensor y_want = Tensor::empty(shape, DType::f32), dx_want = Tensor::empty(shape, DType::f32);
        ops::dropout_forward(sx, p, key, cpu_seqs, y_want);
        ops::dropout_backward(sx, p, key, cpu_seqs, dx_want);
        const Tensor gx = on_gpu(x, dtype);
        Tensor y = Tensor::empty(shape, dtype, kGpu), dx = Tensor::empty(shape, dtype, kGpu);
        ops::dropout_forward(gx, p, key, gpu_seqs, y);
        ops::dropout_backward(gx, p, key, gpu_seqs, dx);
        expect_same_bits(y, y_want.to(dtype), "forward");
        expect_same_bits(dx, dx_want.to(dtype), "backward");
        Tensor inplace = on_gpu(x, dtype);
        ops::dropout_forward(inplace, p, key, gpu_seqs, inplace);
        expect_same_bits(inplace, y_want.to(dtype), "in place");
      }
    }
  }
}

// A sequence's hidden and attention dropout on the GPU is the same, bit for bit, at another row
// of another batch (here: alone) as long as it keeps its id: nothing the kernels draw depends on
// T, the row or max_len.
TEST_P(CudaBits, DropoutMasksFollowTheSequence) {
  std::mt19937 rng(10);
  const std::vector<int32_t> lengths = {70, 0, 45, 130};
  const std::vector<uint64_t> ids = random_ids(rng, lengths.size());
  const ops::Sequences batch = ops::Sequences::from_lengths(lengths, device(), ids),
                       alone = ops::Sequences::from_lengths({lengths[2]}, device(), {ids[2]});
  const int64_t first = batch.host[2], len = lengths[2], heads = 2, ld = heads * 64;
  for (DType dtype : {DType::f32, DType::bf16}) {
    SCOPED_TRACE(dtype_name(dtype));
    const Tensor x = on_device(uniform({batch.tokens(), ld}, rng), dtype);
    const Tensor mine = x.slice(0, first, first + len).clone();
    Tensor y = Tensor::empty(x.shape(), dtype, device()), y_alone = Tensor::empty(mine.shape(), dtype, device());
    ops::dropout_forward(x, 0.1, kKey, batch, y);
    ops::dropout_forward(mine, 0.1, kKey, alone, y_alone);
    expect_same_bits(y_alone, y.slice(0, first, first + len).clone(), "hidden dropout");

    Tensor out = Tensor::empty(x.shape(), dtype, device()),
           lse = Tensor::empty({heads, batch.tokens()}, DType::f32, device());
    Tensor out_alone = Tensor::empty(mine.shape(), dtype, device()),
           lse_alone = Tensor::empty({heads, len}, DType::f32, device());
    Tensor dq = out.clone(), dk = out.clone(), dv = out.clone();
    Tensor dq_alone = out_alone.clone(), dk_alone = out_alone.clone(), dv_alone = out_alone.clone();
    ops::attention_forward(x, x, x, batch, heads, false, 0.1, kKey, out, lse);
    ops::attention_backward(x, x, x, x, out, lse, batch, heads, false, 0.1, kKey, dq, dk, dv);
    ops::attention_forward(mine, mine, mine, alone, heads, false, 0.1, kKey, out_alone, lse_alone);
    ops::attention_backward(mine, mine, mine, mine, out_alone, lse_alone, alone, heads, false, 0.1,
                            kKey, dq_alone, dk_alone, dv_alone);
    expect_same_bits(out_alone, out.slice(0, first, first + len).clone(), "attention out");
    expect_same_bits(dq_alone, dq.slice(0, first, first + len).clone(), "attention dq");
    expect_same_bits(dk_alone, dk.slice(0, first, first + len).clone(), "attention dk");
    expect_same_bits(dv_alone, dv.slice(0, first, first + len).clone(), "attention dv");
  }
}

// The LayerNorms' fused branch dropout (ops::BranchDropout) and branch bias gradient give the bits
// of dropout_forward / dropout_backward, bias_backward and the plain LayerNorm ops: sum, y and the
// statistics forward; dx, the branch's gradient, its column sums, dγ and dβ backward; without
// dropout the bias gradient sums dx. Ragged sequences with random ids over 300 rows (ten chunks of
// the column sums, added by a second kernel), 200 (seven, added by bias_backward's block itself)
// and 29 (one); 768 columns take the 16-byte path (the LayerNorm's one-pass backward), 301 the
// scalar one (its row-then-column path).
TEST_P(CudaBits, FusedBranchDropoutGivesTheSeparateOpsBits) {
  std::mt19937 rng(12);
  for (const std::vector<int32_t>& lengths :
       {std::vector<int32_t>{0, 37, 1, 0, 190, 9, 63}, std::vector<int32_t>{120, 0, 80},
        std::vector<int32_t>{20, 0, 9}}) {
    const ops::Sequences seqs = ops::Sequences::from_lengths(lengths, device(), random_ids(rng, lengths.size()));
    const int64_t rows = seqs.tokens();
    for (DType dtype : {DType::f32, DType::bf16}) {
      for (int64_t cols : {768, 301}) {
        SCOPED_TRACE(std::string(dtype_name(dtype)) + " cols " + std::to_string(cols) + " rows " + std::to_string(rows));
        const Tensor a = on_device(uniform({rows, cols}, rng), dtype), b = on_device(uniform({rows, cols}, rng), dtype),
                     dy = on_device(uniform({rows, cols}, rng), dtype);
        const Tensor gamma = on_device(uniform({cols}, rng, 0.5f, 1.5f), dtype), beta = on_device(uniform({cols}, rng), dtype);
        const Tensor grads_start = uniform({cols}, rng).to(device());
        const ops::BranchDropout drop{0.1, kKey, &seqs};
        struct Block {
          Tensor sum, y, mean, rstd, dx, dbranch, dgamma, dbeta, dbias;
        };
        const auto block = [&] {
          return Block{Tensor::empty({rows, cols}, dtype, device()), Tensor::empty({rows, cols}, dtype, device()),
                       Tensor::empty({rows}, DType::f32, device()),  Tensor::empty({rows}, DType::f32, device()),
                       Tensor::empty({rows, cols}, dtype, device()), Tensor::empty({rows, cols}, dtype, device()),
                       grads_start.clone(),                          grads_start.clone(),
                       grads_start.clone()};
        };
        Block fused = block(), separate = block();
        ops::add_layernorm_forward(a, b, gamma, beta, 1e-5, fused.sum, fused.y, fused.mean, fused.rstd, &drop);
        ops::layernorm_backward(dy, fused.sum, gamma, fused.mean, fused.rstd, fused.dx, fused.dgamma, fused.dbeta,
                                &drop, &fused.dbranch, &fused.dbias);
        Tensor dropped = Tensor::empty({rows, cols}, dtype, device());
        ops::dropout_forward(a, drop.p, drop.key, seqs, dropped);
        ops::add_layernorm_forward(dropped, b, gamma, beta, 1e-5, separate.sum, separate.y, separate.mean,
                                   separate.rstd);
        ops::layernorm_backward(dy, separate.sum, gamma, separate.mean, separate.rstd, separate.dx, separate.dgamma,
                                separate.dbeta);
        ops::dropout_backward(separate.dx, drop.p, drop.key, seqs, separate.dbranch);
        ops::bias_backward(separate.dbranch, separate.dbias);
        expect_same_bits(fused.sum, separate.sum, "sum");
        expect_same_bits(fused.y, separate.y, "y");
        expect_same_bits(fused.mean, separate.mean, "mean");
        expect_same_bits(fused.rstd, separate.rstd, "rstd");
        expect_same_bits(fused.dx, separate.dx, "dx");
        expect_same_bits(fused.dbranch, separate.dbranch, "dbranch");
        expect_same_bits(fused.dgamma, separate.dgamma, "dgamma");
        expect_same_bits(fused.dbeta, separate.dbeta, "dbeta");
        expect_same_bits(fused.dbias, separate.dbias, "dbias_branch");

        // Without dropout: the bias gradient of dx itself.
        Tensor dx = Tensor::empty({rows, cols}, dtype, device()), dbias = grads_start.clone();
        Tensor dgamma = grads_start.clone(), dbeta = grads_start.clone(), want = grads_start.clone();
        ops::layernorm_backward(dy, separate.sum, gamma, separate.mean, separate.rstd, dx, dgamma, dbeta, nullptr,
                                nullptr, &dbias);
        ops::bias_backward(dx, want);
        expect_same_bits(dx, separate.dx, "dx without dropout");
        expect_same_bits(dbias, want, "dbias_branch without dropout");
      }
    }
  }
}

// The GELU backward that also sums the producing layer's bias gradient (linear_backward's
// input_gelu_dbias) gives the bits of the plain op and bias_backward: dx and the bias gradient,
// over 300 rows (ten chunks of the column sums), on a packed (768) and an odd (301) width.
TEST_P(CudaBits, FusedGeluBiasGradientGivesTheSeparateOpsBits) {
  std::mt19937 rng(13);
  const int64_t rows = 300, out = 64;
  for (DType dtype : {DType::f32, DType::bf16}) {
    for (int64_t in : {768, 301}) {
      SCOPED_TRACE(std::string(dtype_name(dtype)) + " in " + std::to_string(in));
      const Tensor pre = on_device(uniform({rows, in}, rng, -3, 3), dtype);
      Tensor act = Tensor::empty({rows, in}, dtype, device());
      ops::gelu_forward(pre, act);
      const Tensor w = on_device(uniform({out, in}, rng, -0.2f, 0.2f), dtype), dy = on_device(uniform({rows, out}, rng), dtype);
      const Tensor start = uniform({in}, rng).to(device());
      Tensor dw = Tensor::zeros({out, in}, DType::f32, device()), db = Tensor::zeros({out}, DType::f32, device());
      Tensor fused = Tensor::empty({rows, in}, dtype, device()), fused_bias = start.clone();
      ops::linear_backward(act, w, dy, &fused, dw, &db, &pre, false, &fused_bias);
      Tensor separate = Tensor::empty({rows, in}, dtype, device()), separate_bias = start.clone();
      ops::linear_backward(act, w, dy, &separate, dw, &db, &pre);
      ops::bias_backward(separate, separate_bias);
      expect_same_bits(fused, separate, "dx");
      expect_same_bits(fused_bias, separate_bias, "the producing layer's bias gradient");
    }
  }
}

// The reductions behind parameter gradients and the gradient norm sum in a fixed order (no
// atomics), so a second run gives the same bits: what keeps data-parallel replicas identical.
// 1000 rows take 32 chunks of the column reductions, several per lane of their final sum; few ids
// over many rows give the embedding gradient long runs of equal ids. 256 columns take the
// LayerNorm's one-pass backward, 203 its row-then-column path.
TEST_P(CudaBits, ReductionsGiveTheSameBitsOnEveryRun) {
  std::mt19937 rng(11);
  for (const auto& [dtype, cols] : {std::pair{DType::f32, int64_t{203}}, std::pair{DType::bf16, int64_t{203}},
                                    std::pair{DType::f32, int64_t{256}}, std::pair{DType::bf16, int64_t{256}}}) {
    SCOPED_TRACE(std::string(dtype_name(dtype)) + " cols " + std::to_string(cols));
    const int64_t rows = 1000, vocab = 11;
    const Tensor dy = on_device(uniform({rows, cols}, rng), dtype),
                 x = on_device(uniform({rows, cols}, rng), dtype);
    const Tensor gamma = on_device(uniform({cols}, rng, 0.5f, 1.5f), dtype);
    const Tensor start = uniform({cols}, rng).to(device());
    std::vector<int32_t> idv(static_cast<size_t>(rows));
    for (size_t i = 0; i < idv.size(); ++i)
      idv[i] = i % 3 == 0 ? 4 : std::uniform_int_distribution<int32_t>(0, vocab - 1)(rng);
    const Tensor ids = Tensor::from_vector(idv, {rows}, device());
    const Tensor table_start = uniform({vocab, cols}, rng).to(device());
    Tensor y = Tensor::empty({rows, cols}, dtype, device()),
           mean = Tensor::empty({rows}, DType::f32, device()),
           rstd = Tensor::empty({rows}, DType::f32, device());
    ops::layernorm_forward(x, gamma, gamma, 1e-5, y, mean, rstd);

    // More than the 64 spans one launch of the norm takes.
    std::vector<const Tensor*> spans;
    for (int i = 0; i < 35; ++i) spans.insert(spans.end(), {&dy, &x});

    struct Gradients {
      Tensor dbias, dtable, dx, dgamma, dbeta, norm;
    };
    auto run = [&] {
      Gradients g{start.clone(), table_start.clone(), Tensor::empty({rows, cols}, dtype, device()),
                  start.clone(), start.clone(),       Tensor::empty({1}, DType::f32, device())};
      ops::bias_backward(dy, g.dbias);
      ops::embedding_backward(ids, dy, g.dtable);
      ops::layernorm_backward(dy, x, gamma, mean, rstd, g.dx, g.dgamma, g.dbeta);
      ops::sum_of_squares(spans, g.norm);
      return g;
    };
    const Gradients first = run(), second = run();
    expect_same_bits(second.dbias, first.dbias, "bias_backward");
    expect_same_bits(second.dtable, first.dtable, "embedding_backward");
    expect_same_bits(second.dx, first.dx, "layernorm_backward dx");
    expect_same_bits(second.dgamma, first.dgamma, "layernorm_backward dgamma");
    expect_same_bits(second.dbeta, first.dbeta, "layernorm_backward dbeta");
    expect_same_bits(second.norm, first.norm, "sum_of_squares");
  }
}

// The gradient is exactly 0 in ignored rows and padded columns (not merely small), and the
// losses have the same bits whether the gradient is written, written in place or weighted.
TEST_P(CudaBits, CrossEntropyExactZerosAndIdenticalLosses) {
  std::mt19937 rng(14);
  const int32_t ignore = -100;
  for (DType dtype : {DType::f32, DType::bf16}) {
    SCOPED_TRACE(dtype_name(dtype));
    const int64_t rows = 37, valid = 700, cols = 768;
    std::vector<int32_t> tv(static_cast<size_t>(rows));
    for (int32_t& t : tv) t = std::uniform_int_distribution<int32_t>(0, valid - 1)(rng);
    tv[1] = tv[rows - 1] = ignore;
    const Tensor targets = Tensor::from_vector(tv, {rows}, device());
    const Tensor logits = on_device(uniform({rows, cols}, rng, -4, 4), dtype);
    const Tensor weights = uniform({rows}, rng, 0.1f, 2.f).to(device());

    Tensor losses = Tensor::empty({rows}, DType::f32, device()),
           grad = Tensor::empty({rows, cols}, dtype, device());
    ops::softmax_cross_entropy(logits, targets, ignore, losses, &grad, 0.7, valid);
    const std::vector<float> g = on_cpu(grad).to_vector<float>();
    for (int64_t i = 0; i < rows; ++i)
      for (int64_t j = 0; j < cols; ++j)
        if (j >= valid || tv[i] == ignore) {
          ASSERT_EQ(g[i * cols + j], 0.f) << "row " << i << ", column " << j;
        }

    Tensor alone = Tensor::empty({rows}, DType::f32, device());
    ops::softmax_cross_entropy(logits, targets, ignore, alone, nullptr, 0.7, valid);
    expect_same_bits(alone, losses, "losses without the gradient");
    Tensor inplace = logits.clone(), inplace_losses = Tensor::empty({rows}, DType::f32, device());
    ops::softmax_cross_entropy(inplace, targets, ignore, inplace_losses, &inplace, 0.7, valid);
    expect_same_bits(inplace_losses, losses, "losses in place");
    expect_same_bits(inplace, grad, "dlogits in place");
    Tensor weighted = logits.clone(), weighted_losses = Tensor::empty({rows}, DType::f32, device());
    ops::softmax_cross_entropy(weighted, targets, ignore, weighted_losses, &weighted, 0.7, valid,
                               &weights);
    expect_same_bits(weighted_losses, losses, "losses with row weights");
  }
}

// After AdamW and NAdam steps the compute copy holds exactly the GPU's own master weights rounded
// to its dtype.
TEST_P(CudaBits, OptimizerComputeCopyIsTheRoundedMasterWeights) {
  std::mt19937 rng(41);
  const int64_t n = 1003;
  for (DType copy_dtype : {DType::f32, DType::bf16}) {
    SCOPED_TRACE(dtype_name(copy_dtype));
    Tensor adam_p = uniform({n}, rng).to(device()), adam_m = Tensor::zeros({n}, DType::f32, device()),
           adam_v = Tensor::zeros({n}, DType::f32, device());
    Tensor nadam_p = adam_p.clone(), nadam_m = adam_m.clone(), nadam_v = adam_v.clone();
    Tensor adam_copy = Tensor::zeros({n}, copy_dtype, device()), nadam_copy = adam_copy.clone();
    ops::AdamW adamw;
    ops::NAdam nadam;
    for (int64_t step = 1; step <= 3; ++step) {
      const Tensor grad = uniform({n}, rng).to(device());
      adamw.step = nadam.step = step;
      nadam.mu_product = ops::nadam_mu_product(nadam);
      ops::adamw_update(adam_p, grad, adam_m, adam_v, adamw, &adam_copy);
      ops::nadam_update(nadam_p, grad, nadam_m, nadam_v, nadam, &nadam_copy);
    }
    expect_same_bits(adam_copy, adam_p.to(Device::cpu()).to(copy_dtype), "adamw param copy");
    expect_same_bits(nadam_copy, nadam_p.to(Device::cpu()).to(copy_dtype), "nadam param copy");
  }
}

// ---- Attention beyond the table -----------------------------------------------------------------
// Against the CPU reference in f32 on the same (rounded) inputs, as tol · (largest |value| of
// the tensor): the table's attention bounds (test_backend_ops.cpp), measured on an H100: f32 1e-5
// (sums of <= 512 terms in another order); bf16 2e-2 (P, P̃ and dS rounded to bf16 before their
// products; measured <= 7.1e-3); lse 1e-4 in bf16 (measured <= 1.5e-7).

struct Problem {
  std::vector<int32_t> lengths;
  int64_t heads = 2, head_dim = 64;
  bool causal = false;
  double dropout = 0.0;
  DType dtype = DType::f32;
};

struct Attention {
  Tensor out, lse, dq, dk, dv;
};

// Where q, k, v (or dq, dk, dv) lie: tensors of their own, or (packed) the column slices
// [first, first + d), [first + d, first + 2d), [first + 2d, first + 3d) of one [T, first + 3d +
// after] buffer, as one fused Q|K|V projection's output (first = after = 0) or a wider one. The
// buffer's other columns hold NaN: read into a result they spoil it, and they must stay NaN.
struct Packing {
  bool packed = false;
  int64_t first = 0, after = 0;
};
Packing packed(int64_t first, int64_t after) { return {true, first, after}; }

Tensor nans(const Shape& shape) {
  return Tensor::from_vector(std::vector<float>(static_cast<size_t>(shape_numel(shape)),
                                                std::numeric_limits<float>::quiet_NaN()),
                             shape);
}

// Every element of `buffer` (any dtype and device) outside columns [first, first + used) is NaN.
void expect_nan_outside(const Tensor& buffer, int64_t first, int64_t used, const std::string& what) {
  const int64_t rows = buffer.size(0), cols = buffer.size(1);
  const std::vector<float> v = on_cpu(buffer).to_vector<float>();
  int64_t written = 0;
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < cols; ++c)
      if ((c < first || c >= first + used) && !std::isnan(v[static_cast<size_t>(r * cols + c)]))
        ++written;
  EXPECT_EQ(written, 0) << what << ": elements outside the slices were written";
}

// Forward and backward on `device` with q, k, v, dout of standard deviations 1.5, 1.5, 1, 1
// (scores of standard deviation ~2.2 whatever Dh: softmax rows from flat to peaked), stored in
// the problem's dtype on the GPU and as their f32 values on the CPU; q, k, v and dq, dk, dv
// where `inputs` and `grads` say (the same values wherever they lie), the gradients returned as
// contiguous tensors on the CPU when packed. Outputs start as NaN, so a row a kernel forgets to
// write fails.
Attention run_attention(const Problem& pb, Device device, uint32_t seed, Packing inputs = {},
                        Packing grads = {}) {
  std::mt19937 rng(seed);
  const int64_t tokens = [&] {
    int64_t t = 0;
    for (int32_t n : pb.lengths) t += n;
    return t;
  }();
  const int64_t d = pb.heads * pb.head_dim;
  const Shape shape = {tokens, d};
  auto values = [&](float stddev) {
    std::normal_distribution<float> dist(0.f, stddev);
    std::vector<float> v(static_cast<size_t>(shape_numel(shape)));
    for (float& x : v) x = dist(rng);
    return Tensor::from_vector(v, shape);
  };
  auto place = [&](const Tensor& t) {
    return device.is_cuda() ? on_gpu(t, pb.dtype) : as_seen(t, pb.dtype);
  };
  const DType x = device.is_cuda() ? pb.dtype : DType::f32;
  auto output = [&](const Shape& s, DType dt) { return nans(s).to(dt).to(device); };
  const Tensor qv = values(1.5f), kv = values(1.5f), vv = values(1.f), dout = place(values(1.f));
  Tensor q, k, v;
  if (inputs.packed) {
    Tensor buffer = nans({tokens, inputs.first + 3 * d + inputs.after});
    const int64_t at = inputs.first;
    buffer.slice(1, at, at + d).copy_(qv);
    buffer.slice(1, at + d, at + 2 * d).copy_(kv);
    buffer.slice(1, at + 2 * d, at + 3 * d).copy_(vv);
    const Tensor placed = place(buffer);
    q = placed.slice(1, at, at + d);
    k = placed.slice(1, at + d, at + 2 * d);
    v = placed.slice(1, at + 2 * d, at + 3 * d);
  } else {
    q = place(qv);
    k = place(kv);
    v = place(vv);
  }
  // Random ids, the same on both devices: the masks must come from them.
  std::mt19937 id_rng(seed + 1);
  const ops::Sequences seqs =
      ops::Sequences::from_lengths(pb.lengths, device, random_ids(id_rng, pb.lengths.size()));
  Attention a{output(shape, x), output({pb.heads, tokens}, DType::f32), Tensor(), Tensor(),
              Tensor()};
  const int64_t g = grads.first;
  const Tensor grad_buffer =
      grads.packed ? output({tokens, g + 3 * d + grads.after}, x) : Tensor();
  if (grads.packed) {
    a.dq = grad_buffer.slice(1, g, g + d);
    a.dk = grad_buffer.slice(1, g + d, g + 2 * d);
    a.dv = grad_buffer.slice(1, g + 2 * d, g + 3 * d);
  } else {
    a.dq = output(shape, x);
    a.dk = output(shape, x);
    a.dv = output(shape, x);
  }
  ops::attention_forward(q, k, v, seqs, pb.heads, pb.causal, pb.dropout, kKey, a.out, a.lse);
  ops::attention_backward(dout, q, k, v, a.out, a.lse, seqs, pb.heads, pb.causal, pb.dropout, kKey,
                          a.dq, a.dk, a.dv);
  if (grads.packed) {  // views of a GPU buffer copy to the CPU only whole
    const Tensor host = grad_buffer.to(Device::cpu());
    expect_nan_outside(host, g, 3 * d, "the gradients' buffer");
    a.dq = host.slice(1, g, g + d).clone();
    a.dk = host.slice(1, g + d, g + 2 * d).clone();
    a.dv = host.slice(1, g + 2 * d, g + 3 * d).clone();
  }
  return a;
}

void expect_close(const Tensor& actual, const Tensor& expected, double tol,
                  const std::string& what) {
  ASSERT_EQ(actual.shape(), expected.shape()) << what;
  const std::vector<float> a = on_cpu(actual).to_vector<float>(),
                           e = on_cpu(expected).to_vector<float>();
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

// The GPU's attention against the CPU's on the same inputs, within the bounds above.
void expect_matches_cpu(const Attention& got, const Attention& want, const Problem& pb) {
  const bool bf16 = pb.dtype == DType::bf16;
  const double tol = bf16 ? 2e-2 : 1e-5;
  expect_close(got.out, want.out, tol, "out");
  expect_close(got.lse, want.lse, 1e-5, "lse");  // f32 in both dtypes (test_backend_ops.cpp, kLse)
  expect_close(got.dq, want.dq, tol, "dq");
  expect_close(got.dk, want.dk, tol, "dk");
  expect_close(got.dv, want.dv, tol, "dv");
}

void check_attention(const Problem& pb, uint32_t seed) {
  expect_matches_cpu(run_attention(pb, kGpu, seed), run_attention(pb, Device::cpu(), seed), pb);
}

// Empty sequences first, between others and last: their blocks exit at once and every other
// sequence's offsets, rows and dropout indices stay right.
TEST_F(CudaRuntime, AttentionEmptySequences) {
  for (const DType dtype : {DType::f32, DType::bf16}) {
    SCOPED_TRACE(dtype_name(dtype));
    check_attention({{0, 5, 0, 33, 70, 0}, 4, 64, true, 0.1, dtype}, 7);
  }
}

// Head dims of tiny models (8, 16, 24: fewer columns than a warp's lanes) and the largest one
// (128: the generic backward kernels then need more than 48 KiB of shared memory).
TEST_F(CudaRuntime, AttentionOtherHeadDims) {
  for (const DType dtype : {DType::f32, DType::bf16})
    for (const int64_t head_dim : {8, 16, 24, 128}) {
      SCOPED_TRACE(std::string(dtype_name(dtype)) + " head_dim " + std::to_string(head_dim));
      check_attention({{1, 7, 64, 130}, 3, head_dim, true, 0.1, dtype}, 11);
    }
}

// RoBERTa-base's attention (12 heads of 64) on sequences up to 512 tokens, and on fine-tuning's
// batches of up to 128 (the one-block backward of the tensor-core path).
TEST_F(CudaRuntime, AttentionRobertaSized) {
  {
    SCOPED_TRACE("bf16 bidirectional with dropout");
    check_attention({{512, 300, 77, 511}, 12, 64, false, 0.1, DType::bf16}, 21);
  }
  {
    SCOPED_TRACE("f32 causal");
    check_attention({{512, 300, 77, 511}, 12, 64, true, 0.0, DType::f32}, 22);
  }
  {
    SCOPED_TRACE("bf16 up to 128 tokens, bidirectional with dropout");
    check_attention({{128, 97, 128, 64, 1, 0, 128, 33, 65}, 12, 64, false, 0.1, DType::bf16}, 23);
  }
  {
    SCOPED_TRACE("bf16 up to 128 tokens, causal");
    check_attention({{128, 40, 127, 16}, 12, 64, true, 0.0, DType::bf16}, 24);
  }
}

// No atomics: every gradient element is summed by one thread in a fixed order, so two backward
// passes give the same bits (tensor-core path: bf16 d64, tiled and, up to 128 tokens, one block
// per sequence and head; generic path: f32).
TEST_F(CudaRuntime, AttentionBackwardIsDeterministic) {
  for (const auto& [dtype, lengths] : {std::pair{DType::bf16, std::vector<int32_t>{100, 200, 37}},
                                       std::pair{DType::bf16, std::vector<int32_t>{100, 128, 37}},
                                       std::pair{DType::f32, std::vector<int32_t>{100, 200, 37}}}) {
    SCOPED_TRACE(std::string(dtype_name(dtype)) + " max_len " + std::to_string(lengths[1]));
    const Problem pb{lengths, 4, 64, false, 0.1, dtype};
    const Attention first = run_attention(pb, kGpu, 31), second = run_attention(pb, kGpu, 31);
    expect_same_bits(second.out, first.out, "out");
    expect_same_bits(second.lse, first.lse, "lse");
    expect_same_bits(second.dq, first.dq, "dq");
    expect_same_bits(second.dk, first.dk, "dk");
    expect_same_bits(second.dv, first.dv, "dv");
  }
}

// q, k, v read as column slices of one buffer (as a fused Q|K|V projection writes them) and dq,
// dk, dv written into slices of another, against the CPU on contiguous copies. Slices that keep
// the tensor-core path's 16-byte alignment (bf16, Dh = 64: row strides of 8n elements, slices
// at columns 8n), and any slices on the generic path (f32), also give the bits of contiguous
// inputs: the same kernels on the same values. Slices that break the alignment (a row stride of
// 3d + 1, slices at column 1) must take the generic path: on the tensor-core path their
// cp.async and 16-byte stores would fault.
TEST_F(CudaRuntime, AttentionOnRowStridedViews) {
  struct Case {
    std::string name;
    Problem pb;
    Packing inputs, grads;
    bool bits_of_contiguous;
  };
  const std::vector<int32_t> lengths = {0, 70, 1, 130, 33};
  const Case cases[] = {
      {"bf16 tensor cores, the fused [T, 3d] layout", {lengths, 2, 64, false, 0.1, DType::bf16},
       packed(0, 0), packed(0, 0), true},
      {"bf16 tensor cores, gradients at another aligned row stride",
       {lengths, 2, 64, true, 0.0, DType::bf16}, packed(0, 0), packed(8, 8), true},
      {"bf16, row strides of 3d + 1: generic path", {lengths, 2, 64, true, 0.1, DType::bf16},
       packed(0, 1), packed(0, 1), false},
      {"bf16, slices from column 1: generic path", {lengths, 2, 64, false, 0.0, DType::bf16},
       packed(1, 7), packed(1, 7), false},
      {"bf16, aligned inputs, unaligned gradients: generic backward",
       {lengths, 2, 64, false, 0.1, DType::bf16}, packed(0, 0), packed(0, 1), false},
      {"f32 generic path, head_dim 24", {lengths, 3, 24, true, 0.1, DType::f32}, packed(2, 3),
       packed(5, 0), true},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.name);
    const Attention got = run_attention(c.pb, kGpu, 41, c.inputs, c.grads);
    expect_matches_cpu(got, run_attention(c.pb, Device::cpu(), 41), c.pb);
    if (!c.bits_of_contiguous) continue;
    const Attention contiguous = run_attention(c.pb, kGpu, 41);
    expect_same_bits(got.out, contiguous.out, "out");
    expect_same_bits(got.lse, contiguous.lse, "lse");
    expect_same_bits(got.dq, contiguous.dq, "dq");
    expect_same_bits(got.dk, contiguous.dk, "dk");
    expect_same_bits(got.dv, contiguous.dv, "dv");
  }
}

TEST_F(CudaRuntime, AttentionRejectsHeadDimAbove128) {
  const ops::Sequences seqs = ops::Sequences::from_lengths({3}, kGpu);
  const Tensor q = Tensor::zeros({3, 256}, DType::f32, kGpu);
  Tensor out = Tensor::zeros({3, 256}, DType::f32, kGpu),
         lse = Tensor::zeros({1, 3}, DType::f32, kGpu);
  try {
    ops::attention_forward(q, q, q, seqs, 1, false, 0.0, kKey, out, lse);
    ADD_FAILURE() << "no error for head_dim 256";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("head_dim"), std::string::npos) << e.what();
  }
}

// ---- GEMM at scale ------------------------------------------------------------------------------

// Operands of more than 2^31 elements, as the MLM head's logits [T, vocab] are from T = 42700
// (84 sequences of 512): cuBLASLt takes each dimension as a 64-bit number, but whether its kernels
// index such a matrix right only a GPU can say (an index kept in 32 bits wraps there, silently).
// The rows beyond element 2^31 must be what a product of those rows alone gives, and the head's
// backward products that read the whole matrix (dW, dx) what the sums over its halves give.
TEST_F(CudaRuntime, GemmOperandsBeyondTwoToThe31Elements) {
  const int64_t T = 43000, V = 50304, K = 64, tail = 8;
  ASSERT_GT((T - tail) * V, int64_t{1} << 31) << "the tail rows must lie beyond element 2^31";
  std::mt19937 rng(31);
  const Tensor a = on_gpu(uniform({T, K}, rng), DType::bf16);
  const Tensor w = on_gpu(uniform({V, K}, rng), DType::bf16);
  Tensor logits = Tensor::zeros({T, V}, DType::bf16, kGpu);
  ops::gemm(a, w, logits, false, true);
  Tensor tail_logits = Tensor::empty({tail, V}, DType::bf16, kGpu);
  ops::gemm(a.slice(0, T - tail, T), w, tail_logits, false, true);
  // bf16 outputs: the two products may round a sum of 64 terms one ulp apart.
  expect_close(logits.slice(0, T - tail, T), tail_logits, 1e-2, "logits rows beyond element 2^31");

  Tensor dw = Tensor::empty({V, K}, DType::f32, kGpu), dw_halves = Tensor::empty({V, K}, DType::f32, kGpu);
  ops::gemm(logits, a, dw, true, false);
  const int64_t half = T / 2;
  ops::gemm(logits.slice(0, 0, half), a.slice(0, 0, half), dw_halves, true, false);
  ops::gemm(logits.slice(0, half, T), a.slice(0, half, T), dw_halves, true, false, 1.0, 1.0);
  expect_close(dw, dw_halves, 1e-4, "dW = logitsᵀ · x over 2^31 elements");

  Tensor dx = Tensor::empty({T, K}, DType::f32, kGpu), dx_tail = Tensor::empty({tail, K}, DType::f32, kGpu);
  ops::gemm(logits, w, dx, false, false);
  ops::gemm(logits.slice(0, T - tail, T), w, dx_tail, false, false);
  expect_close(dx.slice(0, T - tail, T), dx_tail, 1e-4, "dx = logits · W, rows beyond element 2^31");
}

// ---- Caching allocator --------------------------------------------------------------------------

// Allocating and freeing the same sizes again and again reaches cudaMalloc only in the first
// round; every later allocation is a cache hit. cuda_empty_cache returns the cached blocks and
// keeps the live ones.
TEST_F(CudaRuntime, AllocatorReusesFreedBlocks) {
  const CudaAllocatorStats start = cuda_allocator_stats(0);
  uint64_t mallocs_after_first_round = 0;
  constexpr int kRounds = 10;
  for (int round = 0; round < kRounds; ++round) {
    {
      const Tensor small = Tensor::empty({1000}, DType::f32, kGpu);    // 4000 B -> 4 KiB
      const Tensor large = Tensor::empty({786432}, DType::f32, kGpu);  // 3 MiB -> 4 MiB
      const Tensor odd = Tensor::empty({37, 3}, DType::bf16, kGpu);    // 222 B -> 512 B
      const Tensor none = Tensor::empty({0, 203}, DType::f32, kGpu);   // no block
    }
    if (round == 0) mallocs_after_first_round = cuda_allocator_stats(0).cuda_mallocs;
  }
  const CudaAllocatorStats end = cuda_allocator_stats(0);
  EXPECT_EQ(end.cuda_mallocs, mallocs_after_first_round);
  EXPECT_GE(end.cache_hits - start.cache_hits, uint64_t{3 * (kRounds - 1)});
  EXPECT_EQ(end.bytes_in_use, start.bytes_in_use);
  EXPECT_GE(end.bytes_reserved, end.bytes_in_use + (4u << 20) + 4096 + 512);

  std::mt19937 rng(61);
  const Tensor kept_host = uniform({5000}, rng);
  const Tensor kept = kept_host.to(kGpu);
  cuda_empty_cache();
  const CudaAllocatorStats emptied = cuda_allocator_stats(0);
  EXPECT_EQ(emptied.bytes_reserved, emptied.bytes_in_use);
  EXPECT_GE(emptied.bytes_in_use, uint64_t{5000 * sizeof(float)});
  expect_same_bits(kept, kept_host, "a live tensor across cuda_empty_cache");
}

// Host threads allocating and freeing at once leave the counters consistent.
TEST_F(CudaRuntime, AllocatorIsThreadSafe) {
  const CudaAllocatorStats start = cuda_allocator_stats(0);
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t)
    threads.emplace_back([t] {
      for (int i = 0; i < 200; ++i) {
        const Tensor x = Tensor::empty({int64_t{1} << (8 + (i + t) % 12)}, DType::f32, kGpu);
      }
    });
  for (std::thread& thread : threads) thread.join();
  const CudaAllocatorStats end = cuda_allocator_stats(0);
  EXPECT_EQ(end.bytes_in_use, start.bytes_in_use);
  EXPECT_EQ((end.cuda_mallocs - start.cuda_mallocs) + (end.cache_hits - start.cache_hits),
            uint64_t{4 * 200});
}

// A request no device can serve: the cache is released, cudaMalloc is retried once, and the
// error is an OutOfMemory (one line, exit status 2) naming the size, the device and what it has.
// The failure must not linger in the CUDA runtime's error state, where the next kernel's launch
// check would report it.
TEST_F(CudaRuntime, AllocationFailureNamesSizeAndDevice) {
  { const Tensor cached = Tensor::empty({1000}, DType::f32, kGpu); }
  try {
    const Tensor huge = Tensor::empty({int64_t{1} << 48}, DType::f32, kGpu);  // 2^50 bytes: 1 PiB
    ADD_FAILURE() << "a 1 PiB allocation succeeded";
  } catch (const OutOfMemory& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find("out of memory on cuda:0"), std::string::npos) << msg;
    EXPECT_NE(msg.find(": 1048576.0 GiB requested"), std::string::npos) << msg;
    EXPECT_NE(msg.find(" free"), std::string::npos) << msg;
  }
  const CudaAllocatorStats after = cuda_allocator_stats(0);
  EXPECT_EQ(after.bytes_reserved, after.bytes_in_use);  // the retry released the cache

  std::mt19937 rng(71);
  const Tensor a = uniform({3, 203}, rng), b = uniform({3, 203}, rng);
  Tensor expected = Tensor::empty({3}, DType::f32), out = Tensor::empty({3}, DType::f32, kGpu);
  ops::cosine_forward(a, b, 1e-12, expected);
  ops::cosine_forward(a.to(kGpu), b.to(kGpu), 1e-12, out);
  expect_close(out, expected, 1e-5, "cosine_forward after a failed allocation");
}

}  // namespace
