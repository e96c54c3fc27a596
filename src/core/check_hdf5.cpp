#include "core/check_hdf5.h"

namespace qarac::detail {

std::string hdf5_error_string() {
  std::string innermost;
  auto visit = [](unsigned n, const H5E_error2_t* err, void* out) -> herr_t {
    if (n == 0 && err->desc) *static_cast<std::string*>(out) = err->desc;
    return 0;
  };
  H5Ewalk2(H5E_DEFAULT, H5E_WALK_UPWARD, visit, &innermost);
  H5Eclear2(H5E_DEFAULT);
  return innermost.empty() ? "no message on the HDF5 error stack" : innermost;
}

}  // namespace qarac::detail
