#!/usr/bin/env bash
# launch/install-deps.sh under stand-ins for dpkg-query, apt-get, sudo, id, locale and localedef
# (a PATH of those and the few real tools it uses, so that no package is installed): as root, it
# installs every package of --job --tests --mpich once, by unversioned names only (a versioned one,
# libclang-rt-14-dev, exists in one Debian release: trixie has no such package); as a user, through
# sudo; without sudo, it says what to install as root and installs nothing; with everything
# present, it does nothing. Then, where apt knows this machine's release, every package it names
# has an installation candidate there (tests/launch/fresh-debian.sh checks a fresh machine).
#   bash tests/launch/test_install_deps.sh
set -euo pipefail
# shellcheck source=tests/launch/checks.sh
source "$(dirname "$0")/checks.sh"
script=$(cd "$(dirname "$0")/../.." && pwd)/launch/install-deps.sh

work=$(mktemp -d)
trap 'rm -rf -- "$work"' EXIT
bin=$work/bin
mkdir "$bin"
for tool in awk bash cat grep mktemp rm sed tail; do ln -s "$(command -v "$tool")" "$bin/$tool"; done
# Each stand-in appends its call, with "sudo" before it when sudo ran it, to $FAKE_LOG.
cat >"$bin/dpkg-query" <<'EOF'
#!/usr/bin/env bash
# dpkg-query -W -f='${Status}' PACKAGE: installed when named in FAKE_INSTALLED.
[[ " $FAKE_INSTALLED " == *" ${!#} "* ]] && printf 'install ok installed'
EOF
cat >"$bin/apt-get" <<'EOF'
#!/usr/bin/env bash
echo "${FAKE_VIA:-}apt-get $*" >>"$FAKE_LOG"
EOF
cat >"$bin/localedef" <<'EOF'
#!/usr/bin/env bash
echo "${FAKE_VIA:-}localedef $*" >>"$FAKE_LOG"
EOF
cat >"$bin/sudo" <<'EOF'
#!/usr/bin/env bash
FAKE_VIA="sudo " exec "$@"
EOF
cat >"$bin/id" <<'EOF'
#!/usr/bin/env bash
echo "$FAKE_UID"
EOF
cat >"$bin/locale" <<'EOF'
#!/usr/bin/env bash
# Present when named in FAKE_LOCALES, as `locale` says nothing on stderr then.
[[ " $FAKE_LOCALES " == *" $LC_ALL "* ]] || echo "locale: Cannot set LC_ALL to default locale" >&2
EOF
# The stand-ins alone: chmod through the links would try the real tools, not a user's to change.
chmod +x "$bin"/{dpkg-query,apt-get,localedef,sudo,id,locale}

# deps UID INSTALLED LOCALES ARGS...: install-deps.sh as user UID, with the packages INSTALLED
# and the locales LOCALES present; its output in $work/out.txt, its calls in $work/calls.txt,
# its status in rc.
deps() {
  local uid=$1 installed=$2 locales=$3
  shift 3
  : >"$work/calls.txt"
  rc=0
  env -i PATH="$bin" FAKE_LOG="$work/calls.txt" FAKE_UID="$uid" FAKE_INSTALLED="$installed" \
    FAKE_LOCALES="$locales" "$BASH" "$script" "$@" >"$work/out.txt" 2>&1 || rc=$?
}

deps 0 "" "" --job --tests --mpich
check "as root: exit 0 (got $rc: $(cat "$work/out.txt"))" test "$rc" = 0
install=$(sed -n 's/^apt-get install .* --no-install-recommends //p' "$work/calls.txt")
read -r -a packages <<<"$install"
check "as root: apt-get update, then one apt-get install" \
  test "$(sed 's/ .*//; s/apt-get/&:/' "$work/calls.txt" | head -n 2 | tr '\n' ' ')" = "apt-get: apt-get: "
