// Owned HDF5 identifiers and the helpers every HDF5 file of the project (task streams,
// checkpoints) shares: open-or-raise, quiet error stacks, UTF-8 string types. Checksummed files
// (checkpoints) build on them: core/hdf5_checksummed.h.
#pragma once

#include <hdf5.h>

#include <cstddef>
#include <string>

#include "core/check_hdf5.h"

namespace qarac {

// An owned HDF5 identifier, closed with the function that goes with its kind.
class H5Id {
 public:
  H5Id() = default;
  H5Id(hid_t id, herr_t (*closer)(hid_t)) : id_(id), close_(closer) {}
  ~H5Id() { reset(); }
  H5Id(H5Id&& o) noexcept : id_(o.id_), close_(o.close_) { o.id_ = -1; }
  H5Id& operator=(H5Id&& o) noexcept {
    if (this != &o) {
      reset();
      id_ = o.id_;
      close_ = o.close_;
      o.id_ = -1;
    }
    return *this;
  }
  H5Id(const H5Id&) = delete;
  H5Id& operator=(const H5Id&) = delete;

  hid_t get() const { return id_; }
  bool valid() const { return id_ >= 0; }
  // Closes the identifier; a failed close is not retried (HDF5 may already have freed part of
  // what the identifier held, and a second close of a file can crash), nor reported: writers,
  // which must know whether a close succeeded, call close().
  void reset() {
    if (id_ >= 0) close_(id_);
    id_ = -1;
  }
  // Closes now and returns HDF5's status, for writers to check: closing a dataset writes what HDF5
  // still buffers of it (a contiguous write of up to 64 KiB sits in its sieve buffer until then),
  // closing a file writes the rest. Like reset(), never retried.
  herr_t close() {
    const hid_t id = id_;
    id_ = -1;
    return id >= 0 ? close_(id) : 0;
  }

 private:
  hid_t id_ = -1;
  herr_t (*close_)(hid_t) = nullptr;
};

namespace detail {
H5Id make_h5_id(hid_t id, herr_t (*close)(hid_t), const char* stmt, const char* file, int line);
}  // namespace detail

// HDF5 prints its whole error stack to stderr by default; errors here travel up as exceptions
// carrying the innermost message instead (core/check_hdf5.h). Idempotent.
void silence_hdf5_stack_printing();

// A fixed-length, NUL-padded UTF-8 string type of `length` bytes (at least 1).
H5Id hdf5_string_type(size_t length);

// HDF5 failures that are the file's, not the program's (damage, a full disk, an I/O error): a
// one-line InputError "<context>: <HDF5's reason>", where the context names the file and what was
// read or written ("run/x.h5: cannot read 'fields/text/tokens'").
void check_hdf5_file(herr_t status, const std::string& context);
H5Id hdf5_file_id(hid_t id, herr_t (*close)(hid_t), const std::string& context);

// File access without HDF5's file locking, which fails on parallel file systems without flock
// (Lustre, some NFS): every file of the project has one writer, under a name private to it until
// the rename (core/atomic_file.h), and is never written again once published.
H5Id unlocked_file_access();

// A creation property list of `plist_class` (H5P_DATASET_CREATE, H5P_GROUP_CREATE or
// H5P_FILE_CREATE, whose root group it makes) that records no time: HDF5 stamps each object
// with the second it was written, so two runs of a program on the same input wrote files that
// differ in bytes. (The groups of HDF5's default file format hold no time; those of the 1.8
// format do.)
H5Id untimed_creation(hid_t plist_class);

// Opens a finished file read-only: its seal checked before HDF5 parses any of it
// (core/hdf5_seal.h, with `noun` and `remedy`), then opened without locking. A one-line
// InputError "<path>: <why>" for a file that is missing, damaged, not HDF5 or not openable. An
// unsealed file of an earlier build is opened with a warning, once per path.
H5Id open_sealed_hdf5(const std::string& path, const char* noun, const char* remedy = nullptr);

}  // namespace qarac

// The identifier an HDF5 call creates or opens, owned; raises like QARAC_CHECK_HDF5 when the call
// failed: QARAC_H5_ID(H5Fopen(...), H5Fclose).
#define QARAC_H5_ID(stmt, close) ::qarac::detail::make_h5_id((stmt), (close), #stmt, __FILE__, __LINE__)
