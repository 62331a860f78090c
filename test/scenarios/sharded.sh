#!/usr/bin/env bash
# test/scenarios/sharded.sh: exactly-once payments over shard nodes behind a PL/Proxy router.
#
# Starts four throwaway PostgreSQL 15 clusters, each in its own temporary directory, as the
# unprivileged test user, listening on unix sockets only: a router (examples/sharded/router.sql,
# PL/Proxy cluster of 8 partitions) and shard nodes A (partitions 0-3), B (4-7) and C (none yet),
# each with examples/sharded/shard.sql. Then:
#   1. throughput, SHARD_ROUNDS rounds, medians: examples/sharded/consumer on node A directly
#      and the same through the router on keys A owns (the router's cost), with one consumer and
#      with SHARD_CONSUMERS; then SHARD_CONSUMERS through the router on keys of A and B (per node);
#   2. the stream: SHARD_CONSUMERS consumers call the router's pay() with a duplicated,
#      reordered stream of SHARD_MESSAGES payments; each acks every SHARD_ACK_EVERY messages and
#      on any error goes back to its last ack. A quarter of the way in, node A is killed with
#      SIGKILL (postmaster and every backend) and restarted; half way in, partition
#      SHARD_PARTITION is moved from B to C with examples/sharded/move-partition.sh;
#   3. checks: every payment charged exactly once, on the node that owns its key, with its key in
#      that node's ledger; sums per account and in total match; the moved partition lives on C
#      only and took payments there; redeliveries happened and came back as duplicates;
#   4. a naive path (pay_naive(): the INSERT without idem_apply, through the same router) fed the
#      start of the same stream double-charges: the checks can fail.
# Prints the measured figures, a table and `N passed, N failed`; exits non-zero on any failure.
# Everything is stopped in a trap (pg_ctl -m immediate); the temp dirs are removed unless a
# check failed or KEEP_TMP=1.
#
#   test/scenarios/sharded.sh          (as root, or as a user with sudo for the install)
#
# Settings (environment): SHARD_MESSAGES (12000), SHARD_DUPLICATES (30, % delivered twice),
# SHARD_CONSUMERS (2), SHARD_ACK_EVERY (20), SHARD_BENCH (3000, payments per consumer and
# throughput run), SHARD_ROUNDS (5, throughput rounds; the medians are reported),
# SHARD_PARTITION (5, moved from B to C), SHARD_NAIVE (1; 0 skips the naive run), SHARD_SEED (1),
# SHARD_PORT (54340; the clusters use it and the next three), KEEP_TMP=1 keeps the logs.
# shellcheck source=../../scripts/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/../../scripts/lib.sh"

