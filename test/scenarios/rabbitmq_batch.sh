#!/usr/bin/env bash
# test/scenarios/rabbitmq_batch.sh: exactly-once payments through a real RabbitMQ broker, taken in
# batches.
#
# Starts a private RabbitMQ node (Debian's rabbitmq-server, as the unprivileged `rabbitmq` user,
# AMQP, Erlang distribution and epmd on 127.0.0.1 only, all state in a temporary directory) and
# a throwaway PostgreSQL cluster with the extension. RMQB_CONSUMERS copies of
# examples/rabbitmq-batch/consumer.py (prefetch RMQB_PREFETCH, up to RMQB_BATCH messages per
# transaction through idem_claim_batch and one set-based statement, one ack with multiple=True
# after the commit) consume while examples/rabbitmq-batch/publisher.py publishes RMQB_MESSAGES
# payments with publisher confirms, re-publishing RMQB_DUPLICATES % of them as a retry after a
# simulated lost confirm; meanwhile this script SIGKILLs one consumer every 300-700 ms and
# restarts it, so that the broker redelivers what it had not acked, and each consumer ends
# itself abruptly after the commit of RMQB_CRASH % of its batches, before their ack, so that the
# broker redelivers batches that were applied.
# When the queue has drained it checks, in the database, per payment and per account, that
# every payment was charged exactly once, that every balance is right, and that redeliveries
# and duplicates did happen. Then it runs the same scenario with `consumer.py --naive` (the
# same statement without idem_claim_batch) and checks that it double-charges, i.e. that the
# scenario can catch the bug. It also sends one batch with bad messages in it (a malformed
# body, no message id, a key recorded under another policy, which fails the whole batch with
# ID002) and checks that the consumer runs that batch again one message at a time, rejects the
# bad ones and charges the rest once. Last, it measures throughput without kills: RMQB_BENCH
# payments published first, then drained by the batch consumers, and by examples/rabbitmq's
# consumer (one idem_apply per message) for comparison. Prints a table and
# `N passed, N failed`; exits non-zero on any failure. Everything is stopped in a trap.
#
#   test/scenarios/rabbitmq_batch.sh     (as root, or as a user with sudo for the install)
#
# Settings (environment): RMQB_MESSAGES (10000), RMQB_DUPLICATES (20), RMQB_CONSUMERS (3),
# RMQB_PREFETCH (500), RMQB_BATCH (250), RMQB_CRASH (5), RMQB_CHAOS_SECONDS (60),
# RMQB_DRAIN_TIMEOUT (60), RMQB_SEED (1), RMQB_PORT (56730; Erlang distribution on +1, epmd on
# +2), RMQB_NAIVE (1; 0 skips the naive run), RMQB_BENCH (10000; 0 skips the throughput runs),
# KEEP_TMP=1 keeps the logs.
# shellcheck source=../../scripts/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/../../scripts/lib.sh"
# shellcheck source-path=SCRIPTDIR source=../../scripts/rabbitmq.sh
. "$IDEM_ROOT/scripts/rabbitmq.sh"

