// Files that appear under their final name only whole: every file the project writes for later
// runs to read (safetensors and config.json of an export, task streams, checkpoints) goes to a
// temporary file beside the target, is fsynced, renamed over the target, and the folder is
// fsynced so that the rename survives a crash too. A reader sees the old file or the new one,
// never half of one; a write that fails or dies leaves the old file (or nothing) in place, and
// removes its temporary file when it can (a killed process cannot: see kTempFileMarker).
//
// Two ways in: this object writes the bytes (write()), or a library that only writes to a path it
// opens itself (HDF5) is handed temp_path() and the file is committed once the library closed it.
#pragma once

#include <cstddef>
#include <string>

namespace qarac {

// The temporary file of "<path>" is "<path>.tmp.<pid>": the pid keeps two processes writing the
// same target apart, and a folder that holds such files (checkpoints) recognises the leftovers of
// killed writers by this marker.
constexpr const char* kTempFileMarker = ".tmp.";

class AtomicFile {
 public:
  enum Mode {
    stream,   // the constructor creates the temporary file; bytes go in through write()
    by_path,  // the caller's library creates, writes and closes temp_path() before sync()
  };

  enum Links {
    follow,   // a symbolic link at `path` is followed: its target is the file written (but not
              // another user's link in a sticky folder all may write, /tmp: InputError)
    replace,  // the link itself is replaced by the file: a run directory's own files, which a
              // link planted by another user of a shared folder must not lead out of it
  };

  // Errors are one-line InputErrors naming `path`, the temporary file and errno's text; a `path`
  // that exists and is no regular file (a directory, a device, a FIFO) is one (under `follow`,
  // path() names a link's target). The temporary file is always a new file of this process's
  // own, never an entry found under its name (a link there would lead the write elsewhere).
  explicit AtomicFile(const std::string& path, Mode mode = stream, Links links = follow);
  // Removes the temporary file unless commit() succeeded (a write or its caller threw midway).
  ~AtomicFile();
  AtomicFile(const AtomicFile&) = delete;
  AtomicFile& operator=(const AtomicFile&) = delete;

  const std::string& path() const { return path_; }
  const std::string& temp_path() const { return tmp_; }

  // Stream mode. Unbuffered: each call is written through (a short write goes on from where it
  // stopped, an interrupted one is retried), so that a failure is met and named here.
  void write(const void* data, size_t bytes);
  // Puts the temporary file's bytes on disk: fsync and close (stream), fsync (by_path); a failed
  // close is an error too (a network file system reports a lost write there).
  // commit() does it when it was not done; a writer of several files (qarac-prep) calls it on
  // every file before committing any, so that one failure publishes none.
  void sync();
  // Renames the temporary file over path(), then fsyncs the folder. A folder that cannot be
  // fsynced is an error too, though the file is in place whole: its survival of a power loss is
  // in doubt, and a later fsync would not say so.
  void commit();

 private:
  [[noreturn]] void fail(const std::string& what, int err) const;

  std::string path_, tmp_;
  int fd_ = -1;  // stream mode, until sync()
  bool synced_ = false, committed_ = false;
};

// fsync(fd), again while a signal interrupts it: 0 or the errno.
int fsync_retrying(int fd);

// Fsyncs a folder, so that its entries (files created in it, renames into it) are on disk.
// InputError naming `dir` and errno's text.
void sync_folder(const std::string& dir);

// The reading side: InputError naming `path` when it is a directory, a FIFO, a device or a socket,
// which no input file of the programs may be (opening a FIFO waits for a writer for good,
// /dev/zero never ends). A missing path passes: the open that follows says so.
void check_input_file(const std::string& path);

}  // namespace qarac
