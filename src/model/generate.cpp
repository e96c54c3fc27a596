// Greedy decoding: the prefixes run once, then each step runs one new position per unfinished
// sequence over the decoder's key/value cache (Decoder::start_decoding, decode), and their
// argmax is appended.
#include "model/generate.h"

#include <algorithm>
#include <cmath>

#include "core/error.h"

namespace qarac {

std::vector<std::vector<int32_t>> greedy_decode(Decoder& decoder, const Tensor& v,
                                                std::vector<std::vector<int32_t>> prefixes,
                                                const std::vector<int64_t>& steps, int32_t stop,
                                                bool* finite, int64_t first_row) {
  const int64_t count = static_cast<int64_t>(prefixes.size());
  QARAC_CHECK(v.dim() == 2 && v.size(0) == count && steps.size() == prefixes.size(), "greedy_decode: ", count,
              " prefixes, ", steps.size(), " step counts, vectors ", v.str());
  const Device device = v.device();
  const int64_t vocab = decoder.vocab_size();
  std::vector<std::vector<int32_t>> out(prefixes.size());
  // The sequences with steps to take, by index; sequence i of the cache is active[i]. The last
  // token never runs: a sequence holds its prefix and steps - 1 tokens at most.
  std::vector<int32_t> active, capacity;
  std::vector<std::vector<int32_t>> begun;
  for (int32_t b = 0; b < static_cast<int32_t>(count); ++b) {
    const auto s = static_cast<size_t>(b);
    if (steps[s] <= 0) continue;
    QARAC_CHECK(!prefixes[s].empty(), "greedy_decode: prefix ", b, " is empty (it needs <s> at least)");
    active.push_back(b);
    const int64_t room = static_cast<int64_t>(prefixes[s].size()) + steps[s] - 1;
    const int64_t most = decoder.base().config().max_tokens();
    QARAC_INPUT_CHECK(room <= most, "greedy decoding: vector ", first_row + b, "'s prefix of ", prefixes[s].size(),
                      " tokens and ", steps[s], " steps need ", room, " positions, but the decoder reads ", most,
                      " at most (max_position_embeddings ", decoder.base().config().max_position_embeddings, ")");
    capacity.push_back(static_cast<int32_t>(room));
    begun.push_back(std::move(prefixes[s]));
  }
  if (finite) *finite = true;
  if (active.empty()) return out;
  Tensor rows = Tensor::empty({static_cast<int64_t>(active.size()), v.size(1)}, v.dtype(), device);
  ops::gather_rows(v, Tensor::from_vector(active, {static_cast<int64_t>(active.size())}, device), rows);
  Decoder::Cache cache;
  const Tensor* logits = &decoder.start_decoding(
      rows, TokenBatch::from_sequences(begun, decoder.base().config().pad_token_id, device), capacity, cache);
  std::vector<int32_t> running(active.size());  // the cache's sequences of this step
  for (size_t i = 0; i < running.size(); ++i) running[i] = static_cast<int32_t>(i);
  for (int64_t step = 0; !running.empty(); ++step) {
    const std::vector<float> scores = logits->to(Device::cpu()).to(DType::f32).to_vector<float>();
    std::vector<int32_t> still, next;
    for (size_t r = 0; r < running.size(); ++r) {
      const float* row = scores.data() + static_cast<int64_t>(r) * logits->size(1);
      const int32_t b = active[static_cast<size_t>(running[r])];
      // The argmax of NaN scores is their first token, which would pass for a decoding.
      if (!std::all_of(row, row + vocab, [](float x) { return std::isfinite(x); })) {
        QARAC_INPUT_CHECK(finite, "greedy decoding: the decoder's scores for vector ", first_row + b,
                          " are not finite (NaN or infinity) at its token ", step + 1,
                          ": its weights or the vector overflow in a forward pass");
        *finite = false;
        return out;
      }
      const auto token = static_cast<int32_t>(std::max_element(row, row + vocab) - row);
      const auto s = static_cast<size_t>(b);
      if (token == stop) continue;
      out[s].push_back(token);
      if (static_cast<int64_t>(out[s].size()) < steps[s]) {
        still.push_back(running[r]);
        next.push_back(token);
      }
    }
    running = std::move(still);
    if (!running.empty()) logits = &decoder.decode(running, next, cache);
  }
  return out;
}

std::vector<std::vector<int32_t>> greedy_decode(Decoder& decoder, const Tensor& v,
                                                std::vector<std::vector<int32_t>> prefixes, int64_t steps,
                                                int32_t stop, bool* finite, int64_t first_row) {
  const std::vector<int64_t> each(prefixes.size(), steps);
  return greedy_decode(decoder, v, std::move(prefixes), each, stop, finite, first_row);
}

}  // namespace qarac
