/*
 * stats.c
 *	  Call statistics per scope and policy (lease keys in a row of their
 *	  own), kept in shared memory with atomic counters when the library is in
 *	  shared_preload_libraries, and shown by idem_stats() / the idem_stat
 *	  view; idem_stats_reset() zeroes them.
 *
 * Each scope gets a slot the first time a call in it is counted: slot 0 is
 * the shared scope, and once STAT_SCOPES - 2 named scopes have slots, calls
 * in any further scope are counted together in the last slot ("other
 * scopes", shown only to those who see every scope).  A slot is claimed
 * under a spinlock; counting takes no lock (atomic adds), and a backend
 * remembers the slot of the scope it counted last.
 */
#include "postgres.h"

#include "fmgr.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "port/atomics.h"
#include "storage/ipc.h"
#include "storage/lwlock.h"
#include "storage/shmem.h"
#include "storage/spin.h"
#include "catalog/pg_authid.h"
#include "utils/acl.h"
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

#define STAT_SCOPES		64
#define SHARED_SLOT		0
#define OTHER_SLOT		(STAT_SCOPES - 1)

typedef struct IdemStatsShared
{
	slock_t		mutex;			/* protects nscopes and scopes */
	int			nscopes;		/* slots claimed, the shared scope's included */
	NameData	scopes[STAT_SCOPES];	/* scope of each slot */
	pg_atomic_uint64 counters[STAT_SCOPES][IDEM_NPOLICIES][STAT_NCOLUMNS];
	pg_atomic_uint64 reset_at;	/* TimestampTz of the last reset */
} IdemStatsShared;

/* The slot of the scope this backend counted last. */
static NameData cached_scope;
static int	cached_slot = -1;

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
		SpinLockInit(&stats->mutex);
		stats->nscopes = 1;		/* the shared scope */
		memset(stats->scopes, 0, sizeof(stats->scopes));
		for (int s = 0; s < STAT_SCOPES; s++)
			for (int p = 0; p < IDEM_NPOLICIES; p++)
				for (int c = 0; c < STAT_NCOLUMNS; c++)
					pg_atomic_init_u64(&stats->counters[s][p][c], 0);
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

/*
 * The slot counting calls in scope, the scope the call was checked for
 * (idem_current_scope), claimed if the scope has none yet; the last slot
 * once all are taken.  Only scopes that name a role the caller may use get
 * here, so nobody can fill the slots with names of no role.
 */
static int
scope_slot(text *scope)
{
	NameData	name;
	int			slot = -1;
	int			len = VARSIZE_ANY_EXHDR(scope);

	if (len == 0)
		return SHARED_SLOT;
	memset(&name, 0, sizeof(name));
	memcpy(NameStr(name), VARDATA_ANY(scope), Min(len, NAMEDATALEN - 1));
	if (cached_slot >= 0 && strcmp(NameStr(cached_scope), NameStr(name)) == 0)
		return cached_slot;

	SpinLockAcquire(&stats->mutex);
	for (int s = 1; s < stats->nscopes; s++)
		if (strcmp(NameStr(stats->scopes[s]), NameStr(name)) == 0)
			slot = s;
	if (slot < 0 && stats->nscopes < OTHER_SLOT)
	{
		slot = stats->nscopes++;
		stats->scopes[slot] = name;
	}
	SpinLockRelease(&stats->mutex);
	if (slot < 0)
		slot = OTHER_SLOT;
	cached_scope = name;
	cached_slot = slot;
	return slot;
}

static void
count(text *scope, IdemPolicy policy, StatColumn column, instr_time elapsed)
{
	pg_atomic_uint64 *row = stats->counters[scope_slot(scope)][idem_policy_index(policy)];

	pg_atomic_fetch_add_u64(&row[STAT_CALLS], 1);
	pg_atomic_fetch_add_u64(&row[column], 1);
	pg_atomic_fetch_add_u64(&row[STAT_TIME_US], INSTR_TIME_GET_MICROSEC(elapsed));
}

void
idem_stats_count(text *scope, IdemPolicy policy, IdemStatus status, instr_time elapsed)
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
		count(scope, policy, columns[status], elapsed);
}

void
idem_stats_count_error(text *scope, IdemPolicy policy, instr_time elapsed)
{
	if (stats != NULL)
		count(scope, policy, STAT_ERRORS, elapsed);
}

