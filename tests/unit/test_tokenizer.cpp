// Unit tests of the byte-level BPE tokenizer (src/data/tokenizer.h): parity with Hugging Face
// `tokenizers` on the committed text set (tests/data/tokenizer, made by make_expected.py) for
// both ways of loading, the pre-tokeniser's pieces, unknown bytes, byte-exact round trips of any
// input, special tokens, the hash, concurrent encoding, and one-line errors for bad files.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iterator>
#include <nlohmann/json.hpp>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "support/test_support.h"
#include "core/error.h"
#include "data/tokenizer.h"

using qarac::test_support::expect_input_error;

namespace fs = std::filesystem;
using nlohmann::json;
using qarac::data::Tokenizer;
using qarac::data::TokenizerOptions;
using Ids = std::vector<int32_t>;

namespace {

const fs::path kDir = QARAC_TOKENIZER_TEST_DIR;

std::vector<json> read_rows(const fs::path& path) {
  std::ifstream in(path);
  EXPECT_TRUE(in) << "cannot open " << path;
  std::vector<json> rows;
  for (std::string line; std::getline(in, line);) rows.push_back(json::parse(line));
  return rows;
}

const std::vector<json>& rows() {
  static const std::vector<json> all = read_rows(kDir / "texts.jsonl");
  return all;
}

Ids ids_of(const json& row, const char* key) { return row.at(key).get<Ids>(); }

// Checks every text of texts.jsonl against Hugging Face's ids and decodings; returns the number
// of ids compared.
size_t check_parity(const Tokenizer& tok) {
  size_t compared = 0;
  for (const json& row : rows()) {
    const std::string text = row.at("text").get<std::string>();
    const Ids ids = ids_of(row, "ids"), plain = ids_of(row, "ids_no_special");
    EXPECT_EQ(tok.encode(text), ids) << "text: " << row.at("text").dump();
    EXPECT_EQ(tok.encode(text, false), plain) << "text: " << row.at("text").dump();
    EXPECT_EQ(tok.decode(plain), row.at("decoded").get<std::string>()) << row.at("text").dump();
    EXPECT_EQ(tok.decode(ids, true), row.at("decoded_skip").get<std::string>())
        << row.at("text").dump();
    compared += ids.size() + plain.size();
  }
  return compared;
}

// A private scratch folder, removed at the end of the test.
class TempDir {
 public:
  TempDir() {
    path_ = fs::temp_directory_path() /
            ("qarac_tokenizer_" + std::to_string(getpid()) + "_" + std::to_string(counter_++));
    fs::create_directories(path_);
  }
  ~TempDir() { fs::remove_all(path_); }
  fs::path file(const std::string& name, const std::string& bytes) const {
    std::ofstream out(path_ / name, std::ios::binary);
    out << bytes;
    return path_ / name;
  }
  const fs::path& path() const { return path_; }

