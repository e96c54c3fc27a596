// Data pipeline: the readers on the quirks of each raw format (tests/data/readers/, described in
// its README), task-stream files (round trip, hyperslab reads, no half-written output), the
// loader (the same global batches for every world size, their token-balanced division, batches
// across epochs, micro-batches, resume from a cursor under another plan), and qarac-prep end to
// end on data/sample.
#include <gtest/gtest.h>
#include <poll.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <memory>
#include <numeric>
#include <random>
#include <set>
#include <sstream>
#include <thread>
#include <utility>

#include "core/error.h"
#include "core/hdf5.h"
#include "core/hdf5_seal.h"
#include "core/log.h"
#include "data/chunk_compressor.h"
#include "data/loader.h"
#include "data/readers.h"
#include "data/shards.h"
#include "data/tokenizer.h"
#include "support/test_support.h"

using namespace qarac;
using namespace qarac::data;
namespace fs = std::filesystem;

namespace {

const std::string kFixtures = QARAC_TEST_DATA_DIR "/readers/";
const std::string kSample = QARAC_SAMPLE_DIR "/";

struct Read {
  std::vector<Example> examples;
  ReadStats stats;
};

Read read_all(const std::string& file, Format format, OnError on_error, Encoding encoding) {
  Read r;
  r.stats = read_examples(file, format, encoding, on_error, [&](Example&& e) { r.examples.push_back(std::move(e)); });
  return r;
}

Read read_all(const std::string& file, Format format, OnError on_error = OnError::skip) {
  return read_all(file, format, on_error, default_encoding(format));
}

// The InputError message of reading `file` under OnError::fail ("" when it reads cleanly).
std::string fail_message(const std::string& file, Format format, Encoding encoding) {
  try {
    read_all(file, format, OnError::fail, encoding);
  } catch (const InputError& e) {
    return e.what();
  }
  return "";
}

std::string fail_message(const std::string& file, Format format) {
  return fail_message(file, format, default_encoding(format));
}

std::vector<int64_t> lines_of(const Read& r) {
  std::vector<int64_t> lines;
  for (const Example& e : r.examples) lines.push_back(e.line);
  return lines;
}

int64_t skipped(const Read& r, const std::string& reason) {
  const auto it = r.stats.skipped.find(reason);
  return it == r.stats.skipped.end() ? 0 : it->second;
}

// A fresh directory under the system's temporary directory, removed with the object.
class TempDir {
 public:
  explicit TempDir(const std::string& name)
      : path_(fs::temp_directory_path() / ("qarac_test_data_" + std::to_string(::getpid()) + "_" + name)) {
    fs::remove_all(path_);
    fs::create_directories(path_);
  }
  ~TempDir() { fs::remove_all(path_); }
  std::string str() const { return path_.string(); }
  std::string operator/(const std::string& name) const { return (path_ / name).string(); }
  std::vector<std::string> entries() const {
    std::vector<std::string> names;
    for (const auto& e : fs::directory_iterator(path_)) names.push_back(e.path().filename().string());
    std::sort(names.begin(), names.end());
    return names;
  }

 private:
  fs::path path_;
};

}  // namespace

// ---- Readers -------------------------------------------------------------------------------

TEST(Readers, SnliJsonlQuirks) {
  const std::string file = kFixtures + "snli_quirks.jsonl";
  const Read r = read_all(file, Format::snli_jsonl);
  EXPECT_EQ(lines_of(r), (std::vector<int64_t>{1, 5, 6}));
  ASSERT_EQ(r.examples.size(), 3u);
  EXPECT_EQ(r.examples[0].fields, (std::vector<std::string>{"A man plays a guitar.", "A person plays music."}));
  EXPECT_EQ(r.examples[0].label, 1);
  EXPECT_EQ(r.examples[1].label, 0);
  EXPECT_EQ(r.examples[2].label, -1);  // Hugging Face's export: label 2 = contradiction
  EXPECT_EQ(r.examples[2].fields[0], "A cat sleeps.");
  EXPECT_EQ(skipped(r, "no gold label"), 1);
  EXPECT_EQ(skipped(r, "blank line"), 1);
  EXPECT_EQ(skipped(r, "malformed: missing key"), 1);
  EXPECT_EQ(skipped(r, "malformed: bad label"), 1);
  EXPECT_EQ(skipped(r, "malformed: invalid JSON"), 1);  // the truncated last line
  EXPECT_EQ(r.stats.lines, 8);
  EXPECT_EQ(r.stats.examples, 3);
  EXPECT_EQ(r.stats.skipped_total(), 5);
  EXPECT_EQ(fail_message(file, Format::snli_jsonl).rfind(file + ":4: missing key: no 'sentence2'", 0), 0u)
      << fail_message(file, Format::snli_jsonl);
}

// JSON lines in the streams' own fields (--jsonl TASK:FILE): tests/data/readers/README.md lists
// each line's quirk.
TEST(Readers, QaJsonlQuirks) {
  const std::string file = kFixtures + "qa_quirks.jsonl";
  const Read r = read_all(file, Format::qa_jsonl);
  EXPECT_EQ(lines_of(r), (std::vector<int64_t>{1, 2, 3, 9}));
  ASSERT_EQ(r.examples.size(), 4u);
  const std::vector<std::string> hamlet = {"Hamlet is a play.", "It is set in Denmark."};
  EXPECT_EQ(r.examples[0].fields, (std::vector<std::string>{"Who wrote Hamlet?", "Shakespeare wrote it."}));
  EXPECT_EQ(r.examples[0].candidates, hamlet);
  EXPECT_EQ(r.examples[1].candidates, hamlet);
  EXPECT_TRUE(r.examples[2].candidates.empty());
  EXPECT_TRUE(r.examples[3].candidates.empty());
  EXPECT_EQ(r.stats.candidates, 4);
  EXPECT_EQ(skipped(r, "empty text field"), 1);  // the blank candidate of line 1
  EXPECT_EQ(skipped(r, "blank line"), 1);
  EXPECT_EQ(skipped(r, "malformed: bad value"), 3);
  EXPECT_EQ(skipped(r, "malformed: missing key"), 1);
  EXPECT_EQ(skipped(r, "malformed: invalid JSON"), 1);
  EXPECT_EQ(r.stats.lines, 10);
  EXPECT_EQ(fail_message(file, Format::qa_jsonl),
            file + ":4: bad value: 'candidates' is \"Paris is big.\", expected an array of strings");
}

TEST(Readers, CsJsonlQuirks) {
  const std::string file = kFixtures + "cs_quirks.jsonl";
  const Read r = read_all(file, Format::cs_jsonl);
  EXPECT_EQ(lines_of(r), (std::vector<int64_t>{1, 2, 3}));
  ASSERT_EQ(r.examples.size(), 3u);
  EXPECT_EQ(r.examples[0].label, 1);
  EXPECT_EQ(r.examples[1].label, 0);
  EXPECT_EQ(r.examples[2].label, -1);
  EXPECT_EQ(r.examples[2].fields, (std::vector<std::string>{"A dog runs.", "No dog runs."}));
  EXPECT_EQ(skipped(r, "malformed: bad label"), 3);
  EXPECT_EQ(skipped(r, "malformed: missing key"), 1);
  EXPECT_EQ(skipped(r, "empty text field"), 1);
  EXPECT_EQ(skipped(r, "malformed: bad value"), 1);
  EXPECT_EQ(skipped(r, "malformed: invalid JSON"), 1);
  EXPECT_EQ(r.stats.skipped_total(), 7);
  EXPECT_EQ(fail_message(file, Format::cs_jsonl),
            file + ":4: bad label: 'label' is 0, expected \"entailment\", \"neutral\" or \"contradiction\"");
}

TEST(Readers, EdAndRsJsonlAndTheFormatOfEachTask) {
  TempDir dir("readers_task_jsonl");
  std::ofstream(dir / "ed.jsonl") << "{\"text\": \" A line. \", \"source\": \"web\"}\n{\"text\": \"Another.\"}\n";
  const Read ed = read_all(dir / "ed.jsonl", Format::ed_jsonl);
  ASSERT_EQ(ed.examples.size(), 2u);
  EXPECT_EQ(ed.examples[0].fields, std::vector<std::string>{"A line."});
  std::ofstream(dir / "rs.jsonl") << "{\"conclusion\": \"C.\", \"premise1\": \"B.\", \"premise0\": \"A.\"}\n"
                                   << "{\"conclusion\": \"C.\", \"premise1\": \" \", \"premise0\": \"\"}\n";
  const Read rs = read_all(dir / "rs.jsonl", Format::rs_jsonl);
  EXPECT_EQ(skipped(rs, "empty text field"), 1);  // a record skipped is counted once
  ASSERT_EQ(rs.examples.size(), 1u);
  EXPECT_EQ(rs.examples[0].fields, (std::vector<std::string>{"A.", "B.", "C."}));  // the stream's order
  EXPECT_EQ(fail_message(dir / "ed.jsonl", Format::rs_jsonl), dir / "ed.jsonl" + ":1: missing key: no 'premise0'");
  for (Task t : {Task::encode_decode, Task::question_answering, Task::reasoning, Task::consistency})
    EXPECT_EQ(task_of(jsonl_format_of(t)), t) << task_name(t);
  test_support::expect_input_error([] { jsonl_format_of(Task::masked_lm); },
                                   {"masked_lm has no stream of its own"});
}

TEST(Readers, SnliTabExportQuirks) {
  const std::string file = kFixtures + "snli_quirks.txt";
  const Read r = read_all(file, Format::snli_tsv);
  EXPECT_EQ(lines_of(r), (std::vector<int64_t>{2, 5}));
  ASSERT_EQ(r.examples.size(), 2u);
  EXPECT_EQ(r.examples[0].fields[0], "A woman sings \"loudly\".");  // no quoting in the tab export
  EXPECT_EQ(r.examples[0].fields[1], "A woman is silent.");         // CRLF removed
  EXPECT_EQ(r.examples[0].label, -1);
  EXPECT_EQ(r.examples[1].label, 1);  // trailing label columns dropped: still readable
  EXPECT_EQ(skipped(r, "no gold label"), 1);
  EXPECT_EQ(skipped(r, "malformed: missing column"), 1);
  EXPECT_EQ(fail_message(file, Format::snli_tsv).rfind(file + ":4: missing column: 6 fields, the header has 14", 0), 0u)
      << fail_message(file, Format::snli_tsv);
}

TEST(Readers, SnliCsvExportQuirks) {
  const std::string file = kFixtures + "snli_quirks.csv";
  const Read r = read_all(file, Format::snli_csv, OnError::fail);
  EXPECT_EQ(lines_of(r), (std::vector<int64_t>{2, 3, 5}));
  ASSERT_EQ(r.examples.size(), 3u);
  EXPECT_EQ(r.examples[0].fields[0], "A man, a woman and a dog walk.");
  EXPECT_EQ(r.examples[1].fields[0], "He says \"hello\".");
  EXPECT_EQ(r.examples[2].fields[0], "A long\nsentence.");  // a quoted field over two lines
  EXPECT_EQ(r.examples[2].label, -1);
  EXPECT_EQ(skipped(r, "no gold label"), 1);
  EXPECT_EQ(r.stats.lines, 6);
}

TEST(Readers, AvicennaQuirks) {
  const std::string file = kFixtures + "avicenna_quirks.csv";
  const Read r = read_all(file, Format::avicenna);
  EXPECT_EQ(lines_of(r), (std::vector<int64_t>{2, 7}));
  ASSERT_EQ(r.examples.size(), 2u);
  // Latin-1 é, ï, ë arrive as UTF-8; quoted commas stay inside their field.
  EXPECT_EQ(r.examples[0].fields,
            (std::vector<std::string>{"All caf\xC3\xA9 owners, bakers and cooks are workers.",
                                      "All workers are people.",
                                      "All caf\xC3\xA9 owners, bakers and cooks are people."}));
  EXPECT_EQ(r.examples[1].fields[0], "All Zo\xC3\xAB's friends are kind.");  // relation " Yes "
  EXPECT_EQ(skipped(r, "no syllogistic relation"), 1);
  EXPECT_EQ(skipped(r, "blank line"), 1);
  EXPECT_EQ(skipped(r, "malformed: missing column"), 1);
  EXPECT_EQ(skipped(r, "malformed: CSV syntax"), 1);          // a quote inside an unquoted field
  EXPECT_EQ(skipped(r, "malformed: bad label"), 1);
  EXPECT_EQ(skipped(r, "malformed: unterminated quote"), 1);  // the truncated last line
  EXPECT_EQ(r.stats.lines, 9);
  EXPECT_EQ(fail_message(file, Format::avicenna).rfind(file + ":5: missing column: 3 fields, the header has 4", 0), 0u)
      << fail_message(file, Format::avicenna);
}

TEST(Readers, WikiqaQuirks) {
  const std::string file = kFixtures + "wikiqa_quirks.tsv";
  const Read r = read_all(file, Format::wikiqa);
  EXPECT_EQ(lines_of(r), (std::vector<int64_t>{3, 8}));
  ASSERT_EQ(r.examples.size(), 2u);
  EXPECT_EQ(r.examples[0].fields, (std::vector<std::string>{"how tall is the tower", "The tower is 300 metres tall."}));
  EXPECT_EQ(r.examples[0].candidates, (std::vector<std::string>{"The tower is old."}));  // line 2
  EXPECT_TRUE(r.examples[1].candidates.empty());
  EXPECT_EQ(r.stats.candidates, 1);
  EXPECT_EQ(skipped(r, "blank line"), 2);
  EXPECT_EQ(skipped(r, "malformed: missing column"), 2);  // line 5, and the truncated line 9
  EXPECT_EQ(skipped(r, "malformed: bad label"), 1);
  EXPECT_EQ(fail_message(file, Format::wikiqa).rfind(file + ":5: missing column", 0), 0u)
      << fail_message(file, Format::wikiqa);
}

