// Fuzz target: loading a tokenizer (data/tokenizer.h). The first byte picks the form: one
// tokenizer.json, or vocab.json and merges.txt cut at the first NUL byte. A tokenizer that loads
// then encodes and decodes a fixed text, and decodes every id it has. Seeds: the tokenizers of
// data/sample and tests/data/tokenizer.
#include <cstring>

#include "data/tokenizer.h"
#include "fuzz_support.h"

using namespace qarac;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  const auto dir = fuzz::scratch() / "tokenizer";
  std::filesystem::create_directories(dir);
  const bool json_form = data[0] % 2 == 0;
  const char* body = reinterpret_cast<const char*>(data + 1);
  const size_t n = size - 1;
  fuzz::expect_only_input_errors([&] {
    data::Tokenizer tok = [&] {
      if (json_form) {
        fuzz::write_file(dir / "tokenizer.json", body, n);
        return data::Tokenizer::from_json((dir / "tokenizer.json").string());
      }
      const char* nul = static_cast<const char*>(std::memchr(body, '\0', n));
      const size_t cut = nul ? static_cast<size_t>(nul - body) : n;
      fuzz::write_file(dir / "vocab.json", body, cut);
      fuzz::write_file(dir / "merges.txt", body + std::min(cut + 1, n), n - std::min(cut + 1, n));
      return data::Tokenizer::from_files((dir / "vocab.json").string(), (dir / "merges.txt").string());
    }();
    const std::vector<int32_t> ids = tok.encode("Hello <mask> world, \xC3\xA9t\xC3\xA9 \xFF!", true);
    for (const int32_t id : ids)
      if (!tok.has_id(id)) std::abort();  // every id an encoding gives is a token
    for (int32_t id = 0; id < static_cast<int32_t>(tok.vocab_size()); ++id)
      if (tok.has_id(id)) tok.decode(&id, 1);
  });
  return 0;
}
