// The run directory as qarac-train uses it (train/run_dir.h): one run at a time (the lock), a
// run that can always go on (--resume from step 0 when it never completed a checkpoint),
// metrics.jsonl with every step once and every line whole after a resume, a failed start that
// leaves nothing behind, and the non-finite step policy.
#include <gtest/gtest.h>
#include <fcntl.h>
#include <poll.h>
#include <sys/file.h>
#include <pty.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <csignal>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <regex>
#include <string>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/error.h"
#include "core/hdf5_checksummed.h"
#include "io/safetensors.h"
#include "support/train_cli.h"
#include "train/checkpoint.h"
#include "train/run_dir.h"

using namespace qarac;
using qarac::test_support::CliResult;
using qarac::test_support::TempDir;

namespace fs = std::filesystem;

namespace {

// The holder a run directory's lock file names: its record without the heartbeat's count, which
// a live holder's thread advances.
std::string holder_of(const fs::path& run) {
  const std::string record = test_support::read_text((run / kRunLockName).string());
  return record.substr(0, record.find("heartbeat every "));
}

// Each line of a metrics.jsonl, parsed; a line that is not a JSON object fails the test.
std::vector<nlohmann::json> metrics_lines(const fs::path& run) {
  std::ifstream in(run / "metrics.jsonl");
  std::vector<nlohmann::json> lines;
  std::string line;
  while (std::getline(in, line)) {
    const nlohmann::json j = nlohmann::json::parse(line, nullptr, false);
    EXPECT_TRUE(j.is_object()) << "not a JSON line: " << line;
    if (j.is_object()) lines.push_back(j);
  }
  return lines;
}

// How many lines each step has, training steps and evaluations apart.
struct StepCounts {
  std::map<int64_t, int> steps, evals;
};
StepCounts count_steps(const fs::path& run) {
  StepCounts c;
  for (const nlohmann::json& j : metrics_lines(run))
    ++(j.value("eval", false) ? c.evals : c.steps)[j["step"].get<int64_t>()];
  return c;
}

// Every step 1..last once, and the evaluations `evals` once each.
void expect_each_step_once(const fs::path& run, int64_t last, const std::vector<int64_t>& evals) {
  const StepCounts c = count_steps(run);
  std::map<int64_t, int> steps, expected_evals;
  for (int64_t s = 1; s <= last; ++s) steps[s] = 1;
  for (int64_t s : evals) expected_evals[s] = 1;
  EXPECT_EQ(c.steps, steps);
  EXPECT_EQ(c.evals, expected_evals);
}

void append(const fs::path& file, const std::string& text) {
  std::ofstream(file, std::ios::app) << text;
}

class RunDirCli : public qarac::test_support::TrainCli {
 protected:
  // A small held-out evaluation (the training streams stand in for held-out ones).
  static std::string eval_args() {
    return " --eval.dir " + (root() / "data").string() + " --eval.examples 4 --eval.decoded 1";
  }
};

}  // namespace

// flock is per open file: a second lock on the directory fails in this very process too, naming
// the holder, and the directory is free again once the holder is gone.
TEST(RunLockTest, OneHolderAtATime) {
  TempDir dir("lock");
  const fs::path run = dir.path / "new" / "run";
  {
    RunLock first(run.string());
    EXPECT_TRUE(first.created_directory());
    try {
      RunLock second(run.string());
      ADD_FAILURE() << "a second lock was granted";
    } catch (const InputError& e) {
      const std::string what = e.what();
      EXPECT_NE(what.find(run.string() + " is in use by another run"), std::string::npos) << what;
      EXPECT_NE(what.find("pid " + std::to_string(getpid())), std::string::npos) << what;
    }
  }
  RunLock again(run.string());
  EXPECT_FALSE(again.created_directory());
}

// A holder on another host (a run on a node of the cluster, the directory on a shared file
// system) cannot be looked at from here: the refusal names that host beside this one and says
// how to go on if its node is gone (before: "wait for it to end", which a run on a dead node
// holding its lock through the file server never does). The holder is stood in for by this
// process's own flock on the file, with another host's record.
TEST(RunLockTest, AHolderOnAnotherHostIsNamedWithTheWayOn) {
  TempDir dir("lock-elsewhere");
  const fs::path run = dir.path / "run";
  fs::create_directories(run);
  const std::string path = (run / kRunLockName).string();
  const int held = open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  ASSERT_GE(held, 0);
  ASSERT_EQ(flock(held, LOCK_EX | LOCK_NB), 0);
  const std::string record = "gpu-node-17 pid 4242\ndirectory inode 0\n";
  ASSERT_EQ(write(held, record.data(), record.size()), static_cast<ssize_t>(record.size()));
  test_support::expect_input_error([&] { RunLock second(run.string()); },
                                   {run.string() + " is in use by another run (gpu-node-17 pid 4242), on gpu-node-17, "
                                                   "not this host (" + hostname() + ")",
                                    "if that run is gone (gpu-node-17 down or hung)",
                                    "cp -al " + run.string() + " NEW, then --output NEW"});
  close(held);
  // Held on this host: the holder can be looked at here, and the message stays short.
  {
    const int local = open(path.c_str(), O_RDWR | O_CLOEXEC);
    ASSERT_GE(local, 0);
    ASSERT_EQ(flock(local, LOCK_EX | LOCK_NB), 0);
    const std::string here = hostname() + " pid 4242\n";
    ASSERT_EQ(ftruncate(local, 0), 0);
    ASSERT_EQ(pwrite(local, here.data(), here.size(), 0), static_cast<ssize_t>(here.size()));
    try {
      RunLock second(run.string());
      ADD_FAILURE() << "a second lock was granted";
    } catch (const InputError& e) {
      EXPECT_EQ(std::string(e.what()).find("not this host"), std::string::npos) << e.what();
    }
    close(local);
  }
}

// A run that ends clears its record; one left by a run on another host of a version without
// heartbeats (killed, its node failed) is said when the next run takes the lock, since from here
// it cannot be told apart from a run still going on where the file system's locks stay on each
// node (Lustre's localflock).
TEST(RunLockTest, ARecordLeftByARunOnAnotherHostIsSaid) {
  TempDir dir("lock-left");
  const fs::path run = dir.path / "run";
  { RunLock first(run.string()); }
  EXPECT_EQ(test_support::read_text((run / kRunLockName).string()), "") << "an ended run's record stays";
  std::ofstream(run / kRunLockName) << "gpu-node-17 pid 4242\ndirectory inode 0\n";
  ::testing::internal::CaptureStderr();
  { RunLock next(run.string()); }
  std::string said = ::testing::internal::GetCapturedStderr();
  EXPECT_NE(said.find("the run before this one (gpu-node-17 pid 4242) did not end cleanly (killed, or gpu-node-17 "
                      "failed), or still runs: this host's lock cannot tell whether a run on another host holds it"),
            std::string::npos)
      << said;
  EXPECT_NE(said.find("its record has no heartbeat"), std::string::npos) << said;
  // Left on this host: flock, which this host's kernel keeps, said it ended.
  std::ofstream(run / kRunLockName) << hostname() << " pid 4242\ndirectory inode 0\n";
  ::testing::internal::CaptureStderr();
  { RunLock next(run.string()); }
  said = ::testing::internal::GetCapturedStderr();
  EXPECT_EQ(said.find("did not end cleanly"), std::string::npos) << said;
}

// A live holder proves it lives: its record names its host, pid and directory, and a heartbeat
// whose count advances every period; the record is emptied when the run ends.
TEST(RunLockTest, AHolderRecordsAHeartbeatThatAdvances) {
  TempDir dir("lock-heartbeat");
  const fs::path run = dir.path / "run";
  const std::regex record("^(.*) pid ([0-9]+)\ndirectory inode ([0-9]+)\nheartbeat every 50 ms: ([0-9]+)\n$");
  std::smatch first, later;
  {
    RunLock lock(run.string(), std::chrono::milliseconds(50));
    const std::string before = test_support::read_text((run / kRunLockName).string());
    ASSERT_TRUE(std::regex_match(before, first, record)) << before;
    EXPECT_EQ(first[1], hostname());
    EXPECT_EQ(first[2], std::to_string(getpid()));
    struct stat directory {};
    ASSERT_EQ(::stat(run.c_str(), &directory), 0);
    EXPECT_EQ(first[3], std::to_string(directory.st_ino));
    std::this_thread::sleep_for(std::chrono::milliseconds(300));
    const std::string after = test_support::read_text((run / kRunLockName).string());
    ASSERT_TRUE(std::regex_match(after, later, record)) << after;
    EXPECT_GE(std::stoull(later[4]), std::stoull(first[4]) + 2) << before << after;
  }
  EXPECT_EQ(test_support::read_text((run / kRunLockName).string()), "");
}

