// Independent references for the trainer's glue: what sits between the objectives and the kernels
// (train/trainer.cpp, train/optimizer.cpp, parallel/gradient_sync.cpp), each checked against a
// formula written here instead of against another run of the same code, which would share its
// mistakes:
// - the clipping factor, the global gradient norm over every parameter of every group, and the
//   AdamW and NAdam updates of the Optimizer (with clipping on, off and idle) against host loops
//   written from their definitions (torch.optim.AdamW / NAdam, torch.nn.utils.clip_grad_norm_);
// - one step of the training loop (the Trainer in process, f64, micro-batches, unequal task
//   weights, clipping active) against the gradients of each task's whole global batch, computed
//   separately and combined by hand as Σ_t w_t ∇loss_t (docs/design.md §3): the logged gradient
//   norm and losses, and the checkpoint's moments and weights;
// - the rank's loaders restored from a cursor past an epoch boundary: the same examples follow;
// - the replica checksum and the diverge fault: one element changed anywhere, in either master
//   dtype, changes the checksum; the fault shifts one seeded random element of a shared model.
#include <gtest/gtest.h>
#include <hdf5.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <fstream>
#include <random>
#include <set>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/hdf5_seal.h"
#include "data/shards.h"
#include "data/task.h"
#include "model/roberta.h"
#include "parallel/gradient_sync.h"
#include "support/test_support.h"
#include "support/training_fixtures.h"
#include "train/checkpoint.h"
#include "train/fault.h"
#include "train/optimizer.h"
#include "train/plan_report.h"
#include "train/run_dir.h"
#include "train/task_loaders.h"
#include "train/trainer.h"
#include "train/workload.h"

namespace fs = std::filesystem;
using namespace qarac;

namespace {

using Values = std::vector<double>;

Values host(const Tensor& t) { return t.to(Device::cpu()).to(DType::f64).to_vector<double>(); }

// max |got − want| over the elements, relative to max |want| (1 for an all-zero `want`).
double relative_error(const Values& got, const Values& want) {
  EXPECT_EQ(got.size(), want.size());
  double worst = 0, scale = 0;
  for (size_t i = 0; i < want.size() && i < got.size(); ++i) {
    worst = std::max(worst, std::fabs(got[i] - want[i]));
    scale = std::max(scale, std::fabs(want[i]));
  }
  return worst / (scale > 0 ? scale : 1);
}

double sum_of_squares(const std::vector<Values>& tensors) {
  long double sum = 0;
  for (const Values& t : tensors)
    for (double x : t) sum += static_cast<long double>(x) * x;
  return static_cast<double>(sum);
}

// torch.nn.utils.clip_grad_norm_'s factor: clip / (norm + 1e-6) when the norm exceeds the clip.
double torch_clip_factor(double norm, double clip) {
  return clip > 0 && norm > clip ? clip / (norm + 1e-6) : 1.0;
}

// One parameter's optimizer state on the host.
struct HostState {
  Values p, m, v;
};

// One update of every state with gradients `grads` times `scale`, at 1-based step t, as
// torch.optim.AdamW and torch.optim.NAdam define it (NAdam's μ_t = β1 (1 − ½ 0.96^(t ψ)) and its
// running product Π_t carried in `mu_product`).
void reference_update(std::vector<HostState>& states, const std::vector<Values>& grads, double scale,
                      const OptimizerConfig& o, double lr, int64_t t, double& mu_product,
                      const std::vector<bool>& exempt = {}) {
  const double bc1 = 1 - std::pow(o.beta1, static_cast<double>(t));
  const double bc2 = 1 - std::pow(o.beta2, static_cast<double>(t));
  const auto mu = [&](int64_t step) {
    return o.beta1 * (1 - 0.5 * std::pow(0.96, static_cast<double>(step) * o.momentum_decay));
  };
  const double mu_t = mu(t), mu_next = mu(t + 1);
  const double product = mu_product * mu_t, product_next = product * mu_next;
  for (size_t k = 0; k < states.size(); ++k) {
    HostState& s = states[k];
    const double wd = k < exempt.size() && exempt[k] ? 0.0 : o.weight_decay;
    for (size_t i = 0; i < s.p.size(); ++i) {
      double g = scale * grads[k][i];
      const bool decoupled = o.kind == OptimizerKind::adamw || o.decoupled_weight_decay;
      if (decoupled)
        s.p[i] -= lr * wd * s.p[i];
      else
        g += wd * s.p[i];
      s.m[i] = o.beta1 * s.m[i] + (1 - o.beta1) * g;
      s.v[i] = o.beta2 * s.v[i] + (1 - o.beta2) * g * g;
      const double denom = std::sqrt(s.v[i] / bc2) + o.eps;
      if (o.kind == OptimizerKind::adamw)
        s.p[i] -= lr * (s.m[i] / bc1) / denom;
      else
        s.p[i] -= lr * (1 - mu_t) / (1 - product) * g / denom + lr * mu_next / (1 - product_next) * s.m[i] / denom;
    }
  }
  mu_product = product;
}

// Parameters of these shapes in f64 with weights drawn from `rng`, named "p<k>" or `names`.
std::vector<Parameter> random_parameters(const std::vector<Shape>& shapes, std::mt19937& rng,
                                         const std::vector<std::string>& names = {}) {
  std::vector<Parameter> params(shapes.size());
  std::normal_distribution<double> normal(0, 0.5);
  for (size_t k = 0; k < shapes.size(); ++k) {
    params[k].allocate(k < names.size() ? names[k] : "p" + std::to_string(k), shapes[k], DType::f64, Device::cpu());
    Values w(static_cast<size_t>(shape_numel(shapes[k])));
    for (double& x : w) x = normal(rng);
    params[k].assign(Tensor::from_vector(w, shapes[k]));
  }
  return params;
}

ParameterList pointers(std::vector<Parameter>& params) {
  ParameterList list;
  for (Parameter& p : params) list.push_back(&p);
  return list;
}

}  // namespace

