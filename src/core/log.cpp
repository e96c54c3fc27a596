#include "core/log.h"

#include <atomic>
#include <chrono>
#include <cstdio>
#include <ctime>
#include <mutex>

namespace qarac::log {
namespace {
std::atomic<int> g_level{static_cast<int>(Level::info)};
std::atomic<int> g_rank{-1};
std::mutex g_mutex;

const char* level_name(Level l) {
  switch (l) {
    case Level::debug: return "debug";
    case Level::info: return "info";
    case Level::warn: return "warn";
    case Level::error: return "error";
  }
  return "?";
}
}  // namespace

void set_level(Level l) { g_level = static_cast<int>(l); }
Level level() { return static_cast<Level>(g_level.load()); }
void set_rank(int rank) { g_rank = rank; }
int rank() { return g_rank.load(); }

void write(Level l, const std::string& message) {
  const std::time_t now = std::chrono::system_clock::to_time_t(std::chrono::system_clock::now());
  std::tm tm{};
  localtime_r(&now, &tm);
  char stamp[16];
  std::strftime(stamp, sizeof stamp, "%H:%M:%S", &tm);
  const int rank = g_rank.load();
  std::lock_guard<std::mutex> lock(g_mutex);
  if (rank >= 0)
    std::fprintf(stderr, "[qarac %s %s r%d] %s\n", stamp, level_name(l), rank, message.c_str());
  else
    std::fprintf(stderr, "[qarac %s %s] %s\n", stamp, level_name(l), message.c_str());
}

}  // namespace qarac::log
