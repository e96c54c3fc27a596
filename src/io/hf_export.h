// Exporting a trained model as a Hugging Face directory (docs/design.md §6): config.json and
// model.safetensors, loadable by transformers' RobertaModel (and by io::read_hf_roberta), with
// the tokenizer files, the model card and the QARAC modeling code (io/export_files.h).
//
// The RoBERTa base is stored as "roberta.embeddings.*" / "roberta.encoder.*", the names
// transformers expects; every other tensor (pooling head, decoder layers, LM head) keeps its own
// name, an extra key transformers ignores with a warning, except the decoder's LM head, stored as
// "qarac_lm_head.*" (io/export_files.h: kDecoderHeadPrefix). A QARAC model is exported with
//   io::export_hf_model(run_dir + "/export", "decoder", models.config().base,
//                       io::master_tensors(models.model_parameters("decoder")));
#pragma once

#include <filesystem>
#include <functional>
#include <set>
#include <string>

#include "io/export_files.h"
#include "io/safetensors.h"
#include "model/parameter.h"
#include "model/roberta_config.h"

namespace qarac::io {

// Puts the folder `from` where `to` is, replacing the folder there in one step where the file
// system allows (see the .cpp). InputError naming `to` when it cannot.
void replace_folder(const std::filesystem::path& from, const std::filesystem::path& to);
// Writes `folder` whole or not at all: write(temp) fills "<folder>.tmp" (one a killed run left is
// removed first), which then replaces `folder` (a link's target, beside it, when `folder` is a
// link) and is synced into its parent. An InputError on the way (a full disk) leaves the previous
// folder as it was (where the swap falls back to two renames, a failure between them leaves it
// as "<folder>.old") and no "<folder>.tmp": a set of models written this way never mixes models
// of two steps. InputError naming a link that cannot be followed.
void write_folder(const std::filesystem::path& folder, const std::function<void(const std::filesystem::path&)>& write);
// Before write_folder replaces the target of the link `link` whole: InputError naming the link,
// its target and an entry of it, unless the target is missing or a folder holding only models
// (folders with a config.json) and entries named in `names`: what an earlier write_folder of the
// set put there. Anything else is not the writer's (a link that another user of a shared run
// directory, or a slip, pointed at a folder of the user's), and the replacement would delete it.
void check_replaceable(const std::filesystem::path& link, const std::set<std::string>& names);
// Removes the "<folder>.tmp" of a write_folder that a kill interrupted (nothing when none); where
// the kill cut replace_folder's two renames (no folder, "<folder>.old" beside it), keeps both and
// says so. InputError naming it when it cannot be removed (a read-only copy): at a run's start,
// not when its export writes there.
void remove_unfinished_folder(const std::filesystem::path& folder);

// The master weights of `params` by name, as f32 CPU copies: what an export stores.
TensorMap master_tensors(const ParameterList& params);

// Writes FOLDER/<model>/{config.json, model.safetensors} and returns that folder. `tensors`
// are named as the model's parameters: the base "roberta.embeddings.*", "roberta.encoder.*" (or
// bare "embeddings.*", "encoder.*", which get the prefix), the heads by any other name; all are
// stored as f32. The tensors indexed by the vocabulary (word embeddings,
// the LM head's output matrix and bias) must have config.vocab_size rows, the checkpoint's own
// vocabulary: the LM head pads its rows for its GEMMs but lists views of the first V only
// (model/lm_head.h), and a mismatch means the wrong config, which would otherwise export a model
// that transformers refuses or misreads.
// `extras` adds the tokenizer files, README.md, and for the QARAC models modeling_qarac.py with
// config.json's auto_map (io/export_files.h).
// Atomic: the folder is written as FOLDER/<model>.tmp and renamed into place (an existing
// export of the model is replaced in one step where the file system allows, see the .cpp).
std::string export_hf_model(const std::string& folder, const std::string& model,
                            const RobertaConfig& config, const TensorMap& tensors,
                            const ExportExtras& extras = {});

}  // namespace qarac::io
