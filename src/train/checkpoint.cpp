// Checkpoints in HDF5 (C API): the writer, the verifier and the loader. The loader reads and
// checks the whole file (checksum, structure, every shape against the model, the caller's config
// check) before it writes anything into the optimizer, so a refused checkpoint changes nothing.
//
// Files use the HDF5 1.8+ format (superblock v2, object header v2), whose metadata carries its
// own checksums: damage to the file's structure is caught by HDF5 when it opens or reads, damage
// to the data by our checksum over the datasets.
#include "train/checkpoint.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <map>
#include <set>
#include <vector>

#include "core/hdf5.h"
#include "core/log.h"

namespace qarac {
namespace {

namespace fs = std::filesystem;

static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__,
              "checkpoint data is stored little-endian and hashed as it lies in memory");

// ---- Checksum --------------------------------------------------------------------------------
// A 64-bit hash in the style of XXH64: four lanes of multiply-rotate rounds over 8-byte words,
// folded together with the length and the tail. Every round is a bijection of the lane and of
// the word, so a change confined to one word (any flipped byte) always changes the result; the
// four independent lanes run near memory speed, so verifying a multi-GB file costs about what
// reading it does.
constexpr uint64_t kPrime1 = 0x9E3779B185EBCA87ull;
constexpr uint64_t kPrime2 = 0xC2B2AE3D27D4EB4Full;
constexpr uint64_t kPrime3 = 0x165667B19E3779F9ull;

uint64_t rotl(uint64_t x, int r) {
  return (x << r) | (x >> (64 - r));
}
uint64_t mix(uint64_t acc, uint64_t word) {
  return rotl(acc + word * kPrime2, 31) * kPrime1;
}
uint64_t load_word(const unsigned char* p) {
  uint64_t w;
  std::memcpy(&w, p, 8);
  return w;
}

uint64_t hash_bytes(const void* data, size_t n) {
  const auto* p = static_cast<const unsigned char*>(data);
  uint64_t lane[4] = {kPrime1 + kPrime2, kPrime2, 0, 0 - kPrime1};
  size_t i = 0;
  for (; i + 32 <= n; i += 32)
    for (int k = 0; k < 4; ++k) lane[k] = mix(lane[k], load_word(p + i + 8 * k));
  uint64_t h = static_cast<uint64_t>(n) * kPrime3;
  for (const uint64_t l : lane) h = mix(h, l);
  for (; i + 8 <= n; i += 8) h = mix(h, load_word(p + i));
  if (i < n) {
    uint64_t w = 0;
    std::memcpy(&w, p + i, n - i);
    h = mix(h, w);
  }
  return h;
}

// What the checksum covers of one dataset besides its path.
struct Digest {
  uint64_t type_class = 0, type_size = 0;
  Shape dims;
  uint64_t data = 0;
};
using Digests = std::map<std::string, Digest>;  // by path: the checksum is over name order

uint64_t checksum(const Digests& digests) {
  std::vector<uint64_t> words;
  for (const auto& [path, d] : digests) {
    words.push_back(hash_bytes(path.data(), path.size()));
    words.push_back(d.type_class);
    words.push_back(d.type_size);
    words.push_back(d.dims.size());
    for (const int64_t n : d.dims) words.push_back(static_cast<uint64_t>(n));
    words.push_back(d.data);
  }
  return hash_bytes(words.data(), words.size() * sizeof(uint64_t));
}

// ---- HDF5 plumbing ---------------------------------------------------------------------------
// File access for both writing and reading: the 1.8 format for its metadata checksums, and no
// file locking, which fails on parallel file systems without flock (Lustre, some NFS); a
// checkpoint has one writer, under a name private to it until the rename.
H5Id file_access() {
  H5Id fapl = QARAC_H5_ID(H5Pcreate(H5P_FILE_ACCESS), H5Pclose);
  QARAC_CHECK_HDF5(H5Pset_libver_bounds(fapl.get(), H5F_LIBVER_V18, H5F_LIBVER_LATEST));
#if (H5_VERSION_GE(1, 10, 7) && !H5_VERSION_GE(1, 12, 0)) || H5_VERSION_GE(1, 12, 1)
  QARAC_CHECK_HDF5(H5Pset_file_locking(fapl.get(), false, true));
#endif
  return fapl;
}

// The HDF5 type of each dtype a checkpoint stores, in the file (little-endian) and in memory.
hid_t file_type(DType t) {
  switch (t) {
    case DType::f32: return H5T_IEEE_F32LE;
    case DType::f64: return H5T_IEEE_F64LE;
    case DType::i32: return H5T_STD_I32LE;
    case DType::i64: return H5T_STD_I64LE;
    case DType::bf16: break;
  }
  QARAC_CHECK(false, "checkpoints store f32, f64, i32 and i64 tensors, not ", dtype_name(t));
  return -1;
}

H5Id dataspace(const Shape& dims) {
  if (dims.empty()) return QARAC_H5_ID(H5Screate(H5S_SCALAR), H5Sclose);
  const std::vector<hsize_t> h(dims.begin(), dims.end());
  return QARAC_H5_ID(H5Screate_simple(static_cast<int>(h.size()), h.data(), nullptr), H5Sclose);
}

// Fsyncs a file or a folder by path: HDF5 has written everything once the file is closed, and
// one descriptor's fsync flushes all of the file's dirty pages. Returns 0 or the errno.
int sync_path(const std::string& path, int flags) {
  const int fd = ::open(path.c_str(), flags);
  if (fd < 0) return errno;
  const int err = ::fsync(fd) == 0 ? 0 : errno;
  ::close(fd);
  return err;
}

// ---- Names in a checkpoint folder ------------------------------------------------------------
constexpr const char* kFilePrefix = "checkpoint-";
constexpr const char* kFileSuffix = ".h5";
constexpr const char* kTempMarker = ".tmp.";

// The step of "checkpoint-<digits>.h5" (or, with `temporary`, "checkpoint-<digits>.h5.tmp.<pid>");
// -1 for any other name.
int64_t step_of(const std::string& name, bool temporary) {
  const size_t prefix = std::strlen(kFilePrefix), suffix = std::strlen(kFileSuffix);
  if (name.compare(0, prefix, kFilePrefix) != 0) return -1;
  size_t end = prefix;
  while (end < name.size() && end - prefix < 18 && name[end] >= '0' && name[end] <= '9') ++end;
  if (end == prefix || name.compare(end, suffix, kFileSuffix) != 0) return -1;
  const std::string rest = name.substr(end + suffix);
  if (temporary ? rest.compare(0, std::strlen(kTempMarker), kTempMarker) != 0 : !rest.empty())
    return -1;
  return std::stoll(name.substr(prefix, end - prefix));
}

struct Listed {
  int64_t step;
  fs::path path;
};

// The checkpoints (or the temporary files) of `dir`, newest step first.
std::vector<Listed> list(const std::string& dir, bool temporary) {
  std::vector<Listed> out;
  std::error_code ec;
  for (fs::directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec)) {
    const int64_t step = step_of(it->path().filename().string(), temporary);
    if (step >= 0) out.push_back({step, it->path()});
  }
  std::sort(out.begin(), out.end(),
            [](const Listed& a, const Listed& b) { return a.step > b.step; });
  return out;
}

