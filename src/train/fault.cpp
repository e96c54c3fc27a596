// QARAC_FAULT (train/fault.h).
#include "train/fault.h"

#include <algorithm>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <thread>

#include "core/log.h"

namespace qarac {

Fault Fault::from_env() {
  Fault f;
  const char* text = std::getenv("QARAC_FAULT");
  if (!text || !*text) return f;
  char kind[16] = {};
  long long step = -1;
  QARAC_INPUT_CHECK(std::sscanf(text, "%15[a-z]:%d:%lld", kind, &f.rank, &step) == 3,
                    "QARAC_FAULT: '", text, "' is not <kill|stall|diverge|term>:<rank>:<step>");
  const std::string k = kind;
  f.kind = k == "kill"      ? Fault::kill
           : k == "stall"   ? Fault::stall
           : k == "diverge" ? Fault::diverge
           : k == "term"    ? Fault::term
                            : Fault::none;
  QARAC_INPUT_CHECK(f.kind != Fault::none, "QARAC_FAULT: unknown kind '", k, "' (kill, stall, diverge, term)");
  f.step = step;
  return f;
}

void Fault::inject(int this_rank, int64_t this_step, const std::vector<parallel::ParameterGroup>& groups) const {
  if (kind == none || rank != this_rank || step != this_step) return;
  static const char* const kWhat[] = {"", "killing", "stalling", "perturbing", "sending SIGTERM to"};
  log::warn("QARAC_FAULT: ", kWhat[kind], " rank ", rank, " at step ", step);
  if (kind == kill) std::raise(SIGKILL);
  if (kind == term) {  // what Slurm's preemption does to a rank; the step goes on
    std::raise(SIGTERM);
    return;
  }
  if (kind == stall)
    while (true) std::this_thread::sleep_for(std::chrono::hours(1));
  // A weight of a model other ranks hold too, so that the replicas disagree.
  Parameter* target = nullptr;
  for (const parallel::ParameterGroup& g : groups)
    if (!target && g.ranks.size() > 1 && std::find(g.ranks.begin(), g.ranks.end(), rank) != g.ranks.end())
      target = g.params.front();
  QARAC_INPUT_CHECK(target, "QARAC_FAULT: diverge, but rank ", rank, " shares no model with another rank");
  Parameter& p = *target;
  Tensor shifted = p.master.to(Device::cpu()).to(DType::f64).clone();
  shifted.data<double>()[0] += 1e-3;
  p.assign(shifted);
}

}  // namespace qarac
