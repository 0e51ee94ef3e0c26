#!/usr/bin/env bash
# Cost of metrics and logging: pgbench -S through two RegionGuard instances
# of the same binary in front of one Postgres, in one run, 127.0.0.1 only:
#
#   off  no [metrics] (no series kept), logging.level = "warn",
#        logging.slow_statement_ms = 0 (no per-request timer)
#   on   [metrics] address set (series, health checks every 5 s),
#        logging at the default level ("info") with the default slow-statement
#        log (1000 ms), and /metrics scraped every SCRAPE_SECS during the runs
#
# Reported per mode: TPS and latency of each, the on/off TPS ratio (issue
# 6 asks ≥ 0.97) and each proxy's own CPU time per transaction (utime +
# stime from /proc), the figure least disturbed by the machine's noise.
# Runs alternate off, on, on, off, … so drift hits both alike.
#
# Usage: benches/metrics_compare.sh [--out FILE]
#
# Environment:
#   DURATION     seconds per pgbench run (default 15)
#   ROUNDS       pairs of runs per mode (default 2)
#   CLIENTS      pgbench clients (default 8)
#   MODES        pgbench query modes (default "simple extended")
#   SCRAPE_SECS  seconds between scrapes of /metrics (default 1)
#   WARMUP       seconds of warm-up per instance before measuring (default 3)
#   RG_BIN       RegionGuard binary (default: target/release/regionguard,
#                built with `cargo build --release` when needed)
#   KEEP=1       keep the temp directory (logs, configs) for inspection
set -euo pipefail

DURATION=${DURATION:-15}
ROUNDS=${ROUNDS:-2}
CLIENTS=${CLIENTS:-8}
MODES=${MODES:-"simple extended"}
SCRAPE_SECS=${SCRAPE_SECS:-1}
WARMUP=${WARMUP:-3}
THREADS=2
SCALE=10
BENCH_NAME=metrics_compare
# shellcheck source=benches/lib/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"
bench_args "$@"
REPO=$BENCH_REPO
bench_check_uint DURATION "$DURATION"
bench_check_uint ROUNDS "$ROUNDS"
bench_check_uint CLIENTS "$CLIENTS"
bench_check_uint SCRAPE_SECS "$SCRAPE_SECS"

bench_find_pg_tools
bench_find_regionguard
bench_workdir
bench_ports PG_PORT OFF_PORT ON_PORT METRICS_PORT

bench_start_postgres "$SCALE"

# Prints a config for one instance: listen port, then the [logging] and
# optional [metrics] tables.
rg_config() { # port log_level slow_ms [metrics_port]
    local verifier
    verifier=$(printf '%s\n' "$PASSWORD" | "$RG_BIN" hash-password)
    cat <<EOT
default_region = "local"

[listen]
address = "127.0.0.1:$1"
max_clients = 1000
shutdown_timeout_secs = 2

[logging]
level = "$2"
slow_statement_ms = $3

[[auth.users]]
name = "$PGUSER_NAME"
verifier = "$verifier"
EOT
    if [[ -n "${4:-}" ]]; then
        printf '\n[metrics]\naddress = "127.0.0.1:%s"\nhealth_interval_secs = 5\n' "$4"
    fi
    bench_rg_region local
}

rg_config "$OFF_PORT" warn 0 > "$WORK/off.toml"
rg_config "$ON_PORT" info 1000 "$METRICS_PORT" > "$WORK/on.toml"
bench_start_regionguard off "$OFF_PORT"
bench_start_regionguard on "$ON_PORT"

# A scraper like Prometheus, against the instance with metrics.
scrape() {
    exec 3<>"/dev/tcp/127.0.0.1/$METRICS_PORT" || return 1
    printf 'GET /metrics HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n' >&3
    cat <&3 >/dev/null
    exec 3<&-
}
wait_for "metrics endpoint" 30 scrape
(
    while true; do scrape || true; sleep "$SCRAPE_SECS"; done
) &
SCRAPER=$!
RG_PIDS+=("$SCRAPER")

declare -A PORT_OF=([off]=$OFF_PORT [on]=$ON_PORT)
declare -A TPS_SUM LAT_SUM TX_SUM CPU_TICKS RUNS
FAILED=0

run_one() { # target mode seconds -> "tps lat tx"
    bench_pgbench "${PORT_OF[$1]}" "$3" -S -M "$2" -c "$CLIENTS" -j "$THREADS"
}

if (( WARMUP > 0 )); then
    for t in off on; do
        log "warm-up: $t ${WARMUP}s"
        run_one "$t" simple "$WARMUP" >/dev/null || die "warm-up against $t failed"
    done
