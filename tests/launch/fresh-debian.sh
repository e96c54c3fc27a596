#!/usr/bin/env bash
# README.md's promise, checked by hand: on a fresh Debian machine, `bash tests/run.sh` and
# `bash launch/quickstart.sh` do all the set-up. Makes a minimal Debian RELEASE (debootstrap
# --variant=minbase: no compiler, no git, no Python), puts a clone of this checkout's HEAD in it
# and runs the two commands there, as root or as a user with sudo; each command's output goes to
# a log beside the chroot, and a summary names the status of each. Not in ctest: it needs root and
# the network, and takes about an hour on 2 cores (the packages, the whole build, the suite, the
# fuzz targets).
#   sudo bash tests/launch/fresh-debian.sh RELEASE [--user] [--dir DIR] [--mirror URL] [--only WHAT]
#     RELEASE       a Debian codename: bookworm (12), trixie (13), ...
#     --user        run the commands as the user `qarac`, with sudo (installed, no password),
#                   in /home/qarac/qarac: install-deps.sh's sudo path
#     --dir DIR     the chroot (default /var/tmp/qarac-fresh-RELEASE); one already there is
#                   used again as it is (delete it for a fresh start)
#     --mirror URL  the Debian mirror (default http://deb.debian.org/debian)
#     --only WHAT   tests (tests/run.sh) or quickstart (launch/quickstart.sh); default both
# Environment: QARAC_FUZZ_SECONDS for tests/run.sh (default 5, as CI).
# The chroot stays (its folder is printed), to look into or to run again; the mounts this script
# made are undone on exit.
set -euo pipefail
me=tests/launch/fresh-debian.sh
die() { echo "$me: error: $*" >&2; exit 1; }
usage() { sed -n '2,/^[^#]/s/^# \{0,1\}//p' "$0"; }

release=""
as_user=0
dir=""
mirror=http://deb.debian.org/debian
only=""
while (($#)); do
  case "$1" in
    --dir|--mirror|--only)
      (($# >= 2)) || die "$1 needs a value (see --help)"
      case "$1" in
        --dir) dir=$2 ;;
        --mirror) mirror=$2 ;;
        --only) only=$2 ;;
      esac
      shift 2 ;;
    --user) as_user=1; shift ;;
    -h|--help) usage; exit 0 ;;
    -*) die "unknown option '$1' (see --help)" ;;
    *) [ -z "$release" ] || die "one RELEASE only, not also '$1'"; release=$1; shift ;;
  esac
done
[ -n "$release" ] || die "the release is missing: $me RELEASE (see --help)"
[[ "$release" =~ ^[a-z]+$ ]] || die "RELEASE must be a Debian codename such as trixie, not '$release'"
case "$only" in
  "") commands=(tests quickstart) ;;
  tests|quickstart) commands=("$only") ;;
  *) die "--only must be tests or quickstart, not '$only'" ;;
esac
[ "$(id -u)" -eq 0 ] || die "needs root (debootstrap, chroot, mounts): sudo bash $me $release"
command -v debootstrap >/dev/null || die "debootstrap is not installed: apt-get install debootstrap"
command -v git >/dev/null || die "git is not installed: it clones this checkout into the chroot"
repo=$(cd "$(dirname "$0")/../.." && pwd)
dir=$(realpath -m -- "${dir:-/var/tmp/qarac-fresh-$release}")

if [ ! -x "$dir/usr/bin/apt-get" ]; then
  echo "$me: debootstrap --variant=minbase $release into $dir (minutes)"
  debootstrap --variant=minbase "$release" "$dir" "$mirror" >"$dir.debootstrap.log" 2>&1 ||
    die "debootstrap failed; its output: $dir.debootstrap.log"
fi

