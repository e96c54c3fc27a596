// What a program prints on standard output is a result (a summary, a table, vectors, --help,
// --version): these say, in one InputError line with errno's cause, when not all of it was
// written.
#pragma once

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <iostream>
#include <string>

#include "core/error.h"

namespace qarac::cli {

// The one line of a failed write to standard output, with its cause when errno holds one.
inline void check_written(bool written, int err) {
  QARAC_INPUT_CHECK(written, "standard output: write failed",
                    err != 0 ? std::string(": ") + std::strerror(err) : std::string(),
                    ": what was printed is incomplete");
}

// What a program prints on standard output is a result (a summary, a table, vectors): it exits 0
// only when all of it was written (a full disk, a closed descriptor; a closed pipe ends it with
// SIGPIPE, as it does any Unix filter, unless it ignores SIGPIPE as qarac-prep does, whose
// results are files: then the write fails here).
inline void check_standard_output() {
  errno = 0;
  const bool flushed = std::fflush(stdout) == 0;  // std::cout writes through stdout's buffer
  const int err = errno;
  std::cout.flush();
  check_written(flushed && !std::ferror(stdout) && !std::cout.fail(), err);
}

// Writes `text` and flushes it at once: a text longer than stdout's buffer (--help) is written
// during the call, so a failure must be said here, while errno still holds its cause.
inline void write_standard_output(const std::string& text) {
  errno = 0;
  const bool written = std::fwrite(text.data(), 1, text.size(), stdout) == text.size() && std::fflush(stdout) == 0;
  check_written(written, errno);
}

}  // namespace qarac::cli
