// How much memory the host tensors of this process, and of the node's other ranks under the same
// limit, may hold (core/memory.h counts them against it): the machine's physical memory, or less
// where a cgroup limits the process or a Slurm job asked for less. Linux overcommits, so an
// allocation beyond any of them succeeds, and the kernel's OOM killer ends the process without a
// word once its pages are touched; a Slurm job with --mem (task/cgroup) or a container with a
// memory limit is killed at the cgroup's limit, long before the physical memory is full, and
// Slurm's accounting kills a job past its --mem without cgroups too.
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <string>

namespace qarac {

struct HostMemoryLimit {
  uint64_t bytes = 0;
  std::string source;  // completes "the <bytes> ...": "of physical memory", "that cgroup /slurm/job_7 allows"
};

// The tightest of the physical memory, the cgroup limit and Slurm's, read once.
const HostMemoryLimit& host_memory_limit();

// The tightest memory limit of the cgroups a process is in and their ancestors (v1's memory
// controller, memory.limit_in_bytes; v2, memory.max), given the texts of its /proc/self/cgroup
// and /proc/self/mountinfo; `root` is prefixed to the mount points (a test's own tree). None
// when no cgroup sets a limit. Unreadable or malformed files are passed over: they are the
// system's, and the physical memory still bounds the tensors.
std::optional<HostMemoryLimit> cgroup_memory_limit(const std::string& proc_cgroup, const std::string& mountinfo,
                                                   const std::string& root = "");

// The memory a Slurm job asked for on this node, given the environment (`env`, as std::getenv):
// --mem (SLURM_MEM_PER_NODE), or --mem-per-cpu (SLURM_MEM_PER_CPU) times the node's CPUs of the
// job (SLURM_CPUS_ON_NODE), in MiB. None outside Slurm, for --mem=0 (the node's whole memory) and
// for values that are not counts.
std::optional<HostMemoryLimit> slurm_memory_limit(const std::function<const char*(const char*)>& env);

}  // namespace qarac
