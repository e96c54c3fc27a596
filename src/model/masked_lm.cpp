#include "model/masked_lm.h"

#include <algorithm>
#include <numeric>

#include "core/rng.h"

namespace qarac {

namespace {
// The RNG stream of the masking, apart from every dropout stream (those use small tensor ids).
constexpr uint32_t kMaskingStream = 0x4d4c4d00u;  // "MLM"
}  // namespace

MaskedTokens mask_tokens(const std::vector<std::vector<int32_t>>& sequences, int64_t vocab_size,
                         const MlmMasking& masking, uint64_t step) {
  const RngKey choose{masking.seed, step, kMaskingStream}, how{masking.seed, step, kMaskingStream + 1},
      which{masking.seed, step, kMaskingStream + 2};
  auto is_special = [&](int32_t id) {
    return std::find(masking.special_ids.begin(), masking.special_ids.end(), id) != masking.special_ids.end();
  };
  MaskedTokens out;
  out.inputs = sequences;
  uint64_t index = 0;
  for (std::vector<int32_t>& seq : out.inputs) {
    for (int32_t& token : seq) {
      const uint64_t i = index++;
      if (is_special(token) || uniform01(choose, i) >= masking.probability) {
        out.targets.push_back(MaskedLM::kIgnore);
        continue;
      }
      out.targets.push_back(token);
      ++out.masked;
      const float u = uniform01(how, i);
      if (u < 0.8f)
        token = masking.mask_id;
      else if (u < 0.9f)
        token = std::min(static_cast<int32_t>(uniform01(which, i) * static_cast<float>(vocab_size)),
                         static_cast<int32_t>(vocab_size - 1));
    }
  }
  return out;
}

MaskedLM::MaskedLM(RobertaEncoder& encoder)
    : encoder_(encoder),
      head_(encoder.config(), encoder.word_embeddings(), encoder.dtype(), encoder.device()) {}

ParameterList MaskedLM::parameters() {
  ParameterList out = encoder_.parameters();
  for (Parameter* p : head_.parameters()) out.push_back(p);
  return out;
}

double MaskedLM::loss(const MaskedTokens& batch, const ForwardOptions& options, bool backward, double weight) {
  if (batch.masked == 0) return 0.0;
  const RobertaConfig& config = encoder_.config();
  const Device device = encoder_.device();
  const TokenBatch tokens = TokenBatch::from_sequences(batch.inputs, config.pad_token_id, device);
  const int64_t count = tokens.tokens();
  targets_ = Tensor::from_vector(batch.targets, {count}, device);
  if (!losses_.defined() || losses_.size(0) != count)
    losses_ = Tensor::empty({count}, ops::accumulation_dtype(encoder_.dtype()), device);

  const Tensor& hidden = encoder_.forward(tokens, options, acts_);
  Tensor& logits = head_.forward(hidden, head_acts_);
  // Mean over the chosen positions: every chosen row's gradient carries 1/masked.
  const double dloss = weight / static_cast<double>(batch.masked);
  ops::softmax_cross_entropy(logits, targets_, kIgnore, losses_, backward ? &logits : nullptr, dloss,
                             head_.vocab_size());
  const std::vector<double> per_token = losses_.to(Device::cpu()).to(DType::f64).to_vector<double>();
  const double mean = std::accumulate(per_token.begin(), per_token.end(), 0.0) / static_cast<double>(batch.masked);
  if (backward) {
    if (!grad_hidden_.defined() || grad_hidden_.shape() != hidden.shape())
      grad_hidden_ = Tensor::empty(hidden.shape(), hidden.dtype(), device);
    head_.backward(hidden, head_acts_, logits, grad_hidden_);
    encoder_.backward(acts_, grad_hidden_);
  }
  return mean;
}

}  // namespace qarac
