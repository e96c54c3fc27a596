# shellcheck shell=bash
# shellcheck disable=SC2034,SC2154  # repo, out, marker, force and logs come from the sourcing script; bin, prep and train go to it
# Shared by launch/quickstart.sh, scaling.sh, forgetting.sh, train-local.sh, train-hosts.sh,
# metrics-table.sh and compare-runs.sh (and slurm/train.sbatch, for cpu_dtype_options), which
# source it once `repo` (the repository, or PREFIX/share/qarac-mt when
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

# print_file FILE: FILE on standard output, which is a report script's result: a write that
# fails (a full disk, a closed descriptor) is said in one line with its cause, as the programs say
# it (src/cli/standard_output.h), not by the tool that wrote (awk's "close failed on file
# /dev/stdout", exit 2). A closed pipe ends the script quietly (141), as any filter.
print_file() {
  local status=0 said
  { said=$(cat -- "$1" 2>&1 >&3 3>&-) || status=$?; } 3>&1
  ((status == 0 || status == 128 + 13)) || die "standard output: write failed${said:+: ${said##*: }}: what was printed is incomplete"
  return "$status"
}

# ---- MPI launchers (train-local.sh, train-hosts.sh) ----------------------------------------

# setup_launcher RANKS DRY_RUN: sets train (find_programs) and version (its --version), mpirun
# (MPIRUN, default mpirun) and flavour (mpi_flavour); dies when either is missing or the launcher
# cannot start RANKS ranks of the program (check_launcher; a warning on a dry run).
setup_launcher() {
  find_programs
  [ -x "$train" ] || die "no qarac-train at $train: build it (bash launch/quickstart.sh builds it into build/) or set QARAC_BUILD"
  mpirun=${MPIRUN:-mpirun}
  command -v "$mpirun" >/dev/null || die "$mpirun not found; install an MPI (bash launch/install-deps.sh) or set MPIRUN"
  flavour=$(mpi_flavour "$mpirun") || exit 1
  version=$("$train" --version 2>/dev/null || true)
  check_launcher "$mpirun" "$flavour" "$train" "$version" "$1" "$2"
}

# mpi_flavour LAUNCHER: which MPI LAUNCHER starts ranks of: openmpi, mpich (Hydra), intel, or
# srun (by its name); told apart by its --version.
mpi_flavour() {
  if [ "$(basename "$1")" = srun ]; then echo srun; return; fi
  case "$("$1" --version 2>&1 || true)" in
    *"Open MPI"*|*OpenRTE*) echo openmpi ;;
    *"Intel(R) MPI"*) echo intel ;;
    *HYDRA*) echo mpich ;;
    *) die "cannot tell which MPI $1 belongs to (its --version names neither Open MPI, MPICH/Hydra nor Intel MPI): set MPIRUN to one of those, or to srun" ;;
  esac
}

# check_launcher LAUNCHER FLAVOUR TRAIN VERSION RANKS DRY_RUN: dies (warns on a dry run) when the
# launcher cannot start ranks of TRAIN, whose --version is VERSION: Open MPI's mpirun starts Open
# MPI programs, Hydra (MPICH's or Intel MPI's, one ABI) the MPICH family; started by the other,
# every rank would run alone as rank 0 (srun serves both). So it would with a qarac-train from
# before the distributed issue (no --parallel.timeout), which does not initialise MPI.
check_launcher() {
  local launcher=$1 flavour=$2 train=$3 version=$4 ranks=$5 dry_run=$6 library mismatch=0 problem=""
  library=$(sed -n 's/^MPI  *//p' <<<"$version")
  case "$flavour:$library" in
    openmpi:?*) [[ "$library" == *"Open MPI"* ]] || mismatch=1 ;;
    mpich:?*|intel:?*) [[ "$library" != *"Open MPI"* ]] || mismatch=1 ;;
  esac
  ((mismatch == 0)) ||
    problem="$launcher is the launcher of another MPI ($flavour) than $train's, $library: set MPIRUN to its own (qarac-train --version names it)"
  # The help captured first: grep -q leaving a pipe early would fail the writer under pipefail.
  if [ -z "$problem" ] && ((ranks > 1)) && ! grep -q -- '--parallel.timeout' <<<"$("$train" --help 2>/dev/null || true)"; then
    problem="$train predates distributed training (no --parallel.timeout in its --help): rebuild it; only -n 1 works with it"
  fi
  [ -n "$problem" ] || return 0
  ((dry_run)) || die "$problem"
  echo "$me: warning: $problem" >&2
}

