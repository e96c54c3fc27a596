# shellcheck shell=bash disable=SC2154
# Sourced by the fault scripts, which set prep, train, sample and work and define fail.

# prep_sample OUT: qarac-prep of the sample's four training files into OUT (its log in
# $work/prep.log); the exit status is qarac-prep's.
prep_sample() {
  "$prep" --tokenizer "$sample/tokenizer" --out "$1" --text "$sample/corpus_train.txt" \
    --wikiqa "$sample/WikiQA-train.tsv" --avicenna "$sample/Avicenna_Train.csv" \
    --snli "$sample/snli_1.0_train.jsonl" > "$work/prep.log" 2>&1
}

# The runs' inputs: the sample data in $work/data and a tiny base, pre-trained for one step, in
# $work/pretrain/export/base.
prepare_inputs() {
  prep_sample "$work/data" || fail "qarac-prep: $(tail -1 "$work/prep.log")"
  "$train" --model.mode mlm --model.tokenizer "$sample/tokenizer" --model.hidden 16 --model.layers 1 \
    --model.heads 2 --model.ffn 32 --train.steps 1 --optimizer.warmup 0 --data.dir "$work/data" \
    --output "$work/pretrain" \
    > "$work/pretrain.log" 2>&1 || fail "pre-training the base: $(tail -1 "$work/pretrain.log")"
}

# mpi_flags_of MPIEXEC: into the array mpi_flags, what MPIEXEC needs to run more ranks than this
# machine has cores: QARAC_MPI_FLAGS when set (empty: none); else, for Open MPI's mpirun,
# --oversubscribe, and --allow-run-as-root as root; none for Hydra (MPICH, Intel MPI), which does
# both by itself and refuses Open MPI's flags ("unrecognized argument oversubscribe").
mpi_flags_of() {
  local default=""
  case "$("$1" --version 2>&1 || true)" in
    *"Open MPI"*|*OpenRTE*)
      default=--oversubscribe
      [ "$(id -u)" -ne 0 ] || default+=" --allow-run-as-root" ;;
  esac
  # shellcheck disable=SC2034  # read by the scripts that source this one
  read -r -a mpi_flags <<< "${QARAC_MPI_FLAGS-$default}"
}
