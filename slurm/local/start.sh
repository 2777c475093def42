#!/usr/bin/env bash
# Start a single-node SLURM cluster (munged + slurmctld + slurmd) whose files all live in DIR.
#
#   slurm/local/start.sh [DIR]        DIR defaults to a fresh mktemp directory
#   eval "$(slurm/local/start.sh)"    ... or: source DIR/env.sh
#
# stdout carries only the `export ...` lines; progress and errors go to stderr.
# Installs Debian's munge/slurm packages first when slurmctld is missing (root only).
# Running it again on a DIR whose cluster is up returns at once. Stop with slurm/local/stop.sh DIR.
# On failure it prints the daemon logs, stops what it started (DIR is kept) and exits 1.
# Environment: SLURM_LOCAL_WAIT_S (default 60) bounds the wait for the node to become idle;
# SLURM_LOCAL_PORT (default 6817) is where the search for a free slurmctld/slurmd port pair starts.
# No slurmdbd: `sacct` does not work on this cluster.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
TEMPLATE="$HERE/slurm.conf.in"
WAIT_S="${SLURM_LOCAL_WAIT_S:-60}"
export PATH="$PATH:/usr/sbin:/sbin"

say() { echo "slurm-local: $*" >&2; }
die() { say "error: $*"; exit 1; }

print_logs() {
    local f
    for f in "$DIR/log/munged.log" "$DIR/log/slurmctld.log" "$DIR/log/slurmd.log"; do
        [[ -f "$f" ]] || continue
        echo "----- $f (last 40 lines) -----" >&2
        tail -n 40 "$f" >&2 || true
    done
}

fail_started() {  # fail_started MESSAGE: show the logs, stop what this run started (keep DIR), exit 1
    print_logs
    bash "$HERE/stop.sh" --keep "$DIR" >&2 || true
    die "$1"
}

