// Readers of the raw dataset formats. Files are read line by line (POSIX getline, any line
// length) so that every message can name the line. Tables go through one driver per syntax:
// TSV (WikiQA, the SNLI .txt export: no quoting, fields split on tabs) and CSV (Avicenna, the
// SNLI CSV export: RFC 4180 quoting, parsed by libcsv in strict mode, fed one physical line at a
// time so that a record's first line is known even when a quoted field spans lines).
#include "data/readers.h"

#include <csv.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>

#include "core/error.h"
#include "core/log.h"

namespace qarac::data {
namespace {

using json = nlohmann::json;

// ---- Names -----------------------------------------------------------------------------------
struct TaskInfo {
  Task task;
  const char* name;
  const char* short_name;
};
constexpr TaskInfo kTasks[kTaskCount] = {
    {Task::encode_decode, "encode_decode", "ed"},
    {Task::question_answering, "question_answering", "qa"},
    {Task::reasoning, "reasoning", "rs"},
    {Task::consistency, "consistency", "cs"},
};

// Skip reasons, the keys of ReadStats::skipped. Malformed records are "malformed: <kind>".
constexpr const char* kBlank = "blank line";
constexpr const char* kEmptyField = "empty text field";
constexpr const char* kNoGold = "no gold label";
constexpr const char* kUnanswered = "question without an answer (Label 0)";
constexpr const char* kNoSyllogism = "no syllogistic relation";

// Malformed records logged per file under OnError::skip before the rest are only counted.
constexpr int kMaxLoggedSkips = 5;

// ---- Text helpers ----------------------------------------------------------------------------
bool is_space(char c) {
  return c == ' ' || c == '\t' || c == '\r' || c == '\n' || c == '\v' || c == '\f';
}

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

// File content quoted in a message: control bytes escaped so that the message stays one line,
// long values cut (at a character boundary) so that it stays readable.
std::string quote(std::string_view s) {
  size_t cut = std::min<size_t>(s.size(), 60);
  while (cut < s.size() && cut > 0 && (static_cast<unsigned char>(s[cut]) & 0xC0) == 0x80) --cut;
  std::string out = "'";
  for (size_t i = 0; i < cut; ++i) {
    const unsigned char c = static_cast<unsigned char>(s[i]);
    if (c < 0x20 || c == 0x7f) {
      char buf[8];
      std::snprintf(buf, sizeof buf, "\\x%02x", c);
      out += buf;
    } else {
      out += static_cast<char>(c);
    }
  }
  out += cut < s.size() ? "...'" : "'";
  return out;
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

bool starts_with_bom(const std::string& s) { return s.rfind("\xEF\xBB\xBF", 0) == 0; }

// ---- Line input ------------------------------------------------------------------------------
// A text file read one line at a time; lines come without "\n" or "\r\n".
class LineFile {
 public:
  explicit LineFile(const std::string& path) : path_(path) {
    file_ = std::fopen(path.c_str(), "rb");
    if (!file_) throw InputError(detail::concat(path, ": cannot open: ", std::strerror(errno)));
  }
  ~LineFile() {
    std::free(buf_);
    std::fclose(file_);
  }
  LineFile(const LineFile&) = delete;
  LineFile& operator=(const LineFile&) = delete;

  bool next(std::string& line) {
    const ssize_t n = ::getline(&buf_, &cap_, file_);
    if (n < 0) {
      if (std::ferror(file_))
        throw InputError(detail::concat(path_, ":", line_no_ + 1, ": read error: ",
                                        std::strerror(errno)));
      return false;
    }
    ++line_no_;
    size_t len = static_cast<size_t>(n);
    if (len > 0 && buf_[len - 1] == '\n') --len;
    if (len > 0 && buf_[len - 1] == '\r') --len;
    line.assign(buf_, len);
    return true;
  }
  int64_t line_no() const { return line_no_; }

 private:
  std::string path_;
  std::FILE* file_ = nullptr;
  char* buf_ = nullptr;
  size_t cap_ = 0;
  int64_t line_no_ = 0;
};

// ---- Per-file reading state ------------------------------------------------------------------
class Reader {
 public:
  Reader(const std::string& path, OnError on_error, const ExampleSink& sink)
      : on_error_(on_error), sink_(sink) {
    stats_.path = path;
  }

  const std::string& path() const { return stats_.path; }
  ReadStats& stats() { return stats_; }

  void skip(const char* reason, int64_t count = 1) {
    if (count > 0) stats_.skipped[reason] += count;
  }

  // A malformed record: an error, or a counted skip with the first few logged.
  void malformed(int64_t line, const std::string& kind, const std::string& why) {
    const std::string message = detail::concat(path(), ":", line, ": ", kind, ": ", why);
    if (on_error_ == OnError::fail) throw InputError(message);
    ++stats_.skipped["malformed: " + kind];
    if (++logged_ <= kMaxLoggedSkips) log::warn(message, " (skipped)");
  }

  // Fails for any problem of the file as a whole (a header without a needed column): no
  // record of such a file can be read, so skipping it record by record would only hide it.
  [[noreturn]] void fatal(int64_t line, const std::string& message) const {
    throw InputError(detail::concat(path(), ":", line, ": ", message));
  }

  // Checks a text field and trims it; false when its record was counted as malformed or skipped.
  bool clean(int64_t line, std::string& f) {
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

  // Trims the fields, checks them and hands the example on.
  void deliver(int64_t line, std::vector<std::string> fields, int8_t label = 0) {
    for (std::string& f : fields)
      if (!clean(line, f)) return;
    Example ex;
    ex.fields = std::move(fields);
    ex.label = label;
    ex.line = line;
    emit(std::move(ex));
  }

  // Hands on an example whose fields (and candidates) were cleaned already.
  void emit(Example&& ex) {
    sink_(std::move(ex));
    ++stats_.examples;
  }

  void finish() {
    if (logged_ > kMaxLoggedSkips)
      log::warn(path(), ": ", logged_ - kMaxLoggedSkips, " more malformed records skipped");
  }

 private:
  OnError on_error_;
  const ExampleSink& sink_;
  ReadStats stats_;
  int logged_ = 0;
};

// ---- Tables ----------------------------------------------------------------------------------
// One wanted column: its accepted header names (matched case-insensitively, trimmed).
using Aliases = std::vector<const char*>;

struct Table {
  std::vector<size_t> index;    // per wanted column: its position in a row
  std::vector<size_t> alias;    // per wanted column: which alias the header used
  size_t header_fields = 0;
  size_t needed_fields = 0;     // 1 + the largest wanted position
};

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

// What a format does with its table: the columns it wants, one call per data row with the
// wanted fields in `wanted` order, and (optionally) one call at the end of the file for the
// records a format assembles from several rows.
struct TableFormat {
  std::vector<Aliases> wanted;
  std::function<void(Reader&, const Table&, std::vector<std::string>&, int64_t)> row;
  std::function<void(Reader&)> end;
};

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

void read_tsv(Reader& r, LineFile& in, const TableFormat& fmt) {
  std::string line;
  std::optional<Table> table;
  while (in.next(line)) {
    if (in.line_no() == 1 && starts_with_bom(line)) line.erase(0, 3);
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

void read_csv(Reader& r, LineFile& in, const TableFormat& fmt, bool latin1) {
  CsvParser parser;
  CsvRecord rec;
  std::optional<Table> table;
  std::string line;
  int64_t record_start = 0;  // first line of the record being parsed, 0 between records

  auto take_record = [&](int64_t at) {
    if (!table) {
      table = find_columns(r, rec.fields, at, fmt.wanted);
    } else {
      dispatch_row(r, fmt, *table, rec.fields, at);
    }
    rec = CsvRecord{};
    record_start = 0;
  };

  while (in.next(line)) {
    if (in.line_no() == 1 && !latin1 && starts_with_bom(line)) line.erase(0, 3);
    if (record_start == 0 && trim(line).empty()) {
      if (!table) r.fatal(in.line_no(), "expected a header line, found a blank line");
      r.skip(kBlank);
      continue;
    }
    if (record_start == 0) record_start = in.line_no();
    std::string bytes = latin1 ? latin1_to_utf8(line) : line;
    bytes += '\n';
    if (!parser.parse(bytes, rec)) {
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

// ---- Formats ---------------------------------------------------------------------------------
void read_text(Reader& r, LineFile& in) {
  std::string line;
  while (in.next(line)) {
    if (in.line_no() == 1 && starts_with_bom(line)) line.erase(0, 3);
    if (trim(line).empty()) {
      r.skip(kBlank);
      continue;
    }
    r.deliver(in.line_no(), {line});
  }
}

// WikiQA pairs each question with the sentences of one article: Label 1 rows answer it, Label 0
// rows do not. A question's rows are read together, because an answer may come after the
// sentences that do not answer it, and each answer becomes one example whose candidates are the
// question's Label 0 sentences. The files list a question's rows contiguously; rows of a
// question that resume after another question's are malformed (grouping them would need the
// whole file in memory, and their candidates would be split between two examples otherwise).
class WikiqaQuestions {
 public:
  void row(Reader& r, std::vector<std::string>& v, int64_t line) {
    const std::string id = trim(v[0]), label = trim(v[3]);
    if (label != "0" && label != "1")
      return r.malformed(line, "bad label", "Label " + quote(label) + ", expected 0 or 1");
    if (id.empty()) return r.malformed(line, "bad QuestionID", "the QuestionID is empty");
    if (id != id_) {
      const auto done = ended_.find(id);
      if (done != ended_.end())
        return r.malformed(line, "question not contiguous",
                           detail::concat("QuestionID ", quote(id), " ended at line ", done->second,
                                          "; a question's rows must be contiguous"));
      end(r);
      id_ = id;
    }
    last_line_ = line;
    if (label == "0") {
      if (r.clean(line, v[2])) candidates_.push_back(std::move(v[2]));
      return;
    }
    Example ex;
    ex.fields = {std::move(v[1]), std::move(v[2])};
    for (std::string& f : ex.fields)
      if (!r.clean(line, f)) return;
    ex.line = line;
    answers_.push_back(std::move(ex));
  }

  // Delivers the current question's examples; called at each new question and at the end.
  void end(Reader& r) {
    if (id_.empty()) return;
    const int64_t candidates = static_cast<int64_t>(candidates_.size());
    if (answers_.empty()) {
      r.skip(kUnanswered, candidates);
    } else {
      r.stats().candidates += candidates;
      for (Example& ex : answers_) {
        ex.candidates = candidates_;
        r.emit(std::move(ex));
      }
    }
    ended_[id_] = last_line_;
    id_.clear();
    answers_.clear();
    candidates_.clear();
  }

 private:
  std::string id_;  // the question being read, "" before the first
  int64_t last_line_ = 0;
  std::vector<Example> answers_;
  std::vector<std::string> candidates_;
  std::map<std::string, int64_t> ended_;  // QuestionID -> its last line
};

TableFormat wikiqa_format() {
  TableFormat f;
  f.wanted = {{"QuestionID"}, {"Question"}, {"Sentence"}, {"Label"}};
  auto questions = std::make_shared<WikiqaQuestions>();
  f.row = [questions](Reader& r, const Table&, std::vector<std::string>& v, int64_t line) {
    questions->row(r, v, line);
  };
  f.end = [questions](Reader& r) { questions->end(r); };
  return f;
}

TableFormat avicenna_format() {
  TableFormat f;
  f.wanted = {{"Premise 1"}, {"Premise 2"}, {"Syllogistic relation"}, {"Conclusion"}};
  f.row = [](Reader& r, const Table&, std::vector<std::string>& v, int64_t line) {
    const std::string relation = lower(trim(v[2]));
    if (relation == "no") return r.skip(kNoSyllogism);
    if (relation != "yes")
      return r.malformed(line, "bad label",
                         "Syllogistic relation " + quote(v[2]) + ", expected yes or no");
    r.deliver(line, {std::move(v[0]), std::move(v[1]), std::move(v[3])});
  };
  return f;
}

// SNLI's labels. Hugging Face's exports use premise/hypothesis/label with integer labels
// (0 entailment, 1 neutral, 2 contradiction, -1 none); the original files use words and '-'.
enum class SnliLabel { ok, no_gold, bad };
SnliLabel snli_label(const std::string& raw, bool numeric, int8_t& out) {
  const std::string s = trim(raw);
  if (s == "entailment" || (numeric && s == "0")) out = 1;
  else if (s == "neutral" || (numeric && s == "1")) out = 0;
  else if (s == "contradiction" || (numeric && s == "2")) out = -1;
  else if (s == "-" || (numeric && s == "-1")) return SnliLabel::no_gold;
  else return SnliLabel::bad;
  return SnliLabel::ok;
}

const Aliases kSentence1 = {"sentence1", "premise"};
const Aliases kSentence2 = {"sentence2", "hypothesis"};
const Aliases kGoldLabel = {"gold_label", "label"};

void deliver_snli(Reader& r, int64_t line, std::string s1, std::string s2,
                  const std::string& label, bool numeric) {
  int8_t y = 0;
  switch (snli_label(label, numeric, y)) {
    case SnliLabel::no_gold: return r.skip(kNoGold);
    case SnliLabel::bad:
      return r.malformed(line, "bad label",
                         "gold label " + quote(label) +
                             ", expected entailment, neutral, contradiction or -");
    case SnliLabel::ok: break;
  }
  r.deliver(line, {std::move(s1), std::move(s2)}, y);
}

TableFormat snli_table_format() {
  TableFormat f;
  f.wanted = {kSentence1, kSentence2, kGoldLabel};
  f.row = [](Reader& r, const Table& t, std::vector<std::string>& v, int64_t line) {
    deliver_snli(r, line, std::move(v[0]), std::move(v[1]), v[2], t.alias[2] == 1);
  };
  return f;
}

// The message of a nlohmann parse error without its "[json.exception.parse_error.101] " tag.
std::string json_reason(const json::exception& e) {
  const std::string what = e.what();
  const size_t close = what.find("] ");
  return close == std::string::npos ? what : what.substr(close + 2);
}

void read_snli_jsonl(Reader& r, LineFile& in) {
  std::string line;
  while (in.next(line)) {
    const int64_t n = in.line_no();
    if (n == 1 && starts_with_bom(line)) line.erase(0, 3);
    if (trim(line).empty()) {
      r.skip(kBlank);
      continue;
    }
    json obj;
    try {
      obj = json::parse(line);
    } catch (const json::exception& e) {
      r.malformed(n, "invalid JSON", json_reason(e));
      continue;
    }
    if (!obj.is_object()) {
      r.malformed(n, "invalid JSON", detail::concat("a ", obj.type_name(), ", expected an object"));
      continue;
    }
    // The first alias present names the value; a present key of the wrong type is an error.
    auto find = [&](const Aliases& aliases, size_t& which) -> const json* {
      for (which = 0; which < aliases.size(); ++which) {
        const auto it = obj.find(aliases[which]);
        if (it != obj.end()) return &*it;
      }
      r.malformed(n, "missing key", detail::concat("no '", aliases[0], "'"));
      return nullptr;
    };
    size_t a1 = 0, a2 = 0, al = 0;
    const json* s1 = find(kSentence1, a1);
    if (!s1) continue;
    const json* s2 = find(kSentence2, a2);
    if (!s2) continue;
    const json* label = find(kGoldLabel, al);
    if (!label) continue;
    if (!s1->is_string() || !s2->is_string()) {
      r.malformed(n, "bad value", detail::concat("'", kSentence1[a1], "' and '", kSentence2[a2],
                                                 "' must be strings"));
      continue;
    }
    const bool numeric = al == 1;
    std::string label_text;
    if (label->is_string()) label_text = label->get<std::string>();
    else if (numeric && label->is_number_integer()) label_text = std::to_string(label->get<int64_t>());
    else label_text = label->dump();
    deliver_snli(r, n, s1->get<std::string>(), s2->get<std::string>(), label_text, numeric);
  }
}

}  // namespace

// ---- Public ----------------------------------------------------------------------------------
const char* task_name(Task task) { return kTasks[static_cast<int>(task)].name; }
const char* task_short_name(Task task) { return kTasks[static_cast<int>(task)].short_name; }

Task task_from_name(const std::string& name) {
  for (const TaskInfo& t : kTasks)
    if (name == t.name || name == t.short_name) return t.task;
  throw InputError(detail::concat("unknown task '", name,
                                  "' (expected encode_decode|ed, question_answering|qa, "
                                  "reasoning|rs, consistency|cs)"));
}

const std::vector<std::string>& task_fields(Task task) {
  static const std::vector<std::string> kFields[kTaskCount] = {
      {"text"},
      {"question", "answer"},
      {"premise0", "premise1", "conclusion"},
      {"statement0", "statement1"},
  };
  return kFields[static_cast<int>(task)];
}

bool task_has_label(Task task) { return task == Task::consistency; }

const char* format_name(Format format) {
  switch (format) {
    case Format::text: return "text";
    case Format::wikiqa: return "wikiqa";
    case Format::avicenna: return "avicenna";
    case Format::snli_jsonl: return "snli-jsonl";
    case Format::snli_tsv: return "snli-tsv";
    case Format::snli_csv: return "snli-csv";
  }
  return "?";
}

Task task_of(Format format) {
  switch (format) {
    case Format::text: return Task::encode_decode;
    case Format::wikiqa: return Task::question_answering;
    case Format::avicenna: return Task::reasoning;
    case Format::snli_jsonl:
    case Format::snli_tsv:
    case Format::snli_csv: return Task::consistency;
  }
  QARAC_CHECK(false, "unknown format ", static_cast<int>(format));
}

Format snli_format_of(const std::string& path) {
  auto ends_with = [&](const char* ext) {
    const size_t n = std::strlen(ext);
    return path.size() >= n && lower(path.substr(path.size() - n)) == ext;
  };
  if (ends_with(".jsonl")) return Format::snli_jsonl;
  if (ends_with(".txt") || ends_with(".tsv")) return Format::snli_tsv;
  if (ends_with(".csv")) return Format::snli_csv;
  throw InputError(path + ": cannot tell the SNLI export from the extension "
                          "(expected .jsonl, .txt/.tsv or .csv)");
}

OnError on_error_from_name(const std::string& name) {
  if (name == "fail") return OnError::fail;
  if (name == "skip") return OnError::skip;
  throw InputError("--on-error must be fail or skip, got '" + name + "'");
}

int64_t ReadStats::skipped_total() const {
  int64_t n = 0;
  for (const auto& kv : skipped) n += kv.second;
  return n;
}

ReadStats read_examples(const std::string& path, Format format, OnError on_error,
                        const ExampleSink& sink) {
  Reader r(path, on_error, sink);
  LineFile in(path);
  switch (format) {
    case Format::text: read_text(r, in); break;
    case Format::wikiqa: read_tsv(r, in, wikiqa_format()); break;
    case Format::avicenna: read_csv(r, in, avicenna_format(), /*latin1=*/true); break;
    case Format::snli_jsonl: read_snli_jsonl(r, in); break;
    case Format::snli_tsv: read_tsv(r, in, snli_table_format()); break;
    case Format::snli_csv: read_csv(r, in, snli_table_format(), /*latin1=*/false); break;
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
