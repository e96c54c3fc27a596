// Preemption: a cluster ends a job with SIGTERM (Slurm's preemption and time limit, after which
// SIGKILL follows) or, warned in advance, with a signal of the user's choice (sbatch
// --signal=B:USR1@600); a user at a terminal with Ctrl-C (SIGINT), or by closing it (SIGHUP: a
// dropped ssh connection). StopSignals turns SIGTERM, SIGUSR1, SIGINT and SIGHUP into a request
// the training loop reads at a step boundary: every rank ORs its request into the step's metrics
// all-reduce, so all ranks stop after the same step, write a checkpoint of it and exit with
// kExitPreempted, which slurm/train.sbatch requeues on. On a terminal the request is said at
// once (a step may take a while). A second signal, more than two seconds after the first, ends
// the process at once, after a line saying so, as the default action does (the checkpoint of the
// step in flight is then lost, the previous one is not); one within two seconds is the first
// delivered again (Slurm signals the ranks and srun passes the signal on to them too). A SIGINT
// the process raises itself is no request: a library's way to end it (OpenBLAS raises one when it
// cannot start its threads); it ends the process, after a line saying so.
// qarac-train installs the handlers first thing in main, so that a request during start-up
// stops the run after its first step rather than killing it.
#pragma once

namespace qarac {

// The exit status of a run that stopped on request after writing its checkpoint: EX_TEMPFAIL of
// sysexits.h, "try again later".
constexpr int kExitPreempted = 75;

class StopSignals {
 public:
  // Installs the handlers for SIGTERM, SIGUSR1, SIGINT and SIGHUP, leaving SIGINT and SIGHUP
  // ignored when the process started with them so (a background job of a shell, nohup; one
  // instance per process) ...
  StopSignals();
  // ... and restores the previous ones.
  ~StopSignals();
  StopSignals(const StopSignals&) = delete;
  StopSignals& operator=(const StopSignals&) = delete;

  // The first signal received since the handlers were installed, or 0.
  static int received();
  // "SIGTERM", "SIGUSR1", "SIGINT", "SIGHUP" (messages).
  static const char* name(int signal);
};

}  // namespace qarac
