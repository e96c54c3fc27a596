// Checkpoints: the schema of a part file (what save writes, what parse accepts) on the
// checksummed HDF5 files of core, and the folders (names, the temporary folder and its rename,
// keep-last-N, the newest valid one). The loader reads and checks every part file it needs
// (checksum, structure, every shape against the model, the caller's config check) before it
// writes anything into the optimizer, so a refused checkpoint changes nothing.
#include "train/checkpoint.h"

#include <sys/statvfs.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <deque>
#include <filesystem>
#include <map>
#include <memory>
#include <set>
#include <vector>

#include "core/atomic_file.h"
#include "core/hdf5_checksummed.h"
#include "core/log.h"
#include "core/memory.h"

namespace qarac {
namespace {

namespace fs = std::filesystem;

constexpr H5FileKind kCheckpointKind = {kCheckpointFormat, kCheckpointVersion, "checkpoint"};

// ---- Names in a checkpoint folder ------------------------------------------------------------
constexpr const char* kFolderPrefix = "step-";
constexpr const char* kTempSuffix = ".tmp";    // a checkpoint being written
constexpr const char* kDeleteSuffix = ".del";  // a checkpoint being deleted
constexpr const char* kPartSuffix = ".h5";

// The step of "step-<digits>" (or, with `temporary`, of "step-<digits>.tmp" or ".del"); -1 for any
// other name.
int64_t step_of(const std::string& name, bool temporary) {
  const size_t prefix = std::strlen(kFolderPrefix);
  if (name.compare(0, prefix, kFolderPrefix) != 0) return -1;
  size_t end = prefix;
  while (end < name.size() && end - prefix < 18 && name[end] >= '0' && name[end] <= '9') ++end;
  const std::string rest = name.substr(end);
  if (end == prefix || (temporary ? rest != kTempSuffix && rest != kDeleteSuffix : !rest.empty())) return -1;
  return std::stoll(name.substr(prefix, end - prefix));
}

struct Listed {
  int64_t step;
  fs::path path;
};

// The checkpoint folders (or the temporary ones) of `dir`, newest step first.
std::vector<Listed> list(const std::string& dir, bool temporary) {
  std::vector<Listed> out;
  std::error_code ec;
  for (fs::directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec)) {
    const int64_t step = step_of(it->path().filename().string(), temporary);
    if (step >= 0 && it->is_directory()) out.push_back({step, it->path()});
  }
  std::sort(out.begin(), out.end(), [](const Listed& a, const Listed& b) { return a.step > b.step; });
  return out;
}

// A folder that cannot be removed (a file of another user's, a snapshot) is said once, not again
// at every later checkpoint, which tries again.
void cannot_remove(const std::string& path, const char* why, const std::error_code& ec) {
  static std::set<std::string> said;
  if (said.insert(path).second)
    log::warn("cannot remove ", why, " ", path, ": ", ec.message(), " (tried again at every checkpoint, said once)");
}

void remove_folder(const fs::path& path, const char* why) {
  std::error_code ec;
  fs::remove_all(path, ec);
  if (ec)
    cannot_remove(path.string(), why, ec);
  else
    log::debug("removed ", why, " ", path.string());
}

// What a temporary folder is, for messages: a write or a deletion that did not finish.
const char* temporary_what(const fs::path& path) {
  return path.extension() == kDeleteSuffix ? "old checkpoint being deleted" : "unfinished checkpoint";
}

// Deletes checkpoint `step` of `dir`: renamed to "step-<step>.del" first, so that a process
// killed midway leaves a folder the next prune removes, never a final name over a partly deleted
// checkpoint.
void delete_checkpoint(const std::string& dir, int64_t step, const char* why) {
  const std::string temp = checkpoint_path(dir, step) + kDeleteSuffix;
  std::error_code ec;
  fs::remove_all(temp, ec);
  fs::rename(checkpoint_path(dir, step), temp, ec);
  std::error_code unknown;  // a folder that cannot be looked at is left to remove_folder's warning
  if (ec && fs::exists(checkpoint_path(dir, step), unknown)) {
    cannot_remove(checkpoint_path(dir, step), why, ec);
    return;
  }
  remove_folder(temp, why);
}

// Deletes the temporary folders of writes that died and the checkpoints beyond the newest
// `keep_last` (0 keeps all), the new one at `step` counted; checkpoints of later steps are kept.
void prune(const std::string& dir, int64_t step, int keep_last) {
  // A temporary folder of this step or an earlier one belongs to a write or a deletion that
  // died: a run writes its checkpoints in step order.
  for (const Listed& t : list(dir, true))
    if (t.step <= step) remove_folder(t.path, temporary_what(t.path));
  if (keep_last == 0) return;
  int kept = 1;  // the new one
  for (const Listed& c : list(dir, false)) {
    if (c.step >= step) continue;
    if (kept < keep_last)
      ++kept;
    else
      delete_checkpoint(dir, c.step, "old checkpoint");
  }
}

std::vector<std::string> split_lines(const std::string& text) {
  std::vector<std::string> out;
  size_t begin = 0;
  while (begin < text.size()) {
    const size_t end = std::min(text.find('\n', begin), text.size());
    out.push_back(text.substr(begin, end - begin));
    begin = end + 1;
  }
  return out;
}

// ---- The schema ------------------------------------------------------------------------------
void write_state(ChecksummedH5Writer& w, const CheckpointPart& part, const std::vector<std::string>& parts,
                 const Optimizer& optimizer, const TrainingState& state) {
  std::map<const Parameter*, size_t> index;
  for (size_t i = 0; i < optimizer.parameters().size(); ++i) index[optimizer.parameters()[i]] = i;
  const std::vector<Tensor>& m = optimizer.first_moments();
  const std::vector<Tensor>& v = optimizer.second_moments();
  std::string names;
  for (const std::string& name : parts) names += name + "\n";
  w.write_text("config", state.config);
  w.write_text("checkpoint/parts", names);
  w.write_i64("state/step", state.step);
  w.write_u64("state/seed", state.seed);
  w.write_u64("state/frozen_base_hash", state.frozen_base_hash);
  if (!state.model_config.empty()) w.write_text("state/model_config", state.model_config);
  if (state.evaluation != 0) w.write_u64("state/evaluation", state.evaluation);
  if (state.evaluation_since != 0) w.write_i64("state/evaluation_since", state.evaluation_since);
  if (state.world_size > 0) w.write_i64("state/world_size", state.world_size);
  w.write_text("optimizer/kind", optimizer_name(optimizer.config().kind));
  w.write_i64("optimizer/steps", optimizer.steps());
  for (const Parameter* p : part.params) {
    const auto it = index.find(p);
    QARAC_CHECK(it != index.end(), "checkpoint part ", part.name, ": parameter '", p->name,
                "' is not the optimizer's");
    w.write("parameters/" + p->name, p->master);
    w.write("optimizer/m/" + p->name, m[it->second]);
    w.write("optimizer/v/" + p->name, v[it->second]);
  }
  const data::LoaderCursor& cursor = state.cursor;
  std::vector<int32_t> tasks;
  std::vector<int64_t> epoch, position, checksum;
  for (const data::TaskCursor& t : cursor.tasks) {
    tasks.push_back(static_cast<int32_t>(t.task));
    epoch.push_back(t.epoch);
    position.push_back(t.position);
    checksum.push_back(static_cast<int64_t>(t.stream_checksum));  // the bits of the u64
  }
  w.write_i64("loader/step", cursor.step);
  w.write_vector("loader/task", tasks);
  w.write_vector("loader/epoch", epoch);
  w.write_vector("loader/position", position);
  w.write_vector("loader/checksum", checksum);
}

// The state of a checkpoint, its structure checked.
struct Parsed {
  TrainingState state;
  std::vector<std::string> parts;
  std::string optimizer_kind;
  int64_t optimizer_steps = 0;
  std::map<std::string, const H5Dataset*> params, m, v;  // by parameter name
};

Parsed parse(const ChecksummedH5Reader& reader, const H5Contents& contents) {
  Parsed out;
  std::set<std::string> used;
  auto get = [&](const std::string& name, DType dtype, bool scalar) -> const H5Dataset& {
    const auto it = contents.find(name);
    if (it == contents.end()) reader.fail("not a valid checkpoint: no dataset '" + name + "'");
    const H5Dataset& d = it->second;
    if (d.is_text || d.dtype != dtype || (scalar ? !d.shape.empty() : d.shape.size() != 1))
      reader.fail(detail::concat("not a valid checkpoint: '", name, "' is not ",
                                 scalar ? "a scalar " : "a vector of ", dtype_name(dtype)));
    used.insert(name);
    return d;
  };
  auto scalar = [&](const std::string& name) {
    return get(name, DType::i64, true).values.data<int64_t>()[0];
  };

  auto text = [&](const std::string& name) {
    const auto it = contents.find(name);
    if (it == contents.end() || !it->second.is_text)
      reader.fail("not a valid checkpoint: no '" + name + "' text");
    used.insert(name);
    return it->second.text;
  };
  out.state.config = text("config");
  out.parts = split_lines(text("checkpoint/parts"));
  out.optimizer_kind = text("optimizer/kind");
  out.state.step = scalar("state/step");
  out.state.seed = static_cast<uint64_t>(scalar("state/seed"));
  if (contents.count("state/frozen_base_hash") != 0)  // checkpoints from before it have none
    out.state.frozen_base_hash = static_cast<uint64_t>(scalar("state/frozen_base_hash"));
  if (contents.count("state/model_config") != 0) out.state.model_config = text("state/model_config");
  if (contents.count("state/evaluation") != 0) out.state.evaluation = static_cast<uint64_t>(scalar("state/evaluation"));
  if (contents.count("state/evaluation_since") != 0) out.state.evaluation_since = scalar("state/evaluation_since");
  if (contents.count("state/world_size") != 0) out.state.world_size = scalar("state/world_size");
  out.optimizer_steps = scalar("optimizer/steps");
  out.state.cursor.step = scalar("loader/step");
  if (out.state.step < 0 || out.optimizer_steps < 0 || out.state.cursor.step < 0)
    reader.fail("not a valid checkpoint: a negative step count");
  // A run applies at most one update per step (none for a skipped step), so the optimizer cannot
  // be ahead of the run; the bound on the steps keeps NAdam's product over every past step (an
  // O(steps) loop on resume) to seconds: 1e9 steps is decades at a step a second.
  if (out.state.step > kMaxCheckpointStep || out.optimizer_steps > out.state.step)
    reader.fail(detail::concat("not a valid checkpoint: step ", out.state.step, ", optimizer steps ",
                               out.optimizer_steps, " (at most ", kMaxCheckpointStep,
                               " steps, the optimizer's no more than the run's)"));

  const std::vector<int32_t> tasks =
      get("loader/task", DType::i32, false).values.to_vector<int32_t>();
  const char* columns[] = {"loader/epoch", "loader/position"};
  std::vector<std::vector<int64_t>> cols;
  for (const char* c : columns) {
    cols.push_back(get(c, DType::i64, false).values.to_vector<int64_t>());
    if (cols.back().size() != tasks.size())
      reader.fail(
          detail::concat("not a valid checkpoint: '", c, "' and 'loader/task' differ in length"));
  }
  // Checkpoints written before the streams had checksums lack them: 0 is "unknown".
  std::vector<int64_t> checksums(tasks.size(), 0);
  if (contents.count("loader/checksum")) {
    checksums = get("loader/checksum", DType::i64, false).values.to_vector<int64_t>();
    if (checksums.size() != tasks.size())
      reader.fail("not a valid checkpoint: 'loader/checksum' and 'loader/task' differ in length");
  }
  for (size_t i = 0; i < tasks.size(); ++i) {
    if (tasks[i] < 0 || tasks[i] >= data::kTaskCount)
      reader.fail(
          detail::concat("not a valid checkpoint: 'loader/task' holds ", tasks[i], ", not a task"));
    if (cols[0][i] < 0 || cols[1][i] < 0)
      reader.fail(detail::concat("not a valid checkpoint: a negative data cursor (epoch ", cols[0][i], ", position ",
                                 cols[1][i], ")"));
    out.state.cursor.tasks.push_back(
        {static_cast<data::Task>(tasks[i]), cols[0][i], cols[1][i], static_cast<uint64_t>(checksums[i])});
  }

  const std::pair<const char*, std::map<std::string, const H5Dataset*>*> groups[] = {
      {"parameters/", &out.params}, {"optimizer/m/", &out.m}, {"optimizer/v/", &out.v}};
  for (const auto& [name, d] : contents) {
    if (used.count(name)) continue;
    bool placed = false;
    for (const auto& [prefix, into] : groups) {
      const size_t n = std::strlen(prefix);
      if (name.compare(0, n, prefix) == 0 && name.find('/', n) == std::string::npos) {
        if (d.is_text || !is_floating(d.dtype))
          reader.fail("not a valid checkpoint: '" + name + "' is not a floating-point tensor");
        (*into)[name.substr(n)] = &d;
        placed = true;
      }
    }
    if (!placed) reader.fail("not a valid checkpoint: unexpected dataset '" + name + "' (written by a later version?)");
  }
  // Every parameter has both moments, in its dtype and shape, and no moment lacks a parameter.
  for (const auto* moments : {&out.m, &out.v}) {
    const char* which = moments == &out.m ? "optimizer/m/" : "optimizer/v/";
    for (const auto& [name, d] : *moments)
      if (!out.params.count(name))
        reader.fail(detail::concat("not a valid checkpoint: '", which, name, "' has no parameter"));
    for (const auto& [name, p] : out.params) {
      const auto it = moments->find(name);
      if (it == moments->end())
        reader.fail(detail::concat("not a valid checkpoint: no '", which, name, "'"));
      if (it->second->dtype != p->dtype || it->second->shape != p->shape)
        reader.fail(detail::concat("not a valid checkpoint: '", which, name,
                                   "' differs from its parameter in shape or dtype"));
    }
  }
  return out;
}

// Fails naming `name` and the first element of `values` that is not finite, or (`nonnegative`:
// second moments, means of squares) that is negative.
void check_finite_tensor(const ChecksummedH5Reader& reader, const std::string& name, const Tensor& values,
                         bool nonnegative) {
  const std::vector<double> x = values.to(DType::f64).to_vector<double>();
  for (size_t i = 0; i < x.size(); ++i)
    if (!std::isfinite(x[i]) || (nonnegative && x[i] < 0))
      reader.fail(detail::concat("not a valid checkpoint: '", name, "' element ", i, " is ", x[i],
                                 nonnegative ? " (must be finite and >= 0)" : " (must be finite)"));
}

// Reads and checks the file; `all_values`: keep every dataset's numbers (loading), or only those
// of the counters and the cursor (verification, which looks at the tensors' shapes alone).
H5Contents read_contents(ChecksummedH5Reader& reader, bool all_values) {
  return reader.read([all_values](const std::string& name, const Shape& shape) {
    return all_values || shape_numel(shape) <= 1 || name.compare(0, 7, "loader/") == 0;
  });
}

}  // namespace

