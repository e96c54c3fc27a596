// Throughput of the data pipeline: qarac-prep examples/s (raw files -> HDF5 task streams, the
// real program run as a child process) and the loader's batches/s.
// A benchmark to run by hand, not a test:
//   bench_data [copies, default 20] [steps, default 2000] [global batch, default 128 examples]
// The input is data/sample repeated `copies` times per format (20 copies: about 175,000
// examples). The sample is templated and repetitive, so the tokenizer's word cache is warm
// after the first copy: prep figures on natural text are lower (see bench_tokenizer).
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <filesystem>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include "data/loader.h"
#include "data/shards.h"

namespace {

using namespace qarac::data;
namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point t) {
  return std::chrono::duration<double>(Clock::now() - t).count();
}

// `copies` concatenated copies of a sample file; tables keep one header.
void replicate(const std::string& from, const std::string& to, int copies, bool header) {
  std::ifstream in(from, std::ios::binary);
  std::string head, body;
  if (header) std::getline(in, head);
  body.assign(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
  if (!body.empty() && body.back() != '\n') body += '\n';
  std::ofstream out(to, std::ios::binary);
  if (header) out << head << '\n';
  for (int i = 0; i < copies; ++i) out << body;
}

int64_t examples_in(const std::string& dir) {
  int64_t n = 0;
  for (int t = 0; t < kQaracTaskCount; ++t) {
    const std::string path = dir + "/" + task_name(static_cast<Task>(t)) + ".h5";
    if (fs::exists(path)) n += TaskStreamFile(path).examples();
  }
  return n;
}

// Runs qarac-prep and returns its wall time; exits on failure.
double run_prep(const std::string& args) {
  const std::string cmd = std::string(QARAC_PREP_EXE) + " " + args + " > /dev/null 2>&1";
  const auto start = Clock::now();
  if (std::system(cmd.c_str()) != 0) {
    std::fprintf(stderr, "bench_data: qarac-prep failed: %s\n", cmd.c_str());
    std::exit(1);
  }
  return seconds_since(start);
}

int bench(int argc, char** argv) {
  const int copies = argc > 1 ? std::atoi(argv[1]) : 20;
  const int steps = argc > 2 ? std::atoi(argv[2]) : 2000;
  const int64_t batch = argc > 3 ? std::atoll(argv[3]) : 128;
  if (copies < 1 || steps < 1 || batch < 1) {
    std::fprintf(stderr, "usage: bench_data [copies] [steps] [global batch]\n");
    return 2;
  }
  const std::string sample = QARAC_SAMPLE_DIR;
  const fs::path dir = fs::temp_directory_path() / ("qarac_bench_data_" + std::to_string(::getpid()));
  fs::create_directories(dir);
  struct Input {
    const char* option;
    const char* file;
    bool header;
  };
  const Input inputs[] = {{"--text", "corpus_train.txt", false},
                          {"--wikiqa", "WikiQA-train.tsv", true},
                          {"--avicenna", "Avicenna_Train.csv", true},
                          {"--snli", "snli_1.0_train.jsonl", false},
                          {"--snli", "snli_1.0_dev.txt", true},
                          {"--snli", "snli_1.0_test.csv", true}};
  std::string all_inputs;
  uintmax_t bytes = 0;
  for (const Input& in : inputs) {
    const std::string to = (dir / in.file).string();
    replicate(sample + "/" + in.file, to, copies, in.header);
    bytes += fs::file_size(to);
    all_inputs += std::string(" ") + in.option + " " + to;
  }
  const std::string base = " --tokenizer " + sample + "/tokenizer" + all_inputs;
  const unsigned cores = std::max(1u, std::thread::hardware_concurrency());

  std::printf("qarac-prep on data/sample x%d (%.1f MB of raw text)\n", copies, bytes / 1e6);
  for (unsigned threads : {1u, cores}) {
    const std::string out = (dir / ("out" + std::to_string(threads))).string();
    const double s = run_prep(base + " --out " + out + " --threads " + std::to_string(threads));
    const int64_t n = examples_in(out);
    std::printf("  %2u thread(s): %lld examples in %.2f s: %.0f examples/s, %.1f MB/s\n", threads,
                static_cast<long long>(n), s, n / s, bytes / 1e6 / s);
    if (threads == cores) break;
  }

  LoaderOptions opt;
  opt.data_dir = (dir / "out1").string();
  opt.global_batch = batch;
  auto start = Clock::now();
  Loader loader(RankPlan::single(), opt);
  std::printf("loader, 4 tasks, global batch %lld: streams read in %.3f s\n",
              static_cast<long long>(batch), seconds_since(start));
  start = Clock::now();
  int64_t batches = 0, examples = 0, tokens = 0;
  for (int i = 0; i < steps; ++i)
    for (const TaskBatch& b : loader.next().tasks) {
      ++batches;
      examples += b.count();
      tokens += b.tokens();
    }
  const double s = seconds_since(start);
  std::printf("  packed: %d steps, %lld batches in %.3f s: %.0f batches/s, %.2f M examples/s, "
              "%.1f M tokens/s\n", steps, static_cast<long long>(batches), s, batches / s,
              examples / s / 1e6, tokens / s / 1e6);
  fs::remove_all(dir);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return bench(argc, argv);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_data: %s\n", e.what());
    return 1;
  }
}
