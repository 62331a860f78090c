/*
 * worker.c
 *	  The purge worker: when the library is in shared_preload_libraries, a
 *	  launcher deletes expired keys in every database that has the extension,
 *	  one round every idempotent.purge_interval seconds.
 *
 * A round visits the databases in turn.  Each visit is a short-lived worker
 * connected to one database that deletes up to BATCHES_PER_VISIT batches of
 * idempotent.purge_batch keys, one transaction per batch, and reports back
 * whether keys are left; the launcher goes round the databases that have
 * some until none has, so that a backlog in one database does not hold the
 * others back.  After a full turn that outlasted the interval the round
 * ends and the next one starts, with the databases created meanwhile.
 *
 * The launcher connects to no database and reads pg_database, a shared
 * catalog.  A visit reports to it through a small dynamic shared memory
 * segment that the launcher creates at start.  A database whose ledger has
 * no expiry (extension version 1.0) is skipped, and said so in the log once,
 * until a visit finds it otherwise.  Both processes follow PostgreSQL's
 * conventions: SIGHUP reloads the settings (between two visits, so that a
 * new interval takes effect at once), SIGTERM stops them, and the
 * postmaster restarts the launcher after a crash.
 */
#include "postgres.h"

#include "access/genam.h"
#include "access/heapam.h"
#include "access/htup_details.h"
#include "access/table.h"
#include "access/tableam.h"
#include "access/xact.h"
#include "catalog/pg_database.h"
#include "catalog/pg_extension.h"
#include "commands/dbcommands.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "postmaster/bgworker.h"
#include "postmaster/interrupt.h"
#include "storage/dsm.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "tcop/tcopprot.h"
#include "utils/builtins.h"
#include "utils/fmgroids.h"
#include "utils/guc.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"

#include "ledger.h"
#include "worker.h"

int			idem_purge_interval = 60;
int			idem_purge_batch = 1000;

/* How many batches one visit deletes before the next database's turn. */
#define BATCHES_PER_VISIT 10

/* How a visit ended. */
typedef enum PurgeOutcome
{
	PURGE_FAILED,				/* it did not say: an error ended it */
	PURGE_DONE,					/* no expired key left that it could delete */
	PURGE_MORE,					/* it stopped after BATCHES_PER_VISIT: more left */
	PURGE_NOT_INSTALLED,		/* no extension in this database */
	PURGE_NO_EXPIRY				/* a ledger without expiry (version 1.0) */
} PurgeOutcome;

/*
 * A visit's orders and report, in the launcher's dynamic shared memory.  The
 * launcher writes the orders before it starts the visit and reads the report
 * once the visit has exited; one visit runs at a time.
 */
typedef struct PurgeVisit
{
	bool		log_no_expiry;	/* order: log it if the ledger has no expiry */
	PurgeOutcome outcome;		/* report */
	int64		deleted;		/* report: keys deleted, kept up to date */
} PurgeVisit;

/* A database in the launcher's round. */
typedef struct PurgeDatabase
{
	Oid			oid;
	char		name[NAMEDATALEN];
	int64		deleted;		/* in this round */
} PurgeDatabase;

PGDLLEXPORT void idem_purge_launcher_main(Datum arg);
PGDLLEXPORT void idem_purge_database_main(Datum arg);

/* Called from _PG_init while shared_preload_libraries is processed. */
void
idem_register_purge_launcher(void)
{
	BackgroundWorker worker;

	memset(&worker, 0, sizeof(worker));
	worker.bgw_flags = BGWORKER_SHMEM_ACCESS | BGWORKER_BACKEND_DATABASE_CONNECTION;
	worker.bgw_start_time = BgWorkerStart_RecoveryFinished;
	worker.bgw_restart_time = 10;
	snprintf(worker.bgw_library_name, BGW_MAXLEN, "idempotent");
	snprintf(worker.bgw_function_name, BGW_MAXLEN, "idem_purge_launcher_main");
	snprintf(worker.bgw_name, BGW_MAXLEN, "idempotent purge launcher");
	snprintf(worker.bgw_type, BGW_MAXLEN, "idempotent purge launcher");
	RegisterBackgroundWorker(&worker);
}

