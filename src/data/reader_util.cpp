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

bool starts_with_bom(const std::string& s) { return s.rfind("\xEF\xBB\xBF", 0) == 0; }

// ---- Per-file reading state ------------------------------------------------------------------
Reader::Reader(const std::string& path, OnError on_error, const ExampleSink& sink)
    : on_error_(on_error), sink_(sink) {
  stats_.path = path;
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
    char byte[8];
    std::snprintf(byte, sizeof byte, "0x%02x", static_cast<unsigned char>(f[bad]));
    malformed(line, "invalid UTF-8",
              detail::concat("byte ", bad, " (", byte, ") after ", quote(f.substr(0, bad))));
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
}

}  // namespace qarac::data::raw
