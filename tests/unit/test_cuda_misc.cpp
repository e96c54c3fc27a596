// The CUDA pooling head, segment sums, row cosine, AdamW, NAdam, gradient norm and caching allocator,
// checked against the CPU reference backend through qarac::ops on random data with ragged
// sequences (one of length 1, one empty). Each op runs with f32 storage (both sides compute in
// f32 from the same values: tight tolerance) and with bf16 storage (the inputs are rounded to bf16
// for both sides, so what the GPU adds is the rounding of its bf16 outputs). Every test skips
// when there is no CUDA device.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "core/error.h"
#include "core/memory.h"
#include "core/tensor.h"
#include "kernels/ops.h"

using namespace qarac;

namespace {

// ---- Data and comparisons --------------------------------------------------------------------

// A one-token sequence, an empty one, sequences shorter and longer than a warp.
const std::vector<int32_t> kLengths = {5, 1, 0, 17, 33, 2, 40};
// Not a multiple of the kernels' 128-column chunks, of a warp, or of a 16-byte pack: every tail
// and bounds check runs.
constexpr int64_t kWidth = 203;
constexpr double kEps = 1e-12;  // the pooling head's (DESIGN.md §2)

// f32: both sides compute in f32 from the same inputs; only the order of the sums (warp trees and
// per-thread partials against the CPU's loops) and FMA contraction differ. For sums of at most a
// few hundred O(1) terms that is ~1e-6 of the largest value, so 1e-5 fails on any formula error
// (a wrong term is off by O(1)) and never on rounding.
constexpr double kF32Tol = 1e-5;
// bf16 outputs: one rounding of an f32 result to bf16 (8 significant bits: relative error at most
// 2^-8); 2^-7 leaves a factor 2 for the f32 differences above.
constexpr double kBf16Tol = 1.0 / 128;
double storage_tol(DType x) { return x == DType::bf16 ? kBf16Tol : kF32Tol; }

const Device kGpu = Device::cuda(0);

Tensor random(const Shape& shape, std::mt19937& rng, float lo = -1.f, float hi = 1.f) {
  std::uniform_real_distribution<float> dist(lo, hi);
  std::vector<float> v(static_cast<size_t>(shape_numel(shape)));
  for (float& x : v) x = dist(rng);
  return Tensor::from_vector(v, shape);
}

// The values a kernel with storage x reads: f32 CPU values rounded to x, as a new f32 CPU tensor.
Tensor representable(const Tensor& t, DType x) { return t.to(x).to(DType::f32).clone(); }
// An f32 CPU tensor on the GPU with storage x.
Tensor to_gpu(const Tensor& t, DType x) { return t.to(x).to(kGpu); }
// A tensor's values as f32 on the CPU.
Tensor to_host(const Tensor& t) { return t.to(Device::cpu()).to(DType::f32); }
// A GPU tensor filled with 7: an op that should overwrite it and does not leaves 7s behind.
Tensor poisoned(const Shape& shape, DType x) {
  return to_gpu(Tensor::from_vector(std::vector<float>(static_cast<size_t>(shape_numel(shape)), 7.f),
                                    shape),
                x);
}

// Expects |actual - expected| <= rtol |expected| + atol s elementwise, s the largest |expected| of
// the element's row (of the whole tensor when it is 1-D), or row_scales[row] when given: rtol
// bounds the rounding of each output, atol s the rounding of sums whose terms cancel, at the
// scale of those terms.
void expect_close(const Tensor& actual, const Tensor& expected, double rtol, double atol,
                  const std::string& what, const std::vector<double>& row_scales = {}) {
  ASSERT_EQ(actual.shape(), expected.shape()) << what;
  const std::vector<float> a = to_host(actual).to_vector<float>();
  const std::vector<float> e = expected.to_vector<float>();
  const size_t row = expected.dim() == 2 ? static_cast<size_t>(expected.size(1)) : e.size();
  size_t bad = 0, worst = 0;
  double worst_ratio = 0;
  for (size_t begin = 0; begin < e.size(); begin += row) {
    double scale = row_scales.empty() ? 0 : row_scales[begin / row];
    for (size_t i = begin; i < begin + row; ++i) scale = std::max(scale, std::fabs(double(e[i])));
    for (size_t i = begin; i < begin + row; ++i) {
      const double err = std::fabs(double(a[i]) - double(e[i]));
      const double tol = rtol * std::fabs(double(e[i])) + atol * scale;
      if (!(err <= tol)) {  // NaN fails too
        ++bad;
        const double ratio = tol > 0 ? err / tol : HUGE_VAL;
        if (!(ratio <= worst_ratio)) {
          worst_ratio = ratio;
          worst = i;
        }
      }
    }
  }
  EXPECT_EQ(bad, 0u) << what << ": " << bad << " of " << e.size()
                     << " elements out of tolerance; worst at " << worst << ": " << a[worst]
                     << " vs " << e[worst] << " (" << worst_ratio << "x the tolerance)";
}

// Expects the same bits.
void expect_equal(const Tensor& actual, const Tensor& expected, const std::string& what) {
  ASSERT_EQ(actual.shape(), expected.shape()) << what;
  const std::vector<float> a = to_host(actual).to_vector<float>();
  const std::vector<float> e = to_host(expected).to_vector<float>();
  size_t bad = 0, first = 0;
  for (size_t i = 0; i < e.size(); ++i)
    if (std::memcmp(&a[i], &e[i], sizeof(float)) != 0 && bad++ == 0) first = i;
  EXPECT_EQ(bad, 0u) << what << ": " << bad << " of " << e.size() << " elements differ; first at "
                     << first << ": " << a[first] << " vs " << e[first];
}

class CudaTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (cuda_device_count() == 0) GTEST_SKIP() << "no CUDA device";
  }
};

