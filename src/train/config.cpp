// Declares every option of qarac-train once (key, field, default, help), which gives the parser,
// --help and the INI writer the same list.
#include "train/config.h"

#include <boost/program_options.hpp>

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iomanip>
#include <iterator>
#include <map>
#include <memory>
#include <set>
#include <ostream>
#include <sstream>
#include <type_traits>
#include <utility>
#include <vector>

#include "core/atomic_file.h"
#include "core/error.h"
#include "train/run_dir.h"

namespace qarac {
namespace {

namespace po = boost::program_options;

// The shortest text that reads back as the same double, so the INI round-trips and --help shows
// 2e-05 rather than 2.0000000000000002e-05. strtod, not stod: stod throws out_of_range for a
// subnormal value (4.9e-324), which the options accept.
std::string format_value(double v) {
  std::string text;
  for (int precision = 6; precision <= 17; ++precision) {
    std::ostringstream os;
    os << std::setprecision(precision) << v;
    text = os.str();
    if (std::strtod(text.c_str(), nullptr) == v) break;
  }
  return text;
}
std::string format_value(int64_t v) { return std::to_string(v); }
std::string format_value(bool v) { return v ? "true" : "false"; }
std::string format_value(const std::string& v) { return v; }

constexpr unsigned kHelpWidth = 100;  // --help's line length

struct Key {
  std::string name;
  std::function<std::string()> value;
};

// The options bound to the fields of one TrainConfig.
struct Declarations {
  po::options_description command_line{"Command line", kHelpWidth, kHelpWidth / 2};
  // Top level of the INI file, [model], ...: a deque, so the references section() hands out
  // stay valid while later sections are added.
  std::deque<po::options_description> sections;
  std::vector<Key> keys;                          // every INI key, in declaration order

