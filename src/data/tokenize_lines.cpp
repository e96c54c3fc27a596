// tokenize_line (data/tokenize_lines.h).
#include "data/tokenize_lines.h"

#include <nlohmann/json.hpp>
#include <vector>

#include "core/error.h"
#include "data/json_brief.h"

namespace qarac::data {

std::string tokenize_line(const Tokenizer& tok, const std::string& line, const TokenizeOptions& options,
                          const std::string& where, int64_t line_no) {
  using json = nlohmann::json;
  json in;
  try {
    in = json::parse(line);
  } catch (const json::exception& e) {
    throw InputError(::qarac::detail::concat(where, ":", line_no, ": invalid JSON: ", printable(e.what())));
  }
  json out;
  if (!options.decode) {
    QARAC_INPUT_CHECK(in.is_string(), where, ":", line_no, ": expected a JSON string, got ", in.type_name());
    out = tok.encode(in.get_ref<const std::string&>(), options.special);
  } else {
    QARAC_INPUT_CHECK(in.is_array(), where, ":", line_no, ": expected a JSON array of ids, got ", in.type_name());
    std::vector<int32_t> ids;
    for (const json& v : in) {
      const bool in_range = v.is_number_integer() && v.get<int64_t>() >= 0 &&
                            v.get<int64_t>() < static_cast<int64_t>(tok.vocab_size());
      QARAC_INPUT_CHECK(in_range, where, ":", line_no, ": ", json_brief(v), " is not an id of the vocabulary (ids 0 to ",
                        tok.vocab_size() - 1, ")");
      QARAC_INPUT_CHECK(tok.has_id(v.get<int32_t>()), where, ":", line_no, ": ", v.get<int64_t>(),
                        " is an unused id of the vocabulary (no token has it)");
      ids.push_back(v.get<int32_t>());
    }
    out = tok.decode(ids, /*skip_special=*/!options.special);
  }
  return out.dump(-1, ' ', false, json::error_handler_t::replace);
}

}  // namespace qarac::data
