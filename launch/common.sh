# shellcheck shell=bash
# shellcheck disable=SC2034,SC2154  # repo comes from the sourcing script; bin, prep and train go to it
# Shared by launch/quickstart.sh, scaling.sh and forgetting.sh, which source it once `repo` (the
# repository, or PREFIX/share/qarac-mt when installed) and die() are set. Nothing here runs by
# itself.

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
  tok_vocab=$(if [ -f "$tokenizer/tokenizer.json" ]; then jq '.model.vocab | length' "$tokenizer/tokenizer.json"
              else jq 'length' "$tokenizer/vocab.json"; fi)
  ((tok_vocab == vocab)) ||
    die "tokenizer $tokenizer has $tok_vocab tokens, the base $vocab: give the base's with --tokenizer DIR"
  echo "$positions"
}
