// RoBERTa with its masked-language-model head (Hugging Face's RobertaForMaskedLM: the LM head's
// output matrix tied to the word embeddings). Two uses: pre-training a small base model from
// scratch (the quickstart), and the forgetting monitor, which scores a fine-tuned encoder base
// with the base checkpoint's own MLM head on held-out text (docs/design.md §6): a rising MLM loss
// is the base model's knowledge being overwritten.
#pragma once

#include <memory>
#include <vector>

#include "model/lm_head.h"
#include "model/roberta.h"

namespace qarac {

// BERT's masking of a packed batch, as Hugging Face's DataCollatorForLanguageModeling does it:
// each token that is not special is chosen with probability `probability`; a chosen token
// becomes <mask> 80% of the time, a random token of the vocabulary 10%, and stays itself 10%;
// the chosen positions are the targets. The draws are Philox counters of (seed, step, token
// index), so a batch is masked the same way on every run and machine.
struct MlmMasking {
  double probability = 0.15;
  int32_t mask_id = 4;
  std::vector<int32_t> special_ids = {0, 1, 2, 3, 4};  // never chosen: <s> <pad> </s> <unk> <mask>
  uint64_t seed = 0;
};
struct MaskedTokens {
  std::vector<std::vector<int32_t>> inputs;  // per sequence, with the masking applied
  std::vector<int32_t> targets;              // packed [T]: the original id where chosen, else -100
  int64_t masked = 0;                        // number of chosen positions
};
MaskedTokens mask_tokens(const std::vector<std::vector<int32_t>>& sequences, int64_t vocab_size,
                         const MlmMasking& masking, uint64_t step);

class MaskedLM {
 public:
  static constexpr int32_t kIgnore = -100;

  // Over `encoder` (not owned; it must outlive this object), with a fresh LM head tied to its
  // word embeddings.
  explicit MaskedLM(RobertaEncoder& encoder);
  MaskedLM(const MaskedLM&) = delete;
  MaskedLM& operator=(const MaskedLM&) = delete;

  LMHead& head() { return head_; }
  RobertaEncoder& encoder() { return encoder_; }
  // The encoder's parameters and the head's (the tied matrix listed once, with the encoder).
  ParameterList parameters();

  // Mean cross-entropy over the chosen positions of one masked batch (0 when none is chosen).
  // With `backward`, gradients are accumulated into parameters(), scaled by `weight`.
  double loss(const MaskedTokens& batch, const ForwardOptions& options, bool backward, double weight = 1.0);

 private:
  RobertaEncoder& encoder_;
  LMHead head_;
  RobertaEncoder::Activations acts_;
  LMHead::Activations head_acts_;
  Tensor targets_, losses_, grad_hidden_;
};

}  // namespace qarac