std::string checkpoint_path(const std::string& dir, int64_t step) {
  char name[48];
  std::snprintf(name, sizeof name, "%s%010lld", kFolderPrefix, static_cast<long long>(step));
  return (fs::path(dir) / name).string();
}

int64_t checkpoint_step(const std::string& path) {
  return step_of(fs::path(path).filename().string(), false);
}

std::string checkpoint_temp_path(const std::string& dir, int64_t step) {
  return checkpoint_path(dir, step) + kTempSuffix;
}

std::string begin_checkpoint(const std::string& dir, int64_t step) {
  QARAC_CHECK(step >= 0, "checkpoint step must be non-negative, got ", step);
  const std::string folder = checkpoint_temp_path(dir, step);
  std::error_code ec;
  fs::remove_all(folder, ec);
  fs::create_directories(folder, ec);
  QARAC_INPUT_CHECK(!ec, folder, ": cannot create the checkpoint folder: ", ec.message());
  return folder;
}

void write_checkpoint_part(const std::string& folder, const CheckpointPart& part,
                           const std::vector<std::string>& parts, const Optimizer& optimizer,
                           const TrainingState& state) {
  const ParameterList& params = optimizer.parameters();
  const size_t m = optimizer.first_moments().size(), v = optimizer.second_moments().size();
  QARAC_CHECK(m == params.size() && v == params.size(), "optimizer holds ", m, " and ", v, " moments for ",
              params.size(), " parameters");
  QARAC_CHECK(std::find(parts.begin(), parts.end(), part.name) != parts.end(), "checkpoint part '", part.name,
              "' is not among the parts listed");
  std::set<std::string> names;
  for (const Parameter* p : part.params) {
    QARAC_CHECK(!p->name.empty() && p->name.find('/') == std::string::npos, "parameter name '", p->name,
                "' cannot name an HDF5 dataset");
    QARAC_CHECK(names.insert(p->name).second, "parameter '", p->name, "' is listed twice");
  }
  AtomicFile file((fs::path(folder) / (part.name + kPartSuffix)).string(), AtomicFile::by_path);
  {
    ChecksummedH5Writer w(file.temp_path(), kCheckpointKind);
    write_state(w, part, parts, optimizer, state);
    w.finish();
  }
  file.commit();
}

