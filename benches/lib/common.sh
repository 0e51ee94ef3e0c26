# shellcheck shell=bash
# Helpers shared by the end-to-end benchmark scripts in benches/ (sourced, not
# run): tool discovery, a temp dir with a cleanup trap, free ports on
# 127.0.0.1, a throwaway Postgres cluster, PgBouncer, RegionGuard instances
# and a pgbench runner.
#
# The sourcing script sets `set -euo pipefail` itself and may set, before
# calling the functions below:
#   BENCH_NAME   tag for the temp dir and the postgresql.conf comment
#
# Everything started through these functions is stopped (and the temp dir
# removed, unless KEEP=1) by the EXIT trap that bench_workdir installs.

BENCH_REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
BENCH_NAME=${BENCH_NAME:-bench}

log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

# Prints an absolute path for --out FILE (scripts change directory later) and
# creates its directory.
bench_abs_out() { # file
    mkdir -p "$(dirname "$1")"
    echo "$(cd "$(dirname "$1")" && pwd)/$(basename "$1")"
}

# Prints the calling script's header comment: its usage.
bench_usage() { awk 'NR > 1 && /^#/ {sub(/^# ?/, ""); print; next} NR > 1 {exit}' "$0"; }

# Reads the options every benchmark takes — `--out FILE` (made absolute
# now: the scripts change directory later) and `-h`/`--help` — into OUT. A
# script with options of its own defines `bench_option`: called with the
# remaining arguments, it returns 0 and sets BENCH_SHIFT to the number it
# consumed, or returns 1 for an argument it does not know.
bench_args() {
    OUT=""
    while [[ $# -gt 0 ]]; do
        case "$1" in
            --out) OUT=${2:?--out needs a file}; shift 2 ;;
            --out=*) OUT=${1#--out=}; shift ;;
            -h|--help) bench_usage; exit 0 ;;
            *)
                if declare -F bench_option >/dev/null && bench_option "$@"; then
                    shift "$BENCH_SHIFT"
                else
                    echo "unknown argument: $1" >&2
                    bench_usage >&2
                    exit 2
                fi
                ;;
        esac
    done
    if [[ -n "$OUT" ]]; then OUT=$(bench_abs_out "$OUT"); fi
}

bench_check_uint() { # name value
    [[ "$2" =~ ^[0-9]+$ && "$2" -gt 0 ]] || { echo "$1 must be a positive integer" >&2; exit 2; }
}

# --- tools -------------------------------------------------------------------

# Sets PG_BIN, PGBENCH, PSQL and AS_PG (the prefix that runs a command as the
# `postgres` OS user when we are root: Postgres and PgBouncer refuse root).
bench_find_pg_tools() {
    PG_BIN=/usr/lib/postgresql/15/bin
    if [[ ! -x "$PG_BIN/initdb" ]]; then
        command -v initdb >/dev/null || die "Postgres 15 binaries not found (/usr/lib/postgresql/15/bin or PATH)"
        PG_BIN=$(dirname "$(command -v initdb)")
    fi
    PGBENCH=$PG_BIN/pgbench
    [[ -x "$PGBENCH" ]] || PGBENCH=$(command -v pgbench) || die "pgbench not found"
    PSQL=$PG_BIN/psql
    [[ -x "$PSQL" ]] || PSQL=$(command -v psql) || die "psql not found"
    "$PG_BIN/postgres" --version | grep -q ' 15\.' || log "warning: $("$PG_BIN/postgres" --version) is not Postgres 15"
    if [[ $EUID -eq 0 ]]; then
        id postgres >/dev/null 2>&1 || die "running as root needs a 'postgres' OS user"
        AS_PG=(setpriv --reuid=postgres --regid=postgres --init-groups --)
    else
        AS_PG=()
    fi
}

# Sets PGBOUNCER, installing the package when missing and running as root.
bench_find_pgbouncer() {
    if ! command -v pgbouncer >/dev/null; then
        [[ $EUID -eq 0 ]] || die "pgbouncer not installed (apt-get install -y pgbouncer)"
        log "installing pgbouncer"
        DEBIAN_FRONTEND=noninteractive timeout 300 apt-get install -y pgbouncer >/dev/null
    fi
    PGBOUNCER=$(command -v pgbouncer)
}