/* Apply a reload that SIGHUP asked for. */
static void
reload_settings(void)
{
	if (ConfigReloadPending)
	{
		ConfigReloadPending = false;
		ProcessConfigFile(PGC_SIGHUP);
	}
}

/*
 * The databases that accept connections, as PurgeDatabase entries allocated
 * in the caller's memory context; read from the shared catalog in a
 * transaction of its own.
 */
static List *
database_list(void)
{
	List	   *databases = NIL;
	MemoryContext caller = CurrentMemoryContext;
	Relation	rel;
	TableScanDesc scan;
	HeapTuple	tuple;

	StartTransactionCommand();
	rel = table_open(DatabaseRelationId, AccessShareLock);
	scan = table_beginscan_catalog(rel, 0, NULL);
	while ((tuple = heap_getnext(scan, ForwardScanDirection)) != NULL)
	{
		Form_pg_database form = (Form_pg_database) GETSTRUCT(tuple);
		PurgeDatabase *db;
		MemoryContext old;

		if (!form->datallowconn || form->datistemplate)
			continue;
		old = MemoryContextSwitchTo(caller);
		db = palloc0(sizeof(PurgeDatabase));
		db->oid = form->oid;
		strlcpy(db->name, NameStr(form->datname), NAMEDATALEN);
		databases = lappend(databases, db);
		MemoryContextSwitchTo(old);
	}
	table_endscan(scan);
	table_close(rel, AccessShareLock);
	CommitTransactionCommand();
	return databases;
}

/*
 * Visit one database: start its worker, wait until it has exited and return
 * how the visit ended; add the keys it deleted to db.  The report lives in
 * the launcher's segment, at *visit.  Keeps *no_expiry, the databases logged
 * as lacking expiry, in TopMemoryContext.
 */
static PurgeOutcome
visit_database(PurgeDatabase *db, PurgeVisit *visit, dsm_handle handle,
			   List **no_expiry)
{
	BackgroundWorker worker;
	BackgroundWorkerHandle *worker_handle;
	BgwHandleStatus status;
	pid_t		pid;

	visit->log_no_expiry = !list_member_oid(*no_expiry, db->oid);
	visit->outcome = PURGE_FAILED;
	visit->deleted = 0;

	memset(&worker, 0, sizeof(worker));
	worker.bgw_flags = BGWORKER_SHMEM_ACCESS | BGWORKER_BACKEND_DATABASE_CONNECTION;
	worker.bgw_start_time = BgWorkerStart_RecoveryFinished;
	worker.bgw_restart_time = BGW_NEVER_RESTART;
	snprintf(worker.bgw_library_name, BGW_MAXLEN, "idempotent");
	snprintf(worker.bgw_function_name, BGW_MAXLEN, "idem_purge_database_main");
	snprintf(worker.bgw_name, BGW_MAXLEN, "idempotent purge of database %u", db->oid);
	snprintf(worker.bgw_type, BGW_MAXLEN, "idempotent purge");
	worker.bgw_main_arg = ObjectIdGetDatum(db->oid);
	memcpy(worker.bgw_extra, &handle, sizeof(handle));
	worker.bgw_notify_pid = MyProcPid;

	if (!RegisterDynamicBackgroundWorker(&worker, &worker_handle))
	{
		ereport(LOG,
				(errmsg("idempotent: could not start a purge worker for database \"%s\"", db->name),
				 errhint("Raise max_worker_processes.")));
		return PURGE_FAILED;
	}
	status = WaitForBackgroundWorkerStartup(worker_handle, &pid);
	if (status == BGWH_STARTED)
		status = WaitForBackgroundWorkerShutdown(worker_handle);
	pfree(worker_handle);
	if (status == BGWH_POSTMASTER_DIED)
		proc_exit(1);

	db->deleted += visit->deleted;
	/* log a ledger without expiry once, until it has one */
	if (visit->outcome == PURGE_NO_EXPIRY)
	{
		MemoryContext old = MemoryContextSwitchTo(TopMemoryContext);

		*no_expiry = list_append_unique_oid(*no_expiry, db->oid);
		MemoryContextSwitchTo(old);
	}
	else if (visit->outcome != PURGE_FAILED)
		*no_expiry = list_delete_oid(*no_expiry, db->oid);
	return visit->outcome;
}

