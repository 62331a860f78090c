#!/usr/bin/env bash
# test/scenarios/rabbitmq.sh: exactly-once payments through a real RabbitMQ broker.
#
# Starts a private RabbitMQ node (Debian's rabbitmq-server, as the unprivileged `rabbitmq` user,
# AMQP, Erlang distribution and epmd on 127.0.0.1 only, all state in a temporary directory) and
# a throwaway PostgreSQL cluster with the extension. RMQ_CONSUMERS copies of
# examples/rabbitmq/consumer (idem_apply, ack after commit) consume while
# examples/rabbitmq/publisher publishes RMQ_MESSAGES payments with publisher confirms,
# re-publishing RMQ_DUPLICATES % of them as a retry after a simulated lost confirm; meanwhile
# this script SIGKILLs one consumer every 200-500 ms and restarts it, so that the broker
# redelivers what it had not acked. When the queue has drained it checks, in the database,
# that every payment was charged exactly once, that every balance is right, and that
# redeliveries and duplicates did happen. Then it runs the same scenario with
# `consumer --naive` (the statement without idem_apply) and checks that it double-charges,
# i.e. that the scenario can catch the bug. Prints a table and
# `N passed, N failed`; exits non-zero on any failure. Everything is stopped in a trap.
#
#   test/scenarios/rabbitmq.sh          (as root, or as a user with sudo for the install)
#
# Settings (environment): RMQ_MESSAGES (20000), RMQ_DUPLICATES (20), RMQ_CONSUMERS (3),
# RMQ_PREFETCH (50), RMQ_CHAOS_SECONDS (60), RMQ_DRAIN_TIMEOUT (90), RMQ_SEED (1),
# RMQ_PORT (56720; Erlang distribution on +1, epmd on +2), RMQ_NAIVE (1; 0 skips the naive run),
# KEEP_TMP=1 keeps the logs.
# shellcheck source=../../scripts/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/../../scripts/lib.sh"
# shellcheck source-path=SCRIPTDIR source=../../scripts/rabbitmq.sh
. "$IDEM_ROOT/scripts/rabbitmq.sh"