 private:
  static inline int counter_ = 0;
  fs::path path_;
};

std::string read_bytes(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

Tokenizer from_test_files(const TokenizerOptions& options = {}) {
  return Tokenizer::from_files((kDir / "vocab.json").string(), (kDir / "merges.txt").string(),
                               options);
}

}  // namespace

TEST(Tokenizer, ParityWithHuggingFaceFromVocabAndMerges) {
  ASSERT_GE(rows().size(), 100u);
  const size_t compared = check_parity(from_test_files());
  std::printf("parity: %zu texts, %zu token ids compared (vocab.json + merges.txt)\n",
              rows().size(), compared);
}

TEST(Tokenizer, ParityWithHuggingFaceFromTokenizerJson) {
  const size_t compared = check_parity(Tokenizer::from_json((kDir / "tokenizer.json").string()));
  std::printf("parity: %zu texts, %zu token ids compared (tokenizer.json)\n", rows().size(),
              compared);
}

TEST(Tokenizer, ParityWithPrefixSpace) {
  const Tokenizer tok = from_test_files(TokenizerOptions{true, {}});
  for (const json& row : rows())
    EXPECT_EQ(tok.encode(row.at("text").get<std::string>()), ids_of(row, "ids_prefix_space"))
        << "text: " << row.at("text").dump();
}

TEST(Tokenizer, PiecesMatchTheByteLevelPreTokenizer) {
  for (const json& row : rows()) {
    const std::string text = row.at("text").get<std::string>();
    std::vector<std::string> pieces;
    for (const std::string_view piece : qarac::data::byte_level_pieces(text))
      pieces.emplace_back(piece);
    EXPECT_EQ(pieces, row.at("pieces").get<std::vector<std::string>>()) << row.at("text").dump();
  }
  using V = std::vector<std::string_view>;
  EXPECT_EQ(qarac::data::byte_level_pieces("Hello   there\n\nx"),
            (V{"Hello", "  ", " there", "\n", "\n", "x"}));
  EXPECT_EQ(qarac::data::byte_level_pieces("I'm 'S"), (V{"I", "'m", " '", "S"}));
}

TEST(Tokenizer, UnknownBytes) {
  // unk/tokenizer.json names <unk>: each missing byte becomes one <unk>. The same vocabulary
  // from vocab.json + merges.txt has no unknown token: missing bytes vanish before merging.
  const Tokenizer with_unk = Tokenizer::from_json((kDir / "unk" / "tokenizer.json").string());
  const Tokenizer files = Tokenizer::from_dir((kDir / "unk").string());
  const Tokenizer dropping = Tokenizer::from_files((kDir / "unk" / "vocab.json").string(),
                                                   (kDir / "unk" / "merges.txt").string());
  for (const json& row : read_rows(kDir / "unk" / "texts.jsonl")) {
    const std::string text = row.at("text").get<std::string>();
    EXPECT_EQ(with_unk.encode(text), ids_of(row, "ids")) << row.at("text").dump();
    EXPECT_EQ(with_unk.encode(text, false), ids_of(row, "ids_no_special")) << row.at("text").dump();
    EXPECT_EQ(dropping.encode(text), ids_of(row, "ids_files")) << row.at("text").dump();
    EXPECT_EQ(files.encode(text), ids_of(row, "ids")) << "from_dir prefers tokenizer.json";
  }
  // With the model's fuse_unk (Hugging Face's BPE option), a run of missing bytes inside a word
  // becomes one <unk> (3); runs in separate words stay apart, and known bytes end a run.
  TempDir dir;
  json fused = json::parse(read_bytes(kDir / "unk" / "tokenizer.json"));
  fused["model"]["fuse_unk"] = true;
  const Tokenizer fusing = Tokenizer::from_json(dir.file("fused.json", fused.dump()).string());
  EXPECT_EQ(fusing.encode("xyz", false), (Ids{3}));
  EXPECT_EQ(fusing.encode("a\xC3\xA9" "b", false), (Ids{5, 3, 6}));  // é: two missing bytes
  EXPECT_EQ(fusing.encode("xy zz", false), (Ids{3, 8, 3}));         // "Ġ" is 8
  EXPECT_EQ(fusing.encode("xaxx", false), (Ids{3, 5, 3}));
}

// Truncation (qarac-prep --max-length, and the programs that cut texts to the model's length): a
// sequence ending in </s> keeps it in its last place; one without it (encoded without the special
// tokens) is only cut, nothing put in its place; one that fits is left as it is.
TEST(Tokenizer, TruncationKeepsAClosingEosAndAddsNone) {
  constexpr int32_t kEos = 2;
  Ids closed{0, 5, 6, 7, kEos};
  qarac::data::truncate_ids(closed, 3, kEos);
  EXPECT_EQ(closed, (Ids{0, 5, kEos}));
  Ids open{5, 6, 7, 8};
  qarac::data::truncate_ids(open, 2, kEos);
  EXPECT_EQ(open, (Ids{5, 6}));
  Ids fits{5, 6, 7};
  qarac::data::truncate_ids(fits, 3, kEos);
  EXPECT_EQ(fits, (Ids{5, 6, 7}));
}

TEST(Tokenizer, RoundTripsAnyBytes) {
  const Tokenizer tok = from_test_files();
  for (const json& row : rows()) {
    const std::string text = row.at("text").get<std::string>();
    if (row.at("decoded").get<std::string>() == text) {
      EXPECT_EQ(tok.decode(tok.encode(text, false)), text);
    }
  }
  // Random bytes, mostly not UTF-8, and random mixes of multi-byte characters cut anywhere.
  // '<' is left out: special-token text does not round-trip (<mask> takes the space before it).
  std::mt19937 rng(7);
  const std::string alphabet = "ab 's\t\n1\xC3\xA9\xE4\xBD\xA0\xF0\x9F\x98\x80\xE2\x80\x8D";
  for (int trial = 0; trial < 2000; ++trial) {
    std::string text(rng() % 40, '\0');
    for (char& c : text) {
      c = trial % 2 ? alphabet[rng() % alphabet.size()] : static_cast<char>(rng() % 256);
      if (c == '<') c = '>';
    }
    EXPECT_EQ(tok.decode(tok.encode(text, false)), text) << "trial " << trial;
    EXPECT_EQ(tok.decode(tok.encode(text), true), text) << "trial " << trial;
  }
}

TEST(Tokenizer, SpecialTokens) {
  const Tokenizer tok = Tokenizer::from_dir(kDir.string());
  EXPECT_EQ(tok.bos_id(), 0);
  EXPECT_EQ(tok.pad_id(), 1);
  EXPECT_EQ(tok.eos_id(), 2);
  EXPECT_EQ(tok.unk_id(), 3);
  EXPECT_EQ(tok.mask_id(), 4);
  EXPECT_EQ(tok.vocab_size(), 1245u);
  EXPECT_EQ(tok.token_id("<mask>"), 4);
  EXPECT_EQ(tok.token_id("not a token"), -1);
  EXPECT_EQ(tok.token(tok.token_id("Ġthe")), "Ġthe");
  for (int32_t id = 0; id < 5; ++id) EXPECT_TRUE(tok.is_special(id));
  EXPECT_FALSE(tok.is_special(tok.token_id("Ġthe")));

  // Whole-token matches only, never normalised; <mask> takes the whitespace on its left only.
  EXPECT_EQ(tok.encode("<s>", false), (Ids{0}));
  EXPECT_EQ(tok.encode(" \t<mask> ", false), (Ids{4, tok.token_id("Ġ")}));
  EXPECT_EQ(tok.encode("<mask><mask>", false), (Ids{4, 4}));
  EXPECT_NE(tok.encode("<MASK>", false), (Ids{4}));
  EXPECT_EQ(tok.encode(""), (Ids{0, 2}));
  EXPECT_EQ(tok.encode("", false), Ids{});

  const Ids ids = tok.encode("a <mask> b");
  EXPECT_EQ(tok.decode(ids), "<s>a<mask> b</s>");
  EXPECT_EQ(tok.decode(ids, true), "a b");

  // encode_append appends to what is there.
  Ids flat = {7};
  tok.encode_append("Hello", flat);
  tok.encode_append("world", flat, false);
  Ids expected = {7};
  for (const Ids& part : {tok.encode("Hello"), tok.encode("world", false)})
    expected.insert(expected.end(), part.begin(), part.end());
  EXPECT_EQ(flat, expected);

  // An id outside the vocabulary is a programming error, not bad input.
  EXPECT_THROW(tok.decode(Ids{static_cast<int32_t>(tok.vocab_size())}), qarac::Error);
  EXPECT_THROW(tok.decode(Ids{-1}), qarac::Error);
  try {
    tok.decode(Ids{-1});
  } catch (const qarac::InputError&) {
    ADD_FAILURE() << "decode of a bad id must not look like bad input";
  } catch (const qarac::Error&) {
  }
}

// A single_word added token is taken only between non-word characters of Rust regex's \w, in
// the Unicode 16.0 of tokenizers 0.23 (ids from it): U+0897 (a mark), U+1C89 and U+2EBF0
// (letters) are new in 16.0 and 15.1 and keep "<w>" from matching; U+16EA0, a letter only from
// Unicode 17.0, does not.
TEST(Tokenizer, SingleWordNeighboursInUnicode16) {
  TempDir dir;
  json j = json::parse(read_bytes(kDir / "tokenizer.json"));
  j["added_tokens"].push_back(json::parse(R"({"id": 1245, "content": "<w>", "single_word": true,
      "lstrip": false, "rstrip": false, "normalized": false, "special": true})"));
  const Tokenizer tok = Tokenizer::from_json(dir.file("tokenizer.json", j.dump()).string());
  EXPECT_EQ(tok.encode("<w>!", false), (Ids{1245, 5}));
  EXPECT_EQ(tok.encode("<w>\u0897", false), (Ids{32, 91, 34, 161, 100, 250}));
  EXPECT_EQ(tok.encode("\u1c89<w>", false), (Ids{162, 115, 236, 32, 91, 34}));
  EXPECT_EQ(tok.encode("<w>\U0002EBF0", false), (Ids{32, 91, 34, 177, 111, 112, 113}));
  EXPECT_EQ(tok.encode("<w>\U00016EA0", false), (Ids{1245, 177, 249, 123, 259}));
}

TEST(Tokenizer, HashNamesWhatDecidesTheIds) {
  const std::string files = from_test_files().hash();
  EXPECT_EQ(files.rfind("fnv1a64:", 0), 0u);
  EXPECT_EQ(files.size(), 8u + 16u);
  EXPECT_EQ(Tokenizer::from_json((kDir / "tokenizer.json").string()).hash(), files);
  EXPECT_EQ(from_test_files().hash(), files);
  EXPECT_NE(from_test_files(TokenizerOptions{true, {}}).hash(), files);

  // Two merges swapped: same vocabulary, other ids for some words, another hash.
  TempDir dir;
  std::string merges = read_bytes(kDir / "merges.txt");
  const size_t second = merges.find('\n') + 1, third = merges.find('\n', second) + 1,
               fourth = merges.find('\n', third) + 1;
  merges = merges.substr(0, second) + merges.substr(third, fourth - third) +
           merges.substr(second, third - second) + merges.substr(fourth);
  const Tokenizer swapped = Tokenizer::from_files(
      (kDir / "vocab.json").string(), dir.file("merges.txt", merges).string());
  EXPECT_NE(swapped.hash(), files);
}

TEST(Tokenizer, ConcurrentEncodingSharesOneCache) {
  const Tokenizer tok = Tokenizer::from_json((kDir / "tokenizer.json").string());
  EXPECT_EQ(tok.cache_size(), 0u);
  std::vector<std::thread> threads;
  std::vector<int> failures(8, 0);
  for (size_t t = 0; t < failures.size(); ++t) {
    threads.emplace_back([&, t] {
      const Tokenizer copy = tok;  // copies share the tables and the cache
      for (int round = 0; round < 5; ++round)
        for (size_t i = 0; i < rows().size(); ++i) {
          const json& row = rows()[(i + t * 61) % rows().size()];
          failures[t] += copy.encode(row.at("text").get<std::string>()) != ids_of(row, "ids");
        }
    });
  }
  for (std::thread& thread : threads) thread.join();
  for (size_t t = 0; t < failures.size(); ++t) EXPECT_EQ(failures[t], 0) << "thread " << t;
  EXPECT_GT(tok.cache_size(), 0u);
}

// vocab.json and merges.txt read as transformers' RobertaTokenizer reads them with their
// tokenizer_config.json: its add_prefix_space is kept; added tokens, which would change the ids, are
// refused (added_tokens.json, or added_tokens_decoder beyond the special tokens at their ids).
TEST(Tokenizer, FilesFolderReadsTokenizerConfig) {
  TempDir dir;
  dir.file("vocab.json", R"({"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3, "<mask>": 4, "a": 5, "\u0120a": 6, "\u0120": 7})");
  dir.file("merges.txt", "#version: 0.2\n\u0120 a\n");
  const std::string folder = dir.path().string();
  EXPECT_EQ(Tokenizer::from_dir(folder).encode("a", false), (Ids{5}));
  const std::string config = dir.file("tokenizer_config.json", R"({"add_prefix_space": true,
    "added_tokens_decoder": {"0": {"content": "<s>"}, "4": {"content": "<mask>", "lstrip": true}}})").string();
  EXPECT_EQ(Tokenizer::from_dir(folder).encode("a", false), (Ids{6}));
  dir.file("tokenizer_config.json", R"({"added_tokens_decoder": {"8": {"content": "<ent>"}}})");
  expect_input_error([&] { Tokenizer::from_dir(folder); },
                     {config, "added_tokens_decoder", "\"<ent>\" at id 8", "save_pretrained"});
  const std::string added = dir.file("added_tokens.json", R"({"<ent>": 8})").string();
  expect_input_error([&] { Tokenizer::from_dir(folder); }, {added, "added tokens are not read", "save_pretrained"});
}

