// The CUDA kernels added for the QARAC objectives against the CPU reference: the decoder's row
// gather and scatter (pure data movement: the same bits), the row mean squared error, and a
// whole QARAC step (all four tasks, dropout on) on CUDA against the CPU: losses and every
// parameter's gradient in f32, the losses in bf16 (heads of 64: the tensor-core attention, whose
// backward takes its one-block kernel on these short sequences, and the one-kernel LayerNorm
// backward), and greedy decoding's cached steps against the CPU's logits. Every test skips when
// there is no CUDA device; the step and the decoding also run on the emulator.
//
// Tolerances, as |got - want| <= tol (|want| + rms(want)) per element:
// - mse_loss in f32, 1e-5: both sides sum at most a few hundred O(1) squares in f32 in another
//   order (a warp tree against a loop), ~1e-6; bf16 outputs, 1e-2: one rounding to 8 significant
//   bits (2^-9 relative) on top.
// - The QARAC step in f32, 1e-4 on the losses and 1e-3 on the gradients: the same arithmetic
//   through two RoBERTa layers, the head layers, the LM head and cross-entropy, each op agreeing
//   to ~1e-6 relative (cuBLASLt in true f32, not TF32); the gradients pass through ~20 ops and
//   are judged against the rms of their tensor, so near-zero entries do not dominate. A wrong
//   kernel is off by O(1).
// - The losses in bf16, 5e-2: activations and weight copies rounded to 2^-9 relative, about ten
//   roundings per layer; the sequence classifier's bf16 loss tracks the CPU to 3e-2
//   (test_cuda_training), and the QARAC step adds the head layers and the LM head.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include "support/test_support.h"
#include "emulated_backend.h"
#include "core/memory.h"
#include "core/tensor.h"
#include "kernels/ops.h"
#include "model/decoder.h"
#include "model/init.h"
#include "model/qarac.h"
#include "train/objectives.h"

using namespace qarac;

namespace {

const Device kGpu = Device::cuda(0);

class CudaQarac : public ::testing::Test {
 protected:
  void SetUp() override {
    if (cuda_device_count() == 0) GTEST_SKIP() << "no CUDA device";
  }
};

using test_support::as_seen;
using test_support::on_cpu;
using test_support::on_gpu;
using test_support::uniform;

// `floor` is an absolute allowance for tensors whose exact values are all zero, which a side may
// hold as rounding noise (a reference that computes the attention key bias's gradient, which the
// softmax cancels, rather than writing the 0).
void expect_close(const Tensor& got, const Tensor& want, double tol, const std::string& what,
                  double floor = 0) {
  ASSERT_EQ(got.shape(), want.shape()) << what;
  const std::vector<float> g = on_cpu(got).to_vector<float>(), w = on_cpu(want).to_vector<float>();
  double squares = 0;
  for (float x : w) squares += static_cast<double>(x) * x;
  const double rms = w.empty() ? 0 : std::sqrt(squares / static_cast<double>(w.size()));
  size_t bad = 0, worst = 0;
  double worst_err = -1;
  for (size_t i = 0; i < w.size(); ++i) {
    const double err = std::abs(static_cast<double>(g[i]) - w[i]);
    if (!(err <= tol * (std::abs(w[i]) + rms) + floor)) {  // NaN fails too
      ++bad;
      if (!(err <= worst_err)) {
        worst_err = err;
        worst = i;
      }
    }
  }
  EXPECT_EQ(bad, 0u) << what << ": " << bad << " of " << w.size() << " elements off; worst element "
                     << worst << ": got " << g[worst] << ", want " << w[worst] << " (tolerance "
                     << tol << " x (|want| + rms " << rms << "))";
}

void expect_same_bits(const Tensor& got, const Tensor& want, const std::string& what) {
  ASSERT_EQ(got.shape(), want.shape()) << what;
  ASSERT_EQ(got.dtype(), want.dtype()) << what;
  const Tensor g = got.to(Device::cpu()), w = want.to(Device::cpu());
  // An empty tensor has no buffer: memcmp of null pointers is undefined even for 0 bytes.
  EXPECT_TRUE(g.nbytes() == 0 || std::memcmp(g.raw(), w.raw(), g.nbytes()) == 0) << what << ": bits differ";
}

// A random injective map of m rows into n.
std::vector<int32_t> distinct_rows(std::mt19937& rng, int64_t m, int64_t n) {
  std::vector<int32_t> rows(static_cast<size_t>(n));
  for (int32_t i = 0; i < static_cast<int32_t>(n); ++i) rows[static_cast<size_t>(i)] = i;
  std::shuffle(rows.begin(), rows.end(), rng);
  rows.resize(static_cast<size_t>(m));
  return rows;
}

}  // namespace

