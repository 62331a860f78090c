/*
 * ledger.c
 *	  The ledger table, read and written directly through heapam and nbtree.
 *
 * A probe looks the key up in the unique index with a dirty snapshot, so it
 * sees committed rows and also rows that other transactions are still
 * writing; the caller waits for those (as a unique index would) or, with
 * idempotent.wait = off, reports the key as in progress.
 *
 * Writers serialize on a short-lived heavyweight lock per key (key_locks.c),
 * taken after the probe decided to apply and released as soon as the ledger
 * row is written, not at commit.  Under that lock, a probe that found nothing
 * (made under it, or before it when no release of the lock was counted in
 * between) proves that no other transaction can insert the key until we
 * have, so the insert needs neither speculative insertion nor a
 * subtransaction, and the statement runs before the row is written: the
 * ledger row is written once, with its final rows and result.
 */
#include "postgres.h"

#include "access/genam.h"
#include "access/heapam.h"
#include "access/relation.h"
#include "access/relscan.h"
#include "access/table.h"
#include "access/tableam.h"
#include "access/xact.h"
#include "catalog/index.h"
#include "catalog/pg_extension.h"
#include "catalog/pg_type.h"
#include "nodes/primnodes.h"
#include "commands/extension.h"
#include "executor/tuptable.h"
#include "miscadmin.h"
#include "storage/lmgr.h"
#include "utils/builtins.h"
#include "utils/fmgroids.h"
#include "utils/inval.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "catalog/namespace.h"
#include "utils/rel.h"
#include "utils/snapmgr.h"

#include "ledger.h"

/*
 * The ledger's columns, found by name and type when the cache is filled, so
 * that their order in the table does not matter.  A new column is added
 * here, to LedgerRow (ledger.h), and to row_from_slot() and form_row(); an
 * upgrade script adds it to the table.  Columns that a version after 1.0
 * added may be missing: the library serves a ledger that was not updated
 * yet, without what the missing columns hold.
 */
typedef enum LedgerColumn
{
	COL_APPLIED_AT,
	COL_VERSION,
	COL_ROWS,
	COL_FINGERPRINT,
	COL_POLICY,
	COL_KEY,
	COL_RESULT,
	COL_EXPIRES_AT,
	COL_SCOPE,
	COL_LEGACY_FINGERPRINT,
	COL_STATE,
	COL_ATTEMPTS,
	COL_LEASE_UNTIL,
	COL_LAST_ERROR,
	NCOLUMNS
} LedgerColumn;

static const struct
{
	const char *name;
	Oid			type;
	bool		optional;		/* added after 1.0 */
}			columns[NCOLUMNS] =
{
	[COL_APPLIED_AT] = {"applied_at", TIMESTAMPTZOID, false},
	[COL_VERSION] = {"version", INT8OID, false},
	[COL_ROWS] = {"rows", INT8OID, false},
	[COL_FINGERPRINT] = {"request_hash", INT8OID, true},	/* 1.2 */
	[COL_POLICY] = {"policy", CHAROID, false},
	[COL_KEY] = {"key", TEXTOID, false},
	[COL_RESULT] = {"result", JSONBOID, false},
	[COL_EXPIRES_AT] = {"expires_at", TIMESTAMPTZOID, true},	/* 1.1 */
	[COL_SCOPE] = {"scope", TEXTOID, true},	/* 1.2 */
	[COL_LEGACY_FINGERPRINT] = {"fingerprint", INT8OID, false},	/* as 1.0 and 1.1 hashed */
	[COL_STATE] = {"state", CHAROID, true},	/* 1.2 */
	[COL_ATTEMPTS] = {"attempts", INT4OID, true},	/* 1.2 */
	[COL_LEASE_UNTIL] = {"lease_until", TIMESTAMPTZOID, true},	/* 1.2 */
	[COL_LAST_ERROR] = {"last_error", TEXTOID, true},	/* 1.2 */
};

/* An index on the ledger and what inserting into it needs (see insert_index_entries). */
typedef struct LedgerIndex
{
	Oid			oid;
	IndexInfo  *info;			/* columns, "IS NOT NULL" predicate */
} LedgerIndex;

/*
 * The ledger's relations and its indexes, looked up once per backend and
 * forgotten when a relcache invalidation reaches any of them (DDL, REINDEX
 * CONCURRENTLY, ANALYZE).  The invalidation callback only marks the cache
 * stale; it is rebuilt, and its memory reset, at the next ledger_open or
 * insert, when nothing points into it.
 */
static struct
{
	bool		valid;
	Oid			heap;
	Oid			pkey;
	int			pkey_natts;		/* 2: (key, scope); 1: (key), before 1.2 */
	Oid			expiry;			/* may stay invalid: schema 1.0 */
	AttrNumber	attnum[NCOLUMNS];	/* 0: the column is missing */
	int			nindexes;
	LedgerIndex *indexes;		/* every index, the primary key included */
	MemoryContext cxt;			/* holds indexes */
} cache;

static void resolve_columns(Relation heap, Relation pkey);

static void
ledger_relcache_callback(Datum arg, Oid relid)
{
	if (!cache.valid)
		return;
	if (relid == InvalidOid || relid == cache.heap)
		cache.valid = false;
	for (int i = 0; i < cache.nindexes && cache.valid; i++)
		if (relid == cache.indexes[i].oid)
			cache.valid = false;
}

