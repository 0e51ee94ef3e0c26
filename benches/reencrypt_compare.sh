#!/usr/bin/env bash
# Re-encryption: throughput of a job in rows/s with RegionGuard on one
# relaying thread, and foreground pgbench TPS through the proxy with and
# without a job running at its default rate (the target is >= 0.8x).
# One local cluster and one RegionGuard, 127.0.0.1 only, bounded time.
#
# Usage: benches/reencrypt_compare.sh [--out FILE]
#
# Environment:
#   DURATION   seconds per pgbench run (default 15)
#   CLIENTS    pgbench clients (default 8)
#   TENANTS    tenants (default 60); ROWS rows each (default 500)
#   RG_THREADS RegionGuard's listen.threads (default 1: one core)
#   RG_BIN     RegionGuard binary (default: target/release/regionguard)
#   KEEP=1     keep the temp directory
#
# Table people_enc(tenant_id int, id bigint, email bytea, full_name text):
# email deterministic (bytea envelopes), full_name randomized (rg1: text
# form), loaded through the proxy. Phase 1: `keys rotate`, then a job at
# an unlimited rate (1,000,000 rows/s) re-encrypts every value; rows/s is
# values rewritten per second of wall time, and per second of RegionGuard
# CPU. Phase 2: `keys rotate` again; pgbench point selects of people_enc
# (both columns decrypted) without a job, with a job at the default rate,
# and without again; the ratio is the TPS with the job over the mean of the
# two runs without.
set -euo pipefail

DURATION=${DURATION:-15}
CLIENTS=${CLIENTS:-8}
TENANTS=${TENANTS:-60}
ROWS=${ROWS:-500}
RG_THREADS=${RG_THREADS:-1}
THREADS=2
BENCH_NAME=reencrypt_compare
# shellcheck source=benches/lib/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"
bench_args "$@"
REPO=$BENCH_REPO
bench_check_uint DURATION "$DURATION"
bench_check_uint TENANTS "$TENANTS"
bench_check_uint ROWS "$ROWS"

bench_find_pg_tools
bench_find_regionguard
bench_workdir
bench_ports PG_PORT RG_PORT
bench_start_postgres 1

psql_at "$PG_PORT" "
CREATE TABLE people_enc (tenant_id int NOT NULL, id bigint NOT NULL, email bytea, full_name text,
    PRIMARY KEY (tenant_id, id));" >/dev/null

