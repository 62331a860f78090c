#!/usr/bin/env bash
# scripts/bench-purge.sh: what `make bench-purge` runs. Measures retention's two targets on a
# throwaway cluster:
#   - purge rate: a ledger with PURGE_KEYS expired keys (default 1,000,000) is purged the way the
#     worker does it, in transactions of PURGE_BATCH keys (default 1000); keys per second;
#   - latency under purge: one client applies new keys (one idem_apply per transaction, pgbench)
#     while the ledger is idle and again while the purge runs; p50/p99 of each and their ratio.
# Prints a table with the verdicts (purge >= 200k keys/s, p99 under purge <= 2x idle) and writes
# it to bench/results/purge.txt.
#   PURGE_KEYS=1000000  PURGE_BATCH=1000  BENCH_SKIP_BUILD=1 (use the installed extension)
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

keys=${PURGE_KEYS:-1000000}
batch=${PURGE_BATCH:-1000}
out=$IDEM_ROOT/bench/results/purge.txt
[[ $keys =~ ^[1-9][0-9]*$ && $batch =~ ^[1-9][0-9]*$ ]] || idem_die "PURGE_KEYS and PURGE_BATCH must be positive integers"

idem_ensure_deps
[ "${BENCH_SKIP_BUILD:-0}" = 1 ] || idem_build_install
tmp=$(idem_tmpdir)
trap 'idem_cluster_stop "$tmp"' EXIT
idem_cluster_start "$tmp" "shared_buffers = 1GB
max_wal_size = 8GB
checkpoint_timeout = 1h
autovacuum = off
jit = off"

sql() { idem_as_pg psql -X -q -v ON_ERROR_STOP=1 "$@"; }
val() { sql -At -c "$1"; }

sql -c 'CREATE EXTENSION idempotent' -c 'CREATE TABLE effects (k text, v int)' -c 'CREATE TABLE purged (n bigint)'
# the backlog: keys that expired a minute ago, written as idem_claim writes them
fill() {
	sql -c "INSERT INTO idem_ledger (applied_at, policy, key, expires_at)
	        SELECT now() - interval '1 hour', 'o', md5(g::text || '$1'), now() - interval '1 minute'
	        FROM generate_series(1, $keys) g" -c 'VACUUM ANALYZE idem_ledger' -c CHECKPOINT
}

# the client: one new key per transaction
cat >"$tmp/apply.sql" <<'EOF'
\set k random(1, 1000000000)
SELECT status FROM idem_apply('live:' || :k || ':' || :client_id, NULL, 'INSERT INTO effects VALUES ($1, $2)', 'live'::text, (:k)::int);
EOF
if idem_is_root; then chown postgres: "$tmp/apply.sql"; fi

# client SECONDS NAME: run the client for SECONDS, per-transaction log in $tmp/NAME.*
client() {
	(cd "$tmp" && idem_as_pg pgbench -n -M prepared -c 1 -T "$1" -f apply.sql -l --log-prefix="$2" >/dev/null 2>&1)
}

# latency NAME [FROM TO]: "p50 p99 count" in milliseconds of the transactions in NAME's log
# (those that ended between the epoch times FROM and TO, if given)
latency() {
	cat "$tmp/$1".* | awk -v from="${2:-0}" -v to="${3:-1e12}" '
		{ t = $5 + $6 / 1e6 } t >= from && t <= to { print $3 / 1000 }' | sort -n | awk '
		{ v[NR] = $1 } END { printf "%.3f %.3f %d\n", v[int(NR * 0.5) + 1], v[int(NR * 0.99) + 1], NR }'
}

# purge_all: delete every expired key, PURGE_BATCH per transaction in one session (as the
# worker does); prints keys and seconds
purge_all() {
	local t0 total
	t0=$(date +%s.%N)
	sql -c "DO \$\$ DECLARE n bigint; total bigint := 0;
		BEGIN
			LOOP
				n := idem_purge($batch); total := total + n; COMMIT;
				EXIT WHEN n < $batch;
			END LOOP;
			INSERT INTO purged VALUES (total);
		END \$\$"
	total=$(val "DELETE FROM purged RETURNING n")
	echo "$total $(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.3f", b - a }') $t0"
}

idem_log "backlog of $keys expired keys"
fill a
idem_log "purge alone"
read -r purged1 secs1 _ < <(purge_all)

fill b
idem_log "client alone"
client 10 idle
read -r idle_p50 idle_p99 idle_n < <(latency idle)
idem_log "client while the purge runs (only transactions that ended during the purge count)"
client 10 busy &
client_pid=$!
sleep 1
read -r purged2 secs2 start2 < <(purge_all)
wait "$client_pid"
read -r busy_p50 busy_p99 busy_n < <(latency busy "$start2" "$(awk -v a="$start2" -v s="$secs2" 'BEGIN { printf "%.6f", a + s }')")

rate=$(awk -v k="$purged1" -v s="$secs1" 'BEGIN { printf "%d", k / s }')
ratio=$(awk -v a="$busy_p99" -v b="$idle_p99" 'BEGIN { printf "%.2f", a / b }')
verdict() { awk -v m="$1" -v l="$2" -v op="$3" 'BEGIN { ok = (op == ">=") ? m >= l : m <= l; print ok ? "PASS" : "MISS" }'; }
{
	echo "idempotent purge benchmark (make bench-purge), $(date -u '+%Y-%m-%d %H:%M UTC')"
	echo "  machine  $(nproc) CPUs, $(awk -F': ' '/model name/ { print $2; exit }' /proc/cpuinfo)"
	echo "  backlog  $keys expired keys; purge in transactions of $batch keys (as the worker does)"
	echo
	printf '  %-44s %12s\n' "purge alone: keys deleted" "$purged1"
	printf '  %-44s %12s\n' "purge alone: seconds" "$secs1"
	printf '  %-44s %12s\n' "purge rate, keys/s" "$rate"
	printf '  %-44s %12s\n' "idem_apply, idle: p50 / p99 ms ($idle_n tx)" "$idle_p50 / $idle_p99"
	printf '  %-44s %12s\n' "idem_apply, under purge: p50 / p99 ms ($busy_n tx)" "$busy_p50 / $busy_p99"
	printf '  %-44s %12s\n' "(the concurrent purge deleted, in seconds)" "$purged2 in $secs2"
	echo
	printf '  %-44s %10s %10s %6s\n' target measured limit ""
	printf '  %-44s %10s %10s %6s\n' "purge rate, keys/s" "$rate" ">= 200000" "$(verdict "$rate" 200000 ">=")"
	printf '  %-44s %10s %10s %6s\n' "p99 under purge / p99 idle" "${ratio}x" "<= 2x" "$(verdict "$ratio" 2 "<=")"
} | tee "$out"
