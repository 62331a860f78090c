#!/usr/bin/env bash
# scripts/run-tests.sh: what `make test` runs. Installs missing build/test dependencies, builds the
# extension with -Werror and installs it, then runs the pg_regress, isolation and TAP suites from a
# copy of the tree owned by the test user against a throwaway socket-only cluster, each into its
# own log. Ends with the line `N passed, N failed` (pg_regress tests + isolation specs + TAP
# assertions) and exits non-zero if anything failed.
#   SUITES="regress isolation tap scenarios"  which suites to run (default: all four, in this order)
#   KEEP_TMP=1                      keep the temp dir (tree copy, logs, cluster) even on success
#   IDEM_SUITE_TIMEOUT=1800         seconds one suite may take before it is stopped and failed
#   IDEM_PG_CONF="a = 1"            extra postgresql.conf lines for the regress/isolation cluster
#                                   (the preloaded isolation run then sets shared_preload_libraries
#                                   to 'idempotent' alone)
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

SUITES=$(printf '%s ' ${SUITES:-regress isolation tap scenarios})   # spaces only
suite_timeout=${IDEM_SUITE_TIMEOUT:-1800}
[[ $suite_timeout =~ ^[1-9][0-9]*$ ]] || idem_die "IDEM_SUITE_TIMEOUT must be a number of seconds"
for s in $SUITES; do
	case $s in regress | isolation | tap | scenarios) ;; *) idem_die "unknown suite '$s' in SUITES (use: regress isolation tap scenarios)" ;; esac
done

passed=0 failed=0 finished=0 tmp=

