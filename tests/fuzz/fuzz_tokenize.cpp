// Fuzz target: what `qarac-prep tokenize` runs on every input line (data/tokenize_lines.h), with
// the tokenizer of data/sample, and the round trip the tokenizer promises: decode(encode(x)) == x
// for any bytes x holding no added-token text (tokenizer.h). The first byte picks encode or
// decode and --special; the rest is the line (or the text of the round trip).
#include "data/tokenize_lines.h"
#include "fuzz_support.h"

using namespace qarac;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const data::Tokenizer tok = data::Tokenizer::from_dir(QARAC_SAMPLE_TOKENIZER);
  if (size == 0) return 0;
  const std::string rest(reinterpret_cast<const char*>(data + 1), size - 1);
  const uint8_t mode = data[0];
  if (mode % 3 == 2) {
    // Every added token of the sample tokenizer starts with '<'.
    if (rest.find('<') != std::string::npos) return 0;
    const std::vector<int32_t> ids = tok.encode(rest, /*add_special=*/false);
    if (tok.decode(ids) != rest) {
      std::fprintf(stderr, "fuzz: decode(encode(x)) != x\n");
      std::abort();
    }
    return 0;
  }
  fuzz::expect_only_input_errors(
      [&] { data::tokenize_line(tok, rest, {mode / 3 % 2 == 1, mode % 3 == 1}, "stdin", 1); });
  return 0;
}