void remove_file(const fs::path& path, const char* why) {
  std::error_code ec;
  fs::remove(path, ec);
  if (ec)
    log::warn("cannot remove ", why, " ", path.string(), ": ", ec.message());
  else
    log::debug("removed ", why, " ", path.string());
}

// ---- Writing ---------------------------------------------------------------------------------
// Writes the datasets of a new checkpoint file and the digests of what it wrote. Datasets are
// contiguous: written once, read whole.
class Writer {
 public:
  explicit Writer(const std::string& path) : path_(path) {
    H5Id fapl = file_access();
    file_ = H5Fcreate(path.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, fapl.get());
    if (file_ < 0)
      throw InputError(detail::concat(path, ": cannot create: ", detail::hdf5_error_string()));
    // Groups along a dataset's path are created with it.
    lcpl_ = QARAC_H5_ID(H5Pcreate(H5P_LINK_CREATE), H5Pclose);
    QARAC_CHECK_HDF5(H5Pset_create_intermediate_group(lcpl_.get(), 1));
    write_attr("format", kCheckpointFormat);
    write_attr_i64("version", kCheckpointVersion);
  }

  void write(const std::string& name, const Tensor& tensor) {
    const Tensor host = tensor.to(Device::cpu());
    const Tensor data = host.is_contiguous() ? host : host.clone();
    const hid_t type = file_type(data.dtype());
    write_raw(name, type, data.shape(), data.raw(), data.nbytes());
  }

