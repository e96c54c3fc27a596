// The run directory's checks, its lock, and the agreement on the step to resume from
// (train/run_dir.h).
#include "train/run_dir.h"

#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
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

// What a lock holder wrote into the lock file: "<host> pid <pid>" (text, "" when unreadable) and
// the inode of the directory it holds (0: unknown, a holder of an earlier version).
struct Holder {
  std::string text;
  ino_t directory = 0;
};

constexpr const char* kDirectoryField = "directory inode ";

Holder holder_of(int fd) {
  char bytes[256] = {};
  const ssize_t n = pread(fd, bytes, sizeof bytes - 1, 0);
  Holder holder;
  if (n <= 0) return holder;
  const std::string s(bytes, static_cast<size_t>(n));
  holder.text = s.substr(0, s.find('\n'));
  const size_t field = s.find(kDirectoryField);
  if (field != std::string::npos)
    holder.directory = std::strtoull(s.c_str() + field + std::strlen(kDirectoryField), nullptr, 10);
  return holder;
}

// The host a holder's text names ("<host> pid <pid>"), "" when it names none.
std::string host_of(const Holder& holder) {
  const size_t end = holder.text.rfind(" pid ");
  return end == std::string::npos ? std::string() : holder.text.substr(0, end);
}

// Whether `path` names the file `held`.
bool names(const std::string& path, const struct stat& held) {
  struct stat named {};
  return ::stat(path.c_str(), &named) == 0 && named.st_dev == held.st_dev && named.st_ino == held.st_ino;
}

// Replaces the lock file `path` of the run directory `output`, found `shared` with another
// directory by a hard link, by a new one, unless it was replaced since or is no longer linked
// elsewhere. One replacement at a time in the directory, and only of a file still shared: a run
// that found the file shared, then waited while the original gave itself a new file, must not
// replace the file that another run in this directory has since locked as its own (its link
// count fell to 1; it rises again only with a new cp -al). Where directories cannot be locked
// (NFS, whose flock is local to a client), two such runs starting within a round trip are not
// ruled out; the loser's check_held stops it at its first checkpoint.
void make_own(const std::string& output, const std::string& path, const struct stat& shared) {
  struct DirectoryLock {
    int fd;
    explicit DirectoryLock(const std::string& dir) : fd(open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC)) {
      if (fd >= 0) flock(fd, LOCK_EX);
    }
    ~DirectoryLock() {
      if (fd >= 0) close(fd);  // releases it
    }
  } serialised(output);
  struct stat now {};
  if (::stat(path.c_str(), &now) != 0 || now.st_dev != shared.st_dev || now.st_ino != shared.st_ino ||
      now.st_nlink < 2)
    return;
  try {
    AtomicFile own(path, AtomicFile::stream, AtomicFile::replace);
    own.commit();
  } catch (const InputError& e) {
    throw InputError(detail::concat(path, " is shared with another directory by a hard link (a copy made with cp -al?) ",
                                    "and cannot be replaced by a lock file of ", output, "'s own: ", e.what()));
  }
  log::info(path, ": shared with another directory by a hard link (a copy made with cp -al?): ", output,
            " gets a lock file of its own");
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

