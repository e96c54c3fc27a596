// What the task-stream writer (shards_writer.cpp) and reader (shards.cpp) share (internal): the
// datasets' names and the definition of the content checksum (docs/data-format.md §3).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "core/hash.h"
#include "core/hdf5.h"
#include "data/task.h"

namespace qarac::data::stream {

constexpr const char* kCandidateTokens = "candidates/tokens";
constexpr const char* kCandidateOffsets = "candidates/offsets";
constexpr const char* kCandidateExamples = "candidates/example_offsets";

// "fields/<field>/<what>" of field `field` of `task`.
std::string field_path(Task task, int field, const char* what);

// An extendible dataset the writer appends to, with the hash of everything appended so far.
struct Column {
  std::string name;  // its path in the file
  H5Id dset;
  Hash64 hash;
  int64_t written = 0;
};

// One dataset's part of the content checksum: its path, its element count and hash64 of its
// elements as stored (little-endian).
struct DatasetDigest {
  std::string name;
  uint64_t count = 0;
  uint64_t hash = 0;
};

// The root attribute `checksum`: hash64 over the words (hash64(name), count, hash) of each
// dataset of the examples in the stream's order: every field's tokens then offsets (task order),
// labels, and the candidates' tokens, offsets and example offsets when the file has them. The
// metadata tables (sources, skipped) are not covered: they describe the examples, training never
// reads them.
uint64_t content_checksum(const std::vector<DatasetDigest>& datasets);

}  // namespace qarac::data::stream