// Where locks stay on each node (Lustre's localflock), a run on another node takes the flock that
// a live run holds. Before, it only warned, and two runs shared the directory; now the holder's
// heartbeat tells: one that advances is a live run, refused in one line; one that stands still is
// a run that did not end cleanly, said, and the directory is taken over. The holder on another
// node is stood in for by a thread that writes its record without flock.
TEST(RunLockTest, ALiveHolderOnAnotherNodeIsRefusedWhereLocksStayOnEachNode) {
  TempDir dir("lock-localflock");
  const fs::path run = dir.path / "run";
  fs::create_directories(run);
  const std::string path = (run / kRunLockName).string();
  // Written over in place, as a holder does: a truncation would show an ended run for a moment.
  const int fd = open(path.c_str(), O_WRONLY | O_CREAT | O_CLOEXEC, 0644);
  ASSERT_GE(fd, 0);
  std::atomic<bool> alive{true};
  std::thread holder([&] {
    for (int beat = 0; alive; ++beat) {
      const std::string text = "gpu-node-17 pid 4242\ndirectory inode 0\nheartbeat every 50 ms: " +
                               std::to_string(beat) + "\n";
      EXPECT_EQ(pwrite(fd, text.data(), text.size(), 0), static_cast<ssize_t>(text.size()));
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
  });
  while (test_support::read_text(path).empty()) std::this_thread::sleep_for(std::chrono::milliseconds(5));
  test_support::expect_input_error([&] { RunLock second(run.string()); },
                                   {"output: " + run.string() + " is in use by another run (gpu-node-17 pid 4242): "
                                        "its heartbeat in " + path + " advances, though this host's lock cannot tell "
                                        "whether a run on another host holds it",
                                    "wait for it to end, or choose another directory"});
  alive = false;
  holder.join();
  close(fd);
  ::testing::internal::CaptureStderr();
  {
    RunLock next(run.string());
    EXPECT_NO_THROW(next.check_held("checkpoint at step 2"));
  }
  const std::string said = ::testing::internal::GetCapturedStderr();
  EXPECT_NE(said.find("watching its heartbeat for 0.2 s"), std::string::npos) << said;
  EXPECT_NE(said.find("the run before this one (gpu-node-17 pid 4242) did not end cleanly (killed, or gpu-node-17 "
                      "failed): its heartbeat stood still for 0.2 s"),
            std::string::npos)
      << said;
}

// A run whose record another run replaced (one that found its heartbeat standing still while the
// run was held up, or that started with it on a file system without locks) stops at its next
// check, and leaves the other run's record as it is when it ends.
TEST(RunLockTest, ARunWhoseRecordAnotherRunReplacedStops) {
  TempDir dir("lock-taken");
  const fs::path run = dir.path / "run";
  const std::string taker = "gpu-node-17 pid 4242\ndirectory inode 0\nheartbeat every 2000 ms: 0\n";
  {
    RunLock lock(run.string(), std::chrono::milliseconds(50));
    EXPECT_NO_THROW(lock.check_held("checkpoint at step 2"));
    // As the other run's start writes it: over this run's record, then cut to its length.
    const int fd = open((run / kRunLockName).c_str(), O_WRONLY | O_CLOEXEC);
    ASSERT_GE(fd, 0);
    ASSERT_EQ(pwrite(fd, taker.data(), taker.size(), 0), static_cast<ssize_t>(taker.size()));
    ASSERT_EQ(ftruncate(fd, static_cast<off_t>(taker.size())), 0);
    close(fd);
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
    test_support::expect_input_error([&] { lock.check_held("checkpoint at step 4"); },
                                     {"output: " + run.string() + " was taken over by another run (gpu-node-17 pid "
                                                                  "4242 in " + (run / kRunLockName).string() + ")",
                                      "the run stops before its checkpoint at step 4 and leaves the directory to "
                                      "that run"});
  }
  EXPECT_EQ(test_support::read_text((run / kRunLockName).string()), taker);
}

// A rank whose wait on the others failed records it for the job script (failed.json); a run that
// failed in its first step discards its files but that record, and the directory is still a new
// run's. Anything else is not.
TEST(RunDirTest, AFailureRecordAloneLeavesADirectoryNew) {
  TempDir dir("failure-record");
  const fs::path run = dir.path / "run";
  fs::create_directories(run);
  record_failure(run.string(), 0, 3, "gradient all-reduce at step 1: no completion within the timeout");
  const nlohmann::json record = nlohmann::json::parse(test_support::read_text((run / kFailureRecordName).string()));
  EXPECT_EQ(record["rank"], 3);
  EXPECT_EQ(record["host"], hostname());
  std::ofstream(run / kRunLockName) << "";
  EXPECT_NO_THROW(check_output_dir(run.string(), false));
  std::ofstream(run / "notes.txt") << "mine";
  test_support::expect_input_error([&] { check_output_dir(run.string(), false); }, {"is not empty"});
  // A directory that cannot be written: no record, and no exception from a failing rank.
  EXPECT_NO_THROW(record_failure((dir.path / "missing").string(), 0, 3, "x"));
}

// The directory moved, or its lock file removed, while the run goes on: the run's next checkpoint
// is refused (before: written into a directory recreated at the old path, or beside a second run
// that had locked it since).
TEST(RunLockTest, AMovedDirectoryOrARemovedLockIsNoLongerHeld) {
  TempDir dir("lock-moved");
  const fs::path run = dir.path / "run", moved = dir.path / "moved";
  {
    RunLock lock(run.string());
    EXPECT_NO_THROW(lock.check_held("checkpoint at step 2"));
    fs::rename(run, moved);
    test_support::expect_input_error([&] { lock.check_held("checkpoint at step 4"); },
                                     {"output: " + run.string() + " is no longer this run's directory",
                                      "the run stops before its checkpoint at step 4"});
    fs::create_directories(run);  // a second run's, say
    RunLock second(run.string());
    test_support::expect_input_error([&] { lock.check_held("checkpoint at step 6"); }, {"no longer this run's"});
  }
  RunLock lock(moved.string());
  fs::remove(moved / kRunLockName);
  test_support::expect_input_error([&] { lock.check_held("checkpoint at step 8"); }, {"no longer this run's"});
}

// A copy of a run directory made with hard links (cp -al) shares the lock file. Before, a run in
// the copy was refused while the original ran ("in use"), and otherwise locked the original too
// and wrote its holder into the original's file. Now the copy gets a file of its own, and the
// lock still refuses a second run in the same directory, linked or not.
TEST(RunLockTest, AHardLinkedCopyGetsALockOfItsOwn) {
  TempDir dir("lock-linked");
  const fs::path run = dir.path / "run", copy = dir.path / "copy", idle_copy = dir.path / "idle-copy";
  const auto inode = [](const fs::path& p) {
    struct stat st {};
    EXPECT_EQ(::stat(p.c_str(), &st), 0) << p;
    return std::make_pair(st.st_ino, st.st_nlink);
  };
  {
    RunLock original(run.string());
    const std::string holder = holder_of(run);
    fs::create_directories(copy);
    fs::create_hard_link(run / kRunLockName, copy / kRunLockName);
    test_support::expect_input_error([&] { RunLock second(run.string()); }, {run.string() + " is in use by another run"});
    {
      RunLock own(copy.string());
      EXPECT_NE(inode(copy / kRunLockName).first, inode(run / kRunLockName).first);
      EXPECT_EQ(inode(copy / kRunLockName).second, 1u);
      EXPECT_EQ(holder_of(run), holder);
      test_support::expect_input_error([&] { RunLock second(copy.string()); },
                                       {copy.string() + " is in use by another run"});
      EXPECT_NO_THROW(own.check_held("checkpoint at step 2"));
    }
    test_support::expect_input_error([&] { RunLock second(run.string()); }, {run.string() + " is in use by another run"});
    EXPECT_NO_THROW(original.check_held("checkpoint at step 2"));
  }
  // Nobody runs: the copy's run writes its holder into a file of its own, not the original's.
  const std::string holder = test_support::read_text((run / kRunLockName).string());
  fs::create_directories(idle_copy);
  fs::create_hard_link(run / kRunLockName, idle_copy / kRunLockName);
  RunLock own(idle_copy.string());
  EXPECT_NE(inode(idle_copy / kRunLockName).first, inode(run / kRunLockName).first);
  EXPECT_EQ(test_support::read_text((run / kRunLockName).string()), holder);
  RunLock original(run.string());
}

// Runs started at once in a hard-linked copy of a live run's directory: each finds the file shared
// and held elsewhere, and replaces it (one at a time, each only the shared file); exactly one of
// them locks the copy, every round.
TEST(RunLockTest, RunsStartingAtOnceInALinkedCopyLockItOnce) {
  TempDir dir("lock-linked-race");
  const fs::path run = dir.path / "run";
  RunLock original(run.string());
  for (int round = 0; round < 10; ++round) {
    const fs::path copy = dir.path / ("copy" + std::to_string(round));
    fs::create_directories(copy);
    fs::create_hard_link(run / kRunLockName, copy / kRunLockName);
    int go[2], won[2];
    ASSERT_EQ(pipe(go), 0);
    ASSERT_EQ(pipe(won), 0);
    std::vector<pid_t> children;
    for (int c = 0; c < 6; ++c) {
      const pid_t pid = fork();
      ASSERT_GE(pid, 0);
      if (pid == 0) {
        close(go[1]);
        char byte;
        const bool started = read(go[0], &byte, 1) == 0;  // the parent's close starts every child at once
        try {
          RunLock lock(copy.string());
          if (started && write(won[1], "1", 1) == 1) usleep(200000);  // held while the others try
        } catch (const InputError&) {
        }
        _exit(0);
      }
      children.push_back(pid);
    }
    close(go[0]);
    close(go[1]);
    close(won[1]);
    for (pid_t pid : children) waitpid(pid, nullptr, 0);
    std::string wins;
    char byte;
    while (read(won[0], &byte, 1) == 1) wins += byte;
    close(won[0]);
    EXPECT_EQ(wins, "1") << "round " << round;
  }
}

// export/ and best/ are replaced as a whole, beside a link's target: a link to a folder beside
// which the set can be written is accepted; a link to a mount point (its parent is another file
// system, where the swap cannot rename) is refused at the start of a --resume, not after the run.
// (The parent's write permission is checked too, but root, which CI runs as, may write anywhere.)
TEST(RunDirTest, ALinkedExportMustBeReplaceableBesideItsTarget) {
  TempDir dir("linked-export");
  const fs::path run = dir.path / "run";
  fs::create_directories(run);
  std::ofstream(run / "config.ini") << "";
  fs::create_directories(dir.path / "models");
  fs::create_directory_symlink(dir.path / "models", run / "export");
  EXPECT_NO_THROW(check_output_dir(run.string(), true));
  // A target that holds more than models (a folder of the user's) would be deleted: refused now.
  std::ofstream(dir.path / "models" / "notes.txt") << "kept";
  qarac::test_support::expect_input_error(
      [&] { check_output_dir(run.string(), true); },
      {(run / "export").string() + " links to " + (dir.path / "models").string(), "which holds notes.txt"});
  fs::remove(dir.path / "models" / "notes.txt");
  struct stat shm {}, dev {};
  if (::stat("/dev/shm", &shm) != 0 || ::stat("/dev", &dev) != 0 || shm.st_dev == dev.st_dev)
    GTEST_SKIP() << "no mount point at /dev/shm to link to";
  fs::remove(run / "export");
  fs::create_directory_symlink("/dev/shm", run / "export");
  qarac::test_support::expect_input_error(
      [&] { check_output_dir(run.string(), true); },
      {(run / "export").string() + " links to /dev/shm", "/dev is another file system (the target is a mount point)"});
}

// Every file and folder of a run is as writable as the umask allows: under a group's umask 002 its
// members resume each other's runs. Before, the lock file and metrics.jsonl were created 0644,
// and another member's --resume was refused at the lock.
TEST_F(RunDirCli, TheUmaskDecidesWhoMayWriteARun) {
  const fs::path run = root() / "group-shared";
  const CliResult r = qarac::test_support::run_command("umask 002 && " + train_command(run, "--train.steps 2"));
  ASSERT_EQ(r.code, 0) << r.output;
  int files = 0;
  for (const fs::directory_entry& e : fs::recursive_directory_iterator(run)) {
    ++files;
    EXPECT_NE(fs::status(e.path()).permissions() & fs::perms::group_write, fs::perms::none) << e.path();
  }
  EXPECT_GT(files, 10);
  for (const char* name : {".qarac.lock", "metrics.jsonl"}) EXPECT_TRUE(fs::exists(run / name)) << name;
}

// A run directory's own files are never written through a link: in a folder a group shares
// (umask 002), another member could link them to a file of the user's, or a user slip. Before,
// the lock's holder text truncated and replaced the target of a linked .qarac.lock (even at a
// fresh start), a --resume rewrote the targets of a linked config.ini and metrics.jsonl, and a
// FIFO at metrics.jsonl held the --resume in its open for good, SIGTERM or not.
TEST_F(RunDirCli, ARunNeverWritesThroughLinksInItsDirectory) {
  using qarac::test_support::read_text;
  const fs::path run = root() / "planted-links", victim = root() / "planted-links-victim.txt";
  const std::string kept = "another file of the user's\n";
  std::ofstream(victim) << kept;
  fs::create_directories(run);
  fs::create_symlink(victim, run / kRunLockName);
  CliResult r = train(run, "--train.steps 2");
  EXPECT_EQ(r.code, 2) << r.output;
  EXPECT_NE(r.output.find((run / kRunLockName).string() + ": a symbolic link"), std::string::npos) << r.output;
  EXPECT_EQ(read_text(victim.string()), kept);
  fs::remove(run / kRunLockName);
  ASSERT_EQ(::mkfifo((run / kRunLockName).c_str(), 0600), 0);
  r = train(run, "--train.steps 2", "timeout -s KILL 120");
  EXPECT_EQ(r.code, 2) << r.output;
  EXPECT_NE(r.output.find((run / kRunLockName).string() + ": not a regular file"), std::string::npos) << r.output;
  fs::remove(run / kRunLockName);

  ASSERT_EQ(train(run, "--train.steps 2").code, 0);
  for (const char* name : {"config.ini", "metrics.jsonl"}) {
    fs::rename(run / name, root() / (std::string("planted-") + name));
    fs::create_symlink(victim, run / name);
  }
  r = train(run, "--resume --train.steps 3");
  EXPECT_EQ(r.code, 0) << r.output;
  EXPECT_EQ(read_text(victim.string()), kept);
  for (const char* name : {"config.ini", "metrics.jsonl"})
    EXPECT_TRUE(fs::is_regular_file(fs::symlink_status(run / name))) << name;

  fs::remove(run / "metrics.jsonl");
  ASSERT_EQ(::mkfifo((run / "metrics.jsonl").c_str(), 0600), 0);
  r = train(run, "--resume --train.steps 4", "timeout -s KILL 120");
  EXPECT_EQ(r.code, 2) << r.output;
  EXPECT_NE(r.output.find((run / "metrics.jsonl").string() + ": not a regular file"), std::string::npos) << r.output;
  EXPECT_TRUE(fs::is_fifo(run / "metrics.jsonl"));
}

// What a kill left of an export or an eval.best export in flight (their temporary folders) is
// removed when a run starts in the directory, even one that writes neither.
TEST_F(RunDirCli, AKilledExportsTemporaryFolderIsRemovedAtTheStart) {
  const fs::path run = root() / "export-leftovers";
  ASSERT_EQ(train(run, "--train.steps 2").code, 0);
  for (const char* folder : {"export.tmp/decoder.tmp", "best.tmp/question_encoder.tmp"}) {
    fs::create_directories(run / folder);
    std::ofstream(run / folder / "model.safetensors.tmp.99") << "half";
  }
  // Refused after the start's clean-up (the checkpoint is beyond train.steps): nothing exports.
  const CliResult r = train(run, "--resume --train.steps 1 --optimizer.warmup 0");
  ASSERT_EQ(r.code, 2) << r.output;
  EXPECT_NE(r.output.find("beyond train.steps 1"), std::string::npos) << r.output;
  EXPECT_FALSE(fs::exists(run / "export.tmp"));
  EXPECT_FALSE(fs::exists(run / "best.tmp"));
}

// A live run's directory: a --resume (or any run) started in it stops at once with one line and
// deletes nothing, not even a temporary checkpoint folder of the live run.
TEST_F(RunDirCli, ALockedDirectoryIsLeftAlone) {
  const fs::path run = root() / "locked";
  ASSERT_EQ(train(run, "--train.steps 2").code, 0);
  const fs::path in_progress = run / "checkpoints" / "step-0000000004.tmp";
  fs::create_directories(in_progress);
  const std::string metrics_before = [&] {
    std::ifstream in(run / "metrics.jsonl");
    return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  }();
  RunLock live(run.string());
  const CliResult r = train(run, "--resume --train.steps 4");
  EXPECT_EQ(r.code, 2) << r.output;
  EXPECT_NE(r.output.find("is in use by another run"), std::string::npos) << r.output;
  EXPECT_TRUE(fs::exists(in_progress));
  EXPECT_TRUE(fs::exists(run / "checkpoints" / "step-0000000002"));
  std::ifstream in(run / "metrics.jsonl");
  EXPECT_EQ(std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>()), metrics_before);
}