/*
 * One round: visit the databases in turn, again and again while some have
 * expired keys left, until none has or, after a full turn, the interval has
 * passed since the round started.  Stops early if a reload switches purging
 * off.  Logs how many keys each database lost.  Allocates in the current
 * memory context, which the caller resets.
 */
static void
purge_round(PurgeVisit *visit, dsm_handle handle, List **no_expiry)
{
	TimestampTz started = GetCurrentTimestamp();
	List	   *databases = database_list();
	List	   *pending = list_copy(databases);
	ListCell   *lc;

	while (pending != NIL)
	{
		foreach(lc, pending)
		{
			PurgeDatabase *db = lfirst(lc);

			CHECK_FOR_INTERRUPTS();
			reload_settings();
			if (idem_purge_interval <= 0)
				break;
			if (visit_database(db, visit, handle, no_expiry) != PURGE_MORE)
				pending = foreach_delete_current(pending, lc);
		}
		if (idem_purge_interval <= 0 ||
			TimestampDifferenceExceeds(started, GetCurrentTimestamp(),
									   idem_purge_interval * 1000))
			break;
	}

	foreach(lc, databases)
	{
		PurgeDatabase *db = lfirst(lc);

		if (db->deleted > 0)
			ereport(LOG,
					(errmsg("idempotent: purged " INT64_FORMAT " expired keys in database \"%s\"",
							db->deleted, db->name)));
	}
}

/*
 * The launcher's main loop: a round whenever the interval has passed since
 * the last one started, and in between a wait on the latch, which SIGHUP
 * and SIGTERM set.  The wait is worked out anew after every wake-up, from
 * the settings as they are then.
 */
void
idem_purge_launcher_main(Datum arg)
{
	dsm_segment *seg;
	MemoryContext round_cxt;
	List	   *no_expiry = NIL;	/* databases logged as lacking expiry */
	TimestampTz last_round;

	pqsignal(SIGHUP, SignalHandlerForConfigReload);
	pqsignal(SIGTERM, die);
	BackgroundWorkerUnblockSignals();
	BackgroundWorkerInitializeConnection(NULL, NULL, 0);
	pgstat_report_appname("idempotent purge launcher");

	/* mapped for the launcher's lifetime, whatever resource owner is current */
	seg = dsm_create(sizeof(PurgeVisit), 0);
	dsm_pin_mapping(seg);
	round_cxt = AllocSetContextCreate(TopMemoryContext, "idempotent purge round",
									  ALLOCSET_DEFAULT_SIZES);

	last_round = GetCurrentTimestamp();
	for (;;)
	{
		long		timeout = 0;
		int			events = WL_LATCH_SET | WL_EXIT_ON_PM_DEATH;

		CHECK_FOR_INTERRUPTS();
		reload_settings();
		if (idem_purge_interval > 0)
		{
			TimestampTz now = GetCurrentTimestamp();

			timeout = TimestampDifferenceMilliseconds(now,
													  TimestampTzPlusMilliseconds(last_round,
																				  idem_purge_interval * 1000L));
			if (timeout <= 0)
			{
				MemoryContext old = MemoryContextSwitchTo(round_cxt);

				last_round = now;
				purge_round(dsm_segment_address(seg), dsm_segment_handle(seg), &no_expiry);
				MemoryContextSwitchTo(old);
				MemoryContextReset(round_cxt);
				continue;
			}
			events |= WL_TIMEOUT;
		}
		(void) WaitLatch(MyLatch, events, timeout, PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);
	}
}