// ---- Clipping, the gradient norm and the optimizers against their definitions ---------------

TEST(ClipFactor, IsTorchsClipGradNormFactor) {
  // The norm the run logged: 353 against a clip of 1 scales by 1/353, never by 353.
  EXPECT_DOUBLE_EQ(Optimizer::clip_factor(353.0, 1.0), 1.0 / (353.0 + 1e-6));
  EXPECT_DOUBLE_EQ(Optimizer::clip_factor(4.0, 0.5), 0.5 / (4.0 + 1e-6));
  EXPECT_EQ(Optimizer::clip_factor(0.25, 1.0), 1.0);  // below the clip: untouched
  EXPECT_EQ(Optimizer::clip_factor(1.0, 1.0), 1.0);   // at it
  EXPECT_EQ(Optimizer::clip_factor(353.0, 0.0), 1.0);  // clipping off
  EXPECT_EQ(Optimizer::clip_factor(0.0, 1.0), 1.0);
}

TEST(GlobalGradNorm, CountsEveryParameterOfEveryGroup) {
  std::mt19937 rng(11);
  std::vector<Parameter> a = random_parameters({{3, 4}, {5}}, rng), b = random_parameters({{2, 3, 2}}, rng);
  std::vector<Values> grads;
  std::normal_distribution<double> normal(0, 2);
  for (std::vector<Parameter>* list : {&a, &b})
    for (Parameter& p : *list) {
      Values g(static_cast<size_t>(p.grad.numel()));
      for (double& x : g) x = normal(rng);
      p.grad.copy_(Tensor::from_vector(g, p.grad.shape()));
      grads.push_back(g);
    }
  std::vector<parallel::ParameterGroup> groups(2);
  groups[0] = {"first", {parallel::Model::answer_encoder}, {0}, pointers(a)};
  groups[1] = {"second", {parallel::Model::decoder}, {0}, pointers(b)};
  parallel::GradientSync sync(nullptr, groups, parallel::Backend::mpi, 1 << 20);
  const double want = sum_of_squares(grads);
  EXPECT_NEAR(sync.global_grad_sum_of_squares("step 1"), want, 1e-12 * want);
  ParameterList all = pointers(a);
  for (Parameter* p : pointers(b)) all.push_back(p);
  const Optimizer optimizer(all, OptimizerConfig{});
  EXPECT_NEAR(optimizer.grad_norm(), std::sqrt(want), 1e-12 * std::sqrt(want));
}

struct OptimizerCase {
  const char* label;
  OptimizerKind kind;
  bool decoupled;
  double clip;  // relative to the gradients' norm (about 5): 0 off, 100 idle, 0.2 active
  DecayExempt exempt = DecayExempt::none;
};

class OptimizerReference : public ::testing::TestWithParam<OptimizerCase> {};