// The special tokens' spacing in a vocab.json + merges.txt folder comes from its
// tokenizer_config.json and special_tokens_map.json, as transformers takes it: ids from
// transformers 4.57.1 and 5.25.0 (the same for each of these configs), with <mask> taking the space
// before it where the files say nothing (4.57.1 and roberta-base's tokenizer.json; 5.25.0 alone
// leaves the space).
TEST(Tokenizer, FilesFolderTakesTheSpecialTokensSpacingFromItsConfig) {
  TempDir dir;
  dir.file("vocab.json", R"({"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3, "<mask>": 4, "a": 5, "\u0120a": 6, "\u0120": 7})");
  dir.file("merges.txt", "#version: 0.2\n\u0120 a\n");
  const std::string folder = dir.path().string();
  const auto ids_with = [&](const std::string& config, const std::string& text) {
    dir.file("tokenizer_config.json", config);
    return Tokenizer::from_dir(folder).encode(text);
  };
  const auto mask = [](const char* lstrip, const char* rstrip) {
    return std::string(R"({"content": "<mask>", "lstrip": )") + lstrip + R"(, "rstrip": )" + rstrip + "}";
  };
  EXPECT_EQ(ids_with("{}", "a <mask> a"), (Ids{0, 5, 4, 6, 2}));
  EXPECT_EQ(ids_with(R"({"mask_token": "<mask>"})", "a <mask> a"), (Ids{0, 5, 4, 6, 2}));
  EXPECT_EQ(ids_with(R"({"added_tokens_decoder": {"4": )" + mask("false", "false") + "}}", "a <mask> a"),
            (Ids{0, 5, 7, 4, 6, 2}));
  EXPECT_EQ(ids_with(R"({"added_tokens_decoder": {"4": )" + mask("true", "true") + "}}", "a <mask> a"),
            (Ids{0, 5, 4, 5, 2}));
  EXPECT_EQ(ids_with(R"({"mask_token": )" + mask("false", "false") + "}", "a <mask> a"), (Ids{0, 5, 7, 4, 6, 2}));
  // The added_tokens_decoder entry wins over the attribute.
  EXPECT_EQ(ids_with(R"({"mask_token": )" + mask("false", "false") + R"(, "added_tokens_decoder": {"4": )" +
                         mask("true", "false") + "}}",
                     "a <mask> a"),
            (Ids{0, 5, 4, 6, 2}));
  // special_tokens_map.json's attribute wins over tokenizer_config.json's, the decoder entry over both.
  const fs::path map = dir.file("special_tokens_map.json", R"({"mask_token": )" + mask("false", "false") + "}");
  EXPECT_EQ(ids_with("{}", "a <mask> a"), (Ids{0, 5, 7, 4, 6, 2}));
  dir.file("special_tokens_map.json", R"({"mask_token": )" + mask("true", "false") + "}");
  EXPECT_EQ(ids_with(R"({"mask_token": )" + mask("false", "false") + "}", "a <mask> a"), (Ids{0, 5, 4, 6, 2}));
  dir.file("special_tokens_map.json", R"({"mask_token": )" + mask("false", "false") + "}");
  EXPECT_EQ(ids_with(R"({"added_tokens_decoder": {"4": )" + mask("true", "false") + "}}", "a <mask> a"),
            (Ids{0, 5, 4, 6, 2}));
  dir.file("special_tokens_map.json", R"({"mask_token": "[MASK]"})");
  expect_input_error([&] { ids_with("{}", ""); }, {map.string(), "mask_token", "\"[MASK]\" is not RoBERTa's"});
  dir.file("special_tokens_map.json", R"({"additional_special_tokens": ["a"]})");
  expect_input_error([&] { ids_with("{}", ""); }, {map.string(), "additional_special_tokens", "save_pretrained"});
  fs::remove(map);
  EXPECT_EQ(ids_with(R"({"additional_special_tokens": []})", "a <mask> a"), (Ids{0, 5, 4, 6, 2}));
  expect_input_error([&] { ids_with(R"({"additional_special_tokens": ["a"]})", ""); },
                     {"tokenizer_config.json", "additional_special_tokens"});

  EXPECT_EQ(ids_with(R"({"added_tokens_decoder": {"2": {"content": "</s>", "lstrip": true, "rstrip": true}}})",
                     "a </s> a"),
            (Ids{0, 5, 2, 5, 2}));
  // Spacing decides ids, so the hash tells the tokenizers apart.
  const std::string eos_stripping = Tokenizer::from_dir(folder).hash();
  dir.file("tokenizer_config.json", "{}");
  EXPECT_NE(Tokenizer::from_dir(folder).hash(), eos_stripping);

  const std::string config = (dir.path() / "tokenizer_config.json").string();
  dir.file("tokenizer_config.json", R"({"mask_token": "[MASK]"})");
  expect_input_error([&] { Tokenizer::from_dir(folder); },
                     {config, "mask_token", "\"[MASK]\" is not RoBERTa's <mask>", "save_pretrained"});
  dir.file("tokenizer_config.json", R"({"cls_token": {"content": "</s>"}})");
  expect_input_error([&] { Tokenizer::from_dir(folder); }, {config, "cls_token", "is not RoBERTa's <s>"});
  dir.file("tokenizer_config.json", R"({"pad_token": 1})");
  expect_input_error([&] { Tokenizer::from_dir(folder); }, {config, "pad_token", "expected a string or an object"});
  dir.file("tokenizer_config.json", R"({"added_tokens_decoder": {"4": {"content": "<mask>", "lstrip": "yes"}}})");
  expect_input_error([&] { Tokenizer::from_dir(folder); }, {config, "added_tokens_decoder: 4", "lstrip"});
  dir.file("tokenizer_config.json", R"({"added_tokens_decoder": ["<mask>"]})");
  expect_input_error([&] { Tokenizer::from_dir(folder); }, {config, "added_tokens_decoder", "expected an object"});
}