  void write_i64(const std::string& name, int64_t value) {
    write_raw(name, H5T_STD_I64LE, {}, &value, sizeof value);
  }
  void write_u64(const std::string& name, uint64_t value) {
    write_raw(name, H5T_STD_U64LE, {}, &value, sizeof value);
  }
  template <class T>
  void write_vector(const std::string& name, const std::vector<T>& values) {
    write(name, Tensor::from_vector(values, {static_cast<int64_t>(values.size())}));
  }

  void write_text(const std::string& name, const std::string& text) {
    H5Id type = hdf5_string_type(text.size());
    std::string padded = text;
    padded.resize(std::max<size_t>(text.size(), 1), '\0');
    write_raw(name, type.get(), {}, padded.data(), padded.size());
  }

  // The checksum, then `complete` as the last thing written; closes the file.
  void finish() {
    const uint64_t sum = checksum(digests_);
    H5Id space = dataspace({});
    H5Id attr = QARAC_H5_ID(
        H5Acreate2(file_, "checksum", H5T_STD_U64LE, space.get(), H5P_DEFAULT, H5P_DEFAULT),
        H5Aclose);
    QARAC_CHECK_HDF5(H5Awrite(attr.get(), H5T_NATIVE_UINT64, &sum));
    attr.reset();
    write_attr_i64("complete", 1);
    lcpl_.reset();
    const hid_t file = file_;
    file_ = -1;
    if (H5Fclose(file) < 0)
      throw InputError(detail::concat(path_, ": closing failed: ", detail::hdf5_error_string()));
  }

  // A write that threw midway: the file is closed unchecked, and its caller removes it.
  ~Writer() {
    lcpl_.reset();
    if (file_ >= 0) H5Fclose(file_);
  }
  Writer(const Writer&) = delete;
  Writer& operator=(const Writer&) = delete;

 private:
  void write_raw(const std::string& name, hid_t type, const Shape& dims, const void* data,
                 size_t bytes) {
    H5Id space = dataspace(dims);
    H5Id dset = QARAC_H5_ID(
        H5Dcreate2(file_, name.c_str(), type, space.get(), lcpl_.get(), H5P_DEFAULT, H5P_DEFAULT),
        H5Dclose);
    if (bytes > 0)
      QARAC_CHECK_HDF5(H5Dwrite(dset.get(), type, H5S_ALL, H5S_ALL, H5P_DEFAULT, data));
    Digest& d = digests_[name];
    d.type_class = static_cast<uint64_t>(H5Tget_class(type));
    d.type_size = H5Tget_size(type);
    d.dims = dims;
    d.data = hash_bytes(data, bytes);
  }

  void write_attr(const char* name, const std::string& value) {
    H5Id type = hdf5_string_type(value.size());
    H5Id space = dataspace({});
    H5Id attr = QARAC_H5_ID(
        H5Acreate2(file_, name, type.get(), space.get(), H5P_DEFAULT, H5P_DEFAULT), H5Aclose);
    QARAC_CHECK_HDF5(H5Awrite(attr.get(), type.get(), value.c_str()));
  }

  void write_attr_i64(const char* name, int64_t value) {
    H5Id space = dataspace({});
    H5Id attr = QARAC_H5_ID(
        H5Acreate2(file_, name, H5T_STD_I64LE, space.get(), H5P_DEFAULT, H5P_DEFAULT), H5Aclose);
    QARAC_CHECK_HDF5(H5Awrite(attr.get(), H5T_NATIVE_INT64, &value));
  }

