#!/usr/bin/env bash
# test/scenarios/package.sh: the Debian package, as a user installs it. `make deb` builds
# postgresql-15-idempotent into dist/ (scripts/deb.sh); the package must hold the library, the
# control file and every script in the Makefile's DATA; dpkg installs it on this machine (the same
# files `make install` put there from the same tree, so it stays installed); then a throwaway
# cluster creates the extension from it, calls it, and updates a 1.0 extension to the default
# version with the package's scripts.
#
# Environment: KEEP_TMP=1 keeps the temp dir. Needs root or sudo for dpkg -i.
# Final line: `N passed, N failed`; exit status 0 only when nothing failed.

# shellcheck source-path=SCRIPTDIR source=../../scripts/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/../../scripts/lib.sh"

PKG=postgresql-15-idempotent
LIBDIR=$("$PG_CONFIG" --pkglibdir)
EXTDIR=$("$PG_CONFIG" --sharedir)/extension

TMP=
trap 'idem_checks_end_cluster "$TMP"' EXIT

TMP=$(idem_tmpdir)

# --- build ---------------------------------------------------------------------------------------
idem_log "make deb"
make -s -C "$IDEM_ROOT" deb >"$TMP/deb.log" 2>&1 || { cat "$TMP/deb.log"; idem_die "make deb failed"; }
deb=$(tail -n 1 "$TMP/deb.log")
built=false
[ -f "$deb" ] && [[ $deb == "$IDEM_ROOT/dist/${PKG}_"*.deb ]] && built=true
idem_check "make deb builds $PKG into dist/ ($(basename "$deb"))" $built
[ -f "$deb" ] || exit 1

# --- what it holds -------------------------------------------------------------------------------
dpkg-deb -c "$deb" | awk '{ sub(/^\./, "", $6); print $6 }' >"$TMP/contents"
has() { grep -qxF "$1" "$TMP/contents"; }
idem_check "the package holds $LIBDIR/idempotent.so" has "$LIBDIR/idempotent.so"
idem_check "the package holds $EXTDIR/idempotent.control" has "$EXTDIR/idempotent.control"
# shellcheck disable=SC2016 # a make rule, expanded by make
printf 'print-%%:\n\t@echo $($*)\n' >"$TMP/print.mk"
data=$(make -s --no-print-directory -C "$IDEM_ROOT" -f Makefile -f "$TMP/print.mk" print-DATA)
missing=()
for f in $data; do has "$EXTDIR/$f" || missing+=("$f"); done
[ -n "$data" ] || missing+=("(the Makefile's DATA is empty)")
idem_check "the package holds every script in DATA ($data)" [ ${#missing[@]} -eq 0 ]
[ ${#missing[@]} -eq 0 ] || echo "missing: ${missing[*]}"
depends=$(dpkg-deb -f "$deb" Depends)
idem_check "the package depends on postgresql-15 ($depends)" grep -qE '(^|, )postgresql-15( |,|$)' <<<"$depends"

# --- install -------------------------------------------------------------------------------------
idem_log "dpkg -i $(basename "$deb")"
idem_as_root dpkg -i "$deb" >"$TMP/dpkg.log" 2>&1 || cat "$TMP/dpkg.log"
idem_check "dpkg installs it" [ "$(dpkg-query -W -f='${Status}' "$PKG" 2>/dev/null)" = "install ok installed" ]
idem_check "the installed library is the package's" \
	cmp -s <(dpkg-deb --fsys-tarfile "$deb" | tar -xOf - ".$LIBDIR/idempotent.so") "$LIBDIR/idempotent.so"
idem_check "dpkg -L $PKG lists the control file" grep -qxF "$EXTDIR/idempotent.control" <(dpkg -L "$PKG")

# --- use it --------------------------------------------------------------------------------------
idem_cluster_start "$TMP"
q() { psql -X -q -At -v ON_ERROR_STOP=1 "$@"; }
default=$(sed -n "s/^default_version *= *'\(.*\)'/\1/p" "$EXTDIR/idempotent.control")
q -c "CREATE EXTENSION idempotent" >"$TMP/create.log" 2>&1 || cat "$TMP/create.log"
idem_check "CREATE EXTENSION idempotent gives version $default" \
	[ "$(q -c "SELECT extversion FROM pg_extension WHERE extname = 'idempotent'")" = "$default" ]
call="SELECT status FROM idem_apply('package:k-1', NULL, 'SELECT 1 AS one')"
idem_check "idem_apply applies a new key" [ "$(q -c "$call" 2>&1)" = applied ]
idem_check "idem_apply reports its redelivery as a duplicate" [ "$(q -c "$call" 2>&1)" = duplicate ]
if ! { q -c "CREATE DATABASE upgraded" &&
	q -d upgraded -c "CREATE EXTENSION idempotent VERSION '1.0'" -c "ALTER EXTENSION idempotent UPDATE"; } \
	>"$TMP/update.log" 2>&1; then
	cat "$TMP/update.log"
fi
idem_check "a 1.0 extension updates to $default with the package's scripts" \
	[ "$(q -d upgraded -c "SELECT extversion FROM pg_extension WHERE extname = 'idempotent'")" = "$default" ]
