// The two table drivers every tabular format goes through (see reader_util.h): TSV (WikiQA, the
// SNLI .txt export: no quoting, fields split on tabs) and CSV (Avicenna, the SNLI CSV export:
// RFC 4180 quoting, parsed by libcsv in strict mode, fed one physical line at a time so that a
// record's first line is known even when a quoted field spans lines). Both find the wanted
// columns by header name, check each row's width against the header and hand the wanted fields
// to the format.
#include <csv.h>

#include <algorithm>
#include <optional>
#include <string>
#include <vector>

#include "core/error.h"
#include "data/reader_util.h"

namespace qarac::data::raw {
namespace {

// ---- Columns ---------------------------------------------------------------------------------
Table find_columns(const Reader& r, const std::vector<std::string>& header, int64_t line,
                   const std::vector<Aliases>& wanted) {
  Table t;
  t.header_fields = header.size();
  std::vector<std::string> names;
  for (const std::string& h : header) names.push_back(lower(trim(h)));
  for (const Aliases& aliases : wanted) {
    std::optional<size_t> found;
    for (size_t a = 0; a < aliases.size() && !found; ++a)
      for (size_t i = 0; i < names.size(); ++i)
        if (names[i] == lower(aliases[a])) {
          found = i;
          t.alias.push_back(a);
          break;
        }
    if (!found) {
      std::string have;
      for (const std::string& h : header) have += (have.empty() ? "" : ", ") + quote(h);
      r.fatal(line, detail::concat("the header has no column '", aliases[0], "' (columns: ", have,
                                   ")"));
    }
    t.index.push_back(*found);
    t.needed_fields = std::max(t.needed_fields, *found + 1);
  }
  return t;
}

// Checks a row's field count against the header. Rows may lack trailing columns that are not
// wanted (exporters drop empty trailing fields) but never have more fields than the header.
bool check_row(Reader& r, const Table& t, size_t fields, int64_t line) {
  if (fields < t.needed_fields) {
    r.malformed(line, "missing column",
                detail::concat(fields, " fields, the header has ", t.header_fields));
    return false;
  }
  if (fields > t.header_fields) {
    r.malformed(line, "extra columns",
                detail::concat(fields, " fields, the header has ", t.header_fields));
    return false;
  }
  return true;
}

bool all_blank(const std::vector<std::string>& fields) {
  for (const std::string& f : fields)
    if (!trim(f).empty()) return false;
  return true;
}

void dispatch_row(Reader& r, const TableFormat& fmt, const Table& t,
                  const std::vector<std::string>& fields, int64_t line) {
  if (all_blank(fields)) return r.skip(kBlank);
  if (!check_row(r, t, fields.size(), line)) return;
  std::vector<std::string> picked;
  for (size_t i : t.index) picked.push_back(fields[i]);
  fmt.row(r, t, picked, line);
}

std::vector<std::string> split_tabs(const std::string& line) {
  std::vector<std::string> fields;
  size_t start = 0;
  for (;;) {
    const size_t tab = line.find('\t', start);
    fields.push_back(line.substr(start, tab == std::string::npos ? std::string::npos : tab - start));
    if (tab == std::string::npos) return fields;
    start = tab + 1;
  }
}

}  // namespace

// ---- TSV -------------------------------------------------------------------------------------
void read_tsv(Reader& r, LineFile& in, const TableFormat& fmt) {
  std::string line;
  std::optional<Table> table;
  while (r.next_line(in, line)) {
    if (!table) {
      if (trim(line).empty()) r.fatal(in.line_no(), "expected a header line, found a blank line");
      table = find_columns(r, split_tabs(line), in.line_no(), fmt.wanted);
      continue;
    }
    if (trim(line).empty()) {
      r.skip(kBlank);
      continue;
    }
    dispatch_row(r, fmt, *table, split_tabs(line), in.line_no());
  }
  if (!table) r.fatal(1, "empty file, expected a header line");
  if (fmt.end) fmt.end(r);
}

// ---- CSV -------------------------------------------------------------------------------------
namespace {

// libcsv's callbacks collect the fields of the current record.
struct CsvRecord {
  std::vector<std::string> fields;
  bool complete = false;
};

void csv_field(void* s, size_t n, void* data) {
  auto* rec = static_cast<CsvRecord*>(data);
  rec->fields.emplace_back(s ? static_cast<const char*>(s) : "", s ? n : 0);
}
void csv_row(int, void* data) { static_cast<CsvRecord*>(data)->complete = true; }
// Records end at "\n" alone: the line reader already removed "\r\n", and a bare "\r" inside a
// line is data (libcsv's default would end the record there).
int csv_is_term(unsigned char c) { return c == '\n'; }

class CsvParser {
 public:
  CsvParser() { reset(); }
  ~CsvParser() { csv_free(&p_); }
  CsvParser(const CsvParser&) = delete;
  CsvParser& operator=(const CsvParser&) = delete;

