// Reading task-stream files (HDF5, C API; the writer is shards_writer.cpp). A task stream is
// input to a run: everything in it is checked before it is trusted (types, ranks, extents against
// the bytes stored, offsets, the content checksum), and every failure, HDF5's included (a corrupt
// deflated chunk), is a one-line InputError naming the file and the dataset. A sealed stream's
// bytes are checked before HDF5 parses them (core/hdf5_seal.h): damaged metadata can crash HDF5.
#include "data/shards.h"

#include <algorithm>
#include <cstring>
#include <fstream>
#include <new>

#include "core/atomic_file.h"
#include "core/error.h"
#include "core/hash.h"
#include "data/stream_layout.h"

namespace qarac::data {

namespace stream {

std::string field_path(Task task, int field, const char* what) {
  return detail::concat("fields/", task_fields(task)[field], "/", what);
}

uint64_t content_checksum(const std::vector<DatasetDigest>& datasets) {
  std::vector<uint64_t> words;
  for (const DatasetDigest& d : datasets) {
    words.push_back(hash64(d.name.data(), d.name.size()));
    words.push_back(d.count);
    words.push_back(d.hash);
  }
  return hash64(words.data(), words.size() * sizeof(uint64_t));
}

}  // namespace stream

namespace {

using stream::field_path;
using stream::kCandidateExamples;
using stream::kCandidateOffsets;
using stream::kCandidateTokens;

// Deflate cannot shrink data more than 1032:1; a filtered dataset whose extent claims more bytes
// than that times its storage lists chunks that were never written (HDF5 would hand us fill
// values) and would have us allocate what a few bytes of header claim.
constexpr uint64_t kMaxDeflateRatio = 1100;
// Attributes are names and hashes of a few dozen bytes; a larger one is damage.
constexpr size_t kMaxAttributeBytes = 1 << 20;
// Elements of the candidates hashed per read: their checksum needs no copy of them in memory.
constexpr int64_t kHashBlock = int64_t{1} << 20;

[[noreturn]] void bad_file(const std::string& path, const std::string& what) {
  throw InputError(path + ": not a valid task stream: " + what);
}

bool has_attr(hid_t loc, const char* name) { return H5Aexists(loc, name) > 0; }
bool has_link(hid_t loc, const char* name) { return H5Lexists(loc, name, H5P_DEFAULT) > 0; }

// An attribute of `loc`, its type, and its class, checked to be `cls`.
struct Attribute {
  H5Id attr, type;
};
Attribute open_attr(const std::string& path, hid_t loc, const char* name, H5T_class_t cls, const char* kind) {
  if (!has_attr(loc, name)) bad_file(path, detail::concat("no attribute '", name, "'"));
  const std::string what = detail::concat(path, ": cannot read attribute '", name, "'");
  Attribute a;
  a.attr = hdf5_file_id(H5Aopen(loc, name, H5P_DEFAULT), H5Aclose, what);
  a.type = hdf5_file_id(H5Aget_type(a.attr.get()), H5Tclose, what);
  H5Id space = hdf5_file_id(H5Aget_space(a.attr.get()), H5Sclose, what);
  if (H5Tget_class(a.type.get()) != cls || H5Sget_simple_extent_npoints(space.get()) != 1 ||
      (cls == H5T_STRING && H5Tis_variable_str(a.type.get()) > 0))
    bad_file(path, detail::concat("attribute '", name, "' is not ", kind));
  return a;
}

std::string read_string_attr(const std::string& path, hid_t loc, const char* name) {
  const Attribute a = open_attr(path, loc, name, H5T_STRING, "a fixed-length string");
  const size_t size = H5Tget_size(a.type.get());
  if (size == 0 || size > kMaxAttributeBytes)
    bad_file(path, detail::concat("attribute '", name, "' claims ", size, " bytes"));
  std::string value(size, '\0');
  check_hdf5_file(H5Aread(a.attr.get(), a.type.get(), value.data()),
                  detail::concat(path, ": cannot read attribute '", name, "'"));
  value.resize(strnlen(value.c_str(), size));
  return value;
}

template <class T>
T read_int_attr(const std::string& path, hid_t loc, const char* name, hid_t mem_type) {
  const Attribute a = open_attr(path, loc, name, H5T_INTEGER, "an integer");
  T value = 0;
  check_hdf5_file(H5Aread(a.attr.get(), mem_type, &value),
                  detail::concat(path, ": cannot read attribute '", name, "'"));
  return value;
}

int64_t read_int_attr(const std::string& path, hid_t loc, const char* name) {
  return read_int_attr<int64_t>(path, loc, name, H5T_NATIVE_INT64);
}

// A one-dimensional dataset of class `cls` whose extent is backed by stored bytes.
struct Dataset {
  H5Id dset;
  int64_t length = 0;
};

Dataset open_dataset(const std::string& path, hid_t loc, const std::string& name, H5T_class_t cls) {
  if (!has_link(loc, name.c_str())) bad_file(path, "no dataset '" + name + "'");
  const std::string what = path + ": cannot read '" + name + "'";
  Dataset d;
  d.dset = hdf5_file_id(H5Dopen2(loc, name.c_str(), H5P_DEFAULT), H5Dclose, what);
  H5Id type = hdf5_file_id(H5Dget_type(d.dset.get()), H5Tclose, what);
  if (H5Tget_class(type.get()) != cls || (cls == H5T_STRING && H5Tis_variable_str(type.get()) > 0))
    bad_file(path, detail::concat("'", name, "' is not ", cls == H5T_STRING ? "fixed-length text" : "integers"));
  H5Id space = hdf5_file_id(H5Dget_space(d.dset.get()), H5Sclose, what);
  if (H5Sget_simple_extent_ndims(space.get()) != 1) bad_file(path, "'" + name + "' is not 1-D");
  hsize_t n = 0;
  check_hdf5_file(H5Sget_simple_extent_dims(space.get(), &n, nullptr), what);
  H5Id dcpl = hdf5_file_id(H5Dget_create_plist(d.dset.get()), H5Pclose, what);
  const bool filtered = H5Pget_nfilters(dcpl.get()) > 0;
  const uint64_t stored = H5Dget_storage_size(d.dset.get());
  uint64_t bytes = 0, limit = 0;
  const bool overflow = __builtin_mul_overflow(n, H5Tget_size(type.get()), &bytes) ||
                        __builtin_mul_overflow(stored, filtered ? kMaxDeflateRatio : 1, &limit);
  if (n > static_cast<hsize_t>(INT64_MAX) || overflow || bytes > limit)
    bad_file(path, detail::concat("'", name, "' claims ", n, " elements but stores ", stored, " bytes"));
  d.length = static_cast<int64_t>(n);
  return d;
}

// Elements [begin, begin+count) of a 1-D dataset, converted to T.
template <class T>
std::vector<T> read_range(const std::string& path, const H5Id& dset, const std::string& name, hid_t mem_type,
                          int64_t begin, int64_t count) {
  std::vector<T> out(static_cast<size_t>(count));
  if (count == 0) return out;
  const std::string what = path + ": cannot read '" + name + "'";
  const hsize_t start = static_cast<hsize_t>(begin), n = static_cast<hsize_t>(count);
  H5Id file_space = hdf5_file_id(H5Dget_space(dset.get()), H5Sclose, what);
  check_hdf5_file(H5Sselect_hyperslab(file_space.get(), H5S_SELECT_SET, &start, nullptr, &n, nullptr), what);
  H5Id mem_space = hdf5_file_id(H5Screate_simple(1, &n, nullptr), H5Sclose, what);
  check_hdf5_file(H5Dread(dset.get(), mem_type, mem_space.get(), file_space.get(), H5P_DEFAULT, out.data()),
                  what);
  return out;
}

template <class T>
std::vector<T> read_table(const std::string& path, hid_t loc, const char* name, hid_t mem_type) {
  const Dataset d = open_dataset(path, loc, name, H5T_INTEGER);
  return read_range<T>(path, d.dset, name, mem_type, 0, d.length);
}

std::vector<std::string> read_strings(const std::string& path, hid_t loc, const char* name) {
  const Dataset d = open_dataset(path, loc, name, H5T_STRING);
  const std::string what = path + ": cannot read '" + name + "'";
  H5Id type = hdf5_file_id(H5Dget_type(d.dset.get()), H5Tclose, what);
  const size_t width = H5Tget_size(type.get());
  std::vector<char> packed(static_cast<size_t>(d.length) * width);  // bounded by the bytes stored
  if (d.length > 0)
    check_hdf5_file(H5Dread(d.dset.get(), type.get(), H5S_ALL, H5S_ALL, H5P_DEFAULT, packed.data()), what);
  std::vector<std::string> out;
  for (int64_t i = 0; i < d.length; ++i) {
    const char* s = packed.data() + i * width;
    out.emplace_back(s, strnlen(s, width));
  }
  return out;
}

// The ends of a ragged array's offsets: one per `counted` element and one more, from 0 to
// `total`, the length of the `indexed` dataset. Checked when a file is opened; the offsets in
// between are checked on every read (read_offsets).
void check_offset_ends(const std::string& path, const Dataset& offsets, const std::string& name, int64_t count,
                       const char* counted, int64_t total, const char* indexed) {
  if (offsets.length - 1 != count)
    bad_file(path, detail::concat("'", name, "' holds ", offsets.length, " offsets for ", count, " ", counted,
                                  " (one more than the ", counted, " expected)"));
  const int64_t first = read_range<int64_t>(path, offsets.dset, name, H5T_NATIVE_INT64, 0, 1)[0];
  const int64_t last = read_range<int64_t>(path, offsets.dset, name, H5T_NATIVE_INT64, count, 1)[0];
  if (first != 0 || last != total)
    bad_file(path, detail::concat("'", name, "' spans [", first, ", ", last, "], ", indexed, " [0, ", total, "]"));
}

// Offsets [begin, end] of a ragged array, checked to never decrease and to stay within
// [0, total] before they are trusted to index `indexed`; `unit` names what they delimit.
std::vector<int64_t> read_offsets(const std::string& path, const H5Id& dset, const std::string& name,
                                  int64_t begin, int64_t end, int64_t total, const char* indexed,
                                  const char* unit) {
  std::vector<int64_t> offsets = read_range<int64_t>(path, dset, name, H5T_NATIVE_INT64, begin, end - begin + 1);
  for (size_t i = 0; i < offsets.size(); ++i)
    if (offsets[i] < (i == 0 ? 0 : offsets[i - 1]) || offsets[i] > total)
      bad_file(path, detail::concat("'", name, "' decreases or overruns ", indexed, " at ", unit, " ",
                                    begin + static_cast<int64_t>(i)));
  return offsets;
}

template <class T>
stream::DatasetDigest digest_of(const std::string& name, const std::vector<T>& values) {
  return {name, values.size(), hash64(values.data(), values.size() * sizeof(T))};
}

// The digest of a whole dataset of T, read a block at a time.
template <class T>
stream::DatasetDigest digest_blocks(const std::string& path, const H5Id& dset, const std::string& name,
                                    hid_t mem_type, int64_t length) {
  Hash64 h;
  for (int64_t begin = 0; begin < length; begin += kHashBlock) {
    const std::vector<T> block =
        read_range<T>(path, dset, name, mem_type, begin, std::min(kHashBlock, length - begin));
    h.bytes(block.data(), block.size() * sizeof(T));
  }
  return {name, static_cast<uint64_t>(length), h.value()};
}

// The tasks with a stream of their own: the rehearsal (masked_lm) reads encode_decode's.
Task task_named(const std::string& path, const std::string& name) {
  for (int t = 0; t < kQaracTaskCount; ++t)
    if (name == task_name(static_cast<Task>(t))) return static_cast<Task>(t);
  bad_file(path, "unknown task '" + printable(name) + "'");
}

}  // namespace

// ---- A publish that did not finish ----------------------------------------------------------
std::optional<std::vector<std::string>> unfinished_publish(const std::string& dir) {
  // A FIFO there (in a folder a group shares) would hold qarac-prep and every reader in its open.
  check_input_file(dir + "/" + kPublishingMarker);
  std::ifstream in(dir + "/" + kPublishingMarker);
  if (!in) return std::nullopt;
  std::vector<std::string> names;
  std::string line;
  std::getline(in, line);  // who published
  while (std::getline(in, line))
    if (!line.empty()) names.push_back(line);
  return names;
}

void check_publishing_finished(const std::string& dir) {
  const std::optional<std::vector<std::string>> names = unfinished_publish(dir);
  if (!names) return;
  const std::string list = joined(*names);
  throw InputError(detail::concat(dir, "/", kPublishingMarker, ": a qarac-prep stopped while publishing its streams here (",
                                  list.empty() ? "unnamed" : list,
                                  "): some may be its, others older; rerun it (or remove this file to keep them)"));
}

// ---- TaskStreamFile ------------------------------------------------------------------------
TaskStreamFile::TaskStreamFile(const std::string& path) : path_(path) {
  file_ = open_sealed_hdf5(path, "task stream", "rerun qarac-prep");
  const hid_t root = file_.get();

  const std::string format = read_string_attr(path, root, "format");
  if (format != kStreamFormat) bad_file(path, "format is '" + printable(format) + "'");
  const int64_t version = read_int_attr(path, root, "version");
  if (version != kStreamVersion)
    throw InputError(detail::concat(path, ": task stream version ", version, ", this build reads ",
                                    kStreamVersion, " (rerun qarac-prep)"));
  info_.task = task_named(path, read_string_attr(path, root, "task"));
  info_.examples = read_int_attr(path, root, "examples");
  if (info_.examples < 0) bad_file(path, "negative example count");
  info_.tokenizer_hash = read_string_attr(path, root, "tokenizer_hash");
  info_.special_tokens = read_int_attr(path, root, "special_tokens") != 0;
  info_.max_length = read_int_attr(path, root, "max_length");
  info_.created_by = read_string_attr(path, root, "created_by");
  // Optional: streams of qarac-preps before the checksum have none.
  if (has_attr(root, "checksum")) info_.checksum = read_int_attr<uint64_t>(path, root, "checksum", H5T_NATIVE_UINT64);

  // Every field must hold examples+1 offsets that start at 0 and end at its token count.
  for (size_t f = 0; f < task_fields(info_.task).size(); ++f) {
    const std::string tokens_name = field_path(info_.task, static_cast<int>(f), "tokens");
    const std::string offsets_name = field_path(info_.task, static_cast<int>(f), "offsets");
    if (!has_link(root, "fields") || !has_link(root, ("fields/" + task_fields(info_.task)[f]).c_str()))
      bad_file(path, "no field group 'fields/" + task_fields(info_.task)[f] + "'");
    Dataset tokens = open_dataset(path, root, tokens_name, H5T_INTEGER);
    Dataset offsets = open_dataset(path, root, offsets_name, H5T_INTEGER);
    check_offset_ends(path, offsets, offsets_name, info_.examples, "examples", tokens.length, "the tokens");
    info_.field_tokens.push_back(tokens.length);
    tokens_.push_back(std::move(tokens.dset));
    offsets_.push_back(std::move(offsets.dset));
  }
  if (task_has_label(info_.task)) {
    Dataset labels = open_dataset(path, root, "labels", H5T_INTEGER);
    if (labels.length != info_.examples) bad_file(path, "'labels' does not hold one label per example");
    labels_ = std::move(labels.dset);
  }
  // Optional: streams without candidates, those of older qarac-preps included, have no group.
  // The sentences are a ragged array like a field; the example offsets index the sentences.
  if (has_link(root, "candidates")) {
    if (info_.task != Task::question_answering)
      bad_file(path, detail::concat("a ", task_name(info_.task), " stream with candidates"));
    Dataset tokens = open_dataset(path, root, kCandidateTokens, H5T_INTEGER);
    Dataset offsets = open_dataset(path, root, kCandidateOffsets, H5T_INTEGER);
    Dataset examples = open_dataset(path, root, kCandidateExamples, H5T_INTEGER);
    info_.candidate_tokens = tokens.length;
    info_.candidates = offsets.length - 1;
    if (info_.candidates < 0) bad_file(path, detail::concat("'", kCandidateOffsets, "' is empty"));
    check_offset_ends(path, offsets, kCandidateOffsets, info_.candidates, "sentences", info_.candidate_tokens,
                      "the tokens");
    check_offset_ends(path, examples, kCandidateExamples, info_.examples, "examples", info_.candidates,
                      "the sentences");
    candidate_tokens_ = std::move(tokens.dset);
    candidate_offsets_ = std::move(offsets.dset);
    candidate_examples_ = std::move(examples.dset);
  }

  const auto src_paths = read_strings(path, root, "sources/path");
  const auto src_formats = read_strings(path, root, "sources/format");
  const auto src_lines = read_table<int64_t>(path, root, "sources/lines", H5T_NATIVE_INT64);
  const auto src_examples = read_table<int64_t>(path, root, "sources/examples", H5T_NATIVE_INT64);
  // Files of older qarac-preps have no candidate counts: they kept no candidates.
  const auto src_candidates = has_link(root, "sources/candidates")
      ? read_table<int64_t>(path, root, "sources/candidates", H5T_NATIVE_INT64)
      : std::vector<int64_t>(src_paths.size(), 0);
  const auto src_truncated = read_table<int64_t>(path, root, "sources/truncated", H5T_NATIVE_INT64);
  const auto skip_source = read_table<int32_t>(path, root, "skipped/source", H5T_NATIVE_INT32);
  const auto skip_reason = read_strings(path, root, "skipped/reason");
  const auto skip_count = read_table<int64_t>(path, root, "skipped/count", H5T_NATIVE_INT64);
  const size_t n_src = src_paths.size(), n_skip = skip_source.size();
  if (src_formats.size() != n_src || src_lines.size() != n_src || src_examples.size() != n_src ||
      src_candidates.size() != n_src || src_truncated.size() != n_src ||
      skip_reason.size() != n_skip || skip_count.size() != n_skip)
    bad_file(path, "the sources/skipped tables have columns of different lengths");
  for (size_t s = 0; s < n_src; ++s) {
    SourceInfo src;
    src.path = src_paths[s];
    src.format = src_formats[s];
    src.lines = src_lines[s];
    src.examples = src_examples[s];
    src.candidates = src_candidates[s];
    src.truncated = src_truncated[s];
    info_.sources.push_back(std::move(src));
  }
  for (size_t k = 0; k < n_skip; ++k) {
    if (skip_source[k] < 0 || static_cast<size_t>(skip_source[k]) >= n_src)
      bad_file(path, "'skipped/source' names a source that does not exist");
    int64_t& count = info_.sources[skip_source[k]].skipped[skip_reason[k]];
    if (skip_count[k] < 0 || __builtin_add_overflow(count, skip_count[k], &count))
      bad_file(path, "'skipped/count' holds a negative or overflowing count");
  }
}

void TaskStreamFile::check_holds(Task expected, const std::string& note) const {
  const std::string tail = note.empty() ? std::string() : " (" + note + ")";
  QARAC_INPUT_CHECK(task() == expected, path_, ": holds task ", task_name(task()), ", expected ", task_name(expected),
                    tail);
  QARAC_INPUT_CHECK(examples() > 0, path_, ": holds no example", tail);
}

Ragged TaskStreamFile::read_field(int field, int64_t begin, int64_t end) const {
  QARAC_CHECK(field >= 0 && static_cast<size_t>(field) < tokens_.size(), "field ", field,
              " out of range for ", task_name(info_.task));
  QARAC_CHECK(0 <= begin && begin <= end && end <= info_.examples, "example range [", begin, ", ",
              end, ") out of [0, ", info_.examples, ")");
  Ragged r;
  const std::string offsets_name = field_path(info_.task, field, "offsets");
  r.offsets = read_offsets(path_, offsets_[field], offsets_name, begin, end, info_.field_tokens[field],
                           "the tokens", "example");
  const int64_t base = r.offsets.front();
  r.tokens = read_range<int32_t>(path_, tokens_[field], field_path(info_.task, field, "tokens"), H5T_NATIVE_INT32,
                                 base, r.offsets.back() - base);
  for (int64_t& o : r.offsets) o -= base;
  return r;
}

std::vector<int64_t> TaskStreamFile::field_lengths(int field, int64_t begin, int64_t end) const {
  QARAC_CHECK(field >= 0 && static_cast<size_t>(field) < tokens_.size(), "field ", field,
              " out of range for ", task_name(info_.task));
  QARAC_CHECK(0 <= begin && begin <= end && end <= info_.examples, "example range [", begin, ", ",
              end, ") out of [0, ", info_.examples, ")");
  const std::vector<int64_t> offsets =
      read_offsets(path_, offsets_[field], field_path(info_.task, field, "offsets"), begin, end,
                   info_.field_tokens[field], "the tokens", "example");
  std::vector<int64_t> lengths(offsets.size() - 1);
  for (size_t i = 0; i < lengths.size(); ++i) lengths[i] = offsets[i + 1] - offsets[i];
  return lengths;
}

Candidates TaskStreamFile::read_candidates(int64_t begin, int64_t end) const {
  QARAC_CHECK(has_candidates(), path_, " holds no candidates");
  QARAC_CHECK(0 <= begin && begin <= end && end <= info_.examples, "example range [", begin, ", ",
              end, ") out of [0, ", info_.examples, ")");
  Candidates c;
  c.offsets = read_offsets(path_, candidate_examples_, kCandidateExamples, begin, end,
                           info_.candidates, "the sentences", "example");
  const int64_t first = c.offsets.front();
  Ragged& s = c.sentences;
  s.offsets = read_offsets(path_, candidate_offsets_, kCandidateOffsets, first, c.offsets.back(),
                           info_.candidate_tokens, "the tokens", "sentence");
  const int64_t base = s.offsets.front();
  s.tokens = read_range<int32_t>(path_, candidate_tokens_, kCandidateTokens, H5T_NATIVE_INT32, base,
                                 s.offsets.back() - base);
  for (int64_t& o : s.offsets) o -= base;
  for (int64_t& o : c.offsets) o -= first;
  return c;
}

std::vector<int8_t> TaskStreamFile::read_labels(int64_t begin, int64_t end) const {
  QARAC_CHECK(labels_.valid(), task_name(info_.task), " has no labels");
  QARAC_CHECK(0 <= begin && begin <= end && end <= info_.examples, "example range [", begin, ", ",
              end, ") out of [0, ", info_.examples, ")");
  std::vector<int8_t> labels = read_range<int8_t>(path_, labels_, "labels", H5T_NATIVE_INT8, begin, end - begin);
  for (size_t i = 0; i < labels.size(); ++i)
    if (labels[i] < -1 || labels[i] > 1)
      bad_file(path_, detail::concat("label ", static_cast<int>(labels[i]), " of example ",
                                     begin + static_cast<int64_t>(i), " is not -1, 0 or +1"));
  return labels;
}

void TaskStreamFile::add_candidate_digests(std::vector<stream::DatasetDigest>& digests) const {
  if (!has_candidates()) return;
  digests.push_back(
      digest_blocks<int32_t>(path_, candidate_tokens_, kCandidateTokens, H5T_NATIVE_INT32, info_.candidate_tokens));
  digests.push_back(
      digest_blocks<int64_t>(path_, candidate_offsets_, kCandidateOffsets, H5T_NATIVE_INT64, info_.candidates + 1));
  digests.push_back(
      digest_blocks<int64_t>(path_, candidate_examples_, kCandidateExamples, H5T_NATIVE_INT64, info_.examples + 1));
}

void TaskStreamFile::check_checksum(uint64_t computed) const {
  if (info_.checksum != 0 && computed != info_.checksum)
    throw InputError(detail::concat(path_, ": checksum mismatch (stored ", std::hex, std::showbase, info_.checksum,
                                    ", computed ", computed, "): the file is damaged (rerun qarac-prep)"));
}

uint64_t TaskStreamFile::verify() const {
  std::vector<stream::DatasetDigest> digests;
  for (size_t f = 0; f < tokens_.size(); ++f) {
    const std::string tokens = field_path(info_.task, static_cast<int>(f), "tokens");
    const int64_t length = info_.field_tokens[f];
    Hash64 h;
    for (int64_t begin = 0; begin < length; begin += kHashBlock) {
      const std::vector<int32_t> block =
          read_range<int32_t>(path_, tokens_[f], tokens, H5T_NATIVE_INT32, begin, std::min(kHashBlock, length - begin));
      for (const int32_t id : block)
        if (id < 0) bad_file(path_, detail::concat("'", tokens, "' holds the negative token id ", id));
      h.bytes(block.data(), block.size() * sizeof(int32_t));
    }
    digests.push_back({tokens, static_cast<uint64_t>(length), h.value()});
    digests.push_back(digest_blocks<int64_t>(path_, offsets_[f], field_path(info_.task, static_cast<int>(f), "offsets"),
                                             H5T_NATIVE_INT64, info_.examples + 1));
  }
  if (labels_.valid())
    digests.push_back(digest_blocks<int8_t>(path_, labels_, "labels", H5T_NATIVE_INT8, info_.examples));
  add_candidate_digests(digests);
  const uint64_t checksum = stream::content_checksum(digests);
  check_checksum(checksum);
  return checksum;
}

StreamContents TaskStreamFile::read_all() const {
  StreamContents c;
  std::vector<stream::DatasetDigest> digests;
  try {
    for (size_t f = 0; f < tokens_.size(); ++f) {
      c.fields.push_back(read_field(static_cast<int>(f), 0, info_.examples));
      const Ragged& r = c.fields.back();
      digests.push_back(digest_of(field_path(info_.task, static_cast<int>(f), "tokens"), r.tokens));
      digests.push_back(digest_of(field_path(info_.task, static_cast<int>(f), "offsets"), r.offsets));
    }
  } catch (const std::bad_alloc&) {
    int64_t tokens = 0;
    for (const int64_t n : info_.field_tokens) tokens += n;
    throw InputError(detail::concat(path_, ": the whole stream (", info_.examples, " examples, ", tokens,
                                    " tokens) does not fit in memory"));
  }
  if (labels_.valid()) {
    c.labels = read_labels(0, info_.examples);
    digests.push_back(digest_of("labels", c.labels));
  }
  add_candidate_digests(digests);
  c.checksum = stream::content_checksum(digests);
  check_checksum(c.checksum);
  // Ids index embedding tables: a negative one is never valid, the largest is checked against a
  // vocabulary by whoever knows it (the loader).
  for (size_t f = 0; f < c.fields.size(); ++f)
    for (const int32_t id : c.fields[f].tokens) {
      if (id < 0)
        bad_file(path_, detail::concat("'", field_path(info_.task, static_cast<int>(f), "tokens"),
                                       "' holds the negative token id ", id));
      c.max_token = std::max(c.max_token, id);
    }
  return c;
}

}  // namespace qarac::data
