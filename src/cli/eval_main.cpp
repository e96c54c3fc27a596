// qarac-eval: the held-out evaluation of qarac-train (train/evaluation.h), of a run's exported
// models, on any task streams: a test split after training, best/ against export/, another run's.
//   qarac-eval --models RUN/export --data TEST_DIR [--base BASE] [--json]
// The figures are the evaluator's own: with the training's settings (--examples, --batch,
// --micro-tokens, --decoded, the QA objective, --base and --seed for the forgetting monitor) they
// are the last evaluation of its metrics.jsonl (of an f32 run: exports are f32).
#include <limits>
#include <nlohmann/json.hpp>
#include <string>

#include "cli/run_main.h"
#include "cli/vector_files.h"
#include "cli/version.h"
#include "core/atomic_file.h"
#include "core/log.h"
#include "data/tokenizer.h"
#include "io/hf_checkpoint.h"
#include "io/qarac_export.h"
#include "kernels/cpu/gemm.h"
#include "train/evaluation.h"

namespace po = boost::program_options;
using namespace qarac;

namespace {

struct Options {
  std::string models, data, base, objective, output, device, decoded = "all";
  int64_t examples = 0, batch = 64, micro_tokens = 0, seed = 0;
  double temperature = 1.0;
  bool json = false;
};

int evaluate(const Options& o) {
  const Device device = cli::parse_device(o.device);
  const io::LoadedQarac loaded = io::load_qarac_exports(o.models, DType::f32, device);
  EvalOptions options;
  options.data_dir = o.data;
  options.max_examples = o.examples > 0 ? o.examples : std::numeric_limits<int64_t>::max();
  options.pass = {o.batch, o.micro_tokens};
  options.max_decoded = o.decoded == "all" ? options.max_examples : std::stoll(o.decoded);
  options.qa_objective = {o.objective == "contrastive", o.temperature};
  // The streams must be made with the models' tokenizer: another one's ids are other words.
  options.tokenizer_hash = loaded.tokenizer.hash();
  options.tokenizer_source = "the models (" + o.models + ")";
  options.max_tokens = loaded.models->config().base.max_tokens();
  TensorMap base_lm_head;
  if (!o.base.empty()) {
    io::HfRoberta base = io::read_hf_roberta(o.base);
    QARAC_INPUT_CHECK(!base.lm_head.empty(), "--base ", o.base, ": has no MLM head (lm_head.*) for the forgetting ",
                      "monitor: give the run's model.base as a RobertaForMaskedLM");
    const RobertaConfig& trained = loaded.models->config().base;
    QARAC_INPUT_CHECK(base.config.vocab_size == trained.vocab_size && base.config.hidden_size == trained.hidden_size,
                      "--base ", o.base, ": vocabulary ", base.config.vocab_size, " and hidden size ",
                      base.config.hidden_size, ", but the models of ", o.models, " have ", trained.vocab_size, " and ",
                      trained.hidden_size, " (give the run's model.base)");
    // Its MLM head predicts its tokenizer's ids, which the exports' must be; a base without one
    // (the run's exports then carry eval.tokenizer's) has nothing to compare.
    if (data::Tokenizer::found_in(o.base)) {
      const std::string hash = data::Tokenizer::from_dir(o.base).hash();
      QARAC_INPUT_CHECK(hash == loaded.tokenizer.hash(), "--base ", o.base, ": tokenizer ", hash, ", but the models (",
                        o.models, ") carry ", loaded.tokenizer.hash(), " (give the run's model.base)");
    }
    base_lm_head = std::move(base.lm_head);
    options.masking = mlm_masking(loaded.tokenizer, static_cast<uint64_t>(o.seed));
  }
  QaracEvaluator evaluator(options);
  // As qarac-train says it: OpenBLAS's generic kernels are twice as slow here, and a run that
  // launch/train-local.sh started had this CPU's own, whose last bits are others.
  if (!device.is_cuda())
    if (const std::string advice = cpu::blas_core_advice(); !advice.empty()) log::warn(advice);
  const EvalResult result = evaluator.evaluate({*loaded.models, base_lm_head});
  // JSON: every metric at full precision, as metrics.jsonl has them.
  cli::write_text(o.output, o.json ? nlohmann::json(result.metrics).dump() + "\n" : metric_lines(result));
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  if (cli::version_requested(argc, argv)) return cli::print_version("qarac-eval");
  return cli::run_main("qarac-eval", [&] {
    Options o;
    po::options_description options(
        "qarac-eval --models EXPORTS --data STREAMS [--base BASE] [--json]\n\n"
        "qarac-train's held-out evaluation of a run's exported models (its export/ or best/\n"
        "folder) on task streams of qarac-prep (a test split, say), each task whose stream the\n"
        "folder holds. With the run's settings below the figures are those of its last evaluation\n"
        "in metrics.jsonl.\n\nOptions");
    options.add_options()
        ("help,h", "print this help")
        ("version", "print the version, the git commit and the libraries' versions, and exit")
        ("models", po::value(&o.models), "(required) a run's export/ or best/ folder: question_encoder/, answer_encoder/, decoder/")
        ("data", po::value(&o.data), "(required) task streams from qarac-prep made with the models' tokenizer (<dir>/<task>.h5)")
        ("examples", po::value(&o.examples)->default_value(0), "the first N examples of each stream (qarac-train's eval.examples, 256); 0: all")
        ("batch", po::value(&o.batch)->default_value(64), "examples per forward pass (eval.batch; in f32 the last bits depend on it)")
        ("decoded", po::value(&o.decoded)->default_value("all"), "examples decoded greedily per decoder task for the token accuracy (eval.decoded, 64; the slowest part of an evaluation): N, 0 (none) or all, every example evaluated")
        ("micro-tokens", po::value(&o.micro_tokens)->default_value(0), "at most this many tokens per forward pass as well (train.micro_tokens, which caps the run's evaluation passes; in f32 the last bits depend on it); 0: no limit")
        ("qa-objective", po::value(&o.objective)->default_value("mse"), "what qa.loss measures: mse or contrastive (task.qa.objective)")
        ("qa-temperature", po::value(&o.temperature)->default_value(1.0), "contrastive: the temperature (task.qa.temperature)")
        ("base", po::value(&o.base), "the run's model.base, a RobertaForMaskedLM: turns on the forgetting monitor (forgetting.mlm_loss with its MLM head)")
        ("seed", po::value(&o.seed)->default_value(0), "with --base: the run's train.seed, which fixes the monitor's masks")
        ("json", po::bool_switch(&o.json), "print one JSON object of the metrics at full precision instead of \"name value\" lines (a metric that is not finite: null, as in metrics.jsonl; nan in the lines)")
        ("output", po::value(&o.output)->default_value("-"), "where to write them; - : standard output")
        ("device", po::value(&o.device)->default_value("cpu"), "cpu or cuda");
    po::variables_map vm;
    if (!cli::parse_command_line(argc, argv, options, vm)) return 0;
    QARAC_INPUT_CHECK(!o.models.empty() && !o.data.empty(), "--models and --data are required (see --help)");
    QARAC_INPUT_CHECK(o.examples >= 0, "--examples must not be negative, got ", o.examples);
    QARAC_INPUT_CHECK(o.batch > 0, "--batch must be positive, got ", o.batch);
    QARAC_INPUT_CHECK(o.micro_tokens >= 0, "--micro-tokens must not be negative, got ", o.micro_tokens);
    QARAC_INPUT_CHECK(o.decoded == "all" || (!o.decoded.empty() && o.decoded.size() <= 18 &&
                                             o.decoded.find_first_not_of("0123456789") == std::string::npos),
                      "--decoded must be a number of examples or all, not '", printable(o.decoded), "'");
    QARAC_INPUT_CHECK(o.objective == "mse" || o.objective == "contrastive", "--qa-objective must be mse or contrastive, not '",
                      printable(o.objective), "'");
    QARAC_INPUT_CHECK(o.objective == "contrastive" || vm["qa-temperature"].defaulted(),
                      "--qa-temperature goes with --qa-objective contrastive");
    QARAC_INPUT_CHECK(o.temperature > 0 && o.temperature < std::numeric_limits<double>::infinity(),
                      "--qa-temperature must be positive and finite, got ", o.temperature);
    QARAC_INPUT_CHECK(!o.base.empty() || vm["seed"].defaulted(), "--seed fixes the forgetting monitor's masks: it goes with --base");
    QARAC_INPUT_CHECK(o.seed >= 0, "--seed must not be negative (as train.seed), got ", o.seed);
    QARAC_INPUT_CHECK(!o.output.empty(), "--output is empty: name a file, or - for standard output");
    cli::check_output_spares(o.output, {},
                             {{o.models, "--models", "the models"}, {o.data, "--data", "the task streams"},
                              {o.base, "--base", "the base model"}});
    // A file that cannot be written there (no such folder, a directory in its place, no right to
    // write) is said before the evaluation, which may take hours, not after it: the temporary file
    // is made, then removed.
    if (o.output != "-") AtomicFile probe(o.output);
    return evaluate(o);
  }, "a smaller --batch or --examples needs less");
}
