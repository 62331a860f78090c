#!/usr/bin/env bash
# scripts/bench-profile.sh: what `make bench-profile` runs. The paths of `make bench`, counted in
# CPU instructions instead of timed. Each runs in a single-user backend under callgrind, on a fresh
# copy of one prepared cluster (the library preloaded, as make bench has it; two paths also
# without), and only the instructions inside the measuring PL/pgSQL function are counted
# (--toggle-collect: nothing the paths run calls PL/pgSQL again). They include the function's
# one-time costs, compiling it and planning its statements: about 400 instructions per call at
# 5,000 calls. Instruction counts do not depend on what else the machine is doing, so the ratios
# against the bare statement repeat from run to run; time also depends on cache misses, which
# callgrind does not count: read these beside `make bench`, not instead of it.
# Prints a table and writes it to BENCH_OUT/profile.txt, and each path's callgrind output to
# BENCH_OUT/callgrind/ for callgrind_annotate.
# One message per transaction is counted whole instead: the backend's instructions for PROFILE_TXNS
# transactions of a prepared statement (as pgbench -M prepared sends), less those for one.
#   PROFILE_CALLS=5000   calls per single-call path
#   PROFILE_BATCHES=5    batches of 1000 messages per batch path
#   PROFILE_TXNS=1000    transactions per one-message-per-transaction path
#   BENCH_SKIP_BUILD=1   use the extension as installed, without building it
#   BENCH_OUT=DIR        where the results go (default: bench/results)
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

calls=${PROFILE_CALLS:-5000}
batches=${PROFILE_BATCHES:-5}
txns=${PROFILE_TXNS:-1000}
for v in calls batches txns; do
	[[ ${!v} =~ ^[1-9][0-9]*$ ]] || idem_die "$v must be a positive integer (got '${!v}')"
done
[ "$txns" -ge 2 ] || idem_die "PROFILE_TXNS must be at least 2 (one run is subtracted from another)"
out_dir=${BENCH_OUT:-$IDEM_ROOT/bench/results}

idem_ensure_deps "/usr/bin/valgrind|valgrind"
if [ "${BENCH_SKIP_BUILD:-0}" = 1 ]; then
	idem_log "BENCH_SKIP_BUILD=1: using the extension as installed"
else
	idem_build_install
fi

tmp=$(idem_tmpdir)
# a path still under callgrind when another fails is stopped with the rest
trap 'rc=$?; jobs -p | xargs -r kill 2>/dev/null; wait; (exit $rc); idem_cluster_stop "$tmp"' EXIT
# As `make bench` runs it: preloaded, statistics on, purge worker off.
idem_cluster_start "$tmp" "shared_preload_libraries = 'idempotent'
idempotent.purge_interval = 0
autovacuum = off
jit = off"
cp "$IDEM_ROOT/bench/setup.sql" "$tmp/"
if idem_is_root; then chown postgres: "$tmp/setup.sql"; fi
sql() { idem_as_pg psql -X -q -v ON_ERROR_STOP=1 "$@"; }
sql -c "CREATE DATABASE profile"
# The keys the duplicate paths find, committed beforehand.
sql -d profile -f "$tmp/setup.sql" \
	-c "SELECT bench.run_apply('dupk', $calls, NULL)" \
	-c "SELECT bench.run_batch('pattern', 'pdup', $batches, 1000)" \
	-c "SELECT bench.run_batch('claim', 'cdup', $batches, 1000)" >/dev/null
idem_as_pg pg_ctl -D "$tmp/data" -w stop >/dev/null

# path NAME: the SQL that runs it
declare -A run=(
	[overhead]="bench.run_overhead('ovhd', $calls)"
	[bare]="bench.run_bare('bare', $calls)"
	[record]="bench.run_record('recd', $calls)"
	[once_new]="bench.run_apply('once', $calls, NULL)"
	[once_dup]="bench.run_apply('dupk', $calls, NULL)"
	[claim_new]="bench.run_claim('clam', $calls)"
	[once_new_np]="bench.run_apply('once', $calls, NULL)"
	[claim_new_np]="bench.run_claim('clam', $calls)"
	[batch_none]="bench.run_batch('none', 'bnon', $batches, 1000)"
	[batch_bare]="bench.run_batch('bare', 'bbar', $batches, 1000)"
	[batch_pattern_new]="bench.run_batch('pattern', 'bpat', $batches, 1000)"
	[batch_pattern_dup]="bench.run_batch('pattern', 'pdup', $batches, 1000)"
	[batch_claim_new]="bench.run_batch('claim', 'bcla', $batches, 1000)"
	[batch_claim_dup]="bench.run_batch('claim', 'cdup', $batches, 1000)"
)
paths=(overhead bare record once_new once_dup claim_new once_new_np claim_new_np batch_none batch_bare
	batch_pattern_new batch_pattern_dup batch_claim_new batch_claim_dup tx_bare tx_bare_1 tx_idem
	tx_idem_1)

# tx_input NAME: a tx_* path's input: the prepared statement, then one EXECUTE per transaction
# (single-user mode commits each line), with keys spread over the index as bench.key's are
tx_input() {
	local n=$txns i
	case $1 in *_1) n=1 ;; esac
	case $1 in
	tx_bare*) echo 'PREPARE p(text, bigint) AS INSERT INTO bench.t (k, v) VALUES ($1, $2);' ;;
	tx_idem*) echo "PREPARE p(text, bigint) AS SELECT idem_apply(\$1, NULL, 'INSERT INTO bench.t (k, v) VALUES (\$1, \$2)', \$1, \$2);" ;;
	esac
	for ((i = 1; i <= n; i++)); do
		printf "EXECUTE p('%08xtxn_%08d', %d);\n" $(((i * 2654435761) % 4294967296)) "$i" "$i"
	done
}

