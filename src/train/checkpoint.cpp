// Checkpoints: the schema (what save writes, what parse accepts) on the checksummed HDF5 files of
// core, and the folder (names, keep-last-N, the newest valid one). The loader reads and checks
// the whole file (checksum, structure, every shape against the model, the caller's config check)
// before it writes anything into the optimizer, so a refused checkpoint changes nothing.
#include "train/checkpoint.h"

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <map>
#include <set>
#include <vector>

#include "core/atomic_file.h"
#include "core/hdf5_checksummed.h"
#include "core/log.h"

namespace qarac {
namespace {

namespace fs = std::filesystem;

constexpr H5FileKind kCheckpointKind = {kCheckpointFormat, kCheckpointVersion, "checkpoint"};

// ---- Names in a checkpoint folder ------------------------------------------------------------
constexpr const char* kFilePrefix = "checkpoint-";
constexpr const char* kFileSuffix = ".h5";

// The step of "checkpoint-<digits>.h5" (or, with `temporary`, of its AtomicFile's temporary
// file "checkpoint-<digits>.h5.tmp.<pid>"); -1 for any other name.
int64_t step_of(const std::string& name, bool temporary) {
  const size_t prefix = std::strlen(kFilePrefix), suffix = std::strlen(kFileSuffix);
  if (name.compare(0, prefix, kFilePrefix) != 0) return -1;
  size_t end = prefix;
  while (end < name.size() && end - prefix < 18 && name[end] >= '0' && name[end] <= '9') ++end;
  if (end == prefix || name.compare(end, suffix, kFileSuffix) != 0) return -1;
  const std::string rest = name.substr(end + suffix);
  if (temporary ? rest.compare(0, std::strlen(kTempFileMarker), kTempFileMarker) != 0 : !rest.empty())
    return -1;
  return std::stoll(name.substr(prefix, end - prefix));
}

struct Listed {
  int64_t step;
  fs::path path;
};

// The checkpoints (or the temporary files) of `dir`, newest step first.
std::vector<Listed> list(const std::string& dir, bool temporary) {
  std::vector<Listed> out;
  std::error_code ec;
  for (fs::directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec)) {
    const int64_t step = step_of(it->path().filename().string(), temporary);
    if (step >= 0) out.push_back({step, it->path()});
  }
  std::sort(out.begin(), out.end(), [](const Listed& a, const Listed& b) { return a.step > b.step; });
  return out;
}

void remove_file(const fs::path& path, const char* why) {
  std::error_code ec;
  fs::remove(path, ec);
  if (ec)
    log::warn("cannot remove ", why, " ", path.string(), ": ", ec.message());
  else
    log::debug("removed ", why, " ", path.string());
}

// Deletes the temporary files of writes that died and the checkpoints beyond the newest
// `keep_last` (0 keeps all), the new one at `step` counted; files of later steps are kept.
void prune(const std::string& dir, int64_t step, int keep_last) {
  // A temporary file of this step or an earlier one belongs to a write that died: the writes
  // of a folder come from one process, in step order.
  for (const Listed& t : list(dir, true))
    if (t.step <= step) remove_file(t.path, "unfinished checkpoint");
  if (keep_last == 0) return;
  int kept = 1;  // the new one
  for (const Listed& c : list(dir, false)) {
    if (c.step >= step) continue;
    if (kept < keep_last)
      ++kept;
    else
      remove_file(c.path, "old checkpoint");
  }
}

// ---- The schema ------------------------------------------------------------------------------
void write_state(ChecksummedH5Writer& w, const Optimizer& optimizer, const TrainingState& state) {
  const ParameterList& params = optimizer.parameters();
  const std::vector<Tensor>& m = optimizer.first_moments();
  const std::vector<Tensor>& v = optimizer.second_moments();
  w.write_text("config", state.config);
  w.write_i64("state/step", state.step);
  w.write_u64("state/seed", state.seed);
  w.write_text("optimizer/kind", optimizer_name(optimizer.config().kind));
  w.write_i64("optimizer/steps", optimizer.steps());
  for (size_t i = 0; i < params.size(); ++i) {
    w.write("parameters/" + params[i]->name, params[i]->master);
    w.write("optimizer/m/" + params[i]->name, m[i]);
    w.write("optimizer/v/" + params[i]->name, v[i]);
  }
  const data::LoaderCursor& cursor = state.cursor;
  std::vector<int32_t> tasks;
  std::vector<int64_t> epoch, position, share_begin, share_end;
  for (const data::TaskCursor& t : cursor.tasks) {
    tasks.push_back(static_cast<int32_t>(t.task));
    epoch.push_back(t.epoch);
    position.push_back(t.position);
    share_begin.push_back(t.share_begin);
    share_end.push_back(t.share_end);
  }
  w.write_i64("loader/step", cursor.step);
  w.write_vector("loader/task", tasks);
  w.write_vector("loader/epoch", epoch);
  w.write_vector("loader/position", position);
  w.write_vector("loader/share_begin", share_begin);
  w.write_vector("loader/share_end", share_end);
}

// The state of a checkpoint, its structure checked.
struct Parsed {
  TrainingState state;
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
  out.optimizer_kind = text("optimizer/kind");
  out.state.step = scalar("state/step");
  out.state.seed = static_cast<uint64_t>(scalar("state/seed"));
  out.optimizer_steps = scalar("optimizer/steps");
  out.state.cursor.step = scalar("loader/step");
  if (out.state.step < 0 || out.optimizer_steps < 0 || out.state.cursor.step < 0)
    reader.fail("not a valid checkpoint: a negative step count");

