// qarac-parity DIR: checks the CPU backend against a Hugging Face reference dump (see
// shared/golden/README.md for the format): the bidirectional and causal last hidden states at
// real tokens, and the gradient of every encoder parameter for loss = Σ h · R · mask.
// Prints one line per tensor; exits 1 when one is out of tolerance or missing, 2 on bad input.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <iostream>
#include <set>
#include <string>
#include <vector>

#include "cli/run_main.h"
#include "io/hf_checkpoint.h"
#include "io/safetensors.h"
#include "kernels/ops.h"
#include "model/roberta.h"

namespace po = boost::program_options;
using namespace qarac;

namespace {

struct Comparison {
  double max_abs = 0, max_ref = 0;
  double rel() const { return max_ref > 0 ? max_abs / max_ref : max_abs; }
};

// ‖x − ref‖∞ and ‖ref‖∞ over the rows of [rows, cols] tensors whose row_mask is set
// (all rows when row_mask is empty).
Comparison compare(const Tensor& x, const Tensor& ref, const std::vector<int32_t>& row_mask = {}) {
  const std::vector<double> a = x.to(Device::cpu()).to(DType::f64).to_vector<double>();
  const std::vector<double> b = ref.to(DType::f64).to_vector<double>();
  QARAC_CHECK(a.size() == b.size(), "compare: ", x.str(), " vs ", ref.str());
  const size_t rows = row_mask.empty() ? 1 : row_mask.size();
  const size_t cols = a.size() / rows;
  Comparison c;
  for (size_t i = 0; i < a.size(); ++i) {
    if (!row_mask.empty() && row_mask[i / cols] == 0) continue;
    c.max_abs = std::max(c.max_abs, std::fabs(a[i] - b[i]));
    c.max_ref = std::max(c.max_ref, std::fabs(b[i]));
  }
  return c;
}

class Report {
 public:
  explicit Report(double tolerance) : tolerance_(tolerance) {
    std::printf("%-58s %12s %12s  %s\n", "tensor", "max_abs_err", "rel_err", "status");
  }
  // `scale` replaces ‖ref‖∞ as the denominator when the reference is zero up to float64
  // rounding (‖ref‖∞ < 1e-12 · scale): a relative error against rounding noise means nothing.
  void add(const std::string& name, const Comparison& c, double scale = 0) {
    const bool zero_ref = c.max_ref < 1e-12 * scale;
    const double rel = zero_ref ? c.max_abs / scale : c.rel();
    const bool ok = rel <= tolerance_;
    std::printf("%-58s %12.3e %12.3e  %s%s\n", name.c_str(), c.max_abs, rel, ok ? "ok" : "FAIL",
                zero_ref ? " (reference is zero: error relative to the largest gradient)" : "");
    worst_ = std::max(worst_, rel);
    failures_ += !ok;
  }
  void missing(const std::string& name, const char* why) {
    std::printf("%-58s %12s %12s  MISSING (%s)\n", name.c_str(), "-", "-", why);
    ++failures_;
  }
  int finish() const {
    std::printf("%s: %d failed, worst relative error %.3e, tolerance %.1e\n",
                failures_ ? "FAIL" : "PASS", failures_, worst_, tolerance_);
    return failures_ ? 1 : 0;
  }

