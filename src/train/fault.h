// The fault-injection hook of the distributed tests: QARAC_FAULT="<kind>:<rank>:<step>" makes
// rank <rank>, at the start of step <step>, kill itself (kill, SIGKILL), sleep for good (stall),
// shift one of its weights (diverge, which the replica check must catch) or send itself SIGTERM
// (term: a preemption, which must stop the job with a checkpoint) or SIGINT (interrupt: Ctrl-C,
// which must do the same). Unset in normal
// runs, where it costs one comparison per step.
// diverge takes an optional fourth field, "diverge:<rank>:<step>:<seed>" (default 0): the seed of
// the draw of which weight it shifts, a random element of a random parameter of the models the
// rank shares, so that a replica check that looks at only part of the weights can be caught; the
// log line names the element.
#pragma once

#include <cstdint>
#include <utility>
#include <vector>

#include "parallel/gradient_sync.h"

namespace qarac {

struct Fault {
  enum Kind { none, kill, stall, diverge, term, interrupt } kind = none;
  int rank = -1;
  int64_t step = -1;
  uint64_t seed = 0;  // diverge: which element it shifts

  // From the environment; InputError naming QARAC_FAULT when it does not parse.
  static Fault from_env();
  // Strikes when this is `rank` at the start of `step`. `groups` are the parameter groups of the
  // run: diverge shifts a weight of a model that another rank holds too.
  void inject(int rank, int64_t step, const std::vector<parallel::ParameterGroup>& groups) const;
  // diverge's draw: the parameter of `candidates` and the element of it that `seed` picks.
  static std::pair<Parameter*, int64_t> pick_element(const ParameterList& candidates, uint64_t seed);
};

}  // namespace qarac