// Rows of 768 (the 16-byte packed path), 50 and 7 (scalar), both dtypes: gather and scatter move
// exactly the bits the CPU moves, and the scatter leaves the rows it does not name.
TEST_F(CudaQarac, GatherAndScatterRowsMatchTheCpuBitForBit) {
  std::mt19937 rng(1);
  for (DType dtype : {DType::f32, DType::bf16}) {
    for (int64_t d : {768, 50, 7}) {
      SCOPED_TRACE(std::string(dtype_name(dtype)) + " d " + std::to_string(d));
      const int64_t n = 301, m = 259;
      const std::vector<int32_t> rows = distinct_rows(rng, m, n);
      const Tensor index = Tensor::from_vector(rows, {m}), gpu_index = index.to(kGpu);
      const Tensor src = as_seen(uniform({n, d}, rng), dtype).to(dtype);

      Tensor want = Tensor::empty({m, d}, dtype == DType::bf16 ? DType::f32 : dtype);
      ops::gather_rows(src.to(DType::f32), index, want);
      Tensor got = Tensor::empty({m, d}, dtype, kGpu);
      ops::gather_rows(src.to(kGpu), gpu_index, got);
      expect_same_bits(got, want.to(dtype), "gather_rows");

      const Tensor small = as_seen(uniform({m, d}, rng), dtype).to(dtype);
      const Tensor base = as_seen(uniform({n, d}, rng), dtype).to(dtype);
      Tensor scattered_want = base.to(DType::f32).clone();
      ops::scatter_rows(small.to(DType::f32), index, scattered_want);
      Tensor scattered = base.to(kGpu);
      ops::scatter_rows(small.to(kGpu), gpu_index, scattered);
      expect_same_bits(scattered, scattered_want.to(dtype), "scatter_rows");
    }
  }
}

// Rows of 768 components (question answering), 1 (consistency: a cosine against its label) and
// 7; the gradients together and da alone.
TEST_F(CudaQarac, MseLossMatchesTheCpu) {
  std::mt19937 rng(2);
  const double dloss = 0.3;
  for (DType dtype : {DType::f32, DType::bf16}) {
    for (int64_t k : {768, 1, 7}) {
      SCOPED_TRACE(std::string(dtype_name(dtype)) + " k " + std::to_string(k));
      const int64_t rows = 37;
      const Tensor a = as_seen(uniform({rows, k}, rng, -2, 2), dtype);
      const Tensor b = as_seen(uniform({rows, k}, rng, -2, 2), dtype);
      Tensor losses_want = Tensor::empty({rows}, DType::f32);
      Tensor da_want = Tensor::empty({rows, k}, DType::f32),
             db_want = Tensor::empty({rows, k}, DType::f32);
      ops::mse_loss(a, b, losses_want, &da_want, &db_want, dloss);

      const Tensor ga = on_gpu(a, dtype), gb = on_gpu(b, dtype);
      Tensor losses = Tensor::empty({rows}, DType::f32, kGpu);
      Tensor da = Tensor::empty({rows, k}, dtype, kGpu), db = Tensor::empty({rows, k}, dtype, kGpu);
      ops::mse_loss(ga, gb, losses, &da, &db, dloss);
      const double grad_tol = dtype == DType::bf16 ? 1e-2 : 1e-5;
      expect_close(losses, losses_want, 1e-5, "losses");
      expect_close(da, da_want, grad_tol, "da");
      expect_close(db, db_want, grad_tol, "db");

      Tensor only = Tensor::empty({rows}, DType::f32, kGpu),
             da_only = Tensor::empty({rows, k}, dtype, kGpu);
      ops::mse_loss(ga, gb, only, &da_only, nullptr, dloss);
      expect_same_bits(only, losses, "losses with da alone");
      expect_same_bits(da_only, da, "da alone");
    }
  }
}

