// The QARAC models: the sentence encoders' forward and backward passes, and the construction of
// QE, AE and D from a base checkpoint with their parameter lists (naming in qarac.h).
#include "model/qarac.h"

#include <map>
#include <vector>

#include "model/decoder.h"
#include "model/init.h"

namespace qarac {

// ---- SentenceEncoder ----------------------------------------------------------------------------

SentenceEncoder::SentenceEncoder(std::shared_ptr<RobertaEncoder> base, const std::string& name)
    : base_(std::move(base)),
      name_(name),
      pooling_("pooling", base_->config().hidden_size, base_->dtype(), base_->device()) {}

const Tensor& SentenceEncoder::forward(const TokenBatch& batch, const ForwardOptions& options,
                                       Activations& acts) {
  ForwardOptions bidirectional = options;
  bidirectional.causal = false;
  const Tensor& hidden = base_->forward(batch, bidirectional, acts.base);
  return pooling_.forward(hidden, batch.seqs, acts.pooling);
}

void SentenceEncoder::backward(Activations& acts, const Tensor& grad_pooled) {
  const Tensor& hidden = acts.base.output();
  ensure_tensor(acts.grad_hidden, hidden.shape(), hidden.dtype(), hidden.device());
  pooling_.backward(hidden, acts.base.batch.seqs, grad_pooled, acts.pooling, acts.grad_hidden);
  if (gradients_ready_) gradients_ready_(pooling_.parameters());
  base_->backward(acts.base, acts.grad_hidden);
}

void SentenceEncoder::set_gradients_ready(GradientsReady ready) {
  base_->set_gradients_ready(ready);
  gradients_ready_ = std::move(ready);
}

ParameterList SentenceEncoder::parameters() {
  ParameterList out = base_->parameters();
  for (Parameter* p : pooling_.parameters()) out.push_back(p);
  return out;
}

ParameterList SentenceEncoder::head_parameters() { return pooling_.parameters(); }

// ---- QaracModels --------------------------------------------------------------------------------

namespace {

constexpr uint32_t kQuestionStream = 1, kAnswerStream = 2, kDecoderStream = 3;
const char* const kModels[] = {"question_encoder", "answer_encoder", "decoder"};

// Appends views of `params` (sharing their tensors) named prefix + name.
void append_views(std::vector<Parameter>& out, const ParameterList& params,
                  const std::string& prefix) {
  for (const Parameter* p : params) {
    out.push_back(*p);
    out.back().name = prefix + p->name;
  }
}

ParameterList pointers(std::vector<Parameter>& params) {
  ParameterList out;
  for (Parameter& p : params) out.push_back(&p);
  return out;
}

}  // namespace

struct QaracModels::Impl {
  QaracConfig config;
  DType dtype;
  Device device;
  std::unique_ptr<SentenceEncoder> question, answer;
  std::unique_ptr<Decoder> decoder;
  std::vector<Parameter> all;                             // parameters()
  std::map<std::string, std::vector<Parameter>> exports;  // model_parameters()
};

QaracModels::QaracModels(const QaracConfig& config, const TensorMap& base_weights, DType dtype,
                         Device device)
    : impl_(std::make_unique<Impl>()) {
  Impl& m = *impl_;
  m.config = config;
  m.dtype = dtype;
  m.device = device;
  const std::string& source = config.base_source;

  // The new heads from one stream, QE's, AE's, then D's: a model this process does not build
  // skips its draws (an encoder's pooling head: two d×d matrices), so the others are the same
  // on every rank.
  NormalInit heads(config.init_std, config.init_seed);
  const int64_t pooling_draws = 2 * config.base.hidden_size * config.base.hidden_size;
  auto new_base = [&](uint32_t stream) {
    auto base = std::make_shared<RobertaEncoder>(config.base, dtype, device, stream);
    load_parameters(base->parameters(), base_weights, source);
    return base;
  };
  std::shared_ptr<RobertaEncoder> question_base, answer_base;
  if (config.share_encoder_base) {
    if (config.build_question_encoder || config.build_answer_encoder)
      question_base = answer_base = new_base(kQuestionStream);
  } else {
    if (config.build_question_encoder) question_base = new_base(kQuestionStream);
    if (config.build_answer_encoder) answer_base = new_base(kAnswerStream);
  }
  if (config.build_question_encoder) {
    m.question = std::make_unique<SentenceEncoder>(question_base, kModels[0]);
    heads.init(m.question->head_parameters());
  } else {
    heads.skip(pooling_draws);
  }
  if (config.build_answer_encoder) {
    m.answer = std::make_unique<SentenceEncoder>(answer_base, kModels[1]);
    heads.init(m.answer->head_parameters());
  } else {
    heads.skip(pooling_draws);
  }
  if (config.build_decoder) {
    m.decoder = std::make_unique<Decoder>(config.base, config.tie_lm_head, config.vocab_multiple,
                                          dtype, device, kDecoderStream);
    load_parameters(m.decoder->base().parameters(), base_weights, source);
    heads.init(m.decoder->head_parameters());
  }

  // Export names, then the prefixed list.
  for (SentenceEncoder* e : {m.question.get(), m.answer.get()}) {
    if (!e) continue;
    std::vector<Parameter>& list = m.exports[e->name()];
    append_views(list, e->base().parameters(), "roberta.");
    append_views(list, e->head_parameters(), "");
  }
  if (m.decoder) {
    std::vector<Parameter>& list = m.exports[kModels[2]];
    append_views(list, m.decoder->base().parameters(), "roberta.");
    append_views(list, m.decoder->head_parameters(), "");
  }

  if (config.share_encoder_base) {
    if (question_base) append_views(m.all, question_base->parameters(), "shared_encoder.roberta.");
    if (m.question) append_views(m.all, m.question->head_parameters(), "question_encoder.");
    if (m.answer) append_views(m.all, m.answer->head_parameters(), "answer_encoder.");
  } else {
    for (const char* model : {kModels[0], kModels[1]})
      if (m.exports.count(model)) append_views(m.all, pointers(m.exports[model]), std::string(model) + ".");
  }
  if (m.decoder) append_views(m.all, pointers(m.exports[kModels[2]]), "decoder.");
}

QaracModels::~QaracModels() = default;

SentenceEncoder& QaracModels::question_encoder() {
  QARAC_CHECK(impl_->question, "QaracModels: the question encoder was not built in this process");
  return *impl_->question;
}
SentenceEncoder& QaracModels::answer_encoder() {
  QARAC_CHECK(impl_->answer, "QaracModels: the answer encoder was not built in this process");
  return *impl_->answer;
}
Decoder& QaracModels::decoder() {
  QARAC_CHECK(impl_->decoder, "QaracModels: the decoder was not built in this process");
  return *impl_->decoder;
}
ParameterList QaracModels::parameters() { return pointers(impl_->all); }

ParameterList QaracModels::model_parameters(const std::string& model) {
  const auto it = impl_->exports.find(model);
  QARAC_CHECK(it != impl_->exports.end(), "QaracModels::model_parameters: unknown model '", model,
              "' (question_encoder, answer_encoder or decoder)");
  return pointers(it->second);
}

const QaracConfig& QaracModels::config() const { return impl_->config; }
DType QaracModels::dtype() const { return impl_->dtype; }
Device QaracModels::device() const { return impl_->device; }

}  // namespace qarac
