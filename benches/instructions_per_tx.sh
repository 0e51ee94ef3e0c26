#!/usr/bin/env bash
# Instructions per transaction: a proxy's own work per pgbench -S
# transaction, counted by valgrind (callgrind), for PgBouncer (transaction
# pooling, as in pgbench_compare.sh) and RegionGuard (and optionally a
# second RegionGuard binary) side by side. Unlike TPS and CPU time, an instruction count does not move with
# the neighbours of a shared machine, so it shows a change to the proxy's
# hot path that a throughput run would drown in noise. It does not count
# the kernel's share (system calls, scheduling), which pgbench_compare.sh's
# CPU time per transaction includes.
#
# Usage: benches/instructions_per_tx.sh [--base BIN] [--out FILE]
#
#   --base BIN  also measure this RegionGuard binary (say, a build of the
#               previous commit) and print new ÷ base per mode
#
# Environment:
#   MODES      pgbench query modes (default "simple extended prepared")
#   TX         transactions of the measured window (default 3000)
#   RG_BIN     RegionGuard binary (default: target/release/regionguard,
#              built with `cargo build --release` when needed)
#   KEEP=1     keep the temp directory (callgrind files, logs)
#
# Method: each proxy runs under callgrind in front of one throwaway cluster
# (pgbench -i -s 1); RegionGuard passes through to one region. For each
# mode, a first pgbench client leaves a backend in the proxy's pool, then
# one runs 300 transactions and another TX; callgrind's counter is dumped
# before and after each of these two runs, and the second run's count minus
# the first's, divided by TX - 300, is the steady-state cost of one
# transaction: connecting, authenticating and taking the pooled backend
# cost the same in both runs and cancel out. The whole process is counted (tokio, the allocator,
# libc), user space only.
set -euo pipefail

MODES=${MODES:-"simple extended prepared"}
TX=${TX:-3000}
WARM_TX=300
BASE=""
BENCH_NAME=instructions
# shellcheck source=benches/lib/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"
bench_option() {
    case "$1" in
        --base) BASE=${2:?--base needs a binary}; BENCH_SHIFT=2 ;;
        --base=*) BASE=${1#--base=}; BENCH_SHIFT=1 ;;
        *) return 1 ;;
    esac
}
bench_args "$@"
bench_check_uint TX "$TX"
(( TX > WARM_TX )) || die "TX must be more than $WARM_TX"
for m in $MODES; do
    [[ $m == simple || $m == extended || $m == prepared ]] || die "unknown mode $m"
done
command -v valgrind >/dev/null || die "valgrind not installed (apt-get install -y valgrind)"
command -v callgrind_control >/dev/null || die "callgrind_control not found (part of valgrind)"
if [[ -n "$BASE" ]]; then
    BASE=$(cd "$(dirname "$BASE")" && pwd)/$(basename "$BASE")
    [[ -x "$BASE" ]] || die "--base $BASE is not an executable"
fi

bench_find_pg_tools
bench_find_regionguard
bench_workdir
bench_find_pgbouncer
bench_ports PG_PORT RG_PORT BOUNCER_PORT
bench_start_postgres 1
bench_pgbouncer_config

{
    bench_rg_config_head "$RG_PORT" eu
    bench_rg_region eu
} > "$WORK/rg.toml"

# Total instructions callgrind has counted so far in process $2, asked as
# user $1 (callgrind_control must run as the process's user).
counted() {
    local as=$1 pid=$2 f sum=0 n
    if [[ $as == postgres ]]; then
        "${AS_PG[@]}" callgrind_control -d "$pid" >/dev/null 2>&1 || return 1
    else
        callgrind_control -d "$pid" >/dev/null 2>&1 || return 1
    fi
    sleep 0.5
    # Each dump is a file of its own, counting from the previous one.
    for f in "$WORK"/callgrind.out.*; do
        n=$(awk '/^summary:/ {print $2}' "$f")
        sum=$(( sum + ${n:-0} ))
    done
    echo "$sum"
}

