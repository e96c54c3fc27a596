// The configuration of a training run (qarac-train): every option with a default, read from an
// INI file (--config) whose sections prefix the keys ([optimizer] lr = 3e-5 is optimizer.lr),
// with any key overridden on the command line (--optimizer.lr 3e-5). Parsing and the value
// checks touch no file; the trainer checks the files before it creates the output directory.
#pragma once

#include <array>
#include <cstdint>
#include <iosfwd>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "core/error.h"
#include "data/task.h"
#include "train/optimizer.h"
#include "train/schedule.h"

namespace qarac {

// The per-task settings of [task]: <short name>.weight, .batch (mlm: weight 0, rehearsal off).
struct TaskSettings {
  double weight = 1.0;  // w_t in Σ w_t loss_t
  int64_t batch = 128;  // N_t: the task's global batch, examples per optimizer step over all ranks
};

struct TrainConfig {
  // Command line, and top level of the INI file.
  std::set<std::string> given;  // the keys set on the command line or in the file (not defaults)
  // The keys whose value the --config file gives (not the command line), with where: "FILE, line N",
  // which check_values' errors name.
  std::map<std::string, std::string> set_in_file;
  bool resume = false;      // --resume (command line only)
  std::string output;       // output: the run directory (metrics, checkpoints, export)

  // [model]
  std::string mode = "qarac";       // qarac: fine-tune the three models; mlm: pre-train a base
  std::string base;                 // a Hugging Face RoBERTa directory (mlm: optional)
  bool share_encoder_base = false;  // QE and AE share one base (separate pooling heads)
  bool tie_lm_head = false;         // the LM head's output matrix is D's word embeddings
  double dropout = -1;              // hidden and attention dropout; < 0: the base config's
  double init_std = 0.02;           // N(0, std²) of the new heads
  // mlm mode: the tokenizer (vocabulary size, <mask>) and, without a base, the new model's sizes.
  std::string tokenizer;
  int64_t hidden = 64, layers = 2, heads = 2, ffn = 0, max_positions = 130;
  double mask_probability = 0.15;  // and rehearsal's (qarac mode with task.mlm.weight > 0)

  // [data]
  std::string data_dir;  // qarac-prep's output: <dir>/<task>.h5

  // [train]
  int64_t steps = 1000;
  int64_t seed = 0;           // heads' initialisation, data order, dropout
  std::string device = "cpu";  // cpu | cuda
  std::string dtype = "f32";   // compute dtype: f32 | bf16 (cuda) | f64 (cpu)
  int64_t log_every = 10;     // progress line every N steps when stdout is not a terminal
  int64_t micro_tokens = 0;   // most tokens a rank runs in one forward/backward; 0: no limit
  std::string progress = "auto";   // the progress line: auto | plain (a line each log_every) | tty (rewritten)
  std::string nonfinite = "stop";  // a non-finite loss or gradient norm: stop | skip (the update)

  // [optimizer]
  std::string optimizer = "adamw";  // adamw | nadam
  double lr = 2e-5, beta1 = 0.9, beta2 = 0.999, eps = 1e-8, weight_decay = 0.01;
  double momentum_decay = 4e-3;        // nadam
  bool decoupled_weight_decay = true;  // nadam (adamw always decouples)
  std::string decay_exempt = "none";   // none | bias_norm
  int64_t warmup = 100;
  std::string decay = "linear";  // constant | linear | cosine | exponential
  double final_lr = 0;           // the decay's final fraction of lr
  double clip = 1.0;             // global gradient-norm clipping; 0: off

  // [checkpoint]
  int64_t checkpoint_every = 1000;  // 0: only at the end
  int64_t checkpoint_keep = 3;      // the newest N are kept; 0 keeps all

  // [eval] (without a directory no evaluation runs)
  int64_t eval_every = 0;      // 0: only at the end
  std::string eval_dir;        // held-out task streams (qarac-prep's output)
  int64_t eval_examples = 256;  // per task, the first of each file
  int64_t eval_batch = 64;      // examples per forward pass
  int64_t eval_decoded = 64;    // examples decoded greedily per decoder task
  std::string eval_tokenizer;  // its <mask> id turns on the forgetting monitor
  std::string eval_best;       // a held-out metric: the best models go to <output>/best/
  int64_t eval_patience = 0;   // stop after this many evaluations that do not beat eval.best's best; 0: never

  // [parallel]
  std::string tasks = "auto";  // the task plan: auto | ed:2,qa:1,rs:2,cs:1
  std::string backend = "auto";  // gradient all-reduce: auto (nccl on cuda, mpi on cpu) | mpi | nccl
  double timeout = 600;          // seconds any wait on other ranks may take before the job aborts
  double bucket_mb = 25;         // gradient bucket size of the all-reduce
  int64_t check_every = 0;       // replica checksum every N steps; 0: only at the end
  bool share_gpus = false;       // several ranks of a node may use one GPU
  int64_t show_plan = 0;         // > 0: print the plan of that many ranks and exit

