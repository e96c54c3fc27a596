// Step statistics over the world, metrics.jsonl and the progress line (train/metrics.h).
#include "train/metrics.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iterator>
#include <limits>
#include <utility>

#include <nlohmann/json.hpp>

#include "core/atomic_file.h"
#include "core/host_memory.h"
#include "core/log.h"
#include "core/progress.h"
#include "parallel/runtime.h"

namespace qarac {
namespace {

MemoryPeaks larger(const MemoryPeaks& a, const MemoryPeaks& b) {
  return {std::max(a.host, b.host), std::max(a.node_host, b.node_host), std::max(a.device, b.device)};
}

double seconds_since(MetricsLog::Clock::time_point start) {
  return std::chrono::duration<double>(MetricsLog::Clock::now() - start).count();
}

}  // namespace

void gather_step_stats(StepStats& s, const std::vector<data::TaskSlot>& slots,
                       const std::vector<double>& slot_losses, const std::vector<double>& slot_seconds,
                       const parallel::MpiGroup* world, int rank, int world_size, int64_t step) {
  enum { kTokens, kExamples, kData, kCompute, kComm, kLoss, kCount = kLoss + data::kTaskCount };
  std::vector<double> sums(kCount + data::kTaskCount, 0.0);
  sums[kTokens] = static_cast<double>(s.tokens);
  sums[kExamples] = static_cast<double>(s.examples);
  sums[kData] = s.data_seconds;
  sums[kCompute] = s.compute_seconds;
  sums[kComm] = s.comm_seconds;
  // Maxima: per task its slowest rank's compute time, then every rank's own (zero elsewhere),
  // the stop request (signal number, rank + 1), the memory peaks (bytes: exact in a double up to
  // 8 PiB) and the longest wait.
  const size_t stop = data::kTaskCount + static_cast<size_t>(world_size), memory = stop + 2;
  std::vector<double> maxima(memory + 4, 0.0);
  for (size_t i = 0; i < slots.size(); ++i) {
    const int t = static_cast<int>(slots[i].task);
    sums[kLoss + t] += slot_losses[i];
    sums[kCount + t] += 1;
    maxima[static_cast<size_t>(t)] = std::max(maxima[static_cast<size_t>(t)], slot_seconds[i]);
  }
  maxima[data::kTaskCount + static_cast<size_t>(rank)] = s.compute_seconds;
  maxima[stop] = s.stop_signal;
  maxima[stop + 1] = s.stop_signal != 0 ? rank + 1 : 0;
  maxima[memory] = static_cast<double>(s.memory.host);
  maxima[memory + 1] = static_cast<double>(s.memory.node_host);
  maxima[memory + 2] = static_cast<double>(s.memory.device);
  maxima.back() = s.comm_seconds;
  if (world) {
    const std::string what = "step statistics at step " + std::to_string(step);
    world->all_reduce(sums.data(), static_cast<int>(sums.size()), MPI_SUM, what);
    world->all_reduce(maxima.data(), static_cast<int>(maxima.size()), MPI_MAX, what);
  }
  const double ranks = static_cast<double>(world_size);
  s.tokens = static_cast<int64_t>(sums[kTokens]);
  s.examples = static_cast<int64_t>(sums[kExamples]);
  s.data_seconds = sums[kData] / ranks;
  s.compute_seconds = sums[kCompute] / ranks;
  s.comm_seconds = sums[kComm] / ranks;
  s.comm_max_seconds = maxima.back();
  s.stop_signal = static_cast<int>(maxima[stop]);
  s.stop_rank = static_cast<int>(maxima[stop + 1]) - 1;
  s.memory.host = static_cast<uint64_t>(maxima[memory]);
  s.memory.node_host = static_cast<uint64_t>(maxima[memory + 1]);
  s.memory.device = static_cast<uint64_t>(maxima[memory + 2]);
  for (int t = 0; t < data::kTaskCount; ++t) {
    s.ran[t] = sums[kCount + t] > 0;
    // Each rank's part is already weighted by its share of the global batch: the sum is the mean.
    s.losses[t] = sums[kLoss + t];
    s.task_compute_seconds[t] = maxima[static_cast<size_t>(t)];
  }
  const auto per_rank = maxima.begin() + data::kTaskCount;
  const auto slowest = std::max_element(per_rank, per_rank + world_size);
  s.slowest_rank = static_cast<int>(slowest - per_rank);
  s.slowest_compute_seconds = *slowest;
}

namespace {

// Calls `each(line, record, step)` for every whole line of an earlier run's metrics.jsonl that is
// a JSON object with an integer step; nothing when there is no file.
void for_each_record(const std::string& path,
                     const std::function<void(const std::string&, const nlohmann::json&, int64_t)>& each) {
  std::error_code ec;
  QARAC_INPUT_CHECK(!std::filesystem::is_directory(path, ec), path, ": is a directory, not the run's metrics");
  check_input_file(path);  // a FIFO there would hold --resume in its open for good, signals or not
  std::ifstream in(path, std::ios::binary);
  if (!in.is_open()) return;
  const std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  QARAC_INPUT_CHECK(!in.bad(), path, ": cannot read");
  // The last line lacks its newline only when a write was cut short: it is passed over.
  for (size_t begin = 0, end; (end = text.find('\n', begin)) != std::string::npos; begin = end + 1) {
    const std::string line = text.substr(begin, end - begin);
    const nlohmann::json record = nlohmann::json::parse(line, nullptr, false);
    if (record.is_discarded() || !record.is_object() || !record.contains("step") || !record["step"].is_number_integer())
      continue;
    each(line, record, record["step"].get<int64_t>());
  }
}

// metrics.jsonl for appending, or -1 and errno. The umask decides who may write it, as for every
// file of the run (run_dir.cpp). Never through a link: one that another member of a group that
// shares the directory put there would have the run append to a file of its user's elsewhere.
int open_for_append(const std::string& path) {
  const int fd = ::open(path.c_str(), O_WRONLY | O_APPEND | O_CREAT | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC, 0666);
  if (fd < 0 && errno == ELOOP)
    throw InputError(path + ": a symbolic link, which the run does not write through: remove it");
  struct stat st {};
  if (fd >= 0 && (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode))) {
    ::close(fd);
    throw InputError(path + ": not a regular file (a FIFO, a device or a socket): remove it");
  }
  return fd;
}

// An evaluation line's record of what it measured on: 16 hex digits, as best.json's.
std::string fingerprint_text(uint64_t evaluation) {
  char hex[24];
  std::snprintf(hex, sizeof hex, "%016llx", static_cast<unsigned long long>(evaluation));
  return hex;
}

// The lines of an earlier run's metrics.jsonl that a run resuming at `first_step` keeps: whole
// JSON lines of steps up to it. A run that starts at step 0 (again) drops the evaluation there
// unless its line names `evaluation`, the run's (not another one, nor none, as an earlier
// version's lines): it is the baseline of every later evaluation, which the run measures again.
// Returns the numbers of the evaluations kept (null: NaN), and whether one at step 0 was dropped.
std::string kept_lines(const std::string& path, int64_t first_step, uint64_t evaluation,
                       std::map<int64_t, std::map<std::string, double>>& evals, bool& dropped_baseline) {
  std::string kept;
  for_each_record(path, [&](const std::string& line, const nlohmann::json& record, int64_t step) {
    if (step > first_step) return;
    // (json::value would throw at an "eval" that is no bool: a line like any other damaged one.)
    if (const auto eval = record.find("eval"); eval != record.end() && eval->is_boolean() && eval->get<bool>()) {
      const auto measured = record.find("evaluation");
      // A run without a fingerprint (0) writes lines without one: nothing to compare, kept.
      if (first_step == 0 && evaluation != 0 &&
          (measured == record.end() || *measured != fingerprint_text(evaluation))) {
        dropped_baseline = true;
        return;
      }
      std::map<std::string, double>& numbers = evals[step];
      for (const auto& [name, value] : record.items())
        if (value.is_number() || value.is_null())
          numbers[name] = value.is_null() ? std::nan("") : value.get<double>();
    }
    kept += line + "\n";
  });
  return kept;
}

// train.progress: whether the progress line is rewritten in place. Launchers give a rank a
// terminal of their own (Open MPI's pseudo-terminals) even when their output goes to a file, so
// auto trusts isatty only outside them.
bool rewrites_progress(const std::string& progress) {
  if (progress != "auto") return progress == "tty";
  // A dumb terminal (an editor's shell buffer) has no erase-to-end-of-line.
  const char* term = std::getenv("TERM");
  return !parallel::started_by_a_launcher() && isatty(fileno(stdout)) != 0 &&
         !(term != nullptr && std::strcmp(term, "dumb") == 0);
}

}  // namespace

