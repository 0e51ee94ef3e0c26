#!/usr/bin/env bash
# Column encryption overhead: the same schema stored in plaintext and with
# two encrypted text columns, both through one RegionGuard instance, in one
# run, 127.0.0.1 only. Workloads: insert of a row, point select of a row
# (both columns decrypted), and equality lookup on the searchable column
# (`email = $1`, rewritten to `email = ANY($1)` with one envelope per live
# key version: ADR 13), with pgbench custom scripts.
#
# Usage: benches/encryption_compare.sh [--out FILE]
#
# Environment:
#   DURATION   seconds per pgbench run (default 15)
#   ROUNDS     measured runs per cell; TPS averaged (default 1)
#   CLIENTS    client count (default 8)
#   MODES      pgbench query modes (default "prepared extended")
#   WARMUP     seconds of warm-up per table before measuring (default 3)
#   RG_BIN     RegionGuard binary (default: target/release/regionguard)
#   KEEP=1     keep the temp directory
#
# Tables people_plain(tenant_id int, id bigint, email text, full_name text)
# and people_enc(… email bytea, full_name bytea), 60 tenants (all in one
# region, so only encryption differs) with 200 rows each, loaded through
# the proxy so people_enc holds ciphertext. people_enc.email is searchable
# (deterministic), full_name randomized. pgbench variables are integers,
# so the text values are 13-digit numbers sent as text parameters.
set -euo pipefail

DURATION=${DURATION:-15}
ROUNDS=${ROUNDS:-1}
CLIENTS=${CLIENTS:-8}
MODES=${MODES:-"prepared extended"}
WARMUP=${WARMUP:-3}
THREADS=2
TENANTS=60
ROWS=200
BENCH_NAME=encryption_compare
# shellcheck source=benches/lib/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"
bench_args "$@"
REPO=$BENCH_REPO
bench_check_uint DURATION "$DURATION"
bench_check_uint ROUNDS "$ROUNDS"

bench_find_pg_tools
bench_find_regionguard
bench_workdir
bench_ports PG_PORT RG_PORT
bench_start_postgres 1

psql_at "$PG_PORT" "
CREATE TABLE people_plain (tenant_id int NOT NULL, id bigint NOT NULL, email text, full_name text, PRIMARY KEY (tenant_id, id));
CREATE TABLE people_enc (tenant_id int NOT NULL, id bigint NOT NULL, email bytea, full_name bytea, PRIMARY KEY (tenant_id, id));" >/dev/null

# A root key file for the region, mode 0600 as RegionGuard requires.
head -c 32 /dev/urandom | base64 | sed 's/^/1:/' > "$WORK/eu.key"
chmod 600 "$WORK/eu.key"
{
    bench_rg_config_head "$RG_PORT" eu
    bench_rg_region eu
    cat <<EOF

[regions.eu.key]
source = "file"
path = "$WORK/eu.key"

[tenancy]
column = "tenant_id"
tables = ["people_plain", "people_enc"]

[classes.pii]
encrypt = "randomized"

[classified.people_enc.email]
class = "pii"
type = "text"
searchable = true

[classified.people_enc.full_name]
class = "pii"
type = "text"

[tenants]
EOF
    for (( i = 0; i < TENANTS; i++ )); do printf '"%d" = "eu"\n' "$i"; done
} > "$WORK/rg.toml"
bench_start_regionguard rg "$RG_PORT"

log "loading $TENANTS tenants x $ROWS rows into both tables through the proxy"
for table in people_plain people_enc; do
    for (( t = 0; t < TENANTS; t++ )); do
        values=""
        for (( id = 1; id <= ROWS; id++ )); do
            values+="${values:+,}($t, $id, '$(( 1000000000000 + t * 100000 + id ))', '$(( 2000000000000 + t * 100000 + id ))')"
        done
        echo "INSERT INTO $table (tenant_id, id, email, full_name) VALUES $values;"
    done
done > "$WORK/load.sql"
timeout 300 "$PSQL" -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$RG_PORT" -U "$PGUSER_NAME" -d "$PGDB" \
    -f "$WORK/load.sql" >"$WORK/load.log" 2>&1 || { cat "$WORK/load.log" >&2; die "loading failed"; }

# Sanity: ciphertext in the database, plaintext through the proxy.
raw=$(psql_at "$PG_PORT" "SELECT email FROM people_enc WHERE tenant_id = 1 AND id = 1")
[[ $raw == '\x'* && $raw != *1000000100001* ]] || die "people_enc is not encrypted in the database: $raw"
got=$(psql_at "$RG_PORT" "SELECT email FROM people_enc WHERE tenant_id = 1 AND id = 1")
[[ $got == 1000000100001 ]] || die "decryption through the proxy gave '$got'"
got=$(psql_at "$RG_PORT" "SELECT count(*) FROM people_enc WHERE tenant_id = 1 AND email = '1000000100001'")
[[ $got == 1 ]] || die "equality lookup on people_enc.email found $got rows"
log "checks passed: ciphertext stored, plaintext and equality through the proxy"

