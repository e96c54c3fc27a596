// qarac-bench: throughput figures (never pass/fail) of the RoBERTa training workloads, on the CPU
// reference backend or on CUDA. Workloads:
//   encoder     forward + backward of the encoder alone (random gradient at its output)
//   classifier  a full fine-tuning step: encoder, pooling head, classifier, cross-entropy,
//               backward, AdamW (the workload PyTorch's RobertaForSequenceClassification runs)
//   qarac       the QARAC step: three models, the four objectives on B examples each, AdamW;
//               a sample is one example of every task (B samples per step), as the CUDA
//               issue's PyTorch figure counts them
//   decode      greedy decoding (the evaluation's, qarac-generate's) of B random vectors to S
//               tokens each with the QARAC decoder, over its key/value cache; tokens are those
//               generated
// Batches are random token ids, padding-free; --ragged draws lengths uniformly from [S/3, S].
// On CUDA the bf16 GEMM peak is measured in the same run (8192³ through cuBLASLt) as the
// denominator of "fraction of peak". The timed steps are bracketed by cudaProfilerStart/Stop, so
// `nsys profile --capture-range=cudaProfilerApi` records them alone (tests/device/breakdown.sh).
#include <cblas.h>  // openblas_get_num_threads, openblas_get_corename

#include <chrono>
#include <cstdio>
#include <limits>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "cli/run_main.h"
#include "cli/version.h"
#include "core/memory.h"
#include "kernels/backend.h"
#include "model/generate.h"
#include "model/init.h"
#include "model/qarac.h"
#include "train/objectives.h"
#include "train/optimizer.h"
#include "train/sequence_classifier.h"
#ifdef QARAC_HAVE_CUDA
#include <cuda_profiler_api.h>

#include "core/check_cuda.h"
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