for p in cmake libopenmpi-dev libhdf5-dev python3 clang libclang-rt-dev jq gnuplot-nox shellcheck mpich; do
  check "as root: installs $p" grep -qx -- "$p" <(printf '%s\n' "${packages[@]}")
done
check "as root: every package once (twice: $(printf '%s\n' "${packages[@]}" | sort | uniq -d | tr '\n' ' '))" \
  test -z "$(printf '%s\n' "${packages[@]}" | sort | uniq -d)"
check "as root: unversioned names only (versioned: $(printf '%s\n' "${packages[@]}" | grep -E -- '-[0-9][0-9.]*(-dev)?$' | tr '\n' ' '))" \
  test -z "$(printf '%s\n' "${packages[@]}" | grep -E -- '-[0-9][0-9.]*(-dev)?$')"
check "as root: generates de_DE.UTF-8 and tr_TR.UTF-8" \
  test "$(grep '^localedef' "$work/calls.txt" | tr '\n' ' ')" = "localedef -i de_DE -f UTF-8 de_DE.UTF-8 localedef -i tr_TR -f UTF-8 tr_TR.UTF-8 "

deps 1000 "cmake" "de_DE.UTF-8" --tests
check "as a user with sudo: exit 0 (got $rc: $(cat "$work/out.txt"))" test "$rc" = 0
check "as a user with sudo: every call through sudo ($(cat "$work/calls.txt"))" \
  test "$(grep -vc '^sudo ' "$work/calls.txt")" = 0
check "as a user with sudo: apt-get install of the missing clang" \
  grep -qE '^sudo apt-get install .* clang( |$)' "$work/calls.txt"
check "as a user with sudo: apt-get install without the installed cmake" \
  lacks "$work/calls.txt" " cmake"
check "as a user with sudo: only the missing locale" \
  test "$(grep 'localedef' "$work/calls.txt")" = "sudo localedef -i tr_TR -f UTF-8 tr_TR.UTF-8"

rm "$bin/sudo"
deps 1000 "" "" --job
check "as a user without sudo: exit 1 (got $rc)" test "$rc" = 1
check "as a user without sudo: nothing run ($(cat "$work/calls.txt"))" test ! -s "$work/calls.txt"
check "as a user without sudo: one line naming what to install as root ($(cat "$work/out.txt"))" \
  test "$(grep -c 'not root and no sudo; as root, install: build-essential .* gnuplot-nox' "$work/out.txt")" = "$(wc -l <"$work/out.txt")"

deps 1000 "${packages[*]}" "de_DE.UTF-8 tr_TR.UTF-8" --job --tests --mpich
check "everything present: exit 0 without a word (got $rc: $(cat "$work/out.txt"))" test "$rc:$(cat "$work/out.txt")" = "0:"
check "everything present: nothing run ($(cat "$work/calls.txt"))" test ! -s "$work/calls.txt"

# The names against this machine's release, where apt has package lists (a Debian with apt-get
# update run once).
# (Output captured before grep -q, which leaving a pipe early would fail the writer under pipefail.)
if command -v apt-cache >/dev/null && grep -q 'Candidate: [^(]' <<<"$(apt-cache policy cmake 2>/dev/null)"; then
  # One apt-cache call: each package's block, "NAME:" then "  Candidate: VERSION".
  candidates=$(apt-cache policy "${packages[@]}" 2>/dev/null |
               awk '/^[^ ]+:$/ { name = substr($0, 1, length($0) - 1) }
                    $1 == "Candidate:" && $2 != "(none)" { print name }')
  for p in "${packages[@]}"; do
    check "package $p: an installation candidate in this machine's apt sources" grep -qx -- "$p" <<<"$candidates"
  done
else
  echo "apt-cache knows no packages here: the names were not checked against a release"
fi

((failures == 0)) || { echo "$failures check(s) failed" >&2; exit 1; }
echo "install-deps.sh: all checks passed (${#packages[@]} packages)"
