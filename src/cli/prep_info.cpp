// qarac-prep info: the metadata qarac-prep recorded in task-stream files (sources and what each
// lost, tokenizer, settings, checksum) and the distribution of each field's lengths, read from the
// offsets alone, so that a summary of a stream of billions of tokens reads a few bytes an example.
// What it is for: choosing --max-length, a task's batch and train.micro_tokens from the data.
#include "cli/prep_info.h"

#include <algorithm>
#include <cinttypes>
#include <cstdio>
#include <filesystem>
#include <map>
#include <string>
#include <vector>

#include "cli/run_main.h"
#include "data/shards.h"

namespace qarac::cli {
namespace {

namespace po = boost::program_options;
using data::TaskStreamFile;

constexpr int64_t kBlock = int64_t{1} << 20;  // examples whose offsets are read at a time

struct Lengths {
  int64_t count = 0, total = 0, p50 = 0, p90 = 0, p99 = 0, max = 0;
};

// From a histogram of the lengths (memory bounded by how many lengths differ, not by the
// examples); a percentile is the nearest rank's length: the shortest that at least that share of
// the examples does not exceed.
Lengths lengths_of(const TaskStreamFile& file, int field) {
  std::map<int64_t, int64_t> histogram;  // length -> examples
  Lengths s;
  for (int64_t begin = 0; begin < file.examples(); begin += kBlock)
    for (int64_t n : file.field_lengths(field, begin, std::min(file.examples(), begin + kBlock))) {
      ++histogram[n];
      ++s.count;
      s.total += n;
    }
  int64_t seen = 0;
  int64_t* const wanted[] = {&s.p50, &s.p90, &s.p99};
  const int64_t percent[] = {50, 90, 99};
  size_t next = 0;
  for (const auto& [length, examples] : histogram) {
    seen += examples;
    while (next < 3 && seen * 100 >= percent[next] * s.count) *wanted[next++] = length;
    s.max = length;
  }
  return s;
}

void print_stream(const std::string& path, bool verify) {
  const TaskStreamFile file(path);
  const data::StreamInfo& info = file.info();
  const uint64_t checksum = verify ? file.verify() : info.checksum;
  std::printf("%s: %s, %" PRId64 " examples\n", path.c_str(), data::task_name(info.task), info.examples);
  std::printf("  made by %s, tokenizer %s, %s, --max-length %" PRId64 "\n",
              info.created_by.empty() ? "(not recorded)" : info.created_by.c_str(),
              info.tokenizer_hash.empty() ? "(not recorded)" : info.tokenizer_hash.c_str(),
              info.special_tokens ? "fields in <s> ... </s>" : "no special tokens (--no-special)", info.max_length);
  if (checksum == 0) std::printf("  no content checksum (an older qarac-prep's)\n");
  else std::printf("  content checksum %016" PRIx64 "%s\n", checksum, verify ? ", verified against the examples" : "");
  std::printf("  %-12s %12s %8s %6s %6s %6s %6s   (tokens an example)\n", "field", "tokens", "mean", "p50",
              "p90", "p99", "max");
  const std::vector<std::string>& fields = data::task_fields(info.task);
  for (size_t f = 0; f < fields.size(); ++f) {
    const Lengths s = lengths_of(file, static_cast<int>(f));
    std::printf("  %-12s %12" PRId64 " %8.1f %6" PRId64 " %6" PRId64 " %6" PRId64 " %6" PRId64 "\n", fields[f].c_str(),
                s.total, s.count > 0 ? static_cast<double>(s.total) / static_cast<double>(s.count) : 0.0, s.p50,
                s.p90, s.p99, s.max);
  }
  if (file.has_candidates())
    std::printf("  candidates: %" PRId64 " sentences (%.1f an example), %" PRId64 " tokens\n", info.candidates,
                info.examples > 0 ? static_cast<double>(info.candidates) / static_cast<double>(info.examples) : 0.0,
                info.candidate_tokens);
  if (data::task_has_label(info.task)) {
    int64_t count[3] = {0, 0, 0};  // contradiction (-1), neutral (0), entailment (+1)
    for (int64_t begin = 0; begin < info.examples; begin += kBlock)
      for (int8_t label : file.read_labels(begin, std::min(info.examples, begin + kBlock))) ++count[label + 1];
    std::printf("  labels: entailment %" PRId64 ", neutral %" PRId64 ", contradiction %" PRId64 "\n", count[2],
                count[1], count[0]);
  }
  for (const data::SourceInfo& src : info.sources) {
    std::string skipped;
    for (const auto& [reason, n] : src.skipped) skipped += detail::concat(skipped.empty() ? "" : ", ", reason, " ", n);
    std::printf("  from %s (%s): %" PRId64 " lines, %" PRId64 " examples", src.path.c_str(), src.format.c_str(),
                src.lines, src.examples);
    if (src.candidates > 0) std::printf(", %" PRId64 " candidates", src.candidates);
    if (src.truncated > 0) std::printf(", %" PRId64 " truncated to --max-length", src.truncated);
    std::printf("; skipped: %s\n", skipped.empty() ? "none" : skipped.c_str());
  }
}

}  // namespace

int prep_info(int argc, char** argv) {
  std::vector<std::string> paths;
  bool verify = false;
  po::options_description options(
      "qarac-prep info STREAM|DIR... [--verify]\n\n"
      "What task-stream files hold (a folder: each <task>.h5 in it): task, examples, the\n"
      "tokenizer and settings qarac-prep used, each field's length in tokens (mean, 50th,\n"
      "90th and 99th percentiles, longest), candidates, labels, and per input file the lines\n"
      "read, the examples kept and the records skipped, by reason.\n\nOptions");
  options.add_options()
      ("help,h", "print this help")
      ("stream", po::value(&paths)->composing(), "a task-stream file or a folder of them (the words "
                                                 "after info are these)")
      ("verify", po::bool_switch(&verify), "read every example and check it against the stored checksum");
  po::positional_options_description positional;
  positional.add("stream", -1);
  po::variables_map vm;
  if (!parse_command_line(argc, argv, options, vm, positional)) return 0;
  QARAC_INPUT_CHECK(!paths.empty(), "give a task-stream file or a folder of them (see --help)");
  for (const std::string& path : paths) {
    std::error_code ec;
    if (!std::filesystem::is_directory(path, ec)) {
      print_stream(path, verify);
      continue;
    }
    data::check_publishing_finished(path);  // streams of two preparations are no one stream set
    int found = 0;
    for (int t = 0; t < data::kQaracTaskCount; ++t) {
      const std::string stream = path + "/" + data::task_name(static_cast<data::Task>(t)) + ".h5";
      if (!std::filesystem::exists(stream, ec)) continue;
      print_stream(stream, verify);
      ++found;
    }
    QARAC_INPUT_CHECK(found > 0, path, ": holds no task stream (encode_decode.h5, question_answering.h5, ...)");
  }
  return 0;
}

}  // namespace qarac::cli
