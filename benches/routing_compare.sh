#!/usr/bin/env bash
# Routing overhead: a tenant-scoped point select through RegionGuard without
# tenancy (pass-through) and with tenancy and 60 tenants over three regions
# (routing), plus Postgres directly as a reference, in one run, 127.0.0.1 only.
# Also reported: routing with every tenant in one region (analysis and
# placement without spreading a session over three backends), routing over
# three regions with one tenant per client (each session stays in its
# tenant's region, so 8 backends serve 8 clients as in pass-through), and
# the proxy's own CPU time per transaction, the figure least disturbed by
# neighbours.
#
# Usage: benches/routing_compare.sh [--out FILE]
#
# Environment:
#   DURATION   seconds per pgbench run (default 15)
#   ROUNDS     measured runs per (mode, clients, target); TPS and latency are
#              averaged (default 1)
#   CLIENTS    client counts (default "8")
#   MODES      pgbench query modes (default "extended prepared")
#   ONE_REGION=0  leave out the "routing, 1 region" target
#   STICKY=0   leave out the "routing, 3 regions, tenant per client" target
#   WARMUP     seconds of warm-up per target before measuring (default 3)
#   RG_BIN     RegionGuard binary (default: target/release/regionguard,
#              built with `cargo build --release` when needed)
#   RG_THREADS RegionGuard's listen.threads (default 1; 0 = one per CPU)
#   KEEP=1     keep the temp directory (logs, configs) for inspection
#
# One Postgres cluster, one database: `pgbench -i -s 10` tables plus
# accounts(tenant_id int, aid int, abalance int, filler text) with 2000 rows
# for each of 60 tenants (0..59). Both RegionGuard instances define regions
# eu, us and apac, all pointing at that database through a login role of
# their own (rg_eu, rg_us, rg_apac), so routing decisions are real and can
# be checked with current_user. The routing instance adds
# `[tenancy] tables = ["accounts"]` and a [tenants] map (tenant i in region
# i mod 3); the one-region instance maps every tenant to eu. Compare the
# ratios of one run.
set -euo pipefail

DURATION=${DURATION:-15}
ROUNDS=${ROUNDS:-1}
CLIENTS=${CLIENTS:-"8"}
MODES=${MODES:-"extended prepared"}
WARMUP=${WARMUP:-3}
RG_THREADS=${RG_THREADS:-1}
ONE_REGION=${ONE_REGION:-1}
STICKY=${STICKY:-1}
THREADS=2
SCALE=10
TENANTS=60
ROWS_PER_TENANT=2000
REGIONS=(eu us apac)
BENCH_NAME=routing_compare
# shellcheck source=benches/lib/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"
bench_args "$@"
REPO=$BENCH_REPO
bench_check_uint DURATION "$DURATION"
bench_check_uint ROUNDS "$ROUNDS"
for m in $MODES; do
    [[ $m == simple || $m == extended || $m == prepared ]] || { echo "unknown mode $m" >&2; exit 2; }
done

bench_find_pg_tools
bench_find_regionguard
bench_workdir
bench_ports PG_PORT PASS_PORT ROUTE_PORT ROUTE1_PORT

# --- Postgres --------------------------------------------------------------------

bench_start_postgres "$SCALE"

log "accounts: $TENANTS tenants x $ROWS_PER_TENANT rows; roles ${REGIONS[*]/#/rg_}"
{
    cat <<EOF
CREATE TABLE accounts (
    tenant_id int NOT NULL,
    aid int NOT NULL,
    abalance int NOT NULL,
    filler text,
    PRIMARY KEY (tenant_id, aid)
);
INSERT INTO accounts
SELECT t, a, (t * 7 + a) % 1000, repeat('x', 84)
FROM generate_series(0, $((TENANTS - 1))) t, generate_series(1, $ROWS_PER_TENANT) a;
VACUUM ANALYZE accounts;
EOF
    for r in "${REGIONS[@]}"; do
        echo "CREATE ROLE rg_$r LOGIN PASSWORD '$PASSWORD';"
        echo "GRANT SELECT ON accounts, pgbench_accounts, pgbench_branches, pgbench_tellers TO rg_$r;"
    done
} > "$WORK/accounts.sql"
timeout 300 "$PSQL" -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$PG_PORT" -U "$PGUSER_NAME" -d "$PGDB" \
    -f "$WORK/accounts.sql" >"$WORK/accounts.log" 2>&1 || { cat "$WORK/accounts.log" >&2; die "creating accounts failed"; }

# --- RegionGuard: pass-through and routing -------------------------------------------

