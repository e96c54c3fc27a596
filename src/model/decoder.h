// The QARAC decoder D(v, y) (docs/design.md §2): a causal RoBERTa base over y_in = "<s> y", two
// RoBERTa head layers that condition on the vector v through a slot prepended to every
// sequence, and the LM head. Packed (padding-free) batches throughout.
//
// Data flow for B sequences of lengths n_b (T = Σ n_b tokens), v [B, d]:
//   H   = base(y_in)                              [T, d]     causal
//   E   = [v_b; H_b] for every b                  [T+B, d]   sequences of n_b + 1 rows
//   E'  = head_layer_0(E)                                    causal over the n_b + 1 rows
//   H1  = E' without the slot rows               [T, d]
//   H2  = head_layer_1(H1)                                   causal over the n_b rows
//   logits = lm_head(H2)                          [T, V_padded]
// Causal attention over the packed [v_b; H_b] lets position t see the slot and positions <= t,
// which is "every position also sees slot 0" with no extra mask; the slot row's own output is
// dropped. So the logits at position t depend on v and on y_in[0..t] only.
// The slot is inserted and removed with row scatters and gathers over two index vectors:
// slot_rows[b] = o_b + b (o_b: the offset of sequence b in y_in) and token_rows[t] = t + b + 1
// for t in sequence b. Backward: dH1 scattered back into a zeroed d E' (the slot rows received
// no gradient), through head layer 0, then dv = d E[slot_rows] and dH = d E[token_rows].
// The sequences of E carry y_in's sequence ids, so every dropout mask of sequence b (base, head
// layers) is drawn from its id and positions: a function of the example, not of the batch.
// Greedy decoding runs the same layers a position at a time over a key/value cache (Cache,
// start_decoding, decode): the logits of forward() at the positions it runs, to rounding (its
// attention keeps the probabilities in f32 where bf16's tensor-core path rounds them).
#pragma once

#include <cstdint>
#include <vector>

#include "model/lm_head.h"
#include "model/roberta.h"

namespace qarac {

class Decoder {
 public:
  // The base and head layers are zero (LayerNorm γ = 1) until loaded or initialised. With
  // tie_lm_head the LM head's output matrix is the base's word embeddings; otherwise its own,
  // padded to a multiple of vocab_multiple rows. The head layers draw dropout from the base's
  // stream as its layers num_layers and num_layers + 1.
  Decoder(const RobertaConfig& config, bool tie_lm_head, int64_t vocab_multiple, DType dtype,
          Device device, uint32_t dropout_stream);
  Decoder(const Decoder&) = delete;
  Decoder& operator=(const Decoder&) = delete;

  RobertaEncoder& base() { return base_; }
  LMHead& lm_head() { return lm_head_; }
  int64_t vocab_size() const { return lm_head_.vocab_size(); }  // the logits' valid columns

  // The base's parameters under their RobertaEncoder names (no "roberta." prefix), the head
  // layers as "decoder_layers.0.*" and "decoder_layers.1.*" (RoBERTa layer names below that:
  // "decoder_layers.0.attention.self.query.weight", ...), then the LM head's "lm_head.*".
  ParameterList parameters();
  ParameterList head_parameters();  // the same without the base's

  struct Activations {
    ForwardOptions options;  // as run: causal
    RobertaEncoder::Activations base;
    ops::Sequences extended;       // the sequences of E: lengths n_b + 1, the ids of y_in's
    Tensor slot_rows, token_rows;  // i32 [B], [T]: where v_b and H_t sit in E
    Tensor extended_input;         // E [T+B, d]
    RobertaLayer::Saved head0, head1;
    RobertaLayer::Scratch extended_scratch;  // head layer 0's; head layer 1 shares the base's
    Tensor head1_input;                      // H1 [T, d]
    LMHead::Activations lm;
    Tensor grad_a, grad_b;          // [T, d]
    Tensor grad_ext_a, grad_ext_b;  // [T+B, d]
    Tensor grad_v;                  // [B, d]
  };

  // The logits [T, padded vocabulary] (a reference into acts) of y_in given v [B, d], one row of
  // v per sequence. Runs causal whatever options.causal says.
  Tensor& forward(const Tensor& v, const TokenBatch& y_in, const ForwardOptions& options,
                  Activations& acts);

  // Greedy decoding's state: the K | V of every position run so far, in every layer, so that a
  // step runs only the new positions. Sequence b owns rows [first[b], first[b] + capacity[b] +
  // 1) of each cache: head layer 0 keeps the slot row first and position t at row first[b] + 1
  // + t; the base's layers and head layer 1 keep position t at first[b] + t.
  struct Cache {
    std::vector<int32_t> first, capacity, length;  // per sequence; length: positions run
    std::vector<Tensor> base;                       // [R, 2d] per base layer
    Tensor head0, head1;                            // [R, 2d]
    // The buffers of a step.
    RobertaEncoder::Activations base_acts;
    RobertaLayer::Saved head0_acts, head1_acts;
    RobertaLayer::Scratch scratch;
    Tensor extended_input, head1_input, last_hidden;
    LMHead::Activations lm;
  };
  // Starts decoding (whatever `cache` held; a start that fails leaves it empty): runs the
  // sequences of y_in given v [B, d], keeping their K | V in `cache` for at most capacity[b]
  // positions of sequence b (y_in's included), and returns the logits of every sequence's last
  // position [B, padded vocabulary] (a reference into the cache). The
  // logits are forward()'s at those positions, without the LM head over the others (T·d·V
  // multiply-adds: with RoBERTa-base's 50k words, some 40% of all the rest of the decoder's).
  Tensor& start_decoding(const Tensor& v, const TokenBatch& y_in, const std::vector<int32_t>& capacity,
                         Cache& cache);
  // Appends tokens[i] to sequence which[i] (an index into start_decoding's batch; each at most
  // once) and returns the logits of those new positions [which.size(), padded vocabulary].
  Tensor& decode(const std::vector<int32_t>& which, const std::vector<int32_t>& tokens, Cache& cache);
  // Given d loss / d logits (it may be acts' logits, overwritten by the cross-entropy),
  // accumulates every parameter's gradient and returns d loss / d v [B, d] (into acts).
  const Tensor& backward(Activations& acts, const Tensor& grad_logits);
  // While set, backward() reports the LM head's, each head layer's and then the base's
  // parameters as it finishes their gradients (RobertaEncoder::set_gradients_ready).
  void set_gradients_ready(GradientsReady ready);

 private:
  RobertaLayer::Settings head_settings(const ForwardOptions& options, int i) const;
  // Everything before the LM head: H2 [T, d] (acts.head1.out).
  const Tensor& hidden(const Tensor& v, const TokenBatch& y_in, const ForwardOptions& options, Activations& acts);
  // Runs `batch`'s tokens, which continue the sequences `which` of the cache (and with v, their
  // slot rows first: the start), and returns the logits of each sequence's last new position.
  Tensor& extend(const Tensor* v, const std::vector<int32_t>& which, const TokenBatch& batch, Cache& cache);

  RobertaConfig config_;
  RobertaEncoder base_;
  RobertaLayer head_layers_[2];
  LMHead lm_head_;
  GradientsReady gradients_ready_;
};

}  // namespace qarac