for table in people_plain people_enc; do
    cat > "$WORK/select_$table.sql" <<EOF
\\set t random(0, $((TENANTS - 1)))
\\set id random(1, $ROWS)
SELECT email, full_name FROM $table WHERE tenant_id = :t AND id = :id;
EOF
    cat > "$WORK/lookup_$table.sql" <<EOF
\\set t random(0, $((TENANTS - 1)))
\\set id random(1, $ROWS)
\\set e 1000000000000 + :t * 100000 + :id
SELECT id FROM $table WHERE tenant_id = :t AND email = :e;
EOF
    cat > "$WORK/insert_$table.sql" <<EOF
\\set t random(0, $((TENANTS - 1)))
\\set id random(1000, 1000000000000)
\\set e random(1000000000000, 9999999999999)
\\set n random(1000000000000, 9999999999999)
INSERT INTO $table (tenant_id, id, email, full_name) VALUES (:t, :id, :e, :n) ON CONFLICT DO NOTHING;
EOF
done

declare -A TPS_SUM RUNS
FAILED=0
WORKLOADS=(select lookup insert)
TABLES=(people_plain people_enc)
run() { # workload table mode seconds
    bench_pgbench "$RG_PORT" "$4" -M "$3" -c "$CLIENTS" -j "$THREADS" -f "$WORK/$1_$2.sql"
}
if (( WARMUP > 0 )); then
    for table in "${TABLES[@]}"; do
        run select "$table" prepared "$WARMUP" >/dev/null || die "warm-up on $table failed"
    done
fi
cell=0
for mode in $MODES; do
    for w in "${WORKLOADS[@]}"; do
        for (( r = 0; r < ROUNDS; r++ )); do
            for (( i = 0; i < ${#TABLES[@]}; i++ )); do
                table=${TABLES[$(( (i + cell + r) % ${#TABLES[@]} ))]}
                key="$mode/$w/$table"
                if res=$(run "$w" "$table" "$mode" "$DURATION"); then
                    read -r tps lat _ <<<"$res"
                    log "$(printf '%-9s %-7s %-13s tps %10.1f  lat %7.3f ms' "$mode" "$w" "$table" "$tps" "$lat")"
                    TPS_SUM[$key]=$(add "${TPS_SUM[$key]:-}" "$tps")
                    RUNS[$key]=$(( ${RUNS[$key]:-0} + 1 ))
                else
                    log "$mode $w $table: pgbench FAILED"
                    FAILED=1
                fi
            done
        done
        cell=$((cell + 1))
    done
done
bench_regionguards_alive || { log "RegionGuard exited during the run"; FAILED=1; }

MD="| mode | workload | plaintext TPS | encrypted TPS | encrypted ÷ plaintext |
|---|---|---:|---:|---:|"
printf '\n%-9s %-8s %14s %14s %10s\n' mode workload plaintext encrypted ratio
for mode in $MODES; do
    for w in "${WORKLOADS[@]}"; do
        p=""; e=""
        [[ -n "${RUNS[$mode/$w/people_plain]:-}" ]] && p=$(avg "${TPS_SUM[$mode/$w/people_plain]}" "${RUNS[$mode/$w/people_plain]}" "%.1f")
        [[ -n "${RUNS[$mode/$w/people_enc]:-}" ]] && e=$(avg "${TPS_SUM[$mode/$w/people_enc]}" "${RUNS[$mode/$w/people_enc]}" "%.1f")
        rt=$(ratio "$e" "$p")
        printf '%-9s %-8s %14s %14s %10s\n' "$mode" "$w" "${p:-FAIL}" "${e:-FAIL}" "$rt"
        MD+=$'\n'"| $mode | $w | ${p:-FAIL} | ${e:-FAIL} | **$rt** |"
    done
done
if [[ -n "$OUT" ]]; then
    {
        echo "<!-- generated by benches/encryption_compare.sh on $(date -u '+%Y-%m-%d %H:%M UTC') -->"
        echo "pgbench -n -c $CLIENTS -j $THREADS -T $DURATION, $ROUNDS round(s) per cell; $(nproc) CPUs;" \
             "$("$PG_BIN/postgres" --version); RegionGuard $(cd "$REPO" && git rev-parse --short HEAD 2>/dev/null || echo unknown)."
        echo
        echo "$MD"
    } > "$OUT"
    log "wrote $OUT"
fi
(( FAILED == 0 )) || die "some runs failed"