// Beside a tokenizer.json, transformers (4.57.1 and 5.25.0 alike) takes the added_tokens_decoder
// entries' spacing over tokenizer.json's, but not that of attributes given as objects; it adds or
// splits out a token that the files name and tokenizer.json does not add, which is refused.
TEST(Tokenizer, TokenizerJsonFolderTakesItsConfigAsTransformersDoes) {
  TempDir dir;
  dir.file("tokenizer.json", R"({"version": "1.0", "added_tokens": [
    {"id": 0, "content": "<s>", "special": true}, {"id": 1, "content": "<pad>", "special": true},
    {"id": 2, "content": "</s>", "special": true}, {"id": 3, "content": "<unk>", "special": true},
    {"id": 4, "content": "<mask>", "lstrip": true, "normalized": false, "special": true}],
    "normalizer": null, "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false},
    "post_processor": {"type": "RobertaProcessing", "sep": ["</s>", 2], "cls": ["<s>", 0]},
    "decoder": {"type": "ByteLevel"},
    "model": {"type": "BPE", "vocab": {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3, "<mask>": 4, "a": 5,
              "\u0120a": 6, "\u0120": 7}, "merges": [["\u0120", "a"]]}})");
  const std::string folder = dir.path().string();
  const auto ids_with = [&](const std::string& config, const std::string& map) {
    dir.file("tokenizer_config.json", config);
    dir.file("special_tokens_map.json", map);
    return Tokenizer::from_dir(folder).encode("a <mask> a");
  };
  const auto mask = [](const char* lstrip) {
    return std::string(R"({"content": "<mask>", "lstrip": )") + lstrip + "}";
  };
  EXPECT_EQ(ids_with("{}", "{}"), (Ids{0, 5, 4, 6, 2}));
  EXPECT_EQ(ids_with(R"({"added_tokens_decoder": {"4": )" + mask("false") + "}}", "{}"), (Ids{0, 5, 7, 4, 6, 2}));
  EXPECT_EQ(ids_with(R"({"mask_token": )" + mask("false") + "}", R"({"mask_token": )" + mask("false") + "}"),
            (Ids{0, 5, 4, 6, 2}));
  EXPECT_EQ(ids_with(R"({"mask_token": "<mask>", "additional_special_tokens": ["<mask>"]})", "{}"),
            (Ids{0, 5, 4, 6, 2}));

  const std::string config = (dir.path() / "tokenizer_config.json").string();
  const std::string map = (dir.path() / "special_tokens_map.json").string();
  expect_input_error([&] { ids_with(R"({"mask_token": "[MASK]"})", "{}"); },
                     {config, "mask_token", "\"[MASK]\" is not an added token of tokenizer.json", "save_pretrained"});
  expect_input_error([&] { ids_with("{}", R"({"additional_special_tokens": [{"content": "a"}]})"); },
                     {map, "additional_special_tokens[0]", "\"a\" is not an added token"});
  expect_input_error([&] { ids_with(R"({"added_tokens_decoder": {"8": {"content": "<ent>"}}})", "{}"); },
                     {config, "added_tokens_decoder: 8", "\"<ent>\" is not an added token of tokenizer.json at this id"});
  expect_input_error([&] { ids_with(R"({"added_tokens_decoder": {"3": {"content": "<mask>"}}})", "{}"); },
                     {config, "added_tokens_decoder: 3", "at this id"});
}

