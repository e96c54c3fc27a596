# shellcheck shell=bash
# Sourced by the launch tests: failures are counted, not fatal, so that one run reports them all.
failures=0
check() {   # check DESCRIPTION COMMAND...: records a failure unless COMMAND succeeds
  local what=$1
  shift
  if ! "$@"; then echo "FAILED: $what" >&2; failures=$((failures + 1)); fi
}
has() { grep -qF -- "$2" "$1"; }      # has FILE TEXT
has_re() { grep -qE -- "$2" "$1"; }   # has_re FILE REGEX
lacks() { ! grep -qF -- "$2" "$1"; }  # lacks FILE TEXT
