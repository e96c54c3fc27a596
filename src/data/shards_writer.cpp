// Writing task-stream files in HDF5 (C API). Datasets are one-dimensional, chunked and
// extendible, with the shuffle filter ahead of deflate: token ids and offsets are small integers
// whose high bytes are mostly zero, which byte-shuffling turns into long runs that deflate
// compresses well. Strings are fixed-length UTF-8 (NUL-padded) so that reading them needs no
// variable-length memory reclaiming, which differs between HDF5 1.10 and 1.12+.
//
// Every HDF5 failure while writing is the file system's (a full disk, a quota, an I/O error): a
// one-line InputError naming the temporary file and what was being written. The file is closed
// once, by finish() or by the destructor, never both; finish() then seals it (core/hdf5_seal.h),
// so that a reader checks its bytes before HDF5 parses them.
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "core/error.h"
#include "core/hdf5_seal.h"
#include "data/shards.h"
#include "data/stream_layout.h"

namespace qarac::data {
namespace {

static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__,
              "chunks are stored as they are in memory, in datasets of little-endian types");

// Raw bytes of the chunks handed to the compressor and not yet stored, at most (beyond the one
// chunk in hand): a few default chunks a thread fit many times over.
constexpr size_t kChunkBytesInFlight = size_t{256} << 20;

using stream::Column;

// Dataset `name` of group `loc`, whose path in the file is `full_name`.
Column create_extendible(const std::string& file, hid_t loc, const char* name, const std::string& full_name,
                         hid_t type, int64_t chunk, int compression) {
  const std::string what = detail::concat(file, ": creating '", full_name, "'");
  const hsize_t zero = 0, unlimited = H5S_UNLIMITED, chunk_dim = static_cast<hsize_t>(chunk);
  H5Id space = hdf5_file_id(H5Screate_simple(1, &zero, &unlimited), H5Sclose, what);
  H5Id dcpl = untimed_creation(H5P_DATASET_CREATE);
  check_hdf5_file(H5Pset_chunk(dcpl.get(), 1, &chunk_dim), what);
  if (compression > 0) {
    check_hdf5_file(H5Pset_shuffle(dcpl.get()), what);
    check_hdf5_file(H5Pset_deflate(dcpl.get(), static_cast<unsigned>(compression)), what);
  }
  Column c;
  c.name = full_name;
  c.dset = hdf5_file_id(H5Dcreate2(loc, name, type, space.get(), H5P_DEFAULT, dcpl.get(), H5P_DEFAULT),
                        H5Dclose, what);
  return c;
}

void write_attr(const std::string& file, hid_t loc, const char* name, const std::string& value) {
  const std::string what = detail::concat(file, ": writing attribute '", name, "'");
  H5Id type = hdf5_string_type(value.size());
  H5Id space = hdf5_file_id(H5Screate(H5S_SCALAR), H5Sclose, what);
  H5Id attr = hdf5_file_id(H5Acreate2(loc, name, type.get(), space.get(), H5P_DEFAULT, H5P_DEFAULT), H5Aclose,
                           what);
  std::string padded = value;
  padded.resize(std::max<size_t>(value.size(), 1), '\0');
  check_hdf5_file(H5Awrite(attr.get(), type.get(), padded.data()), what);
  check_hdf5_file(attr.close(), what);
}

void write_attr(const std::string& file, hid_t loc, const char* name, hid_t file_type, hid_t mem_type,
                const void* value) {
  const std::string what = detail::concat(file, ": writing attribute '", name, "'");
  H5Id space = hdf5_file_id(H5Screate(H5S_SCALAR), H5Sclose, what);
  H5Id attr = hdf5_file_id(H5Acreate2(loc, name, file_type, space.get(), H5P_DEFAULT, H5P_DEFAULT), H5Aclose,
                           what);
  check_hdf5_file(H5Awrite(attr.get(), mem_type, value), what);
  check_hdf5_file(attr.close(), what);
}

void write_attr(const std::string& file, hid_t loc, const char* name, int64_t value) {
  write_attr(file, loc, name, H5T_STD_I64LE, H5T_NATIVE_INT64, &value);
}

// A small contiguous dataset of `count` elements written at once (metadata tables).
void write_table(const std::string& file, hid_t loc, const char* name, hid_t file_type, hid_t mem_type,
                 size_t count, const void* values) {
  const std::string what = detail::concat(file, ": writing '", name, "'");
  const hsize_t n = count;
  H5Id space = hdf5_file_id(H5Screate_simple(1, &n, nullptr), H5Sclose, what);
  H5Id dcpl = untimed_creation(H5P_DATASET_CREATE);
  H5Id dset = hdf5_file_id(H5Dcreate2(loc, name, file_type, space.get(), H5P_DEFAULT, dcpl.get(), H5P_DEFAULT),
                           H5Dclose, what);
  if (n > 0) check_hdf5_file(H5Dwrite(dset.get(), mem_type, H5S_ALL, H5S_ALL, H5P_DEFAULT, values), what);
  check_hdf5_file(dset.close(), what);
}

template <class T>
void write_table(const std::string& file, hid_t loc, const char* name, hid_t file_type, hid_t mem_type,
                 const std::vector<T>& values) {
  write_table(file, loc, name, file_type, mem_type, values.size(), values.data());
}

void write_strings(const std::string& file, hid_t loc, const char* name, const std::vector<std::string>& values) {
  size_t width = 1;
  for (const std::string& v : values) width = std::max(width, v.size());
  std::vector<char> packed(values.size() * width, '\0');
  for (size_t i = 0; i < values.size(); ++i)
    std::memcpy(packed.data() + i * width, values[i].data(), values[i].size());
  H5Id type = hdf5_string_type(width);
  write_table(file, loc, name, type.get(), type.get(), values.size(), packed.data());
}

H5Id create_group(const std::string& file, hid_t loc, const char* name) {
  return hdf5_file_id(H5Gcreate2(loc, name, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT), H5Gclose,
                      detail::concat(file, ": creating group '", name, "'"));
}

stream::DatasetDigest digest_of(const Column& c) {
  return {c.name, static_cast<uint64_t>(c.written), c.hash.value()};
}

// Closing a dataset writes its metadata: checked, as a write is.
void close_column(const std::string& file, Column& c) {
  check_hdf5_file(c.dset.close(), file + ": writing '" + c.name + "'");
}

}  // namespace

