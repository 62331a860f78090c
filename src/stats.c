/*
 * stats.c
 *	  Call statistics per policy (lease keys in a row of their own), kept in
 *	  shared memory with atomic counters
 *	  (no lock on the hot path) when the library is in
 *	  shared_preload_libraries, and shown by idem_stats() / the idem_stat
 *	  view; idem_stats_reset() zeroes them.
 */
#include "postgres.h"

#include "fmgr.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "port/atomics.h"
#include "storage/ipc.h"
#include "storage/lwlock.h"
#include "storage/shmem.h"
#include "utils/builtins.h"
#include "utils/timestamp.h"

#include "stats.h"

/* Counters of one policy: calls by outcome, errors, and time in microseconds. */
typedef enum StatColumn
{
	STAT_CALLS,
	STAT_APPLIED,
	STAT_DUPLICATE,
	STAT_STALE,
	STAT_GAP,
	STAT_IN_PROGRESS,
	STAT_STARTED,
	STAT_COMPLETED,
	STAT_FAILED,
	STAT_DEAD,
	STAT_ERRORS,
	STAT_TIME_US,
	STAT_NCOLUMNS
} StatColumn;

static const IdemPolicy stat_policies[] = {IDEM_ONCE, IDEM_NEWER, IDEM_NEXT, IDEM_UPSERT,
	IDEM_LEASE};
#define STAT_NPOLICIES lengthof(stat_policies)

typedef struct IdemStatsShared
{
	pg_atomic_uint64 counters[STAT_NPOLICIES][STAT_NCOLUMNS];
	pg_atomic_uint64 reset_at;	/* TimestampTz of the last reset */
} IdemStatsShared;

bool		idem_stats_enabled = false;
static IdemStatsShared *stats = NULL;
static shmem_request_hook_type prev_shmem_request_hook = NULL;
static shmem_startup_hook_type prev_shmem_startup_hook = NULL;

static void
stats_shmem_request(void)
{
	if (prev_shmem_request_hook)
		prev_shmem_request_hook();
	RequestAddinShmemSpace(MAXALIGN(sizeof(IdemStatsShared)));
}

static void
stats_shmem_startup(void)
{
	bool		found;

	if (prev_shmem_startup_hook)
		prev_shmem_startup_hook();
	LWLockAcquire(AddinShmemInitLock, LW_EXCLUSIVE);
	stats = ShmemInitStruct("idempotent statistics", sizeof(IdemStatsShared), &found);
	if (!found)
	{
		for (int p = 0; p < STAT_NPOLICIES; p++)
			for (int c = 0; c < STAT_NCOLUMNS; c++)
				pg_atomic_init_u64(&stats->counters[p][c], 0);
		pg_atomic_init_u64(&stats->reset_at, (uint64) GetCurrentTimestamp());
	}
	LWLockRelease(AddinShmemInitLock);
}

/* Called from _PG_init while shared_preload_libraries is processed. */
void
idem_stats_init(void)
{
	prev_shmem_request_hook = shmem_request_hook;
	shmem_request_hook = stats_shmem_request;
	prev_shmem_startup_hook = shmem_startup_hook;
	shmem_startup_hook = stats_shmem_startup;
	idem_stats_enabled = true;
}

static int
policy_index(IdemPolicy policy)
{
	for (int p = 0; p < STAT_NPOLICIES; p++)
		if (stat_policies[p] == policy)
			return p;
	elog(ERROR, "unknown policy %d", (int) policy);
	return 0;
}

static void
count(IdemPolicy policy, StatColumn column, instr_time elapsed)
{
	pg_atomic_uint64 *row = stats->counters[policy_index(policy)];

	pg_atomic_fetch_add_u64(&row[STAT_CALLS], 1);
	pg_atomic_fetch_add_u64(&row[column], 1);
	pg_atomic_fetch_add_u64(&row[STAT_TIME_US], INSTR_TIME_GET_MICROSEC(elapsed));
}

void
idem_stats_count(IdemPolicy policy, IdemStatus status, instr_time elapsed)
{
	static const StatColumn columns[] = {
		[IDEM_APPLIED] = STAT_APPLIED,
		[IDEM_DUPLICATE] = STAT_DUPLICATE,
		[IDEM_STALE] = STAT_STALE,
		[IDEM_GAP] = STAT_GAP,
		[IDEM_IN_PROGRESS] = STAT_IN_PROGRESS,
		[IDEM_DEAD] = STAT_DEAD,
		[IDEM_STARTED] = STAT_STARTED,
		[IDEM_FAILED] = STAT_FAILED,
		[IDEM_COMPLETED] = STAT_COMPLETED,
	};

	if (stats != NULL)
		count(policy, columns[status], elapsed);
}

void
idem_stats_count_error(IdemPolicy policy, instr_time elapsed)
{
	if (stats != NULL)
		count(policy, STAT_ERRORS, elapsed);
}

static void
check_available(void)
{
	if (stats == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("idempotent statistics are not available"),
				 errhint("Add idempotent to shared_preload_libraries and restart the server.")));
}

PG_FUNCTION_INFO_V1(idem_stats);
/* idem_stats(): one row per policy */
Datum
idem_stats(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	TimestampTz reset_at;

	check_available();
	InitMaterializedSRF(fcinfo, 0);
	reset_at = (TimestampTz) pg_atomic_read_u64(&stats->reset_at);
	for (int p = 0; p < STAT_NPOLICIES; p++)
	{
		Datum		values[STAT_NCOLUMNS + 3];
		bool		nulls[STAT_NCOLUMNS + 3] = {0};
		uint64		calls = pg_atomic_read_u64(&stats->counters[p][STAT_CALLS]);
		double		time_ms = pg_atomic_read_u64(&stats->counters[p][STAT_TIME_US]) / 1000.0;
		int			i = 0;

		values[i++] = CStringGetTextDatum(idem_policy_name(stat_policies[p]));
		for (int c = 0; c < STAT_TIME_US; c++)
			values[i++] = Int64GetDatum((int64) pg_atomic_read_u64(&stats->counters[p][c]));
		values[i++] = Float8GetDatum(time_ms);
		values[i] = Float8GetDatum(calls > 0 ? time_ms / calls : 0);
		nulls[i++] = (calls == 0);
		values[i++] = TimestampTzGetDatum(reset_at);
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
	}
	return (Datum) 0;
}

PG_FUNCTION_INFO_V1(idem_stats_reset);
/* idem_stats_reset(): zero every counter */
Datum
idem_stats_reset(PG_FUNCTION_ARGS)
{
	check_available();
	for (int p = 0; p < STAT_NPOLICIES; p++)
		for (int c = 0; c < STAT_NCOLUMNS; c++)
			pg_atomic_write_u64(&stats->counters[p][c], 0);
	pg_atomic_write_u64(&stats->reset_at, (uint64) GetCurrentTimestamp());
	PG_RETURN_VOID();
}
