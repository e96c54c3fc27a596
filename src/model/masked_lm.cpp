#include "model/masked_lm.h"

#include <algorithm>
#include <numeric>

#include "core/error.h"
#include "core/rng.h"

namespace qarac {

namespace {
// The RNG streams of the masking: whether a token is chosen, how it is replaced, and by which
// random token. Apart from every dropout stream: dropout's tensor ids are application · 2^24 +
// stream · 2^16 + site (model/roberta.h), below 17 · 2^24 for the applications in use
// (QARAC: 4 · task + k < 16, rehearsal 16; MLM: 0), and these lie above 0x4d000000. A draw is
// sequence_uniform01(key, sequence id, element) with element = the token's position inside its
// sequence (core/rng.h's layout: any element below 2^40; positions here are far below).
constexpr uint32_t kMaskingStream = 0x4d4c4d00u;  // "MLM"
constexpr uint64_t kPositionLimit = uint64_t{1} << kSequenceElementBits;

RngKey masking_key(const MlmMasking& masking, uint64_t step, uint32_t which) {
  return RngKey{masking.seed, step, kMaskingStream + which};
}
bool is_special(const MlmMasking& masking, int32_t token) {
  return std::find(masking.special_ids.begin(), masking.special_ids.end(), token) != masking.special_ids.end();
}
bool chosen(const MlmMasking& masking, const RngKey& choose, uint64_t id, uint64_t position, int32_t token) {
  QARAC_CHECK(position < kPositionLimit, "MLM masking: position ", position, " of a sequence");
  return !is_special(masking, token) && sequence_uniform01(choose, id, position) < masking.probability;
}
}  // namespace

MaskDraw mask_draw(const MlmMasking& masking, int64_t vocab_size, uint64_t step, uint64_t id, uint64_t position,
                   int32_t token) {
  MaskDraw d;
  d.input = token;
  d.chosen = chosen(masking, masking_key(masking, step, 0), id, position, token);
  if (!d.chosen) return d;
  const float u = sequence_uniform01(masking_key(masking, step, 1), id, position);
  if (u < 0.8f) {
    d.input = masking.mask_id;
  } else if (u < 0.9f) {
    const float r = sequence_uniform01(masking_key(masking, step, 2), id, position);
    d.input = std::min(static_cast<int32_t>(r * static_cast<float>(vocab_size)), static_cast<int32_t>(vocab_size - 1));
  }
  return d;
}

MaskedTokens mask_tokens(const std::vector<std::vector<int32_t>>& sequences, const std::vector<uint64_t>& ids,
                         int64_t vocab_size, const MlmMasking& masking, uint64_t step) {
  QARAC_CHECK(ids.size() == sequences.size(), "MLM masking: ", ids.size(), " ids for ", sequences.size(),
              " sequences");
  MaskedTokens out;
  out.inputs = sequences;
  out.ids = ids;
  for (size_t b = 0; b < out.inputs.size(); ++b) {
    std::vector<int32_t>& seq = out.inputs[b];
    for (size_t t = 0; t < seq.size(); ++t) {
      const MaskDraw d = mask_draw(masking, vocab_size, step, ids[b], t, seq[t]);
      out.targets.push_back(d.chosen ? seq[t] : MaskedLM::kIgnore);
      out.masked += d.chosen ? 1 : 0;
      seq[t] = d.input;
    }
  }
  return out;
}

MaskedTokens MaskedTokens::slice(int64_t begin, int64_t end) const {
  QARAC_CHECK(0 <= begin && begin <= end && end <= static_cast<int64_t>(inputs.size()), "sequences [", begin, ", ",
              end, ") of a masked batch of ", inputs.size());
  size_t first = 0, last = 0;  // the part's targets, packed as the sequences
  for (int64_t b = 0; b < end; ++b) (b < begin ? first : last) += inputs[static_cast<size_t>(b)].size();
  last += first;
  MaskedTokens out;
  out.inputs.assign(inputs.begin() + begin, inputs.begin() + end);
  out.ids.assign(ids.begin() + begin, ids.begin() + end);
  out.targets.assign(targets.begin() + static_cast<std::ptrdiff_t>(first), targets.begin() + static_cast<std::ptrdiff_t>(last));
  out.masked = std::count_if(out.targets.begin(), out.targets.end(), [](int32_t t) { return t != MaskedLM::kIgnore; });
  return out;
}

MaskedTokens mask_tokens(const std::vector<std::vector<int32_t>>& sequences, int64_t vocab_size,
                         const MlmMasking& masking, uint64_t step) {
  std::vector<uint64_t> ids(sequences.size());
  std::iota(ids.begin(), ids.end(), uint64_t{0});
  return mask_tokens(sequences, ids, vocab_size, masking, step);
}

int64_t count_masked(const std::vector<int32_t>& tokens, const std::vector<int32_t>& starts,
                     const std::vector<uint64_t>& ids, const MlmMasking& masking, uint64_t step) {
  QARAC_CHECK(!starts.empty() && ids.size() + 1 == starts.size(), "MLM masking: ", ids.size(), " ids for ",
              starts.size(), " sequence starts");
  const RngKey choose = masking_key(masking, step, 0);
  int64_t count = 0;
  for (size_t b = 0; b < ids.size(); ++b)
    for (int32_t i = starts[b]; i < starts[b + 1]; ++i)
      count += chosen(masking, choose, ids[b], static_cast<uint64_t>(i - starts[b]), tokens[static_cast<size_t>(i)]);
  return count;
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
  const double mean = 1.0 / static_cast<double>(batch.masked);
  return run(batch, options, backward, mean, weight * mean).to(Device::cpu()).to(DType::f64).to_vector<double>()[0];
}

double MaskedLM::loss_in_parts(const MaskedTokens& batch, const std::vector<int64_t>& bounds,
                               const ForwardOptions& options) {
  QARAC_CHECK(bounds.size() >= 2 && bounds.front() == 0 && bounds.back() == static_cast<int64_t>(batch.inputs.size()),
              "MLM loss: parts that do not cover the ", batch.inputs.size(), " sequences");
  if (batch.masked == 0) return 0.0;
  const double mean = 1.0 / static_cast<double>(batch.masked);
  double loss = 0;
  for (size_t i = 0; i + 1 < bounds.size(); ++i)
    loss += run(batch.slice(bounds[i], bounds[i + 1]), options, false, mean, 0.0)
                .to(Device::cpu())
                .to(DType::f64)
                .to_vector<double>()[0];
  return loss;
}

const Tensor& MaskedLM::run(const MaskedTokens& batch, const ForwardOptions& options, bool backward, double loss_scale,
                            double grad_scale) {
  const RobertaConfig& config = encoder_.config();
  const Device device = encoder_.device();
  const DType acc = ops::accumulation_dtype(encoder_.dtype());
  if (!sum_.defined()) sum_ = Tensor::zeros({1}, acc, device);
  if (batch.masked == 0) {
    sum_.copy_(Tensor::zeros({1}, acc));
    return sum_;
  }
  const TokenBatch tokens = TokenBatch::from_sequences(batch.inputs, config.pad_token_id, device, batch.ids);
  const int64_t count = tokens.tokens();
  QARAC_CHECK(static_cast<int64_t>(batch.targets.size()) == count, "MLM batch: ", batch.targets.size(),
              " targets for ", count, " tokens");
  targets_ = Tensor::from_vector(batch.targets, {count}, device);
  if (!losses_.defined() || losses_.size(0) != count) losses_ = Tensor::empty({count}, acc, device);
  // The loss is loss_scale times a [1, T] · [T, 1] GEMM of the per-token losses (0 where not
  // chosen) with ones: it stays on the device, as the QARAC objectives' losses do.
  if (!ones_.defined() || ones_.size(0) != count)
    ones_ = Tensor::from_vector(std::vector<double>(static_cast<size_t>(count), 1.0), {count}).to(acc).to(device);

  const Tensor& hidden = encoder_.forward(tokens, options, acts_);
  Tensor& logits = head_.forward(hidden, head_acts_);
  // Every chosen row's gradient carries grad_scale.
  ops::softmax_cross_entropy(logits, targets_, kIgnore, losses_, backward ? &logits : nullptr, grad_scale,
                             head_.vocab_size());
  Tensor sum_view = sum_.reshape({1, 1});
  ops::gemm(losses_.reshape({1, count}), ones_.reshape({count, 1}), sum_view, false, false, loss_scale);
  if (backward) {
    if (!grad_hidden_.defined() || grad_hidden_.shape() != hidden.shape())
      grad_hidden_ = Tensor::empty(hidden.shape(), hidden.dtype(), device);
    head_.backward(hidden, head_acts_, logits, grad_hidden_);
    encoder_.backward(acts_, grad_hidden_);
  }
  return sum_;
}

}  // namespace qarac
