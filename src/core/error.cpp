#include "core/error.h"

#include <unistd.h>

#include <climits>

namespace qarac {

const std::string& hostname() {
  static const std::string name = [] {
    char buf[HOST_NAME_MAX + 1] = {};
    if (gethostname(buf, sizeof buf) != 0) return std::string("unknown-host");
    return std::string(buf);
  }();
  return name;
}

namespace detail {
void raise(const char* library, const char* stmt, const std::string& reason, const char* file,
           int line) {
  std::ostringstream os;
  os << library << " error in `" << stmt << "`";
  if (!reason.empty()) os << ": " << reason;
  os << " (" << file << ":" << line << " on " << hostname() << ")";
  throw Error(os.str());
}
}  // namespace detail

}  // namespace qarac