  std::string path_;
  hid_t file_ = -1;  // not an H5Id: finish() must see whether closing, which flushes, succeeded
  H5Id lcpl_;
  Digests digests_;
};

// ---- Reading ---------------------------------------------------------------------------------
// One dataset as read: numbers in a CPU tensor (raw bytes of the stored type), or text.
struct Dataset {
  bool is_text = false;
  DType dtype = DType::f32;
  Shape shape;
  Tensor values;  // left undefined by verification, which keeps only dtype and shape
  std::string text;
};
using Contents = std::map<std::string, Dataset>;

// Reads a checkpoint file whole and checks its checksum. Every failure, HDF5's included, is a
// one-line InputError naming the file: the file is input to the run.
class Reader {
 public:
  explicit Reader(std::string path) : path_(std::move(path)) {}

  // `keep_values`: keep the numbers of every dataset (loading) or only those of the small ones
  // (verification, which looks at shapes but needs the values of the counters and cursor).
  Contents read(bool keep_values) {
    open();
    const std::string format = string_attr("format");
    if (format != kCheckpointFormat) fail("not a checkpoint (format '" + format + "')");
    const int64_t version = int_attr("version");
    if (version != kCheckpointVersion)
      fail(detail::concat("checkpoint version ", version, ", this build reads ",
                          kCheckpointVersion));
    if (H5Aexists(file_.get(), "complete") <= 0 || int_attr("complete") != 1)
      fail("incomplete checkpoint (no 'complete' attribute: its write did not finish)");
    if (H5Aexists(file_.get(), "checksum") <= 0) fail("no 'checksum' attribute");
    uint64_t stored = 0;
    {
      H5Id attr =
          id(H5Aopen(file_.get(), "checksum", H5P_DEFAULT), H5Aclose, "attribute 'checksum'");
      check(H5Aread(attr.get(), H5T_NATIVE_UINT64, &stored), "attribute 'checksum'");
    }

    auto visit = [](hid_t, const char* name, const H5L_info_t* info, void* out) -> herr_t {
      static_cast<std::vector<std::pair<std::string, bool>>*>(out)->emplace_back(
          name, info->type == H5L_TYPE_HARD);
      return 0;
    };
    std::vector<std::pair<std::string, bool>> links;
    check(H5Lvisit(file_.get(), H5_INDEX_NAME, H5_ITER_INC, visit, &links), "listing the file");
    Digests digests;
    Contents contents;
    for (const auto& [name, hard] : links) {
      if (!hard) fail("'" + name + "' is a link to another object or file");
      H5Id object = id(H5Oopen(file_.get(), name.c_str(), H5P_DEFAULT), H5Oclose, "'" + name + "'");
      const H5I_type_t kind = H5Iget_type(object.get());
      if (kind == H5I_GROUP) continue;
      if (kind != H5I_DATASET) fail("'" + name + "' is neither a group nor a dataset");
      object.reset();
      contents[name] = read_dataset(name, keep_values, digests[name]);
    }
    const uint64_t computed = checksum(digests);
    if (computed != stored)
      fail(detail::concat("checksum mismatch (stored ", std::hex, std::showbase, stored,
                          ", computed ", computed, "): the file is corrupt"));
    return contents;
  }

  [[noreturn]] void fail(const std::string& what) const { throw InputError(path_ + ": " + what); }

 private:
  void open() {
    silence_hdf5_stack_printing();
    if (::access(path_.c_str(), R_OK) != 0)
      fail(detail::concat("cannot open: ", std::strerror(errno)));
    if (H5Fis_hdf5(path_.c_str()) <= 0) {
      H5Eclear2(H5E_DEFAULT);
      fail("not an HDF5 file");
    }
    H5Id fapl = file_access();
    const hid_t file = H5Fopen(path_.c_str(), H5F_ACC_RDONLY, fapl.get());
    if (file < 0) fail("cannot open: " + detail::hdf5_error_string());
    file_ = H5Id(file, H5Fclose);
    std::error_code ec;
    file_size_ = fs::file_size(path_, ec);
  }