// Parameterised by the storage dtype of the compute tensors (for AdamW: of the parameter copy).
class CudaStorageTest : public CudaTest, public ::testing::WithParamInterface<DType> {};

// The batch of kLengths on the CPU and on the GPU.
struct Batch {
  ops::Sequences cpu = ops::Sequences::from_lengths(kLengths, Device::cpu());
  ops::Sequences gpu = ops::Sequences::from_lengths(kLengths, kGpu);
  int64_t sequences() const { return cpu.count(); }
  int64_t tokens() const { return cpu.tokens(); }
};

// ---- Segment sums ----------------------------------------------------------------------------------

TEST_P(CudaStorageTest, SegmentSum) {
  const DType x_dtype = GetParam();
  std::mt19937 rng(11);
  const Batch batch;
  const Tensor x = representable(random({batch.tokens(), kWidth}, rng), x_dtype);
  Tensor expected = Tensor::empty({batch.sequences(), kWidth}, DType::f32);
  ops::segment_sum(x, batch.cpu, expected);

  Tensor out = poisoned({batch.sequences(), kWidth}, x_dtype);
  ops::segment_sum(to_gpu(x, x_dtype), batch.gpu, out);
  expect_close(out, expected, storage_tol(x_dtype), kF32Tol, "segment_sum");
}

// The backward pass copies dout_b to every token of b: exact. Accumulating adds once in f32 on
// both sides, then the GPU rounds the sum to the storage dtype: exact against that rounding.
TEST_P(CudaStorageTest, SegmentSumBackward) {
  const DType x_dtype = GetParam();
  std::mt19937 rng(12);
  const Batch batch;
  const Tensor dout = representable(random({batch.sequences(), kWidth}, rng), x_dtype);
  const Tensor dx0 = representable(random({batch.tokens(), kWidth}, rng), x_dtype);

  Tensor expected = Tensor::empty({batch.tokens(), kWidth}, DType::f32);
  ops::segment_sum_backward(dout, batch.cpu, expected);
  Tensor dx = poisoned({batch.tokens(), kWidth}, x_dtype);
  ops::segment_sum_backward(to_gpu(dout, x_dtype), batch.gpu, dx);
  expect_equal(dx, expected, "segment_sum_backward");

  Tensor expected_sum = dx0.clone();
  ops::segment_sum_backward(dout, batch.cpu, expected_sum, /*accumulate=*/true);
  Tensor dx_sum = to_gpu(dx0, x_dtype);
  ops::segment_sum_backward(to_gpu(dout, x_dtype), batch.gpu, dx_sum, /*accumulate=*/true);
  expect_equal(dx_sum, representable(expected_sum, x_dtype), "segment_sum_backward (accumulate)");
}

