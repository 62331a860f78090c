#!/usr/bin/env bash
# scripts/bench.sh: what `make bench` runs. Builds and installs the extension, starts a throwaway
# socket-only cluster and measures what idem_apply costs against the statement it protects:
#   - in-server cost per call of the bare INSERT, the hand-written PL/pgSQL pattern, the key
#     recorded alone by a plain INSERT of a ledger-shaped row, and every idem_apply path (N calls
#     in one transaction from PL/pgSQL, R repetitions with the contenders interleaved, medians),
#     each on a fresh ledger;
#   - growth: new-key and duplicate cost with 10k, 100k, 1M (and 10M) keys in the ledger, and
#     the ledger's bytes per key after VACUUM;
#   - end to end: pgbench over the unix socket, one message per transaction, 1 and 2 clients;
#   - batches: 1000 messages per statement and transaction, messages per second on one client.
#   - batches in-server: 100 batches of 1000 messages, each one statement: the bare insert, the
#     set-based SQL pattern and idem_claim_batch + one set-based insert, new and duplicate messages.
# Prints one table with the targets' verdicts (PASS/MISS) and writes it to bench/results/latest.txt,
# the raw measurements to latest.csv and a plot to latest.png (gnuplot).
#   BENCH_FULL=1             also measure a ledger of 10 million keys (adds several minutes)
#   BENCH_CALLS=50000        calls per in-server measurement
#   BENCH_REPS=5             repetitions of the in-server and growth measurements
#   BENCH_GROWTH_CALLS=10000 calls per growth measurement
#   BENCH_PGBENCH_SECS=10    seconds per pgbench run (BENCH_PGBENCH_REPS=3 runs per contender)
#   BENCH_BATCH_SECS=5       seconds per batch run (as many runs as pgbench's)
#   BENCH_SYNC_COMMIT=off    synchronous_commit of the pgbench and batch runs: off measures what
#                            the extension adds to a transaction's CPU time; on adds a WAL flush
#                            per commit to both contenders (and the storage's latency noise)
#   BENCH_SKIP_BUILD=1       use the extension as installed, without building it
#   BENCH_OUT=DIR            where the results go (default: bench/results)
#   KEEP_TMP=1               keep the cluster's temp dir (it is kept anyway on failure)
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

calls=${BENCH_CALLS:-50000}
reps=${BENCH_REPS:-5}
growth_calls=${BENCH_GROWTH_CALLS:-10000}
pgbench_secs=${BENCH_PGBENCH_SECS:-10}
pgbench_reps=${BENCH_PGBENCH_REPS:-3}
batch_secs=${BENCH_BATCH_SECS:-5}
sync_commit=${BENCH_SYNC_COMMIT:-off}
full=${BENCH_FULL:-0}
out_dir=${BENCH_OUT:-$IDEM_ROOT/bench/results}
for v in calls reps growth_calls pgbench_secs pgbench_reps batch_secs; do
	[[ ${!v} =~ ^[1-9][0-9]*$ ]] || idem_die "$v must be a positive integer (got '${!v}')"
done
[[ $sync_commit =~ ^(on|off)$ ]] || idem_die "BENCH_SYNC_COMMIT must be on or off"
[ "$growth_calls" -le 10000 ] || idem_die "BENCH_GROWTH_CALLS must be at most 10000 (the smallest ledger)"

sizes=(10000 100000 1000000)
[ "$full" = 1 ] && sizes+=(10000000)

# the in-server paths, in the order of the table
paths=(overhead bare pattern_new pattern_dup record once_new once_dup newer next upsert claim_new)
declare -A label=(
	[overhead]="loop and key generation only"
	[bare]="bare INSERT (static SQL)"
	[pattern_new]="PL/pgSQL pattern, new key"
	[pattern_dup]="PL/pgSQL pattern, duplicate"
	[record]="key alone: ledger-shaped INSERT (SQL)"
	[once_new]="idem_apply once, new key"
	[once_dup]="idem_apply once, duplicate"
	[newer]="idem_apply newer, existing key"
	[next]="idem_apply_next, existing key"
	[upsert]="idem_upsert, existing key"
	[claim_new]="idem_claim, new key"
)

started=$(date +%s)
load_at_start=$(cut -d' ' -f1 /proc/loadavg)   # other work on the machine shows in the spread
idem_ensure_deps "/usr/bin/gnuplot-nox|gnuplot-nox"   # not /usr/bin/gnuplot: any gnuplot's alternative
if [ "${BENCH_SKIP_BUILD:-0}" = 1 ]; then
	idem_log "BENCH_SKIP_BUILD=1: using the extension as installed"
