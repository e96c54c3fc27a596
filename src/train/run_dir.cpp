// The run directory's checks, its records, and the agreement on the step to resume from
// (train/run_dir.h; its lock: run_lock.cpp).
#include "train/run_dir.h"

#include <sys/stat.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>

#include <nlohmann/json.hpp>

#include "core/atomic_file.h"
#include "core/log.h"
#include "io/hf_export.h"
#include "train/checkpoint.h"
#include "train/config.h"
#include "train/metrics.h"

namespace qarac {

namespace fs = std::filesystem;

namespace {

// Empty but for the lock file a finished run leaves behind, and the failure record of one that
// failed in its first step (its other files discarded; the record kept for the job script).
bool holds_nothing(const std::string& output) {
  std::error_code ec;
  for (fs::directory_iterator it(output, ec), end; !ec && it != end; it.increment(ec))
    if (it->path().filename() != kRunLockName && it->path().filename() != kFailureRecordName) return false;
  return !ec;
}

// What a run writes into its directory: one of them marks a directory as a run's.
bool is_run_entry(const fs::path& name) {
  for (const char* entry : {kRunLockName, "config.ini", "metrics.jsonl", "checkpoints", "export"})
    if (name == entry) return true;
  return false;
}

// export/ and best/ are replaced as a whole (io::write_folder): through a link, its target is
// replaced by a folder written beside it, which needs the target's parent writable and on the
// target's file system (not a mount point). Checked at the start, not after the run.
void check_linked_export(const fs::path& link) {
  std::error_code ec;
  const fs::path target = fs::canonical(link, ec);
  QARAC_INPUT_CHECK(!ec, "--resume: ", link.string(), ": a link that cannot be followed (", ec.message(), ")");
  const fs::path parent = target.parent_path();
  struct stat of_target {}, of_parent {};
  const bool same_device = ::stat(target.c_str(), &of_target) == 0 && ::stat(parent.c_str(), &of_parent) == 0 &&
                           of_target.st_dev == of_parent.st_dev;
  QARAC_INPUT_CHECK(same_device && ::access(parent.c_str(), W_OK) == 0, "--resume: ", link.string(), " links to ",
                    target.string(), ", which the run replaces with a folder written beside it, but ", parent.string(),
                    same_device ? " is not writable" : " is another file system (the target is a mount point)",
                    ": point it at a folder in a writable folder of its file system, or remove the link");
  io::check_replaceable(link, {"best.json"});  // eval.best's record beside its models
}

}  // namespace

void check_output_dir(const std::string& output, bool resume) {
  std::error_code ec;
  const bool exists = fs::exists(output, ec);
  if (resume) {
    QARAC_INPUT_CHECK(exists, "--resume: output ", output, " does not exist");
    QARAC_INPUT_CHECK(fs::is_directory(output, ec), "--resume: output ", output, " is not a directory");
    // A run that never completed a checkpoint starts again from step 0 in its directory: make
    // sure it is one (or empty), not some folder named by mistake.
    bool run = true;
    for (fs::directory_iterator it(output, ec), end; !ec && it != end; it.increment(ec))
      if ((run = is_run_entry(it->path().filename()))) break;
    QARAC_INPUT_CHECK(run, "--resume: ", output, " is not a run directory (no config.ini, metrics.jsonl or checkpoints/)");
    // The folders the run writes into must be folders: found now, not after the whole run.
    for (const char* folder : {"checkpoints", "export", "best"}) {
      const fs::path path = fs::path(output) / folder;
      QARAC_INPUT_CHECK(!fs::exists(fs::symlink_status(path, ec)) || fs::is_directory(path, ec), "--resume: ",
                        path.string(), " is not a directory (the run writes its ", folder, " there): move it away");
      if (std::string(folder) != "checkpoints" && fs::is_symlink(path, ec)) check_linked_export(path);
    }
    return;
  }
  if (!exists) return;
  QARAC_INPUT_CHECK(fs::is_directory(output, ec), "output: ", output, " is not a directory");
  QARAC_INPUT_CHECK(holds_nothing(output), "output: ", output,
                    " is not empty (--resume continues its run, from step 0 if it never completed a checkpoint;"
                    " or choose another directory)");
}

std::string checkpoint_dir(const std::string& output) { return (fs::path(output) / "checkpoints").string(); }

void record_stop(const std::string& output, int64_t step, const char* signal, int rank, const std::string& checkpoint) {
  const nlohmann::json record = {{"step", step}, {"signal", signal}, {"rank", rank}, {"checkpoint", checkpoint}};
  const std::string text = record.dump() + "\n";
  AtomicFile file((fs::path(output) / kStopRecordName).string(), AtomicFile::stream, AtomicFile::replace);
  file.write(text.data(), text.size());
  file.commit();
}

void remove_stop_record(const std::string& output) {
  for (const char* record : {kStopRecordName, kFailureRecordName}) {
    const std::string path = (fs::path(output) / record).string();
    std::error_code ec;
    fs::remove(path, ec);
    QARAC_INPUT_CHECK(!ec, path, ": cannot remove the record of the run's last end (", ec.message(),
                      "): a job script would take it for this run's");
  }
}

void record_failure(const std::string& output, int64_t step, int rank, const std::string& error) noexcept {
  try {
    const nlohmann::json record = {{"step", step}, {"rank", rank}, {"host", hostname()}, {"error", error}};
    const std::string text = record.dump() + "\n";
    AtomicFile file((fs::path(output) / kFailureRecordName).string(), AtomicFile::stream, AtomicFile::replace);
    file.write(text.data(), text.size());
    file.commit();
  } catch (const std::exception& e) {
    log::debug("cannot record the failure: ", e.what());
  }
}

int64_t refuse_restart_over_records(const std::string& output, int64_t checkpoint_every) {
  const fs::path dir(output);
  const RecordedSteps recorded = recorded_steps((dir / "metrics.jsonl").string());
  // Records of versions without last_checkpoint: the interval of the run that wrote them, which
  // its config.ini (not yet rewritten) gives, tells whether a checkpoint was due before a step.
  check_input_file((dir / "config.ini").string());  // a FIFO would hold the start in its open
  std::ifstream ini(dir / "config.ini");
  const std::string text((std::istreambuf_iterator<char>(ini)), std::istreambuf_iterator<char>());
  for (const IniEntry& e : ini_entries(text)) {
    char* end = nullptr;
    const long long every = std::strtoll(e.value.c_str(), &end, 10);
    // (A comment may follow the number, as the option parser allows.)
    if (e.key == "checkpoint.every" && end != e.value.c_str() && (*end == '\0' || *end == ' ' || *end == '#') &&
        every >= 0)
      checkpoint_every = every;
  }
  std::error_code ec;
  const bool exported = fs::exists(dir / "export", ec);
  std::string past;
  if (recorded.checkpoint >= 0)
    past = detail::concat("metrics.jsonl records steps after its checkpoint at step ", recorded.checkpoint);
  else if (checkpoint_every > 0 && recorded.step > checkpoint_every)
    past = detail::concat("metrics.jsonl records step ", recorded.step, ", checkpoint.every is ", checkpoint_every);
  else if (exported)
    past = "export/ holds its models";
  if (past.empty()) return recorded.step;
  throw InputError(detail::concat(
      "--resume: no checkpoint is left in ", checkpoint_dir(output), ", but the run went past one (", past,
      "): starting again from step 0 would rewrite its metrics.jsonl and export/; restore the checkpoints, or "
      "start a new run in another directory"));
}

std::optional<std::string> find_resume_checkpoint(const std::string& output, int rank,
                                                  const parallel::MpiGroup* world) {
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
  if (step < 0) return std::nullopt;
  return checkpoint_path(dir, static_cast<int64_t>(step));
}

}  // namespace qarac