// ---- Pooling head ----------------------------------------------------------------------------------

// Pooling inputs with one degenerate token: l_t = 0, so ‖l_t‖ ‖g_b‖ <= eps (a_t = 0, and the
// backward pass takes the eps branch).
struct PoolingInputs {
  Tensor x, l, g;
  static constexpr int64_t kZeroToken = 8;  // inside the sequence of length 17

  PoolingInputs(const Batch& batch, DType x_dtype, std::mt19937& rng) {
    x = representable(random({batch.tokens(), kWidth}, rng), x_dtype);
    Tensor lr = random({batch.tokens(), kWidth}, rng);
    std::fill_n(lr.data<float>() + kZeroToken * kWidth, kWidth, 0.f);
    l = representable(lr, x_dtype);
    g = representable(random({batch.sequences(), kWidth}, rng), x_dtype);
  }
};

// a is f32 on both sides (tight in both modes); v is stored in X.
TEST_P(CudaStorageTest, PoolingForward) {
  const DType x_dtype = GetParam();
  std::mt19937 rng(21);
  const Batch batch;
  const PoolingInputs in(batch, x_dtype, rng);
  Tensor v_expected = Tensor::empty({batch.sequences(), kWidth}, DType::f32);
  Tensor a_expected = Tensor::empty({batch.tokens()}, DType::f32);
  ops::pooling_forward(in.x, in.l, in.g, batch.cpu, kEps, v_expected, a_expected);

  Tensor v = poisoned({batch.sequences(), kWidth}, x_dtype);
  Tensor a = poisoned({batch.tokens()}, DType::f32);
  ops::pooling_forward(to_gpu(in.x, x_dtype), to_gpu(in.l, x_dtype), to_gpu(in.g, x_dtype),
                       batch.gpu, kEps, v, a);
  expect_close(a, a_expected, kF32Tol, kF32Tol, "pooling_forward a");
  expect_close(v, v_expected, storage_tol(x_dtype), kF32Tol, "pooling_forward v");
  EXPECT_EQ(to_host(a).to_vector<float>()[PoolingInputs::kZeroToken], 0.f);
}

