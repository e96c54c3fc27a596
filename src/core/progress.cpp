#include "core/progress.h"

#include <cmath>
#include <cstdio>

#include "core/log.h"

namespace qarac {

std::string duration_text(double seconds) {
  // Beyond 1e15 s (and an int64's 9.2e18, where the conversion is undefined): no useful figure.
  if (!std::isfinite(seconds) || seconds < 0 || seconds > 1e15) return "?";
  const int64_t s = static_cast<int64_t>(seconds + 0.5);
  char text[32];
  if (s >= 3600)
    std::snprintf(text, sizeof text, "%lldh%02lldm%02llds", static_cast<long long>(s / 3600),
                  static_cast<long long>(s / 60 % 60), static_cast<long long>(s % 60));
  else if (s >= 60)
    std::snprintf(text, sizeof text, "%lldm%02llds", static_cast<long long>(s / 60),
                  static_cast<long long>(s % 60));
  else
    std::snprintf(text, sizeof text, "%llds", static_cast<long long>(s));
  return text;
}

Progress::Progress(std::string what, std::string unit, int64_t total, double interval_seconds)
    : what_(std::move(what)), unit_(std::move(unit)), total_(total), interval_(interval_seconds),
      start_(Clock::now()), last_(start_) {}

void Progress::add(int64_t count) {
  done_ += count;
  const Clock::time_point now = Clock::now();
  if (std::chrono::duration<double>(now - last_).count() < interval_) return;
  last_ = now;
  const double elapsed = std::chrono::duration<double>(now - start_).count();
  const double rate = elapsed > 0 ? static_cast<double>(done_) / elapsed : 0;
  char rate_text[32];
  std::snprintf(rate_text, sizeof rate_text, "%.0f/s", rate);
  if (total_ <= 0) {
    log::info(what_, ": ", done_, " ", unit_, ", ", rate_text);
    return;
  }
  char share[16];
  std::snprintf(share, sizeof share, "%.1f%%", 100.0 * static_cast<double>(done_) / static_cast<double>(total_));
  log::info(what_, ": ", done_, " of ", total_, " ", unit_, " (", share, "), ", rate_text, ", ETA ",
            duration_text(rate > 0 ? static_cast<double>(total_ - done_) / rate : -1));
}

}  // namespace qarac
