// The hyper-parameters of a RoBERTa model, as read from a Hugging Face config.json.
#pragma once

#include <cstdint>
#include <string>

namespace qarac {

struct RobertaConfig {
  int64_t vocab_size = 50265;
  int64_t hidden_size = 768;
  int64_t num_layers = 12;        // num_hidden_layers
  int64_t num_heads = 12;         // num_attention_heads
  int64_t intermediate_size = 3072;
  int64_t max_position_embeddings = 514;
  int64_t type_vocab_size = 1;
  double layer_norm_eps = 1e-5;
  double hidden_dropout = 0.1;     // hidden_dropout_prob
  double attention_dropout = 0.1;  // attention_probs_dropout_prob
  int32_t pad_token_id = 1;
  int32_t bos_token_id = 0;
  int32_t eos_token_id = 2;
  std::string hidden_act = "gelu";  // the erf form; the only activation implemented

  // The longest sequence the position table serves: RoBERTa numbers positions from
  // pad_token_id + 1.
  int64_t max_tokens() const { return max_position_embeddings - pad_token_id - 1; }
};

}  // namespace qarac
