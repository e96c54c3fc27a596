// Greedy decoding: one forward pass over the unfinished prefixes per step, their last rows'
// argmax appended.
#include "model/generate.h"

#include <algorithm>
#include <cmath>

#include "core/error.h"

namespace qarac {

std::vector<std::vector<int32_t>> greedy_decode(Decoder& decoder, const Tensor& v,
                                                std::vector<std::vector<int32_t>> prefixes,
                                                const std::vector<int64_t>& steps, int32_t stop,
                                                bool* finite) {
  const int64_t count = static_cast<int64_t>(prefixes.size());
  QARAC_CHECK(v.dim() == 2 && v.size(0) == count && steps.size() == prefixes.size(), "greedy_decode: ", count,
              " prefixes, ", steps.size(), " step counts, vectors ", v.str());
  const Device device = v.device();
  const int32_t pad = decoder.base().config().pad_token_id;
  const int64_t vocab = decoder.vocab_size();
  std::vector<std::vector<int32_t>> out(prefixes.size());
  std::vector<int32_t> active;  // the unfinished sequences, by index
  for (int32_t b = 0; b < static_cast<int32_t>(count); ++b)
    if (steps[static_cast<size_t>(b)] > 0) active.push_back(b);
  if (finite) *finite = true;
  Decoder::Activations acts;
  for (int64_t step = 0; !active.empty(); ++step) {
    const int64_t n = static_cast<int64_t>(active.size());
    std::vector<std::vector<int32_t>> batch;
    for (int32_t b : active) batch.push_back(prefixes[static_cast<size_t>(b)]);
    const Tensor index = Tensor::from_vector(active, {n}, device);
    Tensor rows = Tensor::empty({n, v.size(1)}, v.dtype(), device);
    ops::gather_rows(v, index, rows);
    const TokenBatch y_in = TokenBatch::from_sequences(batch, pad, device);
    const Tensor& logits = decoder.forward_last(rows, y_in, ForwardOptions{}, acts);
    const std::vector<float> scores = logits.to(Device::cpu()).to(DType::f32).to_vector<float>();
    std::vector<int32_t> still;
    for (int64_t b = 0; b < n; ++b) {
      const float* row = scores.data() + b * logits.size(1);
      // The argmax of NaN scores is their first token, which would pass for a decoding.
      if (!std::all_of(row, row + vocab, [](float x) { return std::isfinite(x); })) {
        QARAC_INPUT_CHECK(finite, "greedy decoding: the decoder's scores for vector ", active[static_cast<size_t>(b)],
                          " of the batch are not finite (NaN or infinity) at its token ", step + 1,
                          ": its weights or the vector overflow in a forward pass");
        *finite = false;
        return out;
      }
      const auto token = static_cast<int32_t>(std::max_element(row, row + vocab) - row);
      const size_t s = static_cast<size_t>(active[static_cast<size_t>(b)]);
      if (token == stop) continue;
      prefixes[s].push_back(token);
      out[s].push_back(token);
      if (static_cast<int64_t>(out[s].size()) < steps[s]) still.push_back(active[static_cast<size_t>(b)]);
    }
    active = std::move(still);
  }
  return out;
}

std::vector<std::vector<int32_t>> greedy_decode(Decoder& decoder, const Tensor& v,
                                                std::vector<std::vector<int32_t>> prefixes, int64_t steps,
                                                int32_t stop, bool* finite) {
  const std::vector<int64_t> each(prefixes.size(), steps);
  return greedy_decode(decoder, v, std::move(prefixes), each, stop, finite);
}

}  // namespace qarac
