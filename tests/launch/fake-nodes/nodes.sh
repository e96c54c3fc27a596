#!/usr/bin/env bash
# Cluster nodes emulated on one Linux machine, for runs with ranks on several hosts: each node a
# network namespace joined to the others by a bridge, with a host name, a /tmp and a /dev/shm of
# its own, and the rest of the file system shared (as a cluster shares its file system over NFS).
# A STATE under /tmp keeps the entry of /tmp that holds it shared (/tmp/ci when STATE is
# /tmp/ci/build/x): a checkout and its build there stay the nodes' shared file system.
# Needs root and iproute2 (ip, nsenter, unshare from util-linux).
#   nodes.sh up STATE NODE...      start the nodes (STATE: a new folder, which every node sees;
#                                  its hosts file names them)
#   nodes.sh exec STATE NODE CMD... run CMD (a program and its arguments) on NODE, in this
#                                  working folder
#   nodes.sh ssh STATE HOST CMD... what ssh would do: the words of CMD joined and run by sh on
#                                  HOST, in a fresh environment, from the home folder;
#                                  STATE/ssh runs it, for mpirun's launch agent
#                                  (--mca plm_rsh_agent STATE/ssh, mpiexec.hydra -launcher-exec)
#   nodes.sh kill STATE NODE       kill -9 every process of NODE: a node that dies (up again
#                                  restarts it)
#   nodes.sh stop|cont STATE NODE  SIGSTOP/SIGCONT every process of NODE: a node that hangs
#   nodes.sh cut|join STATE NODE   take NODE's link down/up: a network partition
#   nodes.sh down STATE            end every node and remove the namespaces and links
#   nodes.sh check                 exit 77 with the reason when this machine cannot run nodes
# Nodes are numbered in the order `up` names them: node i has address 10.77.N.(10+i), N taken
# from STATE's path so that two sets of nodes can run side by side.
set -euo pipefail
me=tests/launch/fake-nodes/nodes.sh
die() { echo "$me: error: $*" >&2; exit 1; }

# Why this machine cannot run nodes, or nothing.
unable() {
  [ "$(id -u)" -eq 0 ] || { echo "not root (network namespaces need it)"; return; }
  local tool
  for tool in ip nsenter unshare setsid; do
    command -v "$tool" >/dev/null || { echo "$tool is missing"; return; }
  done
  ip netns add "qarac-probe-$$" 2>/dev/null || { echo "cannot create a network namespace (ip netns add)"; return; }
  ip netns del "qarac-probe-$$"
  unshare --uts --mount true 2>/dev/null || echo "cannot create UTS and mount namespaces (unshare)"
}