 private:
  double tolerance_;
  double worst_ = 0;
  int failures_ = 0;
};

const Tensor* find(const io::TensorMap& m, const std::string& name) {
  const auto it = m.find(name);
  return it == m.end() ? nullptr : &it->second;
}

const Tensor& require(const io::TensorMap& m, const std::string& name, const std::string& file) {
  const Tensor* t = find(m, name);
  QARAC_INPUT_CHECK(t, file, ": tensor '", name, "' is missing");
  return *t;
}

int run(int argc, char** argv) {
  std::string dir, dtype_name;
  double tolerance = 1e-4;
  po::options_description options("qarac-parity DIR [options]\n\n"
                                  "Checks the CPU backend against a Hugging Face reference dump in DIR\n"
                                  "(config.json, model.safetensors, expected.safetensors).\n\nOptions");
  options.add_options()
      ("help,h", "print this help")
      ("tolerance", po::value(&tolerance)->default_value(1e-4),
       "largest accepted relative error ||x - ref||_inf / ||ref||_inf")
      ("dtype", po::value(&dtype_name)->default_value("f32"), "compute dtype of the CPU backend: f32 or f64");
  po::options_description hidden;
  hidden.add_options()("dir", po::value(&dir));
  po::options_description all;
  all.add(options).add(hidden);
  po::positional_options_description positional;
  positional.add("dir", 1);
  po::variables_map vm;
  po::store(po::command_line_parser(argc, argv).options(all).positional(positional).run(), vm);
  if (vm.count("help")) {
    std::cout << options << "\n";
    return 0;
  }
  po::notify(vm);
  QARAC_INPUT_CHECK(!dir.empty(), "missing the reference directory DIR (see --help)");
  QARAC_INPUT_CHECK(dtype_name == "f32" || dtype_name == "f64", "--dtype must be f32 or f64, got '",
                    dtype_name, "'");
  const DType dtype = dtype_name == "f32" ? DType::f32 : DType::f64;

  const io::HfRoberta hf = io::read_hf_roberta(dir);
  const std::string expected_file = dir + "/expected.safetensors";
  const io::TensorMap expected = io::read_safetensors(expected_file);

  TokenBatch batch;
  batch.ids = require(expected, "input_ids", expected_file).to(DType::i32);
  batch.mask = require(expected, "attention_mask", expected_file).to(DType::i32);
  QARAC_INPUT_CHECK(batch.ids.dim() == 2 && batch.mask.shape() == batch.ids.shape(), expected_file,
                    ": input_ids ", batch.ids.str(), " and attention_mask ", batch.mask.str(),
                    " must both be [B, S]");
  const int64_t tokens = batch.ids.numel(), d = hf.config.hidden_size;
  const std::vector<int32_t> mask = batch.mask.to_vector<int32_t>();

  RobertaEncoder encoder(hf.config, dtype, Device::cpu());
  io::assign_parameters(encoder.parameters(), hf.encoder, dir + "/model.safetensors");

  std::printf("qarac-parity: %s, B=%lld S=%lld d=%lld layers=%lld, compute %s\n", dir.c_str(),
              static_cast<long long>(batch.batch()), static_cast<long long>(batch.seq()),
              static_cast<long long>(d), static_cast<long long>(hf.config.num_layers), dtype_name.c_str());
  Report report(tolerance);

  // Hidden states, compared at real tokens only: a padded row carries no meaning.
  RobertaEncoder::Activations acts;
  for (const bool causal : {false, true}) {
    const std::string name = causal ? "last_hidden_state_causal" : "last_hidden_state";
    ForwardOptions opts;
    opts.causal = causal;
    const Tensor& h = encoder.forward(batch, opts, acts);
    if (const Tensor* ref = find(expected, name))
      report.add(name, compare(h, ref->reshape({tokens, d}), mask));
    else
      report.missing(name, "not in expected.safetensors");
  }

  // Gradients of loss = Σ h · R · mask: d loss / d h = R · mask.
  const Tensor& h = encoder.forward(batch, ForwardOptions{}, acts);
  std::vector<double> r = require(expected, "R", expected_file).to(DType::f64).to_vector<double>();
  QARAC_INPUT_CHECK(static_cast<int64_t>(r.size()) == tokens * d, expected_file, ": R must be [B, S, d]");
  const std::vector<double> hv = h.to(DType::f64).to_vector<double>();
  double loss = 0;
  for (size_t i = 0; i < r.size(); ++i) {
    r[i] *= mask[i / static_cast<size_t>(d)];
    loss += hv[i] * r[i];
  }
  if (const Tensor* ref = find(expected, "loss"))
    report.add("loss", compare(Tensor::from_vector(std::vector<double>{loss}, {1}), *ref));
  else
    report.missing("loss", "not in expected.safetensors");

  ParameterList params = encoder.parameters();
  zero_grads(params);
  encoder.backward(acts, Tensor::from_vector(r, {tokens, d}).to(dtype));
  // Compare every gradient first: the largest reference gradient is the scale for those whose
  // reference is zero. The key bias is one: it shifts all scores of a query row by q·b_k, which
  // the softmax cancels, so its exact gradient is 0 and the float64 reference holds only rounding.
  std::set<std::string> checked;
  std::vector<std::pair<std::string, Comparison>> grads;
  double grad_scale = 0;
  for (const Parameter* p : params) {
    const std::string name = "grad." + p->name;
    checked.insert(name);
    if (const Tensor* ref = find(expected, name)) {
      QARAC_INPUT_CHECK(ref->shape() == p->grad.shape(), expected_file, ": ", name, " has shape ",
                        shape_str(ref->shape()), ", expected ", shape_str(p->grad.shape()));
      grads.emplace_back(name, compare(p->grad, *ref));
      grad_scale = std::max(grad_scale, grads.back().second.max_ref);
    } else {
      grads.emplace_back(name, Comparison{-1, -1});
    }
  }
  for (const auto& [name, c] : grads) {
    if (c.max_ref < 0)
      report.missing(name, "no reference gradient");
    else
      report.add(name, c, grad_scale);
  }
  for (const auto& [name, t] : expected)
    if (name.rfind("grad.", 0) == 0 && !checked.count(name)) report.missing(name, "no such parameter");
  return report.finish();
}

}  // namespace

int main(int argc, char** argv) {
  return cli::run_main("qarac-parity", [&] { return run(argc, argv); });
}
