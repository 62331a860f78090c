#!/usr/bin/env bash
# test/scenarios/alternatives.sh: the same kill-and-redeliver scenario against idem_apply and the
# designs used instead of it, measured the same way.
#
# Modes (examples/alternatives/consumer.c):
#   idem              one autocommit idem_apply call per message, ack after the commit
#   check-then-apply  SELECT from a processed table; if absent apply the effect (one transaction),
#                     then INSERT INTO processed (a second transaction); ack
#   redis-setnx       SET key NX PX ttl in Redis; if set apply the effect and ack, if not ack it as
#                     a duplicate; run with a 30 s lock and with a 2 s lock
#
# One deterministic stream (a redelivery log: every message once, plus a share delivered again a
# few places later, as after a lost ack, or much later, as after a rebalance) is loaded into a
# broker table for each run. Two consumers take unacked messages (a row lock held until the ack
# commits, so a dead consumer's message is redelivered at once), apply, then ack. Each mode is run
#   - with kills: random pauses of 0..ALT_JITTER_US between a consumer's steps, and ALT_KILLS
#     SIGKILLs of a random consumer at random moments, each restarted at once;
#   - clean, ALT_ROUNDS times, interleaved: no pauses, no kills; the median gives the throughput.
# Then: extra applications (an effect applied more than once), lost messages (never applied),
# deliveries/s. Pass/fail concerns idem only (0 and 0, balances exact, ledger complete) plus the
# harness itself (every delivery acked, no consumer error); the other modes are reported.
#
# Environment: ALT_MESSAGES (2000), ALT_ACCOUNTS (50), ALT_KILLS (40), ALT_JITTER_US (2000),
# ALT_SEED (42), ALT_ROUNDS (3, clean runs per mode), IDEM_REDIS_PORT (56379), IDEM_PGPORT
# (lib.sh), KEEP_TMP=1 keeps the temp dir.
# Needs: redis-server libhiredis-dev libpq-dev pkg-config gcc make (installed if missing).
# Final line: `N passed, N failed`; exit status 0 only when nothing failed.

# shellcheck source-path=SCRIPTDIR source=../../scripts/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/../../scripts/lib.sh"

MESSAGES=${ALT_MESSAGES:-2000}
ACCOUNTS=${ALT_ACCOUNTS:-50}
KILLS=${ALT_KILLS:-40}
JITTER=${ALT_JITTER_US:-2000}
SEED=${ALT_SEED:-42}
ROUNDS=${ALT_ROUNDS:-3}
REDIS_PORT=${IDEM_REDIS_PORT:-56379}
RUN_SECS=100          # per run, consumers and harness both give up after this

idem_ensure_deps "/usr/bin/redis-server|redis-server" "/usr/include/hiredis/hiredis.h|libhiredis-dev" \
	"/usr/include/postgresql/libpq-fe.h|libpq-dev" "/usr/bin/pkg-config|pkgconf"

TMP=$(idem_tmpdir)
PIDS=("" "" "")
REDIS_PIDFILE=$TMP/redis/redis.pid
REDIS_JOB=

stop_redis() {
	if [ -s "$REDIS_PIDFILE" ]; then
		kill -TERM "$(cat "$REDIS_PIDFILE")" 2>/dev/null || true
	fi
	if [ -n "$REDIS_JOB" ]; then wait "$REDIS_JOB" 2>/dev/null || true; REDIS_JOB=; fi
}
cleanup() {
	local rc=$? p
	set +e
	for p in "${PIDS[@]}"; do
		if [ -n "$p" ]; then kill -KILL "$p" 2>/dev/null; wait "$p" 2>/dev/null; fi
	done
	stop_redis
	[ "$rc" -eq 0 ] || IDEM_FAILED=1   # keep the temp dir and its logs
	idem_cluster_stop "$TMP"
	idem_checks_done "$rc"
}
trap cleanup EXIT

# --- build the consumer ------------------------------------------------------------------------
idem_log "building examples/alternatives/consumer"
BIN=$TMP/consumer
make -s -C "$IDEM_ROOT/examples/alternatives" OUT="$BIN" >/dev/null

# --- a private Redis: loopback only, its own port and dir, no persistence, as the test user ------
if redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1; then
	idem_die "something already answers on 127.0.0.1:$REDIS_PORT; set IDEM_REDIS_PORT"
