#!/usr/bin/env bash
# Builds the libFuzzer targets of tests/fuzz (clang, every library under ASan and UBSan) and runs
# each for SECONDS seconds, first over the saved crash inputs (tests/fuzz/regressions/<target>/,
# each must now pass), then fuzzing from its seeds (made here from data/sample and the test
# fixtures) and the corpus it grew in earlier runs.
#   tests/fuzz/run.sh SECONDS [BUILD_DIR]     (default build-fuzz)
# Environment: FUZZ_TARGETS="fuzz_readers ..." runs a subset; FUZZ_JOBS (default 2) builds with
# that many jobs. Prints one line per target, "fuzz <target>: <N> executions in <S> s, <C>
# crashes", and exits 1 when any target crashed (its input is left in BUILD_DIR/artifacts).
set -euo pipefail
cd "$(dirname "$0")/../.."
seconds=${1:?usage: tests/fuzz/run.sh SECONDS [BUILD_DIR]}
build=${2:-build-fuzz}
read -ra targets <<<"${FUZZ_TARGETS:-fuzz_readers fuzz_tokenizer_files fuzz_tokenize fuzz_task_stream fuzz_hf_model fuzz_checkpoint fuzz_config}"

if [ ! -f "$build/CMakeCache.txt" ]; then
  CC=clang CXX=clang++ cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=Debug -DQARAC_FUZZ=ON -DQARAC_TESTS=OFF \
    -DQARAC_CUDA=OFF >/dev/null
fi
build_start=$(date +%s)
nice cmake --build "$build" -j "${FUZZ_JOBS:-2}" --target "${targets[@]}" >"$build/build.log" 2>&1 ||
  { tail -40 "$build/build.log"; exit 1; }
echo "fuzz: built ${#targets[@]} targets in $(( $(date +%s) - build_start )) s"

byte() { printf '%b' "\\x$(printf %02x "$1")"; }  # the byte of value $1
artifacts() {  # how many crash inputs target $1 has left
  local n=0 f
  for f in "$build/artifacts/$1"-*; do [ -e "$f" ] && n=$((n + 1)); done
  echo "$n"
}

# ---- Seeds ----------------------------------------------------------------------------------
seeds="$build/seeds"
rm -rf "$seeds"
mkdir -p "$seeds"/{fuzz_readers,fuzz_tokenizer_files,fuzz_tokenize,fuzz_task_stream,fuzz_hf_model,fuzz_checkpoint,fuzz_config}
# The readers' first byte is the format (fuzz_readers.cpp): text, wikiqa, avicenna, snli jsonl,
# tsv, csv, then the task JSON lines of ed, qa, rs, cs. Sample files are cut to their first 4 KiB: a seed is a start, not a data set.
seed_reader() {  # format-byte file
  { byte "$1"; head -c 4096 "$2"; } >"$seeds/fuzz_readers/$(basename "$2").$1"
}
for f in tests/data/readers/text_* data/sample/corpus_*.txt; do seed_reader 0 "$f"; done
for f in tests/data/readers/wikiqa_* tests/data/readers/empty.tsv data/sample/WikiQA-*.tsv; do seed_reader 1 "$f"; done
for f in tests/data/readers/avicenna_* data/sample/Avicenna_*.csv; do seed_reader 2 "$f"; done
for f in tests/data/readers/snli_quirks.jsonl data/sample/snli_1.0_train.jsonl; do seed_reader 3 "$f"; done
for f in tests/data/readers/snli_quirks.txt data/sample/snli_1.0_dev.txt; do seed_reader 4 "$f"; done
for f in tests/data/readers/snli_quirks.csv data/sample/snli_1.0_test.csv; do seed_reader 5 "$f"; done
seed_reader 7 tests/data/readers/qa_quirks.jsonl
gzip -c tests/data/readers/text_quirks.txt >"$seeds/text_quirks.txt.gz"  # LineFile's inflate
seed_reader 0 "$seeds/text_quirks.txt.gz" && rm "$seeds/text_quirks.txt.gz"
seed_reader 9 tests/data/readers/cs_quirks.jsonl
# Tokenizers: byte 0 and a tokenizer.json, or byte 1, vocab.json, NUL, merges.txt.
for d in data/sample/tokenizer tests/data/tokenizer; do
  name=$(echo "$d" | tr / _)
  { printf '\x00'; cat "$d/tokenizer.json"; } >"$seeds/fuzz_tokenizer_files/$name.json"
  { printf '\x01'; cat "$d/vocab.json"; printf '\x00'; cat "$d/merges.txt"; } >"$seeds/fuzz_tokenizer_files/$name.pair"
