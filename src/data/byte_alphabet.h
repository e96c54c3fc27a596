// GPT-2's byte-level alphabet (internal to the tokenizer): every byte has a printable stand-in
// character, so that a byte-level BPE vocabulary is text ("Ġ" is the space byte). The encoder
// maps bytes to tokens through it; decode maps tokens back to the bytes they stand for.
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <string_view>

namespace qarac::data::detail {

// GPT-2's bytes_to_unicode: printable Latin-1 bytes stand for themselves, the other 68 bytes for
// U+0100.. in byte order.
struct ByteAlphabet {
  static constexpr uint32_t kCodes = 256 + 68;
  std::array<std::string, 256> utf8;       // byte -> its stand-in character, in UTF-8
  std::array<int16_t, kCodes> byte;        // stand-in code point -> byte, -1 for none
};

const ByteAlphabet& byte_alphabet();

// What Hugging Face's ByteLevel decoder makes of one token: the bytes its characters stand for,
// or the token's own UTF-8 when a character is not in the alphabet (every character of "<s>" is;
// a space or a CJK character in an added token is not).
std::string token_bytes(const std::string& token);

// `bytes` written in the alphabet: the vocabulary form of a word.
std::string to_byte_level(std::string_view bytes);

}  // namespace qarac::data::detail