head -c 32 /dev/urandom | base64 | sed 's/^/1:/' > "$WORK/eu.key"
chmod 600 "$WORK/eu.key"
mkdir -m 700 "$WORK/admin"
SOCKET=$WORK/admin/admin.sock
{
    bench_rg_config_head "$RG_PORT" eu
    bench_rg_region eu
    cat <<EOF

[regions.eu.key]
source = "file"
path = "$WORK/eu.key"

[admin]
socket = "$SOCKET"
audit_log = "$WORK/admin/audit.jsonl"

[tenancy]
column = "tenant_id"
tables = ["people_enc"]

[classes.contact]
encrypt = "deterministic"

[classes.pii]
encrypt = "randomized"

[classified.people_enc.email]
class = "contact"
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
RG_PID=${RG_PID_OF[rg]}

ctl() { timeout 600 "$RG_BIN" ctl --socket "$SOCKET" "$@"; }

log "loading $TENANTS tenants x $ROWS rows through the proxy"
for (( t = 0; t < TENANTS; t++ )); do
    values=""
    for (( id = 1; id <= ROWS; id++ )); do
        values+="${values:+,}($t, $id, '$(( 1000000000000 + t * 100000 + id ))', 'name $t/$id')"
    done
    echo "INSERT INTO people_enc (tenant_id, id, email, full_name) VALUES $values;"
done > "$WORK/load.sql"
timeout 600 "$PSQL" -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$RG_PORT" -U "$PGUSER_NAME" -d "$PGDB" \
    -f "$WORK/load.sql" >"$WORK/load.log" 2>&1 || { cat "$WORK/load.log" >&2; die "loading failed"; }
VALUES=$(( TENANTS * ROWS * 2 ))

# Values under an older version than the active one (version bytes of the
# envelope header, both storage forms), read directly.
old_values() { # active version
    psql_at "$PG_PORT" "SELECT
        (SELECT count(*) FROM people_enc WHERE substring(email FROM 3 FOR 4) < int4send($1))
      + (SELECT count(*) FROM people_enc
         WHERE substring(decode(substring(full_name FROM 5 FOR 8), 'base64') FROM 3 FOR 4) < int4send($1))"
}

# --- phase 1: throughput -----------------------------------------------------
ctl keys rotate --region eu >/dev/null
(( $(old_values 2) == VALUES )) || die "expected $VALUES values under version 1"
cpu0=$(proc_cpu_ticks "$RG_PID")
t0=$(date +%s.%N)
ctl --json reencrypt --region eu --rate 1000000 --wait > "$WORK/job1.json" \
    || { cat "$WORK/job1.json" >&2; die "the re-encryption job did not finish"; }
t1=$(date +%s.%N)
cpu1=$(proc_cpu_ticks "$RG_PID")
(( $(old_values 2) == 0 )) || die "values left under version 1"
done1=$(sed -n 's/.*"rows_done":\([0-9]*\).*/\1/p' "$WORK/job1.json")
WALL=$(awk -v a="$t0" -v b="$t1" 'BEGIN {printf "%.2f", b - a}')
CPU=$(awk -v a="$cpu0" -v b="$cpu1" -v t="$CLK_TCK" 'BEGIN {printf "%.2f", (b - a) / t}')
RATE=$(awk -v n="$done1" -v s="$WALL" 'BEGIN {printf "%.0f", n / s}')
PER_CPU=$(awk -v n="$done1" -v s="$CPU" 'BEGIN { if (s > 0) printf "%.0f", n / s; else print "n/a" }')
log "phase 1: $done1 values in ${WALL}s wall, ${CPU}s RegionGuard CPU: $RATE values/s, $PER_CPU per CPU-second"

# --- phase 2: foreground TPS with and without a job at the default rate -----
ctl keys rotate --region eu >/dev/null
cat > "$WORK/select.sql" <<EOF
\\set t random(0, $((TENANTS - 1)))
\\set id random(1, $ROWS)
SELECT email, full_name FROM people_enc WHERE tenant_id = :t AND id = :id;
EOF
run() { bench_pgbench "$RG_PORT" "$DURATION" -M prepared -c "$CLIENTS" -j "$THREADS" -f "$WORK/select.sql"; }
run >/dev/null || die "warm-up failed"   # warm-up: same length as a measured run
read -r base1 _ <<<"$(run)" || die "pgbench without a job failed"
log "without a job: $base1 tps"
ctl --json reencrypt --region eu > "$WORK/job2.json" || { cat "$WORK/job2.json" >&2; die "cannot start the job"; }
JOB=$(sed -n 's/.*"id":"\([^"]*\)".*/\1/p' "$WORK/job2.json")
read -r withjob _ <<<"$(run)" || die "pgbench with a job failed"
# Newest job first in the list: this one.
state=$(ctl --json jobs | grep -o '"state":"[a-z]*"' | head -1)
done2=$(ctl --json jobs | grep -o '"rows_done":[0-9]*' | head -1 | cut -d: -f2)
log "with job $JOB at the default rate: $withjob tps ($done2 values re-encrypted meanwhile, $state)"
[[ $state == '"state":"running"' ]] || log "warning: the job was no longer running at the end of the run"
ctl jobs cancel "$JOB" >/dev/null || true
read -r base2 _ <<<"$(run)" || die "pgbench without a job failed"
log "without a job again: $base2 tps"
bench_regionguards_alive || die "RegionGuard exited during the run"

BASE=$(awk -v a="$base1" -v b="$base2" 'BEGIN {printf "%.1f", (a + b) / 2}')
R=$(ratio "$withjob" "$BASE")
printf '\n%-44s %12s\n' "re-encryption, unlimited rate (values/s)" "$RATE"
printf '%-44s %12s\n' "re-encryption per RegionGuard CPU-second" "$PER_CPU"
printf '%-44s %12s\n' "pgbench TPS without a job (mean of 2)" "$BASE"
printf '%-44s %12s\n' "pgbench TPS with a job at the default rate" "$withjob"
printf '%-44s %12s\n' "with ÷ without (target >= 0.8)" "$R"
if [[ -n "$OUT" ]]; then
    {
        echo "<!-- generated by benches/reencrypt_compare.sh on $(date -u '+%Y-%m-%d %H:%M UTC') -->"
        echo "$TENANTS tenants x $ROWS rows (two encrypted columns: $VALUES values); RegionGuard listen.threads = $RG_THREADS;" \
             "pgbench -n -M prepared -c $CLIENTS -j $THREADS -T $DURATION; $(nproc) CPUs;" \
             "$("$PG_BIN/postgres" --version); RegionGuard $(cd "$REPO" && git rev-parse --short HEAD 2>/dev/null || echo unknown)."
        echo
        echo "| measure | value |"
        echo "|---|---:|"
        echo "| re-encryption at an unlimited rate, values/s (wall) | $RATE |"
        echo "| re-encryption per RegionGuard CPU-second | $PER_CPU |"
        echo "| pgbench TPS without a job (mean of before and after) | $BASE |"
        echo "| pgbench TPS with a job at the default rate (500 rows/s) | $withjob |"
        echo "| with ÷ without | **$R** |"
    } > "$OUT"
    log "wrote $OUT"
fi
