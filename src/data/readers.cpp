// Readers of the raw dataset formats (see readers.h): the public entry points, which pick a
// format's reader, and the encoding helpers. The pieces: reader_util.h (line input, per-file
// accounting), table_reader.cpp (the TSV and CSV drivers), dataset_formats.cpp (what each
// format's records mean).
#include "data/readers.h"

#include <cstring>

#include "core/error.h"
#include "data/reader_util.h"

namespace qarac::data {

const char* format_name(Format format) {
  switch (format) {
    case Format::text: return "text";
    case Format::wikiqa: return "wikiqa";
    case Format::avicenna: return "avicenna";
    case Format::snli_jsonl: return "snli-jsonl";
    case Format::snli_tsv: return "snli-tsv";
    case Format::snli_csv: return "snli-csv";
    case Format::ed_jsonl: return "ed-jsonl";
    case Format::qa_jsonl: return "qa-jsonl";
    case Format::rs_jsonl: return "rs-jsonl";
    case Format::cs_jsonl: return "cs-jsonl";
  }
  return "?";
}

Task task_of(Format format) {
  switch (format) {
    case Format::text:
    case Format::ed_jsonl: return Task::encode_decode;
    case Format::wikiqa:
    case Format::qa_jsonl: return Task::question_answering;
    case Format::avicenna:
    case Format::rs_jsonl: return Task::reasoning;
    case Format::snli_jsonl:
    case Format::snli_tsv:
    case Format::snli_csv:
    case Format::cs_jsonl: return Task::consistency;
  }
  QARAC_CHECK(false, "unknown format ", static_cast<int>(format));
}

Format snli_format_of(const std::string& file) {
  const std::string path = without_gz_suffix(file);  // a gzip file is read as its text
  auto ends_with = [&](const char* ext) {
    const size_t n = std::strlen(ext);
    return path.size() >= n && raw::lower(path.substr(path.size() - n)) == ext;
  };
  if (ends_with(".jsonl")) return Format::snli_jsonl;
  if (ends_with(".txt") || ends_with(".tsv")) return Format::snli_tsv;
  if (ends_with(".csv")) return Format::snli_csv;
  throw InputError(file + ": cannot tell the SNLI export from the extension "
                          "(expected .jsonl, .txt/.tsv or .csv, each optionally .gz)");
}

Format jsonl_format_of(Task task) {
  switch (task) {
    case Task::encode_decode: return Format::ed_jsonl;
    case Task::question_answering: return Format::qa_jsonl;
    case Task::reasoning: return Format::rs_jsonl;
    case Task::consistency: return Format::cs_jsonl;
    case Task::masked_lm: break;
  }
  throw InputError("masked_lm has no stream of its own: it reads encode_decode's (give its texts as ed)");
}

OnError on_error_from_name(const std::string& name) {
  if (name == "fail") return OnError::fail;
  if (name == "skip") return OnError::skip;
  throw InputError("--on-error must be fail or skip, got '" + name + "'");
}

Encoding default_encoding(Format format) {
  return format == Format::avicenna ? Encoding::latin1 : Encoding::utf8;
}

Encoding encoding_from_name(const std::string& name) {
  if (name == "latin-1") return Encoding::latin1;
  if (name == "utf-8") return Encoding::utf8;
  throw InputError("--encoding must be latin-1 or utf-8, got '" + name + "'");
}

int64_t ReadStats::skipped_total() const {
  int64_t n = 0;
  for (const auto& kv : skipped) n += kv.second;
  return n;
}

ReadStats read_examples(const std::string& path, Format format, Encoding encoding, OnError on_error,
                        const ExampleSink& sink) {
  raw::Reader r(path, encoding, on_error, sink);
  LineFile in(path);
  switch (format) {
    case Format::text: raw::read_text(r, in); break;
    case Format::wikiqa: raw::read_tsv(r, in, raw::wikiqa_format()); break;
    case Format::avicenna: raw::read_csv(r, in, raw::avicenna_format()); break;
    case Format::snli_jsonl: raw::read_snli_jsonl(r, in); break;
    case Format::snli_tsv: raw::read_tsv(r, in, raw::snli_table_format()); break;
    case Format::snli_csv: raw::read_csv(r, in, raw::snli_table_format()); break;
    case Format::ed_jsonl:
    case Format::qa_jsonl:
    case Format::rs_jsonl:
    case Format::cs_jsonl: raw::read_task_jsonl(r, in, task_of(format)); break;
  }
  r.finish();
  r.stats().lines = in.line_no();
  return r.stats();
}

std::string latin1_to_utf8(std::string_view latin1) {
  std::string out;
  out.reserve(latin1.size());
  for (const char ch : latin1) {
    const unsigned char c = static_cast<unsigned char>(ch);
    if (c < 0x80) {
      out += ch;
    } else {
      out += static_cast<char>(0xC0 | (c >> 6));
      out += static_cast<char>(0x80 | (c & 0x3F));
    }
  }
  return out;
}

size_t find_invalid_utf8(std::string_view text) {
  const auto* s = reinterpret_cast<const unsigned char*>(text.data());
  const size_t n = text.size();
  size_t i = 0;
  while (i < n) {
    const unsigned char c = s[i];
    if (c < 0x80) {
      ++i;
      continue;
    }
    // Sequence length and the allowed range of the second byte (Unicode Table 3-7), which
    // excludes overlong forms, UTF-16 surrogates and code points above U+10FFFF.
    size_t len = 0;
    unsigned char lo = 0x80, hi = 0xBF;
    if (c >= 0xC2 && c <= 0xDF) len = 2;
    else if (c == 0xE0) len = 3, lo = 0xA0;
    else if (c >= 0xE1 && c <= 0xEC) len = 3;
    else if (c == 0xED) len = 3, hi = 0x9F;
    else if (c >= 0xEE && c <= 0xEF) len = 3;
    else if (c == 0xF0) len = 4, lo = 0x90;
    else if (c >= 0xF1 && c <= 0xF3) len = 4;
    else if (c == 0xF4) len = 4, hi = 0x8F;
    else return i;
    if (i + len > n || s[i + 1] < lo || s[i + 1] > hi) return i;
    for (size_t k = 2; k < len; ++k)
      if (s[i + k] < 0x80 || s[i + k] > 0xBF) return i;
    i += len;
  }
  return std::string::npos;
}

}  // namespace qarac::data
