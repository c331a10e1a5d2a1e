#!/usr/bin/env bash
# scripts/slurm_up.sh - bring up a REAL single-node Slurm cluster (Debian packages) from nothing, for
# tests/test_slurm.py and for trying slurm/*.sbatch on one machine. Runs as root; needs no systemd, no cgroups.
#
#   bash scripts/slurm_up.sh          # install (if needed) + configure + start; waits until the node is idle
#   bash scripts/slurm_up.sh down     # stop slurmd, slurmctld, munged (by the PIDs in their pid files)
#   bash scripts/slurm_up.sh status   # show daemons and sinfo
#
# Env knobs: SLURM_NODE=name (default localhost; e.g. $(hostname -s), which must resolve);
#            SLURM_CLEAN=1 wipes the controller state dir before starting (fresh job ids);
#            SLURM_CRED_EXPIRE=N seconds a requeued job waits before it may start again (Slurm default 120);
#            SLURM_UP_INSTALL_ONLY=1 installs the packages and stops there (scripts/slurm_cluster.sh uses it).
set -euo pipefail

NODE=${SLURM_NODE:-localhost}        # node name; also what `scontrol show hostnames` gives -> MASTER_ADDR
CONF=/etc/slurm/slurm.conf
STATE=/var/spool/slurmctld           # StateSaveLocation
SPOOL=/var/spool/slurmd              # SlurmdSpoolDir
LOGDIR=/var/log/slurm
PIDS="/run/slurmd.pid /run/slurmctld.pid /run/munge/munged.pid"   # stop order
CRED_EXPIRE=${SLURM_CRED_EXPIRE:-10}