// Four steps at changing rates with new gradients each step: weights and both moments after
// every step, and the norm step() returns, against reference_update.
TEST_P(OptimizerReference, FollowsTheDefinitionStepByStep) {
  const OptimizerCase& param = GetParam();
  std::mt19937 rng(7);
  // Hugging Face names: a bias and a LayerNorm weight between weights, which bias_norm exempts,
  // so that the spans of one decay are cut out of one packed span.
  const std::vector<Shape> shapes = {{3, 4}, {5}, {4}, {2, 2, 2}, {3}};
  const std::vector<std::string> names = {"a.dense.weight", "a.dense.bias", "a.LayerNorm.weight",
                                          "b.dense.weight", "lm_head.layer_norm.weight"};
  std::vector<Parameter> params = random_parameters(shapes, rng, names);
  pack_parameters(pointers(params));
  const std::vector<bool> exempt = {false, param.exempt == DecayExempt::bias_norm,
                                    param.exempt == DecayExempt::bias_norm, false,
                                    param.exempt == DecayExempt::bias_norm};
  OptimizerConfig config;
  config.kind = param.kind;
  config.decoupled_weight_decay = param.decoupled;
  config.decay_exempt = param.exempt;
  config.beta1 = 0.8;
  config.beta2 = 0.95;
  config.eps = 1e-6;
  config.weight_decay = 0.1;
  config.momentum_decay = 0.05;
  Optimizer optimizer(pointers(params), config);
  std::vector<HostState> states;
  for (const Parameter& p : params) {
    const size_t n = static_cast<size_t>(p.master.numel());
    states.push_back({host(p.master), Values(n), Values(n)});
  }
  double mu_product = 1;
  std::normal_distribution<double> normal(0, 1);
  for (int64_t t = 1; t <= 4; ++t) {
    SCOPED_TRACE("step " + std::to_string(t));
    std::vector<Values> grads;
    for (Parameter& p : params) {
      Values g(static_cast<size_t>(p.grad.numel()));
      for (double& x : g) x = normal(rng);
      p.grad.copy_(Tensor::from_vector(g, p.grad.shape()));
      grads.push_back(g);
    }
    const double norm = std::sqrt(sum_of_squares(grads));
    const double lr = 1e-2 / static_cast<double>(t);
    const double returned = optimizer.step(lr, param.clip);
    EXPECT_NEAR(returned, param.clip > 0 ? norm : 0.0, 1e-12 * norm);
    reference_update(states, grads, torch_clip_factor(norm, param.clip), config, lr, t, mu_product, exempt);
    for (size_t k = 0; k < params.size(); ++k) {
      SCOPED_TRACE(params[k].name);
      EXPECT_LT(relative_error(host(params[k].master), states[k].p), 1e-13);
      EXPECT_LT(relative_error(host(optimizer.first_moments()[k]), states[k].m), 1e-12);
      EXPECT_LT(relative_error(host(optimizer.second_moments()[k]), states[k].v), 1e-12);
    }
  }
  EXPECT_EQ(optimizer.steps(), 4);
}

INSTANTIATE_TEST_SUITE_P(
    KindsAndClipping, OptimizerReference,
    ::testing::Values(OptimizerCase{"adamw_no_clip", OptimizerKind::adamw, true, 0},
                      OptimizerCase{"adamw_clip_idle", OptimizerKind::adamw, true, 100},
                      OptimizerCase{"adamw_clip_active", OptimizerKind::adamw, true, 0.2},
                      OptimizerCase{"nadam_clip_active", OptimizerKind::nadam, true, 0.2},
                      OptimizerCase{"nadam_l2_clip_active", OptimizerKind::nadam, false, 0.2},
                      OptimizerCase{"adamw_bias_norm_exempt", OptimizerKind::adamw, true, 0.2, DecayExempt::bias_norm},
                      OptimizerCase{"nadam_l2_bias_norm_exempt", OptimizerKind::nadam, false, 0.2,
                                    DecayExempt::bias_norm}),
    [](const ::testing::TestParamInfo<OptimizerCase>& c) { return std::string(c.param.label); });

