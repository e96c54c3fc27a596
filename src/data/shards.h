// Task-stream files: the HDF5 files qarac-prep writes, one per task, and the loader reads
// (layout in docs/data-format.md). Each text field of a task is stored as a ragged array, flat
// tokens plus example offsets, so that any contiguous range of examples is two hyperslab reads
// per field; a rank reads its share and nothing else. A question_answering stream may also hold
// each example's candidate sentences (the held-out evaluation's answer selection), a ragged array
// of sentences plus example offsets into it; the loader reads them only to check the content
// checksum, which covers every example's datasets and tells two streams apart (a resumed run
// refuses a stream other than its checkpoint's). Files are written under a temporary name and
// renamed only when complete: a reader never sees a half-written stream.
#pragma once

#include <cstdint>
#include <deque>
#include <future>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "core/atomic_file.h"
#include "core/hdf5.h"
#include "data/chunk_compressor.h"
#include "data/task.h"

namespace qarac::data {

namespace stream {
struct Column;  // stream_layout.h
struct DatasetDigest;
}

// Written in the root attribute `format`; `version` changes with any incompatible layout change.
// Optional datasets and attributes that a reader may ignore (the candidates, sources/candidates,
// the checksum) are no such change: files with and without them are version 1 and every build
// reads both.
constexpr const char* kStreamFormat = "qarac-task-stream";
constexpr int kStreamVersion = 1;
// The longest chunk of a dataset, in elements: the writer buffers a chunk per dataset and HDF5
// compresses a chunk whole, so a chunk of 2^24 (128 MiB of offsets) is already far past any gain
// (the default is 2^16 tokens); HDF5's own bound (4 GiB a chunk) is never reached.
constexpr int64_t kMaxChunkElements = int64_t{1} << 24;

// Where the examples of a stream came from, and what was dropped on the way.
struct SourceInfo {
  std::string path;
  std::string format;  // format_name()
  int64_t lines = 0;
  int64_t examples = 0;
  int64_t candidates = 0;                  // records kept as candidates of examples, not examples
  int64_t truncated = 0;                   // examples with a field or candidate cut to max_length
  std::map<std::string, int64_t> skipped;  // reason -> records
};

struct StreamInfo {
  Task task = Task::encode_decode;
  int64_t examples = 0;
  std::vector<int64_t> field_tokens;  // total tokens per field, task_fields() order
  int64_t candidates = 0;             // candidate sentences of all examples together
  int64_t candidate_tokens = 0;       // their tokens
  std::string tokenizer_hash;
  bool special_tokens = true;  // every field is <s> ... </s>
  int64_t max_length = 0;      // the longest a field may be (tokens, specials included)
  std::string created_by;      // the program that made it; the writer adds QARAC-MT's version
  std::vector<SourceInfo> sources;
  // The content checksum the file stores (root attribute `checksum`, stream::content_checksum);
  // 0 for files of qarac-preps before it, which carry none.
  uint64_t checksum = 0;
};

// A qarac-prep publishes the streams of a run by renaming them into place one at a time. While it
// does, the folder holds kPublishingMarker, which names them: written before the first rename,
// removed after the last. A run stopped between two renames (killed, a power loss) leaves a
// folder holding streams of two preparations, which readers refuse (check_publishing_finished)
// rather than train on a mix that no single preparation made.
constexpr const char* kPublishingMarker = ".qarac-prep-publishing";

// The stream files (names) of the publish the marker of `dir` says did not finish; nullopt when
// `dir` has no marker.
std::optional<std::vector<std::string>> unfinished_publish(const std::string& dir);
// InputError "<dir>/.qarac-prep-publishing: a qarac-prep stopped while publishing a.h5, b.h5
// here ...; rerun it" when `dir` has the marker.
void check_publishing_finished(const std::string& dir);

struct WriterOptions {
  int64_t chunk_tokens = 1 << 16;    // elements per chunk of a field's tokens (256 KiB)
  int64_t chunk_examples = 1 << 14;  // elements per chunk of offsets and labels
  int compression = 4;               // deflate level 0..9; 0 stores uncompressed
  int threads = 1;                   // threads that compress chunks (data/chunk_compressor.h)
};


// Appends examples to a new task-stream file. Tokens are buffered per field and written a
// chunk at a time into extendible datasets, so memory stays at a few chunks per dataset and
// thread whatever the size; chunks are compressed on options.threads threads.
class TaskStreamWriter {
 public:
  // Creates the temporary file of `path` (core/atomic_file.h); InputError when it cannot.
  TaskStreamWriter(std::string path, Task task, const WriterOptions& options = {});
  // Removes the temporary file unless publish() succeeded.
  ~TaskStreamWriter();
  TaskStreamWriter(const TaskStreamWriter&) = delete;
  TaskStreamWriter& operator=(const TaskStreamWriter&) = delete;

