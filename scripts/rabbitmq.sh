# shellcheck shell=bash
# scripts/rabbitmq.sh: what the RabbitMQ scenarios (test/scenarios/rabbitmq.sh, rabbitmq_batch.sh)
# share: a private RabbitMQ node on loopback, the cleanup that stops it, and the payment schema
# and measures both check. It lives here, not under test/scenarios/, which holds only scenarios.
#
# Source it after lib.sh:   . "$IDEM_ROOT/scripts/rabbitmq.sh"
# The scenario sets WORK (its temp dir; the node's state goes to $WORK/rabbitmq, its logs to
# $WORK), PG_DIR (its cluster's dir, '' until started) and PSQL (psql -At ... as an array), and
# declares the associative array R, which rmq_measure fills. Functions:
#   rmq_start PORT NODE SETTING  start the node NODE@localhost: AMQP on 127.0.0.1:PORT, Erlang
#                                distribution on PORT+1, epmd on PORT+2 (SETTING: the variable that
#                                moves them, named when a port is taken)
#   rmq_ctl ARGS...              rabbitmqctl ARGS against the node
#   rmq_loopback_only            whether every socket of the node and its epmd is on loopback
#   rmq_queue_depth QUEUE        print "READY UNACKED" of QUEUE
#   rmq_cleanup                  the EXIT trap: consumers, node, epmd and cluster stopped, then
#                                the line `N passed, N failed` (idem_checks_done)
#   rmq_setup_db DB              create DB with the payment schema
#   rmq_load_manifest DB PID     wait for the publisher PID, load its manifest into DB
#   rmq_measure DB               load the consumers' output into DB, measure it into R[DB.*]
#   rmq_chaos_drain MODE PUB T0 KILL_MS SPREAD_MS CRASHED
#                                one run's consumers killed at random, then the queue drained

RMQ_SBIN=/usr/lib/rabbitmq/bin   # Debian's scripts, run directly rather than through /usr/sbin
RMQ_DIR='' RMQ_PID='' BEAM_PID='' EPMD_PID=''
RMQ_RUN=()
# shellcheck disable=SC2034 # read by idem_stop_consumers (lib.sh), filled by the scenario
CONSUMER_PIDS=()                 # consumers the scenario has running: rmq_cleanup kills them