// Opens (start) or closes the range a profiler attached with --capture-range=cudaProfilerApi
// records: the timed steps only, without the warmup, the model's setup and the GEMM peak
// measurement. Without such a profiler both calls do nothing.
void profile_range(Device device, bool start) {
#ifdef QARAC_HAVE_CUDA
  if (device.is_cuda()) QARAC_CHECK_CUDA(start ? cudaProfilerStart() : cudaProfilerStop());
#else
  (void)device;
  (void)start;
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

// What one timed step processed.
struct StepCount {
  int64_t real_tokens = 0, padded_tokens = 0, samples = 0;
  double flops = 0;
  StepCount& operator+=(const StepCount& o) {
    real_tokens += o.real_tokens;
    padded_tokens += o.padded_tokens;
    samples += o.samples;
    flops += o.flops;
    return *this;
  }
};

// A benchmark workload: prepare() builds the next batch (untimed), step() runs it.
class BenchWorkload {
 public:
  virtual ~BenchWorkload() = default;
  virtual StepCount prepare(std::mt19937_64& gen) = 0;
  virtual void step(uint64_t it) = 0;
  virtual std::string lengths() const = 0;
};

ForwardOptions training_options(uint64_t it) {
  ForwardOptions opts;
  opts.training = true;
  opts.step = it;
  return opts;
}

// The encoder alone, forward and backward with a fixed random gradient at its output.
class EncoderBench : public BenchWorkload {
 public:
  EncoderBench(const BenchConfig& c, const RobertaConfig& config, DType dtype, Device device)
      : c_(c), device_(device), encoder_(config, dtype, device) {
    init_normal(encoder_.parameters(), 0.02, c.seed);
  }
  StepCount prepare(std::mt19937_64& gen) override {
    const auto seqs = random_sequences(c_, gen);
    batch_ = TokenBatch::from_sequences(seqs, encoder_.config().pad_token_id, device_);
    return {batch_.tokens(), c_.batch * c_.seq, c_.batch, 3 * forward_flops(c_, seqs)};
  }
  void step(uint64_t it) override {
    zero_grads(encoder_.parameters());
    const Tensor& h = encoder_.forward(batch_, training_options(it), acts_);
    if (!grad_.defined() || grad_.shape() != h.shape()) grad_ = random_like(h, 1e-3, c_.seed);
    encoder_.backward(acts_, grad_);
  }
  std::string lengths() const override { return "S=" + std::to_string(c_.seq); }

 private:
  const BenchConfig& c_;
  Device device_;
  RobertaEncoder encoder_;
  RobertaEncoder::Activations acts_;
  TokenBatch batch_;
  Tensor grad_;
};

// A fine-tuning step: encoder, pooling head, classifier, cross-entropy, backward, AdamW.
class ClassifierBench : public BenchWorkload {
 public:
  ClassifierBench(const BenchConfig& c, const RobertaConfig& config, DType dtype, Device device)
      : c_(c), device_(device), model_(config, c.labels, dtype, device), params_(model_.parameters()),
        optimizer_(params_, adamw()) {
    init_normal(params_, 0.02, c.seed);
  }
  StepCount prepare(std::mt19937_64& gen) override {
    const auto seqs = random_sequences(c_, gen);
    batch_ = TokenBatch::from_sequences(seqs, model_.encoder().config().pad_token_id, device_);
    std::uniform_int_distribution<int32_t> label(0, static_cast<int32_t>(c_.labels - 1));
    std::vector<int32_t> labels(static_cast<size_t>(c_.batch));
    for (int32_t& l : labels) l = label(gen);
    labels_ = Tensor::from_vector(labels, {c_.batch}, device_);
    return {batch_.tokens(), c_.batch * c_.seq, c_.batch, 3 * forward_flops(c_, seqs)};
  }
  void step(uint64_t it) override {
    zero_grads(params_);
    model_.forward_backward(batch_, labels_, training_options(it));
    optimizer_.step(2e-5, /*clip_norm=*/1.0);
  }
  std::string lengths() const override { return "S=" + std::to_string(c_.seq); }

 private:
  static ops::AdamW adamw() {
    ops::AdamW hyper;
    hyper.lr = 2e-5;
    return hyper;
  }
  const BenchConfig& c_;
  Device device_;
  SequenceClassifier model_;
  ParameterList params_;
  Optimizer optimizer_;
  TokenBatch batch_;
  Tensor labels_;
};

// The QARAC step (docs/design.md §3): the three models, the four tasks of B examples each,
// backward, AdamW. Field lengths (tokens, <s> and </s> included) as the CUDA issue specifies them;
// with --ragged each is drawn uniformly from [L/3, L].
struct QaracLengths {
  int64_t text = 64, question = 32, answer = 64, premise = 32, conclusion = 32, statement = 48;
};
constexpr QaracLengths kQaracLengths;

class QaracBench : public BenchWorkload {
 public:
  QaracBench(const BenchConfig& c, const RobertaConfig& config, DType dtype, Device device) : c_(c) {
    RobertaEncoder base(config, DType::f32, Device::cpu());  // random "pre-trained" weights
    init_normal(base.parameters(), 0.02, c.seed);
    TensorMap weights;
    for (const Parameter* p : base.parameters()) weights[p->name] = p->master;
    QaracConfig qc;
    qc.base = config;
    qc.init_seed = c.seed;
    models_ = std::make_unique<QaracModels>(qc, weights, dtype, device);
    objectives_ = std::make_unique<Objectives>(*models_);
    params_ = models_->parameters();
    optimizer_ = std::make_unique<Optimizer>(params_, ops::AdamW{});
  }
  StepCount prepare(std::mt19937_64& gen) override {
    const QaracLengths& L = kQaracLengths;
    batches_.clear();
    StepCount count;
    using data::Task;
    const std::pair<Task, std::vector<int64_t>> tasks[] = {
        {Task::encode_decode, {L.text}},
        {Task::question_answering, {L.question, L.answer}},
        {Task::reasoning, {L.premise, L.premise, L.conclusion}},
        {Task::consistency, {L.statement, L.statement}}};
    const RobertaConfig& config = models_->config().base;
    for (const auto& [task, lengths] : tasks) {
      data::TaskBatch b;
      b.task = task;
      for (int64_t i = 0; i < c_.batch; ++i) b.examples.push_back(i);
      std::vector<std::vector<std::vector<int32_t>>> fields;
      for (int64_t longest : lengths) {
        fields.push_back(random_fields(longest, gen, config.vocab_size));
        data::PackedField f;
        f.starts.push_back(0);
        for (const auto& s : fields.back()) {
          f.tokens.insert(f.tokens.end(), s.begin(), s.end());
          f.starts.push_back(static_cast<int32_t>(f.tokens.size()));
        }
        count.real_tokens += static_cast<int64_t>(f.tokens.size());
        count.padded_tokens += c_.batch * longest;
        b.fields.push_back(std::move(f));
      }
      if (task == Task::consistency)
        for (int64_t i = 0; i < c_.batch; ++i) b.labels.push_back(static_cast<float>(i % 3) - 1.f);
      count.flops += 3 * task_flops(task, fields);
      batches_.push_back(std::move(b));
    }
    count.samples = c_.batch;
    return count;
  }
  void step(uint64_t it) override {
    zero_grads(params_);
    for (const data::TaskBatch& b : batches_) {
      ObjectiveOptions options;
      options.forward = training_options(it);
      objectives_->run(b, options);
    }
    optimizer_->step(2e-5, /*clip_norm=*/1.0);
  }
  std::string lengths() const override {
    return "lengths text 64, question 32, answer 64, premises 32, conclusion 32, statements 48";
  }

 private:
  // "<s> tokens </s>" of a length drawn as --ragged says.
  std::vector<std::vector<int32_t>> random_fields(int64_t longest, std::mt19937_64& gen, int64_t vocab) const {
    std::uniform_int_distribution<int32_t> token(3, static_cast<int32_t>(vocab - 1));
    std::uniform_int_distribution<int64_t> length(c_.ragged ? std::max<int64_t>(3, longest / 3) : longest, longest);
    std::vector<std::vector<int32_t>> out(static_cast<size_t>(c_.batch));
    for (auto& s : out) {
      s.resize(static_cast<size_t>(length(gen)));
      for (int32_t& t : s) t = token(gen);
      s.front() = 0;
      s.back() = 2;
    }
    return out;
  }
  // Forward matrix FLOPs of one RoBERTa pass over sequences of these lengths.
  double pass_flops(const std::vector<int64_t>& lens, int64_t layers) const {
    const double d = static_cast<double>(c_.hidden), f = static_cast<double>(c_.ffn);
    double tokens = 0, attention = 0;
    for (int64_t l : lens) {
      tokens += static_cast<double>(l);
      attention += 4.0 * static_cast<double>(l * l) * d;
    }
    return static_cast<double>(layers) * (2 * tokens * d * (4 * d + 2 * f) + attention);
  }
  // Each field read by an encoder is one pass; a decoded field y is a causal pass over "<s> y"
  // (its length − 1), the two head layers (one over length, one over length − 1) and the LM head.
  double task_flops(data::Task task, const std::vector<std::vector<std::vector<int32_t>>>& fields) const {
    auto lens = [](const std::vector<std::vector<int32_t>>& seqs, int64_t delta) {
      std::vector<int64_t> out;
      for (const auto& s : seqs) out.push_back(static_cast<int64_t>(s.size()) + delta);
      return out;
    };
    const double d = static_cast<double>(c_.hidden), v = static_cast<double>(c_.vocab);
    auto decoder = [&](const std::vector<std::vector<int32_t>>& y) {
      double t = 0;
      for (const auto& s : y) t += static_cast<double>(s.size() - 1);
      return pass_flops(lens(y, -1), c_.layers) + pass_flops(lens(y, 0), 1) + pass_flops(lens(y, -1), 1) +
             2 * t * d * (d + v);
    };
    double flops = 0;
    const bool decodes = task == data::Task::encode_decode || task == data::Task::reasoning;
    const size_t encoded = task == data::Task::encode_decode ? 1 : task == data::Task::reasoning ? 2 : fields.size();
    for (size_t i = 0; i < encoded; ++i) flops += pass_flops(lens(fields[i], 0), c_.layers);
    if (decodes) flops += decoder(fields.back());
    return flops;
  }

  const BenchConfig& c_;
  std::unique_ptr<QaracModels> models_;
  std::unique_ptr<Objectives> objectives_;
  ParameterList params_;
  std::unique_ptr<Optimizer> optimizer_;
  std::vector<data::TaskBatch> batches_;
};

// Greedy decoding: B random vectors (as large as the encoders' pooled vectors are, about the
// hidden states') decoded from "<s>" to S tokens each, no stop token. FLOPs: the GEMMs of every
// position run, the attention over the cache left out (at most 4·S·d a position and layer).
class DecodeBench : public BenchWorkload {
 public:
  DecodeBench(const BenchConfig& c, const RobertaConfig& config, DType dtype, Device device)
      : c_(c), device_(device), config_(config),
        decoder_(config, /*tie_lm_head=*/false, /*vocab_multiple=*/64, dtype, device, 0) {
    init_normal(decoder_.parameters(), 0.02, c.seed);
  }
  StepCount prepare(std::mt19937_64& gen) override {
    std::normal_distribution<float> normal(0.f, 1.f);
    std::vector<float> v(static_cast<size_t>(c_.batch * config_.hidden_size));
    for (float& x : v) x = normal(gen);
    vectors_ = Tensor::from_vector(v, {c_.batch, config_.hidden_size}, device_).to(decoder_.base().dtype());
    const double d = static_cast<double>(config_.hidden_size), ffn = static_cast<double>(config_.intermediate_size);
    const double per_position = static_cast<double>(config_.num_layers + 2) * 2 * (4 * d * d + 2 * d * ffn) +
                                2 * d * d + 2 * d * static_cast<double>(config_.vocab_size);
    const int64_t tokens = c_.batch * c_.seq;
    return {tokens, tokens, c_.batch, per_position * static_cast<double>(tokens)};
  }
  void step(uint64_t) override {
    const std::vector<std::vector<int32_t>> starts(static_cast<size_t>(c_.batch), {config_.bos_token_id});
    greedy_decode(decoder_, vectors_, starts, c_.seq);
  }
  std::string lengths() const override { return "S=" + std::to_string(c_.seq) + " new tokens"; }

 private:
  const BenchConfig& c_;
  Device device_;
  RobertaConfig config_;
  Decoder decoder_;
  Tensor vectors_;
};

int run(int argc, char** argv) {
  BenchConfig c;
  po::options_description options(
      "qarac-bench [options]\n\nTraining-step (and greedy decoding) throughput of RoBERTa workloads (random weights and tokens).\n\nOptions");
  options.add_options()
      ("help,h", "print this help")
      ("version", "print the version, the git commit and the libraries' versions, and exit")
      ("workload", po::value(&c.workload)->default_value(c.workload), "encoder, classifier, qarac or decode")
      ("device", po::value(&c.device)->default_value(c.device), "cpu or cuda")
      ("dtype", po::value(&c.dtype)->default_value(c.dtype), "compute dtype: f32 (cpu, cuda) or bf16 (cuda)")
      ("preset", po::value(&c.preset), "'base': RoBERTa-base sizes (d 768, 12 layers, 12 heads, ffn 3072)")
      ("hidden", po::value(&c.hidden)->default_value(c.hidden), "hidden size d")
      ("layers", po::value(&c.layers)->default_value(c.layers), "transformer layers")
      ("heads", po::value(&c.heads)->default_value(c.heads), "attention heads")
      ("ffn", po::value(&c.ffn)->default_value(0), "feed-forward size (0: 4 d)")
      ("vocab", po::value(&c.vocab)->default_value(c.vocab), "vocabulary size")
      ("labels", po::value(&c.labels)->default_value(c.labels), "classes of the classifier workload")
      ("seq", po::value(&c.seq)->default_value(c.seq), "sequence length S (the longest, with --ragged); qarac: fixed lengths; decode: tokens generated")
      ("batch", po::value(&c.batch)->default_value(c.batch), "sequences per batch B (qarac: per task)")
      ("ragged", po::bool_switch(&c.ragged), "lengths uniform in [S/3, S] instead of all S")
      ("dropout", po::bool_switch(&c.dropout), "train with dropout 0.1 (default: off)")
      ("warmup", po::value(&c.warmup)->default_value(c.warmup), "untimed steps first")
      ("iters", po::value(&c.iters)->default_value(c.iters), "timed steps")
      ("seed", po::value(&c.seed)->default_value(c.seed), "seed of weights and tokens");
  po::variables_map vm;
  if (!cli::parse_command_line(argc, argv, options, vm)) return 0;
  if (c.preset == "base") {
    for (const char* size : {"hidden", "layers", "heads", "ffn"})
      QARAC_INPUT_CHECK(vm[size].defaulted(), "--preset base sets --", size, ": give one or the other");
    c.hidden = 768;
    c.layers = 12;
    c.heads = 12;
  } else {
    QARAC_INPUT_CHECK(c.preset.empty(), "--preset must be 'base', got '", c.preset, "'");
  }
  QARAC_INPUT_CHECK(c.workload == "encoder" || c.workload == "classifier" || c.workload == "qarac" ||
                        c.workload == "decode",
                    "--workload must be encoder, classifier, qarac or decode, got '", c.workload, "'");
  QARAC_INPUT_CHECK(c.device == "cpu" || c.device == "cuda", "--device must be cpu or cuda, got '", c.device, "'");
  QARAC_INPUT_CHECK(c.dtype == "f32" || c.dtype == "bf16", "--dtype must be f32 or bf16, got '", c.dtype, "'");
  QARAC_INPUT_CHECK(c.dtype != "bf16" || c.device == "cuda",
                    "--dtype bf16 needs --device cuda (the benchmark computes in f32 on the CPU)");
  const auto at_least = [](const char* option, int64_t value, int64_t least) {
    QARAC_INPUT_CHECK(value >= least, option, " must be at least ", least, ", got ", value);
  };
  at_least("--hidden", c.hidden, 1);
  at_least("--layers", c.layers, 1);
  at_least("--heads", c.heads, 1);
  at_least("--ffn", c.ffn, 0);
  // Random tokens are drawn from 3 on: ids 0-2 are RoBERTa's <s>, <pad> and </s>.
  at_least("--vocab", c.vocab, 4);
  if (c.workload == "classifier") at_least("--labels", c.labels, 1);
  QARAC_INPUT_CHECK(c.workload != "decode" || (!c.ragged && !c.dropout),
                    "--ragged and --dropout are training options: --workload decode decodes S tokens, without dropout");
  at_least("--seq", c.seq, 1);
  at_least("--batch", c.batch, 1);
  at_least("--warmup", c.warmup, 0);
  at_least("--iters", c.iters, 1);
  QARAC_INPUT_CHECK(c.vocab <= std::numeric_limits<int32_t>::max(), "--vocab must be at most ",
                    std::numeric_limits<int32_t>::max(), " (token ids are int32), got ", c.vocab);
  QARAC_INPUT_CHECK(c.hidden % c.heads == 0, "--hidden ", c.hidden, " is not divisible by --heads ", c.heads);
  if (c.ffn == 0) c.ffn = 4 * c.hidden;
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
  config.max_position_embeddings = (c.workload == "qarac" ? kQaracLengths.text : c.seq) + 2;
  config.hidden_dropout = config.attention_dropout = c.dropout ? 0.1 : 0.0;

  std::unique_ptr<BenchWorkload> workload;
  if (c.workload == "encoder")
    workload = std::make_unique<EncoderBench>(c, config, dtype, device);
  else if (c.workload == "classifier")
    workload = std::make_unique<ClassifierBench>(c, config, dtype, device);
  else if (c.workload == "qarac")
    workload = std::make_unique<QaracBench>(c, config, dtype, device);
  else
    workload = std::make_unique<DecodeBench>(c, config, dtype, device);

  std::mt19937_64 gen(c.seed);
  double seconds = 0;
  StepCount total;
  uint64_t ops = 0, memory = 0, allocations = 0;  // over the timed steps
  for (int it = 0; it < c.warmup + c.iters; ++it) {
    const StepCount count = workload->prepare(gen);  // batches built and uploaded, untimed
    synchronize(device);
    if (it == c.warmup) {
      profile_range(device, true);
      reset_memory_peaks();
    }
    const uint64_t ops0 = ops::dispatched_ops(), memory0 = memory_calls(), allocations0 = buffer_allocations();
    const auto t0 = std::chrono::steady_clock::now();
    workload->step(static_cast<uint64_t>(it));
    synchronize(device);
    if (it >= c.warmup) {
      seconds += seconds_since(t0);
      total += count;
      ops += ops::dispatched_ops() - ops0;
      memory += memory_calls() - memory0;
      allocations += buffer_allocations() - allocations0;
    }
  }
  profile_range(device, false);

  std::printf("qarac-bench %s %s %s: d=%lld layers=%lld heads=%lld ffn=%lld B=%lld %s%s%s\n",
              c.workload.c_str(), c.device.c_str(), c.dtype.c_str(), static_cast<long long>(c.hidden),
              static_cast<long long>(c.layers), static_cast<long long>(c.heads), static_cast<long long>(c.ffn),
              static_cast<long long>(c.batch), workload->lengths().c_str(), c.ragged ? " ragged" : "",
              device.is_cpu() ? (" (" + std::to_string(openblas_get_num_threads()) + " OpenBLAS threads, " +
                                                 openblas_get_corename() + " kernels)").c_str()
                                : "");
  std::printf("  %.2f ms/step, %.0f tokens/s real, %.0f tokens/s padded-equivalent, %.1f samples/s, %.2f TFLOP/s",
              1e3 * seconds / c.iters, static_cast<double>(total.real_tokens) / seconds,
              static_cast<double>(total.padded_tokens) / seconds, static_cast<double>(total.samples) / seconds,
              total.flops / seconds / 1e12);
  if (device.is_cuda()) {
    const double peak = measure_gemm_peak(device);
    std::printf(", %.1f%% of the measured bf16 GEMM peak %.0f TFLOP/s", 100 * total.flops / seconds / 1e12 / peak, peak);
  }
  const MemoryPeaks peaks = memory_peaks(device);
  std::printf("\n  per step: %.0f ops, %.0f copies or memsets, %.0f buffer allocations; tensors held at most %s\n",
              static_cast<double>(ops) / c.iters, static_cast<double>(memory) / c.iters,
              static_cast<double>(allocations) / c.iters, size_text(device.is_cuda() ? peaks.device : peaks.host).c_str());
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  if (cli::version_requested(argc, argv)) return cli::print_version("qarac-bench");
  return cli::run_main("qarac-bench", [&] { return run(argc, argv); });
}