  // One example: the token ids of each field of the task, its label (consistency) and its
  // candidate sentences (question_answering). The candidate datasets are created at the first
  // example that has any: a stream whose examples have none holds none.
  void append(const std::vector<std::vector<int32_t>>& fields, int8_t label = 0,
              const std::vector<std::vector<int32_t>>& candidates = {});
  int64_t examples() const { return examples_; }

  // Writes the remaining buffers and the metadata (info.task, examples, field_tokens, the
  // candidate counts and the checksum are taken from the writer), then closes the temporary file
  // and puts it on disk (fsync). Every failure to write (a full disk) is a one-line InputError
  // naming the temporary file, which the destructor removes.
  void finish(StreamInfo info);
  Task task() const { return task_; }
  // Renames the finished temporary file over `path` (and fsyncs the folder). Several streams
  // go together through publish_streams.
  void publish();

 private:
  struct Field;
  struct CandidateDatasets;
  void start_candidates();
  void flush(bool all);
  // Appends `count` elements of `element_bytes` each (native little-endian) at the end of
  // `column`, a whole number of `chunk`-element chunks unless these are its last elements.
  void append_chunks(stream::Column& column, size_t element_bytes, const void* data, int64_t count, int64_t chunk);
  // Stores the compressed chunks in the order they were appended: all of them, or until few
  // enough are in flight (a few a thread, kChunkBytesInFlight of raw bytes at most).
  void store_chunks(bool all);

  // A chunk on its way: where it goes, and its bytes once compressed.
  struct PendingChunk {
    hid_t dataset;
    std::string name;  // the dataset's path, for messages
    hsize_t offset;    // of its first element
    size_t raw_bytes;
    std::future<ChunkBytes> bytes;
  };

  AtomicFile out_;  // first: destroyed after the HDF5 objects, then removes an unpublished file
  Task task_;
  WriterOptions options_;
  H5Id file_;
  std::vector<Field> fields_;
  std::unique_ptr<stream::Column> labels_;  // consistency only
  std::vector<int8_t> label_buf_;
  std::unique_ptr<CandidateDatasets> candidates_;  // null until an example has candidates
  std::unique_ptr<ChunkCompressor> compressor_;  // until finish(): its threads end there
  std::deque<PendingChunk> pending_;
  size_t pending_bytes_ = 0;  // raw bytes of pending_'s chunks
  int64_t examples_ = 0;
  bool finished_ = false, published_ = false;
};

// A contiguous range of examples of one field: example i is tokens[offsets[i], offsets[i+1]).
struct Ragged {
  std::vector<int32_t> tokens;
  std::vector<int64_t> offsets;  // size count()+1, offsets[0] == 0

  int64_t count() const { return offsets.empty() ? 0 : static_cast<int64_t>(offsets.size()) - 1; }
  int64_t length(int64_t i) const { return offsets[i + 1] - offsets[i]; }
  const int32_t* begin(int64_t i) const { return tokens.data() + offsets[i]; }
};

// The candidates of a contiguous range of examples: example i's are the sentences
// [offsets[i], offsets[i+1]) of `sentences`.
struct Candidates {
  Ragged sentences;
  std::vector<int64_t> offsets;  // size count()+1, offsets[0] == 0