// A file system without locks (Lustre mounted without flock, NFS without its lock daemon): before,
// a second run only warned that nothing guarded the directory, and went on beside the first. Now
// the holder's heartbeat guards it: a run that finds one advancing is refused and touches
// nothing; one that finds a record standing still (its run killed) says so and goes on.
TEST_F(RunDirCli, WithoutLocksTheHeartbeatKeepsASecondRunOut) {
#ifndef QARAC_NO_FLOCK_LIB
  GTEST_SKIP() << "no lock-less file system to preload under an emulator (cross build)";
#else
  const fs::path run = root() / "no-locks";
  ASSERT_EQ(train(run, "--train.steps 2").code, 0);
  const std::string metrics = test_support::read_text((run / "metrics.jsonl").string());
  // ASan must come first among the libraries, unless told not to check.
  const std::string without_locks =
      std::string("ASAN_OPTIONS=${ASAN_OPTIONS}:verify_asan_link_order=0 LD_PRELOAD=") + QARAC_NO_FLOCK_LIB;
  {
    RunLock live(run.string(), std::chrono::milliseconds(100));
    const CliResult r = train(run, "--resume --train.steps 4", without_locks);
    EXPECT_EQ(r.code, 2) << r.output;
    EXPECT_NE(r.output.find((run / kRunLockName).string() + ": cannot lock (No locks available): only the heartbeat"),
              std::string::npos)
        << r.output;
    EXPECT_NE(r.output.find("is in use by another run (" + hostname() + " pid " + std::to_string(getpid()) +
                            "): its heartbeat in " + (run / kRunLockName).string() +
                            " advances, though this file system has no locks"),
              std::string::npos)
        << r.output;
    EXPECT_EQ(test_support::read_text((run / "metrics.jsonl").string()), metrics);
    EXPECT_NO_THROW(live.check_held("checkpoint at step 4"));
  }
  // Killed: its record stays, its count stands still.
  std::ofstream(run / kRunLockName) << "gpu-node-17 pid 4242\ndirectory inode 0\nheartbeat every 100 ms: 7\n";
  const CliResult r = train(run, "--resume --train.steps 4", without_locks);
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_NE(r.output.find("the run before this one (gpu-node-17 pid 4242) did not end cleanly (killed, or gpu-node-17 "
                          "failed): its heartbeat stood still for 0.4 s"),
            std::string::npos)
      << r.output;
  expect_each_step_once(run, 4, {});
  EXPECT_EQ(test_support::read_text((run / kRunLockName).string()), "") << "an ended run's record stays";
#endif
}