// dx accumulates onto its input; dl and dg overwrite (poisoned). Both sides get the CPU's a.
TEST_P(CudaStorageTest, PoolingBackward) {
  const DType x_dtype = GetParam();
  std::mt19937 rng(22);
  const Batch batch;
  const int64_t tokens = batch.tokens(), sequences = batch.sequences();
  const PoolingInputs in(batch, x_dtype, rng);
  const Tensor dv = representable(random({sequences, kWidth}, rng), x_dtype);
  const Tensor dx0 = representable(random({tokens, kWidth}, rng), x_dtype);
  Tensor v = Tensor::empty({sequences, kWidth}, DType::f32);
  Tensor a = Tensor::empty({tokens}, DType::f32);
  ops::pooling_forward(in.x, in.l, in.g, batch.cpu, kEps, v, a);

  Tensor dx_expected = dx0.clone();
  Tensor dl_expected = Tensor::empty({tokens, kWidth}, DType::f32);
  Tensor dg_expected = Tensor::empty({sequences, kWidth}, DType::f32);
  ops::pooling_backward(dv, in.x, in.l, in.g, a, batch.cpu, kEps, dx_expected, dl_expected,
                        dg_expected);

  Tensor dx = to_gpu(dx0, x_dtype);
  Tensor dl = poisoned({tokens, kWidth}, x_dtype);
  Tensor dg = poisoned({sequences, kWidth}, x_dtype);
  ops::pooling_backward(to_gpu(dv, x_dtype), to_gpu(in.x, x_dtype), to_gpu(in.l, x_dtype),
                        to_gpu(in.g, x_dtype), a.to(kGpu), batch.gpu, kEps, dx, dl, dg);
  // dl_t = da_t (g/den - a_t l_t/|l_t|²) and dg_b = Σ_t da_t (l_t/den - a_t g/|g|²) are built
  // from sums whose terms cancel: da_t = dv_b · x_t (203 terms of random sign) and the two
  // terms in the brackets. Their rounding is relative to the terms, so the scale of an element
  // is Σ_i |dv_i x_ti| (|g|∞/den + |a_t| |l_t|∞/|l_t|²), not the (possibly small) result. Measured
  // on an H100: an element whose da_t was small against Σ|dv_i x_ti| differed by 1e-4 relative.
  const std::vector<float> xs = in.x.to(DType::f32).to_vector<float>(), ls = in.l.to(DType::f32).to_vector<float>();
  const std::vector<float> gs = in.g.to(DType::f32).to_vector<float>(), dvs = dv.to(DType::f32).to_vector<float>();
  const std::vector<float> as = a.to_vector<float>();
  std::vector<double> dl_scale(static_cast<size_t>(tokens)), dg_scale(static_cast<size_t>(sequences));
  for (int64_t b = 0; b < sequences; ++b) {
    double g2 = 0, g_inf = 0;
    for (int64_t i = 0; i < kWidth; ++i) {
      const double gi = gs[static_cast<size_t>(b * kWidth + i)];
      g2 += gi * gi;
      g_inf = std::max(g_inf, std::fabs(gi));
    }
    for (int64_t t = batch.cpu.host[b]; t < batch.cpu.host[b + 1]; ++t) {
      double l2 = 0, l_inf = 0, da_terms = 0;
      for (int64_t i = 0; i < kWidth; ++i) {
        const double li = ls[static_cast<size_t>(t * kWidth + i)];
        l2 += li * li;
        l_inf = std::max(l_inf, std::fabs(li));
        da_terms += std::fabs(dvs[static_cast<size_t>(b * kWidth + i)] * xs[static_cast<size_t>(t * kWidth + i)]);
      }
      const double den = std::max(std::sqrt(l2 * g2), kEps), at = std::fabs(as[static_cast<size_t>(t)]);
      dl_scale[static_cast<size_t>(t)] = da_terms * (g_inf / den + (l2 > 0 ? at * l_inf / l2 : 0));
      dg_scale[static_cast<size_t>(b)] += da_terms * (l_inf / den + (g2 > 0 ? at * g_inf / g2 : 0));
    }
  }
  const double tol = storage_tol(x_dtype);
  expect_close(dx, dx_expected, tol, kF32Tol, "pooling_backward dx");
  expect_close(dl, dl_expected, tol, kF32Tol, "pooling_backward dl", dl_scale);
  expect_close(dg, dg_expected, tol, kF32Tol, "pooling_backward dg", dg_scale);
}

// ---- Row cosine ----------------------------------------------------------------------------------

// 37 rows: not a multiple of the 8 rows of a block. Row 5 of a is zero: the eps branch.
TEST_P(CudaStorageTest, Cosine) {
  const DType x_dtype = GetParam();
  std::mt19937 rng(31);
  const int64_t rows = 37;
  Tensor ar = random({rows, kWidth}, rng);
  std::fill_n(ar.data<float>() + 5 * kWidth, kWidth, 0.f);
  const Tensor a = representable(ar, x_dtype);
  const Tensor b = representable(random({rows, kWidth}, rng), x_dtype);
  const Tensor dout = random({rows}, rng);

  Tensor out_expected = Tensor::empty({rows}, DType::f32);
  ops::cosine_forward(a, b, kEps, out_expected);
  Tensor out = poisoned({rows}, DType::f32);
  ops::cosine_forward(to_gpu(a, x_dtype), to_gpu(b, x_dtype), kEps, out);
  expect_close(out, out_expected, kF32Tol, kF32Tol, "cosine_forward");  // f32 output: tight

  Tensor da_expected = Tensor::empty({rows, kWidth}, DType::f32);
  Tensor db_expected = Tensor::empty({rows, kWidth}, DType::f32);
  ops::cosine_backward(dout, a, b, kEps, da_expected, db_expected);
  Tensor da = poisoned({rows, kWidth}, x_dtype), db = poisoned({rows, kWidth}, x_dtype);
  ops::cosine_backward(dout.to(kGpu), to_gpu(a, x_dtype), to_gpu(b, x_dtype), kEps, da, db);
  expect_close(da, da_expected, storage_tol(x_dtype), kF32Tol, "cosine_backward da");
  expect_close(db, db_expected, storage_tol(x_dtype), kF32Tol, "cosine_backward db");
}

