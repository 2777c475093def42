#!/usr/bin/env bash
# Stop the single-node cluster started by slurm/local/start.sh and remove its directory.
#
#   slurm/local/stop.sh [--keep] [DIR]
#
# DIR defaults to the directory of $SLURM_CONF (as exported by DIR/env.sh).
# Cancels the cluster's jobs, then stops slurmd, slurmctld and munged by the PIDs in their pid
# files (TERM, wait up to 10 s, then KILL); never by process name. --keep leaves DIR (logs, state).
# Only a directory carrying start.sh's marker file is removed. Stopping a stopped cluster is a no-op.
set -euo pipefail
export PATH="$PATH:/usr/sbin:/sbin"

say() { echo "slurm-local: $*" >&2; }
die() { say "error: $*"; exit 1; }

KEEP=0
args=()
for a in "$@"; do
    case "$a" in
        --keep) KEEP=1 ;;
        -h|--help) sed -n '2,9p' "$0"; exit 0 ;;
        *) args+=("$a") ;;
    esac
done
if [[ ${#args[@]} -gt 1 ]]; then die "usage: stop.sh [--keep] [DIR]"; fi
if [[ ${#args[@]} -eq 1 ]]; then
    DIR="${args[0]}"
elif [[ -n "${SLURM_CONF:-}" ]]; then
    DIR="$(dirname "$SLURM_CONF")"
else
    die "no DIR given and SLURM_CONF is not set"
fi
if [[ ! -d "$DIR" ]]; then say "nothing to stop: $DIR does not exist"; exit 0; fi
DIR="$(cd "$DIR" && pwd)"
[[ -f "$DIR/.brainalign-slurm" ]] || die "$DIR was not made by slurm/local/start.sh (no .brainalign-slurm marker)"

read_pid() {  # read_pid NAME: the live pid in DIR/run/NAME.pid, or nothing
    local f="$DIR/run/$1.pid" pid
    [[ -s "$f" ]] || return 0
    pid="$(cat "$f")"
    [[ "$pid" =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null && echo "$pid"
    return 0
}

stop_daemons() {  # TERM all daemons at once (each takes 1-2 s to exit), wait up to 10 s, then KILL
    local name pid pids=() names=()
    for name in slurmd slurmctld munged; do
        pid="$(read_pid "$name")"
        [[ -n "$pid" ]] || continue
        kill -TERM "$pid" 2>/dev/null || true
        pids+=("$pid"); names+=("$name")
    done
    local i alive
    for _ in $(seq 1 100); do
        alive=0
        for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
        [[ $alive -eq 0 ]] && break
        sleep 0.1
    done
    for i in "${!pids[@]}"; do
        if kill -0 "${pids[$i]}" 2>/dev/null; then
            say "${names[$i]} (${pids[$i]}) ignored SIGTERM for 10 s: SIGKILL"
            kill -KILL "${pids[$i]}" 2>/dev/null || true
        fi
    done
    rm -f "$DIR"/run/{slurmd,slurmctld,munged}.pid
}

# Cancel the cluster's jobs while slurmd still runs, so their steps end with it.
if [[ -f "$DIR/slurm.conf" ]] && command -v squeue >/dev/null 2>&1; then
    export SLURM_CONF="$DIR/slurm.conf"
    jobs="$(timeout 10 squeue -h -o '%A' 2>/dev/null || true)"
    if [[ -n "$jobs" ]]; then
        # shellcheck disable=SC2086
        timeout 10 scancel $jobs 2>/dev/null || true
        for _ in $(seq 1 40); do
            [[ -z "$(timeout 5 squeue -h -t all -o '%A %T' 2>/dev/null | grep -vE 'COMPLETED|CANCELLED|FAILED|TIMEOUT|PREEMPTED|NODE_FAIL|OUT_OF_MEMORY|BOOT_FAIL|DEADLINE' || true)" ]] && break
            sleep 0.25
        done
    fi
fi

stop_daemons

if [[ $KEEP -eq 1 ]]; then
    say "stopped; kept $DIR"
else
    rm -rf -- "$DIR"
    say "stopped; removed $DIR"
fi
