#!/bin/bash
# slurm_local.sh -- a throw-away single-node Slurm cluster in one folder, for
# tests/test_slurm.py and for trying docs/cluster.md's commands by hand.
# Everything lives under DIR (slurm.conf, state, spool, logs, pid files); its
# two ports are free ones picked at start; no munge (auth/none), no cgroups,
# no systemd: slurmctld and slurmd run as root in the background (-D, their
# pids in DIR). `stop` ends only what this cluster started: its jobs, its two
# daemons, then any process whose environment names DIR/slurm.conf and that
# is a slurmstepd or a job's process (SLURM_JOB_ID set), never the caller or
# its parents.
#
#   scripts/slurm_local.sh start DIR    # prints: export SLURM_CONF=DIR/slurm.conf
#   scripts/slurm_local.sh stop DIR
#
# Needs Debian's slurmctld, slurmd and slurm-client (apt-get install slurm-wlm).
# Exit 0, or 1 with the reason on stderr (start then stops what it started).
set -u

usage() {
    echo "usage: $0 start|stop DIR" >&2
    exit 2
}
[ $# -eq 2 ] || usage
cmd=$1
dir=$2
[ -n "$dir" ] || usage
[ "$cmd" != stop ] || [ -d "$dir" ] || exit 0 # nothing to stop
[ "$cmd" != start ] || mkdir -p "$dir" || exit 1
dir=$(cd "$dir" && pwd) || exit 1
conf=$dir/slurm.conf
export SLURM_CONF=$conf

die() {
    echo "slurm_local.sh: $*" >&2
    exit 1
}

# a TCP port on 127.0.0.1 that nothing answers on, not in $1 (space separated)
free_port() {
    local p
    for _ in $(seq 1 200); do
        p=$((20000 + RANDOM % 30000))
        case " $1 " in *" $p "*) continue ;; esac
        if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
            echo "$p"
            return 0
        fi
    done
    return 1
}

# this script and its parents, up to init (never to be killed)
ancestors() {
    local p=$$
    while [ -n "$p" ] && [ "$p" -gt 1 ]; do
        echo "$p"
        p=$(awk '/^PPid:/ {print $2}' "/proc/$p/status" 2>/dev/null)
    done
}

# the pids of this cluster's slurmstepd and job processes: SLURM_CONF=$conf
# in their environment, and a slurmstepd or SLURM_JOB_ID set
cluster_pids() {
    local e p mine
    mine=" $(ancestors | tr '\n' ' ') $BASHPID "
    for e in /proc/[0-9]*/environ; do
        p=${e#/proc/}
        p=${p%/environ}
        case $mine in *" $p "*) continue ;; esac
        grep -qzxF "SLURM_CONF=$conf" "$e" 2>/dev/null || continue
        if grep -qz '^SLURM_JOB_ID=' "$e" 2>/dev/null ||
            [ "$(cat "/proc/$p/comm" 2>/dev/null)" = slurmstepd ]; then
            echo "$p"
        fi
    done
}

alive() {
    kill -0 "$1" 2>/dev/null
}

stop() {
    local pf pid pids
    if [ -f "$dir/slurmctld.pid" ] && alive "$(cat "$dir/slurmctld.pid")"; then
        timeout 10 scancel --quiet --user="$(id -un)" 2>/dev/null # this cluster's jobs
    fi
    for pf in slurmd slurmctld; do
        pid=$(cat "$dir/$pf.pid" 2>/dev/null) || continue
        [ -n "$pid" ] || continue
        kill -TERM "$pid" 2>/dev/null
        for _ in $(seq 1 100); do
            alive "$pid" || break
            sleep 0.1
        done
        alive "$pid" && kill -KILL "$pid" 2>/dev/null
        rm -f "$dir/$pf.pid"
    done
    # slurmstepd and tasks that outlived their slurmd
    for _ in 1 2 3; do
        pids=$(cluster_pids)
        [ -n "$pids" ] || break
        # shellcheck disable=SC2086
        kill -KILL $pids 2>/dev/null
        sleep 0.2
    done
    [ -z "$(cluster_pids)" ] || echo "slurm_local.sh: processes of $conf left: $(cluster_pids)" >&2
    return 0
}

start() {
    local b p1 p2 cpus host state=
    for b in slurmctld slurmd srun sbatch sinfo scontrol scancel; do
        command -v "$b" >/dev/null || die "$b not found (apt-get install slurm-wlm)"
    done
    [ "$(id -u)" = 0 ] || die "slurmd must run as root"
    if [ -f "$dir/slurmctld.pid" ] && alive "$(cat "$dir/slurmctld.pid")"; then
        die "a cluster already runs in $dir (stop it first)"
    fi
    rm -rf "$dir/state" "$dir/spool" "$dir/log"
    mkdir -p "$dir/state" "$dir/spool" "$dir/log" || die "cannot make folders in $dir"
    p1=$(free_port "") || die "no free TCP port"
    p2=$(free_port "$p1") || die "no free TCP port"
    cpus=$(nproc)
    [ "$cpus" -ge 2 ] || cpus=2 # two tasks fit even on one core
    host=$(hostname -s)
    : >"$dir/plugstack.conf"
    cat >"$conf" <<EOF
# written by scripts/slurm_local.sh: a single-node cluster in $dir
ClusterName=nllmlocal
SlurmctldHost=$host(127.0.0.1)
SlurmctldPort=$p1
SlurmdPort=$p2
SlurmUser=root
SlurmdUser=root
# no munge: a private cluster on 127.0.0.1 (Slurm 22.05 ships these plugins,
# though slurm.conf(5) names only auth/munge)
AuthType=auth/none
CredType=cred/none
# a requeued job may start again after this many seconds (Slurm's default
# 120), and the scheduler looks at pending jobs every second (default 60)
AuthInfo=cred_expire=5
SchedulerParameters=sched_interval=1
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd.log
PlugStackConfig=$dir/plugstack.conf
MailProg=/bin/true
# no cgroups: processes are tracked by process group
ProctrackType=proctrack/pgid
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
MpiDefault=none
ReturnToService=2
SlurmdParameters=config_overrides
NodeName=nllm1 NodeHostname=$host NodeAddr=127.0.0.1 CPUs=$cpus State=UNKNOWN
PartitionName=local Nodes=nllm1 Default=YES MaxTime=INFINITE State=UP
EOF
    # not daemonized (-D) but in the background: their pids are known at once
    # (a daemonizing slurmctld writes its pid file later)
    slurmctld -D -c -f "$conf" </dev/null >"$dir/log/slurmctld.out" 2>&1 &
    echo $! >"$dir/slurmctld.pid"
    slurmd -D -N nllm1 -f "$conf" </dev/null >"$dir/log/slurmd.out" 2>&1 &
    echo $! >"$dir/slurmd.pid"
    for _ in $(seq 1 300); do
        alive "$(cat "$dir/slurmctld.pid")" || break
        alive "$(cat "$dir/slurmd.pid")" || break
        state=$(timeout 5 sinfo -h -n nllm1 -o %t 2>/dev/null)
        [ "$state" = idle ] && break
        sleep 0.1
    done
    if [ "$state" != idle ]; then
        stop
        die "the node did not come up (state '${state:-}'; see $dir/log)"
    fi
    echo "export SLURM_CONF=$conf"
}

case $cmd in
start) start ;;
stop) stop ;;
*) usage ;;
esac