else
	idem_build_install
fi

# the library every backend of this run loads; if it is replaced meanwhile, the report says so
library=$("$PG_CONFIG" --pkglibdir)/idempotent.so
library_sum() { md5sum "$library" 2>/dev/null | cut -c1-12; }
library_at_start=$(library_sum)

tmp=$(idem_tmpdir)
trap 'idem_cluster_stop "$tmp"' EXIT
# fsync stays on (synchronous_commit: see BENCH_SYNC_COMMIT). No checkpoint or autovacuum runs
# in the middle of a measurement (the script vacuums where it needs to), and new WAL segments are
# not zero-filled, so that no contender pays for 16 MB of zeros now and then. The 10M-key ledger
# (about 1.3 GB) fits in shared_buffers. The library is preloaded, as it is where the purge worker
# and the statistics run (every call is counted); a writer then probes a new key once instead of
# twice (src/key_locks.c). The purge worker is off: nothing here expires.
idem_cluster_start "$tmp" "shared_preload_libraries = 'idempotent'
idempotent.purge_interval = 0
shared_buffers = 2GB
max_wal_size = 16GB
checkpoint_timeout = 1h
wal_init_zero = off
autovacuum = off
jit = off"
cp -r "$IDEM_ROOT/bench/setup.sql" "$IDEM_ROOT/bench/pgbench" "$tmp/"
if idem_is_root; then chown -R postgres: "$tmp/setup.sql" "$tmp/pgbench"; fi

# sql ARGS...: psql as the cluster's superuser, stopping at the first error
sql() { idem_as_pg psql -X -q -v ON_ERROR_STOP=1 "$@"; }
# val QUERY: one value, unaligned
val() { sql -At -c "$1"; }
# calc EXPR [FMT]: floating-point arithmetic, printed with FMT (default: 2 decimals)
calc() { awk "BEGIN { printf \"${2:-%.2f}\", $1 }"; }

sql -f "$tmp/setup.sql"

