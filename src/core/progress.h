// How far a long loop has got, said at most every few seconds through the logger, so a job that
// runs for minutes is never silent and a short one prints nothing:
//   "qarac-embed: 12800 of 1000000 texts (1.3%), 2103/s, ETA 7m49s"
//   "train.txt: 2400000 examples, 81034/s"                            (total unknown)
#pragma once

#include <chrono>
#include <cstdint>
#include <string>

namespace qarac {

// "1h02m03s", "4m05s", "6s"; "?" for a negative or non-finite time.
std::string duration_text(double seconds);

class Progress {
 public:
  // `total` 0: unknown. The first note comes `interval_seconds` after construction.
  Progress(std::string what, std::string unit, int64_t total, double interval_seconds = 10);
  // `count` more items done; notes the progress when the interval has passed since the last.
  void add(int64_t count);
  int64_t done() const { return done_; }

 private:
  using Clock = std::chrono::steady_clock;
  std::string what_, unit_;
  int64_t total_, done_ = 0;
  double interval_;
  Clock::time_point start_, last_;
};

}  // namespace qarac
