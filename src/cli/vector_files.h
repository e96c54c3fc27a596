// The files qarac-embed and qarac-generate read and write: texts (lines, or JSON lines with a
// text field) and vectors (.npy, .h5, JSON lines), and the --device option.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "core/tensor.h"
#include "data/tokenizer.h"

namespace qarac::cli {

// Row-major f32 vectors.
struct Vectors {
  int64_t rows = 0, cols = 0;
  std::vector<float> values;
};

// "cpu" or "cuda" (device 0, which must exist); InputError otherwise.
Device parse_device(const std::string& name);

// The texts of `path` ("-": standard input): JSON lines when it ends in .jsonl, .ndjson or
// .json, in any case (each line an object whose `field` is a string, or a JSON string), else one
// text per line. Empty lines are skipped, with a warning naming the first. InputError naming
// file:line for a line that is not what the format says or a text that is no text (invalid
// UTF-8, a NUL byte).
std::vector<std::string> read_texts(const std::string& path, const std::string& field);
// Whether read_texts reads `path` as JSON lines (its `field` then matters).
bool json_lines_input(const std::string& path);

// The token ids of `texts` (read from `source`), each cut to the `max_tokens` a model takes
// (RobertaConfig::max_tokens; data::truncate_ids keeps the closing </s>), with a warning naming
// how many were cut and the first.
std::vector<std::vector<int32_t>> tokenize_texts(const data::Tokenizer& tokenizer,
                                                 const std::vector<std::string>& texts,
                                                 int64_t max_tokens, const std::string& source);

// A folder a program reads, which no --output may be inside: its path (empty: none given), the
// option that named it and what it holds, as the refusal names them.
struct ReadFolder {
  std::string path, option, holds;
};

// InputError when writing `output` would destroy what the program reads: one of `inputs` (files;
// "-" and missing ones pass) or anything in one of `folders` (model exports, task streams).
// Compared by what the paths name on disk, so a link or another spelling of the same file is
// caught too.
void check_output_spares(const std::string& output, const std::vector<std::string>& inputs,
                         const std::vector<ReadFolder>& folders);

// By the extension, in any case: .npy (a little-endian f32 [rows, cols] array, C order), .h5 (dataset
// "vectors" [rows, cols] f32) or JSON lines, .jsonl, .ndjson, .json or "-" (one {"vector": [...]} per line, to standard
// output for "-"); floats written with 9 significant digits, which read back exactly.
void write_vectors(const std::string& path, const Vectors& vectors);

// `text` to the file `path` (atomically: core/atomic_file.h), or to standard output for "-",
// whole or an InputError (a full disk, a closed descriptor; a closed pipe ends the program with
// SIGPIPE, as it does any Unix filter: the programs that write vectors do not ignore it).
void write_text(const std::string& path, const std::string& text);

// .npy (f32 or f64, C order, 2-D) or JSON lines ({"vector": [...]} or an array per line).
// InputError naming the file for another dtype, layout or rows of different lengths.
Vectors read_vectors(const std::string& path);

}  // namespace qarac::cli
