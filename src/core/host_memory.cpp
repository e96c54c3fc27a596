#include "core/host_memory.h"

#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <fstream>
#include <functional>
#include <limits>
#include <sstream>
#include <vector>

#include "core/log.h"

namespace qarac {
namespace {

std::string read_text(const std::string& path) {
  std::ifstream in(path);
  std::ostringstream text;
  text << in.rdbuf();
  return in ? text.str() : std::string();
}

std::vector<std::string> split(const std::string& text, char separator) {
  std::vector<std::string> parts;
  std::istringstream in(text);
  for (std::string part; std::getline(in, part, separator);) parts.push_back(part);
  return parts;
}

// A decimal count; none for anything else (a sign, a unit, "max", nothing) or one past uint64.
std::optional<uint64_t> count_in(const std::string& text) {
  if (text.empty() || text.find_first_not_of("0123456789") != std::string::npos) return std::nullopt;
  errno = 0;
  const unsigned long long value = std::strtoull(text.c_str(), nullptr, 10);
  if (errno == ERANGE) return std::nullopt;
  return static_cast<uint64_t>(value);
}

// A limit file's value; none for "max", a missing file or anything else that is not a number.
std::optional<uint64_t> limit_in(const std::string& path) {
  std::string text = read_text(path);
  while (!text.empty() && (text.back() == '\n' || text.back() == ' ')) text.pop_back();
  return count_in(text);
}

// A cgroup hierarchy as a process sees it: where it is mounted, and the process's group in it.
struct Hierarchy {
  std::string mount_root;   // the group the mount shows at its mount point
  std::string mount_point;  // with the caller's root prefixed
  std::string group;        // the process's group, as /proc/self/cgroup names it
  const char* limit_file;
};

// The tightest limit along the group and its ancestors up to the mount's root: a parent's limit
// (Slurm's job cgroup) binds the step and task groups under it, which often set none.
void tighten(const Hierarchy& h, std::optional<HostMemoryLimit>& best) {
  std::string below;  // the group's path below the mount root
  if (h.mount_root == "/")
    below = h.group;
  else if (h.group.compare(0, h.mount_root.size(), h.mount_root) == 0 &&
           (h.group.size() == h.mount_root.size() || h.group[h.mount_root.size()] == '/'))
    below = h.group.substr(h.mount_root.size());
  else
    return;  // the process's group is outside what this mount shows
  while (true) {
    if (const std::optional<uint64_t> bytes = limit_in(h.mount_point + below + "/" + h.limit_file);
        bytes && (!best || *bytes < best->bytes)) {
      const std::string group = h.mount_root == "/" ? (below.empty() ? "/" : below) : h.mount_root + below;
      best = HostMemoryLimit{*bytes, "that cgroup " + group + " allows"};
    }
    if (below.empty() || below == "/") break;
    below.erase(below.rfind('/'));
  }
}

}  // namespace

std::optional<HostMemoryLimit> cgroup_memory_limit(const std::string& proc_cgroup, const std::string& mountinfo,
                                                   const std::string& root) {
  std::string v1_group, v2_group;
  bool in_v2 = false;
  for (const std::string& line : split(proc_cgroup, '\n')) {
    // hierarchy-id:controllers:path, the path itself may hold ':'
    const size_t first = line.find(':'), second = first == std::string::npos ? first : line.find(':', first + 1);
    if (second == std::string::npos) continue;
    const std::string id = line.substr(0, first), controllers = line.substr(first + 1, second - first - 1);
    const std::string path = line.substr(second + 1);
    if (id == "0" && controllers.empty()) {
      v2_group = path;
      in_v2 = true;
    }
    for (const std::string& c : split(controllers, ','))
      if (c == "memory") v1_group = path;
  }
  std::optional<HostMemoryLimit> best;
  for (const std::string& line : split(mountinfo, '\n')) {
    // id parent major:minor root mount-point options [optional fields] - fstype source super-options
    const std::vector<std::string> f = split(line, ' ');
    size_t dash = 6;
    while (dash < f.size() && f[dash] != "-") ++dash;
    if (dash + 3 >= f.size()) continue;
    const std::string& type = f[dash + 1];
    Hierarchy h{f[3], root + f[4], "", nullptr};
    if (type == "cgroup2" && in_v2) {
      h.group = v2_group;
      h.limit_file = "memory.max";
    } else if (type == "cgroup" && !v1_group.empty()) {
      bool memory = false;
      for (const std::string& option : split(f[dash + 3], ',')) memory = memory || option == "memory";
      if (!memory) continue;
      h.group = v1_group;
      h.limit_file = "memory.limit_in_bytes";
    } else {
      continue;
    }
    tighten(h, best);
  }
  return best;
}

std::optional<HostMemoryLimit> slurm_memory_limit(const std::function<const char*(const char*)>& env) {
  const auto number = [&](const char* name) -> std::optional<uint64_t> {
    const char* value = env(name);
    if (!value) return std::nullopt;
    const std::optional<uint64_t> count = count_in(value);
    // Slurm writes a count of MiB; one set by hand may be anything.
    if (!count) log::warn_shared(name, "=", value, ": not a count of MiB as Slurm gives it; no memory limit is read from it");
    return count;
  };
  constexpr uint64_t kMiB = uint64_t{1} << 20;
  const auto mebibytes = [&](uint64_t count, uint64_t factor) -> std::optional<uint64_t> {
    if (count == 0 || factor == 0 || count > std::numeric_limits<uint64_t>::max() / kMiB / factor) return std::nullopt;
    return count * factor * kMiB;
  };
  if (const std::optional<uint64_t> per_node = number("SLURM_MEM_PER_NODE")) {
    // 0 asks for the node's whole memory.
    if (const std::optional<uint64_t> bytes = mebibytes(*per_node, 1))
      return HostMemoryLimit{*bytes, "that Slurm's --mem allows (SLURM_MEM_PER_NODE=" + std::to_string(*per_node) + ")"};
    return std::nullopt;
  }
  const std::optional<uint64_t> per_cpu = number("SLURM_MEM_PER_CPU"), cpus = number("SLURM_CPUS_ON_NODE");
  if (!per_cpu || !cpus) return std::nullopt;
  const std::optional<uint64_t> bytes = mebibytes(*per_cpu, *cpus);
  if (!bytes) return std::nullopt;
  return HostMemoryLimit{*bytes, "that Slurm's --mem-per-cpu allows on this node's " + std::to_string(*cpus) +
                                     " CPUs (SLURM_MEM_PER_CPU=" + std::to_string(*per_cpu) + ")"};
}

const HostMemoryLimit& host_memory_limit() {
  static const HostMemoryLimit limit = [] {
    const long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGE_SIZE);
    // Unknown: no limit of ours; the allocator's own failure still says so.
    HostMemoryLimit physical{pages > 0 && page > 0 ? static_cast<uint64_t>(pages) * static_cast<uint64_t>(page)
                                                   : std::numeric_limits<uint64_t>::max(),
                             "of physical memory"};
    HostMemoryLimit tightest = physical;
    // The cgroup first: it is what kills a process, where Slurm enforces --mem with one.
    for (const std::optional<HostMemoryLimit>& other :
         {cgroup_memory_limit(read_text("/proc/self/cgroup"), read_text("/proc/self/mountinfo")),
          slurm_memory_limit(std::getenv)})
      if (other && other->bytes < tightest.bytes) tightest = *other;
    return tightest;
  }();
  return limit;
}

}  // namespace qarac
