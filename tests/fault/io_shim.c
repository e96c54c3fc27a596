// A test-only LD_PRELOAD library that fails one chosen system call of a program's write paths:
// the Nth call of a kind, counted per process among the calls on paths that contain a substring.
//
//   QARAC_IO_FAIL=CALL:N:ERROR   CALL: open (opens for writing: O_WRONLY, O_RDWR, O_CREAT),
//                                write (write, pwrite), fsync (fsync, fdatasync), rename,
//                                ftruncate, close (of a descriptor open for writing), mkdir;
//                                ERROR: EIO, ENOSPC, EDQUOT, EINTR, EINVAL, or short (write only: the
//                                call writes half of what it was asked, at least a byte, and says
//                                so, as a full disk or a signal may make it)
//   QARAC_IO_FAIL_PATH=TEXT      only calls on paths that contain TEXT count, or end with it when
//                                it ends in '$' (a descriptor's path is read from /proc/self/fd;
//                                for rename either path)
//   QARAC_IO_FAIL_LOG=FILE       appends "injected CALL N ERROR PATH" when it fails the call, so
//                                that a driver knows whether the program reached the Nth call,
//                                and at a normal exit "counted CALL M": the calls that counted
//
// The libc symbols are interposed, so the program's own calls and those of the libraries it links
// (HDF5's sec2 driver writes with pwrite) are seen; calls glibc makes inside itself (stdio's
// writes) are not, which is why the project writes its files through descriptors. A failed close
// closes the descriptor all the same, as Linux does.
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <unistd.h>

enum call { C_OPEN, C_WRITE, C_FSYNC, C_RENAME, C_FTRUNCATE, C_CLOSE, C_MKDIR, C_NONE };
static const char* const call_names[] = {"open", "write", "fsync", "rename", "ftruncate", "close", "mkdir"};
#define SHORT_WRITE (-1)

static enum call target = C_NONE;
static long target_n = 0, seen = 0;
static int target_error = 0;  // an errno, or SHORT_WRITE
static const char* path_filter = NULL;
static const char* log_path = NULL;
static __thread int inside = 0;  // the shim's own calls (reading /proc, its log) never count

static void* real(const char* name) {
  void* f = dlsym(RTLD_NEXT, name);
  if (!f) {
    fprintf(stderr, "io_shim: libc has no %s\n", name);  // stdio: its writes are glibc's own, not ours
    abort();
  }
  return f;
}

__attribute__((constructor)) static void configure(void) {
  const char* spec = getenv("QARAC_IO_FAIL");
  path_filter = getenv("QARAC_IO_FAIL_PATH");
  log_path = getenv("QARAC_IO_FAIL_LOG");
  if (!spec || !*spec) return;
  char name[16], error[16];
  long n = 0;
  if (sscanf(spec, "%15[a-z]:%ld:%15[A-Za-z]", name, &n, error) != 3 || n < 1) goto bad;
  for (int c = 0; c < C_NONE; ++c)
    if (strcmp(name, call_names[c]) == 0) target = (enum call)c;
  if (target == C_NONE) goto bad;
  target_n = n;
  if (strcmp(error, "EIO") == 0) target_error = EIO;
  else if (strcmp(error, "ENOSPC") == 0) target_error = ENOSPC;
  else if (strcmp(error, "EDQUOT") == 0) target_error = EDQUOT;
  else if (strcmp(error, "EINTR") == 0) target_error = EINTR;
  else if (strcmp(error, "EINVAL") == 0) target_error = EINVAL;
  else if (strcmp(error, "short") == 0 && target == C_WRITE) target_error = SHORT_WRITE;
  else goto bad;
  return;
bad:
  fprintf(stderr, "io_shim: QARAC_IO_FAIL=%s: expected CALL:N:ERROR (see tests/fault/io_shim.c)\n", spec);
  exit(2);
}

// A filter ending in '$' matches the paths that end with what precedes it (a folder, not the
// files under it); any other matches the paths that contain it.
static int matches(const char* path) {
  if (!path_filter) return 1;
  if (!path) return 0;
  const size_t n = strlen(path_filter), length = strlen(path);
  if (n == 0 || path_filter[n - 1] != '$') return strstr(path, path_filter) != NULL;
  return length >= n - 1 && strncmp(path + length - (n - 1), path_filter, n - 1) == 0;
}

static int fd_matches(int fd, char* path, size_t size) {
  char link[64];
  snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
  const ssize_t n = readlink(link, path, size - 1);
  path[n > 0 ? n : 0] = '\0';
  return n > 0 && matches(path);
}