std::string commit_checkpoint(const std::string& dir, int64_t step, int keep_last) {
  QARAC_CHECK(keep_last >= 0, "keep_last must be non-negative, got ", keep_last);
  const std::string folder = checkpoint_path(dir, step);
  std::error_code ec;
  // A checkpoint of this step from a run that went on past it gives way.
  if (fs::exists(folder, ec)) delete_checkpoint(dir, step, "replaced checkpoint");
  fs::rename(checkpoint_temp_path(dir, step), folder, ec);
  QARAC_INPUT_CHECK(!ec, folder, ": cannot rename the finished checkpoint into place: ", ec.message());
  // The new checkpoint is on disk under its name before any older one is deleted. The rename has
  // happened, so a failed fsync of the folder does not fail the run: it keeps the older
  // checkpoints instead, in case the new name does not survive a crash.
  try {
    sync_folder(dir);
  } catch (const InputError& e) {
    log::warn(e.what(), ": the older checkpoints are kept");
    return folder;
  }
  prune(dir, step, keep_last);
  return folder;
}

void remove_unfinished_checkpoints(const std::string& dir) {
  for (const Listed& t : list(dir, true)) remove_folder(t.path, temporary_what(t.path));
}

std::string with_space_needed(const std::string& what, const std::string& dir, int keep_last) {
  // The writers' errors end with strerror's text (core/atomic_file.h, check_hdf5.h).
  if (what.find(std::strerror(ENOSPC)) == std::string::npos && what.find(std::strerror(EDQUOT)) == std::string::npos)
    return what;
  std::string note = keep_last == 0 ? std::string("checkpoint.keep 0 keeps every checkpoint")
                                    : detail::concat("checkpoint.keep ", keep_last, " needs room for ", keep_last + 1,
                                                     " checkpoints while the newest is written (the oldest is "
                                                     "removed only once the newest is complete)");
  const std::vector<Listed> done = list(dir, false);
  if (!done.empty()) {
    uint64_t bytes = 0;
    std::error_code ec, unreadable;
    for (fs::recursive_directory_iterator it(done.front().path, ec), end; !ec && it != end; it.increment(ec))
      if (const uintmax_t size = it->file_size(unreadable); !unreadable) bytes += size;
    note += ": one takes " + size_text(bytes);
  }
  // The free space says nothing of a quota, and a disk may be out of inodes with bytes to spare.
  const char* joint = done.empty() ? ": " : ", and ";
  struct statvfs disk {};
  if (what.find(std::strerror(EDQUOT)) != std::string::npos)
    note += detail::concat(joint, "the disk quota of ", dir, " is used up");
  else if (statvfs(dir.c_str(), &disk) == 0 && disk.f_files > 0 && disk.f_favail == 0)
    note += detail::concat(joint, dir, " has no free inodes (files) left");
  else if (statvfs(dir.c_str(), &disk) == 0)
    note += detail::concat(joint, dir, " has ", size_text(static_cast<uint64_t>(disk.f_bavail) * disk.f_frsize), " free");
  return what + "; " + note;
}

