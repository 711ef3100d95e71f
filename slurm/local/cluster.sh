#!/usr/bin/env bash
# A real SLURM cluster (Debian slurm-wlm + munge) on this machine, for tests and local trials: one node, or N nodes
# that each live in a network namespace of their own.
#
#   slurm/local/cluster.sh install            apt-get install slurm-wlm munge (and iproute2, for --nodes N >= 2)
#                                             when the binaries are missing
#   slurm/local/cluster.sh up [--nodes N]     start munged, slurmctld and N slurmd (idempotent; a node whose slurmd
#                                             died is started again); prints `export SLURM_CONF=...`
#   slurm/local/cluster.sh status             daemons, every node's state, queue
#   slurm/local/cluster.sh env                prints `export SLURM_CONF=...` only
#   slurm/local/cluster.sh kill-node NAME     crash a node: SIGKILL to every process in its namespace (slurmd, job
#                                             steps, tasks); `up` brings it back
#   slurm/local/cluster.sh down               cancel jobs, stop the daemons, remove namespaces and bridge (idempotent)
#
# --nodes 1 (the default): one node named after this host at 127.0.0.1. --nodes N >= 2: nodes node1..nodeN, each a
# slurmd in a network namespace and a UTS namespace of its own (`hostname` there prints the node name), with its own
# address on a private /24 (10.213.X.0/24; XDT_SLURM_SUBNET=10.213.X chooses it); the namespaces hang on a bridge
# the script creates, which also carries the controller's address (.1): slurmctld stays in the root namespace. Node
# names resolve on every node: each slurmd runs in a mount namespace where $XDT_SLURM_DIR/net/hosts lies over
# /etc/hosts, and what it starts inherits that. Nothing is routed out of the subnet (no forwarding, no NAT); all
# traffic stays between the controller and the namespaces. Nothing under /etc is written.
#
# Everything lives under one state directory: $XDT_SLURM_DIR (default /tmp/xdt-slurm). Clients (sbatch, squeue,
# scontrol, xdt slurm ...) find the cluster through SLURM_CONF=$XDT_SLURM_DIR/slurm.conf, munge through the socket
# named in it. Ports: $XDT_SLURM_PORT (slurmctld, default 6817) and the next one (slurmd).
# Facts this follows (measured): ../shared/SLURM.md. Needs root (SlurmUser=root), as in CI.
set -euo pipefail

D="${XDT_SLURM_DIR:-/tmp/xdt-slurm}"
PORT="${XDT_SLURM_PORT:-6817}"
HOST="$(hostname -s)"
CONF="$D/slurm.conf"
SOCKET="$D/munge/munge.socket"
TIMEOUT="${XDT_SLURM_TIMEOUT:-30}"   # seconds to wait for each daemon
# Network names of a multi-node cluster, unique per state directory (a test cluster runs beside a developer's one);
# interface names must stay within 15 characters.
TAG="$(printf %s "$D" | md5sum | cut -c1-6)"
BRIDGE="xdt${TAG}b"
ns_of() { echo "xdt${TAG}n${1#node}"; }  # ns_of node2 -> xdt<tag>n2

say() { echo "cluster.sh: $*" >&2; }
die() { say "error: $*"; exit 1; }

# A pid is alive when /proc/PID/stat exists and its state is not Z (zombie) or X (dead). `kill -0` is not enough:
# here PID 1 reaps late, and an exited daemon lingers as a zombie that `kill -0` calls alive.
alive() {
  local pid="$1" stat state
  [[ "$pid" =~ ^[0-9]+$ ]] || return 1
  stat="$(cat "/proc/$pid/stat" 2>/dev/null)" || return 1
  state="${stat##*) }"; state="${state%% *}"
  [[ "$state" != Z && "$state" != X ]]
}
# The pid in the pid file run/NAME.pid, when that process is alive and is the daemon NAME names (a stale file may
# name a recycled pid). NAME: munged, slurmctld, or slurmd-<node>.
pid_of() {
  local pid
  pid="$(cat "$D/run/$1.pid" 2>/dev/null || true)"
  [[ "$pid" =~ ^[0-9]+$ && "$(cat "/proc/$pid/comm" 2>/dev/null)" == "${1%%-*}" ]] && echo "$pid"
  return 0
}
wait_for() {  # wait_for SECONDS DESCRIPTION COMMAND...: poll COMMAND every 0.1 s
  local limit="$1" what="$2"; shift 2
  local deadline=$((SECONDS + limit))
  until "$@" >/dev/null 2>&1; do
    ((SECONDS < deadline)) || return 1
    sleep 0.1
  done
}

