#include "core/check_hdf5.h"

#include <cstring>

namespace qarac::detail {
namespace {

// HDF5's messages of failed system calls are long and span lines: "file write failed: time = <ctime
// with its newline>, filename = ..., errno = 28, error message = 'No space left on device', buf =
// ...". The first words and the system's own reason are what a reader needs, on one line.
std::string one_line(const std::string& desc) {
  const char* kReason = "error message = '";
  const size_t at = desc.find(kReason);
  if (at != std::string::npos) {
    const size_t begin = at + std::strlen(kReason), end = desc.find('\'', begin);
    const size_t colon = desc.find(':');
    if (end != std::string::npos && colon != std::string::npos && colon < at)
      return desc.substr(0, colon) + ": " + desc.substr(begin, end - begin);
  }
  std::string out;
  for (const char c : desc) {
    const bool space = c == '\n' || c == '\r' || c == '\t';
    if (!(space && (out.empty() || out.back() == ' '))) out += space ? ' ' : c;
  }
  return printable(out);
}

}  // namespace

std::string hdf5_error_string() {
  std::string innermost;
  auto visit = [](unsigned n, const H5E_error2_t* err, void* out) -> herr_t {
    if (n == 0 && err->desc) *static_cast<std::string*>(out) = err->desc;
    return 0;
  };
  H5Ewalk2(H5E_DEFAULT, H5E_WALK_UPWARD, visit, &innermost);
  H5Eclear2(H5E_DEFAULT);
  return innermost.empty() ? "no message on the HDF5 error stack" : one_line(innermost);
}

}  // namespace qarac::detail
