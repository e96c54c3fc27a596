// Hugging Face export: the mapping of the model's names to transformers' RoBERTa layout, the
// check of every vocabulary-sized tensor against the config, and the atomic replacement of the
// export folder.
#include "io/hf_export.h"

#include <fcntl.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>

#include "core/atomic_file.h"
#include "core/log.h"
#include "io/hf_config.h"
#include "io/hf_weights.h"

namespace qarac::io {
namespace {

namespace fs = std::filesystem;

// The tensors whose first dimension is the vocabulary, by exported name. transformers names the
// LM head's output bias both "lm_head.bias" and "lm_head.decoder.bias" (they are tied).
constexpr const char* kWordEmbeddings = "roberta.embeddings.word_embeddings.weight";
constexpr const char* kVocabTensors[] = {kWordEmbeddings, "lm_head.decoder.weight",
                                         "lm_head.decoder.bias", "lm_head.bias"};

bool starts_with(const std::string& s, const std::string& prefix) {
  return s.compare(0, prefix.size(), prefix) == 0;
}

bool indexed_by_vocabulary(const std::string& name) {
  for (const char* v : kVocabTensors)
    if (name == v) return true;
  return false;
}

[[noreturn]] void fail(const fs::path& path, const std::string& what, int err) {
  throw InputError(detail::concat(path.string(), ": ", what, " (", std::strerror(err), ")"));
}

}  // namespace

// Puts the folder `from` where `to` is. With an existing `to`, Linux's renameat2(RENAME_EXCHANGE)
// swaps the two in one step, so a reader sees the old export or the new one, never neither;
// where that is missing (glibc < 2.28, some network file systems) the old folder is moved aside
// first and, if anything fails, is still there under "<to>.old".
void replace_folder(const fs::path& from, const fs::path& to) {
  std::error_code ec;
  const fs::path old = to.string() + ".old";
  if (!fs::exists(to, ec)) {
    if (std::rename(from.c_str(), to.c_str()) != 0)
      fail(to, "cannot rename " + from.string() + " to it", errno);
    fs::remove_all(old, ec);  // what a kill between the two renames below left
    return;
  }
#ifdef RENAME_EXCHANGE
  if (::renameat2(AT_FDCWD, from.c_str(), AT_FDCWD, to.c_str(), RENAME_EXCHANGE) == 0) {
    fs::remove_all(from, ec);  // now the previous export
    // A folder the user made read-only is swapped out all the same, and then stays: said, not
    // left for the next write to trip over at the end of a run.
    if (ec)
      log::warn(to.string(), ": the previous one, swapped out to ", from.string(), ", cannot be removed (",
                ec.message(), "): remove it before the next write, which needs its place");
    return;
  }
  if (errno != EINVAL && errno != ENOSYS)
    fail(to, "cannot swap " + from.string() + " with it", errno);
#endif
  fs::remove_all(old, ec);
  if (std::rename(to.c_str(), old.c_str()) != 0)
    fail(to, "cannot move it aside to " + old.string(), errno);
  if (std::rename(from.c_str(), to.c_str()) != 0)
    fail(to, "cannot rename " + from.string() + " to it", errno);
  fs::remove_all(old, ec);
}

namespace {
// Where write_folder writes `folder`: a link (export/ kept on another disk) is written through,
// its target replaced, not it.
fs::path write_target(const fs::path& folder) {
  std::error_code ec;
  if (!fs::is_symlink(folder, ec)) return folder;
  const fs::path target = fs::weakly_canonical(folder, ec);
  QARAC_INPUT_CHECK(!ec && !target.empty(), folder.string(), ": a link that cannot be followed (", ec.message(),
                    "): remove it, or point it at a folder");
  return target;
}
}  // namespace

void remove_unfinished_folder(const fs::path& folder) {
  fs::path target;
  try {
    target = write_target(folder);
  } catch (const InputError&) {
    return;  // a link that cannot be followed has no temporary folder; write_folder says it
  }
  const fs::path temp = target.string() + ".tmp", old = target.string() + ".old";
  std::error_code ec;
  if (!fs::exists(temp, ec)) return;
  // Without the folder but beside its previous version: a replace_folder by two renames was cut
  // between them, and the new one may be whole. Which to keep is the user's choice, not a guess.
  if (!fs::exists(target, ec) && fs::exists(old, ec)) {
    log::warn(target.string(), " is missing, beside ", old.string(), " (the previous one) and ", temp.string(),
              " (a new one, whole unless its writing was cut too): rename the one to keep to ", target.string());
    return;
  }
  fs::remove_all(temp, ec);
  QARAC_INPUT_CHECK(!ec, temp.string(), ": cannot remove what an earlier write of ", target.string(), " left there (",
                    ec.message(), "): remove it");
}

void check_replaceable(const fs::path& link, const std::set<std::string>& names) {
  const fs::path target = write_target(link);
  std::error_code ec;
  if (!fs::exists(fs::symlink_status(target, ec))) return;
  for (fs::directory_iterator it(target, ec), end; !ec && it != end; it.increment(ec)) {
    std::error_code looked;
    const bool model = it->is_directory(looked) && !it->is_symlink(looked) &&
                       fs::is_regular_file(it->path() / "config.json", looked);
    QARAC_INPUT_CHECK(model || names.count(it->path().filename().string()), link.string(), " links to ",
                      target.string(), ", which holds ", it->path().filename().string(),
                      ", not of the models the run writes there: the run replaces ", target.string(),
                      " whole and would delete it; point the link at an empty folder");
  }
  QARAC_INPUT_CHECK(!ec, link.string(), " links to ", target.string(), ", which the run replaces with a folder: ",
                    ec.message());
}

void write_folder(const fs::path& folder, const std::function<void(const fs::path&)>& write) {
  std::error_code ec;
  const fs::path target = write_target(folder);
  const fs::path temp = target.string() + ".tmp";
  fs::remove_all(temp, ec);
  QARAC_INPUT_CHECK(!ec, temp.string(), ": cannot remove what an earlier write of ", target.string(), " left there (",
                    ec.message(), "): remove it");
  try {
    write(temp);
    if (target != folder) {
      // Checked now, not only at the start: the link may have been pointed elsewhere since.
      std::set<std::string> names;
      for (fs::directory_iterator it(temp, ec), end; !ec && it != end; it.increment(ec))
        names.insert(it->path().filename().string());
      check_replaceable(folder, names);
    }
    replace_folder(temp, target);
  } catch (const InputError&) {
    fs::remove_all(temp, ec);
    throw;
  }
  sync_folder(target.has_parent_path() ? target.parent_path().string() : ".");
}

TensorMap master_tensors(const ParameterList& params) {
  TensorMap out;
  for (const Parameter* p : params) {
    Tensor t = p->master.to(Device::cpu()).to(DType::f32);
    if (t.raw() == p->master.raw()) t = t.clone();  // a copy, never a view of the live weights
    QARAC_CHECK(out.emplace(p->name, std::move(t)).second, "parameter '", p->name,
                "' is listed twice");
  }
  return out;
}

std::string export_hf_model(const std::string& folder, const std::string& model,
                            const RobertaConfig& config, const TensorMap& tensors,
                            const ExportExtras& extras) {
  QARAC_CHECK(!model.empty() && model.find('/') == std::string::npos, "export name '", model,
              "' is not a folder name");
  TensorMap out;
  for (const auto& [name, tensor] : tensors) {
    QARAC_CHECK(is_floating(tensor.dtype()), "export of ", model, ": tensor '", name, "' is ",
                tensor.str(), ", not floating-point");
    const bool bare_base = starts_with(name, "embeddings.") || starts_with(name, "encoder.");
    const std::string hf_name = bare_base ? "roberta." + name : name;
    const bool decoder_head = model == "decoder" && starts_with(name, "lm_head.");
    const std::string stored = decoder_head ? kDecoderHeadPrefix + name.substr(8) : hf_name;
    const Tensor t = tensor.to(Device::cpu()).to(DType::f32);
    // Checked as written (docs/design.md §6): an f64 run's weight past float32's range is an
    // infinity only now.
    require_finite(t, stored, "export of " + model + " (float32)");
    QARAC_CHECK(!indexed_by_vocabulary(hf_name) || (t.dim() >= 1 && t.size(0) == config.vocab_size),
                "export of ", model, ": '", stored, "' is ", t.str(), ", not ", config.vocab_size,
                " rows (the config's vocabulary)");
    QARAC_CHECK(out.emplace(stored, t).second, "export of ", model, ": '", stored,
                "' appears twice");
  }
  QARAC_CHECK(out.count(kWordEmbeddings), "export of ", model, ": no ", kWordEmbeddings,
              " (not a RoBERTa model's parameters)");

  const fs::path root(folder);
  const fs::path final_dir = root / model, tmp = root / (model + ".tmp");
  std::error_code ec;
  fs::create_directories(root, ec);
  if (ec)
    throw InputError(
        detail::concat(root.string(), ": cannot create the export folder: ", ec.message()));
  fs::remove_all(tmp, ec);  // a previous export that died midway
  fs::create_directory(tmp, ec);
  if (ec) throw InputError(detail::concat(tmp.string(), ": cannot create: ", ec.message()));

  try {
    // transformers refuses safetensors files whose metadata lacks a known "format".
    write_safetensors((tmp / "model.safetensors").string(), out, {{"format", "pt"}});
    // A pre-trained base ("base") is a RobertaForMaskedLM with its tied head. The QARAC models
    // are of modeling_qarac.py's types (io/export_files.h), the decoder's base causal.
    HfConfigOptions options;
    if (const std::optional<QaracClasses> classes = qarac_classes(model)) {
      options.architecture = classes->model_class;
      options.model_type = classes->model_type;
      options.is_decoder = model == "decoder";
      options.tie_word_embeddings =
          !out.count("lm_head.decoder.weight") && !out.count(std::string(kDecoderHeadPrefix) + "decoder.weight");
    }
    write_hf_config((tmp / "config.json").string(), config, options);
    write_qarac_code(tmp.string(), model);
    write_tokenizer_files(tmp.string(), extras, config.max_position_embeddings);
    if (extras.card) write_model_card(tmp.string(), model, *extras.card);
    // The folder's entries on disk before the step that relies on them: its files before it
    // replaces the old export, the rename before the export is reported done.
    sync_folder(tmp.string());
    replace_folder(tmp, final_dir);
  } catch (const InputError&) {
    fs::remove_all(tmp, ec);  // a failed export (a full disk) leaves the old one, and nothing else
    throw;
  }
  sync_folder(root.string());
  return final_dir.string();
}

}  // namespace qarac::io
