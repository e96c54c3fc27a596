// qarac-train's options as a new user meets them: a misspelt key gets a suggestion (and its INI
// line), a setting the chosen mode ignores is refused, an evaluation interval without held-out
// data is refused, the progress line is rewritten in place only where asked or on a terminal,
// qarac-prep says how many examples it truncated, a base's layers beyond its config are said, and
// values at the edges are refused in one line.
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <csignal>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <map>
#include <nlohmann/json.hpp>
#include <new>
#include <stdexcept>
#include <string>
#include <utility>

#include "cli/run_main.h"
#include "core/error.h"
#include "core/host_memory.h"
#include "io/safetensors.h"
#include "support/train_cli.h"
#include "train/best_export.h"
#include "support/training_fixtures.h"

using qarac::test_support::CliResult;

namespace fs = std::filesystem;

namespace {

class TrainOptionsCli : public qarac::test_support::TrainCli {};

std::string file_bytes(const fs::path& p) {
  std::ifstream f(p, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(f), {});
}

}  // namespace

TEST_F(TrainOptionsCli, MisspeltKeysGetASuggestion) {
  expect_usage_error("--optimizer.warmpu 3", {"'--optimizer.warmpu'", "did you mean optimizer.warmup?"});
  expect_usage_error("--lr 3e-5", {"'--lr'", "did you mean optimizer.lr?"});
  expect_usage_error("--train.stpes 3", {"did you mean train.steps?"});
  // The option in another section, or with a suffix other tools give it.
  expect_usage_error("--train.clip_norm 1", {"'--train.clip_norm'", "did you mean optimizer.clip?"});
  expect_usage_error("--gradient_accumulation_steps 4", {"did you mean train.micro_tokens (a rank's share"});
  // Abbreviations are not guessed (--eval.pat was eval.patience), but suggested.
  expect_usage_error("--eval.pat 1", {"'--eval.pat'", "did you mean eval.patience?"});
  expect_usage_error("--bf16=true", {"did you mean train.dtype bf16?"});
  expect_usage_error("--optimizer.weight_decay_rate 0", {"did you mean optimizer.weight_decay?"});
  expect_usage_error("--train.lr 3e-5", {"did you mean optimizer.lr?"});
  // Hugging Face Trainer's names for the same settings.
  expect_usage_error("--learning_rate 3e-5", {"'--learning_rate'", "did you mean optimizer.lr?"});
  expect_usage_error("--max_steps 10", {"did you mean train.steps?"});
  const fs::path ini = root() / "typo.ini";
  std::ofstream(ini) << "# a comment\n[optimizer]\nlr = 1e-5\n\nwarmpu = 10\n";
  expect_usage_error("--config " + ini.string(), {ini.string() + ", line 5", "did you mean optimizer.warmup?"});
  // Nothing close: no guess, the same one-line refusal.
  expect_usage_error("--completely.different 1", {"'--completely.different'"});
  const CliResult far = train(root() / "never", "--completely.different 1");
  EXPECT_EQ(far.output.find("did you mean"), std::string::npos) << far.output;
}