// A copy made with cp -al of a directory whose run goes on: the copy resumes as a run of its own
// (before: refused, "in use by another run"), and the files the copy's run writes are its own:
// the original's metrics.jsonl gains none of its lines (it is rewritten, not appended to, on a
// resume), and the original's lock file keeps its holder.
TEST_F(RunDirCli, AHardLinkedCopyResumesAsARunOfItsOwn) {
  const fs::path run = root() / "linked", copy = root() / "linked-copy";
  ASSERT_EQ(train(run, "--train.steps 2 --checkpoint.every 2").code, 0);
  const std::string metrics = test_support::read_text((run / "metrics.jsonl").string());
  RunLock live(run.string());
  const std::string holder = holder_of(run);
  fs::copy(run, copy, fs::copy_options::recursive | fs::copy_options::create_hard_links);
  const CliResult r = train(copy, "--resume --train.steps 3 --checkpoint.every 3");
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_NE(r.output.find((copy / kRunLockName).string() + ": shared with another directory by a hard link (a copy "
                          "made with cp -al?): " + copy.string() + " gets a lock file of its own"),
            std::string::npos)
      << r.output;
  expect_each_step_once(copy, 3, {});
  EXPECT_EQ(test_support::read_text((run / "metrics.jsonl").string()), metrics);
  EXPECT_EQ(holder_of(run), holder);
  EXPECT_NO_THROW(live.check_held("checkpoint at step 4"));
}

// A run killed before its first checkpoint completed (its files as a SIGKILL leaves them: the
// baseline evaluation, a step, half a line, a temporary checkpoint folder) goes on with --resume
// from step 0, and its metrics hold every step once.
TEST_F(RunDirCli, RunWithoutACheckpointResumesFromStepZero) {
  const fs::path run = root() / "killed-early";
  ASSERT_EQ(train(run, "--train.steps 1 --optimizer.warmup 0" + eval_args()).code, 0);
  fs::remove_all(run / "checkpoints");
  fs::remove_all(run / "export");
  fs::create_directories(run / "checkpoints" / "step-0000000002.tmp");
  append(run / "metrics.jsonl", "{\"step\": 2, \"loss\": {\"encode_de");
  const CliResult r = train(run, "--resume --train.steps 3 --checkpoint.every 2" + eval_args());
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_NE(r.output.find("the run starts again from step 0"), std::string::npos) << r.output;
  expect_each_step_once(run, 3, {0, 3});
  EXPECT_FALSE(fs::exists(run / "checkpoints" / "step-0000000002.tmp"));
  EXPECT_TRUE(fs::exists(run / "checkpoints" / "step-0000000003"));
  // --resume names a run's directory, or an empty one: not any folder.
  const fs::path other = root() / "not-a-run";
  fs::create_directories(other);
  std::ofstream(other / "notes.txt") << "mine\n";
  const CliResult refused = train(other, "--resume");
  EXPECT_EQ(refused.code, 2) << refused.output;
  EXPECT_NE(refused.output.find("is not a run directory"), std::string::npos) << refused.output;
  // export/ that is a file: refused at the start, not after the run (before: trained, then
  // failed to export).
  fs::remove_all(run / "export");
  std::ofstream(run / "export") << "junk\n";
  const CliResult blocked = train(run, "--resume --train.steps 4" + eval_args());
  EXPECT_EQ(blocked.code, 2) << blocked.output;
  EXPECT_NE(blocked.output.find((run / "export").string() + " is not a directory (the run writes its export there)"),
            std::string::npos) << blocked.output;
  EXPECT_TRUE(fs::exists(run / "checkpoints" / "step-0000000003")) << "a step ran";
  EXPECT_FALSE(fs::exists(run / "checkpoints" / "step-0000000004")) << "a step ran";
}

// The evaluation line at step 0 of metrics.jsonl (null when there is none).
nlohmann::json baseline_of(const fs::path& run) {
  for (const nlohmann::json& j : metrics_lines(run))
    if (j.value("eval", false) && j["step"] == 0) return j;
  return nullptr;
}

// A run stopped by a signal (exit 75) before its first checkpoint.every: its only checkpoint is
// the stop's, which no line of metrics.jsonl records. Removed, the run starts again from step 0,
// with every step once (the lines of the steps it ran are dropped, and said), and the evaluation
// at step 0, of the same held-out evaluation, kept and not run again.
TEST_F(RunDirCli, AStoppedRunWhoseCheckpointIsRemovedStartsAgainWithEveryStepOnce) {
  const fs::path run = root() / "stopped-then-removed";
  const CliResult stopped = train(run, "--train.steps 6 --checkpoint.every 100" + eval_args(), "QARAC_FAULT=term:0:2");
  ASSERT_EQ(stopped.code, 75) << stopped.output;
  ASSERT_TRUE(fs::is_directory(run / "checkpoints" / "step-0000000003")) << stopped.output;
  const nlohmann::json baseline = baseline_of(run);
  EXPECT_EQ(baseline.value("evaluation", "").size(), 16u) << baseline.dump();
  fs::remove_all(run / "checkpoints");
  const CliResult r = train(run, "--resume --train.steps 4 --checkpoint.every 100" + eval_args());
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_NE(r.output.find("--resume: no completed checkpoint in " + (run / "checkpoints").string() +
                          ": the run starts again from step 0 (metrics.jsonl's lines of steps 1-3 are dropped)"),
            std::string::npos)
      << r.output;
  EXPECT_EQ(r.output.find("eval at step 0:"), std::string::npos) << r.output;
  expect_each_step_once(run, 4, {0, 4});
  EXPECT_EQ(baseline_of(run), baseline);
}

// A start from step 0 again (no checkpoint) with another held-out evaluation (eval.examples 6
// instead of 4): the evaluation at step 0 on record measured something else, and it is the
// baseline of every later one (the forgetting monitor's, eval.best's first); it is dropped, said,
// and measured again. Before, it stayed in metrics.jsonl as this run's, unsaid. A line that does not
// say what it measured (an earlier version's) is measured again too.
TEST_F(RunDirCli, AStartFromStepZeroWithAnotherEvaluationEvaluatesStepZeroAgain) {
  const fs::path run = root() / "restart-other-evaluation";
  ASSERT_EQ(train(run, "--train.steps 3 --checkpoint.every 100" + eval_args(), "QARAC_FAULT=term:0:1").code, 75);
  const nlohmann::json before = baseline_of(run);
  fs::remove_all(run / "checkpoints");
  std::string other_args = eval_args();
  other_args.replace(other_args.find("--eval.examples 4"), 17, "--eval.examples 6");
  const CliResult r = train(run, "--resume --train.steps 3 --checkpoint.every 100" + other_args);
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_NE(r.output.find("--resume: " + (run / "metrics.jsonl").string() +
                          "'s evaluation at step 0 is not of this run's held-out evaluation (other examples or "
                          "settings, or a line of an earlier version, which does not say): the run evaluates at step 0 "
                          "again"),
            std::string::npos)
      << r.output;
  EXPECT_NE(r.output.find("eval at step 0:"), std::string::npos) << r.output;
  expect_each_step_once(run, 3, {0, 3});
  const nlohmann::json after = baseline_of(run);
  EXPECT_NE(after.value("evaluation", ""), before.value("evaluation", "")) << after.dump();
  // Again with the same evaluation (the run's checkpoint and export removed): kept.
  fs::remove_all(run / "checkpoints");
  fs::remove_all(run / "export");
  const CliResult same = train(run, "--resume --train.steps 3 --checkpoint.every 100" + other_args);
  ASSERT_EQ(same.code, 0) << same.output;
  EXPECT_EQ(same.output.find("eval at step 0:"), std::string::npos) << same.output;
  EXPECT_EQ(baseline_of(run), after);
  // A line without the field: measured again.
  fs::remove_all(run / "checkpoints");
  fs::remove_all(run / "export");
  const std::string lines = test_support::read_text((run / "metrics.jsonl").string());
  std::ofstream(run / "metrics.jsonl") << std::regex_replace(lines, std::regex("\"evaluation\":\"[0-9a-f]+\","), "");
  const CliResult unnamed = train(run, "--resume --train.steps 3 --checkpoint.every 100" + other_args);
  ASSERT_EQ(unnamed.code, 0) << unnamed.output;
  EXPECT_NE(unnamed.output.find("eval at step 0:"), std::string::npos) << unnamed.output;
  expect_each_step_once(run, 3, {0, 3});
  EXPECT_EQ(baseline_of(run).value("evaluation", ""), after.value("evaluation", ""));
}

// Killed after the lines of steps 3 and 4 (and half of step 5's) but before the checkpoint of
// step 4: the resumed run repeats steps 3 and 4 from the checkpoint of step 2, and the file
// holds each step once, the evaluations once, every line whole.
TEST_F(RunDirCli, ResumedMetricsHoldEveryStepOnce) {
  const fs::path run = root() / "killed-late";
  ASSERT_EQ(train(run, "--train.steps 4 --checkpoint.every 2 --checkpoint.keep 0" + eval_args()).code, 0);
  fs::remove_all(run / "checkpoints" / "step-0000000004");
  append(run / "metrics.jsonl", "{\"step\": 5, \"lr\": 0.00");
  const CliResult r = train(run, "--resume --train.steps 4 --checkpoint.every 2" + eval_args());
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_NE(r.output.find("at step 2"), std::string::npos) << r.output;
  expect_each_step_once(run, 4, {0, 4});
  // Resuming to fewer steps than the checkpoint reached is refused, not a silent no-op.
  const CliResult back = train(run, "--resume --train.steps 3");
  EXPECT_EQ(back.code, 2) << back.output;
  EXPECT_NE(back.output.find("is at step 4, beyond train.steps 3"), std::string::npos) << back.output;
}

