// The project's 64-bit hashes, in one place. Both are stored in files, so each is frozen bit for
// bit: changing one would make existing files fail to verify.
//   hash64   bulk data (checkpoint checksums, the replica check of master weights): four
//            independent multiply-rotate lanes over 8-byte words in the style of XXH64, near
//            memory speed, so hashing a multi-GB state costs about what reading it does.
//   Fnv1a64  fingerprints built field by field (the tokenizer's hash, "fnv1a64:<hex>", recorded
//            in every task stream): FNV-1a over bytes, integers fed little-endian whatever the
//            host, so the value is the same everywhere.
// Neither guards against forgery; both guard against accidents: damage, mixed-up files.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace qarac {

// Every round is a bijection of the lane and of the word, so a change confined to one 8-byte
// word (any flipped byte) always changes the result. Reads `data` as it lies in memory
// (little-endian on every host the project builds for; core/hash.cpp asserts it).
uint64_t hash64(const void* data, size_t bytes);

// hash64 of bytes that arrive in pieces (a dataset written or read a block at a time): value()
// is hash64 of all the pieces back to back, whatever their sizes.
class Hash64 {
 public:
  Hash64();
  void bytes(const void* data, size_t n);
  uint64_t value() const;

 private:
  uint64_t lane_[4];
  unsigned char pending_[32];  // the start of an unfinished 32-byte block
  size_t pending_bytes_ = 0;
  uint64_t total_ = 0;
};

class Fnv1a64 {
 public:
  void bytes(const void* data, size_t n);
  void u64(uint64_t v);  // 8 bytes, little-endian
  void i64(int64_t v) { u64(static_cast<uint64_t>(v)); }
  void str(std::string_view s);  // length (u64), then the bytes
  uint64_t value() const { return h_; }
  std::string hex() const;  // "fnv1a64:" and 16 lowercase hex digits

 private:
  uint64_t h_ = 0xCBF29CE484222325ull;  // the FNV-1a 64-bit offset basis
};

}  // namespace qarac
