// Checksummed HDF5 files: HDF5 files whose every value is a dataset covered by one checksum, with
// a `complete` attribute written last, so that a file damaged after it was written (truncated by
// a full disk, a flipped byte, a partial copy) or whose write never finished is refused with a
// one-line error naming it, never half-read. Checkpoints are the first user (train/checkpoint.h);
// the caller decides what the datasets mean.
//
// Root attributes: format (string), version (i64), checksum (u64), complete (i64 = 1, written
// last). Datasets: f32, f64, i32, i64 little-endian tensors (scalars included) and fixed-length
// UTF-8 text scalars, contiguous and uncompressed (written once, read whole). The checksum is
// hash64 (core/hash.h) over the words, per dataset in name order: hash64(its path), type class,
// type size, rank, dims..., hash64(its bytes). Files use the HDF5 1.8+ format (superblock v2,
// object header v2), whose metadata carries its own checksums. Those do not make damage safe to
// open: a flipped bit in the metadata can crash HDF5. So a finished file is also sealed
// (core/hdf5_seal.h), and the seal is checked before HDF5 opens the file. Reading a sealed file
// reads it twice (the seal, then the datasets). Files that start with the HDF5 signature, written
// before seals, are read without one.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "core/hdf5.h"
#include "core/tensor.h"

namespace qarac {

// What a file says it is: its root attributes `format` and `version`, and the word messages use
// for it ("checkpoint": "not a checkpoint", "incomplete checkpoint").
struct H5FileKind {
  const char* format;
  int64_t version;
  const char* noun;
};

// Writes a new file. Every dataset is hashed as written; finish() seals the file.
class ChecksummedH5Writer {
 public:
  // Creates `path` (an AtomicFile's temp_path(): core/atomic_file.h), replacing any file there,
  // with the attributes format and version. InputError naming `path` when it cannot.
  ChecksummedH5Writer(std::string path, const H5FileKind& kind);
  // A write that threw midway: the file is closed unchecked (once), unsealed; its caller removes
  // it. Never throws.
  ~ChecksummedH5Writer();
  ChecksummedH5Writer(const ChecksummedH5Writer&) = delete;
  ChecksummedH5Writer& operator=(const ChecksummedH5Writer&) = delete;

  // `name` is a path ("optimizer/m/w"): the groups along it are created with the dataset. A
  // failed write (a full disk) is an InputError "<path>: writing <what>: <reason>". No object
  // records a time: the same contents give the same bytes.
  void write(const std::string& name, const Tensor& tensor);  // f32, f64, i32, i64, any device
  void write_i64(const std::string& name, int64_t value);      // scalars
  void write_u64(const std::string& name, uint64_t value);
  void write_text(const std::string& name, const std::string& text);
  template <class T>
  void write_vector(const std::string& name, const std::vector<T>& values) {
    write(name, Tensor::from_vector(values, {static_cast<int64_t>(values.size())}));
  }

  // The checksum, then `complete` as the last thing written; closes the file.
  void finish();

 private:
  void write_raw(const std::string& name, hid_t type, const Shape& dims, const void* data, size_t bytes);
  void create_groups_along(const std::string& name);
  void write_attr(const char* name, const std::string& value);
  void write_attr_i64(const char* name, int64_t value);
  void check(herr_t status, const std::string& what) const;
  H5Id id(hid_t handle, herr_t (*close)(hid_t), const std::string& what) const;

  std::string path_;
  H5Id file_;
  H5Id gcpl_, dcpl_;              // untimed
  std::set<std::string> groups_;  // created so far
  // Per dataset, by path (the checksum is over name order), the words the checksum covers.
  std::map<std::string, std::vector<uint64_t>> digests_;
};

// One dataset as read: numbers in a CPU tensor (the stored type's bytes), or text.
struct H5Dataset {
  bool is_text = false;
  DType dtype = DType::f32;
  Shape shape;
  Tensor values;  // undefined when the reader's `keep` declined it
  std::string text;
};
using H5Contents = std::map<std::string, H5Dataset>;  // by path

// Reads a file whole and checks it. Every failure, HDF5's included, is a one-line InputError
// "<path>: <why>": the file is input to the run.
class ChecksummedH5Reader {
 public:
  ChecksummedH5Reader(std::string path, const H5FileKind& kind) : path_(std::move(path)), kind_(kind) {}

  // Checks format, version and `complete`, reads every dataset (one at a time), checks the
  // checksum. keep(path, shape) says whose values to return: every dataset is read and hashed,
  // but verifying a multi-GB file need not hold it in memory.
  using Keep = std::function<bool(const std::string& name, const Shape& shape)>;
  H5Contents read(const Keep& keep);

  // For the caller's own checks of what it read: InputError "<path>: <what>".
  [[noreturn]] void fail(const std::string& what) const;

 private:
  void open();
  void check(herr_t status, const std::string& what) const;
  H5Id id(hid_t handle, herr_t (*close)(hid_t), const std::string& what) const;
  std::string string_attr(const char* name);
  int64_t int_attr(const char* name);
  H5Dataset read_dataset(const std::string& name, const Keep& keep, std::vector<uint64_t>& words);

  std::string path_;
  H5FileKind kind_;
  H5Id file_;
  uint64_t file_size_ = 0;
};

}  // namespace qarac