TEST_F(TrainOptionsCli, SettingsTheModeIgnoresAreRefused) {
  expect_usage_error("--model.hidden 32", {"model.hidden: has no effect with model.mode qarac"});
  expect_usage_error("--model.mask_probability 0.2", {"model.mask_probability: has no effect"});
  const std::string mlm = "--model.mode mlm --model.tokenizer " + qarac::test_support::kSample + "tokenizer ";
  expect_usage_error(mlm + "--task.qa.batch 4", {"task.qa.batch: has no effect with model.mode mlm"});
  expect_usage_error(mlm + "--model.share_encoder_base true", {"model.share_encoder_base: has no effect"});
  expect_usage_error(mlm + "--model.layers 3", {"model.layers: has no effect when model.base is given"});
  expect_usage_error("--eval.every 5", {"eval.every: 5 needs eval.dir"});
  // Found by a hostile audit (before: accepted without a word, and written to config.ini).
  expect_usage_error("--eval.examples 3 --eval.decoded 3",
                     {"eval.decoded: has no effect without eval.dir (nothing is evaluated); eval.examples: has no "
                      "effect without eval.dir"});
  expect_usage_error("--task.qa.objective contrastive --task.qa.batch 1",
                     {"task.qa.batch: 1 with task.qa.objective contrastive", "trains nothing"});
  // A warmup as long as the run: the learning rate never reaches optimizer.lr.
  expect_usage_error("--train.steps 4 --optimizer.warmup 4", {"optimizer.warmup: 4 steps", "train.steps 4"});
  expect_usage_error("--train.steps 4 --optimizer.warmup 9", {"never reach optimizer.lr"});
  expect_usage_error("--train.progress fancy", {"train.progress", "auto, plain or tty"});
  // Shared GPUs with NCCL: the answer encoder's group would put two ranks on one GPU.
  expect_usage_error("--train.device cuda --parallel.share_gpus true",
                     {"parallel.share_gpus needs parallel.backend mpi on cuda", "parallel.backend auto"});
  // The QA objective: the temperature is the contrastive one's.
  expect_usage_error("--task.qa.temperature 0.1", {"task.qa.temperature: has no effect with task.qa.objective mse"});
  expect_usage_error("--task.qa.objective cosine", {"task.qa.objective: 'cosine' must be mse or contrastive"});
  expect_usage_error("--task.qa.objective contrastive --task.qa.temperature 0", {"task.qa.temperature: 0", "> 0"});
  // A wrong value of what decides the effect is named itself (before: the settings it governs were
  // called ignored, and removing them lost what the user meant).
  expect_usage_error("--task.qa.objective Contrastive --task.qa.temperature 0.1",
                     {"task.qa.objective: 'Contrastive' must be mse or contrastive"});
  expect_usage_error("--task.mlm.weight -1 --task.mlm.batch 8", {"task.mlm.weight: -1 must be >= 0"});
  expect_usage_error("--task.mlm.weight nan --task.mlm.batch 8", {"task.mlm.weight: nan is not a finite number"});
  // NAdam's settings under AdamW, and a final rate without a decay (before: accepted, and
  // `decoupled_weight_decay false` read as Adam with L2 decay while the run stayed AdamW).
  expect_usage_error("--optimizer.decoupled_weight_decay false",
                     {"optimizer.decoupled_weight_decay: has no effect with optimizer.name adamw"});
  expect_usage_error("--optimizer.momentum_decay 0.01", {"optimizer.momentum_decay: has no effect with optimizer.name adamw"});
  expect_usage_error("--optimizer.decay constant --optimizer.final 0.5",
                     {"optimizer.final: has no effect with optimizer.decay constant"});
  expect_usage_error("--optimizer.name AdamW --optimizer.momentum_decay 0.01", {"'AdamW'", "adamw or nadam"});
  // Settings under which nothing is trained, or every weight is flipped each step.
  expect_usage_error("--task.ed.weight 0 --task.qa.weight 0 --task.rs.weight 0 --task.cs.weight 0",
                     {"are all 0: no task would train the models"});
  expect_usage_error("--optimizer.lr 5e-4 --optimizer.weight_decay 1e10",
                     {"optimizer.weight_decay: 1e+10 at optimizer.lr 0.0005", "must stay below 1"});
  expect_usage_error("--optimizer.name nadam --optimizer.lr 0.5 --optimizer.weight_decay 2",
                     {"1 - lr * weight_decay = 0 a step"});
  expect_usage_error("--optimizer.weight_decay 0 --optimizer.decay_exempt bias_norm",
                     {"optimizer.decay_exempt: has no effect while optimizer.weight_decay is 0"});
  expect_usage_error("--parallel.share_gpus true", {"parallel.share_gpus: has no effect with train.device cpu"});
  expect_usage_error("--optimizer.decay_exempt all", {"optimizer.decay_exempt: unknown weight-decay exemption 'all'",
                                                      "none or bias_norm"});
}

// A base whose weights hold more layers than its config.json counts trains the smaller model it
// describes, and says what it leaves (before: nothing was said in model.mode qarac).
TEST_F(TrainOptionsCli, BaseLayersBeyondItsConfigAreSaid) {
  const fs::path base = root() / "shallow-base";
  qarac::test_support::write_tiny_base(base, qarac::test_support::kSample + "tokenizer");  // 1 layer
  const std::string weights = (base / "model.safetensors").string();
  qarac::TensorMap tensors = qarac::io::read_safetensors(weights);
  qarac::TensorMap second;
  for (const auto& [name, tensor] : tensors) {
    const size_t at = name.find("encoder.layer.0.");
    if (at != std::string::npos) second[name.substr(0, at) + "encoder.layer.1." + name.substr(at + 16)] = tensor;
  }
  ASSERT_EQ(second.size(), 16u);
  tensors.insert(second.begin(), second.end());
  qarac::io::write_safetensors(weights, tensors);
  const CliResult r = train(root() / "shallow", "--train.steps 2 --model.base " + base.string());
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_NE(r.output.find((base / "model.safetensors").string() + ": 16 tensors of layers beyond config.json's "
                          "num_hidden_layers (1) are left unused (the first: 'encoder.layer.1."),
            std::string::npos)
      << r.output;
}