/* The schema the extension was created in. */
static Oid
extension_schema(Oid extoid)
{
	Relation	rel = table_open(ExtensionRelationId, AccessShareLock);
	ScanKeyData skey;
	SysScanDesc scan;
	HeapTuple	tuple;
	Oid			nspoid = InvalidOid;

	ScanKeyInit(&skey, Anum_pg_extension_oid, BTEqualStrategyNumber, F_OIDEQ,
				ObjectIdGetDatum(extoid));
	scan = systable_beginscan(rel, ExtensionOidIndexId, true, NULL, 1, &skey);
	tuple = systable_getnext(scan);
	if (HeapTupleIsValid(tuple))
		nspoid = ((Form_pg_extension) GETSTRUCT(tuple))->extnamespace;
	systable_endscan(scan);
	table_close(rel, AccessShareLock);
	return nspoid;
}

/*
 * A partial index's predicate, if it is what the extension can evaluate
 * without an executor: "column IS NOT NULL" conditions ANDed together.
 */
static bool
is_not_null_predicate(List *predicate)
{
	ListCell   *lc;

	foreach(lc, predicate)
	{
		NullTest   *test = (NullTest *) lfirst(lc);

		if (!IsA(test, NullTest) || test->nulltesttype != IS_NOT_NULL ||
			test->argisrow || !IsA(test->arg, Var))
			return false;
	}
	return true;
}

/* Whether a heap tuple belongs in an index with such a predicate. */
static bool
predicate_holds(List *predicate, HeapTuple tuple)
{
	ListCell   *lc;

	foreach(lc, predicate)
	{
		Var		   *var = (Var *) ((NullTest *) lfirst(lc))->arg;

		if (heap_attisnull(tuple, var->varattno, NULL))
			return false;
	}
	return true;
}

/*
 * The ledger's rows are written here, not by the executor, so its indexes
 * are maintained here too: plain-column indexes (REINDEX CONCURRENTLY builds
 * one such beside the primary key), partial only on "column IS NOT NULL"
 * (as the expiry index is).  Any other index would need an executor state:
 * refuse to work beside one.  Creating an index invalidates the ledger's
 * relcache entry, which brings us back here.  Fills cache.indexes.
 */
static void
cache_ledger_indexes(Oid heap_oid)
{
	Relation	heap = try_relation_open(heap_oid, AccessShareLock);
	List	   *indexes;
	ListCell   *lc;
	MemoryContext oldcxt;
	int			n = 0;

	/* dropped since its name was looked up: look again */
	if (heap == NULL)
	{
		cache.valid = false;
		return;
	}
	indexes = RelationGetIndexList(heap);

	cache.indexes = MemoryContextAlloc(cache.cxt,
									   Max(list_length(indexes), 1) * sizeof(LedgerIndex));
	foreach(lc, indexes)
	{
		Relation	index = index_open(lfirst_oid(lc), AccessShareLock);
		IndexInfo  *info;

		oldcxt = MemoryContextSwitchTo(cache.cxt);
		info = BuildIndexInfo(index);
		MemoryContextSwitchTo(oldcxt);
		if (info->ii_Expressions != NIL || info->ii_ExclusionOps != NULL ||
			!is_not_null_predicate(info->ii_Predicate))
			ereport(ERROR,
					(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
					 errmsg("index \"%s\" on the ledger is not supported by extension \"idempotent\"",
							RelationGetRelationName(index)),
					 errdetail("The extension maintains plain-column indexes on the ledger, partial ones only on IS NOT NULL conditions."),
					 errhint("Drop the index.")));
		if (RelationGetRelid(index) == cache.pkey)
			resolve_columns(heap, index);
		cache.indexes[n].oid = RelationGetRelid(index);
		cache.indexes[n].info = info;
		n++;
		index_close(index, AccessShareLock);
	}
	cache.nindexes = n;
	list_free(indexes);
	if (cache.pkey_natts == 0)
		elog(ERROR, "primary key of the ledger is not among its indexes");
	table_close(heap, NoLock);
}

static void
refuse_ledger(const char *detail)
{
	ereport(ERROR,
			(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
			 errmsg("ledger of extension \"idempotent\" does not have the expected columns"),
			 errdetail_internal("%s", detail),
			 errhint("Run ALTER EXTENSION idempotent UPDATE, or drop and create the extension again.")));
}

/*
 * Find each column of the ledger by name and check its type; refuse a ledger
 * with a required column missing, a column of another type, or a column the
 * extension does not know (it would be written as NULL).  Also check that the
 * primary key is on (key, scope), or on (key) before 1.2.
 */
static void
resolve_columns(Relation heap, Relation pkey)
{
	TupleDesc	desc = RelationGetDescr(heap);
	Form_pg_index index = pkey->rd_index;

	memset(cache.attnum, 0, sizeof(cache.attnum));
	for (int i = 0; i < desc->natts; i++)
	{
		Form_pg_attribute att = TupleDescAttr(desc, i);
		int			c;

		if (att->attisdropped)
			continue;
		for (c = 0; c < NCOLUMNS; c++)
			if (strcmp(NameStr(att->attname), columns[c].name) == 0)
				break;
		if (c == NCOLUMNS)
			refuse_ledger(psprintf("Column \"%s\" is not one of the extension's.",
								   NameStr(att->attname)));
		if (att->atttypid != columns[c].type)
			refuse_ledger(psprintf("Column \"%s\" has type %s, not %s.",
								   columns[c].name, format_type_be(att->atttypid),
								   format_type_be(columns[c].type)));
		cache.attnum[c] = att->attnum;
	}
	for (int c = 0; c < NCOLUMNS; c++)
		if (cache.attnum[c] == 0 && !columns[c].optional)
			refuse_ledger(psprintf("Column \"%s\" is missing.", columns[c].name));

	cache.pkey_natts = index->indnkeyatts;
	if (!index->indisunique ||
		index->indkey.values[0] != cache.attnum[COL_KEY] ||
		(cache.pkey_natts == 2 ?
		 (cache.attnum[COL_SCOPE] == 0 || index->indkey.values[1] != cache.attnum[COL_SCOPE]) :
		 (cache.pkey_natts != 1 || cache.attnum[COL_SCOPE] != 0)))
		refuse_ledger("Index \"idem_ledger_pkey\" must be a unique index on (key, scope).");
}