# Sets RG_BIN: the caller's RG_BIN, else target/release/regionguard after a
# `cargo build --release` (a no-op when up to date).
bench_find_regionguard() {
    if [[ -z "${RG_BIN:-}" ]]; then
        RG_BIN=${CARGO_TARGET_DIR:-$BENCH_REPO/target}/release/regionguard
        log "cargo build --release (no-op when up to date)"
        (cd "$BENCH_REPO" && timeout 1800 cargo build --release --bin regionguard) >&2
    fi
    [[ -x "$RG_BIN" ]] || die "RegionGuard binary $RG_BIN missing"
}

# --- temp dir and cleanup ----------------------------------------------------

RG_PIDS=()
declare -A RG_PID_OF=()
PG_STARTED=""
WORK=""

bench_cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    set +e
    local pid
    for pid in "${RG_PIDS[@]}"; do
        kill -0 "$pid" 2>/dev/null && kill -TERM "$pid"
    done
    for pid in "${RG_PIDS[@]}"; do
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$pid" 2>/dev/null
        wait "$pid" 2>/dev/null
    done
    if [[ -n "$WORK" && -s "$WORK/pgbouncer.pid" ]]; then
        local bpid
        bpid=$(cat "$WORK/pgbouncer.pid")
        kill -TERM "$bpid" 2>/dev/null
        for _ in $(seq 50); do kill -0 "$bpid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$bpid" 2>/dev/null
    fi
    if [[ -n "$PG_STARTED" ]]; then
        "${AS_PG[@]}" "$PG_BIN/pg_ctl" -D "$PGDATA" -m immediate -w -t 30 stop >/dev/null 2>&1
    fi
    cd /
    if [[ -n "$WORK" ]]; then
        if [[ "${KEEP:-0}" == 1 ]]; then
            log "kept $WORK"
        else
            rm -rf "$WORK"
        fi
    fi
    exit "$rc"
}

# Creates WORK (on tmpfs when it has room), owned by postgres when root,
# changes into it and installs the cleanup trap.
bench_workdir() {
    local parent=/tmp
    if [[ -d /dev/shm && -w /dev/shm ]] && (( $(df -Pk /dev/shm | awk 'NR==2 {print $4}') > 2 * 1024 * 1024 )); then
        parent=/dev/shm
    fi
    WORK=$(mktemp -d "$parent/rg-$BENCH_NAME.XXXXXX")
    chmod 755 "$WORK"
    if [[ $EUID -eq 0 ]]; then chown postgres: "$WORK"; fi
    cd "$WORK"
    PGDATA=$WORK/pg
    trap bench_cleanup EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM
}

port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
TAKEN_PORTS=""
# Ports are picked below the kernel's ephemeral range
# (net.ipv4.ip_local_port_range, 32768–60999 by default): a port in it can
# be the local end of some connection (a previous run's pgbench, say), which
# a connect test does not see but which makes the listener's bind fail.
PORT_LOW=20000
PORT_HIGH=$(awk '{print $1 - 1}' /proc/sys/net/ipv4/ip_local_port_range 2>/dev/null || echo 32767)
(( PORT_HIGH > PORT_LOW + 1000 )) || PORT_HIGH=$(( PORT_LOW + 12000 ))
# Prints a free port not yet handed out; use bench_ports, which records it.
free_port() {
    local p
    for _ in $(seq 200); do
        p=$(( PORT_LOW + RANDOM % (PORT_HIGH - PORT_LOW) ))
        if ! port_in_use "$p" && [[ " $TAKEN_PORTS " != *" $p "* ]]; then
            echo "$p"
            return
        fi
    done
    die "no free port found"
}
# bench_ports VAR...: assigns a distinct free port to each named variable.
bench_ports() {
    local v p
    for v in "$@"; do
        p=$(free_port)
        TAKEN_PORTS+=" $p"
        printf -v "$v" '%s' "$p"
    done
}

wait_for() { # description, timeout seconds, command...
    local what=$1 secs=$2
    shift 2
    local deadline=$(( SECONDS + secs ))
    until "$@" >/dev/null 2>&1; do
        (( SECONDS < deadline )) || die "$what not ready after ${secs}s"
        sleep 0.2
    done
}