// The tests read the output through a pipe: auto and plain print a line per step, tty rewrites
// one line with carriage returns.
TEST_F(TrainOptionsCli, TheProgressLineIsRewrittenOnlyOnATerminal) {
  for (const char* mode : {"auto", "plain", "tty"}) {
    SCOPED_TRACE(mode);
    const fs::path run = root() / (std::string("progress-") + mode);
    const CliResult r = train(run, std::string("--train.steps 2 --train.progress ") + mode);
    ASSERT_EQ(r.code, 0) << r.output;
    EXPECT_EQ(r.output.find('\r') != std::string::npos, std::string(mode) == "tty") << r.output;
    EXPECT_NE(r.output.find("step 2/2"), std::string::npos) << r.output;
  }
}

// A base saved without its MLM head (RobertaModel, not RobertaForMaskedLM) cannot feed the
// forgetting monitor: the run says so instead of leaving forgetting.mlm_loss out silently.
TEST_F(TrainOptionsCli, ABaseWithoutItsMlmHeadIsReported) {
  const fs::path base = root() / "headless-base";
  qarac::test_support::write_tiny_base(base, qarac::test_support::kSample + "tokenizer", 0, /*mlm_head=*/false);
  const std::string eval = " --eval.dir " + (root() / "data").string() + " --eval.examples 4 --eval.tokenizer " +
                           qarac::test_support::kSample + "tokenizer";
  const CliResult r = train(root() / "headless", "--train.steps 2 --model.base " + base.string() + eval);
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_NE(r.output.find("model.base has no MLM head (lm_head.*), so no forgetting monitor"), std::string::npos)
      << r.output;
  EXPECT_EQ(r.output.find("forgetting.mlm_loss="), std::string::npos) << r.output;
  // With the head, the monitor runs and nothing is said.
  const CliResult with_head = train(root() / "with-head", "--train.steps 2" + eval);
  ASSERT_EQ(with_head.code, 0) << with_head.output;
  EXPECT_EQ(with_head.output.find("no MLM head"), std::string::npos) << with_head.output;
  EXPECT_NE(with_head.output.find("forgetting.mlm_loss="), std::string::npos) << with_head.output;
}

// qarac-prep says on screen how many examples it cut, with the share and what to do about it.
TEST_F(TrainOptionsCli, PrepWarnsAboutTruncatedExamples) {
  const std::string& s = qarac::test_support::kSample;
  const CliResult r = qarac::test_support::run_command(
      std::string(QARAC_PREP_EXE) + " --tokenizer " + s + "tokenizer --out " + (root() / "cut").string() +
      " --text " + s + "corpus_train.txt --max-length 6");
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_NE(r.output.find("corpus_train.txt: 3000 of 3000 examples (100%) have a field cut to --max-length 6"),
            std::string::npos)
      << r.output;
}

// Values at the edges, found by fuzzing the configuration (tests/fuzz/fuzz_config.cpp) and by
// hand: each is refused in one line before anything is written (before: a checkpoint count past an
// int failed the first save or kept too few, a new model's sizes overflowed or failed to allocate
// as internal errors, a nan dropout was called too large, a line break made a message of two
// lines, and a '#' or a trailing blank was written to config.ini, which read back another path).
TEST_F(TrainOptionsCli, ValuesTheRunCannotHoldAreRefused) {
  expect_usage_error("--train.steps 2 --checkpoint.keep 2147483648",
                     {"checkpoint.keep: 2147483648 must lie between 0 and 2147483647"});
  // A new model (model.mode mlm without a base; the fixture's defaults are for model.mode qarac).
  const std::string mlm = std::string(QARAC_TRAIN_EXE) + " --model.mode mlm --model.tokenizer " +
                          qarac::test_support::kSample + "tokenizer --data.dir " + (root() / "data").string() +
                          " --output " + (root() / "big").string() + " --train.steps 2 --optimizer.warmup 1 ";
  const std::pair<const char*, const char*> too_large[] = {
      {"--model.ffn 4611686018427387904",
       "model.ffn: 4611686018427387904 is more than the 262144 this implementation takes"},
      {"--model.hidden 4294967296 --model.heads 1",
       "model.hidden: 4294967296 is more than the 65536 this implementation takes"}};
  for (const auto& [sizes, error] : too_large) {
    const CliResult r = qarac::test_support::run_command(mlm + sizes);
    EXPECT_EQ(r.code, 2) << r.output;
    EXPECT_EQ(r.output, std::string("qarac-train: error: ") + error + "\n");
  }
  EXPECT_FALSE(fs::exists(root() / "big"));
  // Sizes within the bounds whose tensors this machine cannot hold: one line (before: an internal
  // error, or the kernel's OOM killer once the pages were touched). The position table alone is
  // 2^20 x 2^16 floats, 256 GiB; it is refused before it is allocated.
  const CliResult oom = qarac::test_support::run_command(
      mlm + "--model.hidden 65536 --model.heads 1 --model.layers 1 --model.max_positions 1048576");
  EXPECT_EQ(oom.code, 2) << oom.output;
  EXPECT_EQ(oom.output.rfind("qarac-train: error: out of memory on ", 0), 0u) << oom.output;
  for (const std::string& part :
       {std::string(": a tensor of 256.0 GiB with "), qarac::host_memory_limit().source + "; train.micro_tokens runs each step"})
    EXPECT_NE(oom.output.find(part), std::string::npos) << part << ":\n" << oom.output;
  EXPECT_EQ(oom.output.find('\n'), oom.output.size() - 1) << oom.output;
  EXPECT_FALSE(fs::exists(root() / "big"));
  expect_usage_error("--model.dropout nan", {"model.dropout: nan is not a finite number"});
  // Values float32, in which the models compute, cannot hold (before: eps 1e-50 made NaN weights,
  // init_std 4.9e-324 zero heads, a weight of 1e39 an infinite loss).
  expect_usage_error("--optimizer.eps 1e-50", {"optimizer.eps: 1e-50 is 0 in float32, in which the models compute"});
  expect_usage_error("--model.init_std 4.9e-324", {"model.init_std: 4.94066e-324 is 0 in float32"});
  expect_usage_error("--optimizer.lr 1e39", {"optimizer.lr: 1e+39 overflows float32, in which the models compute"});
  expect_usage_error("--task.qa.weight 1e39", {"task.qa.weight: 1e+39 overflows float32"});
  expect_usage_error("--model.mode 'mlm\nqarac'", {"command-line argument 2 'mlm\\x0aqarac' holds a line break"});
  const fs::path hash = root() / "run#1";
  expect_usage_error("--train.steps 2 --output '" + hash.string() + "'",
                     {"output: '" + hash.string() + "' cannot be written to the run's config.ini"});
  EXPECT_FALSE(fs::exists(hash));
  expect_usage_error("--train.steps 2 --eval.dir 'held out '", {"eval.dir: 'held out ' cannot be written"});
}

