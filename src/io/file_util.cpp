#include "io/file_util.h"

#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "core/error.h"

namespace qarac::io {

std::string printable(const std::string& text) {
  std::string out;
  for (unsigned char c : text) {
    if (c < 0x20 || c == 0x7f) {
      char buf[8];
      std::snprintf(buf, sizeof buf, "\\x%02x", c);
      out += buf;
    } else {
      out += static_cast<char>(c);
    }
  }
  return out;
}

AtomicFile::AtomicFile(std::string path)
    : path_(std::move(path)), tmp_(path_ + ".tmp." + std::to_string(::getpid())) {
  file_ = std::fopen(tmp_.c_str(), "wb");
  if (!file_) fail("cannot create the temporary file", errno);
}

AtomicFile::~AtomicFile() {
  if (file_) std::fclose(file_);
  if (!committed_) std::remove(tmp_.c_str());
}

void AtomicFile::write(const void* data, size_t bytes) {
  if (bytes > 0 && std::fwrite(data, 1, bytes, file_) != bytes) fail("write failed", errno);
}

void AtomicFile::commit() {
  if (std::fflush(file_) != 0) fail("write failed", errno);
  if (::fsync(::fileno(file_)) != 0) fail("fsync failed", errno);
  std::FILE* f = file_;
  file_ = nullptr;
  if (std::fclose(f) != 0) fail("close failed", errno);
  if (std::rename(tmp_.c_str(), path_.c_str()) != 0)
    fail("cannot rename the temporary file over it", errno);
  committed_ = true;
}

void AtomicFile::fail(const char* what, int err) {
  throw InputError(detail::concat(path_, ": ", what, " (", tmp_, ": ", std::strerror(err), ")"));
}

}  // namespace qarac::io
