// Added tokens (internal to the tokenizer): <s>, <mask> and the like, split out of a text as
// whole tokens before the BPE model sees it, the way Hugging Face's AddedVocabulary does.
#pragma once

#include <algorithm>
#include <array>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "data/pretokenizer.h"

namespace qarac::data::detail {

struct AddedToken {
  std::string content;
  int32_t id = -1;
  bool single_word = false;
  bool lstrip = false;
  bool rstrip = false;
  bool normalized = true;
  bool special = false;
};

// Start of the whitespace that ends s[0, end).
size_t trailing_space_start(std::string_view s, size_t end);
// End of the whitespace that starts at s[begin].
size_t leading_space_end(std::string_view s, size_t begin);

// One of AddedVocabulary's two passes (its tokens with normalized false, then those with
// normalized true; with no normalizer both match the raw text): leftmost-longest matches, as
// its Aho-Corasick automaton finds them, then find_matches' single_word, lstrip and rstrip.
// Added tokens are few; testing them only where a byte starts one is plenty fast.
class AddedMatcher {
 public:
  explicit AddedMatcher(std::vector<AddedToken> tokens);

  // Calls on_text(gap) for the non-empty text between tokens and on_token(id) for each token,
  // in order.
  template <class OnText, class OnToken>
  void split(std::string_view s, OnText&& on_text, OnToken&& on_token) const {
    size_t done = 0;  // end of the last token taken (find_matches' start_offset)
    size_t from = 0;  // where the automaton goes on searching: the raw end of its last match
    const AddedToken* token = nullptr;
    size_t start = 0;
    while (find(s, from, start, token)) {
      size_t stop = start + token->content.size();
      from = stop;
      if (token->single_word) {
        const bool space_before = start == 0 || !is_word_char(char_before(s, start).cp);
        const bool space_after = stop == s.size() || !is_word_char(decode_char(s, stop).cp);
        if (!space_before || !space_after) continue;
      }
      // lstrip takes the whitespace before the token, but none that a token before it took.
      if (token->lstrip) start = std::max(trailing_space_start(s, start), done);
      if (token->rstrip) stop = leading_space_end(s, stop);
      if (done < start) on_text(s.substr(done, start - done));
      on_token(token->id);
      done = std::max(done, stop);
    }
    if (done < s.size()) on_text(s.substr(done));
  }

 private:
  // The leftmost position at or after `from` where a token starts, and the longest token there.
  bool find(std::string_view s, size_t from, size_t& start, const AddedToken*& token) const;

  std::vector<AddedToken> tokens_;
  std::array<bool, 256> starts_{};
};

}  // namespace qarac::data::detail