fi
idem_as_pg mkdir -p "$TMP/redis"
idem_log "starting a private redis-server on 127.0.0.1:$REDIS_PORT"
idem_as_pg redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --protected-mode yes \
	--dir "$TMP/redis" --save "" --appendonly no --daemonize no \
	--pidfile "$REDIS_PIDFILE" --logfile "$TMP/redis/redis.log" &
REDIS_JOB=$!
for _ in $(seq 100); do
	redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1 && break
	sleep 0.1
done
redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1 ||
	idem_die "redis-server did not start; log: $TMP/redis/redis.log"

# --- a throwaway PostgreSQL cluster with the extension ----------------------------------------
idem_cluster_start "$TMP" "max_connections = 40"
psql_q() { psql -X -q -At -v ON_ERROR_STOP=1 "$@"; }
psql_q -c "CREATE EXTENSION idempotent"

# --- the stream: MINSTD generator in awk, so it is the same on every run and every awk ---------
# seq, msg_id, account, amount, cause. 12% of messages are delivered again 1-4 places later (a
# lost ack, redelivered while the first copy may still be in flight on the other consumer), 8%
# again 200-1500 places later (a rebalance).
awk -v n="$MESSAGES" -v seed="$SEED" -v accounts="$ACCOUNTS" '
	function rnd(k) { s = (s * 48271) % 2147483647; return s % k }
	function emit(m, cause) { pos++; printf "%d\t%d\t%d\t%d\t%s\n", pos, m, acct[m], amt[m], cause }
	function due(   k, j) {
		for (k = 1; k <= np; k++)
			if (pm[k] && pd[k] <= pos) { j = pm[k]; pm[k] = 0; emit(j, pc[k]); k = 0 }
	}
	BEGIN {
		s = seed % 2147483646 + 1; pos = 0; np = 0
		for (m = 1; m <= n; m++) {
			acct[m] = 1 + rnd(accounts); amt[m] = 1 + rnd(100)
			emit(m, "first")
			r = rnd(100)
			if (r < 12)      { np++; pm[np] = m; pd[np] = pos + 1 + rnd(4); pc[np] = "redelivery" }
			else if (r < 20) { np++; pm[np] = m; pd[np] = pos + 200 + rnd(1300); pc[np] = "rebalance" }
			due()
		}
		for (k = 1; k <= np; k++) if (pm[k]) { emit(pm[k], pc[k]); pm[k] = 0 }
	}' >"$TMP/stream.tsv"
chmod 644 "$TMP/stream.tsv"
STREAM_LEN=$(wc -l <"$TMP/stream.tsv")
REDELIVERED=$((STREAM_LEN - MESSAGES))
idem_log "stream: $MESSAGES messages, $STREAM_LEN deliveries ($REDELIVERED redelivered)"

# --- one run ------------------------------------------------------------------------------------
now_ms() { date +%s%3N; }

setup_schema() {   # setup_schema SCHEMA
	psql_q -v s="$1" -v accounts="$ACCOUNTS" <<-EOF
		SET client_min_messages = warning;
		CREATE SCHEMA :s;
		SET search_path = :s;
		CREATE TABLE accounts (id int PRIMARY KEY, balance bigint NOT NULL DEFAULT 0);
		INSERT INTO accounts (id) SELECT g FROM generate_series(1, :accounts) g;
		CREATE TABLE effects (msg_id int NOT NULL,
		    consumer text NOT NULL DEFAULT current_setting('application_name'));
		CREATE TABLE processed (msg_id int PRIMARY KEY);
		CREATE TABLE deliveries (seq bigint PRIMARY KEY, msg_id int NOT NULL, account int NOT NULL,
		    amount int NOT NULL, cause text NOT NULL, acked boolean NOT NULL DEFAULT false,
		    outcome text, acked_at timestamptz);
		\copy deliveries (seq, msg_id, account, amount, cause) FROM '$TMP/stream.tsv'
		CREATE INDEX ON deliveries (seq) WHERE NOT acked;
		CREATE SEQUENCE takes;
		CREATE TABLE run (started timestamptz, kills int, consumer_errors int);
		ANALYZE;
	EOF
}

start_consumer() {   # start_consumer SLOT: MODE SCHEMA TTL JIT set by run_mode
	local i=$1
	GEN=$((GEN + 1))
	"$BIN" "$MODE" "c$i" "$SCHEMA" -r "$REDIS_PORT" -t "$TTL" -j "$JIT" -s "$((SEED * 1000 + GEN))" \
		-m "$RUN_SECS" >>"$TMP/$SCHEMA.c$i.log" 2>&1 &
	PIDS[i]=$!
}

