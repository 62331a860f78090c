#!/usr/bin/env bash
# test/scenarios/drivers.sh: the extension called from application code through the real drivers,
# with bound parameters as an application writes them (README.md, "Calling from your application",
# shows the calls): libpq (C), psycopg 3 (Debian's python3-psycopg and /usr/bin/python3), node-postgres (npm
# `pg`, installed with `npm ci` into test/drivers/node/node_modules) and pgjdbc (Debian's
# libpostgresql-jdbc-java, compiled with javac).
#
# One throwaway cluster (127.0.0.1, for pgjdbc, and its socket); test/drivers/setup.sql creates the
# extension, the tables, the application role idem_app with its grant, and applies payment x:p-1.
# The drivers then run one after the other as idem_app, each with its own keys, and each receives
# x:p-1 again, which must be a duplicate whatever types the driver binds its values with. Each
# program prints one line per assertion (`ok     DRIVER: ...` or `FAILED DRIVER: ...`). Then
# test/drivers/check_snippets.py checks that each driver block of README.md is still code that a
# program runs.
#
# Environment: IDEM_DRIVERS ("libpq psycopg node pgjdbc"), IDEM_DRIVERS_PGPORT (54341; the cluster
# listens on 127.0.0.1 there), KEEP_TMP=1 keeps the temp dir.
# Needs the extension installed (make install) and: libpq-dev python3-psycopg libpostgresql-jdbc-java
# default-jdk-headless, and npm (each installed if missing).
# Final line: `N passed, N failed`; exit status 0 only when nothing failed.

# shellcheck source-path=SCRIPTDIR source=../../scripts/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/../../scripts/lib.sh"

IDEM_PGPORT=${IDEM_DRIVERS_PGPORT:-54341}
DRIVERS=${IDEM_DRIVERS:-libpq psycopg node pgjdbc}
SRC=$IDEM_ROOT/test/drivers
JDBC_JAR=/usr/share/java/postgresql.jar
JAVA_HOME=/usr/lib/jvm/java-17-openjdk-$(dpkg --print-architecture)   # not /usr/bin's alternatives
PYTHON=/usr/bin/python3   # Debian's, which has python3-psycopg; not another python on PATH
RUN_SECS=120              # per driver program

passed=0 failed=0 TMP=
fail() { failed=$((failed + 1)); IDEM_FAILED=1; printf 'FAILED %s\n' "$*"; }
cleanup() {
	local rc=$?
	set +e
	[ "$rc" -eq 0 ] || IDEM_FAILED=1
	[ "$failed" -eq 0 ] || IDEM_FAILED=1
	if [ -n "$TMP" ]; then idem_cluster_stop "$TMP"; fi
	[ "$rc" -eq 0 ] || [ "$failed" -ne 0 ] || failed=1   # stopped early: count it
	echo "$passed passed, $failed failed"
	if [ "$failed" -eq 0 ]; then exit 0; else exit 1; fi
}
trap cleanup EXIT

# --- dependencies, each detected by the file this scenario uses ----------------------------------
need=(
	"/usr/include/postgresql/libpq-fe.h|libpq-dev"
	"/usr/lib/python3/dist-packages/psycopg/__init__.py|python3-psycopg"
	"$JDBC_JAR|libpostgresql-jdbc-java"
	"$JAVA_HOME/bin/javac|openjdk-17-jdk-headless"
)
# npm: any npm on PATH installs the locked packages alike (a machine's own Node.js included)
command -v npm >/dev/null 2>&1 || need+=("/usr/bin/npm|npm")
idem_ensure_deps "${need[@]}"
[ -f "$("$PG_CONFIG" --sharedir)/extension/idempotent.control" ] ||
	idem_die "the extension is not installed: run 'make install' (or 'make test') first"

TMP=$(idem_tmpdir)