// The constructor from ops::AdamW hyper-parameters (qarac-bench's classifier) is AdamW with its
// betas, eps and weight decay, not the defaults: three steps against the definition.
TEST(OptimizerFromAdamW, TakesEveryHyperParameter) {
  std::mt19937 rng(9);
  std::vector<Parameter> params = random_parameters({{3, 4}, {5}}, rng);
  ops::AdamW hyper;
  hyper.beta1 = 0.8;
  hyper.beta2 = 0.95;
  hyper.eps = 1e-2;  // of the order of sqrt(v): its place in the update shows
  hyper.weight_decay = 0.3;
  Optimizer optimizer(pointers(params), hyper);
  OptimizerConfig config;
  config.beta1 = hyper.beta1;
  config.beta2 = hyper.beta2;
  config.eps = hyper.eps;
  config.weight_decay = hyper.weight_decay;
  std::vector<HostState> states;
  for (const Parameter& p : params) {
    const size_t n = static_cast<size_t>(p.master.numel());
    states.push_back({host(p.master), Values(n), Values(n)});
  }
  double mu_product = 1;
  std::normal_distribution<double> normal(0, 0.05);
  for (int64_t t = 1; t <= 3; ++t) {
    std::vector<Values> grads;
    for (Parameter& p : params) {
      Values g(static_cast<size_t>(p.grad.numel()));
      for (double& x : g) x = normal(rng);
      p.grad.copy_(Tensor::from_vector(g, p.grad.shape()));
      grads.push_back(g);
    }
    optimizer.step(0.1);
    reference_update(states, grads, 1.0, config, 0.1, t, mu_product);
  }
  for (size_t k = 0; k < params.size(); ++k)
    EXPECT_LT(relative_error(host(params[k].master), states[k].p), 1e-13) << params[k].name;
}

// bias_norm leaves out what Hugging Face's Trainer does (get_decay_parameter_names: every bias and
// a LayerNorm module's parameters): in a RoBERTa encoder the embeddings' LayerNorm and, per layer,
// 6 biases and 2 LayerNorms; none leaves out nothing.
TEST(DecayExempt, BiasNormLeavesOutTheBiasesAndLayerNormsOfRoberta) {
  RobertaConfig config;
  config.vocab_size = 13;
  config.hidden_size = 8;
  config.num_layers = 2;
  config.num_heads = 2;
  config.intermediate_size = 12;
  config.max_position_embeddings = 9;
  RobertaEncoder encoder(config, DType::f32, Device::cpu());
  std::vector<std::string> exempt;
  for (const Parameter* p : encoder.parameters()) {
    EXPECT_FALSE(exempt_from_decay(DecayExempt::none, p->name)) << p->name;
    if (exempt_from_decay(DecayExempt::bias_norm, p->name)) exempt.push_back(p->name);
  }
  EXPECT_EQ(exempt.size(), 2u + 2u * 10u);
  for (const std::string& name : exempt)
    EXPECT_TRUE(name.find("LayerNorm.") != std::string::npos || name.rfind(".bias") == name.size() - 5) << name;
  EXPECT_TRUE(exempt_from_decay(DecayExempt::bias_norm, "lm_head.layer_norm.weight"));
  EXPECT_TRUE(exempt_from_decay(DecayExempt::bias_norm, "lm_head.bias"));
  EXPECT_FALSE(exempt_from_decay(DecayExempt::bias_norm, "lm_head.decoder.weight"));
  EXPECT_FALSE(exempt_from_decay(DecayExempt::bias_norm, "pooling.global_projection.weight"));
}

// ---- One step of the training loop against the tasks' gradients combined by hand -------------

namespace {

const std::string kSample = std::string(QARAC_SAMPLE_DIR) + "/";

// Every parameter's values, in the order of `params`.
std::vector<Values> snapshot(const ParameterList& params, Tensor Parameter::*field) {
  std::vector<Values> out;
  for (const Parameter* p : params) out.push_back(host(p->*field));
  return out;
}

ParameterList group_parameters(const std::vector<parallel::ParameterGroup>& groups) {
  ParameterList all;
  for (const parallel::ParameterGroup& g : groups) all.insert(all.end(), g.params.begin(), g.params.end());
  return all;
}

}  // namespace

class TrainerStep : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    root_ = new test_support::TempDir("trainer-glue");
    test_support::write_tiny_base(root_->path / "base", kSample + "tokenizer");
    const test_support::CliResult prep =
        test_support::prepare_sample_data(QARAC_PREP_EXE, kSample, root_->path / "data");
    ASSERT_EQ(prep.code, 0) << prep.output;
  }
  static void TearDownTestSuite() {
    delete root_;
    root_ = nullptr;
  }
  static test_support::TempDir* root_;
};
test_support::TempDir* TrainerStep::root_ = nullptr;

