// QARAC_CHECK_HDF5: HDF5 calls signal failure with a negative return value; raise a qarac::Error
// naming the call and the innermost message of HDF5's error stack.
#pragma once

#include <hdf5.h>

#include "core/error.h"

namespace qarac::detail {
// The innermost (most specific) description on the default HDF5 error stack, on one line (a failed
// system call as "<what failed>: <the system's reason>"), then clears the stack.
std::string hdf5_error_string();
}  // namespace qarac::detail

#define QARAC_CHECK_HDF5(stmt)                                                                  \
  do {                                                                                          \
    if ((stmt) < 0)                                                                             \
      ::qarac::detail::raise("HDF5", #stmt, ::qarac::detail::hdf5_error_string(), __FILE__,     \
                             __LINE__);                                                         \
  } while (0)
