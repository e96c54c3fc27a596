// What one optimizer step of each QARAC task costs, in floating-point operations: the estimate
// the `auto` task plan balances and the start banner reports as each rank's expected share.
//
// A task's cost is the sum over the model applications it runs (docs/design.md §3) of forward plus
// backward FLOPs at its global batch and its streams' mean field lengths:
//   ED  AE(x), D(x)          QA  QE(q), AE(a)
//   RS  AE(p0), AE(p1), D(c) CS  AE(s0), AE(s1)
//   MLM AE's base on the masked x, the MLM head over every position
// Per token and layer (d hidden, f FFN width, n the sequence length) a RoBERTa layer's forward
// pass multiplies 2·(4d² + 2df) for its six matrices and 4nd for attention (q·kᵀ and p·v; half
// that with a causal mask, which the attention kernels skip); the pooling head adds 2d² per
// token, the LM head 2d² + 2dV. The backward pass costs twice the forward (an input and a weight
// gradient per matrix product), so a step is 3× the forward. Element-wise work (LayerNorm, GELU,
// softmax, dropout, the optimizer) is left out: the GEMMs dominate at RoBERTa sizes. Mean lengths
// underestimate the quadratic attention term of ragged streams (E[n²] >= E[n]²), a small share
// of the total at n << d.
#pragma once

#include <array>
#include <vector>

#include "data/task.h"
#include "model/roberta_config.h"

namespace qarac::parallel {

// One task's step: its global batch and the mean tokens per example of each of its fields
// (data::task_fields order), e.g. from a task stream's StreamInfo.
struct TaskShape {
  double batch = 0;
  std::vector<double> mean_field_tokens;
};

// FLOPs of one step of each task (data::Task order) with models of shape `base`; 0 for a task
// of batch 0 (one that does not run), whose field lengths are not looked at.
std::array<double, data::kTaskCount> task_step_flops(const RobertaConfig& base,
                                                     const std::array<TaskShape, data::kTaskCount>& tasks);

}  // namespace qarac::parallel