// Appends a line to QARAC_IO_FAIL_LOG through libc's own calls, which count for nothing.
static void log_line(const char* line, int n) {
  if (!log_path || n <= 0) return;
  int (*open_)(const char*, int, ...) = real("open");
  const int fd = open_(log_path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
  if (fd < 0) return;
  ssize_t (*write_)(int, const void*, size_t) = real("write");
  (void)!write_(fd, line, (size_t)n);
  int (*close_)(int) = real("close");
  close_(fd);
}

static void note(enum call c, const char* path) {
  char line[4400];
  const char* error = target_error == SHORT_WRITE ? "short" : strerrorname_np(target_error);
  const int n = snprintf(line, sizeof line, "injected %s %ld %s %s\n", call_names[c], target_n, error, path);
  log_line(line, n < (int)sizeof line ? n : 0);
}

// At a normal exit: how many calls of the kind counted, so that a driver can enumerate them.
__attribute__((destructor)) static void count(void) {
  if (target == C_NONE) return;
  char line[64];
  log_line(line, snprintf(line, sizeof line, "counted %s %ld\n", call_names[target], seen));
}

// The run directory's lock file: its heartbeat rewrites and flushes it from a thread of its own
// every 2 s (train/run_lock.h), at moments no enumeration can fix, and a failed write there only
// leaves the holder's record stale. Its calls never count.
static int run_lock(const char* path) {
  static const char name[] = "/.qarac.lock";
  const size_t length = path ? strlen(path) : 0, n = sizeof name - 1;
  return length >= n && strcmp(path + length - n, name) == 0;
}

// Whether this call of kind `c` on `path` is the one to fail (then it is noted).
static int fails(enum call c, const char* path) {
  if (c != target || inside || !matches(path) || run_lock(path)) return 0;
  if (__atomic_add_fetch(&seen, 1, __ATOMIC_SEQ_CST) != target_n) return 0;
  inside = 1;
  note(c, path);
  inside = 0;
  return 1;
}

static int fd_fails(enum call c, int fd) {
  if (c != target || inside) return 0;
  char path[4096];
  inside = 1;
  const int match = fd_matches(fd, path, sizeof path);
  inside = 0;
  return match && fails(c, path);
}

#define FAIL_WITH(value) \
  do {                   \
    errno = target_error; \
    return value;        \
  } while (0)

// ---- open --------------------------------------------------------------------------------------
static int writing(int flags) {
  return (flags & O_ACCMODE) != O_RDONLY || (flags & (O_CREAT | O_TRUNC));
}

static mode_t mode_of(int flags, va_list args) {
  return (flags & O_CREAT) || (flags & O_TMPFILE) == O_TMPFILE ? va_arg(args, mode_t) : 0;
}

#define OPEN_LIKE(name)                                                      \
  int name(const char* path, int flags, ...) {                               \
    va_list args;                                                            \
    va_start(args, flags);                                                   \
    const mode_t mode = mode_of(flags, args);                                \
    va_end(args);                                                            \
    if (writing(flags) && fails(C_OPEN, path)) FAIL_WITH(-1);                \
    static int (*f)(const char*, int, ...);                                  \
    if (!f) f = real(#name);                                                 \
    return f(path, flags, mode);                                             \
  }
OPEN_LIKE(open)
OPEN_LIKE(open64)

#define OPENAT_LIKE(name)                                                    \
  int name(int dir, const char* path, int flags, ...) {                      \
    va_list args;                                                            \
    va_start(args, flags);                                                   \
    const mode_t mode = mode_of(flags, args);                                \
    va_end(args);                                                            \
    if (writing(flags) && fails(C_OPEN, path)) FAIL_WITH(-1);                \
    static int (*f)(int, const char*, int, ...);                             \
    if (!f) f = real(#name);                                                 \
    return f(dir, path, flags, mode);                                        \
  }
OPENAT_LIKE(openat)
OPENAT_LIKE(openat64)

// _FORTIFY_SOURCE's checked opens (without O_CREAT: no mode).
#define OPEN2_LIKE(name)                                                     \
  int name(const char* path, int flags) {                                    \
    if (writing(flags) && fails(C_OPEN, path)) FAIL_WITH(-1);                \
    static int (*f)(const char*, int);                                       \
    if (!f) f = real(#name);                                                 \
    return f(path, flags);                                                   \
  }
OPEN2_LIKE(__open_2)
OPEN2_LIKE(__open64_2)

int creat(const char* path, mode_t mode) {
  return open(path, O_WRONLY | O_CREAT | O_TRUNC, mode);
}
int creat64(const char* path, mode_t mode) {
  return open(path, O_WRONLY | O_CREAT | O_TRUNC, mode);
}

// ---- write -------------------------------------------------------------------------------------
static size_t short_of(size_t count) {
  return count > 1 ? count / 2 : count;
}

ssize_t write(int fd, const void* buffer, size_t count) {
  static ssize_t (*f)(int, const void*, size_t);
  if (!f) f = real("write");
  if (count > 0 && fd_fails(C_WRITE, fd)) {
    if (target_error != SHORT_WRITE) FAIL_WITH(-1);
    count = short_of(count);
  }
  return f(fd, buffer, count);
}

#define PWRITE_LIKE(name)                                                    \
  ssize_t name(int fd, const void* buffer, size_t count, off_t offset) {     \
    static ssize_t (*f)(int, const void*, size_t, off_t);                    \
    if (!f) f = real(#name);                                                 \
    if (count > 0 && fd_fails(C_WRITE, fd)) {                                \
      if (target_error != SHORT_WRITE) FAIL_WITH(-1);                        \
      count = short_of(count);                                               \
    }                                                                        \
    return f(fd, buffer, count, offset);                                     \
  }
PWRITE_LIKE(pwrite)
PWRITE_LIKE(pwrite64)

// ---- fsync, ftruncate, close ---------------------------------------------------------------------
#define FD_CALL(name, kind)                                                  \
  int name(int fd) {                                                         \
    if (fd_fails(kind, fd)) FAIL_WITH(-1);                                   \
    static int (*f)(int);                                                    \
    if (!f) f = real(#name);                                                 \
    return f(fd);                                                            \
  }
FD_CALL(fsync, C_FSYNC)
FD_CALL(fdatasync, C_FSYNC)

#define FTRUNCATE_LIKE(name)                                                 \
  int name(int fd, off_t length) {                                           \
    if (fd_fails(C_FTRUNCATE, fd)) FAIL_WITH(-1);                            \
    static int (*f)(int, off_t);                                             \
    if (!f) f = real(#name);                                                 \
    return f(fd, length);                                                    \
  }
FTRUNCATE_LIKE(ftruncate)
FTRUNCATE_LIKE(ftruncate64)

int close(int fd) {
  static int (*f)(int);
  if (!f) f = real("close");
  int failing = 0;
  if (target == C_CLOSE && !inside) {
    const int flags = fcntl(fd, F_GETFL);
    failing = flags >= 0 && (flags & O_ACCMODE) != O_RDONLY && fd_fails(C_CLOSE, fd);
  }
  const int result = f(fd);
  if (failing) FAIL_WITH(-1);
  return result;
}

// ---- rename, mkdir -------------------------------------------------------------------------------
static int rename_fails(const char* from, const char* to) {
  if (target != C_RENAME || inside) return 0;
  return fails(C_RENAME, matches(from) ? from : to);
}

int rename(const char* from, const char* to) {
  if (rename_fails(from, to)) FAIL_WITH(-1);
  static int (*f)(const char*, const char*);
  if (!f) f = real("rename");
  return f(from, to);
}

int renameat(int from_dir, const char* from, int to_dir, const char* to) {
  if (rename_fails(from, to)) FAIL_WITH(-1);
  static int (*f)(int, const char*, int, const char*);
  if (!f) f = real("renameat");
  return f(from_dir, from, to_dir, to);
}

int renameat2(int from_dir, const char* from, int to_dir, const char* to, unsigned flags) {
  if (rename_fails(from, to)) FAIL_WITH(-1);
  static int (*f)(int, const char*, int, const char*, unsigned);
  if (!f) f = real("renameat2");
  return f(from_dir, from, to_dir, to, flags);
}

int mkdir(const char* path, mode_t mode) {
  if (fails(C_MKDIR, path)) FAIL_WITH(-1);
  static int (*f)(const char*, mode_t);
  if (!f) f = real("mkdir");
  return f(path, mode);
}

int mkdirat(int dir, const char* path, mode_t mode) {
  if (fails(C_MKDIR, path)) FAIL_WITH(-1);
  static int (*f)(int, const char*, mode_t);
  if (!f) f = real("mkdirat");
  return f(dir, path, mode);
}