RecordedSteps recorded_steps(const std::string& path) {
  RecordedSteps last;
  for_each_record(path, [&](const std::string&, const nlohmann::json& record, int64_t step) {
    last.step = std::max(last.step, step);
    const auto checkpoint = record.find("last_checkpoint");
    if (checkpoint != record.end() && checkpoint->is_number_integer())
      last.checkpoint = std::max(last.checkpoint, checkpoint->get<int64_t>());
  });
  return last;
}

void MetricsLog::open(const std::string& path, int64_t first_step, bool resuming, const std::string& progress,
                      uint64_t evaluation) {
  path_ = path;
  evaluation_ = evaluation;
  if (resuming) {
    bool dropped_baseline = false;
    const std::string kept = kept_lines(path, first_step, evaluation, evals_, dropped_baseline);
    std::error_code ec;
    // Rewritten, not cut in place: a copy of the run directory made with hard links (cp -al)
    // shares the file, and the copy's run must append to a file of its own.
    if (std::filesystem::exists(std::filesystem::symlink_status(path, ec))) {
      AtomicFile file(path, AtomicFile::stream, AtomicFile::replace);
      file.write(kept.data(), kept.size());
      file.commit();
    }
    if (dropped_baseline)
      log::warn("--resume: ", path, "'s evaluation at step 0 is not of this run's held-out evaluation (other examples ",
                "or settings, or a line of an earlier version, which does not say): the run evaluates at step 0 again");
  }
  fd_ = open_for_append(path);
  QARAC_INPUT_CHECK(fd_ >= 0, path, ": cannot open for writing: ", std::strerror(errno));
  terminal_ = rewrites_progress(progress);
}