  void check(herr_t status, const std::string& what) const {
    if (status < 0) fail("cannot read " + what + ": " + detail::hdf5_error_string());
  }
  H5Id id(hid_t handle, herr_t (*close)(hid_t), const std::string& what) const {
    if (handle < 0) fail("cannot read " + what + ": " + detail::hdf5_error_string());
    return H5Id(handle, close);
  }

  std::string string_attr(const char* name) {
    if (H5Aexists(file_.get(), name) <= 0)
      fail(detail::concat("not a checkpoint (no '", name, "' attribute)"));
    H5Id attr = id(H5Aopen(file_.get(), name, H5P_DEFAULT), H5Aclose,
                   detail::concat("attribute '", name, "'"));
    H5Id type = id(H5Aget_type(attr.get()), H5Tclose, detail::concat("attribute '", name, "'"));
    if (H5Tget_class(type.get()) != H5T_STRING || H5Tis_variable_str(type.get()) > 0)
      fail(detail::concat("attribute '", name, "' is not a fixed-length string"));
    std::string value(H5Tget_size(type.get()), '\0');
    check(H5Aread(attr.get(), type.get(), value.data()), detail::concat("attribute '", name, "'"));
    value.resize(std::strlen(value.c_str()));
    return value;
  }

  int64_t int_attr(const char* name) {
    if (H5Aexists(file_.get(), name) <= 0) fail(detail::concat("no '", name, "' attribute"));
    H5Id attr = id(H5Aopen(file_.get(), name, H5P_DEFAULT), H5Aclose,
                   detail::concat("attribute '", name, "'"));
    H5Id type = id(H5Aget_type(attr.get()), H5Tclose, detail::concat("attribute '", name, "'"));
    if (H5Tget_class(type.get()) != H5T_INTEGER)
      fail(detail::concat("attribute '", name, "' is not an integer"));
    int64_t value = 0;
    check(H5Aread(attr.get(), H5T_NATIVE_INT64, &value), detail::concat("attribute '", name, "'"));
    return value;
  }

  // Reads with the stored type as the memory type, so the bytes hashed are the bytes on disk.
  Dataset read_dataset(const std::string& name, bool keep_values, Digest& digest) {
    const std::string what = "dataset '" + name + "'";
    H5Id dset = id(H5Dopen2(file_.get(), name.c_str(), H5P_DEFAULT), H5Dclose, what);
    H5Id type = id(H5Dget_type(dset.get()), H5Tclose, what);
    H5Id space = id(H5Dget_space(dset.get()), H5Sclose, what);
    Dataset out;
    const int rank = H5Sget_simple_extent_ndims(space.get());
    if (rank < 0) fail("cannot read the shape of " + what);
    std::vector<hsize_t> dims(static_cast<size_t>(rank));
    if (rank > 0) check(H5Sget_simple_extent_dims(space.get(), dims.data(), nullptr), what);
    out.shape.assign(dims.begin(), dims.end());

    const H5T_class_t cls = H5Tget_class(type.get());
    const size_t size = H5Tget_size(type.get());
    if (cls == H5T_STRING) {
      if (H5Tis_variable_str(type.get()) > 0 || rank != 0)
        fail(what + " is not a fixed-length string");
      out.is_text = true;
    } else if (cls == H5T_FLOAT && (size == 4 || size == 8)) {
      out.dtype = size == 4 ? DType::f32 : DType::f64;
    } else if (cls == H5T_INTEGER && (size == 4 || size == 8)) {
      out.dtype = size == 4 ? DType::i32 : DType::i64;
    } else {
      fail(what + " has a type checkpoints do not use");
    }
    if (!out.is_text && H5Tget_order(type.get()) != H5T_ORDER_LE)
      fail(what + " is not little-endian");
    // Contiguous storage holds exactly the elements: anything else is damage, and would
    // otherwise have us allocate what the header claims.
    const uint64_t bytes = static_cast<uint64_t>(shape_numel(out.shape)) * size;
    if (bytes > file_size_ || H5Dget_storage_size(dset.get()) != bytes)
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
    if (bytes > 0)
      check(H5Dread(dset.get(), type.get(), H5S_ALL, H5S_ALL, H5P_DEFAULT, buffer), what);
    digest.type_class = static_cast<uint64_t>(cls);
    digest.type_size = size;
    digest.dims = out.shape;
    digest.data = hash_bytes(buffer, bytes);
    if (out.is_text) out.text.assign(text.data(), strnlen(text.data(), text.size()));
    // The counters and the cursor are read from the values; the big tensors only when loading.
    if (keep_values || shape_numel(out.shape) <= 1 || name.compare(0, 7, "loader/") == 0)
      out.values = values;
    return out;
  }

