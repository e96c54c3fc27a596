# shellcheck shell=bash
# shellcheck disable=SC2034,SC2154  # repo, out, marker, force and logs come from the sourcing script; bin, prep and train go to it
# Shared by launch/quickstart.sh, scaling.sh and forgetting.sh (and slurm/train.sbatch, for
# cpu_dtype_options), which source it once `repo` (the repository, or PREFIX/share/qarac-mt when
# installed) is set; they define die(), and set `out`, `marker`, `force` and `logs` before calling
# what uses them. Nothing here runs by itself.

# find_programs: sets bin, prep and train to QARAC_BUILD's programs, the repository's build, an
# installation's (these scripts in PREFIX/share/qarac-mt/launch, the programs in PREFIX/bin), or
# those on PATH, the first that has qarac-train.
find_programs() {
  local installed
  installed=$(dirname "$(dirname "$repo")")/bin
  if [ -n "${QARAC_BUILD:-}" ]; then
    bin=$QARAC_BUILD/src/cli
  elif [ -x "$repo/build/src/cli/qarac-train" ]; then
    bin=$repo/build/src/cli
  elif [ "$(basename "$(dirname "$repo")")" = share ] && [ -x "$installed/qarac-train" ]; then
    bin=$installed
  elif command -v qarac-train >/dev/null; then
    bin=$(dirname "$(command -v qarac-train)")
  else
    bin=$repo/build/src/cli
  fi
  prep=$bin/qarac-prep
  train=$bin/qarac-train
}

# base_positions BASE TOKENIZER: the base's position table (config.json's max_position_embeddings),
# once TOKENIZER is found to have the base's vocabulary: data of another would run and mean
# nothing. Call it as `max_positions=$(base_positions ...) || exit 1`.
base_positions() {
  local base=$1 tokenizer=$2 positions vocab tok_vocab
  positions=$(jq -e '.max_position_embeddings' "$base/config.json") ||
    die "$base/config.json: no max_position_embeddings"
  vocab=$(jq -e '.vocab_size' "$base/config.json") || die "$base/config.json: no vocab_size"
  tok_vocab=$(if [ -f "$tokenizer/tokenizer.json" ]; then jq -e '.model.vocab | length' "$tokenizer/tokenizer.json"
              else jq -e 'length' "$tokenizer/vocab.json"; fi 2>/dev/null) ||
    die "tokenizer $tokenizer: its vocabulary cannot be read (tokenizer.json or vocab.json is not valid JSON)"
  ((tok_vocab == vocab)) ||
    die "tokenizer $tokenizer has $tok_vocab tokens, the base $vocab: give the base's with --tokenizer DIR"
  echo "$positions"
}

# has_tokenizer DIR: whether DIR holds a tokenizer (tokenizer.json, or vocab.json + merges.txt).
has_tokenizer() { [ -f "$1/tokenizer.json" ] || { [ -f "$1/vocab.json" ] && [ -f "$1/merges.txt" ]; }; }

# prepare_out WHAT KEPT...: makes $out, with logs/ and runs/ and the $marker file that says it
# holds a WHAT ("scaling run", "forgetting experiment"). A non-empty $out is replaced only with
# force=1, only when its marker says it holds a WHAT, and never while one of the inputs KEPT
# lies inside it.
prepare_out() {
  local what=$1 kept real_out
  shift
  if [ -e "$out" ] && [ ! -d "$out" ]; then
    die "--out $out exists and is not a directory"
  elif [ -d "$out" ] && [ -n "$(ls -A -- "$out")" ]; then
    ((force)) || die "$out is not empty: --force replaces a previous $what, or choose --out DIR"
    # Compared by their physical paths: a symbolic link on either side (a home directory on a
    # parallel file system) must not hide an input inside $out.
    real_out=$(realpath -m -- "$out")
    for kept in "$@"; do
      [ -z "$kept" ] || [[ "$(realpath -m -- "$kept")/" != "$real_out/"* ]] ||
        die "--force would delete $kept inside $out: copy it elsewhere first"
    done
    [ -f "$marker" ] || die "$out is not empty and holds no $what (no $(basename "$marker")); not removing it"
    rm -rf -- "$out"
  fi
  mkdir -p -- "$out/logs" "$out/runs"
  touch -- "$marker"
}

# logged NAME COMMAND...: runs COMMAND with its output in $logs/NAME.log and the command itself in
# $logs/NAME.cmd; when it fails, log_failed.
logged() {
  local name=$1 rc=0
  shift
  { printf '%q ' "$@"; printf '\n'; } >"$logs/$name.cmd"
  "$@" >"$logs/$name.log" 2>&1 || rc=$?
  ((rc == 0)) || log_failed "$name" "$rc"
}

# log_failed NAME STATUS: the last lines of $logs/NAME.log, then die naming it (75: qarac-train
# stopped on request, Ctrl-C or a signal, after its checkpoint).
log_failed() {
  echo "--- last lines of $logs/$1.log:" >&2
  tail -n 25 "$logs/$1.log" >&2
  (($2 != 75)) || die "$1 stopped on request after writing a checkpoint (exit 75); its full output: $logs/$1.log"
  die "$1 failed (exit $2); its full output: $logs/$1.log"
}

# cpu_dtype_options CONFIG ARGS...: "--train.dtype f32" when a CPU run would take CONFIG's bf16
# ([train] dtype = bf16, which only CUDA computes in: the GPU configs) and ARGS, the run's own
# qarac-train options, set no dtype; else nothing. The CPU then computes in f32, as it does by
# default; a config's f64 is kept.
cpu_dtype_options() {
  local config=$1 arg
  shift
  for arg in "$@"; do [[ "$arg" != --train.dtype* ]] || return 0; done
  awk '{ sub(/[#;].*/, ""); gsub(/[[:space:]]/, "") }
       /^\[.*\]$/ { section = substr($0, 2, length($0) - 2); next }
       section == "train" && $0 == "dtype=bf16" { found = 1 }
       END { if (found) print "--train.dtype\nf32" }' "$config" 2>/dev/null
}