std::string save_checkpoint(const std::string& dir, const Optimizer& optimizer, const TrainingState& state,
                            int keep_last, const std::vector<CheckpointPart>& parts) {
  const std::vector<CheckpointPart> all =
      parts.empty() ? std::vector<CheckpointPart>{{"model", optimizer.parameters()}} : parts;
  std::vector<std::string> names;
  for (const CheckpointPart& p : all) names.push_back(p.name);
  const std::string folder = begin_checkpoint(dir, state.step);
  for (const CheckpointPart& p : all) write_checkpoint_part(folder, p, names, optimizer, state);
  return commit_checkpoint(dir, state.step, keep_last);
}

namespace {

// Every part of checkpoint folder `path`, parsed (`all_values`: with every tensor's numbers);
// the parts must all be there and agree on the step and the list of parts.
struct Folder {
  // Deques: a Parsed points into its contents, and callers hold references while more are read.
  std::deque<std::unique_ptr<ChecksummedH5Reader>> readers;
  std::deque<H5Contents> contents;
  std::deque<Parsed> parts;
};

void read_part(Folder& f, const std::string& path, bool all_values) {
  f.readers.push_back(std::make_unique<ChecksummedH5Reader>(path, kCheckpointKind));
  f.contents.push_back(read_contents(*f.readers.back(), all_values));
  f.parts.push_back(parse(*f.readers.back(), f.contents.back()));
}

const Parsed& first_part(Folder& f, const std::string& path, bool all_values) {
  std::error_code ec;
  QARAC_INPUT_CHECK(fs::is_directory(path, ec), path, ": not a checkpoint folder");
  std::string first;
  for (fs::directory_iterator it(path, ec), end; !ec && it != end; it.increment(ec)) {
    const std::string name = it->path().filename().string();
    if (name.size() > 3 && name.compare(name.size() - 3, 3, kPartSuffix) == 0 && (first.empty() || name < first))
      first = name;
  }
  QARAC_INPUT_CHECK(!first.empty(), path, ": not a valid checkpoint: no part file");
  read_part(f, (fs::path(path) / first).string(), all_values);
  const Parsed& head = f.parts.front();
  const int64_t named = checkpoint_step(path);
  if (named >= 0 && head.state.step != named)
    f.readers.front()->fail(detail::concat("not a valid checkpoint: holds step ", head.state.step, ", its folder ",
                                           named));
  return head;
}

}  // namespace