/* Whether the ledger stores request identities by value (version 1.2 on). */
bool
ledger_stores_fingerprint(void)
{
	return cache.attnum[COL_FINGERPRINT] != 0;
}

/* Whether the ledger keeps leases and failures (version 1.2 on). */
bool
ledger_stores_leases(void)
{
	return cache.attnum[COL_STATE] != 0 && cache.attnum[COL_ATTEMPTS] != 0 &&
		cache.attnum[COL_LEASE_UNTIL] != 0 && cache.attnum[COL_LAST_ERROR] != 0;
}

/* Fill the cache: idem_ledger and its indexes, in the extension's schema. */
static void
lookup_relations(void)
{
	Oid			extoid = get_extension_oid("idempotent", true);
	Oid			nspoid;

	if (!OidIsValid(extoid))
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("extension \"idempotent\" is not installed in this database"),
				 errhint("Run CREATE EXTENSION idempotent.")));
	nspoid = extension_schema(extoid);
	cache.heap = get_relname_relid("idem_ledger", nspoid);
	cache.pkey = get_relname_relid("idem_ledger_pkey", nspoid);
	if (!OidIsValid(cache.heap) || !OidIsValid(cache.pkey))
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("ledger of extension \"idempotent\" is missing"),
				 errdetail("Table \"idem_ledger\" and its index \"idem_ledger_pkey\" must be in schema \"%s\".",
						   get_namespace_name(nspoid)),
				 errhint("Drop and create the extension again.")));
	cache.expiry = get_relname_relid("idem_ledger_expires_at", nspoid);
	cache_ledger_indexes(cache.heap);
}

/*
 * Find the ledger's relations when the cache is stale.  The cache is valid
 * only if no invalidation reached it while it was filled (opening relations
 * processes invalidations): otherwise look again.
 */
static void
ledger_lookup(void)
{
	if (cache.cxt == NULL)
	{
		cache.cxt = AllocSetContextCreate(CacheMemoryContext, "idempotent ledger",
										  ALLOCSET_SMALL_SIZES);
		CacheRegisterRelcacheCallback(ledger_relcache_callback, (Datum) 0);
	}

	PG_TRY();
	{
		do
		{
			MemoryContextReset(cache.cxt);
			cache.nindexes = 0;
			cache.pkey_natts = 0;
			cache.valid = true;	/* unless an invalidation comes meanwhile */
			lookup_relations();
		} while (!cache.valid);
	}
	PG_CATCH();
	{
		cache.valid = false;
		PG_RE_THROW();
	}
	PG_END_TRY();
}

/*
 * Open the ledger for a call.  Locking the heap for the first time in this
 * transaction processes invalidations: if they reached the ledger (the
 * extension was created again, or REINDEX CONCURRENTLY swapped an index
 * since the cache was filled), look again before opening anything by OID.
 * If this transaction held the lock already, nobody could have dropped the
 * heap or its indexes meanwhile.  While the heap is locked, an index in the
 * cache keeps taking inserts and cannot be dropped: REINDEX CONCURRENTLY and
 * DROP INDEX CONCURRENTLY wait for the heap's lockers before they mark an
 * index dead, and a plain DROP INDEX needs a lock that conflicts with ours.
 * (A swap does not wait, but the swapped-out index stays complete.)
 */
void
ledger_open(Ledger *ledger)
{
	Oid			heap_oid;

	for (;;)
	{
		if (!cache.valid)
			ledger_lookup();
		heap_oid = cache.heap;
		LockRelationOid(heap_oid, RowExclusiveLock);
		if (cache.valid && cache.heap == heap_oid)
			break;
		UnlockRelationOid(heap_oid, RowExclusiveLock);
	}
	ledger->heap = table_open(heap_oid, NoLock);
	ledger->index = index_open(cache.pkey, RowExclusiveLock);
	ledger->slot = table_slot_create(ledger->heap, NULL);
	ledger->scan = NULL;
}

/*
 * Let go of the index page and the heap buffer the last probe pinned: a
 * statement that runs next, however long, must not hold up VACUUM's cleanup
 * of the ledger.  The next probe begins a new scan.
 */
void
ledger_end_probe(Ledger *ledger)
{
	ExecClearTuple(ledger->slot);
	if (ledger->scan != NULL)
		index_endscan(ledger->scan);
	ledger->scan = NULL;
}

void
ledger_close(Ledger *ledger)
{
	ledger_end_probe(ledger);
	ExecDropSingleTupleTableSlot(ledger->slot);
	index_close(ledger->index, NoLock);
	table_close(ledger->heap, NoLock);
}

/*
 * Under REPEATABLE READ or SERIALIZABLE, a row committed after our snapshot
 * was taken is a conflict: report it so the caller retries the transaction.
 */
