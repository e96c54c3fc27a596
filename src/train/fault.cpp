// QARAC_FAULT (train/fault.h).
#include "train/fault.h"

#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <random>
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
  unsigned long long seed = 0;
  const int fields = std::sscanf(text, "%15[a-z]:%d:%lld:%llu", kind, &f.rank, &step, &seed);
  QARAC_INPUT_CHECK(fields == 3 || (fields == 4 && std::string(kind) == "diverge"), "QARAC_FAULT: '", text,
                    "' is not <kill|stall|diverge|term|interrupt>:<rank>:<step> (diverge:<rank>:<step>:<seed>)");
  const std::string k = kind;
  f.kind = k == "kill"        ? Fault::kill
           : k == "stall"     ? Fault::stall
           : k == "diverge"   ? Fault::diverge
           : k == "term"      ? Fault::term
           : k == "interrupt" ? Fault::interrupt
                              : Fault::none;
  QARAC_INPUT_CHECK(f.kind != Fault::none, "QARAC_FAULT: unknown kind '", k,
                    "' (kill, stall, diverge, term, interrupt)");
  f.step = step;
  f.seed = seed;
  return f;
}

std::pair<Parameter*, int64_t> Fault::pick_element(const ParameterList& candidates, uint64_t seed) {
  ParameterList sized;
  for (Parameter* p : candidates)
    if (p->master.numel() > 0) sized.push_back(p);
  QARAC_CHECK(!sized.empty(), "QARAC_FAULT: no weight to shift");
  // mt19937_64's outputs are fixed by the standard (its distributions are not): the same draw
  // on every platform.
  std::mt19937_64 draw(seed);
  Parameter* p = sized[draw() % sized.size()];
  return {p, static_cast<int64_t>(draw() % static_cast<uint64_t>(p->master.numel()))};
}

void Fault::inject(int this_rank, int64_t this_step, const std::vector<parallel::ParameterGroup>& groups) const {
  if (kind == none || rank != this_rank || step != this_step) return;
  static const char* const kWhat[] = {"", "killing", "stalling", "perturbing", "sending SIGTERM to",
                                      "sending SIGINT to"};
  log::warn("QARAC_FAULT: ", kWhat[kind], " rank ", rank, " at step ", step);
  if (kind == kill) std::raise(SIGKILL);
  if (kind == term || kind == interrupt) {  // Slurm's preemption, or Ctrl-C; the step goes on
    // Sent as another process sends it: a SIGINT raised within is a library ending the process.
    ::kill(::getpid(), kind == term ? SIGTERM : SIGINT);
    return;
  }
  if (kind == stall)
    while (true) std::this_thread::sleep_for(std::chrono::hours(1));
  // A weight of a model other ranks hold too, so that the replicas disagree.
  ParameterList shared;
  for (const parallel::ParameterGroup& g : groups)
    if (g.ranks.size() > 1 && std::find(g.ranks.begin(), g.ranks.end(), rank) != g.ranks.end())
      shared.insert(shared.end(), g.params.begin(), g.params.end());
  QARAC_INPUT_CHECK(!shared.empty(), "QARAC_FAULT: diverge, but rank ", rank, " shares no model with another rank");
  const auto [target, element] = pick_element(shared, seed);
  Parameter& p = *target;
  log::warn("QARAC_FAULT: seed ", seed, " shifts element ", element, " of ", p.master.numel(), " of ", p.name,
            " by 1e-3");
  Tensor shifted = p.master.to(Device::cpu()).to(DType::f64).clone();
  shifted.data<double>()[element] += 1e-3;
  p.assign(shifted);
}

}  // namespace qarac
