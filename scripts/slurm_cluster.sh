#!/usr/bin/env bash
# scripts/slurm_cluster.sh - a REAL Slurm cluster of several nodes on one machine (Debian packages), for
# tests/test_slurm_multinode.py and for trying `sbatch --nodes N slurm/train.sbatch` without a cluster.
# Runs as root; needs no systemd, no cgroups, no network namespaces.
#
#   bash scripts/slurm_cluster.sh            # install (if needed) + configure + start; waits until every node is idle
#   bash scripts/slurm_cluster.sh down       # stop every daemon of this cluster (by the PIDs in its pid files)
#   bash scripts/slurm_cluster.sh status     # daemons and sinfo
#   bash scripts/slurm_cluster.sh kill-node node2   # SIGKILL node2's slurmd and every process of its job steps
#   bash scripts/slurm_cluster.sh start-node node2  # start node2's slurmd again
#   export SLURM_CONF=$(bash scripts/slurm_cluster.sh conf)   # then sinfo, sbatch, ... talk to this cluster
#
# One slurmctld, one munged and one slurmd per node (`slurmd -N nodeK`), each node with its own NodeAddr
# (127.0.0.K+1: the whole 127/8 reaches the loopback device), Port, spool directory, pid and log file.
# Everything lives under $SLURM_CLUSTER_DIR with its own ports and its own munge socket, so the cluster
# stands beside the single-node one of scripts/slurm_up.sh (/etc/slurm, ports 6817/6818) without touching it.
#
# Env knobs: SLURM_CLUSTER_DIR (default /run/nuwa-slurm-cluster), SLURM_CLUSTER_NODES (default 3),
#            SLURM_CLUSTER_PORT (slurmctld port, default 6917; node K listens on PORT+K),
#            SLURM_CLUSTER_CPUS (CPUs per node, default nproc), SLURM_CLUSTER_FIRST_JOB_ID (default 10000),
#            SLURM_CLUSTER_SLURMD_TIMEOUT (seconds before a silent node is DOWN, default 20),
#            SLURM_CLUSTER_MESSAGE_TIMEOUT (seconds an RPC may take, default 10: a ping of a lost node retries its
#            connection that long, and Slurm counts two such pings before the node is DOWN),
#            SLURM_CLUSTER_CRED_EXPIRE (seconds a requeued job waits before it starts again, default 10),
#            SLURM_CLEAN=1 (fresh controller state). The directory must be reachable by the munge user.
set -euo pipefail

BASE=${SLURM_CLUSTER_DIR:-/run/nuwa-slurm-cluster}
NODES=${SLURM_CLUSTER_NODES:-3}
PORT=${SLURM_CLUSTER_PORT:-6917}
CONF=$BASE/slurm.conf
MUNGE_SOCKET=$BASE/munge-socket/munge.socket   # its directory must be world-executable
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
export SLURM_CONF=$CONF