# rmq_start PORT NODE SETTING: start a private RabbitMQ node in $WORK/rabbitmq and wait until it
# is up; dies if a port is taken or the node does not start. Debian's /usr/sbin/rabbitmq-server
# only runs as root or `rabbitmq` and uses /var/lib/rabbitmq; we run the scripts under
# $RMQ_SBIN instead, as `rabbitmq` (or ourselves when not root), with every path, name and port of
# the node in the environment. Sets AMQP_PORT, DIST_PORT, EPMD_PORT, RMQ_DIR, RMQ_RUN, RMQ_PID (the
# start script), BEAM_PID (the Erlang VM) and EPMD_PID; the logs are $WORK/rabbitmq.out,
# $WORK/epmd.log, $WORK/wait.log and $RMQ_DIR/log.
rmq_start() {
	local node=${2:?usage: rmq_start PORT NODE SETTING} setting=${3:?usage: rmq_start PORT NODE SETTING} port start
	AMQP_PORT=$1 DIST_PORT=$(($1 + 1)) EPMD_PORT=$(($1 + 2))
	RMQ_DIR=$WORK/rabbitmq
	mkdir -p "$RMQ_DIR/home"
	cat >"$RMQ_DIR/rabbitmq.conf" <<-CONF
		listeners.tcp.1 = 127.0.0.1:$AMQP_PORT
		loopback_users.guest = true
	CONF
	echo '[].' >"$RMQ_DIR/enabled_plugins"
	: >"$RMQ_DIR/rabbitmq-env.conf"	# instead of /etc/rabbitmq/rabbitmq-env.conf
	# RMQ_RUN CMD...: run CMD as the broker's user (setpriv execs, so $! of `... &` is CMD's pid),
	# in the node's environment only (env -i), from the node's directory.
	RMQ_RUN=()
	if idem_is_root; then RMQ_RUN=(setpriv --reuid=rabbitmq --regid=rabbitmq --init-groups); fi
	RMQ_RUN+=(env -i -C "$RMQ_DIR" PATH=/usr/bin:/bin LANG=C.UTF-8 HOME="$RMQ_DIR/home"
		RABBITMQ_NODENAME="$node@localhost" RABBITMQ_NODE_IP_ADDRESS=127.0.0.1
		RABBITMQ_NODE_PORT="$AMQP_PORT" RABBITMQ_DIST_PORT="$DIST_PORT"
		ERL_EPMD_ADDRESS=127.0.0.1 ERL_EPMD_PORT="$EPMD_PORT"
		RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS='-kernel inet_dist_use_interface {127,0,0,1}'
		RABBITMQ_CONF_ENV_FILE="$RMQ_DIR/rabbitmq-env.conf" RABBITMQ_CONFIG_FILE="$RMQ_DIR/rabbitmq.conf"
		RABBITMQ_ENABLED_PLUGINS_FILE="$RMQ_DIR/enabled_plugins" RABBITMQ_PID_FILE="$RMQ_DIR/rabbit.pid"
		RABBITMQ_MNESIA_BASE="$RMQ_DIR/mnesia" RABBITMQ_LOG_BASE="$RMQ_DIR/log"
		ERL_CRASH_DUMP="$RMQ_DIR/erl_crash.dump")
	# The Erlang cookie, made before the node and the CLI could race to create it.
	(umask 077; od -An -N16 -tx1 /dev/urandom | tr -d " \n" >"$RMQ_DIR/home/.erlang.cookie")
	chmod 400 "$RMQ_DIR/home/.erlang.cookie"
	if idem_is_root; then chmod 711 "$WORK"; chown -R rabbitmq: "$RMQ_DIR"; fi

	for port in "$AMQP_PORT" "$DIST_PORT" "$EPMD_PORT"; do
		if command -v ss >/dev/null && [ -n "$(ss -Hltn "sport = :$port")" ]; then
			idem_die "port $port is taken (another RabbitMQ or a run of this script?); set $setting"
		fi
	done
	idem_log "starting RabbitMQ on 127.0.0.1:$AMQP_PORT (distribution $DIST_PORT, epmd $EPMD_PORT) in $RMQ_DIR"
	"${RMQ_RUN[@]}" epmd -address 127.0.0.1 -port "$EPMD_PORT" >"$WORK/epmd.log" 2>&1 &
	EPMD_PID=$!
	"${RMQ_RUN[@]}" "$RMQ_SBIN/rabbitmq-server" >"$WORK/rabbitmq.out" 2>&1 &
	RMQ_PID=$!
	start=$SECONDS
	rmq_ctl -q wait "$RMQ_DIR/rabbit.pid" --timeout 90 >"$WORK/wait.log" 2>&1 || {
		tail -n 30 "$WORK/rabbitmq.out" "$WORK/wait.log" >&2 || true
		idem_die "RabbitMQ did not start; see $WORK/rabbitmq.out and $RMQ_DIR/log"
	}
	BEAM_PID=$(cat "$RMQ_DIR/rabbit.pid")	# the Erlang VM; RMQ_PID is the script that started it
	idem_log "RabbitMQ is up after $((SECONDS - start)) s"
}

# rmq_ctl ARGS...: rabbitmqctl ARGS, as the broker's user, in the node's environment.
rmq_ctl() { "${RMQ_RUN[@]}" "$RMQ_SBIN/rabbitmqctl" "$@"; }

