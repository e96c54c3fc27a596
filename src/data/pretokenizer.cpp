// The character tests that only added tokens need (they look at a token's neighbours, once per
// match), and the pre-tokenizer's public entry for the tests; the per-character matching of the
// GPT-2 pattern is inline in pretokenizer.h.
#include "data/pretokenizer.h"

#include <vector>

#include "data/tokenizer.h"

namespace qarac::data {
namespace detail {

bool is_word_char(uint32_t cp) { return cp != kInvalid && (unicode_class(cp) & 4) != 0; }

Char char_before(std::string_view s, size_t end) {
  size_t start = end - 1;
  while (start > 0 && end - start < 4 && (static_cast<uint8_t>(s[start]) & 0xC0) == 0x80) --start;
  const Char c = decode_char(s, start);
  return c.len == end - start ? c : Char{kInvalid, 1};
}

}  // namespace detail

std::vector<std::string_view> byte_level_pieces(std::string_view text) {
  std::vector<std::string_view> pieces;
  detail::for_each_piece(text, [&](std::string_view piece) { pieces.push_back(piece); });
  return pieces;
}

}  // namespace qarac::data
