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

std::string checkpoint_dir(const std::string& output) { return (fs::path(output) / "checkpoints").string(); }

std::string find_resume_checkpoint(const std::string& output, int rank, const parallel::MpiGroup* world) {
  const std::string dir = checkpoint_dir(output);
  // Every rank refuses an old layout itself, so that the job ends with one line from each.
  refuse_old_checkpoints(dir);
  // Rank 0 alone verifies (reading every file): the others take its choice, -1 for none.
  double step = -1;
  if (rank == 0) {
    const std::optional<std::string> latest = find_latest_checkpoint(dir);
    if (latest) step = static_cast<double>(checkpoint_step(*latest));
  }
  if (world) world->all_reduce(&step, 1, MPI_MAX, "agreeing on the checkpoint to resume from");
  QARAC_INPUT_CHECK(step >= 0, "--resume: no valid checkpoint in ", dir);
  return checkpoint_path(dir, static_cast<int64_t>(step));
}

}  // namespace qarac
