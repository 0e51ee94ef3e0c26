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
#              averaged (default 1). Each round runs every target back to
#              back, so the ratio columns are the median over rounds of each
#              round's own ratio: a machine whose speed drifts between
#              rounds (shared, noisy) moves both sides of a pair alike; the
#              "rounds" column gives the lowest and highest of those ratios
#   CLIENTS    client counts (default "8 64")
#   MODES      pgbench query modes (default "simple extended")
#   WARMUP     seconds of warm-up per target before measuring (default 3)
#   RG_BIN     RegionGuard binary (default: target/release/regionguard,
#              built with `cargo build --release` when needed)
#   RG_THREADS RegionGuard's listen.threads (default 1, as PgBouncer runs
#              one thread; 0 = RegionGuard's own default, one per CPU)
#   POOL_MODES RegionGuard's backend_pool.mode values to measure, each as
#              a target of its own (default "session transaction":
#              "RegionGuard" is the default session mode, "RegionGuard txn"
#              transaction mode with max_active_per_region = 20, PgBouncer's
#              pool size here)
#   RELAY=1    also measure benches/byte_relay.rs: bytes copied between
#              client and Postgres on tokio's current-thread runtime, nothing
#              inspected — the floor under any relay built on tokio
#   KEEP=1     keep the temp directory (logs, configs) for inspection
#
# Everything (Postgres cluster, PgBouncer, RegionGuard) lives in a temp dir
# and is stopped and removed on exit. Compare the ratios of one run; the
# absolute numbers depend on the machine and its neighbours. Also printed:
# each proxy's CPU time (user + system, from /proc) per transaction, the
# figure least disturbed by neighbours, Postgres's CPU time per transaction
# (all its processes, exited backends included) and the whole machine's
# busy CPU time per transaction (/proc/stat): together they show whether a
# gap is the proxy's own work or what it makes Postgres and pgbench do.
set -euo pipefail

DURATION=${DURATION:-15}
ROUNDS=${ROUNDS:-1}
CLIENTS=${CLIENTS:-"8 64"}
MODES=${MODES:-"simple extended"}
WARMUP=${WARMUP:-3}
RG_THREADS=${RG_THREADS:-1}
POOL_MODES=${POOL_MODES:-"session transaction"}
RELAY=${RELAY:-0}
THREADS=2
SCALE=10
BENCH_NAME=pgbench_compare
# shellcheck source=benches/lib/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"
bench_args "$@"
REPO=$BENCH_REPO
bench_check_uint DURATION "$DURATION"
bench_check_uint ROUNDS "$ROUNDS"

bench_find_pg_tools
bench_find_pgbouncer
bench_find_regionguard
bench_workdir
bench_ports PG_PORT BOUNCER_PORT RG_PORT RG_TX_PORT

# --- Postgres, PgBouncer ---------------------------------------------------------

bench_start_postgres "$SCALE"
bench_start_pgbouncer

# --- RegionGuard -----------------------------------------------------------------

TARGETS=(direct pgbouncer)
declare -A PORT_OF=([direct]=$PG_PORT [pgbouncer]=$BOUNCER_PORT)
declare -A LABEL=([direct]="direct" [pgbouncer]="PgBouncer")
declare -A PID_OF=([pgbouncer]=$(cat "$WORK/pgbouncer.pid"))
for pool_mode in $POOL_MODES; do
    case $pool_mode in
        session) name=regionguard; port=$RG_PORT; LABEL[$name]="RegionGuard" ;;
        transaction) name=regionguard_tx; port=$RG_TX_PORT; LABEL[$name]="RegionGuard txn" ;;
        *) die "POOL_MODES: unknown mode $pool_mode (session, transaction)" ;;
    esac
    {
        if [[ $pool_mode == transaction ]]; then
            RG_POOL_MODE=transaction bench_rg_config_head "$port" local
        else
            bench_rg_config_head "$port" local
        fi
        bench_rg_region local
    } > "$WORK/$name.toml"
    bench_start_regionguard "$name" "$port"
    TARGETS+=("$name")
    PORT_OF[$name]=$port
    PID_OF[$name]=${RG_PID_OF[$name]}
done

# --- measuring ---------------------------------------------------------------------

declare -A TPS_SUM LAT_SUM RUNS CPU_TICKS TX_SUM TPS_ROUND BUSY_TICKS BUSY_TX PG_TICKS
FAILED=0

if [[ $RELAY == 1 ]]; then
    bench_ports RELAY_PORT
    bench_start_byte_relay "$RELAY_PORT" "$PG_PORT"
    TARGETS+=(relay)
    PORT_OF[relay]=$RELAY_PORT
    LABEL[relay]="tokio byte relay"
    PID_OF[relay]=$RELAY_PID
fi

