#include "train/stop_signals.h"

#include <signal.h>

#include <atomic>

#include "core/error.h"

namespace qarac {
namespace {

// Written by the handler, read by the loop. The handler may run on any thread of
// the process (MPI and NCCL start their own), so the flag is an atomic, and a lock-free one: the
// only kind a signal handler may touch.
std::atomic<int> g_received{0};
static_assert(ATOMIC_INT_LOCK_FREE == 2, "the stop flag must be a lock-free atomic");
bool g_installed = false;
struct sigaction g_previous_term, g_previous_usr1;

extern "C" void on_stop_signal(int signal) {
  int expected = 0;
  if (!g_received.compare_exchange_strong(expected, signal)) {
    // The second request: end now, with the status the default action gives.
    struct sigaction dfl {};
    dfl.sa_handler = SIG_DFL;
    sigemptyset(&dfl.sa_mask);
    sigaction(signal, &dfl, nullptr);
    raise(signal);
  }
}

}  // namespace

StopSignals::StopSignals() {
  QARAC_CHECK(!g_installed, "StopSignals: one instance per process");
  struct sigaction action {};
  action.sa_handler = on_stop_signal;
  sigemptyset(&action.sa_mask);
  action.sa_flags = SA_RESTART;  // a signal must not fail a read or a write in flight
  QARAC_CHECK(sigaction(SIGTERM, &action, &g_previous_term) == 0 &&
                  sigaction(SIGUSR1, &action, &g_previous_usr1) == 0,
              "StopSignals: cannot install the SIGTERM/SIGUSR1 handlers");
  g_installed = true;
  g_received.store(0);
}

StopSignals::~StopSignals() {
  sigaction(SIGTERM, &g_previous_term, nullptr);
  sigaction(SIGUSR1, &g_previous_usr1, nullptr);
  g_installed = false;
}

int StopSignals::received() const { return g_received.load(); }

const char* StopSignals::name(int signal) {
  switch (signal) {
    case SIGTERM: return "SIGTERM";
    case SIGUSR1: return "SIGUSR1";
    default: return "a signal";
  }
}

}  // namespace qarac
