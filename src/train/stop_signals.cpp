// The SIGTERM/SIGUSR1/SIGINT/SIGHUP handlers of a run (stop_signals.h says what each request does).
#include "train/stop_signals.h"

#include <signal.h>
#include <time.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdint>
#include <cstring>
#include <iterator>

#include "core/error.h"

namespace qarac {
namespace {

// Written by the handler, read by the loop. The handler may run on any thread of the process
// (MPI and NCCL start their own), so the state is atomic, and lock-free: the only kind a signal
// handler may touch.
std::atomic<int> g_received{0};
std::atomic<int64_t> g_first_ns{0};  // CLOCK_MONOTONIC of the first signal
static_assert(ATOMIC_INT_LOCK_FREE == 2 && ATOMIC_LLONG_LOCK_FREE == 2, "the stop state must be lock-free");
bool g_installed = false;
constexpr int kStopSignals[] = {SIGTERM, SIGUSR1, SIGINT, SIGHUP};
struct sigaction g_previous[std::size(kStopSignals)];
// Set at installation: stderr is a terminal, where the request is said as it arrives (the loop
// reads it only when the step ends). Under mpirun or in a batch job's log the loop says it.
bool g_tell = false;

// One request can arrive twice within moments: Slurm signals every process of a job step and
// srun passes the signal on to the same ranks. Only a signal this long after the first is a
// second request.
constexpr int64_t kRepeatWindowNs = 2'000'000'000;

int64_t monotonic_ns() {  // clock_gettime is async-signal-safe
  timespec t{};
  clock_gettime(CLOCK_MONOTONIC, &t);
  return static_cast<int64_t>(t.tv_sec) * 1'000'000'000 + t.tv_nsec;
}

// Restores the default action of `signal` and raises it: the process ends as it would have
// without the handler (once the handler returns, for a signal the handler blocks).
void end_by(int signal) {
  struct sigaction dfl {};
  dfl.sa_handler = SIG_DFL;
  sigemptyset(&dfl.sa_mask);
  sigaction(signal, &dfl, nullptr);
  raise(signal);
}

extern "C" void on_stop_signal(int signal, siginfo_t* info, void* /*context*/) {
  const int saved_errno = errno;  // write(2) may set it, under code that reads it after a failed call
  // A SIGINT the process raised itself is no stop request but a library's way to end it:
  // OpenBLAS raises one when it cannot start its threads (ulimit -u), and taken as a request the
  // step would wait for those threads forever.
  if (signal == SIGINT && info != nullptr && info->si_code == SI_TKILL && info->si_pid == getpid()) {
    const char text[] = "\nqarac-train: error: SIGINT raised within the process, as OpenBLAS does when it cannot "
                        "start its threads (its lines above say why; OPENBLAS_NUM_THREADS=1 needs none)\n";
    const size_t skip = g_tell ? 0 : 1;  // the newline ends a progress line on a terminal
    [[maybe_unused]] const ssize_t written = write(STDERR_FILENO, text + skip, sizeof text - 1 - skip);
    end_by(signal);
    return;  // SIGINT is blocked in its handler: the process ends as the handler returns
  }
  const int64_t now = monotonic_ns();
  int expected = 0;
  if (g_received.compare_exchange_strong(expected, signal)) {
    g_first_ns.store(now);
    // SIGHUP: the terminal hung up, nobody reads it.
    if (g_tell && signal != SIGHUP) {
      // write(2) is async-signal-safe; the text is fixed per signal.
      const char* text = signal == SIGINT    ? "\nSIGINT: stopping after the step in flight, with a checkpoint "
                                               "(another signal, 2 s or more from now, ends the run at once)\n"
                         : signal == SIGTERM ? "\nSIGTERM: stopping after the step in flight, with a checkpoint\n"
                                             : "\nSIGUSR1: stopping after the step in flight, with a checkpoint\n";
      [[maybe_unused]] const ssize_t written = write(STDERR_FILENO, text, std::strlen(text));
    }
    errno = saved_errno;
    return;
  }
  // The same request delivered again; 0: the first delivery, on another thread, has not yet
  // stored its time.
  const int64_t first = g_first_ns.load();
  if (first == 0 || now - first < kRepeatWindowNs) {
    errno = saved_errno;
    return;
  }
  // A second request: end now, with the status the default action gives, said first (a log would
  // otherwise end without a word).
  // On a terminal, after the progress line; in a log, a line of its own.
  const char text[] = "\nqarac-train: a second stop signal ends the run at once (--resume goes on from the last "
                      "complete checkpoint)\n";
  const size_t skip = g_tell ? 0 : 1;
  [[maybe_unused]] const ssize_t written = write(STDERR_FILENO, text + skip, sizeof text - 1 - skip);
  end_by(signal);
}

}  // namespace

StopSignals::StopSignals() {
  QARAC_CHECK(!g_installed, "StopSignals: one instance per process");
  g_received.store(0);  // before the handlers: a signal from now on counts
  g_first_ns.store(0);
  g_tell = isatty(STDERR_FILENO) == 1;
  struct sigaction action {};
  action.sa_sigaction = on_stop_signal;
  sigemptyset(&action.sa_mask);
  // SA_RESTART: a signal must not fail a read or a write in flight; SA_SIGINFO: who sent it.
  action.sa_flags = SA_RESTART | SA_SIGINFO;
  for (size_t i = 0; i < std::size(kStopSignals); ++i) {
    // SIGINT or SIGHUP ignored when the process started stays ignored: a shell starts its
    // background jobs without SIGINT, so that the Ctrl-C meant for the foreground does not stop
    // them, and nohup without SIGHUP, so that the run outlives its terminal. (Preemption's
    // SIGTERM is always heard: a wrapper's `trap '' TERM` must not cost the checkpoint.)
    const int signal = kStopSignals[i];
    const bool ignored = (signal == SIGINT || signal == SIGHUP) && sigaction(signal, nullptr, &g_previous[i]) == 0 &&
                         g_previous[i].sa_handler == SIG_IGN;
    if (!ignored && sigaction(signal, &action, &g_previous[i]) != 0) {
      while (i-- > 0) sigaction(kStopSignals[i], &g_previous[i], nullptr);  // all or nothing
      QARAC_CHECK(false, "StopSignals: cannot install the handler of ", name(signal));
    }
  }
  g_installed = true;
}

StopSignals::~StopSignals() {
  for (size_t i = 0; i < std::size(kStopSignals); ++i) sigaction(kStopSignals[i], &g_previous[i], nullptr);
  g_installed = false;
}

int StopSignals::received() { return g_received.load(); }

const char* StopSignals::name(int signal) {
  switch (signal) {
    case SIGTERM: return "SIGTERM";
    case SIGUSR1: return "SIGUSR1";
    case SIGINT: return "SIGINT";
    case SIGHUP: return "SIGHUP";
    default: return "a signal";
  }
}

}  // namespace qarac