namespace {

QaracConfig step_config() {
  QaracConfig c;
  c.base.vocab_size = 101;  // the untied LM head pads it to 128
  c.base.hidden_size = 128;  // heads of 64: bf16 takes the tensor-core attention
  c.base.num_layers = 2;
  c.base.num_heads = 2;
  c.base.intermediate_size = 256;
  c.base.max_position_embeddings = 40;
  c.base.hidden_dropout = 0.1;
  c.base.attention_dropout = 0.1;
  c.init_std = 0.05;
  return c;
}

data::PackedField text_field(std::mt19937& gen, int samples) {
  std::uniform_int_distribution<int32_t> token(3, 100);
  std::uniform_int_distribution<int> length(0, 30);
  data::PackedField f;
  f.starts = {0};
  for (int b = 0; b < samples; ++b) {
    f.tokens.push_back(0);
    for (int i = length(gen); i > 0; --i) f.tokens.push_back(token(gen));
    f.tokens.push_back(2);
    f.starts.push_back(static_cast<int32_t>(f.tokens.size()));
  }
  return f;
}

std::vector<data::TaskBatch> step_batches() {
  std::mt19937 gen(7);
  std::vector<data::TaskBatch> out;
  for (data::Task task : {data::Task::encode_decode, data::Task::question_answering,
                          data::Task::reasoning, data::Task::consistency}) {
    data::TaskBatch batch;
    batch.task = task;
    batch.examples = {0, 1, 2, 3, 4};
    for (size_t f = 0; f < data::task_fields(task).size(); ++f)
      batch.fields.push_back(text_field(gen, 5));
    if (task == data::Task::consistency) batch.labels = {1.f, 0.f, -1.f, 1.f, -1.f};
    out.push_back(batch);
  }
  return out;
}

// The base checkpoint: a random RoBERTa with vectors moved off 0 and 1.
TensorMap base_checkpoint(const RobertaConfig& config) {
  RobertaEncoder encoder(config, DType::f32, Device::cpu());
  init_normal(encoder.parameters(), 0.05, 3);
  std::mt19937 gen(4);
  std::normal_distribution<float> normal(0.f, 0.1f);
  for (Parameter* p : encoder.parameters()) {
    if (p->value.dim() != 1) continue;
    float* v = p->value.data<float>();
    for (int64_t i = 0; i < p->value.numel(); ++i) v[i] += normal(gen);
  }
  TensorMap out;
  for (const Parameter* p : encoder.parameters()) out[p->name] = p->value.clone();
  return out;
}

// One QARAC step with dropout and the QA objective `qa`: each task's loss, gradients accumulated
// into the models. Each batch is a whole global batch on one rank.
std::vector<double> run_step(QaracModels& models, std::vector<data::TaskBatch> batches, QaObjective qa = {}) {
  Objectives objectives(models, qa);
  zero_grads(models.parameters());
  ForwardOptions forward;
  forward.training = true;
  forward.seed = 11;
  forward.step = 2;
  const GatherRows one_rank = [](const std::vector<double>& mine, int64_t, int64_t* first_row) {
    *first_row = 0;
    return mine;
  };
  for (data::TaskBatch& batch : batches) {
    batch.global_count = batch.count();
    objectives.begin_task(batch.task, {batch}, forward, one_rank);
  }
  std::vector<double> losses;
  for (const data::TaskBatch& batch : batches) {
    ObjectiveOptions options;
    options.weight = 0.5 + 0.25 * static_cast<int>(batch.task);
    options.forward = forward;
    losses.push_back(
        objectives.run(batch, options).to(Device::cpu()).to(DType::f64).data<double>()[0]);
  }
  return losses;
}

// The QARAC step on the CUDA backend against the CPU, with either QA objective (the contrastive
// one's loss is the host's, from the vectors each backend computes): on the GPU, or with
// `emulated` on host tensors computed by the CUDA backend's source on the CUDA emulator.
void expect_step_matches_the_cpu(QaObjective qa, bool emulated = false) {
  const QaracConfig config = step_config();
  const TensorMap base = base_checkpoint(config.base);
  const std::vector<data::TaskBatch> batches = step_batches();
  QaracModels cpu(config, base, DType::f32, Device::cpu());
  const std::vector<double> want = run_step(cpu, batches, qa);
  const ParameterList cpu_params = cpu.parameters();

  for (DType dtype : {DType::f32, DType::bf16}) {
    SCOPED_TRACE(dtype_name(dtype));
    std::optional<ops::HostBackendOverride> on_emulator;
    if (emulated) on_emulator.emplace(ops::cuda_emulated_backend());
    QaracModels gpu(config, base, dtype, emulated ? Device::cpu() : kGpu);
    if (emulated) emu::reset_launch_counts();
    const std::vector<double> got = run_step(gpu, batches, qa);
    if (emulated) {
      uint64_t launches = 0;
      for (const auto& [name, count] : emu::launch_counts()) launches += count;
      std::printf("%s: the step launched %llu kernels, cuBLASLt matmuls, copies and fills\n",
                  dtype_name(dtype), static_cast<unsigned long long>(launches));
      EXPECT_GT(launches, 0u) << "nothing ran on the emulator: the step compared the CPU with itself";
    }
    for (size_t t = 0; t < want.size(); ++t) {
      std::printf("%s %s: loss cpu %.6f, cuda %.6f\n", dtype_name(dtype),
                  data::task_name(batches[t].task), want[t], got[t]);
      EXPECT_NEAR(got[t], want[t], (dtype == DType::f32 ? 1e-4 : 5e-2) * std::fabs(want[t]))
          << data::task_name(batches[t].task);
    }
    if (dtype != DType::f32) continue;
    // The floor: 1e-6 of the largest gradient entry of the step.
    double largest = 0;
    for (const Parameter* p : cpu_params)
      for (float g : p->grad.to_vector<float>())
        largest = std::max(largest, std::fabs(static_cast<double>(g)));
    const ParameterList gpu_params = gpu.parameters();
    ASSERT_EQ(gpu_params.size(), cpu_params.size());
    for (size_t i = 0; i < cpu_params.size(); ++i) {
      ASSERT_EQ(gpu_params[i]->name, cpu_params[i]->name);
      expect_close(gpu_params[i]->grad, cpu_params[i]->grad, 1e-3, gpu_params[i]->name,
                   1e-6 * largest);
    }
  }
}

// Greedy decoding's cached steps (Decoder::start_decoding, decode) on the CUDA backend against
// the CPU's, which give forward()'s logits (test_qarac): the logits of the start over prefixes
// of 3, 1 and 2 tokens and of two steps that extend some of the sequences (heads of 64,
// attention_over_ranges and the cache's row scatters), in f32 to the step's 1e-4 and in bf16 to
// its 5e-2 (activations, the cache and the weight copies rounded to 2^-9 relative).
void expect_decoding_matches_the_cpu(bool emulated) {
  const QaracConfig config = step_config();
  const TensorMap base = base_checkpoint(config.base);
  std::mt19937 gen(5);
  const Tensor v = uniform({3, config.base.hidden_size}, gen);
  auto decode = [&](QaracModels& models, Device device, DType dtype) {
    Decoder& decoder = models.decoder();
    Decoder::Cache cache;
    std::vector<Tensor> logits;
    const TokenBatch prefixes = TokenBatch::from_sequences({{0, 5, 6}, {0}, {0, 9}}, 1, device);
    auto host = [](const Tensor& t) { return t.to(Device::cpu()).to(DType::f32); };
    logits.push_back(host(decoder.start_decoding(v.to(dtype).to(device), prefixes, {6, 3, 5}, cache)));
    logits.push_back(host(decoder.decode({2, 0}, {7, 8}, cache)));
    logits.push_back(host(decoder.decode({1, 0, 2}, {4, 5, 6}, cache)));
    return logits;
  };
  QaracModels cpu(config, base, DType::f32, Device::cpu());
  const std::vector<Tensor> want = decode(cpu, Device::cpu(), DType::f32);
  for (DType dtype : {DType::f32, DType::bf16}) {
    SCOPED_TRACE(dtype_name(dtype));
    std::optional<ops::HostBackendOverride> on_emulator;
    if (emulated) on_emulator.emplace(ops::cuda_emulated_backend());
    QaracModels gpu(config, base, dtype, emulated ? Device::cpu() : kGpu);
    if (emulated) emu::reset_launch_counts();
    const std::vector<Tensor> got = decode(gpu, emulated ? Device::cpu() : kGpu, dtype);
    if (emulated) {
      EXPECT_GT(emu::launch_counts().count("attention_over_ranges_kernel"), 0u);
    }
    for (size_t i = 0; i < want.size(); ++i)
      expect_close(got[i], want[i], dtype == DType::f32 ? 1e-4 : 5e-2,
                   "logits of step " + std::to_string(i));
  }
}

}  // namespace

TEST_F(CudaQarac, QaracStepMatchesTheCpu) { expect_step_matches_the_cpu({}); }
TEST_F(CudaQarac, ContrastiveQaStepMatchesTheCpu) { expect_step_matches_the_cpu({true, 0.5}); }
// The same on the CUDA emulator, which every build has.
TEST(EmulatedCudaQarac, QaracStepMatchesTheCpu) { expect_step_matches_the_cpu({}, true); }
TEST(EmulatedCudaQarac, ContrastiveQaStepMatchesTheCpu) { expect_step_matches_the_cpu({true, 0.5}, true); }
TEST_F(CudaQarac, CachedDecodingMatchesTheCpu) { expect_decoding_matches_the_cpu(false); }
TEST(EmulatedCudaQarac, CachedDecodingMatchesTheCpu) { expect_decoding_matches_the_cpu(true); }