run_mode() {   # run_mode SCHEMA MODE TTL_MS JITTER_US KILLS
	SCHEMA=$1 MODE=$2 TTL=$3 JIT=$4
	local max_kills=$5 kills=0 errors=0 i rc next_kill deadline done1=0 done2=0
	setup_schema "$SCHEMA"
	GEN=0
	psql_q -c "INSERT INTO $SCHEMA.run VALUES (clock_timestamp(), 0, 0)"
	start_consumer 1
	start_consumer 2
	next_kill=$(($(now_ms) + 50 + RANDOM % 200))
	deadline=$((SECONDS + RUN_SECS))
	while [ $((done1 + done2)) -lt 2 ]; do
		if [ $SECONDS -ge $deadline ]; then
			echo "run $SCHEMA: not finished after ${RUN_SECS}s" >&2; errors=$((errors + 1)); break
		fi
		for i in 1 2; do
			[ -n "${PIDS[i]}" ] || continue
			kill -0 "${PIDS[i]}" 2>/dev/null && continue
			rc=0; wait "${PIDS[i]}" || rc=$?
			PIDS[i]=
			if [ "$rc" -eq 0 ]; then eval "done$i=1"
			else
				echo "run $SCHEMA: consumer c$i exited with $rc (see $TMP/$SCHEMA.c$i.log)" >&2
				errors=$((errors + 1))
				[ "$errors" -lt 5 ] && start_consumer "$i"
			fi
		done
		if [ "$kills" -lt "$max_kills" ] && [ "$(now_ms)" -ge "$next_kill" ]; then
			i=$((RANDOM % 2 + 1))
			if [ -n "${PIDS[i]}" ]; then
				kill -KILL "${PIDS[i]}" 2>/dev/null || true
				wait "${PIDS[i]}" 2>/dev/null || true
				PIDS[i]=
				kills=$((kills + 1))
				start_consumer "$i"
			fi
			next_kill=$(($(now_ms) + 50 + RANDOM % 200))
		fi
		sleep 0.01
	done
	psql_q -c "UPDATE $SCHEMA.run SET kills = $kills, consumer_errors = $errors"
}

# one line of numbers per run:
# delivered|extra|lost|unacked|wrong_balances|ledger_keys|skipped|secs|per_sec|kills|errors
measure() {   # measure SCHEMA
	psql_q -F '|' -v s="$1" <<-'EOF'
		SET search_path = :s, public;
		WITH per_msg AS (
		    SELECT m.msg_id, m.account, m.amount, count(e.msg_id) AS n
		    FROM (SELECT DISTINCT msg_id, account, amount FROM deliveries) m
		    LEFT JOIN effects e USING (msg_id)
		    GROUP BY m.msg_id, m.account, m.amount),
		expected AS (
		    SELECT a.id, coalesce(sum(p.amount), 0) AS balance
		    FROM accounts a LEFT JOIN per_msg p ON p.account = a.id GROUP BY a.id),
		t AS (SELECT (SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM takes) AS delivered,
		             extract(epoch FROM (SELECT max(acked_at) FROM deliveries)
		                               - (SELECT started FROM run)) AS secs)
		SELECT t.delivered,
		       (SELECT coalesce(sum(n - 1), 0) FROM per_msg WHERE n > 1),
		       (SELECT count(*) FROM per_msg WHERE n = 0),
		       (SELECT count(*) FROM deliveries WHERE NOT acked),
		       (SELECT count(*) FROM accounts a JOIN expected x USING (id) WHERE a.balance <> x.balance),
		       (SELECT count(*) FROM idem_ledger WHERE key LIKE :'s' || ':%'),
		       (SELECT count(*) FROM deliveries WHERE outcome = 'duplicate'),
		       round(t.secs, 2),
		       round(t.delivered / nullif(t.secs, 0)),
		       (SELECT kills FROM run), (SELECT consumer_errors FROM run)
		FROM t;
	EOF
}

