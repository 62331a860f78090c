#!/usr/bin/env bash
# examples/sharded/move-partition.sh: move one partition of the sharded payments example from
# one shard node to another while consumers keep running. No key is applied twice, none is lost.
#
#   move-partition.sh PARTITION SOURCE TARGET ROUTER
#
# SOURCE, TARGET, ROUTER: libpq connect strings of the node that owns PARTITION now, of the node
# that will own it (loaded with shard.sql, owned='{}' or other partitions), and of the router
# database. Environment:
#   MOVE_TABLES="charges"      effect tables, each with the message's key in a column named key
#   TARGET_FROM_ROUTER=...     the target's connect string as the router reaches it (default TARGET)
#   SERVER=payments            the PL/Proxy cluster (foreign server) on the router
#
# Steps (README.md, "Moving a partition"):
#   1. fence: on SOURCE, take the partition's lock exclusively (waits for the calls in flight to
#      commit) and mark it fenced; from then on SOURCE refuses its keys with SH001, and consumers
#      retry them later: the partition is paused, the others go on;
#   2. copy its ledger rows and effect rows, selected by shard_partition(key), out of SOURCE;
#   3. load them into TARGET and mark the partition active there, in one transaction;
#   4. switch: point the router's partition map at TARGET (ALTER SERVER ... OPTIONS (SET pN ...));
#      router sessions reload it at their next call, and retried keys now reach TARGET;
#   5. clean up: delete the partition's rows and its entry on SOURCE, in one transaction.
# A failure leaves the partition fenced on SOURCE (refused there, not lost): fix the cause and
# run the script again. It starts again from the fence if TARGET does not have the partition yet,
# and from the switch if it does.
set -euo pipefail

if [ $# -ne 4 ]; then
	sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//p}' "${BASH_SOURCE[0]}" >&2
	exit 2
fi
P=$1 SOURCE=$2 TARGET=$3 ROUTER=$4
TABLES=${MOVE_TABLES:-charges}
TARGET_FROM_ROUTER=${TARGET_FROM_ROUTER:-$TARGET}
SERVER=${SERVER:-payments}
[[ $P =~ ^[0-9]+$ ]] || { echo "move-partition.sh: PARTITION must be a number" >&2; exit 2; }

PSQL=(psql -X -q -At -v ON_ERROR_STOP=1)
say() { printf 'move-partition: %s\n' "$*"; }
die() { printf 'move-partition: error: %s\n' "$*" >&2; exit 1; }
now_ms() { date +%s%3N; }
q() { "${PSQL[@]}" -d "$1" -c "$2"; }

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# --- checks ----------------------------------------------------------------------------------
ext() { q "$1" "SELECT $2 FROM pg_extension WHERE extname = 'idempotent'"; }
src_ledger=$(ext "$SOURCE" "format('%s.idem_ledger', extnamespace::regnamespace)")
dst_ledger=$(ext "$TARGET" "format('%s.idem_ledger', extnamespace::regnamespace)")
[ -n "$src_ledger" ] && [ -n "$dst_ledger" ] || die "the idempotent extension is missing on SOURCE or TARGET"
src_version=$(ext "$SOURCE" extversion) dst_version=$(ext "$TARGET" extversion)
[ "$src_version" = "$dst_version" ] ||
	die "SOURCE has idempotent $src_version, TARGET $dst_version: update them to the same version first"
state=$(q "$SOURCE" "SELECT state FROM shard_partitions WHERE partition = $P")
[ "$state" = active ] || [ "$state" = fenced ] || die "SOURCE does not own partition $P"
# A run that stopped after step 3 left the partition fenced on SOURCE and active on TARGET:
# go on from step 4.
resume=0
case $state/$(q "$TARGET" "SELECT state FROM shard_partitions WHERE partition = $P") in
*/) ;;
fenced/active) resume=1 ;;
*) die "TARGET already has partition $P" ;;
esac
[ "$(q "$ROUTER" "SELECT count(*) FROM pg_foreign_server s, unnest(s.srvoptions) o
	WHERE s.srvname = '$SERVER' AND o LIKE 'p$P=%'")" = 1 ] ||
	die "the router has no partition $P in server $SERVER"

