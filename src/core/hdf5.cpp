#include "core/hdf5.h"

#include <algorithm>

namespace qarac {

namespace detail {
H5Id make_h5_id(hid_t id, herr_t (*close)(hid_t), const char* stmt, const char* file, int line) {
  if (id < 0) raise("HDF5", stmt, hdf5_error_string(), file, line);
  return H5Id(id, close);
}
}  // namespace detail

void silence_hdf5_stack_printing() {
  static const bool done = [] {
    H5Eset_auto2(H5E_DEFAULT, nullptr, nullptr);
    return true;
  }();
  (void)done;
}

H5Id hdf5_string_type(size_t length) {
  H5Id type = QARAC_H5_ID(H5Tcopy(H5T_C_S1), H5Tclose);
  QARAC_CHECK_HDF5(H5Tset_size(type.get(), std::max<size_t>(length, 1)));
  QARAC_CHECK_HDF5(H5Tset_strpad(type.get(), H5T_STR_NULLPAD));
  QARAC_CHECK_HDF5(H5Tset_cset(type.get(), H5T_CSET_UTF8));
  return type;
}

}  // namespace qarac