region_of() { echo "${REGIONS[$(( $1 % ${#REGIONS[@]} ))]}"; }
regions_toml() {
    local r
    for r in "${REGIONS[@]}"; do bench_rg_region "$r" "rg_$r" "$PASSWORD"; done
}
{
    bench_rg_config_head "$PASS_PORT" eu
    regions_toml
} > "$WORK/passthrough.toml"
routing_toml() { # port one_region(0|1)
    bench_rg_config_head "$1" eu
    regions_toml
    printf '\n[tenancy]\ncolumn = "tenant_id"\ntables = ["accounts"]\n\n[tenants]\n'
    for (( i = 0; i < TENANTS; i++ )); do
        if (( $2 )); then r=eu; else r=$(region_of "$i"); fi
        printf '"%d" = "%s"\n' "$i" "$r"
    done
}
routing_toml "$ROUTE_PORT" 0 > "$WORK/routing.toml"
bench_start_regionguard passthrough "$PASS_PORT"
bench_start_regionguard routing "$ROUTE_PORT"
if (( ONE_REGION )); then
    routing_toml "$ROUTE1_PORT" 1 > "$WORK/routing1.toml"
    bench_start_regionguard routing1 "$ROUTE1_PORT"
fi

# Sanity: the routing instance sends each tenant to its region (the region's
# role shows in current_user) and refuses a statement without a tenant; the
# pass-through instance runs everything in eu.
for t in 0 1 2 59; do
    want="rg_$(region_of "$t")"
    got=$(psql_at "$ROUTE_PORT" "SELECT current_user FROM accounts WHERE tenant_id = $t AND aid = 1") \
        || die "routing: tenant $t query failed"
    [[ "$got" == "$want" ]] || die "routing: tenant $t ran as $got, expected $want"
done
if psql_at "$ROUTE_PORT" "SELECT count(*) FROM accounts" >/dev/null 2>"$WORK/refusal.log"; then
    die "routing: a statement without a tenant was not refused (is [tenancy] active?)"
fi
grep -q 42501 "$WORK/refusal.log" || grep -qi 'tenant' "$WORK/refusal.log" \
    || { cat "$WORK/refusal.log" >&2; die "routing: unexpected error for a statement without a tenant"; }
got=$(psql_at "$PASS_PORT" "SELECT current_user FROM accounts WHERE tenant_id = 1 AND aid = 1")
[[ "$got" == rg_eu ]] || die "pass-through: ran as $got, expected rg_eu"
if (( ONE_REGION )); then
    got=$(psql_at "$ROUTE1_PORT" "SELECT current_user FROM accounts WHERE tenant_id = 1 AND aid = 1")
    [[ "$got" == rg_eu ]] || die "routing, 1 region: tenant 1 ran as $got, expected rg_eu"
fi
log "routing checks passed (tenants 0,1,2,59 -> $(region_of 0),$(region_of 1),$(region_of 2),$(region_of 59); no tenant -> refused)"

# --- measuring ---------------------------------------------------------------------

# pgbench variables are integers, so the tenant column is an integer too: in
# extended and prepared mode `:t` reaches the proxy as bind parameter $1.
cat > "$WORK/point_select.sql" <<EOF
\\set t random(0, $((TENANTS - 1)))
\\set aid random(1, $ROWS_PER_TENANT)
SELECT abalance FROM accounts WHERE tenant_id = :t AND aid = :aid;
EOF
# The same statement, each client always for its own tenant (client i ->
# tenant i, so the regions in turn).
cat > "$WORK/point_select_sticky.sql" <<EOF
\\set t :client_id % $TENANTS
\\set aid random(1, $ROWS_PER_TENANT)
SELECT abalance FROM accounts WHERE tenant_id = :t AND aid = :aid;
EOF

BACKENDS_SQL="SELECT coalesce(string_agg(usename || '=' || n, ' ' ORDER BY usename), 'none') FROM (SELECT usename, count(*) n FROM pg_stat_activity WHERE usename LIKE 'rg\\_%' GROUP BY usename) s"
TARGETS=(direct passthrough routing)
if (( ONE_REGION )); then TARGETS+=(routing1); fi
if (( STICKY )); then
    TARGETS+=(sticky)
    RG_PID_OF[sticky]=${RG_PID_OF[routing]}
fi
declare -A PORT_OF=([direct]=$PG_PORT [passthrough]=$PASS_PORT [routing]=$ROUTE_PORT [routing1]=$ROUTE1_PORT [sticky]=$ROUTE_PORT)
declare -A LABEL=([direct]="direct" [passthrough]="RG pass-through" [routing]="RG routing, 3 regions" [routing1]="RG routing, 1 region" [sticky]="RG routing, 3 regions, tenant per client")
declare -A TPS_SUM LAT_SUM RUNS RAW CPU_TICKS TX_SUM
FAILED=0

run_pgbench() { # target mode clients seconds
    local script=$WORK/point_select.sql
    [[ $1 == sticky ]] && script=$WORK/point_select_sticky.sql
    bench_pgbench "${PORT_OF[$1]}" "$4" -M "$2" -c "$3" -j "$THREADS" -f "$script"
}

