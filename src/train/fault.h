// The fault-injection hook of the distributed tests: QARAC_FAULT="<kind>:<rank>:<step>" makes
// rank <rank>, at the start of step <step>, kill itself (kill, SIGKILL), sleep for good (stall),
// shift one of its weights (diverge, which the replica check must catch) or send itself SIGTERM
// (term: a preemption, which must stop the job with a checkpoint). Unset in normal
// runs, where it costs one comparison per step.
#pragma once

#include <cstdint>
#include <vector>

#include "parallel/gradient_sync.h"

namespace qarac {

struct Fault {
  enum Kind { none, kill, stall, diverge, term } kind = none;
  int rank = -1;
  int64_t step = -1;

  // From the environment; InputError naming QARAC_FAULT when it does not parse.
  static Fault from_env();
  // Strikes when this is `rank` at the start of `step`. `groups` are the parameter groups of the
  // run: diverge shifts a weight of a model that another rank holds too.
  void inject(int rank, int64_t step, const std::vector<parallel::ParameterGroup>& groups) const;
};

}  // namespace qarac