std::map<int64_t, double> MetricsLog::eval_values(const std::string& metric) const {
  std::map<int64_t, double> values;
  for (const auto& [step, numbers] : evals_) {
    const auto it = numbers.find(metric);
    if (it != numbers.end()) values[step] = it->second;
  }
  return values;
}

MetricsLog::~MetricsLog() {
  if (fd_ >= 0) ::close(fd_);
}

void MetricsLog::sync() {
  if (fd_ < 0) return;
  if (const int err = fsync_retrying(fd_)) throw InputError(detail::concat(path_, ": cannot write: ", std::strerror(err)));
}

void MetricsLog::close() {
  sync();
  // Linux closes the descriptor even when close() fails: never closed again.
  if (fd_ >= 0 && ::close(std::exchange(fd_, -1)) != 0)
    throw InputError(detail::concat(path_, ": cannot write: ", std::strerror(errno)));
}

void MetricsLog::start(int64_t first_step) {
  started_ = Clock::now();
  first_step_ = first_step;
}

void MetricsLog::write_step(int64_t step, int world_size, const parallel::TaskPlan& plan, const StepStats& s) {
  nlohmann::json line;
  line["step"] = step;
  line["world_size"] = world_size;
  line["lr"] = s.lr;
  line["grad_norm"] = s.grad_norm;
  nlohmann::json losses = nlohmann::json::object();
  double weighted = 0;
  for (int t = 0; t < data::kTaskCount; ++t) {
    if (!s.ran[t]) continue;
    const data::Task task = static_cast<data::Task>(t);
    losses[data::task_name(task)] = s.losses[t];
    weighted += plan.weight(task) * s.losses[t];
  }
  line["loss"] = losses;
  line["loss_weighted"] = weighted;  // Σ w_t loss_t
  const double per_s = s.seconds > 0 ? 1.0 / s.seconds : 0.0;
  line["global_tokens"] = s.tokens;
  line["global_examples"] = s.examples;
  line["global_tokens_per_s"] = static_cast<double>(s.tokens) * per_s;
  line["global_examples_per_s"] = static_cast<double>(s.examples) * per_s;
  line["step_time_s"] = s.seconds;
  line["data_time_s"] = s.data_seconds;
  line["compute_time_s"] = s.compute_seconds;
  line["comm_wait_s"] = s.comm_seconds;
  line["comm_wait_max_s"] = s.comm_max_seconds;
  nlohmann::json task_compute = nlohmann::json::object();
  for (int t = 0; t < data::kTaskCount; ++t)
    if (s.ran[t]) task_compute[data::task_name(static_cast<data::Task>(t))] = s.task_compute_seconds[t];
  line["task_compute_max_s"] = task_compute;  // per task, its slowest rank
  line["slowest_rank"] = s.slowest_rank;
  line["slowest_rank_compute_s"] = s.slowest_compute_seconds;
  line["host_tensors_peak_bytes"] = s.memory.host;
  line["node_host_tensors_peak_bytes"] = s.memory.node_host;
  if (s.memory.device > 0) line["gpu_tensors_peak_bytes"] = s.memory.device;
  stepped_ = true;
  memory_ = larger(memory_, s.memory);
  // A record that a checkpoint had completed, which a --resume that finds none left reads.
  if (s.last_checkpoint >= 0) line["last_checkpoint"] = s.last_checkpoint;
  if (s.skipped) line["skipped"] = true;
  if (s.skipped_steps > 0) line["skipped_steps"] = s.skipped_steps;
  line["elapsed_s"] = seconds_since(started_);
  append(step, line.dump());
}