  std::string path_;
  H5Id file_;
  uint64_t file_size_ = 0;
};

// The state of a checkpoint, its structure checked.
struct Parsed {
  TrainingState state;
  std::string optimizer_kind;
  int64_t optimizer_steps = 0;
  std::map<std::string, const Dataset*> params, m, v;  // by parameter name
};

Parsed parse(const Reader& reader, const Contents& contents) {
  Parsed out;
  std::set<std::string> used;
  auto get = [&](const std::string& name, DType dtype, bool scalar) -> const Dataset& {
    const auto it = contents.find(name);
    if (it == contents.end()) reader.fail("not a valid checkpoint: no dataset '" + name + "'");
    const Dataset& d = it->second;
    if (d.is_text || d.dtype != dtype || (scalar ? !d.shape.empty() : d.shape.size() != 1))
      reader.fail(detail::concat("not a valid checkpoint: '", name, "' is not ",
                                 scalar ? "a scalar " : "a vector of ", dtype_name(dtype)));
    used.insert(name);
    return d;
  };
  auto scalar = [&](const std::string& name) {
    return get(name, DType::i64, true).values.data<int64_t>()[0];
  };

  auto text = [&](const std::string& name) {
    const auto it = contents.find(name);
    if (it == contents.end() || !it->second.is_text)
      reader.fail("not a valid checkpoint: no '" + name + "' text");
    used.insert(name);
    return it->second.text;
  };
  out.state.config = text("config");
  out.optimizer_kind = text("optimizer/kind");
  out.state.step = scalar("state/step");
  out.state.seed = static_cast<uint64_t>(scalar("state/seed"));
  out.optimizer_steps = scalar("optimizer/steps");
  out.state.cursor.step = scalar("loader/step");
  if (out.state.step < 0 || out.optimizer_steps < 0 || out.state.cursor.step < 0)
    reader.fail("not a valid checkpoint: a negative step count");

  const std::vector<int32_t> tasks =
      get("loader/task", DType::i32, false).values.to_vector<int32_t>();
  const char* columns[] = {"loader/epoch", "loader/position", "loader/share_begin",
                           "loader/share_end"};
  std::vector<std::vector<int64_t>> cols;
  for (const char* c : columns) {
    cols.push_back(get(c, DType::i64, false).values.to_vector<int64_t>());
    if (cols.back().size() != tasks.size())
      reader.fail(
          detail::concat("not a valid checkpoint: '", c, "' and 'loader/task' differ in length"));
  }
  for (size_t i = 0; i < tasks.size(); ++i) {
    if (tasks[i] < 0 || tasks[i] >= data::kTaskCount)
      reader.fail(
          detail::concat("not a valid checkpoint: 'loader/task' holds ", tasks[i], ", not a task"));
    out.state.cursor.tasks.push_back(
        {static_cast<data::Task>(tasks[i]), cols[0][i], cols[1][i], cols[2][i], cols[3][i]});
  }

  const std::pair<const char*, std::map<std::string, const Dataset*>*> groups[] = {
      {"parameters/", &out.params}, {"optimizer/m/", &out.m}, {"optimizer/v/", &out.v}};
  for (const auto& [name, d] : contents) {
    if (used.count(name)) continue;
    bool placed = false;
    for (const auto& [prefix, into] : groups) {
      const size_t n = std::strlen(prefix);
      if (name.compare(0, n, prefix) == 0 && name.find('/', n) == std::string::npos) {
        if (d.is_text || !is_floating(d.dtype))
          reader.fail("not a valid checkpoint: '" + name + "' is not a floating-point tensor");
        (*into)[name.substr(n)] = &d;
        placed = true;
      }
    }
    if (!placed) reader.fail("not a valid checkpoint: unexpected dataset '" + name + "'");
  }
  // Every parameter has both moments, in its dtype and shape, and no moment lacks a parameter.
  for (const auto* moments : {&out.m, &out.v}) {
    const char* which = moments == &out.m ? "optimizer/m/" : "optimizer/v/";
    for (const auto& [name, d] : *moments)
      if (!out.params.count(name))
        reader.fail(detail::concat("not a valid checkpoint: '", which, name, "' has no parameter"));
    for (const auto& [name, p] : out.params) {
      const auto it = moments->find(name);
      if (it == moments->end())
        reader.fail(detail::concat("not a valid checkpoint: no '", which, name, "'"));
      if (it->second->dtype != p->dtype || it->second->shape != p->shape)
        reader.fail(detail::concat("not a valid checkpoint: '", which, name,
                                   "' differs from its parameter in shape or dtype"));
    }
  }
  return out;
}

}  // namespace

