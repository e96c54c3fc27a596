// hash64 and Fnv1a64 (core/hash.h).
#include "core/hash.h"

#include <algorithm>
#include <cstring>

namespace qarac {
namespace {

static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__,
              "hash64 reads 8-byte words as they lie in memory; stored hashes assume little-endian");

constexpr uint64_t kPrime1 = 0x9E3779B185EBCA87ull;
constexpr uint64_t kPrime2 = 0xC2B2AE3D27D4EB4Full;
constexpr uint64_t kPrime3 = 0x165667B19E3779F9ull;

uint64_t rotl(uint64_t x, int r) {
  return (x << r) | (x >> (64 - r));
}
uint64_t mix(uint64_t acc, uint64_t word) {
  return rotl(acc + word * kPrime2, 31) * kPrime1;
}
uint64_t load_word(const unsigned char* p) {
  uint64_t w;
  std::memcpy(&w, p, 8);
  return w;
}

}  // namespace

Hash64::Hash64() : lane_{kPrime1 + kPrime2, kPrime2, 0, 0 - kPrime1} {}

// Whole 32-byte blocks go into the lanes as they come; a block cut between two calls waits in
// pending_ for its end.
void Hash64::bytes(const void* data, size_t n) {
  if (n == 0) return;  // `data` may then be null, which memcpy must not see
  const auto* p = static_cast<const unsigned char*>(data);
  total_ += n;
  if (pending_bytes_ > 0) {
    const size_t take = std::min(n, sizeof pending_ - pending_bytes_);
    std::memcpy(pending_ + pending_bytes_, p, take);
    pending_bytes_ += take;
    p += take;
    n -= take;
    if (pending_bytes_ < sizeof pending_) return;
    for (int k = 0; k < 4; ++k) lane_[k] = mix(lane_[k], load_word(pending_ + 8 * k));
    pending_bytes_ = 0;
  }
  for (; n >= 32; p += 32, n -= 32)
    for (int k = 0; k < 4; ++k) lane_[k] = mix(lane_[k], load_word(p + 8 * k));
  std::memcpy(pending_, p, n);
  pending_bytes_ = n;
}

// The length, the lanes, then the words and bytes the lanes did not take.
uint64_t Hash64::value() const {
  uint64_t h = total_ * kPrime3;
  for (const uint64_t l : lane_) h = mix(h, l);
  size_t i = 0;
  for (; i + 8 <= pending_bytes_; i += 8) h = mix(h, load_word(pending_ + i));
  if (i < pending_bytes_) {
    uint64_t w = 0;
    std::memcpy(&w, pending_ + i, pending_bytes_ - i);
    h = mix(h, w);
  }
  return h;
}

uint64_t hash64(const void* data, size_t n) {
  Hash64 h;
  h.bytes(data, n);
  return h.value();
}

void Fnv1a64::bytes(const void* data, size_t n) {
  const auto* p = static_cast<const uint8_t*>(data);
  for (size_t i = 0; i < n; ++i) h_ = (h_ ^ p[i]) * 0x100000001B3ull;  // the FNV 64-bit prime
}

void Fnv1a64::u64(uint64_t v) {
  for (int i = 0; i < 8; ++i) {
    const auto b = static_cast<uint8_t>(v >> (8 * i));
    bytes(&b, 1);
  }
}

void Fnv1a64::str(std::string_view s) {
  u64(s.size());
  bytes(s.data(), s.size());
}

std::string Fnv1a64::hex() const {
  static const char* digits = "0123456789abcdef";
  std::string out = "fnv1a64:";
  for (int i = 15; i >= 0; --i) out += digits[(h_ >> (4 * i)) & 15];
  return out;
}

}  // namespace qarac
