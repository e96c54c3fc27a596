#!/usr/bin/env bash
# Installs the Debian packages QARAC-MT needs, quietly and only those missing (a second call
# does nothing). Used by tests/run.sh (the build) and launch/quickstart.sh (the build and the job).
#   launch/install-deps.sh          the build: compiler, CMake, Open MPI (mpirun too), HDF5,
#                                   Boost.Program_options, OpenBLAS, nlohmann-json, libcsv, zlib,
#                                   GoogleTest, Python 3 (the source-layout test)
#   launch/install-deps.sh --job    the build and the tools of launch/: jq (metrics tables) and
#                                   gnuplot-nox (launch/plot-metrics.sh)
#   launch/install-deps.sh --tests  also what the whole test suite uses: clang and its sanitizer
#                                   and libFuzzer runtime (libclang-rt-dev, the release's default
#                                   clang's: tests/fuzz), jq and gnuplot-nox (the
#                                   report scripts' test), shellcheck (the scripts' lint), and
#                                   the locales de_DE.UTF-8 and tr_TR.UTF-8 (locales; script
#                                   tests run again under a decimal comma and a dotless ı:
#                                   tests/launch/in_locale.sh)
#   launch/install-deps.sh --mpich  also MPICH (mpich, libmpich-dev) beside Open MPI, for
#                                   QARAC_MPI=mpich bash tests/run.sh; Debian's alternatives keep
#                                   Open MPI the default mpicc/mpirun
# (The options combine.) Only unversioned package names, which every Debian release since 12
# (bookworm) has and points at its own default version: libclang-rt-14-dev, clang 14's runtime,
# exists in bookworm alone.
# Runs apt-get as root, or through sudo otherwise. The CUDA toolkit is not installed here: the
# build compiles the CUDA backend only when it finds nvcc (README.md, QARAC_CUDA).
set -euo pipefail
me=launch/install-deps.sh

test_locales=()
packages=(build-essential cmake pkg-config libopenmpi-dev openmpi-bin libhdf5-dev
          libboost-program-options-dev libopenblas-dev nlohmann-json3-dev libgtest-dev
          libcsv-dev zlib1g-dev python3)
for arg in "$@"; do
  case "$arg" in
    --job) packages+=(jq gnuplot-nox) ;;
    --tests) packages+=(clang libclang-rt-dev jq gnuplot-nox shellcheck locales); test_locales=(de_DE tr_TR) ;;
    --mpich) packages+=(mpich libmpich-dev) ;;
    -h|--help) sed -n '2,/^[^#]/s/^# \{0,1\}//p' "$0"; exit 0 ;;
    *) echo "$me: unknown argument '$arg' (usage: $me [--job] [--tests] [--mpich])" >&2; exit 2 ;;
  esac
done

if ! command -v dpkg-query >/dev/null || ! command -v apt-get >/dev/null; then
  echo "$me: not a Debian system (no dpkg-query/apt-get); install the equivalents of:" >&2
  echo "  ${packages[*]}" >&2
  exit 1
fi

missing=()
# Each once: --job and --tests both name jq and gnuplot-nox.
mapfile -t packages < <(printf '%s\n' "${packages[@]}" | awk '!seen[$0]++')
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
# A locale that `locale` cannot set is missing (it says so on stderr); about 2 s each to generate.
missing_locales=()
for l in "${test_locales[@]}"; do
  [ -z "$(LC_ALL=$l.UTF-8 locale 2>&1 >/dev/null)" ] || missing_locales+=("$l")
done
((${#missing[@]} || ${#missing_locales[@]})) || exit 0

sudo_cmd=()
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null ||
    { echo "$me: not root and no sudo; as root, install: ${missing[*]:-nothing}; generate: ${missing_locales[*]:-nothing}" >&2; exit 1; }
  sudo_cmd=(sudo)
fi
if ((${#missing[@]})); then
  echo "$me: installing ${missing[*]}"
  log=$(mktemp)
  trap 'rm -f -- "$log"' EXIT
  if ! { "${sudo_cmd[@]}" apt-get update -qq &&
         DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends \
           "${missing[@]}"; } >"$log" 2>&1; then
    tail -n 20 "$log" >&2
    echo "$me: apt-get failed installing: ${missing[*]}" >&2
    exit 1
  fi
fi
for l in "${missing_locales[@]}"; do
  echo "$me: generating the locale $l.UTF-8"
  "${sudo_cmd[@]}" localedef -i "$l" -f UTF-8 "$l.UTF-8" ||
    { echo "$me: localedef failed generating $l.UTF-8" >&2; exit 1; }
done