if [ $# -gt 0 ]; then	# no arguments: settings come from the environment
	sed -n '2,/^# KEEP_TMP/s/^# \{0,1\}//p' "${BASH_SOURCE[0]}"
	exit 2
fi

MESSAGES=${RMQ_MESSAGES:-20000}
DUPLICATES=${RMQ_DUPLICATES:-20}
CONSUMERS=${RMQ_CONSUMERS:-3}
PREFETCH=${RMQ_PREFETCH:-50}
CHAOS_SECONDS=${RMQ_CHAOS_SECONDS:-60}
DRAIN_TIMEOUT=${RMQ_DRAIN_TIMEOUT:-90}
SEED=${RMQ_SEED:-1}
ACCOUNTS=100
RANDOM=$SEED

idem_ensure_deps "$RMQ_SBIN/rabbitmq-server|rabbitmq-server" "/usr/include/amqp.h|librabbitmq-dev" \
	"/usr/include/postgresql/libpq-fe.h|libpq-dev" "/usr/bin/pkg-config|pkgconf" "/bin/ss|iproute2"

# --- work directory, consumers, cleanup ----------------------------------------------------
WORK=$(mktemp -d /tmp/idem-rabbitmq.XXXXXX)
PG_DIR=''
trap rmq_cleanup EXIT
trap 'exit 130' INT TERM

# --- build the example ----------------------------------------------------------------------
idem_log "building examples/rabbitmq"
mkdir -p "$WORK/bin"
make -s -C "$WORK/bin" -f "$IDEM_ROOT/examples/rabbitmq/Makefile" VPATH="$IDEM_ROOT/examples/rabbitmq"

# --- a private RabbitMQ node on loopback ----------------------------------------------------
rmq_start "${RMQ_PORT:-56720}" idem-test RMQ_PORT
idem_check "RabbitMQ and epmd listen on loopback only" rmq_loopback_only

# --- PostgreSQL --------------------------------------------------------------------------------
PG_DIR=$(idem_tmpdir)
idem_cluster_start "$PG_DIR"
PSQL=(psql -X -q -v ON_ERROR_STOP=1 -At)

# --- one run: publish, consume under SIGKILLs, drain, measure ----------------------------------
declare -A R	# results: R[mode.metric]

run() {	# run MODE: MODE is idem or naive
	local mode=$1 queue=payments-$1 flag='' slot pub t0
	local -a pids=()
	[ "$mode" = naive ] && flag=--naive
	rmq_setup_db "$mode"

	start_consumer() {	# start_consumer SLOT
		PGDATABASE=$mode "$WORK/bin/consumer" --port "$AMQP_PORT" --queue "$queue" \
			--prefetch "$PREFETCH" $flag >>"$WORK/$mode.consumer.$1.out" 2>>"$WORK/$mode.consumer.err" &
		pids[$1]=$!
		CONSUMER_PIDS=("${pids[@]}")
	}
	idem_log "[$mode] $CONSUMERS consumers (prefetch $PREFETCH$([ -n "$flag" ] && echo ", $flag")); publishing $MESSAGES payments," \
		"$DUPLICATES% of them twice (lost confirms); one consumer SIGKILLed every 200-500 ms"
	t0=$SECONDS
	for ((slot = 0; slot < CONSUMERS; slot++)); do start_consumer "$slot"; done
	"$WORK/bin/publisher" --port "$AMQP_PORT" --queue "$queue" --count "$MESSAGES" \
		--duplicates "$DUPLICATES" --accounts "$ACCOUNTS" --seed "$SEED" \
		--manifest "$WORK/$mode.manifest" 2>"$WORK/$mode.publisher.log" &
	pub=$!
	rmq_chaos_drain "$mode" "$pub" "$t0" 200 300 ''
	rmq_measure "$mode"
}

run idem
[ "${RMQ_NAIVE:-1}" = 1 ] && run naive

# --- checks --------------------------------------------------------------------------------------
echo
idem_check "idem: the queue drained within ${DRAIN_TIMEOUT}s" idem_eq "${R[idem.drained]}" 1
idem_check "idem: consumers were SIGKILLed (${R[idem.kills]}), none exited otherwise" idem_eq "${R[idem.odd_exits]}" 0
idem_check "idem: the publisher re-published some payments (${R[idem.publishes]} publishes)" idem_gt0 "$((${R[idem.publishes]} - MESSAGES))"
idem_check "idem: every payment charged exactly once" idem_eq "${R[idem.not_once]}" 0
idem_check "idem: no charge for an unknown payment" idem_eq "${R[idem.unknown]}" 0
idem_check "idem: total charged = total of the distinct payments" idem_eq "${R[idem.overcharged]}" 0.00
idem_check "idem: every account balance is right" idem_eq "${R[idem.wrong_balances]}" 0
idem_check "idem: the ledger holds one key per payment" idem_eq "${R[idem.ledger]}" "$MESSAGES"
idem_check "idem: every delivery was applied or duplicate" idem_eq "${R[idem.errors]}" 0
idem_check "idem: the broker redelivered messages (${R[idem.redelivered]})" idem_gt0 "${R[idem.redelivered]}"
idem_check "idem: idem_apply reported duplicates (${R[idem.duplicate]})" idem_gt0 "${R[idem.duplicate]}"
if [ "${RMQ_NAIVE:-1}" = 1 ]; then
	idem_check "naive: the queue drained within ${DRAIN_TIMEOUT}s" idem_eq "${R[naive.drained]}" 1
	idem_check "naive: no payment lost (the harness delivers everything)" idem_eq "${R[naive.never]}" 0
	idem_check "naive: it double-charged (${R[naive.twice]} payments), so this scenario catches the bug" idem_gt0 "${R[naive.twice]}"
fi

# --- summary ---------------------------------------------------------------------------------
row() {	# row LABEL METRIC
	printf '  %-50s %12s %12s\n' "$1" "${R[idem.$2]:-}" "${R[naive.$2]:--}"
}
echo
printf '  %-50s %12s %12s\n' '' 'idem_apply' 'naive'
row 'payments (distinct messages)' payments
row 'publishes (retries after lost confirms included)' publishes
row 'consumers killed with SIGKILL' kills
row 'deliveries processed' deliveries
row '  of which redelivered by the broker' redelivered
row 'applied (the charge ran)' applied
row 'duplicate (ran nothing)' duplicate
row 'published once, delivered again after its commit' ack_lost
row 'payments charged twice or more' twice
row 'extra charges' extra
row 'money charged twice' overcharged
row 'accounts with a wrong balance' wrong_balances
row 'payments never charged' never
row 'seconds from the first publish to an empty queue' drain
echo
echo "  (whole scenario: $SECONDS s)"
echo