void verify_checkpoint(const std::string& path) {
  Folder f;
  const Parsed head = first_part(f, path, false);
  for (const std::string& name : head.parts) {
    const std::string file = (fs::path(path) / (name + kPartSuffix)).string();
    std::error_code ec;  // a file that cannot be looked at is left to read_part, which says why
    QARAC_INPUT_CHECK(fs::exists(file, ec) || ec, file, ": not a valid checkpoint: part '", name, "' is missing");
    read_part(f, file, false);
    const Parsed& p = f.parts.back();
    if (p.state.step != head.state.step || p.parts != head.parts || p.optimizer_steps != head.optimizer_steps)
      f.readers.back()->fail("not a valid checkpoint: its step or list of parts differs from the other parts'");
  }
}

void refuse_old_checkpoints(const std::string& dir) {
  std::error_code ec;
  for (fs::directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec)) {
    const std::string name = it->path().filename().string();
    QARAC_INPUT_CHECK(name.rfind("rank-", 0) != 0 && name.rfind("checkpoint-", 0) != 0, dir, " holds ", name,
                      ", a checkpoint of the per-rank layout of earlier versions, whose data order depended on the "
                      "world size: it cannot be resumed (start a new run)");
  }
}

std::optional<std::string> find_latest_checkpoint(const std::string& dir) {
  refuse_old_checkpoints(dir);
  const std::vector<Listed> checkpoints = list(dir, false);
  for (const Listed& c : checkpoints) {
    try {
      verify_checkpoint(c.path.string());
      return c.path.string();
    } catch (const InputError& e) {
      log::warn("skipping checkpoint ", e.what());
    }
  }
  // Damage to every checkpoint (a storage fault) is not a fresh start: one would rewrite the run's
  // metrics from step 0 and, at its checkpoints, delete these (rotation), repairable or not.
  QARAC_INPUT_CHECK(checkpoints.empty(), dir, ": none of its ", checkpoints.size(),
                    " checkpoints can be resumed (each is named above with why); rather than start again "
                    "from step 0, which would rewrite the run's metrics and delete them as it checkpoints, the "
                    "run stops: restore them, or move them aside to start the run over");
  return std::nullopt;
}

