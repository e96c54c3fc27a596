// The byte-level BPE tokenizer of RoBERTa, giving the same ids as Hugging Face's `tokenizers`
// (RobertaTokenizerFast) for every input: special tokens are split out first as whole tokens
// (added tokens: leftmost-longest match, lstrip/rstrip/single_word honoured, no normalisation),
// the rest is pre-tokenised with the GPT-2 pattern
//   's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
// (Unicode 16.0 classes, as in tokenizers 0.23), each piece's bytes become symbols and are
// merged by rank, and RobertaProcessing wraps the result in <s> ... </s>. Reads vocab.json +
// merges.txt (what RobertaTokenizer reads) or one tokenizer.json.
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace qarac::data {

namespace detail {
struct TokenizerTables;
}

// What vocab.json + merges.txt do not record; tokenizer.json carries its own settings.
struct TokenizerOptions {
  // Prepend a space to every text not starting with one (RobertaTokenizer's add_prefix_space):
  // makes the first word tokenise like the others.
  bool add_prefix_space = false;
  // How a special token matches around whitespace, by its text ("<mask>"): what
  // tokenizer_config.json says of it. A token not named keeps RobertaTokenizer's default: only
  // <mask> takes the whitespace before it.
  struct Spacing {
    bool single_word = false;
    bool lstrip = false;
    bool rstrip = false;
  };
  std::map<std::string, Spacing> special_spacing;
};

// An immutable tokenizer. Copies share the tables and the cache of merged words; every method is
// const and safe to call from many threads at once (the cache is a lock-free insert-only table).
//
// Input text is bytes, meant to be UTF-8. Bytes that are not valid UTF-8 are tokenised as
// punctuation, one byte at a time, so that decode(encode(x, false)) gives back x exactly for every
// x without special-token text in it (Hugging Face cannot take such input at all).
class Tokenizer {
 public:
  // RobertaTokenizerFast's pipeline around vocab.json + merges.txt: no unknown token (bytes
  // missing from the vocabulary are dropped, as there), <s> <pad> </s> <unk> as special tokens,
  // <mask> with lstrip (unless options.special_spacing says otherwise), RobertaProcessing. All
  // five must be in vocab.json. qarac::InputError,
  // naming the file (and the line of merges.txt), for anything missing or malformed.
  static Tokenizer from_files(const std::string& vocab_json, const std::string& merges_txt,
                              const TokenizerOptions& options = {});
  // A Hugging Face tokenizer.json of a byte-level BPE: model BPE (no dropout, no byte fallback,
  // no subword prefix or suffix), no normalizer, pre-tokenizer and decoder ByteLevel,
  // post-processor RobertaProcessing, BertProcessing, TemplateProcessing, ByteLevel or none.
  // The file's truncation and padding are not applied (the loader batches). InputError for
  // anything else, naming the file and the JSON key; JSON syntax errors name the line.
  static Tokenizer from_json(const std::string& tokenizer_json);
  // A folder as transformers' AutoTokenizer reads it: `dir`/tokenizer.json when present, with
  // tokenizer_config.json's added_tokens_decoder spacing over its own; else `dir`/vocab.json +
  // `dir`/merges.txt with tokenizer_config.json's add_prefix_space and the special tokens' lstrip,
  // rstrip and single_word (its added_tokens_decoder, else attributes given as objects there or in
  // special_tokens_map.json). InputError naming the file for what transformers would encode and
  // this reading would not: tokens those files name that the tokenizer does not have as special or
  // added tokens, and beside vocab.json + merges.txt, added_tokens.json and special-token
  // attributes naming other tokens than RoBERTa's.
  static Tokenizer from_dir(const std::string& dir);
  // Whether `dir` holds the files from_dir reads (not whether they parse).
  static bool found_in(const std::string& dir);

  // Token ids of `text`; with add_special, wrapped as the post-processor says (<s> text </s>).
  std::vector<int32_t> encode(std::string_view text, bool add_special = true) const;
  // The same, appended to `out` (flat token arrays of the shard writer).
  void encode_append(std::string_view text, std::vector<int32_t>& out,
                     bool add_special = true) const;

  // The bytes the ids stand for; skip_special drops the special tokens. Unlike Hugging Face,
  // bytes that do not form valid UTF-8 (ids cut inside a character) are returned as they are,
  // not replaced by U+FFFD. qarac::Error for an id outside the vocabulary.
  std::string decode(const std::vector<int32_t>& ids, bool skip_special = false) const;
  std::string decode(const int32_t* ids, size_t count, bool skip_special = false) const;

  // Id of a token in its vocabulary form ("Ġthe", "<mask>"); -1 when there is none.
  int32_t token_id(std::string_view token) const;
  // The vocabulary form of an id; qarac::Error outside the vocabulary.
  const std::string& token(int32_t id) const;
  bool is_special(int32_t id) const;
  // Whether `id` stands for a token: below vocab_size() and not in a gap between ids.
  bool has_id(int32_t id) const;

  int32_t bos_id() const;   // <s>
  int32_t eos_id() const;   // </s>
  int32_t pad_id() const;   // <pad>
  int32_t unk_id() const;   // <unk>
  int32_t mask_id() const;  // <mask>

  // One more than the largest id (Hugging Face's get_vocab_size(with_added_tokens=True) when the
  // ids have no holes).
  size_t vocab_size() const;

  // "fnv1a64:<16 hex digits>" over everything that decides the ids: vocabulary, merges by rank,
  // added tokens and their flags, pre- and post-processing settings. Equal for vocab.json +
  // merges.txt and the tokenizer.json of the same tokenizer; recorded in shard metadata so that
  // training refuses shards made by another tokenizer.
  const std::string& hash() const;

  // Number of words in the cache of merged words (for the benchmark's cold/warm report).
  size_t cache_size() const;

 private:
  explicit Tokenizer(std::shared_ptr<const detail::TokenizerTables> tables);
  std::shared_ptr<const detail::TokenizerTables> tables_;
};

// Cuts token ids longer than max_length to max_length, keeping the closing </s> (eos) when there
// is one, so that a model still sees where the text ends and the decoder learns to stop.
void truncate_ids(std::vector<int32_t>& ids, int64_t max_length, int32_t eos);

// The pieces the GPT-2 pattern cuts `text` into, as views into it (exposed for tests).
std::vector<std::string_view> byte_level_pieces(std::string_view text);

}  // namespace qarac::data