static void
check_snapshot_conflict(TupleTableSlot *slot, text *key)
{
	HeapTuple	tuple;
	TransactionId xmin;

	if (!IsolationUsesXactSnapshot())
		return;
	tuple = ExecFetchSlotHeapTuple(slot, false, NULL);
	xmin = HeapTupleHeaderGetXmin(tuple->t_data);
	if (!TransactionIdIsCurrentTransactionId(xmin) &&
		XidInMVCCSnapshot(xmin, GetTransactionSnapshot()))
		ereport(ERROR,
				(errcode(ERRCODE_T_R_SERIALIZATION_FAILURE),
				 errmsg("could not serialize access due to concurrent update"),
				 errdetail("Key \"%s\" was recorded by a transaction that committed after this transaction's snapshot was taken.",
						   text_to_cstring(key)),
				 errhint("The transaction might succeed if retried.")));
}

/* A column's value in a slot whose attributes are all deformed; null if missing. */
static inline Datum
slot_column(TupleTableSlot *slot, LedgerColumn c, bool *isnull)
{
	AttrNumber	attnum = cache.attnum[c];

	*isnull = (attnum == 0 || slot->tts_isnull[attnum - 1]);
	return *isnull ? (Datum) 0 : slot->tts_values[attnum - 1];
}

static void
row_from_slot(TupleTableSlot *slot, LedgerRow *row)
{
	Datum		value;
	bool		isnull;

	slot_getallattrs(slot);
	row->tid = slot->tts_tid;
	value = slot_column(slot, COL_APPLIED_AT, &isnull);
	row->has_applied = !isnull;
	row->applied_at = isnull ? 0 : DatumGetTimestampTz(value);
	value = slot_column(slot, COL_VERSION, &isnull);
	row->has_version = !isnull;
	row->version = isnull ? 0 : DatumGetInt64(value);
	value = slot_column(slot, COL_ROWS, &isnull);
	row->has_rows = !isnull;
	row->rows = isnull ? 0 : DatumGetInt64(value);
	value = slot_column(slot, COL_FINGERPRINT, &isnull);
	row->has_fingerprint = !isnull;
	row->fingerprint = isnull ? 0 : DatumGetInt64(value);
	value = slot_column(slot, COL_LEGACY_FINGERPRINT, &isnull);
	row->has_legacy_fingerprint = !isnull;
	row->legacy_fingerprint = isnull ? 0 : DatumGetInt64(value);
	row->policy = (IdemPolicy) DatumGetChar(slot_column(slot, COL_POLICY, &isnull));
	value = slot_column(slot, COL_RESULT, &isnull);
	row->result = isnull ? NULL : (Jsonb *) DatumGetPointer(value);
	value = slot_column(slot, COL_EXPIRES_AT, &isnull);
	row->has_expiry = !isnull;
	row->expires_at = isnull ? 0 : DatumGetTimestampTz(value);
	value = slot_column(slot, COL_STATE, &isnull);
	row->state = isnull ? IDEM_STATE_NONE : DatumGetChar(value);
	value = slot_column(slot, COL_ATTEMPTS, &isnull);
	row->attempts = isnull ? 0 : DatumGetInt32(value);
	value = slot_column(slot, COL_LEASE_UNTIL, &isnull);
	row->has_lease_until = !isnull;
	row->lease_until = isnull ? 0 : DatumGetTimestampTz(value);
	value = slot_column(slot, COL_LAST_ERROR, &isnull);
	row->last_error = isnull ? NULL : (text *) DatumGetPointer(value);
}

/*
 * Under SERIALIZABLE, read the key once more through an MVCC scan of the
 * index so that the predicate locks a plain SELECT would take are taken: the
 * dirty probe alone would let write skew on keys go unnoticed.
 */
static void
predicate_lock_key(Ledger *ledger, ScanKey skey, int nkeys, TupleTableSlot *slot)
{
	IndexScanDesc scan = index_beginscan(ledger->heap, ledger->index,
										 GetTransactionSnapshot(), nkeys, 0);

	index_rescan(scan, skey, nkeys, NULL, 0);
	while (index_getnext_slot(scan, ForwardScanDirection, slot))
		;
	index_endscan(scan);
}

/* The scan keys that find (scope, key) in the primary key; returns how many. */
static int
key_scankeys(ScanKey skey, text *scope, text *key)
{
	ScanKeyInit(&skey[0], 1, BTEqualStrategyNumber, F_TEXTEQ, PointerGetDatum(key));
	if (cache.pkey_natts == 1)
	{
		if (VARSIZE_ANY_EXHDR(scope) != 0)
			ereport(ERROR,
					(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
					 errmsg("scopes need version 1.2 of extension \"idempotent\""),
					 errdetail("This database's ledger has no scope column."),
					 errhint("Run ALTER EXTENSION idempotent UPDATE, or set idempotent.scope to ''.")));
		return 1;
	}
	ScanKeyInit(&skey[1], 2, BTEqualStrategyNumber, F_TEXTEQ, PointerGetDatum(scope));
	return 2;
}

/*
 * Look (scope, key) up with a dirty snapshot.  The scan stays open, its leaf
 * page pinned, until ledger_end_probe() or ledger_close().
 */