binaries_present() {
  command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v sbatch >/dev/null &&
    command -v munged >/dev/null && command -v mungekey >/dev/null
}
path_sbin() { case ":$PATH:" in *:/usr/sbin:*) ;; *) export PATH="$PATH:/usr/sbin:/sbin" ;; esac; }

cmd_install() {
  path_sbin
  if binaries_present && command -v ip >/dev/null; then
    say "slurm-wlm, munge and iproute2 already installed ($(slurmctld -V))"; return 0
  fi
  [[ $EUID -eq 0 ]] || die "installing needs root: apt-get install -y --no-install-recommends slurm-wlm munge iproute2"
  command -v apt-get >/dev/null || die "no apt-get: install slurm-wlm (slurmctld, slurmd, sbatch) and munge by hand"
  say "installing slurm-wlm munge iproute2 (apt-get)"
  DEBIAN_FRONTEND=noninteractive apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends slurm-wlm munge iproute2 >/dev/null
  binaries_present || die "apt-get finished but slurmctld/slurmd/sbatch/munged are still missing"
}

# The node count of this state directory: written by the first `up`, kept until `down`.
node_count() { cat "$D/nodes" 2>/dev/null || echo 1; }
node_names() {  # the slurmd node names, one per line
  local n i
  n="$(node_count)"
  if ((n == 1)); then echo "$HOST"; else for ((i = 1; i <= n; i++)); do echo "node$i"; done; fi
}
subnet() { cat "$D/subnet"; }

write_conf() {
  local n topo mem cpus_line nodes_lines node_list i
  n="$(node_count)"
  topo="$(slurmd -C | head -n1)" || die "slurmd -C failed"
  mem="$(sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p' <<<"$topo")"
  [[ -n "$mem" ]] || die "cannot read RealMemory from \`slurmd -C\`: $topo"
  # the topology fields as slurmd -C prints them, without NodeName and RealMemory (set below)
  cpus_line="$(sed -e 's/^NodeName=[^ ]* *//' -e 's/ *RealMemory=[0-9]*//' <<<"$topo")"
  local ctld_addr=127.0.0.1 node_timeout=""
  if ((n == 1)); then
    nodes_lines="NodeName=$HOST NodeAddr=127.0.0.1 $cpus_line RealMemory=$((mem * 95 / 100))"
    node_list="$HOST"
  else
    ctld_addr="$(subnet).1"
    nodes_lines=""
    for ((i = 1; i <= n; i++)); do  # every node claims the whole machine: they share its cores
      nodes_lines+="NodeName=node$i NodeAddr=$(subnet).$((10 + i)) $cpus_line RealMemory=$((mem * 95 / 100))"$'\n'
    done
    nodes_lines="${nodes_lines%$'\n'}"
    node_list="node[1-$n]"
    # a crashed node is DOWN after this many seconds without an answer, and its jobs requeued (default 300 s)
    node_timeout="SlurmdTimeout=${XDT_SLURM_NODE_TIMEOUT:-20}"
  fi
  cat >"$CONF.tmp" <<EOF
# Written by slurm/local/cluster.sh; see ../shared/SLURM.md for why each line is there.
ClusterName=localcluster
SlurmctldHost=$HOST($ctld_addr)
SlurmctldPort=$PORT
SlurmdPort=$((PORT + 1))
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket=$SOCKET,cred_expire=10
CredType=cred/munge
StateSaveLocation=$D/state
SlurmdSpoolDir=$D/spool/%n
SlurmctldPidFile=$D/run/slurmctld.pid
SlurmdPidFile=$D/run/slurmd-%n.pid
SlurmctldLogFile=$D/log/slurmctld.log
SlurmdLogFile=$D/log/slurmd-%n.log
MailProg=/bin/true
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
SchedulerParameters=batch_sched_delay=0
ReturnToService=2
KillWait=5
JobCompType=jobcomp/filetxt
JobCompLoc=$D/log/jobcomp.txt
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
$node_timeout
$nodes_lines
PartitionName=debug Nodes=$node_list Default=YES MaxTime=INFINITE State=UP
EOF
  mv "$CONF.tmp" "$CONF"
  : >"$D/plugstack.conf"   # empty: otherwise Debian's /etc/slurm/plugstack.conf is included
}