measure() { # target (regionguard|base|pgbouncer) mode -> instructions per transaction
    local target=$1 mode=$2 port=$RG_PORT as=self pid c0 c1 c2
    rm -f "$WORK"/callgrind.out.*
    local cg=(valgrind --tool=callgrind --callgrind-out-file="$WORK/callgrind.out.%p")
    case $target in
        regionguard) "${cg[@]}" "$RG_BIN" serve --config "$WORK/rg.toml" >"$WORK/$target.$mode.log" 2>&1 & ;;
        base) "${cg[@]}" "$BASE" serve --config "$WORK/rg.toml" >"$WORK/$target.$mode.log" 2>&1 & ;;
        pgbouncer)
            port=$BOUNCER_PORT
            [[ $EUID -eq 0 ]] && as=postgres
            # setpriv execs: $! is valgrind's own process.
            "${AS_PG[@]}" "${cg[@]}" "$PGBOUNCER" "$WORK/pgbouncer.ini" >"$WORK/$target.$mode.log" 2>&1 &
            ;;
    esac
    pid=$!
    RG_PIDS+=("$pid")
    wait_for "$target under callgrind" 120 psql_at "$port" "SELECT 1"
    # A first session leaves its backend in the proxy's pool (RegionGuard's
    # idle backend pool, PgBouncer's server pool), so both counted runs
    # below start on a pooled backend and the backend login cancels out.
    "$PGBENCH" -n -S -M "$mode" -c 1 -j 1 -t 10 -h 127.0.0.1 -p "$port" \
        -U "$PGUSER_NAME" "$PGDB" >"$WORK/pgbench.prime.log" 2>&1 || die "pgbench ($target, $mode, priming) failed"
    c0=$(counted "$as" "$pid") || die "callgrind_control could not reach $target ($pid)"
    "$PGBENCH" -n -S -M "$mode" -c 1 -j 1 -t "$WARM_TX" -h 127.0.0.1 -p "$port" \
        -U "$PGUSER_NAME" "$PGDB" >"$WORK/pgbench.warm.log" 2>&1 || die "pgbench ($target, $mode, warm-up) failed"
    c1=$(counted "$as" "$pid") || die "callgrind_control could not reach $target ($pid)"
    "$PGBENCH" -n -S -M "$mode" -c 1 -j 1 -t "$TX" -h 127.0.0.1 -p "$port" \
        -U "$PGUSER_NAME" "$PGDB" >"$WORK/pgbench.log" 2>&1 || die "pgbench ($target, $mode) failed"
    c2=$(counted "$as" "$pid") || die "callgrind_control could not reach $target ($pid)"
    kill -TERM "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    # (second run - first run) / (the second's extra transactions)
    awk -v a="$c0" -v b="$c1" -v c="$c2" -v n=$((TX - WARM_TX)) \
        'BEGIN {printf "%.0f", ((c - b) - (b - a)) / n}'
}

TARGETS=(pgbouncer regionguard)
[[ -n "$BASE" ]] && TARGETS+=(base)
declare -A COUNT
for mode in $MODES; do
    for t in "${TARGETS[@]}"; do
        log "measuring $mode: $t"
        COUNT[$t/$mode]=$(measure "$t" "$mode")
    done
done

MD="| mode | PgBouncer | RegionGuard | ÷ PgBouncer |${BASE:+ base | ÷ base |}
|---|---:|---:|---:|${BASE:+---:|---:|}"
printf '\n%-9s %12s %12s %12s' mode PgBouncer RegionGuard "÷ PgBouncer"
[[ -n "$BASE" ]] && printf ' %12s %8s' base "÷ base"
printf '\n'
for mode in $MODES; do
    rg=${COUNT[regionguard/$mode]} pb=${COUNT[pgbouncer/$mode]}
    r=$(ratio "$rg" "$pb")
    printf '%-9s %12s %12s %12s' "$mode" "$pb" "$rg" "$r"
    row="| $mode | $pb | $rg | $r |"
    if [[ -n "$BASE" ]]; then
        b=${COUNT[base/$mode]}
        rb=$(ratio "$rg" "$b")
        printf ' %12s %8s' "$b" "$rb"
        row+=" $b | $rb |"
    fi
    printf '\n'
    MD+=$'\n'"$row"
done
if [[ -n "$OUT" ]]; then
    {
        echo "<!-- generated by benches/instructions_per_tx.sh on $(date -u '+%Y-%m-%d %H:%M UTC') -->"
        echo "pgbench -S -c 1, $TX transactions minus $WARM_TX, valgrind $(valgrind --version | sed 's/valgrind-//'); $("$PGBOUNCER" --version | head -1); RegionGuard $RG_BIN${BASE:+, base $BASE}."
        echo
        echo "$MD"
    } > "$OUT"
    log "wrote $OUT"
fi
