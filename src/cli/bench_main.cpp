// qarac-bench: throughput figures (never pass/fail). The RoBERTa encoder's forward + backward
// step on the CPU reference backend, for a randomly initialised model of the given size.
#include <cblas.h>  // openblas_get_num_threads

#include <chrono>
#include <cstdio>
#include <iostream>
#include <random>
#include <vector>

#include "cli/run_main.h"
#include "model/init.h"
#include "model/roberta.h"

namespace po = boost::program_options;
using namespace qarac;

namespace {

struct BenchConfig {
  int64_t hidden = 256, layers = 4, heads = 4, ffn = 0, vocab = 50265;
  int64_t seq = 128, batch = 8;
  int warmup = 1, iters = 5;
  bool ragged = false, dropout = false;
  uint64_t seed = 1;
};

// Random token ids; ragged batches draw each length uniformly from [S/3, S] (padding at the end).
TokenBatch random_batch(const BenchConfig& c, std::mt19937_64& gen, int64_t& real_tokens) {
  std::uniform_int_distribution<int32_t> token(3, static_cast<int32_t>(c.vocab - 1));
  std::uniform_int_distribution<int64_t> length(c.ragged ? std::max<int64_t>(1, c.seq / 3) : c.seq, c.seq);
  std::vector<int32_t> ids(static_cast<size_t>(c.batch * c.seq), 1), mask(ids.size(), 0);
  real_tokens = 0;
  for (int64_t b = 0; b < c.batch; ++b) {
    const int64_t len = length(gen);
    real_tokens += len;
    for (int64_t t = 0; t < len; ++t) {
      ids[static_cast<size_t>(b * c.seq + t)] = token(gen);
      mask[static_cast<size_t>(b * c.seq + t)] = 1;
    }
  }
  return {Tensor::from_vector(ids, {c.batch, c.seq}), Tensor::from_vector(mask, {c.batch, c.seq})};
}

// Matrix FLOPs of one forward pass over a padded batch (the backward costs twice as much).
double forward_flops(const BenchConfig& c) {
  const double n = static_cast<double>(c.batch * c.seq), d = static_cast<double>(c.hidden);
  const double f = static_cast<double>(c.ffn), s = static_cast<double>(c.seq);
  const double per_layer = 2 * n * d * (4 * d + 2 * f) + 4 * n * s * d;  // projections + QKᵀ and PV
  return per_layer * static_cast<double>(c.layers);
}

int run(int argc, char** argv) {
  BenchConfig c;
  po::options_description options(
      "qarac-bench [options]\n\nCPU forward + backward throughput of a RoBERTa encoder (random weights).\n\nOptions");
  options.add_options()
      ("help,h", "print this help")
      ("hidden", po::value(&c.hidden)->default_value(c.hidden), "hidden size d")
      ("layers", po::value(&c.layers)->default_value(c.layers), "transformer layers")
      ("heads", po::value(&c.heads)->default_value(c.heads), "attention heads")
      ("ffn", po::value(&c.ffn)->default_value(0), "feed-forward size (0: 4 d)")
      ("vocab", po::value(&c.vocab)->default_value(c.vocab), "vocabulary size")
      ("seq", po::value(&c.seq)->default_value(c.seq), "sequence length S")
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
  if (c.ffn == 0) c.ffn = 4 * c.hidden;
  QARAC_INPUT_CHECK(c.hidden > 0 && c.layers > 0 && c.heads > 0 && c.seq > 0 && c.batch > 0 && c.iters > 0,
                    "--hidden, --layers, --heads, --seq, --batch and --iters must be positive");
  QARAC_INPUT_CHECK(c.hidden % c.heads == 0, "--hidden ", c.hidden, " is not divisible by --heads ", c.heads);

  RobertaConfig config;
  config.vocab_size = c.vocab;
  config.hidden_size = c.hidden;
  config.num_layers = c.layers;
  config.num_heads = c.heads;
  config.intermediate_size = c.ffn;
  config.max_position_embeddings = c.seq + 2;
  config.hidden_dropout = config.attention_dropout = c.dropout ? 0.1 : 0.0;
  RobertaEncoder encoder(config, DType::f32, Device::cpu());
  ParameterList params = encoder.parameters();
  init_normal(params, 0.02, c.seed);

  std::mt19937_64 gen(c.seed);
  RobertaEncoder::Activations acts;
  Tensor grad;
  double seconds = 0;
  int64_t real_tokens_total = 0;
  for (int it = 0; it < c.warmup + c.iters; ++it) {
    int64_t real_tokens = 0;
    const TokenBatch batch = random_batch(c, gen, real_tokens);
    ForwardOptions opts;
    opts.training = true;
    opts.step = static_cast<uint64_t>(it);
    const auto t0 = std::chrono::steady_clock::now();
    const Tensor& h = encoder.forward(batch, opts, acts);
    if (!grad.defined()) {
      grad = Tensor::empty(h.shape(), DType::f32);
      std::vector<float> g(static_cast<size_t>(h.numel()));
      std::normal_distribution<float> normal(0.f, 1e-3f);
      for (float& x : g) x = normal(gen);
      grad.copy_(Tensor::from_vector(g, h.shape()));
    }
    zero_grads(params);
    encoder.backward(acts, grad);
    const double dt = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    if (it >= c.warmup) {
      seconds += dt;
      real_tokens_total += real_tokens;
    }
  }
  const double padded_tokens = static_cast<double>(c.batch * c.seq * c.iters);
  const double gflops = 3 * forward_flops(c) * c.iters / seconds / 1e9;
  std::printf("qarac-bench cpu encoder fwd+bwd: d=%lld layers=%lld heads=%lld ffn=%lld S=%lld B=%lld%s, "
              "%d OpenBLAS threads\n",
              static_cast<long long>(c.hidden), static_cast<long long>(c.layers), static_cast<long long>(c.heads),
              static_cast<long long>(c.ffn), static_cast<long long>(c.seq), static_cast<long long>(c.batch),
              c.ragged ? " ragged" : "", openblas_get_num_threads());
  std::printf("  %.1f ms/step, %.0f tokens/s (padded), %.0f tokens/s (real), %.1f GFLOP/s (matrix work)\n",
              1e3 * seconds / c.iters, padded_tokens / seconds, static_cast<double>(real_tokens_total) / seconds,
              gflops);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  return cli::run_main("qarac-bench", [&] { return run(argc, argv); });
}
