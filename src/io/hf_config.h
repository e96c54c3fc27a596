// Hugging Face config.json <-> RobertaConfig.
#pragma once

#include <string>
#include <vector>

#include "model/roberta_config.h"

namespace qarac::io {

// Reads a RoBERTa config.json; a key it lacks takes transformers' default (layer_norm_eps 1e-12,
// type_vocab_size 2, where model/roberta_config.h starts from RoBERTa's 1e-5 and 1). Refuses (qarac::InputError naming the file and the key) a missing
// or mistyped required key, sizes that are not positive or beyond the bounds of hf_config.cpp
// (checked before anything multiplies or allocates them), hidden_size not divisible by the heads,
// and any hidden_act other than "gelu" (the erf GELU, the only activation implemented). With
// `is_decoder`, also its "is_decoder" (false when absent): whether the base is causal, as the
// QARAC decoder's export says; with `tie_word_embeddings`, that key (true when absent, as in
// transformers): whether an LM head's output matrix is the word embeddings.
RobertaConfig read_hf_config(const std::string& path, bool* is_decoder = nullptr,
                             bool* tie_word_embeddings = nullptr);
// Whether the config.json at `path` sets `key` itself (else read_hf_config gives its default);
// false when the file is no JSON object (read_hf_config says why).
bool hf_config_sets(const std::string& path, const char* key);
// What transformers should make of an exported directory.
struct HfConfigOptions {
  std::string architecture = "RobertaForMaskedLM";  // or a QARAC model's class (modeling_qarac.py)
  std::string model_type = "roberta";                // or a QARAC model's own (io/export_files.h)
  bool is_decoder = false;                           // a causal base (the QARAC decoder's)
  bool tie_word_embeddings = true;                   // the MLM head's matrix is the embeddings
};
// The model's fields as config.json holds them, in one JSON line: what a checkpoint records of
// the models' configuration beyond their weights' shapes (train/checkpoint.h).
std::string model_fields_json(const RobertaConfig& config);
// "layer_norm_eps 1e-05 -> 0.001" for each field of two model_fields_json texts that differs (a
// field one of them lacks counts as changed).
std::vector<std::string> model_field_changes(const std::string& was, const std::string& now);
// Writes a config.json that transformers loads as the options' architecture.
void write_hf_config(const std::string& path, const RobertaConfig& config,
                     const HfConfigOptions& options = {});

}  // namespace qarac::io