ms() { echo $(( $(date +%s%N) / 1000000 )); }
secs() { local d=$(( $(ms) - $1 )); printf '%d.%02d' $((d / 1000)) $((d % 1000 / 10)); }
T0=$(ms)
log() { printf '[slurm_cluster +%ss] %s\n' "$(secs "$T0")" "$*" >&2; }
alive() { [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }
node_names() { local k; for k in $(seq "$NODES"); do echo "node$k"; done; }
node_pidfile() { echo "$BASE/run/slurmd.$1.pid"; }

stop_pidfiles() {  # TERM every daemon named by these pid files at once, wait up to 10 s, then KILL
  local f p pids=()
  for f in "$@"; do
    if alive "$f"; then p=$(cat "$f"); log "stopping PID $p ($f)"; kill "$p"; pids+=("$p"); fi
    rm -f "$f"
  done
  for p in "${pids[@]}"; do
    for _ in $(seq 100); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$p" 2>/dev/null; then log "PID $p still alive after 10 s, sending KILL"; kill -9 "$p"; fi
  done
  return 0
}

down() {
  local n files=()
  [ -d "$BASE" ] || return 0
  for n in $(node_names); do files+=("$(node_pidfile "$n")"); done
  stop_pidfiles "${files[@]}" "$BASE/run/slurmctld.pid"
  stop_pidfiles "$BASE/run/munged.pid"     # last: the others authenticate through it until they exit
}

status() {
  local f
  for f in "$BASE"/run/*.pid; do
    [ -e "$f" ] || continue
    if alive "$f"; then echo "$f: PID $(cat "$f") running"; else echo "$f: not running"; fi
  done
  command -v sinfo >/dev/null && sinfo -N -o '%N %T %o:%E' 2>/dev/null || true
}

step_pids() {  # PIDs of the slurmstepd processes that run job steps on node $1 of this cluster
  local node=$1 p q
  for p in $(pgrep -x slurmstepd || true); do
    # a task below this slurmstepd tells the node it runs on (SLURMD_NODENAME in its environment)
    for q in $(pgrep -P "$p" || true); do
      if tr '\0' '\n' < "/proc/$q/environ" 2>/dev/null | grep -qx "SLURMD_NODENAME=$node" \
         && tr '\0' '\n' < "/proc/$q/environ" 2>/dev/null | grep -qx "SLURM_CONF=$CONF"; then echo "$p"; break; fi
    done
  done
}

kill_tree() {  # SIGKILL a process and all its descendants (children first collected, then killed together)
  local p=$1 c
  for c in $(pgrep -P "$p" || true); do kill_tree "$c"; done
  kill -9 "$p" 2>/dev/null || true
}

kill_node() {  # what a node that loses power does: slurmd and every process of its job steps vanish at once
  local node=${1:?usage: $0 kill-node NODE} f p
  f=$(node_pidfile "$node")
  alive "$f" || { log "slurmd of $node is not running"; exit 1; }
  kill -STOP "$(cat "$f")"                     # no slurmd left to start or report anything meanwhile
  for p in $(step_pids "$node"); do log "killing the job step tree of $node under slurmstepd $p"; kill_tree "$p"; done
  log "killing slurmd of $node (PID $(cat "$f"))"; kill -9 "$(cat "$f")"; rm -f "$f"
}

setup_munge() {  # a munged of our own (own key, socket, pid and log): the system one may be stopped by others
  mkdir -p "$BASE/munge" "$BASE/munge-socket" "$BASE/run" "$BASE/log"
  if [ ! -s "$BASE/munge/munge.key" ]; then
    mungekey --create --keyfile="$BASE/munge/munge.key"
  fi
  chown -R munge:munge "$BASE/munge" "$BASE/munge-socket"; chmod 0700 "$BASE/munge"; chmod 0755 "$BASE/munge-socket"
  chmod 0400 "$BASE/munge/munge.key"
  if alive "$BASE/run/munged.pid"; then log "munged already running (PID $(cat "$BASE/run/munged.pid"))"; return; fi
  touch "$BASE/run/munged.pid" "$BASE/log/munged.log"; chown munge:munge "$BASE/run/munged.pid" "$BASE/log/munged.log"
  runuser -u munge -- /usr/sbin/munged --socket="$MUNGE_SOCKET" --key-file="$BASE/munge/munge.key" \
    --pid-file="$BASE/run/munged.pid" --log-file="$BASE/log/munged.log" --seed-file="$BASE/munge/munged.seed"
  for _ in $(seq 50); do [ -S "$MUNGE_SOCKET" ] && break; sleep 0.1; done
  munge -S "$MUNGE_SOCKET" -n | unmunge -S "$MUNGE_SOCKET" >/dev/null || { log "munge self-test failed"; exit 1; }
  log "munged up (PID $(cat "$BASE/run/munged.pid"), socket $MUNGE_SOCKET)"
}

write_conf() {
  local ncpu mem k
  ncpu=${SLURM_CLUSTER_CPUS:-$(env -u OMP_NUM_THREADS -u OMP_THREAD_LIMIT nproc)}   # nproc alone answers OMP_NUM_THREADS
  mem=$(( $(slurmd -C | sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p') * 9 / 10 ))
  mkdir -p "$BASE/state" "$BASE/spool"
  [ "${SLURM_CLEAN:-0}" = 1 ] && rm -rf "${BASE:?}/state/"* "${BASE:?}/spool/"*
  for k in $(seq "$NODES"); do mkdir -p "$BASE/spool/node$k"; done
  {
    cat <<EOF
# a cluster of $NODES nodes on one machine, written by scripts/slurm_cluster.sh
ClusterName=nuwa-multi
# job ids (and so train.sbatch's MASTER_PORT, 20000 + id % 12000) apart from the single-node cluster's
FirstJobId=${SLURM_CLUSTER_FIRST_JOB_ID:-10000}
SlurmctldHost=localhost
SlurmctldPort=$PORT
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$MUNGE_SOCKET,cred_expire=${SLURM_CLUSTER_CRED_EXPIRE:-10}
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
SchedulerParameters=bf_interval=2,sched_interval=2
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
MailProg=/bin/true
ReturnToService=2
KillWait=10
# a lost node is declared DOWN after SlurmdTimeout (default 300 s) without an answer, at the earliest at the end of
# the second ping that fails; a ping of a lost node fails after MessageTimeout (its connection retried every second)
SlurmdTimeout=${SLURM_CLUSTER_SLURMD_TIMEOUT:-20}
MessageTimeout=${SLURM_CLUSTER_MESSAGE_TIMEOUT:-10}
StateSaveLocation=$BASE/state
SlurmdSpoolDir=$BASE/spool/%n
SlurmctldPidFile=$BASE/run/slurmctld.pid
SlurmdPidFile=$BASE/run/slurmd.%n.pid
SlurmctldLogFile=$BASE/log/slurmctld.log
SlurmdLogFile=$BASE/log/slurmd.%n.log
EOF
    for k in $(seq "$NODES"); do
      echo "NodeName=node$k NodeAddr=127.0.0.$((k + 1)) Port=$((PORT + k)) CPUs=$ncpu RealMemory=$mem State=UNKNOWN"
    done
    echo "PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP"
  } > "$CONF.tmp"
  mv "$CONF.tmp" "$CONF"
  log "wrote $CONF ($NODES nodes x CPUs=$ncpu RealMemory=${mem}M)"
}

wait_node_usable() {
  local node=$1 t=
  for _ in $(seq 150); do
    t=$(sinfo -h -n "$node" -o %t 2>/dev/null || true)
    case "$t" in idle|mix|alloc|comp) return 0 ;; esac
    sleep 0.2
  done
  log "node $node state '$t', trying resume"; scontrol update nodename="$node" state=resume || true; sleep 1
  t=$(sinfo -h -n "$node" -o %t)
  case "$t" in idle|mix|alloc|comp) return 0 ;; esac
  log "node $node not usable: $t"; sinfo -R >&2; tail -n 30 "$BASE/log/slurmd.$node.log" >&2; exit 1
}

start_node() {
  local node=${1:?} f
  f=$(node_pidfile "$node")
  if alive "$f"; then log "slurmd $node already running (PID $(cat "$f"))"
  else /usr/sbin/slurmd -N "$node"; fi        # forks into the background, writes its pid file
}

start_daemons() {
  local n
  setup_munge
  if alive "$BASE/run/slurmctld.pid"; then log "slurmctld already running (PID $(cat "$BASE/run/slurmctld.pid"))"
  else /usr/sbin/slurmctld; fi
  for _ in $(seq 100); do scontrol ping 2>/dev/null | grep -q UP && break; sleep 0.2; done
  scontrol ping | grep -q UP || { log "slurmctld not answering"; tail -n 30 "$BASE/log/slurmctld.log" >&2; exit 1; }
  log "slurmctld up (PID $(cat "$BASE/run/slurmctld.pid"), port $PORT)"
  for n in $(node_names); do start_node "$n"; done
  for n in $(node_names); do wait_node_usable "$n"; done
  log "slurmd up on $(node_names | tr '\n' ' ')"
}

case "${1:-up}" in
  down) down; exit 0 ;;
  status) status; exit 0 ;;
  conf) echo "$CONF"; exit 0 ;;
  kill-node) kill_node "${2:-}"; exit 0 ;;
  start-node) start_node "${2:?usage: $0 start-node NODE}"; wait_node_usable "$2"; exit 0 ;;
  up) ;;
  *) echo "usage: $0 [up|down|status|conf|kill-node NODE|start-node NODE]" >&2; exit 2 ;;
esac
[ "$(id -u)" = 0 ] || { echo "must run as root" >&2; exit 1; }
SLURM_UP_INSTALL_ONLY=1 bash "$HERE/slurm_up.sh"   # the packages (shared with the single-node script)
T1=$(ms)
write_conf
start_daemons
log "configure+start $(secs "$T1") s, total $(secs "$T0") s"
sinfo -N
