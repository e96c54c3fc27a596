// The CUDA kernels that have two paths, each path timed on the same inputs in the same run, with
// how far their results are apart: whether a path added without a GPU earns its place.
//   - attention backward, bf16, 12 heads of 64 (RoBERTa-base), 64 sequences of 128 tokens (full,
//     ragged in [43, 128], ragged with dropout 0.1) and 8 (too few blocks to fill the GPU?): the
//     one-block kernel against the tiled ones;
//   - LayerNorm backward, bf16, 8192 rows of 768 (plain; with the branch dropout 0.1 and its bias
//     gradient, as a layer's residual blocks call it) and 1024 rows: one kernel against rows then
//     columns;
//   - a RoBERTa-base layer's GEMMs over the token counts of several applications of a model in the
//     QARAC step (B=64, qarac-bench's lengths), as one pass of their sum against separate passes:
//     what the answer encoder's single pass over two fields wins, and what one pass over every
//     task's fields would;
//   - a layer's backward GEMMs at the QARAC step's and the classifier step's token counts, on one
//     stream against the weight gradients on a second stream beside the input gradients: what
//     SMs that the small GEMMs leave idle would give;
//   - the embedding gradient, bf16, 8192 rows of 768 into RoBERTa's 50265 ids, with ids spread
//     evenly, as words are (Zipf), and with <mask> on 15% of the rows: a frequent id's rows are
//     summed in chunks by many blocks, so the three should take about the same time (one path,
//     its figures against each other, and the same bits from two calls).
// Usage: bench_kernels [--warmup N] [--iters N]. Needs a GPU; prints one line and exits 77
// without one.
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include "core/check_cuda.h"
#include "core/error.h"
#include "core/memory.h"
#include "core/rng.h"
#include "core/tensor.h"
#include "kernels/cuda/attention.cuh"
#include "kernels/cuda/context.cuh"
#include "kernels/cuda/dropout.cuh"
#include "kernels/cuda/embedding.cuh"
#include "kernels/cuda/gemm.cuh"
#include "kernels/cuda/layernorm.cuh"

