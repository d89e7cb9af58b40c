#!/usr/bin/env bash
# A single-node Slurm cluster on this machine, for the Slurm executor's tests (and for trying
# `pipeline run --executor slurm` without a cluster). Debian's packages, daemons as plain
# background processes, state under one directory, stopped by pid.
#
#   scripts/slurm-test-cluster.sh install   # apt packages (slurmctld slurmd slurm-client munge)
#   scripts/slurm-test-cluster.sh start     # prints `export SLURM_CONF=...`; idle in ~1 s
#   scripts/slurm-test-cluster.sh stop
#   scripts/slurm-test-cluster.sh status
#
# FEDP2EFT_SLURM_DIR (default /tmp/fedp2eft-slurm) holds slurm.conf, logs, spool and state.
set -euo pipefail
dir="${FEDP2EFT_SLURM_DIR:-/tmp/fedp2eft-slurm}"
conf="$dir/slurm.conf"

need_root() {
    if [ "$(id -u)" -ne 0 ]; then
        echo "slurm-test-cluster: $1 needs root (slurmd runs jobs as their users)" >&2
        exit 1
    fi
}

install() {
    if command -v slurmctld >/dev/null && command -v slurmd >/dev/null \
        && command -v sbatch >/dev/null && command -v munged >/dev/null; then
        return 0
    fi
    need_root install
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q slurmctld slurmd slurm-client munge
}

alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

write_conf() {
    local host cpus mem
    host="$(hostname -s)"
    cpus="$(nproc)"
    # Leave the OS a quarter of the memory; slurmd refuses a node that claims more than it has.
    mem="$(awk '/MemTotal/ { printf "%d", $2 / 1024 * 3 / 4 }' /proc/meminfo)"
    mkdir -p "$dir/state" "$dir/spool" "$dir/log" "$dir/munge"
    cat >"$conf.tmp" <<CONF
ClusterName=fedp2eft-test
SlurmctldHost=$host
SlurmUser=root
AuthType=auth/munge
AuthInfo=socket=$dir/munge/munge.socket
CredType=cred/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SchedulerType=sched/backfill
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/filetxt
JobCompLoc=$dir/log/jobcomp.txt
MpiDefault=none
ReturnToService=2
SlurmctldPort=6817
SlurmdPort=6818
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd.log
SchedulerParameters=sched_interval=1
MessageTimeout=10
NodeName=$host CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
CONF
    mv "$conf.tmp" "$conf"
}

start() {
    need_root start
    install
    if alive "$dir/slurmctld.pid" && alive "$dir/slurmd.pid"; then
        echo "export SLURM_CONF=$conf"
        return 0
    fi
    stop >/dev/null 2>&1 || true
    write_conf
    # munge: a key of our own, its own socket, so a system munged is left alone.
    if [ ! -s "$dir/munge/munge.key" ]; then
        dd if=/dev/urandom of="$dir/munge/munge.key" bs=1024 count=1 status=none
        chmod 600 "$dir/munge/munge.key"
    fi
    chmod 700 "$dir/munge"
    munged --force --key-file="$dir/munge/munge.key" --socket="$dir/munge/munge.socket" \
        --pid-file="$dir/munge/munged.pid" --log-file="$dir/log/munged.log" \
        --seed-file="$dir/munge/munged.seed"
    export SLURM_CONF="$conf"
    slurmctld -f "$conf"
    slurmd -f "$conf"
    local host
    host="$(hostname -s)"
    for _ in $(seq 1 60); do
        if sinfo -h -N -n "$host" -o '%t' 2>/dev/null | grep -qE '^(idle|mix|alloc)'; then
            echo "export SLURM_CONF=$conf"
            return 0
        fi
        sleep 0.5
    done
    echo "slurm-test-cluster: node $host did not become idle in 30 s; logs in $dir/log" >&2
    sinfo -N >&2 || true
    tail -n 20 "$dir/log/slurmctld.log" "$dir/log/slurmd.log" >&2 || true
    exit 1
}

stop() {
    local pidfile
    for pidfile in "$dir/slurmd.pid" "$dir/slurmctld.pid" "$dir/munge/munged.pid"; do
        if alive "$pidfile"; then
            kill "$(cat "$pidfile")" 2>/dev/null || true
            for _ in $(seq 1 50); do alive "$pidfile" || break; sleep 0.1; done
            alive "$pidfile" && kill -9 "$(cat "$pidfile")" 2>/dev/null || true
        fi
        rm -f "$pidfile"
    done
    # Job state of a stopped test cluster is not kept: the next start is a fresh cluster.
    rm -rf "$dir/state" "$dir/spool"
}

status() {
    if alive "$dir/slurmctld.pid" && alive "$dir/slurmd.pid"; then
        SLURM_CONF="$conf" sinfo -N
    else
        echo "not running (state dir $dir)"
        return 1
    fi
}

case "${1:-}" in
    install) install ;;
    start) start ;;
    stop) stop ;;
    status) status ;;
    *) echo "usage: $0 install|start|stop|status" >&2; exit 2 ;;
esac
