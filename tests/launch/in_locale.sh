#!/usr/bin/env bash
# Runs a test under a user's locale, LC_ALL=LOCALE (de_DE.UTF-8: a decimal comma), so that the
# scripts it drives meet what a user's shell gives them; exits 77 (skipped), naming the locale
# and how to add it, where this machine lacks it.
#   bash tests/launch/in_locale.sh LOCALE COMMAND [ARGS...]
set -euo pipefail
me=tests/launch/in_locale.sh
(($# >= 2)) || { echo "usage: $me LOCALE COMMAND [ARGS...]" >&2; exit 2; }
locale=$1
shift
# `locale` says on stderr that it cannot set a missing one (and prints the C locale's values).
if [ -n "$(LC_ALL=$locale locale 2>&1 >/dev/null)" ]; then
  echo "$me: skipped: the locale $locale is not installed (Debian: bash launch/install-deps.sh --tests" \
       "generates it; or localedef -i ${locale%%.*} -f UTF-8 $locale)"
  exit 77
fi
LC_ALL=$locale exec "$@"
