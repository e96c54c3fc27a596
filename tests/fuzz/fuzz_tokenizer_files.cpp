// Fuzz target: loading a tokenizer (data/tokenizer.h). The first byte picks the form: one
// tokenizer.json (0), vocab.json and merges.txt cut at the first NUL byte (1), or a folder of a
// fixed vocab.json and merges.txt beside tokenizer_config.json and special_tokens_map.json cut at
// the first NUL byte (2). A tokenizer that loads then encodes and decodes a fixed text, and decodes
// every id it has. Seeds: the tokenizers of data/sample and tests/data/tokenizer, and a
// transformers-saved tokenizer_config.json with its special_tokens_map.json.
#include <cstring>

#include "data/tokenizer.h"
#include "fuzz_support.h"

using namespace qarac;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  const auto dir = fuzz::scratch() / "tokenizer";
  std::filesystem::create_directories(dir);
  const int form = data[0] % 3;
  const char* body = reinterpret_cast<const char*>(data + 1);
  const size_t n = size - 1;
  const char* nul = static_cast<const char*>(std::memchr(body, '\0', n));
  const size_t cut = nul ? static_cast<size_t>(nul - body) : n;
  const auto write_split = [&](const std::filesystem::path& first, const std::filesystem::path& second) {
    fuzz::write_file(first, body, cut);
    fuzz::write_file(second, body + std::min(cut + 1, n), n - std::min(cut + 1, n));
  };
  fuzz::expect_only_input_errors([&] {
    data::Tokenizer tok = [&] {
      if (form == 0) {
        fuzz::write_file(dir / "tokenizer.json", body, n);
        return data::Tokenizer::from_json((dir / "tokenizer.json").string());
      }
      if (form == 1) {
        write_split(dir / "vocab.json", dir / "merges.txt");
        return data::Tokenizer::from_files((dir / "vocab.json").string(), (dir / "merges.txt").string());
      }
      const std::string vocab = R"({"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3, "<mask>": 4, "a": 5, "\u0120a": 6})";
      const std::string merges = "#version: 0.2\n\u0120 a\n";
      fuzz::write_file(dir / "vocab.json", vocab.data(), vocab.size());
      fuzz::write_file(dir / "merges.txt", merges.data(), merges.size());
      write_split(dir / "tokenizer_config.json", dir / "special_tokens_map.json");
      std::filesystem::remove(dir / "tokenizer.json");  // form 0's, which from_dir would take instead
      return data::Tokenizer::from_dir(dir.string());
    }();
    const std::vector<int32_t> ids = tok.encode("Hello <mask> world, \xC3\xA9t\xC3\xA9 \xFF!", true);
    for (const int32_t id : ids)
      if (!tok.has_id(id)) std::abort();  // every id an encoding gives is a token
    for (int32_t id = 0; id < static_cast<int32_t>(tok.vocab_size()); ++id)
      if (tok.has_id(id)) tok.decode(&id, 1);
  });
  return 0;
}