  po::options_description& section(const std::string& caption) {
    sections.emplace_back(caption, kHelpWidth, kHelpWidth / 2);
    return sections.back();
  }
  std::set<std::string> flags;                    // the bool keys
  template <class T>
  void add(po::options_description& group, const std::string& name, T* field, const char* help) {
    auto* semantic = po::value<T>(field)->default_value(*field, format_value(*field));
    if constexpr (std::is_same_v<T, bool>) {
      semantic->implicit_value(true, "true");
      flags.insert(name);
    }
    group.add_options()(name.c_str(), semantic, help);
    keys.push_back({name, [field] { return format_value(*field); }});
  }
  // A file or directory, `required` without a default (check_values requires it). config.ini
  // writes it absolute, so that the file reads back from any directory: a resumed job does not
  // always start where the first one did.
  void add_path(po::options_description& group, const std::string& name, std::string* field, const char* help,
                bool required = false) {
    auto* semantic = po::value<std::string>(field);
    if (!required) semantic->default_value(*field, format_value(*field));
    group.add_options()(name.c_str(), semantic, help);
    keys.push_back({name, [field] { return field->empty() ? *field : std::filesystem::absolute(*field).string(); }});
  }
  po::options_description file_options() const {
    po::options_description all;
    for (const auto& s : sections) all.add(s);
    return all;
  }
};

std::unique_ptr<Declarations> declare(TrainConfig& c) {
  auto d = std::make_unique<Declarations>();
  d->command_line.add_options()
      ("help", "print the options with their defaults and exit")
      ("version", "print the version, the git commit and the libraries' versions, and exit")
      ("config", po::value<std::string>(), "INI file of options (a regular text file of at most 1 MiB, not a pipe; errors name its "
       "line); the command line overrides it")
      ("resume", po::bool_switch(&c.resume), "continue from the newest valid checkpoint in the output directory");

  auto& top = d->section("Run (top of the INI file)");
  d->add_path(top, "output", &c.output, "(required) run directory: metrics.jsonl, checkpoints/, export/ (and best/ with eval.best); must not exist or be empty unless --resume", true);

  auto& model = d->section("[model]");
  d->add(model, "model.mode", &c.mode, "qarac: fine-tune QE, AE and D on the four tasks; mlm: pre-train a RoBERTa base by masked language modelling on the text stream");
  d->add_path(model, "model.base", &c.base, "(required for qarac) pre-trained Hugging Face RoBERTa directory (config.json, model.safetensors); mlm: optional starting point", true);
  d->add(model, "model.share_encoder_base", &c.share_encoder_base, "question and answer encoders share one base");
  d->add(model, "model.tie_lm_head", &c.tie_lm_head, "the LM head's output matrix is the decoder's word embeddings");
  d->add(model, "model.dropout", &c.dropout, "hidden and attention dropout; < 0: the base config's");
  d->add(model, "model.init_std", &c.init_std, "standard deviation of the new heads' initial weights");
  d->add_path(model, "model.tokenizer", &c.tokenizer, "mlm: the tokenizer directory (vocabulary size, <mask>)");
  d->add(model, "model.hidden", &c.hidden, "mlm without a base: hidden size of the new model");
  d->add(model, "model.layers", &c.layers, "mlm without a base: transformer layers");
  d->add(model, "model.heads", &c.heads, "mlm without a base: attention heads");
  d->add(model, "model.ffn", &c.ffn, "mlm without a base: feed-forward size (0: 4 hidden)");
  d->add(model, "model.max_positions", &c.max_positions, "mlm without a base: longest sequence + 2 (RoBERTa's position table)");
  d->add(model, "model.mask_probability", &c.mask_probability, "mlm, and qarac with rehearsal (task.mlm.weight > 0): share of the tokens masked");

  auto& data = d->section("[data]");
  d->add_path(data, "data.dir", &c.data_dir, "(required) task-stream files from qarac-prep (<dir>/<task>.h5)", true);

  auto& train = d->section("[train]");
  d->add(train, "train.steps", &c.steps, "optimizer steps of the run");
  d->add(train, "train.seed", &c.seed, "seed of the heads' initialisation, the data order and dropout");
  d->add(train, "train.device", &c.device, "cpu or cuda");
  d->add(train, "train.dtype", &c.dtype, "compute dtype: f32, bf16 on cuda (master weights stay f32), or f64 on cpu (reference numerics: master weights and moments in f64)");
  d->add(train, "train.log_every", &c.log_every, "progress line every N steps when stdout is not a terminal (the losses of that step, not a mean over the N; metrics.jsonl holds every step)");
  d->add(train, "train.progress", &c.progress, "the progress line: tty (rewritten in place every step), plain (a line every train.log_every steps), auto (tty when the standard output is a terminal that is not TERM=dumb and no MPI launcher or Slurm forwards it)");
  d->add(train, "train.nonfinite", &c.nonfinite, "a step whose loss or gradient norm is not finite: stop (the run ends before the update, naming the step and the task) or skip (its update is not applied; counted in metrics.jsonl as skipped_steps; the run ends when the weights themselves are not finite, or after 10 skipped steps in a row)");
  d->add(train, "train.micro_tokens", &c.micro_tokens, "most tokens (all fields) a rank runs in one forward/backward: a larger share of a global batch is split into micro-batches whose gradients accumulate; 0: no limit");

  auto& opt = d->section("[optimizer]");
  d->add(opt, "optimizer.name", &c.optimizer, "adamw, or nadam (torch.optim.NAdam's update, for the QARAC reference; the weight decay keeps this tool's defaults, torch's are weight_decay 0 and decoupled_weight_decay false)");
  d->add(opt, "optimizer.lr", &c.lr, "peak learning rate");
  d->add(opt, "optimizer.beta1", &c.beta1, "first-moment decay");
  d->add(opt, "optimizer.beta2", &c.beta2, "second-moment decay");
  d->add(opt, "optimizer.eps", &c.eps, "denominator epsilon");
  d->add(opt, "optimizer.weight_decay", &c.weight_decay, "weight decay");
  d->add(opt, "optimizer.decay_exempt", &c.decay_exempt, "parameters the weight decay leaves out: none (every parameter, as torch.optim given a whole model) or bias_norm (biases and LayerNorm weights, as Hugging Face's Trainer)");
  d->add(opt, "optimizer.momentum_decay", &c.momentum_decay, "nadam: momentum decay psi");
  d->add(opt, "optimizer.decoupled_weight_decay", &c.decoupled_weight_decay, "nadam: decoupled (AdamW-style) weight decay instead of L2");
  d->add(opt, "optimizer.warmup", &c.warmup, "steps of linear warmup from 0 (fewer than train.steps; 0: none)");
  d->add(opt, "optimizer.decay", &c.decay, "after warmup: constant, linear, cosine or exponential");
  d->add(opt, "optimizer.final", &c.final_lr, "final learning rate as a fraction of lr (exponential: > 0)");
  d->add(opt, "optimizer.clip", &c.clip, "clip the global gradient norm to this; 0: no clipping");

  auto& ckpt = d->section("[checkpoint]");
  d->add(ckpt, "checkpoint.every", &c.checkpoint_every, "checkpoint every N steps (and at the end); 0: only at the end");
  d->add(ckpt, "checkpoint.keep", &c.checkpoint_keep, "keep the newest N checkpoints; 0: all");

  auto& eval = d->section("[eval]");
  d->add(eval, "eval.every", &c.eval_every, "evaluate every N steps, at step 0 and at the end; 0: at step 0 and at the end only");
  d->add_path(eval, "eval.dir", &c.eval_dir, "held-out task streams from qarac-prep; empty: no evaluation");
  d->add(eval, "eval.examples", &c.eval_examples, "held-out examples per task (the first of each file)");
  d->add(eval, "eval.batch", &c.eval_batch, "held-out examples per forward pass (and with train.micro_tokens, at most that many tokens): the evaluation's memory is that of one pass");
  d->add(eval, "eval.decoded", &c.eval_decoded, "examples decoded greedily per decoder task (token accuracy; 0: none, no token accuracy)");
  d->add_path(eval, "eval.tokenizer", &c.eval_tokenizer, "tokenizer directory: with eval.dir, turns on the forgetting monitor (MLM loss with the base's head); also gives rehearsal its <mask>, and the exports their tokenizer when model.base holds none");
  d->add(eval, "eval.best", &c.eval_best, "a held-out metric (qa.selection_mrr, cs.accuracy, forgetting.mlm_loss, mlm.loss, ...): the models of its best evaluation so far are exported to <output>/best/, with best.json (lower is better for the losses, higher for the rest); empty: none");
  d->add(eval, "eval.patience", &c.eval_patience, "stop the run (checkpoint and export as at its end) after this many evaluations in a row that do not beat eval.best's best (a tie does not); 0: never");

  auto& parallel = d->section("[parallel]");
  d->add(parallel, "parallel.tasks", &c.tasks, "task plan: auto, or ranks per task, e.g. ed:2,qa:1,rs:2,cs:1");
  d->add(parallel, "parallel.backend", &c.backend, "gradient all-reduce: auto (nccl on cuda, mpi on cpu), mpi or nccl");
  d->add(parallel, "parallel.timeout", &c.timeout, "seconds a wait on other ranks may take before the job is aborted with a message (longer than rank 0's evaluations, which the other ranks wait for)");
  d->add(parallel, "parallel.bucket_mb", &c.bucket_mb, "gradient all-reduce bucket size, MiB");
  d->add(parallel, "parallel.check_every", &c.check_every, "compare a checksum of every model's replicas every N steps (and at the end); 0: only at the end");
  d->add(parallel, "parallel.share_gpus", &c.share_gpus, "let several ranks of a node use one GPU when it has fewer GPUs than ranks (otherwise an error); needs parallel.backend mpi, since NCCL refuses two ranks of one communicator on one GPU");
  d->add(parallel, "parallel.show_plan", &c.show_plan, "> 0: print the task plan of that many ranks, each task's global batch and each rank's expected share of the step, and exit without training");

  auto& task = d->section("[task] (per task: ed, qa, rs, cs; mlm: rehearsal)");
  for (int t = 0; t < data::kQaracTaskCount; ++t) {
    const std::string prefix = std::string("task.") + data::task_short_name(static_cast<data::Task>(t)) + ".";
    d->add(task, prefix + "weight", &c.task[t].weight, "loss weight w_t");
    d->add(task, prefix + "batch", &c.task[t].batch, "global batch: examples of the task per optimizer step, over all its ranks, whatever the world size");
  }
  d->add(task, "task.qa.objective", &c.qa_objective, "mse (QARAC's: MSE(QE(q) - AE(a), 0)) or contrastive (symmetric InfoNCE over the global QA batch, the other answers as negatives)");
  d->add(task, "task.qa.temperature", &c.qa_temperature, "contrastive: the logits are -|q - a|^2 / temperature");
  TaskSettings& mlm = c.task[static_cast<int>(data::Task::masked_lm)];
  d->add(task, "task.mlm.weight", &mlm.weight, "rehearsal: weight of a fifth task, masked language modelling of the text stream through the answer encoder's base and the base's MLM head, against forgetting; 0: off");
  d->add(task, "task.mlm.batch", &mlm.batch, "rehearsal: global batch of texts per optimizer step, over all its ranks");
  d->add(task, "task.mlm.head", &c.mlm_head, "rehearsal: the base's MLM head stays frozen, or is trained with it");
  return d;
}

// Keys of earlier versions and what replaced them: accepted by the parser only to be refused
// with that line.
std::vector<std::pair<std::string, std::string>> removed_keys() {
  std::vector<std::pair<std::string, std::string>> keys;
  for (int t = 0; t < data::kQaracTaskCount; ++t) {
    const std::string prefix = std::string("task.") + data::task_short_name(static_cast<data::Task>(t)) + ".";
    const std::string why = ": removed (a per-rank budget made the result depend on the world size); " + prefix +
                            "batch sets the task's global batch in examples, train.micro_tokens the most tokens "
                            "of one forward pass";
    keys.emplace_back(prefix + "tokens", prefix + "tokens" + why);
    keys.emplace_back(prefix + "examples", prefix + "examples" + why);
  }
  keys.emplace_back("parallel.simulate_world",
                    "parallel.simulate_world: removed; a run computes the same for every world size and task "
                    "plan, so one process (W = 1) is the reference");
  return keys;
}

po::options_description removed_options() {
  po::options_description removed;
  for (const auto& key : removed_keys())
    removed.add_options()(key.first.c_str(), po::value<std::string>());
  return removed;
}

void refuse_removed(const po::variables_map& vm) {
  for (const auto& [key, why] : removed_keys())
    if (vm.count(key)) throw InputError(why);
}

// Edit distance (insertions, deletions, substitutions) between two keys.
size_t edit_distance(const std::string& a, const std::string& b) {
  std::vector<size_t> row(b.size() + 1);
  for (size_t j = 0; j <= b.size(); ++j) row[j] = j;
  for (size_t i = 1; i <= a.size(); ++i) {
    size_t diagonal = row[0];
    row[0] = i;
    for (size_t j = 1; j <= b.size(); ++j) {
      const size_t above = row[j];
      row[j] = std::min({row[j] + 1, row[j - 1] + 1, diagonal + (a[i - 1] == b[j - 1] ? 0 : 1)});
      diagonal = above;
    }
  }
  return row[b.size()];
}

// Whether option names `a` and `b` (the parts after the sections) are one word, or one is the
// other with a "_suffix": "clip" and "clip_norm".
bool same_stem(const std::string& a, const std::string& b) {
  const std::string& shorter = a.size() <= b.size() ? a : b;
  const std::string& longer = a.size() <= b.size() ? b : a;
  return shorter.size() >= 2 && longer.compare(0, shorter.size(), shorter) == 0 &&
         (longer.size() == shorter.size() || longer[shorter.size()] == '_');
}

// The names Hugging Face's TrainingArguments give the settings people carry over most often.
struct FamiliarName {
  const char* familiar;
  const char* key;
};
constexpr FamiliarName kFamiliarNames[] = {
    {"learning_rate", "optimizer.lr"},        {"max_steps", "train.steps"},
    {"max_grad_norm", "optimizer.clip"},      {"adam_beta1", "optimizer.beta1"},
    {"adam_beta2", "optimizer.beta2"},        {"adam_epsilon", "optimizer.eps"},
    {"lr_scheduler_type", "optimizer.decay"}, {"output_dir", "output"},
    {"optim", "optimizer.name"},              {"save_steps", "checkpoint.every"},
    {"save_total_limit", "checkpoint.keep"},  {"eval_steps", "eval.every"},
    {"metric_for_best_model", "eval.best"},   {"load_best_model_at_end", "eval.best (the best models go to <output>/best/)"},
    {"early_stopping_patience", "eval.patience"}, {"eval_strategy", "eval.every"},
    {"save_strategy", "checkpoint.every"},        {"bf16", "train.dtype bf16"},
    {"fp16", "train.dtype bf16 (there is no fp16)"},
    {"resume_from_checkpoint", "--resume (from the newest valid checkpoint of the output directory)"},
    {"gradient_accumulation_steps",
     "train.micro_tokens (a rank's share of a global batch runs in micro-batches of at most that many tokens, "
     "with the same result)"},
    {"gradient_checkpointing", "train.micro_tokens (nothing is recomputed: micro-batches bound the activations)"},
    {"logging_steps", "train.log_every (which shows the step's losses, not a mean)"},
    {"num_train_epochs", "train.steps (a run counts optimizer steps, not epochs)"},
    {"per_device_train_batch_size", "task.ed.batch, task.qa.batch, task.rs.batch and task.cs.batch (global batches)"},
};

// " (did you mean KEY?)" for the declared key closest to an unknown `name`: a key it ends (the
// section left out: "lr" for optimizer.lr), a Hugging Face Trainer name (learning_rate), one it
// abbreviates ("eval.pat") or of the same stem in any section ("train.clip_norm" for
// optimizer.clip), then one a few typos away; "" when none is close.
std::string suggestion(const Declarations& d, const std::string& name) {
  const std::string option = name.substr(name.rfind('.') + 1);  // npos + 1 = 0: no section
  for (const FamiliarName& f : kFamiliarNames)
    if (option == f.familiar) return std::string(" (did you mean ") + f.key + "?)";
  std::string best, stem;
  size_t best_distance = std::max<size_t>(2, name.size() / 4) + 1;
  for (const Key& key : d.keys) {
    const std::string& k = key.name;
    if (k.size() > name.size() && k.compare(k.size() - name.size(), name.size(), name) == 0 &&
        k[k.size() - name.size() - 1] == '.')
      return " (did you mean " + k + "?)";
    // An abbreviation ("eval.pat"), which the parser does not guess.
    if (option.size() >= 3 && k.size() > name.size() && k.compare(0, name.size(), name) == 0 && stem.empty())
      stem = k;
    if (stem.empty() && same_stem(option, k.substr(k.rfind('.') + 1))) stem = k;
    const size_t distance = edit_distance(name, k);
    if (distance < best_distance) {
      best_distance = distance;
      best = k;
    }
  }
  if (!stem.empty()) best = stem;
  return best.empty() ? "" : " (did you mean " + best + "?)";
}

// "line N" of the INI text where `key` (section.name) is set, or "" when not found.
std::string ini_line_of(const std::string& text, const std::string& key) {
  for (const IniEntry& e : ini_entries(text))
    if (e.key == key) return "line " + std::to_string(e.line);
  return "";
}

// An INI file's text: a regular file (a folder opens as an empty file, every setting silently the
// default; a FIFO waits for a writer for good, /dev/zero never ends) of at most kMaxConfigBytes,
// without the UTF-8 byte-order mark that some editors write before "[model]".
constexpr std::uintmax_t kMaxConfigBytes = std::uintmax_t{1} << 20;
std::string read_config_file(const std::string& path) {
  try {
    check_input_file(path);
  } catch (const InputError& e) {
    throw InputError(std::string("--config ") + e.what());
  }
  std::error_code ec;
  const std::uintmax_t bytes = std::filesystem::file_size(path, ec);
  QARAC_INPUT_CHECK(ec || bytes <= kMaxConfigBytes, "--config ", path, ": ", bytes,
                    " bytes, more than an INI configuration holds (at most ", kMaxConfigBytes, ")");
  errno = 0;
  std::ifstream in(path, std::ios::binary);
  QARAC_INPUT_CHECK(in.good(), "--config ", path, ": cannot open the file",
                    errno != 0 ? std::string(": ") + std::strerror(errno) : std::string());
  std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  QARAC_INPUT_CHECK(!in.bad(), "--config ", path, ": read failed");
  if (text.rfind("\xEF\xBB\xBF", 0) == 0) text.erase(0, 3);
  return text;
}

// A run's config.ini names that run's directory as its output: read back from a copy or a move of
// the directory, it would go on in the original (or fail to find it). Where the file lies in a
// run directory (its lock file, which every run leaves, or its metrics.jsonl, for a copy that left
// the dotfile out, say so) other than the output it gives, the output must come from the command
// line.
void refuse_config_of_another_run(const std::string& path, const std::string& output) {
  namespace fs = std::filesystem;
  std::error_code ec;
  const fs::path folder = fs::absolute(path, ec).parent_path();
  if (ec || (!fs::exists(folder / kRunLockName, ec) && !fs::exists(folder / "metrics.jsonl", ec))) return;
  if (fs::equivalent(folder, output, ec)) return;
  throw InputError(detail::concat("--config ", path, " lies in the run directory ", folder.string(),
                                  ", but its output is ", output, " (a copy or a move of that run?): give --output (",
                                  folder.string(), " to go on in this one)"));
}

// Boost's messages (1.74) substitute their placeholders until none is left: a quoted word or line
// holding the one it fills ("--train.steps %value%") would never finish. The placeholder in
// `text`, or nullptr.
const char* boost_placeholder(const std::string& text) {
  for (const char* p : {"%canonical_option%", "%option%", "%original_token%", "%prefix%", "%value%"})
    if (text.find(p) != std::string::npos) return p;
  return nullptr;
}

// Whether the INI reader would read `value` back as another one: it ends a value at a '#' and
// trims the blanks at its ends.
bool ini_alters(const std::string& value) {
  const auto blank = [](char ch) { return ch == ' ' || ch == '\t' || ch == '\r'; };
  return value.find('#') != std::string::npos || (!value.empty() && (blank(value.front()) || blank(value.back())));
}

// Command-line style without short options, so a negative value ("--optimizer.final -1") is a
// value and not an unknown option "-1", and without guessing: "--eval.pat 1" is no
// eval.patience but an unknown option with a suggestion.
constexpr int kStyle = (po::command_line_style::unix_style ^ po::command_line_style::allow_short) &
                       ~po::command_line_style::allow_guessing;

}  // namespace

std::optional<TrainConfig> parse_train_config(int argc, const char* const argv[], std::ostream& help) {
  // One line per word, so that every message quoting one is one line (no INI value holds a line
  // break either).
  for (int i = 1; i < argc; ++i) {
    QARAC_INPUT_CHECK(std::strchr(argv[i], '\n') == nullptr, "command-line argument ", i, " '", printable(argv[i]),
                      "' holds a line break");
    const char* placeholder = boost_placeholder(argv[i]);
    QARAC_INPUT_CHECK(!placeholder, "command-line argument ", i, " '", printable(argv[i]), "' holds ", placeholder,
                      ", a placeholder of the option parser's messages, which cannot quote it");
  }
  TrainConfig c;
  const std::unique_ptr<Declarations> d = declare(c);
  po::options_description all;
  all.add(d->command_line);
  all.add(d->file_options());
  all.add(removed_options());
  po::variables_map vm;
  po::parsed_options parsed(&all);
  try {
    parsed = po::command_line_parser(argc, argv).options(all).style(kStyle).run();
  } catch (const po::unknown_option& e) {
    std::string name = e.get_option_name();
    name.erase(0, name.find_first_not_of('-'));
    name.erase(std::min(name.size(), name.find('=')));  // --bf16=true
    throw InputError(std::string(e.what()) + suggestion(*d, name));
  }
  // Without a positional description Boost keeps stray words aside: a mistyped option ("extra",
  // "lr=3e-5") would otherwise be dropped without a word.
  const std::vector<std::string> stray = po::collect_unrecognized(parsed.options, po::include_positional);
  QARAC_INPUT_CHECK(stray.empty(), "unexpected argument '", stray.empty() ? "" : stray.front(),
                    "': settings are --KEY VALUE (see --help)");
  po::store(parsed, vm);
  refuse_removed(vm);
  // The run's config.ini (to_ini) must read back as this configuration: a path cut at its '#'
  // would name another directory.
  for (const po::option& o : parsed.options)
    for (const std::string& value : o.value)
      QARAC_INPUT_CHECK(o.string_key == "config" || !ini_alters(value), o.string_key, ": '", printable(value),
                        "' cannot be written to the run's config.ini (an INI value ends at a '#' and loses the "
                        "blanks at its ends)");
  if (vm.count("help")) {
    help << "qarac-train [--config FILE] [--KEY VALUE ...] [--resume]\n\n"
            "Fine-tunes the three QARAC models from a pre-trained RoBERTa on the four objectives\n"
            "at once. Every key below can be set in the INI file (the part before the first dot is\n"
            "the section: [optimizer] lr = 3e-5) or on the command line (--optimizer.lr 3e-5);\n"
            "the command line wins.\n\n";
    help << d->command_line << "\n";
    for (const auto& s : d->sections) help << s << "\n";
    help << "Exit status: 0 done, 1 internal error, 2 input error (one line naming the setting or\n"
            "file: bad options and inputs are found before anything is written; a full disk, a\n"
            "non-finite step or non-finite weights during the run, after its last checkpoint; out\n"
            "of memory, with what needs less), 3 communication failure or timeout, 4 replicas\n"
            "diverged, 75 stopped by SIGTERM, SIGUSR1, SIGINT (Ctrl-C) or SIGHUP (its terminal\n"
            "closed) after writing a checkpoint of the last step (--resume goes on; a second\n"
            "signal, 2 s or more after the first, ends the process at once, with the signal's\n"
            "status: 128 + its number).\n";
    return std::nullopt;
  }
  if (vm.count("config")) {
    const std::string path = vm["config"].as<std::string>();
    const std::string text = read_config_file(path);
    std::istringstream lines(text);
    std::string line;
    for (int n = 1; std::getline(lines, line); ++n) {
      QARAC_INPUT_CHECK(line.find('\0') == std::string::npos, path, ", line ", n, ": holds a NUL byte (not a text file?)");
      const char* placeholder = boost_placeholder(line.substr(0, line.find('#')));  // not in a comment
      QARAC_INPUT_CHECK(!placeholder, path, ", line ", n, ": holds ", placeholder,
                        ", a placeholder of the option parser's messages, which cannot quote it");
    }
    po::options_description file = d->file_options();
    file.add(removed_options());
    // Said here: the option parser names no line. A key it does not know is left to it, which
    // names the key meant.
    std::map<std::string, int> first_line;
    for (const IniEntry& e : ini_entries(text)) {
      if (!file.find_nothrow(e.key, false)) continue;
      const auto [first, fresh] = first_line.emplace(e.key, e.line);
      QARAC_INPUT_CHECK(fresh, path, ", line ", e.line, ": ", e.key, " is set again (first on line ", first->second, ")");
    }
    try {
      std::istringstream ini(text);
      const po::parsed_options in_file = po::parse_config_file(ini, file);
      // On the command line a flag alone means true; in a file, "key =" is a value forgotten.
      for (const po::option& o : in_file.options)
        QARAC_INPUT_CHECK(!d->flags.count(o.string_key) || (!o.value.empty() && !o.value.front().empty()), path, ", ",
                          ini_line_of(text, o.string_key), ": ", o.string_key, " has no value (true or false)");
      for (const po::option& o : in_file.options)  // the command line's win
        if (!vm.count(o.string_key) || vm[o.string_key].defaulted())
          c.set_in_file[o.string_key] = path + ", " + ini_line_of(text, o.string_key);
      po::store(in_file, vm);
    } catch (const po::unknown_option& e) {
      const std::string where = ini_line_of(text, e.get_option_name());
      throw InputError(path + (where.empty() ? "" : ", " + where) + ": " + printable(e.what()) +
                       suggestion(*d, e.get_option_name()));
    } catch (const po::error& e) {
      throw InputError(path + ": " + printable(e.what()));
    }
    try {
      refuse_removed(vm);
    } catch (const InputError& e) {
      throw InputError(path + ": " + e.what());
    }
  }
  po::notify(vm);
  for (const auto& [key, value] : vm)
    if (!value.defaulted()) c.given.insert(key);
  if (c.set_in_file.count("output") != 0) refuse_config_of_another_run(vm["config"].as<std::string>(), c.output);
  return c;
}

OptimizerConfig TrainConfig::optimizer_config() const {
  OptimizerConfig o;
  o.kind = optimizer_from_name(optimizer);
  o.beta1 = beta1;
  o.beta2 = beta2;
  o.eps = eps;
  o.weight_decay = weight_decay;
  o.momentum_decay = momentum_decay;
  o.decoupled_weight_decay = decoupled_weight_decay;
  o.decay_exempt = decay_exempt_from_name(decay_exempt);
  return o;
}

ScheduleConfig TrainConfig::schedule_config() const {
  ScheduleConfig s;
  s.peak_lr = lr;
  s.warmup_steps = warmup;
  s.total_steps = steps;
  s.decay = decay_from_name(decay);
  s.final_fraction = final_lr;
  return s;
}

DType TrainConfig::dtype_value() const {
  return dtype == "bf16" ? DType::bf16 : dtype == "f64" ? DType::f64 : DType::f32;
}

std::string TrainConfig::too_long_remedy(int64_t max_tokens) const {
  std::string remedy = "rerun qarac-prep with --max-length " + std::to_string(max_tokens);
  if (pretraining() && base.empty() && !resume)  // a checkpoint fixes the sizes it resumes
    remedy += ", or raise model.max_positions from " + std::to_string(max_positions) + " to the longest sequence + " +
              std::to_string(max_positions - max_tokens);
  return remedy;
}

namespace {

std::string ini_text(const TrainConfig& config, bool with_output) {
  TrainConfig copy = config;
  const std::unique_ptr<Declarations> d = declare(copy);
  std::ostringstream os;
  os << "# qarac-train configuration (qarac-train --config FILE reads it back; the settings that have\n"
        "# no effect in this run's mode are left out)\n";
  std::string section;
  for (const Key& key : d->keys) {
    if (!no_effect(config, key.name).empty() || (!with_output && key.name == "output")) continue;
    const size_t dot = key.name.find('.');
    const std::string key_section = dot == std::string::npos ? "" : key.name.substr(0, dot);
    if (key_section != section) {
      section = key_section;
      os << "\n[" << section << "]\n";
    }
    os << (dot == std::string::npos ? key.name : key.name.substr(dot + 1)) << " = " << key.value() << "\n";
  }
  return os.str();
}

}  // namespace

std::string to_ini(const TrainConfig& config) { return ini_text(config, true); }

std::string settings_ini(const TrainConfig& config) { return ini_text(config, false); }

}  // namespace qarac
