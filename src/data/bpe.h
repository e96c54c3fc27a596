// The BPE model's core (internal to the tokenizer): the merge table by pair, the merge loop over
// one word, and the cache of merged words shared by all threads. The lookups run for every word
// of every text, so they are inline here; building and inserting are in bpe.cpp.
#pragma once

#include <array>
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <memory>
#include <string_view>
#include <vector>

namespace qarac::data::detail {

// (left id, right id) -> (rank, merged id) by open addressing: the merge loop looks up every
// adjacent pair of every word the cache has not seen, the hot path on a cold cache.
class MergeTable {
 public:
  struct Merge {
    int32_t rank;
    int32_t id;
  };

  // `merges` (left, right, merged) in rank order; a pair listed twice keeps its last rank, as in
  // Hugging Face.
  void build(const std::vector<std::array<int32_t, 3>>& merges);

  const Merge* find(int32_t left, int32_t right) const {
    const uint64_t k = key(left, right);
    for (size_t slot = home(k);; slot = (slot + 1) & (keys_.size() - 1)) {
      if (keys_[slot] == k) return &values_[slot];
      if (keys_[slot] == kEmpty) return nullptr;
    }
  }

 private:
  static constexpr uint64_t kEmpty = ~uint64_t{0};  // ids are below 2^24: never a key
  static uint64_t key(int32_t left, int32_t right) {
    return uint64_t{static_cast<uint32_t>(left)} << 32 | static_cast<uint32_t>(right);
  }
  // Fibonacci hashing: the top bits of key × 2^64/φ spread consecutive ids over the table.
  size_t home(uint64_t k) const { return static_cast<size_t>((k * 0x9E3779B97F4A7C15ull) >> shift_); }

  std::vector<uint64_t> keys_;
  std::vector<Merge> values_;
  int shift_ = 60;
};

// BPE on one word's bytes, appending its ids to `out`. `byte_ids` holds the id of each byte's
// one-character token (-1 for none); `unk` is the model's unknown token (-1 for none) and
// `fuse_unk` its fuse_unk setting.
void merge_word(std::string_view word, const MergeTable& merges,
                const std::array<int32_t, 256>& byte_ids, int32_t unk, bool fuse_unk,
                std::vector<int32_t>& out);

// Merged words by their bytes, shared by all copies of a tokenizer and all threads: an
// insert-only open-addressing table whose slots are published with compare-and-swap, so a
// lookup takes no lock and costs one probe and one entry read in the common case (a mutex per
// lookup cost more than the lookup itself). Like Hugging Face's cache it stops taking words when
// full instead of evicting: the words that come first in a corpus are mostly its frequent ones.
class WordCache {
 public:
  static constexpr size_t kCapacity = size_t{1} << 17;  // words
  static constexpr size_t kMaxWordBytes = 256;          // longer words are rare: not cached

  WordCache();
  ~WordCache();
  WordCache(const WordCache&) = delete;
  WordCache& operator=(const WordCache&) = delete;

  // Appends the ids of `word` to `out` when cached.
  bool append(std::string_view word, size_t hash, std::vector<int32_t>& out) const {
    for (size_t i = home(hash);; i = (i + 1) & (kSlots - 1)) {
      const Entry* e = slots_[i].load(std::memory_order_acquire);
      if (e == nullptr) return false;
      if (e->matches(word, hash)) {
        out.insert(out.end(), e->ids(), e->ids() + e->count);
        return true;
      }
    }
  }

  void insert(std::string_view word, size_t hash, const int32_t* ids, size_t count);

  size_t size() const { return size_.load(std::memory_order_relaxed); }

 private:
  static constexpr size_t kSlots = 2 * kCapacity;  // load factor at most 1/2: short probes

  // One allocation: this header, the ids, then the word's bytes.
  struct Entry {
    size_t hash;
    uint32_t bytes, count;

    static Entry* make(std::string_view word, size_t hash, const int32_t* ids, size_t count);
    int32_t* ids() { return reinterpret_cast<int32_t*>(this + 1); }
    const int32_t* ids() const { return reinterpret_cast<const int32_t*>(this + 1); }
    char* word() { return reinterpret_cast<char*>(ids() + count); }
    const char* word() const { return reinterpret_cast<const char*>(ids() + count); }
    bool matches(std::string_view w, size_t h) const {
      return hash == h && bytes == w.size() && std::memcmp(word(), w.data(), w.size()) == 0;
    }
  };

  // Fibonacci hashing, as in MergeTable.
  static size_t home(size_t hash) {
    return static_cast<size_t>((uint64_t{hash} * 0x9E3779B97F4A7C15ull) >> (64 - kSlotBits));
  }
  static constexpr int kSlotBits = 18;
  static_assert(size_t{1} << kSlotBits == kSlots, "kSlotBits must match kSlots");

  std::unique_ptr<std::atomic<Entry*>[]> slots_;
  std::atomic<size_t> size_{0};
};

}  // namespace qarac::data::detail