// One step in f64 with dropout, every task split into micro-batches (its examples / N_t < 1 of
// its loss each) and weights w_t = 2, 0.5, 1.5, 0.25 and 0.75 for rehearsal (its head trained,
// a group of its own), clipped to a quarter of the norm. The
// reference runs each task's whole global batch alone at weight 1 (its gradient ∇loss_t, the
// mean over the batch), combines g = Σ_t w_t ∇loss_t, and applies torch's clipping and AdamW's
// first step by hand. The gradient norm without its square root, an inverted clip factor, or a
// micro-batch scaled by w_t instead of w_t · (its examples) / N_t each move the logged norm or
// the moments far beyond the f64 tolerance.
TEST_F(TrainerStep, OneStepIsTheTasksGradientsCombinedByHand) {
  TrainConfig c;
  c.output = (root_->path / "run").string();
  c.base = (root_->path / "base").string();
  c.data_dir = (root_->path / "data").string();
  c.steps = 1;
  c.seed = 3;
  c.dtype = "f64";
  c.dropout = 0.1;
  c.micro_tokens = 48;
  c.lr = 1e-3;
  c.warmup = 0;
  c.decay = "linear";  // step 1 at the peak rate, the rate after it half of that
  c.final_lr = 0.5;
  c.checkpoint_every = 1;
  c.log_every = 1;
  const double weights[data::kTaskCount] = {2.0, 0.5, 1.5, 0.25, 0.75};
  const int64_t batches[data::kTaskCount] = {6, 5, 4, 7, 5};
  for (int t = 0; t < data::kTaskCount; ++t) c.task[t] = {weights[t], batches[t]};
  c.mlm_head = "trained";
  c.eval_tokenizer = kSample + "tokenizer";  // the rehearsal's <mask>
  check_values(c);

  // The reference: the same models and global batches, each task's gradient alone.
  const parallel::TaskPlan plan = make_plan(c, 1, estimate_task_costs(c));
  std::unique_ptr<Workload> workload = make_qarac_workload(c, Device::cpu(), {true, true, true});
  const std::vector<parallel::ParameterGroup> groups = workload->parameter_groups(plan);
  const ParameterList params = group_parameters(groups);
  const std::vector<Values> start = snapshot(params, &Parameter::master);
  TaskLoaders loaders(plan.rank_plan(0), c, 0, 0);
  const data::StepBatch batch = loaders.next();
  ASSERT_EQ(batch.tasks.size(), 5u);
  std::vector<Values> g;
  for (const Parameter* p : params) g.emplace_back(static_cast<size_t>(p->grad.numel()), 0.0);
  double losses[data::kTaskCount] = {};
  for (const data::TaskBatch& task : batch.tasks) {
    ASSERT_EQ(task.count(), task.global_count);
    ASSERT_GT(static_cast<int64_t>(task.split(c.micro_tokens).size()), 1)
        << data::task_name(task.task) << " must run in several micro-batches";
    zero_grads(params);
    ObjectiveOptions options;
    options.forward.training = true;
    options.forward.seed = static_cast<uint64_t>(c.seed);
    options.forward.step = 0;
    const int t = static_cast<int>(task.task);
    losses[t] = host(workload->run(task, options))[0];
    const std::vector<Values> grad_t = snapshot(params, &Parameter::grad);
    for (size_t k = 0; k < g.size(); ++k)
      for (size_t i = 0; i < g[k].size(); ++i) g[k][i] += weights[t] * grad_t[k][i];
  }
  const double norm = std::sqrt(sum_of_squares(g));
  ASSERT_GT(norm, 0);
  c.clip = norm / 4;

  Trainer trainer(c);
  ASSERT_EQ(trainer.run(), Trainer::RunEnd::finished);

  // The logged norm (before clipping) and the losses of the global batches.
  std::ifstream metrics(fs::path(c.output) / "metrics.jsonl");
  nlohmann::json line;
  for (std::string text; std::getline(metrics, text);) {
    const nlohmann::json j = nlohmann::json::parse(text);
    if (!j.value("eval", false)) line = j;
  }
  ASSERT_FALSE(line.is_null());
  EXPECT_NEAR(line.at("grad_norm").get<double>(), norm, 1e-10 * norm);
  EXPECT_EQ(line.at("lr").get<double>(), c.lr);
  double weighted = 0;
  for (int t = 0; t < data::kTaskCount; ++t) {
    const char* name = data::task_name(static_cast<data::Task>(t));
    EXPECT_NEAR(line.at("loss").at(name).get<double>(), losses[t], 1e-10 * losses[t]) << name;
    weighted += weights[t] * losses[t];
  }
  EXPECT_NEAR(line.at("loss_weighted").get<double>(), weighted, 1e-10 * weighted);

  // The checkpoint of step 1 against AdamW's first step on the clipped g.
  std::unique_ptr<Workload> restored = make_qarac_workload(c, Device::cpu(), {true, true, true});
  const std::vector<parallel::ParameterGroup> restored_groups = restored->parameter_groups(plan);
  Optimizer optimizer(group_parameters(restored_groups), c.optimizer_config());
  std::vector<CheckpointPart> parts;
  for (const parallel::ParameterGroup& group : restored_groups) parts.push_back({group.name, group.params});
  load_checkpoint(checkpoint_path(checkpoint_dir(c.output), 1), optimizer, {}, parts);
  std::vector<HostState> want;
  for (const Values& p : start) want.push_back({p, Values(p.size()), Values(p.size())});
  double mu_product = 1;
  reference_update(want, g, torch_clip_factor(norm, c.clip), c.optimizer_config(), c.lr, 1, mu_product);
  // Moments relative to their largest element over the whole model, not per tensor: the gradient
  // of the attention key bias is 0 (the softmax cancels it), and so are its moments.
  const ParameterList trained = optimizer.parameters();
  ASSERT_EQ(trained.size(), params.size());
  double m_scale = 0, v_scale = 0;
  for (const HostState& s : want)
    for (size_t i = 0; i < s.m.size(); ++i) {
      m_scale = std::max(m_scale, std::fabs(s.m[i]));
      v_scale = std::max(v_scale, s.v[i]);
    }
  for (size_t k = 0; k < trained.size(); ++k) {
    SCOPED_TRACE(trained[k]->name);
    const Values m = host(optimizer.first_moments()[k]), v = host(optimizer.second_moments()[k]);
    const Values p = host(trained[k]->master);
    for (size_t i = 0; i < p.size(); ++i) {
      ASSERT_NEAR(m[i], want[k].m[i], 1e-10 * m_scale) << i;
      ASSERT_NEAR(v[i], want[k].v[i], 1e-10 * v_scale) << i;
      // Adam's first step moves a weight by about lr whatever its gradient's scale: the moments
      // above see the scale, this the update rule and the weight decay.
      ASSERT_NEAR(p[i], want[k].p[i], 1e-6 * c.lr) << i;
    }
  }
}

