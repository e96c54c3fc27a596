// A small logger: "[qarac <time> <level> r<rank>] message" on stderr, one line per call.
// The rank prefix appears once a distributed run sets it.
#pragma once

#include <string>

#include "core/error.h"

namespace qarac::log {

enum class Level { debug = 0, info = 1, warn = 2, error = 3 };

void set_level(Level level);
Level level();
void set_rank(int rank);  // -1: no rank prefix
int rank();
void write(Level level, const std::string& message);

template <class... Args>
void debug(const Args&... args) {
  if (level() <= Level::debug) write(Level::debug, detail::concat(args...));
}
template <class... Args>
void info(const Args&... args) {
  if (level() <= Level::info) write(Level::info, detail::concat(args...));
}
template <class... Args>
void warn(const Args&... args) {
  if (level() <= Level::warn) write(Level::warn, detail::concat(args...));
}
// A warning about what every rank reads alike (the same base or data files): said by rank 0 alone,
// rather than once per rank.
template <class... Args>
void warn_shared(const Args&... args) {
  if (rank() <= 0) warn(args...);
}
template <class... Args>
void error(const Args&... args) {
  write(Level::error, detail::concat(args...));
}

}  // namespace qarac::log
