/*
 * worker.c
 *	  The purge worker: when the library is in shared_preload_libraries, a
 *	  launcher wakes every idempotent.purge_interval seconds and, database by
 *	  database, starts a short-lived worker that deletes expired keys in
 *	  batches of idempotent.purge_batch, one transaction per batch.
 *
 * The launcher connects to no database and reads pg_database, a shared
 * catalog; each database worker leaves at once where the extension is not
 * installed.  Both follow PostgreSQL's conventions: SIGHUP reloads the
 * settings, SIGTERM stops them, and the postmaster restarts the launcher
 * after a crash.
 */
#include "postgres.h"

#include "access/heapam.h"
#include "access/htup_details.h"
#include "access/table.h"
#include "access/tableam.h"
#include "access/xact.h"
#include "catalog/pg_database.h"
#include "commands/dbcommands.h"
#include "commands/extension.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "postmaster/bgworker.h"
#include "postmaster/interrupt.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "storage/proc.h"
#include "tcop/tcopprot.h"
#include "utils/guc.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"

#include "ledger.h"
#include "worker.h"

int			idem_purge_interval = 60;
int			idem_purge_batch = 1000;

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

/* The databases that accept connections, read from the shared catalog. */
static List *
database_list(void)
{
	List	   *oids = NIL;
	MemoryContext caller = CurrentMemoryContext;
	Relation	rel;
	TableScanDesc scan;
	HeapTuple	tuple;

	StartTransactionCommand();
	rel = table_open(DatabaseRelationId, AccessShareLock);
	scan = table_beginscan_catalog(rel, 0, NULL);
	while ((tuple = heap_getnext(scan, ForwardScanDirection)) != NULL)
	{
		Form_pg_database db = (Form_pg_database) GETSTRUCT(tuple);
		MemoryContext old;

		if (!db->datallowconn || db->datistemplate)
			continue;
		old = MemoryContextSwitchTo(caller);
		oids = lappend_oid(oids, db->oid);
		MemoryContextSwitchTo(old);
	}
	table_endscan(scan);
	table_close(rel, AccessShareLock);
	CommitTransactionCommand();
	return oids;
}

/* Run one database's purge in its own worker and wait until it is done. */
static void
purge_database(Oid dboid)
{
	BackgroundWorker worker;
	BackgroundWorkerHandle *handle;
	pid_t		pid;

	memset(&worker, 0, sizeof(worker));
	worker.bgw_flags = BGWORKER_SHMEM_ACCESS | BGWORKER_BACKEND_DATABASE_CONNECTION;
	worker.bgw_start_time = BgWorkerStart_RecoveryFinished;
	worker.bgw_restart_time = BGW_NEVER_RESTART;
	snprintf(worker.bgw_library_name, BGW_MAXLEN, "idempotent");
	snprintf(worker.bgw_function_name, BGW_MAXLEN, "idem_purge_database_main");
	snprintf(worker.bgw_name, BGW_MAXLEN, "idempotent purge of database %u", dboid);
	snprintf(worker.bgw_type, BGW_MAXLEN, "idempotent purge");
	worker.bgw_main_arg = ObjectIdGetDatum(dboid);
	worker.bgw_notify_pid = MyProcPid;

	if (!RegisterDynamicBackgroundWorker(&worker, &handle))
	{
		ereport(LOG,
				(errmsg("idempotent: could not start a purge worker for database %u", dboid),
				 errhint("Raise max_worker_processes.")));
		return;
	}
	if (WaitForBackgroundWorkerStartup(handle, &pid) == BGWH_STARTED)
		WaitForBackgroundWorkerShutdown(handle);
}

void
idem_purge_launcher_main(Datum arg)
{
	pqsignal(SIGHUP, SignalHandlerForConfigReload);
	pqsignal(SIGTERM, die);
	BackgroundWorkerUnblockSignals();
	BackgroundWorkerInitializeConnection(NULL, NULL, 0);
	pgstat_report_appname("idempotent purge launcher");

	for (;;)
	{
		long		naptime = (idem_purge_interval > 0 ? idem_purge_interval : 3600) * 1000L;
		ListCell   *lc;
		List	   *databases;

		(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
						 naptime, PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);
		CHECK_FOR_INTERRUPTS();
		if (ConfigReloadPending)
		{
			ConfigReloadPending = false;
			ProcessConfigFile(PGC_SIGHUP);
		}
		if (idem_purge_interval <= 0)
			continue;

		databases = database_list();
		foreach(lc, databases)
		{
			CHECK_FOR_INTERRUPTS();
			purge_database(lfirst_oid(lc));
		}
		list_free(databases);
	}
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
	deleted = ledger_purge(&ledger, idem_purge_batch, GetCurrentTransactionStartTimestamp());
	ledger_close(&ledger);
	PopActiveSnapshot();
	CommitTransactionCommand();
	pgstat_report_activity(STATE_IDLE, NULL);
	return deleted;
}

void
idem_purge_database_main(Datum arg)
{
	int64		total = 0;
	int64		deleted;
	bool		installed;
	char	   *dbname;

	pqsignal(SIGTERM, die);
	BackgroundWorkerUnblockSignals();
	BackgroundWorkerInitializeConnectionByOid(DatumGetObjectId(arg), InvalidOid, 0);
	pgstat_report_appname("idempotent purge");

	StartTransactionCommand();
	installed = OidIsValid(get_extension_oid("idempotent", true));
	dbname = MemoryContextStrdup(TopMemoryContext, get_database_name(MyDatabaseId));
	CommitTransactionCommand();
	if (!installed)
		proc_exit(0);

	do
	{
		CHECK_FOR_INTERRUPTS();
		deleted = purge_batch();
		total += deleted;
	} while (deleted >= idem_purge_batch && idem_purge_batch > 0);

	if (total > 0)
		ereport(LOG,
				(errmsg("idempotent: purged " INT64_FORMAT " expired keys in database \"%s\"",
						total, dbname)));
	proc_exit(0);
}