LedgerProbe
ledger_probe(Ledger *ledger, text *scope, text *key, LedgerRow *row,
			 LedgerWriter *writer)
{
	SnapshotData *dirty = &ledger->dirty;
	ScanKeyData skey[2];
	int			nkeys = key_scankeys(skey, scope, key);
	TupleTableSlot *slot = ledger->slot;
	LedgerProbe result = LEDGER_ABSENT;

	ledger->probed_scope = scope;
	ledger->probed_key = key;
	if (idem_key_releases_counted())
	{
		ledger->probed_hash = idem_key_hash(scope, key);
		(void) idem_key_releases(ledger->probed_hash, &ledger->releases_at_probe);
	}
	if (IsolationIsSerializable())
		predicate_lock_key(ledger, skey, nkeys, slot);
	if (ledger->scan == NULL)
	{
		InitDirtySnapshot(*dirty);
		ledger->scan = index_beginscan(ledger->heap, ledger->index, dirty, nkeys, 0);
	}
	index_rescan(ledger->scan, skey, nkeys, NULL, 0);

	/* The dirty snapshot reports who is inserting or deleting a row. */
	if (index_getnext_slot(ledger->scan, ForwardScanDirection, slot))
	{
		if (TransactionIdIsValid(dirty->xmin) || TransactionIdIsValid(dirty->xmax))
		{
			writer->xid = TransactionIdIsValid(dirty->xmin) ? dirty->xmin : dirty->xmax;
			writer->spec_token = dirty->speculativeToken;
			result = LEDGER_BUSY;
		}
		else
		{
			check_snapshot_conflict(slot, key);
			row_from_slot(slot, row);
			result = LEDGER_FOUND;
		}
	}
	return result;
}

/*
 * Look (scope, key) up as the calling statement's snapshot sees it: rows
 * committed before it and the transaction's own; never waits, never
 * reports a conflict.  For readers (idem_get).  The row stays valid until
 * the next lookup or ledger_close().
 */
bool
ledger_read(Ledger *ledger, text *scope, text *key, LedgerRow *row)
{
	ScanKeyData skey[2];
	int			nkeys = key_scankeys(skey, scope, key);
	IndexScanDesc scan = index_beginscan(ledger->heap, ledger->index,
										 GetActiveSnapshot(), nkeys, 0);
	bool		found;

	index_rescan(scan, skey, nkeys, NULL, 0);
	found = index_getnext_slot(scan, ForwardScanDirection, ledger->slot);
	if (found)
		row_from_slot(ledger->slot, row);
	index_endscan(scan);
	return found;
}

/* Whether a key's time to live has run out (as of the transaction's start). */
bool
ledger_row_expired(const LedgerRow *row)
{
	return row->has_expiry && row->expires_at <= GetCurrentTransactionStartTimestamp();
}

/*
 * Expiry counts from the commit of the transaction that writes a key, so
 * that a key is never born expired however long that transaction runs.  A
 * row is stamped to expire idempotent.ttl plus EXPIRY_GRACE after it is
 * written; if the transaction is still running EXPIRY_GRACE later, its keys
 * are stamped again just before it commits.  Short transactions, the usual
 * case, write each key once.  The keys to stamp again are listed in
 * TopTransactionContext.
 */
#define EXPIRY_GRACE_US		USECS_PER_SEC

typedef struct StampedKey
{
	text	   *scope;
	text	   *key;
	TimestampTz stamped;		/* the expiry written; a row that no longer
								 * has it was written again or stamped already */
} StampedKey;

static List *stamped_keys = NIL;
static TimestampTz first_stamp = 0;
static bool expiry_callback_registered = false;

/* Stamp the rows this transaction wrote with a TTL again, counting from now. */
static void
restamp_keys(void)
{
	TimestampTz now = GetCurrentTimestamp();
	Ledger		ledger;
	ListCell   *lc;

	if (now - first_stamp <= EXPIRY_GRACE_US)
		return;
	/* dropped in this transaction: its keys go with it */
	if (!OidIsValid(get_extension_oid("idempotent", true)))
		return;
	ledger_open(&ledger);
	foreach(lc, stamped_keys)
	{
		StampedKey *sk = lfirst(lc);
		LedgerRow	row;
		LedgerWriter writer;
		HeapTuple	tuple;

		if (ledger_probe(&ledger, sk->scope, sk->key, &row, &writer) != LEDGER_FOUND ||
			!row.has_expiry || row.expires_at != sk->stamped)
			continue;
		tuple = ExecFetchSlotHeapTuple(ledger.slot, false, NULL);
		if (!TransactionIdIsCurrentTransactionId(HeapTupleHeaderGetXmin(tuple->t_data)))
			continue;
		row.expires_at += now - first_stamp;	/* the same TTL, from now */

		/*
		 * Under the key's lock, as every write of a key a writer could have
		 * probed: its release is counted (key_locks.c), and nobody probes
		 * under the lock while the row is replaced.  Nobody holding the lock
		 * waits for this transaction, whose row of the key they would see.
		 */
		(void) idem_key_lock(sk->scope, sk->key, true);
		ledger_update(&ledger, sk->scope, sk->key, &row);
		idem_key_unlock(sk->scope, sk->key);
	}
	ledger_close(&ledger);
}

static void
expiry_xact_callback(XactEvent event, void *arg)
{
	switch (event)
	{
		case XACT_EVENT_PRE_COMMIT:
			if (stamped_keys != NIL)
				restamp_keys();
			break;
		case XACT_EVENT_PRE_PREPARE:
			/* COMMIT PREPARED may come any time later: the expiry would not hold */
			if (stamped_keys != NIL)
				ereport(ERROR,
						(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
						 errmsg("cannot prepare a transaction that recorded keys with a time to live"),
						 errdetail("A key's time to live counts from its commit, which PREPARE TRANSACTION leaves open."),
						 errhint("Set idempotent.ttl to 0 in transactions to be prepared.")));
			break;
		case XACT_EVENT_COMMIT:
		case XACT_EVENT_ABORT:
		case XACT_EVENT_PREPARE:
			stamped_keys = NIL;	/* its memory goes with the transaction */
			break;
		default:
			break;
	}
}

/*
 * Stamp a row about to be written: applied now (the transaction's start),
 * expiring idempotent.ttl after its commit if a TTL is set (see above), an
 * ordinary key with no lease and no failures; lease.c sets those after.
 */