TEST(Tokenizer, ErrorsNameTheFileAndTheLine) {
  TempDir dir;
  const std::string good_vocab =
      R"({"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3, "<mask>": 4, "a": 5, "b": 6, "ab": 7})";
  const std::string vocab = dir.file("vocab.json", good_vocab).string();
  const std::string merges = dir.file("merges.txt", "#version: 0.2\na b\n").string();
  EXPECT_EQ(Tokenizer::from_files(vocab, merges).encode("ab", false), (Ids{7}));

  const std::string missing = (dir.path() / "missing.json").string();
  expect_input_error([&] { Tokenizer::from_files(missing, merges); }, {missing, "cannot open"});
  expect_input_error([&] { Tokenizer::from_files(vocab, missing); }, {missing, "cannot open"});
  expect_input_error([&] { Tokenizer::from_json(missing); }, {missing, "cannot open"});
  expect_input_error([&] { Tokenizer::from_dir((dir.path() / "nowhere").string()); },
                     {"nowhere", "tokenizer.json"});

  // vocab.json: syntax errors name the line; bad ids name the token.
  const std::string broken = dir.file("broken.json", "{\"a\": 0,\n\"b\": }\n").string();
  expect_input_error([&] { Tokenizer::from_files(broken, merges); },
                     {broken, "malformed JSON", "line 2"});
  const std::string bad_id = dir.file("bad_id.json", R"({"a": "zero"})").string();
  expect_input_error([&] { Tokenizer::from_files(bad_id, merges); }, {bad_id, "\"a\"", "id"});
  const std::string negative = dir.file("negative.json", R"({"a": -3})").string();
  expect_input_error([&] { Tokenizer::from_files(negative, merges); }, {negative, "-3"});
  const std::string list = dir.file("list.json", R"(["a", "b"])").string();
  expect_input_error([&] { Tokenizer::from_files(list, merges); }, {list, "object"});
  const std::string no_merges = dir.file("no_merges.txt", "#version: 0.2\n").string();
  const std::string same_id = dir.file(
      "same_id.json", R"({"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3, "<mask>": 4, "a": 5, "b": 5})")
      .string();
  expect_input_error([&] { Tokenizer::from_files(same_id, no_merges); }, {same_id, "same id 5"});
  const std::string no_mask =
      dir.file("no_mask.json", R"({"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3, "a": 5, "b": 6, "ab": 7})")
          .string();
  expect_input_error([&] { Tokenizer::from_files(no_mask, merges); }, {no_mask, "<mask>"});

  // merges.txt: the line of the bad merge.
  const std::string three = dir.file("three.txt", "#version: 0.2\na b\na b ab\n").string();
  expect_input_error([&] { Tokenizer::from_files(vocab, three); },
                     {three + ":3", "two tokens", "\"a b ab\""});
  const std::string one = dir.file("one.txt", "a b\n\nb a\n").string();
  expect_input_error([&] { Tokenizer::from_files(vocab, one); }, {one + ":2", "two tokens"});
  const std::string unknown = dir.file("unknown.txt", "#version: 0.2\na b\nab c\n").string();
  expect_input_error([&] { Tokenizer::from_files(vocab, unknown); },
                     {unknown + ":3", "\"c\"", "not in the vocabulary"});
  const std::string merged = dir.file("merged.txt", "b a\n").string();
  expect_input_error([&] { Tokenizer::from_files(vocab, merged); }, {merged + ":1", "\"ba\""});

  // tokenizer.json: syntax errors name the line, the rest names the key.
  json good = json::parse(read_bytes(kDir / "unk" / "tokenizer.json"));
  const auto write = [&](const std::string& name, const json& j) {
    return dir.file(name, j.dump(2)).string();
  };
  EXPECT_EQ(Tokenizer::from_json(write("good.json", good)).encode("ab"), (Ids{0, 9, 2}));
  std::string text = good.dump(2);
  const std::string truncated = dir.file("truncated.json", text.substr(0, text.size() / 2)).string();
  expect_input_error([&] { Tokenizer::from_json(truncated); },
                     {truncated, "malformed JSON", "line "});
  json no_model = good;
  no_model.erase("model");
  const std::string p1 = write("no_model.json", no_model);
  expect_input_error([&] { Tokenizer::from_json(p1); }, {p1, "\"model\""});
  json normalizer = good;
  normalizer["normalizer"] = {{"type", "Lowercase"}};
  const std::string p2 = write("normalizer.json", normalizer);
  expect_input_error([&] { Tokenizer::from_json(p2); }, {p2, "normalizer", "Lowercase"});
  json bad_merge = good;
  bad_merge["model"]["merges"][1] = 42;
  const std::string p3 = write("bad_merge.json", bad_merge);
  expect_input_error([&] { Tokenizer::from_json(p3); }, {p3, "model.merges[1]"});
  json bad_vocab = good;
  bad_vocab["model"]["vocab"]["ab"] = 1.5;
  const std::string p4 = write("bad_vocab.json", bad_vocab);
  expect_input_error([&] { Tokenizer::from_json(p4); }, {p4, "model.vocab", "\"ab\"", "1.5"});
  json dropout = good;
  dropout["model"]["dropout"] = 0.1;
  const std::string p5 = write("dropout.json", dropout);
  expect_input_error([&] { Tokenizer::from_json(p5); }, {p5, "dropout"});
  json pre = good;
  pre["pre_tokenizer"] = {{"type", "Whitespace"}};
  const std::string p6 = write("pre.json", pre);
  expect_input_error([&] { Tokenizer::from_json(p6); }, {p6, "pre_tokenizer", "ByteLevel"});
  json added = good;
  added["added_tokens"][0]["lstrip"] = "yes";
  const std::string p7 = write("added.json", added);
  expect_input_error([&] { Tokenizer::from_json(p7); }, {p7, "added_tokens[0]", "lstrip"});
  json post = good;
  post["post_processor"] = {{"type", "Unknown"}};
  const std::string p8 = write("post.json", post);
  expect_input_error([&] { Tokenizer::from_json(p8); }, {p8, "post_processor", "Unknown"});
}

