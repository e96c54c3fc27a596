// What each raw format's records mean (see readers.h for the formats): plain text lines, WikiQA
// questions with their answers and candidates, Avicenna syllogisms, SNLI sentence pairs with
// their gold labels (JSON lines here; the TSV and CSV exports through the table drivers), and
// JSON lines of any task in the task streams' own field names.
#include <algorithm>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <utility>
#include <vector>

#include "core/error.h"
#include "core/log.h"
#include "data/json_brief.h"
#include "data/reader_util.h"

namespace qarac::data::raw {
namespace {

using json = nlohmann::json;

// Skip reasons of single formats, keys of ReadStats::skipped beside those of reader_util.h.
constexpr const char* kNoGold = "no gold label";
constexpr const char* kUnanswered = "question without an answer (Label 0)";
constexpr const char* kNoSyllogism = "no syllogistic relation";

}  // namespace

// ---- Text ------------------------------------------------------------------------------------
void read_text(Reader& r, LineFile& in) {
  std::string line;
  while (r.next_line(in, line)) {
    if (trim(line).empty()) {
      r.skip(kBlank);
      continue;
    }
    r.deliver(in.line_no(), {line});
  }
  // A problem of the whole file, as an empty table is (docs/data-format.md §1).
  if (in.line_no() == 0) r.fatal(1, "empty file, expected one document per line");
}

// ---- WikiQA ----------------------------------------------------------------------------------
namespace {

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

}  // namespace

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

// ---- Avicenna --------------------------------------------------------------------------------
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

// ---- SNLI ------------------------------------------------------------------------------------
namespace {

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

// The message of a nlohmann parse error without its "[json.exception.parse_error.101] " tag.
std::string json_reason(const json::exception& e) {
  const std::string what = e.what();
  const size_t close = what.find("] ");
  return close == std::string::npos ? what : what.substr(close + 2);
}

// The next line of a JSON lines file that holds a JSON object, in `obj`; blank lines are skipped,
// other lines are malformed records. False at the end of the file.
bool next_json_object(Reader& r, LineFile& in, json& obj) {
  std::string line;
  while (r.next_line(in, line)) {
    if (trim(line).empty()) {
      r.skip(kBlank);
      continue;
    }
    try {
      obj = json::parse(line);
    } catch (const json::exception& e) {
      r.malformed(in.line_no(), "invalid JSON", printable(json_reason(e)));
      continue;
    }
    if (obj.is_object()) return true;
    r.malformed(in.line_no(), "invalid JSON", detail::concat("a JSON ", obj.type_name(), ", expected an object"));
  }
  if (in.line_no() == 0) r.fatal(1, "empty file, expected one JSON object per line");
  return false;
}

}  // namespace

TableFormat snli_table_format() {
  TableFormat f;
  f.wanted = {kSentence1, kSentence2, kGoldLabel};
  f.row = [](Reader& r, const Table& t, std::vector<std::string>& v, int64_t line) {
    deliver_snli(r, line, std::move(v[0]), std::move(v[1]), v[2], t.alias[2] == 1);
  };
  return f;
}

void read_snli_jsonl(Reader& r, LineFile& in) {
  json obj;
  while (next_json_object(r, in, obj)) {
    const int64_t n = in.line_no();
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
    else label_text = json_brief(*label);
    deliver_snli(r, n, s1->get<std::string>(), s2->get<std::string>(), label_text, numeric);
  }
}

// ---- JSON lines in the task streams' own terms ---------------------------------------------------
// A user's own data, without a converter to one of the datasets' formats: one object per line whose
// keys are the task stream's field names (docs/data-format.md §1); other keys are ignored.
// Consistency's label is a word only: SNLI's exports number the classes 0 entailment, 1 neutral,
// 2 contradiction and the streams +1, 0, -1, so a number would be read wrongly under one of them
// without a word of warning.
namespace {

// Answer selection ranks a question's answers together only when they are adjacent and carry the
// same candidates (train/evaluation.cpp, as qarac-prep writes WikiQA's): a question's text that
// comes back after another question's, or with other candidates than the line before, is ranked
// as a question of its own. This watches for both and says so at the end.
class QuestionOrder {
 public:
  void see(const Example& ex) {
    if (ex.fields[0] != question_) {
      if (!question_.empty()) ended_[question_] = line_;
      question_ = ex.fields[0];
      const auto earlier = ended_.find(question_);
      if (earlier != ended_.end() && apart_++ == 0) {
        first_apart_ = ex.line;
        first_apart_earlier_ = earlier->second;
      }
    } else if (ex.candidates != candidates_ && changed_++ == 0) {
      first_changed_ = ex.line;
    }
    candidates_ = ex.candidates;
    line_ = ex.line;
  }