// ---- AdamW ---------------------------------------------------------------------------------------

// Three steps (the bias corrections change every step) on n = 1003 elements: 16-byte packs plus
// a scalar tail; then on views one element into their buffers, which no pack fits (scalar path),
// without a copy. Both sides evaluate the same f32 formula with the same constants (formed in
// double); the GPU contracts products and sums into FMAs (at most an ulp per operation), a few
// ulp after three steps: 1e-6 relative, with lr large enough (1e-2) that the weight decay
// (lr wd p = 1e-3 p) and each step's update are far above it. The parameter copy must be the
// rounding of the GPU's own master weights to its dtype: exact.
TEST_P(CudaStorageTest, AdamW) {
  const DType copy_dtype = GetParam();
  constexpr double kTol = 1e-6;
  const int64_t n = 1003;
  for (const bool offset_views : {false, true}) {
    SCOPED_TRACE(offset_views ? "views at an offset of one element" : "whole tensors");
    std::mt19937 rng(41);
    const int64_t first = offset_views ? 1 : 0;
    auto view = [&](const Tensor& t) { return t.slice(0, first, first + n); };
    const Tensor p0 = random({n + first}, rng);
    const Tensor m0 = Tensor::zeros({n + first}, DType::f32), v0 = m0.clone();  // as training starts
    Tensor p_cpu = view(p0.clone()), m_cpu = view(m0.clone()), v_cpu = view(v0.clone());
    Tensor p_gpu = view(p0.to(kGpu)), m_gpu = view(m0.to(kGpu)), v_gpu = view(v0.to(kGpu));
    Tensor copy = Tensor::zeros({n}, copy_dtype, kGpu);
    ops::AdamW config;
    config.lr = 1e-2;
    config.weight_decay = 0.1;
    config.grad_scale = 0.5;
    for (int64_t step = 1; step <= 3; ++step) {
      config.step = step;
      const Tensor grad = random({n + first}, rng);
      ops::adamw_update(p_cpu, view(grad), m_cpu, v_cpu, config);
      ops::adamw_update(p_gpu, view(grad.to(kGpu)), m_gpu, v_gpu, config,
                        offset_views ? nullptr : &copy);
    }
    expect_close(p_gpu, p_cpu, kTol, kTol, "adamw param");
    expect_close(m_gpu, m_cpu, kTol, kTol, "adamw m");
    expect_close(v_gpu, v_cpu, kTol, kTol, "adamw v");
    if (!offset_views)
      expect_equal(copy, representable(to_host(p_gpu), copy_dtype), "adamw param copy");
  }
}

// ---- Sum of squares ------------------------------------------------------------------------------