# Runs pgbench -S; prints "tps latency_ms" or returns non-zero.
run_pgbench() { # target mode clients seconds
    bench_pgbench "${PORT_OF[$1]}" "$4" -S -M "$2" -c "$3" -j "$THREADS"
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
                pid=${PID_OF[$t]:-}
                cpu0=0; [[ -n "$pid" ]] && cpu0=$(proc_cpu_ticks "$pid")
                busy0=$(machine_busy_ticks)
                pg0=$(postgres_cpu_ticks)
                if res=$(run_pgbench "$t" "$mode" "$clients" "$DURATION"); then
                    read -r tps lat tx <<<"$res"
                    BUSY_TICKS[$key]=$(( ${BUSY_TICKS[$key]:-0} + $(machine_busy_ticks) - busy0 ))
                    PG_TICKS[$key]=$(( ${PG_TICKS[$key]:-0} + $(postgres_cpu_ticks) - pg0 ))
                    BUSY_TX[$key]=$(( ${BUSY_TX[$key]:-0} + tx ))
                    if [[ -n "$pid" ]]; then
                        CPU_TICKS[$key]=$(( ${CPU_TICKS[$key]:-0} + $(proc_cpu_ticks "$pid") - cpu0 ))
                        TX_SUM[$key]=$(( ${TX_SUM[$key]:-0} + tx ))
                    fi
                    log "$(printf '%-8s %3s clients  %-11s tps %10.1f  lat %7.3f ms' "$mode" "$clients" "$t" "$tps" "$lat")"
                    TPS_SUM[$key]=$(add "${TPS_SUM[$key]:-}" "$tps")
                    TPS_ROUND[$key/$r]=$tps
                    LAT_SUM[$key]=$(add "${LAT_SUM[$key]:-}" "$lat")
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
bench_regionguards_alive || { log "RegionGuard exited during the run"; FAILED=1; }

# --- report --------------------------------------------------------------------------

# TPS(target) / TPS(other) within each round, over the rounds: "median min max"
# (or "n/a n/a n/a" when no round has both).
round_ratios() { # mode clients target other
    local r a b list=()
    for (( r = 0; r < ROUNDS; r++ )); do
        a=${TPS_ROUND[$1/$2/$3/$r]:-}
        b=${TPS_ROUND[$1/$2/$4/$r]:-}
        [[ -n "$a" && -n "$b" ]] && list+=("$(awk -v a="$a" -v b="$b" 'BEGIN { if (b > 0) print a / b }')")
    done
    if (( ${#list[@]} == 0 )); then echo "n/a n/a n/a"; return; fi
    printf '%s\n' "${list[@]}" | sort -g \
        | awk '{ v[NR] = $1 } END { m = (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2; printf "%.2f %.2f %.2f\n", m, v[1], v[NR] }'
}

# CPU ticks per transaction in microseconds, or "–" without transactions.
ticks_per_tx() { # ticks transactions
    if [[ -n "${2:-}" && "$2" -gt 0 ]]; then
        awk -v t="$1" -v n="$2" -v hz="$CLK_TCK" 'BEGIN {printf "%.1f", t / hz / n * 1e6}'
    else
        echo "–"
    fi
}
# Proxy CPU (user + system) per transaction.
cpu_per_tx() { ticks_per_tx "${CPU_TICKS[$1]:-0}" "${TX_SUM[$1]:-}"; }
# The whole machine's CPU per transaction (proxy, Postgres, pgbench, all else).
busy_per_tx() { ticks_per_tx "${BUSY_TICKS[$1]:-0}" "${BUSY_TX[$1]:-}"; }
# Postgres's CPU per transaction (all its processes).
pg_per_tx() { ticks_per_tx "${PG_TICKS[$1]:-0}" "${BUSY_TX[$1]:-}"; }
MD="| mode | clients | target | TPS | avg latency (ms) | ÷ PgBouncer | rounds ÷ PgBouncer | ÷ direct | proxy CPU µs/tx | Postgres CPU µs/tx | machine CPU µs/tx |
|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|"
printf '\n%-9s %7s  %-16s %11s %12s %12s %12s %9s %12s %12s %12s\n' mode clients target TPS "latency ms" "÷PgBouncer" "rounds" "÷direct" "CPU µs/tx" "Postgres µs" "machine µs"
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
            read -r vb lo hi < <(round_ratios "$mode" "$clients" "$t" pgbouncer)
            read -r vd _ _ < <(round_ratios "$mode" "$clients" "$t" direct)
            spread="$lo–$hi"
            [[ $lo == n/a ]] && spread="n/a"
            cpu=$(cpu_per_tx "$key")
            busy=$(busy_per_tx "$key")
            pgc=$(pg_per_tx "$key")
            printf '%-9s %7s  %-16s %11s %12s %12s %12s %9s %12s %12s %12s\n' "$mode" "$clients" "${LABEL[$t]}" "$tps" "$lat" "$vb" "$spread" "$vd" "$cpu" "$pgc" "$busy"
            if [[ $t == regionguard* ]]; then
                MD+=$'\n'"| $mode | $clients | **${LABEL[$t]}** | **$tps** | $lat | **$vb** | $spread | **$vd** | $cpu | $pgc | $busy |"
            else
                MD+=$'\n'"| $mode | $clients | ${LABEL[$t]} | $tps | $lat | $vb | $spread | $vd | $cpu | $pgc | $busy |"
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
             "RegionGuard $(cd "$REPO" && git rev-parse --short HEAD 2>/dev/null || echo unknown), listen.threads = $RG_THREADS, backend_pool.mode: $POOL_MODES (transaction: max_active_per_region = 20);" \
             "TPS and latency: means over rounds; ratios: median over rounds of each round's own ratio (rounds: lowest–highest)."
        echo
        echo "$MD"
    } > "$OUT"
    log "wrote $OUT"
fi
(( FAILED == 0 )) || die "some runs failed"