# profile NAME: callgrind one path on its own copy of the cluster, into $tmp/NAME.out.
# Paths named *_np run with the library not preloaded; it is loaded before the counted function
# runs, as for the others. An error ends the backend with a failure (exit_on_error).
profile() {
	local name=$1 data=$tmp/data.$1 opts=() collect input
	case $name in *_np) opts=(-c shared_preload_libraries=) ;; esac
	if [[ $name == tx_* ]]; then
		collect=(--collect-atstart=yes)
		input=$(tx_input "$name")
	else
		collect=(--collect-atstart=no --toggle-collect=plpgsql_call_handler)
		input="LOAD 'idempotent';
SELECT ${run[$name]};"
	fi
	idem_as_pg cp -a "$tmp/data" "$data"
	idem_as_pg valgrind --tool=callgrind "${collect[@]}" --callgrind-out-file="$tmp/$name.out" \
		postgres --single -D "$data" -c exit_on_error=on "${opts[@]}" profile \
		<<<"$input" >"$tmp/$name.log" 2>&1 ||
		{ tail -n 20 "$tmp/$name.log" >&2; idem_die "path $name failed under callgrind"; }
	rm -rf "$data"
}

idem_log "callgrind, $calls calls per single-call path, $batches x 1000 messages per batch path"
for ((i = 0; i < ${#paths[@]}; i += 2)); do   # two at a time
	profile "${paths[$i]}" &
	if ((i + 1 < ${#paths[@]})); then profile "${paths[$((i + 1))]}"; fi
	wait $! || idem_die "a profile failed"
done

mkdir -p "$out_dir/callgrind"
declare -A per
for p in "${paths[@]}"; do
	cp "$tmp/$p.out" "$out_dir/callgrind/$p.out" && chmod 644 "$out_dir/callgrind/$p.out"
	total=$(sed -n 's/^summary: //p' "$tmp/$p.out")
	[[ $total =~ ^[0-9]+$ ]] || idem_die "no instruction count for $p"
	case $p in batch_*) n=$((batches * 1000)) ;; tx_*) n=1 ;; *) n=$calls ;; esac
	per[$p]=$((total / n))
done
# one transaction: the run of txns less the run of one
for p in tx_bare tx_idem; do per[$p]=$(((per[$p] - per[${p}_1]) / (txns - 1))); done

calc() { awk "BEGIN { printf \"${2:-%.2f}\", $1 }"; }
# row LABEL PATH BASE LOOP: instructions per call less LOOP's (the loop and key generation), and
# the ratio to BASE's
row() {
	local own=$(( ${per[$2]} - $4 )) base=$(( ${per[$3]} - $4 ))
	printf '  %-52s %9s %8s\n' "$1" "$own" "$(calc "$own / $base")"
}
{
	printf 'idempotent instruction profile (make bench-profile), %s\n' "$(date -u '+%Y-%m-%d %H:%M UTC')"
	printf '  %s, library preloaded; built from commit %s\n' "$(postgres --version)" \
		"$(git -C "$IDEM_ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)"
	printf 'Instructions per call inside the measuring function, without its loop and key\n'
	printf 'generation (%s per call, %s per batch message); ratio to the bare statement.\n' \
		"${per[overhead]}" "${per[batch_none]}"
	printf '  %-52s %9s %8s\n' path instr 'x bare'
	row 'bare INSERT (static SQL)' bare bare "${per[overhead]}"
	row 'key alone: ledger-shaped INSERT (SQL)' record bare "${per[overhead]}"
	row 'idem_apply once, new key' once_new bare "${per[overhead]}"
	row 'idem_apply once, duplicate' once_dup bare "${per[overhead]}"
	row 'idem_claim, new key' claim_new bare "${per[overhead]}"
	row 'idem_apply once, new key, library not preloaded' once_new_np bare "${per[overhead]}"
	row 'idem_claim, new key, library not preloaded' claim_new_np bare "${per[overhead]}"
	row 'batch: bare INSERT ... SELECT FROM unnest' batch_bare batch_bare "${per[batch_none]}"
	row 'batch: SQL pattern, new' batch_pattern_new batch_bare "${per[batch_none]}"
	row 'batch: SQL pattern, duplicate' batch_pattern_dup batch_bare "${per[batch_none]}"
	row 'batch: idem_claim_batch + one INSERT, new' batch_claim_new batch_bare "${per[batch_none]}"
	row 'batch: idem_claim_batch + one INSERT, duplicate' batch_claim_dup batch_bare "${per[batch_none]}"
	printf 'One message per transaction, prepared (as pgbench -M prepared), the whole backend:\n'
	row 'bare INSERT' tx_bare tx_bare 0
	row 'idem_apply once, new key' tx_idem tx_bare 0
	printf '(callgrind_annotate --inclusive=yes %s/callgrind/PATH.out shows where each goes)\n' \
		"${out_dir#"$IDEM_ROOT"/}"
} >"$tmp/profile.txt"
cp "$tmp/profile.txt" "$out_dir/profile.txt"
cat "$out_dir/profile.txt"