namespace qarac {
namespace {

const Device kGpu = Device::cuda(0);
const RngKey kKey{20261205, 11, 4};

int warmup = 5, iters = 20;

// Mean milliseconds of `call` on the kernels' stream over `iters` calls after `warmup`.
double time_ms(const std::function<void()>& call) {
  for (int i = 0; i < warmup; ++i) call();
  cudaEvent_t start, stop;
  QARAC_CHECK_CUDA(cudaEventCreate(&start));
  QARAC_CHECK_CUDA(cudaEventCreate(&stop));
  QARAC_CHECK_CUDA(cudaEventRecord(start, cuda::stream()));
  for (int i = 0; i < iters; ++i) call();
  QARAC_CHECK_CUDA(cudaEventRecord(stop, cuda::stream()));
  QARAC_CHECK_CUDA(cudaEventSynchronize(stop));
  float ms = 0.f;
  QARAC_CHECK_CUDA(cudaEventElapsedTime(&ms, start, stop));
  QARAC_CHECK_CUDA(cudaEventDestroy(start));
  QARAC_CHECK_CUDA(cudaEventDestroy(stop));
  return static_cast<double>(ms) / iters;
}

Tensor uniform(const Shape& shape, std::mt19937& rng, float lo, float hi, DType dtype) {
  std::uniform_real_distribution<float> u(lo, hi);
  std::vector<float> v(static_cast<size_t>(shape_numel(shape)));
  for (float& x : v) x = u(rng);
  return Tensor::from_vector(v, shape).to(dtype).to(kGpu);
}

std::vector<float> host(const Tensor& t) { return t.to(Device::cpu()).to(DType::f32).to_vector<float>(); }

// max |a − b| / max |b|: how far two results of the same math are apart.
double relative_gap(const Tensor& a, const Tensor& b) {
  const std::vector<float> x = host(a), y = host(b);
  double gap = 0, scale = 0;
  for (size_t i = 0; i < x.size(); ++i) {
    gap = std::max(gap, std::abs(static_cast<double>(x[i]) - y[i]));
    scale = std::max(scale, std::abs(static_cast<double>(y[i])));
  }
  return scale > 0 ? gap / scale : gap;
}

bool same_bits(const Tensor& a, const Tensor& b) {
  const Tensor x = a.to(Device::cpu()), y = b.to(Device::cpu());
  return x.nbytes() == y.nbytes() && std::memcmp(x.raw(), y.raw(), x.nbytes()) == 0;
}

void attention(const char* name, const std::vector<int32_t>& lengths, double dropout) {
  constexpr int64_t kHeads = 12, kHeadDim = 64, kD = kHeads * kHeadDim;
  std::vector<int32_t> offsets{0};
  for (int32_t n : lengths) offsets.push_back(offsets.back() + n);
  const int64_t tokens = offsets.back(), batch = static_cast<int64_t>(lengths.size());
  std::vector<int64_t> ids(lengths.size());
  for (size_t i = 0; i < ids.size(); ++i) ids[i] = static_cast<int64_t>(i * 2654435761u + 1);
  const Tensor d_offsets = Tensor::from_vector(offsets, {batch + 1}, kGpu), d_ids = Tensor::from_vector(ids, {batch}, kGpu);
  std::mt19937 rng(7);
  const Tensor q = uniform({tokens, kD}, rng, -2.6f, 2.6f, DType::bf16), k = uniform({tokens, kD}, rng, -2.6f, 2.6f, DType::bf16),
               v = uniform({tokens, kD}, rng, -1, 1, DType::bf16), dout = uniform({tokens, kD}, rng, -1, 1, DType::bf16);
  Tensor out = Tensor::empty({tokens, kD}, DType::bf16, kGpu), lse = Tensor::empty({kHeads, tokens}, DType::f32, kGpu);
  cuda::AttentionShape s;
  s.offsets = d_offsets.data<int32_t>();
  s.ids = reinterpret_cast<const uint64_t*>(d_ids.data<int64_t>());
  s.batch = batch;
  s.tokens = tokens;
  s.max_len = *std::max_element(lengths.begin(), lengths.end());
  s.heads = kHeads;
  s.head_dim = kHeadDim;
  s.ld_qkv = s.ld_grad_qkv = s.ld_out = kD;
  cuda::attention_forward(DType::bf16, s, q.raw(), k.raw(), v.raw(), false, dropout, kKey, out.raw(),
                          lse.data<float>());
  struct Grads {
    Tensor dq, dk, dv;
  };
  const auto grads = [&] {
    return Grads{Tensor::empty({tokens, kD}, DType::bf16, kGpu), Tensor::empty({tokens, kD}, DType::bf16, kGpu),
                 Tensor::empty({tokens, kD}, DType::bf16, kGpu)};
  };
  Grads one = grads(), tiled = grads();
  const auto run = [&](Grads& g, cuda::AttentionBackwardPath path) {
    return time_ms([&] {
      cuda::attention_backward(DType::bf16, s, dout.raw(), q.raw(), k.raw(), v.raw(), out.raw(), lse.data<float>(),
                               false, dropout, kKey, g.dq.raw(), g.dk.raw(), g.dv.raw(), path);
    });
  };
  const double t_one = run(one, cuda::AttentionBackwardPath::automatic);
  const double t_tiled = run(tiled, cuda::AttentionBackwardPath::tiled);
  // FlashAttention's count: 4·L²·Dh per sequence and head forward, 2.5× that backward.
  double flops = 0;
  for (int32_t n : lengths) flops += 2.5 * 4.0 * n * n * kHeadDim * kHeads;
  std::printf("attention backward %-26s one-block %7.4f ms (%5.1f TFLOP/s)  tiled %7.4f ms (%5.1f TFLOP/s)  "
              "tiled/one-block %.2f  gap dq %.1e dk %.1e dv %.1e\n",
              name, t_one, flops / t_one * 1e-9, t_tiled, flops / t_tiled * 1e-9, t_tiled / t_one,
              relative_gap(one.dq, tiled.dq), relative_gap(one.dk, tiled.dk), relative_gap(one.dv, tiled.dv));
}

void layernorm(const char* name, int64_t rows, bool branch) {
  constexpr int64_t kCols = 768;
  std::mt19937 rng(8);
  const Tensor dy = uniform({rows, kCols}, rng, -1, 1, DType::bf16), x = uniform({rows, kCols}, rng, 2, 4, DType::bf16);
  const Tensor gamma = uniform({kCols}, rng, 0.5f, 1.5f, DType::bf16);
  const Tensor mean = uniform({rows}, rng, 2.9f, 3.1f, DType::f32), rstd = uniform({rows}, rng, 0.5f, 1.5f, DType::f32);
  // Sequences of 128 rows for the dropout masks.
  const int64_t sequences = rows / 128;
  std::vector<int32_t> offsets;
  for (int32_t i = 0; i <= sequences; ++i) offsets.push_back(i * 128);
  std::vector<int64_t> ids(static_cast<size_t>(sequences));
  for (size_t i = 0; i < ids.size(); ++i) ids[i] = static_cast<int64_t>(i + 1);
  const Tensor d_offsets = Tensor::from_vector(offsets, {sequences + 1}, kGpu),
               d_ids = Tensor::from_vector(ids, {sequences}, kGpu);
  const cuda::RowDropout drop =
      branch ? cuda::row_dropout(d_offsets.data<int32_t>(), reinterpret_cast<const uint64_t*>(d_ids.data<int64_t>()),
                                 sequences, 0.1, kKey)
             : cuda::RowDropout{};
  struct Grads {
    Tensor dx, dbranch, dgamma, dbeta, dbias;
  };
  const auto grads = [&] {
    return Grads{Tensor::empty({rows, kCols}, DType::bf16, kGpu), Tensor::empty({rows, kCols}, DType::bf16, kGpu),
                 Tensor::zeros({kCols}, DType::f32, kGpu), Tensor::zeros({kCols}, DType::f32, kGpu),
                 Tensor::zeros({kCols}, DType::f32, kGpu)};
  };
  const auto call = [&](Grads& g, cuda::LayerNormBackwardPath path) {
    cuda::layernorm_backward(DType::bf16, dy.raw(), x.raw(), gamma.raw(), mean.data<float>(), rstd.data<float>(), rows,
                             kCols, g.dx.raw(), g.dgamma.data<float>(), g.dbeta.data<float>(), drop,
                             branch ? g.dbranch.raw() : nullptr, branch ? g.dbias.data<float>() : nullptr, path);
  };
  Grads one = grads(), two = grads();
  const double t_one = time_ms([&] { call(one, cuda::LayerNormBackwardPath::automatic); });
  const double t_two = time_ms([&] { call(two, cuda::LayerNormBackwardPath::rows_then_columns); });
  // The sums were accumulated over as many calls: compare one call of each, from zero.
  Grads a = grads(), b = grads();
  call(a, cuda::LayerNormBackwardPath::automatic);
  call(b, cuda::LayerNormBackwardPath::rows_then_columns);
  // What must move: dy and x read, dx (and dbranch) written, in bf16.
  const double bytes = static_cast<double>(rows * kCols) * 2 * (branch ? 4 : 3);
  std::printf("layernorm backward %-26s one-kernel %7.4f ms (%5.0f GB/s)  rows-then-columns %7.4f ms (%5.0f GB/s)  "
              "ratio %.2f  gap dx %.1e dgamma %.1e, same bits: dbeta %s dbias %s\n",
              name, t_one, bytes / t_one * 1e-6, t_two, bytes / t_two * 1e-6, t_two / t_one, relative_gap(a.dx, b.dx),
              relative_gap(a.dgamma, b.dgamma), same_bits(a.dbeta, b.dbeta) ? "yes" : "NO",
              branch ? (same_bits(a.dbias, b.dbias) ? "yes" : "NO") : "-");
}

void embedding_gradient(const char* name, const std::vector<int32_t>& idv) {
  constexpr int64_t kVocab = 50265, kD = 768;
  const int64_t rows = static_cast<int64_t>(idv.size());
  std::mt19937 rng(9);
  const Tensor ids = Tensor::from_vector(idv, {rows}, kGpu), dout = uniform({rows, kD}, rng, -1, 1, DType::bf16);
  const auto call = [&](Tensor& dtable) {
    cuda::embedding_backward(DType::bf16, DType::f32, ids.data<int32_t>(), rows, dout.raw(), kVocab, kD, dtable.raw());
  };
  Tensor dtable = Tensor::zeros({kVocab, kD}, DType::f32, kGpu);
  const double ms = time_ms([&] { call(dtable); });
  Tensor a = Tensor::zeros({kVocab, kD}, DType::f32, kGpu), b = Tensor::zeros({kVocab, kD}, DType::f32, kGpu);
  call(a);
  call(b);
  std::vector<int32_t> sorted = idv;
  std::sort(sorted.begin(), sorted.end());
  int64_t distinct = 0, longest = 0;
  for (size_t i = 0, run = 0; i < sorted.size(); ++i) {
    run = i > 0 && sorted[i] == sorted[i - 1] ? run + 1 : 1;
    distinct += run == 1;
    longest = std::max(longest, static_cast<int64_t>(run));
  }
  // What must move: dout read (bf16), the rows of the distinct ids read and written (f32).
  const double bytes = static_cast<double>(rows * kD) * 2 + static_cast<double>(distinct * kD) * 4 * 2;
  std::printf("embedding backward %-26s time %7.4f ms (%5.0f GB/s)  %lld distinct ids, longest run %lld rows, same bits: %s\n",
              name, ms, bytes / ms * 1e-6, static_cast<long long>(distinct), static_cast<long long>(longest),
              same_bits(a, b) ? "yes" : "NO");
}

// A second stream with a cuBLASLt workspace of its own: two matmuls running at once must not share
// one.
struct SideStream {
  cudaStream_t stream = nullptr;
  void* workspace = nullptr;
  SideStream() {
    QARAC_CHECK_CUDA(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
    QARAC_CHECK_CUDA(cudaMalloc(&workspace, cuda::context().workspace_bytes));
  }
  ~SideStream() {
    cudaFree(workspace);
    cudaStreamDestroy(stream);
  }
  SideStream(const SideStream&) = delete;
  SideStream& operator=(const SideStream&) = delete;
};

// While it lives, the ops queue on the side stream with its workspace instead of the context's.
class OnSide {
 public:
  explicit OnSide(const SideStream& side) : ctx_(cuda::context()), stream_(ctx_.stream), workspace_(ctx_.workspace) {
    ctx_.stream = side.stream;
    ctx_.workspace = side.workspace;
  }
  ~OnSide() {
    ctx_.stream = stream_;
    ctx_.workspace = workspace_;
  }
  OnSide(const OnSide&) = delete;
  OnSide& operator=(const OnSide&) = delete;