// A run resumed from a data cursor goes on with the same examples, in particular from a cursor
// past an epoch boundary, whose order is another permutation of the stream than the first
// epoch's: the examples (their places in the stream) and tokens, not only their ids, which are
// a function of (task, epoch, position) whatever the order.
TEST_F(TrainerStep, RestoredLoadersGoOnWithTheSameExamples) {
  TrainConfig c;
  c.data_dir = (root_->path / "data").string();
  c.seed = 5;
  for (TaskSettings& t : c.task) t.batch = 400;
  const data::RankPlan plan = data::RankPlan::single();
  TaskLoaders straight(plan, c, 0, 0);
  int past_boundary = 0;
  for (int step = 0; step < 12 && past_boundary < 3; ++step) {
    const data::LoaderCursor cursor = straight.cursor();
    bool every_task_past = true;
    for (const data::TaskCursor& t : cursor.tasks) every_task_past = every_task_past && t.epoch > 0;
    if (every_task_past) {
      ++past_boundary;
      TaskLoaders resumed(plan, c, 0, 0);
      resumed.restore(cursor, "the cursor");
      const data::StepBatch want = straight.next(), got = resumed.next();
      ASSERT_EQ(got.tasks.size(), want.tasks.size());
      for (size_t t = 0; t < want.tasks.size(); ++t) {
        SCOPED_TRACE(data::task_name(want.tasks[t].task) + std::string(" at step ") + std::to_string(step));
        EXPECT_EQ(got.tasks[t].examples, want.tasks[t].examples);
        EXPECT_EQ(got.tasks[t].ids, want.tasks[t].ids);
        for (size_t f = 0; f < want.tasks[t].fields.size(); ++f)
          EXPECT_EQ(got.tasks[t].fields[f].tokens, want.tasks[t].fields[f].tokens);
      }
    } else {
      straight.next();
    }
  }
  EXPECT_EQ(past_boundary, 3) << "every stream must be past its first epoch within 12 steps of 400 examples";
}