// More than the 64 spans of one launch, an empty tensor, one large enough for many blocks, and a
// view one element into its buffer (no 16-byte packs). The CPU sums in double; the GPU's f32
// per-thread sums and trees are within ~1e-6 relative of that. The GPU result must have the same
// bits on every run.
TEST_P(CudaStorageTest, SumOfSquares) {
  const DType x_dtype = GetParam();
  std::mt19937 rng(51);
  std::vector<Tensor> host;
  for (int64_t size : {int64_t{1}, int64_t{0}, int64_t{1000}, int64_t{4099}, (int64_t{1} << 18) + 3})
    host.push_back(representable(random({size}, rng), x_dtype));
  for (int64_t i = 0; i < 70; ++i) host.push_back(representable(random({7 * i + 1}, rng), x_dtype));
  const Tensor offset_buffer = representable(random({1001}, rng), x_dtype);

  std::vector<Tensor> device;
  for (const Tensor& t : host) device.push_back(to_gpu(t, x_dtype));
  const Tensor offset_device = to_gpu(offset_buffer, x_dtype);
  host.push_back(offset_buffer.slice(0, 1, 1001));
  device.push_back(offset_device.slice(0, 1, 1001));
  std::vector<const Tensor*> host_ptrs, device_ptrs;
  for (const Tensor& t : host) host_ptrs.push_back(&t);
  for (const Tensor& t : device) device_ptrs.push_back(&t);

  Tensor expected = Tensor::empty({1}, DType::f32);
  ops::sum_of_squares(host_ptrs, expected);
  Tensor out = poisoned({1}, DType::f32);
  ops::sum_of_squares(device_ptrs, out);
  expect_close(out, expected, kF32Tol, 0, "sum_of_squares");

  Tensor again = poisoned({1}, DType::f32);
  ops::sum_of_squares(device_ptrs, again);
  expect_equal(again, out, "sum_of_squares, second run");
}

INSTANTIATE_TEST_SUITE_P(Storage, CudaStorageTest, ::testing::Values(DType::f32, DType::bf16),
                         [](const ::testing::TestParamInfo<DType>& storage) {
                           return std::string(dtype_name(storage.param));
                         });

// ---- Caching allocator ---------------------------------------------------------------------------

// Allocating and freeing the same sizes again and again reaches cudaMalloc only in the first
// round; every later allocation is a cache hit. cuda_empty_cache returns the cached blocks and
// keeps the live ones.
TEST_F(CudaTest, AllocatorReusesFreedBlocks) {
  const CudaAllocatorStats start = cuda_allocator_stats(0);
  uint64_t mallocs_after_first_round = 0;
  constexpr int kRounds = 10;
  for (int round = 0; round < kRounds; ++round) {
    {
      const Tensor small = Tensor::empty({1000}, DType::f32, kGpu);         // 4000 B -> 4 KiB
      const Tensor large = Tensor::empty({786432}, DType::f32, kGpu);       // 3 MiB -> 4 MiB
      const Tensor odd = Tensor::empty({37, 3}, DType::bf16, kGpu);         // 222 B -> 512 B
      const Tensor none = Tensor::empty({0, kWidth}, DType::f32, kGpu);     // no block
    }
    if (round == 0) mallocs_after_first_round = cuda_allocator_stats(0).cuda_mallocs;
  }
  const CudaAllocatorStats end = cuda_allocator_stats(0);
  EXPECT_EQ(end.cuda_mallocs, mallocs_after_first_round);
  EXPECT_GE(end.cache_hits - start.cache_hits, uint64_t{3 * (kRounds - 1)});
  EXPECT_EQ(end.bytes_in_use, start.bytes_in_use);
  EXPECT_GE(end.bytes_reserved, end.bytes_in_use + (4u << 20) + 4096 + 512);

  std::mt19937 rng(61);
  const Tensor kept_host = random({5000}, rng);
  const Tensor kept = kept_host.to(kGpu);
  cuda_empty_cache();
  const CudaAllocatorStats emptied = cuda_allocator_stats(0);
  EXPECT_EQ(emptied.bytes_reserved, emptied.bytes_in_use);
  EXPECT_GE(emptied.bytes_in_use, uint64_t{5000 * sizeof(float)});
  expect_equal(kept, kept_host, "a live tensor across cuda_empty_cache");
}

