#!/usr/bin/env bash
# Pass-through throughput: pgbench -S against Postgres directly, through
# PgBouncer (transaction pooling) and through RegionGuard, in one run, on
# 127.0.0.1 only.
#
# Usage: benches/pgbench_compare.sh [--out FILE]
#
# Environment:
#   DURATION   seconds per pgbench run (default 15)
#   ROUNDS     measured runs per (mode, clients, target); TPS and latency are
#              averaged (default 1)
#   CLIENTS    client counts (default "8 64")
#   MODES      pgbench query modes (default "simple extended")
#   WARMUP     seconds of warm-up per target before measuring (default 3)
#   RG_BIN     RegionGuard binary (default: target/release/regionguard,
#              built with `cargo build --release` when needed)
#   KEEP=1     keep the temp directory (logs, configs) for inspection
#
# Everything (Postgres cluster, PgBouncer, RegionGuard) lives in a temp dir
# and is stopped and removed on exit. Compare the ratios of one run; the
# absolute numbers depend on the machine and its neighbours.
set -euo pipefail

DURATION=${DURATION:-15}
ROUNDS=${ROUNDS:-1}
CLIENTS=${CLIENTS:-"8 64"}
MODES=${MODES:-"simple extended"}
WARMUP=${WARMUP:-3}
THREADS=2
SCALE=10
OUT=""

usage() { sed -n '2,21p' "$0" | sed 's/^# \{0,1\}//'; }
while [[ $# -gt 0 ]]; do
    case "$1" in
        --out) OUT=${2:?--out needs a file}; shift 2 ;;
        --out=*) OUT=${1#--out=}; shift ;;
        -h|--help) usage; exit 0 ;;
        *) echo "unknown argument: $1" >&2; usage >&2; exit 2 ;;
    esac
done
[[ "$DURATION" =~ ^[0-9]+$ && "$DURATION" -gt 0 ]] || { echo "DURATION must be a positive integer" >&2; exit 2; }
[[ "$ROUNDS" =~ ^[0-9]+$ && "$ROUNDS" -gt 0 ]] || { echo "ROUNDS must be a positive integer" >&2; exit 2; }
if [[ -n "$OUT" ]]; then
    # Resolve now: the script changes directory later.
    mkdir -p "$(dirname "$OUT")"
    OUT="$(cd "$(dirname "$OUT")" && pwd)/$(basename "$OUT")"
fi

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

# --- tools -------------------------------------------------------------------

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

if ! command -v pgbouncer >/dev/null; then
    [[ $EUID -eq 0 ]] || die "pgbouncer not installed (apt-get install -y pgbouncer)"
    log "installing pgbouncer"
    DEBIAN_FRONTEND=noninteractive timeout 300 apt-get install -y pgbouncer >/dev/null
fi
PGBOUNCER=$(command -v pgbouncer)

if [[ -z "${RG_BIN:-}" ]]; then
    RG_BIN=${CARGO_TARGET_DIR:-$REPO/target}/release/regionguard
    log "cargo build --release (no-op when up to date)"
    (cd "$REPO" && timeout 1800 cargo build --release --bin regionguard) >&2
fi
[[ -x "$RG_BIN" ]] || die "RegionGuard binary $RG_BIN missing"

# Postgres refuses to run as root, and so does PgBouncer: run both as the
# `postgres` OS user then.
if [[ $EUID -eq 0 ]]; then
    id postgres >/dev/null 2>&1 || die "running as root needs a 'postgres' OS user"
    AS_PG=(setpriv --reuid=postgres --regid=postgres --init-groups --)
else
    AS_PG=()
fi

# --- temp dir and cleanup ----------------------------------------------------

TMP_PARENT=/tmp
if [[ -d /dev/shm && -w /dev/shm ]] && (( $(df -Pk /dev/shm | awk 'NR==2 {print $4}') > 2 * 1024 * 1024 )); then
    TMP_PARENT=/dev/shm
