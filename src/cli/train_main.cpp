// qarac-train: fine-tunes the three QARAC models from a pre-trained RoBERTa on the four
// objectives at once (docs/design.md §1, §4, §6), or (model.mode mlm) pre-trains a RoBERTa base.
// Options come from an INI file (--config) and the command line; every input error is one line
// and exit status 2, reported before the output directory is created. Under mpirun or srun every
// process is one rank of the task plan; a rank that fails (an error, a communication timeout, a
// replica divergence) ends the whole job with MPI_Abort, so that no rank is left waiting.
// Exit statuses: 0 done, 1 internal error, 2 input error or out of memory, 3 communication
// failure or timeout, 4 replicas diverged, 75 stopped by SIGTERM, SIGUSR1, SIGINT or SIGHUP
// after writing a checkpoint (--resume goes on).
#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <filesystem>
#include <iostream>
#include <memory>
#include <optional>
#include <sstream>
#include <thread>

#include "cli/run_main.h"
#include "cli/version.h"
#include "core/log.h"
#include "data/shards.h"
#include "data/tokenizer.h"
#include "io/hf_config.h"
#include "parallel/gradient_sync.h"
#include "parallel/runtime.h"
#include "train/config.h"
#include "train/evaluation.h"
#include "train/plan_report.h"
#include "train/stop_signals.h"
#include "train/trainer.h"
#include "train/workload.h"

namespace {

// Exit statuses besides run_main's 0, 1 (internal error) and 2 (input error).
constexpr int kCommunicationFailed = 3;
constexpr int kReplicasDiverged = 4;
// Said after an out-of-memory error.
constexpr const char* kLessMemory =
    "train.micro_tokens runs each step in smaller micro-batches with the same result; smaller task batches or a "
    "smaller model need less too";

// The run's options (the command line and the INI file) and the plan's shape, read by every rank:
// a mistake in them is said once (Runtime::read_on_every_rank). Rank 0 alone prints --help.
// Without a launcher, the one process reads them before MPI starts (`runtime` null): --help and a
// mistake are answered at once, without a singleton's MPI_Init (half a second).
std::optional<qarac::TrainConfig> read_config(const qarac::parallel::Runtime* runtime, int argc, char** argv) {
  std::ostringstream help;
  std::optional<qarac::TrainConfig> config;
  const auto read = [&] {
    try {
      config = qarac::parse_train_config(argc, argv, help);
    } catch (const boost::program_options::error& e) {
      throw qarac::InputError(std::string(e.what()) + " (see --help)");
    }
    if (!config) return;
    qarac::check_values(*config);
    // parallel.tasks against the world size (or show_plan's); the costs that balance `auto`
    // come later: any positive ones give a plan here.
    qarac::TaskCosts unit;
    unit.flops.fill(1.0);
    const int world = config->show_plan > 0 ? static_cast<int>(config->show_plan) : runtime ? runtime->size() : 1;
    try {
      qarac::make_plan(*config, world, unit);
    } catch (const qarac::InputError& e) {
      throw qarac::with_config_line(*config, e);
    }
  };
  if (runtime)
    runtime->read_on_every_rank(read, qarac::TrainConfig{}.timeout);
  else
    read();
  if (!runtime || runtime->rank() == 0) qarac::cli::write_standard_output(help.str());
  return config;
}

// The held-out evaluation of [eval]; built before the run starts, so its input errors too come
// before the output directory exists.
std::unique_ptr<qarac::Evaluator> make_evaluator(const qarac::TrainConfig& config) {
  qarac::EvalOptions options;
  options.data_dir = config.eval_dir;
  options.max_examples = config.eval_examples;
  options.pass = {config.eval_batch, config.micro_tokens};
  options.max_decoded = config.eval_decoded;
  options.qa_objective = qarac::qa_objective_of(config);
  // Streams longer than the models read are refused as they are read, before the run starts
  // rather than at its first evaluation, after its plan and warnings.
  options.max_tokens = qarac::io::read_hf_config(config.base + "/config.json").max_tokens();
  // The training data's tokenizer: the held-out streams' and the forgetting monitor's must be it
  // (another one's ids would be read as other words, and the metrics would mean nothing).
  std::string data_stream;
  for (int t = 0; t < qarac::data::kQaracTaskCount && data_stream.empty(); ++t) {
    const std::string path =
        config.data_dir + "/" + qarac::data::task_name(static_cast<qarac::data::Task>(t)) + ".h5";
    // Anything there but a missing file is read, so that what is wrong with it is said.
    std::error_code ec;
    if (std::filesystem::symlink_status(path, ec).type() != std::filesystem::file_type::not_found) data_stream = path;
  }
  if (!data_stream.empty()) {
    options.tokenizer_hash = qarac::data::TaskStreamFile(data_stream).info().tokenizer_hash;
    options.tokenizer_source = "the training data (" + data_stream + ")";
  }
  if (!config.eval_tokenizer.empty()) {
    const qarac::data::Tokenizer tokenizer = qarac::data::Tokenizer::from_dir(config.eval_tokenizer);
    QARAC_INPUT_CHECK(options.tokenizer_hash.empty() || tokenizer.hash() == options.tokenizer_hash,
                      "eval.tokenizer ", config.eval_tokenizer, ": is tokenizer ", tokenizer.hash(), ", but ",
                      data_stream, " was made with ", options.tokenizer_hash, " (give the data's tokenizer)");
    options.masking = qarac::mlm_masking(tokenizer, static_cast<uint64_t>(config.seed));
  }
  auto evaluator = std::make_unique<qarac::QaracEvaluator>(options);  // its input errors first
  if (!options.masking) qarac::log::info("evaluation: no eval.tokenizer given, so no forgetting monitor (it needs <mask>)");
  return evaluator;
}

}  // namespace

