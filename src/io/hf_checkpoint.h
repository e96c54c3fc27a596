// Loading a Hugging Face RoBERTa directory (config.json + model.safetensors) into the model's
// parameters: the transfer-learning starting point.
#pragma once

#include <string>

#include "io/safetensors.h"
#include "model/parameter.h"
#include "model/roberta_config.h"

namespace qarac::io {

struct HfRoberta {
  std::string dir;
  std::string weights;  // the file the messages name: DIR/model.safetensors or its shards' index
  RobertaConfig config;
  TensorMap encoder;  // "embeddings.*", "encoder.*" (the "roberta." prefix removed if present)
  // The MLM head, set aside: "dense.weight", "layer_norm.bias", "bias", ...; empty when the
  // weights hold none or config.json unties it from the word embeddings (tie_word_embeddings false).
  TensorMap lm_head;
};

// Reads DIR/config.json and DIR/model.safetensors (or its shards, io/hf_weights.h). Accepts names with the "roberta." prefix or
// bare; "lm_head.*" goes to `lm_head`; other tensors (e.g. a pooler) are skipped with a log line.
// Before returning (so before anyone allocates a model of the config's sizes) it checks the sizes
// against the tensors the file holds (embedding tables, one tensor per layer) and refuses a NaN
// or an infinity in any tensor kept: InputErrors naming the file and the tensor.
HfRoberta read_hf_roberta(const std::string& dir);

// Copies `tensors` into `params` (converting floating dtypes to each parameter's dtype). Refuses
// with a qarac::InputError naming the tensor and `source` (a file) when a parameter is missing,
// has the wrong shape ("expected [32, 32], found [32, 31]") or a non-floating dtype.
void assign_parameters(const ParameterList& params, const TensorMap& tensors,
                       const std::string& source);

}  // namespace qarac::io