# rmq_loopback_only: every socket the broker and its epmd listen on is on loopback, and the broker
# does listen (an assertion for idem_check; says what is wrong on stderr).
rmq_loopback_only() {
	local bad
	command -v ss >/dev/null || { echo "  ss (iproute2) is missing: cannot tell" >&2; return 1; }
	bad=$(ss -Hltnp | grep -E "pid=($BEAM_PID|$EPMD_PID)," | awk '{print $4}' |
		grep -Ev '^(127\.0\.0\.1|\[::1\]):' || true)
	[ -z "$bad" ] || { echo "listening beyond loopback: $bad" >&2; return 1; }
	ss -Hltnp | grep -q "pid=$BEAM_PID," # and the broker does listen
}

# rmq_queue_depth QUEUE: prints "READY UNACKED" (nothing if the queue does not exist).
rmq_queue_depth() {
	rmq_ctl -q list_queues --no-table-headers name messages_ready messages_unacknowledged 2>/dev/null |
		awk -v q="$1" '$1 == q { print $2, $3 }'
}

# rmq_cleanup: for `trap rmq_cleanup EXIT`. Kills the consumers in CONSUMER_PIDS, shuts the node
# down (SIGKILL if rabbitmqctl cannot within 60 s), stops epmd and the cluster in PG_DIR, and
# removes $WORK, unless the exit status is non-zero, IDEM_FAILED=1 or KEEP_TMP=1. Each step is
# tried whatever the others did. Ends the scenario with idem_checks_done.
rmq_cleanup() {
	local rc=$?
	set +e	# clean up everything, whatever fails
	[ "$rc" -eq 0 ] || IDEM_FAILED=1
	idem_stop_consumers
	if [ -n "$RMQ_PID" ] && kill -0 "$RMQ_PID" 2>/dev/null; then	# the start script, waiting for the VM
		"${RMQ_RUN[@]}" timeout 60 "$RMQ_SBIN/rabbitmqctl" shutdown >/dev/null 2>&1 || {
			[ -n "$BEAM_PID" ] && kill -KILL "$BEAM_PID" 2>/dev/null
			kill -KILL "$RMQ_PID" 2>/dev/null
		} || true
		wait "$RMQ_PID" 2>/dev/null || true
	fi
	if [ -n "$EPMD_PID" ]; then kill "$EPMD_PID" 2>/dev/null || true; wait "$EPMD_PID" 2>/dev/null || true; fi
	[ -n "$PG_DIR" ] && idem_cluster_stop "$PG_DIR"
	if [ "${IDEM_FAILED:-0}" = 1 ] || [ "${KEEP_TMP:-0}" = 1 ]; then
		echo "kept $WORK for inspection (RabbitMQ log: $WORK/rabbitmq/log, consumer output: $WORK/*.consumer.*)"
	else
		rm -rf "$WORK"
	fi
	idem_checks_done "$rc"
}

# rmq_setup_db DB: creates DB with the extension and the payment schema, accounts 1..ACCOUNTS at
# balance 0.
rmq_setup_db() {
	"${PSQL[@]}" -d postgres -c "CREATE DATABASE $1"
	"${PSQL[@]}" -d "$1" <<-SQL
		CREATE EXTENSION idempotent;
		CREATE TABLE accounts (id int PRIMARY KEY, balance numeric NOT NULL DEFAULT 0);
		INSERT INTO accounts (id) SELECT generate_series(1, $ACCOUNTS);
		-- no unique constraint on purpose: a double charge shows as two rows; the transaction
		-- and the time of each charge, for the counts of batches and the throughput
		CREATE TABLE charges (payment_id text NOT NULL, account int NOT NULL, amount numeric NOT NULL,
		                      xid xid8 NOT NULL DEFAULT pg_current_xact_id(),
		                      at timestamptz NOT NULL DEFAULT clock_timestamp());
		-- what the publisher sent (its manifest) and what the consumers said (their output)
		CREATE TABLE expected (payment_id text PRIMARY KEY, account int, amount numeric, publishes int);
		CREATE TABLE deliveries (payment_id text, status text, redelivered bool);
	SQL
}

