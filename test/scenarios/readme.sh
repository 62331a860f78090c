#!/usr/bin/env bash
# test/scenarios/readme.sh: the README's SQL runs as written.
#
# Every fenced ```sql block of README.md, in order, runs with psql (ON_ERROR_STOP) against a
# throwaway cluster with the library preloaded, in a database `shop` as the README's examples
# assume; each block is one assertion. Blocks whose info string names a file (```js
# test/drivers/node/driver_test.js) are checked by test/scenarios/drivers.sh to be code a driver
# test runs; a block marked `norun` is shown but not run (each is listed, so that they stay few);
# a block in another language that names no file fails, since nothing would test it.
# Final line: `N passed, N failed`; exit status 0 only when nothing failed. KEEP_TMP=1 keeps the
# temp dir.

# shellcheck source-path=SCRIPTDIR source=../../scripts/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/../../scripts/lib.sh"

IDEM_PGPORT=${IDEM_README_PGPORT:-54342}
TMP=
trap 'idem_checks_end_cluster "$TMP"' EXIT

TMP=$(idem_tmpdir)
mkdir -p "$TMP/blocks"
# Split README.md into blocks/NNN.<kind> files: sql (to run), file (checked elsewhere),
# norun, other (a block of code no test covers); the first line of each says where it is.
awk -v dir="$TMP/blocks" '
	/^ *```/ && !inblock {
		inblock = 1; n++; info = $0; sub(/^ *```/, "", info); split(info, w, " ")
		if (w[1] == "sql" && w[2] == "") kind = "sql"
		else if (w[2] ~ /\//) kind = "file"
		else if (w[2] == "norun") kind = "norun"
		else if (w[1] == "" || w[1] == "sh") kind = "shell"
		else kind = "other"
		file = sprintf("%s/%03d.%s", dir, n, kind)
		print "-- README.md line " NR ": ```" info > file
		next
	}
	/^ *```/ && inblock { inblock = 0; close(file); next }
	inblock { print > file }
' "$IDEM_ROOT/README.md"
if idem_is_root; then chown -R "$IDEM_PG_USER": "$TMP"; fi

idem_cluster_start "$TMP" "shared_preload_libraries = 'idempotent'"
idem_as_pg createdb shop

# run_block FILE: one SQL block in database shop; its output goes to FILE.out.
run_block() { idem_as_pg psql -X -q -v ON_ERROR_STOP=1 -d shop -f "$1" >"$1.out" 2>&1; }

for block in "$TMP"/blocks/*; do
	where=$(head -n 1 "$block")
	where=${where#-- }
	case $block in
	*.sql)
		if run_block "$block"; then
			idem_check "$where" true
		else
			idem_fail_check "$where"
			sed 's/^/       /' "$block.out"
		fi ;;
	*.other) idem_fail_check "$where: code no test runs (name its file, or mark it norun)" ;;
	*.norun) echo "shown, not run: $where" ;;
	esac
done
