// qarac-parity DIR: checks a backend (the CPU reference in f32/f64, CUDA in f32/bf16) against a
// Hugging Face reference dump (format: tests/golden/data/tiny_dev/README.md): the bidirectional
// and causal last hidden states at real tokens, and the gradient of every encoder parameter for
// loss = Σ h · R · mask.
// Prints one line per tensor; exits 1 when one is out of tolerance or missing, 2 on bad input.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <iostream>
#include <limits>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "cli/run_main.h"
#include "cli/version.h"
#include "io/hf_checkpoint.h"
#include "io/hf_weights.h"
#include "io/safetensors.h"
#include "kernels/ops.h"
#include "model/roberta.h"

namespace po = boost::program_options;
using namespace qarac;

namespace {

// The larger of a and b, NaN when either is: std::max drops a NaN in its second argument,
// which would let a NaN output pass as error 0.
double max_or_nan(double a, double b) { return std::isnan(a) || std::isnan(b) ? std::nan("") : std::max(a, b); }

struct Comparison {
  double max_abs = 0, max_ref = 0;
  double rel() const { return max_ref > 0 ? max_abs / max_ref : max_abs; }
};

// ‖x − ref‖∞ and ‖ref‖∞ of two tensors with the same number of elements.
Comparison compare(const Tensor& x, const Tensor& ref) {
  const std::vector<double> a = x.to(Device::cpu()).to(DType::f64).to_vector<double>();
  const std::vector<double> b = ref.to(DType::f64).to_vector<double>();
  QARAC_CHECK(a.size() == b.size(), "compare: ", x.str(), " vs ", ref.str());
  Comparison c;
  for (size_t i = 0; i < a.size(); ++i) {
    c.max_abs = max_or_nan(c.max_abs, std::fabs(a[i] - b[i]));
    c.max_ref = max_or_nan(c.max_ref, std::fabs(b[i]));
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
    const bool ok = rel <= tolerance_;  // false for NaN
    std::printf("%-58s %12.3e %12.3e  %s%s\n", name.c_str(), c.max_abs, rel, ok ? "ok" : "FAIL",
                zero_ref ? " (reference is zero: error relative to the largest gradient)" : "");
    worst_ = max_or_nan(worst_, rel);
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

const Tensor* find(const TensorMap& m, const std::string& name) {
  const auto it = m.find(name);
  return it == m.end() ? nullptr : &it->second;
}

// The name as a C string: a std::string made from a literal at each call would be a temporary, and
// GCC 13 and later warn that the reference returned may dangle (-Wdangling-reference).
const Tensor& require(const TensorMap& m, const char* name, const std::string& file) {
  const Tensor* t = find(m, name);
  QARAC_INPUT_CHECK(t, file, ": tensor '", name, "' is missing");
  return *t;
}

// The dump is input: every tensor is checked before use, so that bad input is one error line,
// not a failure after part of the table. The inputs are integer [B, S] ids of the vocabulary and
// a 0/1 mask of trailing padding (the real tokens of a row first, as the positions count them)
// whose rows fit the position table; everything else is floating point of the shape the
// comparison reads ([B, S, d] states and R, one loss).
void check_expected(const TensorMap& expected, const std::string& file, const RobertaConfig& config) {
  for (const auto& [name, t] : expected) {
    const bool input = name == "input_ids" || name == "attention_mask";
    QARAC_INPUT_CHECK(input != is_floating(t.dtype()), file, ": tensor '", printable(name), "' has dtype ",
                      dtype_name(t.dtype()), input ? ", expected integers" : ", expected a floating type");
    // A NaN in the reference is a damaged dump, not a mismatch of the backend under test.
    io::require_finite(t, name, file);
  }
  const Tensor& ids = require(expected, "input_ids", file);
  const Tensor& mask = require(expected, "attention_mask", file);
  QARAC_INPUT_CHECK(ids.dim() == 2 && mask.shape() == ids.shape(), file, ": input_ids ", ids.str(),
                    " and attention_mask ", mask.str(), " must both be [B, S]");
  const std::vector<int64_t> id = ids.to(DType::i64).to_vector<int64_t>();
  const std::vector<int64_t> m = mask.to(DType::i64).to_vector<int64_t>();
  // RoBERTa numbers positions from pad_token_id + 1.
  const int64_t longest = config.max_position_embeddings - config.pad_token_id - 1;
  int64_t real_tokens = 0;
  for (int64_t b = 0, seq = ids.size(1); b < ids.size(0); ++b) {
    int64_t length = 0;
    for (int64_t t = 0; t < seq; ++t) {
      const size_t i = static_cast<size_t>(b * seq + t);
      QARAC_INPUT_CHECK(m[i] == 0 || m[i] == 1, file, ": attention_mask holds ", m[i], ", expected 0 or 1");
      QARAC_INPUT_CHECK(m[i] == 0 || length == t, file, ": attention_mask row ", b, " has a 1 at position ", t,
                        " after a 0 (padding must be trailing)");
      QARAC_INPUT_CHECK(!m[i] || (id[i] >= 0 && id[i] < config.vocab_size), file, ": input_ids holds ", id[i],
                        ", outside the vocabulary [0, ", config.vocab_size, ")");
      length += m[i];
    }
    QARAC_INPUT_CHECK(length <= longest, file, ": row ", b, " has ", length, " tokens, more than the ", longest,
                      " positions of the model");
    real_tokens += length;
  }
  // Nothing to compare: the gradients of an empty batch are no check of anything.
  QARAC_INPUT_CHECK(real_tokens > 0, file, ": attention_mask marks no real token (input_ids ", ids.str(), ")");
  require(expected, "R", file);
  const Shape states = {ids.size(0), ids.size(1), config.hidden_size};
  for (const char* name : {"last_hidden_state", "last_hidden_state_causal", "R"})
    if (const Tensor* t = find(expected, name))
      QARAC_INPUT_CHECK(t->shape() == states, file, ": ", name, " has shape ", shape_str(t->shape()),
                        ", expected [B, S, d] = ", shape_str(states));
  if (const Tensor* loss = find(expected, "loss"))
    QARAC_INPUT_CHECK(loss->numel() == 1, file, ": loss has shape ", shape_str(loss->shape()), ", expected one value");
}

DType parse_dtype(const std::string& name) {
  if (name == "f32") return DType::f32;
  if (name == "f64") return DType::f64;
  if (name == "bf16") return DType::bf16;
  throw InputError("--dtype must be f32, f64 or bf16, got '" + name + "'");
}

int run(int argc, char** argv) {
  std::string dir, dtype_name, device_name;
  double tolerance = 1e-4;
  po::options_description options("qarac-parity DIR [options]\n\n"
                                  "Checks a backend against a Hugging Face reference dump in DIR\n"
                                  "(config.json, model.safetensors, expected.safetensors).\n\nOptions");
  options.add_options()
      ("help,h", "print this help")
      ("version", "print the version, the git commit and the libraries' versions, and exit")
      ("tolerance", po::value(&tolerance)->default_value(1e-4),
       "largest accepted relative error ||x - ref||_inf / ||ref||_inf")
      ("device", po::value(&device_name)->default_value("cpu"), "cpu or cuda")
      ("dtype", po::value(&dtype_name)->default_value("f32"),
       "compute dtype: f32 or f64 (cpu), f32 or bf16 (cuda)");
  po::options_description hidden;
  hidden.add_options()("dir", po::value(&dir));
  po::options_description all;
  all.add(options).add(hidden);
  po::positional_options_description positional;
  positional.add("dir", 1);
  po::variables_map vm;
  cli::refuse_line_breaks(argc, argv);
  po::store(po::command_line_parser(argc, argv).options(all).positional(positional).run(), vm);
  if (vm.count("help")) {
    std::ostringstream text;
    text << options << "\n";
    cli::write_standard_output(text.str());
    return 0;
  }
  po::notify(vm);
  QARAC_INPUT_CHECK(!dir.empty(), "missing the reference directory DIR (see --help)");
  QARAC_INPUT_CHECK(device_name == "cpu" || device_name == "cuda", "--device must be cpu or cuda, got '",
                    device_name, "'");
  const Device device = device_name == "cpu" ? Device::cpu() : Device::cuda(0);
  const DType dtype = parse_dtype(dtype_name);
  QARAC_INPUT_CHECK(dtype != DType::bf16 || device.is_cuda(),
                    "--dtype bf16 needs --device cuda (the CPU backend computes in f32 or f64)");
  QARAC_INPUT_CHECK(dtype != DType::f64 || device.is_cpu(),
                    "--dtype f64 needs --device cpu (the CUDA backend computes in f32 or bf16)");
  if (device.is_cuda())
    QARAC_INPUT_CHECK(cuda_device_count() > 0, "--device cuda: no CUDA device is available",
                      cuda_compiled() ? "" : " (this build has no CUDA backend)");
  QARAC_INPUT_CHECK(std::isfinite(tolerance) && tolerance >= std::numeric_limits<double>::min(),
                    "--tolerance must be a positive normal number, got ", tolerance);

  const io::HfRoberta hf = io::read_hf_roberta(dir);
  const std::string expected_file = dir + "/expected.safetensors";
  const TensorMap expected = io::read_safetensors(expected_file);
  check_expected(expected, expected_file, hf.config);

  const Tensor ids = require(expected, "input_ids", expected_file).to(DType::i32);
  const Tensor mask = require(expected, "attention_mask", expected_file).to(DType::i32);
  const int64_t padded_tokens = ids.numel(), d = hf.config.hidden_size;
  // The encoder runs padding-free: it computes the real tokens only, in order. Reference rows
  // are compared at those tokens (a padded row carries no meaning).
  const std::vector<int32_t> mask_host = mask.to_vector<int32_t>();
  const TokenBatch batch = TokenBatch::from_padded(ids, mask, hf.config.pad_token_id, device);
  auto real_rows = [&](const Tensor& padded) {
    const std::vector<double> values = padded.to(DType::f64).to_vector<double>();
    std::vector<double> rows;
    for (int64_t i = 0; i < padded_tokens; ++i)
      if (mask_host[static_cast<size_t>(i)])
        rows.insert(rows.end(), values.begin() + i * d, values.begin() + (i + 1) * d);
    return Tensor::from_vector(rows, {batch.tokens(), d});
  };

  RobertaEncoder encoder(hf.config, dtype, device);
  io::assign_parameters(encoder.parameters(), hf.encoder, hf.weights);
  for (const Parameter* p : encoder.parameters())
    if (const Tensor* ref = find(expected, "grad." + p->name))
      QARAC_INPUT_CHECK(ref->shape() == p->grad.shape(), expected_file, ": grad.", p->name, " has shape ",
                        shape_str(ref->shape()), ", expected ", shape_str(p->grad.shape()));

  std::printf("qarac-parity: %s, B=%lld S=%lld (%lld real tokens) d=%lld layers=%lld, %s %s\n",
              dir.c_str(), static_cast<long long>(ids.size(0)), static_cast<long long>(ids.size(1)),
              static_cast<long long>(batch.tokens()), static_cast<long long>(d),
              static_cast<long long>(hf.config.num_layers), device_name.c_str(), dtype_name.c_str());
  Report report(tolerance);

  RobertaEncoder::Activations acts;
  for (const bool causal : {false, true}) {
    const std::string name = causal ? "last_hidden_state_causal" : "last_hidden_state";
    ForwardOptions opts;
    opts.causal = causal;
    const Tensor& h = encoder.forward(batch, opts, acts);
    if (const Tensor* ref = find(expected, name))
      report.add(name, compare(h, real_rows(*ref)));
    else
      report.missing(name, "not in expected.safetensors");
  }

  // Gradients of loss = Σ h · R · mask: d loss / d h = R at the real tokens.
  const Tensor& h = encoder.forward(batch, ForwardOptions{}, acts);
  const Tensor& r_ref = require(expected, "R", expected_file);
  const Tensor r = real_rows(r_ref);
  const std::vector<double> rv = r.to_vector<double>();
  const std::vector<double> hv = h.to(Device::cpu()).to(DType::f64).to_vector<double>();
  double loss = 0;
  for (size_t i = 0; i < rv.size(); ++i) loss += hv[i] * rv[i];
  if (const Tensor* ref = find(expected, "loss"))
    report.add("loss", compare(Tensor::from_vector(std::vector<double>{loss}, {1}), *ref));
  else
    report.missing("loss", "not in expected.safetensors");

  ParameterList params = encoder.parameters();
  zero_grads(params);
  encoder.backward(acts, r.to(dtype).to(device));
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
  if (cli::version_requested(argc, argv)) return cli::print_version("qarac-parity");
  return cli::run_main("qarac-parity", [&] { return run(argc, argv); });
}