# rmq_load_manifest DB PID: waits for the publisher PID (dies if it failed), shows its log
# ($WORK/DB.publisher.log) and loads its manifest ($WORK/DB.manifest) into DB's table expected.
rmq_load_manifest() {
	wait "$2" || { cat "$WORK/$1.publisher.log" >&2; idem_die "the publisher failed"; }
	cat "$WORK/$1.publisher.log"
	"${PSQL[@]}" -d "$1" -c "\\copy expected FROM '$WORK/$1.manifest' CSV"
}

# rmq_measure DB: loads what the consumers printed ($WORK/DB.consumer.*.out: "ID STATUS
# [redelivered]" per delivery) into DB's table deliveries, then sets R[DB.NAME] for each measure
# of the run below (counts of deliveries and outcomes; per-payment counts and sums; balances).
rmq_measure() {
	local db=$1 name value
	cat "$WORK/$db".consumer.*.out | awk '{ printf "%s,%s,%s\n", $1, $2, ($3 == "redelivered") ? "t" : "f" }' \
		>"$WORK/$db.deliveries.csv"
	"${PSQL[@]}" -d "$db" -c "\\copy deliveries FROM '$WORK/$db.deliveries.csv' CSV"

	# shellcheck disable=SC2034 # R: the scenario's results
	while IFS='|' read -r name value; do R[$db.$name]=$value; done < <("${PSQL[@]}" -d "$db" <<-'SQL'
		WITH per_key AS (
		  SELECT e.payment_id, e.publishes, e.amount, count(c.payment_id) AS n, coalesce(sum(c.amount), 0) AS charged
		  FROM expected e LEFT JOIN charges c USING (payment_id) GROUP BY 1, 2, 3),
		balances AS (
		  SELECT a.id, a.balance, -coalesce(sum(e.amount), 0) AS expected
		  FROM accounts a LEFT JOIN expected e ON e.account = a.id GROUP BY 1, 2)
		SELECT 'payments', count(*)::text FROM expected
		UNION ALL SELECT 'publishes', sum(publishes)::text FROM expected
		UNION ALL SELECT 'deliveries', count(*)::text FROM deliveries
		UNION ALL SELECT 'redelivered', count(*) FILTER (WHERE redelivered)::text FROM deliveries
		UNION ALL SELECT 'applied', count(*) FILTER (WHERE status = 'applied')::text FROM deliveries
		UNION ALL SELECT 'duplicate', count(*) FILTER (WHERE status = 'duplicate')::text FROM deliveries
		UNION ALL SELECT 'errors', count(*) FILTER (WHERE status NOT IN ('applied', 'duplicate'))::text FROM deliveries
		-- published once, yet charged again or found duplicate on redelivery: its ack died with a consumer
		UNION ALL SELECT 'ack_lost', CASE current_database() WHEN 'naive'
		    THEN (SELECT count(*) FROM per_key WHERE publishes = 1 AND n > 1)
		    ELSE (SELECT count(DISTINCT d.payment_id) FROM deliveries d JOIN expected e USING (payment_id)
		          WHERE e.publishes = 1 AND d.redelivered AND d.status = 'duplicate') END::text
		UNION ALL SELECT 'batches', count(DISTINCT xid)::text FROM charges
		UNION ALL SELECT 'batch_size', round(count(*)::numeric / nullif(count(DISTINCT xid), 0))::text FROM charges
		UNION ALL SELECT 'not_once', count(*)::text FROM per_key WHERE n <> 1
		UNION ALL SELECT 'wrong_sum', count(*)::text FROM per_key WHERE charged <> amount
		UNION ALL SELECT 'never', count(*)::text FROM per_key WHERE n = 0
		UNION ALL SELECT 'twice', count(*)::text FROM per_key WHERE n > 1
		UNION ALL SELECT 'extra', coalesce(sum(n - 1) FILTER (WHERE n > 1), 0)::text FROM per_key
		UNION ALL SELECT 'unknown', count(*)::text FROM charges WHERE payment_id NOT IN (SELECT payment_id FROM expected)
		UNION ALL SELECT 'overcharged', to_char((SELECT coalesce(sum(amount), 0) FROM charges)
		                                 - (SELECT sum(amount) FROM expected), 'FM999,999,990.00')
		UNION ALL SELECT 'wrong_balances', count(*) FILTER (WHERE balance <> expected)::text FROM balances
		UNION ALL SELECT 'ledger', (SELECT count(*) FROM idem_ledger)::text;
	SQL
	)
}