# --- build the programs --------------------------------------------------------------------------
built=()
build() {   # build DRIVER: compile or install what DRIVER needs; log in $TMP/build-DRIVER.log
	local log=$TMP/build-$1.log
	case $1 in
	libpq)
		gcc -std=c99 -Wall -Wextra -Werror -o "$TMP/libpq_driver_test" "$SRC/libpq/driver_test.c" \
			-I"$("$PG_CONFIG" --includedir)" -L"$("$PG_CONFIG" --libdir)" -lpq >"$log" 2>&1 ;;
	psycopg) "$PYTHON" -c 'import psycopg; print("psycopg", psycopg.__version__)' >"$log" 2>&1 ;;
	node)
		# the lockfile's versions, into test/drivers/node/node_modules (ignored by git)
		(cd "$SRC/node" && npm ci --no-audit --no-fund --loglevel=error) >"$log" 2>&1 ;;
	pgjdbc)
		mkdir -p "$TMP/java" &&
			"$JAVA_HOME/bin/javac" -Xlint:all -Werror -cp "$JDBC_JAR" -d "$TMP/java" "$SRC/pgjdbc/DriverTest.java" >"$log" 2>&1 ;;
	*) echo "unknown driver $1" >"$log"; return 1 ;;
	esac
}
for d in $DRIVERS; do
	idem_log "preparing $d"
	if build "$d"; then built+=("$d"); else cat "$TMP/build-$d.log"; fail "$d: build"; fi
done

# --- the database --------------------------------------------------------------------------------
if (exec 3<>"/dev/tcp/127.0.0.1/$IDEM_PGPORT") 2>/dev/null; then
	idem_die "something already listens on 127.0.0.1:$IDEM_PGPORT; set IDEM_DRIVERS_PGPORT"
fi
idem_cluster_start "$TMP" "listen_addresses = '127.0.0.1'"
psql -X -q -v ON_ERROR_STOP=1 -f "$SRC/setup.sql" >"$TMP/setup.log" 2>&1 ||
	{ cat "$TMP/setup.log"; idem_die "test/drivers/setup.sql failed"; }

# --- run each driver as the application role -----------------------------------------------------
command_of() {   # command_of DRIVER: set cmd to the program's command line
	case $1 in
	libpq) cmd=("$TMP/libpq_driver_test") ;;
	psycopg) cmd=("$PYTHON" "$SRC/psycopg/driver_test.py") ;;
	node) cmd=(node "$SRC/node/driver_test.js") ;;
	pgjdbc) cmd=("$JAVA_HOME/bin/java" -cp "$TMP/java:$JDBC_JAR" DriverTest) ;;
	esac
}
for d in "${built[@]}"; do
	idem_log "driver $d"
	log=$TMP/$d.log rc=0
	command_of "$d"
	PGHOST=127.0.0.1 PGUSER=idem_app timeout -k 10 "$RUN_SECS" "${cmd[@]}" </dev/null >"$log" 2>&1 || rc=$?
	cat "$log"
	p=$(grep -c '^ok ' "$log" || true) f=$(grep -c '^FAILED ' "$log" || true)
	passed=$((passed + p)) failed=$((failed + f))
	[ "$f" -eq 0 ] || IDEM_FAILED=1
	if [ "$rc" -ne 0 ] && [ "$f" -eq 0 ]; then fail "$d: exited with status $rc"; fi
	if [ "$p" -eq 0 ] && [ "$f" -eq 0 ] && [ "$rc" -eq 0 ]; then fail "$d: printed no result"; fi
done

# --- the README's snippets are code the programs run ---------------------------------------------
rc=0
"$PYTHON" "$SRC/check_snippets.py" "$IDEM_ROOT" >"$TMP/snippets.log" 2>&1 || rc=$?
cat "$TMP/snippets.log"
p=$(grep -c '^ok ' "$TMP/snippets.log" || true) f=$(grep -c '^FAILED ' "$TMP/snippets.log" || true)
passed=$((passed + p)) failed=$((failed + f))
if [ "$rc" -ne 0 ] && [ "$f" -eq 0 ]; then fail "check_snippets.py exited with status $rc"; fi
if [ "$p" -eq 0 ] && [ "$f" -eq 0 ]; then fail "check_snippets.py found no snippet"; fi

# --- across drivers ------------------------------------------------------------------------------
n=$(psql -X -At -c "SELECT count(*) FROM payments WHERE id = 'x:p-1'")
if [ "$n" = 1 ]; then
	passed=$((passed + 1)); echo "ok     payment x:p-1 exists once after every driver received it"
else
	fail "payment x:p-1 exists once after every driver received it: $n rows"
fi
