// Fuzz target: the raw-format readers (data/readers.h). The first byte picks the format, the
// error policy and the encoding (below 20: the format's own, 20 and up: the other one); the rest
// is the file. Seeds: the reader fixtures and the sample data, each with its format byte
// (tests/fuzz/run.sh makes them).
#include "data/readers.h"
#include "fuzz_support.h"

using namespace qarac;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  constexpr data::Format kFormats[] = {data::Format::text,       data::Format::wikiqa,   data::Format::avicenna,
                                       data::Format::snli_jsonl, data::Format::snli_tsv, data::Format::snli_csv,
                                       data::Format::ed_jsonl,   data::Format::qa_jsonl, data::Format::rs_jsonl,
                                       data::Format::cs_jsonl};
  constexpr int kCount = sizeof kFormats / sizeof kFormats[0];
  const data::Format format = kFormats[data[0] % kCount];
  const data::OnError policy = (data[0] / kCount) % 2 ? data::OnError::fail : data::OnError::skip;
  const data::Encoding own = data::default_encoding(format);
  const data::Encoding encoding =
      (data[0] / (2 * kCount)) % 2 ? (own == data::Encoding::utf8 ? data::Encoding::latin1 : data::Encoding::utf8) : own;
  const std::string file = (fuzz::scratch() / "input").string();
  fuzz::write_file(file, data + 1, size - 1);
  fuzz::expect_only_input_errors([&] {
    int64_t examples = 0;
    const data::ReadStats stats = data::read_examples(file, format, encoding, policy, [&](data::Example&& e) {
      if (e.fields.size() != data::task_fields(data::task_of(format)).size()) std::abort();
      ++examples;
    });
    // The accounting of data-format.md §1 holds for every file.
    if (stats.examples != examples || stats.lines < 0) std::abort();
  });
  return 0;
}