  const std::vector<int32_t> tasks =
      get("loader/task", DType::i32, false).values.to_vector<int32_t>();
  const char* columns[] = {"loader/epoch", "loader/position", "loader/share_begin",
                           "loader/share_end"};
  std::vector<std::vector<int64_t>> cols;
  for (const char* c : columns) {
    cols.push_back(get(c, DType::i64, false).values.to_vector<int64_t>());
    if (cols.back().size() != tasks.size())
      reader.fail(
          detail::concat("not a valid checkpoint: '", c, "' and 'loader/task' differ in length"));
  }
  for (size_t i = 0; i < tasks.size(); ++i) {
    if (tasks[i] < 0 || tasks[i] >= data::kTaskCount)
      reader.fail(
          detail::concat("not a valid checkpoint: 'loader/task' holds ", tasks[i], ", not a task"));
    out.state.cursor.tasks.push_back(
        {static_cast<data::Task>(tasks[i]), cols[0][i], cols[1][i], cols[2][i], cols[3][i]});
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
    if (!placed) reader.fail("not a valid checkpoint: unexpected dataset '" + name + "'");
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
  std::snprintf(name, sizeof name, "%s%010lld%s", kFilePrefix, static_cast<long long>(step), kFileSuffix);
  return (fs::path(dir) / name).string();
}

int64_t checkpoint_step(const std::string& path) {
  return step_of(fs::path(path).filename().string(), false);
}

std::string save_checkpoint(const std::string& dir, const Optimizer& optimizer, const TrainingState& state,
                            int keep_last) {
  QARAC_CHECK(state.step >= 0, "checkpoint step must be non-negative, got ", state.step);
  QARAC_CHECK(keep_last >= 0, "keep_last must be non-negative, got ", keep_last);
  const ParameterList& params = optimizer.parameters();
  const size_t m = optimizer.first_moments().size(), v = optimizer.second_moments().size();
  QARAC_CHECK(m == params.size() && v == params.size(), "optimizer holds ", m, " and ", v, " moments for ",
              params.size(), " parameters");
  std::set<std::string> names;
  for (const Parameter* p : params) {
    QARAC_CHECK(!p->name.empty() && p->name.find('/') == std::string::npos, "parameter name '", p->name,
                "' cannot name an HDF5 dataset");
    QARAC_CHECK(names.insert(p->name).second, "parameter '", p->name, "' is listed twice");
  }
  std::error_code ec;
  fs::create_directories(dir, ec);
  QARAC_INPUT_CHECK(!ec, dir, ": cannot create the checkpoint folder: ", ec.message());

  const std::string path = checkpoint_path(dir, state.step);
  AtomicFile file(path, AtomicFile::by_path);
  {
    ChecksummedH5Writer w(file.temp_path(), kCheckpointKind);
    write_state(w, optimizer, state);
    w.finish();
  }
  // The new checkpoint is on disk under its name before any older one is deleted.
  file.commit();
  prune(dir, state.step, keep_last);
  return path;
}

void verify_checkpoint(const std::string& path) {
  ChecksummedH5Reader reader(path, kCheckpointKind);
  parse(reader, read_contents(reader, false));
}

std::optional<std::string> find_latest_checkpoint(const std::string& dir) {
  for (const Listed& c : list(dir, false)) {
    try {
      verify_checkpoint(c.path.string());
      return c.path.string();
    } catch (const InputError& e) {
      log::warn("skipping checkpoint ", e.what());
    }
  }
  return std::nullopt;
}

TrainingState load_checkpoint(const std::string& path, Optimizer& optimizer,
                              const ConfigCheck& check_config) {
  ChecksummedH5Reader reader(path, kCheckpointKind);
  const H5Contents contents = read_contents(reader, true);
  const Parsed parsed = parse(reader, contents);

  // Everything is checked against the model before anything is written.
  const ParameterList& params = optimizer.parameters();
  std::set<std::string> model_names;
  for (const Parameter* p : params) {
    model_names.insert(p->name);
    const auto it = parsed.params.find(p->name);
    if (it == parsed.params.end())
      reader.fail(detail::concat("the checkpoint lacks parameter '", p->name, "' ",
                                 shape_str(p->master.shape()), " of the model"));
    const H5Dataset& d = *it->second;
    if (d.shape != p->master.shape() || d.dtype != p->master.dtype())
      reader.fail(detail::concat("parameter '", p->name, "' is ", dtype_name(d.dtype),
                                 shape_str(d.shape), " in the checkpoint, the model's is ",
                                 dtype_name(p->master.dtype()), shape_str(p->master.shape())));
  }
  for (const auto& [name, d] : parsed.params)
    if (!model_names.count(name))
      reader.fail("the checkpoint holds parameter '" + name + "', which the model does not have");
  const char* kind = optimizer_name(optimizer.config().kind);
  if (parsed.optimizer_kind != kind)
    reader.fail("the checkpoint's optimizer is " + parsed.optimizer_kind + ", this run's " + kind);
  if (check_config) {
    const std::string why = check_config(parsed.state.config);
    if (!why.empty()) reader.fail("the checkpoint does not fit this run's configuration: " + why);
  }

  std::vector<Tensor>& m = optimizer.first_moments();
  std::vector<Tensor>& v = optimizer.second_moments();
  for (size_t i = 0; i < params.size(); ++i) {
    const std::string& name = params[i]->name;
    // The compute copy is the master rounded to its dtype, as the optimizer's update writes it.
    params[i]->assign(parsed.params.at(name)->values);
    m[i].copy_(parsed.m.at(name)->values);
    v[i].copy_(parsed.v.at(name)->values);
  }
  optimizer.set_steps(parsed.optimizer_steps);
  zero_grads(params);
  return parsed.state;
}

}  // namespace qarac