void
ledger_stamp_row(LedgerRow *row, text *scope, text *key)
{
	MemoryContext old;
	StampedKey *sk;

	row->state = IDEM_STATE_NONE;
	row->attempts = 0;
	row->has_lease_until = false;
	row->lease_until = 0;
	row->last_error = NULL;
	row->has_applied = true;
	row->applied_at = GetCurrentTransactionStartTimestamp();
	row->has_expiry = (idem_ttl > 0);
	row->expires_at = 0;
	if (!row->has_expiry)
		return;

	if (!expiry_callback_registered)
	{
		RegisterXactCallback(expiry_xact_callback, NULL);
		expiry_callback_registered = true;
	}
	old = MemoryContextSwitchTo(TopTransactionContext);
	if (stamped_keys == NIL)
		first_stamp = GetCurrentTimestamp();
	sk = palloc(sizeof(StampedKey));
	sk->scope = DatumGetTextPCopy(PointerGetDatum(scope));
	sk->key = DatumGetTextPCopy(PointerGetDatum(key));
	row->expires_at = first_stamp + (TimestampTz) idem_ttl * USECS_PER_SEC + EXPIRY_GRACE_US;
	sk->stamped = row->expires_at;
	stamped_keys = lappend(stamped_keys, sk);
	MemoryContextSwitchTo(old);
}

/*
 * The probe step of every writer's loop: probe (scope, key) and, while
 * another transaction is writing it, wait for that transaction (letting go
 * of the key's lock first if *locked, since its writer may need it) and
 * probe again.  Without wait, a busy key is returned as LEDGER_BUSY instead
 * (the lock let go all the same).
 */
LedgerProbe
ledger_probe_settled(Ledger *ledger, text *scope, text *key, LedgerRow *row,
					 bool *locked, bool wait)
{
	for (;;)
	{
		LedgerWriter writer;
		LedgerProbe probe = ledger_probe(ledger, scope, key, row, &writer);

		if (probe != LEDGER_BUSY)
			return probe;
		if (*locked)
		{
			idem_key_unlock(scope, key);
			*locked = false;
		}
		if (!wait)
			return LEDGER_BUSY;
		ledger_wait(ledger, &writer);
	}
}

/*
 * Probe (scope, key) under its writers' lock, waiting out other writers
 * whatever idempotent.wait says; returns whether a row was found, expired or
 * not.  The caller unlocks.  For operators' functions and lease holders,
 * which must learn the key's fate.
 */
bool
ledger_probe_locked(Ledger *ledger, text *scope, text *key, LedgerRow *row)
{
	bool		locked = false;

	for (;;)
	{
		LedgerProbe probe;

		(void) idem_key_lock(scope, key, true);	/* waits; never refused */
		locked = true;
		probe = ledger_probe_settled(ledger, scope, key, row, &locked, true);
		if (locked)
			return probe == LEDGER_FOUND;
		/* waited for a writer with the lock let go: take it again */
	}
}

/*
 * Take the writers' lock of the key the last probe looked up; false if it is
 * busy and we may not wait.  *probe_holds tells whether what that probe found
 * still holds: no release of the key's lock was counted since the probe began
 * (key_locks.c).  Otherwise the caller probes again, under the lock.
 */
bool
ledger_lock_probed_key(Ledger *ledger, bool wait, bool *probe_holds)
{
	bool		counted = idem_key_releases_counted();
	uint64		hash = counted ? ledger->probed_hash :
		idem_key_hash(ledger->probed_scope, ledger->probed_key);
	uint64		releases;

	if (!idem_key_lock_hash(hash, wait))
		return false;
	*probe_holds = counted && idem_key_releases(hash, &releases) &&
		releases == ledger->releases_at_probe;
	return true;
}

/* Wait until the transaction writing a busy key has ended. */
void
ledger_wait(Ledger *ledger, const LedgerWriter *writer)
{
	if (writer->spec_token != 0)
		SpeculativeInsertionWait(writer->xid, writer->spec_token);
	else
		XactLockTableWait(writer->xid, ledger->heap, NULL, XLTW_None);
}

/* Set a column's value in arrays laid out as the ledger's tuple descriptor. */
static inline void
set_column(Datum *values, bool *nulls, LedgerColumn c, Datum value, bool isnull)
{
	AttrNumber	attnum = cache.attnum[c];

	if (attnum == 0)
		return;
	values[attnum - 1] = value;
	nulls[attnum - 1] = isnull;
}

/*
 * The heap tuple of a row, in CurrentMemoryContext.  A row that needs a
 * column the ledger lacks (expires_at before 1.1, scope before 1.2) is
 * refused: it would be written without what it needs.
 */
