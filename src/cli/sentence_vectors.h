// Sentence vectors with an encoder export, a batch at a time: what qarac-embed writes and ranks
// with, and what qarac-generate --input decodes.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "cli/vector_files.h"
#include "io/qarac_export.h"

namespace qarac::cli {

using Encoder = io::LoadedModel<SentenceEncoder>;

// The vectors of `sequences` (token ids), `batch` at a time: no dropout, bidirectional.
Vectors encode(Encoder& encoder, const std::vector<std::vector<int32_t>>& sequences, int64_t batch, Device device);

// The vectors of the texts of `path` (read_texts, then tokenize_texts: each cut to what the
// model takes, with a warning).
Vectors encode_texts(Encoder& encoder, const std::string& path, const std::string& field, int64_t batch,
                     Device device);

}  // namespace qarac::cli