done
# Byte 2, tokenizer_config.json, NUL, special_tokens_map.json: as transformers 4.57 saves them.
special() { printf '"%s": {"content": "%s", "lstrip": %s, "normalized": false, "rstrip": false, "single_word": false, "special": true}' "$@"; }
{ printf '\x02{"add_prefix_space": false, "added_tokens_decoder": {%s, %s, %s, %s, %s}, ' "$(special 0 '<s>' false)" \
    "$(special 1 '<pad>' false)" "$(special 2 '</s>' false)" "$(special 3 '<unk>' false)" "$(special 4 '<mask>' true)"
  printf '"bos_token": "<s>", "cls_token": "<s>", "eos_token": "</s>", "mask_token": "<mask>", "pad_token": "<pad>", '
  printf '"sep_token": "</s>", "unk_token": "<unk>", "tokenizer_class": "RobertaTokenizer"}\x00'
  printf '{"bos_token": "<s>", "mask_token": {"content": "<mask>", "lstrip": true}, "additional_special_tokens": []}'
} >"$seeds/fuzz_tokenizer_files/saved_config"
# tokenize lines: mode byte (fuzz_tokenize.cpp), then a line of tests/data/tokenizer/texts.jsonl.
head -n 20 tests/data/tokenizer/texts.jsonl | awk '{ print > ("'"$seeds/fuzz_tokenize/line"'" NR) }'
for f in "$seeds"/fuzz_tokenize/line*; do
  { printf '\x00'; cat "$f"; } >"$f.encode"
  { printf '\x02'; cat "$f"; } >"$f.roundtrip"
  rm "$f"
done
printf '\x01[0, 31414, 232, 2]' >"$seeds/fuzz_tokenize/decode"
# A model folder: 2-byte length of config.json, config.json, model.safetensors.
cfg=tests/golden/data/tiny_dev/config.json
n=$(stat -c %s "$cfg")
{ byte $((n % 256)); byte $((n / 256)); cat "$cfg" \
  tests/golden/data/tiny_dev/model.safetensors; } >"$seeds/fuzz_hf_model/tiny_dev"
# qarac-train's configuration: byte 0 (fuzz_config.cpp: bit 0 parse or resume, the others the
# plan's sizes), then a shipped INI file, alone and with the command line launch/quickstart.sh and
# launch/forgetting.sh give it as "--" lines; in resume mode the file is a checkpoint's config.ini.
for f in launch/configs/*.ini; do
  { printf '\x0a'; cat "$f"; } >"$seeds/fuzz_config/$(basename "$f" .ini)"
  { printf '\x0b'; cat "$f"; } >"$seeds/fuzz_config/$(basename "$f" .ini).resume"
done
{ printf '\x0a--output run/pretrain\n--model.max_positions 130\n--model.tokenizer data/sample/tokenizer\n'
  printf -- '--data.dir run/data/train\n--eval.dir run/data/heldout\n'
  cat launch/configs/quickstart-pretrain.ini; } >"$seeds/fuzz_config/quickstart-pretrain.cli"
finetune='--output run/finetune\n--model.base run/pretrain/export/base\n--data.dir run/data/train\n'
finetune+='--eval.dir run/data/heldout\n--eval.tokenizer data/sample/tokenizer\n'
{ printf '\x0a'; printf %b "$finetune"; cat launch/configs/quickstart.ini; } >"$seeds/fuzz_config/quickstart.cli"
{ printf '\x4a'; printf %b "$finetune"; printf -- '--task.mlm.weight 1\n--task.mlm.batch 48\n--parallel.show_plan 6\n'
  printf -- '--parallel.tasks ed:2,qa:1,rs:1,cs:1,mlm:1\n'
  cat launch/configs/quickstart.ini; } >"$seeds/fuzz_config/rehearsal.cli"
{ printf '\x0a'; printf %b "$finetune"; printf -- '--task.qa.objective contrastive\n--optimizer.decay constant\n'
  cat launch/configs/quickstart.ini; } >"$seeds/fuzz_config/contrastive.cli"
# The structure-aware targets read any bytes as a recipe: a few fixed ones start them.
for t in fuzz_task_stream fuzz_checkpoint; do
  for i in 1 2 3 4; do head -c $((64 * i)) /dev/zero | tr '\0' "\\$(printf %03o $((i * 37)))" >"$seeds/$t/seed$i"; done
done

# ---- Runs -----------------------------------------------------------------------------------
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
failed=0
mkdir -p "$build/artifacts" "$build/logs"
for t in "${targets[@]}"; do
  exe="$build/tests/fuzz/$t"
  regressions="tests/fuzz/regressions/$t"
  if [ -d "$regressions" ] && [ -n "$(ls -A "$regressions")" ]; then
    if ! "$exe" "$regressions"/* >"$build/logs/$t.regressions.log" 2>&1; then
      echo "fuzz $t: a saved crash input crashes again (see $build/logs/$t.regressions.log)"
      failed=1
      continue
    fi
  fi
  corpus="$build/corpus/$t"
  mkdir -p "$corpus"
  before=$(artifacts "$t")
  start=$(date +%s)
  status=0
  "$exe" -max_total_time="$seconds" -timeout=30 -rss_limit_mb=4096 -print_final_stats=1 \
    -artifact_prefix="$build/artifacts/$t-" "$corpus" "$seeds/$t" >"$build/logs/$t.log" 2>&1 || status=$?
  runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$build/logs/$t.log" | tail -1 | grep -o '[0-9]*$' || true)
  crashes=$(( $(artifacts "$t") - before ))
  echo "fuzz $t: ${runs:-0} executions in $(( $(date +%s) - start )) s, $crashes crashes"
  if [ "$status" -ne 0 ] || [ "$crashes" -ne 0 ]; then
    failed=1
    grep -m 5 -E 'ERROR|fuzz:|runtime error|deadly signal' "$build/logs/$t.log" || true
  fi
done
exit $failed
