// The state behind a Tokenizer (internal): what the loaders of tokenizer_files.cpp read, what
// finish() derives from it, and the encoding pipeline over it (tokenizer.cpp); plus the message
// helpers the loaders and finish() share, and the hash (tokenizer_hash.cpp).
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "core/error.h"
#include "data/added_tokens.h"
#include "data/bpe.h"

namespace qarac::data::detail {

struct TokenizerTables {
  // Ids are at most this: a bound that keeps a corrupt file from allocating gigabytes.
  static constexpr int64_t kMaxId = int64_t{1} << 24;
  // Ids below the largest that name no token (TokenizerTables::finish).
  static constexpr int64_t kMaxUnusedIds = int64_t{1} << 16;

  // As read from the files.
  std::unordered_map<std::string, int32_t> vocab;      // the model's vocabulary
  std::vector<std::array<int32_t, 3>> merge_list;      // (left, right, merged) by rank
  std::vector<AddedToken> added;
  int32_t model_unk = -1;  // the model's unknown token; -1: bytes not in the vocabulary vanish
  bool fuse_unk = false;
  bool ignore_merges = false;
  bool add_prefix_space = false;
  bool use_regex = true;
  std::vector<int32_t> prefix, suffix;  // what the post-processor puts around a text

  // Derived by finish().
  std::vector<std::string> tokens;  // id -> vocabulary form
  std::vector<std::string> bytes;   // id -> what decode writes
  std::vector<uint8_t> present;     // id is in use
  std::vector<uint8_t> special;
  std::unordered_map<std::string, int32_t> added_ids;
  MergeTable merges;
  std::array<int32_t, 256> byte_ids{};  // id of each byte's one-character token, -1 for none
  std::vector<AddedMatcher> passes;     // tokens with normalized false, then true
  int32_t bos = -1, eos = -1, pad = -1, unk = -1, mask = -1;
  std::string hash;

  mutable WordCache cache;

  // Everything derived from what the loaders read: the id tables, the byte tokens, the
  // added-token passes, the special ids and the hash. `where` names the source in messages.
  void finish(const std::string& where);
  int32_t find_token(std::string_view token) const;
  void encode(std::string_view text, bool add_special, std::vector<int32_t>& out) const;
  void check_id(int32_t id) const {
    QARAC_CHECK(id >= 0 && static_cast<size_t>(id) < present.size() && present[id],
                "token id ", id, " is not in the vocabulary (size ", present.size(), ")");
  }

 private:
  void split_added(size_t pass, std::string_view text, std::vector<int32_t>& out) const;
  void encode_segment(std::string_view segment, std::vector<int32_t>& out) const;
  void encode_piece(std::string_view piece, std::vector<int32_t>& out) const;
};

// "fnv1a64:<16 hex digits>" over everything in `t` that decides the ids (Tokenizer::hash()).
std::string tokenizer_hash(const TokenizerTables& t);

// `text` in double quotes with control characters, quotes and backslashes escaped, so that an
// error message quoting a token stays on one line.
std::string quote(std::string_view text);

template <class... Args>
[[noreturn]] void fail(const std::string& where, const Args&... what) {
  throw InputError(::qarac::detail::concat(where, ": ", what...));
}

}  // namespace qarac::data::detail