fi

log "measuring: $(wc -w <<<"$MODES") mode(s) x $ROUNDS round(s) x 2 instances x ${DURATION}s"
for mode in $MODES; do
    for (( r = 0; r < ROUNDS; r++ )); do
        if (( r % 2 == 0 )); then order=(off on); else order=(on off); fi
        for t in "${order[@]}"; do
            key="$mode/$t"
            pid=${RG_PID_OF[$t]}
            cpu0=$(proc_cpu_ticks "$pid")
            if res=$(run_one "$t" "$mode" "$DURATION"); then
                read -r tps lat tx <<<"$res"
                CPU_TICKS[$key]=$(( ${CPU_TICKS[$key]:-0} + $(proc_cpu_ticks "$pid") - cpu0 ))
                log "$(printf '%-8s %-4s tps %10.1f  lat %7.3f ms' "$mode" "$t" "$tps" "$lat")"
                TPS_SUM[$key]=$(add "${TPS_SUM[$key]:-}" "$tps")
                LAT_SUM[$key]=$(add "${LAT_SUM[$key]:-}" "$lat")
                TX_SUM[$key]=$(add "${TX_SUM[$key]:-}" "$tx")
                RUNS[$key]=$(( ${RUNS[$key]:-0} + 1 ))
            else
                log "$mode $t: pgbench FAILED"
                FAILED=1
            fi
        done
    done
done
bench_regionguards_alive || { log "RegionGuard exited during the run"; FAILED=1; }

# The scrape after the runs: the statements counted must match pgbench's.
SCRAPED=$(exec 3<>"/dev/tcp/127.0.0.1/$METRICS_PORT"; printf 'GET /metrics HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n' >&3; cat <&3)
COUNTED=$(printf '%s\n' "$SCRAPED" | awk '/^regionguard_statements_total\{.*kind="read"/ {print $2}')
log "regionguard_statements_total{kind=\"read\"} on the 'on' instance: ${COUNTED:-missing}"

cpu_us() { # key
    awk -v t="${CPU_TICKS[$1]:-0}" -v n="${TX_SUM[$1]:-0}" -v hz="$CLK_TCK" \
        'BEGIN { if (n == 0) print "n/a"; else printf "%.1f", t / hz / n * 1e6 }'
}

MD="| mode | clients | instance | TPS | avg latency (ms) | proxy CPU µs/tx | TPS on ÷ off |
|---|---:|---|---:|---:|---:|---:|"
printf '\n%-9s %7s  %-22s %11s %12s %10s %8s\n' mode clients instance TPS "latency ms" "CPU µs/tx" "on÷off"
for mode in $MODES; do
    declare -A T=()
    for t in off on; do
        key="$mode/$t"
        T[$t]=""
        [[ -n "${RUNS[$key]:-}" ]] && T[$t]=$(avg "${TPS_SUM[$key]}" "${RUNS[$key]}" "%.1f")
    done
    r=$(ratio "${T[on]}" "${T[off]}")
    for t in off on; do
        key="$mode/$t"
        label="metrics off, warn"
        [[ $t == on ]] && label="metrics on, info"
        if [[ -n "${T[$t]}" ]]; then
            lat=$(avg "${LAT_SUM[$key]}" "${RUNS[$key]}" "%.3f")
        else
            lat=FAIL; T[$t]=FAIL
        fi
        shown=""; [[ $t == on ]] && shown=$r
        printf '%-9s %7s  %-22s %11s %12s %10s %8s\n' "$mode" "$CLIENTS" "$label" "${T[$t]}" "$lat" "$(cpu_us "$key")" "$shown"
        MD+=$'\n'"| $mode | $CLIENTS | $label | ${T[$t]} | $lat | $(cpu_us "$key") | ${shown:-–} |"
    done
    unset T
done

if [[ -n "$OUT" ]]; then
    {
        echo "<!-- generated by benches/metrics_compare.sh on $(date -u '+%Y-%m-%d %H:%M UTC') -->"
        echo "pgbench -n -S -c $CLIENTS -j $THREADS -T $DURATION, scale $SCALE, $ROUNDS run(s) per instance and mode" \
             "(alternating); /metrics scraped every ${SCRAPE_SECS}s; $(nproc) CPUs; $("$PG_BIN/postgres" --version);" \
             "RegionGuard $(cd "$REPO" && git rev-parse --short HEAD 2>/dev/null || echo unknown)."
        echo
        echo "$MD"
    } > "$OUT"
    log "wrote $OUT"
fi
(( FAILED == 0 )) || die "some runs failed"
