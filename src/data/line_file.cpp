// LineFile (data/line_file.h): read(2) into a block buffer, lines cut with memchr.
#include "data/line_file.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <new>

#include "core/error.h"

namespace qarac::data {
namespace {

constexpr size_t kBlockBytes = size_t{1} << 16;

void (*g_interrupt_check)() = nullptr;

}  // namespace

LineFile::LineFile(const std::string& path) : name_(path), buf_(kBlockBytes) {
  fd_ = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd_ < 0) throw InputError(detail::concat(path, ": cannot open: ", std::strerror(errno)));
  owned_ = true;
}

LineFile::LineFile(int fd, std::string name) : name_(std::move(name)), fd_(fd), buf_(kBlockBytes) {}

LineFile::~LineFile() {
  if (owned_) ::close(fd_);
}

bool LineFile::fill() {
  for (;;) {
    const ssize_t n = ::read(fd_, buf_.data(), buf_.size());
    if (n > 0) {
      pos_ = 0;
      end_ = static_cast<size_t>(n);
      return true;
    }
    if (n == 0) return false;
    if (errno != EINTR) fail(detail::concat("read error: ", std::strerror(errno)));
    if (g_interrupt_check != nullptr) g_interrupt_check();
  }
}

bool LineFile::next(std::string& line) {
  line.clear();
  bool any = false;  // a byte or a newline was read: there is a line, if only an empty one
  for (;;) {
    if (pos_ == end_ && !fill()) break;
    any = true;
    const char* start = buf_.data() + pos_;
    const auto* newline = static_cast<const char*>(std::memchr(start, '\n', end_ - pos_));
    const size_t n = newline ? static_cast<size_t>(newline - start) : end_ - pos_;
    if (line.size() + n > kMaxLineBytes)
      fail(detail::concat("the line is longer than ", kMaxLineBytes >> 20,
                          " MiB, the longest taken (is this a text file?)"));
    try {
      line.append(start, n);
    } catch (const std::bad_alloc&) {
      fail(detail::concat("out of memory after ", line.size(), " bytes of the line"));
    }
    pos_ += n;
    if (newline) {
      ++pos_;
      break;
    }
  }
  if (!any) return false;
  ++line_no_;
  if (!line.empty() && line.back() == '\r') line.pop_back();
  return true;
}

void set_read_interrupt_check(void (*check)()) { g_interrupt_check = check; }

void LineFile::fail(const std::string& why) const {
  throw InputError(detail::concat(name_, ":", line_no_ + 1, ": ", why));
}

}  // namespace qarac::data