struct TaskStreamWriter::Field {
  H5Id group;
  Column tokens, offsets;
  std::vector<int32_t> token_buf;
  std::vector<int64_t> offset_buf;
  int64_t total_tokens = 0;
  int64_t count = 0;  // sequences appended

  // `prefix`: the group's path in the file and a slash.
  Field(const std::string& file, H5Id field_group, const std::string& prefix, const WriterOptions& options)
      : group(std::move(field_group)) {
    tokens = create_extendible(file, group.get(), "tokens", prefix + "tokens", H5T_STD_I32LE, options.chunk_tokens,
                               options.compression);
    offsets = create_extendible(file, group.get(), "offsets", prefix + "offsets", H5T_STD_I64LE,
                                options.chunk_examples, options.compression);
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
  Column examples;
  std::vector<int64_t> example_buf;

  CandidateDatasets(const std::string& file, H5Id group, const WriterOptions& options)
      : sentences(file, std::move(group), "candidates/", options) {
    examples = create_extendible(file, sentences.group.get(), "example_offsets", stream::kCandidateExamples,
                                 H5T_STD_I64LE, options.chunk_examples, options.compression);
  }
};

TaskStreamWriter::TaskStreamWriter(std::string path, Task task, const WriterOptions& options)
    : out_(std::move(path), AtomicFile::by_path),
      task_(task),
      options_(options),
      compressor_(std::make_unique<ChunkCompressor>(options.compression, options.threads)) {
  QARAC_INPUT_CHECK(options.chunk_tokens > 0 && options.chunk_tokens <= kMaxChunkElements &&
                        options.chunk_examples > 0 && options.chunk_examples <= kMaxChunkElements,
                    "chunk sizes must be in [1, ", kMaxChunkElements, "], got ", options.chunk_tokens, " and ",
                    options.chunk_examples);
  QARAC_INPUT_CHECK(options.compression >= 0 && options.compression <= 9,
                    "compression level must be 0..9, got ", options.compression);
  QARAC_CHECK(stream_task(task) == task, "a task stream of ", task_name(task), ", which reads ",
              task_name(stream_task(task)), "'s");
  silence_hdf5_stack_printing();
  const std::string& file = out_.temp_path();
  H5Id fcpl = hdf5_file_id(H5Pcreate(H5P_FILE_CREATE), H5Pclose, out_.path() + ": creating " + file);
  check_hdf5_file(H5Pset_userblock(fcpl.get(), kHdf5SealBytes), out_.path() + ": creating " + file);
  file_ = hdf5_file_id(H5Fcreate(file.c_str(), H5F_ACC_TRUNC, fcpl.get(), H5P_DEFAULT), H5Fclose,
                       out_.path() + ": cannot create " + file);
  H5Id fields_group = create_group(file, file_.get(), "fields");
  for (const std::string& name : task_fields(task))
    fields_.emplace_back(file, create_group(file, fields_group.get(), name.c_str()), "fields/" + name + "/", options);
  if (task_has_label(task))
    labels_ = std::make_unique<Column>(create_extendible(file, file_.get(), "labels", "labels", H5T_STD_I8LE,
                                                         options.chunk_examples, options.compression));
}

TaskStreamWriter::~TaskStreamWriter() {
  // Close every object before the file; out_, destroyed last, then removes the temporary file of
  // an unpublished stream.
  fields_.clear();
  labels_.reset();
  candidates_.reset();
  file_.reset();
}

void TaskStreamWriter::append_chunks(Column& c, size_t element_bytes, const void* data, int64_t count,
                                     int64_t chunk) {
  if (count == 0) return;
  QARAC_CHECK(c.written % chunk == 0, c.name, ": appending after a partial chunk");
  const std::string what = out_.temp_path() + ": writing '" + c.name + "'";
  const hsize_t size = static_cast<hsize_t>(c.written + count);
  check_hdf5_file(H5Dset_extent(c.dset.get(), &size), what);
  c.hash.bytes(data, static_cast<size_t>(count) * element_bytes);
  const auto* bytes = static_cast<const unsigned char*>(data);
  for (int64_t first = 0; first < count; first += chunk) {
    // A last, partial chunk is stored whole, as HDF5 stores it, with a tail of zeros (HDF5's own
    // holds whatever its buffer held: the file now depends on its content alone).
    ChunkBytes raw(static_cast<size_t>(chunk) * element_bytes, 0);
    const size_t n = static_cast<size_t>(std::min(chunk, count - first)) * element_bytes;
    std::memcpy(raw.data(), bytes + static_cast<size_t>(first) * element_bytes, n);
    pending_bytes_ += raw.size();
    pending_.push_back({c.dset.get(), c.name, static_cast<hsize_t>(c.written + first), raw.size(),
                        compressor_->submit(std::move(raw), element_bytes)});
    store_chunks(false);
  }
  c.written += count;
}

void TaskStreamWriter::store_chunks(bool all) {
  // Two chunks a thread keep the workers busy while this thread tokenises; the byte bound holds
  // memory to that of a few chunks whatever their size (2^24 elements: 128 MiB of offsets).
  const size_t most = 2 * static_cast<size_t>(std::max(compressor_->threads(), 1));
  while (!pending_.empty() && (all || pending_.size() > most || pending_bytes_ > kChunkBytesInFlight)) {
    PendingChunk& p = pending_.front();
    const ChunkBytes bytes = p.bytes.get();
    // Filter mask 0: every filter of the dataset was applied.
    check_hdf5_file(H5Dwrite_chunk(p.dataset, H5P_DEFAULT, 0, &p.offset, bytes.size(), bytes.data()),
                    out_.temp_path() + ": writing '" + p.name + "'");
    pending_bytes_ -= p.raw_bytes;
    pending_.pop_front();
  }
}

void TaskStreamWriter::append(const std::vector<std::vector<int32_t>>& fields, int8_t label,
                              const std::vector<std::vector<int32_t>>& candidates) {
  QARAC_CHECK(!finished_, "append after finish");
  QARAC_CHECK(fields.size() == fields_.size(), task_name(task_), " takes ", fields_.size(),
              " fields, got ", fields.size());
  QARAC_CHECK(candidates.empty() || task_ == Task::question_answering,
              "only question_answering examples have candidates, not ", task_name(task_), "'s");
  for (size_t i = 0; i < fields.size(); ++i) fields_[i].append(fields[i]);
  if (labels_) label_buf_.push_back(label);
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
  const std::string& file = out_.temp_path();
  candidates_ = std::make_unique<CandidateDatasets>(file, create_group(file, file_.get(), "candidates"), options_);
  Column& examples = candidates_->examples;
  const int64_t zeros = examples_ + 1, chunk = options_.chunk_examples;
  const std::vector<int64_t> block(static_cast<size_t>(std::min(zeros, chunk)), 0);
  while (examples.written + chunk <= zeros) append_chunks(examples, sizeof(int64_t), block.data(), chunk, chunk);
  candidates_->example_buf.assign(static_cast<size_t>(zeros - examples.written), 0);
}

// Writes whole chunks (or, with `all`, everything): a dataset's chunks are stored whole, once,
// so only its last may be partial.
void TaskStreamWriter::flush(bool all) {
  auto write = [&](Column& column, auto& buf, int64_t chunk) {
    const int64_t n = all ? static_cast<int64_t>(buf.size())
                          : static_cast<int64_t>(buf.size()) / chunk * chunk;
    if (n == 0) return;
    append_chunks(column, sizeof buf[0], buf.data(), n, chunk);
    buf.erase(buf.begin(), buf.begin() + n);
  };
  auto write_field = [&](Field& f) {
    write(f.tokens, f.token_buf, options_.chunk_tokens);
    write(f.offsets, f.offset_buf, options_.chunk_examples);
  };
  for (Field& f : fields_) write_field(f);
  if (labels_) write(*labels_, label_buf_, options_.chunk_examples);
  if (candidates_) {
    write_field(candidates_->sentences);
    write(candidates_->examples, candidates_->example_buf, options_.chunk_examples);
  }
}

void TaskStreamWriter::finish(StreamInfo info) {
  QARAC_CHECK(!finished_, "finish called twice");
  flush(true);
  store_chunks(true);
  compressor_.reset();  // a run keeps its finished writers until it publishes them all
  info.task = task_;
  info.examples = examples_;
  info.field_tokens.clear();
  std::vector<stream::DatasetDigest> digests;
  for (const Field& f : fields_) {
    info.field_tokens.push_back(f.total_tokens);
    digests.push_back(digest_of(f.tokens));
    digests.push_back(digest_of(f.offsets));
  }
  if (labels_) digests.push_back(digest_of(*labels_));
  if (candidates_) {
    digests.push_back(digest_of(candidates_->sentences.tokens));
    digests.push_back(digest_of(candidates_->sentences.offsets));
    digests.push_back(digest_of(candidates_->examples));
  }
  info.candidates = candidates_ ? candidates_->sentences.count : 0;
  info.candidate_tokens = candidates_ ? candidates_->sentences.total_tokens : 0;
  info.checksum = stream::content_checksum(digests);

  const std::string& file = out_.temp_path();
  const hid_t root = file_.get();
  write_attr(file, root, "format", kStreamFormat);
  write_attr(file, root, "version", int64_t{kStreamVersion});
  write_attr(file, root, "task", task_name(task_));
  write_attr(file, root, "examples", examples_);
  write_attr(file, root, "tokenizer_hash", info.tokenizer_hash);
  write_attr(file, root, "special_tokens", int64_t{info.special_tokens ? 1 : 0});
  write_attr(file, root, "max_length", info.max_length);
  write_attr(file, root, "created_by", info.created_by);
  write_attr(file, root, "qarac_version", QARAC_VERSION);
  write_attr(file, root, "checksum", H5T_STD_U64LE, H5T_NATIVE_UINT64, &info.checksum);

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
  {
    // Each table by its path from the root, which a failed write names.
    const H5Id sources = create_group(file, root, "sources");
    write_strings(file, root, "sources/path", paths);
    write_strings(file, root, "sources/format", formats);
    write_table(file, root, "sources/lines", H5T_STD_I64LE, H5T_NATIVE_INT64, lines);
    write_table(file, root, "sources/examples", H5T_STD_I64LE, H5T_NATIVE_INT64, examples);
    write_table(file, root, "sources/candidates", H5T_STD_I64LE, H5T_NATIVE_INT64, candidates);
    write_table(file, root, "sources/truncated", H5T_STD_I64LE, H5T_NATIVE_INT64, truncated);
    const H5Id skipped = create_group(file, root, "skipped");
    write_table(file, root, "skipped/source", H5T_STD_I32LE, H5T_NATIVE_INT32, reason_source);
    write_strings(file, root, "skipped/reason", reasons);
    write_table(file, root, "skipped/count", H5T_STD_I64LE, H5T_NATIVE_INT64, counts);
  }

  for (Field& f : fields_) {
    close_column(file, f.tokens);
    close_column(file, f.offsets);
  }
  if (labels_) close_column(file, *labels_);
  if (candidates_) {
    close_column(file, candidates_->sentences.tokens);
    close_column(file, candidates_->sentences.offsets);
    close_column(file, candidates_->examples);
  }
  fields_.clear();
  labels_.reset();
  candidates_.reset();
  // Closing the file writes its metadata, so it can fail (a full disk) too.
  check_hdf5_file(file_.close(), file + ": closing");
  seal_hdf5_file(file);
  out_.sync();
  finished_ = true;
}

void publish_streams(const std::string& dir, const std::vector<std::unique_ptr<TaskStreamWriter>>& writers) {
  std::string text = detail::concat("qarac-prep (pid ", ::getpid(), ") publishing:\n");
  for (const auto& w : writers) text += std::string(task_name(w->task())) + ".h5\n";  // as readers name them
  const std::string marker = dir + "/" + kPublishingMarker;
  {
    AtomicFile file(marker);
    file.write(text.data(), text.size());
    file.commit();
  }
  for (const auto& w : writers) w->publish();
  QARAC_INPUT_CHECK(::unlink(marker.c_str()) == 0, marker, ": cannot remove it after publishing: ", std::strerror(errno),
                    " (every stream is in place: remove it)");
  sync_folder(dir);
}

void TaskStreamWriter::publish() {
  QARAC_CHECK(finished_ && !published_, "publish needs a finished, unpublished stream");
  out_.commit();
  published_ = true;
}

}  // namespace qarac::data