static HeapTuple
form_row(Ledger *ledger, text *scope, text *key, const LedgerRow *row)
{
	TupleDesc	desc = RelationGetDescr(ledger->heap);
	Datum	   *values = palloc(desc->natts * sizeof(Datum));
	bool	   *nulls = palloc(desc->natts * sizeof(bool));
	HeapTuple	tuple;

	if (row->has_expiry && cache.attnum[COL_EXPIRES_AT] == 0)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("idempotent.ttl needs version 1.1 of extension \"idempotent\""),
				 errdetail("This database has version 1.0, whose ledger has no expiry."),
				 errhint("Run ALTER EXTENSION idempotent UPDATE, or set idempotent.ttl to 0.")));
	if ((row->state != IDEM_STATE_NONE || !row->has_applied) && !ledger_stores_leases())
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("leases and failures need version 1.2 of extension \"idempotent\""),
				 errdetail("This database's ledger has no state column."),
				 errhint("Run ALTER EXTENSION idempotent UPDATE.")));
	for (int i = 0; i < desc->natts; i++)
	{
		values[i] = (Datum) 0;
		nulls[i] = true;
	}
	set_column(values, nulls, COL_APPLIED_AT, TimestampTzGetDatum(row->applied_at),
			   !row->has_applied);
	set_column(values, nulls, COL_VERSION, Int64GetDatum(row->version), !row->has_version);
	set_column(values, nulls, COL_ROWS, Int64GetDatum(row->rows), !row->has_rows);
	set_column(values, nulls, COL_FINGERPRINT, Int64GetDatum(row->fingerprint),
			   !row->has_fingerprint);
	set_column(values, nulls, COL_LEGACY_FINGERPRINT, Int64GetDatum(row->legacy_fingerprint),
			   !row->has_legacy_fingerprint);
	set_column(values, nulls, COL_POLICY, CharGetDatum((char) row->policy), false);
	set_column(values, nulls, COL_KEY, PointerGetDatum(key), false);
	set_column(values, nulls, COL_SCOPE, PointerGetDatum(scope), false);
	set_column(values, nulls, COL_RESULT, PointerGetDatum(row->result), row->result == NULL);
	set_column(values, nulls, COL_EXPIRES_AT, TimestampTzGetDatum(row->expires_at),
			   !row->has_expiry);
	set_column(values, nulls, COL_STATE, CharGetDatum(row->state),
			   row->state == IDEM_STATE_NONE);
	set_column(values, nulls, COL_ATTEMPTS, Int32GetDatum(row->attempts), row->attempts == 0);
	set_column(values, nulls, COL_LEASE_UNTIL, TimestampTzGetDatum(row->lease_until),
			   !row->has_lease_until);
	set_column(values, nulls, COL_LAST_ERROR, PointerGetDatum(row->last_error),
			   row->last_error == NULL);
	tuple = heap_form_tuple(desc, values, nulls);
	pfree(values);
	pfree(nulls);
	return tuple;
}

/*
 * Index a new heap tuple in every index ready for inserts: the primary key,
 * and any plain-column index beside it (see cache_ledger_indexes).  The
 * statement that ran since ledger_open may have invalidated the cache: the
 * indexes are those of the relcache now, as the executor's would be.
 */
static void
insert_index_entries(Ledger *ledger, HeapTuple tuple)
{
	TupleDesc	desc = RelationGetDescr(ledger->heap);

	if (!cache.valid)
		ledger_lookup();
	if (cache.heap != RelationGetRelid(ledger->heap))
		elog(ERROR, "ledger of extension \"idempotent\" was replaced during a call");

	for (int i = 0; i < cache.nindexes; i++)
	{
		LedgerIndex *li = &cache.indexes[i];
		Relation	index;
		Datum		values[INDEX_MAX_KEYS];
		bool		nulls[INDEX_MAX_KEYS];

		/* most keys have no expiry: their row is not in the expiry index */
		if (!predicate_holds(li->info->ii_Predicate, tuple))
			continue;
		index = li->oid == RelationGetRelid(ledger->index) ? ledger->index :
			index_open(li->oid, RowExclusiveLock);
		if (index->rd_index->indisready)
		{
			/* an access method's per-statement state must not outlive the call */
			IndexInfo	info = *li->info;

			info.ii_AmCache = NULL;
			info.ii_Context = CurrentMemoryContext;
			for (int k = 0; k < info.ii_NumIndexAttrs; k++)
				values[k] = heap_getattr(tuple, info.ii_IndexAttrNumbers[k],
										 desc, &nulls[k]);
			index_insert(index, values, nulls, &tuple->t_self, ledger->heap,
						 index->rd_index->indisunique ? UNIQUE_CHECK_YES : UNIQUE_CHECK_NO,
						 false, &info);
		}
		if (index != ledger->index)
			index_close(index, NoLock);
	}
}

/* Insert a new key; the caller holds the key's lock and saw it absent. */
void
ledger_insert(Ledger *ledger, text *scope, text *key, const LedgerRow *row)
{
	HeapTuple	tuple = form_row(ledger, scope, key, row);

	heap_insert(ledger->heap, tuple, GetCurrentCommandId(true), 0, NULL);
	insert_index_entries(ledger, tuple);
	heap_freetuple(tuple);
	CommandCounterIncrement();
}

/*
 * Replace the row a probe found at row->tid; the caller holds the key's lock,
 * so only a writer that does not take it (a purge deleting an expired key, or
 * a manual DELETE or UPDATE by a superuser) can have changed the row
 * meanwhile.
 */
void
ledger_update(Ledger *ledger, text *scope, text *key, const LedgerRow *row)
{
	HeapTuple	tuple = form_row(ledger, scope, key, row);
	ItemPointerData otid = row->tid;
	TM_FailureData tmfd;
	LockTupleMode lockmode;
	TM_Result	result;

	result = heap_update(ledger->heap, &otid, tuple, GetCurrentCommandId(true),
						 InvalidSnapshot, true, &tmfd, &lockmode);
	switch (result)
	{
		case TM_Ok:
			if (!HeapTupleIsHeapOnly(tuple))
				insert_index_entries(ledger, tuple);
			break;
		case TM_Deleted:
			/* the key was deleted meanwhile: it is absent now, record it anew */
			heap_insert(ledger->heap, tuple, GetCurrentCommandId(true), 0, NULL);
			insert_index_entries(ledger, tuple);
			break;
		case TM_Updated:
			ereport(ERROR,
					(errcode(ERRCODE_T_R_SERIALIZATION_FAILURE),
					 errmsg("could not serialize access due to concurrent update"),
					 errdetail("Key \"%s\" was changed in the ledger by another transaction.",
							   text_to_cstring(key)),
					 errhint("The transaction might succeed if retried.")));
			break;
		default:
			elog(ERROR, "unexpected heap_update status %u for the ledger", result);
	}
	heap_freetuple(tuple);
	CommandCounterIncrement();
}

