// The FLOP cost model of the task plan (parallel/task_cost.h), against hand-counted products and
// the split docs/distributed.md derives for the QARAC roberta-base step.
#include <gtest/gtest.h>

#include <numeric>

#include "core/error.h"
#include "parallel/task_cost.h"

using namespace qarac;
using parallel::TaskShape;

namespace {

RobertaConfig roberta_base() { return RobertaConfig{}; }  // the defaults are roberta-base's

// The qarac-bench QARAC step: 64 examples per task; text 64, q 32, a 64, p 32, c 32, s 48 tokens.
std::array<TaskShape, data::kTaskCount> bench_step() {
  return {TaskShape{64, {64}}, TaskShape{64, {32, 64}}, TaskShape{64, {32, 32, 32}},
          TaskShape{64, {48, 48}}};
}

TEST(TaskCost, CountsEveryMatrixProductOfAOneTokenEncoderPass) {
  RobertaConfig c;
  c.hidden_size = 4;
  c.intermediate_size = 8;
  c.num_layers = 2;
  c.vocab_size = 10;
  std::array<TaskShape, data::kTaskCount> one{};
  one[0] = {1, {2}};  // ED: one example of 2 tokens
  one[1] = {0, {1, 1}};
  one[2] = {0, {1, 1, 1}};
  one[3] = {1, {1, 1}};  // CS: two encoder passes of one token
  const auto flops = parallel::task_step_flops(c, one);
  // One token through one layer: Q, K, V, output (4 · 2·d²), FFN in and out (2 · 2·d·f), and
  // attention over n = 1 key (q·kᵀ and p·v: 4·n·d); the pooling head's W_l: 2·d².
  const double layer = 4 * 2 * 16 + 2 * 2 * 32 + 4 * 1 * 4;
  const double encoder = 2 * layer + 2 * 16;
  EXPECT_DOUBLE_EQ(flops[3], 3 * 2 * encoder);  // forward + backward (2×) of two applications
  EXPECT_DOUBLE_EQ(flops[1], 0);
  // ED on "<s> y </s>" of 2 tokens: AE over 2 tokens; D's causal base and second head layer over
  // the 1 input token, its first head layer over 2 rows (with the slot), its LM head over 1.
  const double enc2 = 2 * 2 * (4 * 2 * 16 + 2 * 2 * 32 + 4 * 2 * 4) + 2 * 16 * 2;
  const double causal1 = 4 * 2 * 16 + 2 * 2 * 32 + 2 * 1 * 4, causal2 = 2 * (4 * 2 * 16 + 2 * 2 * 32 + 2 * 2 * 4);
  const double dec = 2 * causal1 + causal2 + causal1 + (2 * 16 + 2 * 4 * 10);
  EXPECT_DOUBLE_EQ(flops[0], 3 * (enc2 + dec));
  EXPECT_DOUBLE_EQ(flops[4], 0);  // rehearsal off: batch 0

  // Rehearsal on a text of 2 tokens: AE's base over both (no pooling head), the MLM head's dense
  // and output matrices at both positions.
  one[4] = {1, {2}};
  const double mlm = 2 * 2 * (4 * 2 * 16 + 2 * 2 * 32 + 4 * 2 * 4) + 2 * (2 * 16 + 2 * 4 * 10);
  EXPECT_DOUBLE_EQ(parallel::task_step_flops(c, one)[4], 3 * mlm);
}

TEST(TaskCost, RobertaBaseQaracStepSplitsAsTheDesignNoteSays) {
  const auto flops = parallel::task_step_flops(roberta_base(), bench_step());
  const double total = std::accumulate(flops.begin(), flops.end(), 0.0);
  // docs/distributed.md: ED 35%, RS 24%, QA 20%, CS 20% of the step's FLOPs.
  EXPECT_NEAR(flops[0] / total, 0.351, 0.002);
  EXPECT_NEAR(flops[1] / total, 0.204, 0.002);
  EXPECT_NEAR(flops[2] / total, 0.241, 0.002);
  EXPECT_NEAR(flops[3] / total, 0.204, 0.002);
  // 15.6 TFLOP per step (forward and backward), which at the README's 71.9 ms is 217 TFLOP/s.
  EXPECT_NEAR(total / 1e12, 15.64, 0.01);
}

TEST(TaskCost, ScalesWithTheGlobalBatch) {
  auto shapes = bench_step();
  const auto base = parallel::task_step_flops(roberta_base(), shapes);
  shapes[2].batch *= 3;
  const auto tripled = parallel::task_step_flops(roberta_base(), shapes);
  EXPECT_DOUBLE_EQ(tripled[2], 3 * base[2]);
  EXPECT_DOUBLE_EQ(tripled[0], base[0]);
}

TEST(TaskCost, RefusesShapesWithTheWrongFields) {
  auto shapes = bench_step();
  shapes[1].mean_field_tokens = {32};  // QA has two fields
  EXPECT_THROW(parallel::task_step_flops(roberta_base(), shapes), Error);
}

}  // namespace