fi
WORK=$(mktemp -d "$TMP_PARENT/rg-pgbench.XXXXXX")
chmod 755 "$WORK"
[[ $EUID -eq 0 ]] && chown postgres: "$WORK"
cd "$WORK"
PGDATA=$WORK/pg
RG_PID=""
PG_STARTED=""

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    set +e
    if [[ -n "$RG_PID" ]] && kill -0 "$RG_PID" 2>/dev/null; then
        kill -TERM "$RG_PID"
        for _ in $(seq 50); do kill -0 "$RG_PID" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$RG_PID" 2>/dev/null
        wait "$RG_PID" 2>/dev/null
    fi
    if [[ -s "$WORK/pgbouncer.pid" ]]; then
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
    if [[ "${KEEP:-0}" == 1 ]]; then
        log "kept $WORK"
    else
        rm -rf "$WORK"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
free_port() {
    local p
    for _ in $(seq 200); do
        p=$(( 20000 + RANDOM % 30000 ))
        if ! port_in_use "$p" && [[ " ${TAKEN_PORTS:-} " != *" $p "* ]]; then
            TAKEN_PORTS="${TAKEN_PORTS:-} $p"
            echo "$p"
            return
        fi
    done
    die "no free port found"
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
PASSWORD="bench-$RANDOM$RANDOM"
PG_PORT=$(free_port)
BOUNCER_PORT=$(free_port)
RG_PORT=$(free_port)
export PGPASSWORD=$PASSWORD PGCONNECT_TIMEOUT=10

log "initdb into $PGDATA (port $PG_PORT)"
printf '%s\n' "$PASSWORD" > "$WORK/pwfile"
[[ $EUID -eq 0 ]] && chown postgres: "$WORK/pwfile"
chmod 600 "$WORK/pwfile"
timeout 120 "${AS_PG[@]}" "$PG_BIN/initdb" -D "$PGDATA" -U "$PGUSER_NAME" --pwfile="$WORK/pwfile" \
    --auth=scram-sha-256 -E UTF8 --locale=C >"$WORK/initdb.log" 2>&1 \
    || { cat "$WORK/initdb.log" >&2; die "initdb failed"; }
cat >> "$PGDATA/postgresql.conf" <<EOF
# pgbench_compare.sh
listen_addresses = '127.0.0.1'
port = $PG_PORT
unix_socket_directories = '$WORK'
max_connections = 200
shared_buffers = 256MB
password_encryption = 'scram-sha-256'
# Throwaway cluster: the measured workload (-S) is read-only anyway.
fsync = off
synchronous_commit = off
full_page_writes = off
EOF
PG_STARTED=1
timeout 90 "${AS_PG[@]}" "$PG_BIN/pg_ctl" -D "$PGDATA" -l "$WORK/postgres.log" -w -t 60 start >/dev/null \
    || { cat "$WORK/postgres.log" >&2; die "postgres did not start"; }

psql_at() { # port, sql
    timeout 30 "$PSQL" -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$1" -U "$PGUSER_NAME" -d "$PGDB" -At -c "$2"
}
timeout 30 "$PSQL" -X -q -h 127.0.0.1 -p "$PG_PORT" -U "$PGUSER_NAME" -d postgres -c "CREATE DATABASE $PGDB" >/dev/null
log "pgbench -i -s $SCALE"
timeout 600 "$PGBENCH" -i -s "$SCALE" -q -h 127.0.0.1 -p "$PG_PORT" -U "$PGUSER_NAME" "$PGDB" >"$WORK/pgbench-init.log" 2>&1 \
    || { cat "$WORK/pgbench-init.log" >&2; die "pgbench -i failed"; }

# --- PgBouncer -------------------------------------------------------------------

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
log "starting PgBouncer (port $BOUNCER_PORT, transaction pooling, pool 20)"
timeout 30 "${AS_PG[@]}" "$PGBOUNCER" -d "$WORK/pgbouncer.ini" \
    || { cat "$WORK/pgbouncer.log" >&2 2>/dev/null; die "pgbouncer did not start"; }
wait_for "PgBouncer" 30 psql_at "$BOUNCER_PORT" "SELECT 1"

# --- RegionGuard -----------------------------------------------------------------

VERIFIER=$(printf '%s\n' "$PASSWORD" | "$RG_BIN" hash-password)
cat > "$WORK/regionguard.toml" <<EOF
default_region = "local"

[listen]
address = "127.0.0.1:$RG_PORT"
max_clients = 1000
shutdown_timeout_secs = 2

[[auth.users]]
name = "$PGUSER_NAME"
verifier = "$VERIFIER"

[regions.local]
zone = "local"

[[regions.local.hosts]]
host = "127.0.0.1"
port = $PG_PORT
dbname = "$PGDB"
user = "$PGUSER_NAME"
password = "$PASSWORD"

[logging]
level = "warn"
EOF
log "starting RegionGuard (port $RG_PORT): $RG_BIN"
"$RG_BIN" serve --config "$WORK/regionguard.toml" >"$WORK/regionguard.log" 2>&1 &
RG_PID=$!
wait_for "RegionGuard" 30 psql_at "$RG_PORT" "SELECT 1"
kill -0 "$RG_PID" 2>/dev/null || { cat "$WORK/regionguard.log" >&2; die "RegionGuard exited"; }

# --- measuring ---------------------------------------------------------------------

TARGETS=(direct pgbouncer regionguard)
declare -A PORT_OF=([direct]=$PG_PORT [pgbouncer]=$BOUNCER_PORT [regionguard]=$RG_PORT)
declare -A LABEL=([direct]="direct" [pgbouncer]="PgBouncer" [regionguard]="RegionGuard")
declare -A TPS_SUM LAT_SUM RUNS
FAILED=0

# Runs pgbench; prints "tps latency_ms" or returns non-zero.
run_pgbench() { # target mode clients seconds
    local target=$1 mode=$2 clients=$3 secs=$4 out
    if ! out=$(timeout $(( secs + 60 )) "$PGBENCH" -n -S -M "$mode" -c "$clients" -j "$THREADS" -T "$secs" \
            -h 127.0.0.1 -p "${PORT_OF[$target]}" -U "$PGUSER_NAME" "$PGDB" 2>&1); then
        printf '%s\n' "$out" | tail -n 5 >&2
        return 1
    fi
    local tps lat
    tps=$(printf '%s\n' "$out" | awk '/^tps = / {print $3; exit}')
    lat=$(printf '%s\n' "$out" | awk '/^latency average = / {print $4; exit}')
    [[ -n "$tps" && -n "$lat" ]] || { printf '%s\n' "$out" | tail -n 5 >&2; return 1; }
    echo "$tps $lat"
}

if (( WARMUP > 0 )); then
    for t in "${TARGETS[@]}"; do
        log "warm-up: $t ${WARMUP}s"
        run_pgbench "$t" simple 8 "$WARMUP" >/dev/null || die "warm-up against $t failed"
    done
fi

cells=0
for c in $CLIENTS; do for m in $MODES; do cells=$((cells + 1)); done; done
est=$(( cells * ${#TARGETS[@]} * ROUNDS * DURATION ))
log "measuring: $cells cells x ${#TARGETS[@]} targets x $ROUNDS round(s) x ${DURATION}s = ~${est}s"

cell=0
for mode in $MODES; do
    for clients in $CLIENTS; do
        for (( r = 0; r < ROUNDS; r++ )); do
            # Rotate the order so no target always runs first (or last).
            for (( i = 0; i < ${#TARGETS[@]}; i++ )); do
                t=${TARGETS[$(( (i + cell + r) % ${#TARGETS[@]} ))]}
                key="$mode/$clients/$t"
                if res=$(run_pgbench "$t" "$mode" "$clients" "$DURATION"); then
                    read -r tps lat <<<"$res"
                    log "$(printf '%-8s %3s clients  %-11s tps %10.1f  lat %7.3f ms' "$mode" "$clients" "$t" "$tps" "$lat")"
                    TPS_SUM[$key]=$(awk -v a="${TPS_SUM[$key]:-0}" -v b="$tps" 'BEGIN {print a + b}')
                    LAT_SUM[$key]=$(awk -v a="${LAT_SUM[$key]:-0}" -v b="$lat" 'BEGIN {print a + b}')
                    RUNS[$key]=$(( ${RUNS[$key]:-0} + 1 ))
                else
                    log "$mode $clients clients $t: pgbench FAILED"
                    FAILED=1
                fi
            done
        done
        cell=$((cell + 1))
    done
done
kill -0 "$RG_PID" 2>/dev/null || { log "RegionGuard exited during the run"; FAILED=1; }

# --- report --------------------------------------------------------------------------

avg() { awk -v s="$1" -v n="$2" -v f="$3" 'BEGIN {printf f, s / n}'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a == "" || b == "" || b == 0) print "n/a"; else printf "%.2f", a / b }'; }

MD="| mode | clients | target | TPS | avg latency (ms) | ÷ PgBouncer | ÷ direct |
|---|---:|---|---:|---:|---:|---:|"
printf '\n%-9s %7s  %-12s %11s %12s %12s %9s\n' mode clients target TPS "latency ms" "÷PgBouncer" "÷direct"
for mode in $MODES; do
    for clients in $CLIENTS; do
        declare -A TPS=()
        for t in "${TARGETS[@]}"; do
            key="$mode/$clients/$t"
            if [[ -n "${RUNS[$key]:-}" ]]; then
                TPS[$t]=$(avg "${TPS_SUM[$key]}" "${RUNS[$key]}" "%.1f")
            else
                TPS[$t]=""
            fi
        done
        for t in "${TARGETS[@]}"; do
            key="$mode/$clients/$t"
            if [[ -n "${TPS[$t]}" ]]; then
                lat=$(avg "${LAT_SUM[$key]}" "${RUNS[$key]}" "%.3f")
                tps=${TPS[$t]}
            else
                lat="FAIL"; tps="FAIL"
            fi
            vb=$(ratio "${TPS[$t]}" "${TPS[pgbouncer]}")
            vd=$(ratio "${TPS[$t]}" "${TPS[direct]}")
            printf '%-9s %7s  %-12s %11s %12s %12s %9s\n' "$mode" "$clients" "${LABEL[$t]}" "$tps" "$lat" "$vb" "$vd"
            if [[ $t == regionguard ]]; then
                MD+=$'\n'"| $mode | $clients | **${LABEL[$t]}** | **$tps** | $lat | **$vb** | **$vd** |"
            else
                MD+=$'\n'"| $mode | $clients | ${LABEL[$t]} | $tps | $lat | $vb | $vd |"
            fi
        done
        unset TPS
    done
done

if [[ -n "$OUT" ]]; then
    {
        echo "<!-- generated by benches/pgbench_compare.sh on $(date -u '+%Y-%m-%d %H:%M UTC') -->"
        echo "pgbench -n -S -j $THREADS -T $DURATION, scale $SCALE, $ROUNDS round(s) per cell;" \
             "$(nproc) CPUs; $("$PG_BIN/postgres" --version); $("$PGBOUNCER" --version | head -n1) (transaction pooling, pool 20);" \
             "RegionGuard $(cd "$REPO" && git rev-parse --short HEAD 2>/dev/null || echo unknown)."
        echo
        echo "$MD"
    } > "$OUT"
    log "wrote $OUT"
fi
(( FAILED == 0 )) || die "some runs failed"