// Checkpoints removed (to free the disk) from a run that went past them: --resume refuses to start
// again from step 0, which would rewrite the run's metrics.jsonl and export/ (before: one warning,
// then both rewritten). A run killed before its first checkpoint still starts again (above).
TEST_F(RunDirCli, ResumeDoesNotStartOverARunThatWentPastACheckpoint) {
  const fs::path run = root() / "checkpoints-removed", exported = root() / "checkpoints-removed-export";
  ASSERT_EQ(train(run, "--train.steps 4 --checkpoint.every 2").code, 0);
  // Resumed with an interval longer than the run: step lines record the checkpoint at step 4.
  ASSERT_EQ(train(run, "--resume --train.steps 6 --checkpoint.every 100").code, 0);
  fs::remove_all(run / "checkpoints");
  fs::rename(run / "export", exported);
  const std::string metrics = test_support::read_text((run / "metrics.jsonl").string());
  const CliResult r = train(run, "--resume --train.steps 8 --checkpoint.every 100");
  EXPECT_EQ(r.code, 2) << r.output;
  EXPECT_NE(r.output.find("--resume: no checkpoint is left in " + (run / "checkpoints").string() +
                          ", but the run went past one (metrics.jsonl records steps after its checkpoint at step 4)"),
            std::string::npos)
      << r.output;
  EXPECT_EQ(r.output.find("starts again from step 0"), std::string::npos) << r.output;
  EXPECT_EQ(test_support::read_text((run / "metrics.jsonl").string()), metrics);
  // Without metrics.jsonl, the export says the run finished.
  fs::remove(run / "metrics.jsonl");
  fs::rename(exported, run / "export");
  const CliResult finished = train(run, "--resume --train.steps 8");
  EXPECT_EQ(finished.code, 2) << finished.output;
  EXPECT_NE(finished.output.find("but the run went past one (export/ holds its models)"), std::string::npos)
      << finished.output;
  // Records of a version without last_checkpoint: config.ini's interval (that of the run which
  // wrote them, not the resume's) says a checkpoint was due before the last step.
  const fs::path older = root() / "checkpoints-removed-older";
  ASSERT_EQ(train(older, "--train.steps 4 --checkpoint.every 2").code, 0);
  fs::remove_all(older / "checkpoints");
  fs::remove_all(older / "export");
  const std::string lines = test_support::read_text((older / "metrics.jsonl").string());
  std::ofstream(older / "metrics.jsonl") << std::regex_replace(lines, std::regex(",\"last_checkpoint\":[0-9]+"), "");
  const CliResult before = train(older, "--resume --train.steps 6 --checkpoint.every 100");
  EXPECT_EQ(before.code, 2) << before.output;
  EXPECT_NE(before.output.find("but the run went past one (metrics.jsonl records step 4, checkpoint.every is 2)"),
            std::string::npos)
      << before.output;
}

// Every checkpoint damaged (one flipped byte in one part of each): --resume stops with one line,
// keeping the checkpoints and the metrics. Before, it started again from step 0 with exit 0,
// rewrote metrics.jsonl, and its checkpoint rotation deleted the damaged ones.
TEST_F(RunDirCli, ResumeStopsWhenEveryCheckpointIsDamaged) {
  const fs::path run = root() / "all-damaged";
  ASSERT_EQ(train(run, "--train.steps 4 --checkpoint.every 2 --checkpoint.keep 0").code, 0);
  fs::remove_all(run / "export");
  std::vector<fs::path> folders;
  for (const char* step : {"step-0000000002", "step-0000000004"}) {
    folders.push_back(run / "checkpoints" / step);
    const fs::path part = folders.back() / "answer_encoder.h5";
    qarac::test_support::flip_byte(part.string(), fs::file_size(part) / 2);
  }
  const auto read = [](const fs::path& p) {
    std::ifstream in(p);
    return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  };
  const std::string metrics = read(run / "metrics.jsonl");
  const CliResult r = train(run, "--resume --train.steps 6 --checkpoint.every 2 --checkpoint.keep 1");
  EXPECT_EQ(r.code, 2) << r.output;
  EXPECT_NE(r.output.find("none of its 2 checkpoints can be resumed"), std::string::npos) << r.output;
  EXPECT_EQ(r.output.find("starts again from step 0"), std::string::npos) << r.output;
  for (const fs::path& folder : folders) EXPECT_TRUE(fs::exists(folder / "answer_encoder.h5")) << folder;
  EXPECT_EQ(read(run / "metrics.jsonl"), metrics);
}