if [ $# -gt 0 ]; then	# no arguments: settings come from the environment
	sed -n '2,/^# SHARD_PORT/s/^# \{0,1\}//p' "${BASH_SOURCE[0]}"
	exit 2
fi

MESSAGES=${SHARD_MESSAGES:-12000}
DUPLICATES=${SHARD_DUPLICATES:-30}
CONSUMERS=${SHARD_CONSUMERS:-2}
ACK_EVERY=${SHARD_ACK_EVERY:-20}
BENCH=${SHARD_BENCH:-3000}
ROUNDS=${SHARD_ROUNDS:-5}
MOVED=${SHARD_PARTITION:-5}
SEED=${SHARD_SEED:-1}
PORT=${SHARD_PORT:-54340}
ACCOUNTS=100
PARTITIONS=8
EXAMPLE=$IDEM_ROOT/examples/sharded

idem_ensure_deps "${PG_BINDIR%/bin}/lib/plproxy.so|postgresql-15-plproxy" \
	"/usr/include/postgresql/libpq-fe.h|libpq-dev" "/usr/bin/pgrep|procps"

# --- work directory, nodes, cleanup --------------------------------------------------------
WORK=$(mktemp -d /tmp/idem-sharded.XXXXXX)
NODES=(router a b c)
declare -A DIR NODE_PORT CONN PG_JOB
CONSUMER_PIDS=()

cleanup() {
	local rc=$? n d
	set +e	# clean up everything, whatever fails
	[ "$rc" -eq 0 ] || IDEM_FAILED=1
	idem_stop_consumers
	for n in "${NODES[@]}"; do
		d=${DIR[$n]:-}
		[ -n "$d" ] && [ -f "$d/data/postmaster.pid" ] || continue
		(cd "$d" && idem_as_pg pg_ctl -D "$d/data" -m immediate -w stop >/dev/null 2>&1) ||
			echo "warning: could not stop the cluster in $d/data" >&2
		[ -z "${PG_JOB[$n]:-}" ] || wait "${PG_JOB[$n]}" 2>/dev/null
	done
	if [ "${IDEM_FAILED:-0}" = 1 ] || [ "${KEEP_TMP:-0}" = 1 ]; then
		echo "kept $WORK (streams, consumer output) and the clusters (server.log in each):"
		for n in "${NODES[@]}"; do [ -n "${DIR[$n]:-}" ] && echo "  $n: ${DIR[$n]}"; done
	else
		rm -rf "$WORK"
		for n in "${NODES[@]}"; do [ -n "${DIR[$n]:-}" ] && rm -rf "${DIR[$n]}"; done
	fi
	idem_checks_done "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

idem_log "building examples/sharded/consumer"
mkdir -p "$WORK/bin"
make -s -C "$WORK/bin" -f "$EXAMPLE/Makefile" VPATH="$EXAMPLE"
CONSUMER=$WORK/bin/consumer

i=0
for n in "${NODES[@]}"; do
	DIR[$n]=$(idem_tmpdir)
	NODE_PORT[$n]=$((PORT + i)); i=$((i + 1))
	IDEM_PGPORT=${NODE_PORT[$n]} idem_cluster_start "${DIR[$n]}" "max_connections = 40"
	CONN[$n]="host=${DIR[$n]} port=${NODE_PORT[$n]} dbname=shop"
done
unset PGHOST PGPORT PGDATABASE	# every command below names its node

# Node A, the one killed below, runs as a child of this script rather than of pg_ctl, so that
# this script reaps it when it dies: a dead postmaster nobody has reaped would keep its pid, and
# its restart would take it for a running one.
start_node() {	# start_node NODE: start the stopped cluster of NODE in the background; wait until ready
	local attempt i
	for ((attempt = 1; attempt <= 5; attempt++)); do
		(cd "${DIR[$1]}" && exec </dev/null && idem_as_pg postgres -D "${DIR[$1]}/data" >>"${DIR[$1]}/server.log" 2>&1) &
		PG_JOB[$1]=$!
		for ((i = 0; i < 600; i++)); do
			pg_isready -q -h "${DIR[$1]}" -p "${NODE_PORT[$1]}" && return 0
			kill -0 "${PG_JOB[$1]}" 2>/dev/null || break
			sleep 0.1
		done
		# it exited: after a SIGKILL, a backend that had not yet noticed may still hold the old
		# shared memory for a moment; anything else shows in the log
		wait "${PG_JOB[$1]}" 2>/dev/null || true
		PG_JOB[$1]=''
		sleep 1
	done
	tail -n 20 "${DIR[$1]}/server.log" >&2
	idem_die "node $1 did not start"
}
(cd "${DIR[a]}" && idem_as_pg pg_ctl -D "${DIR[a]}/data" -m fast -w stop >/dev/null)
start_node a
PSQL=(psql -X -q -At -v ON_ERROR_STOP=1)
q() { "${PSQL[@]}" -d "${CONN[$1]}" -c "$2"; }	# q NODE SQL

owned() { case $1 in a) echo '{0,1,2,3}' ;; b) echo '{4,5,6,7}' ;; *) echo '{}' ;; esac; }
for n in a b c; do
	"${PSQL[@]}" -d "host=${DIR[$n]} port=${NODE_PORT[$n]} dbname=postgres" -c 'CREATE DATABASE shop'
	"${PSQL[@]}" -d "${CONN[$n]}" -v partitions=$PARTITIONS -v owned="$(owned $n)" -f "$EXAMPLE/shard.sql"
	# the naive path, for step 4 only: the same charge without idem_apply or the ownership check
	"${PSQL[@]}" -d "${CONN[$n]}" <<-'SQL'
		CREATE TABLE charges_naive (LIKE charges INCLUDING DEFAULTS);
		CREATE FUNCTION pay_naive(key text, account int, amount numeric) RETURNS text
		LANGUAGE sql AS 'INSERT INTO charges_naive (key, account, amount) VALUES (key, account, amount)
		    RETURNING ''applied''';
	SQL
done
"${PSQL[@]}" -d "host=${DIR[router]} port=${NODE_PORT[router]} dbname=postgres" \
	-c 'CREATE DATABASE shop' -c 'CREATE DATABASE checks'
"${PSQL[@]}" -d "${CONN[router]}" -v node0="${CONN[a]}" -v node1="${CONN[b]}" -f "$EXAMPLE/router.sql"
"${PSQL[@]}" -d "${CONN[router]}" <<-'SQL'
	CREATE FUNCTION pay_naive(key text, account int, amount numeric) RETURNS text
	LANGUAGE plproxy AS $$ CLUSTER 'payments'; RUN ON hashtext(key); $$;
SQL
CHECKS="host=${DIR[router]} port=${NODE_PORT[router]} dbname=checks"
idem_log "router and shards A, B, C up: $PARTITIONS partitions, A owns 0-3, B 4-7, C none"

sockets_only() {
	local n
	for n in "${NODES[@]}"; do [ -z "$(q "$n" 'SHOW listen_addresses')" ] || return 1; done
}
idem_check "the four clusters listen on unix sockets only" sockets_only

# --- streams -------------------------------------------------------------------------------
# The payments and their deliveries: every payment once, a little out of order, and
# DUPLICATES % of them again a few hundred to a few thousand places later (a producer's retry,
# a broker's redelivery); the deliveries dealt round-robin to the consumers, so that the two
# copies of a payment may be on two consumers at once.
"${PSQL[@]}" -d "$CHECKS" <<-SQL
	SELECT setseed(0.$SEED);
	CREATE TABLE expected AS
	  SELECT format('pay-%s', lpad(g::text, 7, '0')) AS key,
	         1 + (random() * ($ACCOUNTS - 1))::int AS account,
	         round((1 + random() * 998)::numeric, 2) AS amount, g
	  FROM generate_series(1, $MESSAGES) g;
	CREATE TABLE deliveries AS
	  SELECT key, account, amount, g + random() * 200 AS pos FROM expected
	  UNION ALL
	  SELECT key, account, amount, g + 300 + random() * 3000 FROM expected WHERE random() < $DUPLICATES / 100.0;
	CREATE TABLE stream AS
	  SELECT (row_number() OVER (ORDER BY pos) - 1) % $CONSUMERS AS consumer, key, account, amount, pos
	  FROM deliveries;
SQL
for ((c = 0; c < CONSUMERS; c++)); do
	"${PSQL[@]}" -d "$CHECKS" -c "\\copy (SELECT key, account, amount FROM stream WHERE consumer = $c ORDER BY pos) TO '$WORK/stream.$c.csv' CSV"
done
DELIVERIES=$("${PSQL[@]}" -d "$CHECKS" -c 'SELECT count(*) FROM stream')

declare -A R	# results

# --- 1. throughput ---------------------------------------------------------------------------
# bench_run NAME NODE N ONLY_A: N consumers, BENCH fresh payments each, calling NODE (a node, or
# the router); ONLY_A=1 takes keys of node A's partitions only. Sets RATE (msgs/s, wall clock,
# all consumers together) and RATE_A, RATE_B (the share applied on A and on B).
bench_run() {
	local name=$1 node=$2 n=$3 filter=true c pid t0 ns
	[ "$4" = 1 ] && filter="hashtext(k) & $((PARTITIONS - 1)) < 4"
	for ((c = 0; c < n; c++)); do
		"${PSQL[@]}" -d "$CHECKS" -c "\\copy (SELECT k, 1 + g % $ACCOUNTS, 1.00 FROM (SELECT g,
			format('bench-%s-%s-%s', '$name', $c, g) AS k FROM generate_series(1, $BENCH * 3) g) s
			WHERE $filter LIMIT $BENCH) TO '$WORK/bench-$name.$c.csv' CSV"
	done
	t0=$(date +%s%N)
	for ((c = 0; c < n; c++)); do
		"$CONSUMER" --conninfo "${CONN[$node]}" --stream "$WORK/bench-$name.$c.csv" \
			>"$WORK/bench-$name.$c.out" 2>"$WORK/bench-$name.$c.err" &
		CONSUMER_PIDS+=($!)
	done
	for pid in "${CONSUMER_PIDS[@]}"; do wait "$pid"; done
	CONSUMER_PIDS=()
	ns=$(($(date +%s%N) - t0))
	RATE=$((n * BENCH * 1000000000 / ns))
	RATE_A=$(($(q a "SELECT count(*) FROM charges WHERE key LIKE 'bench-$name-%'") * 1000000000 / ns))
	RATE_B=$(($(q b "SELECT count(*) FROM charges WHERE key LIKE 'bench-$name-%'") * 1000000000 / ns))
}
median() { printf '%s\n' "$@" | sort -n | sed -n "$((($# + 1) / 2))p"; }

idem_log "throughput: $ROUNDS rounds of: 1 and $CONSUMERS consumers on node A directly, the same through the router, $BENCH payments per consumer"
declare -a D1 R1 DN RN RNA RNB
bench_run warm router "$CONSUMERS" 0	# not counted: first connections, caches
for ((r = 0; r < ROUNDS; r++)); do
	bench_run "d1r$r" a 1 1; D1+=("$RATE")
	bench_run "r1r$r" router 1 1; R1+=("$RATE")
	bench_run "dnr$r" a "$CONSUMERS" 1; DN+=("$RATE")
	bench_run "rnr$r" router "$CONSUMERS" 0; RN+=("$RATE") RNA+=("$RATE_A") RNB+=("$RATE_B")
done
R[direct]=$(median "${D1[@]}") R[router]=$(median "${R1[@]}")
R[direct_n]=$(median "${DN[@]}") R[spread]=$(median "${RN[@]}")
R[spread_a]=$(median "${RNA[@]}") R[spread_b]=$(median "${RNB[@]}")
R[router_cost]=$(awk -v d="${R[direct]}" -v r="${R[router]}" 'BEGIN { printf "%.0f", 100 * (1 - r / d) }')
R[router_us]=$(awk -v d="${R[direct]}" -v r="${R[router]}" 'BEGIN { printf "%.0f", 1e6 / r - 1e6 / d }')
echo "  medians of $ROUNDS rounds, messages/s (rounds: ${D1[*]} | ${R1[*]} | ${DN[*]} | ${RN[*]}):"
printf '    1 consumer,  node A directly:              %6s\n' "${R[direct]}"
printf '    1 consumer,  through the router to A:      %6s  (%s%% fewer, +%s us per message)\n' \
	"${R[router]}" "${R[router_cost]}" "${R[router_us]}"
printf '    %s consumers, node A directly:              %6s\n' "$CONSUMERS" "${R[direct_n]}"
printf '    %s consumers, through the router to A and B: %6s  (A %s, B %s)\n' \
	"$CONSUMERS" "${R[spread]}" "${R[spread_a]}" "${R[spread_b]}"
bench_sent=$(cat "$WORK"/bench-*.csv | wc -l)
idem_check "the throughput runs applied every payment ($bench_sent)" idem_eq \
	"$(cat "$WORK"/bench-*.out | awk '$3 == "applied"' | wc -l)" "$bench_sent"

# --- 2. the stream, with a shard killed and a partition moved --------------------------------
progress() { cat "$WORK"/stream.*.out 2>/dev/null | wc -l; }	# calls returned (acked or not)
wait_progress() {	# wait_progress N: until N calls returned; fails if the consumers have all exited
	local pid alive
	while [ "$(progress)" -lt "$1" ]; do
		alive=0
		for pid in "${CONSUMER_PIDS[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
		[ "$alive" = 1 ] || return 1
		sleep 0.05
	done
}
running() {	# running: how many consumers are still running
	local pid n=0
	for pid in "${CONSUMER_PIDS[@]}"; do kill -0 "$pid" 2>/dev/null && n=$((n + 1)); done
	echo "$n"
}

idem_log "stream: $MESSAGES payments in $DELIVERIES deliveries ($DUPLICATES% twice, reordered) to $CONSUMERS consumers through the router"
t0=$SECONDS
for ((c = 0; c < CONSUMERS; c++)); do
	"$CONSUMER" --conninfo "${CONN[router]}" --stream "$WORK/stream.$c.csv" --ack-every "$ACK_EVERY" \
		>"$WORK/stream.$c.out" 2>"$WORK/stream.$c.err" &
	CONSUMER_PIDS+=($!)
done

# A quarter of the way in: SIGKILL node A, the postmaster and every backend at once (a backend
# forked in between dies by itself when it finds the postmaster gone), then restart it: crash
# recovery.
kill_node() {	# kill_node NODE: SIGKILL its postmaster and all its children at once, reap them
	local pm children
	pm=$(head -n 1 "${DIR[$1]}/data/postmaster.pid")
	children=$(pgrep -P "$pm" | tr '\n' ' ' || true)
	# shellcheck disable=SC2086
	kill -KILL "$pm" $children
	wait "${PG_JOB[$1]}" 2>/dev/null || true
	PG_JOB[$1]=''
	KILLED="postmaster $pm and $(wc -w <<<"$children") children"
}
R[kill_running]=0
if wait_progress $((DELIVERIES / 4)); then
	R[kill_running]=$(running)
	kill_node a
	R[killed_at]=$(progress)
	idem_log "SIGKILLed node A ($KILLED) after ${R[killed_at]} calls"
	sleep 1
	start_node a
	idem_log "node A restarted after crash recovery"
fi

# Half way in: move partition MOVED from B to C with the documented procedure.
R[move_running]=0
if wait_progress $((DELIVERIES / 2)); then
	R[move_running]=$(running)
	R[moved_at]=$(progress)
	move_start=$(q c 'SELECT now()')
	idem_log "moving partition $MOVED from B to C after ${R[moved_at]} calls"
	"$EXAMPLE/move-partition.sh" "$MOVED" "${CONN[b]}" "${CONN[c]}" "${CONN[router]}" | sed 's/^/  /'
fi

rc_all=0
for pid in "${CONSUMER_PIDS[@]}"; do wait "$pid" || rc_all=$?; done
CONSUMER_PIDS=()
R[stream_secs]=$((SECONDS - t0))
idem_log "stream consumed in ${R[stream_secs]} s"
for ((c = 0; c < CONSUMERS; c++)); do grep '^consumed' "$WORK/stream.$c.err" | sed "s/^/  consumer $c: /" || true; done

# --- 3. what each node holds, gathered in the checks database --------------------------------
"${PSQL[@]}" -d "$CHECKS" <<-'SQL'
	CREATE TABLE bench_expected (key text, account int, amount numeric);
	CREATE TABLE node_charges (node text, key text, account int, amount numeric, partition int, charged_at timestamptz);
	CREATE TABLE node_ledger (node text, key text, partition int);
	CREATE TABLE node_partitions (node text, partition int, state text);
	CREATE TABLE router_map (partition int, node text);
	CREATE TABLE calls (consumer int, "offset" int, key text, status text);
SQL
for f in "$WORK"/bench-*.csv; do "${PSQL[@]}" -d "$CHECKS" -c "\\copy bench_expected FROM '$f' CSV"; done
for n in a b c; do
	q "$n" "\\copy (SELECT '$n', key, account, amount, shard_partition(key), charged_at FROM charges) TO '$WORK/$n.charges'"
	q "$n" "\\copy (SELECT '$n', key, shard_partition(key) FROM $(q "$n" "SELECT format('%s.idem_ledger', extnamespace::regnamespace) FROM pg_extension WHERE extname = 'idempotent'")) TO '$WORK/$n.ledger'"
	q "$n" "\\copy (SELECT '$n', partition, state FROM shard_partitions) TO '$WORK/$n.partitions'"
	"${PSQL[@]}" -d "$CHECKS" -c "\\copy node_charges FROM '$WORK/$n.charges'" \
		-c "\\copy node_ledger FROM '$WORK/$n.ledger'" -c "\\copy node_partitions FROM '$WORK/$n.partitions'"
	for ((p = 0; p < PARTITIONS; p++)); do
		[ "$(q router "SELECT partition_node($p)")" = "${CONN[$n]}" ] && echo "$p	$n"
	done
done >"$WORK/router.map"
"${PSQL[@]}" -d "$CHECKS" -c "\\copy router_map FROM '$WORK/router.map'"
for ((c = 0; c < CONSUMERS; c++)); do
	sed "s/^/$c /" "$WORK/stream.$c.out" | tr ' ' '\t' >"$WORK/calls.$c.tsv"
	"${PSQL[@]}" -d "$CHECKS" -c "\\copy calls FROM '$WORK/calls.$c.tsv'"
done
"${PSQL[@]}" -d "$CHECKS" -c "CREATE TABLE accounts_seen AS SELECT g AS account, 0::numeric AS total FROM generate_series(1, $ACCOUNTS) g"
for ((a = 1; a <= ACCOUNTS; a++)); do echo "$a	$(q router "SELECT account_total($a)")"; done >"$WORK/totals.tsv"
"${PSQL[@]}" -d "$CHECKS" -c "CREATE TABLE router_totals (account int, total numeric)" -c "\\copy router_totals FROM '$WORK/totals.tsv'"

while IFS='|' read -r name value; do R[$name]=$value; done < <("${PSQL[@]}" -d "$CHECKS" <<-SQL
	WITH per_key AS (
	  SELECT e.key, count(c.key) AS n FROM expected e LEFT JOIN node_charges c USING (key) GROUP BY 1),
	all_expected AS (SELECT key, account, amount FROM expected UNION ALL SELECT * FROM bench_expected),
	per_account AS (
	  SELECT a.account, a.total, (SELECT coalesce(sum(amount), 0) FROM all_expected e WHERE e.account = a.account) AS want
	  FROM router_totals a)
	SELECT 'map', string_agg(partition || '=' || node, ' ' ORDER BY partition) FROM router_map
	UNION ALL SELECT 'not_once', count(*)::text FROM per_key WHERE n <> 1
	UNION ALL SELECT 'never', count(*)::text FROM per_key WHERE n = 0
	UNION ALL SELECT 'twice', count(*)::text FROM per_key WHERE n > 1
	UNION ALL SELECT 'bench_not_once', count(*)::text FROM (
	  SELECT b.key FROM bench_expected b LEFT JOIN node_charges c USING (key) GROUP BY 1 HAVING count(c.key) <> 1) s
	UNION ALL SELECT 'unknown', count(*)::text FROM node_charges c WHERE key NOT IN (SELECT key FROM all_expected)
	-- on the node the router sends its partition to, and which serves that partition
	UNION ALL SELECT 'misrouted', count(*)::text FROM node_charges c LEFT JOIN router_map m USING (partition)
	  WHERE m.node IS DISTINCT FROM c.node
	UNION ALL SELECT 'unowned', count(*)::text FROM node_charges c
	  WHERE NOT EXISTS (SELECT 1 FROM node_partitions p WHERE (p.node, p.partition, p.state) = (c.node, c.partition, 'active'))
	UNION ALL SELECT 'ledger_misplaced', count(*)::text FROM node_ledger l LEFT JOIN router_map m USING (partition)
	  WHERE m.node IS DISTINCT FROM l.node
	UNION ALL SELECT 'ledger_without_charge', count(*)::text FROM node_ledger l
	  WHERE NOT EXISTS (SELECT 1 FROM node_charges c WHERE (c.node, c.key) = (l.node, l.key))
	UNION ALL SELECT 'charge_without_ledger', count(*)::text FROM node_charges c
	  WHERE NOT EXISTS (SELECT 1 FROM node_ledger l WHERE (c.node, c.key) = (l.node, l.key))
	UNION ALL SELECT 'ledger_keys', count(*)::text FROM node_ledger
	UNION ALL SELECT 'overcharged', to_char((SELECT coalesce(sum(amount), 0) FROM node_charges WHERE key LIKE 'pay-%')
	                                 - (SELECT sum(amount) FROM expected), 'FM999,999,990.00')
	UNION ALL SELECT 'wrong_accounts', count(*)::text FROM per_account WHERE total <> want
	UNION ALL SELECT 'per_node', string_agg(node || ' ' || n, ', ' ORDER BY node) FROM (
	  SELECT node, count(*) n FROM node_charges WHERE key LIKE 'pay-%' GROUP BY 1) s
	UNION ALL SELECT 'moved_on_b', count(*)::text FROM (
	  SELECT key FROM node_charges WHERE node = 'b' AND partition = $MOVED
	  UNION ALL SELECT key FROM node_ledger WHERE node = 'b' AND partition = $MOVED) s
	UNION ALL SELECT 'moved_on_c', count(*)::text FROM node_charges WHERE node = 'c' AND partition = $MOVED
	UNION ALL SELECT 'moved_after', count(*)::text FROM node_charges
	  WHERE node = 'c' AND charged_at > '${move_start:-infinity}'::timestamptz
	UNION ALL SELECT 'calls', count(*)::text FROM calls
	UNION ALL SELECT 'applied', count(*) FILTER (WHERE status = 'applied')::text FROM calls
	UNION ALL SELECT 'duplicate', count(*) FILTER (WHERE status = 'duplicate')::text FROM calls
	UNION ALL SELECT 'bad_status', count(*) FILTER (WHERE status NOT IN ('applied', 'duplicate'))::text FROM calls
	UNION ALL SELECT 'redelivered', (count(*) - count(DISTINCT (consumer, "offset")))::text FROM calls;
SQL
)
# what the consumers went through: errors (shard down, partition fenced), rewinds to their last ack
R[errors]=0 R[rewinds]=0 R[fenced]=0 R[down]=0
for ((c = 0; c < CONSUMERS; c++)); do
	e=$(awk '/^consumed /{ for (i = 1; i <= NF; i++) if ($(i + 1) == "errors,") print $i }' "$WORK/stream.$c.err")
	w=$(awk '/^consumed /{ for (i = 1; i <= NF; i++) if ($(i + 1) == "rewinds") print $i }' "$WORK/stream.$c.err")
	R[errors]=$((R[errors] + ${e:-0})) R[rewinds]=$((R[rewinds] + ${w:-0}))
	R[fenced]=$((R[fenced] + $(grep -c '^[0-9]* SH001 ' "$WORK/stream.$c.err" || true)))
done
R[down]=$((R[errors] - R[fenced]))
R[recovered]=$(grep -c 'database system was interrupted\|not properly shut down' "${DIR[a]}/server.log" || true)
R[ledger_expected]=$((MESSAGES + bench_sent))

echo
idem_check "the consumers finished the stream (exit status 0)" idem_eq "$rc_all" 0
idem_check "node A was SIGKILLed while all $CONSUMERS consumers ran" idem_eq "${R[kill_running]}" "$CONSUMERS"
idem_check "node A restarted through crash recovery" idem_gt0 "${R[recovered]}"
idem_check "the consumers saw node A down (${R[down]} failed calls) and rewound to their last ack (${R[rewinds]} times)" \
	idem_gt0 "$((R[down] > 0 && R[rewinds] > 0))"
idem_check "partition $MOVED was moved while all $CONSUMERS consumers ran" idem_eq "${R[move_running]}" "$CONSUMERS"
idem_check "the router maps partition $MOVED to C (${R[map]})" idem_eq "$(grep -c "^$MOVED	c$" "$WORK/router.map")" 1
idem_check "every payment charged exactly once" idem_eq "${R[not_once]}" 0
idem_check "no payment lost" idem_eq "${R[never]}" 0
idem_check "every bench payment charged exactly once" idem_eq "${R[bench_not_once]}" 0
idem_check "no charge for an unknown key" idem_eq "${R[unknown]}" 0
idem_check "every charge is on the node the router maps its key to" idem_eq "${R[misrouted]}" 0
idem_check "every charge is on a node serving its partition" idem_eq "${R[unowned]}" 0
idem_check "every ledger key is on the node the router maps it to" idem_eq "${R[ledger_misplaced]}" 0
idem_check "every charge has its key in its node's ledger, and every key its charge" \
	idem_eq "$((R[ledger_without_charge] + R[charge_without_ledger]))" 0
idem_check "the ledgers hold one key per payment (${R[ledger_keys]})" idem_eq "${R[ledger_keys]}" "${R[ledger_expected]}"
idem_check "total charged = total of the distinct payments" idem_eq "${R[overcharged]}" 0.00
idem_check "every account's total through the router (RUN ON ALL) is right" idem_eq "${R[wrong_accounts]}" 0
idem_check "nothing of partition $MOVED is left on B" idem_eq "${R[moved_on_b]}" 0
idem_check "partition $MOVED's charges are on C (${R[moved_on_c]})" idem_gt0 "${R[moved_on_c]}"
idem_check "C took payments after the move (${R[moved_after]})" idem_gt0 "${R[moved_after]}"
idem_check "every call returned applied or duplicate" idem_eq "${R[bad_status]}" 0
idem_check "messages were redelivered (${R[redelivered]}) and came back duplicate (${R[duplicate]})" \
	idem_gt0 "$((R[redelivered] > 0 && R[duplicate] > 0))"

# --- 4. the naive path: the same router, the charge without idem_apply ------------------------
if [ "${SHARD_NAIVE:-1}" = 1 ]; then
	idem_log "naive: the first 1500 deliveries of each consumer's stream through pay_naive()"
	for ((c = 0; c < CONSUMERS; c++)); do
		head -n 1500 "$WORK/stream.$c.csv" >"$WORK/naive.$c.csv"
		"$CONSUMER" --conninfo "${CONN[router]}" --function pay_naive --stream "$WORK/naive.$c.csv" \
			>"$WORK/naive.$c.out" 2>"$WORK/naive.$c.err" &
		CONSUMER_PIDS+=($!)
	done
	rc_naive=0
	for pid in "${CONSUMER_PIDS[@]}"; do wait "$pid" || rc_naive=$?; done
	CONSUMER_PIDS=()
	R[naive_extra]=0
	for n in a b c; do
		R[naive_extra]=$((R[naive_extra] + $(q "$n" 'SELECT count(*) - count(DISTINCT key) FROM charges_naive')))
	done
	idem_check "naive: the consumers finished" idem_eq "$rc_naive" 0
	idem_check "naive: it charged ${R[naive_extra]} payments again, so these checks catch the bug" idem_gt0 "${R[naive_extra]}"
fi

# --- summary ---------------------------------------------------------------------------------
row() { printf '  %-58s %12s\n' "$1" "$2"; }
echo
row 'payments (distinct keys)' "$MESSAGES"
row 'deliveries in the stream (duplicated, reordered)' "$DELIVERIES"
row 'calls returned (redeliveries after a rewind included)' "${R[calls]}"
row '  applied' "${R[applied]}"
row '  duplicate (ran nothing)' "${R[duplicate]}"
row '  delivered again after a rewind to the last ack' "${R[redelivered]}"
row 'failed calls while node A was down' "${R[down]}"
row "refused calls while partition $MOVED was fenced (SH001)" "${R[fenced]}"
row 'consumer rewinds to the last ack' "${R[rewinds]}"
row 'payments charged twice or more' "${R[twice]}"
row 'payments never charged' "${R[never]}"
row 'money charged twice' "${R[overcharged]}"
row 'payments per node at the end' "${R[per_node]}"
row "partition map at the end (partition=node)" "${R[map]}"
row 'seconds to consume the stream' "${R[stream_secs]}"
[ "${SHARD_NAIVE:-1}" = 1 ] && row 'naive path: extra charges (first 1500 deliveries each)' "${R[naive_extra]}"
echo
echo "  throughput, messages/s, medians of $ROUNDS rounds (one connection per consumer, one autocommit call"
echo "  per message; router and nodes share this machine's $(nproc) CPUs):"
printf '    1 consumer,  node A directly               %6s\n' "${R[direct]}"
printf '    1 consumer,  through the router            %6s   (%s%% fewer than directly, +%s us per message)\n' \
	"${R[router]}" "${R[router_cost]}" "${R[router_us]}"
printf '    %s consumers, node A directly               %6s\n' "$CONSUMERS" "${R[direct_n]}"
printf '    %s consumers, through the router, A and B   %6s   (A %s, B %s)\n' "$CONSUMERS" "${R[spread]}" "${R[spread_a]}" "${R[spread_b]}"
echo
echo "  (whole scenario: $SECONDS s)"
echo
