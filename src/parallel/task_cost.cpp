// FLOP estimates of each task's optimizer step (task_cost.h).
#include "parallel/task_cost.h"

#include <algorithm>

#include "core/error.h"

namespace qarac::parallel {
namespace {

using data::Task;

// Forward FLOPs of one sequence of n tokens through `layers` RoBERTa layers.
double layers_forward(const RobertaConfig& c, double layers, double n, bool causal) {
  const double d = static_cast<double>(c.hidden_size), f = static_cast<double>(c.intermediate_size);
  const double matrices = 2.0 * (4.0 * d * d + 2.0 * d * f);
  const double attention = (causal ? 2.0 : 4.0) * n * d;
  return layers * n * (matrices + attention);
}

// An encoder application (QE or AE) on a field of n tokens: the base and the pooling head.
double encoder_forward(const RobertaConfig& c, double n) {
  const double d = static_cast<double>(c.hidden_size);
  return layers_forward(c, static_cast<double>(c.num_layers), n, false) + 2.0 * d * d * n;
}

// The decoder on a field of n tokens "<s> y </s>": it reads "<s> y" (n - 1 tokens) through the
// causal base, the first head layer sees the slot-0 vector too (n rows), the second and the LM
// head the n - 1 positions.
double decoder_forward(const RobertaConfig& c, double n) {
  const double d = static_cast<double>(c.hidden_size), v = static_cast<double>(c.vocab_size);
  const double in = std::max(n - 1.0, 0.0);
  return layers_forward(c, static_cast<double>(c.num_layers), in, true) +
         layers_forward(c, 1.0, n, true) + layers_forward(c, 1.0, in, true) +
         in * (2.0 * d * d + 2.0 * d * v);
}

// Masked language modelling on a field of n tokens: AE's base without its pooling head, and the
// MLM head (dense d², output dV) at every position, as model/masked_lm.h computes it.
double masked_lm_forward(const RobertaConfig& c, double n) {
  const double d = static_cast<double>(c.hidden_size), v = static_cast<double>(c.vocab_size);
  return layers_forward(c, static_cast<double>(c.num_layers), n, false) + n * (2.0 * d * d + 2.0 * d * v);
}

}  // namespace

std::array<double, data::kTaskCount> task_step_flops(const RobertaConfig& base,
                                                     const std::array<TaskShape, data::kTaskCount>& tasks) {
  std::array<double, data::kTaskCount> flops{};
  for (int t = 0; t < data::kTaskCount; ++t) {
    const Task task = static_cast<Task>(t);
    const std::vector<double>& n = tasks[t].mean_field_tokens;
    if (tasks[t].batch == 0) continue;
    QARAC_CHECK(n.size() == data::task_fields(task).size(), "task_step_flops: ",
                data::task_name(task), " has ", n.size(), " field lengths, expected ",
                data::task_fields(task).size());
    double forward = 0;  // per example
    switch (task) {
      case Task::encode_decode: forward = encoder_forward(base, n[0]) + decoder_forward(base, n[0]); break;
      case Task::question_answering: forward = encoder_forward(base, n[0]) + encoder_forward(base, n[1]); break;
      case Task::reasoning:
        forward = encoder_forward(base, n[0]) + encoder_forward(base, n[1]) + decoder_forward(base, n[2]);
        break;
      case Task::consistency: forward = encoder_forward(base, n[0]) + encoder_forward(base, n[1]); break;
      case Task::masked_lm: forward = masked_lm_forward(base, n[0]); break;
    }
    flops[t] = 3.0 * forward * tasks[t].batch;  // forward + backward (twice the forward)
  }
  return flops;
}

}  // namespace qarac::parallel
