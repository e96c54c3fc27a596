// HDF5 handles and helpers (core/hdf5.h).
#include "core/hdf5.h"

#include <algorithm>
#include <mutex>
#include <set>

#include "core/hdf5_seal.h"
#include "core/log.h"

namespace qarac {
namespace {

// HDF5 closes every identifier still open at exit (an atexit handler). A file whose close failed
// (its flush hit a full disk) stays registered, and closing it again crashes inside HDF5 (1.10:
// H5F__close_cb): a program that reported the full disk would then die of SIGSEGV. Every file
// of the project is closed explicitly, or abandoned after such an error on purpose, so the
// handler has nothing useful left to do; it is turned off before the library initialises (this
// runs before main, and H5dont_atexit must come before any other HDF5 call to count).
const bool kNoHdf5ExitHandler = [] {
  H5dont_atexit();
  return true;
}();

}  // namespace

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

void check_hdf5_file(herr_t status, const std::string& context) {
  if (status < 0) throw InputError(context + ": " + detail::hdf5_error_string());
}

H5Id hdf5_file_id(hid_t id, herr_t (*close)(hid_t), const std::string& context) {
  check_hdf5_file(id < 0 ? -1 : 0, context);
  return H5Id(id, close);
}

H5Id unlocked_file_access() {
  H5Id fapl = QARAC_H5_ID(H5Pcreate(H5P_FILE_ACCESS), H5Pclose);
#if (H5_VERSION_GE(1, 10, 7) && !H5_VERSION_GE(1, 12, 0)) || H5_VERSION_GE(1, 12, 1)
  QARAC_CHECK_HDF5(H5Pset_file_locking(fapl.get(), false, true));
#endif
  return fapl;
}

H5Id untimed_creation(hid_t plist_class) {
  H5Id plist = QARAC_H5_ID(H5Pcreate(plist_class), H5Pclose);
  QARAC_CHECK_HDF5(H5Pset_obj_track_times(plist.get(), false));
  return plist;
}

H5Id open_sealed_hdf5(const std::string& path, const char* noun, const char* remedy) {
  silence_hdf5_stack_printing();
  if (!check_hdf5_seal(path, noun, remedy)) {
    // Read as before, but HDF5 parses it unchecked: damage to its metadata can crash the process
    // (the seal's reason to be) rather than be named. Said once per file and process.
    static std::mutex mutex;
    static std::set<std::string> said;
    const std::lock_guard<std::mutex> lock(mutex);
    if (said.insert(path).second)
      log::warn(path, ": a ", noun, " of an earlier build, without a seal: read as before, but damage to it can crash ",
                "the program instead of being reported", remedy ? detail::concat(" (", remedy, " to seal it)") : "");
  }
  if (H5Fis_hdf5(path.c_str()) <= 0) {
    H5Eclear2(H5E_DEFAULT);
    throw InputError(path + ": not an HDF5 file");
  }
  const H5Id fapl = unlocked_file_access();
  return hdf5_file_id(H5Fopen(path.c_str(), H5F_ACC_RDONLY, fapl.get()), H5Fclose, path + ": cannot open");
}

}  // namespace qarac
