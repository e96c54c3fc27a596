// GPT-2's byte-level alphabet (see byte_alphabet.h), built once on first use.
#include "data/byte_alphabet.h"

#include "data/pretokenizer.h"

namespace qarac::data::detail {

const ByteAlphabet& byte_alphabet() {
  static const ByteAlphabet alphabet = [] {
    ByteAlphabet a;
    a.byte.fill(-1);
    uint32_t extra = 0;
    for (uint32_t b = 0; b < 256; ++b) {
      const bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || b >= 0xAE;
      const uint32_t cp = printable ? b : 256 + extra++;
      a.byte[cp] = static_cast<int16_t>(b);
      std::string& s = a.utf8[b];
      if (cp < 0x80) {
        s = static_cast<char>(cp);
      } else {
        s += static_cast<char>(0xC0 | (cp >> 6));
        s += static_cast<char>(0x80 | (cp & 0x3F));
      }
    }
    return a;
  }();
  return alphabet;
}

std::string token_bytes(const std::string& token) {
  const ByteAlphabet& a = byte_alphabet();
  std::string out;
  for (size_t i = 0; i < token.size();) {
    const Char c = decode_char(token, i);
    if (c.cp >= ByteAlphabet::kCodes || a.byte[c.cp] < 0) return token;
    out += static_cast<char>(a.byte[c.cp]);
    i += c.len;
  }
  return out;
}

std::string to_byte_level(std::string_view bytes) {
  const ByteAlphabet& a = byte_alphabet();
  std::string out;
  for (const char b : bytes) out += a.utf8[static_cast<uint8_t>(b)];
  return out;
}

}  // namespace qarac::data::detail