/*
 * Whether this database's ledger can be purged: the extension is installed
 * and its schema holds the expiry index, which version 1.0 lacks.  Sets
 * *version to the installed version, allocated in the current memory
 * context.  Reads pg_extension, in the caller's transaction.
 */
static PurgeOutcome
ledger_state(char **version)
{
	Relation	rel = table_open(ExtensionRelationId, AccessShareLock);
	ScanKeyData skey;
	SysScanDesc scan;
	HeapTuple	tuple;
	PurgeOutcome outcome = PURGE_NOT_INSTALLED;

	ScanKeyInit(&skey, Anum_pg_extension_extname, BTEqualStrategyNumber, F_NAMEEQ,
				CStringGetDatum("idempotent"));
	scan = systable_beginscan(rel, ExtensionNameIndexId, true, NULL, 1, &skey);
	tuple = systable_getnext(scan);
	if (HeapTupleIsValid(tuple))
	{
		Form_pg_extension form = (Form_pg_extension) GETSTRUCT(tuple);
		bool		isnull;
		Datum		extversion = heap_getattr(tuple, Anum_pg_extension_extversion,
											  RelationGetDescr(rel), &isnull);

		*version = isnull ? pstrdup("?") : TextDatumGetCString(extversion);
		outcome = OidIsValid(get_relname_relid("idem_ledger_expires_at", form->extnamespace)) ?
			PURGE_DONE : PURGE_NO_EXPIRY;
	}
	systable_endscan(scan);
	table_close(rel, AccessShareLock);
	return outcome;
}

/* Purge one batch in its own transaction; returns the number of keys. */
static int64
purge_batch(void)
{
	Ledger		ledger;
	int64		deleted;

	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	PushActiveSnapshot(GetTransactionSnapshot());
	pgstat_report_activity(STATE_RUNNING, "idempotent: purging expired keys");
	ledger_open(&ledger);
	deleted = ledger_purge(&ledger, idem_purge_batch, GetCurrentTransactionStartTimestamp(), NULL);
	ledger_close(&ledger);
	PopActiveSnapshot();
	CommitTransactionCommand();
	pgstat_report_activity(STATE_IDLE, NULL);
	return deleted;
}

/*
 * A visit to one database (bgw_main_arg): up to BATCHES_PER_VISIT batches,
 * reported to the launcher's segment, whose handle is in bgw_extra.
 */
void
idem_purge_database_main(Datum arg)
{
	dsm_handle	handle;
	dsm_segment *seg;
	PurgeVisit *visit;
	PurgeOutcome outcome;
	char	   *version = NULL;
	int			batches = 0;

	pqsignal(SIGTERM, die);
	BackgroundWorkerUnblockSignals();
	BackgroundWorkerInitializeConnectionByOid(DatumGetObjectId(arg), InvalidOid, 0);
	pgstat_report_appname("idempotent purge");

	memcpy(&handle, MyBgworkerEntry->bgw_extra, sizeof(handle));
	seg = dsm_attach(handle);
	if (seg == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("idempotent: could not map the purge launcher's shared memory")));
	visit = dsm_segment_address(seg);

	StartTransactionCommand();
	outcome = ledger_state(&version);
	if (outcome == PURGE_NO_EXPIRY && visit->log_no_expiry)
		ereport(LOG,
				(errmsg("idempotent: not purging database \"%s\": its extension version %s has no expiry",
						get_database_name(MyDatabaseId), version),
				 errhint("Run ALTER EXTENSION idempotent UPDATE in that database.")));
	CommitTransactionCommand();

	if (outcome == PURGE_DONE)
	{
		int64		deleted;

		do
		{
			CHECK_FOR_INTERRUPTS();
			deleted = purge_batch();
			visit->deleted += deleted;
		} while (deleted >= idem_purge_batch && ++batches < BATCHES_PER_VISIT);
		if (batches == BATCHES_PER_VISIT)
			outcome = PURGE_MORE;
	}
	visit->outcome = outcome;
	proc_exit(0);
}
