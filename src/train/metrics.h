// What a run reports (docs/design.md §6): the measurements of a step, summed over the world, and
// rank 0's two outputs: metrics.jsonl, one JSON object per step and per evaluation ("eval": true),
// and the progress line, rewritten in place on a terminal, one line every train.log_every steps
// otherwise.
#pragma once

#include <array>
#include <chrono>
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "core/memory.h"
#include "parallel/communicator.h"
#include "parallel/task_plan.h"

namespace qarac {

// What one step measured. After gather_step_stats, the losses, counts and times are the world's.
struct StepStats {
  double lr = 0, grad_norm = 0;
  std::array<double, data::kTaskCount> losses{};  // per task: the mean over its global batch
  std::array<bool, data::kTaskCount> ran{};       // tasks that ran anywhere
  int64_t tokens = 0, examples = 0;               // summed over the ranks
  double seconds = 0;                              // this rank's wall time of the step
  // Means over the ranks: reading the batch, forward/backward/update, waiting for the gradient
  // reduction and the gradient norm; and the longest wait of any rank.
  double data_seconds = 0, compute_seconds = 0, comm_seconds = 0, comm_max_seconds = 0;
  // Per task, the longest time any of its ranks spent in its forward and backward passes (host
  // time: on CUDA, the time to queue them); the rank that computed longest and for how long.
  std::array<double, data::kTaskCount> task_compute_seconds{};
  int slowest_rank = 0;
  double slowest_compute_seconds = 0;
  // A stop request (train/stop_signals.h): before gather_step_stats this rank's signal, or 0;
  // after it the world's (the highest signal number) and the highest rank that received one.
  int stop_signal = 0;
  int stop_rank = -1;
  // train.nonfinite skip: this step's update was left out; the steps left out so far in the run.
  bool skipped = false;
  int64_t skipped_steps = 0;
  // The most the tensors held during the step (core/memory.h's MemoryPeaks): before
  // gather_step_stats this rank's, after it the largest of any rank's.
  MemoryPeaks memory;
  // The step of the run's newest completed checkpoint before this step; -1: none yet.
  int64_t last_checkpoint = -1;
};

// `slot_losses` are this process's parts of its tasks' global-batch means (each micro-batch's
// mean times its examples / N) and `slot_seconds` the time of each task's passes, in the order of
// `slots`; with a `world`, summed (the losses, counts and times) or maximised (the per-task and
// per-rank compute times, and the stop request) over it: two small all-reduces per step, so
// that every rank learns of a stop request after the same step. `step` names the step in errors.
void gather_step_stats(StepStats& s, const std::vector<data::TaskSlot>& slots,
                       const std::vector<double>& slot_losses, const std::vector<double>& slot_seconds,
                       const parallel::MpiGroup* world, int rank, int world_size, int64_t step);

// Of the whole lines of the metrics.jsonl at `path`: the largest step (a step's or an
// evaluation's) and the largest last_checkpoint of a step's; -1 for none, or no file.
struct RecordedSteps {
  int64_t step = -1, checkpoint = -1;
};
RecordedSteps recorded_steps(const std::string& path);

// Rank 0's metrics.jsonl and progress line.
class MetricsLog {
 public:
  using Clock = std::chrono::steady_clock;

  MetricsLog() = default;
  MetricsLog(const MetricsLog&) = delete;
  MetricsLog& operator=(const MetricsLog&) = delete;

  // Opens `path` for appending; the progress line is rewritten in place on a terminal, as
  // train.progress (`progress`) says, one line every train.log_every steps otherwise. A run that
  // starts at step `first_step` of an earlier one (resuming) keeps only the earlier lines of steps
  // up to it: the steps after its checkpoint run again and are written again, and a line cut short
  // by a crash or a full disk is dropped. `evaluation` is the fingerprint of the run's held-out
  // evaluation (Evaluator::fingerprint; 0: none), which every evaluation line records
  // ("evaluation": 16 hex digits); a run that starts at step 0 again keeps the evaluation there
  // only when it records that one. InputError naming the file when it cannot.
  void open(const std::string& path, int64_t first_step, bool resuming, const std::string& progress,
            uint64_t evaluation);
  // Whether the file holds the line of an evaluation at `step` (one that a resumed run need not
  // repeat).
  bool has_eval(int64_t step) const { return evals_.count(step) != 0; }
  // The value of `metric` at each evaluation the file holds that gave it, this run's included, by
  // step (NaN where it was not finite: JSON null).
  std::map<int64_t, double> eval_values(const std::string& metric) const;
  // Puts the lines written so far on disk (at a checkpoint: what it covers survives a crash).
  void sync();
  // The last lines on disk and the file closed, both checked (a network file system may report a
  // lost write only at the close): at the end of a run, before its export. No line follows.
  void close();
  // Closes the file unchecked where close() was not reached: a run that failed.
  ~MetricsLog();
  // The clock of elapsed_s and the ETA starts here, at step `first_step` of this process.
  void start(int64_t first_step);

  // The line of a step: losses by task, Σ w_t loss_t, throughput and the times of `s`.
  void write_step(int64_t step, int world_size, const parallel::TaskPlan& plan, const StepStats& s);
  // The line of an evaluation, and a log line of the metrics (the confusion matrix's cells left
  // out: metrics.jsonl has them all). Nothing for no metrics.
  void write_eval(int64_t step, const std::map<std::string, double>& metrics);
  // The progress line after step `step` of `steps`: on a terminal every step, otherwise every
  // `log_every` steps and the last.
  void print_progress(int64_t step, int64_t steps, int64_t log_every, int world_size, const StepStats& s);
  // Ends a progress line left open on the terminal: before a log line, so that it does not land
  // inside the progress line.
  void end_progress_line();
  // Rank 0, before its memory peaks are reset for a step (core/memory.h): what its tensors held at
  // most since the last reset (the last step and what followed it: an evaluation, a checkpoint).
  void note_memory_peaks(const MemoryPeaks& since_reset);
  // A log line, for sizing a job's memory (Slurm's --mem, the GPUs, the batches), of the largest
  // memory peaks of the steps written since start() (any rank's), and of the whole run on rank 0,
  // evaluations, checkpoints and the export included (`now`: its peaks since the last reset);
  // nothing when no step was written.
  void say_memory_peaks(const MemoryPeaks& now);

 private:
  // Flushes the log on stdout. stdout is the run's log, not its record (metrics.jsonl is): when
  // its reader has gone (a `| tee` that the Ctrl-C asking for a checkpoint ended too, `| head`;
  // qarac-train ignores SIGPIPE), the run goes on, says so once on stderr, and the rest of the
  // log goes to /dev/null.
  void flush_log();
  // Appends the line of `step` whole, or throws (InputError naming the file) with the file cut
  // back to where it was: a failed write never leaves half a line. A file removed while the run
  // wrote it is created again, and said.
  void append(int64_t step, const std::string& line);

  std::string path_;
  int fd_ = -1;
  std::map<int64_t, std::map<std::string, double>> evals_;  // the evaluations' numbers, by step
  uint64_t evaluation_ = 0;                                  // open()'s
  bool terminal_ = false;       // stdout is a terminal: the progress line is rewritten in place
  bool progress_open_ = false;  // a progress line without its newline is on the terminal
  Clock::time_point started_;
  int64_t first_step_ = 0;
  MemoryPeaks memory_;    // the largest of the steps written since start()
  MemoryPeaks rank0_;     // rank 0's since the process started (note_memory_peaks)
  bool stepped_ = false;  // a step was written since start()
};

}  // namespace qarac
