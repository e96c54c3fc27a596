// The run directory's checks and the agreement on the step to resume from (train/run_dir.h).
#include "train/run_dir.h"

#include <filesystem>
#include <optional>

#include "core/log.h"
#include "train/checkpoint.h"

namespace qarac {

namespace fs = std::filesystem;

void check_output_dir(const std::string& output, bool resume) {
  std::error_code ec;
  const bool exists = fs::exists(output, ec);
  if (resume) {
    QARAC_INPUT_CHECK(exists, "--resume: output ", output, " does not exist");
    return;
  }
  if (!exists) return;
  QARAC_INPUT_CHECK(fs::is_directory(output, ec), "output: ", output, " is not a directory");
  QARAC_INPUT_CHECK(fs::is_empty(output, ec), "output: ", output,
                    " is not empty (--resume continues its run; or choose another directory)");
}

std::string checkpoint_dir(const std::string& output, int rank, int world_size) {
  const fs::path dir = fs::path(output) / "checkpoints";
  return (world_size > 1 ? dir / ("rank-" + std::to_string(rank)) : dir).string();
}

std::string find_resume_checkpoint(const std::string& output, int rank, int world_size,
                                   const parallel::MpiGroup* world) {
  // A run resumes with the world size it was trained with: its checkpoints lie in one folder
  // per rank (several ranks) or in checkpoints/ itself (one).
  int rank_folders = 0;
  std::error_code ec;
  for (const fs::directory_entry& e : fs::directory_iterator(fs::path(output) / "checkpoints", ec))
    rank_folders += e.is_directory() && e.path().filename().string().rfind("rank-", 0) == 0;
  const int trained_with = rank_folders > 0 ? rank_folders : 1;
  QARAC_INPUT_CHECK(trained_with == world_size, "--resume: ", output, " was trained with ", trained_with,
                    " rank(s) and this job has ", world_size, "; resume it with as many (mpirun -np ",
                    trained_with, ")");
  const std::string dir = checkpoint_dir(output, rank, world_size);
  const std::optional<std::string> latest = find_latest_checkpoint(dir);
  if (!world) {
    QARAC_INPUT_CHECK(latest, "--resume: no valid checkpoint in ", dir);
    return *latest;
  }
  // Every rank's newest step (-1 for none); the run resumes from the oldest of them.
  double newest = latest ? static_cast<double>(checkpoint_step(*latest)) : -1;
  double oldest = newest;
  world->all_reduce(&newest, 1, MPI_MAX, "agreeing on the checkpoint to resume from");
  world->all_reduce(&oldest, 1, MPI_MIN, "agreeing on the checkpoint to resume from");
  QARAC_INPUT_CHECK(oldest >= 0, "--resume: some rank has no valid checkpoint (this is rank ", rank,
                    "; its folder ", dir, latest ? " has one)" : " has none)");
  if (oldest != newest && rank == 0)
    log::warn("--resume: the ranks' newest checkpoints differ (steps ", oldest, " and ", newest,
              "); resuming all from step ", oldest);
  return checkpoint_path(dir, static_cast<int64_t>(oldest));
}

}  // namespace qarac
