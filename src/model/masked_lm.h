// RoBERTa with its masked-language-model head (Hugging Face's RobertaForMaskedLM: the LM head's
// output matrix tied to the word embeddings). Three uses: pre-training a small base model from
// scratch (the quickstart); the forgetting monitor, which scores a fine-tuned encoder base with
// the base checkpoint's own MLM head on held-out text (docs/design.md §6): a rising MLM loss is
// the base model's knowledge being overwritten; and rehearsal (train/rehearsal.h), which trains
// that loss through the answer encoder's base against forgetting.
#pragma once

#include <memory>
#include <vector>

#include "model/lm_head.h"
#include "model/roberta.h"

namespace qarac {

// BERT's masking of a packed batch, as Hugging Face's DataCollatorForLanguageModeling does it:
// each token that is not special is chosen with probability `probability`; a chosen token
// becomes <mask> 80% of the time, a random token of the vocabulary 10%, and stays itself 10%;
// the chosen positions are the targets. The draws of a token are Philox counters of
// (seed, step, the sequence's 64-bit id, the token's position inside its sequence)
// (core/rng.h: sequence_uniform01), so whether and how a token is masked is a pure function of
// (seed, step, id, position, token): the same on every run and machine, and whatever batch,
// rank or micro-batch the sequence lands in (distributed training keys by data::example_id).
struct MlmMasking {
  double probability = 0.15;
  int32_t mask_id = 4;
  std::vector<int32_t> special_ids = {0, 1, 2, 3, 4};  // never chosen: <s> <pad> </s> <unk> <mask>
  uint64_t seed = 0;
};
struct MaskedTokens {
  std::vector<std::vector<int32_t>> inputs;  // per sequence, with the masking applied
  std::vector<uint64_t> ids;                 // per sequence, its id (keys its dropout masks too)
  std::vector<int32_t> targets;              // packed [T]: the original id where chosen, else -100
  int64_t masked = 0;                        // number of chosen positions

  // Sequences [begin, end), with their masks and targets.
  MaskedTokens slice(int64_t begin, int64_t end) const;
};
// What the masking does to `token` at `position` (< 2^40) of sequence `id` at `step`.
struct MaskDraw {
  bool chosen = false;
  int32_t input = 0;  // the token the model reads: mask_id, a random token, or `token` itself
};
MaskDraw mask_draw(const MlmMasking& masking, int64_t vocab_size, uint64_t step, uint64_t id, uint64_t position,
                   int32_t token);
// Sequence b keyed by ids[b] (ids.size() == sequences.size()).
MaskedTokens mask_tokens(const std::vector<std::vector<int32_t>>& sequences, const std::vector<uint64_t>& ids,
                         int64_t vocab_size, const MlmMasking& masking, uint64_t step);
// Sequence b keyed by its index b in `sequences`: for a fixed set of sequences (the held-out
// text), whose masks then stay the same from one evaluation to the next.
MaskedTokens mask_tokens(const std::vector<std::vector<int32_t>>& sequences, int64_t vocab_size,
                         const MlmMasking& masking, uint64_t step);
// The number of positions mask_tokens chooses in the packed sequences (sequence b is
// tokens[starts[b], starts[b+1]), keyed by ids[b]), without building the masked batch.
int64_t count_masked(const std::vector<int32_t>& tokens, const std::vector<int32_t>& starts,
                     const std::vector<uint64_t>& ids, const MlmMasking& masking, uint64_t step);

class MaskedLM {
 public:
  static constexpr int32_t kIgnore = -100;

  // Over `encoder` (not owned; it must outlive this object), with a fresh LM head tied to its
  // word embeddings.
  explicit MaskedLM(RobertaEncoder& encoder);
  MaskedLM(const MaskedLM&) = delete;
  MaskedLM& operator=(const MaskedLM&) = delete;

  LMHead& head() { return head_; }
  // The encoder's parameters and the head's (the tied matrix listed once, with the encoder).
  ParameterList parameters();

  // Mean cross-entropy over the chosen positions of one masked batch (0 when none is chosen).
  // With `backward`, gradients are accumulated into parameters(), scaled by `weight`.
  // Synchronises (reads the loss back).
  double loss(const MaskedTokens& batch, const ForwardOptions& options, bool backward, double weight = 1.0);
  // loss() without gradients, run a part at a time (bounds [0, b1, ..., sequences], as
  // data::part_bounds gives them), so that its memory is that of the largest part.
  double loss_in_parts(const MaskedTokens& batch, const std::vector<int64_t>& bounds, const ForwardOptions& options);
  // The batch's summed cross-entropy over its chosen positions times `loss_scale`, as a device
  // scalar [1] (accumulation dtype), without synchronising; with `backward`, gradients are
  // accumulated as those of the summed cross-entropy times `grad_scale`. A batch with no chosen
  // position runs nothing and gives 0. The scalar stays valid until the next call.
  const Tensor& run(const MaskedTokens& batch, const ForwardOptions& options, bool backward, double loss_scale,
                    double grad_scale);

 private:
  RobertaEncoder& encoder_;
  LMHead head_;
  RobertaEncoder::Activations acts_;
  LMHead::Activations head_acts_;
  Tensor targets_, losses_, grad_hidden_;
  Tensor ones_;  // [T] (accumulation dtype): sums losses_ by a GEMM
  Tensor sum_;   // [1]: run()'s result
};

}  // namespace qarac