if (( WARMUP > 0 )); then
    for t in "${TARGETS[@]}"; do
        log "warm-up: $t ${WARMUP}s"
        run_pgbench "$t" extended 8 "$WARMUP" >/dev/null || die "warm-up against $t failed"
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
                # Mid-run, note which region roles hold backends (one query).
                ( sleep $(( (DURATION + 1) / 2 )); psql_at "$PG_PORT" "$BACKENDS_SQL" >"$WORK/backends.$mode.$clients.$t" 2>&1 || true ) &
                sampler=$!
                pid=${RG_PID_OF[$t]:-}
                cpu0=0; [[ -n "$pid" ]] && cpu0=$(proc_cpu_ticks "$pid")
                if res=$(run_pgbench "$t" "$mode" "$clients" "$DURATION"); then
                    read -r tps lat tx <<<"$res"
                    if [[ -n "$pid" ]]; then
                        CPU_TICKS[$key]=$(( ${CPU_TICKS[$key]:-0} + $(proc_cpu_ticks "$pid") - cpu0 ))
                        TX_SUM[$key]=$(( ${TX_SUM[$key]:-0} + tx ))
                    fi
                    log "$(printf '%-8s %3s clients  %-11s tps %10.1f  lat %7.3f ms' "$mode" "$clients" "$t" "$tps" "$lat")"
                    TPS_SUM[$key]=$(add "${TPS_SUM[$key]:-}" "$tps")
                    LAT_SUM[$key]=$(add "${LAT_SUM[$key]:-}" "$lat")
                    RUNS[$key]=$(( ${RUNS[$key]:-0} + 1 ))
                    RAW[$key]="${RAW[$key]:+${RAW[$key]}, }$(printf '%.0f' "$tps")"
                else
                    log "$mode $clients clients $t: pgbench FAILED"
                    FAILED=1
                fi
                wait "$sampler" || true
                [[ $t == direct ]] || log "  backends mid-run: $(cat "$WORK/backends.$mode.$clients.$t")"
            done
        done
        cell=$((cell + 1))
    done
done
bench_regionguards_alive || { log "a RegionGuard exited during the run"; FAILED=1; }


# --- report --------------------------------------------------------------------------

# Proxy CPU (user + system) per transaction, in microseconds.
cpu_per_tx() { # key
    if [[ -n "${TX_SUM[$1]:-}" && "${TX_SUM[$1]}" -gt 0 ]]; then
        awk -v t="${CPU_TICKS[$1]}" -v n="${TX_SUM[$1]}" -v hz="$CLK_TCK" 'BEGIN {printf "%.1f", t / hz / n * 1e6}'
    else
        echo "–"
    fi
}
MD="| mode | clients | target | TPS | avg latency (ms) | ÷ pass-through | ÷ direct | proxy CPU µs/tx |
|---|---:|---|---:|---:|---:|---:|---:|"
printf '\n%-9s %7s  %-22s %11s %12s %15s %9s %12s\n' mode clients target TPS "latency ms" "÷pass-through" "÷direct" "CPU µs/tx"
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
            vp=$(ratio "${TPS[$t]}" "${TPS[passthrough]}")
            vd=$(ratio "${TPS[$t]}" "${TPS[direct]}")
            cpu=$(cpu_per_tx "$key")
            printf '%-9s %7s  %-22s %11s %12s %15s %9s %12s\n' "$mode" "$clients" "${LABEL[$t]}" "$tps" "$lat" "$vp" "$vd" "$cpu"
            if [[ $t == routing ]]; then
                MD+=$'\n'"| $mode | $clients | **${LABEL[$t]}** | **$tps** | $lat | **$vp** | **$vd** | $cpu |"
            else
                MD+=$'\n'"| $mode | $clients | ${LABEL[$t]} | $tps | $lat | $vp | $vd | $cpu |"
            fi
        done
        unset TPS
    done
done

if (( ROUNDS > 1 )); then
    printf '\nraw TPS per run:\n'
    for mode in $MODES; do for clients in $CLIENTS; do for t in "${TARGETS[@]}"; do
        printf '  %-9s %3s  %-22s %s\n' "$mode" "$clients" "${LABEL[$t]}" "${RAW[$mode/$clients/$t]:-}"
    done; done; done
fi

if [[ -n "$OUT" ]]; then
    {
        echo "<!-- generated by benches/routing_compare.sh on $(date -u '+%Y-%m-%d %H:%M UTC') -->"
        echo "pgbench -n -j $THREADS -T $DURATION -f point_select.sql (random tenant of $TENANTS, random aid of $ROWS_PER_TENANT;" \
             "tenant per client: tenant = client id)," \
             "$ROUNDS round(s) per cell; $(nproc) CPUs; $("$PG_BIN/postgres" --version);" \
             "RegionGuard: $RG_BIN built $(date -u -r "$RG_BIN" '+%Y-%m-%d %H:%M UTC'), listen.threads = $RG_THREADS" \
             "(benches at $(cd "$REPO" && git rev-parse --short HEAD 2>/dev/null || echo unknown))."
        echo
        echo "$MD"
    } > "$OUT"
    log "wrote $OUT"
fi
(( FAILED == 0 )) || die "some runs failed"
