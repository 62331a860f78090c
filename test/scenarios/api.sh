#!/usr/bin/env bash
# test/scenarios/api.sh: the API-retry use case end to end (examples/api): an HTTP API whose
# POST /payments honours Idempotency-Key through idem_begin/idem_complete/idem_fail, a fake payment
# provider that deduplicates on the key it is given, clients that time out and retry, concurrent
# retries of one key, the API killed with SIGKILL mid-request and restarted, leases of 2 s that
# run out and are taken over, a key reused with another body, a key that fails until it is dead.
# examples/api/scenario.js drives it and checks it (see there): every payment charged exactly once
# at the provider, every retry answered with the original response, the ledger completed for every
# payment, the sums equal.
#
# One throwaway socket-only cluster; examples/api/schema.sql creates the extension, the payments
# table and the API's role payments_api. npm's `pg` is installed with `npm ci` into
# examples/api/node_modules (ignored by git). Needs the extension installed (make install) and
# Node.js 18 or later with npm (Debian's nodejs and npm are installed if missing).
# Environment: IDEM_API_PGPORT (54344), KEEP_TMP=1 keeps the temp dir (logs of the provider and
# of each run of the API: api-1.log is the run that was killed).
# Final line: `N passed, N failed`; exit status 0 only when nothing failed.

# shellcheck source-path=SCRIPTDIR source=../../scripts/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/../../scripts/lib.sh"

IDEM_PGPORT=${IDEM_API_PGPORT:-54344}
SRC=$IDEM_ROOT/examples/api
RUN_SECS=120   # the scenario takes about 15 s

TMP=
trap 'idem_checks_end_cluster "$TMP"' EXIT

# Node.js and npm: any on PATH will do (a machine's own Node.js included); Debian's otherwise
need=()
command -v node >/dev/null 2>&1 || need+=("/usr/bin/node|nodejs")
command -v npm >/dev/null 2>&1 || need+=("/usr/bin/npm|npm")
idem_ensure_deps "${need[@]}"
[ -f "$("$PG_CONFIG" --sharedir)/extension/idempotent.control" ] ||
	idem_die "the extension is not installed: run 'make install' (or 'make test') first"
node -e 'process.exit(Number(process.versions.node.split(".")[0]) >= 18 ? 0 : 1)' ||
	idem_die "Node.js 18 or later is needed (fetch, AbortSignal.timeout); found $(node --version)"

TMP=$(idem_tmpdir)
mkdir -p "$TMP/run"

idem_log "npm ci in examples/api ($(node --version))"
(cd "$SRC" && npm ci --no-audit --no-fund --loglevel=error) >"$TMP/npm.log" 2>&1 ||
	{ cat "$TMP/npm.log"; idem_fail_check "npm ci in examples/api"; exit 1; }

idem_cluster_start "$TMP"
psql -X -q -v ON_ERROR_STOP=1 -f "$SRC/schema.sql" >"$TMP/schema.log" 2>&1 ||
	{ cat "$TMP/schema.log"; idem_fail_check "examples/api/schema.sql"; exit 1; }

idem_log "examples/api/scenario.js (logs in $TMP/run)"
rc=0 start=$SECONDS
SCENARIO_DIR=$TMP/run API_PGUSER=payments_api timeout -k 10 "$RUN_SECS" \
	node "$SRC/scenario.js" </dev/null >"$TMP/scenario.log" 2>&1 || rc=$?
cat "$TMP/scenario.log"
p=$(grep -c '^ok ' "$TMP/scenario.log" || true) f=$(grep -c '^FAILED ' "$TMP/scenario.log" || true)
IDEM_CHECKS_PASSED=$((IDEM_CHECKS_PASSED + p)) IDEM_CHECKS_FAILED=$((IDEM_CHECKS_FAILED + f))
[ "$f" -eq 0 ] || IDEM_FAILED=1
if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then idem_fail_check "scenario.js: timed out after ${RUN_SECS}s"
elif [ "$rc" -ne 0 ] && [ "$f" -eq 0 ]; then idem_fail_check "scenario.js: exited with status $rc"
fi
[ "$p" -gt 0 ] || [ "$f" -gt 0 ] || idem_fail_check "scenario.js: printed no result"
idem_log "scenario.js took $((SECONDS - start)) s"
