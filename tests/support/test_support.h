// Helpers shared by the test programs: the one-line input-error check and running a program of
// the project as a user would (its exit status and everything it printed).
#pragma once

#include <gtest/gtest.h>
#include <sys/wait.h>

#include <array>
#include <cstdio>
#include <exception>
#include <functional>
#include <string>
#include <vector>

#include "core/error.h"

namespace qarac::test_support {

// Runs `fn` and checks that it throws a qarac::InputError whose message is one line holding
// every string of `parts` (the file name and the words that name the problem).
inline void expect_input_error(const std::function<void()>& fn, const std::vector<std::string>& parts) {
  try {
    fn();
  } catch (const InputError& e) {
    const std::string message = e.what();
    EXPECT_EQ(message.find('\n'), std::string::npos) << "message spans lines: " << message;
    for (const std::string& part : parts)
      EXPECT_NE(message.find(part), std::string::npos) << "'" << part << "' not in: " << message;
    return;
  } catch (const std::exception& e) {
    ADD_FAILURE() << "expected qarac::InputError, got another exception: " << e.what();
    return;
  }
  ADD_FAILURE() << "expected qarac::InputError, nothing was thrown";
}

struct CliResult {
  int code = -1;  // the exit status; -1 when the program did not exit normally
  std::string output;  // stdout and stderr together
};

// Runs `command` through the shell.
inline CliResult run_command(const std::string& command) {
  CliResult r;
  FILE* pipe = popen((command + " 2>&1").c_str(), "r");
  if (!pipe) return r;
  std::array<char, 4096> buf{};
  size_t n;
  while ((n = fread(buf.data(), 1, buf.size(), pipe)) > 0) r.output.append(buf.data(), n);
  const int status = pclose(pipe);
  r.code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return r;
}

}  // namespace qarac::test_support