# rmq_chaos_drain MODE PUB T0 KILL_MS SPREAD_MS CRASHED: the middle of a scenario's run of MODE
# (idem or naive; database MODE, queue payments-MODE), whose consumers run and whose publisher PUB
# was started at SECONDS=T0. Every KILL_MS + random(SPREAD_MS) ms (under 1000 in all), SIGKILL a
# random consumer and start it again, until PUB has finished and every payment is charged (at
# most CHAOS_SECONDS); load PUB's manifest; wait for the queue to drain (at most DRAIN_TIMEOUT),
# starting again any consumer that exited with status CRASHED (its own crash after a commit; ''
# when consumers never exit by themselves); then stop them all with SIGTERM. The caller provides
# start_consumer SLOT, which starts a consumer into the caller's array pids. Sets R[MODE.drain],
# R[MODE.drained], R[MODE.kills] and R[MODE.odd_exits] (consumers that exited otherwise).
rmq_chaos_drain() {
	local mode=$1 pub=$2 t0=$3 kill_ms=$4 spread_ms=$5 crashed=$6 queue=payments-$1
	local slot pid rc deadline depth drained=0 kills=0 odd=0
	deadline=$((SECONDS + CHAOS_SECONDS))
	while [ "$SECONDS" -lt "$deadline" ]; do
		sleep "$(printf '0.%03d' $((kill_ms + RANDOM % spread_ms)))"
		slot=$((RANDOM % CONSUMERS)); pid=${pids[$slot]}
		kill -KILL "$pid" 2>/dev/null || true
		rc=0; wait "$pid" 2>/dev/null || rc=$?
		[ "$rc" -eq 137 ] || [ "$rc" = "$crashed" ] || odd=$((odd + 1))
		kills=$((kills + 1))
		start_consumer "$slot"
		kill -0 "$pub" 2>/dev/null && continue
		[ "$("${PSQL[@]}" -d "$mode" -c 'SELECT count(DISTINCT payment_id) FROM charges')" -lt "$MESSAGES" ] || break
	done
	rmq_load_manifest "$mode" "$pub"

	idem_log "[$mode] $kills kills; waiting up to ${DRAIN_TIMEOUT}s for the queue to drain"
	deadline=$((SECONDS + DRAIN_TIMEOUT))
	while [ "$SECONDS" -lt "$deadline" ]; do
		depth=$(rmq_queue_depth "$queue")
		if [ "$depth" = "0 0" ]; then drained=1; break; fi
		for ((slot = 0; slot < CONSUMERS && ${#crashed} > 0; slot++)); do	# restart the crashed
			pid=${pids[$slot]}
			kill -0 "$pid" 2>/dev/null && continue
			rc=0; wait "$pid" 2>/dev/null || rc=$?
			[ "$rc" = "$crashed" ] || odd=$((odd + 1))
			start_consumer "$slot"
		done
		sleep 0.5
	done
	R[$mode.drain]=$((SECONDS - t0))
	for pid in "${pids[@]}"; do	# a clean stop: SIGTERM, exit 0
		kill -TERM "$pid" 2>/dev/null || true
		rc=0; wait "$pid" 2>/dev/null || rc=$?
		[ "$rc" -eq 0 ] || [ "$rc" = "$crashed" ] || odd=$((odd + 1))
	done
	CONSUMER_PIDS=()
	R[$mode.drained]=$drained R[$mode.kills]=$kills R[$mode.odd_exits]=$odd
}