# cores_here: this machine's cores: nproc (the CPUs this process may run on), divided by the
# hardware threads per core when lscpu reports more than one (BLAS gains nothing from SMT); at
# least 1.
cores_here() {
  local cpus smt=1
  # nproc honours OMP_NUM_THREADS, which would count the threads of a previous setting.
  cpus=$(env -u OMP_NUM_THREADS -u OMP_THREAD_LIMIT nproc)
  if command -v lscpu >/dev/null; then
    smt=$(LC_ALL=C lscpu | awk -F: '/^Thread\(s\) per core/ { gsub(/ /, "", $2); print $2 }')
    [[ "$smt" =~ ^[1-9][0-9]*$ ]] || smt=1
  fi
  echo $((cpus / smt > 0 ? cpus / smt : 1))
}

# rank_environment THREADS VERSION: exports what every rank gets, and names it in env_vars:
# OMP_NUM_THREADS and OPENBLAS_NUM_THREADS = THREADS, and OPENBLAS_CORETYPE. OpenBLAS takes a CPU
# model it does not know (a cloud VM's) for an old one and runs SSE3 kernels, several times
# slower: qarac-train --version (VERSION) names the core to set, which the ranks' CPUs share with
# this one (the same machine, or a cluster's alike nodes). A core the user set is kept.
rank_environment() {
  local blas_core
  export OMP_NUM_THREADS=$1 OPENBLAS_NUM_THREADS=$1
  blas_core=$(sed -n "s/^OpenBLAS .*this CPU's own: OPENBLAS_CORETYPE=\([A-Za-z0-9_]*\).*/\1/p" <<<"$2")
  env_vars=(OMP_NUM_THREADS OPENBLAS_NUM_THREADS)
  if [ -z "${OPENBLAS_CORETYPE+x}" ] && [ -n "$blas_core" ]; then
    export OPENBLAS_CORETYPE=$blas_core
    echo "$me: OPENBLAS_CORETYPE=$blas_core: OpenBLAS takes this CPU for an older one (qarac-train --version)"
  fi
  [ -z "${OPENBLAS_CORETYPE+x}" ] || env_vars+=(OPENBLAS_CORETYPE)
}

# pass_environment: appends to cmd the flags that pass env_vars to every rank of the launcher of
# $flavour (Open MPI: -x, and --allow-run-as-root as root; Hydra: -genv; srun passes it on).
pass_environment() {
  local var
  case "$flavour" in
    openmpi)
      [ "$(id -u)" -ne 0 ] || cmd+=(--allow-run-as-root)
      for var in "${env_vars[@]}"; do cmd+=(-x "$var"); done ;;
    mpich|intel) for var in "${env_vars[@]}"; do cmd+=(-genv "$var" "${!var}"); done ;;
  esac
}

# print_launch: the command cmd, with the variables env_vars, as a line a user can run.
print_launch() {
  local var
  printf '%s:' "$me"
  for var in "${env_vars[@]}"; do printf ' %q' "$var=${!var}"; done
  printf ' %q' "${cmd[@]}"
  printf '\n'
}