declare -A R
MODES=("idem|idem|0" "cta|check-then-apply|0" "redis30|redis-setnx|30000" "redis2|redis-setnx|2000")
label_of() { if [ "$2" = redis-setnx ]; then echo "$2 (PX $3)"; else echo "$2"; fi; }
one_run() {   # one_run RUN MODE TTL JITTER KILLS
	local t0=$SECONDS
	idem_log "$1: $(label_of "" "$2" "$3"), $5 kills, pauses up to $4 us"
	run_mode "$1" "$2" "$3" "$4" "$5"
	R[$1]=$(measure "$1")
	echo "    delivered|extra|lost|unacked|wrong_bal|ledger|skipped|secs|per_s|kills|errors"
	echo "    ${R[$1]} ($((SECONDS - t0))s)"
}
# kill runs, then ROUNDS clean runs of every mode in turn (the machine's load drifts; the median
# of interleaved runs compares the modes under the same conditions)
for m in "${MODES[@]}"; do
	IFS='|' read -r tag mode ttl <<<"$m"
	one_run "kill_$tag" "$mode" "$ttl" "$JITTER" "$KILLS"
done
for round in $(seq "$ROUNDS"); do
	for m in "${MODES[@]}"; do
		IFS='|' read -r tag mode ttl <<<"$m"
		one_run "clean${round}_$tag" "$mode" "$ttl" 0 0
	done
done

# --- report -------------------------------------------------------------------------------------
field() { cut -d'|' -f"$2" <<<"${R[$1]}"; }
over_rounds() {   # over_rounds TAG FIELD: "min" or "min-max" of FIELD over the clean rounds
	local r vals=()
	for r in $(seq "$ROUNDS"); do vals+=("$(field "clean${r}_$1" "$2")"); done
	printf '%s\n' "${vals[@]}" | sort -n | sed -n '1p;$p' | paste -sd- | sed 's/^\(.*\)-\1$/\1/'
}
median_rate() {   # median_rate TAG
	local r
	for r in $(seq "$ROUNDS"); do field "clean${r}_$1" 9; done |
		sort -n | sed -n "$(((ROUNDS + 1) / 2))p"
}
echo
echo "stream: $MESSAGES messages, $STREAM_LEN deliveries ($REDELIVERED redelivered); 2 consumers"
printf '%-24s | %-34s | %-30s\n' "" "$KILLS SIGKILLs, pauses 0-${JITTER} us" \
	"no kills, no pauses ($ROUNDS runs)"
printf '%-24s | %9s %7s %8s %6s | %7s %8s %11s\n' mode delivered applied lost kills \
	applied lost "msgs/s"
printf '%-24s | %9s %7s %8s %6s | %7s %8s %11s\n' "" "" twice "" "" twice "" "(median)"
for m in "${MODES[@]}"; do
	IFS='|' read -r tag mode ttl <<<"$m"
	printf '%-24s | %9s %7s %8s %6s | %7s %8s %11s\n' "$(label_of "" "$mode" "$ttl")" \
		"$(field "kill_$tag" 1)" "$(field "kill_$tag" 2)" "$(field "kill_$tag" 3)" \
		"$(field "kill_$tag" 10)" \
		"$(over_rounds "$tag" 2)" "$(over_rounds "$tag" 3)" "$(median_rate "$tag")"
done
echo "(applied twice: extra applications of an effect; lost: messages never applied;"
echo " msgs/s: deliveries handled per second by the two consumers together; a-b: range over runs)"
echo

# --- checks: the harness for every run, exactly-once for idem -----------------------------------
for r in $(printf '%s\n' "${!R[@]}" | sort); do
	idem_check "$r: every delivery acked, no consumer error" \
		[ "$(field "$r" 4)" = 0 -a "$(field "$r" 11)" = 0 ]
done
idem_check "kill_idem: consumers were killed ($(field kill_idem 10) times) and messages redelivered" \
	[ "$(field kill_idem 10)" -gt 0 -a "$(field kill_idem 1)" -gt "$STREAM_LEN" ]
for r in kill_idem $(for n in $(seq "$ROUNDS"); do echo "clean${n}_idem"; done); do
	idem_check "$r: no effect applied twice" [ "$(field "$r" 2)" = 0 ]
	idem_check "$r: no message lost" [ "$(field "$r" 3)" = 0 ]
	idem_check "$r: every balance equals the exactly-once sum" [ "$(field "$r" 5)" = 0 ]
	idem_check "$r: one ledger key per message ($MESSAGES)" [ "$(field "$r" 6)" = "$MESSAGES" ]
done
idem_check "clean1_idem: deliveries reported duplicate = deliveries - messages" \
	[ "$(field clean1_idem 7)" = "$REDELIVERED" ]
