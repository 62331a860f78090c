/*
 * ledger.c
 *	  The ledger table, read and written directly through heapam and nbtree.
 *
 * A probe looks the key up in the unique index with a dirty snapshot, so it
 * sees committed rows and also rows that other transactions are still
 * writing; the caller waits for those (as a unique index would) or, with
 * idempotent.wait = off, reports the key as in progress.
 *
 * Writers serialize on a short-lived heavyweight lock per key (an advisory
 * lock tag of our own class), taken after the probe decided to apply and
 * released as soon as the ledger row is written, not at commit.  Under that
 * lock a re-probe that finds nothing proves no other transaction can insert
 * the key until we have, so the insert needs neither speculative insertion
 * nor a subtransaction, and the statement runs before the row is written:
 * the ledger row is written once, with its final rows and result.
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
#include "catalog/indexing.h"
#include "catalog/pg_extension.h"
#include "nodes/primnodes.h"
#include "commands/extension.h"
#include "common/hashfn.h"
#include "executor/tuptable.h"
#include "miscadmin.h"
#include "storage/lmgr.h"
#include "storage/lock.h"
#include "utils/builtins.h"
#include "utils/fmgroids.h"
#include "utils/inval.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "catalog/namespace.h"
#include "utils/rel.h"
#include "utils/snapmgr.h"

#include "ledger.h"

/* Columns of idem_ledger, in the order the install script creates them. */
#define Anum_ledger_applied_at	1
#define Anum_ledger_version		2
#define Anum_ledger_rows		3
#define Anum_ledger_fingerprint 4
#define Anum_ledger_policy		5
#define Anum_ledger_key			6
#define Anum_ledger_result		7
#define Anum_ledger_expires_at	8	/* since version 1.1 */
#define Natts_ledger			8
#define Natts_ledger_1_0		7

/* field4 of the advisory lock tags we use for keys (user locks use 1 and 2) */
#define IDEM_KEY_LOCK_CLASS		0x1DE

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
	Oid			expiry;			/* may stay invalid: schema 1.0 */
	int			nindexes;
	LedgerIndex *indexes;		/* every index, the primary key included */
	MemoryContext cxt;			/* holds indexes */
} cache;

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
		cache.indexes[n].oid = RelationGetRelid(index);
		cache.indexes[n].info = info;
		n++;
		index_close(index, AccessShareLock);
	}
	cache.nindexes = n;
	list_free(indexes);
	table_close(heap, NoLock);
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
	/* Version 1.0's ledger lacks expires_at; it keeps working, without a TTL. */
	if (RelationGetDescr(ledger->heap)->natts != Natts_ledger &&
		RelationGetDescr(ledger->heap)->natts != Natts_ledger_1_0)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("ledger of extension \"idempotent\" has %d columns, not %d",
						RelationGetDescr(ledger->heap)->natts, Natts_ledger),
				 errhint("Drop and create the extension again.")));
}