void MetricsLog::note_memory_peaks(const MemoryPeaks& since_reset) { rank0_ = larger(rank0_, since_reset); }

void MetricsLog::say_memory_peaks(const MemoryPeaks& now) {
  note_memory_peaks(now);
  if (!stepped_) return;
  const HostMemoryLimit& limit = host_memory_limit();
  const std::string where = memory_.node_host > memory_.host
                                ? " on a node (its ranks together; " + size_text(memory_.host) + " on a rank)"
                                : " on a rank";
  const bool known = limit.bytes != std::numeric_limits<uint64_t>::max();
  const std::string node0 = rank0_.node_host > rank0_.host ? " (" + size_text(rank0_.node_host) + " on its node)" : "";
  log::info("the steps' memory peaks: host tensors ", size_text(memory_.node_host), where,
            known ? ", of the " + size_text(limit.bytes) + " " + limit.source + " on " + hostname() : "",
            memory_.device > 0 ? "; GPU tensors " + size_text(memory_.device) + " on a rank" : "",
            "; rank 0 over the whole run (its evaluations, checkpoints and export included): host tensors ",
            size_text(rank0_.host), node0, rank0_.device > 0 ? ", GPU tensors " + size_text(rank0_.device) : "");
}

void MetricsLog::write_eval(int64_t step, const std::map<std::string, double>& metrics) {
  if (metrics.empty()) return;
  nlohmann::json line;
  line["step"] = step;
  line["eval"] = true;
  if (evaluation_ != 0) line["evaluation"] = fingerprint_text(evaluation_);  // what it measured on
  for (const auto& [name, value] : metrics) line[name] = value;
  append(step, line.dump());
  evals_[step] = metrics;
  std::string text;
  for (const auto& [name, value] : metrics)
    if (name.find(".confusion.") == std::string::npos) text += " " + name + "=" + std::to_string(value);
  end_progress_line();
  log::info("eval at step ", step, ":", text);
}

