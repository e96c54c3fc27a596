// `qarac-prep tokenize`, line by line: one JSON string in, the JSON array of its ids out, or with
// `decode` the other way round (docs/data-format.md §2). Apart from the program so that the
// fuzz targets (tests/fuzz) run exactly what it runs.
#pragma once

#include <cstdint>
#include <string>

#include "data/tokenizer.h"

namespace qarac::data {

struct TokenizeOptions {
  bool special = false;  // encode: wrap in <s> ... </s>; decode: keep special tokens
  bool decode = false;   // ids -> text
};

// The output line (without its newline) for input line `line_no` of `where` ("stdin"). InputError
// "<where>:<line_no>: <why>" for invalid JSON, a value of the wrong type, or an id that is not in
// the vocabulary (ids can have gaps). Text that is not valid UTF-8 is written with U+FFFD, as
// Hugging Face does.
std::string tokenize_line(const Tokenizer& tok, const std::string& line, const TokenizeOptions& options,
                          const std::string& where, int64_t line_no);

}  // namespace qarac::data
