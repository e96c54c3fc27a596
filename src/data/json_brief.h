// A JSON value of an input file quoted in an error message.
#pragma once

#include <nlohmann/json.hpp>

#include <string>
#include <utility>
#include <vector>

#include "core/error.h"

namespace qarac::data {

// The value as written when it is short and shallow (a long scalar cut at 200 bytes); else its
// kind and size. Dumping it whole would copy a file's worth into one line, and recurses once per
// nesting level (a label nested 10^5 deep overflowed the stack): the depth is measured without
// recursion first.
inline std::string json_brief(const nlohmann::json& value) {
  constexpr int kMaxDepth = 16;
  constexpr size_t kMaxBytes = 200;
  std::vector<std::pair<const nlohmann::json*, int>> pending = {{&value, 0}};
  bool shallow = true;
  while (!pending.empty() && shallow) {
    const auto [v, depth] = pending.back();
    pending.pop_back();
    if (!v->is_structured()) continue;
    shallow = depth < kMaxDepth;
    for (const nlohmann::json& child : *v) pending.emplace_back(&child, depth + 1);
  }
  if (shallow) {
    const std::string text = value.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
    if (text.size() <= kMaxBytes) return printable(text);
    if (!value.is_structured()) return printable(text.substr(0, kMaxBytes)) + "...";
  }
  return qarac::detail::concat(value.is_object() ? "an object of " : "an array of ", value.size(),
                               value.is_object() ? " member" : " element", value.size() == 1 ? "" : "s",
                               shallow ? std::string() : ", nested more than " + std::to_string(kMaxDepth) + " deep");
}

}  // namespace qarac::data