munge_ok() { munge -S "$SOCKET" -n </dev/null | unmunge -S "$SOCKET" >/dev/null; }
ctld_up() { scontrol ping 2>/dev/null | grep -q "is UP"; }
node_state() { sinfo -h -n "$1" -N -o %t 2>/dev/null || true; }
# a node that answers and takes jobs (idle, or already running a job that waited for it)
node_ready() { [[ "$(node_state "$1")" =~ ^(idle|alloc|mix|comp)$ ]]; }

start_munge() {
  if alive "$(pid_of munged)" && munge_ok; then return 0; fi
  mkdir -p "$D/munge-key" "$D/munge"
  chmod 700 "$D/munge-key"; chmod 755 "$D/munge"
  [[ -s "$D/munge-key/munge.key" ]] || mungekey --create --keyfile="$D/munge-key/munge.key"
  rm -f "$SOCKET" "$SOCKET.lock"
  munged --socket="$SOCKET" --key-file="$D/munge-key/munge.key" --pid-file="$D/run/munged.pid" \
    --seed-file="$D/munge/munge.seed" --log-file="$D/log/munged.log" --force
  wait_for "$TIMEOUT" munge munge_ok || die "munged did not answer on $SOCKET (log: $D/log/munged.log)"
}

# ---- the network of a multi-node cluster

# Whether A.B.C.* appears on stdin (`ip addr` lines hold " A.B.C.D/..", `ip route` lines start with "A.B.C.0/..").
in_use() { grep -qE "(^| )${1//./\\.}\\." ; }