// Host threads allocating and freeing at once leave the counters consistent.
TEST_F(CudaTest, AllocatorIsThreadSafe) {
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
// error names the size and the device. The failure must not linger in the CUDA runtime's error
// state, where the next kernel's launch check would report it.
TEST_F(CudaTest, AllocationFailureNamesSizeAndDevice) {
  { const Tensor cached = Tensor::empty({1000}, DType::f32, kGpu); }
  try {
    const Tensor huge = Tensor::empty({int64_t{1} << 48}, DType::f32, kGpu);  // 4 PiB
    ADD_FAILURE() << "a 4 PiB allocation succeeded";
  } catch (const Error& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find("1125899906842624 bytes"), std::string::npos) << msg;
    EXPECT_NE(msg.find("cuda:0"), std::string::npos) << msg;
  }
  const CudaAllocatorStats after = cuda_allocator_stats(0);
  EXPECT_EQ(after.bytes_reserved, after.bytes_in_use);  // the retry released the cache

  std::mt19937 rng(71);
  const Tensor a = random({3, kWidth}, rng), b = random({3, kWidth}, rng);
  Tensor expected = Tensor::empty({3}, DType::f32), out = Tensor::empty({3}, DType::f32, kGpu);
  ops::cosine_forward(a, b, kEps, expected);
  ops::cosine_forward(a.to(kGpu), b.to(kGpu), kEps, out);
  expect_close(out, expected, kF32Tol, kF32Tol, "cosine_forward after a failed allocation");
}

}  // namespace

// ---- NAdam ------------------------------------------------------------------------------------------

namespace {

// AdamW's test for NAdam: three steps on 1003 elements (packs and a scalar tail) and on views one
// element into their buffers, with coupled and decoupled weight decay, against the CPU reference
// with the same carried momentum product; the same FMA-level tolerance, and the compute copy the
// exact rounding of the GPU's master weights.
class CudaNAdamTest : public CudaTest, public ::testing::WithParamInterface<DType> {};

TEST_P(CudaNAdamTest, MatchesTheCpuReference) {
  const DType copy_dtype = GetParam();
  constexpr double kTol = 1e-6;
  const int64_t n = 1003;
  for (const bool decoupled : {false, true}) {
    for (const bool offset_views : {false, true}) {
      SCOPED_TRACE(std::string(decoupled ? "decoupled" : "L2") + " weight decay, " +
                   (offset_views ? "views at an offset of one element" : "whole tensors"));
      std::mt19937 rng(61);
      const int64_t first = offset_views ? 1 : 0;
      auto view = [&](const Tensor& t) { return t.slice(0, first, first + n); };
      const Tensor p0 = random({n + first}, rng);
      const Tensor m0 = Tensor::zeros({n + first}, DType::f32), v0 = m0.clone();
      Tensor p_cpu = view(p0.clone()), m_cpu = view(m0.clone()), v_cpu = view(v0.clone());
      Tensor p_gpu = view(p0.to(kGpu)), m_gpu = view(m0.to(kGpu)), v_gpu = view(v0.to(kGpu));
      Tensor copy = Tensor::zeros({n}, copy_dtype, kGpu);
      ops::NAdam config;
      config.lr = 1e-2;
      config.weight_decay = 0.1;
      config.grad_scale = 0.5;
      config.decoupled_weight_decay = decoupled;
      for (int64_t step = 1; step <= 3; ++step) {
        config.step = step;
        config.mu_product = ops::nadam_mu_product(config);
        const Tensor grad = random({n + first}, rng);
        ops::nadam_update(p_cpu, view(grad), m_cpu, v_cpu, config);
        ops::nadam_update(p_gpu, view(grad.to(kGpu)), m_gpu, v_gpu, config,
                          offset_views ? nullptr : &copy);
      }
      expect_close(p_gpu, p_cpu, kTol, kTol, "nadam param");
      expect_close(m_gpu, m_cpu, kTol, kTol, "nadam m");
      expect_close(v_gpu, v_cpu, kTol, kTol, "nadam v");
      if (!offset_views)
        expect_equal(copy, representable(to_host(p_gpu), copy_dtype), "nadam param copy");
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Storage, CudaNAdamTest, ::testing::Values(DType::f32, DType::bf16),
                         [](const ::testing::TestParamInfo<DType>& storage) {
                           return std::string(dtype_name(storage.param));
                         });

}  // namespace