  void reset() {
    if (initialised_) csv_free(&p_);
    // STRICT: a quote inside an unquoted field or text after a closing quote is an error;
    // STRICT_FINI: a quoted field still open at the end of the file is an error.
    if (csv_init(&p_, CSV_STRICT | CSV_STRICT_FINI) != 0)
      throw Error("libcsv: csv_init failed (out of memory)");
    csv_set_term_func(&p_, csv_is_term);
    initialised_ = true;
  }
  // Returns false on a syntax error; throws on allocation failure.
  bool parse(const std::string& bytes, CsvRecord& rec) {
    const size_t n = csv_parse(&p_, bytes.data(), bytes.size(), csv_field, csv_row, &rec);
    return n == bytes.size() || check_status();
  }
  bool fini(CsvRecord& rec) { return csv_fini(&p_, csv_field, csv_row, &rec) == 0 || check_status(); }

 private:
  bool check_status() {
    const int err = csv_error(&p_);
    if (err == CSV_EPARSE) return false;
    throw Error(detail::concat("libcsv: ", csv_strerror(err)));
  }

  csv_parser p_{};
  bool initialised_ = false;
};

}  // namespace

void read_csv(Reader& r, LineFile& in, const TableFormat& fmt) {
  CsvParser parser;
  CsvRecord rec;
  std::optional<Table> table;
  std::string line;
  int64_t record_start = 0;  // first line of the record being parsed, 0 between records
  size_t record_bytes = 0;   // the bytes it has so far
  // A record may span lines (a quoted field with newlines), but as a line is bounded so is a
  // record: a stray quote would otherwise read the rest of the file into memory as one field.
  constexpr int64_t kMaxRecordLines = 1000;

  auto take_record = [&](int64_t at) {
    if (!table) {
      table = find_columns(r, rec.fields, at, fmt.wanted);
    } else {
      dispatch_row(r, fmt, *table, rec.fields, at);
    }
    rec = CsvRecord{};
    record_start = 0;
  };

  while (r.next_line(in, line)) {
    if (record_start == 0 && trim(line).empty()) {
      if (!table) r.fatal(in.line_no(), "expected a header line, found a blank line");
      r.skip(kBlank);
      continue;
    }
    if (record_start == 0) {
      record_start = in.line_no();
      record_bytes = 0;
    }
    record_bytes += line.size();
    if (in.line_no() - record_start >= kMaxRecordLines || record_bytes > LineFile::kMaxLineBytes) {
      if (!table) r.fatal(record_start, "CSV syntax in the header: a quoted field opened here does not close");
      r.malformed(record_start, "unterminated quote",
                  detail::concat("a quoted field opened in this record is still open ", in.line_no() - record_start,
                                 " lines later (a stray quote?); reading goes on at line ", in.line_no() + 1));
      parser.reset();
      rec = CsvRecord{};
      record_start = 0;
      continue;
    }
    line += '\n';
    if (!parser.parse(line, rec)) {
      const std::string what = "a quote inside an unquoted field, or text after a closing quote";
      if (!table) r.fatal(record_start, "CSV syntax in the header: " + what);
      r.malformed(record_start, "CSV syntax",
                  record_start == in.line_no() ? what
                                               : detail::concat(what, " on line ", in.line_no()));
      // Resynchronise at the next line: the rest of this one belongs to the bad record.
      parser.reset();
      rec = CsvRecord{};
      record_start = 0;
      continue;
    }
    if (rec.complete) take_record(record_start);
  }
  if (!parser.fini(rec)) {
    r.malformed(record_start, "unterminated quote",
                "a quoted field opened in this record runs to the end of the file");
  } else if (rec.complete) {
    take_record(record_start);
  }
  if (!table) r.fatal(1, "empty file, expected a header line");
  if (fmt.end) fmt.end(r);
}

}  // namespace qarac::data::raw
