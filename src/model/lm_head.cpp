// The LM head's forward and backward passes (the math is in lm_head.h and below), and the views
// that keep its vocabulary padding internal.
#include "model/lm_head.h"

#include "model/roberta.h"

namespace qarac {
namespace {

// The first `rows` rows of p, sharing its storage, under p's name.
Parameter first_rows(const Parameter& p, int64_t rows) {
  Parameter view;
  view.name = p.name;
  view.value = p.value.slice(0, 0, rows);
  view.grad = p.grad.slice(0, 0, rows);
  view.master = p.master.slice(0, 0, rows);
  return view;
}

}  // namespace

void LMHead::allocate_common(const RobertaConfig& config, DType dtype, Device device) {
  dense_.allocate("lm_head.dense", config.hidden_size, config.hidden_size, dtype, device);
  norm_.allocate("lm_head.layer_norm", config.hidden_size, config.layer_norm_eps, dtype, device);
}

LMHead::LMHead(const RobertaConfig& config, int64_t vocab_multiple, DType dtype, Device device)
    : weight_(&own_weight_), vocab_(config.vocab_size) {
  QARAC_CHECK(vocab_multiple >= 1, "LMHead: vocab_multiple ", vocab_multiple, " must be >= 1");
  allocate_common(config, dtype, device);
  const int64_t padded = (vocab_ + vocab_multiple - 1) / vocab_multiple * vocab_multiple;
  own_weight_.allocate("lm_head.decoder.weight", {padded, config.hidden_size}, dtype, device);
  bias_.allocate("lm_head.bias", {padded}, dtype, device);
  pack();
}

LMHead::LMHead(const RobertaConfig& config, Parameter& output, DType dtype, Device device)
    : weight_(&output), vocab_(config.vocab_size) {
  QARAC_CHECK(output.value.shape() == Shape({config.vocab_size, config.hidden_size}) &&
                  output.value.dtype() == dtype && output.value.device() == device,
              "LMHead: the tied output matrix ", output.name, " ", output.value.str(), " is not [",
              config.vocab_size, ", ", config.hidden_size, "] in ", dtype_name(dtype), " on ",
              device.str());
  allocate_common(config, dtype, device);
  bias_.allocate("lm_head.bias", {vocab_}, dtype, device);
  pack();
}

void LMHead::pack() {
  ParameterList own;
  dense_.collect(own);
  norm_.collect(own);
  if (!tied()) own.push_back(&own_weight_);
  own.push_back(&bias_);
  pack_parameters(own);
  if (!tied()) weight_view_ = first_rows(own_weight_, vocab_);
  bias_view_ = first_rows(bias_, vocab_);
}

ParameterList LMHead::parameters() {
  ParameterList out;
  dense_.collect(out);
  norm_.collect(out);
  if (!tied()) out.push_back(&weight_view_);
  out.push_back(&bias_view_);
  return out;
}

void LMHead::load(const std::map<std::string, Tensor>& tensors, const std::string& source) {
  load_parameters(parameters(), tensors, source, "lm_head.");
}

// logits = W · LN(GELU(dense(x))) + b, the GELU fused into the dense layer's epilogue.
Tensor& LMHead::forward(const Tensor& x, Activations& acts) const {
  const int64_t tokens = x.size(0), d = x.size(1);
  for (Tensor* t : {&acts.pre, &acts.act, &acts.normed})
    ensure_tensor(*t, {tokens, d}, x.dtype(), x.device());
  ensure_tensor(acts.logits, {tokens, padded_vocab()}, x.dtype(), x.device());
  dense_.forward(x, acts.act, ops::Activation::gelu, &acts.pre);
  norm_.forward(acts.act, acts.normed, acts.norm);
  ops::linear_forward(acts.normed, weight_->value, bias_.value, acts.logits);
  return acts.logits;
}

// Backward through the three stages: dW += dlogitsᵀ·normed, db += Σ dlogits (zero in padded
// columns, so the padded rows get nothing), d normed = dlogits·W; LayerNorm backward to d act;
// d pre = d act ⊙ GELU'(pre); the dense layer's backward to dx.
void LMHead::backward(const Tensor& x, Activations& acts, const Tensor& grad_logits, Tensor& dx) {
  ensure_tensor(acts.grad_normed, acts.normed.shape(), x.dtype(), x.device());
  ensure_tensor(acts.grad_act, acts.act.shape(), x.dtype(), x.device());
  ops::linear_backward(acts.normed, weight_->value, grad_logits, &acts.grad_normed, weight_->grad,
                       &bias_.grad);
  norm_.backward(acts.act, acts.grad_normed, acts.norm, acts.grad_act);
  ops::gelu_backward(acts.pre, acts.grad_act, acts.grad_act);
  dense_.backward(x, acts.grad_act, &dx);
}

}  // namespace qarac
