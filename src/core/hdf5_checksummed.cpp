// Checksummed HDF5 files (C API): the writer and the reader of core/hdf5_checksummed.h.
#include "core/hdf5_checksummed.h"

#include <algorithm>
#include <filesystem>

#include "core/hash.h"
#include "core/hdf5_seal.h"

namespace qarac {
namespace {

// ---- Checksum --------------------------------------------------------------------------------
// What the checksum covers of one dataset: hash64 of its path, type class and size, rank, dims,
// hash64 of its bytes.
std::vector<uint64_t> digest(const std::string& name, H5T_class_t type_class, size_t type_size,
                             const Shape& dims, uint64_t data) {
  std::vector<uint64_t> words = {hash64(name.data(), name.size()), static_cast<uint64_t>(type_class),
                                 type_size, dims.size()};
  for (const int64_t n : dims) words.push_back(static_cast<uint64_t>(n));
  words.push_back(data);
  return words;
}

uint64_t checksum(const std::map<std::string, std::vector<uint64_t>>& digests) {
  std::vector<uint64_t> words;
  for (const auto& [name, d] : digests) words.insert(words.end(), d.begin(), d.end());
  return hash64(words.data(), words.size() * sizeof(uint64_t));
}

// ---- HDF5 plumbing ---------------------------------------------------------------------------
// File access for writing: the 1.8 format for its metadata checksums, without locking.
H5Id file_access() {
  H5Id fapl = unlocked_file_access();
  QARAC_CHECK_HDF5(H5Pset_libver_bounds(fapl.get(), H5F_LIBVER_V18, H5F_LIBVER_LATEST));
  return fapl;
}

// The HDF5 type of each dtype these files store, in the file (little-endian) and in memory.
hid_t file_type(DType t) {
  switch (t) {
    case DType::f32: return H5T_IEEE_F32LE;
    case DType::f64: return H5T_IEEE_F64LE;
    case DType::i32: return H5T_STD_I32LE;
    case DType::i64: return H5T_STD_I64LE;
    case DType::bf16: break;
  }
  QARAC_CHECK(false, "checksummed HDF5 files store f32, f64, i32 and i64 tensors, not ", dtype_name(t));
  return -1;
}

H5Id dataspace(const Shape& dims) {
  if (dims.empty()) return QARAC_H5_ID(H5Screate(H5S_SCALAR), H5Sclose);
  const std::vector<hsize_t> h(dims.begin(), dims.end());
  return QARAC_H5_ID(H5Screate_simple(static_cast<int>(h.size()), h.data(), nullptr), H5Sclose);
}

}  // namespace

// ---- Writing ---------------------------------------------------------------------------------
// Every HDF5 failure while writing is the file's (a full disk, a quota, an I/O error): a one-line
// InputError naming it, as the reader's are. HDF5 buffers writes (a dataset's until it is closed,
// metadata until the file is), so every close is checked too.
ChecksummedH5Writer::ChecksummedH5Writer(std::string path, const H5FileKind& kind) : path_(std::move(path)) {
  silence_hdf5_stack_printing();
  H5Id fapl = file_access();
  H5Id fcpl = untimed_creation(H5P_FILE_CREATE);
  QARAC_CHECK_HDF5(H5Pset_userblock(fcpl.get(), kHdf5SealBytes));  // the seal's room
  file_ = hdf5_file_id(H5Fcreate(path_.c_str(), H5F_ACC_TRUNC, fcpl.get(), fapl.get()), H5Fclose,
                       path_ + ": cannot create");
  gcpl_ = untimed_creation(H5P_GROUP_CREATE);
  dcpl_ = untimed_creation(H5P_DATASET_CREATE);
  write_attr("format", kind.format);
  write_attr_i64("version", kind.version);
}

// Objects before the file; the file is closed at most once (finish() closes it, whatever that
// gives, and gives it up).
ChecksummedH5Writer::~ChecksummedH5Writer() {
  gcpl_.reset();
  dcpl_.reset();
  file_.reset();
}

void ChecksummedH5Writer::write(const std::string& name, const Tensor& tensor) {
  const Tensor host = tensor.to(Device::cpu());
  const Tensor data = host.is_contiguous() ? host : host.clone();
  write_raw(name, file_type(data.dtype()), data.shape(), data.raw(), data.nbytes());
}

void ChecksummedH5Writer::write_i64(const std::string& name, int64_t value) {
  write_raw(name, H5T_STD_I64LE, {}, &value, sizeof value);
}

void ChecksummedH5Writer::write_u64(const std::string& name, uint64_t value) {
  write_raw(name, H5T_STD_U64LE, {}, &value, sizeof value);
}

// A fixed-length string of the text's bytes (at least one: HDF5 has no empty string type).
void ChecksummedH5Writer::write_text(const std::string& name, const std::string& text) {
  H5Id type = hdf5_string_type(text.size());
  std::string padded = text;
  padded.resize(std::max<size_t>(text.size(), 1), '\0');
  write_raw(name, type.get(), {}, padded.data(), padded.size());
}

void ChecksummedH5Writer::finish() {
  QARAC_CHECK(file_.valid(), path_, ": finish() on a closed file");
  const uint64_t sum = checksum(digests_);
  {
    H5Id space = dataspace({});
    H5Id attr = id(H5Acreate2(file_.get(), "checksum", H5T_STD_U64LE, space.get(), H5P_DEFAULT, H5P_DEFAULT),
                   H5Aclose, "attribute 'checksum'");
    check(H5Awrite(attr.get(), H5T_NATIVE_UINT64, &sum), "attribute 'checksum'");
    check(attr.close(), "attribute 'checksum'");
  }
  write_attr_i64("complete", 1);
  gcpl_.reset();
  dcpl_.reset();
  check(file_.close(), "the rest (closing the file)");
  seal_hdf5_file(path_);
}

void ChecksummedH5Writer::write_raw(const std::string& name, hid_t type, const Shape& dims, const void* data,
                                    size_t bytes) {
  const std::string what = "dataset '" + name + "'";
  create_groups_along(name);
  H5Id space = dataspace(dims);
  H5Id dset = id(H5Dcreate2(file_.get(), name.c_str(), type, space.get(), H5P_DEFAULT, dcpl_.get(), H5P_DEFAULT),
                 H5Dclose, what);
  if (bytes > 0) check(H5Dwrite(dset.get(), type, H5S_ALL, H5S_ALL, H5P_DEFAULT, data), what);
  check(dset.close(), what);
  digests_[name] = digest(name, H5Tget_class(type), H5Tget_size(type), dims, hash64(data, bytes));
}

// By hand, not with H5Pset_create_intermediate_group: the groups HDF5 creates on the way record
// the time whatever the property lists say.
void ChecksummedH5Writer::create_groups_along(const std::string& name) {
  for (size_t slash = name.find('/'); slash != std::string::npos; slash = name.find('/', slash + 1)) {
    const std::string group = name.substr(0, slash);
    if (!groups_.insert(group).second) continue;
    H5Id g = id(H5Gcreate2(file_.get(), group.c_str(), H5P_DEFAULT, gcpl_.get(), H5P_DEFAULT), H5Gclose,
                "group '" + group + "'");
    check(g.close(), "group '" + group + "'");
  }
}

void ChecksummedH5Writer::write_attr(const char* name, const std::string& value) {
  const std::string what = detail::concat("attribute '", name, "'");
  H5Id type = hdf5_string_type(value.size());
  H5Id space = dataspace({});
  H5Id attr = id(H5Acreate2(file_.get(), name, type.get(), space.get(), H5P_DEFAULT, H5P_DEFAULT), H5Aclose, what);
  check(H5Awrite(attr.get(), type.get(), value.c_str()), what);
  check(attr.close(), what);
}

void ChecksummedH5Writer::write_attr_i64(const char* name, int64_t value) {
  const std::string what = detail::concat("attribute '", name, "'");
  H5Id space = dataspace({});
  H5Id attr = id(H5Acreate2(file_.get(), name, H5T_STD_I64LE, space.get(), H5P_DEFAULT, H5P_DEFAULT), H5Aclose, what);
  check(H5Awrite(attr.get(), H5T_NATIVE_INT64, &value), what);
  check(attr.close(), what);
}

void ChecksummedH5Writer::check(herr_t status, const std::string& what) const {
  if (status < 0) check_hdf5_file(status, path_ + ": writing " + what);
}

H5Id ChecksummedH5Writer::id(hid_t handle, herr_t (*close)(hid_t), const std::string& what) const {
  check(handle < 0 ? -1 : 0, what);
  return H5Id(handle, close);
}

// ---- Reading ---------------------------------------------------------------------------------
H5Contents ChecksummedH5Reader::read(const Keep& keep) {
  open();
  const std::string format = string_attr("format");
  if (format != kind_.format) fail(detail::concat("not a ", kind_.noun, " (format '", format, "')"));
  const int64_t version = int_attr("version");
  if (version != kind_.version)
    fail(detail::concat(kind_.noun, " version ", version, ", this build reads ", kind_.version));
  if (H5Aexists(file_.get(), "complete") <= 0 || int_attr("complete") != 1)
    fail(detail::concat("incomplete ", kind_.noun, " (no 'complete' attribute: its write did not finish)"));
  if (H5Aexists(file_.get(), "checksum") <= 0) fail("no 'checksum' attribute");
  uint64_t stored = 0;
  {
    H5Id attr = id(H5Aopen(file_.get(), "checksum", H5P_DEFAULT), H5Aclose, "attribute 'checksum'");
    check(H5Aread(attr.get(), H5T_NATIVE_UINT64, &stored), "attribute 'checksum'");
  }

  auto visit = [](hid_t, const char* name, const H5L_info_t* info, void* out) -> herr_t {
    static_cast<std::vector<std::pair<std::string, bool>>*>(out)->emplace_back(name, info->type == H5L_TYPE_HARD);
    return 0;
  };
  std::vector<std::pair<std::string, bool>> links;
  check(H5Lvisit(file_.get(), H5_INDEX_NAME, H5_ITER_INC, visit, &links), "listing the file");
  std::map<std::string, std::vector<uint64_t>> digests;
  H5Contents contents;
  for (const auto& [name, hard] : links) {
    if (!hard) fail("'" + name + "' is a link to another object or file");
    H5Id object = id(H5Oopen(file_.get(), name.c_str(), H5P_DEFAULT), H5Oclose, "'" + name + "'");
    const H5I_type_t type = H5Iget_type(object.get());
    if (type == H5I_GROUP) continue;
    if (type != H5I_DATASET) fail("'" + name + "' is neither a group nor a dataset");
    object.reset();
    contents[name] = read_dataset(name, keep, digests[name]);
  }
  const uint64_t computed = checksum(digests);
  if (computed != stored)
    fail(detail::concat("checksum mismatch (stored ", std::hex, std::showbase, stored, ", computed ", computed,
                        "): the file is corrupt"));
  return contents;
}

void ChecksummedH5Reader::fail(const std::string& what) const {
  throw InputError(path_ + ": " + what);
}

void ChecksummedH5Reader::open() {
  file_ = open_sealed_hdf5(path_, kind_.noun);
  std::error_code ec;
  file_size_ = std::filesystem::file_size(path_, ec);
}

void ChecksummedH5Reader::check(herr_t status, const std::string& what) const {
  if (status < 0) fail("cannot read " + what + ": " + detail::hdf5_error_string());
}

H5Id ChecksummedH5Reader::id(hid_t handle, herr_t (*close)(hid_t), const std::string& what) const {
  if (handle < 0) fail("cannot read " + what + ": " + detail::hdf5_error_string());
  return H5Id(handle, close);
}

std::string ChecksummedH5Reader::string_attr(const char* name) {
  if (H5Aexists(file_.get(), name) <= 0)
    fail(detail::concat("not a ", kind_.noun, " (no '", name, "' attribute)"));
  const std::string what = detail::concat("attribute '", name, "'");
  H5Id attr = id(H5Aopen(file_.get(), name, H5P_DEFAULT), H5Aclose, what);
  H5Id type = id(H5Aget_type(attr.get()), H5Tclose, what);
  if (H5Tget_class(type.get()) != H5T_STRING || H5Tis_variable_str(type.get()) > 0)
    fail(what + " is not a fixed-length string");
  std::string value(H5Tget_size(type.get()), '\0');
  check(H5Aread(attr.get(), type.get(), value.data()), what);
  value.resize(std::strlen(value.c_str()));
  return value;
}

int64_t ChecksummedH5Reader::int_attr(const char* name) {
  if (H5Aexists(file_.get(), name) <= 0) fail(detail::concat("no '", name, "' attribute"));
  const std::string what = detail::concat("attribute '", name, "'");
  H5Id attr = id(H5Aopen(file_.get(), name, H5P_DEFAULT), H5Aclose, what);
  H5Id type = id(H5Aget_type(attr.get()), H5Tclose, what);
  if (H5Tget_class(type.get()) != H5T_INTEGER) fail(what + " is not an integer");
  int64_t value = 0;
  check(H5Aread(attr.get(), H5T_NATIVE_INT64, &value), what);
  return value;
}

// Reads with the stored type as the memory type, so the bytes hashed are the bytes on disk.
H5Dataset ChecksummedH5Reader::read_dataset(const std::string& name, const Keep& keep,
                                             std::vector<uint64_t>& words) {
  const std::string what = "dataset '" + name + "'";
  H5Id dset = id(H5Dopen2(file_.get(), name.c_str(), H5P_DEFAULT), H5Dclose, what);
  H5Id type = id(H5Dget_type(dset.get()), H5Tclose, what);
  H5Id space = id(H5Dget_space(dset.get()), H5Sclose, what);
  H5Dataset out;
  const int rank = H5Sget_simple_extent_ndims(space.get());
  if (rank < 0) fail("cannot read the shape of " + what);
  std::vector<hsize_t> dims(static_cast<size_t>(rank));
  if (rank > 0) check(H5Sget_simple_extent_dims(space.get(), dims.data(), nullptr), what);
  out.shape.assign(dims.begin(), dims.end());

  const H5T_class_t cls = H5Tget_class(type.get());
  const size_t size = H5Tget_size(type.get());
  if (cls == H5T_STRING) {
    if (H5Tis_variable_str(type.get()) > 0 || rank != 0) fail(what + " is not a fixed-length string");
    out.is_text = true;
  } else if (cls == H5T_FLOAT && (size == 4 || size == 8)) {
    out.dtype = size == 4 ? DType::f32 : DType::f64;
  } else if (cls == H5T_INTEGER && (size == 4 || size == 8)) {
    out.dtype = size == 4 ? DType::i32 : DType::i64;
  } else {
    fail(detail::concat(what, " has a type ", kind_.noun, "s do not use"));
  }
  if (!out.is_text && H5Tget_order(type.get()) != H5T_ORDER_LE) fail(what + " is not little-endian");
  // Contiguous storage holds exactly the elements: anything else is damage, and would otherwise
  // have us allocate what the header claims. The product is formed without overflow (dims are
  // the file's word).
  uint64_t bytes = size;
  bool overflow = false;
  for (const hsize_t d : dims)
    overflow = overflow || d > static_cast<hsize_t>(INT64_MAX) || __builtin_mul_overflow(bytes, d, &bytes);
  if (overflow || bytes > file_size_ || H5Dget_storage_size(dset.get()) != bytes)
    fail(what + " does not hold the bytes its shape needs (the file is damaged)");

  std::vector<char> text;
  Tensor values;
  void* buffer = nullptr;
  if (out.is_text) {
    text.resize(size);
    buffer = text.data();
  } else {
    values = Tensor::empty(out.shape, out.dtype);
    buffer = values.raw();
  }
  if (bytes > 0) check(H5Dread(dset.get(), type.get(), H5S_ALL, H5S_ALL, H5P_DEFAULT, buffer), what);
  words = digest(name, cls, size, out.shape, hash64(buffer, bytes));
  if (out.is_text) out.text.assign(text.data(), strnlen(text.data(), text.size()));
  if (keep(name, out.shape)) out.values = values;
  return out;
}

}  // namespace qarac
