// Text and vector files of the two model programs. The .npy format (NumPy's format 1.0): the
// magic "\x93NUMPY", the version, a little-endian u16 header length, a Python dict literal
// padded with spaces to a 64-byte boundary and ended by '\n', then the raw data.
#include "cli/vector_files.h"

#include <hdf5.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <memory>
#include <regex>

#include "core/atomic_file.h"
#include "core/log.h"
#include "core/hdf5.h"
#include "core/memory.h"
#include "data/json_brief.h"
#include "data/line_file.h"
#include "data/readers.h"

namespace qarac::cli {
namespace {

// x as a float; beyond float's range the infinity of its sign (a plain conversion is undefined
// behaviour there), which the readers then refuse as not finite.
float to_float(double x) {
  if (std::fabs(x) > std::numeric_limits<float>::max())
    return std::signbit(x) ? -std::numeric_limits<float>::infinity() : std::numeric_limits<float>::infinity();
  return static_cast<float>(x);
}

constexpr char kNpyMagic[] = "\x93NUMPY";

// Whether `path` ends in `suffix` (lower case), in any case: "V.NPY" is a .npy file.
bool ends_with(const std::string& path, const std::string& suffix) {
  if (path.size() < suffix.size()) return false;
  return std::equal(suffix.begin(), suffix.end(), path.end() - static_cast<std::ptrdiff_t>(suffix.size()),
                    [](char s, char p) { return s == std::tolower(static_cast<unsigned char>(p)); });
}

bool json_lines(const std::string& path) {
  const std::string name = data::without_gz_suffix(path);  // a gzip file is read as its text
  return name == "-" || ends_with(name, ".jsonl") || ends_with(name, ".ndjson") || ends_with(name, ".json");
}

// Every line of `path` ("-": standard input), read whole, each held to LineFile's longest (a
// binary file given by mistake fails at once) and a read error said (a closed standard input
// too). A UTF-8 byte-order mark is not text (qarac-prep drops it too).
std::vector<std::string> lines_of(const std::string& path) {
  std::unique_ptr<data::LineFile> file;
  if (path == "-") {
    file = std::make_unique<data::LineFile>(0, "standard input");
  } else {
    std::error_code ec;
    QARAC_INPUT_CHECK(!std::filesystem::is_directory(path, ec), path, ": is a directory, not a file of texts");
    file = std::make_unique<data::LineFile>(path);
  }
  std::vector<std::string> lines;
  std::string line;
  while (file->next(line)) {
    if (lines.empty() && line.rfind("\xEF\xBB\xBF", 0) == 0) line.erase(0, 3);
    lines.push_back(line);
  }
  return lines;
}

// InputError at `where` for a line with a NUL byte, which no text holds, and which would end a
// JSON line early for the parser (what follows it would be dropped unsaid).
void check_no_nul(const std::string& line, const std::string& where) {
  const size_t nul = line.find('\0');
  QARAC_INPUT_CHECK(nul == std::string::npos, where, ": a NUL byte at byte ", nul,
                    ", which no text holds (a UTF-16 file? convert it: iconv -f UTF-16 -t UTF-8)");
}

// InputError at `where` for text no tokenizer should be given: invalid UTF-8 or a NUL byte (the
// checks qarac-prep makes of its inputs).
void check_text(const std::string& text, const std::string& where) {
  const size_t bad = data::find_invalid_utf8(text);
  QARAC_INPUT_CHECK(bad == std::string::npos, where, ": invalid UTF-8 at byte ", bad,
                    " (convert the file to UTF-8, e.g. with iconv)");
  check_no_nul(text, where);
}

// A .npy header's text in a message: its padding and closing newline left out.
std::string header_text(const std::string& header) {
  return printable(header.substr(0, header.find_last_not_of(" \n") + 1));
}

// A dimension of a .npy shape: InputError beyond what any file could hold.
int64_t npy_dimension(const std::string& digits, const std::string& path) {
  const size_t first = digits.find_first_not_of('0');
  const std::string value = first == std::string::npos ? "0" : digits.substr(first);
  QARAC_INPUT_CHECK(value.size() <= 15, path, ": a dimension of ", value, " in the shape is larger than any file");
  return std::stoll(value);
}

void write_npy(const std::string& path, const Vectors& v) {
  std::string header = "{'descr': '<f4', 'fortran_order': False, 'shape': (" +
                       std::to_string(v.rows) + ", " + std::to_string(v.cols) + "), }";
  const size_t fixed = 6 + 2 + 2;  // magic, version, header length
  header.append(64 - (fixed + header.size() + 1) % 64, ' ');
  header += '\n';
  std::string bytes(kNpyMagic, 6);
  bytes += '\x01';
  bytes += '\x00';
  const auto length = static_cast<uint16_t>(header.size());
  bytes += static_cast<char>(length & 0xff);
  bytes += static_cast<char>(length >> 8);
  bytes += header;
  AtomicFile file(path);
  file.write(bytes.data(), bytes.size());
  file.write(v.values.data(), v.values.size() * sizeof(float));  // x86 and ARM are little-endian
  file.commit();
}

void write_h5(const std::string& path, const Vectors& v) {
  silence_hdf5_stack_printing();
  AtomicFile out(path, AtomicFile::by_path);
  // Failures here are the file's (a full disk, an I/O error, a folder that cannot be written),
  // not the program's; the closes are checked, as they write what HDF5 still buffers.
  const std::string what = path + ": cannot write the vectors";
  H5Id file = hdf5_file_id(H5Fcreate(out.temp_path().c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT), H5Fclose, what);
  const hsize_t dims[2] = {static_cast<hsize_t>(v.rows), static_cast<hsize_t>(v.cols)};
  H5Id space = QARAC_H5_ID(H5Screate_simple(2, dims, nullptr), H5Sclose);
  const H5Id untimed = untimed_creation(H5P_DATASET_CREATE);  // the same vectors, the same bytes
  H5Id set = hdf5_file_id(H5Dcreate2(file.get(), "vectors", H5T_IEEE_F32LE, space.get(), H5P_DEFAULT, untimed.get(),
                                     H5P_DEFAULT), H5Dclose, what);
  check_hdf5_file(H5Dwrite(set.get(), H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, v.values.data()), what);
  check_hdf5_file(set.close(), what);
  check_hdf5_file(file.close(), what);
  out.commit();
}

Vectors read_npy(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  QARAC_INPUT_CHECK(in.good(), path, ": cannot read");
  char start[10];
  in.read(start, sizeof start);
  QARAC_INPUT_CHECK(in.gcount() == 10 && std::memcmp(start, kNpyMagic, 6) == 0, path,
                    ": not a .npy file (no \\x93NUMPY magic)");
  QARAC_INPUT_CHECK(start[6] == 1, path, ": .npy format version ", int(start[6]), " (1 is read)");
  const size_t length = static_cast<unsigned char>(start[8]) | (static_cast<unsigned char>(start[9]) << 8);
  std::string header(length, '\0');
  in.read(header.data(), static_cast<std::streamsize>(length));
  QARAC_INPUT_CHECK(static_cast<size_t>(in.gcount()) == length, path, ": truncated in its header (",
                    in.gcount(), " of ", length, " bytes)");
  std::smatch m;
  QARAC_INPUT_CHECK(std::regex_search(header, m, std::regex("'descr': *'(<f4|<f8)'")), path,
                    ": the array's dtype is not little-endian f32 or f64: ", header_text(header));
  const bool f64 = m[1] == "<f8";
  QARAC_INPUT_CHECK(std::regex_search(header, std::regex("'fortran_order': *False")), path,
                    ": a Fortran-order array (C order is read)");
  QARAC_INPUT_CHECK(std::regex_search(header, m, std::regex("'shape': *\\( *([0-9]+) *, *([0-9]+) *,? *\\)")),
                    path, ": not a 2-D array [vectors, size]: ", header_text(header));
  Vectors v;
  v.rows = npy_dimension(m[1], path);
  v.cols = npy_dimension(m[2], path);
  // The shape against the bytes the file holds, before anything is allocated (rows · cols · 8 is
  // compared by division: it may not fit 64 bits). A pipe cannot tell its size: its data is read as
  // it comes, so that a shape the data does not back costs no more memory than the data.
  const uint64_t element = f64 ? 8 : 4;
  const auto rows = static_cast<uint64_t>(v.rows), cols = static_cast<uint64_t>(v.cols);
  const std::streamoff data_begin = in.tellg();
  uint64_t available = UINT64_MAX;
  if (data_begin >= 0 && in.seekg(0, std::ios::end)) {
    available = static_cast<uint64_t>(in.tellg() - data_begin);
    in.seekg(data_begin);
  }
  in.clear();
  QARAC_INPUT_CHECK(cols == 0 || rows <= available / element / cols, path, ": the shape (", v.rows, ", ", v.cols,
                    ") needs more than ",
                    available == UINT64_MAX ? std::string("any file holds")
                                            : "the " + std::to_string(available) + " data bytes there (truncated)");
  const size_t count = static_cast<size_t>(rows * cols);
  const size_t bytes = count * element;
  std::vector<char> raw;
  constexpr size_t kChunk = size_t{1} << 24;
  while (raw.size() < bytes) {
    const size_t begin = raw.size(), n = std::min(kChunk, bytes - begin);
    raw.resize(begin + n);
    in.read(raw.data() + begin, static_cast<std::streamsize>(n));
    QARAC_INPUT_CHECK(static_cast<size_t>(in.gcount()) == n, path, ": truncated (",
                      begin + static_cast<size_t>(in.gcount()), " of ", bytes, " data bytes)");
  }
  v.values.resize(count);
  for (size_t i = 0; i < count; ++i) {
    if (f64) {
      double x;
      std::memcpy(&x, raw.data() + 8 * i, 8);
      v.values[i] = to_float(x);
    } else {
      std::memcpy(&v.values[i], raw.data() + 4 * i, 4);
    }
  }
  return v;
}

}  // namespace

Device parse_device(const std::string& name) {
  QARAC_INPUT_CHECK(name == "cpu" || name == "cuda", "--device must be cpu or cuda, got '", name, "'");
  if (name == "cpu") return Device::cpu();
  QARAC_INPUT_CHECK(cuda_device_count() > 0, "--device cuda: no CUDA device is available");
  return Device::cuda(0);
}

bool json_lines_input(const std::string& path) { return json_lines(path) && path != "-"; }

void check_output_spares(const std::string& output, const std::vector<std::string>& inputs,
                         const std::vector<ReadFolder>& folders) {
  namespace fs = std::filesystem;
  if (output == "-") return;
  std::error_code ec;
  for (const std::string& input : inputs)
    QARAC_INPUT_CHECK(input == "-" || input.empty() || !fs::equivalent(output, input, ec), "--output ", output,
                      " is the input ", input, ": writing it would destroy what is read");
  const fs::path written = fs::weakly_canonical(fs::absolute(output, ec), ec);
  for (const ReadFolder& folder : folders) {
    if (folder.path.empty()) continue;
    fs::path kept = fs::weakly_canonical(fs::absolute(folder.path, ec), ec);
    if (!kept.empty() && kept.filename().empty()) kept = kept.parent_path();  // "dec/" is "dec"
    const bool inside = std::mismatch(kept.begin(), kept.end(), written.begin(), written.end()).first == kept.end();
    QARAC_INPUT_CHECK(kept.empty() || !inside, "--output ", output, " is inside the ", folder.option, " folder ",
                      folder.path, ": writing it would damage ", folder.holds);
  }
}

std::vector<std::string> read_texts(const std::string& path, const std::string& field) {
  const bool json = json_lines_input(path);
  std::vector<std::string> texts;
  const std::vector<std::string> lines = lines_of(path);
  std::vector<size_t> skipped;  // line numbers
  for (size_t i = 0; i < lines.size(); ++i) {
    if (lines[i].empty()) {
      skipped.push_back(i + 1);
      continue;
    }
    const std::string where = (path == "-" ? std::string("standard input") : path) + ":" + std::to_string(i + 1);
    if (!json) {
      check_text(lines[i], where);
      texts.push_back(lines[i]);
      continue;
    }
    check_no_nul(lines[i], where);
    const nlohmann::json j = nlohmann::json::parse(lines[i], nullptr, /*allow_exceptions=*/false);
    QARAC_INPUT_CHECK(!j.is_discarded(), where, ": not JSON");
    if (j.is_string()) {
      texts.push_back(j.get<std::string>());
    } else {
      QARAC_INPUT_CHECK(j.is_object() && j.contains(field) && j[field].is_string(), where,
                        ": no string field \"", field, "\" (see --field)");
      texts.push_back(j[field].get<std::string>());
    }
    check_text(texts.back(), where + "'s text");  // a JSON string may hold \u0000
  }
  // Said, because row i of the output is then not line i of the input.
  if (!skipped.empty())
    log::warn(path, ": ", skipped.size(),
              skipped.size() == 1 ? " empty line skipped (line " : " empty lines skipped (the first: line ",
              skipped.front(), "): the output has a row per non-empty line");
  if (texts.empty()) log::warn(path, ": holds no text: the output has no rows");
  return texts;
}

void write_vectors(const std::string& path, const Vectors& v) {
  if (ends_with(path, ".npy")) return write_npy(path, v);
  if (ends_with(path, ".h5")) return write_h5(path, v);
  QARAC_INPUT_CHECK(json_lines(path), path, ": unknown output format (.npy, .h5, JSON lines: .jsonl, .ndjson, ",
                    ".json, or - for JSON lines on standard output)");
  std::string text;
  char buf[32];
  for (int64_t r = 0; r < v.rows; ++r) {
    text += "{\"vector\": [";
    for (int64_t c = 0; c < v.cols; ++c) {
      std::snprintf(buf, sizeof buf, "%s%.9g", c ? ", " : "", double(v.values[static_cast<size_t>(r * v.cols + c)]));
      text += buf;
    }
    text += "]}\n";
  }
  write_text(path, text);
}

void write_text(const std::string& path, const std::string& text) {
  if (path == "-") {
    const bool written = std::fwrite(text.data(), 1, text.size(), stdout) == text.size() && std::fflush(stdout) == 0;
    const int err = errno;
    QARAC_INPUT_CHECK(written, "standard output: write failed: ", std::strerror(err));
    return;
  }
  AtomicFile file(path);
  file.write(text.data(), text.size());
  file.commit();
}

std::vector<std::vector<int32_t>> tokenize_texts(const data::Tokenizer& tokenizer,
                                                 const std::vector<std::string>& texts,
                                                 int64_t max_tokens, const std::string& source) {
  std::vector<std::vector<int32_t>> ids;
  size_t cut = 0, first = 0;
  for (size_t i = 0; i < texts.size(); ++i) {
    ids.push_back(tokenizer.encode(texts[i]));
    if (static_cast<int64_t>(ids.back().size()) <= max_tokens) continue;
    if (cut++ == 0) first = i;
    data::truncate_ids(ids.back(), max_tokens, tokenizer.eos_id());
  }
  if (cut > 0)
    log::warn(source, ": ", cut, " of ", texts.size(), " texts cut to the model's ", max_tokens,
              " tokens (the first: text ", first + 1, ")");
  return ids;
}

Vectors read_vectors(const std::string& path) {
  if (ends_with(path, ".npy")) {
    Vectors v = read_npy(path);
    // NaN or ±inf would decode to garbage without a word.
    for (size_t i = 0; i < v.values.size(); ++i)
      QARAC_INPUT_CHECK(std::isfinite(v.values[i]), path, ": row ", i / static_cast<size_t>(v.cols), " (from 0) has ",
                        v.values[i], " at column ", i % static_cast<size_t>(v.cols), ": vectors must be finite");
    return v;
  }
  QARAC_INPUT_CHECK(json_lines(path), path, ": unknown vector format (.npy, or JSON lines: .jsonl, .ndjson, .json)");
  Vectors v;
  const std::vector<std::string> lines = lines_of(path);
  for (size_t i = 0; i < lines.size(); ++i) {
    if (lines[i].empty()) continue;
    const std::string where = path + ":" + std::to_string(i + 1);
    check_no_nul(lines[i], where);
    nlohmann::json j = nlohmann::json::parse(lines[i], nullptr, /*allow_exceptions=*/false);
    QARAC_INPUT_CHECK(!j.is_discarded(), where, ": not JSON");
    if (j.is_object() && j.contains("vector")) j = j["vector"];
    QARAC_INPUT_CHECK(j.is_array() && !j.empty(), where, ": not a vector ({\"vector\": [...]} or [...])");
    if (v.rows == 0) v.cols = static_cast<int64_t>(j.size());
    QARAC_INPUT_CHECK(static_cast<int64_t>(j.size()) == v.cols, where, ": ", j.size(),
                      " numbers, the first vector has ", v.cols);
    for (const auto& x : j) {
      // A whole file of one JSON array of vectors is the usual mistake: say how it is read.
      QARAC_INPUT_CHECK(x.is_number(), where, ": ", data::json_brief(x), " is not a number",
                        x.is_array() ? " (vectors are read as JSON lines: one vector per line, not one array of them)"
                                     : "");
      v.values.push_back(to_float(x.get<double>()));
      QARAC_INPUT_CHECK(std::isfinite(v.values.back()), where, ": ", x.get<double>(), " is beyond the float range");
    }
    ++v.rows;
  }
  return v;
}

}  // namespace qarac::cli