# ---------------------------------------------------------------------------------------------
idem_log "in-server paths: $calls calls per transaction, $reps repetitions, contenders interleaved"
{
	for ((r = 1; r <= reps; r++)); do
		printf '\\echo %s\n' "'    repetition $r/$reps'"
		for ((j = 0; j < ${#paths[@]}; j++)); do
			# each repetition starts one contender further, so none always runs first or last
			p=${paths[$(((j + r - 1) % ${#paths[@]}))]}
			echo "CALL bench.measure_path('$p', $r, $calls);"
		done
	done
} | sql

batch_paths=(bare pattern_new pattern_dup claim_new claim_dup)
idem_log "batches in-server: 100 batches of 1000 messages, $reps repetitions, contenders interleaved"
{
	for ((r = 1; r <= reps; r++)); do
		for ((j = 0; j < ${#batch_paths[@]}; j++)); do
			echo "CALL bench.measure_batch('${batch_paths[$(((j + r - 1) % ${#batch_paths[@]}))]}', $r, 100, 1000);"
		done
	done
} | sql

# ---------------------------------------------------------------------------------------------
# run_pgbench SECTION NAME SCRIPT CLIENTS SECS: one pgbench run on emptied tables; records its TPS.
run_pgbench() {
	local section=$1 name=$2 script=$3 clients=$4 secs=$5 rep=$6 out tps
	sql -c 'TRUNCATE bench.t, idem_ledger'
	out=$(cd "$tmp" && PGOPTIONS="-c synchronous_commit=$sync_commit" idem_as_pg \
		pgbench -n -M prepared -f "$tmp/pgbench/$script" \
		-c "$clients" -j "$clients" -T "$secs" 2>&1) ||
		{ printf '%s\n' "$out" >&2; idem_die "pgbench $script failed"; }
	tps=$(sed -n 's/^tps = \([0-9.]*\) (without initial connection time)$/\1/p' <<<"$out")
	[ -n "$tps" ] || { printf '%s\n' "$out" >&2; idem_die "no TPS in pgbench's output"; }
	if grep -q '^number of failed transactions: [1-9]' <<<"$out"; then
		printf '%s\n' "$out" >&2
		idem_die "pgbench $script had failed transactions"
	fi
	printf '    %-8s %-6s %d client(s): %s tps\n' "$section" "$name" "$clients" "$tps"
	sql -c "INSERT INTO bench.result VALUES ('$section', '${name}_c$clients', $rep, $tps)"
}

idem_log "pgbench: one message per transaction, ${pgbench_reps} x ${pgbench_secs} s per contender and client count"
sql -c 'TRUNCATE bench.t, bench.processed, idem_ledger' -c CHECKPOINT
for ((r = 1; r <= pgbench_reps; r++)); do
	for c in 1 2; do
		if ((r % 2)); then order=(bare idem); else order=(idem bare); fi
		for s in "${order[@]}"; do run_pgbench pgbench "$s" "$s.sql" "$c" "$pgbench_secs" "$r"; done
	done
done

idem_log "batches: 1000 messages per statement, 1 client, ${pgbench_reps} x ${batch_secs} s per contender"
for ((r = 1; r <= pgbench_reps; r++)); do
	if ((r % 2)); then order=(bare idem); else order=(idem bare); fi
	for s in "${order[@]}"; do run_pgbench batch "$s" "batch_$s.sql" 1 "$batch_secs" "$r"; done
done

# ---------------------------------------------------------------------------------------------
idem_log "growth: ledgers of ${sizes[*]} keys, $growth_calls calls x $reps repetitions each"
# Preloaded rows look like those idem_apply writes for a once key whose statement returned no
# rows, with the request identity of the statement that bench.run_dup_preloaded repeats.
fp=$(sql -At <<-'EOF'
	TRUNCATE bench.t, bench.processed, idem_ledger;
	BEGIN;
	SELECT (idem_apply('fingerprint-probe', NULL, 'SELECT 1 WHERE false')).status \gset
	SELECT request_hash FROM idem_ledger WHERE key = 'fingerprint-probe';
	ROLLBACK;
EOF
)
[[ $fp =~ ^-?[0-9]+$ ]] || idem_die "could not read the probe's fingerprint (got '$fp')"
prev=0
for size in "${sizes[@]}"; do
	echo "    preloading the ledger to $size keys"
	sql <<-EOF
		INSERT INTO idem_ledger (applied_at, version, rows, request_hash, policy, key)
		SELECT now(), NULL, 0, $fp, 'o', bench.key('pre_', i) FROM generate_series($((prev + 1)), $size) i;
		VACUUM ANALYZE idem_ledger;
		INSERT INTO bench.result
		SELECT 'heap_bytes', '$size', 0, pg_table_size('idem_ledger')
		UNION ALL SELECT 'index_bytes', '$size', 0, pg_indexes_size('idem_ledger')
		UNION ALL SELECT 'keys', '$size', 0, count(*) FROM idem_ledger;
	EOF
	{
		# Touch every page of the ledger from the measuring backend first, as a long-lived
		# consumer connection has: a page's first touch by a process costs a page fault.
		echo "SELECT count(*) FROM idem_ledger;"
		echo "SET enable_seqscan = off; SELECT count(*) FROM idem_ledger WHERE key > ''; RESET enable_seqscan;"
		for ((r = 1; r <= reps; r++)); do
			echo "CALL bench.measure_growth($size, $r, $growth_calls);"
			echo "VACUUM idem_ledger;"   # the rolled-back new keys
		done
	} | sql >/dev/null
	prev=$size
done

# ---------------------------------------------------------------------------------------------
# The report. med[SECTION/NAME], lo[...], hi[...]: median, min and max over the repetitions.
declare -A med lo hi
while IFS='|' read -r section name m mn mx; do
	med[$section/$name]=$m lo[$section/$name]=$mn hi[$section/$name]=$mx
done < <(sql -At -F'|' -c 'SELECT section, name, median, min, max FROM bench.summary')

mkdir -p "$out_dir"
sql -At -F, -c "SELECT section, name, rep, value FROM bench.result ORDER BY section, name, rep" |
	{ echo "section,name,rep,value"; cat; } >"$out_dir/latest.csv"

pg_version=$(val "SELECT version()")
cpu=$(awk -F': *' '/^model name/ { print $2; exit }' /proc/cpuinfo)
mem=$(awk '/^MemTotal/ { printf "%.0f GiB", $2 / 1048576 }' /proc/meminfo)
commit=$(git -C "$IDEM_ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)
if [ -n "$(git -C "$IDEM_ROOT" status --porcelain -- src idempotent--1.0.sql 2>/dev/null)" ]; then
	commit="$commit with uncommitted changes to the extension"
fi
if [ "${BENCH_SKIP_BUILD:-0}" = 1 ]; then
	build="installed library $library_at_start, not rebuilt (BENCH_SKIP_BUILD=1); tree at $commit"
else
	build="built from commit $commit, library $library_at_start"
fi
library_at_end=$(library_sum)
bare=${med[path/bare]} overhead=${med[path/overhead]}
largest=${sizes[-1]}
big_label=$([ "$largest" = 10000000 ] && echo 10M || echo "1M (10M: BENCH_FULL=1)")

met=0 total=0
# target LABEL VALUE OP LIMIT UNIT [FMT]: one line of the targets table, with its verdict
target() {
	local verdict=MISS
	total=$((total + 1))
	if awk "BEGIN { exit !(($2) $3 $4) }"; then verdict=PASS met=$((met + 1)); fi
	printf '  %-52s %12s  %2s %-9s %s\n' "$1" "$(calc "$2" "${6:-%.2f}")$5" "$3" "$4$5" "$verdict"
}
# thousands N: the integer N with thousands separators
thousands() { sed -e ':a' -e 's/\([0-9]\)\([0-9]\{3\}\)\($\|,\)/\1,\2\3/' -e 'ta' <<<"$1"; }

{
	printf 'idempotent benchmark (make bench), %s\n' "$(date -u '+%Y-%m-%d %H:%M UTC')"
	printf '  machine    %s CPUs, %s, %s RAM; load average before the run %s\n' \
		"$(nproc)" "$cpu" "$mem" "$load_at_start"
	printf '  server     %s, library preloaded (statistics on, purge worker off)\n' "${pg_version%% on *}"
	printf '  extension  %s\n' "$build"
	if [ "$library_at_end" != "$library_at_start" ]; then
		printf '  WARNING    %s was replaced during the run (%s, then %s): the results mix two builds\n' \
			"$library" "$library_at_start" "$library_at_end"
	fi
	printf '  statement  INSERT INTO bench.t (k, v) VALUES ($1, $2), table without index; keys of 20 bytes\n'
	echo
	printf 'In-server cost per call: %s calls in one transaction from PL/pgSQL, median of %s\n' "$calls" "$reps"
	printf 'repetitions with the contenders interleaved; each on a fresh ledger and empty tables.\n'
	printf '"net" leaves out the loop and key generation that every row includes.\n'
	printf '  %-36s %9s %9s %9s %17s\n' path 'us/call' 'x bare' 'net x' 'min..max us'
	for p in "${paths[@]}"; do
		m=${med[path/$p]}
		if [ "$p" = overhead ]; then ratio=- net=-; else
			ratio=$(calc "$m / $bare") net=$(calc "($m - $overhead) / ($bare - $overhead)")
		fi
		printf '  %-36s %9s %9s %9s %17s\n' "${label[$p]}" "$(calc "$m")" "$ratio" "$net" \
			"$(calc "${lo[path/$p]}")..$(calc "${hi[path/$p]}")"
	done
	echo '  (newer, next and upsert: version 2 on keys applied at version 1; duplicates: keys applied'
	echo '  and committed before the timed transaction)'
	echo
	printf 'Growth: policy once, ledger preloaded and VACUUM ANALYZEd, %s calls x %s repetitions\n' \
		"$growth_calls" "$reps"
	printf '(new keys rolled back after each measurement), medians; storage after VACUUM.\n'
	printf 'SQL lookup: the same keys as the duplicates, EXISTS (SELECT FROM idem_ledger WHERE key = $1).\n'
	printf '  %12s %9s %12s %12s %9s %9s %10s\n' 'keys' 'new us' 'duplicate us' 'SQL lookup us' \
		'heap MB' 'index MB' 'bytes/key'
	for size in "${sizes[@]}"; do
		printf '  %12s %9s %12s %12s %9s %9s %10s\n' "$(thousands "$size")" \
			"$(calc "${med[growth_new/$size]}")" "$(calc "${med[growth_dup/$size]}")" \
			"$(calc "${med[growth_sql/$size]}")" \
			"$(calc "${med[heap_bytes/$size]} / 1048576" %.1f)" \
			"$(calc "${med[index_bytes/$size]} / 1048576" %.1f)" \
			"$(calc "(${med[heap_bytes/$size]} + ${med[index_bytes/$size]}) / ${med[keys/$size]}" %.1f)"
	done
	[ "$full" = 1 ] || echo '  (10,000,000 keys: run with BENCH_FULL=1)'
	echo
	printf 'End to end: pgbench -M prepared over the unix socket, one message per transaction,\n'
	printf 'median TPS of %s runs of %s s, contenders interleaved; synchronous_commit = %s.\n' \
		"$pgbench_reps" "$pgbench_secs" "$sync_commit"
	printf '  %8s %14s %14s %8s\n' clients 'bare INSERT' 'idem_apply' ratio
	for c in 1 2; do
		printf '  %8s %14s %14s %8s\n' "$c" "$(calc "${med[pgbench/bare_c$c]}" %.0f)" \
			"$(calc "${med[pgbench/idem_c$c]}" %.0f)" \
			"$(calc "${med[pgbench/idem_c$c]} / ${med[pgbench/bare_c$c]}")"
	done
	echo
	printf 'Batches: 1000 messages per statement and transaction, 1 client, median of %s runs of %s s;\n' \
		"$pgbench_reps" "$batch_secs"
	printf 'the keys are built in the statement from one random number; synchronous_commit = %s.\n' \
		"$sync_commit"
	printf '  %-36s %14s\n' contender 'messages/s'
	printf '  %-36s %14s\n' 'bare INSERT ... SELECT FROM unnest' "$(calc "${med[batch/bare_c1]} * 1000" %.0f)"
	printf '  %-36s %14s\n' 'idem_apply per row, new keys' "$(calc "${med[batch/idem_c1]} * 1000" %.0f)"
	echo
	printf 'Batches in-server: 100 batches of 1000 messages, each one statement timed on its own\n'
	printf '(keys built before), median of %s repetitions; duplicates: the same batches committed before.\n' "$reps"
	printf '  %-52s %9s %9s\n' contender 'us/msg' 'x bare'
	for p in bare pattern_new pattern_dup claim_new claim_dup; do
		case $p in
		bare) l='bare INSERT ... SELECT FROM unnest' ;;
		pattern_new) l='SQL pattern (ON CONFLICT ... RETURNING), new' ;;
		pattern_dup) l='SQL pattern (ON CONFLICT ... RETURNING), duplicate' ;;
		claim_new) l='idem_claim_batch + one set-based INSERT, new' ;;
		claim_dup) l='idem_claim_batch + one set-based INSERT, duplicate' ;;
		esac
		printf '  %-52s %9s %9s\n' "$l" "$(calc "${med[batch_path/$p]}")" \
			"$(calc "${med[batch_path/$p]} / ${med[batch_path/bare]}")"
	done
	echo
	printf 'Targets\n'
	printf '  %-52s %12s  %-12s %s\n' target measured limit verdict
	target 'single call, new key: idem_apply once / bare' "${med[path/once_new]} / $bare" '<=' 2.2 x
	target 'single call, duplicate: idem_apply once / bare' "${med[path/once_dup]} / $bare" '<=' 0.6 x
	target 'new key: idem_claim / the key alone as SQL' "${med[path/claim_new]} / ${med[path/record]}" '<' 1 x
	target 'pgbench, 1 client: idem_apply / bare TPS' "${med[pgbench/idem_c1]} / ${med[pgbench/bare_c1]}" '>=' 0.75 x
	target "growth, new key: $big_label / 10k" "${med[growth_new/$largest]} / ${med[growth_new/10000]}" '<=' 1.3 x
	target "growth, duplicate: $big_label / 10k" "${med[growth_dup/$largest]} / ${med[growth_dup/10000]}" '<=' 1.3 x
	target 'batch, new: SQL pattern / idem_claim_batch' "${med[batch_path/pattern_new]} / ${med[batch_path/claim_new]}" '>=' 2 x
	target 'batch, new: idem_claim_batch / bare insert' "${med[batch_path/claim_new]} / ${med[batch_path/bare]}" '<=' 4 x
	target 'batch, duplicate: SQL pattern / idem_claim_batch' "${med[batch_path/pattern_dup]} / ${med[batch_path/claim_dup]}" '>=' 2 x
	echo "  $met of $total targets met"
	printf '\n(%s s in all; raw measurements in %s, plot in %s)\n' "$(($(date +%s) - started))" \
		"${out_dir#"$IDEM_ROOT"/}/latest.csv" "${out_dir#"$IDEM_ROOT"/}/latest.png"
} >"$tmp/report.txt"

# ---------------------------------------------------------------------------------------------
for size in "${sizes[@]}"; do
	echo "$size ${med[growth_new/$size]} ${med[growth_dup/$size]} ${med[growth_sql/$size]}"
done >"$tmp/growth.dat"
for p in "${paths[@]}"; do
	case $p in overhead) continue ;; bare) color=1 ;; pattern_* | record) color=2 ;; *) color=3 ;; esac
	printf '"%s" %s %s\n' "${label[$p]}" "${med[path/$p]}" "$color"
done >"$tmp/paths.dat"
gnuplot-nox -e "growth='$tmp/growth.dat'; paths='$tmp/paths.dat'; out='$out_dir/latest.png'; bare=$bare;
	title='idempotent: in-server cost per call, median of $reps ($(nproc) CPUs, ${pg_version%% on *})'" \
	"$IDEM_ROOT/bench/plot.gp"

cp "$tmp/report.txt" "$out_dir/latest.txt"
echo
cat "$out_dir/latest.txt"