std::string checkpoint_path(const std::string& dir, int64_t step) {
  char name[48];
  std::snprintf(name, sizeof name, "%s%010lld%s", kFilePrefix, static_cast<long long>(step),
                kFileSuffix);
  return (fs::path(dir) / name).string();
}

std::string save_checkpoint(const std::string& dir, const Optimizer& optimizer,
                            const TrainingState& state, int keep_last) {
  QARAC_CHECK(state.step >= 0, "checkpoint step must be non-negative, got ", state.step);
  QARAC_CHECK(keep_last >= 0, "keep_last must be non-negative, got ", keep_last);
  const ParameterList& params = optimizer.parameters();
  const std::vector<Tensor>& m = optimizer.first_moments();
  const std::vector<Tensor>& v = optimizer.second_moments();
  QARAC_CHECK(m.size() == params.size() && v.size() == params.size(), "optimizer holds ", m.size(),
              " and ", v.size(), " moments for ", params.size(), " parameters");
  std::set<std::string> names;
  for (const Parameter* p : params) {
    QARAC_CHECK(!p->name.empty() && p->name.find('/') == std::string::npos, "parameter name '",
                p->name, "' cannot name an HDF5 dataset");
    QARAC_CHECK(names.insert(p->name).second, "parameter '", p->name, "' is listed twice");
  }
  silence_hdf5_stack_printing();
  std::error_code ec;
  fs::create_directories(dir, ec);
  QARAC_INPUT_CHECK(!ec, dir, ": cannot create the checkpoint folder: ", ec.message());

  const std::string path = checkpoint_path(dir, state.step);
  const std::string tmp = path + kTempMarker + std::to_string(::getpid());
  // Removes the temporary file when anything below throws.
  struct TempFile {
    const std::string& path;
    bool keep = false;
    ~TempFile() {
      if (!keep) std::remove(path.c_str());
    }
  } guard{tmp};

  Writer w(tmp);
  w.write_text("config", state.config);
  w.write_i64("state/step", state.step);
  w.write_u64("state/seed", state.seed);
  w.write_text("optimizer/kind", optimizer_name(optimizer.config().kind));
  w.write_i64("optimizer/steps", optimizer.steps());
  for (size_t i = 0; i < params.size(); ++i) {
    w.write("parameters/" + params[i]->name, params[i]->master);
    w.write("optimizer/m/" + params[i]->name, m[i]);
    w.write("optimizer/v/" + params[i]->name, v[i]);
  }
  const data::LoaderCursor& cursor = state.cursor;
  std::vector<int32_t> tasks;
  std::vector<int64_t> epoch, position, share_begin, share_end;
  for (const data::TaskCursor& t : cursor.tasks) {
    tasks.push_back(static_cast<int32_t>(t.task));
    epoch.push_back(t.epoch);
    position.push_back(t.position);
    share_begin.push_back(t.share_begin);
    share_end.push_back(t.share_end);
  }
  w.write_i64("loader/step", cursor.step);
  w.write_vector("loader/task", tasks);
  w.write_vector("loader/epoch", epoch);
  w.write_vector("loader/position", position);
  w.write_vector("loader/share_begin", share_begin);
  w.write_vector("loader/share_end", share_end);
  w.finish();

  // The data must be on disk before the rename makes it visible under the final name, and the
  // rename on disk before older checkpoints are deleted.
  if (const int err = sync_path(tmp, O_RDONLY))
    throw InputError(detail::concat(path, ": fsync of ", tmp, " failed: ", std::strerror(err)));
  if (std::rename(tmp.c_str(), path.c_str()) != 0)
    throw InputError(
        detail::concat(path, ": cannot rename ", tmp, " over it: ", std::strerror(errno)));
  guard.keep = true;
  if (const int err = sync_path(dir, O_RDONLY | O_DIRECTORY))
    log::warn(dir, ": fsync of the folder failed (", std::strerror(err),
              "); the new checkpoint may not survive a power loss");

  // A temporary file of this step or an earlier one belongs to a write that died: the writes
  // of a folder come from one process, in step order.
  for (const Listed& t : list(dir, true))
    if (t.step <= state.step) remove_file(t.path, "unfinished checkpoint");
  if (keep_last > 0) {
    int kept = 1;  // the new one
    for (const Listed& c : list(dir, false)) {
      if (c.step >= state.step) continue;
      if (kept < keep_last)
        ++kept;
      else
        remove_file(c.path, "old checkpoint");
    }
  }
  return path;
}

