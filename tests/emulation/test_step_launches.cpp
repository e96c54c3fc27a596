// What one training step asks of the CUDA device, counted on the emulator (tests/emulation): the
// launches of every kernel family, cuBLASLt matmuls and asynchronous copies and memsets of
// kernels/cuda. Launch counts are exact and the same on a GPU (only core's copies and memsets of
// whole tensors, outside kernels/cuda, are not counted here), so what a change saves in launches
// shows without one. The test prints the step's counts by family and checks what must hold:
// - the optimiser step launches a fixed number of kernels whatever the model's depth (one update
//   per span of packed parameters: one per module, the encoder, pooling head and classifier; the
//   norm's two passes), not one per parameter, and as many with the biases and LayerNorm weights
//   exempt from weight decay as without;
// - a layer costs the same launches in every layer, so the step is overhead + layers x that;
// - at RoBERTa-like sizes (column sums past 256 rows, heads of 64) that is 25.
#include <gtest/gtest.h>

#include <cstdio>
#include <map>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "emulated_backend.h"
#include "model/init.h"
#include "train/optimizer.h"
#include "train/sequence_classifier.h"

namespace qarac {
namespace {

using Counts = std::map<std::string, uint64_t>;

// The model and batch of a counted step.
struct Shape {
  int64_t hidden, heads, ffn;
  std::vector<int32_t> lengths;
};
// 64-wide layers of 52 tokens: every column sum fits one chunk pass; heads of 32 (the generic
// attention).
const Shape kToy{64, 2, 128, {17, 30, 5}};
// 128-wide layers of 300 tokens: past 256 rows the column sums add their chunk sums in a second
// launch, as at RoBERTa's sizes; heads of 64 and sequences of up to 128 tokens take the
// tensor-core attention with its one-block backward, as fine-tuning RoBERTa-base does.
const Shape kRobertaLike{128, 2, 256, {100, 128, 72}};

RobertaConfig config(int64_t layers, const Shape& shape) {
  RobertaConfig c;
  c.vocab_size = 101;
  c.hidden_size = shape.hidden;
  c.num_layers = layers;
  c.num_heads = shape.heads;
  c.intermediate_size = shape.ffn;
  c.max_position_embeddings = 132;
  c.hidden_dropout = 0.1;
  c.attention_dropout = 0.1;
  return c;
}

uint64_t total(const Counts& c) {
  uint64_t n = 0;
  for (const auto& [name, count] : c) n += count;
  return n;
}

struct StepLaunches {
  Counts forward_backward, optimizer;
};

// The launches of the second bf16 training step of a classifier with `layers` layers (the first
// may differ: buffers and algorithms are set up there), split into the forward and backward pass
// and the AdamW step with clipping and weight decay, of which `exempt` leaves out some parameters.
StepLaunches step_launches(int64_t layers, const Shape& shape, DecayExempt exempt = DecayExempt::none) {
  const ops::HostBackendOverride on_emulator(ops::cuda_emulated_backend());
  const Device host = Device::cpu();
  SequenceClassifier model(config(layers, shape), 3, DType::bf16, host);
  ParameterList params = model.parameters();
  init_normal(params, 0.05, 17);
  OptimizerConfig adamw;
  adamw.decay_exempt = exempt;
  Optimizer optimizer(params, adamw);
  std::mt19937 gen(5);
  std::uniform_int_distribution<int32_t> token(3, 100);
  StepLaunches out;
  for (int step = 0; step < 2; ++step) {
    std::vector<std::vector<int32_t>> seqs;
    for (int32_t n : shape.lengths) {
      seqs.emplace_back(static_cast<size_t>(n));
      for (int32_t& t : seqs.back()) t = token(gen);
    }
    ForwardOptions opts;
    opts.training = true;
    opts.seed = 3;
    opts.step = static_cast<uint64_t>(step);
    zero_grads(params);
    emu::reset_launch_counts();
    model.forward_backward(TokenBatch::from_sequences(seqs, 1, host),
                           Tensor::from_vector(std::vector<int32_t>{0, 2, 1}, {3}, host), opts);
    out.forward_backward = emu::launch_counts();
    emu::reset_launch_counts();
    optimizer.step(1e-4, 1.0);
    out.optimizer = emu::launch_counts();
  }
  return out;
}

void print(const char* what, const Counts& c) {
  std::printf("%s: %llu launches\n", what, static_cast<unsigned long long>(total(c)));
  for (const auto& [name, count] : c) std::printf("  %-40s %llu\n", name.c_str(), static_cast<unsigned long long>(count));
}

// The launches each layer adds, per family, checked to be the same for layers 3 and 4; with
// the optimiser's, which must not depend on the depth.
Counts per_layer(const Shape& shape, const char* what) {
  const StepLaunches two = step_launches(2, shape), three = step_launches(3, shape), four = step_launches(4, shape);
  std::printf("-- %s\n", what);
  print("forward and backward, 2 layers", two.forward_backward);
  print("optimizer step with clipping, 2 layers", two.optimizer);
  // (Equal empty counts would pass: the emulator must have counted the step.)
  EXPECT_GT(total(two.optimizer), 0u) << "no optimiser launch counted";
  EXPECT_EQ(two.optimizer, four.optimizer) << "the optimiser's launches depend on the parameter count";
  // Per family of any depth (one that vanishes at some depth counts too), layer 3 adds what
  // layer 4 adds.
  const auto count_of = [](const Counts& c, const std::string& name) -> int64_t {
    return c.count(name) ? static_cast<int64_t>(c.at(name)) : 0;
  };
  std::set<std::string> families;
  for (const Counts* c : {&two.forward_backward, &three.forward_backward, &four.forward_backward})
    for (const auto& [name, count] : *c) families.insert(name);
  Counts added;
  for (const std::string& name : families) {
    const int64_t in_two = count_of(two.forward_backward, name), in_three = count_of(three.forward_backward, name),
                  in_four = count_of(four.forward_backward, name);
    EXPECT_EQ(in_four - in_three, in_three - in_two) << name;
    if (in_four > in_three) added[name] = static_cast<uint64_t>(in_four - in_three);
  }
  EXPECT_GT(total(added), 0u) << "a layer added no launch";
  print("each layer adds", added);
  return added;
}

TEST(StepLaunches, TheOptimizerStepIsIndependentOfDepthAndEachLayerCostsTheSame) {
  per_layer(kToy, "64-wide layers, 52 tokens");
}

// bias_norm cuts the encoder's decay into 8 runs a layer and 2 for the embeddings; the update of a
// span takes them in one launch, so the step launches what it does without exemptions.
TEST(StepLaunches, TheOptimizerStepLaunchesAsMuchWithDecayExemptions) {
  const Counts none = step_launches(2, kToy).optimizer;
  const Counts two = step_launches(2, kToy, DecayExempt::bias_norm).optimizer;
  const Counts four = step_launches(4, kToy, DecayExempt::bias_norm).optimizer;
  print("optimizer step, biases and LayerNorm weights exempt, 4 layers", four);
  EXPECT_GT(total(none), 0u) << "no optimiser launch counted";
  EXPECT_EQ(two, none);
  EXPECT_EQ(four, none);
}

// At RoBERTa-like sizes a layer's forward and backward launch 25 kernels and matmuls: 12 GEMMs,
// the attention forward and its one-block backward, 2 LayerNorms forward, 2 one-kernel LayerNorm
// backward passes with their chunk sums, the GELU forward, and the column sums of the QKV bias
// gradient and of the first FFN layer's (fused with GELU'), with theirs. A change that adds
// launches to every layer fails here and says where.
TEST(StepLaunches, ALayerAtRobertaLikeSizesLaunches25) {
  const Counts added = per_layer(kRobertaLike, "128-wide layers of heads of 64, 300 tokens");
  const auto launches = [&](const char* family) { return added.count(family) ? added.at(family) : 0; };
  EXPECT_EQ(total(added), 25u) << "launches per layer changed: see the families above";
  EXPECT_EQ(launches("attention_backward_short_tc"), 1u) << "the one-block attention backward did not run";
  EXPECT_EQ(launches("layernorm_backward_kernel"), 2u) << "the one-kernel LayerNorm backward did not run";
}

}  // namespace
}  // namespace qarac
