// The machinery the raw-format readers share (internal to readers.cpp and its pieces): the
// per-file accounting of examples, skips and malformed records, the table drivers every tabular
// format goes through (table_reader.cpp), and the entry point of each format
// (dataset_formats.cpp). Files are read a line at a time (data/line_file.h) and decoded into
// UTF-8 as they are read (Reader::next_line).
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <string>
#include <string_view>
#include <vector>

#include "data/line_file.h"
#include "data/readers.h"

namespace qarac::data::raw {

// Skip reasons that every format shares, keys of ReadStats::skipped. Malformed records are
// "malformed: <kind>".
inline constexpr const char* kBlank = "blank line";
inline constexpr const char* kEmptyField = "empty text field";

// ---- Text helpers ----------------------------------------------------------------------------
std::string trim(std::string_view s);
std::string lower(std::string s);
// File content quoted in a message: control bytes escaped so that the message stays one line,
// long values cut (at a character boundary) so that it stays readable.
std::string quote(std::string_view s);

// ---- Per-file reading state ------------------------------------------------------------------
class Reader {
 public:
  Reader(const std::string& path, Encoding encoding, OnError on_error, const ExampleSink& sink);

  const std::string& path() const { return stats_.path; }
  ReadStats& stats() { return stats_; }

  void skip(const char* reason, int64_t count = 1) {
    if (count > 0) stats_.skipped[reason] += count;
  }

  // The next line of `in` as UTF-8 text, without the byte-order mark of a UTF-8 file; false at
  // the end of the file. Latin-1 lines are converted, and watched for a file that is UTF-8.
  bool next_line(LineFile& in, std::string& line);

  // A malformed record: an error, or a counted skip with the first few logged.
  void malformed(int64_t line, const std::string& kind, const std::string& why);

  // Fails for any problem of the file as a whole (a header without a needed column): no
  // record of such a file can be read, so skipping it record by record would only hide it.
  [[noreturn]] void fatal(int64_t line, const std::string& message) const;

  // Checks a text field (valid UTF-8 without NUL bytes; read as Latin-1, no C1 control byte) and trims it; false
  // when its record was counted as malformed or skipped.
  bool clean(int64_t line, std::string& f);

  // Trims the fields, checks them and hands the example on.
  void deliver(int64_t line, std::vector<std::string> fields, int8_t label = 0);

  // Hands on an example whose fields (and candidates) were cleaned already.
  void emit(Example&& ex);

  // Logs how many malformed records went unlogged, and warns about a Latin-1 file that looks
  // like UTF-8.
  void finish();

 private:
  Encoding encoding_;
  OnError on_error_;
  const ExampleSink& sink_;
  ReadStats stats_;
  int logged_ = 0;
  // Latin-1: the first line with non-ASCII bytes, and whether every such line is valid UTF-8.
  int64_t first_non_ascii_ = 0;
  bool non_ascii_all_utf8_ = true;
};

// ---- Tables (table_reader.cpp) ---------------------------------------------------------------
// One wanted column: its accepted header names (matched case-insensitively, trimmed).
using Aliases = std::vector<const char*>;

struct Table {
  std::vector<size_t> index;    // per wanted column: its position in a row
  std::vector<size_t> alias;    // per wanted column: which alias the header used
  size_t header_fields = 0;
  size_t needed_fields = 0;     // 1 + the largest wanted position
};

// What a format does with its table: the columns it wants, one call per data row with the
// wanted fields in `wanted` order, and (optionally) one call at the end of the file for the
// records a format assembles from several rows.
struct TableFormat {
  std::vector<Aliases> wanted;
  std::function<void(Reader&, const Table&, std::vector<std::string>&, int64_t)> row;
  std::function<void(Reader&)> end;
};

// A header line, then rows of fields split on tabs (no quoting).
void read_tsv(Reader& r, LineFile& in, const TableFormat& fmt);
// A header record, then records in RFC 4180 CSV.
void read_csv(Reader& r, LineFile& in, const TableFormat& fmt);

// ---- Formats (dataset_formats.cpp) -----------------------------------------------------------
void read_text(Reader& r, LineFile& in);
void read_snli_jsonl(Reader& r, LineFile& in);
void read_task_jsonl(Reader& r, LineFile& in, Task task);
TableFormat wikiqa_format();
TableFormat avicenna_format();
TableFormat snli_table_format();

}  // namespace qarac::data::raw
