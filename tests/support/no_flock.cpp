// Preloaded (LD_PRELOAD) into a program to give it a file system without locks, as Lustre mounted
// without -o flock or NFS without its lock daemon are: every flock(2) fails with ENOLCK.
#include <cerrno>

extern "C" int flock(int, int) {
  errno = ENOLCK;
  return -1;
}