# The tables to move, as SOURCE and TARGET name them, with their columns, by name: the column
# order may differ between nodes (a column added by an upgrade comes last, a fresh install may
# place it elsewhere), so COPY lists them.
declare -A SRC DST COLS
names=(ledger)
SRC[ledger]=$src_ledger DST[ledger]=$dst_ledger
for t in $TABLES; do SRC[$t]=$t DST[$t]=$t names+=("$t"); done
columns() { q "$1" "SELECT string_agg(quote_ident(attname), ', ' ORDER BY attname) FROM pg_attribute
	WHERE attrelid = '$2'::regclass AND attnum > 0 AND NOT attisdropped"; }
for n in "${names[@]}"; do
	COLS[$n]=$(columns "$SOURCE" "${SRC[$n]}")
	[ "${COLS[$n]}" = "$(columns "$TARGET" "${DST[$n]}")" ] || die "${DST[$n]} has other columns on TARGET"
	[ "$resume" = 1 ] ||
		[ "$(q "$TARGET" "SELECT count(*) FROM ${DST[$n]} WHERE shard_partition(key) = $P")" = 0 ] ||
		die "TARGET already holds rows of partition $P in ${DST[$n]}"
done
count() { q "$1" "SELECT count(*) FROM $2 WHERE shard_partition(key) = $P"; }

t0=$(now_ms)
if [ "$resume" = 0 ]; then
	# --- 1. fence --------------------------------------------------------------------------
	"${PSQL[@]}" -d "$SOURCE" >/dev/null <<-SQL
		BEGIN;
		SET LOCAL lock_timeout = '30s';
		SELECT pg_advisory_xact_lock(7411, $P);
		UPDATE shard_partitions SET state = 'fenced' WHERE partition = $P;
		COMMIT;
	SQL
	say "partition $P fenced on SOURCE (calls in flight committed; its keys are refused from now on)"

	# --- 2. copy out -------------------------------------------------------------------------
	declare -A COUNT
	for n in "${names[@]}"; do
		q "$SOURCE" "\\copy (SELECT ${COLS[$n]} FROM ${SRC[$n]} WHERE shard_partition(key) = $P) TO '$work/$n.copy'"
		COUNT[$n]=$(wc -l <"$work/$n.copy")
	done

	# --- 3. load into TARGET, check the counts, activate: one transaction --------------------
	{
		echo 'BEGIN;'
		for n in "${names[@]}"; do
			echo "\\copy ${DST[$n]} (${COLS[$n]}) FROM '$work/$n.copy'"
			echo "DO \$\$ BEGIN IF (SELECT count(*) FROM ${DST[$n]} WHERE shard_partition(key) = $P) <> ${COUNT[$n]} THEN
				RAISE EXCEPTION 'partition $P: the rows in ${DST[$n]} differ in number from SOURCE''s ${COUNT[$n]}'; END IF; END \$\$;"
		done
		echo "INSERT INTO shard_partitions VALUES ($P, 'active');"
		echo 'COMMIT;'
	} | "${PSQL[@]}" -d "$TARGET" >/dev/null
	for n in "${names[@]}"; do say "copied ${COUNT[$n]} rows of ${SRC[$n]}"; done
else
	for n in "${names[@]}"; do
		[ "$(count "$TARGET" "${DST[$n]}")" = "$(count "$SOURCE" "${SRC[$n]}")" ] ||
			die "partition $P is active on TARGET, but its rows in ${DST[$n]} differ from SOURCE's"
	done
	say "partition $P already fenced on SOURCE and copied to TARGET: resuming at the switch"
fi

# --- 4. switch the router's map -----------------------------------------------------------
q "$ROUTER" "ALTER SERVER $SERVER OPTIONS (SET p$P '${TARGET_FROM_ROUTER//\'/\'\'}')"
say "router: partition $P now on TARGET; it was paused for $(($(now_ms) - t0)) ms"

# --- 5. clean up SOURCE ----------------------------------------------------------------------
{
	echo 'BEGIN;'
	for n in "${names[@]}"; do echo "DELETE FROM ${SRC[$n]} WHERE shard_partition(key) = $P;"; done
	echo "DELETE FROM shard_partitions WHERE partition = $P;"
	echo 'COMMIT;'
} | "${PSQL[@]}" -d "$SOURCE" >/dev/null
say "partition $P removed from SOURCE"