  int64_t count() const { return offsets.empty() ? 0 : static_cast<int64_t>(offsets.size()) - 1; }
  int64_t size(int64_t i) const { return offsets[i + 1] - offsets[i]; }
};

// Every example of a stream, as the loader keeps it.
struct StreamContents {
  std::vector<Ragged> fields;  // task_fields() order, each whole (offsets from 0)
  std::vector<int8_t> labels;  // consistency only
  uint64_t checksum = 0;       // stream::content_checksum of the file's examples, as read
  int32_t max_token = -1;      // the largest token id of the fields
};

// Publishes the finished `writers`, whose files lie in `dir`, under the marker of `dir`.
void publish_streams(const std::string& dir, const std::vector<std::unique_ptr<TaskStreamWriter>>& writers);

// A task-stream file opened for reading. Opening reads the metadata only.
class TaskStreamFile {
 public:
  // InputError when the file is missing, not HDF5, not a task stream, of another version, or
  // inconsistent (offsets that do not match the tokens or sentences they index, extents beyond
  // the bytes stored). Every read is checked the same way: any failure, HDF5's included (a
  // corrupt compressed chunk), is a one-line InputError naming the file and the dataset.
  explicit TaskStreamFile(const std::string& path);

  const std::string& path() const { return path_; }
  const StreamInfo& info() const { return info_; }
  Task task() const { return info_.task; }
  int64_t examples() const { return info_.examples; }
  // What every reader checks first: an InputError unless the file holds task `expected` and at
  // least one example. `note`, when given, ends both messages in parentheses (what the stream is
  // for, or what to do).
  void check_holds(Task expected, const std::string& note = "") const;

  // Examples [begin, end) of field `field`: one hyperslab read of end-begin+1 offsets, one of
  // the tokens they span. Offsets are checked (monotone, within the tokens) before use.
  Ragged read_field(int field, int64_t begin, int64_t end) const;
  // The lengths in tokens of examples [begin, end) of field `field`: its offsets alone, checked
  // as read_field checks them (what a summary of a stream's lengths needs, without its tokens).
  std::vector<int64_t> field_lengths(int field, int64_t begin, int64_t end) const;
  std::vector<int8_t> read_labels(int64_t begin, int64_t end) const;
  // Whether the file holds candidate sentences (only question_answering streams may).
  bool has_candidates() const { return candidate_tokens_.valid(); }
  // The candidates of examples [begin, end): three hyperslab reads (example offsets, sentence
  // offsets, tokens), each set of offsets checked before use, as in read_field.
  Candidates read_candidates(int64_t begin, int64_t end) const;
  // Every example (the candidates only to hash them, a block at a time), checked against the
  // checksum the file stores: a mismatch, a negative token id or a stream too large for memory is
  // an InputError naming the file. Files without a checksum (older qarac-preps) are not checked
  // but get one computed all the same.
  StreamContents read_all() const;
  // The same checks (checksum, negative ids) a block at a time, keeping nothing: for a reader
  // of part of the stream (the held-out evaluation's first examples), whose memory and start
  // must not grow with the whole file. Returns the content checksum.
  uint64_t verify() const;

 private:
  // Appends the digests of the candidate datasets, read a block at a time (none without).
  void add_candidate_digests(std::vector<stream::DatasetDigest>& digests) const;
  // InputError when the file stores a checksum other than `computed`.
  void check_checksum(uint64_t computed) const;

  std::string path_;
  H5Id file_;
  StreamInfo info_;
  std::vector<H5Id> tokens_, offsets_;  // per field
  H5Id labels_;
  H5Id candidate_tokens_, candidate_offsets_, candidate_examples_;
};

}  // namespace qarac::data