ms() { echo $(( $(date +%s%N) / 1000000 )); }
secs() { local d=$(( $(ms) - $1 )); printf '%d.%02d' $((d / 1000)) $((d % 1000 / 10)); }
T0=$(ms)
log() { printf '[slurm_up +%ss] %s\n' "$(secs "$T0")" "$*" >&2; }
alive() { [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

down() {
  for f in $PIDS; do
    if alive "$f"; then
      p=$(cat "$f"); log "stopping PID $p ($f)"; kill "$p"
      for _ in $(seq 100); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
      kill -0 "$p" 2>/dev/null && { log "PID $p still alive after 10 s, sending KILL"; kill -9 "$p"; }
    fi
  done
  return 0
}

status() {
  for f in $PIDS; do
    if alive "$f"; then echo "$f: PID $(cat "$f") running"; else echo "$f: not running"; fi
  done
  command -v sinfo >/dev/null && sinfo || true
}

install_pkgs() {
  # one install at a time (scripts/slurm_cluster.sh installs through this script too, and two test modules may
  # bring their clusters up at once): a second apt-get would fail on dpkg's lock; this one waits, then finds the
  # packages there. The lock is let go before any daemon starts (a daemon would inherit it).
  exec 9>/run/nuwa-slurm-install.lock
  flock 9
  install_pkgs_locked
  exec 9>&-
}

install_pkgs_locked() {
  if command -v slurmctld >/dev/null && command -v slurmd >/dev/null \
     && command -v sbatch >/dev/null && command -v munged >/dev/null; then
    log "packages already installed: $(slurmd -V)"; return
  fi
  # Keep package scripts from trying to start the daemons (no systemd here, and no slurm.conf yet).
  local made_policy=0
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d; chmod 755 /usr/sbin/policy-rc.d; made_policy=1
    trap 'rm -f /usr/sbin/policy-rc.d' EXIT          # removed again even if apt fails
  fi
  local pkgs="munge slurmctld slurmd slurm-client"
  log "apt-get install $pkgs"
  export DEBIAN_FRONTEND=noninteractive
  if ! apt-get install -y -q --no-install-recommends $pkgs >/tmp/slurm_up.apt.log 2>&1; then
    log "install failed, running apt-get update and retrying"
    apt-get update -q >>/tmp/slurm_up.apt.log 2>&1
    apt-get install -y -q --no-install-recommends $pkgs >>/tmp/slurm_up.apt.log 2>&1
  fi
  if [ "$made_policy" = 1 ]; then rm -f /usr/sbin/policy-rc.d; trap - EXIT; fi
  log "installed: $(slurmd -V)"
}

setup_munge() {
  mkdir -p /etc/munge /var/lib/munge /var/log/munge /run/munge
  if [ ! -s /etc/munge/munge.key ]; then
    log "creating munge key"; mungekey --create --keyfile=/etc/munge/munge.key
  fi
  chown -R munge:munge /etc/munge /var/lib/munge /var/log/munge /run/munge
  chmod 0700 /etc/munge /var/log/munge; chmod 0400 /etc/munge/munge.key; chmod 0755 /run/munge
}

write_conf() {
  local ncpu mem
  # the machine's CPUs: plain nproc answers OMP_NUM_THREADS when it is set (the test workers set it to 1, and a
  # node of 1 CPU leaves `srun -n 2` pending for ever with Reason=PartitionConfig)
  ncpu=$(env -u OMP_NUM_THREADS -u OMP_THREAD_LIMIT nproc)
  mem=$(( $(slurmd -C | sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p') * 9 / 10 ))   # 90% of what slurmd sees
  mkdir -p /etc/slurm "$STATE" "$SPOOL" "$LOGDIR"
  [ "${SLURM_CLEAN:-0}" = 1 ] && rm -rf "${STATE:?}"/* "${SPOOL:?}"/*
  local old=""
  [ -f "$CONF" ] && old=$(cat "$CONF")
  cat > "$CONF" <<EOF
# single-node CI cluster written by scripts/slurm_up.sh
ClusterName=ci
SlurmctldHost=$NODE
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=cred_expire=$CRED_EXPIRE
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
StateSaveLocation=$STATE
SlurmdSpoolDir=$SPOOL
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=$LOGDIR/slurmctld.log
SlurmdLogFile=$LOGDIR/slurmd.log
NodeName=$NODE NodeAddr=127.0.0.1 CPUs=$ncpu RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
  log "wrote $CONF (CPUs=$ncpu RealMemory=${mem}M)"
  if [ -n "$old" ] && [ "$old" != "$(cat "$CONF")" ] && { alive /run/slurmctld.pid || alive /run/slurmd.pid; }; then
    log "the configuration changed: restarting slurmctld and slurmd"   # a running daemon keeps its old node table
    down
  fi
}

start_daemons() {
  local t
  if alive /run/munge/munged.pid; then log "munged already running (PID $(cat /run/munge/munged.pid))"
  else runuser -u munge -- /usr/sbin/munged; fi
  for _ in $(seq 50); do [ -S /run/munge/munge.socket.2 ] && break; sleep 0.1; done
  munge -n | unmunge >/dev/null || { log "munge self-test failed"; exit 1; }
  log "munged up (PID $(cat /run/munge/munged.pid))"

  if alive /run/slurmctld.pid; then log "slurmctld already running (PID $(cat /run/slurmctld.pid))"
  else /usr/sbin/slurmctld; fi                 # forks into the background, writes its pid file
  for _ in $(seq 100); do scontrol ping 2>/dev/null | grep -q UP && break; sleep 0.2; done
  scontrol ping | grep -q UP || { log "slurmctld not answering"; tail -n 30 "$LOGDIR/slurmctld.log" >&2; exit 1; }
  log "slurmctld up (PID $(cat /run/slurmctld.pid))"

  if alive /run/slurmd.pid; then log "slurmd already running (PID $(cat /run/slurmd.pid))"
  else /usr/sbin/slurmd -N "$NODE"; fi         # -N: our node is 'localhost', not $(hostname)
  for _ in $(seq 150); do
    t=$(sinfo -h -n "$NODE" -o %t 2>/dev/null || true)
    case "$t" in idle|mix|alloc) break ;; esac
    sleep 0.2
  done
  case "$t" in
    idle|mix|alloc) ;;
    *) log "node state '$t', trying resume"; scontrol update nodename="$NODE" state=resume || true; sleep 1
       t=$(sinfo -h -n "$NODE" -o %t)
       case "$t" in idle|mix|alloc) ;; *) log "node not usable: $t"; sinfo -R >&2; tail -n 30 "$LOGDIR/slurmd.log" >&2; exit 1 ;; esac ;;
  esac
  log "slurmd up (PID $(cat /run/slurmd.pid)); node $NODE is $t"
}

case "${1:-up}" in
  down) down; exit 0 ;;
  status) status; exit 0 ;;
  up) ;;
  *) echo "usage: $0 [up|down|status]" >&2; exit 2 ;;
esac
[ "$(id -u)" = 0 ] || { echo "must run as root" >&2; exit 1; }
install_pkgs
[ "${SLURM_UP_INSTALL_ONLY:-0}" = 1 ] && exit 0
T1=$(ms); INSTALL_S=$(secs "$T0")
setup_munge
write_conf
start_daemons
log "timing: install ${INSTALL_S} s, configure+start $(secs "$T1") s, total $(secs "$T0") s"
sinfo
