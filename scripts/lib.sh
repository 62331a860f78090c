# shellcheck shell=bash
# scripts/lib.sh: shared helpers for this repository's scripts (run-tests.sh, demo.sh, ...).
#
# Source it from bash:   . "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
# Targets Debian 12 with Debian's PostgreSQL 15, run as root (as CI does) or as a user with sudo.
# Sourcing it turns on `set -euo pipefail`, exports PG_CONFIG and puts PostgreSQL 15's bin/ first
# on PATH. Functions:
#   idem_ensure_deps [FILE|PKG...]  install what the build and the suites need (plus PKG where FILE is missing)
#                               (PG_BINDIR, PG_PGXS_DIR, PG_INCLUDEDIR_SERVER: where it looks; Debian's
#                               paths unless set in the environment)
#   idem_build_install          make clean; make with -Werror; make install (as root)
#   idem_as_root CMD...         run CMD as root: directly, or through sudo
#   idem_as_pg CMD...           run CMD as the test user: `postgres` when we are root, else ourselves
#   idem_tmpdir                 print a new private temp dir owned by the test user
#   idem_cluster_start DIR [CONF]  throwaway cluster in DIR, socket-only; exports PGHOST etc.
#   idem_cluster_stop [DIR]     stop it and remove DIR (kept on failure or with KEEP_TMP=1)
#   idem_stop_consumers         SIGKILL and reap the processes in CONSUMER_PIDS (scenarios)
# and, for the scenarios (test/scenarios/*.sh), assertions counted in IDEM_CHECKS_PASSED and
# IDEM_CHECKS_FAILED:
#   idem_check DESCRIPTION CMD...  one assertion: `ok     DESCRIPTION` or `FAILED DESCRIPTION`
#   idem_fail_check MESSAGE     one failed assertion: `FAILED MESSAGE`
#   idem_eq GOT WANT, idem_gt0 N   conditions for idem_check that say on stderr what they got
#   idem_checks_done RC         for the EXIT trap: the line `N passed, N failed`, and the exit status
#   idem_checks_end_cluster DIR the whole EXIT trap of a scenario whose only resource is a cluster
set -euo pipefail

IDEM_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)   # repository root
PG_BINDIR=${PG_BINDIR:-/usr/lib/postgresql/15/bin}
PG_CONFIG=$PG_BINDIR/pg_config
PG_PGXS_DIR=${PG_PGXS_DIR:-/usr/lib/postgresql/15/lib/pgxs}
PG_INCLUDEDIR_SERVER=${PG_INCLUDEDIR_SERVER:-/usr/include/postgresql/15/server}   # pg_config --includedir-server
PATH=$PG_BINDIR:$PATH
export PG_CONFIG PATH
IDEM_PGPORT=${IDEM_PGPORT:-54329}   # fixed is fine: the cluster listens only in its private dir

idem_log() { printf '==> %s\n' "$*"; }
idem_die() { printf 'error: %s\n' "$*" >&2; exit 1; }
idem_is_root() { [ "$(id -u)" -eq 0 ]; }

# The OS user that owns throwaway clusters and runs the suites; PostgreSQL refuses to run as root.
if idem_is_root; then IDEM_PG_USER=postgres; else IDEM_PG_USER=$(id -un); fi

# idem_as_root CMD...: run CMD as root, directly or through sudo (which may ask for a password).
idem_as_root() {
	if idem_is_root; then "$@"
	elif command -v sudo >/dev/null 2>&1; then sudo "$@"
	else echo "error: need root for: $*; run as root or install and configure sudo" >&2; return 1
	fi
}

# idem_as_pg CMD...: run CMD as IDEM_PG_USER, keeping the environment (PATH included).
idem_as_pg() {
	if idem_is_root; then
		getent passwd postgres >/dev/null || idem_die "no 'postgres' OS user (is postgresql-15 installed?)"
		runuser -u postgres -- env PATH="$PATH" "$@"
	else
		"$@"
	fi
}