  void report(const Reader& r) const {
    if (apart_ > 0)
      log::warn(r.path(), ": ", apart_, " question(s) come back after another question's (the first at line ",
                first_apart_, ", last seen at line ", first_apart_earlier_,
                "): answer selection ranks only a question's adjacent lines together, so put them one after another");
    if (changed_ > 0)
      log::warn(r.path(), ": ", changed_, " line(s) repeat the question of the line before with other candidates (the "
                "first: line ", first_changed_, "): answer selection ranks them as another question; give each of a "
                "question's lines all of its candidates");
  }

 private:
  std::map<std::string, int64_t> ended_;  // question text -> its last line
  std::string question_;                  // the question of the line before, and its candidates
  std::vector<std::string> candidates_;
  int64_t line_ = 0, apart_ = 0, first_apart_ = 0, first_apart_earlier_ = 0, changed_ = 0, first_changed_ = 0;
};

}  // namespace

void read_task_jsonl(Reader& r, LineFile& in, Task task) {
  const std::vector<std::string>& keys = task_fields(task);
  QuestionOrder order;
  json obj;
  while (next_json_object(r, in, obj)) {
    const int64_t n = in.line_no();
    Example ex;
    ex.line = n;
    bool ok = true;
    for (const std::string& key : keys) {
      const auto it = obj.find(key);
      if (it == obj.end() || !it->is_string()) {
        r.malformed(n, it == obj.end() ? "missing key" : "bad value",
                    it == obj.end() ? detail::concat("no '", key, "'")
                                    : detail::concat("'", key, "' is ", json_brief(*it), ", expected a string"));
        ok = false;
        break;
      }
      ex.fields.push_back(it->get<std::string>());
    }
    if (!ok) continue;
    if (task_has_label(task)) {
      const auto it = obj.find("label");
      const std::string word = it != obj.end() && it->is_string() ? it->get<std::string>() : "";
      if (snli_label(word, false, ex.label) != SnliLabel::ok) {
        r.malformed(n, it == obj.end() ? "missing key" : "bad label",
                    it == obj.end() ? "no 'label'"
                                    : detail::concat("'label' is ", json_brief(*it),
                                                     ", expected \"entailment\", \"neutral\" or \"contradiction\""));
        continue;
      }
    }
    const auto candidates = obj.find("candidates");
    if (candidates != obj.end()) {
      const bool strings = task == Task::question_answering && candidates->is_array() &&
                           std::all_of(candidates->begin(), candidates->end(), [](const json& c) { return c.is_string(); });
      if (!strings) {
        r.malformed(n, "bad value",
                    task == Task::question_answering
                        ? detail::concat("'candidates' is ", json_brief(*candidates), ", expected an array of strings")
                        : detail::concat("'candidates' belong to question_answering, not ", task_name(task)));
        continue;
      }
    }
    if (!std::all_of(ex.fields.begin(), ex.fields.end(), [&](std::string& f) { return r.clean(n, f); })) continue;
    if (candidates != obj.end()) {
      for (const json& c : *candidates) {
        std::string sentence = c.get<std::string>();
        if (r.clean(n, sentence)) ex.candidates.push_back(std::move(sentence));
      }
      r.stats().candidates += static_cast<int64_t>(ex.candidates.size());
    }
    if (task == Task::question_answering) order.see(ex);
    r.emit(std::move(ex));
  }
  order.report(r);
}

}  // namespace qarac::data::raw