# --- Postgres ------------------------------------------------------------------

PGUSER_NAME=bench
PGDB=bench

# Starts a throwaway cluster on PG_PORT (SCRAM, fsync off), creates database
# PGDB owned by PGUSER_NAME with password PASSWORD (generated, exported as
# PGPASSWORD for psql and pgbench) and runs `pgbench -i -s SCALE` in it.
bench_start_postgres() { # scale
    local scale=$1
    PASSWORD="bench-$RANDOM$RANDOM"
    export PGPASSWORD=$PASSWORD PGCONNECT_TIMEOUT=10
    log "initdb into $PGDATA (port $PG_PORT)"
    printf '%s\n' "$PASSWORD" > "$WORK/pwfile"
    if [[ $EUID -eq 0 ]]; then chown postgres: "$WORK/pwfile"; fi
    chmod 600 "$WORK/pwfile"
    timeout 120 "${AS_PG[@]}" "$PG_BIN/initdb" -D "$PGDATA" -U "$PGUSER_NAME" --pwfile="$WORK/pwfile" \
        --auth=scram-sha-256 -E UTF8 --locale=C >"$WORK/initdb.log" 2>&1 \
        || { cat "$WORK/initdb.log" >&2; die "initdb failed"; }
    cat >> "$PGDATA/postgresql.conf" <<EOF
# $BENCH_NAME
listen_addresses = '127.0.0.1'
port = $PG_PORT
unix_socket_directories = '$WORK'
max_connections = 200
shared_buffers = 256MB
password_encryption = 'scram-sha-256'
# Throwaway cluster: the measured workloads are read-only anyway.
fsync = off
synchronous_commit = off
full_page_writes = off
EOF
    PG_STARTED=1
    timeout 90 "${AS_PG[@]}" "$PG_BIN/pg_ctl" -D "$PGDATA" -l "$WORK/postgres.log" -w -t 60 start >/dev/null \
        || { cat "$WORK/postgres.log" >&2; die "postgres did not start"; }
    timeout 30 "$PSQL" -X -q -h 127.0.0.1 -p "$PG_PORT" -U "$PGUSER_NAME" -d postgres -c "CREATE DATABASE $PGDB" >/dev/null
    log "pgbench -i -s $scale"
    timeout 600 "$PGBENCH" -i -s "$scale" -q -h 127.0.0.1 -p "$PG_PORT" -U "$PGUSER_NAME" "$PGDB" >"$WORK/pgbench-init.log" 2>&1 \
        || { cat "$WORK/pgbench-init.log" >&2; die "pgbench -i failed"; }
}

psql_at() { # port, sql
    timeout 30 "$PSQL" -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$1" -U "$PGUSER_NAME" -d "$PGDB" -At -c "$2"
}

# --- PgBouncer -------------------------------------------------------------------

# Starts PgBouncer on BOUNCER_PORT in front of PGDB (transaction pooling,
# pool 20, SCRAM towards clients).
# Writes $WORK/pgbouncer.ini (and its auth file) for BOUNCER_PORT: the
# configuration every benchmark's PgBouncer runs with.
bench_pgbouncer_config() {
    cat > "$WORK/userlist.txt" <<EOF
"$PGUSER_NAME" "$PASSWORD"
EOF
    cat > "$WORK/pgbouncer.ini" <<EOF
[databases]
$PGDB = host=127.0.0.1 port=$PG_PORT dbname=$PGDB

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $BOUNCER_PORT
unix_socket_dir =
auth_type = scram-sha-256
auth_file = $WORK/userlist.txt
pool_mode = transaction
default_pool_size = 20
max_client_conn = 200
logfile = $WORK/pgbouncer.log
pidfile = $WORK/pgbouncer.pid
log_connections = 0
log_disconnections = 0
EOF
    if [[ $EUID -eq 0 ]]; then chown postgres: "$WORK/userlist.txt" "$WORK/pgbouncer.ini"; fi
    chmod 600 "$WORK/userlist.txt"
}

