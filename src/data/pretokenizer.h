// The tokenizer's view of text as characters (internal to the tokenizer): UTF-8 decoding that
// never fails, the four character classes the GPT-2 pattern tells apart (ICU's Unicode
// categories), and the pattern itself,
//   's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
// matched by hand, as Hugging Face's pre_tokenizers::ByteLevel cuts text. The matching runs once
// per character of every text, so it is inline here where the encoder instantiates it.
#pragma once

#include <unicode/uchar.h>

#include <array>
#include <cstddef>
#include <cstdint>
#include <string_view>

namespace qarac::data::detail {

// A code point that no valid UTF-8 encodes: what a malformed byte decodes to.
inline constexpr uint32_t kInvalid = 0x110000;

// The classes the pattern tells apart. kSpace is Oniguruma's Unicode \s, which Hugging Face's
// regex uses: U+0009-000D, U+0085 and the categories Zs, Zl, Zp. That is also the White_Space
// property, Rust's \s, which lstrip/rstrip of added tokens use. U+001C-001F (spaces to Python's
// str.isspace) are not in it: checked against tokenizers 0.23.
enum CharClass : uint8_t { kLetter, kNumber, kSpace, kOther };

struct Char {
  uint32_t cp;   // the code point, kInvalid for a malformed byte
  uint32_t len;  // its bytes
};

// The character at s[i] (i < s.size()). Anything but well-formed UTF-8 (a stray continuation
// byte, an overlong form, a surrogate, a value past U+10FFFF, a truncated sequence) is one byte
// of kInvalid, so every input splits into characters and round-trips through the byte tokens.
inline Char decode_char(std::string_view s, size_t i) {
  const auto byte = [&](size_t k) { return static_cast<uint8_t>(s[k]); };
  const uint8_t b0 = byte(i);
  if (b0 < 0x80) return {b0, 1};
  const size_t left = s.size() - i;
  const auto cont = [&](size_t k) { return (byte(i + k) & 0xC0) == 0x80; };
  if (b0 >= 0xC2 && b0 <= 0xDF) {
    if (left >= 2 && cont(1)) return {(b0 & 0x1Fu) << 6 | (byte(i + 1) & 0x3Fu), 2};
  } else if (b0 >= 0xE0 && b0 <= 0xEF) {
    if (left >= 3 && cont(1) && cont(2)) {
      const uint32_t cp = (b0 & 0x0Fu) << 12 | (byte(i + 1) & 0x3Fu) << 6 | (byte(i + 2) & 0x3Fu);
      if (cp >= 0x800 && (cp < 0xD800 || cp > 0xDFFF)) return {cp, 3};
    }
  } else if (b0 >= 0xF0 && b0 <= 0xF4) {
    if (left >= 4 && cont(1) && cont(2) && cont(3)) {
      const uint32_t cp = (b0 & 0x07u) << 18 | (byte(i + 1) & 0x3Fu) << 12 |
                          (byte(i + 2) & 0x3Fu) << 6 | (byte(i + 3) & 0x3Fu);
      if (cp >= 0x10000 && cp <= 0x10FFFF) return {cp, 4};
    }
  }
  return {kInvalid, 1};
}

// ASCII classes by table: most text is ASCII and this spares the ICU lookup.
constexpr std::array<CharClass, 128> ascii_classes() {
  std::array<CharClass, 128> t{};
  for (int c = 0; c < 128; ++c) {
    if ((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z')) t[c] = kLetter;
    else if (c >= '0' && c <= '9') t[c] = kNumber;
    else if ((c >= 0x09 && c <= 0x0D) || c == ' ') t[c] = kSpace;
    else t[c] = kOther;
  }
  return t;
}
inline constexpr std::array<CharClass, 128> kAsciiClass = ascii_classes();

inline CharClass classify(uint32_t cp) {
  if (cp < 0x80) return kAsciiClass[cp];
  if (cp == kInvalid) return kOther;
  if (cp == 0x85) return kSpace;
  const uint32_t mask = U_GET_GC_MASK(static_cast<UChar32>(cp));
  if (mask & U_GC_L_MASK) return kLetter;  // Lu Ll Lt Lm Lo
  if (mask & U_GC_N_MASK) return kNumber;  // Nd Nl No
  if (mask & U_GC_Z_MASK) return kSpace;   // Zs Zl Zp
  return kOther;
}

// Rust regex's Unicode \w (UTS #18 annex C), which single_word added tokens test their
// neighbours against: Alphabetic, marks, decimal digits, connector punctuation, Join_Control.
bool is_word_char(uint32_t cp);

// The character just before s[end] (end > 0), found by stepping back over continuation bytes.
Char char_before(std::string_view s, size_t end);

// End of the run of characters of class `cls` that starts at byte i.
inline size_t run_end(std::string_view s, size_t i, CharClass cls) {
  while (i < s.size()) {
    const Char c = decode_char(s, i);
    if (classify(c.cp) != cls) break;
    i += c.len;
  }
  return i;
}

// End of the contraction 's 't 're 've 'm 'll 'd at s[i] == '\'', or 0 when there is none
// (case-sensitive, as the pattern is).
inline size_t contraction_end(std::string_view s, size_t i) {
  if (i + 1 >= s.size()) return 0;
  const char a = s[i + 1];
  if (a == 's' || a == 't' || a == 'm' || a == 'd') return i + 2;
  if (i + 2 >= s.size()) return 0;
  const char b = s[i + 2];
  if ((a == 'r' && b == 'e') || (a == 'v' && b == 'e') || (a == 'l' && b == 'l')) return i + 3;
  return 0;
}

// End of the piece that starts with the whitespace character c at s[i].
inline size_t space_piece_end(std::string_view s, size_t i, Char c) {
  // " ?X+": one space followed by a letter, digit or other character joins their run.
  if (c.cp == ' ' && i + 1 < s.size()) {
    const Char next = decode_char(s, i + 1);
    const CharClass next_cls = classify(next.cp);
    if (next_cls != kSpace) return run_end(s, i + 1 + next.len, next_cls);
  }
  // "\s+(?!\S)|\s+": the run of whitespace, less its last character when something follows
  // (that character then starts the next piece: " word", or alone as "\s+" takes it).
  size_t last = i;
  size_t end = i + c.len;
  while (end < s.size()) {
    const Char w = decode_char(s, end);
    if (classify(w.cp) != kSpace) break;
    last = end;
    end += w.len;
  }
  return end < s.size() && last > i ? last : end;
}

// Calls emit(piece) for each match of the GPT-2 pattern in `s`, in order. The pattern is fixed,
// so it is matched by hand: the first alternative that matches at a position wins, as in a
// backtracking regex, and every character is in exactly one of the classes L, N, \s, other, so
// the alternatives reduce to a look at one or two characters.
template <class Emit>
void for_each_piece(std::string_view s, Emit&& emit) {
  size_t i = 0;
  while (i < s.size()) {
    const Char c = decode_char(s, i);
    const CharClass cls = classify(c.cp);
    size_t end = c.cp == '\'' ? contraction_end(s, i) : 0;
    if (end == 0) end = cls == kSpace ? space_piece_end(s, i, c) : run_end(s, i + c.len, cls);
    emit(s.substr(i, end - i));
    i = end;
  }
}

}  // namespace qarac::data::detail