// config.ini holds the settings the run goes on with: rewritten when it resumes (with another
// length here), and back when it was lost. Before, it kept the first start's (a run directory
// from before the mode's ignored keys were left out could never be read back).
TEST_F(RunDirCli, ConfigIniIsRewrittenWhenARunResumes) {
  const fs::path run = root() / "longer";
  ASSERT_EQ(train(run, "--train.steps 2 --checkpoint.every 2 --optimizer.lr 1e-4").code, 0);
  fs::remove(run / "config.ini");
  // A rate and a task weight changed: allowed, but said, in the log and in config.ini (before:
  // config.ini read as if the whole run had used them).
  const CliResult r = train(run, "--resume --train.steps 3 --checkpoint.every 2 --optimizer.lr 5e-4 --task.ed.weight 3");
  ASSERT_EQ(r.code, 0) << r.output;
  // The length too: the (default) linear decay spans it, so every later rate moves.
  const std::string changes = "optimizer.lr 0.0001 -> 0.0005, task.ed.weight 1 -> 3, train.steps 2 -> 3";
  EXPECT_NE(r.output.find("--resume: settings other than the checkpoint's run's: " + changes), std::string::npos)
      << r.output;
  std::ifstream in(run / "config.ini");
  const std::string ini((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  EXPECT_NE(ini.find("[train]\nsteps = 3\n"), std::string::npos) << ini;
  EXPECT_EQ(ini.rfind("# Resumed at step 2 with settings other than the checkpoint's run's: " + changes + "\n", 0), 0u)
      << ini;
  // Only the length changed: said under a decay, nothing to say under a constant rate.
  const CliResult longer = train(run, "--resume --train.steps 4 --checkpoint.every 2 --optimizer.lr 5e-4 --task.ed.weight 3");
  ASSERT_EQ(longer.code, 0) << longer.output;
  EXPECT_NE(longer.output.find("settings other than the checkpoint's run's: train.steps 3 -> 4 (the run goes on"), std::string::npos)
      << longer.output;
  const fs::path constant = root() / "longer-constant";
  ASSERT_EQ(train(constant, "--train.steps 2 --checkpoint.every 2 --optimizer.decay constant").code, 0);
  const CliResult same_rates = train(constant, "--resume --train.steps 3 --optimizer.decay constant");
  ASSERT_EQ(same_rates.code, 0) << same_rates.output;
  EXPECT_EQ(same_rates.output.find("settings other than"), std::string::npos) << same_rates.output;
}

// Every resume's note stays in config.ini (and in the checkpoints' copy of it): before, the next
// resume's rewrite dropped the first one, and nothing said that steps 0-2 ran at another rate.
TEST_F(RunDirCli, EveryResumesNoteStaysInConfigIni) {
  const fs::path run = root() / "two-resumes";
  ASSERT_EQ(train(run, "--train.steps 2 --checkpoint.every 2 --optimizer.lr 1e-4").code, 0);
  ASSERT_EQ(train(run, "--resume --train.steps 3 --checkpoint.every 1 --optimizer.lr 5e-4").code, 0);
  const CliResult again = train(run, "--resume --train.steps 4 --checkpoint.every 1 --optimizer.lr 2e-4");
  ASSERT_EQ(again.code, 0) << again.output;
  const std::string ini = test_support::read_text((run / "config.ini").string());
  const std::string first = "# Resumed at step 2 with settings other than the checkpoint's run's: optimizer.lr 0.0001 "
                            "-> 0.0005, train.steps 2 -> 3\n";
  const std::string second = "# Resumed at step 3 with settings other than the checkpoint's run's: optimizer.lr "
                             "0.0005 -> 0.0002, train.steps 3 -> 4\n";
  EXPECT_EQ(ini.rfind(first + second, 0), 0u) << ini;
  // A resume that changes nothing keeps them.
  ASSERT_EQ(train(run, "--resume --train.steps 4 --checkpoint.every 1 --optimizer.lr 2e-4").code, 0);
  EXPECT_EQ(test_support::read_text((run / "config.ini").string()).rfind(first + second, 0), 0u);
}

// The same weights built into other models (a base whose config.json gives another layer_norm_eps,
// or another dropout under model.dropout -1) are refused on a resume, naming what differs; before,
// the run went on under them unsaid and the export described models trained otherwise.
TEST_F(RunDirCli, ResumeFromABaseOfAnotherConfigurationIsRefused) {
  const fs::path run = root() / "other-config", base = root() / "base-other-config";
  ASSERT_EQ(train(run, "--train.steps 2 --checkpoint.every 2").code, 0);
  fs::copy(root() / "base", base, fs::copy_options::recursive | fs::copy_options::overwrite_existing);
  nlohmann::json config = nlohmann::json::parse(test_support::read_text((base / "config.json").string()));
  const double eps = config.at("layer_norm_eps").get<double>();
  config["layer_norm_eps"] = eps * 10;
  config["hidden_dropout_prob"] = 0.25;
  std::ofstream(base / "config.json") << config.dump(2);
  const CliResult r = train(run, "--resume --train.steps 3 --model.base " + base.string());
  EXPECT_EQ(r.code, 2) << r.output;
  EXPECT_NE(r.output.find("the checkpoint's run built its models otherwise than this run's model.base (" +
                          base.string() + ") and model.dropout give: "),
            std::string::npos)
      << r.output;
  EXPECT_NE(r.output.find("hidden_dropout_prob 0.1 -> 0.25"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("layer_norm_eps " + nlohmann::json(eps).dump() + " -> " + nlohmann::json(eps * 10).dump()),
            std::string::npos)
      << r.output;
  EXPECT_FALSE(fs::exists(run / "checkpoints" / "step-0000000003"));
  // The base the run started from goes on.
  EXPECT_EQ(train(run, "--resume --train.steps 3").code, 0);
}

// Every part of checkpoint folder `folder` rewritten with `edit` applied to its datasets: a
// checkpoint as an earlier version wrote it, checksummed and sealed as any.
void rewrite_checkpoint(const fs::path& folder, const std::function<void(H5Contents&)>& edit) {
  const H5FileKind kind = {kCheckpointFormat, kCheckpointVersion, "checkpoint"};
  for (const fs::directory_entry& part : fs::directory_iterator(folder)) {
    const std::string path = part.path().string();
    H5Contents contents = ChecksummedH5Reader(path, kind).read([](const std::string&, const Shape&) { return true; });
    edit(contents);
    {
      ChecksummedH5Writer w(path + ".new", kind);
      for (const auto& [name, d] : contents) d.is_text ? w.write_text(name, d.text) : w.write(name, d.values);
      w.finish();
    }
    fs::rename(path + ".new", path);
  }
}

// A base whose config.json leaves layer_norm_eps out: versions before commit 311f593 read it as
// 1e-5, this one as transformers does (1e-12). A checkpoint of such a version's run, one that
// records no model configuration (before they were recorded) or one that records 1e-5, is
// refused naming the file and the fix; before, the first kind went on with other models unsaid
// (2.6e-5 apart in f64 two steps on), and the second was refused as another base.
TEST_F(RunDirCli, ARunOfAnEarlierVersionFromABaseWithoutLayerNormEpsIsRefused) {
  const fs::path base = root() / "base-no-eps", base_eps = root() / "base-eps-1e-5";
  for (const fs::path& copy : {base, base_eps})
    fs::copy(root() / "base", copy, fs::copy_options::recursive | fs::copy_options::overwrite_existing);
  nlohmann::json config = nlohmann::json::parse(test_support::read_text((base / "config.json").string()));
  config.erase("layer_norm_eps");
  std::ofstream(base / "config.json") << config.dump(2);
  config["layer_norm_eps"] = 1e-5;
  std::ofstream(base_eps / "config.json") << config.dump(2);
  const std::string args = " --checkpoint.every 2 --model.base " + base.string();
  const fs::path run = root() / "no-eps";
  ASSERT_EQ(train(run, "--train.steps 2" + args).code, 0);
  // This version's own checkpoint goes on.
  const fs::path own = root() / "no-eps-own";
  fs::copy(run, own, fs::copy_options::recursive);
  const CliResult same = train(own, "--resume --train.steps 3" + args);
  EXPECT_EQ(same.code, 0) << same.output;
  const std::string fix = (base / "config.json").string() + " leaves layer_norm_eps out, which versions of QARAC-MT "
                          "before commit 311f593 (7 December 2026) read as 1e-05 and this one reads as transformers "
                          "does, 1e-12: add \"layer_norm_eps\": 1e-05 to it";
  const fs::path checkpoint = run / "checkpoints" / "step-0000000002";
  // Recorded as such a version's run recorded it.
  const fs::path recorded = root() / "no-eps-recorded";
  fs::copy(run, recorded, fs::copy_options::recursive);
  rewrite_checkpoint(recorded / "checkpoints" / "step-0000000002", [](H5Contents& c) {
    nlohmann::json fields = nlohmann::json::parse(c.at("state/model_config").text);
    fields["layer_norm_eps"] = 1e-5;
    c.at("state/model_config").text = fields.dump();
  });
  const CliResult r = train(recorded, "--resume --train.steps 3" + args);
  EXPECT_EQ(r.code, 2) << r.output;
  EXPECT_NE(r.output.find("layer_norm_eps 1e-05 -> 1e-12 (they must match: " + fix), std::string::npos) << r.output;
  // Not recorded.
  rewrite_checkpoint(checkpoint, [](H5Contents& c) { c.erase("state/model_config"); });
  const CliResult old = train(run, "--resume --train.steps 3" + args);
  EXPECT_EQ(old.code, 2) << old.output;
  EXPECT_NE(old.output.find("qarac-train: error: --resume: " + checkpoint.string() +
                            " records no model configuration (an earlier version's), and " + fix),
            std::string::npos)
      << old.output;
  EXPECT_FALSE(fs::exists(run / "checkpoints" / "step-0000000003"));
  // The fix: the base with the value the run began with.
  const CliResult fixed = train(run, "--resume --train.steps 3 --checkpoint.every 2 --model.base " + base_eps.string());
  EXPECT_EQ(fixed.code, 0) << fixed.output;
  EXPECT_NE(fixed.output.find("resuming from " + checkpoint.string()), std::string::npos) << fixed.output;
}

// The held-out evaluation changed between a run and its resume (other examples: eval.examples 6
// instead of 4): said, in the log and in config.ini, and eval.best's best counts from the next
// evaluation, whose models replace best/. Before, the earlier evaluation's best stood as if the
// two compared, and metrics.jsonl mixed them unsaid. The same evaluation says nothing.
TEST_F(RunDirCli, AResumeWithAnotherEvaluationSaysSoAndCountsTheBestAgain) {
  const fs::path run = root() / "other-evaluation";
  const std::string best = " --eval.best cs.loss --eval.every 2";
  ASSERT_EQ(train(run, "--train.steps 2 --checkpoint.every 2" + eval_args() + best).code, 0);
  const CliResult same = train(run, "--resume --train.steps 3 --checkpoint.every 3" + eval_args() + best);
  ASSERT_EQ(same.code, 0) << same.output;
  EXPECT_EQ(same.output.find("held-out evaluation"), std::string::npos) << same.output;
  std::string other_args = eval_args();
  other_args.replace(other_args.find("--eval.examples 4"), 17, "--eval.examples 6");
  const CliResult other = train(run, "--resume --train.steps 4 --checkpoint.every 4" + other_args + best);
  ASSERT_EQ(other.code, 0) << other.output;
  const std::string note =
      "the held-out evaluation (other examples or settings: the evaluations on record do not compare with this run's)";
  EXPECT_NE(other.output.find("--resume: settings other than the checkpoint's run's: train.steps 3 -> 4, " + note),
            std::string::npos)
      << other.output;
  EXPECT_NE(other.output.find(", of another held-out evaluation than the run's: the next evaluation replaces it"),
            std::string::npos)
      << other.output;
  EXPECT_NE(test_support::read_text((run / "config.ini").string()).find(note), std::string::npos);
  const nlohmann::json held = nlohmann::json::parse(test_support::read_text((run / "best" / "best.json").string()));
  EXPECT_EQ(held.at("step").get<int64_t>(), 4) << held.dump();
  // Resumed again on the new evaluation: still only its own evaluations count.
  const CliResult later = train(run, "--resume --train.steps 5 --checkpoint.every 5" + other_args + best);
  ASSERT_EQ(later.code, 0) << later.output;
  EXPECT_EQ(later.output.find("held-out evaluation"), std::string::npos) << later.output;
  EXPECT_EQ(later.output.find("not the best on record"), std::string::npos) << later.output;
  EXPECT_NE(later.output.find("eval.best: cs.loss "), std::string::npos) << later.output;
  EXPECT_NE(later.output.find(" at step 4 so far; 0 evaluations since"), std::string::npos) << later.output;

  // Resumed where no evaluation is on record (the newest checkpoint removed): the run evaluates at
  // its first step with the new evaluation, which counts, then and at every later resume.
  const fs::path at = root() / "other-evaluation-at-the-resume";
  const std::string rarely = " --eval.best cs.loss --eval.every 3";  // none at step 2
  ASSERT_EQ(train(at, "--train.steps 3 --checkpoint.every 2 --checkpoint.keep 0" + eval_args() + rarely).code, 0);
  fs::remove_all(at / "checkpoints" / "step-0000000003");
  const CliResult first = train(at, "--resume --train.steps 3 --checkpoint.every 3" + other_args + best);
  ASSERT_EQ(first.code, 0) << first.output;
  EXPECT_NE(first.output.find("eval at step 2:"), std::string::npos) << first.output;
  // best/ holds the best of step 3, beyond the checkpoint, which best.json says the other
  // evaluation measured.
  EXPECT_NE(first.output.find("holds cs.loss "), std::string::npos) << first.output;
  EXPECT_NE(first.output.find(" at step 3, of another held-out evaluation than the run's"), std::string::npos)
      << first.output;
  const CliResult second = train(at, "--resume --train.steps 4 --checkpoint.every 4" + other_args + best);
  ASSERT_EQ(second.code, 0) << second.output;
  EXPECT_EQ(second.output.find("another held-out evaluation"), std::string::npos) << second.output;
  EXPECT_EQ(second.output.find("not the best on record"), std::string::npos) << second.output;
}

// The base's MLM head is read at every start and never trained (the forgetting monitor's here):
// a resume from a base whose head differs says so (before: unsaid, and forgetting.mlm_loss went
// on under another head than its first measure's). The same base says nothing.
TEST_F(RunDirCli, ResumeFromABaseWithAnotherHeadIsSaid) {
  const fs::path run = root() / "other-head", base = root() / "base-other-head";
  const std::string monitor = eval_args() + " --eval.tokenizer " + qarac::test_support::kSample + "tokenizer --eval.every 0";
  ASSERT_EQ(train(run, "--train.steps 2 --checkpoint.every 2" + monitor).code, 0);
  fs::copy(root() / "base", base, fs::copy_options::recursive | fs::copy_options::overwrite_existing);
  qarac::TensorMap weights = qarac::io::read_safetensors((base / "model.safetensors").string());
  std::vector<float> dense = weights.at("lm_head.dense.weight").to_vector<float>();
  for (float& x : dense) x += 0.5f;  // the tiny base's head is zeros
  weights["lm_head.dense.weight"] = qarac::Tensor::from_vector(dense, weights.at("lm_head.dense.weight").shape());
  qarac::io::write_safetensors((base / "model.safetensors").string(), weights);

  const CliResult same = train(run, "--resume --train.steps 3 --checkpoint.every 3" + monitor);
  ASSERT_EQ(same.code, 0) << same.output;
  EXPECT_EQ(same.output.find("MLM head"), std::string::npos) << same.output;
  const CliResult other =
      train(run, "--resume --train.steps 4 --checkpoint.every 4 --model.base " + base.string() + monitor);
  ASSERT_EQ(other.code, 0) << other.output;
  EXPECT_NE(other.output.find("model.base's MLM head (hash64 0x"), std::string::npos) << other.output;
}

// A resume on other data whose streams have the same sizes (here: one word of the text corpus
// changed) is refused, naming the stream: the checkpoint's cursors belong to another order.
TEST_F(RunDirCli, ResumeOnOtherDataOfTheSameSizeIsRefused) {
  const fs::path run = root() / "other-data";
  ASSERT_EQ(train(run, "--train.steps 2").code, 0);
  const fs::path sample = root() / "sample-changed";
  fs::copy(QARAC_SAMPLE_DIR, sample, fs::copy_options::recursive);
  {
    std::ifstream in(sample / "corpus_train.txt");
    std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    text.replace(text.find("Hugo"), 4, "Tara");
    std::ofstream(sample / "corpus_train.txt") << text;
  }
  const CliResult prep =
      qarac::test_support::prepare_sample_data(QARAC_PREP_EXE, sample.string() + "/", root() / "data-changed");
  ASSERT_EQ(prep.code, 0) << prep.output;
  const CliResult r = train(run, "--resume --train.steps 4 --data.dir " + (root() / "data-changed").string());
  EXPECT_EQ(r.code, 2) << r.output;
  EXPECT_NE(r.output.find("encode_decode.h5: the checkpoint was made with another task stream"), std::string::npos)
      << r.output;
}

// Words that are not --KEY VALUE settings are refused, not dropped.
TEST_F(RunDirCli, StrayArgumentsAreRefused) {
  expect_usage_error("extra", {"unexpected argument 'extra'"});
  expect_usage_error("--train.steps 2 lr=1e-4", {"unexpected argument 'lr=1e-4'"});
}

// An error found only when the run has started (here: data tokenised with a larger vocabulary
// than the base's, found by the first forward pass) leaves no directory behind: the same command
// runs again once the cause is fixed.
TEST_F(RunDirCli, AFailedStartLeavesNoDirectory) {
  const fs::path small_base = root() / "small-base";
  qarac::test_support::write_tiny_base(small_base, qarac::test_support::kSample + "tokenizer", 50);
  const fs::path run = root() / "failed-start";
  const CliResult r = train(run, "--model.base " + small_base.string() + " --train.steps 2");
  EXPECT_EQ(r.code, 2) << r.output;
  EXPECT_NE(r.output.find("vocabulary"), std::string::npos) << r.output;
  EXPECT_FALSE(fs::exists(run)) << r.output;
  EXPECT_EQ(train(run, "--train.steps 1 --optimizer.warmup 0").code, 0);
}

// Data made with another tokenizer than the one the exports would carry is refused when the run
// starts, naming the stream, the tokenizer and the fix, and no output directory is made (the
// export at the end of the run was the first to see it). The tokenizer is model.base's, or
// eval.tokenizer when the base holds none.
TEST_F(RunDirCli, DataOfAnotherTokenizerIsRefusedAtTheStart) {
  // The sample tokenizer without its last merge: the same vocabulary, another tokenizer.
  const fs::path other = root() / "other-tokenizer";
  fs::create_directories(other);
  nlohmann::json tokenizer =
      nlohmann::json::parse(std::ifstream(qarac::test_support::kSample + "tokenizer/tokenizer.json"));
  nlohmann::json& merges = tokenizer["model"]["merges"];
  merges.erase(merges.size() - 1);
  std::ofstream(other / "tokenizer.json") << tokenizer.dump();
  const fs::path base = root() / "other-tokenizer-base";
  qarac::test_support::write_tiny_base(base, other.string());
  fs::copy_file(other / "tokenizer.json", base / "tokenizer.json");

  const std::string stream = (root() / "data").string() + "/";
  for (const auto& [args, dir] : {std::pair{"--model.base " + base.string(), base.string()},
                                  std::pair{"--eval.tokenizer " + other.string(), other.string()}})
    expect_usage_error(args, {stream, ".h5: made with tokenizer ", "but the run's tokenizer, " + dir + ", is ",
                              "(rerun qarac-prep with --tokenizer " + dir + ", or give the data's tokenizer)"});
}

// Ctrl-C (SIGINT) stops a run as SIGTERM does: after the step in flight, with a checkpoint of it,
// exit status 75, and --resume finishes the run (before: the process died at once, unsaid, and
// the steps since the last checkpoint were lost).
TEST_F(RunDirCli, CtrlCStopsWithACheckpoint) {
  // As a foreground process has it (the programs inherit it): a suite run in a shell's background
  // has SIGINT ignored, which qarac-train leaves so.
  std::signal(SIGINT, SIG_DFL);
  const fs::path run = root() / "interrupted";
  const CliResult stopped = train(run, "--train.steps 4 --checkpoint.every 0", "QARAC_FAULT=interrupt:0:1");
  ASSERT_EQ(stopped.code, 75) << stopped.output;
  EXPECT_NE(stopped.output.find("SIGINT on rank 0: stopping after step 2 with a checkpoint"), std::string::npos)
      << stopped.output;
  EXPECT_TRUE(fs::is_directory(run / "checkpoints" / "step-0000000002")) << stopped.output;
  EXPECT_FALSE(fs::exists(run / "export")) << "a stopped run exports nothing";
  // The record of the stop, for launchers that do not pass the exit status on (srun).
  std::ifstream record_file(run / "stopped.json");
  ASSERT_TRUE(record_file) << "no stopped.json";
  const nlohmann::json record = nlohmann::json::parse(record_file);
  EXPECT_EQ(record, (nlohmann::json{{"step", 2},
                                    {"signal", "SIGINT"},
                                    {"rank", 0},
                                    {"checkpoint", (run / "checkpoints" / "step-0000000002").string()}}));
  const CliResult resumed = train(run, "--resume --train.steps 4 --checkpoint.every 0");
  ASSERT_EQ(resumed.code, 0) << resumed.output;
  EXPECT_FALSE(fs::exists(run / "stopped.json")) << "the next start removes the record";
  expect_each_step_once(run, 4, {});
  // In the last step the request finds the run finishing: it finishes, and says so.
  const CliResult last = train(root() / "interrupted-last", "--train.steps 2", "QARAC_FAULT=interrupt:0:1");
  ASSERT_EQ(last.code, 0) << last.output;
  EXPECT_NE(last.output.find("SIGINT in the last step or after it: the run finished (nothing to resume)"),
            std::string::npos)
      << last.output;
}

// qarac-train's standard output is its log, metrics.jsonl its record: a reader that went away (a
// `| tee` that the Ctrl-C asking for a checkpoint ended too, `| head`) does not end the run
// (before: SIGPIPE at the next progress line, and the steps since the last checkpoint lost).
TEST_F(RunDirCli, ARunOutlivesAClosedLogPipe) {
  const fs::path run = root() / "closed-pipe", status = root() / "closed-pipe.status";
  const std::string command = train_command(run, "--train.steps 3 --optimizer.warmup 0");
  const CliResult r = qarac::test_support::run_command("(" + command + "; echo $? > " + status.string() + ") | true");
  std::ifstream in(status);
  int code = -1;
  in >> code;
  EXPECT_EQ(code, 0) << "141: ended by SIGPIPE\n" << r.output;
  EXPECT_TRUE(fs::exists(run / "export" / "decoder" / "model.safetensors"));
  expect_each_step_once(run, 3, {});
}

// A run whose terminal closes (a dropped ssh connection: SIGHUP, then every write to the terminal
// fails) stops with a checkpoint as on SIGTERM, and --resume finishes it (before: SIGHUP killed
// it, and the steps since the last checkpoint were lost).
TEST_F(RunDirCli, AClosedTerminalStopsTheRunWithACheckpoint) {
  const fs::path run = root() / "hung-up";
  // As a user's own terminal has it, also when the suite runs inside a launcher's (srun --pty).
  const std::string unlaunched = "env -u OMPI_COMM_WORLD_SIZE -u PMI_SIZE -u PMIX_RANK -u SLURM_PROCID TERM=xterm";
  const std::string command = "exec " + train_command(run, "--train.steps 1000 --checkpoint.every 0", unlaunched);
  int terminal = -1;
  const pid_t pid = forkpty(&terminal, nullptr, nullptr, nullptr);
  ASSERT_GE(pid, 0) << std::strerror(errno);
  if (pid == 0) {  // the new terminal's session leader, as the shell of an ssh login is
    std::signal(SIGHUP, SIG_DFL);  // a suite run under nohup has it ignored
    execl("/bin/sh", "sh", "-c", command.c_str(), static_cast<char*>(nullptr));
    _exit(127);
  }
  // The terminal closes once the run has made a step.
  std::string seen;
  char buf[4096];
  for (pollfd p{terminal, POLLIN, 0}; seen.find("step 2/1000") == std::string::npos && poll(&p, 1, 60'000) > 0;) {
    const ssize_t n = read(terminal, buf, sizeof buf);
    if (n <= 0) break;
    seen.append(buf, static_cast<size_t>(n));
  }
  close(terminal);
  // On its terminal, a run that no launcher started rewrites its progress line in place
  // (train.progress auto; before: never, a singleton's MPI_Init set a launcher's variable).
  EXPECT_NE(seen.find("\033[K"), std::string::npos) << seen;
  int status = 0;
  for (int waited_ms = 0; waitpid(pid, &status, WNOHANG) == 0; waited_ms += 100) {
    if (waited_ms > 60'000) {
      kill(pid, SIGKILL);
      waitpid(pid, &status, 0);
      FAIL() << "the run went on for a minute without its terminal:\n" << seen;
    }
    usleep(100'000);
  }
  ASSERT_TRUE(WIFEXITED(status)) << "ended by signal " << WTERMSIG(status) << ":\n" << seen;
  ASSERT_EQ(WEXITSTATUS(status), 75) << seen;
  // The checkpoint of the step in flight at the hang-up, and a resume that finishes from it.
  std::vector<fs::path> checkpoints;
  for (const fs::directory_entry& e : fs::directory_iterator(run / "checkpoints")) checkpoints.push_back(e.path());
  ASSERT_EQ(checkpoints.size(), 1u);
  const int64_t stopped = std::stoll(checkpoints[0].filename().string().substr(5));  // step-NNNNNNNNNN
  EXPECT_GE(stopped, 2);
  const std::string last = std::to_string(stopped + 2);
  const CliResult resumed = train(run, "--resume --train.steps " + last + " --checkpoint.every 0");
  ASSERT_EQ(resumed.code, 0) << resumed.output;
  expect_each_step_once(run, stopped + 2, {});
}

// A dumb terminal (TERM=dumb: an editor's shell buffer) cannot erase a line: the progress comes
// a line at a time there, as in a log.
TEST_F(RunDirCli, ADumbTerminalGetsProgressLines) {
  const std::string command =
      "exec " + train_command(root() / "dumb-terminal", "--train.steps 2",
                              "env -u OMPI_COMM_WORLD_SIZE -u PMI_SIZE -u PMIX_RANK -u SLURM_PROCID TERM=dumb");
  int terminal = -1;
  const pid_t pid = forkpty(&terminal, nullptr, nullptr, nullptr);
  ASSERT_GE(pid, 0) << std::strerror(errno);
  if (pid == 0) {
    execl("/bin/sh", "sh", "-c", command.c_str(), static_cast<char*>(nullptr));
    _exit(127);
  }
  std::string seen;
  char buf[4096];
  for (pollfd p{terminal, POLLIN, 0}; poll(&p, 1, 60'000) > 0;) {
    const ssize_t n = read(terminal, buf, sizeof buf);
    if (n <= 0) break;  // EIO once the run has ended
    seen.append(buf, static_cast<size_t>(n));
  }
  close(terminal);
  int status = 0;
  waitpid(pid, &status, 0);
  ASSERT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << seen;
  EXPECT_EQ(seen.find("\033[K"), std::string::npos) << seen;
  EXPECT_NE(seen.find("step 1/2"), std::string::npos) << seen;
}

// An eval.tokenizer that nothing reads (no evaluation, no rehearsal, a base with its own tokenizer
// for the exports) is said, not accepted unchecked; read by the exports, it is not.
TEST_F(RunDirCli, AnEvalTokenizerNothingReadsIsSaid) {
  const fs::path base = root() / "base-with-tokenizer";
  fs::copy(root() / "base", base, fs::copy_options::recursive | fs::copy_options::overwrite_existing);
  fs::copy_file(qarac::test_support::kSample + "tokenizer/tokenizer.json", base / "tokenizer.json",
                fs::copy_options::overwrite_existing);
  const std::string missing = (root() / "no-such-tokenizer").string();
  const CliResult unread = train(root() / "unread-tokenizer", "--train.steps 1 --optimizer.warmup 0 --model.base " +
                                                                  base.string() + " --eval.tokenizer " + missing);
  ASSERT_EQ(unread.code, 0) << unread.output;
  EXPECT_NE(unread.output.find("eval.tokenizer " + missing + ": not read (no eval.dir"), std::string::npos)
      << unread.output;
  const CliResult read = train(root() / "read-tokenizer", "--train.steps 1 --optimizer.warmup 0 --eval.tokenizer " +
                                                              qarac::test_support::kSample + "tokenizer");
  ASSERT_EQ(read.code, 0) << read.output;
  EXPECT_EQ(read.output.find("not read"), std::string::npos) << read.output;
}

// train.nonfinite skip: the steps whose gradients overflow are not applied, each said on screen
// and counted in metrics.jsonl; the run finishes.
TEST_F(RunDirCli, NonFiniteStepsAreSkippedWhenAsked) {
  const fs::path run = root() / "skipping";
  const CliResult r = train(run, "--task.ed.weight 3e38 --train.nonfinite skip --train.steps 3");
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_NE(r.output.find("step 2: the gradient norm is"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("its update is skipped"), std::string::npos) << r.output;
  // Ending on skipped steps, the run says how old the models it saves are.
  EXPECT_NE(r.output.find("step 3: the run ends on 3 skipped step(s): what it saves and exports is the models of the "
                          "last step applied, 3 before"),
            std::string::npos)
      << r.output;
  int64_t last = 0;
  for (const nlohmann::json& j : metrics_lines(run)) {
    if (j.value("eval", false)) continue;
    EXPECT_TRUE(j.value("skipped", false)) << j.dump();
    EXPECT_EQ(j.value("skipped_steps", int64_t{0}), j["step"].get<int64_t>()) << j.dump();
    last = j["step"].get<int64_t>();
  }
  EXPECT_EQ(last, 3);
  expect_usage_error("--train.nonfinite ignore", {"train.nonfinite", "stop or skip"});
}

// Before: an update that overflowed the weights was followed by skips to the end of the run
// (train.nonfinite skip), which exited 0 and exported NaN weights. The skipped step after it now
// ends the run naming the weight, and no checkpoint holds such weights (train.nonfinite stop:
// the checkpoint right after the update is refused, not written, and so is skip's advice). No
// weight decay: at lr 3e38 it would be refused before the run (lr * weight_decay >= 1).
TEST_F(RunDirCli, WeightsThatAreNotFiniteEndTheRun) {
  const fs::path skipping = root() / "overflowed-skip";
  const CliResult skip = train(skipping, "--optimizer.lr 3e38 --optimizer.weight_decay 0 --optimizer.warmup 0 --train.nonfinite skip --train.steps 4");
  EXPECT_EQ(skip.code, 2) << skip.output;
  for (const char* said : {"qarac-train: error: step 2, skipped: tensor '", "' holds a non-finite value (NaN or infinity)",
                           ": an optimizer update overflowed (check optimizer.lr, "})
    EXPECT_NE(skip.output.find(said), std::string::npos) << said << "\n" << skip.output;
  EXPECT_FALSE(fs::exists(skipping / "export"));
  const fs::path stopping = root() / "overflowed-stop";
  const CliResult stop = train(stopping, "--optimizer.lr 3e38 --optimizer.weight_decay 0 --optimizer.warmup 0 --train.steps 3 --checkpoint.every 1");
  EXPECT_EQ(stop.code, 2) << stop.output;
  EXPECT_NE(stop.output.find("qarac-train: error: checkpoint at step 1: tensor '"), std::string::npos) << stop.output;
  EXPECT_TRUE(fs::is_empty(stopping / "checkpoints")) << stop.output;
  // Without that checkpoint the next step's losses are not finite: the weights are named, not
  // skip's advice (skip would end the run at the same step).
  const CliResult next = train(root() / "overflowed-stop-next", "--optimizer.lr 3e38 --optimizer.weight_decay 0 --optimizer.warmup 0 --train.steps 3");
  EXPECT_EQ(next.code, 2) << next.output;
  EXPECT_NE(next.output.find("qarac-train: error: step 2, not applied: tensor '"), std::string::npos) << next.output;
  EXPECT_EQ(next.output.find("skip goes on"), std::string::npos) << next.output;
}

// A run whose every step is skipped trains nothing: the tenth skipped step in a row ends it
// (before: it went on to its end, exit 0), and metrics.jsonl has that step's record (before:
// its last line was step 9's).
TEST_F(RunDirCli, TenSkippedStepsInARowEndTheRun) {
  const fs::path run = root() / "all-skipped";
  // With the progress line rewritten in place, as on a terminal: the error must start a line.
  const CliResult r = train(run, "--task.ed.weight 3e38 --train.nonfinite skip --train.steps 12 --train.progress tty");
  EXPECT_EQ(r.code, 2) << r.output;
  EXPECT_NE(r.output.find("\nqarac-train: error: step 10: 10 steps in a row skipped (train.nonfinite skip): the run no "
                          "longer trains (check optimizer.lr, "),
            std::string::npos)
      << r.output;
  const std::vector<nlohmann::json> lines = metrics_lines(run);
  ASSERT_FALSE(lines.empty());
  EXPECT_EQ(lines.back()["step"].get<int64_t>(), 10) << lines.back().dump();
  EXPECT_EQ(lines.back().value("skipped_steps", int64_t{0}), 10) << lines.back().dump();
}