# The first 10.213.X.0/24 that no interface or route of this machine uses, unless XDT_SLURM_SUBNET names one.
pick_subnet() {
  local x taken
  taken="$(ip -4 -o addr show 2>/dev/null; ip -4 route show 2>/dev/null)"
  if [[ -n "${XDT_SLURM_SUBNET:-}" ]]; then
    [[ "$XDT_SLURM_SUBNET" =~ ^10\.[0-9]+\.[0-9]+$ ]] || die "XDT_SLURM_SUBNET=$XDT_SLURM_SUBNET: expected 10.A.B"
    in_use "$XDT_SLURM_SUBNET" <<<"$taken" && die "subnet $XDT_SLURM_SUBNET.0/24 is already in use here"
    echo "$XDT_SLURM_SUBNET"; return
  fi
  for ((x = $((16#${TAG:0:2})) % 200 + 20, tries = 0; tries < 200; x = (x - 19) % 200 + 20, tries++)); do
    in_use "10.213.$x" <<<"$taken" || { echo "10.213.$x"; return; }
  done
  die "no free 10.213.X.0/24 subnet; set XDT_SLURM_SUBNET=10.A.B"
}

netns_ok() {  # can this machine create network namespaces (root, CAP_NET_ADMIN, iproute2)?
  command -v ip >/dev/null || { echo "iproute2 (ip) is not installed"; return 1; }
  local probe="xdt${TAG}p" err
  if ! err="$(ip netns add "$probe" 2>&1)"; then echo "cannot create a network namespace: $err"; return 1; fi
  ip netns del "$probe" 2>/dev/null
  return 0
}

# The bridge (controller at .1) and one namespace per node, its veth on the bridge, its hosts file.
net_up() {
  local n="$1" net i ns node hosts
  net="$(subnet)"
  if ! ip link show "$BRIDGE" >/dev/null 2>&1; then
    ip link add "$BRIDGE" type bridge
    ip addr add "$net.1/24" dev "$BRIDGE"
  fi
  ip link set "$BRIDGE" up
  mkdir -p "$D/net"
  {
    printf '127.0.0.1\tlocalhost\n%s\t%s\n' "$net.1" "$HOST"
    for ((i = 1; i <= n; i++)); do printf '%s\t%s\n' "$net.$((10 + i))" "node$i"; done
  } >"$D/net/hosts"
  for ((i = 1; i <= n; i++)); do
    node="node$i"; ns="$(ns_of "$node")"
    ip netns list | grep -qw "^$ns" && continue
    ip netns add "$ns"
    ip link add "xdt${TAG}h$i" type veth peer name "xdt${TAG}c$i"
    ip link set "xdt${TAG}c$i" netns "$ns"
    ip link set "xdt${TAG}h$i" master "$BRIDGE" up
    ip -n "$ns" link set lo up
    ip -n "$ns" link set "xdt${TAG}c$i" name eth0
    ip -n "$ns" addr add "$net.$((10 + i))/24" dev eth0
    ip -n "$ns" link set eth0 up
  done
}

net_down() {
  local ns
  for ns in $(ip netns list 2>/dev/null | awk '{print $1}' | grep "^xdt${TAG}n" || true); do
    ip netns pids "$ns" 2>/dev/null | xargs -r kill -9 2>/dev/null || true
    ip netns del "$ns" 2>/dev/null || true
  done
  ip link del "$BRIDGE" 2>/dev/null || true
}

# ---- daemons

start_slurmd() {  # start_slurmd NODE: in its namespaces when the cluster has several nodes
  local node="$1"
  mkdir -p "$D/spool/$node"
  if (($(node_count) == 1)); then
    slurmd -f "$CONF" -N "$node"
  else
    # its network namespace; a UTS namespace for its host name; a mount namespace where the cluster's hosts file
    # lies over /etc/hosts (`ip netns exec` would also remount /sys, hiding the cgroup tree slurmd reads at start)
    nsenter --net="/run/netns/$(ns_of "$node")" unshare --mount --uts sh -c \
      'mount --bind "$3" /etc/hosts && hostname "$1" && exec slurmd -f "$2" -N "$1"' \
      xdt-node "$node" "$CONF" "$D/net/hosts"
  fi
}

start_slurm() {
  local node
  if ! alive "$(pid_of slurmctld)"; then
    slurmctld -f "$CONF"
  fi
  wait_for "$TIMEOUT" slurmctld ctld_up || die "slurmctld is not UP after ${TIMEOUT}s (log: $D/log/slurmctld.log)"
  for node in $(node_names); do
    alive "$(pid_of "slurmd-$node")" || start_slurmd "$node"
  done
  for node in $(node_names); do
    wait_for "$TIMEOUT" "node $node" node_ready "$node" ||
      die "node $node is '$(node_state "$node")', not ready (idle), after ${TIMEOUT}s (log: $D/log/slurmd-$node.log)"
  done
}

cmd_up() {
  local n=""
  while (($#)); do
    case "$1" in
      --nodes) n="${2:-}"; shift 2 || die "--nodes needs a number" ;;
      --nodes=*) n="${1#--nodes=}"; shift ;;
      *) die "up: unknown argument '$1' (expected --nodes N)" ;;
    esac
  done
  [[ -z "$n" || "$n" =~ ^[1-9][0-9]*$ ]] || die "--nodes $n: expected a whole number >= 1"
  path_sbin
  binaries_present || die "slurm binaries missing; run: $0 install (apt-get install slurm-wlm munge)"
  [[ $EUID -eq 0 ]] || die "the local cluster runs its daemons as root (SlurmUser=root); run as root"
  mkdir -p "$D"/{state,spool,run,log}
  export SLURM_CONF="$CONF"
  if alive "$(pid_of slurmctld)"; then  # a running cluster keeps the file and the nodes it started with
    [[ -z "$n" || "$n" == "$(node_count)" ]] ||
      die "the cluster in $D runs with $(node_count) node(s); run \`$0 down\` before asking for $n"
  else
    n="${n:-1}"
    if ((n > 1)); then
      local why
      why="$(netns_ok)" || die "--nodes $n needs network namespaces: $why"
      net_down  # what an unclean stop of this state directory's cluster left behind
      pick_subnet >"$D/subnet"
    fi
    echo "$n" >"$D/nodes"
    write_conf
  fi
  (($(node_count) == 1)) || net_up "$(node_count)"
  start_munge
  start_slurm
  say "up: $(node_count) node(s) ($(node_names | paste -sd, -)) ready, state under $D"
  echo "export SLURM_CONF=$CONF"
}

stop_pid() {  # stop_pid NAME: SIGTERM, then SIGKILL after 5 s; a zombie counts as stopped
  local name="$1" pid i
  pid="$(pid_of "$name")"
  alive "$pid" || { rm -f "$D/run/$name.pid"; return 0; }
  kill "$pid" 2>/dev/null || true
  for ((i = 0; i < 50; i++)); do alive "$pid" || break; sleep 0.1; done
  if alive "$pid"; then say "$name ($pid) ignored SIGTERM: SIGKILL"; kill -9 "$pid" 2>/dev/null || true; fi
  rm -f "$D/run/$name.pid"
}

any_slurmd_alive() {
  local node
  for node in $(node_names); do alive "$(pid_of "slurmd-$node")" && return 0; done
  return 1
}

cmd_kill_node() {
  local node="${1:-}" ns
  [[ -n "$node" ]] || die "kill-node: name a node ($(node_names | paste -sd' ' -))"
  node_names | grep -qx "$node" || die "kill-node $node: no such node (nodes: $(node_names | paste -sd' ' -))"
  (($(node_count) > 1)) || die "kill-node needs a multi-node cluster (up --nodes N): node $node runs in the root namespace"
  ns="$(ns_of "$node")"
  ip netns pids "$ns" | xargs -r kill -9
  rm -f "$D/run/slurmd-$node.pid"
  say "node $node crashed: every process in namespace $ns got SIGKILL; \`$0 up\` starts its slurmd again"
}

cmd_down() {
  local node
  path_sbin
  export SLURM_CONF="$CONF"
  if [[ -f "$CONF" ]] && alive "$(pid_of slurmctld)"; then
    local i
    scancel --quiet --user="$(id -un)" 2>/dev/null || true
    for ((i = 0; i < 150; i++)); do  # let the jobs end (KillWait=5) so that no job process outlives slurmd
      [[ -z "$(squeue -h -o %i 2>/dev/null)" ]] && break
      sleep 0.1
    done
    scontrol shutdown >/dev/null 2>&1 || true
    for ((i = 0; i < 50; i++)); do
      alive "$(pid_of slurmctld)" || any_slurmd_alive || break
      sleep 0.1
    done
  fi
  for node in $(node_names); do stop_pid "slurmd-$node"; done
  stop_pid slurmctld
  stop_pid munged
  (($(node_count) == 1)) || net_down
  rm -f "$D/nodes"
  say "down (state kept in $D; remove it for a fresh cluster)"
}

cmd_status() {
  path_sbin
  export SLURM_CONF="$CONF"
  local name pid node rc=0
  for name in munged slurmctld; do
    pid="$(pid_of "$name")"
    if alive "$pid"; then echo "$name: running (pid $pid)"; else echo "$name: stopped"; rc=1; fi
  done
  for node in $(node_names); do
    pid="$(pid_of "slurmd-$node")"
    if alive "$pid"; then echo "slurmd $node: running (pid $pid)"; else echo "slurmd $node: stopped"; rc=1; fi
  done
  if alive "$(pid_of slurmctld)"; then
    sinfo -h -N -o "node %N: %t (%o)" 2>/dev/null || true
    squeue -h -o "%i %j %T %M %R" 2>/dev/null | sed 's/^/job /' || true
    echo "export SLURM_CONF=$CONF"
  fi
  return $rc
}

case "${1:-}" in
  install) cmd_install ;;
  up) shift; cmd_up "$@" ;;
  down) cmd_down ;;
  status) cmd_status ;;
  kill-node) cmd_kill_node "${2:-}" ;;
  env) echo "export SLURM_CONF=$CONF" ;;
  *) echo "usage: $0 install|up [--nodes N]|down|status|kill-node NAME|env   (state: \$XDT_SLURM_DIR, default" \
          "/tmp/xdt-slurm)" >&2; exit 2 ;;
esac