int main(int argc, char** argv) {
  // Answered before MPI starts: no launcher, GPU or valid configuration is needed.
  if (qarac::cli::version_requested(argc, argv)) return qarac::cli::print_version("qarac-train");
  std::unique_ptr<qarac::parallel::Runtime> runtime;
  std::unique_ptr<qarac::Trainer> trainer;
  // Before anything else: a stop signal (stop_signals.h) during start-up stops the run after its
  // first step instead of killing it.
  std::unique_ptr<qarac::StopSignals> stop_signals;
  bool ended_by_another = false;
  const int code = qarac::cli::run_main("qarac-train", [&] {
    stop_signals = std::make_unique<qarac::StopSignals>();
    const bool launched = qarac::parallel::started_by_a_launcher();
    std::optional<qarac::TrainConfig> config;
    if (!launched && !(config = read_config(nullptr, argc, argv))) return 0;  // --help
    // Without a launcher Open MPI's MPI_Init starts a local daemon through its ssh/rsh launch
    // component, which refuses to load where neither is on PATH (a container): MPI_Init then
    // fails in 40 lines although nothing remote is started. An empty agent lets it load; a
    // user's own setting wins, and other MPIs ignore the variable.
    if (!launched) setenv("OMPI_MCA_plm_rsh_agent", "", 0);
    runtime = std::make_unique<qarac::parallel::Runtime>(&argc, &argv);
    try {
      if (launched && !(config = read_config(runtime.get(), argc, argv))) return 0;  // --help
      if (config->show_plan > 0) {
        const qarac::TaskCosts costs = qarac::estimate_task_costs(*config);
        const qarac::parallel::TaskPlan plan = qarac::make_plan(*config, static_cast<int>(config->show_plan), costs);
        if (runtime->rank() == 0) std::cout << qarac::plan_report(*config, plan, costs);
        return 0;
      }
      // From here stdout is a log, not a result (--help, the plan): one whose reader went away
      // does not end the run (MetricsLog::flush_log), its writes fail.
      std::signal(SIGPIPE, SIG_IGN);
      trainer = std::make_unique<qarac::Trainer>(*config, runtime.get());
      // Pre-training evaluates itself (the held-out MLM loss); the QARAC models need the evaluator,
      // which only rank 0 runs, so only it reads the held-out streams.
      if (!config->eval_dir.empty() && !config->pretraining() && runtime->rank() == 0)
        trainer->set_evaluator(make_evaluator(*config));
      if (trainer->run() == qarac::Trainer::RunEnd::stopped) return qarac::kExitPreempted;
    } catch (const qarac::parallel::CommError& e) {
      std::fprintf(stderr, "qarac-train: error: %s\n", e.what());
      return kCommunicationFailed;
    } catch (const qarac::parallel::ReplicaError& e) {
      std::fprintf(stderr, "qarac-train: error: %s\n", e.what());
      return kReplicasDiverged;
    } catch (const qarac::EndedByAnotherRank&) {
      ended_by_another = true;
      return 2;  // the rank that failed said why (its options, its inputs, a full disk)
    }
    return 0;
  }, kLessMemory);
  // A stopped run ends normally on every rank (its checkpoint is complete): no abort.
  if (code != 0 && code != qarac::kExitPreempted && runtime && runtime->size() > 1) {
    if (trainer) trainer->abort();
    // The rank that failed ends the job: one abort, one launcher report of it. Should it not come,
    // this rank ends the job itself.
    if (ended_by_another) std::this_thread::sleep_for(std::chrono::seconds(10));
    runtime->abort_job(code);
  }
  return code;
}