void MetricsLog::print_progress(int64_t step, int64_t steps, int64_t log_every, int world_size,
                                const StepStats& s) {
  const bool last = step == steps;
  if (!terminal_ && step % log_every != 0 && !last) return;
  const double per_step = seconds_since(started_) / static_cast<double>(step - first_step_);
  std::string losses;
  char item[64];
  for (int t = 0; t < data::kTaskCount; ++t) {
    if (!s.ran[t]) continue;
    std::snprintf(item, sizeof item, "%s%s %.4f", losses.empty() ? "" : " ",
                  data::task_short_name(static_cast<data::Task>(t)), s.losses[t]);
    losses += item;
  }
  char comm[64] = "";
  if (world_size > 1) std::snprintf(comm, sizeof comm, " (comm wait %.3f)", s.comm_seconds);
  char line[512];
  std::snprintf(line, sizeof line,
                "step %lld/%lld | loss %s | lr %.3g | grad norm %.3g | %.0f tokens/s | %.3f s/step%s | ETA %s",
                static_cast<long long>(step), static_cast<long long>(steps), losses.c_str(), s.lr, s.grad_norm,
                s.seconds > 0 ? static_cast<double>(s.tokens) / s.seconds : 0.0, s.seconds, comm,
                duration_text(per_step * static_cast<double>(steps - step)).c_str());
  // On a terminal the line is rewritten in place ("\r", then erase to the end of the line).
  if (terminal_) {
    std::printf("\r%s\033[K", line);
    progress_open_ = true;
    if (last) end_progress_line();
  } else {
    std::printf("%s\n", line);
  }
  flush_log();
}

void MetricsLog::end_progress_line() {
  if (!progress_open_) return;
  std::printf("\n");
  progress_open_ = false;
  flush_log();
}

void MetricsLog::flush_log() {
  errno = 0;
  if (std::fflush(stdout) == 0 && !std::ferror(stdout)) return;
  const int err = errno;
  log::warn("standard output: write failed", err != 0 ? std::string(": ") + std::strerror(err) : std::string(),
            ": no more progress lines (metrics.jsonl has every step)");
  terminal_ = progress_open_ = false;
  // Unwritten bytes and the error go with the old stream; the end of the run finds none.
  if (std::freopen("/dev/null", "w", stdout) == nullptr) std::clearerr(stdout);
}

void MetricsLog::append(int64_t step, const std::string& line) {
  const std::string bytes = line + "\n";
  struct stat before {};
  QARAC_INPUT_CHECK(fstat(fd_, &before) == 0, path_, ": cannot write: ", std::strerror(errno));
  if (before.st_nlink == 0) {
    // Removed while the run wrote it (a user freeing the disk): its lines would go to a file no
    // name reaches. A new file goes on from this line.
    const int fd = open_for_append(path_);
    QARAC_INPUT_CHECK(fd >= 0, path_, ": removed while the run wrote it, and cannot be created again: ",
                      std::strerror(errno));
    ::close(fd_);
    fd_ = fd;
    end_progress_line();
    log::warn(path_, ": removed while the run wrote it; its earlier lines are lost, a new file holds those from step ",
              step, " on");
    QARAC_INPUT_CHECK(fstat(fd_, &before) == 0, path_, ": cannot write: ", std::strerror(errno));
  }
  size_t done = 0;
  while (done < bytes.size()) {
    const ssize_t n = ::write(fd_, bytes.data() + done, bytes.size() - done);
    if (n > 0) {
      done += static_cast<size_t>(n);
    } else if (n < 0 && errno != EINTR) {
      const int err = errno;
      // Cut back to the last whole line: a reader (and a resumed run) never sees half a record.
      if (ftruncate(fd_, before.st_size) != 0)
        log::warn(path_, ": cannot remove the part of a line written before the failure");
      throw InputError(detail::concat(path_, ": cannot write: ", std::strerror(err)));
    }
  }
}

}  // namespace qarac