pid_alive() {  # pid_alive PIDFILE: the process named in PIDFILE is running
    local pid
    [[ -s "$1" ]] || return 1
    pid="$(cat "$1" 2>/dev/null)" || return 1
    [[ "$pid" =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null
}

install_packages() {
    local need=()
    command -v slurmctld >/dev/null 2>&1 || need+=(munge slurmctld slurmd slurm-client)
    # Without the PMIx library srun --mpi=pmix was seen to hang; it must be there before slurmd
    # starts. (grep without -q: with pipefail, an early exit would SIGPIPE ldconfig.)
    if ! ldconfig -p 2>/dev/null | grep 'libpmix\.so\.2' >/dev/null; then need+=(libpmix2); fi
    [[ ${#need[@]} -eq 0 ]] && return 0
    if [[ "$(id -u)" -ne 0 ]]; then
        if command -v slurmctld >/dev/null 2>&1; then
            say "warning: libpmix2 missing and not root: srun --mpi=pmix will not work (pmi2 does)"
            return 0
        fi
        die "slurmctld not found and not root: install as root: apt-get install --no-install-recommends munge slurmctld slurmd slurm-client libpmix2"
    fi
    command -v apt-get >/dev/null 2>&1 || die "slurmctld not found and no apt-get: install munge + SLURM (slurmctld, slurmd, client) by hand"
    say "installing ${need[*]} (apt-get, once)"
    local t0=$SECONDS
    export DEBIAN_FRONTEND=noninteractive
    local log="$DIR/log/apt.log"
    apt-get -o DPkg::Lock::Timeout=300 update >"$log" 2>&1 || { tail -n 20 "$log" >&2; die "apt-get update failed (log: $log)"; }
    apt-get -o DPkg::Lock::Timeout=300 install -y --no-install-recommends "${need[@]}" >>"$log" 2>&1 \
        || { tail -n 20 "$log" >&2; die "apt-get install ${need[*]} failed (log: $log)"; }
    say "installed in $((SECONDS - t0)) s"
}

free_port_pair() {  # first P >= $1 such that P and P+1 accept no TCP connection on 127.0.0.1
    local p=$1
    while (( p < 65000 )); do
        if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null && ! (exec 3<>"/dev/tcp/127.0.0.1/$((p + 1))") 2>/dev/null; then
            echo "$p"; return 0
        fi
        p=$((p + 2))
    done
    return 1
}

check_traversable() {  # munged refuses a socket below a directory that others cannot enter
    local d="$1"
    while [[ "$d" != "/" ]]; do
        local mode
        mode="$(stat -c '%a' "$d")"
        (( (8#$mode & 8#001) != 0 )) || die "directory $d (mode $mode) is not world-executable; munged needs every directory above its socket at mode 755 (chmod o+x $d, or use another DIR)"
        d="$(dirname "$d")"
    done
}

emit_env() {
    echo "export SLURM_CONF='$DIR/slurm.conf'"
}

# ---------------------------------------------------------------- DIR
if [[ $# -gt 1 ]]; then die "usage: start.sh [DIR]"; fi
if [[ $# -eq 1 ]]; then
    mkdir -p "$1"
    DIR="$(cd "$1" && pwd)"
else
    DIR="$(mktemp -d "${TMPDIR:-/tmp}/brainalign-slurm.XXXXXX")"
fi
chmod 755 "$DIR"
mkdir -p "$DIR/log"

# ---------------------------------------------------------------- already up?
if [[ -f "$DIR/slurm.conf" ]] && pid_alive "$DIR/run/munged.pid" && pid_alive "$DIR/run/slurmctld.pid" \
    && pid_alive "$DIR/run/slurmd.pid" \
    && SLURM_CONF="$DIR/slurm.conf" sinfo -h -o '%T' 2>/dev/null | grep -E '^(idle|mixed|allocated|completing)' >/dev/null; then
    say "already running in $DIR"
    emit_env
    exit 0
fi
for d in slurmd slurmctld munged; do
    if pid_alive "$DIR/run/$d.pid"; then
        die "$d is running from $DIR but the cluster is not healthy: run slurm/local/stop.sh --keep $DIR first"
    fi
done

install_packages
[[ "$(id -u)" -eq 0 ]] || die "must run as root (slurmd runs every job as its submitting user)"
for exe in munged slurmctld slurmd sinfo; do
    command -v "$exe" >/dev/null 2>&1 || die "$exe not found on PATH after install"
done
[[ -f "$TEMPLATE" ]] || die "template $TEMPLATE is missing"

# ---------------------------------------------------------------- layout
mkdir -p "$DIR"/{munge,state,spool,run,log}
chmod 755 "$DIR/munge" "$DIR/run" "$DIR/log"
chmod 700 "$DIR/state" "$DIR/spool"
touch "$DIR/.brainalign-slurm"   # marker: stop.sh removes only directories that carry it
check_traversable "$DIR/munge"
MUNGE_SOCKET="$DIR/munge/munge.socket"
if [[ ! -s "$DIR/munge/munge.key" ]]; then
    (umask 077; dd if=/dev/urandom of="$DIR/munge/munge.key" bs=1024 count=1 status=none)
fi
chmod 600 "$DIR/munge/munge.key"

# ---------------------------------------------------------------- slurm.conf
hw="$(slurmd -C 2>/dev/null | head -n 1)" || true
CPUS="$(sed -n 's/.*CPUs=\([0-9]\+\).*/\1/p' <<<"$hw")"
REAL_MEMORY="$(sed -n 's/.*RealMemory=\([0-9]\+\).*/\1/p' <<<"$hw")"
[[ -n "$CPUS" ]] || CPUS="$(nproc)"
[[ -n "$REAL_MEMORY" ]] || REAL_MEMORY=1000
CTLD_PORT="$(free_port_pair "${SLURM_LOCAL_PORT:-6817}")" || die "no free TCP port pair found for slurmctld/slurmd"
SLURMD_PORT=$((CTLD_PORT + 1))
sed -e "s|@DIR@|$DIR|g" -e "s|@MUNGE_SOCKET@|$MUNGE_SOCKET|g" -e "s|@CPUS@|$CPUS|g" \
    -e "s|@REAL_MEMORY@|$REAL_MEMORY|g" -e "s|@CTLD_PORT@|$CTLD_PORT|g" -e "s|@SLURMD_PORT@|$SLURMD_PORT|g" \
    "$TEMPLATE" >"$DIR/slurm.conf.tmp"
if grep -q '@[A-Z_]*@' "$DIR/slurm.conf.tmp"; then die "unfilled placeholder in $DIR/slurm.conf.tmp"; fi
mv "$DIR/slurm.conf.tmp" "$DIR/slurm.conf"
chmod 644 "$DIR/slurm.conf"
export SLURM_CONF="$DIR/slurm.conf"
{ echo "# source this file to talk to the local cluster in $DIR"; emit_env; } >"$DIR/env.sh"

# ---------------------------------------------------------------- daemons
t0=$SECONDS
say "starting munged, slurmctld, slurmd in $DIR (CPUs=$CPUS RealMemory=$REAL_MEMORY ports $CTLD_PORT/$SLURMD_PORT)"
rm -f "$MUNGE_SOCKET" "$MUNGE_SOCKET.lock"
munged --force --key-file="$DIR/munge/munge.key" --socket="$MUNGE_SOCKET" \
    --pid-file="$DIR/run/munged.pid" --log-file="$DIR/log/munged.log" --seed-file="$DIR/munge/munge.seed" \
    || fail_started "munged failed to start"
for _ in $(seq 1 50); do [[ -S "$MUNGE_SOCKET" ]] && break; sleep 0.1; done
[[ -S "$MUNGE_SOCKET" ]] || fail_started "munged socket $MUNGE_SOCKET did not appear"

slurmctld || fail_started "slurmctld failed to start"
slurmd -N localhost || fail_started "slurmd failed to start"

state=""
while (( SECONDS - t0 < WAIT_S )); do
    state="$(sinfo -h -n localhost -o '%T' 2>/dev/null || true)"
    [[ "$state" == "idle" ]] && break
    sleep 0.5
done
if [[ "$state" != "idle" ]]; then
    fail_started "node localhost not idle after ${WAIT_S} s (state: '${state:-no answer}'); logs above, kept in $DIR/log"
fi
say "cluster up in $((SECONDS - t0)) s; source $DIR/env.sh (stop: slurm/local/stop.sh $DIR)"
emit_env
