// Preemption: a cluster ends a job with SIGTERM (Slurm's preemption and time limit, after which
// SIGKILL follows) or, warned in advance, with a signal of the user's choice (sbatch
// --signal=B:USR1@600). StopSignals turns SIGTERM and SIGUSR1 into a request the training loop
// reads at a step boundary: every rank ORs its request into the step's metrics all-reduce, so all
// ranks stop after the same step, write a checkpoint of it and exit with kExitPreempted, which
// slurm/train.sbatch requeues on. A second signal ends the process at once, as if no handler
// were installed (the checkpoint of the step in flight is then lost, the previous one is not).
#pragma once

namespace qarac {

// The exit status of a run that stopped on request after writing its checkpoint: EX_TEMPFAIL of
// sysexits.h, "try again later".
constexpr int kExitPreempted = 75;

class StopSignals {
 public:
  // Installs the handlers for SIGTERM and SIGUSR1 (one instance per process) ...
  StopSignals();
  // ... and restores the previous ones.
  ~StopSignals();
  StopSignals(const StopSignals&) = delete;
  StopSignals& operator=(const StopSignals&) = delete;

  // The first signal received, or 0.
  int received() const;
  // "SIGTERM", "SIGUSR1" (messages).
  static const char* name(int signal);
};

}  // namespace qarac