// A question's rows are read together: every answer gets the question's Label 0 sentences,
// wherever they stand among its rows; Label 0 rows of an unanswered question are skipped.
TEST(Readers, WikiqaCandidatesGroupAQuestionsRows) {
  const std::string file = kFixtures + "wikiqa_candidates.tsv";
  const Read r = read_all(file, Format::wikiqa);
  EXPECT_EQ(lines_of(r), (std::vector<int64_t>{3, 5, 8, 11}));
  ASSERT_EQ(r.examples.size(), 4u);
  const std::vector<std::string> q1 = {"It has a red cover.", "It is long."};  // lines 2 and 4, trimmed
  EXPECT_EQ(r.examples[0].fields, (std::vector<std::string>{"who wrote it", "It was written by Ann."}));
  EXPECT_EQ(r.examples[0].candidates, q1);
  EXPECT_EQ(r.examples[1].fields[1], "Ann wrote it in 1900.");
  EXPECT_EQ(r.examples[1].candidates, q1);  // the other answer is not a candidate
  EXPECT_TRUE(r.examples[2].candidates.empty());
  EXPECT_TRUE(r.examples[3].candidates.empty());  // its Label 0 sentence is blank
  EXPECT_EQ(r.stats.candidates, 2);               // rows, each counted once
  EXPECT_EQ(skipped(r, "question without an answer (Label 0)"), 2);  // lines 6-7
  EXPECT_EQ(skipped(r, "malformed: question not contiguous"), 1);    // line 9
  EXPECT_EQ(skipped(r, "empty text field"), 1);                      // line 10
  EXPECT_EQ(r.stats.examples + r.stats.candidates + r.stats.skipped_total() + 1, r.stats.lines);
  EXPECT_EQ(fail_message(file, Format::wikiqa),
            file + ":9: question not contiguous: QuestionID 'Q1' ended at line 5; a question's rows must be contiguous");
}

TEST(Readers, TextQuirks) {
  const std::string file = kFixtures + "text_quirks.txt";
  const Read r = read_all(file, Format::text);
  EXPECT_EQ(lines_of(r), (std::vector<int64_t>{1, 4, 6}));
  ASSERT_EQ(r.examples.size(), 3u);
  EXPECT_EQ(r.examples[1].fields[0], "Second document, CRLF.");
  EXPECT_EQ(r.examples[2].fields[0], "Last document, no newline.");
  EXPECT_EQ(skipped(r, "blank line"), 2);
  EXPECT_EQ(skipped(r, "malformed: invalid UTF-8"), 1);
  EXPECT_EQ(fail_message(file, Format::text).rfind(file + ":5: invalid UTF-8: byte 4 (0xff) after 'Bad '", 0), 0u)
      << fail_message(file, Format::text);
}

TEST(Readers, FileLevelErrorsFailUnderEitherPolicy) {
  for (OnError policy : {OnError::fail, OnError::skip}) {
    try {
      read_all(kFixtures + "wikiqa_no_label.tsv", Format::wikiqa, policy);
      ADD_FAILURE() << "a header without Label was accepted";
    } catch (const InputError& e) {
      EXPECT_NE(std::string(e.what()).find("wikiqa_no_label.tsv:1: the header has no column 'Label'"),
                std::string::npos) << e.what();
    }
    EXPECT_THROW(read_all(kFixtures + "empty.tsv", Format::wikiqa, policy), InputError);
    try {
      read_all(kFixtures + "no_such_file.jsonl", Format::snli_jsonl, policy);
      ADD_FAILURE() << "a missing file was accepted";
    } catch (const InputError& e) {
      EXPECT_NE(std::string(e.what()).find("no_such_file.jsonl: cannot open"), std::string::npos);
    }
  }
  EXPECT_THROW(snli_format_of("snli.parquet"), InputError);
  EXPECT_EQ(snli_format_of("a/SNLI_1.0_TRAIN.TXT"), Format::snli_tsv);
  EXPECT_EQ(snli_format_of("snli_1.0_train.jsonl.gz"), Format::snli_jsonl);
  EXPECT_EQ(snli_format_of("SNLI.CSV.GZ"), Format::snli_csv);
  EXPECT_THROW(snli_format_of("snli.gz"), InputError);
}