void verify_checkpoint(const std::string& path) {
  Reader reader(path);
  parse(reader, reader.read(false));
}

std::optional<std::string> find_latest_checkpoint(const std::string& dir) {
  for (const Listed& c : list(dir, false)) {
    try {
      verify_checkpoint(c.path.string());
      return c.path.string();
    } catch (const InputError& e) {
      log::warn("skipping checkpoint ", e.what());
    }
  }
  return std::nullopt;
}

TrainingState load_checkpoint(const std::string& path, Optimizer& optimizer,
                              const ConfigCheck& check_config) {
  Reader reader(path);
  const Contents contents = reader.read(true);
  const Parsed parsed = parse(reader, contents);

  // Everything is checked against the model before anything is written.
  const ParameterList& params = optimizer.parameters();
  std::set<std::string> model_names;
  for (const Parameter* p : params) {
    model_names.insert(p->name);
    const auto it = parsed.params.find(p->name);
    if (it == parsed.params.end())
      reader.fail(detail::concat("the checkpoint lacks parameter '", p->name, "' ",
                                 shape_str(p->master.shape()), " of the model"));
    const Dataset& d = *it->second;
    if (d.shape != p->master.shape() || d.dtype != p->master.dtype())
      reader.fail(detail::concat("parameter '", p->name, "' is ", dtype_name(d.dtype),
                                 shape_str(d.shape), " in the checkpoint, the model's is ",
                                 dtype_name(p->master.dtype()), shape_str(p->master.shape())));
  }
  for (const auto& [name, d] : parsed.params)
    if (!model_names.count(name))
      reader.fail("the checkpoint holds parameter '" + name + "', which the model does not have");
  const char* kind = optimizer_name(optimizer.config().kind);
  if (parsed.optimizer_kind != kind)
    reader.fail("the checkpoint's optimizer is " + parsed.optimizer_kind + ", this run's " + kind);
  if (check_config) {
    const std::string why = check_config(parsed.state.config);
    if (!why.empty()) reader.fail("the checkpoint does not fit this run's configuration: " + why);
  }

  std::vector<Tensor>& m = optimizer.first_moments();
  std::vector<Tensor>& v = optimizer.second_moments();
  for (size_t i = 0; i < params.size(); ++i) {
    const std::string& name = params[i]->name;
    // The compute copy is the master rounded to its dtype, as the optimizer's update writes it.
    params[i]->assign(parsed.params.at(name)->values);
    m[i].copy_(parsed.m.at(name)->values);
    v[i].copy_(parsed.v.at(name)->values);
  }
  optimizer.set_steps(parsed.optimizer_steps);
  zero_grads(params);
  return parsed.state;
}

}  // namespace qarac
