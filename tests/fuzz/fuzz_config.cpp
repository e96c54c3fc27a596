// Fuzz target: what qarac-train reads from a user as its configuration (train/config.h): the INI
// file of --config and the command line, then what the run and --parallel.show_plan derive from
// them. Byte 0: bit 0 the mode, the others the plan's sizes. The rest is text: each line that
// starts with "--" is the command line's next option, its value after the first blank (where
// "\n" stands for a line break, which a command-line word can hold and an INI line cannot); the
// other lines are a file:
//   parse (bit 0 clear): the file is the --config INI. An accepted configuration passes
//     check_values, reads back through to_ini as itself (to_ini's promise, which a resumed run's
//     comparison with its checkpoint's config.ini rests on), and gets its task plan and report.
//   resume (bit 0 set): the options complete a valid configuration and the file is the saved
//     config.ini of a checkpoint, compared by resume_mismatch and resume_changes.
// Left out, because they read files: estimate_task_costs (the base's config.json and the task
// streams' metadata; the plan gets the costs of a roberta-base shape at mean field lengths of
// byte 0 instead) and the checks the trainer makes of the directories named. Nothing here reads
// a file outside the scratch folder: an option that --config would guess is never given.
#include <boost/program_options/errors.hpp>

#include <algorithm>
#include <sstream>
#include <vector>

#include "fuzz_support.h"
#include "parallel/task_cost.h"
#include "train/config.h"
#include "train/plan_report.h"

using namespace qarac;

namespace {

// The report has a line per rank: the largest world check_values allows (2^20 ranks) takes
// seconds here, too slow for fuzzing, and was run by hand.
constexpr int64_t kMaxWorld = 4096;

// Splits `text` into the command-line words (its "--" lines) and the file (the other lines).
void split(const std::string& text, std::vector<std::string>& words, std::string& file) {
  std::istringstream in(text);
  std::string line;
  while (std::getline(in, line)) {
    if (line.compare(0, 2, "--") != 0) {
      file += line + "\n";
      continue;
    }
    const size_t blank = line.find(' ');
    words.push_back(line.substr(0, blank));
    if (blank == std::string::npos) continue;
    std::string value = line.substr(blank + 1);
    for (size_t at = value.find("\\n"); at != std::string::npos; at = value.find("\\n", at + 1))
      value.replace(at, 2, "\n");
    words.push_back(value);
  }
}

// Whether a word could name --config: Boost takes any prefix of a long option's name that
// matches one option only ("--co"), also as "--co=FILE".
bool names_config(const std::vector<std::string>& words) {
  for (const std::string& w : words) {
    if (w.compare(0, 2, "--") != 0) continue;
    const std::string name = w.substr(2, w.find('=') == std::string::npos ? std::string::npos : w.find('=') - 2);
    if (!name.empty() && std::string("config").compare(0, name.size(), name) == 0) return true;
  }
  return false;
}

// parse_train_config lets Boost's errors about the command line propagate (config.h), which
// qarac-train reports as it does an InputError: one line, exit status 2.
std::optional<TrainConfig> parse(const std::vector<std::string>& words) {
  std::vector<const char*> argv = {"qarac-train"};
  for (const std::string& w : words) argv.push_back(w.c_str());
  std::ostringstream help;
  try {
    return parse_train_config(static_cast<int>(argv.size()), argv.data(), help);
  } catch (const boost::program_options::error& e) {
    throw InputError(e.what());
  }
}

// What qarac-train --parallel.show_plan runs after check_values, with costs in place of
// estimate_task_costs' (which reads the base and the streams).
void plan(const TrainConfig& c, int sizes) {
  TaskCosts costs;
  if (!c.pretraining()) {
    std::array<parallel::TaskShape, data::kTaskCount> shapes{};
    for (int t = 0; t < data::kTaskCount; ++t) {
      const data::Task task = static_cast<data::Task>(t);
      if (task == data::Task::masked_lm && !c.rehearsal()) continue;
      shapes[t].batch = static_cast<double>(c.task[t].batch);
      // Every field holds <s> and </s>.
      shapes[t].mean_field_tokens.assign(data::task_fields(data::stream_task(task)).size(), 2.0 + sizes % 32);
      for (const double tokens : shapes[t].mean_field_tokens) costs.tokens_per_example[t] += tokens;
    }
    costs.flops = parallel::task_step_flops(RobertaConfig{}, shapes);
  }
  // Without --parallel.show_plan the world is the launcher's; a few ranks stand for it.
  const int world = c.show_plan > 0 ? static_cast<int>(std::min(c.show_plan, kMaxWorld)) : 1 + sizes / 32;
  plan_report(c, make_plan(c, world, costs), costs);
}

void fail(const char* what, const std::string& detail) {
  std::fprintf(stderr, "fuzz: %s: %s\n", what, detail.c_str());
  std::abort();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  const bool resume = data[0] & 1;
  const int sizes = data[0] >> 1;
  std::vector<std::string> words;
  std::string file;
  split(std::string(reinterpret_cast<const char*>(data + 1), size - 1), words, file);
  if (names_config(words)) return 0;
  if (resume) {
    // A valid run of either mode; the options may change any of it.
    words.insert(words.begin(), {"--output", "run", "--model.base", "base", "--data.dir", "data"});
    std::optional<TrainConfig> c;
    try {
      c = parse(words);
      if (c) check_values(*c);
    } catch (const InputError&) {
      return 0;  // the parse mode's business
    }
    if (!c) return 0;
    fuzz::expect_only_input_errors([&] {
      resume_mismatch(*c, file);
      resume_changes(*c, file);
    });
    return 0;
  }
  const std::string path = (fuzz::scratch() / "config.ini").string();
  fuzz::write_file(path, file.data(), file.size());
  words.insert(words.begin(), {"--config", path});
  fuzz::expect_only_input_errors([&] {
    const std::optional<TrainConfig> c = parse(words);
    if (!c) return;  // --help
    check_values(*c);
    // The run's config.ini, read back: the same configuration, which its checkpoint resumes
    // without a change.
    const std::string ini = to_ini(*c);
    fuzz::write_file(path, ini.data(), ini.size());
    std::optional<TrainConfig> again;
    try {
      again = parse({"--config", path});
      check_values(*again);
    } catch (const InputError& e) {
      fail("to_ini does not read back", e.what());
    }
    if (to_ini(*again) != ini) fail("to_ini reads back as another configuration", ini);
    if (!resume_mismatch(*again, ini).empty()) fail("resume_mismatch with its own config.ini", ini);
    if (!resume_changes(*again, ini).empty()) fail("resume_changes with its own config.ini", ini);
    plan(*c, sizes);
  });
  return 0;
}
