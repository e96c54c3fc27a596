// Errors of QARAC-MT: one exception type that carries what failed and where (statement, file,
// line, host), raised through one checker. Library-specific checks (CUDA, NCCL, MPI, HDF5) are
// thin macros over it in their own headers so that this one needs no third-party include.
// Errors travel up as exceptions; only a program's main decides how to report and exit.
#pragma once

#include <sstream>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

namespace qarac {

class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// Bad user input (files, configs, options): reported as one line without source location.
class InputError : public Error {
 public:
  using Error::Error;
};

// Memory the machine lacks for what was asked (a host or CUDA allocation): one line and exit
// status 2, as an input error, for a setting fixes it (smaller batches, micro-batches or model) or
// a larger machine does; it is no bug of the program. Not an InputError: the handlers of damaged
// inputs (a checkpoint skipped for another) must not take it for one.
class OutOfMemory : public Error {
 public:
  using Error::Error;
};

const std::string& hostname();

// Text from a file or a user (names, values) with control characters escaped as \xNN, so that an
// error message quoting it stays on one line.
std::string printable(std::string_view text);

// "a, b, c": names in a message.
std::string joined(const std::vector<std::string>& items, std::string_view separator = ", ");

namespace detail {
// Builds "<library> error in `<stmt>`: <reason> (file:line on host)" and throws qarac::Error.
[[noreturn]] void raise(const char* library, const char* stmt, const std::string& reason,
                        const char* file, int line);

template <class... Args>
std::string concat(const Args&... args) {
  std::ostringstream os;
  (os << ... << args);
  return os.str();
}
}  // namespace detail

}  // namespace qarac

// Internal invariant or argument check: QARAC_CHECK(n > 0, "n must be positive, got ", n).
#define QARAC_CHECK(cond, ...)                                                          \
  do {                                                                                  \
    if (!(cond))                                                                        \
      ::qarac::detail::raise("check", #cond, ::qarac::detail::concat(__VA_ARGS__),      \
                             __FILE__, __LINE__);                                       \
  } while (0)

// Bad input from a user: a one-line message meant to be read as is.
#define QARAC_INPUT_CHECK(cond, ...)                                                    \
  do {                                                                                  \
    if (!(cond)) throw ::qarac::InputError(::qarac::detail::concat(__VA_ARGS__));       \
  } while (0)
