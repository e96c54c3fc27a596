// The sequence-classifier workload: forward, loss and backward (sequence_classifier.h).
#include "train/sequence_classifier.h"

namespace qarac {

SequenceClassifier::SequenceClassifier(const RobertaConfig& config, int64_t labels, DType dtype, Device device)
    : encoder_(config, dtype, device), pooling_("pooling", config.hidden_size, dtype, device) {
  classifier_.allocate("classifier", config.hidden_size, labels, dtype, device);
  ParameterList classifier;
  classifier_.collect(classifier);
  pack_parameters(classifier);
}

ParameterList SequenceClassifier::parameters() {
  ParameterList out = encoder_.parameters();
  for (Parameter* p : pooling_.parameters()) out.push_back(p);
  classifier_.collect(out);
  return out;
}

const Tensor& SequenceClassifier::forward_backward(const TokenBatch& batch, const Tensor& labels,
                                                   const ForwardOptions& options) {
  const int64_t count = batch.count(), classes = classifier_.out_features();
  const DType dtype = encoder_.dtype(), acc = ops::accumulation_dtype(dtype);
  const Device device = encoder_.device();
  ensure_tensor(logits_, {count, classes}, dtype, device);
  ensure_tensor(losses_, {count}, acc, device);
  ensure_tensor(loss_, {1}, acc, device);
  if (!ones_.defined() || ones_.size(0) != count) {
    // The batch mean as a [1, B] · [B, 1] product, so the loss stays on the device.
    ones_ = Tensor::from_vector(std::vector<double>(static_cast<size_t>(count), 1.0 / static_cast<double>(count)),
                                {count}).to(acc).to(device);
  }

  const Tensor& hidden = encoder_.forward(batch, options, acts_);
  const Tensor& pooled = pooling_.forward(hidden, batch.seqs, pool_acts_);
  classifier_.forward(pooled, logits_);
  // d(mean loss)/d logits = (softmax − onehot) / B, written over the logits in place.
  ops::softmax_cross_entropy(logits_, labels, /*ignore_index=*/-100, losses_, &logits_,
                             1.0 / static_cast<double>(count));
  Tensor loss_view = loss_.reshape({1, 1});
  ops::gemm(losses_.reshape({1, count}), ones_.reshape({count, 1}), loss_view, false, false);

  ensure_tensor(grad_pooled_, pooled.shape(), dtype, device);
  ensure_tensor(grad_hidden_, hidden.shape(), dtype, device);
  classifier_.backward(pooled, logits_, &grad_pooled_);
  pooling_.backward(hidden, batch.seqs, grad_pooled_, pool_acts_, grad_hidden_);
  encoder_.backward(acts_, grad_hidden_);
  return loss_;
}

}  // namespace qarac
