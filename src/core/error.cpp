#include "core/error.h"

#include <unistd.h>

#include <climits>
#include <cstdio>

namespace qarac {

const std::string& hostname() {
  static const std::string name = [] {
    char buf[HOST_NAME_MAX + 1] = {};
    if (gethostname(buf, sizeof buf) != 0) return std::string("unknown-host");
    return std::string(buf);
  }();
  return name;
}

std::string joined(const std::vector<std::string>& items, std::string_view separator) {
  std::string text;
  for (size_t i = 0; i < items.size(); ++i) {
    if (i > 0) text += separator;
    text += items[i];
  }
  return text;
}

std::string printable(std::string_view text) {
  std::string out;
  for (const char ch : text) {
    const auto c = static_cast<unsigned char>(ch);
    if (c < 0x20 || c == 0x7f) {
      char buf[8];
      std::snprintf(buf, sizeof buf, "\\x%02x", c);
      out += buf;
    } else {
      out += ch;
    }
  }
  return out;
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
