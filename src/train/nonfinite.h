// Non-finite values in a run: which settings can make a loss, a gradient or an update overflow,
// and the check that no NaN or infinity of the weights reaches a checkpoint, an export, or the
// steps that train.nonfinite skip would skip to the end of a run.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "data/loader.h"
#include "model/parameter.h"
#include "parallel/communicator.h"
#include "train/optimizer.h"

namespace qarac {

// What to check when something overflowed, to end a message with: "(check optimizer.lr, ...)".
const char* overflow_advice();

// What a step whose gradient norm or whose losses of `tasks` (names, comma-separated; empty:
// every loss is finite) are not finite says: "step 7: the loss of ... is not finite: ...".
std::string nonfinite_step(const std::string& step, double grad_norm, const std::string& tasks);

// The tasks whose loss is not finite on some rank of `world` (null: one process), names
// comma-separated (empty: none), from this rank's `slot_losses` of its `slots`; collective, the
// same answer on every rank. `step` is its text ("step 7").
std::string tasks_with_nonfinite_losses(const std::vector<data::TaskSlot>& slots,
                                        const std::vector<double>& slot_losses, const parallel::MpiGroup* world,
                                        const std::string& step);

// What an evaluation at `step` whose metrics are not all finite says ("" when they are): the
// models give NaN or infinity on held-out data without dropout, which no later step mends (an
// update overflowed, or the base's weights overflow in a forward pass), and eval.best and the
// export would keep models that compute nothing. Names the metrics, the confusion cells apart.
std::string nonfinite_evaluation(int64_t step, const std::map<std::string, double>& metrics);

// The run ends with `what` on every rank, which all took the same decision: InputError on the
// root, which says it once, EndedByAnotherRank (silent) on the others.
[[noreturn]] void end_run(bool root, const std::string& what);

// train.nonfinite stop's end at a non-finite step: `what` (nonfinite_step's) with skip's advice,
// unless the weights themselves are not finite (an earlier update overflowed them, and skip would
// end the run at once too): then the weight is named, as require_finite_weights does. `step` is
// its text ("step 7"); collective over `world` (null: one process).
[[noreturn]] void stop_at_nonfinite_step(const std::string& step, const std::string& what,
                                         const ParameterList& params, const parallel::MpiGroup* world);

// train.nonfinite skip's guard: a step skipped because the weights themselves no longer give
// finite values would be followed by skips to the end of the run, which then exported weights
// no step had trained. So after a skipped step the weights are checked (not finite: the run
// ends, naming the weight), and kMaxInARow skipped steps in a row end it too.
class SkippedSteps {
 public:
  static constexpr int64_t kMaxInARow = 10;
  // After `step` (its text: "step 7"), agreed by every rank: `skipped` whether its update was
  // left out, `last` whether it ends the run (which then says how many steps before its end the
  // models it saves were trained); `params` this rank's weights; collective over `world` (null:
  // one process) when skipped.
  void after(const std::string& step, bool skipped, bool last, const ParameterList& params,
             const parallel::MpiGroup* world);

 private:
  int64_t in_a_row_ = 0;
};

// InputError when a master weight of `params` is a NaN or an infinity: an update overflowed, and
// `what` (a checkpoint, an export) would carry weights that make every output garbage. The
// weights are copied to the host to look.
void require_finite_weights(const ParameterList& params, const std::string& what);

// InputError when a moment estimate `optimizer` holds for a parameter of `params` is a NaN or an
// infinity: an update overflowed (coupled weight decay, a huge gradient), and its parameter is
// no longer trained (an infinite second moment gives updates of 0), nor would the checkpoint
// `what` resume (its reader refuses the value).
void require_finite_moments(const Optimizer& optimizer, const ParameterList& params, const std::string& what);

// The same on every rank of `world` (null: one process) for the weights each holds, collective:
// the lowest rank whose weights are not finite says so, the others end with it
// (EndedByAnotherRank).
void require_finite_weights(const ParameterList& params, const std::string& what, const parallel::MpiGroup* world);

}  // namespace qarac