  // [task]
  std::array<TaskSettings, data::kTaskCount> task = {TaskSettings{}, TaskSettings{}, TaskSettings{}, TaskSettings{},
                                                     TaskSettings{0.0}};
  std::string mlm_head = "frozen";  // rehearsal's MLM head (the base's): frozen | trained
  // The question_answering objective: QARAC's MSE(QE(q) − AE(a), 0), or symmetric InfoNCE over
  // the global QA batch with the other answers as negatives (train/contrastive.h).
  std::string qa_objective = "mse";
  double qa_temperature = 1.0;

  // Derived settings, valid after check_values.
  OptimizerConfig optimizer_config() const;
  ScheduleConfig schedule_config() const;
  DType dtype_value() const;
  double task_weight(data::Task t) const { return task[static_cast<int>(t)].weight; }
  bool pretraining() const { return mode == "mlm"; }
  // Rehearsal (docs/design.md §3): the fifth task, masked_lm, runs (model.mode qarac only).
  bool rehearsal() const { return !pretraining() && task_weight(data::Task::masked_lm) > 0; }
  bool contrastive_qa() const { return qa_objective == "contrastive"; }
  // What to do about data longer than the `max_tokens` the models read: rerun qarac-prep with
  // --max-length, or, for a new mlm model (whose position table model.max_positions sizes), give
  // it more positions.
  std::string too_long_remedy(int64_t max_tokens) const;
};

// Parses the command line and the --config file (command line first: its values win). Returns
// nullopt when --help was given, after writing the options with their defaults to `help`.
// boost::program_options errors (an unknown or mistyped key on the command line) propagate; the
// same errors in the file become an InputError naming the file. A removed key (task.<t>.tokens,
// task.<t>.examples, parallel.simulate_world) is an InputError saying what replaced it, and so is
// a command-line word holding a line break, a value that config.ini cannot hold (a '#', blanks at
// its ends), and a word or INI line holding a placeholder of Boost's messages (%value%).
std::optional<TrainConfig> parse_train_config(int argc, const char* const argv[], std::ostream& help);

// The checks that need no file: required keys, ranges, names, and no setting given that the
// mode ignores. One-line InputError naming the key (every ignored one at once), and where the
// --config file set it (with_config_line).
void check_values(const TrainConfig& config);

// `error`, whose message begins with a key ("optimizer.lr: ..." or "--parallel.tasks: ..."),
// with "FILE, line N: " before it when the --config file set that key; as it is otherwise.
InputError with_config_line(const TrainConfig& config, const InputError& error);

// Why `key` has no effect with config's mode and settings (e.g. "with model.mode qarac (the
// sizes are model.base's)"); "" when it has one. check_values refuses such a key when given;
// to_ini and resume_mismatch leave it out.
std::string no_effect(const TrainConfig& config, const std::string& key);

// Every key that has an effect, with its value, as INI text (sections, one key per line), which
// --config reads back.
std::string to_ini(const TrainConfig& config);
// to_ini without `output`: the settings of what a run computes, as its checkpoints and model
// cards record them, so that the same run writes the same bytes into any run directory (and a
// card published from it does not name the folders of the machine it ran on).
std::string settings_ini(const TrainConfig& config);

// The settings of INI text as Boost reads it: "key = value" lines under "[section]" headers,
// key "section.key", blanks around key and value trimmed, '#' and ';' lines skipped; `line`
// counts from 1. Lines of another shape are left out (Boost refuses them itself).
struct IniEntry {
  std::string key, value;
  int line = 0;
};
std::vector<IniEntry> ini_entries(const std::string& text);

// "" when a checkpoint written under `saved_ini` (to_ini of its run) may be resumed by `config`,
// otherwise which key differs, with both values: those that fix the models, the data order and
// the global batches. The world size, the task plan and micro-batching may change. Rehearsal may
// not be turned on or off (its stream's cursor and its trained head are in the checkpoint only
// when it was on); while it stays on, task.mlm.batch and task.mlm.head are fixed too.
std::string resume_mismatch(const TrainConfig& config, const std::string& saved_ini);

// The settings of the objective and the optimizer ([task], [optimizer], and train.steps under a
// decay, which spans it) that a resume may change and `config` does change from the checkpoint's
// run (`saved_ini`), each "key was -> now": the run goes on with them, so it no longer computes
// what one uninterrupted run would. Empty when none.
std::vector<std::string> resume_changes(const TrainConfig& config, const std::string& saved_ini);

}  // namespace qarac