// Held-out streams longer than the models read: before, found at the step-0 evaluation, after the
// plan and the start's warnings (a stream holding no other task said first); now one line before
// the run starts, and no run directory.
TEST_F(TrainOptionsCli, HeldOutStreamsLongerThanTheModelsReadAreOneLineAtTheStart) {
  const fs::path raw = root() / "long-text.txt", held_out = root() / "long-held-out";
  std::string words;
  for (int i = 0; i < 600; ++i) words += "word ";
  std::ofstream(raw) << words << "\n";
  using qarac::test_support::kSample;
  const CliResult prep = qarac::test_support::run_command(std::string(QARAC_PREP_EXE) + " --tokenizer " + kSample +
                                                          "tokenizer --out " + held_out.string() + " --text " +
                                                          raw.string() + " --max-length 1000");
  ASSERT_EQ(prep.code, 0) << prep.output;
  expect_usage_error("--train.steps 2 --eval.dir " + held_out.string(),
                     {(held_out / "encode_decode.h5").string() + ": its text field holds a sequence of",
                      "more than the 512 the models read (rerun qarac-prep with --max-length 512)"});
}

// A masking probability the draws can take but this batch does not meet: the steps whose global
// batch masks no token train nothing on it, and the run says so once, naming the setting (before:
// a loss of 0 at every step, and not a word).
TEST_F(TrainOptionsCli, AStepThatMasksNoTokenIsSaidOnce) {
  const fs::path out = root() / "unmasked";
  const CliResult r = qarac::test_support::run_command(
      std::string(QARAC_TRAIN_EXE) + " --model.mode mlm --model.tokenizer " + qarac::test_support::kSample +
      "tokenizer --data.dir " + (root() / "data").string() + " --output " + out.string() +
      " --model.hidden 16 --model.heads 1 --model.layers 1 --train.steps 3 --optimizer.warmup 0"
      " --train.progress plain --model.mask_probability 6e-8");
  ASSERT_EQ(r.code, 0) << r.output;
  const std::string said = "encode_decode, step 1: no token of the global batch (";
  const size_t at = r.output.find(said);
  ASSERT_NE(at, std::string::npos) << r.output;
  EXPECT_NE(r.output.find(" tokens) was chosen for masking (model.mask_probability 6e-08): its loss and gradients "
                          "are 0 there; said once a run", at), std::string::npos) << r.output;
  EXPECT_EQ(r.output.find("no token of the global batch", at + said.size()), std::string::npos) << r.output;
}