[ $# -ge 1 ] || die "usage: nodes.sh up|exec|ssh|kill|stop|cont|cut|join|down|check ..."
command=$1
shift
if [ "$command" = check ]; then
  reason=$(unable)
  [ -z "$reason" ] || { echo "$reason"; exit 77; }
  exit 0
fi
[ $# -ge 1 ] || die "$command: the state folder is missing"
state=$(realpath -m -- "$1")
shift
# Short names (interface names have 15 characters at most) that tell this set from another.
id=$(printf '%s' "$state" | cksum | cut -d' ' -f1)
net=$((id % 250))
tag=$((id % 100000))
bridge=qbr$tag
netns_of() { echo "qarac-$tag-$1"; }
veth_of() { echo "qv$tag-$(cat "$state/$1.index")"; }
holder_of() {
  local pid
  pid=$(cat "$state/$1.pid" 2>/dev/null) || die "no node $1 in $state (nodes.sh up)"
  kill -0 "$pid" 2>/dev/null || die "node $1 is down (killed? nodes.sh up $state $1 starts it again)"
  echo "$pid"
}
# Every process of a node: those in its network namespace.
pids_of() { ip netns pids "$(netns_of "$1")" 2>/dev/null || true; }

# start NODE: its holder process, whose namespaces (network, host name, mounts) the node's
# commands enter; network namespace and link made once.
start() {
  local node=$1 ns index
  ! kill -0 "$(cat "$state/$node.pid" 2>/dev/null)" 2>/dev/null || return 0  # up already
  ns=$(netns_of "$node")
  index=$(cat "$state/$node.index")
  if [ ! -e "/run/netns/$ns" ]; then
    ip netns add "$ns"
    ip link add "$(veth_of "$node")" type veth peer name eth0 netns "$ns"
    ip link set "$(veth_of "$node")" master "$bridge" up
    ip -n "$ns" addr add "10.77.$net.$((10 + index))/24" dev eth0
    ip -n "$ns" link set eth0 up
    ip -n "$ns" link set lo up
  fi
  mkdir -p "$state/$node/tmp"
  chmod 1777 "$state/$node/tmp"
  rm -f "$state/$node.pid"
  # A boot id of its own: UCX (MPICH's transport) takes processes of one boot id for one host and
  # joins them through shared memory and cross-memory attach, past the network.
  [ -s "$state/$node/boot_id" ] || cat /proc/sys/kernel/random/uuid > "$state/$node/boot_id"
  # The holder: a node-local /tmp and /dev/shm (a cluster's are), the shared hosts file. The
  # machine's /tmp, held open as descriptor 3 before the node's covers it, gives back the entry
  # that holds STATE (mount -c: the path through /proc/self/fd is not resolved by mount itself,
  # which would find the node's /tmp).
  local shared=""
  case "$state/" in /tmp/*/*) shared=${state#/tmp/} shared=${shared%%/*} ;; esac
  # shellcheck disable=SC2016  # expanded by the holder's shell
  setsid nsenter --net="/run/netns/$ns" unshare --uts --mount --propagation private \
    sh -c 'hostname "$1" && mount --bind "$2/hosts" /etc/hosts && exec 3</tmp && mount --bind "$2/$1/tmp" /tmp &&
           { [ -z "$3" ] || { mkdir -p "/tmp/$3" && mount -c --bind "/proc/self/fd/3/$3" "/tmp/$3"; }; } &&
           exec 3<&- && mount -t tmpfs -o size=1g,mode=1777 tmpfs /dev/shm &&
           mount --bind "$2/$1/boot_id" /proc/sys/kernel/random/boot_id && echo $$ > "$2/$1.pid.new" &&
           mv "$2/$1.pid.new" "$2/$1.pid" && exec sleep infinity' sh "$node" "$state" "$shared" \
    </dev/null >"$state/$node.log" 2>&1 &
  local tries=0
  until [ -s "$state/$node.pid" ]; do
    tries=$((tries + 1))
    [ "$tries" -lt 100 ] || die "node $node did not start: $(tr '\n' ' ' < "$state/$node.log")"
    sleep 0.05
  done
}

case "$command" in
  up)
    [ $# -ge 1 ] || die "up: name the nodes"
    reason=$(unable)
    [ -z "$reason" ] || die "cannot emulate nodes here: $reason"
    [ "$state" != /tmp ] || die "up: STATE is /tmp itself, which each node replaces by its own: choose a folder in it"
    mkdir -p "$state"
    if [ ! -e "$state/hosts" ]; then
      { cat /etc/hosts; echo "# nodes of $me"; } > "$state/hosts"
      ip link add "$bridge" type bridge 2>/dev/null || ip link show "$bridge" >/dev/null
      ip link set "$bridge" up
      printf '#!/usr/bin/env bash\nexec bash %q ssh %q "$@"\n' "$(realpath -- "$0")" "$state" > "$state/ssh"
      chmod +x "$state/ssh"
    fi
    for node in "$@"; do
      [[ "$node" =~ ^[a-z][a-z0-9-]*$ ]] || die "up: node names are lower-case letters, digits and -, not '$node'"
      if [ ! -e "$state/$node.index" ]; then
        index=$(find "$state" -maxdepth 1 -name '*.index' | wc -l)
        [ "$index" -lt 200 ] || die "up: 200 nodes at most"
        echo "$index" > "$state/$node.index"
        echo "10.77.$net.$((10 + index)) $node" >> "$state/hosts"
      fi
      start "$node"
    done ;;
  exec)
    [ $# -ge 2 ] || die "exec: name the node and the command"
    holder=$(holder_of "$1") || exit 1
    shift
    exec nsenter --target "$holder" --net --uts --mount --wd="$PWD" -- "$@" ;;
  ssh)
    # ssh's own options before the host (Hydra passes -x); those that take a value skip it.
    while [ $# -gt 0 ] && [[ "$1" == -* ]]; do
      case "$1" in -[bcDEeFIiJLlmOopQRSWw]) shift ;; esac
      shift
    done
    [ $# -ge 2 ] || die "ssh: name the host and the command"
    holder=$(holder_of "$1") || exit 1
    shift
    exec nsenter --target "$holder" --net --uts --mount -- \
      env -i HOME="${HOME:-/root}" PATH="$PATH" USER="$(id -un)" LOGNAME="$(id -un)" SHELL=/bin/sh \
      sh -c "cd && $*" ;;
  kill|stop|cont)
    [ $# -eq 1 ] || die "$command: name one node"
    signal=$(case "$command" in kill) echo KILL ;; stop) echo STOP ;; cont) echo CONT ;; esac)
    # Forks may race the first round: repeat until no process is left (kill) or none is new.
    for _ in 1 2 3 4 5; do
      mapfile -t pids < <(pids_of "$1")
      [ "${#pids[@]}" -gt 0 ] || break
      kill -s "$signal" "${pids[@]}" 2>/dev/null || true
      [ "$signal" = KILL ] || break
      sleep 0.1
    done
    # Its holder may linger as a zombie a moment, which `up` would take for a live node.
    [ "$signal" != KILL ] || rm -f "$state/$1.pid" ;;
  cut|join)
    [ $# -eq 1 ] || die "$command: name one node"
    ip link set "$(veth_of "$1")" "$([ "$command" = cut ] && echo down || echo up)" ;;
  down)
    [ -d "$state" ] || exit 0
    for index_file in "$state"/*.index; do
      [ -e "$index_file" ] || continue
      node=$(basename "$index_file" .index)
      mapfile -t pids < <(pids_of "$node")
      [ "${#pids[@]}" -eq 0 ] || kill -s CONT "${pids[@]}" 2>/dev/null || true
      bash "$0" kill "$state" "$node"
      ip link del "$(veth_of "$node")" 2>/dev/null || true
      ip netns del "$(netns_of "$node")" 2>/dev/null || true
    done
    ip link del "$bridge" 2>/dev/null || true ;;
  *) die "unknown command '$command' (up, exec, ssh, kill, stop, cont, cut, join, down, check)" ;;
esac
