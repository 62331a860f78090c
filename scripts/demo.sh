#!/usr/bin/env bash
# scripts/demo.sh: what `make demo` runs. Builds and installs the extension, starts a throwaway
# cluster and feeds one deterministic at-least-once stream of payment messages (duplicated and
# reordered deliveries) to concurrent consumers twice: through idem_apply, and through a naive
# consumer that applies every delivery. Prints a report and exits non-zero if the idem_apply
# consumer did not end exactly-once (balances, one charge per payment, newest account terms).
#   DEMO_MESSAGES=20000   distinct messages in the stream (about 1.5 deliveries each)
#   DEMO_CONSUMERS=2      concurrent consumer sessions
#   DEMO_SEED=0.42        setseed() value, in -1..1: the same seed gives the same stream
#   KEEP_TMP=1            keep the cluster's temp dir (it is kept anyway on failure)
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

messages=${DEMO_MESSAGES:-20000}
consumers=${DEMO_CONSUMERS:-2}
seed=${DEMO_SEED:-0.42}
[[ $messages =~ ^[0-9]+$ ]] && [ "$messages" -ge 1000 ] || idem_die "DEMO_MESSAGES must be an integer >= 1000"
[[ $consumers =~ ^[0-9]+$ ]] && [ "$consumers" -ge 1 ] || idem_die "DEMO_CONSUMERS must be an integer >= 1"
[[ $seed =~ ^-?(0(\.[0-9]+)?|1(\.0+)?|\.[0-9]+)$ ]] || idem_die "DEMO_SEED must be a number in -1..1"

idem_ensure_deps
idem_build_install

tmp=$(idem_tmpdir)
trap 'idem_cluster_stop "$tmp"' EXIT
idem_cluster_start "$tmp"

# sql ARGS...: psql as the cluster's superuser, stopping at the first error
sql() { idem_as_pg psql -X -q -v ON_ERROR_STOP=1 "$@"; }

# run_consumers SCHEMA: run SCHEMA.consume(i) in $consumers concurrent sessions until the
# deliveries run out; prints the wall time in seconds.
run_consumers() {
	local schema=$1 i pid t0 rc=0 pids=()
	t0=$(date +%s.%N)
	for ((i = 1; i <= consumers; i++)); do
		sql -c "CALL $schema.consume($i)" &
		pids+=($!)
	done
	for pid in "${pids[@]}"; do wait "$pid" || rc=1; done
	[ "$rc" -eq 0 ] || idem_die "a consumer of $schema failed (server log: $tmp/server.log)"
	awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.3f\n", b - a }'
}

sql -c 'CREATE EXTENSION idempotent'
idem_log "generating the stream: $messages messages, seed $seed"
sql -v messages="$messages" -v seed="$seed" <"$IDEM_ROOT/demo/stream.sql"
sql <"$IDEM_ROOT/demo/consumers.sql"

idem_log "consuming through idem_apply with $consumers consumers"
exact_secs=$(run_consumers exact)
idem_log "consuming naively (UPDATE per delivery) with $consumers consumers"
naive_secs=$(run_consumers naive)

report=$(sql -v consumers="$consumers" -v seed="$seed" \
	-v exact_secs="$exact_secs" -v naive_secs="$naive_secs" <"$IDEM_ROOT/demo/report.sql")
printf '\n%s\n\n' "$report"
[[ $report == *"RESULT: PASS" ]]
