// Task-stream files in HDF5 (C API). Datasets are one-dimensional, chunked and extendible, with
// the shuffle filter ahead of deflate: token ids and offsets are small integers whose high bytes
// are mostly zero, which byte-shuffling turns into long runs that deflate compresses well.
// Strings are fixed-length UTF-8 (NUL-padded) so that reading them needs no variable-length
// memory reclaiming, which differs between HDF5 1.10 and 1.12+.
#include "data/shards.h"

#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>

#include "core/check_hdf5.h"
#include "core/error.h"

namespace qarac::data {
namespace {

// ---- Writing ---------------------------------------------------------------------------------
H5Id create_extendible(hid_t loc, const char* name, hid_t type, int64_t chunk, int compression) {
  const hsize_t zero = 0, unlimited = H5S_UNLIMITED, chunk_dim = static_cast<hsize_t>(chunk);
  H5Id space = QARAC_H5_ID(H5Screate_simple(1, &zero, &unlimited), H5Sclose);
  H5Id dcpl = QARAC_H5_ID(H5Pcreate(H5P_DATASET_CREATE), H5Pclose);
  QARAC_CHECK_HDF5(H5Pset_chunk(dcpl.get(), 1, &chunk_dim));
  if (compression > 0) {
    QARAC_CHECK_HDF5(H5Pset_shuffle(dcpl.get()));
    QARAC_CHECK_HDF5(H5Pset_deflate(dcpl.get(), static_cast<unsigned>(compression)));
  }
  return QARAC_H5_ID(
      H5Dcreate2(loc, name, type, space.get(), H5P_DEFAULT, dcpl.get(), H5P_DEFAULT), H5Dclose);
}

// Appends `count` elements at position `written` of an extendible dataset.
void append_1d(const H5Id& dset, hid_t mem_type, const void* data, int64_t count, int64_t& written) {
  if (count == 0) return;
  const hsize_t start = static_cast<hsize_t>(written), n = static_cast<hsize_t>(count);
  const hsize_t size = start + n;
  QARAC_CHECK_HDF5(H5Dset_extent(dset.get(), &size));
  H5Id file_space = QARAC_H5_ID(H5Dget_space(dset.get()), H5Sclose);
  QARAC_CHECK_HDF5(H5Sselect_hyperslab(file_space.get(), H5S_SELECT_SET, &start, nullptr, &n, nullptr));
  H5Id mem_space = QARAC_H5_ID(H5Screate_simple(1, &n, nullptr), H5Sclose);
  QARAC_CHECK_HDF5(H5Dwrite(dset.get(), mem_type, mem_space.get(), file_space.get(), H5P_DEFAULT, data));
  written += count;
}

void write_attr(hid_t loc, const char* name, const std::string& value) {
  H5Id type = hdf5_string_type(value.size());
  H5Id space = QARAC_H5_ID(H5Screate(H5S_SCALAR), H5Sclose);
  H5Id attr = QARAC_H5_ID(H5Acreate2(loc, name, type.get(), space.get(), H5P_DEFAULT, H5P_DEFAULT),
                          H5Aclose);
  std::string padded = value;
  padded.resize(std::max<size_t>(value.size(), 1), '\0');
  QARAC_CHECK_HDF5(H5Awrite(attr.get(), type.get(), padded.data()));
}

void write_attr(hid_t loc, const char* name, int64_t value) {
  H5Id space = QARAC_H5_ID(H5Screate(H5S_SCALAR), H5Sclose);
  H5Id attr = QARAC_H5_ID(
      H5Acreate2(loc, name, H5T_STD_I64LE, space.get(), H5P_DEFAULT, H5P_DEFAULT), H5Aclose);
  QARAC_CHECK_HDF5(H5Awrite(attr.get(), H5T_NATIVE_INT64, &value));
}

// A small contiguous dataset of `count` elements written at once (metadata tables).
void write_table(hid_t loc, const char* name, hid_t file_type, hid_t mem_type, size_t count,
                 const void* values) {
  const hsize_t n = count;
  H5Id space = QARAC_H5_ID(H5Screate_simple(1, &n, nullptr), H5Sclose);
  H5Id dset = QARAC_H5_ID(
      H5Dcreate2(loc, name, file_type, space.get(), H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT), H5Dclose);
  if (n > 0) QARAC_CHECK_HDF5(H5Dwrite(dset.get(), mem_type, H5S_ALL, H5S_ALL, H5P_DEFAULT, values));
}

template <class T>
void write_table(hid_t loc, const char* name, hid_t file_type, hid_t mem_type,
                 const std::vector<T>& values) {
  write_table(loc, name, file_type, mem_type, values.size(), values.data());
}

void write_strings(hid_t loc, const char* name, const std::vector<std::string>& values) {
  size_t width = 1;
  for (const std::string& v : values) width = std::max(width, v.size());
  std::vector<char> packed(values.size() * width, '\0');
  for (size_t i = 0; i < values.size(); ++i)
    std::memcpy(packed.data() + i * width, values[i].data(), values[i].size());
  H5Id type = hdf5_string_type(width);
  write_table(loc, name, type.get(), type.get(), values.size(), packed.data());
}

H5Id create_group(hid_t loc, const char* name) {
  return QARAC_H5_ID(H5Gcreate2(loc, name, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT), H5Gclose);
}

// ---- Reading ---------------------------------------------------------------------------------
[[noreturn]] void bad_file(const std::string& path, const std::string& what) {
  throw InputError(path + ": not a valid task stream: " + what);
}

bool has_attr(hid_t loc, const char* name) { return H5Aexists(loc, name) > 0; }
bool has_link(hid_t loc, const char* name) { return H5Lexists(loc, name, H5P_DEFAULT) > 0; }

std::string read_string_attr(const std::string& path, hid_t loc, const char* name) {
  if (!has_attr(loc, name)) bad_file(path, detail::concat("no attribute '", name, "'"));
  H5Id attr = QARAC_H5_ID(H5Aopen(loc, name, H5P_DEFAULT), H5Aclose);
  H5Id type = QARAC_H5_ID(H5Aget_type(attr.get()), H5Tclose);
  if (H5Tget_class(type.get()) != H5T_STRING || H5Tis_variable_str(type.get()) > 0)
    bad_file(path, detail::concat("attribute '", name, "' is not a fixed-length string"));
  std::string value(H5Tget_size(type.get()), '\0');
  QARAC_CHECK_HDF5(H5Aread(attr.get(), type.get(), value.data()));
  value.resize(std::strlen(value.c_str()));
  return value;
}

int64_t read_int_attr(const std::string& path, hid_t loc, const char* name) {
  if (!has_attr(loc, name)) bad_file(path, detail::concat("no attribute '", name, "'"));
  H5Id attr = QARAC_H5_ID(H5Aopen(loc, name, H5P_DEFAULT), H5Aclose);
  H5Id type = QARAC_H5_ID(H5Aget_type(attr.get()), H5Tclose);
  if (H5Tget_class(type.get()) != H5T_INTEGER)
    bad_file(path, detail::concat("attribute '", name, "' is not an integer"));
  int64_t value = 0;
  QARAC_CHECK_HDF5(H5Aread(attr.get(), H5T_NATIVE_INT64, &value));
  return value;
}

H5Id open_dataset(const std::string& path, hid_t loc, const std::string& name) {
  if (!has_link(loc, name.c_str())) bad_file(path, "no dataset '" + name + "'");
  return QARAC_H5_ID(H5Dopen2(loc, name.c_str(), H5P_DEFAULT), H5Dclose);
}

int64_t dataset_length(const std::string& path, const H5Id& dset, const std::string& name) {
  H5Id space = QARAC_H5_ID(H5Dget_space(dset.get()), H5Sclose);
  if (H5Sget_simple_extent_ndims(space.get()) != 1) bad_file(path, "'" + name + "' is not 1-D");
  hsize_t n = 0;
  QARAC_CHECK_HDF5(H5Sget_simple_extent_dims(space.get(), &n, nullptr));
  return static_cast<int64_t>(n);
}

// Elements [begin, begin+count) of a 1-D dataset, converted to T.
template <class T>
std::vector<T> read_range(const H5Id& dset, hid_t mem_type, int64_t begin, int64_t count) {
  std::vector<T> out(static_cast<size_t>(count));
  if (count == 0) return out;
  const hsize_t start = static_cast<hsize_t>(begin), n = static_cast<hsize_t>(count);
  H5Id file_space = QARAC_H5_ID(H5Dget_space(dset.get()), H5Sclose);
  QARAC_CHECK_HDF5(H5Sselect_hyperslab(file_space.get(), H5S_SELECT_SET, &start, nullptr, &n, nullptr));
  H5Id mem_space = QARAC_H5_ID(H5Screate_simple(1, &n, nullptr), H5Sclose);
  QARAC_CHECK_HDF5(H5Dread(dset.get(), mem_type, mem_space.get(), file_space.get(), H5P_DEFAULT, out.data()));
  return out;
}

template <class T>
std::vector<T> read_table(const std::string& path, hid_t loc, const char* name, hid_t mem_type) {
  H5Id dset = open_dataset(path, loc, name);
  return read_range<T>(dset, mem_type, 0, dataset_length(path, dset, name));
}

std::vector<std::string> read_strings(const std::string& path, hid_t loc, const char* name) {
  H5Id dset = open_dataset(path, loc, name);
  const int64_t n = dataset_length(path, dset, name);
  H5Id type = QARAC_H5_ID(H5Dget_type(dset.get()), H5Tclose);
  if (H5Tget_class(type.get()) != H5T_STRING || H5Tis_variable_str(type.get()) > 0)
    bad_file(path, detail::concat("'", name, "' is not a fixed-length string dataset"));
  const size_t width = H5Tget_size(type.get());
  std::vector<char> packed(static_cast<size_t>(n) * width);
  if (n > 0) QARAC_CHECK_HDF5(H5Dread(dset.get(), type.get(), H5S_ALL, H5S_ALL, H5P_DEFAULT, packed.data()));
  std::vector<std::string> out;
  for (int64_t i = 0; i < n; ++i) {
    const char* s = packed.data() + i * width;
    out.emplace_back(s, strnlen(s, width));
  }
  return out;
}

std::string field_path(Task task, int field, const char* what) {
  return detail::concat("fields/", task_fields(task)[field], "/", what);
}

// The ends of a ragged array's offsets: `count`+1 of them (one per `counted` element and one
// more), from 0 to `total`, the length of the `indexed` dataset. Checked when a file is opened;
// the offsets in between are checked on every read (read_offsets).
void check_offset_ends(const std::string& path, const H5Id& offsets, const std::string& name,
                       int64_t count, const char* counted, int64_t total, const char* indexed) {
  if (dataset_length(path, offsets, name) != count + 1)
    bad_file(path, detail::concat("'", name, "' does not hold ", counted, "+1 = ", count + 1,
                                  " offsets"));
  const int64_t first = read_range<int64_t>(offsets, H5T_NATIVE_INT64, 0, 1)[0];
  const int64_t last = read_range<int64_t>(offsets, H5T_NATIVE_INT64, count, 1)[0];
  if (first != 0 || last != total)
    bad_file(path, detail::concat("'", name, "' spans [", first, ", ", last, "], ", indexed,
                                  " [0, ", total, "]"));
}

// Offsets [begin, end] of a ragged array, checked to never decrease and to stay within
// [0, total] before they are trusted to index `indexed`; `unit` names what they delimit.
std::vector<int64_t> read_offsets(const std::string& path, const H5Id& dset, const std::string& name,
                                  int64_t begin, int64_t end, int64_t total, const char* indexed,
                                  const char* unit) {
  std::vector<int64_t> offsets = read_range<int64_t>(dset, H5T_NATIVE_INT64, begin, end - begin + 1);
  for (size_t i = 0; i < offsets.size(); ++i)
    if (offsets[i] < (i == 0 ? 0 : offsets[i - 1]) || offsets[i] > total)
      bad_file(path, detail::concat("'", name, "' decreases or overruns ", indexed, " at ", unit,
                                    " ", begin + static_cast<int64_t>(i)));
  return offsets;
}

constexpr const char* kCandidateTokens = "candidates/tokens";
constexpr const char* kCandidateOffsets = "candidates/offsets";
constexpr const char* kCandidateExamples = "candidates/example_offsets";

}  // namespace

// ---- TaskStreamWriter ----------------------------------------------------------------------
struct TaskStreamWriter::Field {
  H5Id group, tokens, offsets;
  std::vector<int32_t> token_buf;
  std::vector<int64_t> offset_buf;
  int64_t tokens_written = 0, offsets_written = 0;
  int64_t total_tokens = 0;
  int64_t count = 0;  // sequences appended

