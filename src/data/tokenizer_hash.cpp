// The tokenizer's fingerprint, Tokenizer::hash(): FNV-1a over everything that decides the ids,
// recorded in shard metadata so that training refuses shards made by another tokenizer.
#include <algorithm>
#include <string_view>

#include "core/hash.h"
#include "data/tokenizer_tables.h"

namespace qarac::data::detail {

// An added token's `normalized` flag is left out: with no normalizer it only orders the two
// passes, and RoBERTa files differ in it.
std::string tokenizer_hash(const TokenizerTables& t) {
  Fnv1a64 h;  // core/hash.h: frozen, the hash is recorded in every task stream
  h.str("qarac byte-level BPE v1");
  h.u64(t.tokens.size());
  for (size_t id = 0; id < t.tokens.size(); ++id) {
    h.u64(t.present[id]);
    h.str(t.tokens[id]);
  }
  h.u64(t.merge_list.size());
  for (const auto& m : t.merge_list) {
    h.i64(m[0]);
    h.i64(m[1]);
  }
  std::vector<const AddedToken*> by_id;
  for (const AddedToken& a : t.added) by_id.push_back(&a);
  std::sort(by_id.begin(), by_id.end(),
            [](const AddedToken* a, const AddedToken* b) { return a->id < b->id; });
  h.u64(by_id.size());
  for (const AddedToken* a : by_id) {
    h.i64(a->id);
    h.str(a->content);
    h.u64(uint64_t{a->single_word} | uint64_t{a->lstrip} << 1 | uint64_t{a->rstrip} << 2 |
          uint64_t{a->special} << 3);
  }
  h.i64(t.model_unk);
  h.u64(uint64_t{t.fuse_unk} | uint64_t{t.ignore_merges} << 1 | uint64_t{t.add_prefix_space} << 2 |
        uint64_t{t.use_regex} << 3);
  h.u64(t.prefix.size());
  for (const int32_t id : t.prefix) h.i64(id);
  h.u64(t.suffix.size());
  for (const int32_t id : t.suffix) h.i64(id);
  return h.hex();
}

}  // namespace qarac::data::detail