/*
 * Write a key's row: over the row a probe found (found->tid), or as a new row
 * when found is NULL.  The caller holds the key's lock, as for those two.
 */
void
ledger_write(Ledger *ledger, text *scope, text *key, LedgerRow *row,
			 const LedgerRow *found)
{
	if (found == NULL)
		ledger_insert(ledger, scope, key, row);
	else
	{
		row->tid = found->tid;
		ledger_update(ledger, scope, key, row);
	}
}

/*
 * Delete the row at tid; returns whether it was deleted.  Without wait, a
 * row that another transaction is changing is left alone (purges never
 * wait); with wait, that transaction's end decides.
 */
bool
ledger_delete(Ledger *ledger, ItemPointer tid, bool wait)
{
	TM_FailureData tmfd;
	TM_Result	result;

	result = heap_delete(ledger->heap, tid, GetCurrentCommandId(true),
						 InvalidSnapshot, wait, &tmfd, false);
	switch (result)
	{
		case TM_Ok:
			return true;
		case TM_Updated:
		case TM_Deleted:
		case TM_BeingModified:
		case TM_SelfModified:
			return false;
		default:
			elog(ERROR, "unexpected heap_delete status %u for the ledger", result);
	}
	return false;
}

/* Whether the row in the slot belongs to scope (NULL: every scope). */
static bool
slot_in_scope(TupleTableSlot *slot, text *scope)
{
	bool		isnull;
	text	   *row_scope;

	if (scope == NULL)
		return true;
	if (cache.attnum[COL_SCOPE] == 0)
		return VARSIZE_ANY_EXHDR(scope) == 0;
	row_scope = DatumGetTextPP(slot_getattr(slot, cache.attnum[COL_SCOPE], &isnull));
	return idem_text_equal(row_scope, scope);
}

/* The scope of the row in the slot, for idem_key_is_applying(). */
static text *
slot_scope(TupleTableSlot *slot)
{
	bool		isnull;

	if (cache.attnum[COL_SCOPE] == 0)
		return cstring_to_text("");
	return DatumGetTextPP(slot_getattr(slot, cache.attnum[COL_SCOPE], &isnull));
}

/*
 * Whether the row in the slot is a lease still running or waiting for its
 * retry: such a row is written without an expiry, but a purge checks anyway,
 * since deleting it would let a second attempt begin beside the holder.
 */
static bool
slot_is_live_lease(TupleTableSlot *slot)
{
	bool		isnull;
	Datum		state;

	if (cache.attnum[COL_STATE] == 0)
		return false;
	state = slot_getattr(slot, cache.attnum[COL_STATE], &isnull);
	if (isnull)
		return false;
	if (DatumGetChar(state) == IDEM_STATE_LEASED)
		return true;
	return DatumGetChar(state) == IDEM_STATE_FAILED &&
		DatumGetChar(slot_getattr(slot, cache.attnum[COL_POLICY], &isnull)) == IDEM_LEASE;
}

/*
 * Delete up to max_keys keys of scope (NULL: of every scope) that expired by
 * now, in the order of their expiry, through the expiry index; returns how
 * many were deleted.  Completed and dead keys expire; live leases never do.
 */
int64
ledger_purge(Ledger *ledger, int64 max_keys, TimestampTz now, text *scope)
{
	Relation	index;
	ScanKeyData skey;
	IndexScanDesc scan;
	int64		deleted = 0;
	bool		isnull;

	if (!OidIsValid(cache.expiry))
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("ledger of extension \"idempotent\" has no expiry index"),
				 errhint("Run ALTER EXTENSION idempotent UPDATE, or create the index idem_ledger_expires_at as version 1.1 does.")));
	index = index_open(cache.expiry, RowExclusiveLock);
	ScanKeyInit(&skey, 1, BTLessEqualStrategyNumber, F_TIMESTAMPTZ_LE,
				TimestampTzGetDatum(now));

	/*
	 * A dirty snapshot: rows this transaction deleted already are gone, and
	 * rows another transaction is writing are reported, to be left alone.
	 */
	InitDirtySnapshot(ledger->dirty);
	scan = index_beginscan(ledger->heap, index, &ledger->dirty, 1, 0);
	index_rescan(scan, &skey, 1, NULL, 0);
	while (deleted < max_keys &&
		   index_getnext_slot(scan, ForwardScanDirection, ledger->slot))
	{
		CHECK_FOR_INTERRUPTS();
		if (TransactionIdIsValid(ledger->dirty.xmin) ||
			TransactionIdIsValid(ledger->dirty.xmax))
			continue;
		if (!slot_in_scope(ledger->slot, scope) || slot_is_live_lease(ledger->slot))
			continue;
		/* a key an enclosing call is applying is that call's to write */
		if (idem_key_is_applying(slot_scope(ledger->slot),
								 DatumGetTextPP(slot_getattr(ledger->slot,
															 cache.attnum[COL_KEY], &isnull))))
			continue;
		if (ledger_delete(ledger, &ledger->slot->tts_tid, false))
			deleted++;
	}
	index_endscan(scan);
	index_close(index, NoLock);
	CommandCounterIncrement();
	return deleted;
}
