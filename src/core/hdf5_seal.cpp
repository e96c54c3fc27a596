// The seal of core/hdf5_seal.h: a hash of the file's bytes in its HDF5 user block.
#include "core/hdf5_seal.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cinttypes>
#include <cstdio>
#include <cstring>
#include <vector>

#include "core/error.h"
#include "core/hash.h"

namespace qarac {
namespace {

constexpr char kSealMagic[] = "QARAC-MT sealed HDF5\n";
constexpr char kHdf5Signature[] = "\211HDF\r\n\032\n";

// Closes a descriptor when it goes out of scope.
struct Descriptor {
  int fd;
  ~Descriptor() {
    if (fd >= 0) ::close(fd);
  }
};

// hash64 of the bytes of `fd` from kHdf5SealBytes to `size`; false (errno set) when a read fails.
bool hash_after_seal(int fd, uint64_t size, uint64_t& out) {
  std::vector<char> buffer(size_t{4} << 20);
  Hash64 hash;
  for (uint64_t at = kHdf5SealBytes; at < size;) {
    const ssize_t n = ::pread(fd, buffer.data(), static_cast<size_t>(std::min<uint64_t>(buffer.size(), size - at)),
                              static_cast<off_t>(at));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      if (n == 0) errno = EIO;  // shorter than fstat said: changed under us
      return false;
    }
    hash.bytes(buffer.data(), static_cast<size_t>(n));
    at += static_cast<uint64_t>(n);
  }
  out = hash.value();
  return true;
}

}  // namespace

void seal_hdf5_file(const std::string& path) {
  const auto fail = [&](const char* what) {
    throw InputError(detail::concat(path, ": sealing the file: ", what, ": ", std::strerror(errno)));
  };
  const Descriptor file{::open(path.c_str(), O_RDWR | O_CLOEXEC)};
  if (file.fd < 0) fail("cannot open it");
  struct stat st {};
  if (::fstat(file.fd, &st) != 0) fail("cannot stat it");
  uint64_t hash = 0;
  const auto size = static_cast<uint64_t>(st.st_size);
  if (!hash_after_seal(file.fd, size, hash)) fail("cannot read it back");
  char block[kHdf5SealBytes] = {};
  std::snprintf(block, sizeof block, "%shash64 %016" PRIx64 "\nbytes %" PRIu64 "\n", kSealMagic, hash, size);
  for (size_t done = 0; done < kHdf5SealBytes;) {
    const ssize_t n = ::pwrite(file.fd, block + done, kHdf5SealBytes - done, static_cast<off_t>(done));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) fail("cannot write its seal");
    done += static_cast<size_t>(n);
  }
}

bool check_hdf5_seal(const std::string& path, const char* noun) {
  const auto fail = [&](const std::string& what) { throw InputError(path + ": " + what); };
  // O_NONBLOCK: a FIFO in the file's place would otherwise block the open until a writer came.
  const Descriptor file{::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK)};
  if (file.fd < 0) fail(detail::concat("cannot open: ", std::strerror(errno)));
  struct stat st {};
  if (::fstat(file.fd, &st) != 0) fail(detail::concat("cannot stat: ", std::strerror(errno)));
  if (!S_ISREG(st.st_mode))
    fail(detail::concat("not a ", noun, " (", S_ISDIR(st.st_mode) ? "a directory" : "a device, FIFO or socket", ")"));
  const auto size = static_cast<uint64_t>(st.st_size);
  char block[kHdf5SealBytes + 1] = {};
  const ssize_t head = ::pread(file.fd, block, kHdf5SealBytes, 0);
  if (head < 0) fail(detail::concat("cannot read: ", std::strerror(errno)));
  const size_t signature = sizeof kHdf5Signature - 1, magic = sizeof kSealMagic - 1;
  if (static_cast<size_t>(head) >= signature && std::memcmp(block, kHdf5Signature, signature) == 0) return false;
  if (static_cast<size_t>(head) < kHdf5SealBytes) fail("not an HDF5 file");
  if (std::memcmp(block, kSealMagic, magic) != 0) {
    // A writer that died before sealing left the user block as HDF5 made it: zeros.
    if (std::all_of(block, block + kHdf5SealBytes, [](char c) { return c == 0; }))
      fail(detail::concat("incomplete ", noun, " (not sealed: its write did not finish)"));
    fail(detail::concat("not a ", noun, " (neither sealed nor an HDF5 file at its start: damaged, or another "
                        "kind of file)"));
  }
  uint64_t stored = 0, bytes = 0;
  if (std::sscanf(block + magic, "hash64 %16" SCNx64 "\nbytes %" SCNu64, &stored, &bytes) != 2)
    fail("its seal is damaged (the file is corrupt)");
  if (bytes != size)
    fail(detail::concat("is ", size, " bytes, its seal says ", bytes, " (truncated, or changed since it was written)"));
  uint64_t computed = 0;
  if (!hash_after_seal(file.fd, size, computed)) fail(detail::concat("cannot read: ", std::strerror(errno)));
  if (computed != stored)
    fail(detail::concat("whole-file checksum mismatch (stored ", std::hex, std::showbase, stored, ", computed ",
                        computed, "): the file is corrupt"));
  return true;
}

}  // namespace qarac
