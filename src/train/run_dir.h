// A run's directory (config.output): who may use it, and where a run starts in it. Layout:
//   .qarac.lock             held (flock) by rank 0 of the run using the directory: one run at a time;
//                           its host, pid and heartbeat while it runs, emptied at its end
//                           (train/run_lock.h)
//   config.ini              the effective configuration, rewritten at every start (a resume notes
//                           the settings it changed)
//   metrics.jsonl           one JSON object per step, and per evaluation ("eval": true)
//   checkpoints/            step-<step>/<part>.h5, the newest checkpoint.keep of them: the global
//                           state, every model group once (train/checkpoint.h), whatever the
//                           world size (with several machines the folder must be shared)
//   export/<model>/         config.json + model.safetensors per model, at the end
//   best/                   with eval.best: best.json and <model>/ of the best evaluation so far
//   stopped.json            after a stop on request, until the next start (record_stop)
//   failed.json             after a rank's wait on the others failed, until the next start
//                           (record_failure)
// A run can always go on: `--resume` continues from the newest valid checkpoint, or from step 0
// when the run never completed one (killed before or during its first checkpoint); a run whose
// checkpoints were removed after it went past them is refused (refuse_restart_over_records).
#pragma once

#include <optional>
#include <string>

#include "parallel/communicator.h"
#include "train/run_lock.h"

namespace qarac {

constexpr const char* kStopRecordName = "stopped.json";
constexpr const char* kFailureRecordName = "failed.json";

// A fresh run needs a new or empty directory (the lock file of a finished run aside), so that it
// never mixes its files with another run's; --resume needs the directory of a run. InputError
// naming the directory otherwise. Reads only: the check is repeated under the lock.
void check_output_dir(const std::string& output, bool resume);

// Where a run keeps its checkpoints: <output>/checkpoints.
std::string checkpoint_dir(const std::string& output);

// Rank 0, when --resume finds no completed checkpoint: a run killed before its first one starts
// again from step 0, but one whose records show that it went past a checkpoint (a step line of
// metrics.jsonl names its last_checkpoint; in records without them, a step after the first due
// every checkpoint.every, as the directory's config.ini gives it, else `checkpoint_every`; or
// export/ holds its models: checkpoints removed to free the disk) is refused, InputError saying
// what, before a start from step 0 rewrites its metrics and export. Returns the last step that
// metrics.jsonl records (-1: none), whose lines the start from step 0 drops.
int64_t refuse_restart_over_records(const std::string& output, int64_t checkpoint_every);

// A run that stops on request (train/stop_signals.h) exits 75 with its checkpoint complete, but
// a launcher may not pass that status on: srun --kill-on-bad-exit ends the other ranks with
// SIGKILL once one has exited 75, and reports 137. So rank 0 also records the stop, atomically,
// once its checkpoint is complete: <output>/stopped.json, {"step", "signal", "rank",
// "checkpoint"}; slurm/train.sbatch requeues on it. The next start in the directory removes it
// (remove_stop_record, which removes the failure record too), so that it always speaks of the
// run's last end. InputError naming the file.
void record_stop(const std::string& output, int64_t step, const char* signal, int rank, const std::string& checkpoint);
void remove_stop_record(const std::string& output);

// A rank whose wait on the others failed (a peer died, hangs, or is cut off: CommError) ends the
// job with MPI_Abort, but a launcher may then wait for ever on the daemon of a node that hangs or
// is cut off (Open MPI's mpirun does: tests/launch/test_fake_nodes.sh), holding the allocation to
// its time limit. So that the job script can end it (slurm/train.sbatch), such a rank records the
// failure in <output>/failed.json, {"step", "rank", "host", "error"}, atomically; with several, one
// of them. Only a run whose ranks passed the directory's lock does (another run's directory is not
// touched), and the next start removes the record with the stop record's (remove_stop_record);
// a run that failed in its first step discards its files but this record, and its directory
// counts as a new one (check_output_dir).
// Never throws: the rank is failing already, and the record only helps to end the job.
void record_failure(const std::string& output, int64_t step, int rank, const std::string& error) noexcept;

// The checkpoint --resume starts from: the newest valid one, which rank 0 finds and tells the
// others (`world` set: collective over it); nullopt when the run never completed one, so that it
// starts again from step 0. Any world size and task plan may resume it. InputError when the
// folder holds checkpoints of the per-rank layout of earlier versions (on every rank).
std::optional<std::string> find_resume_checkpoint(const std::string& output, int rank,
                                                  const parallel::MpiGroup* world);

}  // namespace qarac
