// Added tokens (see added_tokens.h): the matcher's setup and search, and the whitespace that
// lstrip and rstrip take around a match.
#include "data/added_tokens.h"

#include <utility>

namespace qarac::data::detail {

size_t trailing_space_start(std::string_view s, size_t end) {
  while (end > 0) {
    const Char c = char_before(s, end);
    if (classify(c.cp) != kSpace) break;
    end -= c.len;
  }
  return end;
}

size_t leading_space_end(std::string_view s, size_t begin) {
  while (begin < s.size()) {
    const Char c = decode_char(s, begin);
    if (classify(c.cp) != kSpace) break;
    begin += c.len;
  }
  return begin;
}

AddedMatcher::AddedMatcher(std::vector<AddedToken> tokens) : tokens_(std::move(tokens)) {
  // Longest first, so that the first token that matches at a position is the longest.
  std::stable_sort(tokens_.begin(), tokens_.end(), [](const AddedToken& a, const AddedToken& b) {
    return a.content.size() > b.content.size();
  });
  starts_.fill(false);
  for (const AddedToken& t : tokens_) starts_[static_cast<uint8_t>(t.content[0])] = true;
}

bool AddedMatcher::find(std::string_view s, size_t from, size_t& start,
                        const AddedToken*& token) const {
  if (tokens_.empty()) return false;  // RoBERTa's second pass: no scan at all
  for (size_t i = from; i < s.size(); ++i) {
    if (!starts_[static_cast<uint8_t>(s[i])]) continue;
    for (const AddedToken& t : tokens_) {
      if (s.compare(i, t.content.size(), t.content) == 0) {
        start = i;
        token = &t;
        return true;
      }
    }
  }
  return false;
}

}  // namespace qarac::data::detail
