// The collective trace and its deadlock check (collective_trace.h).
#include "parallel/collective_trace.h"

#include <mpi.h>

#include <algorithm>
#include <charconv>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>

#include "core/error.h"

namespace qarac::parallel {
namespace {

namespace fs = std::filesystem;

// This process's trace file, opened at its first launch (MPI is up by then: the world rank
// names it). Not open when QARAC_TRACE_COLLECTIVES is unset.
std::ofstream& trace_file() {
  static std::ofstream file = [] {
    std::ofstream out;
    const char* folder = std::getenv("QARAC_TRACE_COLLECTIVES");
    if (!folder || !*folder) return out;
    int rank = 0;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    std::error_code ec;
    fs::create_directories(folder, ec);
    const fs::path path = fs::path(folder) / ("rank-" + std::to_string(rank) + ".trace");
    out.open(path, std::ios::trunc);
    QARAC_INPUT_CHECK(out.good(), "QARAC_TRACE_COLLECTIVES: cannot write ", path.string());
    return out;
  }();
  return file;
}

// A collective of the run: the k-th (from 0) launched on its communicator.
struct Node {
  std::string comm;
  size_t k;
};

std::string describe(const Node& node, const std::vector<Collective>& sequence) {
  return detail::concat(sequence[node.k].op, " #", node.k + 1, " on ", node.comm);
}

}  // namespace

void trace_collective(const std::string& comm, int size, const char* op, int64_t bytes) {
  std::ofstream& out = trace_file();
  if (!out.is_open()) return;
  // Flushed line by line: the trace of a job that hangs or aborts is complete up to there.
  out << comm << '\t' << size << '\t' << op << '\t' << bytes << std::endl;
  QARAC_INPUT_CHECK(out.good(), "QARAC_TRACE_COLLECTIVES: cannot append to the trace");
}

std::string collective_order_error(const std::vector<CollectiveLog>& logs) {
  // Each communicator's members and the sequence its first member launched.
  std::map<std::string, std::vector<int>> members;
  std::map<std::string, std::vector<Collective>> sequence;
  for (int r = 0; r < static_cast<int>(logs.size()); ++r) {
    std::map<std::string, std::vector<Collective>> own;
    for (const Collective& c : logs[r]) own[c.comm].push_back(c);
    for (auto& [comm, launches] : own) {
      members[comm].push_back(r);
      if (!sequence.count(comm)) sequence[comm] = launches;
      const std::vector<Collective>& first = sequence[comm];
      const int r0 = members[comm].front();
      for (size_t k = 0; k < std::max(first.size(), launches.size()); ++k) {
        if (k >= first.size() || k >= launches.size())
          return detail::concat("rank ", r0, " launches ", first.size(), " collectives on ", comm, ", rank ", r, " ",
                                launches.size());
        const Collective &a = first[k], &b = launches[k];
        if (a.op != b.op || a.bytes != b.bytes || a.size != b.size)
          return detail::concat("collective #", k + 1, " on ", comm, ": rank ", r0, " launches ", a.op, " of ",
                                a.bytes, " bytes over ", a.size, " ranks, rank ", r, " ", b.op, " of ", b.bytes,
                                " bytes over ", b.size, " ranks");
      }
    }
  }
  for (const auto& [comm, ranks] : members)
    if (static_cast<int>(ranks.size()) != sequence[comm].front().size) {
      std::string list;
      for (int r : ranks) list += (list.empty() ? "" : ",") + std::to_string(r);
      return detail::concat(comm, " has ", sequence[comm].front().size, " ranks, but only ranks ", list,
                            " launch collectives on it");
    }

  // The graph of "launched right before" over the collectives, each edge labelled with a rank
  // that imposes it; a global order exists exactly when it has no cycle (Kahn's algorithm).
  std::vector<Node> nodes;
  std::map<std::pair<std::string, size_t>, size_t> index;
  for (const auto& [comm, launches] : sequence)
    for (size_t k = 0; k < launches.size(); ++k) {
      index[{comm, k}] = nodes.size();
      nodes.push_back({comm, k});
    }
  struct Edge {
    size_t from;
    int rank;
  };
  std::vector<std::vector<Edge>> into(nodes.size());
  std::vector<std::vector<size_t>> out(nodes.size());
  for (int r = 0; r < static_cast<int>(logs.size()); ++r) {
    std::map<std::string, size_t> seen;
    size_t previous = nodes.size();
    for (const Collective& c : logs[r]) {
      const size_t node = index.at({c.comm, seen[c.comm]++});
      if (previous < nodes.size()) {
        into[node].push_back({previous, r});
        out[previous].push_back(node);
      }
      previous = node;
    }
  }
  std::vector<size_t> waiting(nodes.size());
  std::vector<size_t> ready;
  for (size_t v = 0; v < nodes.size(); ++v)
    if ((waiting[v] = into[v].size()) == 0) ready.push_back(v);
  std::vector<bool> placed(nodes.size(), false);
  size_t count = 0;
  while (!ready.empty()) {
    const size_t v = ready.back();
    ready.pop_back();
    placed[v] = true;
    ++count;
    for (size_t w : out[v])
      if (--waiting[w] == 0) ready.push_back(w);
  }
  if (count == nodes.size()) return "";

  // Every collective left has a predecessor left: walking back along them closes a cycle.
  std::vector<Edge> path;
  std::map<size_t, size_t> at;  // node → its place on the path
  size_t v = std::find(placed.begin(), placed.end(), false) - placed.begin();
  while (!at.count(v)) {
    at[v] = path.size();
    const Edge back = *std::find_if(into[v].begin(), into[v].end(), [&](const Edge& e) { return !placed[e.from]; });
    path.push_back({v, back.rank});  // back.rank launches back.from right before v
    v = back.from;
  }
  // path[i] = (node n_i, rank r_i launching n_{i+1} right before n_i): the cycle, backwards.
  // Forwards, each entry's node comes right after the previous entry's (cyclically) on its
  // rank. Started where the rank changes, each run of one rank's entries is one clause.
  std::vector<Edge> cycle(path.begin() + static_cast<std::ptrdiff_t>(at[v]), path.end());
  std::reverse(cycle.begin(), cycle.end());
  const size_t n = cycle.size();
  size_t first = 0;
  while (cycle[first].rank == cycle[(first + n - 1) % n].rank) ++first;  // ranks differ somewhere
  std::rotate(cycle.begin(), cycle.begin() + static_cast<std::ptrdiff_t>(first), cycle.end());
  std::string text = "no global order of the collectives agrees with every rank's (a deadlock):";
  for (size_t i = 0; i < n;) {
    size_t j = i;
    while (j + 1 < n && cycle[j + 1].rank == cycle[i].rank) ++j;
    const Node& earlier = nodes[cycle[(i + n - 1) % n].from];
    const Node& later = nodes[cycle[j].from];
    text += detail::concat(i ? ";" : "", " rank ", cycle[i].rank, " launches ", describe(earlier, sequence[earlier.comm]),
                           " before ", describe(later, sequence[later.comm]));
    i = j + 1;
  }
  return text;
}

std::vector<CollectiveLog> read_collective_traces(const std::string& folder) {
  std::vector<CollectiveLog> logs;
  for (int r = 0;; ++r) {
    const fs::path path = fs::path(folder) / ("rank-" + std::to_string(r) + ".trace");
    std::ifstream in(path);
    if (!in) break;
    CollectiveLog log;
    std::string line;
    for (int number = 1; std::getline(in, line); ++number) {
      std::istringstream fields(line);
      Collective c;
      std::string size, bytes;
      const bool ok = std::getline(fields, c.comm, '\t') && std::getline(fields, size, '\t') &&
                      std::getline(fields, c.op, '\t') && std::getline(fields, bytes, '\t');
      const auto whole_number = [](const std::string& text, auto& value) {
        const auto [end, error] = std::from_chars(text.data(), text.data() + text.size(), value);
        return error == std::errc() && end == text.data() + text.size() && value >= 0;
      };
      QARAC_INPUT_CHECK(ok && whole_number(size, c.size) && whole_number(bytes, c.bytes), path.string(), ":", number,
                        ": not <communicator>\\t<size>\\t<op>\\t<bytes> (sizes as whole numbers)");
      log.push_back(std::move(c));
    }
    logs.push_back(std::move(log));
  }
  QARAC_INPUT_CHECK(!logs.empty(), folder, ": no collective trace (rank-0.trace)");
  return logs;
}

}  // namespace qarac::parallel
