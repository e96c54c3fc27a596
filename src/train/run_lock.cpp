// The run directory's lock, the holder's record and its heartbeat (train/run_lock.h).
#include "train/run_lock.h"

#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <condition_variable>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <mutex>
#include <system_error>
#include <thread>

#include "core/atomic_file.h"
#include "core/error.h"
#include "core/log.h"

namespace qarac {

namespace fs = std::filesystem;

namespace {

// The holder's record in the lock file, a line each:
//   <host> pid <pid>
//   directory inode <inode>             which directory of a hard-linked pair it holds
//   heartbeat every <ms> ms: <beats>    beats counts up while the run lives
// Earlier versions wrote the first line, or the first two. An ended run empties the file.
struct Holder {
  std::string text;     // "<host> pid <pid>", "" when there is none
  ino_t directory = 0;  // 0: unknown
  int64_t every_ms = 0;  // 0: no heartbeat
  uint64_t beats = 0;
};

constexpr const char* kDirectoryField = "directory inode ";
constexpr const char* kHeartbeatField = "heartbeat every ";

// The number after `field` in `s`, 0 when the field is missing.
uint64_t field_value(const std::string& s, const char* field) {
  const size_t at = s.find(field);
  return at == std::string::npos ? 0 : std::strtoull(s.c_str() + at + std::strlen(field), nullptr, 10);
}

Holder holder_of(int fd) {
  char bytes[256] = {};
  const ssize_t n = pread(fd, bytes, sizeof bytes - 1, 0);
  Holder holder;
  if (n <= 0) return holder;
  const std::string s(bytes, static_cast<size_t>(n));
  holder.text = s.substr(0, s.find('\n'));
  holder.directory = field_value(s, kDirectoryField);
  holder.every_ms = static_cast<int64_t>(field_value(s, kHeartbeatField));
  const size_t beats = s.find(" ms: ", s.find(kHeartbeatField));
  if (holder.every_ms > 0 && beats != std::string::npos) holder.beats = std::strtoull(s.c_str() + beats + 5, nullptr, 10);
  return holder;
}

// The record as the file server has it now: read through a descriptor of its own, since NFS
// revalidates the pages it caches of a file only when the file is opened (close-to-open).
Holder holder_at(const std::string& path) {
  const int fd = open(path.c_str(), O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
  if (fd < 0) return {};
  const Holder holder = holder_of(fd);
  close(fd);
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

// The record with `beats`: never shorter than the one before (the count only grows), so that it
// is written over in place, without the empty file of a truncation that a reader would take for
// a run that ended.
std::string record(const std::string& holder, std::chrono::milliseconds every, uint64_t beats) {
  return detail::concat(holder, kHeartbeatField, every.count(), " ms: ", beats, "\n");
}

}  // namespace

// A thread that rewrites the record with the next count every `every` and flushes it to the file
// server, until the lock ends or another run's record replaces this one's (then it leaves that
// record alone and says whose it is).
class RunLock::Heartbeat {
 public:
  Heartbeat(int fd, std::string path, std::string holder, std::chrono::milliseconds every)
      : fd_(fd), path_(std::move(path)), holder_(std::move(holder)), every_(every), thread_([this] { beat(); }) {}
  ~Heartbeat() {
    {
      const std::lock_guard<std::mutex> hold(mutex_);
      stop_ = true;
    }
    wake_.notify_one();
    thread_.join();
  }

  // The record that replaced this run's ("" while none did).
  std::string taker() const {
    const std::lock_guard<std::mutex> hold(mutex_);
    return taker_;
  }

  // Whether the lock file still holds this run's record, read now.
  bool owns_record() const { return taker().empty() && holder_at(path_).text == own_; }

 private:
  void beat() {
    bool emptied = false;
    for (uint64_t beats = 1;; ++beats) {
      {
        std::unique_lock<std::mutex> hold(mutex_);
        if (wake_.wait_for(hold, every_, [this] { return stop_; })) return;
      }
      // Another run's record: it took the directory over. An empty one may be such a record on
      // its way in (over NFS, or a start of an earlier version, which truncated first): the
      // next beat tells whose it is.
      const Holder now = holder_at(path_);
      if (now.text.empty() && !emptied) {
        emptied = true;
        continue;
      }
      if (now.text != own_) {
        const std::lock_guard<std::mutex> hold(mutex_);
        taker_ = now.text.empty() ? "its record emptied" : now.text;
        return;
      }
      emptied = false;
      // A failed write (a full disk) only leaves the count standing; the run's own writes report
      // the disk, and a run that takes the directory over meanwhile is caught above.
      const std::string text = record(holder_, every_, beats);
      if (pwrite(fd_, text.data(), text.size(), 0) != static_cast<ssize_t>(text.size()) || fdatasync(fd_) != 0)
        log::debug(path_, ": cannot write the heartbeat: ", std::strerror(errno));
    }
  }

  const int fd_;
  const std::string path_, holder_;
  const std::string own_ = holder_.substr(0, holder_.find('\n'));  // the record's first line
  const std::chrono::milliseconds every_;
  mutable std::mutex mutex_;
  std::condition_variable wake_;
  bool stop_ = false;
  std::string taker_;
  std::thread thread_;  // last: it starts once the members it reads are made
};

RunLock::RunLock(const std::string& output, std::chrono::milliseconds heartbeat)
    : output_(output), path_((fs::path(output) / kRunLockName).string()) {
  QARAC_CHECK(heartbeat.count() > 0, "the lock's heartbeat must be positive, got ", heartbeat.count(), " ms");
  std::error_code ec;
  created_ = fs::create_directories(output, ec);
  QARAC_INPUT_CHECK(!ec, "output: cannot create ", output, ": ", ec.message());
  struct stat directory {};
  QARAC_INPUT_CHECK(::stat(output.c_str(), &directory) == 0, "output: cannot look at ", output, ": ",
                    std::strerror(errno));
  bool locked = false;
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
    locked = flock(fd_, LOCK_EX | LOCK_NB) == 0;
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
        // Some cluster file systems are mounted without locks (Lustre without -o flock): only the
        // holders' records and heartbeats guard the directory then.
        log::warn(path_, ": cannot lock (", std::strerror(err), "): only the heartbeat of a run's record there ",
                  "keeps a second run from using ", output, " at the same time");
        break;
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
  refuse_live_holder(locked);
  // Who holds it, for the message of a run that finds it locked, and where (a run in a hard-linked
  // copy tells it apart), and its heartbeat. A failed write (a full disk) is not an error here: the
  // checkpoints and metrics will report it.
  const std::string holder = detail::concat(hostname(), " pid ", getpid(), "\n", kDirectoryField, directory.st_ino, "\n");
  const std::string text = record(holder, heartbeat, 0);
  // Written over the record left, then cut to its length: a truncation first would show a reader
  // an ended run for a moment.
  if (pwrite(fd_, text.data(), text.size(), 0) != static_cast<ssize_t>(text.size()) ||
      ftruncate(fd_, static_cast<off_t>(text.size())) != 0)
    log::debug(path_, ": cannot record the holder: ", std::strerror(errno));
  try {
    heartbeat_ = std::make_unique<Heartbeat>(fd_, path_, holder, heartbeat);
  } catch (const std::system_error& e) {  // no thread to be had (ulimit -u): flock still guards
    log::warn(path_, ": cannot start the heartbeat of the lock (", e.what(), "): where this file system's locks ",
              "stay on each node or are missing, a run on another node may take ", output_, " while this one runs");
  }
}

void RunLock::refuse_live_holder(bool locked) {
  const Holder before = holder_of(fd_);
  const std::string host = host_of(before);
  // A run that ended emptied its record; flock on this host says that this host's holder is gone.
  if (before.text.empty() || (locked && (host.empty() || host == hostname()))) return;
  const std::string why = locked ? "this host's lock cannot tell whether a run on another host holds it (the "
                                   "locks of some file systems stay on each node: Lustre's localflock)"
                                 : "this file system has no locks";
  if (before.every_ms <= 0) {  // a record of a version without heartbeats: nothing tells more
    log::warn(output_, ": the run before this one (", before.text, ") did not end cleanly (killed, or ",
              host.empty() ? "its host" : host, " failed), or still runs: ", why, ", and its record has no heartbeat; ",
              "if it runs, two runs now share the directory: stop one");
    return;
  }
  // A few beats, so that a holder's thread that a busy node or file server holds up a while still
  // shows one; bounded for records that name a long period.
  const auto watch = std::chrono::milliseconds(std::min<int64_t>(4 * before.every_ms, 60'000));
  log::info(output_, ": ", path_, " names a run (", before.text, ") and ", why, ": watching its heartbeat for ",
            watch.count() / 1000.0, " s");
  std::this_thread::sleep_for(watch);
  const Holder now = holder_at(path_);
  if (now.text.empty()) return;  // it ended meanwhile
  if (now.text == before.text && now.beats == before.beats) {
    log::warn(output_, ": the run before this one (", before.text, ") did not end cleanly (killed, or ",
              host.empty() ? "its host" : host, " failed): its heartbeat stood still for ", watch.count() / 1000.0,
              " s");
    return;
  }
  close(fd_);
  fd_ = -1;
  throw InputError(detail::concat("output: ", output_, " is in use by another run (", now.text, "): its heartbeat in ",
                                  path_, " advances, though ", why,
                                  "; wait for it to end, or choose another directory"));
}

RunLock::~RunLock() {
  if (fd_ < 0) return;
  const bool own_record = !heartbeat_ || heartbeat_->owns_record();
  heartbeat_.reset();
  // An empty record says the run ended here (refuse_live_holder watches the records left); a
  // record that replaced this run's is another run's.
  if (own_record && ftruncate(fd_, 0) != 0)
    log::debug(path_, ": cannot clear the holder's record: ", std::strerror(errno));
  close(fd_);  // releases the lock
}

void RunLock::check_held(const std::string& what) const {
  struct stat held {};
  if (fd_ < 0 || fstat(fd_, &held) != 0) return;  // nothing to compare with: the writes will say what fails
  QARAC_INPUT_CHECK(names(path_, held), "output: ", output_, " is no longer this run's directory (it was moved or removed, or its ",
                    kRunLockName, " removed, while the run went on): the run stops before its ", what,
                    " (--resume goes on from its newest checkpoint, in the directory where it now is)");
  const std::string taker = heartbeat_ ? heartbeat_->taker() : std::string();
  QARAC_INPUT_CHECK(taker.empty(), "output: ", output_, " was taken over by another run (", taker, " in ", path_,
                    "), which found no lock to stop it and this run's heartbeat standing still (this process or ",
                    "its file system held up for several beats) or none yet (two runs started together): the run ",
                    "stops before its ", what, " and leaves the directory to that run");
}

}  // namespace qarac
