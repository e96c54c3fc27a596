// safetensors reader and writer. The reader checks every header field against the file before it
// trusts it (sizes, offsets, dtypes, overlaps), so a truncated, corrupt or hostile file gives a
// one-line InputError naming the file and the tensor, never a crash or a silent misread.
#include "io/safetensors.h"

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <nlohmann/json.hpp>
#include <optional>
#include <ostream>
#include <vector>

#include "core/atomic_file.h"
#include "data/json_brief.h"

namespace qarac::io {
namespace {

static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__,
              "safetensors data is little-endian and is copied as is");

using json = nlohmann::json;

// The reference implementation refuses headers above 100 MB; a larger length means the file is
// not a safetensors file (or is corrupt), and allocating it would be the first harm done.
constexpr uint64_t kMaxHeaderBytes = 100ull << 20;
// Model tensors have at most 4 dimensions; a header listing thousands is not a model's.
constexpr size_t kMaxRank = 8;

struct StoredType {
  const char* name;  // as in the header
  size_t bytes;      // per element in the file
  DType dtype;       // in memory: F16 is widened to f32
};
constexpr StoredType kStoredTypes[] = {
    {"F32", 4, DType::f32}, {"F16", 2, DType::f32}, {"BF16", 2, DType::bf16},
    {"F64", 8, DType::f64}, {"I32", 4, DType::i32}, {"I64", 8, DType::i64},
};

const StoredType* find_stored_type(const std::string& name) {
  for (const StoredType& t : kStoredTypes)
    if (name == t.name) return &t;
  return nullptr;
}

const char* stored_name(DType t) {
  switch (t) {
    case DType::f32: return "F32";
    case DType::bf16: return "BF16";
    case DType::f64: return "F64";
    case DType::i32: return "I32";
    case DType::i64: return "I64";
  }
  return "?";
}

// IEEE binary16 -> binary32, exact for every input: subnormals (m·2^-24) are representable in
// float, infinities stay infinite and NaNs keep their payload.
float half_to_float(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t exponent = (h >> 10) & 0x1fu;
  const uint32_t mantissa = h & 0x3ffu;
  uint32_t bits;
  if (exponent == 0x1f) {
    bits = sign | 0x7f800000u | (mantissa << 13);
  } else if (exponent != 0) {
    bits = sign | ((exponent + 127 - 15) << 23) | (mantissa << 13);
  } else {
    const float magnitude = std::ldexp(static_cast<float>(mantissa), -24);
    return sign ? -magnitude : magnitude;
  }
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

// A JSON integer as int64; nullopt for floats, other types and integers beyond int64.
std::optional<int64_t> as_int64(const json& v) {
  if (v.is_number_unsigned()) {
    const uint64_t u = v.get<uint64_t>();
    if (u > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) return std::nullopt;
    return static_cast<int64_t>(u);
  }
  if (v.is_number_integer()) return v.get<int64_t>();
  return std::nullopt;
}

// A JSON value in a message, quoted (data/json_brief.h) only when the message is made: the checks
// of a header entry take their message's arguments whether or not they fail, and a value dumped
// whole recursed once per nesting level (a deeply nested value in any key crashed every load).
struct Quoted {
  const json& value;
};
std::ostream& operator<<(std::ostream& os, const Quoted& q) { return os << data::json_brief(q.value); }
Quoted json_snippet(const json& v) { return {v}; }

struct Entry {
  std::string name;
  const StoredType* type;
  Shape shape;
  uint64_t begin, end;  // within the data section
};

class HeaderParser {
 public:
  HeaderParser(const std::string& path, uint64_t data_bytes)
      : path_(path), data_bytes_(data_bytes) {}

  Entry parse_entry(const std::string& name, const json& v) const {
    Entry e;
    e.name = name;
    tensor_check(name, v.is_object(), "header entry is ", json_snippet(v), ", expected an object");

    const json& dtype = field(name, v, "dtype");
    tensor_check(name, dtype.is_string(), "dtype is ", json_snippet(dtype), ", expected a string");
    e.type = find_stored_type(dtype.get<std::string>());
    tensor_check(name, e.type != nullptr, "dtype '", printable(dtype.get<std::string>()),
                 "' is not supported (supported: F32, F16, BF16, F64, I32, I64)");

    const json& shape = field(name, v, "shape");
    tensor_check(name, shape.is_array(), "shape is ", json_snippet(shape), ", expected an array");
    tensor_check(name, shape.size() <= kMaxRank, "shape has ", shape.size(), " dimensions, more than ", kMaxRank);
    for (const json& d : shape) {
      const std::optional<int64_t> dim = as_int64(d);
      tensor_check(name, dim.has_value(), "shape ", json_snippet(shape), " holds ", json_snippet(d),
                   ", expected integers");
      tensor_check(name, *dim >= 0, "shape ", json_snippet(shape), " has a negative dimension");
      e.shape.push_back(*dim);
    }

    const json& offsets = field(name, v, "data_offsets");
    const bool pair = offsets.is_array() && offsets.size() == 2 &&
                      offsets[0].is_number_unsigned() && offsets[1].is_number_unsigned();
    tensor_check(name, pair, "data_offsets is ", json_snippet(offsets),
                 ", expected [begin, end] with non-negative integers");
    e.begin = offsets[0].get<uint64_t>();
    e.end = offsets[1].get<uint64_t>();
    tensor_check(name, e.begin <= e.end, "data_offsets [", e.begin, ", ", e.end,
                 "] ends before it begins");
    tensor_check(name, e.end <= data_bytes_, "header says it ends at byte ", e.end,
                 " but the data section has only ", data_bytes_,
                 " bytes (truncated file, or a header that lies about sizes)");

    // numel·size must equal end − begin; the product is formed without overflow. Dimensions
    // whose product overflows are refused even beside a 0 (which makes the tensor empty): code
    // that multiplies a shape's dimensions in order would overflow on them.
    uint64_t needed = e.type->bytes;
    bool overflow = false;
    for (int64_t d : e.shape)
      if (d > 0) overflow = overflow || __builtin_mul_overflow(needed, static_cast<uint64_t>(d), &needed);
    overflow = overflow || needed > static_cast<uint64_t>(std::numeric_limits<int64_t>::max());
    if (std::find(e.shape.begin(), e.shape.end(), 0) != e.shape.end()) needed = 0;
    tensor_check(name, !overflow && needed == e.end - e.begin, "data_offsets [", e.begin, ", ",
                 e.end, "] hold ", e.end - e.begin, " bytes but shape ", shape_str(e.shape), " of ",
                 e.type->name, " needs ",
                 overflow ? std::string("more than 2^63") : std::to_string(needed));
    return e;
  }

  // Tensors must not share bytes: a file that aliases them is corrupt or crafted. Sorted by
  // begin, any overlap shows up between neighbours.
  void check_no_overlap(const std::vector<Entry>& entries) const {
    std::vector<const Entry*> sorted;
    for (const Entry& e : entries)
      if (e.begin < e.end) sorted.push_back(&e);
    std::sort(sorted.begin(), sorted.end(),
              [](const Entry* a, const Entry* b) { return a->begin < b->begin; });
    for (size_t i = 1; i < sorted.size(); ++i) {
      const Entry& a = *sorted[i - 1];
      const Entry& b = *sorted[i];
      QARAC_INPUT_CHECK(a.end <= b.begin, path_, ": tensors '", printable(a.name), "' [", a.begin,
                        ", ", a.end, ") and '", printable(b.name), "' [", b.begin, ", ", b.end,
                        ") overlap in the data section");
    }
  }

 private:
  template <class... Args>
  void tensor_check(const std::string& name, bool ok, const Args&... args) const {
    QARAC_INPUT_CHECK(ok, path_, ": tensor '", printable(name), "': ", args...);
  }

  const json& field(const std::string& name, const json& v, const char* key) const {
    const auto it = v.find(key);
    tensor_check(name, it != v.end(), "header entry has no '", key, "'");
    return *it;
  }

  const std::string& path_;
  uint64_t data_bytes_;
};

}  // namespace

TensorMap read_safetensors(const std::string& path, Metadata* metadata) {
  check_input_file(path);
  std::ifstream in(path, std::ios::binary);
  QARAC_INPUT_CHECK(in, path, ": cannot open for reading (", std::strerror(errno), ")");
  in.seekg(0, std::ios::end);
  const auto file_end = in.tellg();
  QARAC_INPUT_CHECK(file_end >= 0, path, ": cannot determine the file size");
  const uint64_t file_bytes = static_cast<uint64_t>(file_end);
  in.seekg(0);

  QARAC_INPUT_CHECK(file_bytes >= 8, path, ": file has ", file_bytes,
                    " bytes, too short for the 8-byte header length (not a safetensors file?)");
  uint64_t header_bytes = 0;
  in.read(reinterpret_cast<char*>(&header_bytes), 8);
  QARAC_INPUT_CHECK(in, path, ": cannot read the header length");
  QARAC_INPUT_CHECK(header_bytes <= kMaxHeaderBytes, path, ": header length ", header_bytes,
                    " is absurd (limit 100 MB; not a safetensors file?)");
  QARAC_INPUT_CHECK(header_bytes <= file_bytes - 8, path, ": header length ", header_bytes,
                    " exceeds the ", file_bytes - 8,
                    " bytes after the length field (truncated file or not a safetensors file)");

  std::string header_text(header_bytes, '\0');
  in.read(header_text.data(), static_cast<std::streamsize>(header_bytes));
  QARAC_INPUT_CHECK(in, path, ": cannot read the ", header_bytes, "-byte header");
  json header;
  try {
    header = json::parse(header_text);
  } catch (const json::parse_error& e) {
    throw InputError(
        detail::concat(path, ": header is not valid JSON (", printable(e.what()), ")"));
  }
  QARAC_INPUT_CHECK(header.is_object(), path, ": header is ", json_snippet(header),
                    ", expected a JSON object");

  const uint64_t data_start = 8 + header_bytes;
  const HeaderParser parser(path, file_bytes - data_start);
  std::vector<Entry> entries;
  for (const auto& [name, value] : header.items()) {
    if (name == "__metadata__") {
      QARAC_INPUT_CHECK(value.is_object(), path, ": __metadata__ is ", json_snippet(value),
                        ", expected an object of strings");
      for (const auto& [key, text] : value.items()) {
        QARAC_INPUT_CHECK(text.is_string(), path, ": __metadata__ '", printable(key), "' is ",
                          json_snippet(text), ", expected a string");
        if (metadata) (*metadata)[key] = text.get<std::string>();
      }
      continue;
    }
    entries.push_back(parser.parse_entry(name, value));
  }
  parser.check_no_overlap(entries);

  // Everything checked: each tensor is read straight into its buffer (F16 through a staging copy).
  TensorMap tensors;
  for (const Entry& e : entries) {
    Tensor t = Tensor::empty(e.shape, e.type->dtype);
    const uint64_t bytes = e.end - e.begin;
    std::vector<uint16_t> half;
    char* dst = static_cast<char*>(t.raw());
    if (e.type->bytes != dtype_size(e.type->dtype)) {
      half.resize(static_cast<size_t>(t.numel()));
      dst = reinterpret_cast<char*>(half.data());
    }
    in.seekg(static_cast<std::streamoff>(data_start + e.begin));
    in.read(dst, static_cast<std::streamsize>(bytes));
    QARAC_INPUT_CHECK(in, path, ": tensor '", printable(e.name), "': cannot read ", bytes,
                      " bytes at data offset ", e.begin, " (file changed or I/O error)");
    if (!half.empty()) {
      float* f = t.data<float>();
      for (size_t i = 0; i < half.size(); ++i) f[i] = half_to_float(half[i]);
    }
    tensors.emplace(e.name, std::move(t));
  }
  return tensors;
}

void write_safetensors(const std::string& path, const TensorMap& tensors,
                       const Metadata& metadata) {
  // ordered_json keeps "__metadata__" first and the tensors in the map's (sorted) order.
  nlohmann::ordered_json header = nlohmann::ordered_json::object();
  if (!metadata.empty()) header["__metadata__"] = metadata;
  uint64_t offset = 0;
  for (const auto& [name, t] : tensors) {
    QARAC_CHECK(name != "__metadata__", "write_safetensors: '__metadata__' is not a tensor name");
    QARAC_CHECK(t.defined(), "write_safetensors: tensor '", name, "' is undefined");
    header[name] = {{"dtype", stored_name(t.dtype())},
                    {"shape", t.shape()},
                    {"data_offsets", {offset, offset + t.nbytes()}}};
    offset += t.nbytes();
  }
  std::string header_text = header.dump();
  // Padding with spaces to a multiple of 8 keeps the data section aligned, as the reference does.
  header_text.append((8 - header_text.size() % 8) % 8, ' ');
  const uint64_t header_bytes = header_text.size();

  AtomicFile file(path);
  file.write(&header_bytes, 8);
  file.write(header_text.data(), header_text.size());
  for (const auto& [name, t] : tensors) {
    // One tensor at a time, so a model on the GPU is never held twice on the host.
    Tensor host = t.to(Device::cpu());
    if (!host.is_contiguous()) host = host.clone();
    file.write(host.raw(), host.nbytes());
  }
  file.commit();
}

}  // namespace qarac::io
