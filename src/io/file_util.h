// Helpers internal to src/io: atomic file writes, and quoting of file contents in messages.
#pragma once

#include <cstddef>
#include <cstdio>
#include <string>

namespace qarac::io {

// Text from a file (names, values) with control characters escaped as \xNN, so that an error
// message quoting it stays on one line.
std::string printable(const std::string& text);

// A file written atomically: the bytes go to a temporary file beside the target, are flushed to
// disk and renamed over it, so a reader never sees a half-written file and a failed write leaves
// the old file (or nothing) in place.
class AtomicFile {
 public:
  // Opens "<path>.tmp.<pid>" for writing; InputError naming `path` when that fails.
  explicit AtomicFile(std::string path);
  // Removes the temporary file unless commit() succeeded (a write or a caller threw midway).
  ~AtomicFile();
  AtomicFile(const AtomicFile&) = delete;
  AtomicFile& operator=(const AtomicFile&) = delete;

  void write(const void* data, size_t bytes);
  // fflush + fsync + close, then rename over the target.
  void commit();

 private:
  [[noreturn]] void fail(const char* what, int err);

  std::string path_;
  std::string tmp_;
  std::FILE* file_ = nullptr;
  bool committed_ = false;
};

}  // namespace qarac::io
