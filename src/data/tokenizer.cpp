// The byte-level BPE tokenizer (see tokenizer.h): the encoding pipeline (added tokens, the GPT-2
// pre-tokenizer, the BPE model with its word cache), the tables finish() derives from what the
// loaders read, and the Tokenizer facade over them. Each step follows the Rust code of Hugging
// Face `tokenizers` (AddedVocabulary, pre_tokenizers::ByteLevel, models::bpe) closely enough to
// give its ids for every input; the parity data in tests/data/tokenizer is made with that
// library. The pieces: pretokenizer.h (Unicode classes, the pattern), byte_alphabet.h, bpe.h
// (merges, cache), added_tokens.h, tokenizer_files.cpp (loaders), tokenizer_hash.cpp.
#include "data/tokenizer.h"

#include <algorithm>
#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "data/byte_alphabet.h"
#include "data/pretokenizer.h"
#include "data/tokenizer_tables.h"

namespace qarac::data {
namespace detail {

std::string quote(std::string_view text) {
  static const char* hex = "0123456789abcdef";
  std::string out = "\"";
  for (const char ch : text) {
    const auto b = static_cast<uint8_t>(ch);
    if (b < 0x20 || b == 0x7F || ch == '"' || ch == '\\') {
      out += "\\x";
      out += hex[b >> 4];
      out += hex[b & 15];
    } else {
      out += ch;
    }
  }
  return out + "\"";
}

int32_t TokenizerTables::find_token(std::string_view token) const {
  const std::string key(token);
  if (const auto it = added_ids.find(key); it != added_ids.end()) return it->second;
  if (const auto it = vocab.find(key); it != vocab.end()) return it->second;
  return -1;
}

void TokenizerTables::encode(std::string_view text, bool add_special,
                             std::vector<int32_t>& out) const {
  if (add_special) out.insert(out.end(), prefix.begin(), prefix.end());
  split_added(0, text, out);
  if (add_special) out.insert(out.end(), suffix.begin(), suffix.end());
}

// Pass `pass` of the added tokens over `text`; what no pass claims is encoded by the model.
void TokenizerTables::split_added(size_t pass, std::string_view text,
                                  std::vector<int32_t>& out) const {
  if (pass == passes.size()) {
    encode_segment(text, out);
    return;
  }
  passes[pass].split(
      text, [&](std::string_view gap) { split_added(pass + 1, gap, out); },
      [&](int32_t id) { out.push_back(id); });
}

void TokenizerTables::encode_segment(std::string_view segment, std::vector<int32_t>& out) const {
  // ByteLevel's add_prefix_space works on each stretch between added tokens.
  std::string prefixed;
  if (add_prefix_space && segment.front() != ' ') {
    prefixed.reserve(segment.size() + 1);
    prefixed += ' ';
    prefixed += segment;
    segment = prefixed;
  }
  if (!use_regex) {
    encode_piece(segment, out);
    return;
  }
  for_each_piece(segment, [&](std::string_view piece) { encode_piece(piece, out); });
}

void TokenizerTables::encode_piece(std::string_view piece, std::vector<int32_t>& out) const {
  // One byte has nothing to merge: spaces and punctuation skip the cache.
  if (piece.size() == 1 && byte_ids[static_cast<uint8_t>(piece[0])] >= 0) {
    out.push_back(byte_ids[static_cast<uint8_t>(piece[0])]);
    return;
  }
  if (ignore_merges) {
    if (const auto it = vocab.find(to_byte_level(piece)); it != vocab.end()) {
      out.push_back(it->second);
      return;
    }
  }
  if (piece.size() > WordCache::kMaxWordBytes) {
    merge_word(piece, merges, byte_ids, model_unk, fuse_unk, out);
    return;
  }
  const size_t word_hash = std::hash<std::string_view>{}(piece);
  if (cache.append(piece, word_hash, out)) return;
  const size_t first = out.size();
  merge_word(piece, merges, byte_ids, model_unk, fuse_unk, out);
  cache.insert(piece, word_hash, out.data() + first, out.size() - first);
}

void TokenizerTables::finish(const std::string& where) {
  int64_t size = 0;
  for (const auto& [token, id] : vocab) size = std::max<int64_t>(size, int64_t{id} + 1);
  for (const AddedToken& t : added) size = std::max<int64_t>(size, int64_t{t.id} + 1);
  // Vocabularies number their tokens densely (added tokens may leave a few ids unused); the id
  // tables are as long as the largest id, so a file of a few tokens with huge ids would cost
  // gigabytes. More unused ids than kMaxUnusedIds is refused.
  const int64_t used = static_cast<int64_t>(vocab.size() + added.size());
  if (size - used > kMaxUnusedIds)
    fail(where, "ids reach ", size - 1, " but only ", used, " tokens are defined (at most ", kMaxUnusedIds,
         " unused ids are taken)");
  tokens.assign(static_cast<size_t>(size), std::string());
  present.assign(static_cast<size_t>(size), 0);
  special.assign(static_cast<size_t>(size), 0);
  for (const auto& [token, id] : vocab) {
    if (present[id])
      fail(where, "tokens ", quote(tokens[id]), " and ", quote(token), " have the same id ", id);
    tokens[id] = token;
    present[id] = 1;
  }
  // An added token's content is what its id decodes to, even where the vocabulary has the id.
  for (const AddedToken& t : added) {
    if (!added_ids.emplace(t.content, t.id).second)
      fail(where, "added token ", quote(t.content), " is listed twice");
    tokens[t.id] = t.content;
    present[t.id] = 1;
    special[t.id] = t.special;
  }
  // The post-processor's ids go into every encoded text and from there into task streams and
  // embedding lookups: each must be a token of the vocabulary.
  for (const std::vector<int32_t>* ids : {&prefix, &suffix})
    for (const int32_t id : *ids)
      if (static_cast<size_t>(id) >= present.size() || !present[id])
        fail(where, "post_processor: id ", id, " is not in the vocabulary (", present.size(), " ids)");
  bytes.resize(tokens.size());
  for (size_t id = 0; id < tokens.size(); ++id) bytes[id] = token_bytes(tokens[id]);

  const ByteAlphabet& alphabet = byte_alphabet();
  for (size_t b = 0; b < 256; ++b) {
    const auto it = vocab.find(alphabet.utf8[b]);
    byte_ids[b] = it == vocab.end() ? -1 : it->second;
  }
  merges.build(merge_list);

  std::vector<AddedToken> raw, normalized;
  for (const AddedToken& t : added) (t.normalized ? normalized : raw).push_back(t);
  passes.emplace_back(std::move(raw));
  passes.emplace_back(std::move(normalized));

  const std::pair<int32_t*, const char*> specials[] = {
      {&bos, "<s>"}, {&pad, "<pad>"}, {&eos, "</s>"}, {&unk, "<unk>"}, {&mask, "<mask>"}};
  for (const auto& [id, name] : specials) {
    *id = find_token(name);
    if (*id < 0)
      fail(where, "no token ", name, ": QARAC needs RoBERTa's <s> <pad> </s> <unk> <mask>");
  }
  hash = tokenizer_hash(*this);
}

}  // namespace detail

Tokenizer::Tokenizer(std::shared_ptr<const detail::TokenizerTables> tables)
    : tables_(std::move(tables)) {}

std::vector<int32_t> Tokenizer::encode(std::string_view text, bool add_special) const {
  std::vector<int32_t> ids;
  ids.reserve(text.size() / 3 + tables_->prefix.size() + tables_->suffix.size() + 1);
  tables_->encode(text, add_special, ids);
  return ids;
}

void Tokenizer::encode_append(std::string_view text, std::vector<int32_t>& out,
                              bool add_special) const {
  tables_->encode(text, add_special, out);
}

std::string Tokenizer::decode(const std::vector<int32_t>& ids, bool skip_special) const {
  return decode(ids.data(), ids.size(), skip_special);
}

std::string Tokenizer::decode(const int32_t* ids, size_t count, bool skip_special) const {
  const detail::TokenizerTables& t = *tables_;
  std::string text;
  for (size_t i = 0; i < count; ++i) {
    t.check_id(ids[i]);
    if (!(skip_special && t.special[ids[i]])) text += t.bytes[ids[i]];
  }
  return text;
}

int32_t Tokenizer::token_id(std::string_view token) const { return tables_->find_token(token); }

const std::string& Tokenizer::token(int32_t id) const {
  tables_->check_id(id);
  return tables_->tokens[id];
}

bool Tokenizer::is_special(int32_t id) const {
  tables_->check_id(id);
  return tables_->special[id] != 0;
}

bool Tokenizer::has_id(int32_t id) const {
  return id >= 0 && static_cast<size_t>(id) < tables_->present.size() && tables_->present[id];
}

int32_t Tokenizer::bos_id() const { return tables_->bos; }
int32_t Tokenizer::eos_id() const { return tables_->eos; }
int32_t Tokenizer::pad_id() const { return tables_->pad; }
int32_t Tokenizer::unk_id() const { return tables_->unk; }
int32_t Tokenizer::mask_id() const { return tables_->mask; }
size_t Tokenizer::vocab_size() const { return tables_->tokens.size(); }
const std::string& Tokenizer::hash() const { return tables_->hash; }
size_t Tokenizer::cache_size() const { return tables_->cache.size(); }

void truncate_ids(std::vector<int32_t>& ids, int64_t max_length, int32_t eos) {
  if (static_cast<int64_t>(ids.size()) <= max_length) return;
  const bool keep_eos = ids.back() == eos;
  ids.resize(static_cast<size_t>(max_length));
  if (keep_eos && !ids.empty()) ids.back() = eos;
}

}  // namespace qarac::data