// Pre-training reads the first examples of its held-out text; the whole stream is read once for
// its content checksum, as the QARAC evaluator's streams are (before: a stream whose seal does
// not vouch for it, one written before seals, was evaluated as it read). Here a token changed
// and the file sealed again, which a pre-seal file's damage comes to. Only the rank that evaluates
// (rank 0) reads the held-out text: the others never open it.
TEST_F(TrainerStep, PretrainingChecksItsHeldOutTextWhereItEvaluates) {
  const fs::path held = root_->path / "held-mlm";
  fs::create_directories(held);
  const std::string text = (held / "encode_decode.h5").string();
  fs::copy_file(root_->path / "data" / "encode_decode.h5", text, fs::copy_options::overwrite_existing);
  const hid_t file = H5Fopen(text.c_str(), H5F_ACC_RDWR, H5P_DEFAULT);
  ASSERT_GE(file, 0);
  const hid_t tokens = H5Dopen2(file, "fields/text/tokens", H5P_DEFAULT);
  const hid_t space = H5Dget_space(tokens);
  const hsize_t at = 3, one = 1;
  H5Sselect_hyperslab(space, H5S_SELECT_SET, &at, nullptr, &one, nullptr);
  const hid_t mem = H5Screate_simple(1, &one, nullptr);
  const int32_t other = 7;
  EXPECT_GE(H5Dwrite(tokens, H5T_NATIVE_INT32, mem, space, H5P_DEFAULT, &other), 0);
  H5Sclose(mem);
  H5Sclose(space);
  H5Dclose(tokens);
  H5Fclose(file);
  seal_hdf5_file(text);

  TrainConfig c;
  c.mode = "mlm";
  c.tokenizer = kSample + "tokenizer";
  c.hidden = 16;
  c.layers = 1;
  c.max_positions = 64;
  c.eval_dir = held.string();
  c.eval_examples = 4;
  test_support::expect_input_error([&] { make_mlm_workload(c, Device::cpu(), true); }, {text, "checksum mismatch"});
  EXPECT_NO_THROW(make_mlm_workload(c, Device::cpu(), false));
  // An empty one (before: accepted, and no mlm.loss evaluated, unsaid).
  fs::remove(text);
  {
    data::TaskStreamWriter writer(text, data::Task::encode_decode);
    writer.finish({});
    writer.publish();
  }
  test_support::expect_input_error([&] { make_mlm_workload(c, Device::cpu(), true); },
                                   {text, ": holds no example (eval.dir's held-out text)"});
}

// Pre-training from a base without its MLM head (a RobertaModel) starts a new head, as a new
// model's (matrices N(0, model.init_std), LayerNorm 1 and 0, biases 0), and says so. Before, the
// head stayed as allocated: its dense matrix 0, so its LayerNorm normalised rows of zeros.
TEST_F(TrainerStep, PretrainingFromAHeadlessBaseStartsANewHead) {
  const fs::path headless = root_->path / "headless-base";
  test_support::write_tiny_base(headless, kSample + "tokenizer", 0, /*mlm_head=*/false);
  TrainConfig c;
  c.mode = "mlm";
  c.base = headless.string();
  c.tokenizer = kSample + "tokenizer";
  c.init_std = 0.05;
  ::testing::internal::CaptureStderr();
  std::unique_ptr<Workload> workload = make_mlm_workload(c, Device::cpu(), false);
  const std::string said = ::testing::internal::GetCapturedStderr();
  EXPECT_NE(said.find("has no MLM head (lm_head.*"), std::string::npos) << said;
  EXPECT_NE(said.find("starts a new one (matrices N(0, 0.05)"), std::string::npos) << said;
  int checked = 0;
  for (const Parameter* p : group_parameters(workload->parameter_groups(make_plan(c, 1, estimate_task_costs(c))))) {
    if (p->name != "lm_head.dense.weight" && p->name != "lm_head.layer_norm.weight") continue;
    ++checked;
    const std::vector<double> w = p->master.to(DType::f64).to_vector<double>();
    double squares = 0;
    for (double x : w) squares += x * x;
    const double rms = std::sqrt(squares / static_cast<double>(w.size()));
    if (p->name == "lm_head.dense.weight")
      EXPECT_NEAR(rms, 0.05, 0.01) << "the dense matrix drawn from N(0, 0.05)";
    else
      EXPECT_EQ(rms, 1.0) << "LayerNorm's scale left at 1";
  }
  EXPECT_EQ(checked, 2);
}

// ---- The replica checksum and the diverge fault -------------------------------------------------