bench_start_pgbouncer() {
    bench_pgbouncer_config
    log "starting PgBouncer (port $BOUNCER_PORT, transaction pooling, pool 20)"
    timeout 30 "${AS_PG[@]}" "$PGBOUNCER" -d "$WORK/pgbouncer.ini" \
        || { cat "$WORK/pgbouncer.log" >&2 2>/dev/null; die "pgbouncer did not start"; }
    wait_for "PgBouncer" 30 psql_at "$BOUNCER_PORT" "SELECT 1"
}

# --- RegionGuard -----------------------------------------------------------------

# Prints the start of a RegionGuard config listening on the given port, with
# PGUSER_NAME/PASSWORD as its only (SCRAM) user and, when RG_THREADS is set,
# that many relaying threads; with RG_POOL_MODE=transaction, backends pooled
# between transactions, at most 20 busy per region (PgBouncer's pool size
# here); the caller appends regions, tenancy and so on.
bench_rg_config_head() { # port default_region
    local verifier
    verifier=$(printf '%s\n' "$PASSWORD" | "$RG_BIN" hash-password)
    cat <<EOF
default_region = "$2"

[listen]
address = "127.0.0.1:$1"
max_clients = 1000
shutdown_timeout_secs = 2
${RG_THREADS:+threads = $RG_THREADS}

[logging]
level = "warn"
${RG_POOL_MODE:+
[backend_pool]
mode = \"$RG_POOL_MODE\"
max_active_per_region = 20
}
[[auth.users]]
name = "$PGUSER_NAME"
verifier = "$verifier"
EOF
}

# Prints a [regions.NAME] block whose one host is the bench cluster.
bench_rg_region() { # name [db_user [db_password]]
    cat <<EOF

[regions.$1]
zone = "$1"

[[regions.$1.hosts]]
host = "127.0.0.1"
port = $PG_PORT
dbname = "$PGDB"
user = "${2:-$PGUSER_NAME}"
password = "${3:-$PASSWORD}"
EOF
}

# Runs a command in the background in a session of its own, as a service
# manager (or PgBouncer's `-d`, which calls setsid) would run it. With the
# kernel's autogroup scheduling (/proc/sys/kernel/sched_autogroup_enabled),
# each session shares one CPU share: a proxy left in this script's session
# would compete with pgbench for one share while a daemonized PgBouncer and
# every Postgres backend (each calls setsid) have one of their own — measured
# on the 2-core machine, that alone cost a relay up to 15 % of its throughput.
# Without job control a background job is not a process-group leader, so
# setsid execs in place and $! is the command's pid.
bench_own_session() { # command args...
    if command -v setsid >/dev/null; then
        setsid "$@" </dev/null &
    else
        "$@" </dev/null &
    fi
}

# Starts `regionguard serve` with WORK/NAME.toml on PORT, logging to
# WORK/NAME.log; the pid is appended to RG_PIDS (stopped by the trap) and
# kept in RG_PID_OF[NAME].
bench_start_regionguard() { # name port
    local name=$1 port=$2
    "$RG_BIN" check-config "$WORK/$name.toml" >"$WORK/$name.check.log" 2>&1 \
        || { cat "$WORK/$name.check.log" >&2; die "RegionGuard config $name.toml invalid"; }
    log "starting RegionGuard '$name' (port $port): $RG_BIN"
    bench_own_session "$RG_BIN" serve --config "$WORK/$name.toml" >"$WORK/$name.log" 2>&1
    local pid=$!
    RG_PIDS+=("$pid")
    RG_PID_OF[$name]=$pid
    wait_for "RegionGuard '$name'" 30 psql_at "$port" "SELECT 1"
    kill -0 "$pid" 2>/dev/null || { cat "$WORK/$name.log" >&2; die "RegionGuard '$name' exited"; }
}

# Builds and starts benches/byte_relay.rs on PORT in front of Postgres on
# UPSTREAM, logging to WORK/byte_relay.log; its pid (RELAY_PID) joins
# RG_PIDS, so the trap stops it and bench_regionguards_alive watches it.
bench_start_byte_relay() { # port upstream_port
    local port=$1 upstream=$2 exe
    log "cargo bench --no-run --bench byte_relay (no-op when up to date)"
    exe=$(cd "$BENCH_REPO" && timeout 1800 cargo bench --no-run --bench byte_relay \
            --message-format=json 2>/dev/null \
        | grep -o '"executable":"[^"]*byte_relay[^"]*"' | tail -n 1 | cut -d'"' -f4)
    [[ -x "$exe" ]] || die "byte_relay was not built"
    log "starting the byte relay (port $port): $exe"
    bench_own_session "$exe" "127.0.0.1:$port" "127.0.0.1:$upstream" >"$WORK/byte_relay.log" 2>&1
    RELAY_PID=$!
    RG_PIDS+=("$RELAY_PID")
    wait_for "byte relay" 30 psql_at "$port" "SELECT 1"
}

