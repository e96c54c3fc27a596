#include "train/nonfinite.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <exception>

#include "core/error.h"
#include "core/log.h"
#include "io/hf_weights.h"
#include "parallel/runtime.h"

namespace qarac {

const char* overflow_advice() {
  return "(check optimizer.lr, optimizer.eps, optimizer.weight_decay, the task weights, model.init_std, "
         "task.qa.temperature with the contrastive objective, and the base model's weights)";
}

std::string nonfinite_step(const std::string& step, double grad_norm, const std::string& tasks) {
  return detail::concat(step, ": ",
                        tasks.empty() ? detail::concat("the gradient norm is ", grad_norm, " while every loss is finite")
                                      : "the loss of " + tasks + " is not finite",
                        ": a loss or a gradient overflowed ", overflow_advice());
}

std::string nonfinite_evaluation(int64_t step, const std::map<std::string, double>& metrics) {
  std::vector<std::string> names;
  for (const auto& [name, value] : metrics)
    if (!std::isfinite(value) && name.find(".confusion.") == std::string::npos) names.push_back(name);
  if (names.empty()) return "";
  return detail::concat("evaluation at step ", step, ": ", joined(names), names.size() == 1 ? " is" : " are",
                        " not finite: the models give NaN or infinity on held-out data ", overflow_advice());
}

std::string tasks_with_nonfinite_losses(const std::vector<data::TaskSlot>& slots,
                                        const std::vector<double>& slot_losses, const parallel::MpiGroup* world,
                                        const std::string& step) {
  std::array<double, data::kTaskCount> bad{};  // per task: a non-finite loss on some rank
  for (size_t i = 0; i < slots.size(); ++i)
    if (!std::isfinite(slot_losses[i])) bad[static_cast<size_t>(slots[i].task)] = 1;
  if (world) world->all_reduce(bad.data(), data::kTaskCount, MPI_MAX, "finite losses, " + step);
  std::vector<std::string> tasks;
  for (int t = 0; t < data::kTaskCount; ++t)
    if (bad[static_cast<size_t>(t)] != 0) tasks.push_back(data::task_name(static_cast<data::Task>(t)));
  return joined(tasks);
}

void end_run(bool root, const std::string& what) {
  if (root) throw InputError(what);
  throw EndedByAnotherRank(what);
}

void stop_at_nonfinite_step(const std::string& step, const std::string& what, const ParameterList& params,
                            const parallel::MpiGroup* world) {
  require_finite_weights(params, step + ", not applied", world);
  end_run(!world || world->rank() == 0, what + "; the step was not applied (train.nonfinite skip goes on)");
}

void SkippedSteps::after(const std::string& step, bool skipped, bool last, const ParameterList& params,
                         const parallel::MpiGroup* world) {
  if (!skipped) {
    in_a_row_ = 0;
    return;
  }
  require_finite_weights(params, step + ", skipped", world);
  const bool root = !world || world->rank() == 0;
  if (++in_a_row_ >= kMaxInARow)
    end_run(root, detail::concat(step, ": ", kMaxInARow, " steps in a row skipped (train.nonfinite skip): the run no "
                                 "longer trains ", overflow_advice()));
  if (last && root)
    log::warn(step, ": the run ends on ", in_a_row_, " skipped step(s): what it saves and exports is the models of the ",
              "last step applied, ", in_a_row_, " before");
}

void require_finite_weights(const ParameterList& params, const std::string& what) {
  for (const Parameter* p : params) {
    try {
      io::require_finite(p->master.to(Device::cpu()), p->name, what);
    } catch (const InputError& e) {
      throw InputError(std::string(e.what()) + ": an optimizer update overflowed " + overflow_advice());
    }
  }
}

void require_finite_moments(const Optimizer& optimizer, const ParameterList& params, const std::string& what) {
  const ParameterList& all = optimizer.parameters();
  for (const Parameter* p : params) {
    const size_t i = static_cast<size_t>(std::find(all.begin(), all.end(), p) - all.begin());
    QARAC_CHECK(i < all.size(), "parameter '", p->name, "' is not the optimizer's");
    try {
      io::require_finite(optimizer.first_moments()[i].to(Device::cpu()), "optimizer/m/" + p->name, what);
      io::require_finite(optimizer.second_moments()[i].to(Device::cpu()), "optimizer/v/" + p->name, what);
    } catch (const InputError& e) {
      throw InputError(std::string(e.what()) + ": an optimizer update overflowed " + overflow_advice());
    }
  }
}

void require_finite_weights(const ParameterList& params, const std::string& what, const parallel::MpiGroup* world) {
  std::exception_ptr failure;
  try {
    require_finite_weights(params, what);
  } catch (const InputError&) {
    failure = std::current_exception();
  }
  // The lowest rank whose weights are not finite says so: the replicas of a model fail alike.
  constexpr double kNone = 1e300;
  const double rank = world ? world->rank() : 0;
  double first = failure ? rank : kNone;
  if (world) world->all_reduce(&first, 1, MPI_MIN, what + ": finite weights");
  if (first == kNone) return;
  if (first == rank) std::rethrow_exception(failure);
  throw EndedByAnotherRank(what + ": the weights of another rank are not finite");
}

}  // namespace qarac
