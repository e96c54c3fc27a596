// Byte-level BPE tokenizer (see tokenizer.h): Unicode classes, the GPT-2 pre-tokeniser, merges by
// rank, the shared word cache, added tokens, and the loaders of vocab.json + merges.txt and
// tokenizer.json. Each step follows the Rust code of Hugging Face `tokenizers` (AddedVocabulary,
// pre_tokenizers::ByteLevel, models::bpe) closely enough to give its ids for every input; the
// parity data in tests/data/tokenizer is made with that library.
#include "data/tokenizer.h"

#include <unicode/uchar.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iterator>
#include <memory>
#include <nlohmann/json.hpp>
#include <unordered_map>
#include <utility>

#include "core/error.h"

namespace qarac::data {
namespace {

using nlohmann::json;

// ---- Unicode ----------------------------------------------------------------------------------

// A code point that no valid UTF-8 encodes: what a malformed byte decodes to.
constexpr uint32_t kInvalid = 0x110000;

// The classes the pattern tells apart. kSpace is Oniguruma's Unicode \s, which Hugging Face's
// regex uses: U+0009-000D, U+0085 and the categories Zs, Zl, Zp. That is also the White_Space
// property, Rust's \s, which lstrip/rstrip of added tokens use. U+001C-001F (spaces to Python's
// str.isspace) are not in it: checked against tokenizers 0.23.
enum CharClass : uint8_t { kLetter, kNumber, kSpace, kOther };

struct Char {
  uint32_t cp;   // the code point, kInvalid for a malformed byte
  uint32_t len;  // its bytes
};

// The character at s[i] (i < s.size()). Anything but well-formed UTF-8 (a stray continuation
// byte, an overlong form, a surrogate, a value past U+10FFFF, a truncated sequence) is one byte
// of kInvalid, so every input splits into characters and round-trips through the byte tokens.
Char decode_char(std::string_view s, size_t i) {
  const auto byte = [&](size_t k) { return static_cast<uint8_t>(s[k]); };
  const uint8_t b0 = byte(i);
  if (b0 < 0x80) return {b0, 1};
  const size_t left = s.size() - i;
  const auto cont = [&](size_t k) { return (byte(i + k) & 0xC0) == 0x80; };
  if (b0 >= 0xC2 && b0 <= 0xDF) {
    if (left >= 2 && cont(1)) return {(b0 & 0x1Fu) << 6 | (byte(i + 1) & 0x3Fu), 2};
  } else if (b0 >= 0xE0 && b0 <= 0xEF) {
    if (left >= 3 && cont(1) && cont(2)) {
      const uint32_t cp = (b0 & 0x0Fu) << 12 | (byte(i + 1) & 0x3Fu) << 6 | (byte(i + 2) & 0x3Fu);
      if (cp >= 0x800 && (cp < 0xD800 || cp > 0xDFFF)) return {cp, 3};
    }
  } else if (b0 >= 0xF0 && b0 <= 0xF4) {
    if (left >= 4 && cont(1) && cont(2) && cont(3)) {
      const uint32_t cp = (b0 & 0x07u) << 18 | (byte(i + 1) & 0x3Fu) << 12 |
                          (byte(i + 2) & 0x3Fu) << 6 | (byte(i + 3) & 0x3Fu);
      if (cp >= 0x10000 && cp <= 0x10FFFF) return {cp, 4};
    }
  }
  return {kInvalid, 1};
}

// ASCII classes by table: most text is ASCII and this spares the ICU lookup.
constexpr std::array<CharClass, 128> ascii_classes() {
  std::array<CharClass, 128> t{};
  for (int c = 0; c < 128; ++c) {
    if ((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z')) t[c] = kLetter;
    else if (c >= '0' && c <= '9') t[c] = kNumber;
    else if ((c >= 0x09 && c <= 0x0D) || c == ' ') t[c] = kSpace;
    else t[c] = kOther;
  }
  return t;
}
constexpr std::array<CharClass, 128> kAsciiClass = ascii_classes();

CharClass classify(uint32_t cp) {
  if (cp < 0x80) return kAsciiClass[cp];
  if (cp == kInvalid) return kOther;
  if (cp == 0x85) return kSpace;
  const uint32_t mask = U_GET_GC_MASK(static_cast<UChar32>(cp));
  if (mask & U_GC_L_MASK) return kLetter;  // Lu Ll Lt Lm Lo
  if (mask & U_GC_N_MASK) return kNumber;  // Nd Nl No
  if (mask & U_GC_Z_MASK) return kSpace;   // Zs Zl Zp
  return kOther;
}

// Rust regex's Unicode \w (UTS #18 annex C), which single_word added tokens test their
// neighbours against: Alphabetic, marks, decimal digits, connector punctuation, Join_Control.
bool is_word_char(uint32_t cp) {
  if (cp == kInvalid) return false;
  if (cp < 0x80) return kAsciiClass[cp] == kLetter || kAsciiClass[cp] == kNumber || cp == '_';
  const auto c = static_cast<UChar32>(cp);
  return u_hasBinaryProperty(c, UCHAR_ALPHABETIC) ||
         (U_GET_GC_MASK(c) & (U_GC_M_MASK | U_GC_ND_MASK | U_GC_PC_MASK)) ||
         u_hasBinaryProperty(c, UCHAR_JOIN_CONTROL);
}

// The character just before s[end] (end > 0), found by stepping back over continuation bytes.
Char char_before(std::string_view s, size_t end) {
  size_t start = end - 1;
  while (start > 0 && end - start < 4 && (static_cast<uint8_t>(s[start]) & 0xC0) == 0x80) --start;
  const Char c = decode_char(s, start);
  return c.len == end - start ? c : Char{kInvalid, 1};
}

// ---- Byte-level alphabet ----------------------------------------------------------------------

// GPT-2's bytes_to_unicode: printable Latin-1 bytes stand for themselves, the other 68 bytes for
// U+0100.. in byte order, so that every token is printable text ("Ġ" is the space byte).
struct ByteAlphabet {
  static constexpr uint32_t kCodes = 256 + 68;
  std::array<std::string, 256> utf8;       // byte -> its stand-in character, in UTF-8
  std::array<int16_t, kCodes> byte;        // stand-in code point -> byte, -1 for none
};

const ByteAlphabet& byte_alphabet() {
  static const ByteAlphabet alphabet = [] {
    ByteAlphabet a;
    a.byte.fill(-1);
    uint32_t extra = 0;
    for (uint32_t b = 0; b < 256; ++b) {
      const bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || b >= 0xAE;
      const uint32_t cp = printable ? b : 256 + extra++;
      a.byte[cp] = static_cast<int16_t>(b);
      std::string& s = a.utf8[b];
      if (cp < 0x80) {
        s = static_cast<char>(cp);
      } else {
        s += static_cast<char>(0xC0 | (cp >> 6));
        s += static_cast<char>(0x80 | (cp & 0x3F));
      }
    }
    return a;
  }();
  return alphabet;
}

// What Hugging Face's ByteLevel decoder makes of one token: the bytes its characters stand for,
// or the token's own UTF-8 when a character is not in the alphabet (every character of "<s>" is;
// a space or a CJK character in an added token is not).
std::string token_bytes(const std::string& token) {
  const ByteAlphabet& a = byte_alphabet();
  std::string out;
  for (size_t i = 0; i < token.size();) {
    const Char c = decode_char(token, i);
    if (c.cp >= ByteAlphabet::kCodes || a.byte[c.cp] < 0) return token;
    out += static_cast<char>(a.byte[c.cp]);
    i += c.len;
  }
  return out;
}

std::string to_byte_level(std::string_view bytes) {
  const ByteAlphabet& a = byte_alphabet();
  std::string out;
  for (const char b : bytes) out += a.utf8[static_cast<uint8_t>(b)];
  return out;
}

// ---- Pre-tokeniser ----------------------------------------------------------------------------

// End of the run of characters of class `cls` that starts at byte i.
size_t run_end(std::string_view s, size_t i, CharClass cls) {
  while (i < s.size()) {
    const Char c = decode_char(s, i);
    if (classify(c.cp) != cls) break;
    i += c.len;
  }
  return i;
}

// End of the contraction 's 't 're 've 'm 'll 'd at s[i] == '\'', or 0 when there is none
// (case-sensitive, as the pattern is).
size_t contraction_end(std::string_view s, size_t i) {
  if (i + 1 >= s.size()) return 0;
  const char a = s[i + 1];
  if (a == 's' || a == 't' || a == 'm' || a == 'd') return i + 2;
  if (i + 2 >= s.size()) return 0;
  const char b = s[i + 2];
  if ((a == 'r' && b == 'e') || (a == 'v' && b == 'e') || (a == 'l' && b == 'l')) return i + 3;
  return 0;
}

// End of the piece that starts with the whitespace character c at s[i].
size_t space_piece_end(std::string_view s, size_t i, Char c) {
  // " ?X+": one space followed by a letter, digit or other character joins their run.
  if (c.cp == ' ' && i + 1 < s.size()) {
    const Char next = decode_char(s, i + 1);
    const CharClass next_cls = classify(next.cp);
    if (next_cls != kSpace) return run_end(s, i + 1 + next.len, next_cls);
  }
  // "\s+(?!\S)|\s+": the run of whitespace, less its last character when something follows
  // (that character then starts the next piece: " word", or alone as "\s+" takes it).
  size_t last = i;
  size_t end = i + c.len;
  while (end < s.size()) {
    const Char w = decode_char(s, end);
    if (classify(w.cp) != kSpace) break;
    last = end;
    end += w.len;
  }
  return end < s.size() && last > i ? last : end;
}

// Calls emit(piece) for each match of
//   's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
// in order. The pattern is fixed, so it is matched by hand: the first alternative that matches
// at a position wins, as in a backtracking regex, and every character is in exactly one of the
// classes L, N, \s, other, so the alternatives reduce to a look at one or two characters.
template <class Emit>
void for_each_piece(std::string_view s, Emit&& emit) {
  size_t i = 0;
  while (i < s.size()) {
    const Char c = decode_char(s, i);
    const CharClass cls = classify(c.cp);
    size_t end = c.cp == '\'' ? contraction_end(s, i) : 0;
    if (end == 0) end = cls == kSpace ? space_piece_end(s, i, c) : run_end(s, i + c.len, cls);
    emit(s.substr(i, end - i));
    i = end;
  }
}

// ---- Merges -----------------------------------------------------------------------------------

// (left id, right id) -> (rank, merged id) by open addressing: the merge loop looks up every
// adjacent pair of every word the cache has not seen, the hot path on a cold cache.
class MergeTable {
 public:
  struct Merge {
    int32_t rank;
    int32_t id;
  };

  // `merges` in rank order; a pair listed twice keeps its last rank, as in Hugging Face.
  void build(const std::vector<std::array<int32_t, 3>>& merges) {
    size_t capacity = 16;
    while (capacity < 2 * merges.size()) capacity *= 2;
    shift_ = 64;
    for (size_t c = capacity; c > 1; c /= 2) --shift_;
    keys_.assign(capacity, kEmpty);
    values_.assign(capacity, Merge{0, 0});
    for (size_t rank = 0; rank < merges.size(); ++rank) {
      const uint64_t k = key(merges[rank][0], merges[rank][1]);
      size_t slot = home(k);
      while (keys_[slot] != kEmpty && keys_[slot] != k) slot = (slot + 1) & (capacity - 1);
      keys_[slot] = k;
      values_[slot] = Merge{static_cast<int32_t>(rank), merges[rank][2]};
    }
  }

  const Merge* find(int32_t left, int32_t right) const {
    const uint64_t k = key(left, right);
    for (size_t slot = home(k);; slot = (slot + 1) & (keys_.size() - 1)) {
      if (keys_[slot] == k) return &values_[slot];
      if (keys_[slot] == kEmpty) return nullptr;
    }
  }

 private:
  static constexpr uint64_t kEmpty = ~uint64_t{0};  // ids are below 2^24: never a key
  static uint64_t key(int32_t left, int32_t right) {
    return uint64_t{static_cast<uint32_t>(left)} << 32 | static_cast<uint32_t>(right);
  }
  // Fibonacci hashing: the top bits of key × 2^64/φ spread consecutive ids over the table.
  size_t home(uint64_t k) const { return static_cast<size_t>((k * 0x9E3779B97F4A7C15ull) >> shift_); }

  std::vector<uint64_t> keys_;
  std::vector<Merge> values_;
  int shift_ = 60;
};

// ---- Word cache -------------------------------------------------------------------------------

// Merged words by their bytes, shared by all copies of a tokenizer and all threads: an
// insert-only open-addressing table whose slots are published with compare-and-swap, so a
// lookup takes no lock and costs one probe and one entry read in the common case (a mutex per
// lookup cost more than the lookup itself). Like Hugging Face's cache it stops taking words when
// full instead of evicting: the words that come first in a corpus are mostly its frequent ones.
class WordCache {
 public:
  static constexpr size_t kCapacity = size_t{1} << 17;  // words
  static constexpr size_t kMaxWordBytes = 256;          // longer words are rare: not cached

  WordCache() : slots_(new std::atomic<Entry*>[kSlots]) {
    for (size_t i = 0; i < kSlots; ++i) slots_[i].store(nullptr, std::memory_order_relaxed);
  }
  ~WordCache() {
    for (size_t i = 0; i < kSlots; ++i) ::operator delete(slots_[i].load(std::memory_order_relaxed));
  }
  WordCache(const WordCache&) = delete;
  WordCache& operator=(const WordCache&) = delete;

  // Appends the ids of `word` to `out` when cached.
  bool append(std::string_view word, size_t hash, std::vector<int32_t>& out) const {
    for (size_t i = home(hash);; i = (i + 1) & (kSlots - 1)) {
      const Entry* e = slots_[i].load(std::memory_order_acquire);
      if (e == nullptr) return false;
      if (e->matches(word, hash)) {
        out.insert(out.end(), e->ids(), e->ids() + e->count);
        return true;
      }
    }
  }

  void insert(std::string_view word, size_t hash, const int32_t* ids, size_t count) {
    // Checked before the insert, so threads racing past it overfill by a few words; the table
    // has twice kCapacity slots and never fills up.
    if (size_.load(std::memory_order_relaxed) >= kCapacity) return;
    Entry* fresh = Entry::make(word, hash, ids, count);
    for (size_t i = home(hash);; i = (i + 1) & (kSlots - 1)) {
      Entry* occupant = nullptr;
      if (slots_[i].compare_exchange_strong(occupant, fresh, std::memory_order_acq_rel)) {
        size_.fetch_add(1, std::memory_order_relaxed);
        return;
      }
      if (occupant->matches(word, hash)) {  // another thread cached it first
        ::operator delete(fresh);
        return;
      }
    }
  }

  size_t size() const { return size_.load(std::memory_order_relaxed); }

 private:
  static constexpr size_t kSlots = 2 * kCapacity;  // load factor at most 1/2: short probes

  // One allocation: this header, the ids, then the word's bytes.
  struct Entry {
    size_t hash;
    uint32_t bytes, count;

    static Entry* make(std::string_view word, size_t hash, const int32_t* ids, size_t count) {
      auto* e = static_cast<Entry*>(
          ::operator new(sizeof(Entry) + count * sizeof(int32_t) + word.size()));
      e->hash = hash;
      e->bytes = static_cast<uint32_t>(word.size());
      e->count = static_cast<uint32_t>(count);
      std::copy(ids, ids + count, e->ids());
      std::copy(word.begin(), word.end(), e->word());
      return e;
    }
    int32_t* ids() { return reinterpret_cast<int32_t*>(this + 1); }
    const int32_t* ids() const { return reinterpret_cast<const int32_t*>(this + 1); }
    char* word() { return reinterpret_cast<char*>(ids() + count); }
    const char* word() const { return reinterpret_cast<const char*>(ids() + count); }
    bool matches(std::string_view w, size_t h) const {
      return hash == h && bytes == w.size() && std::memcmp(word(), w.data(), w.size()) == 0;
    }
  };

  // Fibonacci hashing, as in MergeTable.
  static size_t home(size_t hash) {
    return static_cast<size_t>((uint64_t{hash} * 0x9E3779B97F4A7C15ull) >> (64 - kSlotBits));
  }
  static constexpr int kSlotBits = 18;
  static_assert(size_t{1} << kSlotBits == kSlots, "kSlotBits must match kSlots");

  std::unique_ptr<std::atomic<Entry*>[]> slots_;
  std::atomic<size_t> size_{0};
};

// ---- Added tokens -----------------------------------------------------------------------------

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
size_t trailing_space_start(std::string_view s, size_t end) {
  while (end > 0) {
    const Char c = char_before(s, end);
    if (classify(c.cp) != kSpace) break;
    end -= c.len;
  }
  return end;
}

// End of the whitespace that starts at s[begin].
size_t leading_space_end(std::string_view s, size_t begin) {
  while (begin < s.size()) {
    const Char c = decode_char(s, begin);
    if (classify(c.cp) != kSpace) break;
    begin += c.len;
  }
  return begin;
}

// One of AddedVocabulary's two passes (its tokens with normalized false, then those with
// normalized true; with no normalizer both match the raw text): leftmost-longest matches, as
// its Aho-Corasick automaton finds them, then find_matches' single_word, lstrip and rstrip.
// Added tokens are few; testing them only where a byte starts one is plenty fast.
class AddedMatcher {
 public:
  explicit AddedMatcher(std::vector<AddedToken> tokens) : tokens_(std::move(tokens)) {
    // Longest first, so that the first token that matches at a position is the longest.
    std::stable_sort(tokens_.begin(), tokens_.end(), [](const AddedToken& a, const AddedToken& b) {
      return a.content.size() > b.content.size();
    });
    starts_.fill(false);
    for (const AddedToken& t : tokens_) starts_[static_cast<uint8_t>(t.content[0])] = true;
  }

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
  bool find(std::string_view s, size_t from, size_t& start, const AddedToken*& token) const {
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

  std::vector<AddedToken> tokens_;
  std::array<bool, 256> starts_{};
};

// ---- Messages ---------------------------------------------------------------------------------

// `text` in double quotes with control characters, quotes and backslashes escaped, so that an
// error message quoting a token stays on one line.
std::string quote(std::string_view text) {
  static const char* hex = "0123456789abcdef";
  std::string out = "\"";
  for (const char ch : text) {
    const auto b = static_cast<uint8_t>(ch);
    if (b < 0x20 || b == 0x7F || ch == '"' || ch == '\\') {
      out += "\\x";
      out += hex[b >> 4];
      out += hex[b & 15];
    } else {
      out += ch;
    }
  }
  return out + "\"";
}

template <class... Args>
[[noreturn]] void fail(const std::string& where, const Args&... what) {
  throw InputError(::qarac::detail::concat(where, ": ", what...));
}

// ---- Hash -------------------------------------------------------------------------------------

// FNV-1a, 64 bits: a short, dependency-free fingerprint that tells tokenizers apart; it guards
// against mixing shards by accident, not against forgery.
class Fnv1a {
 public:
  void bytes(const void* data, size_t n) {
    const auto* p = static_cast<const uint8_t*>(data);
    for (size_t i = 0; i < n; ++i) h_ = (h_ ^ p[i]) * 0x100000001B3ull;
  }
  // Little-endian whatever the host, so the hash is the same everywhere.
  void u64(uint64_t v) {
    for (int i = 0; i < 8; ++i) {
      const auto b = static_cast<uint8_t>(v >> (8 * i));
      bytes(&b, 1);
    }
  }
  void i64(int64_t v) { u64(static_cast<uint64_t>(v)); }
  void str(std::string_view s) {
    u64(s.size());
    bytes(s.data(), s.size());
  }
  std::string hex() const {
    static const char* digits = "0123456789abcdef";
    std::string out = "fnv1a64:";
    for (int i = 15; i >= 0; --i) out += digits[(h_ >> (4 * i)) & 15];
    return out;
  }

 private:
  uint64_t h_ = 0xCBF29CE484222325ull;
};

}  // namespace

// ---- Tables -----------------------------------------------------------------------------------

namespace detail {

struct TokenizerTables {
  // Ids are at most this: a bound that keeps a corrupt file from allocating gigabytes.
  static constexpr int64_t kMaxId = int64_t{1} << 24;

  // As read from the files.
  std::unordered_map<std::string, int32_t> vocab;      // the model's vocabulary
  std::vector<std::array<int32_t, 3>> merge_list;      // (left, right, merged) by rank
  std::vector<AddedToken> added;
  int32_t model_unk = -1;  // the model's unknown token; -1: bytes not in the vocabulary vanish
  bool fuse_unk = false;
  bool ignore_merges = false;
  bool add_prefix_space = false;
  bool use_regex = true;
  std::vector<int32_t> prefix, suffix;  // what the post-processor puts around a text

  // Derived by finish().
  std::vector<std::string> tokens;  // id -> vocabulary form
  std::vector<std::string> bytes;   // id -> what decode writes
  std::vector<uint8_t> present;     // id is in use
  std::vector<uint8_t> special;
  std::unordered_map<std::string, int32_t> added_ids;
  MergeTable merges;
  std::array<int32_t, 256> byte_ids{};  // id of each byte's one-character token, -1 for none
  std::vector<AddedMatcher> passes;     // tokens with normalized false, then true
  int32_t bos = -1, eos = -1, pad = -1, unk = -1, mask = -1;
  std::string hash;

  mutable WordCache cache;

  void finish(const std::string& where);
  int32_t find_token(std::string_view token) const;
  void encode(std::string_view text, bool add_special, std::vector<int32_t>& out) const;
  void check_id(int32_t id) const {
    QARAC_CHECK(id >= 0 && static_cast<size_t>(id) < present.size() && present[id],
                "token id ", id, " is not in the vocabulary (size ", present.size(), ")");
  }

 private:
  void split_added(size_t pass, std::string_view text, std::vector<int32_t>& out) const;
  void encode_segment(std::string_view segment, std::vector<int32_t>& out) const;
  void encode_piece(std::string_view piece, std::vector<int32_t>& out) const;
  void merge_word(std::string_view word, std::vector<int32_t>& out) const;
};

int32_t TokenizerTables::find_token(std::string_view token) const {
  const std::string key(token);
  if (const auto it = added_ids.find(key); it != added_ids.end()) return it->second;
  if (const auto it = vocab.find(key); it != vocab.end()) return it->second;
  return -1;
}

void TokenizerTables::encode(std::string_view text, bool add_special,
                             std::vector<int32_t>& out) const {
  if (add_special) out.insert(out.end(), prefix.begin(), prefix.end());
  split_added(0, text, out);
  if (add_special) out.insert(out.end(), suffix.begin(), suffix.end());
}

// Pass `pass` of the added tokens over `text`; what no pass claims is encoded by the model.
void TokenizerTables::split_added(size_t pass, std::string_view text,
                                  std::vector<int32_t>& out) const {
  if (pass == passes.size()) {
    encode_segment(text, out);
    return;
  }
  passes[pass].split(
      text, [&](std::string_view gap) { split_added(pass + 1, gap, out); },
      [&](int32_t id) { out.push_back(id); });
}

void TokenizerTables::encode_segment(std::string_view segment, std::vector<int32_t>& out) const {
  // ByteLevel's add_prefix_space works on each stretch between added tokens.
  std::string prefixed;
  if (add_prefix_space && segment.front() != ' ') {
    prefixed.reserve(segment.size() + 1);
    prefixed += ' ';
    prefixed += segment;
    segment = prefixed;
  }
  if (!use_regex) {
    encode_piece(segment, out);
    return;
  }
  for_each_piece(segment, [&](std::string_view piece) { encode_piece(piece, out); });
}

void TokenizerTables::encode_piece(std::string_view piece, std::vector<int32_t>& out) const {
  // One byte has nothing to merge: spaces and punctuation skip the cache.
  if (piece.size() == 1 && byte_ids[static_cast<uint8_t>(piece[0])] >= 0) {
    out.push_back(byte_ids[static_cast<uint8_t>(piece[0])]);
    return;
  }
  if (ignore_merges) {
    if (const auto it = vocab.find(to_byte_level(piece)); it != vocab.end()) {
      out.push_back(it->second);
      return;
    }
  }
  if (piece.size() > WordCache::kMaxWordBytes) {
    merge_word(piece, out);
    return;
  }
  const size_t word_hash = std::hash<std::string_view>{}(piece);
  if (cache.append(piece, word_hash, out)) return;
  const size_t first = out.size();
  merge_word(piece, out);
  cache.insert(piece, word_hash, out.data() + first, out.size() - first);
}

// BPE on one word, as Hugging Face's Word::merge_all does it: every byte starts as a symbol in a
// linked list; a min-heap holds the mergeable neighbour pairs by (rank, position); the best pair
// is merged, entries made stale by earlier merges are skipped, and the pairs the merged symbol
// forms with its neighbours are pushed. O(n log n) where rescanning the word would be O(n²).
void TokenizerTables::merge_word(std::string_view word, std::vector<int32_t>& out) const {
  struct Symbol {
    int32_t id;  // -1 once merged into its left neighbour
    int32_t prev, next;
  };
  struct Candidate {
    int32_t rank, pos, id;
  };
  thread_local std::vector<Symbol> symbols;
  thread_local std::vector<Candidate> heap;
  symbols.clear();
  heap.clear();

  const auto add = [&](int32_t id) {
    const auto n = static_cast<int32_t>(symbols.size());
    if (n > 0) symbols.back().next = n;
    symbols.push_back(Symbol{id, n - 1, -1});
  };
  // Bytes without a token become the unknown token, consecutive ones fused into one when
  // fuse_unk says so; without an unknown token they are dropped (Hugging Face's merge_word).
  bool unk_pending = false;
  for (const char ch : word) {
    const int32_t id = byte_ids[static_cast<uint8_t>(ch)];
    if (id >= 0) {
      if (unk_pending) add(model_unk);
      unk_pending = false;
      add(id);
    } else if (model_unk >= 0) {
      if (unk_pending && !fuse_unk) add(model_unk);
      unk_pending = true;
    }
  }
  if (unk_pending) add(model_unk);
  if (symbols.empty()) return;

  // std heaps are max-heaps: "a below b" when a has the larger rank, then the larger position.
  const auto below = [](const Candidate& a, const Candidate& b) {
    return a.rank != b.rank ? a.rank > b.rank : a.pos > b.pos;
  };
  const auto push = [&](int32_t pos) {
    const Symbol& left = symbols[pos];
    if (const MergeTable::Merge* m = merges.find(left.id, symbols[left.next].id)) {
      heap.push_back(Candidate{m->rank, pos, m->id});
      std::push_heap(heap.begin(), heap.end(), below);
    }
  };
  for (int32_t pos = 0; pos + 1 < static_cast<int32_t>(symbols.size()); ++pos) push(pos);
  while (!heap.empty()) {
    std::pop_heap(heap.begin(), heap.end(), below);
    const Candidate top = heap.back();
    heap.pop_back();
    Symbol& left = symbols[top.pos];
    if (left.id < 0 || left.next < 0) continue;
    Symbol& right = symbols[left.next];
    // Stale when either symbol changed since the entry was pushed.
    const MergeTable::Merge* m = merges.find(left.id, right.id);
    if (m == nullptr || m->id != top.id) continue;
    left.id = top.id;
    right.id = -1;
    left.next = right.next;
    if (left.next >= 0) symbols[left.next].prev = top.pos;
    if (left.prev >= 0) push(left.prev);
    if (left.next >= 0) push(top.pos);
  }
  // Symbol 0 only ever absorbs its right neighbours, so the list starts there.
  for (int32_t pos = 0; pos >= 0; pos = symbols[pos].next) out.push_back(symbols[pos].id);
}

// Everything derived from what the loaders read: the id tables, the byte tokens, the added-token
// passes, the special ids and the hash. `where` names the source in messages.
void TokenizerTables::finish(const std::string& where) {
  int64_t size = 0;
  for (const auto& [token, id] : vocab) size = std::max<int64_t>(size, int64_t{id} + 1);
  for (const AddedToken& t : added) size = std::max<int64_t>(size, int64_t{t.id} + 1);
  tokens.assign(static_cast<size_t>(size), std::string());
  present.assign(static_cast<size_t>(size), 0);
  special.assign(static_cast<size_t>(size), 0);
  for (const auto& [token, id] : vocab) {
    if (present[id])
      fail(where, "tokens ", quote(tokens[id]), " and ", quote(token), " have the same id ", id);
    tokens[id] = token;
    present[id] = 1;
  }
  // An added token's content is what its id decodes to, even where the vocabulary has the id.
  for (const AddedToken& t : added) {
    if (!added_ids.emplace(t.content, t.id).second)
      fail(where, "added token ", quote(t.content), " is listed twice");
    tokens[t.id] = t.content;
    present[t.id] = 1;
    special[t.id] = t.special;
  }
  bytes.resize(tokens.size());
  for (size_t id = 0; id < tokens.size(); ++id) bytes[id] = token_bytes(tokens[id]);

  const ByteAlphabet& alphabet = byte_alphabet();
  for (size_t b = 0; b < 256; ++b) {
    const auto it = vocab.find(alphabet.utf8[b]);
    byte_ids[b] = it == vocab.end() ? -1 : it->second;
  }
  merges.build(merge_list);

  std::vector<AddedToken> raw, normalized;
  for (const AddedToken& t : added) (t.normalized ? normalized : raw).push_back(t);
  passes.emplace_back(std::move(raw));
  passes.emplace_back(std::move(normalized));

  const std::pair<int32_t*, const char*> specials[] = {
      {&bos, "<s>"}, {&pad, "<pad>"}, {&eos, "</s>"}, {&unk, "<unk>"}, {&mask, "<mask>"}};
  for (const auto& [id, name] : specials) {
    *id = find_token(name);
    if (*id < 0)
      fail(where, "no token ", name, ": QARAC needs RoBERTa's <s> <pad> </s> <unk> <mask>");
  }

  // Everything that decides the ids. An added token's `normalized` flag is left out: with no
  // normalizer it only orders the two passes, and RoBERTa files differ in it.
  Fnv1a h;
  h.str("qarac byte-level BPE v1");
  h.u64(tokens.size());
  for (size_t id = 0; id < tokens.size(); ++id) {
    h.u64(present[id]);
    h.str(tokens[id]);
  }
  h.u64(merge_list.size());
  for (const auto& m : merge_list) {
    h.i64(m[0]);
    h.i64(m[1]);
  }
  std::vector<const AddedToken*> by_id;
  for (const AddedToken& t : added) by_id.push_back(&t);
  std::sort(by_id.begin(), by_id.end(),
            [](const AddedToken* a, const AddedToken* b) { return a->id < b->id; });
  h.u64(by_id.size());
  for (const AddedToken* t : by_id) {
    h.i64(t->id);
    h.str(t->content);
    h.u64(uint64_t{t->single_word} | uint64_t{t->lstrip} << 1 | uint64_t{t->rstrip} << 2 |
          uint64_t{t->special} << 3);
  }
  h.i64(model_unk);
  h.u64(uint64_t{fuse_unk} | uint64_t{ignore_merges} << 1 | uint64_t{add_prefix_space} << 2 |
        uint64_t{use_regex} << 3);
  h.u64(prefix.size());
  for (const int32_t id : prefix) h.i64(id);
  h.u64(suffix.size());
  for (const int32_t id : suffix) h.i64(id);
  hash = h.hex();
}

}  // namespace detail

// ---- Loading ----------------------------------------------------------------------------------

namespace {

using detail::TokenizerTables;

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) fail(path, "cannot open (", std::strerror(errno), ")");
  std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  if (in.bad()) fail(path, "cannot read (", std::strerror(errno), ")");
  return text;
}

json parse_json(const std::string& path) {
  const std::string text = read_file(path);
  try {
    return json::parse(text);
  } catch (const json::parse_error& e) {
    // e.what() is "[json.exception.parse_error.101] parse error at line L, column C: ...".
    const std::string what = e.what();
    const size_t bracket = what.find("] ");
    fail(path, "malformed JSON: ", bracket == std::string::npos ? what : what.substr(bracket + 2));
  }
}

// JSON access that reports what is wrong as "<file>: <key path>: <problem>".
const json* find_member(const json& object, const char* key) {
  const auto it = object.find(key);
  return it == object.end() || it->is_null() ? nullptr : &*it;
}

const json& member(const json& object, const char* key, const std::string& where) {
  const json* value = find_member(object, key);
  if (value == nullptr) fail(where, "missing \"", key, "\"");
  return *value;
}

bool bool_member(const json& object, const char* key, bool otherwise, const std::string& where) {
  const json* value = find_member(object, key);
  if (value == nullptr) return otherwise;
  if (!value->is_boolean()) fail(where, key, ": expected true or false, got ", value->dump());
  return value->get<bool>();
}

std::string string_member(const json& object, const char* key, const std::string& where) {
  const json& value = member(object, key, where);
  if (!value.is_string()) fail(where, key, ": expected a string, got ", value.dump());
  return value.get<std::string>();
}

int32_t id_value(const json& value, const std::string& where) {
  if (!value.is_number_integer() || value.get<int64_t>() < 0 ||
      value.get<int64_t>() >= TokenizerTables::kMaxId)
    fail(where, "expected an id, an integer in [0, ", TokenizerTables::kMaxId, "), got ",
         value.dump());
  return static_cast<int32_t>(value.get<int64_t>());
}

const std::string& type_of(const json& object, const std::string& where) {
  if (!object.is_object()) fail(where, "expected an object, got ", object.dump());
  const json& type = member(object, "type", where);
  if (!type.is_string()) fail(where, "type: expected a string, got ", type.dump());
  return type.get_ref<const std::string&>();
}

void read_vocab(const json& object, const std::string& where, TokenizerTables& t) {
  if (!object.is_object())
    fail(where, "expected an object of token: id, got a JSON ", object.type_name());
  t.vocab.reserve(object.size());
  for (const auto& [token, id] : object.items())
    t.vocab.emplace(token, id_value(id, where + ": token " + quote(token)));
}

// Appends merge (left, right) at the next rank; Hugging Face refuses merges of tokens, or into a
// token, that the vocabulary lacks.
void add_merge(const std::string& left, const std::string& right, const std::string& where,
               TokenizerTables& t) {
  const auto id = [&](const std::string& token) {
    const auto it = t.vocab.find(token);
    if (it == t.vocab.end()) fail(where, "merge token ", quote(token), " is not in the vocabulary");
    return it->second;
  };
  t.merge_list.push_back({id(left), id(right), id(left + right)});
}

// "a b": exactly two tokens around one space (byte-level tokens never hold a space).
void add_merge_line(std::string_view line, const std::string& where, TokenizerTables& t) {
  const size_t space = line.find(' ');
  if (space == std::string_view::npos || space == 0 || space + 1 == line.size() ||
      line.find(' ', space + 1) != std::string_view::npos)
    fail(where, "expected two tokens separated by one space, got ", quote(line));
  add_merge(std::string(line.substr(0, space)), std::string(line.substr(space + 1)), where, t);
}

void read_merges_txt(const std::string& path, TokenizerTables& t) {
  const std::string text = read_file(path);
  size_t line_number = 0;
  for (size_t pos = 0; pos < text.size();) {
    size_t end = text.find('\n', pos);
    if (end == std::string::npos) end = text.size();
    std::string_view line(text.data() + pos, end - pos);
    pos = end + 1;
    ++line_number;
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    if (line.substr(0, 8) == "#version") continue;
    add_merge_line(line, ::qarac::detail::concat(path, ":", line_number), t);
  }
}

// tokenizer.json's post_processor: what it puts around a single text.
void read_post_processor(const json& p, const std::string& where, TokenizerTables& t) {
  const std::string& type = type_of(p, where);
  std::vector<int32_t> prefix, suffix;
  if (type == "RobertaProcessing" || type == "BertProcessing") {
    const auto token_id = [&](const char* key) {
      const json& pair = member(p, key, where);
      if (!pair.is_array() || pair.size() != 2)
        fail(where, key, ": expected [token, id], got ", pair.dump());
      return id_value(pair[1], where + ": " + key);
    };
    prefix = {token_id("cls")};
    suffix = {token_id("sep")};
  } else if (type == "TemplateProcessing") {
    const json& single = member(p, "single", where);
    const json& special_tokens = member(p, "special_tokens", where);
    if (!single.is_array()) fail(where, "single: expected an array, got ", single.dump());
    bool seen_sequence = false;
    for (const json& piece : single) {
      if (find_member(piece, "Sequence") != nullptr) {
        seen_sequence = true;
        continue;
      }
      const json* special = find_member(piece, "SpecialToken");
      if (special == nullptr) fail(where, "single: unknown piece ", piece.dump());
      const std::string name = string_member(*special, "id", where + ": single");
      const json* entry = find_member(special_tokens, name.c_str());
      if (entry == nullptr) fail(where, "special_tokens: no entry for ", quote(name));
      const json& ids = member(*entry, "ids", where + ": special_tokens");
      if (!ids.is_array()) fail(where, "special_tokens: ids: expected an array, got ", ids.dump());
      for (const json& id : ids)
        (seen_sequence ? suffix : prefix).push_back(id_value(id, where + ": special_tokens"));
    }
  } else if (type == "Sequence") {
    const json& processors = member(p, "processors", where);
    if (!processors.is_array())
      fail(where, "processors: expected an array, got ", processors.dump());
    for (const json& inner : processors) read_post_processor(inner, where, t);
    return;
  } else if (type != "ByteLevel") {
    fail(where, "unsupported post_processor type ", quote(type));
  }
  // Each processor of a Sequence wraps what the ones before it made.
  t.prefix.insert(t.prefix.begin(), prefix.begin(), prefix.end());
  t.suffix.insert(t.suffix.end(), suffix.begin(), suffix.end());
}

void read_model(const json& model, const std::string& path, TokenizerTables& t) {
  const std::string where = path + ": model";
  if (!model.is_object()) fail(where, "expected an object, got ", model.dump());
  if (const json* type = find_member(model, "type"); type != nullptr && *type != "BPE")
    fail(where, "type: only BPE models are supported, got ", type->dump());
  if (const json* dropout = find_member(model, "dropout");
      dropout != nullptr && !(dropout->is_number() && dropout->get<double>() == 0.0))
    fail(where, "dropout: BPE dropout is not supported, got ", dropout->dump());
  if (bool_member(model, "byte_fallback", false, where))
    fail(where, "byte_fallback: not supported by a byte-level tokenizer");
  for (const char* key : {"continuing_subword_prefix", "end_of_word_suffix"}) {
    const json* affix = find_member(model, key);
    if (affix != nullptr && *affix != "") fail(where, key, ": not supported, got ", affix->dump());
  }
  t.fuse_unk = bool_member(model, "fuse_unk", false, where);
  t.ignore_merges = bool_member(model, "ignore_merges", false, where);

  read_vocab(member(model, "vocab", where), where + ".vocab", t);
  if (find_member(model, "unk_token") != nullptr) {
    const std::string unk = string_member(model, "unk_token", where);
    const auto it = t.vocab.find(unk);
    if (it == t.vocab.end()) fail(where, "unk_token ", quote(unk), " is not in the vocabulary");
    t.model_unk = it->second;
  }

  const json& merges = member(model, "merges", where);
  if (!merges.is_array()) fail(where, "merges: expected an array, got ", merges.dump());
  t.merge_list.reserve(merges.size());
  for (size_t i = 0; i < merges.size(); ++i) {
    const std::string at = ::qarac::detail::concat(where, ".merges[", i, "]");
    const json& m = merges[i];
    // Written as "a b" before tokenizers 0.20, as ["a", "b"] since.
    if (m.is_string()) {
      add_merge_line(m.get_ref<const std::string&>(), at, t);
    } else if (m.is_array() && m.size() == 2 && m[0].is_string() && m[1].is_string()) {
      add_merge(m[0].get<std::string>(), m[1].get<std::string>(), at, t);
    } else {
      fail(at, "expected \"a b\" or [\"a\", \"b\"], got ", m.dump());
    }
  }
}

void read_added_tokens(const json& list, const std::string& path, TokenizerTables& t) {
  if (!list.is_array()) fail(path, "added_tokens: expected an array, got ", list.dump());
  for (size_t i = 0; i < list.size(); ++i) {
    const std::string where = ::qarac::detail::concat(path, ": added_tokens[", i, "]");
    const json& entry = list[i];
    if (!entry.is_object()) fail(where, "expected an object, got ", entry.dump());
    AddedToken token;
    token.content = string_member(entry, "content", where);
    token.id = id_value(member(entry, "id", where), where + ": id");
    token.single_word = bool_member(entry, "single_word", false, where);
    token.lstrip = bool_member(entry, "lstrip", false, where);
    token.rstrip = bool_member(entry, "rstrip", false, where);
    token.normalized = bool_member(entry, "normalized", true, where);
    token.special = bool_member(entry, "special", false, where);
    // Hugging Face ignores empty added tokens.
    if (!token.content.empty()) t.added.push_back(std::move(token));
  }
}

}  // namespace

// ---- Tokenizer --------------------------------------------------------------------------------

Tokenizer::Tokenizer(std::shared_ptr<const detail::TokenizerTables> tables)
    : tables_(std::move(tables)) {}

Tokenizer Tokenizer::from_files(const std::string& vocab_json, const std::string& merges_txt,
                                const TokenizerOptions& options) {
  auto t = std::make_shared<TokenizerTables>();
  const json vocab = parse_json(vocab_json);
  read_vocab(vocab, vocab_json, *t);
  read_merges_txt(merges_txt, *t);
  // RobertaTokenizerFast's special tokens: ids from the vocabulary, <mask> taking the
  // whitespace before it ("a <mask>" is "a", "<mask>").
  for (const char* name : {"<s>", "<pad>", "</s>", "<unk>", "<mask>"}) {
    const auto it = t->vocab.find(name);
    if (it == t->vocab.end())
      fail(vocab_json, "no token ", name, ": QARAC needs RoBERTa's <s> <pad> </s> <unk> <mask>");
    AddedToken token;
    token.content = name;
    token.id = it->second;
    token.lstrip = token.content == "<mask>";
    token.normalized = false;
    token.special = true;
    t->added.push_back(std::move(token));
  }
  t->add_prefix_space = options.add_prefix_space;
  t->prefix = {t->vocab.at("<s>")};
  t->suffix = {t->vocab.at("</s>")};
  t->finish(vocab_json);
  return Tokenizer(std::move(t));
}

Tokenizer Tokenizer::from_json(const std::string& tokenizer_json) {
  const std::string& path = tokenizer_json;
  const json root = parse_json(path);
  if (!root.is_object()) fail(path, "expected a JSON object, got a JSON ", root.type_name());
  auto t = std::make_shared<TokenizerTables>();
  read_model(member(root, "model", path), path, *t);

  if (const json* normalizer = find_member(root, "normalizer"))
    fail(path, "normalizer: not supported (RoBERTa has none), got ", normalizer->dump());
  const json& pre = member(root, "pre_tokenizer", path);
  if (type_of(pre, path + ": pre_tokenizer") != "ByteLevel")
    fail(path, "pre_tokenizer: only ByteLevel is supported, got ", pre.dump());
  // Serde defaults of Hugging Face's ByteLevel: add_prefix_space true, use_regex true.
  t->add_prefix_space = bool_member(pre, "add_prefix_space", true, path + ": pre_tokenizer");
  t->use_regex = bool_member(pre, "use_regex", true, path + ": pre_tokenizer");
  const json& decoder = member(root, "decoder", path);
  if (type_of(decoder, path + ": decoder") != "ByteLevel")
    fail(path, "decoder: only ByteLevel is supported, got ", decoder.dump());
  if (const json* post = find_member(root, "post_processor"))
    read_post_processor(*post, path + ": post_processor", *t);
  if (const json* added = find_member(root, "added_tokens")) read_added_tokens(*added, path, *t);
  t->finish(path);
  return Tokenizer(std::move(t));
}

Tokenizer Tokenizer::from_dir(const std::string& dir) {
  namespace fs = std::filesystem;
  const fs::path json_path = fs::path(dir) / "tokenizer.json";
  if (fs::exists(json_path)) return from_json(json_path.string());
  const fs::path vocab = fs::path(dir) / "vocab.json";
  const fs::path merges = fs::path(dir) / "merges.txt";
  if (!fs::exists(vocab) && !fs::exists(merges))
    fail(dir, "no tokenizer.json, nor vocab.json and merges.txt");
  return from_files(vocab.string(), merges.string());
}

std::vector<int32_t> Tokenizer::encode(std::string_view text, bool add_special) const {
  std::vector<int32_t> ids;
  ids.reserve(text.size() / 3 + tables_->prefix.size() + tables_->suffix.size() + 1);
  tables_->encode(text, add_special, ids);
  return ids;
}

void Tokenizer::encode_append(std::string_view text, std::vector<int32_t>& out,
                              bool add_special) const {
  tables_->encode(text, add_special, out);
}

std::string Tokenizer::decode(const std::vector<int32_t>& ids, bool skip_special) const {
  return decode(ids.data(), ids.size(), skip_special);
}

std::string Tokenizer::decode(const int32_t* ids, size_t count, bool skip_special) const {
  const TokenizerTables& t = *tables_;
  std::string text;
  for (size_t i = 0; i < count; ++i) {
    t.check_id(ids[i]);
    if (!(skip_special && t.special[ids[i]])) text += t.bytes[ids[i]];
  }
  return text;
}

int32_t Tokenizer::token_id(std::string_view token) const { return tables_->find_token(token); }

const std::string& Tokenizer::token(int32_t id) const {
  tables_->check_id(id);
  return tables_->tokens[id];
}

bool Tokenizer::is_special(int32_t id) const {
  tables_->check_id(id);
  return tables_->special[id] != 0;
}

int32_t Tokenizer::bos_id() const { return tables_->bos; }
int32_t Tokenizer::eos_id() const { return tables_->eos; }
int32_t Tokenizer::pad_id() const { return tables_->pad; }
int32_t Tokenizer::unk_id() const { return tables_->unk; }
int32_t Tokenizer::mask_id() const { return tables_->mask; }
size_t Tokenizer::vocab_size() const { return tables_->tokens.size(); }
const std::string& Tokenizer::hash() const { return tables_->hash; }
size_t Tokenizer::cache_size() const { return tables_->cache.size(); }

std::vector<std::string_view> byte_level_pieces(std::string_view text) {
  std::vector<std::string_view> pieces;
  for_each_piece(text, [&](std::string_view piece) { pieces.push_back(piece); });
  return pieces;
}

}  // namespace qarac::data