# on_exit: always stop the cluster (keeping the temp dir on failure) and end with the count line;
# stopping early (failed build, cluster that would not start, ^C) counts as one more failure.
on_exit() {
	local rc=$?
	if [ "$finished" != 1 ]; then
		echo "run-tests.sh stopped before the suites finished (exit status $rc)"
		failed=$((failed + 1))
	fi
	if [ -n "$tmp" ]; then
		# TAP clusters that a killed test left running
		for pidfile in "$tmp"/tree/tmp_check/*/pgdata/postmaster.pid; do
			[ -f "$pidfile" ] || continue
			(cd "$tmp" && idem_as_pg pg_ctl -D "${pidfile%/postmaster.pid}" -m immediate -w stop) || true
		done
		if [ "$failed" -ne 0 ]; then
			IDEM_FAILED=1
			echo "suite logs: $tmp/logs; test tree with results and diffs: $tmp/tree"
		fi
		idem_cluster_stop "$tmp"
	fi
	echo "$passed passed, $failed failed"
}
trap on_exit EXIT

idem_ensure_deps "/usr/share/postgresql/15/extension/pgq.control|postgresql-15-pgq3"   # PgQ consumers (test/t/020)
idem_log "$("$PG_CONFIG" --version); suites: $SUITES; tests run as OS user $IDEM_PG_USER"
idem_build_install

tmp=$(idem_tmpdir)
tree=$tmp/tree logs=$tmp/logs
mkdir -p "$tree" "$logs"
tar -C "$IDEM_ROOT" --exclude=./.git -cf - . | tar -C "$tree" -xf -
if idem_is_root; then chown -R postgres: "$tree" "$logs"; fi
case " $SUITES " in *" regress "* | *" isolation "*) idem_cluster_start "$tmp" ;; esac

# run_suite NAME MAKE-VARS...: `make installcheck` in the copy, restricted by MAKE-VARS, shown and
# saved in logs/NAME.log; stopped after $suite_timeout seconds.
run_suite() {
	local name=$1 rc=0
	shift
	idem_log "suite $name (log: $logs/$name.log)"
	(
		cd "$tree"
		# TAP tests start their own clusters: keep them away from ours
		if [ "$name" = tap ]; then unset PGHOST PGPORT PGUSER PGDATABASE; fi
		TMPDIR=$tmp idem_as_pg timeout -k 30 "$suite_timeout" \
			make installcheck PG_CONFIG="$PG_CONFIG" "$@" </dev/null
	) 2>&1 | tee "$logs/$name.log" || rc=$?
	if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
		echo "$name: timed out after ${suite_timeout}s (IDEM_SUITE_TIMEOUT)" | tee -a "$logs/$name.log"
	fi
	return $rc
}

# count NAME RC: add the results parsed from logs/NAME.log to passed/failed. A suite that stops
# without a parseable result, or whose make fails with no test counted as failed, adds 1 failure.
count() {
	local name=$1 rc=$2 log=$logs/$1.log p f seen
	if [ "$name" = tap ]; then
		# prove: "Files=N, Tests=M, ..."; per failing file "(Wstat: .. Tests: T Failed: F)";
		# a failing file with F=0 (died, bad plan) counts as one failure.
		read -r p f seen < <(awk '
			/^Files=[0-9]+, Tests=[0-9]+/ { sub(/^Files=[0-9]+, Tests=/, ""); tests = $0 + 0; seen = 1 }
			/\(Wstat: .*Tests: [0-9]+ Failed: [0-9]+\)/ {
				n = $0; sub(/.*Failed: /, "", n); n += 0; failed += n; if (n == 0) bad++ }
			/^Result: FAIL/ { fail = 1 }
			END { f = failed + bad; if (fail && f == 0) f = 1; print tests - failed, f, seen + 0 }' "$log")
	else
		# pg_regress / pg_isolation_regress (PG15): "test NAME ... ok|FAILED|failed (ignored)"
		p=$(grep -cE '^ *(test +)?[^ ]+ +\.\.\. +(ok|failed \(ignored\))( |$)' "$log" || true)
		f=$(grep -cE '^ *(test +)?[^ ]+ +\.\.\. +FAILED( |$)' "$log" || true)
		seen=$((p + f))
	fi
	if [ "$seen" -eq 0 ]; then
		echo "$name: no test results found in its log (status $rc); counted as 1 failed"
		f=$((f + 1))
	elif [ "$rc" -ne 0 ] && [ "$f" -eq 0 ]; then
		echo "$name: make exited with status $rc but no test failed; counted as 1 failed"
		f=1
	fi
	echo "$name: $p passed, $f failed"
	passed=$((passed + p)) failed=$((failed + f))
	return 0
}

# show HOW FILE...: print the failure details that exist; HOW is head or tail (300 lines at most).
show() {
	local how=$1 file
	shift
	for file in "$@"; do
		[ -s "$file" ] || continue
		echo "----- ${file#"$tree"/} ($how -n 300) -----"
		"$how" -n 300 "$file"
	done
}

# failed_tap_logs: the TAP logs (test log, node server logs) of the test files prove reported
# failing; all test logs when prove left no report (killed, crashed).
failed_tap_logs() {
	local t names
	names=$(awk '/\(Wstat: / { print $1 }' "$logs/tap.log")
	if [ -z "$names" ]; then
		printf '%s\n' "$tree"/tmp_check/log/regress_log_*
		return 0
	fi
	for t in $names; do
		t=$(basename "$t" .pl)
		printf '%s\n' "$tree/tmp_check/log/regress_log_$t" "$tree/tmp_check/log/${t}"_*.log
	done
}

# run_scenarios: each test/scenarios/*.sh (real brokers and alternatives, started by the script
# itself) with its own log; each ends with its own "N passed, N failed" line, which is counted.
run_scenarios() {
	local script name rc line p f
	for script in "$IDEM_ROOT"/test/scenarios/*.sh; do
		[ -e "$script" ] || continue
		name=scenario-$(basename "$script" .sh) rc=0
		idem_log "suite $name (log: $logs/$name.log)"
		timeout -k 30 "$suite_timeout" bash "$script" </dev/null 2>&1 | tee "$logs/$name.log" || rc=${PIPESTATUS[0]}
		line=$(grep -E '^[0-9]+ passed, [0-9]+ failed$' "$logs/$name.log" | tail -n 1 || true)
		if [ -z "$line" ]; then
			echo "$name: no count line (status $rc); counted as 1 failed"
			p=0 f=1
		else
			p=${line%% passed*} f=${line#* passed, } f=${f%% failed*}
			if [ "$rc" -ne 0 ] && [ "$f" -eq 0 ]; then f=1; fi
		fi
		echo "$name: $p passed, $f failed"
		passed=$((passed + p)) failed=$((failed + f))
	done
}

# The isolation specs run twice: as the other suites do, and with the library preloaded, when
# a writer trusts the probe it made before taking a key's lock if no writer of the key let go of
# the lock in between (src/key_locks.c); the races are the specs' own.
# The suites run in this order, whatever the order in SUITES: the preloaded isolation run leaves
# the cluster preloaded, and pg_regress's expected output is for a library that is not.
runs=()
for s in regress isolation tap scenarios; do
	case " $SUITES " in *" $s "*) ;; *) continue ;; esac
	runs+=("$s")
	if [ "$s" = isolation ]; then runs+=(isolation-preloaded); fi
done

for s in "${runs[@]}"; do
	rc=0
	if [ "$s" = isolation-preloaded ]; then
		idem_as_pg tee -a "$tmp/data/postgresql.conf" >/dev/null <<-EOF
			shared_preload_libraries = 'idempotent'
			idempotent.purge_interval = 0
		EOF
		(cd "$tmp" && idem_as_pg pg_ctl -D "$tmp/data" -l "$tmp/server.log" -w -t 60 restart >/dev/null) ||
			idem_die "the cluster did not restart with the library preloaded; log: $tmp/server.log"
	fi
	if [ "$s" = scenarios ]; then
		run_scenarios
		continue
	fi
	case $s in
	regress) run_suite regress ISOLATION= TAP_TESTS= || rc=$? ;;
	isolation) run_suite "$s" REGRESS= TAP_TESTS= || rc=$? ;;
	isolation-preloaded)
		run_suite "$s" REGRESS= TAP_TESTS= EXTRA_REGRESS_OPTS=--outputdir=output_iso_preloaded || rc=$? ;;
	tap) run_suite tap REGRESS= ISOLATION= || rc=$? ;;
	esac
	before=$failed
	count "$s" "$rc"
	[ "$failed" -eq "$before" ] && continue
	case $s in
	regress) show head "$tree/regression.diffs" ;;
	isolation) show head "$tree/output_iso/regression.diffs" ;;
	isolation-preloaded) show head "$tree/output_iso_preloaded/regression.diffs" ;;
	tap) mapfile -t files < <(failed_tap_logs) && show tail "${files[@]}" ;;
	esac
done

finished=1
[ "$failed" -eq 0 ]   # the exit status; on_exit prints the count line