 private:
  cuda::Context& ctx_;
  cudaStream_t stream_;
  void* workspace_;
};

// The (in, out) of a RoBERTa-base layer's matrices: Q|K|V, the attention output, the FFN's two.
constexpr int64_t kLayerShapes[][2] = {{768, 2304}, {768, 768}, {768, 3072}, {3072, 768}};

// Operands of a layer's GEMMs at up to `tokens` tokens: random (a product of zeros runs faster
// than real data), one buffer per role, each shape and token count taking its first rows·cols
// elements.
struct LayerOperands {
  static constexpr int64_t kWidest = 3072, kWeight = 3072 * 768;
  int64_t tokens;
  Tensor x, dy, w, y, dx, dw;
  explicit LayerOperands(int64_t max_tokens) : tokens(max_tokens) {
    std::mt19937 rng(9);
    x = uniform({tokens, kWidest}, rng, -1, 1, DType::bf16);
    dy = uniform({tokens, kWidest}, rng, -1, 1, DType::bf16);
    w = uniform({kWeight}, rng, -0.05f, 0.05f, DType::bf16);
    y = Tensor::empty({tokens, kWidest}, DType::bf16, kGpu);
    dx = Tensor::empty({tokens, kWidest}, DType::bf16, kGpu);
    dw = Tensor::zeros({kWeight}, DType::f32, kGpu);
  }
  // y [t, out] = x·Wᵀ, dx [t, in] = dy·W, dW [out, in] += dyᵀ·x (f32, as the parameters' gradients).
  void forward(int64_t t, int64_t in, int64_t out) {
    cuda::gemm(DType::bf16, DType::bf16, false, true, 1, t, out, in, 1.0, x.raw(), w.raw(), 0.0, y.raw());
  }
  void input_gradient(int64_t t, int64_t in, int64_t out) {
    cuda::gemm(DType::bf16, DType::bf16, false, false, 1, t, in, out, 1.0, dy.raw(), w.raw(), 0.0, dx.raw());
  }
  void weight_gradient(int64_t t, int64_t in, int64_t out) {
    cuda::gemm(DType::bf16, DType::f32, true, false, 1, out, in, t, 1.0, dy.raw(), x.raw(), 1.0, dw.raw());
  }
};

double layer_flops_per_token() {
  double flops = 0;
  for (const auto& shape : kLayerShapes) flops += 3 * 2.0 * static_cast<double>(shape[0] * shape[1]);
  return flops;
}

// A layer's GEMMs, without their epilogues (y = x·Wᵀ, dx = dy·W and dW += dyᵀ·x of each
// matrix), over each token count of `passes` in turn, and over their sum in one pass.
void layer_gemms(LayerOperands& o, const char* name, const std::vector<int64_t>& passes) {
  int64_t total = 0;
  for (int64_t t : passes) total += t;
  QARAC_CHECK(total <= o.tokens, "layer_gemms: ", total, " tokens over operands of ", o.tokens);
  const auto layer = [&](int64_t t) {
    for (const auto& shape : kLayerShapes) {
      o.forward(t, shape[0], shape[1]);
      o.input_gradient(t, shape[0], shape[1]);
      o.weight_gradient(t, shape[0], shape[1]);
    }
  };
  const double t_one = time_ms([&] { layer(total); });
  const double t_separate = time_ms([&] {
    for (int64_t t : passes) layer(t);
  });
  const double flops = layer_flops_per_token() * static_cast<double>(total);
  std::string split;
  for (int64_t t : passes) split += (split.empty() ? "" : "+") + std::to_string(t);
  std::printf("layer GEMMs %-30s one-pass %7.4f ms (%5.1f TFLOP/s over %lld tokens)  separate %7.4f ms (%5.1f TFLOP/s "
              "over %s)  separate/one-pass %.2f\n",
              name, t_one, flops / t_one * 1e-9, static_cast<long long>(total), t_separate,
              flops / t_separate * 1e-9, split.c_str(), t_separate / t_one);
}

// A layer's backward GEMMs at `tokens` tokens, last matrix first: input and weight gradient of
// each on the one stream, against each weight gradient on a second stream beside the input
// gradients (ordered after its dy by an event, joined at the end).
void weight_gradients_beside(LayerOperands& o, int64_t tokens) {
  QARAC_CHECK(tokens <= o.tokens, "weight_gradients_beside: ", tokens, " tokens over operands of ", o.tokens);
  SideStream side;
  cudaEvent_t ready, joined;
  QARAC_CHECK_CUDA(cudaEventCreateWithFlags(&ready, cudaEventDisableTiming));
  QARAC_CHECK_CUDA(cudaEventCreateWithFlags(&joined, cudaEventDisableTiming));
  const double t_one = time_ms([&] {
    for (int i = 3; i >= 0; --i) {
      o.input_gradient(tokens, kLayerShapes[i][0], kLayerShapes[i][1]);
      o.weight_gradient(tokens, kLayerShapes[i][0], kLayerShapes[i][1]);
    }
  });
  const double t_beside = time_ms([&] {
    for (int i = 3; i >= 0; --i) {
      QARAC_CHECK_CUDA(cudaEventRecord(ready, cuda::stream()));
      QARAC_CHECK_CUDA(cudaStreamWaitEvent(side.stream, ready, 0));
      {
        const OnSide on_side(side);
        o.weight_gradient(tokens, kLayerShapes[i][0], kLayerShapes[i][1]);
      }
      o.input_gradient(tokens, kLayerShapes[i][0], kLayerShapes[i][1]);
    }
    QARAC_CHECK_CUDA(cudaEventRecord(joined, side.stream));
    QARAC_CHECK_CUDA(cudaStreamWaitEvent(cuda::stream(), joined, 0));
  });
  QARAC_CHECK_CUDA(cudaEventDestroy(ready));
  QARAC_CHECK_CUDA(cudaEventDestroy(joined));
  const double flops = layer_flops_per_token() * 2 / 3 * static_cast<double>(tokens);
  char name[48];
  std::snprintf(name, sizeof name, "T=%lld", static_cast<long long>(tokens));
  std::printf("layer backward GEMMs %-21s one-stream %7.4f ms (%5.1f TFLOP/s)  dW-beside %7.4f ms (%5.1f TFLOP/s)  "
              "one-stream/dW-beside %.2f\n",
              name, t_one, flops / t_one * 1e-9, t_beside, flops / t_beside * 1e-9, t_one / t_beside);
}

int parse_count(const char* flag, const char* value, long least) {
  char* end = nullptr;
  const long n = value ? std::strtol(value, &end, 10) : -1;
  if (!value || end == value || *end != '\0' || n < least || n > 100000) {
    std::fprintf(stderr, "bench_kernels: %s needs a count in [%ld, 100000], got '%s'\n", flag, least,
                 value ? value : "");
    std::exit(2);
  }
  return static_cast<int>(n);
}

}  // namespace
}  // namespace qarac

int main(int argc, char** argv) {
  using namespace qarac;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg == "--warmup") {
      warmup = parse_count("--warmup", i + 1 < argc ? argv[++i] : nullptr, 0);
    } else if (arg == "--iters") {
      iters = parse_count("--iters", i + 1 < argc ? argv[++i] : nullptr, 1);
    } else {
      std::fprintf(stderr, "usage: bench_kernels [--warmup N] [--iters N] (unknown argument '%s')\n", arg.c_str());
      return 2;
    }
  }
  if (cuda_device_count() == 0) {
    std::printf("bench_kernels: no CUDA device: nothing measured\n");
    return 77;
  }
  try {
    std::mt19937 rng(5);
    std::uniform_int_distribution<int32_t> ragged(43, 128);
    std::vector<int32_t> full(64, 128), uneven(64);
    for (int32_t& n : uneven) n = ragged(rng);
    attention("S=128 B=64", full, 0.0);
    attention("S=128 B=64 ragged", uneven, 0.0);
    attention("S=128 B=64 ragged dropout 0.1", uneven, 0.1);
    // A small batch: 96 blocks of the one-block kernel, under one per SM (does it still win?).
    attention("S=128 B=8", std::vector<int32_t>(8, 128), 0.0);
    layernorm("T=8192 d=768", 8192, false);
    layernorm("T=8192 d=768 branch dropout", 8192, true);
    // A small pass (a short field, evaluation): 32 blocks of the one-pass kernel.
    layernorm("T=1024 d=768", 1024, false);
    // qarac-bench's QARAC step at B=64: fields of 64 (text, answers), 32 (questions, premises,
    // conclusions) and 48 (statements) tokens; 18432 tokens are AE's in all four tasks.
    LayerOperands operands(18432);
    layer_gemms(operands, "AE, reasoning's premises", {2048, 2048});
    layer_gemms(operands, "AE, consistency's statements", {3072, 3072});
    layer_gemms(operands, "AE, every task's fields", {4096, 4096, 4096, 6144});
    layer_gemms(operands, "D, encode_decode and reasoning", {4096, 2048});
    for (int64_t tokens : {2048, 4096, 8192}) weight_gradients_beside(operands, tokens);
    // Token ids of 8192 rows: even (runs of one or two rows), Zipf (the commonest id on 1/H(50265),
    // about 9% of the rows), and Zipf with 15% of the rows <mask> (50264).
    std::vector<int32_t> even(8192), zipf(8192), masked(8192);
    std::uniform_int_distribution<int32_t> any(0, 50264);
    for (int32_t& id : even) id = any(rng);
    std::vector<double> weights(50265);
    for (size_t k = 0; k < weights.size(); ++k) weights[k] = 1.0 / static_cast<double>(k + 1);
    std::discrete_distribution<int32_t> words(weights.begin(), weights.end());
    std::bernoulli_distribution mask(0.15);
    for (size_t i = 0; i < zipf.size(); ++i) {
      zipf[i] = words(rng);
      masked[i] = mask(rng) ? 50264 : zipf[i];
    }
    embedding_gradient("T=8192 even ids", even);
    embedding_gradient("T=8192 Zipf ids", zipf);
    embedding_gradient("T=8192 Zipf, 15% <mask>", masked);
  } catch (const Error& e) {
    std::fprintf(stderr, "bench_kernels: %s\n", e.what());
    return 1;
  }
  return 0;
}
