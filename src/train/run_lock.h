// The run directory's lock: rank 0's hold on <output>/.qarac.lock for as long as the run lasts,
// and the record of the holder in it (train/run_dir.h has the rest of the run directory).
#pragma once

#include <chrono>
#include <memory>
#include <string>

namespace qarac {

constexpr const char* kRunLockName = ".qarac.lock";

// Rank 0's exclusive hold on the run directory for as long as the run lasts: a second run, or a
// --resume of a live one, in the same directory stops at once with one line naming the holder,
// before it deletes or writes anything. The lock is an flock(2) on <output>/.qarac.lock, released
// by the kernel when the process ends however it ends, so a killed run never leaves a stale lock.
// A copy of the directory made with hard links (cp -al) shares the lock file: the copy gets one
// of its own (a log line says so), so that its runs neither wait for the original's nor lock it.
//
// Some file systems keep flocks on each node (Lustre's localflock, BeeGFS without global locks)
// or have none (Lustre mounted without flock): there a run on another node takes a lock that a
// live run holds. So the holder also records its host and pid, and a heartbeat: a count that a
// thread of its own rewrites and flushes every `heartbeat`. A run that finds a record where flock
// cannot vouch for its holder being gone (the record of another host, or a file system without
// locks) watches the count for a few beats: a count that advances is a live run, refused as a
// held lock is; one that stands still is a run that did not end cleanly, said, and the directory
// is taken over. A holder that finds its record replaced by another run's (two runs that started
// together) stops at its next check_held.
class RunLock {
 public:
  static constexpr std::chrono::milliseconds kHeartbeat{2000};

  // Creates `output` (and its parents) when missing, then locks it; InputError naming the
  // directory, and the host and pid of the holder, when another process holds it. `heartbeat`:
  // how often this run proves it lives (tests shorten it).
  explicit RunLock(const std::string& output, std::chrono::milliseconds heartbeat = kHeartbeat);
  ~RunLock();
  RunLock(const RunLock&) = delete;
  RunLock& operator=(const RunLock&) = delete;

  bool created_directory() const { return created_; }

  // Before the run writes into <output> (`what`: a checkpoint, an export, metrics): InputError
  // when <output>/.qarac.lock is no longer the file this lock holds (the directory moved or
  // removed, or the lock file removed, while the run went on), or when another run's record has
  // replaced this run's in it. Writing on would recreate the directory at its old path, or share
  // it with a run that took it since.
  void check_held(const std::string& what) const;

 private:
  class Heartbeat;

  // A record left in the lock file by a run that flock cannot vouch for (`locked`: whether this
  // run holds the flock): InputError when its heartbeat advances, else a warning that it did not
  // end cleanly.
  void refuse_live_holder(bool locked);

  std::string output_, path_;
  int fd_ = -1;
  bool created_ = false;
  std::unique_ptr<Heartbeat> heartbeat_;
};

}  // namespace qarac