TEST(Tokenizer, ReadsOtherTokenizerJsonForms) {
  // Merges as "a b" strings (tokenizers < 0.20), a TemplateProcessing post-processor, and
  // ignore_merges; the ids must follow each.
  TempDir dir;
  json j = json::parse(read_bytes(kDir / "unk" / "tokenizer.json"));
  json merges = json::array();
  for (const json& m : j["model"]["merges"])
    merges.push_back(m[0].get<std::string>() + " " + m[1].get<std::string>());
  j["model"]["merges"] = merges;
  j["post_processor"] = json::parse(R"({"type": "TemplateProcessing",
      "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}},
                 {"SpecialToken": {"id": "<pad>", "type_id": 0}},
                 {"Sequence": {"id": "A", "type_id": 0}},
                 {"SpecialToken": {"id": "</s>", "type_id": 0}}],
      "pair": [], "special_tokens": {"<s>": {"id": "<s>", "ids": [0], "tokens": ["<s>"]},
                                     "<pad>": {"id": "<pad>", "ids": [1], "tokens": ["<pad>"]},
                                     "</s>": {"id": "</s>", "ids": [2], "tokens": ["</s>"]}}})");
  const std::string path = dir.file("tokenizer.json", j.dump()).string();
  const Tokenizer tok = Tokenizer::from_json(path);
  EXPECT_EQ(tok.encode("ab ab"), (Ids{0, 1, 9, 8, 9, 2}));  // "ab" 9, "Ġ" 8: a b merges first

  // ignore_merges takes a word that is in the vocabulary as it is, merges or not.
  j["model"]["merges"] = json::array();
  j["model"]["ignore_merges"] = true;
  const Tokenizer whole = Tokenizer::from_json(dir.file("ignore.json", j.dump()).string());
  EXPECT_EQ(whole.encode("ab ab abc", false), (Ids{9, 11, 8, 5, 6, 7}));
}
