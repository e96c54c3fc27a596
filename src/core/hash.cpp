// hash64 and Fnv1a64 (core/hash.h).
#include "core/hash.h"

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

uint64_t hash64(const void* data, size_t n) {
  const auto* p = static_cast<const unsigned char*>(data);
  uint64_t lane[4] = {kPrime1 + kPrime2, kPrime2, 0, 0 - kPrime1};
  size_t i = 0;
  for (; i + 32 <= n; i += 32)
    for (int k = 0; k < 4; ++k) lane[k] = mix(lane[k], load_word(p + i + 8 * k));
  // The length, the lanes, then the words and bytes the lanes did not take.
  uint64_t h = static_cast<uint64_t>(n) * kPrime3;
  for (const uint64_t l : lane) h = mix(h, l);
  for (; i + 8 <= n; i += 8) h = mix(h, load_word(p + i));
  if (i < n) {
    uint64_t w = 0;
    std::memcpy(&w, p + i, n - i);
    h = mix(h, w);
  }
  return h;
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
