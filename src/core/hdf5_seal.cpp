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
#include <ctime>
#include <mutex>
#include <set>
#include <tuple>
#include <utility>
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

// The seal of a file of `size` bytes whose bytes after the seal hash to `hash`: the text, then
// NULs to the end of the block.
void seal_block(uint64_t hash, uint64_t size, char (&block)[kHdf5SealBytes]) {
  std::memset(block, 0, sizeof block);
  std::snprintf(block, sizeof block, "%shash64 %016" PRIx64 "\nbytes %" PRIu64 "\n", kSealMagic, hash, size);
}

// The files this process found sealed and whole, by identity and last change: a run opens the
// same stream in several places (the plan, the loaders, the export), and each would hash it again.
// Only files last changed over a second before the check are kept: file systems stamp changes
// with a coarse clock, so a change within the same tick as the one checked would look unchanged.
// (Damage that no write made, a failing disk's, changes neither time: the cache lasts a process.)
constexpr int64_t kSettledNs = 1000000000;
struct Verified {
  dev_t device;
  ino_t inode;
  off_t size;
  int64_t modified_ns, changed_ns;  // mtime, and ctime, which no tool can set back (touch -r, cp -p)
  bool operator<(const Verified& o) const {
    return std::tie(device, inode, size, modified_ns, changed_ns) <
           std::tie(o.device, o.inode, o.size, o.modified_ns, o.changed_ns);
  }
};
std::mutex g_verified_mutex;
std::set<Verified> g_verified;

}  // namespace

void seal_hdf5_file(const std::string& path) {
  const auto fail = [&](const char* what) {
    throw InputError(detail::concat(path, ": sealing the file: ", what, ": ", std::strerror(errno)));
  };
  Descriptor file{::open(path.c_str(), O_RDWR | O_CLOEXEC)};
  if (file.fd < 0) fail("cannot open it");
  struct stat st {};
  if (::fstat(file.fd, &st) != 0) fail("cannot stat it");
  uint64_t hash = 0;
  const auto size = static_cast<uint64_t>(st.st_size);
  if (!hash_after_seal(file.fd, size, hash)) fail("cannot read it back");
  char block[kHdf5SealBytes];
  seal_block(hash, size, block);
  for (size_t done = 0; done < kHdf5SealBytes;) {
    const ssize_t n = ::pwrite(file.fd, block + done, kHdf5SealBytes - done, static_cast<off_t>(done));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) fail("cannot write its seal");
    done += static_cast<size_t>(n);
  }
  // A network file system reports a lost write at the close, and only there: a later fsync
  // through another descriptor would not.
  if (::close(std::exchange(file.fd, -1)) != 0) fail("closing it after its seal was written");
}

bool check_hdf5_seal(const std::string& path, const char* noun, const char* remedy) {
  const auto fail = [&](const std::string& what) { throw InputError(path + ": " + what); };
  // The remedy ends the parenthesis of a message on damage, or stands in one of its own.
  const std::string also = remedy ? detail::concat("; ", remedy) : std::string();
  // O_NONBLOCK: a FIFO in the file's place would otherwise block the open until a writer came.
  const Descriptor file{::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK)};
  if (file.fd < 0) fail(detail::concat("cannot open: ", std::strerror(errno)));
  struct stat st {};
  if (::fstat(file.fd, &st) != 0) fail(detail::concat("cannot stat: ", std::strerror(errno)));
  if (!S_ISREG(st.st_mode))
    fail(detail::concat("not a ", noun, " (", S_ISDIR(st.st_mode) ? "a directory" : "a device, FIFO or socket", ")"));
  const Verified identity{st.st_dev, st.st_ino, st.st_size,
                          int64_t{st.st_mtim.tv_sec} * 1000000000 + st.st_mtim.tv_nsec,
                          int64_t{st.st_ctim.tv_sec} * 1000000000 + st.st_ctim.tv_nsec};
  {
    const std::lock_guard<std::mutex> lock(g_verified_mutex);
    if (g_verified.count(identity) != 0) return true;
  }
  const auto size = static_cast<uint64_t>(st.st_size);
  char block[kHdf5SealBytes] = {};
  const ssize_t head = ::pread(file.fd, block, kHdf5SealBytes, 0);
  if (head < 0) fail(detail::concat("cannot read: ", std::strerror(errno)));
  const size_t signature = sizeof kHdf5Signature - 1, magic = sizeof kSealMagic - 1;
  if (static_cast<size_t>(head) >= signature && std::memcmp(block, kHdf5Signature, signature) == 0) return false;
  if (static_cast<size_t>(head) < kHdf5SealBytes) fail("not an HDF5 file");
  if (std::memcmp(block, kSealMagic, magic) != 0) {
    // A writer that died before sealing left the user block as HDF5 made it: zeros.
    if (std::all_of(block, block + kHdf5SealBytes, [](char c) { return c == 0; }))
      fail(detail::concat("incomplete ", noun, " (not sealed: its write did not finish", also, ")"));
    fail(detail::concat("not a ", noun, " (neither sealed nor an HDF5 file at its start: damaged, or another "
                        "kind of file)"));
  }
  // The whole block, padding included, must be what seal_block writes for the values it holds.
  uint64_t stored = 0, bytes = 0;
  char expected[kHdf5SealBytes] = {};
  if (std::sscanf(block + magic, "hash64 %16" SCNx64 "\nbytes %" SCNu64, &stored, &bytes) == 2)
    seal_block(stored, bytes, expected);
  if (std::memcmp(block, expected, kHdf5SealBytes) != 0) fail("its seal is damaged (the file is corrupt" + also + ")");
  if (bytes != size)
    fail(detail::concat("is ", size, " bytes, its seal says ", bytes, " (truncated, or changed since it was written",
                        also, ")"));
  uint64_t computed = 0;
  if (!hash_after_seal(file.fd, size, computed)) fail(detail::concat("cannot read: ", std::strerror(errno)));
  if (computed != stored)
    fail(detail::concat("whole-file checksum mismatch (stored ", std::hex, std::showbase, stored, ", computed ",
                        computed, "): the file is corrupt", remedy ? detail::concat(" (", remedy, ")") : ""));
  timespec now{};
  ::clock_gettime(CLOCK_REALTIME, &now);
  if (int64_t{now.tv_sec} * 1000000000 + now.tv_nsec - std::max(identity.modified_ns, identity.changed_ns) > kSettledNs) {
    const std::lock_guard<std::mutex> lock(g_verified_mutex);
    g_verified.insert(identity);
  }
  return true;
}

}  // namespace qarac