if [ $# -gt 0 ]; then	# no arguments: settings come from the environment
	sed -n '2,/^# KEEP_TMP/s/^# \{0,1\}//p' "${BASH_SOURCE[0]}"
	exit 2
fi

MESSAGES=${RMQB_MESSAGES:-10000}
DUPLICATES=${RMQB_DUPLICATES:-20}
CONSUMERS=${RMQB_CONSUMERS:-3}
PREFETCH=${RMQB_PREFETCH:-500}
BATCH=${RMQB_BATCH:-250}
CRASH=${RMQB_CRASH:-5}
CHAOS_SECONDS=${RMQB_CHAOS_SECONDS:-60}
DRAIN_TIMEOUT=${RMQB_DRAIN_TIMEOUT:-60}
SEED=${RMQB_SEED:-1}
NAIVE=${RMQB_NAIVE:-1}
BENCH=${RMQB_BENCH:-10000}
ACCOUNTS=100
PYTHON=/usr/bin/python3
EXAMPLE=$IDEM_ROOT/examples/rabbitmq-batch
RANDOM=$SEED

# Debian packages, each checked by the file this script needs from it.
deps=(
	"$RMQ_SBIN/rabbitmq-server|rabbitmq-server" "/bin/ss|iproute2"
	"/usr/lib/python3/dist-packages/psycopg/__init__.py|python3-psycopg"
	"/usr/lib/python3/dist-packages/pika/__init__.py|python3-pika"
)
if [ "$BENCH" -gt 0 ]; then	# examples/rabbitmq's consumer, for the comparison
	deps+=("/usr/include/amqp.h|librabbitmq-dev" "/usr/include/postgresql/libpq-fe.h|libpq-dev"
		"/usr/bin/pkg-config|pkgconf")
fi
idem_ensure_deps "${deps[@]}"

# --- work directory, consumers, cleanup ----------------------------------------------------
WORK=$(mktemp -d /tmp/idem-rabbitmq-batch.XXXXXX)
PG_DIR=''
trap rmq_cleanup EXIT
trap 'exit 130' INT TERM

if [ "$BENCH" -gt 0 ]; then
	idem_log "building examples/rabbitmq (the per-message consumer, for the throughput comparison)"
	mkdir -p "$WORK/bin"
	make -s -C "$WORK/bin" -f "$IDEM_ROOT/examples/rabbitmq/Makefile" VPATH="$IDEM_ROOT/examples/rabbitmq" consumer
fi

# --- a private RabbitMQ node on loopback ----------------------------------------------------
rmq_start "${RMQB_PORT:-56730}" idem-batch RMQB_PORT
idem_check "RabbitMQ and epmd listen on loopback only" rmq_loopback_only

# --- PostgreSQL --------------------------------------------------------------------------------
PG_DIR=$(idem_tmpdir)
idem_cluster_start "$PG_DIR"
PSQL=(psql -X -q -v ON_ERROR_STOP=1 -At)

declare -A R	# results: R[mode.metric]

# --- one run: publish, consume under SIGKILLs, drain, measure ----------------------------------
run() {	# run MODE: MODE is idem or naive
	local mode=$1 queue=payments-$1 flag='' slot pub t0
	local -a pids=()
	[ "$mode" = naive ] && flag=--naive
	rmq_setup_db "$mode"

	start_consumer() {	# start_consumer SLOT
		PGDATABASE=$mode "$PYTHON" "$EXAMPLE/consumer.py" --port "$AMQP_PORT" --queue "$queue" \
			--prefetch "$PREFETCH" --batch "$BATCH" --crash-after-commit "$CRASH" $flag \
			>>"$WORK/$mode.consumer.$1.out" 2>>"$WORK/$mode.consumer.err" &
		pids[$1]=$!
		CONSUMER_PIDS=("${pids[@]}")
	}
	idem_log "[$mode] $CONSUMERS batch consumers (prefetch $PREFETCH, batches of up to $BATCH$([ -n "$flag" ] && echo ", $flag"));" \
		"publishing $MESSAGES payments, $DUPLICATES% of them twice (lost confirms); one consumer SIGKILLed every 300-700 ms," \
		"and each killing itself after $CRASH% of its commits"
	t0=$SECONDS
	for ((slot = 0; slot < CONSUMERS; slot++)); do start_consumer "$slot"; done
	"$PYTHON" "$EXAMPLE/publisher.py" --port "$AMQP_PORT" --queue "$queue" --count "$MESSAGES" \
		--duplicates "$DUPLICATES" --accounts "$ACCOUNTS" --seed "$SEED" \
		--manifest "$WORK/$mode.manifest" 2>"$WORK/$mode.publisher.log" &
	pub=$!
	rmq_chaos_drain "$mode" "$pub" "$t0" 300 400 3
	R[$mode.retried]=$(grep -c 'running it again' "$WORK/$mode.consumer.err" || true)
	R[$mode.crashes]=$(grep -c 'crashing after the commit' "$WORK/$mode.consumer.err" || true)
	R[$mode.one_by_one]=$(grep -c 'one by one' "$WORK/$mode.consumer.err" || true)
	rmq_measure "$mode"
}

# --- throughput without kills: a full queue drained by one kind of consumer --------------------
bench() {	# bench MODE: batch (consumer.py) or single (examples/rabbitmq's consumer)
	local mode=$1 db=bench_$1 queue=bench-$1 slot n=0 deadline name
	local -a cmd
	rmq_setup_db "$db"
	"$PYTHON" "$EXAMPLE/publisher.py" --port "$AMQP_PORT" --queue "$queue" --count "$BENCH" \
		--duplicates 0 --accounts "$ACCOUNTS" --seed "$SEED" 2>"$WORK/$db.publisher.log" ||
		{ cat "$WORK/$db.publisher.log" >&2; idem_die "the publisher failed"; }
	if [ "$mode" = batch ]; then
		cmd=("$PYTHON" "$EXAMPLE/consumer.py" --port "$AMQP_PORT" --queue "$queue" --prefetch "$PREFETCH" --batch "$BATCH")
	else
		cmd=("$WORK/bin/consumer" --port "$AMQP_PORT" --queue "$queue" --prefetch 50)
	fi
	name=${cmd[0]##*/}; [ "$mode" = batch ] && name=consumer.py
	idem_log "[bench] $BENCH payments in the queue, drained by $CONSUMERS $name"
	for ((slot = 0; slot < CONSUMERS; slot++)); do
		PGDATABASE=$db "${cmd[@]}" >"$WORK/$db.consumer.$slot.out" 2>>"$WORK/$db.consumer.err" &
		CONSUMER_PIDS+=($!)
	done
	deadline=$((SECONDS + DRAIN_TIMEOUT))
	while [ "$SECONDS" -lt "$deadline" ]; do
		n=$("${PSQL[@]}" -d "$db" -c 'SELECT count(*) FROM charges')
		[ "$n" -lt "$BENCH" ] || break
		sleep 0.2
	done
	idem_stop_consumers
	# from the first charge's commit to the last one's, the consumers' start-up left out
	R[bench.$mode.charged]=$n
	IFS='|' read -r "R[bench.$mode.rate]" "R[bench.$mode.per_tx]" < <("${PSQL[@]}" -d "$db" -c \
		"SELECT round(count(*) / extract(epoch FROM max(at) - min(at))), round(count(*)::numeric / count(DISTINCT xid))
		 FROM charges")
	R[bench.$mode.ok]=$("${PSQL[@]}" -d "$db" -c \
		"SELECT count(*) = $BENCH AND count(DISTINCT payment_id) = $BENCH FROM charges")
}

# --- bad messages in a batch: dropped one by one, the rest of the batch applied ---------------
poison() {
	local depth
	rmq_setup_db poison
	# a key recorded under policy newer: the batch's claim (policy once) fails with ID002
	"${PSQL[@]}" -d poison -c "SELECT status FROM idem_claim('poison-2', 7)" >/dev/null
	"$PYTHON" - "$AMQP_PORT" <<-'PY'
		import sys, pika
		conn = pika.BlockingConnection(pika.ConnectionParameters(host="127.0.0.1", port=int(sys.argv[1])))
		ch = conn.channel()
		ch.queue_declare(queue="payments-poison", durable=True)
		ch.confirm_delivery()
		for key, body in [("poison-1", "1 10.00"), ("poison-2", "2 20.00"), ("poison-3", "x y"),
		                  (None, "4 40.00"), ("poison-5", "5 50.00"), ("poison-1", "1 10.00")]:
		    ch.basic_publish("", "payments-poison", body, pika.BasicProperties(message_id=key))
		conn.close()
	PY
	PGDATABASE=poison "$PYTHON" "$EXAMPLE/consumer.py" --port "$AMQP_PORT" --queue payments-poison \
		>"$WORK/poison.consumer.out" 2>"$WORK/poison.consumer.err" &
	CONSUMER_PIDS=($!)
	for _ in $(seq 50); do
		[ "$(wc -l <"$WORK/poison.consumer.out")" -lt 6 ] || break
		sleep 0.2
	done
	kill -TERM "${CONSUMER_PIDS[0]}"; wait "${CONSUMER_PIDS[0]}" || true
	CONSUMER_PIDS=()
	R[poison.out]=$(sort "$WORK/poison.consumer.out" | tr '\n' ' ')
	R[poison.db]=$("${PSQL[@]}" -d poison -c "SELECT string_agg(payment_id || '=' || amount, ' ' ORDER BY payment_id)
		FROM charges" -c "SELECT string_agg(id || '=' || balance, ' ' ORDER BY id) FROM accounts WHERE balance <> 0" |
		tr '\n' ' ')
	R[poison.split]=$(grep -c 'one by one' "$WORK/poison.consumer.err" || true)
	depth=$(rmq_queue_depth payments-poison)
	R[poison.depth]=${depth:-?}
}

run idem
[ "$NAIVE" = 1 ] && run naive
poison
if [ "$BENCH" -gt 0 ]; then bench batch; bench single; fi

# --- checks --------------------------------------------------------------------------------------
echo
idem_check "idem: the queue drained within ${DRAIN_TIMEOUT}s" idem_eq "${R[idem.drained]}" 1
idem_check "idem: consumers were SIGKILLed (${R[idem.kills]}) or crashed after a commit, none exited otherwise" idem_eq "${R[idem.odd_exits]}" 0
idem_check "idem: the publisher re-published some payments (${R[idem.publishes]} publishes)" idem_gt0 "$((${R[idem.publishes]} - MESSAGES))"
idem_check "idem: every payment charged exactly once (per-key counts)" idem_eq "${R[idem.not_once]}" 0
idem_check "idem: every payment charged its own amount (per-key sums)" idem_eq "${R[idem.wrong_sum]}" 0
idem_check "idem: no charge for an unknown payment" idem_eq "${R[idem.unknown]}" 0
idem_check "idem: total charged = total of the distinct payments" idem_eq "${R[idem.overcharged]}" 0.00
idem_check "idem: every account balance is right" idem_eq "${R[idem.wrong_balances]}" 0
idem_check "idem: the ledger holds one key per payment" idem_eq "${R[idem.ledger]}" "$MESSAGES"
idem_check "idem: every delivery was applied or duplicate" idem_eq "${R[idem.errors]}" 0
idem_check "idem: no batch had to be split (${R[idem.one_by_one]})" idem_eq "${R[idem.one_by_one]}" 0
idem_check "idem: the broker redelivered messages (${R[idem.redelivered]})" idem_gt0 "${R[idem.redelivered]}"
idem_check "idem: idem_claim_batch reported duplicates (${R[idem.duplicate]})" idem_gt0 "${R[idem.duplicate]}"
idem_check "idem: consumers died after commits, before the ack (${R[idem.crashes]})" idem_gt0 "${R[idem.crashes]}"
idem_check "idem: payments published once came back after their commit, as duplicates (${R[idem.ack_lost]})" \
	idem_gt0 "${R[idem.ack_lost]}"
idem_check "idem: payments were charged in batches (${R[idem.batch_size]} per transaction on average)" \
	idem_gt0 "$(( ${R[idem.batch_size]:-0} > 1 ))"
if [ "$NAIVE" = 1 ]; then
	idem_check "naive: the queue drained within ${DRAIN_TIMEOUT}s" idem_eq "${R[naive.drained]}" 1
	idem_check "naive: no payment lost (the harness delivers everything)" idem_eq "${R[naive.never]}" 0
	idem_check "naive: it double-charged (${R[naive.twice]} payments), so this scenario catches the bug" idem_gt0 "${R[naive.twice]}"
	idem_check "naive: and the per-key sums show it (${R[naive.wrong_sum]} payments)" idem_gt0 "${R[naive.wrong_sum]}"
	idem_check "naive: payments published once were charged again after a crash between commit and ack (${R[naive.ack_lost]})" \
		idem_gt0 "${R[naive.ack_lost]}"
fi
idem_check "poison: a batch with bad messages: each said why" idem_eq "${R[poison.out]}" \
	"- malformed poison-1 applied poison-1 duplicate poison-2 error-ID002 poison-3 malformed poison-5 applied "
idem_check "poison: the batch that failed (ID002) ran again one by one" idem_eq "${R[poison.split]}" 1
idem_check "poison: the good payments were charged once, the bad ones not at all" idem_eq "${R[poison.db]}" \
	"poison-1=10.00 poison-5=50.00 1=-10.00 5=-50.00 "
idem_check "poison: bad messages rejected, the rest acked: the queue is empty" idem_eq "${R[poison.depth]}" "0 0"
if [ "$BENCH" -gt 0 ]; then
	idem_check "bench: the batch consumers charged each of $BENCH payments once" idem_eq "${R[bench.batch.ok]}" t
	idem_check "bench: the per-message consumers charged each of $BENCH payments once" idem_eq "${R[bench.single.ok]}" t
fi

# --- summary ---------------------------------------------------------------------------------
row() {	# row LABEL METRIC
	printf '  %-50s %12s %12s\n' "$1" "${R[idem.$2]:-}" "${R[naive.$2]:--}"
}
echo
printf '  %-50s %12s %12s\n' '' 'claim_batch' 'naive'
row 'payments (distinct messages)' payments
row 'publishes (retries after lost confirms included)' publishes
row 'consumers killed with SIGKILL' kills
row 'consumers crashed between a commit and its ack' crashes
row 'deliveries processed' deliveries
row '  of which redelivered by the broker' redelivered
row 'applied (the charge ran)' applied
row 'duplicate (ran nothing)' duplicate
row 'published once, delivered again after its commit' ack_lost
row 'transactions that charged' batches
row '  charges per transaction (mean)' batch_size
row 'batches run again after a deadlock' retried
row 'payments charged twice or more' twice
row 'extra charges' extra
row 'money charged twice' overcharged
row 'accounts with a wrong balance' wrong_balances
row 'payments never charged' never
row 'seconds from the first publish to an empty queue' drain
if [ "$BENCH" -gt 0 ]; then
	echo
	echo "  throughput, $BENCH payments already queued, $CONSUMERS consumers, no kills (first to last commit):"
	printf '  %-50s %12s %12s\n' '' 'messages/s' 'per commit'
	printf '  %-50s %12s %12s\n' "batches (consumer.py, prefetch $PREFETCH, batch $BATCH)" \
		"${R[bench.batch.rate]}" "${R[bench.batch.per_tx]}"
	printf '  %-50s %12s %12s\n' "one idem_apply per message (examples/rabbitmq)" \
		"${R[bench.single.rate]}" "${R[bench.single.per_tx]}"
fi
echo
echo "  (whole scenario: $SECONDS s)"
echo
