// The learning-rate schedule of fine-tuning (docs/design.md §1, §6): a linear warmup from 0 to the
// peak rate, then a decay to a final fraction of it: constant, linear, cosine or exponential.
// Steps count updates from 0, as transformers' get_*_schedule_with_warmup do, so runs keep the
// reference's rates step for step:
//   s < W:  lr = peak · s / W
//   s >= W: p = (s - W) / max(1, S - W), lr = peak · f(p), with final fraction r:
//     constant     f = 1
//     linear       f = 1 - (1 - r) p
//     cosine       f = r + (1 - r) (1 + cos(π p)) / 2
//     exponential  f = r^p  (r > 0)
// S is the run's total number of updates; p reaches 1 only after the last update (s = S - 1).
#pragma once

#include <cstdint>
#include <string>

namespace qarac {

enum class Decay { constant, linear, cosine, exponential };
const char* decay_name(Decay decay);
Decay decay_from_name(const std::string& name);  // InputError naming the valid ones

struct ScheduleConfig {
  double peak_lr = 2e-5;
  int64_t warmup_steps = 0;
  int64_t total_steps = 1;
  Decay decay = Decay::linear;
  double final_fraction = 0;  // of peak_lr, reached at total_steps
};

class LearningRateSchedule {
 public:
  // InputError for a negative rate or warmup, no steps, a final fraction outside [0, 1], or
  // exponential decay to 0.
  explicit LearningRateSchedule(const ScheduleConfig& config);
  double at(int64_t step) const;  // the rate of update `step` (0-based)

 private:
  ScheduleConfig config_;
};

}  // namespace qarac
