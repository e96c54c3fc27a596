// LineFile (data/line_file.h): read(2) into a block buffer (through zlib's inflate for gzip
// input), lines cut with memchr.
#include "data/line_file.h"

#include <fcntl.h>
#include <unistd.h>
#include <zlib.h>

#include <cctype>
#include <cerrno>
#include <cstring>
#include <new>

#include "core/error.h"

namespace qarac::data {
namespace {

constexpr size_t kBlockBytes = size_t{1} << 16;

void (*g_interrupt_check)() = nullptr;

// The first bytes of compressed formats that are not read, and how to read them instead. bzip2's
// "BZh" could begin a text: its block size digit and the first block's magic must follow.
struct Compressed {
  const char* magic;
  size_t size;
  const char* name;
  const char* tool;
  bool matches(const char* bytes, size_t n) const {
    if (n < size || std::memcmp(bytes, magic, size) != 0) return false;
    if (std::strcmp(name, "bzip2") != 0) return true;
    return n >= 10 && bytes[3] >= '1' && bytes[3] <= '9' && std::memcmp(bytes + 4, "\x31\x41\x59\x26\x53\x59", 6) == 0;
  }
};
constexpr Compressed kUnread[] = {{"\xFD" "7zXZ\0", 6, "xz", "xzcat"},
                                  {"\x28\xB5\x2F\xFD", 4, "zstd", "zstdcat"},
                                  {"BZh", 3, "bzip2", "bzcat"}};

}  // namespace

struct LineFile::Gzip {
  z_stream z{};
  std::vector<char> in;
  bool member_open = true;  // inside a gzip member: its end not yet inflated

  Gzip() : in(kBlockBytes) {}
  ~Gzip() { inflateEnd(&z); }
};

LineFile::LineFile(const std::string& path) : name_(path), buf_(kBlockBytes) {
  fd_ = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd_ < 0) throw InputError(detail::concat(path, ": cannot open: ", std::strerror(errno)));
  owned_ = true;
}

LineFile::LineFile(int fd, std::string name) : name_(std::move(name)), fd_(fd), buf_(kBlockBytes) {}

LineFile::~LineFile() {
  if (owned_) ::close(fd_);
}

size_t LineFile::read_some(char* to, size_t size) {
  for (;;) {
    const ssize_t n = ::read(fd_, to, size);
    if (n >= 0) return static_cast<size_t>(n);
    if (errno != EINTR) fail(detail::concat("read error: ", std::strerror(errno)));
    if (g_interrupt_check != nullptr) g_interrupt_check();
  }
}

bool LineFile::fill() {
  if (gzip_) return inflate_some();
  pos_ = 0;
  end_ = read_some(buf_.data(), buf_.size());
  if (!started_ && end_ > 0) {
    started_ = true;
    check_format();
    if (gzip_) return inflate_some();
  }
  return end_ > 0;
}

void LineFile::check_format() {
  // Only the bytes of the first read: reading on for a whole magic would keep a co-process that
  // sends a short first line (`qarac-prep tokenize`) waiting for its answer.
  for (const Compressed& c : kUnread)
    if (c.matches(buf_.data(), end_))
      throw InputError(detail::concat(name_, ": is ", c.name, "-compressed, which is not read (gzip is): decompress it "
                                      "first, or give it as a pipe, e.g. <(", c.tool, " ", name_, ")"));
  if (end_ < 2 || std::memcmp(buf_.data(), "\x1F\x8B", 2) != 0) return;
  auto gzip = std::make_unique<Gzip>();
  if (inflateInit2(&gzip->z, 16 + MAX_WBITS) != Z_OK) fail("cannot start zlib's inflate (out of memory?)");
  // What was read is compressed input: it moves to the inflater, buf_ receives its output.
  std::swap(gzip->in, buf_);
  gzip->z.next_in = reinterpret_cast<Bytef*>(gzip->in.data());
  gzip->z.avail_in = static_cast<uInt>(end_);
  gzip_ = std::move(gzip);
  pos_ = end_ = 0;
}

bool LineFile::inflate_some() {
  z_stream& z = gzip_->z;
  pos_ = end_ = 0;
  while (end_ == 0) {
    if (z.avail_in == 0) {
      const size_t n = read_some(gzip_->in.data(), gzip_->in.size());
      if (n == 0) {
        if (gzip_->member_open) fail("the gzip stream ends before its end (a file cut short?)");
        return false;
      }
      z.next_in = reinterpret_cast<Bytef*>(gzip_->in.data());
      z.avail_in = static_cast<uInt>(n);
    }
    if (!gzip_->member_open) {  // another member follows, as `cat a.gz b.gz` makes
      inflateReset(&z);
      gzip_->member_open = true;
    }
    z.next_out = reinterpret_cast<Bytef*>(buf_.data());
    z.avail_out = static_cast<uInt>(buf_.size());
    const int rc = inflate(&z, Z_NO_FLUSH);
    end_ = buf_.size() - z.avail_out;
    if (rc == Z_STREAM_END) {
      gzip_->member_open = false;
    } else if (rc != Z_OK && rc != Z_BUF_ERROR) {
      fail(detail::concat("damaged gzip stream: ", z.msg != nullptr ? z.msg : zError(rc)));
    }
  }
  return true;
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

std::string without_gz_suffix(const std::string& path) {
  const size_t n = path.size();
  const bool gz = n > 3 && path[n - 3] == '.' && std::tolower(static_cast<unsigned char>(path[n - 2])) == 'g' &&
                  std::tolower(static_cast<unsigned char>(path[n - 1])) == 'z';
  return gz ? path.substr(0, path.size() - 3) : path;
}

void set_read_interrupt_check(void (*check)()) { g_interrupt_check = check; }

void LineFile::fail(const std::string& why) const {
  throw InputError(detail::concat(name_, ":", line_no_ + 1, ": ", why));
}

}  // namespace qarac::data