# run_dir_of ARGS...: the run directory that the qarac-train options ARGS name: the last
# --output, else the top-level `output` of their last --config file; "" when neither does.
run_dir_of() {
  local output="" config="" next="" arg
  for arg in "$@"; do
    case "$next" in
      output) output=$arg; next=""; continue ;;
      config) config=$arg; next=""; continue ;;
    esac
    case "$arg" in
      --output) next=output ;;
      --output=*) output=${arg#--output=} ;;
      --config) next=config ;;
      --config=*) config=${arg#--config=} ;;
    esac
  done
  if [ -z "$output" ] && [ -f "$config" ]; then
    output=$(awk '/^[[:space:]]*\[/ { exit }
                  { sub(/[#;].*/, "") }
                  $0 ~ /^[[:space:]]*output[[:space:]]*=/ { sub(/^[^=]*=[[:space:]]*/, ""); sub(/[[:space:]]+$/, ""); print; exit }' "$config")
  fi
  echo "$output"
}

# run_launcher RUN_DIR GRACE COMMAND...: runs the MPI launcher COMMAND and returns its status.
# Ctrl-C, a closed terminal (HUP) or a TERM to this script asks the ranks to stop after the step
# in flight with a checkpoint, as it asks qarac-train itself: USR1 to the launcher, which Open
# MPI's mpirun, MPICH's Hydra and srun forward to the ranks. Only this script may get those
# signals: Open MPI's mpirun answers them by killing the ranks a second later, before their
# checkpoint. So the launcher runs in a process group of its own (set -m), which the terminal's
# Ctrl-C and hang-up miss, and reads no terminal (stdin: a background group reading it would
# stop). A second signal is the ranks' second too, which ends them at once (2 s or more after the
# first). The launcher ignores SIGTTOU: a terminal set to `stty tostop` would otherwise stop it, a
# background group, at its first write, and with it the ranks' output and the USR1. A SIGKILL to
# this script, which it cannot pass on, leaves the launcher running: send that to the launcher.
# A rank whose wait on the others failed (a peer died, hangs or is cut off) records it in
# RUN_DIR/failed.json and ends the job, but Open MPI's mpirun then waits for ever on the daemon of
# a node that hangs or is cut off: GRACE seconds after such a record of this start (0: never),
# the launcher is ended (TERM, then KILL 10 s later) and the status is 3, the ranks' own for it.
run_launcher() {
  local run_dir=$1 grace=$2 record at launched_at
  shift 2
  record=${run_dir:+$run_dir/failed.json}
  launcher_pid=""
  local signal
  for signal in INT TERM HUP; do
    # shellcheck disable=SC2064  # the launcher's name, now
    trap "forward_stop SIG$signal $(printf %q "$1")" "$signal"
  done
  trap '' TTOU  # ignored in this script and, inherited, in the launcher
  launched_at=$(date +%s)
  set -m
  "$@" </dev/null &
  launcher_pid=$!
  set +m
  # Polled, since the launcher may not end after the ranks failed; a trap ends a wait early. Once
  # more after the loop for the status (bash keeps it), which a launcher that ended during a trap
  # would otherwise lose.
  while kill -0 "$launcher_pid" 2>/dev/null; do
    sleep 1 &
    wait $! || true
    if [ -z "$record" ] || ((grace == 0)); then continue; fi
    # A record of an earlier start is older than this one.
    at=$(stat -c %Y -- "$record" 2>/dev/null) || continue
    if ((at >= launched_at)) && (($(date +%s) - at >= grace)) && kill -0 "$launcher_pid" 2>/dev/null; then
      echo "$me: error: the ranks recorded a failure $grace s ago ($(cat -- "$record" 2>/dev/null)), and the launcher still waits (on a node that hangs or is cut off?): ending it" >&2
      kill -s TERM "$launcher_pid" 2>/dev/null
      for _ in 1 2 3 4 5 6 7 8 9 10; do kill -0 "$launcher_pid" 2>/dev/null || break; sleep 1; done
      kill -s KILL "$launcher_pid" 2>/dev/null
      wait "$launcher_pid" 2>/dev/null || true
      return 3
    fi
  done
  local rc=0
  wait "$launcher_pid" || rc=$?
  return "$rc"
}

# launch_watched RUN_DIR: runs the launch command cmd under run_launcher, the record's grace
# QARAC_FAILED_GRACE (default 120), and exits with its status.
launch_watched() {
  local grace=${QARAC_FAILED_GRACE:-120} rc=0
  [[ "$grace" =~ ^[0-9]+$ ]] || die "QARAC_FAILED_GRACE=$grace: a number of seconds (0: wait for the launcher for ever)"
  run_launcher "$1" "$grace" "${cmd[@]}" || rc=$?
  exit "$rc"
}

# forward_stop SIGNAL LAUNCHER: the traps of run_launcher.
# shellcheck disable=SC2317  # called by the traps
forward_stop() {
  # The launcher also when the signal came between its start and launcher_pid=$!.
  local pid=${launcher_pid:-${!:-}}
  if [ -z "$pid" ]; then
    echo "$me: $1 received before the launch: nothing started" >&2
    exit 1
  fi
  echo "$me: $1 received: asking the ranks to stop after this step and write a checkpoint (USR1 to $2)" >&2 || true
  kill -s USR1 "$pid" 2>/dev/null || true
}