# True when every RegionGuard started is still running.
bench_regionguards_alive() {
    local pid
    for pid in "${RG_PIDS[@]}"; do kill -0 "$pid" 2>/dev/null || return 1; done
}

# --- pgbench ---------------------------------------------------------------------

# Runs pgbench for SECS seconds against PORT with the given extra arguments
# (query mode, clients, script...); prints "tps latency_ms transactions" or
# returns non-zero after printing pgbench's last lines to stderr.
bench_pgbench() { # port secs pgbench-args...
    local port=$1 secs=$2 out
    shift 2
    if ! out=$(timeout $(( secs + 60 )) "$PGBENCH" -n -T "$secs" \
            -h 127.0.0.1 -p "$port" -U "$PGUSER_NAME" "$@" "$PGDB" 2>&1); then
        printf '%s\n' "$out" | tail -n 5 >&2
        return 1
    fi
    local tps lat tx
    tps=$(printf '%s\n' "$out" | awk '/^tps = / {print $3; exit}')
    lat=$(printf '%s\n' "$out" | awk '/^latency average = / {print $4; exit}')
    tx=$(printf '%s\n' "$out" | awk '/^number of transactions actually processed: / {split($NF, a, "/"); print a[1]; exit}')
    [[ -n "$tps" && -n "$lat" && -n "$tx" ]] || { printf '%s\n' "$out" | tail -n 5 >&2; return 1; }
    echo "$tps $lat $tx"
}

# CPU time (user + system) a process has used so far, in clock ticks.
proc_cpu_ticks() { # pid
    awk '{print $14 + $15}' "/proc/$1/stat"
}
CLK_TCK=$(getconf CLK_TCK)

# CPU time (user, nice, system, irq, softirq) of the whole machine so far,
# all CPUs, in clock ticks: with a proxy's own time it shows where the rest
# of a transaction's CPU went (Postgres, pgbench).
machine_busy_ticks() {
    awk '/^cpu / {print $2 + $3 + $4 + $7 + $8}' /proc/stat
}

# CPU time (user + system) of the bench cluster's Postgres so far, in clock
# ticks: the postmaster's own, the backends and workers running now, and
# (the postmaster's cutime/cstime; backends have no children of their own,
# so theirs are 0) those that have exited, so a difference over a run
# counts backends that connected or disconnected during it. A backend
# reaped while its siblings are read would be missed (no longer listed,
# not yet read in the postmaster's cutime), so the read is repeated until
# the postmaster's counts are the same before and after it.
postgres_cpu_ticks() {
    local pm before after live child
    pm=$(head -n 1 "$PGDATA/postmaster.pid" 2>/dev/null) || { echo 0; return 0; }
    for _ in $(seq 50); do
        before=$(awk '{print $14 + $15 + $16 + $17}' "/proc/$pm/stat" 2>/dev/null) || { echo 0; return 0; }
        live=$(for child in $(ps --ppid "$pm" -o pid= 2>/dev/null || true); do
                   cat "/proc/$child/stat" 2>/dev/null || true
               done | awk '{s += $14 + $15} END {print s + 0}')
        after=$(awk '{print $14 + $15 + $16 + $17}' "/proc/$pm/stat" 2>/dev/null) || { echo 0; return 0; }
        [[ $before == "$after" ]] && break
        sleep 0.05
    done
    echo $(( after + live ))
}

# --- arithmetic ------------------------------------------------------------------

add() { awk -v a="${1:-0}" -v b="$2" 'BEGIN {print a + b}'; }
avg() { awk -v s="$1" -v n="$2" -v f="$3" 'BEGIN {printf f, s / n}'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a == "" || b == "" || b == 0) print "n/a"; else printf "%.2f", a / b }'; }