TrainingState load_checkpoint(const std::string& path, Optimizer& optimizer, const ConfigCheck& check_config,
                              const std::vector<CheckpointPart>& parts) {
  const std::vector<CheckpointPart> wanted =
      parts.empty() ? std::vector<CheckpointPart>{{"model", optimizer.parameters()}} : parts;
  Folder f;
  const Parsed head = first_part(f, path, true);
  const char* kind = optimizer_name(optimizer.config().kind);
  if (head.optimizer_kind != kind)
    f.readers.front()->fail("the checkpoint's optimizer is " + head.optimizer_kind + ", this run's " + kind);
  if (check_config) {
    const std::string why = check_config(head.state.config);
    if (!why.empty()) f.readers.front()->fail("the checkpoint does not fit this run's configuration: " + why);
  }
  std::map<const Parameter*, size_t> index;
  for (size_t i = 0; i < optimizer.parameters().size(); ++i) index[optimizer.parameters()[i]] = i;

  // Everything is checked against the model before anything is written.
  std::vector<const Parsed*> of_part;
  for (const CheckpointPart& part : wanted) {
    const std::string file = (fs::path(path) / (part.name + kPartSuffix)).string();
    std::error_code ec;  // as in verify_checkpoint
    QARAC_INPUT_CHECK(fs::exists(file, ec) || ec, file, ": the checkpoint has no part '", part.name, "'");
    read_part(f, file, true);
    const ChecksummedH5Reader& reader = *f.readers.back();
    const Parsed& parsed = f.parts.back();
    if (parsed.state.step != head.state.step || parsed.optimizer_steps != head.optimizer_steps)
      reader.fail("not a valid checkpoint: its step differs from the other parts'");
    std::set<std::string> names;
    for (const Parameter* p : part.params) {
      QARAC_CHECK(index.count(p), "checkpoint part ", part.name, ": parameter '", p->name, "' is not the optimizer's");
      names.insert(p->name);
      const auto it = parsed.params.find(p->name);
      if (it == parsed.params.end())
        reader.fail(detail::concat("the checkpoint lacks parameter '", p->name, "' ",
                                   shape_str(p->master.shape()), " of the model"));
      const H5Dataset& d = *it->second;
      if (d.shape != p->master.shape() || d.dtype != p->master.dtype())
        reader.fail(detail::concat("parameter '", p->name, "' is ", dtype_name(d.dtype), shape_str(d.shape),
                                   " in the checkpoint, the model's is ", dtype_name(p->master.dtype()),
                                   shape_str(p->master.shape())));
      // The checksum proves the bytes are those written, not that they are a state to go on from
      // (a checkpoint written by another tool, or of a run that had already overflowed).
      check_finite_tensor(reader, "parameters/" + p->name, d.values, false);
      check_finite_tensor(reader, "optimizer/m/" + p->name, parsed.m.at(p->name)->values, false);
      check_finite_tensor(reader, "optimizer/v/" + p->name, parsed.v.at(p->name)->values, true);
    }
    for (const auto& [name, d] : parsed.params)
      if (!names.count(name))
        reader.fail("the checkpoint holds parameter '" + name + "', which the model does not have");
    of_part.push_back(&parsed);
  }

  std::vector<Tensor>& m = optimizer.first_moments();
  std::vector<Tensor>& v = optimizer.second_moments();
  for (size_t k = 0; k < wanted.size(); ++k) {
    for (Parameter* p : wanted[k].params) {
      const size_t i = index.at(p);
      // The compute copy is the master rounded to its dtype, as the optimizer's update writes it.
      p->assign(of_part[k]->params.at(p->name)->values);
      m[i].copy_(of_part[k]->m.at(p->name)->values);
      v[i].copy_(of_part[k]->v.at(p->name)->values);
    }
  }
  optimizer.set_steps(head.optimizer_steps);
  zero_grads(optimizer.parameters());
  return head.state;
}

}  // namespace qarac
