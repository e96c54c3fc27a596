// The BPE model's core (see bpe.h): building the merge table, the merge loop that Hugging Face's
// models::bpe runs on a word, and the cache's allocation and lock-free insert.
#include "data/bpe.h"

#include <algorithm>

namespace qarac::data::detail {

void MergeTable::build(const std::vector<std::array<int32_t, 3>>& merges) {
  size_t capacity = 16;
  while (capacity < 2 * merges.size()) capacity *= 2;
  shift_ = 64;
  for (size_t c = capacity; c > 1; c /= 2) --shift_;
  keys_.assign(capacity, kEmpty);
  values_.assign(capacity, Merge{0, 0});
  for (size_t rank = 0; rank < merges.size(); ++rank) {
    const uint64_t k = key(merges[rank][0], merges[rank][1]);
    size_t slot = home(k);
    while (keys_[slot] != kEmpty && keys_[slot] != k) slot = (slot + 1) & (capacity - 1);
    keys_[slot] = k;
    values_[slot] = Merge{static_cast<int32_t>(rank), merges[rank][2]};
  }
}

// As Hugging Face's Word::merge_all does it: every byte starts as a symbol in a linked list; a
// min-heap holds the mergeable neighbour pairs by (rank, position); the best pair is merged,
// entries made stale by earlier merges are skipped, and the pairs the merged symbol forms with
// its neighbours are pushed. O(n log n) where rescanning the word would be O(n²).
void merge_word(std::string_view word, const MergeTable& merges,
                const std::array<int32_t, 256>& byte_ids, int32_t unk, bool fuse_unk,
                std::vector<int32_t>& out) {
  struct Symbol {
    int32_t id;  // -1 once merged into its left neighbour
    int32_t prev, next;
  };
  struct Candidate {
    int32_t rank, pos, id;
  };
  thread_local std::vector<Symbol> symbols;
  thread_local std::vector<Candidate> heap;
  symbols.clear();
  heap.clear();

  const auto add = [&](int32_t id) {
    const auto n = static_cast<int32_t>(symbols.size());
    if (n > 0) symbols.back().next = n;
    symbols.push_back(Symbol{id, n - 1, -1});
  };
  // Bytes without a token become the unknown token, consecutive ones fused into one when
  // fuse_unk says so; without an unknown token they are dropped (Hugging Face's merge_word).
  bool unk_pending = false;
  for (const char ch : word) {
    const int32_t id = byte_ids[static_cast<uint8_t>(ch)];
    if (id >= 0) {
      if (unk_pending) add(unk);
      unk_pending = false;
      add(id);
    } else if (unk >= 0) {
      if (unk_pending && !fuse_unk) add(unk);
      unk_pending = true;
    }
  }
  if (unk_pending) add(unk);
  if (symbols.empty()) return;

  // std heaps are max-heaps: "a below b" when a has the larger rank, then the larger position.
  const auto below = [](const Candidate& a, const Candidate& b) {
    return a.rank != b.rank ? a.rank > b.rank : a.pos > b.pos;
  };
  const auto push = [&](int32_t pos) {
    const Symbol& left = symbols[pos];
    if (const MergeTable::Merge* m = merges.find(left.id, symbols[left.next].id)) {
      heap.push_back(Candidate{m->rank, pos, m->id});
      std::push_heap(heap.begin(), heap.end(), below);
    }
  };
  for (int32_t pos = 0; pos + 1 < static_cast<int32_t>(symbols.size()); ++pos) push(pos);
  while (!heap.empty()) {
    std::pop_heap(heap.begin(), heap.end(), below);
    const Candidate top = heap.back();
    heap.pop_back();
    Symbol& left = symbols[top.pos];
    if (left.id < 0 || left.next < 0) continue;
    Symbol& right = symbols[left.next];
    // Stale when either symbol changed since the entry was pushed.
    const MergeTable::Merge* m = merges.find(left.id, right.id);
    if (m == nullptr || m->id != top.id) continue;
    left.id = top.id;
    right.id = -1;
    left.next = right.next;
    if (left.next >= 0) symbols[left.next].prev = top.pos;
    if (left.prev >= 0) push(left.prev);
    if (left.next >= 0) push(top.pos);
  }
  // Symbol 0 only ever absorbs its right neighbours, so the list starts there.
  for (int32_t pos = 0; pos >= 0; pos = symbols[pos].next) out.push_back(symbols[pos].id);
}

WordCache::WordCache() : slots_(new std::atomic<Entry*>[kSlots]) {
  for (size_t i = 0; i < kSlots; ++i) slots_[i].store(nullptr, std::memory_order_relaxed);
}

WordCache::~WordCache() {
  for (size_t i = 0; i < kSlots; ++i) ::operator delete(slots_[i].load(std::memory_order_relaxed));
}

void WordCache::insert(std::string_view word, size_t hash, const int32_t* ids, size_t count) {
  // Checked before the insert, so threads racing past it overfill by a few words; the table
  // has twice kCapacity slots and never fills up.
  if (size_.load(std::memory_order_relaxed) >= kCapacity) return;
  Entry* fresh = Entry::make(word, hash, ids, count);
  for (size_t i = home(hash);; i = (i + 1) & (kSlots - 1)) {
    Entry* occupant = nullptr;
    if (slots_[i].compare_exchange_strong(occupant, fresh, std::memory_order_acq_rel)) {
      size_.fetch_add(1, std::memory_order_relaxed);
      return;
    }
    if (occupant->matches(word, hash)) {  // another thread cached it first
      ::operator delete(fresh);
      return;
    }
  }
}

WordCache::Entry* WordCache::Entry::make(std::string_view word, size_t hash, const int32_t* ids,
                                         size_t count) {
  auto* e = static_cast<Entry*>(
      ::operator new(sizeof(Entry) + count * sizeof(int32_t) + word.size()));
  e->hash = hash;
  e->bytes = static_cast<uint32_t>(word.size());
  e->count = static_cast<uint32_t>(count);
  std::copy(ids, ids + count, e->ids());
  std::copy(word.begin(), word.end(), e->word());
  return e;
}

}  // namespace qarac::data::detail
