// What a configuration may be: the checks of its values, the settings a mode ignores, and which
// of its settings a checkpoint fixes for the runs that resume it.
#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdlib>
#include <initializer_list>
#include <limits>
#include <map>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include "core/error.h"
#include "core/rng.h"
#include "data/task.h"
#include "train/best_export.h"
#include "train/checkpoint.h"
#include "train/config.h"

namespace qarac {

std::string no_effect(const TrainConfig& c, const std::string& key) {
  const auto among = [&](std::initializer_list<const char*> keys) {
    return std::any_of(keys.begin(), keys.end(), [&](const char* k) { return key == k; });
  };
  const bool size = among({"model.hidden", "model.layers", "model.heads", "model.ffn", "model.max_positions"});
  if (!c.pretraining()) {
    if (size) return "with model.mode qarac (the sizes are model.base's)";
    if (key == "model.tokenizer")
      return "with model.mode qarac (the vocabulary is model.base's; eval.tokenizer sets the forgetting monitor's)";
    if (!c.rehearsal() && among({"model.mask_probability", "task.mlm.batch", "task.mlm.head"}))
      return "while task.mlm.weight is 0 (rehearsal off)";
  } else {
    if (!c.base.empty() && size) return "when model.base is given (the sizes are the base's)";
    if (among({"model.share_encoder_base", "model.tie_lm_head", "eval.tokenizer", "eval.decoded", "task.ed.weight"}))
      return "with model.mode mlm (one model, one objective)";
    if (among({"task.qa.weight", "task.qa.batch", "task.rs.weight", "task.rs.batch", "task.cs.weight", "task.cs.batch",
               "task.mlm.weight", "task.mlm.batch", "task.qa.objective", "task.qa.temperature"}))
      return "with model.mode mlm (it trains on the text stream: task.ed.batch)";
    if (key == "task.mlm.head") return "with model.mode mlm (rehearsal is a model.mode qarac task)";
  }
  if (key == "task.qa.temperature" && !c.contrastive_qa()) return "with task.qa.objective " + c.qa_objective;
  // The optimizer's: only a value other than the default, which the user meant to act (`false`
  // under adamw read as Adam with L2 decay); the defaults stand in every config.ini of earlier
  // builds and in the shipped templates. Exact names only: a misspelt one is refused by its own
  // check, not called a reason here.
  const TrainConfig defaults;
  if (c.optimizer == "adamw" && ((key == "optimizer.momentum_decay" && c.momentum_decay != defaults.momentum_decay) ||
                                 (key == "optimizer.decoupled_weight_decay" &&
                                  c.decoupled_weight_decay != defaults.decoupled_weight_decay)))
    return "with optimizer.name adamw (nadam only; adamw always decouples its weight decay)";
  if (key == "optimizer.final" && c.decay == "constant" && c.final_lr != defaults.final_lr)
    return "with optimizer.decay constant";
  if (key == "optimizer.decay_exempt" && c.weight_decay == 0 && c.decay_exempt != defaults.decay_exempt)
    return "while optimizer.weight_decay is 0";
  if (key == "parallel.share_gpus" && c.device != "cuda" && c.share_gpus) return "with train.device " + c.device;
  // Without eval.dir nothing is evaluated; the defaults stand in config.ini and the templates,
  // which launch/scaling.sh runs with eval.dir "".
  if (c.eval_dir.empty() && ((key == "eval.examples" && c.eval_examples != defaults.eval_examples) ||
                             (key == "eval.batch" && c.eval_batch != defaults.eval_batch) ||
                             (key == "eval.decoded" && c.eval_decoded != defaults.eval_decoded)))
    return "without eval.dir (nothing is evaluated)";
  return "";
}

namespace {

// Sanity bounds: far beyond any machine, so that what is refused is a typo (a batch of 10^8
// examples filled 24 GB before anything was said).
constexpr int64_t kMaxRanks = 1 << 20;
constexpr int64_t kMaxBatch = 1 << 24;

void check_each_value(const TrainConfig& c) {
  QARAC_INPUT_CHECK(!c.output.empty() || c.show_plan > 0, "output: required (the run directory; --output DIR)");
  QARAC_INPUT_CHECK(c.mode == "qarac" || c.mode == "mlm", "model.mode: '", c.mode, "' must be qarac or mlm");
  QARAC_INPUT_CHECK(c.pretraining() || !c.base.empty(), "model.base: required (a Hugging Face RoBERTa directory)");
  if (c.pretraining()) {
    QARAC_INPUT_CHECK(!c.tokenizer.empty(), "model.tokenizer: required with model.mode mlm (a tokenizer directory)");
    QARAC_INPUT_CHECK(c.hidden > 0 && c.layers > 0 && c.heads > 0 && c.hidden % c.heads == 0,
                      "model.hidden, model.layers, model.heads: positive, hidden divisible by heads (got ",
                      c.hidden, ", ", c.layers, ", ", c.heads, ")");
    QARAC_INPUT_CHECK(c.ffn >= 0 && c.max_positions > 2, "model.ffn must be >= 0 and model.max_positions > 2");
    // The bounds read_hf_config puts on a base's sizes (io/hf_config.cpp), so that nothing that
    // multiplies them overflows (model.ffn 2^62 made a negative dimension; heads <= hidden).
    struct Size {
      const char* key;
      int64_t value, max;
    };
    for (const Size& s : {Size{"model.hidden", c.hidden, 1 << 16}, Size{"model.layers", c.layers, 1 << 10},
                          Size{"model.ffn", c.ffn, 1 << 18}, Size{"model.max_positions", c.max_positions, 1 << 20}})
      QARAC_INPUT_CHECK(s.value <= s.max, s.key, ": ", s.value, " is more than the ", s.max,
                        " this implementation takes");
  }
  if (c.pretraining() || c.rehearsal()) {
    QARAC_INPUT_CHECK(c.mask_probability > 0 && c.mask_probability < 1, "model.mask_probability: ",
                      c.mask_probability, " must lie in (0, 1)");
    QARAC_INPUT_CHECK(c.mask_probability >= kUniformStep, "model.mask_probability: ", c.mask_probability,
                      " is below 2^-24 (", kUniformStep, "), the step of the masking draws: it would mask 2^-24 "
                      "of the tokens, not what was asked");
  }
  // What decides which settings have an effect (the rehearsal's weight, the QA objective), checked
  // first: a wrong value would call a setting ignored that is not.
  QARAC_INPUT_CHECK(c.qa_objective == "mse" || c.qa_objective == "contrastive", "task.qa.objective: '",
                    c.qa_objective, "' must be mse or contrastive");
  // The models compute in float32 (bf16 has its range; f64 runs aside): a rate, a decay or a
  // scale beyond its largest number is an infinity there, and one below its smallest is 0 (eps 0
  // makes 0/0 of an unused weight's update; lr 0 is meant when written so).
  const auto check_float32 = [&c](const std::string& key, double value) {
    if (c.dtype == "f64") return;  // the CPU's reference precision computes in double
    QARAC_INPUT_CHECK(std::fabs(value) <= std::numeric_limits<float>::max(), key, ": ", value,
                      " overflows float32, in which the models compute (largest ", std::numeric_limits<float>::max(), ")");
    QARAC_INPUT_CHECK(value == 0 || static_cast<float>(value) != 0, key, ": ", value,
                      " is 0 in float32, in which the models compute (smallest ", std::numeric_limits<float>::denorm_min(),
                      ")");
  };
  for (int t = 0; t < data::kTaskCount; ++t) {
    const std::string key = std::string("task.") + data::task_short_name(static_cast<data::Task>(t)) + ".weight";
    QARAC_INPUT_CHECK(std::isfinite(c.task[t].weight), key, ": ", c.task[t].weight, " is not a finite number");
    QARAC_INPUT_CHECK(c.task[t].weight >= 0, key, ": ", c.task[t].weight, " must be >= 0");
    check_float32(key, c.task[t].weight);
  }
  // Fine-tuning where every task weighs 0 trains nothing: each step's gradients are 0.
  bool trained = c.pretraining();
  for (int t = 0; t < data::kTaskCount; ++t) trained = trained || c.task[t].weight > 0;
  QARAC_INPUT_CHECK(trained, "task.ed.weight, task.qa.weight, task.rs.weight, task.cs.weight and task.mlm.weight are "
                    "all 0: no task would train the models (give one a weight above 0)");
  // A setting that the chosen mode ignores is refused: the user meant something by it. All of
  // them at once, so that one fix suffices.
  std::string ignored;
  size_t count = 0;
  for (const std::string& key : c.given) {
    const std::string why = no_effect(c, key);
    if (why.empty()) continue;
    // The first key's line in the --config file leads the message (with_config_line); the
    // others' go beside them.
    const auto in_file = c.set_in_file.find(key);
    const std::string where = count > 0 && in_file != c.set_in_file.end() ? " (" + in_file->second + ")" : "";
    ignored += (count++ ? "; " : "") + key + where + ": has no effect " + why;
  }
  QARAC_INPUT_CHECK(count == 0, ignored, count == 1 ? "; remove it" : "; remove them");
  QARAC_INPUT_CHECK(std::isfinite(c.qa_temperature) && c.qa_temperature > 0, "task.qa.temperature: ",
                    c.qa_temperature, " must be a finite number > 0");
  QARAC_INPUT_CHECK(c.mlm_head == "frozen" || c.mlm_head == "trained", "task.mlm.head: '", c.mlm_head,
                    "' must be frozen or trained");
  QARAC_INPUT_CHECK(!c.data_dir.empty(), "data.dir: required (qarac-prep's output directory)");
  QARAC_INPUT_CHECK(c.steps >= 1 && c.steps <= kMaxCheckpointStep, "train.steps: ", c.steps, " must lie between 1 and ",
                    kMaxCheckpointStep);
  QARAC_INPUT_CHECK(c.seed >= 0, "train.seed: ", c.seed, " must be >= 0");
  QARAC_INPUT_CHECK(c.device == "cpu" || c.device == "cuda", "train.device: '", c.device,
                    "' must be cpu or cuda");
  QARAC_INPUT_CHECK(c.dtype == "f32" || c.dtype == "bf16" || c.dtype == "f64", "train.dtype: '", c.dtype,
                    "' must be f32, bf16 or f64");
  QARAC_INPUT_CHECK(c.dtype != "bf16" || c.device == "cuda",
                    "train.dtype: bf16 needs train.device cuda (the CPU computes in f32)");
  QARAC_INPUT_CHECK(c.dtype != "f64" || c.device == "cpu",
                    "train.dtype: f64 is the CPU's reference precision; train.device cuda computes in f32 or bf16");
  QARAC_INPUT_CHECK(c.log_every >= 1, "train.log_every: ", c.log_every, " must be >= 1");
  QARAC_INPUT_CHECK(c.progress == "auto" || c.progress == "plain" || c.progress == "tty", "train.progress: '",
                    c.progress, "' must be auto, plain or tty");
  QARAC_INPUT_CHECK(c.nonfinite == "stop" || c.nonfinite == "skip", "train.nonfinite: '", c.nonfinite,
                    "' must be stop or skip");
  QARAC_INPUT_CHECK(c.micro_tokens >= 0, "train.micro_tokens: ", c.micro_tokens, " must be >= 0 (0: no limit)");
  try {
    optimizer_from_name(c.optimizer);
  } catch (const InputError& e) {
    throw InputError(std::string("optimizer.name: ") + e.what());
  }
  try {
    decay_exempt_from_name(c.decay_exempt);
  } catch (const InputError& e) {
    throw InputError(std::string("optimizer.decay_exempt: ") + e.what());
  }
  // Every real-valued setting is finite: an inf or a nan passes a range check such as >= 0 (or
  // fails it with a misleading message) and turns every loss into nan.
  const std::pair<const char*, double> reals[] = {
      {"optimizer.lr", c.lr},           {"optimizer.eps", c.eps},   {"optimizer.weight_decay", c.weight_decay},
      {"optimizer.momentum_decay", c.momentum_decay}, {"optimizer.clip", c.clip}, {"model.dropout", c.dropout},
      {"model.init_std", c.init_std},   {"parallel.bucket_mb", c.bucket_mb}};
  for (const auto& [key, value] : reals)
    QARAC_INPUT_CHECK(std::isfinite(value), key, ": ", value, " is not a finite number");
  for (const auto& [key, value] : {std::pair<const char*, double>{"optimizer.lr", c.lr}, {"optimizer.eps", c.eps},
                                   {"optimizer.weight_decay", c.weight_decay}, {"model.init_std", c.init_std}})
    check_float32(key, value);
  QARAC_INPUT_CHECK(c.dropout < kDropoutBelow, "model.dropout: ", c.dropout, " must be < 1 - 2^-17 (negative: the base config's)");
  QARAC_INPUT_CHECK(c.dropout <= 0 || c.dropout >= kDropoutSmallest, "model.dropout: ", c.dropout,
                    " rounds to 0 in the 16-bit dropout draws and would drop nothing: use 0 or at least 2^-17 (",
                    kDropoutSmallest, ")");
  QARAC_INPUT_CHECK(c.init_std > 0, "model.init_std: ", c.init_std, " must be > 0");
  QARAC_INPUT_CHECK(c.lr >= 0, "optimizer.lr: ", c.lr, " must be >= 0");
  QARAC_INPUT_CHECK(c.beta1 >= 0 && c.beta1 < 1, "optimizer.beta1: ", c.beta1, " must lie in [0, 1)");
  QARAC_INPUT_CHECK(c.beta2 >= 0 && c.beta2 < 1, "optimizer.beta2: ", c.beta2, " must lie in [0, 1)");
  QARAC_INPUT_CHECK(c.eps > 0, "optimizer.eps: ", c.eps, " must be > 0");
  QARAC_INPUT_CHECK(c.weight_decay >= 0, "optimizer.weight_decay: ", c.weight_decay, " must be >= 0");
  // Decoupled weight decay multiplies every weight by 1 - lr * weight_decay a step: at 0 or below
  // it zeroes or flips them (1e10 at lr 5e-4 multiplied them by -5e6 a step, unsaid).
  if (c.optimizer == "adamw" || c.decoupled_weight_decay)
    QARAC_INPUT_CHECK(c.lr * c.weight_decay < 1, "optimizer.weight_decay: ", c.weight_decay, " at optimizer.lr ", c.lr,
                      " multiplies every weight by 1 - lr * weight_decay = ", 1 - c.lr * c.weight_decay,
                      " a step (weight decay shrinks the weights: lr * weight_decay must stay below 1)");
  QARAC_INPUT_CHECK(c.momentum_decay >= 0, "optimizer.momentum_decay: ", c.momentum_decay,
                    " must be >= 0");
  QARAC_INPUT_CHECK(c.warmup >= 0, "optimizer.warmup: ", c.warmup, " must be >= 0");
  // A warmup as long as the run never reaches optimizer.lr: the whole run trains at a fraction of
  // the rate it asks for, and the decay never starts.
  QARAC_INPUT_CHECK(c.warmup == 0 || c.warmup < c.steps, "optimizer.warmup: ", c.warmup,
                    " steps is not shorter than the run (train.steps ", c.steps,
                    "): the learning rate would never reach optimizer.lr; shorten the warmup or set it to 0");
  Decay decay = Decay::linear;
  try {
    decay = decay_from_name(c.decay);
  } catch (const InputError& e) {
    throw InputError(std::string("optimizer.decay: ") + e.what());
  }
  QARAC_INPUT_CHECK(c.final_lr >= 0 && c.final_lr <= 1, "optimizer.final: ", c.final_lr,
                    " must lie in [0, 1]");
  QARAC_INPUT_CHECK(decay != Decay::exponential || c.final_lr > 0,
                    "optimizer.final: exponential decay needs a final fraction > 0");
  QARAC_INPUT_CHECK(c.clip >= 0, "optimizer.clip: ", c.clip, " must be >= 0 (0: no clipping)");
  QARAC_INPUT_CHECK(c.checkpoint_every >= 0, "checkpoint.every: ", c.checkpoint_every, " must be >= 0");
  // The checkpoint writer counts them in an int (2^32 + 1 would keep 1, 2^31 fail the first save).
  QARAC_INPUT_CHECK(c.checkpoint_keep >= 0 && c.checkpoint_keep <= std::numeric_limits<int>::max(),
                    "checkpoint.keep: ", c.checkpoint_keep, " must lie between 0 and ",
                    std::numeric_limits<int>::max(), " (0 keeps all)");
  QARAC_INPUT_CHECK(c.eval_every >= 0, "eval.every: ", c.eval_every, " must be >= 0");
  QARAC_INPUT_CHECK(c.eval_every == 0 || !c.eval_dir.empty(), "eval.every: ", c.eval_every,
                    " needs eval.dir (the held-out task streams); without it nothing is evaluated");
  QARAC_INPUT_CHECK(c.eval_examples >= 1, "eval.examples: ", c.eval_examples, " must be >= 1");
  QARAC_INPUT_CHECK(c.eval_batch >= 1, "eval.batch: ", c.eval_batch, " must be >= 1");
  QARAC_INPUT_CHECK(c.eval_decoded >= 0, "eval.decoded: ", c.eval_decoded, " must be >= 0");
  if (!c.eval_best.empty()) {
    QARAC_INPUT_CHECK(!c.eval_dir.empty(), "eval.best: ", printable(c.eval_best),
                      " needs eval.dir (the held-out task streams); without it nothing is evaluated");
    const std::vector<std::string>& names = best_metric_names(c.pretraining());
    QARAC_INPUT_CHECK(std::find(names.begin(), names.end(), c.eval_best) != names.end(), "eval.best: '",
                      printable(c.eval_best), "' is not a held-out metric of model.mode ", c.mode, " (", joined(names),
                      ")");
    // What the evaluation gives whatever the data: said now, not after the models are built.
    QARAC_INPUT_CHECK(c.eval_best != "forgetting.mlm_loss" || !c.eval_tokenizer.empty(),
                      "eval.best: forgetting.mlm_loss needs eval.tokenizer (the forgetting monitor masks with its <mask>)");
    QARAC_INPUT_CHECK(c.eval_best.find("token_accuracy") == std::string::npos || c.eval_decoded > 0, "eval.best: ",
                      c.eval_best, " needs eval.decoded > 0 (the token accuracy is of the greedily decoded examples)");
  }
  QARAC_INPUT_CHECK(c.eval_patience >= 0, "eval.patience: ", c.eval_patience, " must be >= 0 (0: never stop early)");
  if (c.eval_patience > 0) {
    QARAC_INPUT_CHECK(!c.eval_best.empty(), "eval.patience: ", c.eval_patience,
                      " needs eval.best (the held-out metric whose evaluations it counts)");
    QARAC_INPUT_CHECK(c.eval_every > 0, "eval.patience: ", c.eval_patience,
                      " needs eval.every > 0 (otherwise the run evaluates at step 0 and at its end only)");
  }
  QARAC_INPUT_CHECK(c.backend == "auto" || c.backend == "mpi" || c.backend == "nccl", "parallel.backend: '",
                    c.backend, "' is not one of auto, mpi, nccl");
  // Every rank holds the answer encoder, so with shared GPUs its NCCL group would hold two ranks
  // on one GPU, which NCCL refuses (or hangs on) when the group is created.
  QARAC_INPUT_CHECK(!c.share_gpus || c.device != "cuda" || c.backend == "mpi",
                    "parallel.share_gpus needs parallel.backend mpi on cuda (parallel.backend ", c.backend,
                    " reduces through NCCL, which refuses two ranks of one communicator on one GPU)");
  // The deadline is a steady_clock time point in nanoseconds: 1e7 s (116 days) is far beyond any
  // job and far below the 292 years an int64 of nanoseconds holds. Below a second every wait for
  // a slower rank would end the job (1e-320 was a deadline of 0 ns).
  QARAC_INPUT_CHECK(c.timeout >= 1 && c.timeout <= 1e7, "parallel.timeout: ", c.timeout,
                    " must be at least 1 and at most 1e7 seconds");
  // Bounds that keep the conversions to bytes and ranks exact; far beyond any real setting.
  QARAC_INPUT_CHECK(c.bucket_mb >= 1.0 / 1024 && c.bucket_mb <= (1 << 20), "parallel.bucket_mb: ", c.bucket_mb,
                    " must lie between 1/1024 (1 KiB) and 1048576 (1 TiB)");
  QARAC_INPUT_CHECK(c.check_every >= 0, "parallel.check_every: ", c.check_every, " must be >= 0");
  QARAC_INPUT_CHECK(c.show_plan >= 0 && c.show_plan <= kMaxRanks, "parallel.show_plan: ", c.show_plan,
                    " must lie between 0 and ", kMaxRanks, " ranks");
  for (int t = 0; t < data::kTaskCount; ++t) {
    const std::string key = std::string("task.") + data::task_short_name(static_cast<data::Task>(t));
    QARAC_INPUT_CHECK(c.task[t].batch >= 1 && c.task[t].batch <= kMaxBatch, key, ".batch: ", c.task[t].batch,
                      " must lie between 1 and ", kMaxBatch, " (examples of the task per step, over all ranks)");
  }
  const int64_t qa_batch = c.task[static_cast<int>(data::Task::question_answering)].batch;
  QARAC_INPUT_CHECK(!c.contrastive_qa() || qa_batch >= 2, "task.qa.batch: ", qa_batch,
                    " with task.qa.objective contrastive, whose negatives of a question are the batch's other "
                    "answers: one example has none, and trains nothing");
}

}  // namespace

InputError with_config_line(const TrainConfig& c, const InputError& error) {
  const std::string message = error.what();
  const auto in_key = [](char ch) { return std::isalnum(static_cast<unsigned char>(ch)) || ch == '_' || ch == '.'; };
  const auto begin = message.rfind("--", 0) == 0 ? message.begin() + 2 : message.begin();
  const auto found = c.set_in_file.find(std::string(begin, std::find_if_not(begin, message.end(), in_key)));
  return found == c.set_in_file.end() ? error : InputError(found->second + ": " + message);
}

void check_values(const TrainConfig& c) {
  try {
    check_each_value(c);
  } catch (const InputError& e) {
    throw with_config_line(c, e);
  }
}

std::vector<IniEntry> ini_entries(const std::string& text) {
  std::vector<IniEntry> entries;
  std::istringstream in(text);
  std::string line, section;
  const auto trim = [](const std::string& s) {
    const size_t b = s.find_first_not_of(" \t\r");
    return b == std::string::npos ? std::string() : s.substr(b, s.find_last_not_of(" \t\r") - b + 1);
  };
  for (int n = 1; std::getline(in, line); ++n) {
    line = trim(line);
    if (line.empty() || line[0] == '#' || line[0] == ';') continue;
    if (line.front() == '[' && line.back() == ']') {
      section = trim(line.substr(1, line.size() - 2));
      continue;
    }
    const size_t eq = line.find('=');
    if (eq == std::string::npos) continue;
    const std::string key = trim(line.substr(0, eq));
    entries.push_back({section.empty() ? key : section + "." + key, trim(line.substr(eq + 1)), n});
  }
  return entries;
}

namespace {

// key -> value of INI text as to_ini writes it (each key once).
std::map<std::string, std::string> read_ini(const std::string& text) {
  std::map<std::string, std::string> values;
  for (IniEntry& e : ini_entries(text)) values[e.key] = std::move(e.value);
  return values;
}

}  // namespace

std::vector<std::string> resume_changes(const TrainConfig& config, const std::string& saved_ini) {
  const std::map<std::string, std::string> saved = read_ini(saved_ini), now = read_ini(to_ini(config));
  std::vector<std::string> changes;
  const std::map<std::string, std::string> defaults = read_ini(to_ini(TrainConfig{}));
  for (const auto& [key, value] : now) {
    // The run's length too where the rates depend on it: a decay spans train.steps, so another
    // length moves the rate of every step from here on (a rate that rises again, for a longer run).
    const bool rates = key.rfind("optimizer.", 0) == 0 || (key == "train.steps" && config.decay != "constant");
    // The masking changes the masked-LM objective where one is trained (mlm, rehearsal; to_ini
    // leaves it out elsewhere).
    if (!rates && key != "model.mask_probability" && key.rfind("task.", 0) != 0) continue;
    // Absent: a key of a later version than the checkpoint's run, which ran with its default.
    const auto it = saved.find(key);
    const auto fallback = defaults.find(key);
    const std::string* was = it != saved.end() ? &it->second : fallback != defaults.end() ? &fallback->second : nullptr;
    if (was && *was != value) changes.push_back(key + " " + *was + " -> " + value);
  }
  return changes;
}

std::string resume_mismatch(const TrainConfig& config, const std::string& saved_ini) {
  // What fixes the parameter list, the data order and batches and the random streams; the rest
  // (steps, rates, intervals, paths, the world size, the task plan, micro-batching) may change
  // between a run and its resumption.
  std::vector<std::string> fixed = {"model.mode", "model.share_encoder_base", "model.tie_lm_head",
                                    "model.dropout", "train.seed", "train.dtype", "optimizer.name"};
  for (int t = 0; t < data::kQaracTaskCount; ++t)
    fixed.push_back(std::string("task.") + data::task_short_name(static_cast<data::Task>(t)) + ".batch");
  const std::map<std::string, std::string> saved = read_ini(saved_ini), now = read_ini(to_ini(config));
  // The mode first: under another one, every other difference follows from it.
  const auto mode = saved.find("model.mode");
  const std::string saved_mode = mode == saved.end() ? "(unset)" : mode->second;
  if (saved_mode != config.mode)
    return "model.mode was " + saved_mode + " in the checkpoint's run and is " + config.mode + " now (it must match)";
  // Rehearsal on or off: a run that had it off (checkpoints from before it have no task.mlm keys)
  // holds no position of its stream to go on from, and a trained head only while it was on. Its
  // weight may change otherwise, as every task's may.
  const auto weight = saved.find("task.mlm.weight");
  double saved_weight = 0;
  if (weight != saved.end()) {
    char* end = nullptr;
    saved_weight = std::strtod(weight->second.c_str(), &end);
    if (end == weight->second.c_str() || *end != '\0' || !std::isfinite(saved_weight))
      return "task.mlm.weight is '" + weight->second + "' in the checkpoint's run, not a number";
  }
  const bool was_on = saved_weight > 0;
  if (was_on && !config.rehearsal())
    return "task.mlm.weight: rehearsal was on in the checkpoint's run and is off now (it must stay on: resume "
           "with a positive weight)";
  if (!was_on && config.rehearsal())
    return "task.mlm.weight: rehearsal was off in the checkpoint's run and is on now (the checkpoint holds no "
           "position of the rehearsal stream to go on from; rehearsal needs a new run)";
  if (was_on)
    for (const char* key : {"task.mlm.batch", "task.mlm.head"}) fixed.push_back(key);
  for (const std::string& key : fixed) {
    // One that has no effect in this run's mode (and that config.ini leaves out) fixes nothing.
    if (!no_effect(config, key).empty()) continue;
    const auto it = saved.find(key);
    const std::string was = it == saved.end() ? "(unset)" : it->second;
    if (was != now.at(key))
      return key + " was " + was + " in the checkpoint's run and is " + now.at(key) + " now (it must match)";
  }
  return "";
}

}  // namespace qarac
