// The machinery the raw-format readers share (see reader_util.h): text helpers and the per-file
// accounting of what a reader delivers, skips and finds malformed.
#include "data/reader_util.h"

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <utility>

#include "core/error.h"
#include "core/log.h"

namespace qarac::data::raw {
namespace {

// Malformed records logged per file under OnError::skip before the rest are only counted.
constexpr int kMaxLoggedSkips = 5;

bool is_space(char c) {
  return c == ' ' || c == '\t' || c == '\r' || c == '\n' || c == '\v' || c == '\f';
}

std::string hex_byte(char c) {
  char text[8];
  std::snprintf(text, sizeof text, "0x%02x", static_cast<unsigned char>(c));
  return text;
}

constexpr std::string_view kUtf8Bom = "\xEF\xBB\xBF";

bool is_ascii(std::string_view s) {
  return std::all_of(s.begin(), s.end(), [](char c) { return static_cast<unsigned char>(c) < 0x80; });
}

// Offset of the first code point U+0080..U+009F of valid UTF-8 text (npos when none): what a C1
// control byte of a Latin-1 file becomes. 0xC2 is always a lead byte in UTF-8.
size_t find_c1(std::string_view utf8) {
  for (size_t i = utf8.find('\xC2'); i != std::string_view::npos; i = utf8.find('\xC2', i + 1))
    if (i + 1 < utf8.size() && static_cast<unsigned char>(utf8[i + 1]) <= 0x9F) return i;
  return std::string_view::npos;
}

}  // namespace

// ---- Text helpers ----------------------------------------------------------------------------
std::string trim(std::string_view s) {
  size_t b = 0, e = s.size();
  while (b < e && is_space(s[b])) ++b;
  while (e > b && is_space(s[e - 1])) --e;
  return std::string(s.substr(b, e - b));
}

std::string lower(std::string s) {
  for (char& c : s)
    if (c >= 'A' && c <= 'Z') c = static_cast<char>(c - 'A' + 'a');
  return s;
}

std::string quote(std::string_view s) {
  size_t cut = std::min<size_t>(s.size(), 60);
  while (cut < s.size() && cut > 0 && (static_cast<unsigned char>(s[cut]) & 0xC0) == 0x80) --cut;
  return "'" + printable(s.substr(0, cut)) + (cut < s.size() ? "...'" : "'");
}

// ---- Per-file reading state ------------------------------------------------------------------
Reader::Reader(const std::string& path, Encoding encoding, OnError on_error, const ExampleSink& sink)
    : encoding_(encoding), on_error_(on_error), sink_(sink) {
  stats_.path = path;
}

bool Reader::next_line(LineFile& in, std::string& line) {
  if (!in.next(line)) return false;
  const bool bom = in.line_no() == 1 && line.compare(0, kUtf8Bom.size(), kUtf8Bom) == 0;
  if (encoding_ == Encoding::utf8) {
    if (bom) line.erase(0, kUtf8Bom.size());
    return true;
  }
  // Read as Latin-1, the mark would be the text "ï»¿" before the first column's name.
  if (bom) fatal(1, "starts with a UTF-8 byte-order mark, but is read as Latin-1: pass --encoding utf-8");
  if (!is_ascii(line)) {
    if (first_non_ascii_ == 0) first_non_ascii_ = in.line_no();
    non_ascii_all_utf8_ = non_ascii_all_utf8_ && find_invalid_utf8(line) == std::string::npos;
    line = latin1_to_utf8(line);
  }
  return true;
}

void Reader::malformed(int64_t line, const std::string& kind, const std::string& why) {
  const std::string message = detail::concat(path(), ":", line, ": ", kind, ": ", why);
  if (on_error_ == OnError::fail) throw InputError(message);
  ++stats_.skipped["malformed: " + kind];
  if (++logged_ <= kMaxLoggedSkips) log::warn(message, " (skipped)");
}

void Reader::fatal(int64_t line, const std::string& message) const {
  throw InputError(detail::concat(path(), ":", line, ": ", message));
}

bool Reader::clean(int64_t line, std::string& f) {
  const size_t bad = find_invalid_utf8(f);
  if (bad != std::string::npos) {
    const bool utf16_mark = bad == 0 && f.size() >= 2 &&
                            ((f[0] == '\xff' && f[1] == '\xfe') || (f[0] == '\xfe' && f[1] == '\xff'));
    malformed(line, "invalid UTF-8",
              detail::concat("byte ", bad, " (", hex_byte(f[bad]), ") after ", quote(f.substr(0, bad)),
                             utf16_mark ? " (a UTF-16 byte-order mark: convert the file with iconv -f UTF-16 -t UTF-8)"
                                        : ""));
    return false;
  }
  // Valid UTF-8, but no text: a UTF-16 file read as UTF-8 has one after every ASCII letter.
  const size_t nul = f.find('\0');
  if (nul != std::string::npos) {
    malformed(line, "NUL byte",
              detail::concat("byte ", nul, " after ", quote(f.substr(0, nul)),
                             " is 0x00, which no text holds (a UTF-16 file? convert it: iconv -f UTF-16 -t UTF-8)"));
    return false;
  }
  const size_t c1 = encoding_ == Encoding::latin1 ? find_c1(f) : std::string::npos;
  if (c1 != std::string::npos) {
    // The code point U+0080..U+009F is the Latin-1 byte, and its UTF-8 second byte too.
    malformed(line, "C1 control byte",
              detail::concat("byte ", hex_byte(f[c1 + 1]), " after ", quote(f.substr(0, c1)),
                             " is no Latin-1 text: if the file is UTF-8, pass --encoding utf-8; if it is "
                             "Windows-1252, convert it (iconv -f WINDOWS-1252 -t UTF-8) and pass --encoding utf-8"));
    return false;
  }
  f = trim(f);
  if (f.empty()) {
    skip(kEmptyField);
    return false;
  }
  return true;
}

void Reader::deliver(int64_t line, std::vector<std::string> fields, int8_t label) {
  for (std::string& f : fields)
    if (!clean(line, f)) return;
  Example ex;
  ex.fields = std::move(fields);
  ex.label = label;
  ex.line = line;
  emit(std::move(ex));
}

void Reader::emit(Example&& ex) {
  sink_(std::move(ex));
  ++stats_.examples;
}

void Reader::finish() {
  if (logged_ > kMaxLoggedSkips)
    log::warn(path(), ": ", logged_ - kMaxLoggedSkips, " more malformed records skipped");
  // A warning, not an error: Latin-1 text can, rarely, be valid UTF-8 too (Latin-1's "Ã©" is
  // UTF-8's "é").
  if (first_non_ascii_ > 0 && non_ascii_all_utf8_) {
    stats_.utf8_line = first_non_ascii_;
    log::warn(path(), ": read as Latin-1, but every line with non-ASCII bytes is valid UTF-8 (the first: line ",
              first_non_ascii_, "): if the file is UTF-8 (its é read as Ã©), pass --encoding utf-8");
  }
}

}  // namespace qarac::data::raw
