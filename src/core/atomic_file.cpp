// AtomicFile, sync_folder and check_input_file (core/atomic_file.h).
#include "core/atomic_file.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>

#include "core/error.h"
#include "core/log.h"

namespace qarac {
namespace {

// Fsyncs a file or a folder by path; 0 or the errno. One descriptor's fsync flushes every dirty
// page of the file, whoever wrote them (HDF5 through its own descriptor, since closed).
int fsync_path(const std::string& path, int flags) {
  const int fd = ::open(path.c_str(), flags);
  if (fd < 0) return errno;
  const int err = fsync_retrying(fd);
  ::close(fd);  // read-only: nothing of the file's left to write
  return err;
}

// Fsyncs a folder by path; 0 or the errno. File systems that cannot fsync a folder (EINVAL from
// some FUSE mounts; EBADF or ENOTSUP elsewhere) give 0: there is nothing to wait for, and failing
// every write there would make them unusable (PostgreSQL skips the same errors).
int fsync_folder(const std::string& dir) {
  const int err = fsync_path(dir, O_RDONLY | O_DIRECTORY);
  return err == EINVAL || err == EBADF || err == ENOTSUP ? 0 : err;
}

std::string folder_of(const std::string& path) {
  const std::string dir = std::filesystem::path(path).parent_path().string();
  return dir.empty() ? "." : dir;
}

// The file a path names once its symbolic links are followed (a link is replaced by a rename, its
// target never written): as far as they lead, a dangling one to where its target would be.
// Followed here, by reading them, the links escape the kernel's protected_symlinks, so its rule is
// applied here: a link in a sticky folder that others may write (/tmp), owned by neither this user
// nor the folder's owner, is another user's trap (to a file of this user's), and is refused.
std::string followed(std::string path) {
  namespace fs = std::filesystem;
  std::error_code ec;
  for (int hops = 0; hops < 40 && fs::is_symlink(path, ec); ++hops) {
    struct stat link {}, folder {};
    if (::lstat(path.c_str(), &link) == 0 && ::stat(folder_of(path).c_str(), &folder) == 0 &&
        (folder.st_mode & S_ISVTX) && (folder.st_mode & S_IWOTH) && link.st_uid != ::geteuid() &&
        link.st_uid != folder.st_uid)
      throw InputError(path + ": a link of another user's in a folder that every user may write (sticky, as /tmp): "
                       "not followed, as the kernel would not (protected_symlinks); name a file of your own");
    const fs::path target = fs::read_symlink(path, ec);
    if (ec) break;
    path = (target.is_absolute() ? target : fs::path(path).parent_path() / target).string();
  }
  return path;
}

}  // namespace

// errno is read before a message is built: building it allocates, which may change errno.
AtomicFile::AtomicFile(const std::string& path, Mode mode, Links links)
    : path_(links == follow ? followed(path) : path), tmp_(path_ + kTempFileMarker + std::to_string(::getpid())) {
  // The rename would put a file in place of a device or a FIFO (/dev/null, a pipe to a reader).
  // Named as given too: a link's target alone may not say which of the user's paths led there.
  struct stat st;
  if ((links == follow ? ::stat(path_.c_str(), &st) : ::lstat(path_.c_str(), &st)) == 0 && !S_ISREG(st.st_mode) &&
      !S_ISLNK(st.st_mode))
    throw InputError((path == path_ ? path_ : path + " (a link to " + path_ + ")") + ": not a regular file (" +
                     (S_ISDIR(st.st_mode) ? "a directory" : "a device, FIFO or socket") +
                     "), which writing it would replace: name a file");
  // Created here, exclusively and not through a link, in both modes: a name that predictable in a
  // folder other users may write (a group's run directories) could hold their link to a file of
  // this user's, which an open that follows it would truncate and fill. An entry found under the
  // name (a killed writer's file of the same pid, or such a link) is removed, not written through.
  const auto create = [&] { return ::open(tmp_.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0666); };
  int fd = create();
  if (fd < 0 && errno == EEXIST && (::unlink(tmp_.c_str()) == 0 || errno == ENOENT)) fd = create();
  if (fd < 0) {
    const int err = errno;
    fail("cannot create the temporary file " + tmp_, err);
  }
  if (mode == by_path) {
    // The library opens it again by its path, truncating this empty file. A constructor that
    // throws has no destructor run: the file is removed here.
    if (::close(fd) != 0) {
      const int err = errno;
      ::unlink(tmp_.c_str());
      fail("closing the temporary file " + tmp_ + " failed", err);
    }
    return;
  }
  fd_ = fd;
}

AtomicFile::~AtomicFile() {
  if (fd_ >= 0) ::close(fd_);
  if (!committed_) std::remove(tmp_.c_str());
}

// Through the descriptor, not stdio: glibc's stdio writes with calls of its own that an
// interposed write() (tests/fault/io_shim.c) cannot fail, and gives up on an interrupted one.
void AtomicFile::write(const void* data, size_t bytes) {
  QARAC_CHECK(fd_ >= 0, "AtomicFile::write to ", path_, ": not a stream, or already synced");
  for (const char* at = static_cast<const char*>(data); bytes > 0;) {
    const ssize_t n = ::write(fd_, at, bytes);
    if (n > 0) {
      at += n;
      bytes -= static_cast<size_t>(n);
      continue;
    }
    const int err = n < 0 ? errno : EIO;  // a write of nothing (no regular file gives one) would loop
    if (err != EINTR) fail("write to " + tmp_ + " failed", err);
  }
}

void AtomicFile::sync() {
  if (synced_) return;
  if (fd_ >= 0) {
    const int fd = fd_;
    fd_ = -1;  // closed below, whatever fails
    int err = fsync_retrying(fd);
    const char* failed = err != 0 ? "fsync of " : nullptr;
    // Linux closes the descriptor even when close() fails (EINTR included): never closed again.
    if (::close(fd) != 0 && !failed) {
      err = errno;
      failed = "closing ";
    }
    if (failed) fail(failed + tmp_ + " failed", err);
  } else if (const int err = fsync_path(tmp_, O_RDONLY)) {
    fail("fsync of " + tmp_ + " failed", err);
  }
  synced_ = true;
}

void AtomicFile::commit() {
  QARAC_CHECK(!committed_, "AtomicFile::commit of ", path_, " twice");
  // The bytes must be on disk before the rename makes them visible under the final name.
  sync();
  if (std::rename(tmp_.c_str(), path_.c_str()) != 0) {
    const int err = errno;
    fail("cannot rename the temporary file " + tmp_ + " over it", err);
  }
  committed_ = true;
  // An error, not a warning: a later fsync of the folder would succeed without writing what this
  // one lost (Linux reports a write-back error once), so the callers that build on the file (a
  // checkpoint that then deletes its predecessor, an export that replaces the previous one) must
  // learn of it now.
  const std::string dir = folder_of(path_);
  if (const int err = fsync_folder(dir))
    fail(detail::concat("written, but the fsync of its folder ", dir, " failed, so it may not survive a power loss"),
         err);
}

void AtomicFile::fail(const std::string& what, int err) const {
  throw InputError(detail::concat(path_, ": ", what, ": ", std::strerror(err)));
}

void check_input_file(const std::string& path) {
  std::error_code ec;
  const std::filesystem::file_status status = std::filesystem::status(path, ec);
  if (!std::filesystem::exists(status)) return;
  if (std::filesystem::is_directory(status)) throw InputError(path + ": is a directory, not a file");
  if (!std::filesystem::is_regular_file(status))
    throw InputError(path + ": not a regular file (a pipe, a device or a socket): give the file itself");
}

int fsync_retrying(int fd) {
  int err = 0;
  do err = ::fsync(fd) == 0 ? 0 : errno;
  while (err == EINTR);
  return err;
}

void sync_folder(const std::string& dir) {
  if (const int err = fsync_folder(dir))
    throw InputError(detail::concat(dir, ": fsync of the folder failed: ", std::strerror(err)));
}

}  // namespace qarac
