#!/usr/bin/env bash
# A real single-node SLURM cluster (Debian slurm-wlm + munge) on this machine, for tests and local trials.
#
#   slurm/local/cluster.sh install   apt-get install slurm-wlm munge when the binaries are missing
#   slurm/local/cluster.sh up        start munged, slurmctld, slurmd (idempotent); prints `export SLURM_CONF=...`
#   slurm/local/cluster.sh status    daemons, node state, queue
#   slurm/local/cluster.sh env       prints `export SLURM_CONF=...` only
#   slurm/local/cluster.sh down      cancel jobs, stop the daemons (idempotent)
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
# The pid in NAME's pid file, when that process is alive and is NAME (a stale file may name a recycled pid).
pid_of() {
  local pid
  pid="$(cat "$D/run/$1.pid" 2>/dev/null || true)"
  [[ "$pid" =~ ^[0-9]+$ && "$(cat "/proc/$pid/comm" 2>/dev/null)" == "$1" ]] && echo "$pid"
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
  if binaries_present; then say "slurm-wlm and munge already installed ($(slurmctld -V))"; return 0; fi
  [[ $EUID -eq 0 ]] || die "installing needs root: apt-get install -y --no-install-recommends slurm-wlm munge"
  command -v apt-get >/dev/null || die "no apt-get: install slurm-wlm (slurmctld, slurmd, sbatch) and munge by hand"
  say "installing slurm-wlm munge (apt-get)"
  DEBIAN_FRONTEND=noninteractive apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends slurm-wlm munge >/dev/null
  binaries_present || die "apt-get finished but slurmctld/slurmd/sbatch/munged are still missing"
}

write_conf() {
  local topo mem cpus_line
  topo="$(slurmd -C | head -n1)" || die "slurmd -C failed"
  mem="$(sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p' <<<"$topo")"
  [[ -n "$mem" ]] || die "cannot read RealMemory from \`slurmd -C\`: $topo"
  # the topology fields as slurmd -C prints them, without NodeName and RealMemory (set below)
  cpus_line="$(sed -e 's/^NodeName=[^ ]* *//' -e 's/ *RealMemory=[0-9]*//' <<<"$topo")"
  cat >"$CONF.tmp" <<EOF
# Written by slurm/local/cluster.sh; see ../shared/SLURM.md for why each line is there.
ClusterName=localcluster
SlurmctldHost=$HOST(127.0.0.1)
SlurmctldPort=$PORT
SlurmdPort=$((PORT + 1))
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket=$SOCKET,cred_expire=10
CredType=cred/munge
StateSaveLocation=$D/state
SlurmdSpoolDir=$D/spool
SlurmctldPidFile=$D/run/slurmctld.pid
SlurmdPidFile=$D/run/slurmd.pid
SlurmctldLogFile=$D/log/slurmctld.log
SlurmdLogFile=$D/log/slurmd.log
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
NodeName=$HOST NodeAddr=127.0.0.1 $cpus_line RealMemory=$((mem * 95 / 100))
PartitionName=debug Nodes=$HOST Default=YES MaxTime=INFINITE State=UP
EOF
  mv "$CONF.tmp" "$CONF"
  : >"$D/plugstack.conf"   # empty: otherwise Debian's /etc/slurm/plugstack.conf is included
}

munge_ok() { munge -S "$SOCKET" -n </dev/null | unmunge -S "$SOCKET" >/dev/null; }
ctld_up() { scontrol ping 2>/dev/null | grep -q "is UP"; }
node_idle() { [[ "$(sinfo -h -N -o %t 2>/dev/null)" == "idle" ]]; }
node_state() { sinfo -h -N -o %t 2>/dev/null || true; }

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

start_slurm() {
  if ! alive "$(pid_of slurmctld)"; then
    slurmctld -f "$CONF"
  fi
  wait_for "$TIMEOUT" slurmctld ctld_up || die "slurmctld is not UP after ${TIMEOUT}s (log: $D/log/slurmctld.log)"
  if ! alive "$(pid_of slurmd)"; then
    slurmd -f "$CONF" -N "$HOST"
  fi
  wait_for "$TIMEOUT" "node idle" node_idle ||
    die "node $HOST is '$(node_state)', not idle, after ${TIMEOUT}s (log: $D/log/slurmd.log)"
}

cmd_up() {
  path_sbin
  binaries_present || die "slurm binaries missing; run: $0 install (apt-get install slurm-wlm munge)"
  [[ $EUID -eq 0 ]] || die "the local cluster runs its daemons as root (SlurmUser=root); run as root"
  mkdir -p "$D"/{state,spool,run,log}
  export SLURM_CONF="$CONF"
  if ! alive "$(pid_of slurmctld)"; then write_conf; fi  # a running cluster keeps the file it started with
  start_munge
  start_slurm
  say "up: node $HOST idle, state under $D"
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

cmd_down() {
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
      alive "$(pid_of slurmctld)" || alive "$(pid_of slurmd)" || break
      sleep 0.1
    done
  fi
  stop_pid slurmd
  stop_pid slurmctld
  stop_pid munged
  say "down (state kept in $D; remove it for a fresh cluster)"
}

cmd_status() {
  path_sbin
  export SLURM_CONF="$CONF"
  local name pid rc=0
  for name in munged slurmctld slurmd; do
    pid="$(pid_of "$name")"
    if alive "$pid"; then echo "$name: running (pid $pid)"; else echo "$name: stopped"; rc=1; fi
  done
  if ((rc == 0)); then
    echo "node $HOST: $(node_state)"
    squeue -h -o "%i %j %T %M %R" 2>/dev/null | sed 's/^/job /' || true
    echo "export SLURM_CONF=$CONF"
  fi
  return $rc
}

case "${1:-}" in
  install) cmd_install ;;
  up) cmd_up ;;
  down) cmd_down ;;
  status) cmd_status ;;
  env) echo "export SLURM_CONF=$CONF" ;;
  *) echo "usage: $0 install|up|down|status|env   (state: \$XDT_SLURM_DIR, default /tmp/xdt-slurm)" >&2; exit 2 ;;
esac
