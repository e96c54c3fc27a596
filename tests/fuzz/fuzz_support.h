// What every fuzz target shares: the oracle (input may only ever be refused with a one-line
// qarac::InputError; any other exception is a bug and aborts, which libFuzzer reports as a
// crash with the input that caused it), a private scratch folder, and a reader of fuzz bytes.
#pragma once

#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>

#include "core/error.h"
#include "core/log.h"

namespace qarac::fuzz {

// Runs `body`; an InputError is the expected way to refuse input, anything else aborts.
template <class Body>
void expect_only_input_errors(Body&& body) {
  try {
    body();
  } catch (const InputError& e) {
    if (std::strchr(e.what(), '\n')) {
      std::fprintf(stderr, "fuzz: an InputError of more than one line: %s\n", e.what());
      std::abort();
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "fuzz: not an InputError: %s\n", e.what());
    std::abort();
  }
}

// A folder of this process, emptied at exit; targets write their files into it.
inline const std::filesystem::path& scratch() {
  static const std::filesystem::path dir = [] {
    log::set_level(log::Level::error);  // the readers' warnings about skipped records are noise here
    auto d = std::filesystem::temp_directory_path() / ("qarac_fuzz_" + std::to_string(::getpid()));
    std::filesystem::create_directories(d);
    std::atexit([] {
      std::error_code ec;
      std::filesystem::remove_all(std::filesystem::temp_directory_path() / ("qarac_fuzz_" + std::to_string(::getpid())),
                                  ec);
    });
    return d;
  }();
  return dir;
}

inline void write_file(const std::filesystem::path& path, const void* data, size_t size) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(static_cast<const char*>(data), static_cast<std::streamsize>(size));
}

// Consumes fuzz bytes front to back; past the end every read gives 0.
class Bytes {
 public:
  Bytes(const uint8_t* data, size_t size) : data_(data), size_(size) {}
  uint8_t u8() { return pos_ < size_ ? data_[pos_++] : 0; }
  uint32_t u32() {
    uint32_t v = 0;
    for (int i = 0; i < 4; ++i) v |= static_cast<uint32_t>(u8()) << (8 * i);
    return v;
  }
  uint64_t u64() { return u32() | (static_cast<uint64_t>(u32()) << 32); }
  // A small count in [0, max].
  size_t below(size_t max) { return max == 0 ? 0 : u8() % (max + 1); }
  bool empty() const { return pos_ >= size_; }
  // Whatever is left.
  std::string rest() {
    std::string s(reinterpret_cast<const char*>(data_ + std::min(pos_, size_)), size_ - std::min(pos_, size_));
    pos_ = size_;
    return s;
  }

 private:
  const uint8_t* data_;
  size_t size_, pos_ = 0;
};

}  // namespace qarac::fuzz
