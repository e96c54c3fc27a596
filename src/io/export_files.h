// What a Hugging Face export carries beside config.json and model.safetensors (issue 14): the
// tokenizer files, so that AutoTokenizer encodes as the training data was encoded; the model
// card README.md; and, for the QARAC models, modeling_qarac.py with config.json's auto_map, so
// that AutoModel.from_pretrained(export, trust_remote_code=True) gives the QARAC encoder (its
// pooled vector) or decoder (generation from a vector) while RobertaModel still loads the base.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

namespace qarac::io {

// The model card's content; each part is left out when empty.
struct ModelCard {
  std::string base_model;                 // the Hub id of the base, when known ("" otherwise)
  std::string base_path;                  // what the run started from (model.base)
  std::vector<std::string> datasets;      // the raw files behind the task streams
  std::string config_ini;                 // the run's effective configuration
  std::string plan;                       // the task plan, as the start banner prints it
  // The held-out evaluation at metrics_step (the last before the export: for best/ the best one);
  // NaN where it was not finite.
  std::map<std::string, double> metrics;
  int64_t metrics_step = 0;
  // forgetting.mlm_loss at the first evaluation that gave it (its step); at metrics_step it is in
  // `metrics`.
  std::optional<double> forgetting_first;
  int64_t forgetting_first_step = 0;
};

struct ExportExtras {
  // Copied from here: tokenizer.json, vocab.json, merges.txt, tokenizer_config.json and
  // special_tokens_map.json, the last two written when absent. "": no tokenizer files.
  std::string tokenizer_dir;
  // When set, the exported tokenizer must hash to it (data::Tokenizer::hash, the task streams'
  // tokenizer_hash): an export whose tokenizer differs from its data's is refused.
  std::string tokenizer_hash;
  std::optional<ModelCard> card;
};

// Writes the tokenizer files of `extras` into `dir` and checks them (above). InputError naming
// the tokenizer folder when it has neither tokenizer.json nor vocab.json + merges.txt, or when
// the hashes differ.
void write_tokenizer_files(const std::string& dir, const ExportExtras& extras,
                           int64_t max_positions);

// What modeling_qarac.py declares for a QARAC model: config.json's model_type, of its own so that
// transformers refuses the export without trust_remote_code rather than load a plain RoBERTa
// that ignores the heads, and the config and model classes.
struct QaracClasses {
  std::string model_type, config_class, model_class;
};
// "question_encoder" and "answer_encoder": qarac_encoder, QaracEncoderConfig, QaracEncoderModel;
// "decoder": qarac_decoder, QaracDecoderConfig, QaracDecoderModel; none for other models.
std::optional<QaracClasses> qarac_classes(const std::string& model);
// The decoder export's LM head is stored under this prefix, not transformers' "lm_head.": given
// the export, RobertaForCausalLM (or RobertaForMaskedLM) finds none of its head's weights and
// reports them missing, instead of loading the head without the decoder's two head layers and
// computing another model under a plain load report.
inline constexpr const char* kDecoderHeadPrefix = "qarac_lm_head.";

// modeling_qarac.py (src/io/modeling_qarac.py, compiled in) and config.json's auto_map
// (AutoConfig and AutoModel to qarac_classes'), and for the encoders the sentence-transformers
// files that make SentenceTransformer(dir, trust_remote_code=True) give pooler_output (not a mean
// of the hidden states). Other models are left as they are.
void write_qarac_code(const std::string& dir, const std::string& model);

// DIR/README.md: YAML front matter as the Hugging Face Hub reads it, then how to load the
// model and what the card holds.
void write_model_card(const std::string& dir, const std::string& model, const ModelCard& card);

}  // namespace qarac::io
