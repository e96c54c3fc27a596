// Text input one line at a time, from a file or a pipe (qarac-prep's readers, `qarac-prep
// tokenize` on stdin), with the end of the input told apart from every way reading can fail: a
// read error, a line longer than kMaxLineBytes, a line that does not fit in memory, a damaged or
// cut gzip stream. Each of those is a one-line InputError "<name>:<line>: <why>"; a reader never
// mistakes one for the end of the file and goes on with what it had. Input that starts as gzip
// does (.gz, `gzip -c`) is decompressed as it is read, its members one after another as gunzip
// does; other compressed formats (xz, zstd, bzip2) are refused naming a way to read them.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace qarac::data {

class LineFile {
 public:
  // The longest line taken. Every record of the formats read is one line or a few (a document of
  // a text corpus, an SNLI JSON object, a CSV row), and the longest real ones are well below a
  // megabyte (a whole Wikipedia article); RoBERTa then sees at most 512 tokens of a field. A
  // line is held several times on its way to the tokens (the line, its fields, their ids at up to
  // 4 bytes per byte), so 64 MiB bounds a reader's memory to a few hundred MB whatever the file,
  // and a file without newlines (a binary file given by mistake) fails at once, with its name.
  static constexpr size_t kMaxLineBytes = size_t{64} << 20;

  // Opens `path`; InputError naming it when it cannot.
  explicit LineFile(const std::string& path);
  // Reads descriptor `fd` (stdin: 0), which stays open; `name` names it in messages. Reads return
  // what the pipe holds, so a co-process gets its answer line by line.
  LineFile(int fd, std::string name);
  ~LineFile();
  LineFile(const LineFile&) = delete;
  LineFile& operator=(const LineFile&) = delete;

  // The next line without "\n" or "\r\n"; false at the end of the input. Lines are counted in
  // the decompressed text.
  bool next(std::string& line);
  int64_t line_no() const { return line_no_; }

 private:
  struct Gzip;  // zlib's inflate state and the compressed bytes not yet inflated

  bool fill();       // reads more input into buf_; false at its end
  size_t read_some(char* to, size_t size);  // read(2), retried on EINTR; 0 at the end
  bool inflate_some();  // fill() of gzip input
  void check_format();  // at the first bytes: gzip starts Gzip, another compression is refused
  [[noreturn]] void fail(const std::string& why) const;

  std::string name_;
  int fd_ = -1;
  bool owned_ = false;
  std::vector<char> buf_;
  size_t pos_ = 0, end_ = 0;  // the unread bytes of buf_
  int64_t line_no_ = 0;
  bool started_ = false;  // the first bytes were looked at
  std::unique_ptr<Gzip> gzip_;
};

// `path` without a final ".gz" (in any case): the name of what a gzip file holds, by whose
// extension a program tells the format of a file it reads through LineFile.
std::string without_gz_suffix(const std::string& path);

// Called when a signal interrupts a read that waits on a pipe (read(2) fails with EINTR); it may
// throw to end the reading, and reading goes on when it returns. A program whose signal handlers
// do not restart reads (qarac-prep) sets it, so that a signal ends a run waiting on a quiet pipe
// at once rather than at the next line. Reads of regular files never wait this way.
void set_read_interrupt_check(void (*check)());

}  // namespace qarac::data
