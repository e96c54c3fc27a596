// Inputs of the tests that run qarac-train as a user would: a scratch directory, a random tiny
// RoBERTa base as a Hugging Face directory, and the sample data prepared by qarac-prep.
#pragma once

#include <unistd.h>

#include <filesystem>
#include <string>

#include "data/tokenizer.h"
#include "io/hf_config.h"
#include "io/safetensors.h"
#include "model/init.h"
#include "model/roberta.h"
#include "support/test_support.h"

namespace qarac::test_support {

// A fresh directory under the system's temporary directory, removed with the object.
struct TempDir {
  std::filesystem::path path;
  explicit TempDir(const std::string& name)
      : path(std::filesystem::temp_directory_path() / ("qarac-test-" + name + "-" + std::to_string(getpid()))) {
    std::filesystem::remove_all(path);
    std::filesystem::create_directories(path);
  }
  ~TempDir() { std::filesystem::remove_all(path); }
  std::string str() const { return path.string(); }
};

// A random tiny RoBERTa written as a Hugging Face directory (names "roberta.*" and an MLM head
// "lm_head.*", as transformers saves RobertaForMaskedLM; without `mlm_head`, as it saves a
// RobertaModel), with the vocabulary of `tokenizer_dir` (or, `vocab_size` > 0, a vocabulary of
// that size: a base that does not fit the data).
inline void write_tiny_base(const std::filesystem::path& dir, const std::string& tokenizer_dir,
                            int64_t vocab_size = 0, bool mlm_head = true) {
  RobertaConfig config;
  config.vocab_size =
      vocab_size > 0 ? vocab_size : static_cast<int64_t>(data::Tokenizer::from_dir(tokenizer_dir).vocab_size());
  config.hidden_size = 16;
  config.num_layers = 1;
  config.num_heads = 2;
  config.intermediate_size = 32;
  config.max_position_embeddings = 514;
  RobertaEncoder encoder(config, DType::f32, Device::cpu());
  init_normal(encoder.parameters(), 0.02, 5);
  TensorMap tensors;
  for (const Parameter* p : encoder.parameters()) tensors["roberta." + p->name] = p->master;
  const int64_t d = config.hidden_size, v = config.vocab_size;
  if (mlm_head) {
    tensors["lm_head.dense.weight"] = Tensor::zeros({d, d}, DType::f32);
    tensors["lm_head.dense.bias"] = Tensor::zeros({d}, DType::f32);
    tensors["lm_head.layer_norm.weight"] = Tensor::zeros({d}, DType::f32);
    tensors["lm_head.layer_norm.bias"] = Tensor::zeros({d}, DType::f32);
    tensors["lm_head.decoder.weight"] = tensors["roberta.embeddings.word_embeddings.weight"];
    tensors["lm_head.bias"] = Tensor::zeros({v}, DType::f32);
  }
  std::filesystem::create_directories(dir);
  io::write_safetensors((dir / "model.safetensors").string(), tensors);
  io::write_hf_config((dir / "config.json").string(), config);
}

// The training files of data/sample (`sample_dir`, ending in '/') as task streams in `out`.
inline CliResult prepare_sample_data(const std::string& prep_exe, const std::string& sample_dir,
                                     const std::filesystem::path& out) {
  return run_command(prep_exe + " --tokenizer " + sample_dir + "tokenizer --out " + out.string() +
                     " --text " + sample_dir + "corpus_train.txt --wikiqa " + sample_dir +
                     "WikiQA-train.tsv --avicenna " + sample_dir + "Avicenna_Train.csv --snli " +
                     sample_dir + "snli_1.0_train.jsonl --threads 2");
}

}  // namespace qarac::test_support
