// How much memory this process's host tensors may hold (core/memory.h counts them against it):
// the machine's physical memory, or less where a cgroup limits the process. Linux overcommits,
// so an allocation beyond either succeeds, and the kernel's OOM killer ends the process without
// a word once its pages are touched; a Slurm job with --mem (task/cgroup) or a container with a
// memory limit is killed at the cgroup's limit, long before the physical memory is full.
#pragma once

#include <cstdint>
#include <optional>
#include <string>

namespace qarac {

struct HostMemoryLimit {
  uint64_t bytes = 0;
  std::string source;  // completes "the <bytes> ...": "of physical memory", "that cgroup /slurm/job_7 allows"
};

// The tighter of the physical memory and the cgroup limit, read once.
const HostMemoryLimit& host_memory_limit();

// The tightest memory limit of the cgroups a process is in and their ancestors (v1's memory
// controller, memory.limit_in_bytes; v2, memory.max), given the texts of its /proc/self/cgroup
// and /proc/self/mountinfo; `root` is prefixed to the mount points (a test's own tree). None
// when no cgroup sets a limit. Unreadable or malformed files are passed over: they are the
// system's, and the physical memory still bounds the tensors.
std::optional<HostMemoryLimit> cgroup_memory_limit(const std::string& proc_cgroup, const std::string& mountinfo,
                                                   const std::string& root = "");

}  // namespace qarac
