// The learning-rate schedules: warmup, then constant, linear, cosine or exponential decay.
#include "train/schedule.h"

#include <algorithm>
#include <cmath>

#include "core/error.h"

namespace qarac {

const char* decay_name(Decay decay) {
  switch (decay) {
    case Decay::constant: return "constant";
    case Decay::linear: return "linear";
    case Decay::cosine: return "cosine";
    case Decay::exponential: return "exponential";
  }
  return "?";
}

Decay decay_from_name(const std::string& name) {
  for (Decay d : {Decay::constant, Decay::linear, Decay::cosine, Decay::exponential})
    if (name == decay_name(d)) return d;
  throw InputError("unknown decay '" + name + "' (expected constant, linear, cosine or exponential)");
}

LearningRateSchedule::LearningRateSchedule(const ScheduleConfig& config) : config_(config) {
  QARAC_INPUT_CHECK(config.peak_lr >= 0, "the learning rate must be >= 0, got ", config.peak_lr);
  QARAC_INPUT_CHECK(config.warmup_steps >= 0, "the warmup must be >= 0 steps, got ",
                    config.warmup_steps);
  QARAC_INPUT_CHECK(config.total_steps >= 1, "the run must have at least 1 step, got ",
                    config.total_steps);
  QARAC_INPUT_CHECK(config.final_fraction >= 0 && config.final_fraction <= 1,
                    "the final learning-rate fraction must lie in [0, 1], got ",
                    config.final_fraction);
  QARAC_INPUT_CHECK(config.decay != Decay::exponential || config.final_fraction > 0,
                    "exponential decay needs a final learning-rate fraction > 0");
}

double LearningRateSchedule::at(int64_t step) const {
  const ScheduleConfig& c = config_;
  if (step < c.warmup_steps)
    return c.peak_lr * static_cast<double>(step) / static_cast<double>(c.warmup_steps);
  const double p = std::min(1.0, static_cast<double>(step - c.warmup_steps) /
                                     static_cast<double>(std::max<int64_t>(1, c.total_steps - c.warmup_steps)));
  const double r = c.final_fraction;
  double f = 1;
  switch (c.decay) {
    case Decay::constant: f = 1; break;
    case Decay::linear: f = 1 - (1 - r) * p; break;
    case Decay::cosine: f = r + (1 - r) * 0.5 * (1 + std::cos(M_PI * p)); break;
    case Decay::exponential: f = std::pow(r, p); break;
  }
  return c.peak_lr * f;
}

}  // namespace qarac
