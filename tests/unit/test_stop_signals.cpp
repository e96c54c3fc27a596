// StopSignals (train/stop_signals.h): the first SIGTERM, SIGUSR1, SIGINT or SIGHUP is a stop
// request the loop reads; the same request delivered again at once is ignored, a second one later
// ends the process as the default action would; the destructor puts the previous handlers back.
// Each case runs in a forked child, so that a signal's default action ends the child and not the
// test program.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cerrno>
#include <csignal>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <functional>
#include <iterator>
#include <string>
#include <thread>
#include <utility>

#include "train/stop_signals.h"

using qarac::StopSignals;

namespace {

// Runs `body` in a child process; returns its wait status.
int in_child(const std::function<int()>& body) {
  const pid_t pid = fork();
  if (pid == 0) {
    // As a foreground process has them: a test run in a shell's background inherits SIGINT
    // ignored, one under nohup SIGHUP, which StopSignals leaves so.
    std::signal(SIGINT, SIG_DFL);
    std::signal(SIGHUP, SIG_DFL);
    _exit(body());
  }
  int status = 0;
  waitpid(pid, &status, 0);
  return status;
}

// `body` in a child process whose stderr is a file: its wait status and what it wrote there.
std::pair<int, std::string> in_child_with_stderr(const std::function<int()>& body) {
  char path[] = "/tmp/qarac-stop-signals-XXXXXX";
  const int fd = mkstemp(path);
  if (fd < 0) return {-1, std::string("mkstemp: ") + std::strerror(errno)};
  const int status = in_child([&] { return dup2(fd, STDERR_FILENO) < 0 ? 4 : body(); });
  std::ifstream in(path);
  std::string said((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  close(fd);
  unlink(path);
  return {status, said};
}

TEST(StopSignals, FirstSignalIsARequest) {
  for (const int sig : {SIGTERM, SIGUSR1, SIGINT, SIGHUP}) {
    const int status = in_child([sig] {
      StopSignals stop;
      if (stop.received() != 0) return 1;
      kill(getpid(), sig);  // as another process sends it (a SIGINT raised within is no request)
      return stop.received() == sig ? 0 : 2;
    });
    ASSERT_TRUE(WIFEXITED(status)) << "signal " << sig << " ended the process";
    EXPECT_EQ(WEXITSTATUS(status), 0) << "signal " << sig;
  }
}

// A signal ignored when the process started stays ignored: a shell's background job ignores
// SIGINT, the Ctrl-C meant for the foreground (before: the handler made it a stop request), and
// nohup SIGHUP, so that the run outlives its terminal.
TEST(StopSignals, ASignalIgnoredAtTheStartStaysIgnored) {
  const int status = in_child([] {
    std::signal(SIGINT, SIG_IGN);
    std::signal(SIGHUP, SIG_IGN);
    StopSignals stop;
    raise(SIGINT);
    raise(SIGHUP);
    if (stop.received() != 0) return 5;
    raise(SIGTERM);
    return stop.received() == SIGTERM ? 0 : 6;
  });
  ASSERT_TRUE(WIFEXITED(status)) << "a signal ended the process";
  EXPECT_EQ(WEXITSTATUS(status), 0) << "5: an ignored SIGINT or SIGHUP was taken as a request; 6: SIGTERM was not";
}

TEST(StopSignals, ARequestDeliveredTwiceAtOnceIsOneRequest) {
  const int status = in_child([] {
    StopSignals stop;
    raise(SIGTERM);  // from Slurm
    raise(SIGTERM);  // the same, passed on by srun
    return stop.received() == SIGTERM ? 0 : 5;
  });
  ASSERT_TRUE(WIFEXITED(status)) << "the repeated delivery ended the process";
  EXPECT_EQ(WEXITSTATUS(status), 0);
}

// ... after a line on stderr that says so (a log would otherwise end without a word).
TEST(StopSignals, SecondSignalLaterEndsTheProcessAtOnce) {
  const auto [status, said] = in_child_with_stderr([] {
    StopSignals stop;
    raise(SIGUSR1);
    std::this_thread::sleep_for(std::chrono::milliseconds(2100));  // past the repeat window
    raise(SIGTERM);  // the default action: terminated by SIGTERM
    return 3;
  });
  ASSERT_TRUE(WIFSIGNALED(status)) << "the second signal did not end the process: " << said;
  EXPECT_EQ(WTERMSIG(status), SIGTERM);
  // A line of its own in a log (on a terminal it first ends the progress line).
  EXPECT_EQ(said.find("qarac-train: a second stop signal ends the run at once"), 0u) << said;
}

// A SIGINT the process raises itself is a library ending it (OpenBLAS, when it cannot start its
// threads), not a Ctrl-C: taken as a stop request, the step waited forever for those threads.
// The process ends by SIGINT after a line that says so; a SIGINT from kill(2) is still a request.
TEST(StopSignals, ASigintTheProcessRaisesItselfEndsIt) {
  const auto [status, said] = in_child_with_stderr([] {
    StopSignals stop;
    kill(getpid(), SIGINT);  // as from another process, or from a terminal
    if (stop.received() != SIGINT) return 5;
    std::this_thread::sleep_for(std::chrono::milliseconds(2100));  // past the repeat window
    raise(SIGINT);  // as OpenBLAS's blas_thread_init
    return 3;
  });
  ASSERT_TRUE(WIFSIGNALED(status)) << "exit status " << (WIFEXITED(status) ? WEXITSTATUS(status) : -1)
                                   << " (5: kill's SIGINT was no request; 3: the raised one was one)";
  EXPECT_EQ(WTERMSIG(status), SIGINT);
  // Its line alone: not also taken for a second stop request.
  EXPECT_EQ(said.find("qarac-train: error: SIGINT raised within the process, as OpenBLAS does"), 0u) << said;
  EXPECT_EQ(said.find('\n'), said.size() - 1) << said;
}

// The program's own handlers (here: counters of the four signals) are back after the
// destructor, and the default action where there was none.
TEST(StopSignals, DestructorRestoresThePreviousHandlers) {
  const int status = in_child([] {
    static volatile sig_atomic_t term = 0, usr1 = 0, interrupt = 0, hangup = 0;
    std::signal(SIGTERM, [](int) { term = term + 1; });
    std::signal(SIGUSR1, [](int) { usr1 = usr1 + 1; });
    std::signal(SIGINT, [](int) { interrupt = interrupt + 1; });
    std::signal(SIGHUP, [](int) { hangup = hangup + 1; });
    { StopSignals stop; }
    raise(SIGTERM);
    raise(SIGUSR1);
    raise(SIGINT);
    raise(SIGHUP);
    if (term != 1 || usr1 != 1 || interrupt != 1 || hangup != 1) return 5;  // a handler was not restored
    std::signal(SIGTERM, SIG_DFL);
    { StopSignals stop; }
    struct sigaction now {};
    sigaction(SIGTERM, nullptr, &now);
    return now.sa_handler == SIG_DFL ? 4 : 6;
  });
  // Killed by a signal: the default action ran where the program's handler should have.
  ASSERT_TRUE(WIFEXITED(status)) << "ended by signal " << (WIFSIGNALED(status) ? WTERMSIG(status) : 0);
  EXPECT_EQ(WEXITSTATUS(status), 4) << "5: the handlers were not counted; 6: SIGTERM's default action not restored";
}

}  // namespace