# Open MPI needs /dev/shm; apt and the build need /proc and /dev. Undone in reverse order, only
# those mounted here.
mounted=()
# shellcheck disable=SC2317  # called by the trap
unmount() {
  local i
  for ((i = ${#mounted[@]} - 1; i >= 0; i--)); do umount -l -- "${mounted[i]}" || true; done
}
trap unmount EXIT
for m in proc sys dev dev/pts dev/shm; do
  mkdir -p -- "$dir/$m"
  mountpoint -q -- "$dir/$m" && continue
  if [ "$m" = proc ]; then mount -t proc proc "$dir/proc"; else mount --bind "/$m" "$dir/$m"; fi
  mounted+=("$dir/$m")
done
# The host's name and resolver, as a real machine has them (sudo otherwise says at every call
# that it cannot resolve the host's name).
cp /etc/resolv.conf /etc/hosts "$dir/etc/"

# in_chroot COMMAND...: COMMAND in the chroot as root, with a login's plain environment.
in_chroot() {
  chroot "$dir" /usr/bin/env -i HOME=/root TERM=dumb LANG=C.UTF-8 \
    PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin "$@"
}
if ((as_user)); then
  home=/home/qarac
  in_chroot bash -c 'export DEBIAN_FRONTEND=noninteractive; command -v sudo >/dev/null ||
    { apt-get update -qq && apt-get install -y -qq --no-install-recommends sudo; } >/dev/null' ||
    die "installing sudo in the chroot failed"
  in_chroot bash -c 'id qarac >/dev/null 2>&1 || useradd -m -s /bin/bash qarac
    echo "qarac ALL=(ALL) NOPASSWD: ALL" >/etc/sudoers.d/qarac' || die "creating the user qarac failed"
  run=(chroot --userspec="$(in_chroot id -u qarac):$(in_chroot id -g qarac)" "$dir"
       /usr/bin/env -i -C "$home/qarac" HOME="$home" USER=qarac TERM=dumb
       LANG=C.UTF-8 PATH=/usr/local/bin:/usr/bin:/bin)
else
  home=/root
  run=(chroot "$dir" /usr/bin/env -i -C "$home/qarac" HOME=/root TERM=dumb LANG=C.UTF-8
       PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin)
fi
# This checkout's HEAD (its commits, not what is uncommitted); a clone already there is reset to it.
checkout=$dir$home/qarac
# (safe.directory: after a --user run, the clone belongs to the chroot's user.)
git_checkout() { git -c safe.directory="$checkout" -C "$checkout" "$@"; }
if [ -d "$checkout/.git" ]; then
  git_checkout fetch -q "$repo" HEAD && git_checkout reset -q --hard FETCH_HEAD
else
  git clone -q "$repo" "$checkout"
fi
if ((as_user)); then chown -R --reference="$dir$home" -- "$checkout"; fi
# The README's commands as they stand: a quickstart run of an earlier call would stop the next.
rm -rf -- "$checkout/runs/quickstart"
echo "$me: $release in $dir, $(git_checkout log -1 --format='%h %s' | cut -c1-70), as $( ((as_user)) && echo "qarac (sudo)" || echo root)"

summary=()
status=0
for what in "${commands[@]}"; do
  case "$what" in
    tests) cmd=(bash tests/run.sh) ;;
    quickstart) cmd=(bash launch/quickstart.sh) ;;
  esac
  log=$dir.$what$(if ((as_user)); then echo -user; fi).log
  echo "$me: ${cmd[*]} (log: $log)"
  rc=0
  "${run[@]}" QARAC_FUZZ_SECONDS="${QARAC_FUZZ_SECONDS:-5}" CI=true "${cmd[@]}" </dev/null >"$log" 2>&1 || rc=$?
  summary+=("$(printf '%-40s exit %d  %s' "${cmd[*]}" "$rc" "$(grep -E 'tests passed|quickstart finished' "$log" | tail -n 1)")")
  ((rc == 0)) || status=1
done
echo "$me: $release, the chroot $dir:"
printf '  %s\n' "${summary[@]}"
exit "$status"
