// Throughput of the byte-level BPE tokenizer (src/data/tokenizer.h) on a large generated text:
// tokens/s and MB/s with a cold cache (a fresh tokenizer, every word merged for the first time)
// and a warm one (the same text again), on one thread and on several sharing one tokenizer.
// A benchmark to run by hand, not a test:
//   bench_tokenizer [tokenizer dir] [megabytes to generate (default 32) | text file] [threads]
// The dir defaults to the test tokenizer (tests/data/tokenizer, 1,245 tokens); a real RoBERTa
// directory (50,265 tokens, 50,000 merges) gives fewer tokens per word and longer merges. A text
// file (one document per line) replaces the generated text, e.g. to time Hugging Face on the
// same input. Threads default to all cores.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <fstream>
#include <random>
#include <stdexcept>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "data/tokenizer.h"

namespace {

using qarac::data::Tokenizer;
using Clock = std::chrono::steady_clock;

// Words of several kinds so that every path of the tokenizer runs: English (frequent, merged
// well), made-up words (rare: cold-cache merges), numbers, accents, CJK, emoji, contractions.
std::vector<std::string> make_lexicon(std::mt19937_64& rng) {
  std::vector<std::string> lexicon = {
      "the", "of", "and", "to", "a", "in", "is", "that", "it", "was", "for", "on", "are", "as",
      "with", "his", "they", "at", "be", "this", "from", "have", "or", "by", "one", "had", "not",
      "but", "what", "all", "were", "when", "we", "there", "can", "an", "your", "which", "their",
      "said", "if", "do", "will", "each", "about", "how", "up", "out", "them", "then", "she",
      "many", "some", "so", "these", "would", "other", "into", "has", "more", "her", "two",
      "like", "him", "see", "time", "could", "no", "make", "than", "first", "been", "its", "who",
      "now", "people", "my", "made", "over", "did", "down", "only", "way", "find", "use", "may",
      "water", "long", "little", "very", "after", "words", "called", "just", "where", "most",
      "know", "it's", "don't", "I'm", "they're", "we've", "you'll", "he'd", "café", "naïve",
      "Zürich", "São", "東京", "日本語", "你好", "世界", "한국어", "Привет", "мир", "مرحبا",
      "שלום", "😀", "👍🏽", "👨‍👩‍👧", "🇫🇷", "1,234", "3.14", "2024", "99%", "$5.00",
      "transformer", "tokenizer", "gradient", "attention", "premise", "conclusion"};
  // Made-up words of 3 to 12 letters: the long tail that only a cold cache sees.
  const std::string letters = "etaoinshrdlcumwfgypbvkjxqz";
  std::geometric_distribution<int> skew(0.25);
  for (int i = 0; i < 60000; ++i) {
    std::string word(3 + rng() % 10, 'a');
    for (char& c : word) c = letters[std::min<int>(skew(rng), letters.size() - 1)];
    if (rng() % 8 == 0) word[0] = static_cast<char>(word[0] - 'a' + 'A');
    lexicon.push_back(word);
  }
  return lexicon;
}

// Lines of 5 to 40 words drawn by Zipf's law (rank r with weight 1/r), as in natural text, with
// punctuation and the odd double space.
std::vector<std::string> make_text(size_t bytes, std::mt19937_64& rng) {
  const std::vector<std::string> lexicon = make_lexicon(rng);
  std::vector<double> weights(lexicon.size());
  for (size_t r = 0; r < weights.size(); ++r) weights[r] = 1.0 / static_cast<double>(r + 1);
  std::discrete_distribution<size_t> zipf(weights.begin(), weights.end());
  const char* punctuation[] = {",", ".", ";", ":", "!", "?", " -", ")"};
  std::vector<std::string> lines;
  size_t total = 0;
  while (total < bytes) {
    std::string line;
    const size_t words = 5 + rng() % 36;
    for (size_t w = 0; w < words; ++w) {
      if (w > 0) line += rng() % 50 == 0 ? "  " : " ";
      line += lexicon[zipf(rng)];
      if (rng() % 9 == 0) line += punctuation[rng() % 8];
    }
    total += line.size() + 1;
    lines.push_back(std::move(line));
  }
  return lines;
}

struct Result {
  double seconds;
  size_t tokens;
};

// Encodes `lines` (with <s> ... </s>) on `threads` threads, each a contiguous share.
Result encode_all(const Tokenizer& tok, const std::vector<std::string>& lines, unsigned threads) {
  std::vector<size_t> tokens(threads, 0);
  const auto start = Clock::now();
  std::vector<std::thread> pool;
  for (unsigned t = 0; t < threads; ++t) {
    pool.emplace_back([&, t] {
      std::vector<int32_t> ids;
      const size_t begin = lines.size() * t / threads, end = lines.size() * (t + 1) / threads;
      for (size_t i = begin; i < end; ++i) {
        ids.clear();
        tok.encode_append(lines[i], ids);
        tokens[t] += ids.size();
      }
    });
  }
  for (std::thread& thread : pool) thread.join();
  const double seconds = std::chrono::duration<double>(Clock::now() - start).count();
  size_t total = 0;
  for (const size_t n : tokens) total += n;
  return {seconds, total};
}

void report(const char* what, unsigned threads, const Result& r, size_t bytes) {
  std::printf("%-6s %2u thread%s  %8.3f s  %10.0f tokens/s  %7.1f MB/s\n", what, threads,
              threads == 1 ? " " : "s", r.seconds, static_cast<double>(r.tokens) / r.seconds,
              static_cast<double>(bytes) / 1e6 / r.seconds);
}

}  // namespace