# idem_ensure_deps [FILE|PKG...]: make sure that every file the build and the suites need is there
# (the server's programs, its headers, PGXS, pg_regress, pg_isolation_regress, the TAP modules), and
# IPC::Run, make and gcc, and every FILE a caller names with the Debian package PKG that ships it;
# otherwise apt-get install what provides them, as root or through sudo. Each file is checked by
# itself, not through another file of the package that used to ship it (in Debian's 15.20, PGXS
# and the test programs come with postgresql-client-15, and only the headers tell that
# postgresql-server-dev-15 is there), and not through dpkg's status.
idem_ensure_deps() {
	local pkgs=() need file
	local needs=(
		"$PG_BINDIR/postgres|postgresql-15"
		"$PG_BINDIR/initdb|postgresql-15"
		"$PG_BINDIR/pg_ctl|postgresql-15"
		"$PG_BINDIR/pg_upgrade|postgresql-15"
		"$PG_INCLUDEDIR_SERVER/postgres.h|postgresql-server-dev-15"
		"$PG_CONFIG|postgresql-client-15"
		"$PG_PGXS_DIR/src/makefiles/pgxs.mk|postgresql-client-15"
		"$PG_PGXS_DIR/src/test/regress/pg_regress|postgresql-client-15"
		"$PG_PGXS_DIR/src/test/isolation/pg_isolation_regress|postgresql-client-15"
		"$PG_PGXS_DIR/src/test/perl/PostgreSQL/Test/Cluster.pm|postgresql-client-15"
		"/usr/share/perl5/IPC/Run.pm|libipc-run-perl"
		"/usr/bin/make|make"
		"/usr/bin/gcc|gcc"
		"$@"
	)
	for need in "${needs[@]}"; do
		[[ $need == *'|'* ]] || idem_die "idem_ensure_deps: '$need' is not FILE|PKG"
		file=${need%|*}
		[ -e "$file" ] && continue
		idem_log "missing $file (${need##*|})"
		pkgs+=("${need##*|}")
	done
	mapfile -t pkgs < <(printf '%s\n' "${pkgs[@]}" | awk 'NF && !seen[$0]++')
	[ ${#pkgs[@]} -eq 0 ] && return 0

	local hint="install them (as root: apt-get install -y ${pkgs[*]}), or rerun as root or as a user with sudo"
	if ! idem_is_root && ! command -v sudo >/dev/null 2>&1; then
		idem_die "missing Debian packages: ${pkgs[*]}; not root and no sudo, so cannot install them: $hint"
	fi
	idem_log "installing missing Debian packages: ${pkgs[*]}"
	idem_as_root env DEBIAN_FRONTEND=noninteractive apt-get update -q &&
		idem_as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${pkgs[@]}" ||
		idem_die "could not install ${pkgs[*]}: $hint"
}

# idem_build_install: clean build of the extension with warnings as errors, as the invoking user,
# then install into PostgreSQL 15 as root: staged with `make install DESTDIR=...`, then each file
# renamed into place, so that servers running with the old library keep their mapped copy.
idem_build_install() {
	local stage file
	idem_log "building the extension (PG_CFLAGS=-Werror)"
	make -C "$IDEM_ROOT" -s clean PG_CONFIG="$PG_CONFIG"
	make -C "$IDEM_ROOT" PG_CONFIG="$PG_CONFIG" PG_CFLAGS=-Werror
	idem_log "installing the extension"
	stage=$(mktemp -d)
	make -C "$IDEM_ROOT" -s install PG_CONFIG="$PG_CONFIG" DESTDIR="$stage"
	(cd "$stage" && find . -type f) | while read -r file; do
		file=${file#.}
		idem_as_root install -D -m "$([[ $file == *.so ]] && echo 755 || echo 644)" "$stage$file" "$file.new"
		idem_as_root mv -f "$file.new" "$file"
	done
	rm -rf "$stage"
}

# idem_tmpdir: create a private temp dir (mktemp -d) owned by IDEM_PG_USER and print its path.
# As root it lives under /tmp, so that postgres can reach it whatever TMPDIR says.
idem_tmpdir() {
	local dir
	if idem_is_root; then
		dir=$(mktemp -d /tmp/idem.XXXXXX)
		chown postgres: "$dir"
	else
		dir=$(mktemp -d "${TMPDIR:-/tmp}/idem.XXXXXX")
	fi
	printf '%s\n' "$dir"
}

# idem_cluster_start DIR [CONF]: initdb a throwaway cluster in DIR/data (DIR from idem_tmpdir) and
# start it listening only on a unix socket in DIR. CONF (default: $IDEM_PG_CONF) is extra
# postgresql.conf text; the library is preloaded only if CONF says so. Exports PGHOST, PGPORT,
# PGUSER (the test user, the cluster's superuser) and PGDATABASE=postgres. Server log: DIR/server.log.
idem_cluster_start() {
	local dir=${1:?usage: idem_cluster_start DIR [CONF]} conf=${2-${IDEM_PG_CONF:-}}
	[ -d "$dir" ] || idem_die "idem_cluster_start: $dir is not a directory (make it with idem_tmpdir)"
	IDEM_CLUSTER_DIR=$dir
	idem_log "starting a throwaway PostgreSQL 15 cluster in $dir (port $IDEM_PGPORT, socket only)"
	(cd "$dir" && idem_as_pg initdb -D "$dir/data" -A trust -U "$IDEM_PG_USER" -E UTF8 --no-locale \
		-N >"$dir/initdb.log" 2>&1) || { cat "$dir/initdb.log" >&2; idem_die "initdb failed"; }
	idem_as_pg tee -a "$dir/data/postgresql.conf" >/dev/null <<-EOF

		# throwaway test cluster
		listen_addresses = ''
		unix_socket_directories = '$dir'
		port = $IDEM_PGPORT
		$conf
	EOF
	(cd "$dir" && idem_as_pg pg_ctl -D "$dir/data" -l "$dir/server.log" -w -t 60 start >/dev/null) ||
		{ tail -n 30 "$dir/server.log" >&2 || true; idem_die "the cluster did not start; log: $dir/server.log"; }
	export PGHOST=$dir PGPORT=$IDEM_PGPORT PGUSER=$IDEM_PG_USER PGDATABASE=postgres
}

# idem_cluster_stop [DIR]: stop the cluster in DIR (default: the last one started) and remove DIR,
# unless KEEP_TMP=1, IDEM_FAILED=1, or the exit status at the call is non-zero, in which case DIR
# and its logs are kept and their place printed. Safe to call twice and from `trap ... EXIT`.
idem_cluster_stop() {
	local rc=$? dir=${1:-${IDEM_CLUSTER_DIR:-}}
	[ -n "$dir" ] && [ -d "$dir" ] || return 0
	if [ -f "$dir/data/postmaster.pid" ]; then
		(cd "$dir" && idem_as_pg pg_ctl -D "$dir/data" -m fast -w stop >/dev/null 2>&1) ||
			echo "warning: could not stop the cluster in $dir/data" >&2
	fi
	if [ "$rc" -ne 0 ] || [ "${IDEM_FAILED:-0}" = 1 ] || [ "${KEEP_TMP:-0}" = 1 ]; then
		echo "kept $dir for inspection (server log: $dir/server.log)"
	else
		rm -rf "$dir"
	fi
	return 0
}

# idem_stop_consumers: SIGKILL every process whose pid is in the array CONSUMER_PIDS (a scenario's
# consumers, children of this shell), reap it, and empty the array. Safe from an EXIT trap.
idem_stop_consumers() {
	local pid
	for pid in "${CONSUMER_PIDS[@]}"; do
		kill -KILL "$pid" 2>/dev/null || true
		wait "$pid" 2>/dev/null || true
	done
	CONSUMER_PIDS=()
	return 0
}

# The scenarios' assertions so far (idem_check, idem_fail_check); a scenario that runs a program
# printing its own `ok ` and `FAILED ` lines adds those to them.
IDEM_CHECKS_PASSED=0 IDEM_CHECKS_FAILED=0

# idem_check DESCRIPTION CMD...: one assertion. Runs CMD; if it succeeds, prints
# `ok     DESCRIPTION` and counts a pass, else it is a failure (idem_fail_check DESCRIPTION).
idem_check() {
	local what=${1:?usage: idem_check DESCRIPTION CMD...}
	shift
	if "$@"; then
		IDEM_CHECKS_PASSED=$((IDEM_CHECKS_PASSED + 1))
		printf 'ok     %s\n' "$what"
	else
		idem_fail_check "$what"
	fi
}

# idem_fail_check MESSAGE: one failed assertion: prints `FAILED MESSAGE`, counts it, and sets
# IDEM_FAILED=1 so that the temp dirs are kept.
idem_fail_check() {
	IDEM_CHECKS_FAILED=$((IDEM_CHECKS_FAILED + 1))
	IDEM_FAILED=1
	printf 'FAILED %s\n' "$*"
}

# idem_eq GOT WANT: whether GOT is the string WANT; if not, says both on stderr.
idem_eq() { [ "$1" = "$2" ] || { echo "  expected $2, got $1" >&2; return 1; }; }

# idem_gt0 N: whether the number N (empty: 0) is above 0; if not, says what it is on stderr.
idem_gt0() { [ "${1:-0}" -gt 0 ] || { echo "  expected > 0, got $1" >&2; return 1; }; }

# idem_checks_done RC: the end of a scenario's EXIT trap, after its cleanup; RC is the exit status
# the trap was entered with. A scenario stopped early (RC non-zero) with no failed assertion counts
# one failure. Prints `N passed, N failed`, the line scripts/run-tests.sh reads, and exits: 0 when
# nothing failed, else 1.
idem_checks_done() {
	local rc=${1:?usage: idem_checks_done RC}
	if [ "$rc" -ne 0 ] && [ "$IDEM_CHECKS_FAILED" -eq 0 ]; then IDEM_CHECKS_FAILED=1; fi
	echo "$IDEM_CHECKS_PASSED passed, $IDEM_CHECKS_FAILED failed"
	if [ "$IDEM_CHECKS_FAILED" -eq 0 ]; then exit 0; else exit 1; fi
}

# idem_checks_end_cluster [DIR]: the EXIT trap of a scenario whose only resource is the cluster in
# DIR (trap 'idem_checks_end_cluster "$TMP"' EXIT; DIR may still be empty): stops it, keeping DIR
# when the scenario failed or stopped early (idem_cluster_stop), then idem_checks_done.
idem_checks_end_cluster() {
	local rc=$?
	set +e
	[ "$rc" -eq 0 ] || IDEM_FAILED=1
	idem_cluster_stop "${1:-}"
	idem_checks_done "$rc"
}