/*
 * Run fn(arg), timed when statistics are kept: an error it raises is counted
 * for scope and policy, and raised again.  Returns the time it took (zero
 * when statistics are not kept), for the caller to count its outcome with.
 */
instr_time
idem_stats_run(text *scope, IdemPolicy policy, void (*fn) (void *), void *arg)
{
	instr_time	start;
	instr_time	elapsed;

	INSTR_TIME_SET_ZERO(elapsed);
	if (!idem_stats_enabled)
	{
		fn(arg);
		return elapsed;
	}
	INSTR_TIME_SET_CURRENT(start);
	PG_TRY();
	{
		fn(arg);
	}
	PG_CATCH();
	{
		INSTR_TIME_SET_CURRENT(elapsed);
		INSTR_TIME_SUBTRACT(elapsed, start);
		idem_stats_count_error(scope, policy, elapsed);
		PG_RE_THROW();
	}
	PG_END_TRY();
	INSTR_TIME_SET_CURRENT(elapsed);
	INSTR_TIME_SUBTRACT(elapsed, start);
	return elapsed;
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

/*
 * Whether the caller may see the statistics of a slot: every scope for
 * superusers and members of pg_read_all_stats, otherwise the shared scope
 * and the scopes whose role's privileges the caller has.
 */
static bool
slot_visible(int slot, bool see_all)
{
	Oid			role;

	if (see_all || slot == SHARED_SLOT)
		return true;
	if (slot == OTHER_SLOT)
		return false;
	role = get_role_oid(NameStr(stats->scopes[slot]), true);
	return OidIsValid(role) && has_privs_of_role(GetUserId(), role);
}

PG_FUNCTION_INFO_V1(idem_stats);
/* idem_stats(): one row per scope and policy, of the scopes the caller may see */
Datum
idem_stats(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	TimestampTz reset_at;
	bool		see_all = superuser() ||
		has_privs_of_role(GetUserId(), ROLE_PG_READ_ALL_STATS);
	int			nscopes;
	NameData	scopes[STAT_SCOPES];

	check_available();
	InitMaterializedSRF(fcinfo, 0);
	SpinLockAcquire(&stats->mutex);
	nscopes = stats->nscopes;
	memcpy(scopes, stats->scopes, sizeof(scopes));
	SpinLockRelease(&stats->mutex);
	reset_at = (TimestampTz) pg_atomic_read_u64(&stats->reset_at);

	for (int s = 0; s < STAT_SCOPES; s++)
	{
		if (s >= nscopes && s != OTHER_SLOT)
			continue;
		if (s == OTHER_SLOT && nscopes < OTHER_SLOT)
			continue;			/* no scope was left without a slot */
		if (!slot_visible(s, see_all))
			continue;
		for (int p = 0; p < IDEM_NPOLICIES; p++)
		{
			Datum		values[STAT_NCOLUMNS + 4];
			bool		nulls[STAT_NCOLUMNS + 4] = {0};
			pg_atomic_uint64 *row = stats->counters[s][p];
			uint64		calls = pg_atomic_read_u64(&row[STAT_CALLS]);
			double		time_ms = pg_atomic_read_u64(&row[STAT_TIME_US]) / 1000.0;
			int			i = 0;

			values[i] = CStringGetTextDatum(NameStr(scopes[s]));
			nulls[i++] = (s == OTHER_SLOT);
			values[i++] = CStringGetTextDatum(idem_policy_name(idem_policy_at(p)));
			for (int c = 0; c < STAT_TIME_US; c++)
				values[i++] = Int64GetDatum((int64) pg_atomic_read_u64(&row[c]));
			values[i++] = Float8GetDatum(time_ms);
			values[i] = Float8GetDatum(calls > 0 ? time_ms / calls : 0);
			nulls[i++] = (calls == 0);
			values[i++] = TimestampTzGetDatum(reset_at);
			tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
		}
	}
	return (Datum) 0;
}

PG_FUNCTION_INFO_V1(idem_stats_reset);
/* idem_stats_reset(): zero every counter */
Datum
idem_stats_reset(PG_FUNCTION_ARGS)
{
	check_available();
	for (int s = 0; s < STAT_SCOPES; s++)
		for (int p = 0; p < IDEM_NPOLICIES; p++)
			for (int c = 0; c < STAT_NCOLUMNS; c++)
				pg_atomic_write_u64(&stats->counters[s][p][c], 0);
	pg_atomic_write_u64(&stats->reset_at, (uint64) GetCurrentTimestamp());
	PG_RETURN_VOID();
}