void
ledger_close(Ledger *ledger)
{
	if (ledger->scan != NULL)
		index_endscan(ledger->scan);
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

static void
row_from_slot(TupleTableSlot *slot, LedgerRow *row)
{
	Datum	   *values;
	bool	   *nulls;

	slot_getallattrs(slot);
	values = slot->tts_values;
	nulls = slot->tts_isnull;

	row->tid = slot->tts_tid;
	row->applied_at = DatumGetTimestampTz(values[Anum_ledger_applied_at - 1]);
	row->has_version = !nulls[Anum_ledger_version - 1];
	row->version = row->has_version ? DatumGetInt64(values[Anum_ledger_version - 1]) : 0;
	row->has_rows = !nulls[Anum_ledger_rows - 1];
	row->rows = row->has_rows ? DatumGetInt64(values[Anum_ledger_rows - 1]) : 0;
	row->has_fingerprint = !nulls[Anum_ledger_fingerprint - 1];
	row->fingerprint = row->has_fingerprint ?
		DatumGetInt64(values[Anum_ledger_fingerprint - 1]) : 0;
	row->policy = (IdemPolicy) DatumGetChar(values[Anum_ledger_policy - 1]);
	row->result = nulls[Anum_ledger_result - 1] ? NULL :
		(Jsonb *) DatumGetPointer(values[Anum_ledger_result - 1]);
	row->has_expiry = slot->tts_tupleDescriptor->natts >= Anum_ledger_expires_at &&
		!nulls[Anum_ledger_expires_at - 1];
	row->expires_at = row->has_expiry ?
		DatumGetTimestampTz(values[Anum_ledger_expires_at - 1]) : 0;
}

/*
 * Under SERIALIZABLE, read the key once more through an MVCC scan of the
 * index so that the predicate locks a plain SELECT would take are taken: the
 * dirty probe alone would let write skew on keys go unnoticed.
 */
static void
predicate_lock_key(Ledger *ledger, ScanKey skey, TupleTableSlot *slot)
{
	IndexScanDesc scan = index_beginscan(ledger->heap, ledger->index,
										 GetTransactionSnapshot(), 1, 0);

	index_rescan(scan, skey, 1, NULL, 0);
	while (index_getnext_slot(scan, ForwardScanDirection, slot))
		;
	index_endscan(scan);
}

LedgerProbe
ledger_probe(Ledger *ledger, text *key, LedgerRow *row, LedgerWriter *writer)
{
	SnapshotData *dirty = &ledger->dirty;
	ScanKeyData skey;
	TupleTableSlot *slot = ledger->slot;
	LedgerProbe result = LEDGER_ABSENT;

	ScanKeyInit(&skey, 1, BTEqualStrategyNumber, F_TEXTEQ,
				PointerGetDatum(key));
	if (IsolationIsSerializable())
		predicate_lock_key(ledger, &skey, slot);
	if (ledger->scan == NULL)
	{
		InitDirtySnapshot(*dirty);
		ledger->scan = index_beginscan(ledger->heap, ledger->index, dirty, 1, 0);
	}
	index_rescan(ledger->scan, &skey, 1, NULL, 0);

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

/* Whether a key's time to live has run out (as of the transaction's start). */
bool
ledger_row_expired(const LedgerRow *row)
{
	return row->has_expiry && row->expires_at <= GetCurrentTransactionStartTimestamp();
}

/*
 * Stamp a row about to be written: applied now (the transaction's start),
 * expiring after idempotent.ttl if one is set.
 */
void
ledger_stamp_row(LedgerRow *row)
{
	row->applied_at = GetCurrentTransactionStartTimestamp();
	row->has_expiry = (idem_ttl > 0);
	row->expires_at = row->has_expiry ?
		row->applied_at + (TimestampTz) idem_ttl * USECS_PER_SEC : 0;
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

static void
key_locktag(LOCKTAG *tag, text *key)
{
	uint64		hash = hash_bytes_extended((const unsigned char *) VARDATA_ANY(key),
										   VARSIZE_ANY_EXHDR(key), 0);

	SET_LOCKTAG_ADVISORY(*tag, MyDatabaseId, (uint32) (hash >> 32),
						 (uint32) hash, IDEM_KEY_LOCK_CLASS);
}

/* Take the writers' lock on a key; false if busy and we may not wait. */
bool
ledger_lock_key(text *key, bool wait)
{
	LOCKTAG		tag;

	key_locktag(&tag, key);
	return LockAcquire(&tag, ExclusiveLock, false, !wait) != LOCKACQUIRE_NOT_AVAIL;
}

void
ledger_unlock_key(text *key)
{
	LOCKTAG		tag;

	key_locktag(&tag, key);
	LockRelease(&tag, ExclusiveLock, false);
}

static HeapTuple
form_row(Ledger *ledger, text *key, const LedgerRow *row)
{
	Datum		values[Natts_ledger];
	bool		nulls[Natts_ledger];

	values[Anum_ledger_applied_at - 1] = TimestampTzGetDatum(row->applied_at);
	nulls[Anum_ledger_applied_at - 1] = false;
	values[Anum_ledger_version - 1] = Int64GetDatum(row->version);
	nulls[Anum_ledger_version - 1] = !row->has_version;
	values[Anum_ledger_rows - 1] = Int64GetDatum(row->rows);
	nulls[Anum_ledger_rows - 1] = !row->has_rows;
	values[Anum_ledger_fingerprint - 1] = Int64GetDatum(row->fingerprint);
	nulls[Anum_ledger_fingerprint - 1] = !row->has_fingerprint;
	values[Anum_ledger_policy - 1] = CharGetDatum((char) row->policy);
	nulls[Anum_ledger_policy - 1] = false;
	values[Anum_ledger_key - 1] = PointerGetDatum(key);
	nulls[Anum_ledger_key - 1] = false;
	values[Anum_ledger_result - 1] = PointerGetDatum(row->result);
	nulls[Anum_ledger_result - 1] = (row->result == NULL);
	values[Anum_ledger_expires_at - 1] = TimestampTzGetDatum(row->expires_at);
	nulls[Anum_ledger_expires_at - 1] = !row->has_expiry;
	if (row->has_expiry &&
		RelationGetDescr(ledger->heap)->natts < Anum_ledger_expires_at)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("idempotent.ttl needs version 1.1 of extension \"idempotent\""),
				 errdetail("This database has version 1.0, whose ledger has no expiry."),
				 errhint("Run ALTER EXTENSION idempotent UPDATE, or set idempotent.ttl to 0.")));

	return heap_form_tuple(RelationGetDescr(ledger->heap), values, nulls);
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
		Relation	index = li->oid == RelationGetRelid(ledger->index) ? ledger->index :
			index_open(li->oid, RowExclusiveLock);
		Datum		values[INDEX_MAX_KEYS];
		bool		nulls[INDEX_MAX_KEYS];

		if (index->rd_index->indisready && predicate_holds(li->info->ii_Predicate, tuple))
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
ledger_insert(Ledger *ledger, text *key, const LedgerRow *row)
{
	HeapTuple	tuple = form_row(ledger, key, row);

	heap_insert(ledger->heap, tuple, GetCurrentCommandId(true), 0, NULL);
	insert_index_entries(ledger, tuple);
	heap_freetuple(tuple);
	CommandCounterIncrement();
}

/*
 * Replace the row a probe found at row->tid; the caller holds the key's lock,
 * so only a writer that does not take it (a manual DELETE or UPDATE by a
 * superuser) can have changed the row meanwhile.
 */
void
ledger_update(Ledger *ledger, text *key, const LedgerRow *row)
{
	HeapTuple	tuple = form_row(ledger, key, row);
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

/*
 * Delete up to max_keys keys that expired by now, in the order of their
 * expiry, through the expiry index; returns how many were deleted.
 */
int64
ledger_purge(Ledger *ledger, int64 max_keys, TimestampTz now)
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
		/* a key an enclosing call is applying is that call's to write */
		if (idem_key_is_applying(DatumGetTextPP(slot_getattr(ledger->slot,
															 Anum_ledger_key, &isnull))))
			continue;
		if (ledger_delete(ledger, &ledger->slot->tts_tid, false))
			deleted++;
	}
	index_endscan(scan);
	index_close(index, NoLock);
	CommandCounterIncrement();
	return deleted;
}