// Boost's messages (1.74) fill their placeholders until none is left, so quoting a word that holds
// the one it fills never ended (before: qarac-train hung, deaf to the SIGTERM that start-up
// defers; here a SIGKILL after a minute fails the test instead).
TEST_F(TrainOptionsCli, OptionParserPlaceholdersAreRefused) {
  const fs::path ini = root() / "placeholder.ini";
  std::ofstream(ini) << "# %value% in a comment is left alone\n[train]\nsteps = %value%\n";
  const std::pair<std::string, std::string> cases[] = {
      {"--train.steps %value%", "command-line argument 2 '%value%' holds %value%"},
      {"--x%original_token%", "command-line argument 1 '--x%original_token%' holds %original_token%"},
      {"--config " + ini.string(), ini.string() + ", line 3: holds %value%"}};
  for (const auto& [args, error] : cases) {
    const CliResult r = train(root() / "never", args, "timeout -s KILL 60");
    EXPECT_EQ(r.code, 2) << r.output;
    EXPECT_EQ(r.output, "qarac-train: error: " + error + ", a placeholder of the option parser's messages, which "
                        "cannot quote it\n");
  }
}

// A subnormal value config.ini holds (before: writing it threw out_of_range). The clipping norm
// is compared in double; a rate so small would be 0 in float32 and is refused.
TEST_F(TrainOptionsCli, ASubnormalValueIsWrittenToConfigIni) {
  const fs::path run = root() / "subnormal";
  const CliResult r = train(run, "--train.steps 2 --optimizer.clip 4.9e-324");
  ASSERT_EQ(r.code, 0) << r.output;
  std::ifstream in(run / "config.ini");
  const std::string ini((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  EXPECT_NE(ini.find("\nclip = 4.94066e-324\n"), std::string::npos) << ini;
}

// Every program's errors as run_main reports them: one line each, with its exit status; a lack of
// memory, a tensor's or any other allocation's, says what of the program needs less.
TEST(RunMain, ErrorsAreOneLineWithTheirStatus) {
  const auto said = [](auto&& body, const char* hint, int status) {
    testing::internal::CaptureStderr();
    EXPECT_EQ(qarac::cli::run_main("qarac-x", body, hint), status);
    return testing::internal::GetCapturedStderr();
  };
  EXPECT_EQ(said([]() -> int { throw qarac::InputError("a.ini: bad"); }, nullptr, 2), "qarac-x: error: a.ini: bad\n");
  EXPECT_EQ(said([]() -> int { throw qarac::OutOfMemory("out of memory on h: 4.0 GiB"); }, "use less", 2),
            "qarac-x: error: out of memory on h: 4.0 GiB; use less\n");
  EXPECT_EQ(said([]() -> int { throw qarac::OutOfMemory("out of memory on h"); }, nullptr, 2),
            "qarac-x: error: out of memory on h\n");
  EXPECT_EQ(said([]() -> int { throw std::bad_alloc(); }, "use less", 2),
            "qarac-x: error: out of memory on " + qarac::hostname() + ": an allocation outside the tensors failed; "
            "use less\n");
  EXPECT_EQ(said([]() -> int { throw std::logic_error("a bug"); }, "use less", 1), "qarac-x: internal error: a bug\n");
  EXPECT_EQ(said([] { return 3; }, nullptr, 3), "");
}

// qarac-train's --help is longer than stdout's buffer, so it is written while it is printed.
// Before: a failed write was said without its cause (the errno gone by the closing check).
TEST(RunMain, AHelpThatCannotBeWrittenSaysWhy) {
  const CliResult r = qarac::test_support::run_command(std::string("(") + QARAC_TRAIN_EXE + " --help > /dev/full)");
  EXPECT_EQ(r.code, 2) << r.output;
  EXPECT_EQ(r.output, "qarac-train: error: standard output: write failed: No space left on device: what was "
                      "printed is incomplete\n");
}

// eval.best keeps the models of the best evaluation of a held-out metric in <output>/best/, as a
// Hugging Face Trainer's metric_for_best_model does, across a --resume too. Here the QA retrieval
// accuracy is followed, which these few steps lower: its best is the first evaluation, in the
// run's first part, not the final models.
TEST_F(TrainOptionsCli, TheBestEvaluationsModelsAreKept) {
  const std::string eval = " --eval.dir " + (root() / "data").string() +
                           " --eval.examples 8 --eval.every 1 --eval.best qa.retrieval_accuracy";
  const fs::path run = root() / "best";
  CliResult r = train(run, "--train.steps 2 --checkpoint.every 2" + eval);
  ASSERT_EQ(r.code, 0) << r.output;
  r = train(run, "--resume --train.steps 4 --checkpoint.every 2" + eval);
  ASSERT_EQ(r.code, 0) << r.output;
  // The log names the folders users open, not the temporary ones they replace.
  EXPECT_NE(r.output.find("exported question_encoder, answer_encoder, decoder to " + (run / "export").string() + "\n"),
            std::string::npos) << r.output;
  EXPECT_EQ(r.output.find(".tmp"), std::string::npos) << r.output;
  // The largest accuracy of every evaluation of both parts, the first of a tie.
  std::ifstream lines(run / "metrics.jsonl");
  int64_t best_step = -1, evaluations = 0;
  double best = 0, worst = 0;
  std::string values;
  for (std::string line; std::getline(lines, line);) {
    const nlohmann::json j = nlohmann::json::parse(line);
    if (!j.contains("qa.retrieval_accuracy")) continue;
    ++evaluations;
    const double accuracy = j.at("qa.retrieval_accuracy").get<double>();
    values += " " + std::to_string(accuracy);
    worst = best_step < 0 ? accuracy : std::min(worst, accuracy);
    if (best_step < 0 || accuracy > best) {
      best = accuracy;
      best_step = j.at("step").get<int64_t>();
    }
  }
  EXPECT_EQ(evaluations, 5);
  // What makes the checks below able to fail: a best before the resumed part, and values that differ.
  ASSERT_LT(best_step, 2) << "the test needs a best in the run's first part:" << values;
  ASSERT_GT(best, worst) << "the test needs evaluations that differ:" << values;
  std::ifstream in(run / "best" / "best.json");
  const nlohmann::json note = nlohmann::json::parse(in);
  EXPECT_EQ(note.at("metric"), "qa.retrieval_accuracy");
  EXPECT_EQ(note.at("step").get<int64_t>(), best_step);
  EXPECT_EQ(note.at("value").get<double>(), best);
  for (const char* model : {"question_encoder", "answer_encoder", "decoder"}) {
    SCOPED_TRACE(model);
    const std::string kept = file_bytes(run / "best" / model / "model.safetensors");
    EXPECT_FALSE(kept.empty());
    EXPECT_NE(kept, file_bytes(run / "export" / model / "model.safetensors"));  // not the final models
    EXPECT_TRUE(fs::is_regular_file(run / "best" / model / "config.json"));
  }
  EXPECT_FALSE(fs::exists(run / "best.tmp"));

  expect_usage_error("--eval.best qa.nonsense --eval.dir " + (root() / "data").string(),
                     {"eval.best: 'qa.nonsense' is not a held-out metric of model.mode qarac (", "qa.selection_mrr"});
  expect_usage_error("--eval.best cs.accuracy", {"eval.best: cs.accuracy needs eval.dir"});
  // Metrics the evaluation would not give whatever the data: refused before the models are built.
  expect_usage_error("--eval.dir " + (root() / "data").string() + " --eval.decoded 0 --eval.best ed.token_accuracy",
                     {"eval.best: ed.token_accuracy needs eval.decoded > 0"});
  expect_usage_error("--eval.dir " + (root() / "data").string() + " --eval.best forgetting.mlm_loss",
                     {"eval.best: forgetting.mlm_loss needs eval.tokenizer"});
}

// A run killed while eval.best exported the models of its first evaluation, before its first
// checkpoint, leaves that evaluation on record, no best/ and a partial best.tmp/. --resume starts
// again from step 0, with the models of that evaluation: it exports them (before: best/ stayed
// missing unless a later evaluation beat the record, and best.tmp/ stayed to the end).
TEST_F(TrainOptionsCli, ABestExportAKillInterruptedIsWrittenAgain) {
  const std::string eval = " --eval.dir " + (root() / "data").string() +
                           " --eval.examples 8 --eval.every 1 --eval.best qa.retrieval_accuracy";
  const fs::path run = root() / "best-killed";
  CliResult r = train(run, "--train.steps 2" + eval);
  ASSERT_EQ(r.code, 0) << r.output;
  ASSERT_EQ(nlohmann::json::parse(file_bytes(run / "best" / "best.json")).at("step"), 0)
      << "the test needs the first evaluation to be the best";
  std::map<std::string, std::string> first;  // the models as the uninterrupted run exported them
  for (const char* model : {"question_encoder", "answer_encoder", "decoder"})
    first[model] = file_bytes(run / "best" / model / "model.safetensors");

  // What a kill -9 in that export leaves.
  const std::string metrics = file_bytes(run / "metrics.jsonl");
  std::ofstream(run / "metrics.jsonl", std::ios::trunc) << metrics.substr(0, metrics.find('\n') + 1);
  for (const char* gone : {"best", "export", "checkpoints"}) fs::remove_all(run / gone);
  fs::create_directories(run / "best.tmp" / "question_encoder.tmp");
  std::ofstream(run / "best.tmp" / "question_encoder.tmp" / "model.safetensors.tmp.99") << "half";

  r = train(run, "--resume --train.steps 2" + eval);
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_NE(r.output.find("which best/ did not hold (a run stopped while it exported them): models exported again to"),
            std::string::npos) << r.output;
  EXPECT_EQ(r.output.find("none, or no best.json"), std::string::npos) << "a warning the export made untrue";
  EXPECT_FALSE(fs::exists(run / "best.tmp"));
  EXPECT_EQ(nlohmann::json::parse(file_bytes(run / "best" / "best.json")).at("step"), 0);
  for (const auto& [model, kept] : first) EXPECT_EQ(file_bytes(run / "best" / model / "model.safetensors"), kept) << model;
}

// Which best/ a resumed run writes again at its start: the best on record must be of the start
// step (its models are at hand), and best/ must hold none or an earlier best of the metric; a
// later one (from after the checkpoint) or another metric's is kept until an evaluation beats it.
TEST(BestExport, BestIsWrittenAgainOnlyWhereItLacksTheStartsModels) {
  const qarac::test_support::TempDir dir("best-again");
  const std::map<int64_t, double> record = {{0, 0.2}, {2, 0.5}, {4, 0.9}};  // the best at step 4
  const auto lacks = [&](const char* held_metric, int64_t held_step, int64_t start) {
    fs::remove_all(dir.path / "best");
    if (held_metric != nullptr) {
      fs::create_directories(dir.path / "best");
      std::ofstream(dir.path / "best" / "best.json")
          << nlohmann::json{{"metric", held_metric}, {"value", 0.1}, {"step", held_step}}.dump();
    }
    return qarac::BestExport(dir.path.string(), "cs.accuracy", record, start).lacks_best();
  };
  EXPECT_TRUE(lacks(nullptr, 0, 4)) << "none held";
  EXPECT_TRUE(lacks("cs.accuracy", 2, 4)) << "an earlier best held";
  EXPECT_FALSE(lacks("cs.accuracy", 4, 4)) << "the best held";
  EXPECT_FALSE(lacks("cs.accuracy", 6, 4)) << "a later best held";
  EXPECT_FALSE(lacks("qa.loss", 2, 4)) << "another metric's held";
  EXPECT_FALSE(lacks(nullptr, 0, 3)) << "the models at hand are not the best's";
}

// A FIFO at best/best.json (a slip, or another member of a group that shares the run directory)
// held a --resume in the open of it for good, SIGTERM or not: it is unreadable, said, and the next
// better evaluation replaces best/. In a child, which the test ends if it waits.
TEST(BestExport, AFifoAtBestJsonIsNotWaitedOn) {
  const qarac::test_support::TempDir dir("best-fifo");
  fs::create_directories(dir.path / "best");
  ASSERT_EQ(::mkfifo((dir.path / "best" / "best.json").c_str(), 0600), 0);
  const std::map<int64_t, double> record = {{0, 0.2}};
  const pid_t child = ::fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    try {
      qarac::BestExport best(dir.path.string(), "cs.accuracy", record, 2);
      ::_exit(0);
    } catch (...) {
      ::_exit(1);
    }
  }
  int status = 0;
  pid_t done = 0;
  for (int tenths = 0; tenths < 200 && (done = ::waitpid(child, &status, WNOHANG)) == 0; ++tenths) ::usleep(100000);
  if (done == 0) {
    ::kill(child, SIGKILL);
    ::waitpid(child, &status, 0);
    FAIL() << "BestExport waits on the FIFO at best/best.json";
  }
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << "status " << status;
}

// A metric the evaluation did not give (held-out QA without candidates gives no selection
// metrics): one line naming what it gave, and <output>/best untouched.
TEST(BestExport, AMetricTheEvaluationDidNotGiveIsSaid) {
  const qarac::test_support::TempDir dir("best-export");
  qarac::BestExport best(dir.path.string(), "qa.selection_mrr");
  int writes = 0;
  try {
    best.consider(0, {{"qa.loss", 0.5}, {"cs.confusion.0.1", 2}}, [&](const std::string&) { ++writes; });
    FAIL() << "no exception";
  } catch (const qarac::InputError& e) {
    EXPECT_STREQ(e.what(), "eval.best: the evaluation at step 0 gave no qa.selection_mrr (it gave qa.loss)");
  }
  EXPECT_EQ(writes, 0);
  EXPECT_FALSE(fs::exists(dir.path / "best"));
}

// eval.patience stops a run after that many evaluations in a row that do not beat eval.best's
// best (Hugging Face's early_stopping_patience), as a run ends: checkpoint and export. A --resume
// counts the evaluations metrics.jsonl holds since the best: it runs no step while they are as
// many as the patience, and a larger patience goes on from that count, not from zero.
TEST_F(TrainOptionsCli, PatienceStopsARunWhoseMetricNoLongerImproves) {
  const std::string eval = " --train.steps 8 --checkpoint.every 1 --eval.dir " + (root() / "data").string() +
                           " --eval.examples 8 --eval.every 1 --eval.best qa.retrieval_accuracy";
  const fs::path run = root() / "patience";
  // The step the run must stop at with `patience`, from the evaluations it recorded (-1: none);
  // the number of step lines; the values, for the messages.
  struct Record {
    int64_t stop = -1, last_step = -1;
    std::string values;
  };
  const auto record = [&](int64_t patience) {
    Record r;
    std::ifstream lines(run / "metrics.jsonl");
    double best = 0;
    int64_t since = -1;
    for (std::string line; std::getline(lines, line);) {
      const nlohmann::json j = nlohmann::json::parse(line);
      const int64_t step = j.at("step").get<int64_t>();
      if (!j.contains("qa.retrieval_accuracy")) {
        r.last_step = std::max(r.last_step, step);
        continue;
      }
      const double accuracy = j.at("qa.retrieval_accuracy").get<double>();
      r.values += " " + std::to_string(step) + ":" + std::to_string(accuracy);
      if (since < 0 || accuracy > best) {
        best = accuracy;
        since = 0;
      } else if (++since >= patience && r.stop < 0) {
        r.stop = step;
      }
    }
    return r;
  };
  CliResult r = train(run, eval + " --eval.patience 2");
  ASSERT_EQ(r.code, 0) << r.output;
  const Record first = record(2);
  // What lets this fail: evaluations that stop being better before the run's 8 steps are done.
  ASSERT_GE(first.stop, 0) << "the test needs a metric that stops improving:" << first.values;
  EXPECT_EQ(first.last_step, first.stop) << first.values;
  EXPECT_NE(r.output.find("eval.patience: 2 evaluations have not beaten qa.retrieval_accuracy "), std::string::npos)
      << r.output;
  EXPECT_TRUE(fs::is_directory(run / "checkpoints" / ("step-" + std::string(10 - std::to_string(first.stop).size(), '0') +
                                                      std::to_string(first.stop))));
  EXPECT_TRUE(fs::is_regular_file(run / "export" / "decoder" / "model.safetensors"));

  // The patience is spent by the record: nothing runs.
  r = train(run, "--resume" + eval + " --eval.patience 2");
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_EQ(record(2).last_step, first.stop);
  EXPECT_NE(r.output.find("the run ends at step " + std::to_string(first.stop) + " of 8"), std::string::npos) << r.output;

  // One more evaluation of patience: counted on from the record.
  r = train(run, "--resume" + eval + " --eval.patience 3");
  ASSERT_EQ(r.code, 0) << r.output;
  const Record more = record(3);
  ASSERT_GT(more.last_step, first.stop) << r.output;
  EXPECT_EQ(more.last_step, more.stop < 0 ? 8 : more.stop) << more.values;

  expect_usage_error("--eval.patience 2", {"eval.patience: 2 needs eval.best"});
  expect_usage_error("--eval.patience 2 --eval.dir " + (root() / "data").string() + " --eval.best cs.accuracy",
                     {"eval.patience: 2 needs eval.every > 0"});
  expect_usage_error("--eval.patience -1", {"eval.patience: -1 must be >= 0"});
  expect_usage_error("--early_stopping_patience 3", {"did you mean eval.patience?"});
}

// A run killed after an evaluation that beat the best, but before its next checkpoint: best/ holds
// a best from beyond the checkpoint, which the resumed run evaluates again. The count must be
// the record's (the uninterrupted run's), not "none since best.json's step": with a metric that
// improves at every evaluation, the resumed run reaches its last step as the uninterrupted one.
TEST_F(TrainOptionsCli, PatienceAfterACrashCountsFromTheRecord) {
  const std::string args = " --train.steps 8 --checkpoint.every 4 --eval.dir " + (root() / "data").string() +
                           " --eval.examples 8 --eval.every 1 --eval.best ed.loss --eval.patience 2";
  const fs::path run = root() / "patience-crash";
  CliResult r = train(run, args, "QARAC_FAULT=kill:0:7");
  ASSERT_NE(r.code, 0) << "the run was to be killed at step 7: " << r.output;
  ASSERT_TRUE(fs::exists(run / "best" / "best.json"));
  r = train(run, "--resume" + args);
  ASSERT_EQ(r.code, 0) << r.output;
  std::ifstream lines(run / "metrics.jsonl");
  int64_t last_step = -1, since = 0;
  double best = 0;
  bool any = false;
  for (std::string line; std::getline(lines, line);) {
    const nlohmann::json j = nlohmann::json::parse(line);
    if (!j.contains("ed.loss")) {
      last_step = std::max(last_step, j.at("step").get<int64_t>());
      continue;
    }
    const double loss = j.at("ed.loss").get<double>();
    if (!any || loss < best) {
      best = loss;
      since = 0;
      any = true;
    } else {
      ASSERT_LT(++since, 2) << "the test needs an ed.loss that improves within every two evaluations";
    }
  }
  EXPECT_EQ(last_step, 8) << r.output;
  EXPECT_EQ(r.output.find("eval.patience: "), std::string::npos) << r.output;
}