// Cut, spliced and byte-flipped versions of every fixture: under either policy a reader either
// reads or raises InputError; nothing else escapes, and skip never raises for a bad record.
TEST(Readers, MutatedInputOnlyEverGivesInputErrors) {
  TempDir dir("readers_mutated");
  const std::pair<const char*, Format> fixtures[] = {
      {"snli_quirks.jsonl", Format::snli_jsonl}, {"snli_quirks.txt", Format::snli_tsv},
      {"snli_quirks.csv", Format::snli_csv},     {"avicenna_quirks.csv", Format::avicenna},
      {"wikiqa_quirks.tsv", Format::wikiqa},     {"wikiqa_candidates.tsv", Format::wikiqa},
      {"text_quirks.txt", Format::text},         {"qa_quirks.jsonl", Format::qa_jsonl},
      {"cs_quirks.jsonl", Format::cs_jsonl}};
  const std::string specials = "\"\t\n\r,{}[]:\\\xff\xc3\x80 -";
  std::mt19937 rng(11);
  const log::Level level = log::level();
  log::set_level(log::Level::error);  // thousands of skipped records would each warn
  for (const auto& [name, format] : fixtures) {
    std::ifstream in(kFixtures + name, std::ios::binary);
    const std::string original((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    for (int trial = 0; trial < 150; ++trial) {
      std::string bytes = original;
      for (int k = 1 + rng() % 4; k > 0; --k) {
        const size_t at = bytes.empty() ? 0 : rng() % bytes.size();
        switch (rng() % 4) {
          case 0: bytes.resize(at); break;  // truncated
          case 1: bytes.insert(at, 1, specials[rng() % specials.size()]); break;
          case 2: if (!bytes.empty()) bytes[at] = specials[rng() % specials.size()]; break;
          case 3: if (!bytes.empty()) bytes.erase(at, 1 + rng() % 8); break;
        }
      }
      const std::string path = dir / name;
      std::ofstream(path, std::ios::binary) << bytes;
      for (OnError policy : {OnError::fail, OnError::skip}) {
        try {
          read_all(path, format, policy);
        } catch (const InputError& e) {
          // Header problems end the file under both policies; any other error only under fail.
          const std::string what = e.what();
          if (policy == OnError::skip) {
            EXPECT_TRUE(what.find("header") != std::string::npos || what.find("empty file") != std::string::npos)
                << name << " trial " << trial << ": " << what;
          }
        }
      }
    }
  }
  log::set_level(level);
}

// A gzip file reads as the text it holds: the same examples, lines and skips as the plain file,
// its members one after another as gunzip gives them (`cat a.gz b.gz`).
TEST(Readers, GzipInputIsReadAsItsText) {
  TempDir dir("readers_gzip");
  for (const auto& [name, format] : {std::pair{"text_quirks.txt", Format::text}, std::pair{"qa_quirks.jsonl", Format::qa_jsonl},
                                     std::pair{"avicenna_quirks.csv", Format::avicenna}}) {
    const std::string plain = test_support::read_text(kFixtures + name);
    std::ofstream(dir / "in.gz", std::ios::binary) << test_support::gzipped(plain);
    const Read want = read_all(kFixtures + name, format), got = read_all(dir / "in.gz", format);
    EXPECT_EQ(lines_of(got), lines_of(want)) << name;
    EXPECT_EQ(got.stats.lines, want.stats.lines) << name;
    EXPECT_EQ(got.stats.skipped, want.stats.skipped) << name;
    for (size_t i = 0; i < std::min(got.examples.size(), want.examples.size()); ++i)
      EXPECT_EQ(got.examples[i].fields, want.examples[i].fields) << name << " example " << i;
  }
  // A line across the members' boundary, and a long one across inflate's 64 KiB blocks.
  const std::string long_line(200000, 'w');
  std::ofstream(dir / "two.gz", std::ios::binary) << test_support::gzipped("first\nsecond, begun") << test_support::gzipped(" and ended\n" + long_line + "\n");
  const Read two = read_all(dir / "two.gz", Format::text);
  ASSERT_EQ(two.examples.size(), 3u);
  EXPECT_EQ(two.examples[1].fields[0], "second, begun and ended");
  EXPECT_EQ(two.examples[2].fields[0], long_line);
  std::ofstream(dir / "empty.gz", std::ios::binary) << test_support::gzipped("");
  EXPECT_EQ(fail_message(dir / "empty.gz", Format::text), dir / "empty.gz" + ":1: empty file, expected one document per line");
}

// A gzip stream cut short or damaged is an error under either policy, never the end of the file;
// the compressions that are not read are named, with a way to read them.
TEST(Readers, CutOrDamagedGzipAndOtherCompressionsAreErrors) {
  TempDir dir("readers_gzip_bad");
  const std::string gz = test_support::gzipped(test_support::read_text(kSample + "corpus_train.txt"));
  std::ofstream(dir / "cut.gz", std::ios::binary) << gz.substr(0, gz.size() / 2);
  std::string damaged = gz;
  for (size_t i = 1000; i < 1016; ++i) damaged[i] = static_cast<char>(~damaged[i]);
  std::ofstream(dir / "damaged.gz", std::ios::binary) << damaged;
  std::ofstream(dir / "trailing.gz", std::ios::binary) << test_support::gzipped("a\n") << "not gzip";
  for (OnError policy : {OnError::fail, OnError::skip}) {
    test_support::expect_input_error([&] { read_all(dir / "cut.gz", Format::text, policy); },
                                     {dir / "cut.gz:", ": the gzip stream ends before its end (a file cut short?)"});
    test_support::expect_input_error([&] { read_all(dir / "damaged.gz", Format::text, policy); },
                                     {dir / "damaged.gz:", ": damaged gzip stream: "});
    test_support::expect_input_error([&] { read_all(dir / "trailing.gz", Format::text, policy); },
                                     {dir / "trailing.gz:2: damaged gzip stream: "});
  }
  for (const auto& [magic, tool] : {std::pair{std::string("\xFD" "7zXZ", 5) + '\0', "xzcat"},
                                    std::pair{std::string("\x28\xB5\x2F\xFD"), "zstdcat"}, std::pair{std::string("BZh91AY&SY"), "bzcat"}}) {
    std::ofstream(dir / "packed", std::ios::binary) << magic << "rest of the file\n";
    test_support::expect_input_error([&] { read_all(dir / "packed", Format::text); },
                                     {dir / "packed: is ", "-compressed, which is not read (gzip is)",
                                      std::string("<(") + tool + " " + (dir / "packed") + ")"});
  }
  std::ofstream(dir / "text") << "BZh is how a bzip2 file begins\n";  // but this is a text
  EXPECT_EQ(read_all(dir / "text", Format::text).examples.size(), 1u);
}

TEST(Readers, Utf8ValidationAndLatin1) {
  EXPECT_EQ(latin1_to_utf8("caf\xE9 \xFF"), "caf\xC3\xA9 \xC3\xBF");
  EXPECT_EQ(find_invalid_utf8("plain"), std::string::npos);
  EXPECT_EQ(find_invalid_utf8("\xE2\x82\xAC \xF0\x9D\x84\x9E"), std::string::npos);  // € 𝄞
  EXPECT_EQ(find_invalid_utf8("a\xC0\xAF"), 1u);            // overlong '/'
  EXPECT_EQ(find_invalid_utf8("ab\xED\xA0\x80"), 2u);       // UTF-16 surrogate
  EXPECT_EQ(find_invalid_utf8("\xF4\x90\x80\x80"), 0u);     // above U+10FFFF
  EXPECT_EQ(find_invalid_utf8("x\xE2\x82"), 1u);            // cut inside a character
  EXPECT_EQ(find_invalid_utf8("\x80"), 0u);                 // lone continuation byte
}

// The encoding is the format's own unless asked: Avicenna Latin-1, the others UTF-8.
TEST(Readers, EncodingNamesAndDefaults) {
  EXPECT_EQ(encoding_from_name("latin-1"), Encoding::latin1);
  EXPECT_EQ(encoding_from_name("utf-8"), Encoding::utf8);
  test_support::expect_input_error([] { encoding_from_name("cp1252"); },
                                   {"--encoding must be latin-1 or utf-8, got 'cp1252'"});
  EXPECT_EQ(default_encoding(Format::avicenna), Encoding::latin1);
  for (Format f : {Format::text, Format::wikiqa, Format::snli_jsonl, Format::snli_tsv, Format::snli_csv,
                   Format::ed_jsonl, Format::qa_jsonl, Format::rs_jsonl, Format::cs_jsonl})
    EXPECT_EQ(default_encoding(f), Encoding::utf8) << format_name(f);
}

namespace {

const std::string kAvicennaHeader = "Premise 1,Premise 2,Syllogistic relation,Conclusion\r\n";
const std::string kCafeUtf8 = "All caf\xC3\xA9 owners are workers.";

// An Avicenna CSV of `rows` after the header, in `dir`.
std::string avicenna_file(const TempDir& dir, const std::string& rows) {
  const std::string path = dir / "avicenna.csv";
  std::ofstream(path, std::ios::binary) << kAvicennaHeader << rows;
  return path;
}

}  // namespace

// A user's UTF-8 Avicenna file: read as Latin-1 (the default), é becomes Ã© and the file is
// named in a warning with its first non-ASCII line; read as UTF-8 it is right. A real Latin-1
// file, or one with no non-ASCII byte, draws no warning.
TEST(Readers, Utf8FileReadAsLatin1IsGarbledAndWarnedAbout) {
  TempDir dir("utf8_as_latin1");
  const std::string file = avicenna_file(dir, "All cats are animals.,All animals breathe.,yes,All cats breathe.\r\n" +
                                                  kCafeUtf8 + ",All workers are people.,yes,x\r\n");
  const Read latin1 = read_all(file, Format::avicenna, OnError::fail);
  ASSERT_EQ(latin1.examples.size(), 2u);
  EXPECT_EQ(latin1.examples[1].fields[0], "All caf\xC3\x83\xC2\xA9 owners are workers.");  // cafÃ©
  EXPECT_EQ(latin1.stats.utf8_line, 3);
  const Read utf8 = read_all(file, Format::avicenna, OnError::fail, Encoding::utf8);
  ASSERT_EQ(utf8.examples.size(), 2u);
  EXPECT_EQ(utf8.examples[1].fields[0], kCafeUtf8);
  EXPECT_EQ(utf8.stats.utf8_line, 0);

  // Latin-1 é (0xE9) is no UTF-8: no warning, and UTF-8 reading refuses it as before.
  const std::string real = avicenna_file(dir, "All caf\xE9 owners are workers.,All workers are people.,yes,x\r\n");
  EXPECT_EQ(read_all(real, Format::avicenna, OnError::fail).stats.utf8_line, 0);
  EXPECT_EQ(fail_message(real, Format::avicenna, Encoding::utf8).rfind(real + ":2: invalid UTF-8: byte 7 (0xe9)", 0), 0u)
      << fail_message(real, Format::avicenna, Encoding::utf8);
  // One line that is no UTF-8 is enough for the file to be Latin-1.
  const std::string mixed = avicenna_file(dir, kCafeUtf8 + ",All workers are people.,yes,x\r\n"
                                               "All caf\xE9 owners are workers.,All workers are people.,yes,x\r\n");
  EXPECT_EQ(read_all(mixed, Format::avicenna, OnError::fail).stats.utf8_line, 0);
  EXPECT_EQ(read_all(kFixtures + "avicenna_quirks.csv", Format::avicenna).stats.utf8_line, 0);
  EXPECT_EQ(read_all(kSample + "Avicenna_Train.csv", Format::avicenna, OnError::fail).stats.utf8_line, 0);
}

// Bytes 0x80-0x9F are C1 control codes in Latin-1, never text: Windows-1252's curly quotes, or
// UTF-8's continuation bytes. The record is malformed, named by file, line and byte.
TEST(Readers, C1ControlBytesAreNoLatin1Text) {
  TempDir dir("c1");
  const std::string cp1252 = avicenna_file(
      dir, "All cats are animals.,All animals breathe.,yes,All cats breathe.\r\n"
           "He said \x93hi\x94.,All workers are people.,yes,x\r\n");
  const std::string message = fail_message(cp1252, Format::avicenna);
  EXPECT_EQ(message.rfind(cp1252 + ":3: C1 control byte: byte 0x93 after 'He said ' is no Latin-1 text", 0), 0u)
      << message;
  EXPECT_NE(message.find("pass --encoding utf-8"), std::string::npos) << message;
  EXPECT_NE(message.find("Windows-1252"), std::string::npos) << message;
  const Read skipped_c1 = read_all(cp1252, Format::avicenna);
  EXPECT_EQ(lines_of(skipped_c1), (std::vector<int64_t>{2}));
  EXPECT_EQ(skipped(skipped_c1, "malformed: C1 control byte"), 1);
  EXPECT_EQ(skipped_c1.stats.utf8_line, 0);  // 0x93 alone is no UTF-8 either

  // UTF-8's ’ (E2 80 99) read as Latin-1 is "â" and two C1 bytes: malformed, and the file, whose
  // every non-ASCII line is UTF-8, is warned about; read as UTF-8 it is right.
  const std::string quotes = avicenna_file(dir, "All cats don\xE2\x80\x99t bark.,All animals breathe.,yes,x\r\n");
  EXPECT_EQ(fail_message(quotes, Format::avicenna).rfind(quotes + ":2: C1 control byte: byte 0x80 after 'All cats don\xC3\xA2'", 0), 0u)
      << fail_message(quotes, Format::avicenna);
  const Read as_latin1 = read_all(quotes, Format::avicenna);
  EXPECT_TRUE(as_latin1.examples.empty());
  EXPECT_EQ(as_latin1.stats.utf8_line, 2);
  EXPECT_EQ(read_all(quotes, Format::avicenna, OnError::fail, Encoding::utf8).examples.at(0).fields[0],
            "All cats don\xE2\x80\x99t bark.");
  // The C1 range is 0x80..0x9F, its bounds included; 0xA0 (no-break space) is Latin-1 text.
  const std::string bounds = avicenna_file(dir, "A \x80 B.,C.,yes,x\r\nA \x9F B.,C.,yes,x\r\nA \xA0 B.,C.,yes,x\r\n");
  const Read bounded = read_all(bounds, Format::avicenna);
  EXPECT_EQ(lines_of(bounded), (std::vector<int64_t>{4}));
  EXPECT_EQ(skipped(bounded, "malformed: C1 control byte"), 2);
  // Read as UTF-8, U+0080..U+009F are code points like any other.
  const std::string c1_utf8 = avicenna_file(dir, "A \xC2\x85 B.,All animals breathe.,yes,x\r\n");
  EXPECT_EQ(read_all(c1_utf8, Format::avicenna, OnError::fail, Encoding::utf8).examples.size(), 1u);
}

// Every format reads "café" written in Latin-1 (E9) or in UTF-8 (C3 A9) as UTF-8 when given the
// file's encoding; a UTF-8 byte-order mark opens a UTF-8 file (removed) and ends a file read as
// Latin-1, whose first column's name it would change.
TEST(Readers, EveryFormatReadsEitherEncoding) {
  TempDir dir("encodings");
  const std::string kSnliHeader = "gold_label\tsentence1_binary_parse\tsentence2_binary_parse\tsentence1_parse\t"
                                  "sentence2_parse\tsentence1\tsentence2\tcaptionID\tpairID\n";
  const auto csv = [](std::string line) {
    std::replace(line.begin(), line.end(), '\t', ',');
    return line;
  };
  // Each format's file whose first example's first field is `cafe` and more words.
  const std::vector<std::pair<Format, std::function<std::string(const std::string&)>>> formats = {
      {Format::text, [](const std::string& cafe) { return cafe + " au lait\n"; }},
      {Format::wikiqa,
       [](const std::string& cafe) {
         return "QuestionID\tQuestion\tDocumentID\tDocumentTitle\tSentenceID\tSentence\tLabel\n"
                "Q1\t" + cafe + " au lait\tD1\tT\tD1-0\tMilk in coffee.\t1\n";
       }},
      {Format::avicenna, [&](const std::string& cafe) { return kAvicennaHeader + cafe + " au lait,B,yes,C\r\n"; }},
      {Format::snli_jsonl,
       [](const std::string& cafe) {
         return "{\"gold_label\": \"entailment\", \"sentence1\": \"" + cafe +
                " au lait\", \"sentence2\": \"Coffee.\"}\n";
       }},
      {Format::snli_tsv,
       [&](const std::string& cafe) {
         return kSnliHeader + "entailment\t(\t(\t(\t(\t" + cafe + " au lait\tCoffee.\t1\t1e\n";
       }},
      {Format::snli_csv,
       [&](const std::string& cafe) {
         return csv(kSnliHeader) + csv("entailment\t(\t(\t(\t(\t" + cafe + " au lait\tCoffee.\t1\t1e\n");
       }},
  };
  for (const auto& [format, file_of] : formats) {
    for (Encoding encoding : {Encoding::latin1, Encoding::utf8}) {
      const std::string path = dir / (std::string(format_name(format)) + (encoding == Encoding::utf8 ? ".utf8" : ".l1"));
      std::ofstream(path, std::ios::binary) << file_of(encoding == Encoding::utf8 ? "caf\xC3\xA9" : "caf\xE9");
      const Read read = read_all(path, format, OnError::fail, encoding);
      ASSERT_EQ(read.examples.size(), 1u) << path;
      EXPECT_EQ(read.examples[0].fields.at(0), "caf\xC3\xA9 au lait") << path;
    }
  }

  const std::string text = dir / "corpus.txt";
  std::ofstream(text, std::ios::binary) << "caf\xE9 au lait\n";
  EXPECT_EQ(read_all(text, Format::text, OnError::fail, Encoding::latin1).examples.at(0).fields[0],
            "caf\xC3\xA9 au lait");
  EXPECT_EQ(fail_message(text, Format::text).rfind(text + ":1: invalid UTF-8: byte 3 (0xe9)", 0), 0u)
      << fail_message(text, Format::text);

  const std::string bom = dir / "bom.csv";
  std::ofstream(bom, std::ios::binary) << "\xEF\xBB\xBF" << kAvicennaHeader << kCafeUtf8 << ",B,yes,C\r\n";
  EXPECT_EQ(read_all(bom, Format::avicenna, OnError::fail, Encoding::utf8).examples.at(0).fields[0], kCafeUtf8);
  for (OnError policy : {OnError::fail, OnError::skip})
    test_support::expect_input_error(
        [&] { read_all(bom, Format::avicenna, policy); },
        {bom + ":1: starts with a UTF-8 byte-order mark, but is read as Latin-1: pass --encoding utf-8"});
}

TEST(Readers, TaskNames) {
  for (int t = 0; t < kTaskCount; ++t) {
    const Task task = static_cast<Task>(t);
    EXPECT_EQ(task_from_name(task_name(task)), task);
    EXPECT_EQ(task_from_name(task_short_name(task)), task);
  }
  EXPECT_THROW(task_from_name("translation"), InputError);
  EXPECT_EQ(task_fields(Task::reasoning).size(), 3u);
  EXPECT_EQ(stream_task(Task::masked_lm), Task::encode_decode);
  EXPECT_EQ(task_fields(Task::masked_lm), task_fields(Task::encode_decode));
  for (int t = 0; t < kQaracTaskCount; ++t) EXPECT_EQ(stream_task(static_cast<Task>(t)), static_cast<Task>(t));
}

// The committed sample data reads cleanly in every format, with each format's own skips present.
TEST(Readers, SampleDataIsWellFormed) {
  struct Case {
    const char* file;
    Format format;
    const char* expected_skip;
    int header_lines;
  };
  const Case cases[] = {
      {"corpus_train.txt", Format::text, nullptr, 0},
      {"WikiQA-train.tsv", Format::wikiqa, nullptr, 1},  // every question answered
      {"WikiQA-subjects-train.tsv", Format::wikiqa, nullptr, 1},
      {"Avicenna_Train.csv", Format::avicenna, "no syllogistic relation", 1},
      {"snli_1.0_train.jsonl", Format::snli_jsonl, "no gold label", 0},
      {"snli_1.0_dev.txt", Format::snli_tsv, "no gold label", 1},
      {"snli_1.0_test.csv", Format::snli_csv, "no gold label", 1},
  };
  for (const Case& c : cases) {
    const Read r = read_all(kSample + c.file, c.format, OnError::fail);
    EXPECT_GT(r.stats.examples, 100) << c.file;
    if (c.expected_skip) {
      EXPECT_GT(skipped(r, c.expected_skip), 0) << c.file;
    }
    EXPECT_EQ(r.stats.examples + r.stats.candidates + r.stats.skipped_total() + c.header_lines, r.stats.lines)
        << c.file;
  }
  // data/make_sample.py gives every question one answer and 1-3 sentences that do not answer it.
  for (const char* file :
       {"WikiQA-train.tsv", "WikiQA-dev.tsv", "WikiQA-subjects-train.tsv", "WikiQA-subjects-dev.tsv"}) {
    const Read r = read_all(kSample + file, Format::wikiqa, OnError::fail);
    for (const Example& e : r.examples) {
      EXPECT_GE(e.candidates.size(), 1u) << file << ":" << e.line;
      EXPECT_LE(e.candidates.size(), 3u) << file << ":" << e.line;
    }
  }
}

// WikiQA-subjects-*.tsv: the 100 held-out questions are on 100 distinct subjects, each asked
// several times in training but never in the held-out question's words, so that retrieval among
// the 100 held-out answers is learnable.
TEST(Readers, SampleSubjectsRecurBetweenTrainingAndHeldOut) {
  // Per question (its first row): the question and its subject, WikiQA's DocumentTitle.
  auto questions = [](const std::string& file) {
    std::map<std::string, std::pair<std::string, std::string>> by_id;
    std::ifstream in(kSample + file);
    std::string line;
    std::getline(in, line);  // the header
    while (std::getline(in, line)) {
      std::vector<std::string> cols;
      std::stringstream row(line);
      for (std::string col; std::getline(row, col, '\t');) cols.push_back(col);
      by_id.emplace(cols.at(0), std::pair{cols.at(1), cols.at(3)});
    }
    return by_id;
  };
  std::map<std::string, int> times_asked;
  std::set<std::string> asked;
  for (const auto& [id, q] : questions("WikiQA-subjects-train.tsv")) {
    ++times_asked[q.second];
    asked.insert(q.first);
  }
  std::set<std::string> subjects;
  for (const auto& [id, q] : questions("WikiQA-subjects-dev.tsv")) {
    subjects.insert(q.second);
    EXPECT_GE(times_asked[q.second], 3) << id << " on " << q.second;
    EXPECT_EQ(asked.count(q.first), 0u) << id << ": '" << q.first << "' is a training question";
  }
  EXPECT_EQ(subjects.size(), 100u);
  std::set<std::string> answers;
  for (const Example& e : read_all(kSample + "WikiQA-subjects-dev.tsv", Format::wikiqa, OnError::fail).examples)
    answers.insert(e.fields[1]);
  EXPECT_EQ(answers.size(), 100u);
}

// ---- Task-stream files ---------------------------------------------------------------------

namespace {

// Random ragged examples of a task: field lengths 1..max_len, ids below 1000.
struct Synthetic {
  std::vector<std::vector<std::vector<int32_t>>> examples;  // example -> field -> ids
  std::vector<int8_t> labels;
};

Synthetic synthetic(Task task, int64_t n, int max_len, uint32_t seed) {
  std::mt19937 rng(seed);
  Synthetic s;
  for (int64_t i = 0; i < n; ++i) {
    std::vector<std::vector<int32_t>> fields;
    for (size_t f = 0; f < task_fields(task).size(); ++f) {
      std::vector<int32_t> ids(1 + rng() % max_len);
      for (int32_t& id : ids) id = static_cast<int32_t>(rng() % 1000);
      fields.push_back(std::move(ids));
    }
    s.examples.push_back(std::move(fields));
    s.labels.push_back(static_cast<int8_t>(static_cast<int>(rng() % 3) - 1));
  }
  return s;
}

void write_stream(const std::string& path, Task task, const Synthetic& s,
                  const std::string& hash = "test-hash", WriterOptions options = {}) {
  TaskStreamWriter w(path, task, options);
  for (size_t i = 0; i < s.examples.size(); ++i) w.append(s.examples[i], s.labels[i]);
  StreamInfo info;
  info.tokenizer_hash = hash;
  info.max_length = 512;
  info.created_by = "test_data";
  SourceInfo src;
  src.path = "synthetic";
  src.format = "text";
  src.lines = static_cast<int64_t>(s.examples.size()) + 3;
  src.examples = static_cast<int64_t>(s.examples.size());
  src.skipped = {{"blank line", 2}, {"malformed: missing column", 1}};
  info.sources = {src};
  w.finish(info);
  w.publish();
}

}  // namespace

TEST(Shards, RoundTripWithHyperslabReads) {
  TempDir dir("shards_round_trip");
  const Task task = Task::consistency;
  const Synthetic s = synthetic(task, 1000, 40, 1);
  WriterOptions small_chunks;  // many chunks and partial ones: exercises the buffering
  small_chunks.chunk_tokens = 97;
  small_chunks.chunk_examples = 13;
  write_stream(dir / "cs.h5", task, s, "test-hash", small_chunks);
  EXPECT_EQ(dir.entries(), (std::vector<std::string>{"cs.h5"}));

  const TaskStreamFile file(dir / "cs.h5");
  EXPECT_EQ(file.task(), task);
  EXPECT_EQ(file.examples(), 1000);
  EXPECT_EQ(file.info().tokenizer_hash, "test-hash");
  EXPECT_EQ(file.info().created_by, "test_data");
  ASSERT_EQ(file.info().sources.size(), 1u);
  EXPECT_EQ(file.info().sources[0].lines, 1003);
  EXPECT_EQ(file.info().sources[0].skipped.at("malformed: missing column"), 1);
  for (const auto& [begin, end] : std::vector<std::pair<int64_t, int64_t>>{{0, 1000}, {0, 1}, {517, 518}, {123, 789}, {999, 1000}, {400, 400}}) {
    for (int f = 0; f < 2; ++f) {
      const Ragged r = file.read_field(f, begin, end);
      ASSERT_EQ(r.count(), end - begin);
      for (int64_t i = begin; i < end; ++i) {
        const std::vector<int32_t> got(r.begin(i - begin), r.begin(i - begin) + r.length(i - begin));
        ASSERT_EQ(got, s.examples[i][f]) << "example " << i << " field " << f;
      }
    }
    const std::vector<int8_t> labels = file.read_labels(begin, end);
    EXPECT_TRUE(std::equal(labels.begin(), labels.end(), s.labels.begin() + begin));
  }
  EXPECT_THROW(file.read_field(0, 10, 1001), Error);
}

// The stored bytes of every chunk of every chunked dataset of an HDF5 file, by dataset path.
std::map<std::string, std::vector<std::vector<unsigned char>>> stored_chunks(const std::string& path) {
  const H5Id file(H5Fopen(path.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT), H5Fclose);
  std::vector<std::string> names;
  auto visit = [](hid_t, const char* name, const H5L_info_t*, void* out) -> herr_t {
    static_cast<std::vector<std::string>*>(out)->emplace_back(name);
    return 0;
  };
  EXPECT_GE(H5Lvisit(file.get(), H5_INDEX_NAME, H5_ITER_INC, visit, &names), 0);
  std::map<std::string, std::vector<std::vector<unsigned char>>> chunks;
  for (const std::string& name : names) {
    // H5Iget_type, not H5Oget_info_by_name, whose signature differs between HDF5 1.10 and 1.12.
    const H5Id dset(H5Oopen(file.get(), name.c_str(), H5P_DEFAULT), H5Oclose);
    if (H5Iget_type(dset.get()) != H5I_DATASET) continue;
    const H5Id space(H5Dget_space(dset.get()), H5Sclose);
    hsize_t count = 0;
    if (H5Dget_num_chunks(dset.get(), space.get(), &count) < 0) continue;  // not chunked
    for (hsize_t i = 0; i < count; ++i) {
      hsize_t offset = 0, size = 0;
      haddr_t address = 0;
      unsigned mask = 0;
      EXPECT_GE(H5Dget_chunk_info(dset.get(), space.get(), i, &offset, &mask, &address, &size), 0);
      EXPECT_EQ(mask, 0u) << name << ": a filter was skipped";
      std::vector<unsigned char> bytes(size);
      uint32_t read_mask = 0;
      EXPECT_GE(H5Dread_chunk(dset.get(), H5P_DEFAULT, &offset, &read_mask, bytes.data()), 0);
      chunks[name].push_back(std::move(bytes));
    }
  }
  return chunks;
}

// The chunks HDF5's own filter pipeline stores for `count` values of `type` (native and
// little-endian: the file's type too) in a dataset of `chunk`-element chunks, compressed at
// `level` (0: unfiltered), written at once.
std::vector<std::vector<unsigned char>> hdf5_own_chunks(const std::string& path, hid_t type, const void* values,
                                                        hsize_t count, hsize_t chunk, int level) {
  {
    const hsize_t unlimited = H5S_UNLIMITED;
    const H5Id file(H5Fcreate(path.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT), H5Fclose);
    const H5Id space(H5Screate_simple(1, &count, &unlimited), H5Sclose);
    const H5Id dcpl(H5Pcreate(H5P_DATASET_CREATE), H5Pclose);
    EXPECT_GE(H5Pset_chunk(dcpl.get(), 1, &chunk), 0);
    // The tail of the last chunk: zeros, which HDF5 otherwise leaves as its buffer held them.
    EXPECT_GE(H5Pset_fill_time(dcpl.get(), H5D_FILL_TIME_ALLOC), 0);
    if (level > 0) {
      EXPECT_GE(H5Pset_shuffle(dcpl.get()), 0);
      EXPECT_GE(H5Pset_deflate(dcpl.get(), static_cast<unsigned>(level)), 0);
    }
    const H5Id dset(H5Dcreate2(file.get(), "d", type, space.get(), H5P_DEFAULT, dcpl.get(), H5P_DEFAULT), H5Dclose);
    EXPECT_GE(H5Dwrite(dset.get(), type, H5S_ALL, H5S_ALL, H5P_DEFAULT, values), 0);
  }
  return stored_chunks(path).at("d");
}

// qarac-prep compresses chunks on its threads (data/chunk_compressor.h): what it stores must be
// what HDF5's shuffle and deflate filters store, byte for byte, at every level and element size.
TEST(Shards, ChunksAreFilteredAsHdf5FiltersThem) {
  TempDir dir("chunk_filters");
  std::mt19937 rng(5);
  for (const auto& [type, size] : std::vector<std::pair<hid_t, size_t>>{
           {H5T_NATIVE_INT8, 1}, {H5T_NATIVE_INT32, 4}, {H5T_NATIVE_INT64, 8}})
    for (int level : {0, 1, 4, 9}) {
      const hsize_t n = 3001;
      std::vector<unsigned char> raw(n * size);
      for (size_t i = 0; i < n; ++i) raw[i * size] = static_cast<unsigned char>(rng() % 50);  // small ids
      const std::string path = dir / ("f" + std::to_string(size) + "_" + std::to_string(level) + ".h5");
      const auto stored = hdf5_own_chunks(path, type, raw.data(), n, n, level);
      ASSERT_EQ(stored.size(), 1u);
      EXPECT_EQ(filter_chunk(raw, size, level), stored[0]) << size << "-byte elements, level " << level;
    }
}

// The stream's chunks (and so its content) do not depend on the threads that compressed them,
// compressed or stored as they are (level 0), and are those HDF5 would have stored, the last,
// partial one included.
TEST(Shards, ChunksDoNotDependOnTheThreads) {
  TempDir dir("chunk_threads");
  const Synthetic s = synthetic(Task::consistency, 3000, 40, 7);
  WriterOptions options;
  options.chunk_tokens = 97;  // many chunks, the last ones partial
  options.chunk_examples = 13;
  std::map<std::string, std::vector<std::vector<unsigned char>>> one;
  for (const auto& [level, threads] : std::vector<std::pair<int, int>>{{4, 1}, {4, 3}, {0, 1}, {0, 3}}) {
    options.compression = level;
    options.threads = threads;
    const std::string path = dir / ("cs" + std::to_string(level) + "_" + std::to_string(threads) + ".h5");
    write_stream(path, Task::consistency, s, "test-hash", options);
    const auto chunks = stored_chunks(path);
    std::vector<int32_t> tokens;
    for (const auto& example : s.examples) tokens.insert(tokens.end(), example[0].begin(), example[0].end());
    ASSERT_NE(tokens.size() % 97, 0u);
    EXPECT_EQ(chunks.at("fields/statement0/tokens"), hdf5_own_chunks(dir / "hdf5.h5", H5T_NATIVE_INT32, tokens.data(), tokens.size(), 97, level))
        << "level " << level;
    if (threads == 1) one = chunks;
    EXPECT_EQ(chunks, one) << "level " << level << ", " << threads << " threads";
    const TaskStreamFile file(path);
    const Ragged r = file.read_field(1, 0, 3000);
    for (int64_t i = 0; i < 3000; i += 299)
      EXPECT_EQ(std::vector<int32_t>(r.begin(i), r.begin(i) + r.length(i)), s.examples[static_cast<size_t>(i)][1]);
  }
}

TEST(Shards, UnpublishedStreamsLeaveNothing) {
  TempDir dir("shards_unpublished");
  const Synthetic s = synthetic(Task::encode_decode, 50, 10, 2);
  {
    TaskStreamWriter w(dir / "ed.h5", Task::encode_decode);
    for (const auto& ex : s.examples) w.append(ex);
    EXPECT_EQ(dir.entries().size(), 1u);  // the temporary file, under another name
    EXPECT_FALSE(fs::exists(dir / "ed.h5"));
  }  // as when reading or tokenising throws midway
  EXPECT_TRUE(dir.entries().empty());
  {
    TaskStreamWriter w(dir / "ed.h5", Task::encode_decode);
    for (const auto& ex : s.examples) w.append(ex);
    w.finish(StreamInfo{});
  }  // finished but never published: another task of the same run failed
  EXPECT_TRUE(dir.entries().empty());
}

TEST(Shards, RejectsFilesThatAreNotTaskStreams) {
  TempDir dir("shards_reject");
  auto message = [](const std::string& path) -> std::string {
    try {
      TaskStreamFile f(path);
    } catch (const InputError& e) {
      return e.what();
    }
    return "";
  };
  EXPECT_NE(message(dir / "missing.h5").find("missing.h5: cannot open"), std::string::npos);
  std::ofstream(dir / "text.h5") << "not hdf5\n";
  EXPECT_NE(message(dir / "text.h5").find("text.h5: not an HDF5 file"), std::string::npos);
  const hid_t f = H5Fcreate((dir / "bare.h5").c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
  ASSERT_GE(f, 0);
  H5Fclose(f);
  EXPECT_NE(message(dir / "bare.h5").find("bare.h5: not a valid task stream: no attribute 'format'"),
            std::string::npos) << message(dir / "bare.h5");
}

namespace {

// Random candidate sentences per example: none for the first `without`, then 0..3 each.
std::vector<std::vector<std::vector<int32_t>>> synthetic_candidates(int64_t n, int64_t without, uint32_t seed) {
  std::mt19937 rng(seed);
  std::vector<std::vector<std::vector<int32_t>>> out(static_cast<size_t>(n));
  for (int64_t i = without; i < n; ++i)
    for (int k = static_cast<int>(rng() % 4); k > 0; --k) {
      std::vector<int32_t> ids(1 + rng() % 12);
      for (int32_t& id : ids) id = static_cast<int32_t>(rng() % 1000);
      out[i].push_back(std::move(ids));
    }
  return out;
}

void write_qa_stream(const std::string& path, const Synthetic& s,
                     const std::vector<std::vector<std::vector<int32_t>>>& candidates, WriterOptions options = {}) {
  TaskStreamWriter w(path, Task::question_answering, options);
  for (size_t i = 0; i < s.examples.size(); ++i) w.append(s.examples[i], 0, candidates[i]);
  StreamInfo info;
  SourceInfo src;
  src.path = "synthetic";
  src.format = "wikiqa";
  src.candidates = 7;
  info.sources = {src};
  w.finish(info);
  w.publish();
}

// Overwrites one element of an int64 dataset of a published stream, as a damaged file would hold.
void poke(const std::string& path, const char* dataset, int64_t index, int64_t value) {
  const hid_t file = H5Fopen(path.c_str(), H5F_ACC_RDWR, H5P_DEFAULT);
  ASSERT_GE(file, 0);
  const hid_t dset = H5Dopen2(file, dataset, H5P_DEFAULT);
  ASSERT_GE(dset, 0);
  const hid_t space = H5Dget_space(dset);
  const hsize_t start = static_cast<hsize_t>(index), one = 1;
  H5Sselect_hyperslab(space, H5S_SELECT_SET, &start, nullptr, &one, nullptr);
  const hid_t mem = H5Screate_simple(1, &one, nullptr);
  EXPECT_GE(H5Dwrite(dset, H5T_NATIVE_INT64, mem, space, H5P_DEFAULT, &value), 0);
  H5Sclose(mem);
  H5Sclose(space);
  H5Dclose(dset);
  H5Fclose(file);
  seal_hdf5_file(path);  // sealed again, so that the checks below the seal are what read it
}

std::string open_message(const std::string& path) {
  try {
    TaskStreamFile f(path);
  } catch (const InputError& e) {
    return e.what();
  }
  return "";
}

}  // namespace

// Candidates round trip through small chunks; the examples before the first with candidates
// (more than two chunks of them) read back with none.
TEST(Shards, CandidatesRoundTrip) {
  TempDir dir("shards_candidates");
  const int64_t n = 300;
  const Synthetic s = synthetic(Task::question_answering, n, 20, 5);
  const auto candidates = synthetic_candidates(n, 30, 6);
  WriterOptions small_chunks;
  small_chunks.chunk_tokens = 97;
  small_chunks.chunk_examples = 13;
  write_qa_stream(dir / "qa.h5", s, candidates, small_chunks);

  const TaskStreamFile file(dir / "qa.h5");
  ASSERT_TRUE(file.has_candidates());
  int64_t sentences = 0, tokens = 0;
  for (const auto& c : candidates)
    for (const auto& sentence : c) ++sentences, tokens += static_cast<int64_t>(sentence.size());
  EXPECT_EQ(file.info().candidates, sentences);
  EXPECT_EQ(file.info().candidate_tokens, tokens);
  EXPECT_EQ(file.info().sources.at(0).candidates, 7);
  for (const auto& [begin, end] : std::vector<std::pair<int64_t, int64_t>>{{0, n}, {0, 31}, {29, 31}, {150, 151}, {n, n}}) {
    const Candidates c = file.read_candidates(begin, end);
    ASSERT_EQ(c.count(), end - begin);
    for (int64_t i = begin; i < end; ++i) {
      std::vector<std::vector<int32_t>> got;
      for (int64_t j = c.offsets[i - begin]; j < c.offsets[i - begin + 1]; ++j)
        got.emplace_back(c.sentences.begin(j), c.sentences.begin(j) + c.sentences.length(j));
      ASSERT_EQ(got, candidates[i]) << "example " << i;
    }
  }
  EXPECT_THROW(file.read_candidates(0, n + 1), Error);
  // The fields are as they would be without candidates.
  const Ragged answers = file.read_field(1, 0, n);
  EXPECT_EQ(std::vector<int32_t>(answers.begin(n - 1), answers.begin(n - 1) + answers.length(n - 1)), s.examples[n - 1][1]);
}

// Streams without candidates hold no candidate group; files from before the candidates (no
// sources/candidates either) still open; only question_answering examples take candidates.
TEST(Shards, CandidatesAreOptional) {
  TempDir dir("shards_no_candidates");
  const Synthetic s = synthetic(Task::question_answering, 20, 10, 7);
  write_qa_stream(dir / "qa.h5", s, synthetic_candidates(20, 20, 8));
  {
    const TaskStreamFile file(dir / "qa.h5");
    EXPECT_FALSE(file.has_candidates());
    EXPECT_EQ(file.info().candidates, 0);
    EXPECT_THROW(file.read_candidates(0, 1), Error);
  }
  const hid_t f = H5Fopen((dir / "qa.h5").c_str(), H5F_ACC_RDWR, H5P_DEFAULT);
  ASSERT_GE(f, 0);
  EXPECT_GE(H5Ldelete(f, "sources/candidates", H5P_DEFAULT), 0);
  H5Fclose(f);
  seal_hdf5_file(dir / "qa.h5");
  const TaskStreamFile old(dir / "qa.h5");
  EXPECT_EQ(old.info().sources.at(0).candidates, 0);
  EXPECT_EQ(old.read_field(0, 0, 20).count(), 20);

  TaskStreamWriter cs(dir / "cs.h5", Task::consistency);
  EXPECT_THROW(cs.append({{1}, {2}}, 1, {{3}}), Error);
}

// Candidate offsets that do not match what they index: the ends are refused on opening, an
// offset in between on the read that meets it, naming the dataset.
TEST(Shards, RejectsMalformedCandidateOffsets) {
  TempDir dir("shards_bad_candidates");
  const int64_t n = 40;
  const Synthetic s = synthetic(Task::question_answering, n, 10, 9);
  auto candidates = synthetic_candidates(n, 0, 10);
  candidates[20] = {{5, 6}, {7}};  // example 20 has two sentences, so its offsets can decrease
  auto fresh = [&](const std::string& name) {
    write_qa_stream(dir / name, s, candidates);
    return dir / name;
  };
  const std::string example_decreases = fresh("a.h5");
  const int64_t at = TaskStreamFile(example_decreases).read_candidates(0, 21).offsets[20];
  poke(example_decreases, "candidates/example_offsets", 21, at - 1);
  const TaskStreamFile a(example_decreases);  // the ends are right
  EXPECT_NO_THROW(a.read_candidates(0, 19));
  try {
    a.read_candidates(10, 30);
    ADD_FAILURE() << "decreasing example offsets were read";
  } catch (const InputError& e) {
    EXPECT_NE(std::string(e.what()).find("'candidates/example_offsets' decreases or overruns the sentences at example 21"),
              std::string::npos) << e.what();
  }

  const std::string sentence_overruns = fresh("b.h5");
  int64_t first = 0, tokens = 0;
  {
    const TaskStreamFile before(sentence_overruns);  // closed before the file is written
    first = before.read_candidates(0, 21).offsets[20];
    tokens = before.info().candidate_tokens;
  }
  poke(sentence_overruns, "candidates/offsets", first + 1, tokens + 5);
  try {
    TaskStreamFile(sentence_overruns).read_candidates(20, 21);
    ADD_FAILURE() << "overrunning sentence offsets were read";
  } catch (const InputError& e) {
    EXPECT_NE(std::string(e.what()).find("'candidates/offsets' decreases or overruns the tokens at sentence " +
                                         std::to_string(first + 1)),
              std::string::npos) << e.what();
  }

  const std::string wrong_end = fresh("c.h5");
  poke(wrong_end, "candidates/example_offsets", n, 3);
  EXPECT_NE(open_message(wrong_end).find("'candidates/example_offsets' spans [0, 3], the sentences [0, "),
            std::string::npos) << open_message(wrong_end);
}

// ---- Loader --------------------------------------------------------------------------------

namespace {

RankPlan plan_for(std::vector<TaskSlot> slots, int world = 1, int rank = 0) {
  RankPlan p;
  p.world_size = world;
  p.rank = rank;
  p.tasks = std::move(slots);
  return p;
}

std::vector<int32_t> field_ids(const PackedField& f, int64_t b) {
  return std::vector<int32_t>(f.tokens.begin() + f.starts[b], f.tokens.begin() + f.starts[b + 1]);
}

// The batches of `steps` steps, as comparable values: per task the example ids of the batch.
std::vector<std::vector<std::vector<uint64_t>>> run_steps(Loader& loader, int steps) {
  std::vector<std::vector<std::vector<uint64_t>>> out;
  for (int i = 0; i < steps; ++i) {
    std::vector<std::vector<uint64_t>> step;
    for (const TaskBatch& b : loader.next().tasks) step.push_back(b.ids);
    out.push_back(std::move(step));
  }
  return out;
}

}  // namespace

// Every world size sees the same global batches: the parts of the W ranks are disjoint, together
// they are W = 1's batch, each in batch order; every example is the one its identity names (the
// epoch's order at its position), with the tokens the file holds; the token loads of the ranks
// differ by at most one example's tokens (the greedy division's bound).
TEST(Loader, GlobalBatchesAreTheSameForEveryWorldSize) {
  TempDir dir("loader_global");
  const int64_t n = 103;
  const Synthetic s = synthetic(Task::reasoning, n, 12, 3);
  write_stream(dir / "reasoning.h5", Task::reasoning, s);
  LoaderOptions opt;
  opt.data_dir = dir.str();
  opt.global_batch = 10;
  opt.seed = 5;
  const int steps = 25;  // past two epoch boundaries
  Loader one(plan_for({{Task::reasoning, 0, 1}}), opt);
  const auto reference = run_steps(one, steps);
  for (int world = 2; world <= 12; world += world < 5 ? 1 : 7) {  // 2..5 and 12 (more ranks than examples)
    std::vector<std::unique_ptr<Loader>> ranks;
    for (int rank = 0; rank < world; ++rank)
      ranks.push_back(std::make_unique<Loader>(plan_for({{Task::reasoning, rank, world}}, world, rank), opt));
    for (int step = 0; step < steps; ++step) {
      std::vector<uint64_t> all;
      int64_t most = 0, least = INT64_MAX, longest = 0;
      for (int rank = 0; rank < world; ++rank) {
        const TaskBatch b = ranks[rank]->next().tasks.at(0);
        EXPECT_EQ(b.global_count, 10);
        EXPECT_TRUE(std::is_sorted(b.ids.begin(), b.ids.end())) << "rank " << rank << " step " << step;
        for (int64_t k = 0; k < b.count(); ++k) {
          const ExampleIdentity id = decode_example_id(b.ids[k]);
          EXPECT_EQ(id.task, Task::reasoning);
          EXPECT_EQ(b.examples[k], shuffled_order(n, 5, id.epoch, Task::reasoning)[id.position]);
          for (int f = 0; f < 3; ++f) ASSERT_EQ(field_ids(b.fields[f], k), s.examples[b.examples[k]][f]);
          int64_t tokens = 0;
          for (int f = 0; f < 3; ++f) tokens += b.fields[f].length(k);
          longest = std::max(longest, tokens);
        }
        most = std::max(most, b.tokens());
        least = std::min(least, b.tokens());
        all.insert(all.end(), b.ids.begin(), b.ids.end());
      }
      std::sort(all.begin(), all.end());
      ASSERT_EQ(all, reference[step][0]) << "W=" << world << " step " << step;
      EXPECT_LE(most - least, longest) << "W=" << world << " step " << step;
    }
  }
  // The batches run through the epochs' orders without a gap: 25 steps of 10 examples are the
  // first 250 positions, 103 a epoch.
  int64_t next = 0;
  for (const auto& step : reference)
    for (uint64_t id : step[0]) {
      const ExampleIdentity e = decode_example_id(id);
      EXPECT_EQ(e.epoch * n + e.position, next++);
    }
}

TEST(Loader, EveryStepHasEveryTaskAndShortStreamsRepeat) {
  TempDir dir("loader_tasks");
  const Synthetic text = synthetic(Task::encode_decode, 300, 20, 4);
  const Synthetic pairs = synthetic(Task::consistency, 17, 20, 5);
  write_stream(dir / "encode_decode.h5", Task::encode_decode, text);
  write_stream(dir / "consistency.h5", Task::consistency, pairs);
  LoaderOptions opt;
  opt.data_dir = dir.str();
  opt.global_batch = 5;
  opt.seed = 7;
  Loader loader(plan_for({{Task::encode_decode, 0, 1}, {Task::consistency, 0, 1}}), opt);
  std::map<int64_t, std::multiset<int64_t>> consistency_epochs;
  for (int i = 0; i < 20; ++i) {
    const StepBatch step = loader.next();
    EXPECT_EQ(step.step, i);
    ASSERT_EQ(step.tasks.size(), 2u);
    EXPECT_EQ(step.tasks[0].task, Task::encode_decode);
    EXPECT_EQ(step.tasks[1].task, Task::consistency);
    for (const TaskBatch& b : step.tasks) {
      EXPECT_EQ(b.count(), 5);
      EXPECT_EQ(b.tokens(), b.global_tokens);
    }
    const TaskBatch& cs = step.tasks[1];
    ASSERT_EQ(cs.labels.size(), static_cast<size_t>(cs.count()));
    for (int64_t k = 0; k < cs.count(); ++k) {
      EXPECT_EQ(cs.labels[k], static_cast<float>(pairs.labels[cs.examples[k]]));
      consistency_epochs[decode_example_id(cs.ids[k]).epoch].insert(cs.examples[k]);
    }
  }
  // The short stream went round several times, each epoch a permutation of the stream (a batch
  // crossing an epoch's end takes the rest of it and the start of the next), each in another order.
  ASSERT_GE(consistency_epochs.size(), 5u);
  for (const auto& [epoch, ids] : consistency_epochs) {
    if (epoch + 1 == static_cast<int64_t>(consistency_epochs.size())) break;  // the last may be partial
    std::multiset<int64_t> all;
    for (int64_t i = 0; i < 17; ++i) all.insert(i);
    EXPECT_EQ(ids, all) << "epoch " << epoch;
  }
  EXPECT_NE(shuffled_order(17, 7, 0, Task::consistency), shuffled_order(17, 7, 1, Task::consistency));
}

// The division: examples by decreasing tokens (ties in batch order) each to the least loaded rank
// (ties: the lowest); fewer examples than ranks leaves ranks without one.
TEST(Loader, DivideBatchBalancesTokensDeterministically) {
  // 9 (#1) -> r0, 9 (#2) -> r1, 5 (#0) -> r0 (tie: lowest), 3 (#4) -> r1, 1 (#3) -> r1.
  EXPECT_EQ(divide_batch({5, 9, 9, 1, 3}, 2), (std::vector<int>{0, 0, 1, 1, 1}));
  EXPECT_EQ(divide_batch({4, 2}, 3), (std::vector<int>{0, 1}));
  EXPECT_EQ(divide_batch({}, 4), std::vector<int>{});
  EXPECT_EQ(divide_batch({7, 7, 7}, 1), (std::vector<int>{0, 0, 0}));
  const ExampleIdentity id = decode_example_id(example_id(Task::masked_lm, 2000000, 1099511627775));
  EXPECT_EQ(id.task, Task::masked_lm);
  EXPECT_EQ(id.epoch, 2000000);
  EXPECT_EQ(id.position, 1099511627775);
  EXPECT_NE(example_id(Task::reasoning, 0, 3), example_id(Task::consistency, 0, 3));
  // The rehearsal reads the text stream: its examples are not encode_decode's.
  EXPECT_NE(example_id(Task::masked_lm, 0, 3), example_id(Task::encode_decode, 0, 3));
  // The four QARAC tasks keep the ids of the 2-bit layout (task << 62): their dropout masks too.
  for (int t = 0; t < kQaracTaskCount; ++t)
    EXPECT_EQ(example_id(static_cast<Task>(t), 5, 7), (uint64_t(t) << 62) | (uint64_t{5} << 40) | 7u);
  // A second field's id is no QARAC example's, so never a first field's; the rehearsal's ids
  // (which another application keys) are refused.
  for (int t = 0; t < kQaracTaskCount; ++t) {
    const uint64_t second = second_field_id(example_id(static_cast<Task>(t), 2097151, 1099511627775));
    EXPECT_EQ(second, example_id(static_cast<Task>(t), 2097151, 1099511627775) | (uint64_t{1} << 61));
    EXPECT_GE(static_cast<int>(decode_example_id(second).task), kQaracTaskCount);
  }
  EXPECT_THROW(second_field_id(example_id(Task::masked_lm, 0, 3)), Error);
  for (int t = 0; t < kTaskCount; ++t) {
    const ExampleIdentity e = decode_example_id(example_id(static_cast<Task>(t), 2097151, 3));
    EXPECT_EQ(e.task, static_cast<Task>(t));
    EXPECT_EQ(e.epoch, 2097151);
    EXPECT_EQ(e.position, 3);
  }
  // One past a field's largest value would spill into the field above it (the position into the
  // epoch, the epoch into the task): two examples would share an id and so their dropout masks.
  EXPECT_THROW(example_id(Task::reasoning, 2097152, 0), Error);
  EXPECT_THROW(example_id(Task::reasoning, 0, 1099511627776), Error);
}

// Micro-batches: consecutive, at most the budget each unless one example exceeds it alone, and
// together the batch.
TEST(Loader, MicroBatchesSplitInOrder) {
  TempDir dir("loader_micro");
  write_stream(dir / "question_answering.h5", Task::question_answering,
               synthetic(Task::question_answering, 200, 60, 6));
  LoaderOptions opt;
  opt.data_dir = dir.str();
  opt.global_batch = 40;
  Loader loader(plan_for({{Task::question_answering, 0, 1}}), opt);
  const TaskBatch batch = loader.next().tasks[0];
  EXPECT_EQ(batch.split(0).size(), 1u);
  EXPECT_TRUE(TaskBatch{}.split(50).empty());
  bool saw_alone = false;
  const std::vector<TaskBatch> micro = batch.split(50);  // below some single examples (up to 120 tokens)
  EXPECT_GT(micro.size(), 5u);
  std::vector<int64_t> examples;
  std::vector<uint64_t> ids;
  for (const TaskBatch& m : micro) {
    ASSERT_GT(m.count(), 0);
    EXPECT_EQ(m.global_count, 40);
    if (m.tokens() > 50) {
      EXPECT_EQ(m.count(), 1);
      saw_alone = true;
    }
    for (int64_t k = 0; k < m.count(); ++k)
      for (int f = 0; f < 2; ++f) EXPECT_EQ(m.fields[f].length(k), m.fields[f].starts[k + 1] - m.fields[f].starts[k]);
    examples.insert(examples.end(), m.examples.begin(), m.examples.end());
    ids.insert(ids.end(), m.ids.begin(), m.ids.end());
  }
  EXPECT_TRUE(saw_alone);
  EXPECT_EQ(examples, batch.examples);
  EXPECT_EQ(ids, batch.ids);
  // Consecutive micro-batches could not have taken the next example.
  for (size_t i = 0; i + 1 < micro.size(); ++i) {
    int64_t first = 0;
    for (const PackedField& f : micro[i + 1].fields) first += f.length(0);
    EXPECT_GT(micro[i].tokens() + first, 50) << i;
  }
}

// Parts bounded by tokens, by items, or both: the first limit reached closes a part, and an item
// larger than the token budget makes a part alone.
TEST(Loader, PartsHoldAtMostTheTokensAndItemsGiven) {
  const std::vector<int64_t> tokens = {3, 4, 10, 1, 1, 1, 2};
  using Bounds = std::vector<int64_t>;
  EXPECT_EQ(part_bounds(tokens, 0, 0), (Bounds{0, 7}));
  EXPECT_EQ(part_bounds(tokens, 8, 0), (Bounds{0, 2, 3, 7}));
  EXPECT_EQ(part_bounds(tokens, 0, 3), (Bounds{0, 3, 6, 7}));
  EXPECT_EQ(part_bounds(tokens, 8, 2), (Bounds{0, 2, 3, 5, 7}));
  EXPECT_EQ(part_bounds(tokens, 1, 0), (Bounds{0, 1, 2, 3, 4, 5, 6, 7}));
  EXPECT_TRUE(part_bounds({}, 5, 2).empty());

  // A batch split by examples: slices of it in order, with its global batch.
  TaskBatch batch;
  batch.task = Task::consistency;
  batch.global_count = 5;
  batch.fields.resize(2);
  for (int64_t b = 0; b < 5; ++b) {
    batch.examples.push_back(10 + b);
    batch.labels.push_back(static_cast<float>(b % 3) - 1);
    for (PackedField& f : batch.fields) {
      if (f.starts.empty()) f.starts.push_back(0);
      for (int64_t t = 0; t <= b; ++t) f.tokens.push_back(static_cast<int32_t>(100 * b + t));
      f.starts.push_back(static_cast<int32_t>(f.tokens.size()));
    }
  }
  const std::vector<TaskBatch> parts = batch.split(0, 2);
  ASSERT_EQ(parts.size(), 3u);
  EXPECT_EQ(parts[1].examples, (std::vector<int64_t>{12, 13}));
  EXPECT_EQ(parts[1].labels, (std::vector<float>{1, -1}));
  EXPECT_EQ(parts[1].fields[1].starts, (std::vector<int32_t>{0, 3, 7}));
  EXPECT_EQ(parts[1].fields[1].tokens, (std::vector<int32_t>{200, 201, 202, 300, 301, 302, 303}));
  EXPECT_EQ(parts[2].global_count, 5);
  EXPECT_EQ(batch.split(9, 2).size(), 4u);  // 2+4 | 6 | 8 | 10: the tokens close the later parts
}

TEST(Loader, RestoringACursorResumesTheExactBatchSequence) {
  TempDir dir("loader_cursor");
  write_stream(dir / "encode_decode.h5", Task::encode_decode, synthetic(Task::encode_decode, 211, 30, 7));
  write_stream(dir / "reasoning.h5", Task::reasoning, synthetic(Task::reasoning, 41, 10, 8));
  LoaderOptions opt;
  opt.data_dir = dir.str();
  opt.global_batch = 6;
  opt.seed = 1234;
  const RankPlan plan = plan_for({{Task::reasoning, 1, 2}, {Task::encode_decode, 0, 3}}, 3, 0);
  for (int saved_at : {0, 1, 7, 40}) {  // 40 steps: both streams are past an epoch boundary
    Loader a(plan, opt);
    run_steps(a, saved_at);
    const LoaderCursor cursor = a.cursor();
    EXPECT_EQ(cursor.step, saved_at);
    const auto expected = run_steps(a, 25);

    // A fresh process, with another plan: restore, then continue with the same global batches.
    Loader b(plan_for({{Task::reasoning, 0, 1}, {Task::encode_decode, 0, 1}}), opt);
    b.restore(cursor);
    const auto whole = run_steps(b, 25);
    for (size_t i = 0; i < whole.size(); ++i)
      for (size_t t = 0; t < 2; ++t)
        for (uint64_t id : expected[i][t])
          EXPECT_TRUE(std::binary_search(whole[i][t].begin(), whole[i][t].end(), id)) << "saved at " << saved_at;
    EXPECT_EQ(b.cursor().step, saved_at + 25);
  }
  // A cursor outside the streams (other data) or of other tasks is refused, not misapplied.
  Loader a(plan, opt);
  LoaderCursor other = a.cursor();
  other.tasks[0].position = 42;  // reasoning holds 41
  EXPECT_THROW(a.restore(other), InputError);
  other = a.cursor();
  other.tasks.pop_back();
  EXPECT_THROW(a.restore(other), InputError);
  other = a.cursor();
  other.tasks[1].task = Task::consistency;
  EXPECT_THROW(a.restore(other), InputError);
}

// A global batch past the int32 offsets of a packed batch (2^31 - 1 tokens: 524289 examples of
// 4096 here) is one input error before anything is packed, not offsets that wrap after gigabytes
// were filled. In a child under an address-space limit of 256 MiB above its start, so that a
// loader that packs anyway fails fast with std::bad_alloc instead of taking the machine's memory.
TEST(Loader, AGlobalBatchPastInt32OffsetsIsAnInputError) {
#ifdef __SANITIZE_ADDRESS__
  GTEST_SKIP() << "AddressSanitizer's operator new ends the process instead of throwing std::bad_alloc";
#endif
  TempDir dir("loader_int32");
  Synthetic long_texts;
  for (int i = 0; i < 16; ++i) {
    long_texts.examples.push_back({std::vector<int32_t>(4096, 7 + i)});
    long_texts.labels.push_back(0);
  }
  write_stream(dir / "encode_decode.h5", Task::encode_decode, long_texts);
  LoaderOptions opt;
  opt.data_dir = dir.str();
  opt.global_batch = (int64_t{1} << 31) / 4096 + 1;
  const std::string result = test_support::in_child([&] {
    Loader loader(plan_for({{Task::encode_decode, 0, 1}}), opt);
    loader.next();
    return std::string("no error");
  }, size_t{256} << 20);
  for (const char* part : {"encode_decode.h5: a global batch of 524289 examples holds 2147487744 tokens",
                           "lower the task's batch"})
    EXPECT_NE(result.find(part), std::string::npos) << part << " in: " << result;
}

// The order must not depend on the compiler or library: pinned to values computed once.
TEST(Loader, ShuffleIsAPinnedPermutation) {
  const std::vector<int64_t> order = shuffled_order(10, 42, 3, Task::question_answering);
  EXPECT_EQ(order, (std::vector<int64_t>{7, 4, 2, 6, 5, 9, 0, 3, 1, 8}));
  for (int64_t n : {0, 1, 2, 1000}) {
    std::vector<int64_t> sorted = shuffled_order(n, 5, 0, Task::reasoning);
    std::sort(sorted.begin(), sorted.end());
    std::vector<int64_t> iota(static_cast<size_t>(n));
    std::iota(iota.begin(), iota.end(), 0);
    EXPECT_EQ(sorted, iota);
  }
  EXPECT_EQ(shuffled_order(50, 9, 2, Task::reasoning), shuffled_order(50, 9, 2, Task::reasoning));
  EXPECT_NE(shuffled_order(50, 9, 2, Task::reasoning), shuffled_order(50, 9, 2, Task::consistency));
  EXPECT_NE(shuffled_order(50, 9, 2, Task::reasoning), shuffled_order(50, 10, 2, Task::reasoning));
  // All 64 bits of train.seed key the order: seeds 2^32 apart shuffle differently.
  EXPECT_NE(shuffled_order(50, 9, 2, Task::reasoning), shuffled_order(50, 9 + (uint64_t{1} << 32), 2, Task::reasoning));
}

TEST(Loader, RefusesMismatchedTokenizersAndMissingFiles) {
  TempDir dir("loader_refuse");
  write_stream(dir / "encode_decode.h5", Task::encode_decode, synthetic(Task::encode_decode, 3, 5, 9), "hash-a");
  write_stream(dir / "reasoning.h5", Task::reasoning, synthetic(Task::reasoning, 3, 5, 10), "hash-b");
  LoaderOptions opt;
  opt.data_dir = dir.str();
  EXPECT_THROW(Loader(plan_for({{Task::encode_decode, 0, 1}, {Task::reasoning, 0, 1}}), opt), InputError);
  opt.tokenizer_hash = "hash-b";
  EXPECT_THROW(Loader(plan_for({{Task::encode_decode, 0, 1}}), opt), InputError);
  EXPECT_NO_THROW(Loader(plan_for({{Task::reasoning, 0, 1}}), opt));
  EXPECT_NO_THROW(Loader(plan_for({{Task::reasoning, 0, 4}}), opt));  // 3 examples, 4 ranks: fine
  EXPECT_THROW(Loader(plan_for({{Task::consistency, 0, 1}}), opt), InputError);  // no file
}

// ---- qarac-prep end to end ----------------------------------------------------------------

namespace {

struct Process {
  int status;
  std::string output;  // stdout and stderr
};

Process run_command(const std::string& command) {
  Process r;
  std::FILE* p = ::popen((command + " 2>&1").c_str(), "r");
  if (!p) return {-1, "popen failed"};
  char buf[4096];
  size_t n;
  while ((n = std::fread(buf, 1, sizeof buf, p)) > 0) r.output.append(buf, n);
  const int status = ::pclose(p);
  r.status = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return r;
}

const std::string kPrep = QARAC_PREP_EXE;

}  // namespace

TEST(Prep, SampleDataEndToEnd) {
  TempDir out("prep_sample");
  const Process r = run_command(kPrep + " --tokenizer " + kSample + "tokenizer --out " + out.str() +
                    " --text " + kSample + "corpus_train.txt --wikiqa " + kSample + "WikiQA-train.tsv" +
                    " --avicenna " + kSample + "Avicenna_Train.csv --snli " + kSample + "snli_1.0_train.jsonl" +
                    " --snli " + kSample + "snli_1.0_dev.txt --snli " + kSample + "snli_1.0_test.csv --threads 2");
  ASSERT_EQ(r.status, 0) << r.output;
  EXPECT_EQ(out.entries(), (std::vector<std::string>{"consistency.h5", "encode_decode.h5",
                                                     "question_answering.h5", "reasoning.h5"}));
  const Tokenizer tok = Tokenizer::from_dir(kSample + "tokenizer");

  // Each stream's first example is the tokenised first record of its first file.
  struct Case {
    const char* file;
    Format format;
  };
  const Case cases[] = {{"corpus_train.txt", Format::text},
                        {"WikiQA-train.tsv", Format::wikiqa},
                        {"Avicenna_Train.csv", Format::avicenna},
                        {"snli_1.0_train.jsonl", Format::snli_jsonl}};
  for (const Case& c : cases) {
    const Task task = task_of(c.format);
    const TaskStreamFile file(out / (std::string(task_name(task)) + ".h5"));
    EXPECT_EQ(file.info().tokenizer_hash, tok.hash());
    EXPECT_TRUE(file.info().special_tokens);
    const Read raw = read_all(kSample + c.file, c.format, OnError::fail);
    ASSERT_FALSE(raw.examples.empty());
    const SourceInfo& src = file.info().sources.at(0);
    EXPECT_EQ(src.path, kSample + c.file);
    EXPECT_EQ(src.lines, raw.stats.lines);
    EXPECT_EQ(src.examples, raw.stats.examples);
    EXPECT_EQ(src.candidates, raw.stats.candidates);
    EXPECT_EQ(src.skipped, raw.stats.skipped);
    for (size_t f = 0; f < task_fields(task).size(); ++f) {
      const Ragged r0 = file.read_field(static_cast<int>(f), 0, 1);
      EXPECT_EQ(std::vector<int32_t>(r0.tokens.begin(), r0.tokens.end()), tok.encode(raw.examples[0].fields[f]))
          << c.file << " field " << f;
    }
    // WikiQA's Label 0 sentences are the candidates of their question's examples.
    EXPECT_EQ(file.has_candidates(), task == Task::question_answering) << c.file;
    if (file.has_candidates()) {
      const Candidates all = file.read_candidates(0, file.examples());
      ASSERT_EQ(all.count(), raw.stats.examples);
      int64_t sentences = 0;
      for (int64_t i = 0; i < all.count(); ++i) {
        ASSERT_EQ(all.size(i), static_cast<int64_t>(raw.examples[i].candidates.size())) << "example " << i;
        for (int64_t j = 0; j < all.size(i); ++j, ++sentences) {
          const int64_t k = all.offsets[i] + j;
          EXPECT_EQ(std::vector<int32_t>(all.sentences.begin(k), all.sentences.begin(k) + all.sentences.length(k)),
                    tok.encode(raw.examples[i].candidates[j])) << "example " << i << " candidate " << j;
        }
      }
      EXPECT_EQ(file.info().candidates, sentences);
    }
    if (task == Task::consistency) {
      EXPECT_EQ(file.info().sources.size(), 3u);
      EXPECT_EQ(file.read_labels(0, 1)[0], raw.examples[0].label);
    }
  }
  // The loader takes what prep wrote, with the tokenizer's hash checked (and the candidates left).
  LoaderOptions opt;
  opt.data_dir = out.str();
  opt.tokenizer_hash = tok.hash();
  Loader loader(RankPlan::single(), opt);
  EXPECT_EQ(loader.next().tasks.size(), 4u);
  EXPECT_EQ(loader.info(3).task, Task::consistency);
  EXPECT_EQ(loader.stream_size(3), loader.info(3).examples);
}

// Fewer threads than --threads asks for (ulimit -u, a container's pids limit): the threads that
// start do the work, the compressor says so, and the streams are those of one thread. Before, a
// thread that could not start ended qarac-prep (std::terminate), its temporary files left.
// RLIMIT_NPROC binds no root process: the run is another user's, through setpriv.
TEST(Prep, OutOfThreadsGoesOnWithFewer) {
  if (::geteuid() != 0 || ::system("setpriv --version > /dev/null 2>&1") != 0)
    GTEST_SKIP() << "needs root and setpriv, to run qarac-prep as another user under a process limit";
  // That user must reach the program and the sample: a checkout in root's home, 0700 on Debian
  // (a fresh machine's, tests/launch/fresh-debian.sh), is closed to it.
  if (::system(("setpriv --reuid=65534 --regid=65534 --clear-groups bash -c '" + kPrep + " --version && test -r " +
                kSample + "snli_1.0_train.jsonl' > /dev/null 2>&1")
                   .c_str()) != 0)
    GTEST_SKIP() << "the user 65534 (nobody) cannot run " << kPrep << " or read " << kSample
                 << ": a directory above them is closed to other users";
  TempDir out("prep_threads");
  fs::permissions(out.str(), fs::perms::all);
  const std::string inputs = " --tokenizer " + kSample + "tokenizer --text " + kSample + "corpus_train.txt --snli " +
                             kSample + "snli_1.0_train.jsonl";
  const Process limited =
      run_command("setpriv --reuid=65534 --regid=65534 --clear-groups bash -c 'ulimit -u 6 && exec " + kPrep +
                  inputs + " --out " + (out / "limited") + " --threads 32'");
  ASSERT_EQ(limited.status, 0) << limited.output;
  EXPECT_NE(limited.output.find(" of 32 threads (Resource temporarily unavailable)"), std::string::npos)
      << limited.output;
  const Process one = run_command(kPrep + inputs + " --out " + (out / "one") + " --threads 1");
  ASSERT_EQ(one.status, 0) << one.output;
  for (const char* stream : {"encode_decode.h5", "consistency.h5"}) {
    const TaskStreamFile a(out / ("limited/" + std::string(stream))), b(out / ("one/" + std::string(stream)));
    EXPECT_EQ(a.info().checksum, b.info().checksum) << stream;
  }
}

// A rerun on the same inputs, a second later and on other threads, writes the same bytes, so that
// a checksum of the files (a pipeline's cache, a data manifest) tells whether the data changed.
// Before, HDF5 stamped every group and dataset with the second it was made.
TEST(Prep, RerunWritesTheSameBytes) {
  TempDir out("prep_rerun");
  const std::string inputs = " --tokenizer " + kSample + "tokenizer --text " + kSample + "corpus_heldout.txt --snli " +
                             kSample + "snli_1.0_dev.txt --chunk-tokens 512";
  const Process first = run_command(kPrep + inputs + " --out " + (out / "first") + " --threads 1");
  ASSERT_EQ(first.status, 0) << first.output;
  std::this_thread::sleep_for(std::chrono::milliseconds(1100));  // HDF5's times count seconds
  const Process second = run_command(kPrep + inputs + " --out " + (out / "second") + " --threads 3");
  ASSERT_EQ(second.status, 0) << second.output;
  for (const char* stream : {"encode_decode.h5", "consistency.h5"}) {
    const std::string a = test_support::read_text(out / ("first/" + std::string(stream)));
    ASSERT_FALSE(a.empty()) << stream;
    EXPECT_TRUE(a == test_support::read_text(out / ("second/" + std::string(stream)))) << stream << " differs";
  }
}

TEST(Prep, MalformedInputFailsWithFileAndLineAndWritesNothing) {
  TempDir out("prep_malformed");
  const std::string base = kPrep + " --tokenizer " + kSample + "tokenizer --out " + out.str() +
                           " --text " + kSample + "corpus_heldout.txt --avicenna " + kFixtures +
                           "avicenna_quirks.csv";
  const Process fail = run_command(base);
  EXPECT_EQ(fail.status, 2) << fail.output;
  EXPECT_NE(fail.output.find("avicenna_quirks.csv:5: missing column"), std::string::npos) << fail.output;
  EXPECT_TRUE(out.entries().empty());  // not even the text stream, which was complete

  const Process skip = run_command(base + " --on-error=skip");
  ASSERT_EQ(skip.status, 0) << skip.output;
  const TaskStreamFile file(out / "reasoning.h5");
  EXPECT_EQ(file.examples(), 2);
  const auto& skipped_by = file.info().sources.at(0).skipped;
  EXPECT_EQ(skipped_by.at("malformed: unterminated quote"), 1);
  EXPECT_EQ(skipped_by.at("no syllogistic relation"), 1);
  EXPECT_EQ(out.entries(), (std::vector<std::string>{"encode_decode.h5", "reasoning.h5"}));

  const Process bad_option = run_command(kPrep + " --tokenizer x --out y --text z --on-error=ignore");
  EXPECT_EQ(bad_option.status, 2);
  EXPECT_NE(bad_option.output.find("--on-error must be fail or skip"), std::string::npos) << bad_option.output;
}

// --encoding reaches every input: by default a UTF-8 Avicenna file is read as Latin-1 (é as Ã©)
// with a warning on screen naming the file and line; --encoding utf-8 reads it right, silently.
TEST(Prep, EncodingOption) {
  TempDir in("prep_encoding_in"), out("prep_encoding_out");
  const std::string file = avicenna_file(in, kCafeUtf8 + ",All workers are people.,yes,All caf\xC3\xA9 owners are people.\r\n");
  const std::string base = kPrep + " --tokenizer " + kSample + "tokenizer --out " + out.str() + " --avicenna " + file;
  const Tokenizer tok = Tokenizer::from_dir(kSample + "tokenizer");
  auto first_premise = [&] {
    const Ragged r = TaskStreamFile(out / "reasoning.h5").read_field(0, 0, 1);
    return std::vector<int32_t>(r.tokens.begin(), r.tokens.end());
  };

  const Process garbled = run_command(base);
  ASSERT_EQ(garbled.status, 0) << garbled.output;
  EXPECT_NE(garbled.output.find(file + ": read as Latin-1, but every line with non-ASCII bytes is valid UTF-8 "
                                       "(the first: line 2): if the file is UTF-8"),
            std::string::npos) << garbled.output;
  EXPECT_NE(garbled.output.find("pass --encoding utf-8"), std::string::npos) << garbled.output;
  EXPECT_EQ(first_premise(), tok.encode("All caf\xC3\x83\xC2\xA9 owners are workers."));

  const Process right = run_command(base + " --encoding utf-8");
  ASSERT_EQ(right.status, 0) << right.output;
  EXPECT_EQ(right.output.find("read as Latin-1"), std::string::npos) << right.output;
  EXPECT_EQ(first_premise(), tok.encode(kCafeUtf8));

  const Process bad = run_command(base + " --encoding cp1252");
  EXPECT_EQ(bad.status, 2);
  EXPECT_NE(bad.output.find("--encoding must be latin-1 or utf-8, got 'cp1252'"), std::string::npos) << bad.output;
}

TEST(Prep, MaxLengthTruncatesKeepingEosOrSkips) {
  TempDir out("prep_max_length");
  const std::string base = kPrep + " --tokenizer " + kSample + "tokenizer --out " + out.str() +
                           " --text " + kSample + "corpus_heldout.txt --max-length 12";
  const Process cut = run_command(base);
  ASSERT_EQ(cut.status, 0) << cut.output;
  const Tokenizer tok = Tokenizer::from_dir(kSample + "tokenizer");
  {
    const TaskStreamFile file(out / "encode_decode.h5");
    EXPECT_EQ(file.examples(), 300);
    EXPECT_EQ(file.info().max_length, 12);
    EXPECT_GT(file.info().sources[0].truncated, 0);
    const Ragged r = file.read_field(0, 0, file.examples());
    for (int64_t i = 0; i < r.count(); ++i) {
      ASSERT_LE(r.length(i), 12);
      EXPECT_EQ(r.begin(i)[0], tok.bos_id());
      EXPECT_EQ(r.begin(i)[r.length(i) - 1], tok.eos_id());
    }
  }
  const Process skip = run_command(base + " --too-long skip");
  ASSERT_EQ(skip.status, 0) << skip.output;
  const TaskStreamFile file(out / "encode_decode.h5");
  const SourceInfo& src = file.info().sources[0];
  EXPECT_EQ(src.truncated, 0);
  EXPECT_GT(src.skipped.at("longer than --max-length"), 0);
  EXPECT_EQ(file.examples() + src.skipped.at("longer than --max-length"), 300);
}

// Candidates are held to --max-length as the fields are: cut keeping </s>, or their example
// skipped. On WikiQA-dev.tsv, 14 tokens fit every question and answer but not every candidate.
TEST(Prep, MaxLengthAppliesToCandidates) {
  TempDir out("prep_candidates_max_length");
  const std::string base = kPrep + " --tokenizer " + kSample + "tokenizer --out " + out.str() +
                           " --wikiqa " + kSample + "WikiQA-dev.tsv --max-length 14";
  const Process cut = run_command(base);
  ASSERT_EQ(cut.status, 0) << cut.output;
  const Tokenizer tok = Tokenizer::from_dir(kSample + "tokenizer");
  int64_t written = 0;
  {
    const TaskStreamFile file(out / "question_answering.h5");
    written = file.examples();
    EXPECT_EQ(file.info().sources[0].candidates, file.info().candidates);  // one answer per question
    const Ragged s = file.read_candidates(0, file.examples()).sentences;
    ASSERT_GT(s.count(), 0);
    bool any_cut = false;
    for (int64_t i = 0; i < s.count(); ++i) {
      ASSERT_LE(s.length(i), 14);
      EXPECT_EQ(s.begin(i)[s.length(i) - 1], tok.eos_id());
      any_cut |= s.length(i) == 14;
    }
    EXPECT_TRUE(any_cut);
  }
  const Process skip = run_command(base + " --too-long skip");
  ASSERT_EQ(skip.status, 0) << skip.output;
  const TaskStreamFile file(out / "question_answering.h5");
  const Ragged s = file.read_candidates(0, file.examples()).sentences;
  for (int64_t i = 0; i < s.count(); ++i) ASSERT_LE(s.length(i), 14);
  EXPECT_EQ(file.examples() + file.info().sources[0].skipped.at("longer than --max-length"), written);
}

// --jsonl TASK:FILE feeds any task's stream, repeated and mixed with the datasets' options (a
// task's files in the order given); a spec without a task, or with one that has no stream of its
// own, is refused naming it.
TEST(Prep, JsonlFeedsAnyTask) {
  TempDir in("prep_jsonl_in"), out("prep_jsonl_out");
  std::ofstream(in / "ed.jsonl") << "{\"text\": \"One.\"}\n{\"text\": \"Two.\"}\n";
  const std::string base = kPrep + " --tokenizer " + kSample + "tokenizer --out " + out.str();
  const Process ok = run_command(base + " --text " + kSample + "corpus_heldout.txt --jsonl ed:" + (in / "ed.jsonl") +
                                 " --jsonl question_answering:" + kFixtures + "qa_quirks.jsonl --jsonl cs:" +
                                 kFixtures + "cs_quirks.jsonl --on-error skip");
  ASSERT_EQ(ok.status, 0) << ok.output;
  const Read text = read_all(kSample + "corpus_heldout.txt", Format::text);
  const TaskStreamFile ed(out / "encode_decode.h5");
  ASSERT_EQ(ed.info().sources.size(), 2u);
  EXPECT_EQ(ed.info().sources[1].format, "ed-jsonl");
  EXPECT_EQ(ed.examples(), static_cast<int64_t>(text.examples.size()) + 2);
  const TaskStreamFile qa(out / "question_answering.h5");
  EXPECT_EQ(qa.examples(), 4);
  EXPECT_EQ(qa.info().candidates, 4);
  EXPECT_EQ(qa.read_candidates(0, 1).sentences.count(), 2);
  EXPECT_EQ(TaskStreamFile(out / "consistency.h5").examples(), 3);
  EXPECT_EQ(ok.output.find("come back after another question's"), std::string::npos) << ok.output;

  // A question whose lines are not adjacent is ranked as two: said, with its lines.
  std::ofstream(in / "apart.jsonl") << "{\"question\": \"Q1\", \"answer\": \"A1\"}\n{\"question\": \"Q2\", \"answer\": \"A2\"}\n"
                                       "{\"question\": \"Q1\", \"answer\": \"A3\"}\n{\"question\": \"Q1\", \"answer\": \"A4\", \"candidates\": [\"C\"]}\n";
  const Process apart = run_command(kPrep + " --tokenizer " + kSample + "tokenizer --out " + out.str() + " --jsonl qa:" +
                                    (in / "apart.jsonl"));
  ASSERT_EQ(apart.status, 0) << apart.output;
  EXPECT_NE(apart.output.find(in / "apart.jsonl" + ": 1 question(s) come back after another question's (the first at "
                                                   "line 3, last seen at line 1)"),
            std::string::npos) << apart.output;
  EXPECT_NE(apart.output.find(in / "apart.jsonl" + ": 1 line(s) repeat the question of the line before with other "
                                                   "candidates (the first: line 4)"),
            std::string::npos) << apart.output;
  EXPECT_EQ(ok.output.find("repeat the question"), std::string::npos) << ok.output;

  for (const auto& [spec, message] : {std::pair{std::string("ed.jsonl"), "--jsonl ed.jsonl: expected TASK:FILE"},
                                      std::pair{std::string("mlm:x.jsonl"), "--jsonl mlm:x.jsonl: masked_lm has no stream"},
                                      std::pair{std::string("qna:x.jsonl"), "--jsonl qna:x.jsonl: unknown task 'qna'"}}) {
    const Process bad = run_command(kPrep + " --tokenizer x --out " + (in / "never") + " --jsonl " + spec);
    EXPECT_EQ(bad.status, 2) << spec;
    EXPECT_NE(bad.output.find(message), std::string::npos) << bad.output;
    EXPECT_FALSE(fs::exists(in / "never"));
  }
}

// `qarac-prep info`: each field's length distribution (nearest-rank percentiles) as the
// tokenizer gives it, the labels, the candidates and every source's accounting; --verify reads
// every example against the checksum, so a damaged token is an error there and not without it.
TEST(Prep, InfoSummarisesStreams) {
  TempDir in("prep_info_in"), out("prep_info_out");
  const Tokenizer tok = Tokenizer::from_dir(kSample + "tokenizer");
  std::vector<int64_t> lengths;
  {
    std::ofstream ed(in / "ed.jsonl");
    std::string text;
    for (int i = 0; i < 40; ++i) {
      text += (i % 3 ? " word" : " other");
      ed << "{\"text\": \"" << text << "\"}\n";
      lengths.push_back(static_cast<int64_t>(tok.encode(text).size()));
    }
    ed << "\n";
  }
  std::sort(lengths.begin(), lengths.end());
  const Process prep = run_command(kPrep + " --tokenizer " + kSample + "tokenizer --out " + out.str() + " --jsonl ed:" +
                                   (in / "ed.jsonl") + " --jsonl cs:" + kFixtures + "cs_quirks.jsonl --jsonl qa:" +
                                   kFixtures + "qa_quirks.jsonl --on-error skip");
  ASSERT_EQ(prep.status, 0) << prep.output;
  const Process info = run_command(kPrep + " info " + out.str() + " --verify");
  ASSERT_EQ(info.status, 0) << info.output;
  auto rank = [&](int percent) { return lengths[(percent * lengths.size() + 99) / 100 - 1]; };
  const int64_t total = std::accumulate(lengths.begin(), lengths.end(), int64_t{0});
  char row[160];
  std::snprintf(row, sizeof row, "  %-12s %12lld %8.1f %6lld %6lld %6lld %6lld", "text", static_cast<long long>(total),
                static_cast<double>(total) / 40, static_cast<long long>(rank(50)), static_cast<long long>(rank(90)),
                static_cast<long long>(rank(99)), static_cast<long long>(lengths.back()));
  for (const std::string& want :
       {out / "encode_decode.h5" + ": encode_decode, 40 examples", std::string(row),
        "from " + (in / "ed.jsonl") + " (ed-jsonl): 41 lines, 40 examples; skipped: blank line 1",
        std::string("verified against the examples"), std::string("labels: entailment 1, neutral 1, contradiction 1"),
        std::string("candidates: 4 sentences (1.0 an example)"),
        std::string("(qa-jsonl): 10 lines, 4 examples, 4 candidates; skipped: blank line 1, empty text field 1, "
                    "malformed: bad value 3, malformed: invalid JSON 1, malformed: missing key 1")})
    EXPECT_NE(info.output.find(want), std::string::npos) << want << " in\n" << info.output;

  poke(out / "encode_decode.h5", "fields/text/tokens", 3, 5);  // another valid id: only the checksum tells
  EXPECT_EQ(run_command(kPrep + " info " + (out / "encode_decode.h5")).status, 0);
  const Process damaged = run_command(kPrep + " info " + (out / "encode_decode.h5") + " --verify");
  EXPECT_EQ(damaged.status, 2) << damaged.output;
  EXPECT_NE(damaged.output.find(out / "encode_decode.h5"), std::string::npos) << damaged.output;
  const Process empty = run_command(kPrep + " info " + in.str());
  EXPECT_EQ(empty.status, 2);
  EXPECT_NE(empty.output.find(in.str() + ": holds no task stream"), std::string::npos) << empty.output;
}

// `qarac-prep tokenize` as a co-process: each line is answered as it comes, a first line shorter
// than any compression's magic (which the reader looks for in the first bytes) included.
TEST(Prep, TokenizeAnswersEachLineAsItComes) {
  int to_child[2], from_child[2];
  ASSERT_EQ(::pipe(to_child), 0);
  ASSERT_EQ(::pipe(from_child), 0);
  const pid_t pid = ::fork();
  if (pid == 0) {
    ::dup2(to_child[0], 0);
    ::dup2(from_child[1], 1);
    for (int fd : {to_child[0], to_child[1], from_child[0], from_child[1]}) ::close(fd);
    const std::string tokenizer = kSample + "tokenizer";
    ::execl(kPrep.c_str(), kPrep.c_str(), "tokenize", "--tokenizer", tokenizer.c_str(), static_cast<char*>(nullptr));
    ::_exit(98);
  }
  ::close(to_child[0]);
  ::close(from_child[1]);
  const Tokenizer tok = Tokenizer::from_dir(kSample + "tokenizer");
  std::string pending;
  for (const std::string text : {"a", "bb", "a longer line"}) {
    const std::string line = "\"" + text + "\"\n";
    ASSERT_EQ(::write(to_child[1], line.data(), line.size()), static_cast<ssize_t>(line.size()));
    while (pending.find('\n') == std::string::npos) {
      pollfd p{from_child[0], POLLIN, 0};
      ASSERT_EQ(::poll(&p, 1, 20000), 1) << "no answer to " << line << " in 20 s";
      char buf[256];
      const ssize_t n = ::read(from_child[0], buf, sizeof buf);
      ASSERT_GT(n, 0);
      pending.append(buf, static_cast<size_t>(n));
    }
    const std::string answer = pending.substr(0, pending.find('\n'));
    pending.erase(0, answer.size() + 1);
    std::string want = "[";
    for (int32_t id : tok.encode(text, false)) want += (want.size() > 1 ? "," : "") + std::to_string(id);
    EXPECT_EQ(answer, want + "]") << text;
  }
  ::close(to_child[1]);
  int status = 0;
  ASSERT_EQ(::waitpid(pid, &status, 0), pid);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << status;
  ::close(from_child[0]);
}

TEST(Prep, TokenizeSubcommandRoundTrips) {
  TempDir dir("prep_tokenize");
  const Tokenizer tok = Tokenizer::from_dir(kSample + "tokenizer");
  const std::string text = "A girl is reading a book in the caf\xC3\xA9.";
  std::ofstream(dir / "in.jsonl") << "\"A girl is reading a book in the caf\\u00e9.\"\n\"\"\n";
  const Process enc = run_command(kPrep + " tokenize --tokenizer " + kSample + "tokenizer --special < " + (dir / "in.jsonl"));
  ASSERT_EQ(enc.status, 0) << enc.output;
  std::ostringstream expected;
  auto json_ids = [](const std::vector<int32_t>& ids) {
    std::string s = "[";
    for (size_t i = 0; i < ids.size(); ++i) s += (i ? "," : "") + std::to_string(ids[i]);
    return s + "]";
  };
  expected << json_ids(tok.encode(text)) << "\n" << json_ids(tok.encode("")) << "\n";
  EXPECT_EQ(enc.output, expected.str());

  std::ofstream(dir / "ids.jsonl") << enc.output;
  const Process dec = run_command(kPrep + " tokenize --decode --tokenizer " + kSample + "tokenizer < " + (dir / "ids.jsonl"));
  ASSERT_EQ(dec.status, 0) << dec.output;
  EXPECT_EQ(dec.output, "\"" + text + "\"\n\"\"\n");

  std::ofstream(dir / "bad.jsonl") << "\"fine\"\n[1, 2]\n";
  const Process bad = run_command(kPrep + " tokenize --tokenizer " + kSample + "tokenizer < " + (dir / "bad.jsonl"));
  EXPECT_EQ(bad.status, 2);
  EXPECT_NE(bad.output.find("stdin:2: expected a JSON string"), std::string::npos) << bad.output;
}