  Field(H5Id field_group, const WriterOptions& options) : group(std::move(field_group)) {
    tokens = create_extendible(group.get(), "tokens", H5T_STD_I32LE, options.chunk_tokens,
                               options.compression);
    offsets = create_extendible(group.get(), "offsets", H5T_STD_I64LE, options.chunk_examples,
                                options.compression);
    offset_buf.push_back(0);
  }
  void append(const std::vector<int32_t>& ids) {
    token_buf.insert(token_buf.end(), ids.begin(), ids.end());
    total_tokens += static_cast<int64_t>(ids.size());
    offset_buf.push_back(total_tokens);
    ++count;
  }
};

// Candidate sentences are a ragged array like a field; `examples` delimits each example's.
struct TaskStreamWriter::CandidateDatasets {
  Field sentences;
  H5Id examples;
  std::vector<int64_t> example_buf;
  int64_t examples_written = 0;

  CandidateDatasets(H5Id group, const WriterOptions& options) : sentences(std::move(group), options) {
    examples = create_extendible(sentences.group.get(), "example_offsets", H5T_STD_I64LE,
                                 options.chunk_examples, options.compression);
  }
};

TaskStreamWriter::TaskStreamWriter(std::string path, Task task, const WriterOptions& options)
    : out_(std::move(path), AtomicFile::by_path), task_(task),
      options_(options) {
  QARAC_INPUT_CHECK(options.chunk_tokens > 0 && options.chunk_examples > 0,
                    "chunk sizes must be positive");
  QARAC_INPUT_CHECK(options.compression >= 0 && options.compression <= 9,
                    "compression level must be 0..9, got ", options.compression);
  silence_hdf5_stack_printing();
  const hid_t file = H5Fcreate(out_.temp_path().c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
  if (file < 0)
    throw InputError(
        detail::concat(out_.path(), ": cannot create ", out_.temp_path(), ": ", detail::hdf5_error_string()));
  file_ = H5Id(file, H5Fclose);
  H5Id fields_group = create_group(file_.get(), "fields");
  for (const std::string& name : task_fields(task))
    fields_.emplace_back(create_group(fields_group.get(), name.c_str()), options);
  if (task_has_label(task))
    labels_ = create_extendible(file_.get(), "labels", H5T_STD_I8LE, options.chunk_examples,
                                options.compression);
}

TaskStreamWriter::~TaskStreamWriter() {
  // Close every object before the file; out_, destroyed last, then removes the temporary file of
  // an unpublished stream.
  fields_.clear();
  labels_.reset();
  candidates_.reset();
  file_.reset();
}

void TaskStreamWriter::append(const std::vector<std::vector<int32_t>>& fields, int8_t label,
                              const std::vector<std::vector<int32_t>>& candidates) {
  QARAC_CHECK(!finished_, "append after finish");
  QARAC_CHECK(fields.size() == fields_.size(), task_name(task_), " takes ", fields_.size(),
              " fields, got ", fields.size());
  QARAC_CHECK(candidates.empty() || task_ == Task::question_answering,
              "only question_answering examples have candidates, not ", task_name(task_), "'s");
  for (size_t i = 0; i < fields.size(); ++i) fields_[i].append(fields[i]);
  if (labels_.valid()) label_buf_.push_back(label);
  if (!candidates.empty() && !candidates_) start_candidates();
  if (candidates_) {
    for (const std::vector<int32_t>& sentence : candidates) candidates_->sentences.append(sentence);
    candidates_->example_buf.push_back(candidates_->sentences.count);
  }
  ++examples_;
  flush(false);
}

// The examples before the first with candidates have none: their offsets are all 0. Whole chunks
// of them are written at once and the rest buffered, so that later writes stay chunk-aligned
// and memory stays at a chunk however many examples came before.
void TaskStreamWriter::start_candidates() {
  candidates_ = std::make_unique<CandidateDatasets>(create_group(file_.get(), "candidates"), options_);
  const int64_t zeros = examples_ + 1, chunk = options_.chunk_examples;
  const std::vector<int64_t> block(static_cast<size_t>(std::min(zeros, chunk)), 0);
  while (candidates_->examples_written + chunk <= zeros)
    append_1d(candidates_->examples, H5T_NATIVE_INT64, block.data(), chunk,
              candidates_->examples_written);
  candidates_->example_buf.assign(static_cast<size_t>(zeros - candidates_->examples_written), 0);
}

// Writes whole chunks (or, with `all`, everything): appending chunk-aligned blocks lets HDF5
// compress each chunk once instead of re-reading and re-compressing a partial one.
void TaskStreamWriter::flush(bool all) {
  auto write = [&](const H5Id& dset, hid_t type, auto& buf, int64_t chunk, int64_t& written) {
    const int64_t n = all ? static_cast<int64_t>(buf.size())
                          : static_cast<int64_t>(buf.size()) / chunk * chunk;
    if (n == 0) return;
    append_1d(dset, type, buf.data(), n, written);
    buf.erase(buf.begin(), buf.begin() + n);
  };
  auto write_field = [&](Field& f) {
    write(f.tokens, H5T_NATIVE_INT32, f.token_buf, options_.chunk_tokens, f.tokens_written);
    write(f.offsets, H5T_NATIVE_INT64, f.offset_buf, options_.chunk_examples, f.offsets_written);
  };
  for (Field& f : fields_) write_field(f);
  if (labels_.valid())
    write(labels_, H5T_NATIVE_INT8, label_buf_, options_.chunk_examples, labels_written_);
  if (candidates_) {
    write_field(candidates_->sentences);
    write(candidates_->examples, H5T_NATIVE_INT64, candidates_->example_buf,
          options_.chunk_examples, candidates_->examples_written);
  }
}

void TaskStreamWriter::finish(StreamInfo info) {
  QARAC_CHECK(!finished_, "finish called twice");
  flush(true);
  info.task = task_;
  info.examples = examples_;
  info.field_tokens.clear();
  for (const Field& f : fields_) info.field_tokens.push_back(f.total_tokens);
  info.candidates = candidates_ ? candidates_->sentences.count : 0;
  info.candidate_tokens = candidates_ ? candidates_->sentences.total_tokens : 0;

  const hid_t root = file_.get();
  write_attr(root, "format", kStreamFormat);
  write_attr(root, "version", int64_t{kStreamVersion});
  write_attr(root, "task", task_name(task_));
  write_attr(root, "examples", examples_);
  write_attr(root, "tokenizer_hash", info.tokenizer_hash);
  write_attr(root, "special_tokens", int64_t{info.special_tokens ? 1 : 0});
  write_attr(root, "max_length", info.max_length);
  write_attr(root, "created_by", info.created_by);
  write_attr(root, "qarac_version", QARAC_VERSION);

  std::vector<std::string> paths, formats, reasons;
  std::vector<int64_t> lines, examples, candidates, truncated, counts;
  std::vector<int32_t> reason_source;
  for (size_t s = 0; s < info.sources.size(); ++s) {
    const SourceInfo& src = info.sources[s];
    paths.push_back(src.path);
    formats.push_back(src.format);
    lines.push_back(src.lines);
    examples.push_back(src.examples);
    candidates.push_back(src.candidates);
    truncated.push_back(src.truncated);
    for (const auto& [reason, count] : src.skipped) {
      reason_source.push_back(static_cast<int32_t>(s));
      reasons.push_back(reason);
      counts.push_back(count);
    }
  }
  H5Id sources = create_group(root, "sources");
  write_strings(sources.get(), "path", paths);
  write_strings(sources.get(), "format", formats);
  write_table(sources.get(), "lines", H5T_STD_I64LE, H5T_NATIVE_INT64, lines);
  write_table(sources.get(), "examples", H5T_STD_I64LE, H5T_NATIVE_INT64, examples);
  write_table(sources.get(), "candidates", H5T_STD_I64LE, H5T_NATIVE_INT64, candidates);
  write_table(sources.get(), "truncated", H5T_STD_I64LE, H5T_NATIVE_INT64, truncated);
  H5Id skipped = create_group(root, "skipped");
  write_table(skipped.get(), "source", H5T_STD_I32LE, H5T_NATIVE_INT32, reason_source);
  write_strings(skipped.get(), "reason", reasons);
  write_table(skipped.get(), "count", H5T_STD_I64LE, H5T_NATIVE_INT64, counts);
  sources.reset();
  skipped.reset();

  fields_.clear();
  labels_.reset();
  candidates_.reset();
  if (H5Fclose(file_.get()) < 0) {
    file_ = H5Id();
    throw InputError(
        detail::concat(out_.path(), ": closing ", out_.temp_path(), " failed: ", detail::hdf5_error_string()));
  }
  file_ = H5Id();  // closed above; nothing left to release
  out_.sync();
  finished_ = true;
}

void TaskStreamWriter::publish() {
  QARAC_CHECK(finished_ && !published_, "publish needs a finished, unpublished stream");
  out_.commit();
  published_ = true;
}

// ---- TaskStreamFile ------------------------------------------------------------------------
TaskStreamFile::TaskStreamFile(const std::string& path) : path_(path) {
  silence_hdf5_stack_printing();
  if (::access(path.c_str(), R_OK) != 0)
    throw InputError(detail::concat(path, ": cannot open: ", std::strerror(errno)));
  if (H5Fis_hdf5(path.c_str()) <= 0) {
    H5Eclear2(H5E_DEFAULT);
    throw InputError(path + ": not an HDF5 file");
  }
  H5Id fapl = QARAC_H5_ID(H5Pcreate(H5P_FILE_ACCESS), H5Pclose);
#if (H5_VERSION_GE(1, 10, 7) && !H5_VERSION_GE(1, 12, 0)) || H5_VERSION_GE(1, 12, 1)
  // Every rank opens the same files, often on a parallel file system without flock (Lustre,
  // some NFS), where HDF5's lock makes the open fail. A published stream is never written
  // again, so readers need no lock.
  QARAC_CHECK_HDF5(H5Pset_file_locking(fapl.get(), false, true));
#endif
  const hid_t file = H5Fopen(path.c_str(), H5F_ACC_RDONLY, fapl.get());
  if (file < 0)
    throw InputError(detail::concat(path, ": cannot open: ", detail::hdf5_error_string()));
  file_ = H5Id(file, H5Fclose);
  const hid_t root = file_.get();

  const std::string format = read_string_attr(path, root, "format");
  if (format != kStreamFormat) bad_file(path, "format is '" + format + "'");
  const int64_t version = read_int_attr(path, root, "version");
  if (version != kStreamVersion)
    throw InputError(detail::concat(path, ": task stream version ", version, ", this build reads ",
                                    kStreamVersion, " (rerun qarac-prep)"));
  info_.task = task_from_name(read_string_attr(path, root, "task"));
  info_.examples = read_int_attr(path, root, "examples");
  if (info_.examples < 0) bad_file(path, "negative example count");
  info_.tokenizer_hash = read_string_attr(path, root, "tokenizer_hash");
  info_.special_tokens = read_int_attr(path, root, "special_tokens") != 0;
  info_.max_length = read_int_attr(path, root, "max_length");
  info_.created_by = read_string_attr(path, root, "created_by");

  // Every field must hold examples+1 offsets that start at 0 and end at its token count.
  for (size_t f = 0; f < task_fields(info_.task).size(); ++f) {
    const std::string tokens_name = field_path(info_.task, static_cast<int>(f), "tokens");
    const std::string offsets_name = field_path(info_.task, static_cast<int>(f), "offsets");
    if (!has_link(root, "fields") || !has_link(root, ("fields/" + task_fields(info_.task)[f]).c_str()))
      bad_file(path, "no field group 'fields/" + task_fields(info_.task)[f] + "'");
    H5Id tokens = open_dataset(path, root, tokens_name);
    H5Id offsets = open_dataset(path, root, offsets_name);
    const int64_t n_tokens = dataset_length(path, tokens, tokens_name);
    check_offset_ends(path, offsets, offsets_name, info_.examples, "examples", n_tokens, "the tokens");
    info_.field_tokens.push_back(n_tokens);
    tokens_.push_back(std::move(tokens));
    offsets_.push_back(std::move(offsets));
  }
  if (task_has_label(info_.task)) {
    labels_ = open_dataset(path, root, "labels");
    if (dataset_length(path, labels_, "labels") != info_.examples)
      bad_file(path, "'labels' does not hold one label per example");
  }
  // Optional: streams without candidates, those of older qarac-preps included, have no group.
  // The sentences are a ragged array like a field; the example offsets index the sentences.
  if (has_link(root, "candidates")) {
    if (info_.task != Task::question_answering)
      bad_file(path, detail::concat("a ", task_name(info_.task), " stream with candidates"));
    candidate_tokens_ = open_dataset(path, root, kCandidateTokens);
    candidate_offsets_ = open_dataset(path, root, kCandidateOffsets);
    candidate_examples_ = open_dataset(path, root, kCandidateExamples);
    info_.candidate_tokens = dataset_length(path, candidate_tokens_, kCandidateTokens);
    info_.candidates = dataset_length(path, candidate_offsets_, kCandidateOffsets) - 1;
    if (info_.candidates < 0) bad_file(path, detail::concat("'", kCandidateOffsets, "' is empty"));
    check_offset_ends(path, candidate_offsets_, kCandidateOffsets, info_.candidates, "sentences",
                      info_.candidate_tokens, "the tokens");
    check_offset_ends(path, candidate_examples_, kCandidateExamples, info_.examples, "examples",
                      info_.candidates, "the sentences");
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
    info_.sources[skip_source[k]].skipped[skip_reason[k]] += skip_count[k];
  }
}

Ragged TaskStreamFile::read_field(int field, int64_t begin, int64_t end) const {
  QARAC_CHECK(field >= 0 && static_cast<size_t>(field) < tokens_.size(), "field ", field,
              " out of range for ", task_name(info_.task));
  QARAC_CHECK(0 <= begin && begin <= end && end <= info_.examples, "example range [", begin, ", ",
              end, ") out of [0, ", info_.examples, ")");
  Ragged r;
  r.offsets = read_offsets(path_, offsets_[field], field_path(info_.task, field, "offsets"), begin,
                           end, info_.field_tokens[field], "the tokens", "example");
  const int64_t base = r.offsets.front();
  r.tokens = read_range<int32_t>(tokens_[field], H5T_NATIVE_INT32, base, r.offsets.back() - base);
  for (int64_t& o : r.offsets) o -= base;
  return r;
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
  s.tokens = read_range<int32_t>(candidate_tokens_, H5T_NATIVE_INT32, base, s.offsets.back() - base);
  for (int64_t& o : s.offsets) o -= base;
  for (int64_t& o : c.offsets) o -= first;
  return c;
}

std::vector<int8_t> TaskStreamFile::read_labels(int64_t begin, int64_t end) const {
  QARAC_CHECK(labels_.valid(), task_name(info_.task), " has no labels");
  QARAC_CHECK(0 <= begin && begin <= end && end <= info_.examples, "example range [", begin, ", ",
              end, ") out of [0, ", info_.examples, ")");
  std::vector<int8_t> labels = read_range<int8_t>(labels_, H5T_NATIVE_INT8, begin, end - begin);
  for (size_t i = 0; i < labels.size(); ++i)
    if (labels[i] < -1 || labels[i] > 1)
      bad_file(path_, detail::concat("label ", static_cast<int>(labels[i]), " of example ",
                                     begin + static_cast<int64_t>(i), " is not -1, 0 or +1"));
  return labels;
}

}  // namespace qarac::data
