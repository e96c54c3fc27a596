// Reading a QARAC export (io/hf_export.h) back into the models, for the programs that use trained
// models: qarac-embed (an encoder), qarac-generate (the decoder) and qarac-eval (all three).
#pragma once

#include <memory>
#include <string>

#include "data/tokenizer.h"
#include "model/decoder.h"
#include "model/qarac.h"

namespace qarac::io {

// An export folder: its config, its tokenizer (the files the export carries) and the model.
template <class Model>
struct LoadedModel {
  std::string dir;
  RobertaConfig config;
  data::Tokenizer tokenizer;
  std::unique_ptr<Model> model;
};

// A question or answer encoder export: base "roberta.*" and the pooling head "pooling.*".
// InputError naming the folder or file when a tensor is missing or misshapen, or the folder has no
// tokenizer.
LoadedModel<SentenceEncoder> load_encoder_export(const std::string& dir, DType dtype, Device device);

// A decoder export: base, "decoder_layers.*", the LM head "qarac_lm_head.*" (io/export_files.h;
// "lm_head.*" in exports written before), tied to the word embeddings when the export has no
// qarac_lm_head.decoder.weight.
LoadedModel<Decoder> load_decoder_export(const std::string& dir, DType dtype, Device device);

// The three models of a run's export set (its export/ or best/ folder: question_encoder/,
// answer_encoder/ and decoder/) as the QaracModels the run ended with, each base its own, and
// their tokenizer. InputError naming the folder when one is missing or is not such an export,
// or when the three were not exported together (other sizes or tokenizers, or model cards that
// tell of other runs or steps).
struct LoadedQarac {
  std::string dir;
  data::Tokenizer tokenizer;
  std::unique_ptr<QaracModels> models;
};
LoadedQarac load_qarac_exports(const std::string& dir, DType dtype, Device device);

}  // namespace qarac::io
