// A RoBERTa sequence classifier: encoder, the QARAC pooling head, a linear layer to the labels
// and softmax cross-entropy. The standard fine-tuning workload: qarac-bench measures its training
// step, and the GPU tests check that its losses track the CPU reference.
#pragma once

#include "model/pooling.h"
#include "model/roberta.h"

namespace qarac {

class SequenceClassifier {
 public:
  SequenceClassifier(const RobertaConfig& config, int64_t labels, DType dtype, Device device);
  ParameterList parameters();
  RobertaEncoder& encoder() { return encoder_; }

  // Forward, mean cross-entropy over the batch and backward: gradients are accumulated into
  // parameters(). labels: i32 [B] on the model's device. Returns the loss as a device scalar
  // [1] (accumulation dtype), so a training loop need not synchronise every step.
  const Tensor& forward_backward(const TokenBatch& batch, const Tensor& labels,
                                 const ForwardOptions& options);

 private:
  RobertaEncoder encoder_;
  PoolingHead pooling_;
  Linear classifier_;
  RobertaEncoder::Activations acts_;
  PoolingHead::Activations pool_acts_;
  Tensor logits_, losses_, loss_, ones_, grad_pooled_, grad_hidden_;
};

}  // namespace qarac
