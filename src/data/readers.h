// Readers of the raw dataset formats (docs/design.md §6) and the four task streams they feed (§3):
// plain text -> encode_decode, WikiQA -> question_answering, Avicenna -> reasoning,
// SNLI -> consistency; and JSON lines in a stream's own field names -> that stream. A reader turns one file into Examples (UTF-8 text fields in the task's
// order, plus the consistency label) and counts every record it does not deliver by reason:
// records the format itself marks as unusable (SNLI's '-', Avicenna rows that are no syllogism,
// WikiQA's Label 0 rows of a question without an answer, blank lines) are always skipped and
// counted; malformed records (bad JSON, a missing column, invalid UTF-8, a C1 control byte in
// Latin-1, an unterminated quote...) raise an InputError "file:line: reason: detail" under
// OnError::fail, or are counted and logged under OnError::skip. WikiQA's Label 0 rows of an
// answered question are no example of their own: they become the candidates of that question's
// examples (WikiQA's answer-sentence selection), counted apart from examples and skips.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <string_view>
#include <vector>

#include "data/task.h"

namespace qarac::data {

// ---- Raw formats ---------------------------------------------------------------------------
enum class Format {
  text,        // UTF-8, one document per line
  wikiqa,      // TSV with header: QuestionID Question DocumentID DocumentTitle SentenceID Sentence Label
  avicenna,    // Latin-1 CSV with header: Premise 1, Premise 2, Syllogistic relation, Conclusion
  snli_jsonl,  // one JSON object per line: sentence1, sentence2, gold_label
  snli_tsv,    // the .txt tab export with header (gold_label ... sentence1 sentence2 ...)
  snli_csv,    // the CSV export with the same header
  // One JSON object per line with the task stream's own field names (task_fields), of any task:
  ed_jsonl,    // text
  qa_jsonl,    // question, answer, and optionally candidates (an array of sentences)
  rs_jsonl,    // premise0, premise1, conclusion
  cs_jsonl,    // statement0, statement1, label (entailment, neutral or contradiction)
};

const char* format_name(Format format);  // "text", "wikiqa", "avicenna", "snli-jsonl", ...
Task task_of(Format format);
// The SNLI export a file is, from its extension: .jsonl, .txt/.tsv, .csv (a gzip file's before its
// .gz); InputError otherwise.
Format snli_format_of(const std::string& path);
// The JSON lines format of a QARAC task (not masked_lm, which reads encode_decode's stream).
Format jsonl_format_of(Task task);

enum class OnError { fail, skip };
OnError on_error_from_name(const std::string& name);  // "fail" | "skip"

// The bytes of a raw file, decoded into UTF-8 text. Latin-1 (ISO-8859-1) decodes any byte, so a
// file read as Latin-1 is checked for what is no Latin-1 text: a C1 control byte (0x80-0x9F) in a
// field is a malformed record, a file that starts with a UTF-8 byte-order mark is refused, and a
// file whose every non-ASCII line is valid UTF-8 is warned about at its end (ReadStats::utf8_line).
enum class Encoding { latin1, utf8 };
// Avicenna: latin1, as the dataset is distributed; the others: utf8.
Encoding default_encoding(Format format);
Encoding encoding_from_name(const std::string& name);  // "latin-1" | "utf-8"

struct Example {
  std::vector<std::string> fields;  // task_fields(task) order, UTF-8, trimmed
  int8_t label = 0;                 // consistency only
  int64_t line = 0;                 // first line of the record in its file (1-based)
  // question_answering: the sentences offered for the question that do not answer it (WikiQA's
  // Label 0 rows of the same QuestionID, in file order, UTF-8, trimmed).
  std::vector<std::string> candidates;
};

struct ReadStats {
  std::string path;
  int64_t lines = 0;       // physical lines read, header included
  int64_t examples = 0;    // examples delivered to the sink
  int64_t candidates = 0;  // records delivered as candidates of examples (WikiQA's Label 0 rows)
  // Records not delivered, by reason ("no gold label", "malformed: missing column", ...).
  std::map<std::string, int64_t> skipped;
  // Read as Latin-1 with every line that has non-ASCII bytes valid UTF-8 (so most likely a UTF-8
  // file, its é read as Ã©): the first such line, else 0. The reader warns about it.
  int64_t utf8_line = 0;

  int64_t skipped_total() const;
};

using ExampleSink = std::function<void(Example&&)>;

// Reads `path` as `format` in `encoding` and calls `sink` once per example, in file order.
// Exceptions from the sink propagate unchanged.
ReadStats read_examples(const std::string& path, Format format, Encoding encoding, OnError on_error,
                        const ExampleSink& sink);

// ---- Text helpers (exposed for the tests) --------------------------------------------------
// Every byte of ISO-8859-1 is the code point of the same value.
std::string latin1_to_utf8(std::string_view latin1);
// Byte offset of the first invalid UTF-8 sequence (overlong forms, surrogates and code points
// above U+10FFFF included), or npos when the text is valid.
size_t find_invalid_utf8(std::string_view text);

}  // namespace qarac::data
