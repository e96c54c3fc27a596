// qarac-bench: throughput figures (never pass/fail) of the RoBERTa training workloads, on the CPU
// reference backend or on CUDA. Workloads:
//   encoder     forward + backward of the encoder alone (random gradient at its output)
//   classifier  a full fine-tuning step: encoder, pooling head, classifier, cross-entropy,
//               backward, AdamW (the workload PyTorch's RobertaForSequenceClassification runs)
// Batches are random token ids, padding-free; --ragged draws lengths uniformly from [S/3, S].
// On CUDA the bf16 GEMM peak is measured in the same run (8192³ through cuBLASLt) as the
// denominator of "fraction of peak".
#include <cblas.h>  // openblas_get_num_threads

#include <chrono>
#include <cstdio>
#include <iostream>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "cli/run_main.h"
#include "model/init.h"
#include "train/optimizer.h"
#include "train/sequence_classifier.h"
#ifdef QARAC_HAVE_CUDA
#include "kernels/cuda/context.cuh"
#endif

namespace po = boost::program_options;
using namespace qarac;

namespace {

struct BenchConfig {
  std::string workload = "encoder", device = "cpu", dtype = "f32", preset;
  int64_t hidden = 256, layers = 4, heads = 4, ffn = 0, vocab = 50265, labels = 2;
  int64_t seq = 128, batch = 8;
  int warmup = 1, iters = 5;
  bool ragged = false, dropout = false;
  uint64_t seed = 1;
};

void synchronize(Device device) {
#ifdef QARAC_HAVE_CUDA
  if (device.is_cuda()) cuda::synchronize();
#else
  (void)device;
#endif
}

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

// Random sequences; ragged batches draw each length uniformly from [S/3, S].
std::vector<std::vector<int32_t>> random_sequences(const BenchConfig& c, std::mt19937_64& gen) {
  std::uniform_int_distribution<int32_t> token(3, static_cast<int32_t>(c.vocab - 1));
  std::uniform_int_distribution<int64_t> length(c.ragged ? std::max<int64_t>(1, c.seq / 3) : c.seq, c.seq);
  std::vector<std::vector<int32_t>> seqs(static_cast<size_t>(c.batch));
  for (auto& s : seqs) {
    s.resize(static_cast<size_t>(length(gen)));
    for (int32_t& t : s) t = token(gen);
  }
  return seqs;
}

// A tensor shaped like `like` with N(0, std²) entries.
Tensor random_like(const Tensor& like, double std, uint64_t seed) {
  std::mt19937_64 gen(seed);
  std::normal_distribution<double> normal(0.0, std);
  std::vector<double> values(static_cast<size_t>(like.numel()));
  for (double& x : values) x = normal(gen);
  return Tensor::from_vector(values, like.shape()).to(like.dtype()).to(like.device());
}

// Matrix FLOPs of one forward pass over these sequences: the projections (4 d² + 2 d f per token)
// and attention (QKᵀ and PV: 4 L² d per sequence of length L, bidirectional). The backward pass
// costs twice the forward, so a training step is 3× this.
double forward_flops(const BenchConfig& c, const std::vector<std::vector<int32_t>>& seqs) {
  const double d = static_cast<double>(c.hidden), f = static_cast<double>(c.ffn);
  double tokens = 0, attention = 0;
  for (const auto& s : seqs) {
    const double len = static_cast<double>(s.size());
    tokens += len;
    attention += 4 * len * len * d;
  }
  return static_cast<double>(c.layers) * (2 * tokens * d * (4 * d + 2 * f) + attention);
}

// Measured bf16 GEMM rate (TFLOP/s) of an 8192³ product, the denominator of "fraction of peak".
double measure_gemm_peak(Device device) {
  const int64_t n = 8192;
  Tensor a = Tensor::zeros({n, n}, DType::bf16, device), b = Tensor::zeros({n, n}, DType::bf16, device);
  Tensor c = Tensor::empty({n, n}, DType::bf16, device);
  // Random-looking operands: a product of zeros runs measurably faster than real data.
  std::vector<float> host(static_cast<size_t>(n * n));
  std::mt19937 gen(7);
  std::uniform_real_distribution<float> u(-1.f, 1.f);
  for (float& x : host) x = u(gen);
  const Tensor random = Tensor::from_vector(host, {n, n}).to(DType::bf16).to(device);
  a.copy_(random);
  b.copy_(random);
  for (int i = 0; i < 3; ++i) ops::gemm(a, b, c, false, false);
  synchronize(device);
  const int reps = 10;
  const auto t0 = std::chrono::steady_clock::now();
  for (int i = 0; i < reps; ++i) ops::gemm(a, b, c, false, false);
  synchronize(device);
  return 2.0 * n * n * n * reps / seconds_since(t0) / 1e12;
}

int run(int argc, char** argv) {
  BenchConfig c;
  po::options_description options(
      "qarac-bench [options]\n\nTraining-step throughput of RoBERTa workloads (random weights and tokens).\n\nOptions");
  options.add_options()
      ("help,h", "print this help")
      ("workload", po::value(&c.workload)->default_value(c.workload), "encoder or classifier")
      ("device", po::value(&c.device)->default_value(c.device), "cpu or cuda")
      ("dtype", po::value(&c.dtype)->default_value(c.dtype), "compute dtype: f32 (cpu, cuda) or bf16 (cuda)")
      ("preset", po::value(&c.preset), "'base': RoBERTa-base sizes (d 768, 12 layers, 12 heads, ffn 3072)")
      ("hidden", po::value(&c.hidden)->default_value(c.hidden), "hidden size d")
      ("layers", po::value(&c.layers)->default_value(c.layers), "transformer layers")
      ("heads", po::value(&c.heads)->default_value(c.heads), "attention heads")
      ("ffn", po::value(&c.ffn)->default_value(0), "feed-forward size (0: 4 d)")
      ("vocab", po::value(&c.vocab)->default_value(c.vocab), "vocabulary size")
      ("labels", po::value(&c.labels)->default_value(c.labels), "classes of the classifier workload")
      ("seq", po::value(&c.seq)->default_value(c.seq), "sequence length S (the longest, with --ragged)")
      ("batch", po::value(&c.batch)->default_value(c.batch), "sequences per batch B")
      ("ragged", po::bool_switch(&c.ragged), "lengths uniform in [S/3, S] instead of all S")
      ("dropout", po::bool_switch(&c.dropout), "train with dropout 0.1 (default: off)")
      ("warmup", po::value(&c.warmup)->default_value(c.warmup), "untimed steps first")
      ("iters", po::value(&c.iters)->default_value(c.iters), "timed steps")
      ("seed", po::value(&c.seed)->default_value(c.seed), "seed of weights and tokens");
  po::variables_map vm;
  po::store(po::parse_command_line(argc, argv, options), vm);
  if (vm.count("help")) {
    std::cout << options << "\n";
    return 0;
  }
  po::notify(vm);
  if (c.preset == "base") {
    c.hidden = 768;
    c.layers = 12;
    c.heads = 12;
  } else {
    QARAC_INPUT_CHECK(c.preset.empty(), "--preset must be 'base', got '", c.preset, "'");
  }
  if (c.ffn == 0) c.ffn = 4 * c.hidden;
  QARAC_INPUT_CHECK(c.workload == "encoder" || c.workload == "classifier",
                    "--workload must be encoder or classifier, got '", c.workload, "'");
  QARAC_INPUT_CHECK(c.device == "cpu" || c.device == "cuda", "--device must be cpu or cuda, got '", c.device, "'");
  QARAC_INPUT_CHECK(c.dtype == "f32" || c.dtype == "bf16", "--dtype must be f32 or bf16, got '", c.dtype, "'");
  QARAC_INPUT_CHECK(c.hidden > 0 && c.layers > 0 && c.heads > 0 && c.seq > 0 && c.batch > 0 && c.iters > 0,
                    "--hidden, --layers, --heads, --seq, --batch and --iters must be positive");
  QARAC_INPUT_CHECK(c.hidden % c.heads == 0, "--hidden ", c.hidden, " is not divisible by --heads ", c.heads);
  const Device device = c.device == "cuda" ? Device::cuda(0) : Device::cpu();
  if (device.is_cuda())
    QARAC_INPUT_CHECK(cuda_device_count() > 0, "--device cuda: no CUDA device is available");
  const DType dtype = c.dtype == "bf16" ? DType::bf16 : DType::f32;

  RobertaConfig config;
  config.vocab_size = c.vocab;
  config.hidden_size = c.hidden;
  config.num_layers = c.layers;
  config.num_heads = c.heads;
  config.intermediate_size = c.ffn;
  config.max_position_embeddings = c.seq + 2;
  config.hidden_dropout = config.attention_dropout = c.dropout ? 0.1 : 0.0;

  // Either workload: `step` runs one timed training step on a batch.
  std::mt19937_64 gen(c.seed);
  std::unique_ptr<SequenceClassifier> classifier;
  std::unique_ptr<RobertaEncoder> encoder;
  std::unique_ptr<AdamWOptimizer> optimizer;
  ParameterList params;
  if (c.workload == "classifier") {
    classifier = std::make_unique<SequenceClassifier>(config, c.labels, dtype, device);
    params = classifier->parameters();
    ops::AdamW hyper;
    hyper.lr = 2e-5;
    optimizer = std::make_unique<AdamWOptimizer>(params, hyper);
  } else {
    encoder = std::make_unique<RobertaEncoder>(config, dtype, device);
    params = encoder->parameters();
  }
  init_normal(params, 0.02, c.seed);
  RobertaEncoder::Activations acts;
  Tensor grad_output;
  std::uniform_int_distribution<int32_t> label(0, static_cast<int32_t>(c.labels - 1));

  double seconds = 0, flops = 0;
  int64_t real_tokens = 0;
  for (int it = 0; it < c.warmup + c.iters; ++it) {
    const std::vector<std::vector<int32_t>> seqs = random_sequences(c, gen);
    const TokenBatch batch = TokenBatch::from_sequences(seqs, config.pad_token_id, device);
    std::vector<int32_t> labels(static_cast<size_t>(c.batch));
    for (int32_t& l : labels) l = label(gen);
    const Tensor label_tensor = Tensor::from_vector(labels, {c.batch}, device);
    ForwardOptions opts;
    opts.training = true;
    opts.step = static_cast<uint64_t>(it);
    synchronize(device);
    const auto t0 = std::chrono::steady_clock::now();
    zero_grads(params);
    if (classifier) {
      classifier->forward_backward(batch, label_tensor, opts);
      optimizer->step(2e-5, /*clip_norm=*/1.0);
    } else {
      const Tensor& h = encoder->forward(batch, opts, acts);
      if (!grad_output.defined() || grad_output.shape() != h.shape())
        grad_output = random_like(h, 1e-3, c.seed);
      encoder->backward(acts, grad_output);
    }
    synchronize(device);
    if (it >= c.warmup) {
      seconds += seconds_since(t0);
      real_tokens += batch.tokens();
      flops += 3 * forward_flops(c, seqs);
    }
  }

  const double padded_tokens = static_cast<double>(c.batch * c.seq * c.iters);
  std::printf("qarac-bench %s %s %s: d=%lld layers=%lld heads=%lld ffn=%lld S=%lld B=%lld%s%s\n",
              c.workload.c_str(), c.device.c_str(), c.dtype.c_str(), static_cast<long long>(c.hidden),
              static_cast<long long>(c.layers), static_cast<long long>(c.heads), static_cast<long long>(c.ffn),
              static_cast<long long>(c.seq), static_cast<long long>(c.batch), c.ragged ? " ragged" : "",
              device.is_cpu() ? (" (" + std::to_string(openblas_get_num_threads()) + " OpenBLAS threads)").c_str() : "");
  std::printf("  %.2f ms/step, %.0f tokens/s real, %.0f tokens/s padded-equivalent, %.1f samples/s, %.2f TFLOP/s",
              1e3 * seconds / c.iters, static_cast<double>(real_tokens) / seconds, padded_tokens / seconds,
              static_cast<double>(c.batch * c.iters) / seconds, flops / seconds / 1e12);
  if (device.is_cuda()) {
    const double peak = measure_gemm_peak(device);
    std::printf(", %.1f%% of the measured bf16 GEMM peak %.0f TFLOP/s", 100 * flops / seconds / 1e12 / peak, peak);
  }
  std::printf("\n");
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  return cli::run_main("qarac-bench", [&] { return run(argc, argv); });
}