int main(int argc, char** argv) {
  try {
    const std::string dir = argc > 1 ? argv[1] : QARAC_TOKENIZER_TEST_DIR;
    const std::string size_or_file = argc > 2 ? argv[2] : "32";
    const unsigned threads =
        argc > 3 ? static_cast<unsigned>(std::atoi(argv[3])) : std::thread::hardware_concurrency();

    std::vector<std::string> lines;
    char* number_end = nullptr;
    const double megabytes = std::strtod(size_or_file.c_str(), &number_end);
    if (*number_end == '\0') {
      std::mt19937_64 rng(2024);
      lines = make_text(static_cast<size_t>(megabytes * 1e6), rng);
    } else {
      std::ifstream in(size_or_file);
      if (!in) throw std::runtime_error("cannot open " + size_or_file);
      for (std::string line; std::getline(in, line);) lines.push_back(std::move(line));
    }
    size_t bytes = 0;
    for (const std::string& line : lines) bytes += line.size();

    const auto load_start = Clock::now();
    const Tokenizer tok = Tokenizer::from_dir(dir);
    const double load = std::chrono::duration<double>(Clock::now() - load_start).count();
    std::printf("tokenizer %s: %zu tokens, %s, loaded in %.3f s\n", dir.c_str(), tok.vocab_size(),
                tok.hash().c_str(), load);
    std::printf("text: %zu lines, %.1f MB\n", lines.size(), static_cast<double>(bytes) / 1e6);

    const Result cold = encode_all(tok, lines, 1);
    report("cold", 1, cold, bytes);
    std::printf("       %.2f tokens per line, %zu words cached\n",
                static_cast<double>(cold.tokens) / static_cast<double>(lines.size()),
                tok.cache_size());
    report("warm", 1, encode_all(tok, lines, 1), bytes);
    if (threads > 1) {
      const Tokenizer fresh = Tokenizer::from_dir(dir);
      report("cold", threads, encode_all(fresh, lines, threads), bytes);
      report("warm", threads, encode_all(fresh, lines, threads), bytes);
    }
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_tokenizer: %s\n", e.what());
    return 1;
  }
}
