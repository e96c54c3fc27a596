// What every rank launches on its communicators, in order, and the check that such launches
// cannot deadlock (docs/distributed.md §7). A collective completes only once every member of
// its communicator has launched it, and a rank's collectives run one after another (one NCCL
// stream, or blocking host calls): if rank a launches X before Y and rank b launches Y before X,
// each can wait for the other for ever. The launches are safe when one global order of all the
// collectives agrees with every rank's order.
//   Tracing: QARAC_TRACE_COLLECTIVES=<folder> makes every rank append each launch, as it makes it,
//   to <folder>/rank-<world rank>.trace ("<communicator>\t<size>\t<op>\t<bytes>" per line), so
//   that even a job that hangs leaves its trace. Unset, tracing costs one test per launch.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace qarac::parallel {

struct Collective {
  std::string comm;  // the communicator's name, the same on every member ("the world", ...)
  int size = 0;      // its members
  std::string op;    // "all_reduce", "all_gather", "barrier", "broadcast", "split", "nccl_init"
  int64_t bytes = 0;
};
using CollectiveLog = std::vector<Collective>;  // one rank's launches, in the order it made them

// Appends a launch to this process's trace when QARAC_TRACE_COLLECTIVES is set; InputError
// when its file cannot be written.
void trace_collective(const std::string& comm, int size, const char* op, int64_t bytes);

// Why the ranks' launches (logs[r]: rank r's) could deadlock, or "" when they cannot: every
// communicator has as many ranks launching on it as its size, they all launch the same sequence
// of (op, bytes) on it, and no cycle of "launched before" runs through the ranks' orders. The
// text names the ranks and the collectives that disagree.
std::string collective_order_error(const std::vector<CollectiveLog>& logs);

// The traces of a run: rank-0.trace, rank-1.trace, ... of `folder`, up to the first missing
// rank. InputError when there is none or a line does not parse.
std::vector<CollectiveLog> read_collective_traces(const std::string& folder);

}  // namespace qarac::parallel