RunLock::RunLock(const std::string& output) : output_(output), path_((fs::path(output) / kRunLockName).string()) {
  std::error_code ec;
  created_ = fs::create_directories(output, ec);
  QARAC_INPUT_CHECK(!ec, "output: cannot create ", output, ": ", ec.message());
  struct stat directory {};
  QARAC_INPUT_CHECK(::stat(output.c_str(), &directory) == 0, "output: cannot look at ", output, ": ",
                    std::strerror(errno));
  // The lock file is replaced only when a hard-linked copy shares it (make_own), each time by a
  // file nobody shares: a turn or two, unless runs keep starting in the directory.
  for (int turn = 0;; ++turn) {
    QARAC_INPUT_CHECK(turn < 8, path_, ": replaced again and again while this run tried to lock it: are other runs ",
                      "starting in ", output, "?");
    // Writable by whom the umask allows, as every file of the run: the members of a group that
    // shares run directories (umask 002) resume each other's runs. Never through a link: the
    // holder's text replaces the file's bytes, and a member's link to a file of this user's (or a
    // user's own slip) would have the run truncate its target.
    fd_ = open(path_.c_str(), O_RDWR | O_CREAT | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC, 0666);
    const int open_error = errno;
    QARAC_INPUT_CHECK(fd_ >= 0 || open_error != ELOOP, path_,
                      ": a symbolic link, not the run's lock file (which the run would overwrite through it): "
                      "remove it");
    QARAC_INPUT_CHECK(fd_ >= 0, path_, ": cannot open the run's lock file: ", std::strerror(open_error));
    const bool locked = flock(fd_, LOCK_EX | LOCK_NB) == 0;
    const int lock_error = errno;
    // Its links as they are once locked (or found held): a copy's replacement may have taken one
    // away while this run waited.
    struct stat held {};
    const int look_error = fstat(fd_, &held) == 0 ? 0 : errno;
    if (look_error != 0 || !S_ISREG(held.st_mode)) {
      close(fd_);
      fd_ = -1;
      QARAC_INPUT_CHECK(look_error == 0, path_, ": cannot look at the run's lock file: ", std::strerror(look_error));
      throw InputError(detail::concat(path_, ": not a regular file (a FIFO, a device or a socket), not the run's ",
                                      "lock file: remove it"));
    }
    bool shared = true;
    if (locked) {
      // Locked, but perhaps a file that a make_own replaced since it was opened (then open it
      // again), or one that a copy made by hard links (cp -al) shares: its runs would lock this
      // directory too, and the holder's text written here would be theirs.
      if (names(path_, held) && held.st_nlink == 1) break;
      shared = names(path_, held);
    } else {
      const int err = lock_error;
      if (err != EWOULDBLOCK) {
        // Some cluster file systems are mounted without locks (Lustre without -o flock): the run
        // goes on, as it would have before locks existed, but says that nothing guards the directory.
        log::warn(path_, ": cannot lock (", std::strerror(err), "): nothing stops a second run from using ", output,
                  " at the same time");
        return;
      }
      const Holder holder = holder_of(fd_);
      // Held by a run in the directory that a hard link shares the file with, not in this one.
      if (held.st_nlink == 1 || holder.directory == 0 || holder.directory == directory.st_ino) {
        close(fd_);
        fd_ = -1;
        // A holder on another host cannot be looked at from here: if it is gone with its node,
        // the file server keeps its lock until it notices, and a copy can go on meanwhile.
        const std::string host = host_of(holder);
        const std::string elsewhere =
            host.empty() || host == hostname()
                ? ""
                : detail::concat(", on ", host, ", not this host (", hostname(), "): if that run is gone (", host,
                                 " down or hung), its lock lasts until ", host, "'s processes end or the file server ",
                                 "drops the lock of a node it lost (an NFSv4 lease: about 90 s); to go on at once, ",
                                 "--resume a copy (cp -al ", output, " NEW, then --output NEW)");
        throw InputError(detail::concat("output: ", output, " is in use by another run (",
                                        holder.text.empty() ? "its lock file " + path_ : holder.text, ")", elsewhere,
                                        elsewhere.empty() ? "; wait for it to end, or choose another directory"
                                                          : "; or wait for it to end, or choose another directory"));
      }
    }
    try {
      if (shared) make_own(output, path_, held);
    } catch (...) {  // the descriptor would hold the flock until the process ends
      close(fd_);
      fd_ = -1;
      throw;
    }
    close(fd_);
    fd_ = -1;
  }
  // A run that ends clears its record (~RunLock): one left behind ended without (killed, or its
  // node failed). From another host that cannot be told apart from a run still going on where the
  // file system's locks stay on each node (Lustre's localflock, BeeGFS without global locks), so
  // the user hears of it.
  const Holder before = holder_of(fd_);
  const std::string before_host = host_of(before);
  if (!before_host.empty() && before_host != hostname())
    log::warn(output, ": the run before this one (", before.text, ") did not end cleanly (killed, or ", before_host,
              " failed); if it still runs there, this file system's locks do not reach across nodes and two runs "
              "now share the directory: stop one");
  // Who holds it, for the message of a run that finds it locked, and where (a run in a hard-linked
  // copy tells it apart); only informative, so a failed write (a full disk) is not an error here:
  // the checkpoints and metrics will report it.
  const std::string text = hostname() + " pid " + std::to_string(getpid()) + "\n" + kDirectoryField +
                           std::to_string(directory.st_ino) + "\n";
  if (ftruncate(fd_, 0) != 0 || pwrite(fd_, text.data(), text.size(), 0) != static_cast<ssize_t>(text.size()))
    log::debug(path_, ": cannot record the holder: ", std::strerror(errno));
}

RunLock::~RunLock() {
  if (fd_ < 0) return;
  // An empty record says the run ended here (the constructor's warning is for records left).
  if (ftruncate(fd_, 0) != 0) log::debug(path_, ": cannot clear the holder's record: ", std::strerror(errno));
  close(fd_);  // releases the lock
}

void RunLock::check_held(const std::string& what) const {
  struct stat held {};
  if (fd_ < 0 || fstat(fd_, &held) != 0) return;  // nothing to compare with: the writes will say what fails
  QARAC_INPUT_CHECK(names(path_, held), "output: ", output_, " is no longer this run's directory (it was moved or removed, or its ",
                    kRunLockName, " removed, while the run went on): the run stops before its ", what,
                    " (--resume goes on from its newest checkpoint, in the directory where it now is)");
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