// One element changed by one unit in the last place, at every position of every parameter, in
// f32 and f64 masters, loose or packed into one span: the checksum changes each time, and comes
// back when the element does.
TEST(ReplicaChecksum, SeesOneElementChangedAnywhere) {
  for (const auto& [dtype, packed] : {std::pair{DType::f32, false}, std::pair{DType::f64, false},
                                      std::pair{DType::f32, true}}) {
    SCOPED_TRACE(std::string(dtype_name(dtype)) + (packed ? " packed" : ""));
    std::mt19937 rng(5);
    std::vector<Parameter> params(3);
    const std::vector<Shape> shapes = {{4, 5}, {7}, {3, 2, 3}};
    for (size_t k = 0; k < params.size(); ++k) {
      params[k].allocate("p" + std::to_string(k), shapes[k], dtype, Device::cpu());
      params[k].assign(test_support::uniform(shapes[k], rng));
    }
    const ParameterList list = pointers(params);
    if (packed) pack_parameters(list);
    const uint64_t original = parallel::replica_checksum(list);
    EXPECT_EQ(parallel::replica_checksum(list), original);
    std::set<uint64_t> seen{original};
    for (Parameter& p : params)
      for (int64_t i = 0; i < p.master.numel(); ++i) {
        const Tensor before = p.master.clone();
        if (dtype == DType::f64) {
          double& x = p.master.data<double>()[i];
          x = std::nextafter(x, 2.0);
        } else {
          float& x = p.master.data<float>()[i];
          x = std::nextafter(x, 2.0f);
        }
        const uint64_t changed = parallel::replica_checksum(list);
        EXPECT_NE(changed, original) << p.name << " element " << i;
        seen.insert(changed);
        p.master.copy_(before);
      }
    EXPECT_EQ(parallel::replica_checksum(list), original);
    EXPECT_EQ(seen.size(), 1u + 20 + 7 + 18) << "two changes with the same checksum";
  }
}

TEST(DivergeFault, ShiftsOneSeededElementOfASharedModel) {
  std::mt19937 rng(9);
  std::vector<Parameter> alone = random_parameters({{6}}, rng), shared = random_parameters({{4, 8}, {16}, {2, 5}}, rng);
  std::vector<parallel::ParameterGroup> groups(2);
  groups[0] = {"question_encoder", {parallel::Model::question_encoder}, {1}, pointers(alone)};
  groups[1] = {"answer_encoder", {parallel::Model::answer_encoder}, {0, 1}, pointers(shared)};

  // The draws cover every shared parameter and both halves of each.
  std::set<std::pair<const Parameter*, bool>> covered;
  for (uint64_t seed = 0; seed < 200; ++seed) {
    const auto [p, element] = Fault::pick_element(groups[1].params, seed);
    ASSERT_GE(element, 0);
    ASSERT_LT(element, p->master.numel());
    covered.insert({p, 2 * element >= p->master.numel()});
    EXPECT_EQ(Fault::pick_element(groups[1].params, seed), std::make_pair(p, element)) << "seed " << seed;
  }
  EXPECT_EQ(covered.size(), 2 * shared.size());

  ::setenv("QARAC_FAULT", "diverge:1:3:14", 1);
  const Fault fault = Fault::from_env();
  EXPECT_EQ(fault.kind, Fault::diverge);
  EXPECT_EQ(fault.seed, 14u);
  const std::vector<Values> before = snapshot(pointers(shared), &Parameter::master);
  const std::vector<Values> alone_before = snapshot(pointers(alone), &Parameter::master);
  fault.inject(1, 2, groups);  // not its step
  fault.inject(0, 3, groups);  // not its rank
  EXPECT_EQ(snapshot(pointers(shared), &Parameter::master), before);
  fault.inject(1, 3, groups);
  // Seed 14 draws an element in the back half of its parameter, where a fault that always shifted
  // element 0, or a checksum over a prefix, would show.
  const auto [target, element] = Fault::pick_element(groups[1].params, 14);
  ASSERT_GE(2 * element, target->master.numel());
  int changed = 0;
  for (size_t k = 0; k < shared.size(); ++k) {
    const Values now = host(shared[k].master);
    for (size_t i = 0; i < now.size(); ++i) {
      if (now[i] == before[k][i]) continue;
      ++changed;
      EXPECT_EQ(&shared[k], target);
      EXPECT_EQ(static_cast<int64_t>(i), element);
      EXPECT_NEAR(now[i] - before[k][i], 1e-3, 1e-15);
    }
  }
  EXPECT_EQ(changed, 1);
  EXPECT_EQ(snapshot(pointers(alone), &Parameter::master), alone_before) << "a model only rank 1 holds";

  ::setenv("QARAC_FAULT", "kill:1:3:14", 1);  // the seed is diverge's only
  test_support::expect_input_error([] { Fault::from_env(); }, {"QARAC_FAULT", "kill:1:3:14"});
  ::setenv("QARAC_FAULT", "diverge:1", 1);
  test_support::expect_input_error([] { Fault::from_env(); }, {"QARAC_FAULT", "diverge:1"});
  ::unsetenv("QARAC_FAULT");
}
