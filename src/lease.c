/*
 * lease.c
 *	  Keys for effects outside the database (an email, a call to a payment
 *	  provider): idem_begin, idem_complete and idem_fail.
 *
 * A lease key is held by one attempt at a time.  idem_begin records the
 * attempt in the caller's transaction, which commits at once; the holder
 * then performs the effect and reports how it ended with idem_complete or
 * idem_fail, each in a transaction of its own.  The attempt number is a
 * fencing token: only the attempt that holds the key may end it, so a slow
 * worker whose lease was taken over can never overwrite a newer attempt's
 * outcome.  Writers take the key's writers' lock and probe again under it
 * unless the probe before it still holds, as apply.c does, so that of
 * concurrent begins exactly one starts an attempt; the others wait for its
 * transaction and then see its lease.
 *
 * idem_fail without an attempt counts a failure of an ordinary key (the
 * transaction of a message whose idem_apply failed rolled back); once a key
 * has failed idempotent.max_attempts times it is dead, and apply.c runs
 * nothing for it.
 */
#include "postgres.h"

#include "access/htup_details.h"
#include "fmgr.h"
#include "funcapi.h"
#include "utils/builtins.h"
#include "utils/jsonb.h"
#include "utils/timestamp.h"

#include "ledger.h"
#include "stats.h"

/* Seed of the request identity of lease keys (hash of the request jsonb). */
#define LEASE_REQUEST_SEED	INT64CONST(0x1DE0000000000103)

/* What idem_begin and idem_fail return: an idem_lease row. */
typedef struct LeaseOutcome
{
	IdemStatus	status;
	int32		attempt;		/* 0: NULL */
	bool		has_lease_until;
	TimestampTz lease_until;
	Jsonb	   *result;			/* NULL when none */
	text	   *last_error;		/* NULL when none */
	IdemPolicy	stat_policy;	/* the statistics row that counts the call */
} LeaseOutcome;

/* One call of idem_begin, idem_complete or idem_fail. */
typedef struct LeaseCall
{
	text	   *scope;
	text	   *key;
	bool		has_request;	/* idem_begin: request identity */
	int64		request_hash;
	Interval   *lease;			/* idem_begin: NULL for idempotent.lease */
	int32		attempt;		/* idem_complete, idem_fail: 0 for none */
	Jsonb	   *result;			/* idem_complete */
	text	   *error;			/* idem_fail */
	Interval   *retry_after;	/* idem_fail: NULL for none */
} LeaseCall;

/* now + interval, for lease and retry times */
static TimestampTz
add_interval(TimestampTz now, Interval *interval)
{
	return DatumGetTimestampTz(DirectFunctionCall2(timestamptz_pl_interval,
												   TimestampTzGetDatum(now),
												   IntervalPGetDatum(interval)));
}

/* The key's end of lease for an attempt that starts now. */
static TimestampTz
lease_end(const LeaseCall *call, TimestampTz now)
{
	if (call->lease == NULL)
		return now + (TimestampTz) idem_lease_ms * 1000;
	return add_interval(now, call->lease);
}

/* An interval argument that must be positive (or, allow_zero, not negative). */
static Interval *
interval_arg(FunctionCallInfo fcinfo, int argno, const char *name, bool allow_zero)
{
	Interval   *interval;
	TimestampTz now = GetCurrentTimestamp();
	TimestampTz end;

	if (PG_ARGISNULL(argno))
		return NULL;
	interval = PG_GETARG_INTERVAL_P(argno);
	end = add_interval(now, interval);
	if (end < now || (end == now && !allow_zero))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg(allow_zero ? "%s must not be negative" : "%s must be positive", name),
				 errdetail("The interval given is %s.",
						   DatumGetCString(DirectFunctionCall1(interval_out,
															   IntervalPGetDatum(interval))))));
	return interval;
}

/* The attempt argument: NULL gives 0 when allowed, else an error. */
static int32
attempt_arg(FunctionCallInfo fcinfo, int argno, bool allow_null)
{
	int32		attempt;

	if (PG_ARGISNULL(argno))
	{
		if (allow_null)
			return 0;
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("attempt must not be null"),
				 errhint("Pass the attempt that idem_begin returned with status started.")));
	}
	attempt = PG_GETARG_INT32(argno);
	if (attempt < 1)
		ereport(ERROR,
				(errcode(ERRCODE_NUMERIC_VALUE_OUT_OF_RANGE),
				 errmsg("attempt must be at least 1"),
				 errdetail("The attempt given is %d.", attempt)));
	return attempt;
}

static text *
copy_text(const text *t)
{
	return t == NULL ? NULL : DatumGetTextPCopy(PointerGetDatum(t));
}

/* A row that is an ordinary key (applied, or counting failures) is not a lease key. */
static void
check_lease_key(const LeaseCall *call, const LedgerRow *row, const char *function)
{
	if (row->policy != IDEM_LEASE)
		ereport(ERROR,
				(errcode(ERRCODE_IDEM_POLICY_MISMATCH),
				 errmsg("key \"%s\" is not held by leases", text_to_cstring(call->key)),
				 errdetail(row->has_applied ?
						   "It was recorded under policy \"%s\"." :
						   "It counts failures of an ordinary consumer's messages.",
						   idem_policy_name(row->policy)),
				 errhint("%s is for keys begun with idem_begin; use another key.", function)));
}

/*
 * A later idem_begin on a lease key must repeat the original request; a
 * superuser may switch the check off (idempotent.check_fingerprint), and then
 * a different request gets no stored result.
 */
static bool
same_request(const LeaseCall *call, const LedgerRow *row)
{
	bool		same = call->has_request == row->has_fingerprint &&
		(!call->has_request || call->request_hash == row->fingerprint);

	if (!same && idem_check_fingerprint)
		ereport(ERROR,
				(errcode(ERRCODE_IDEM_FINGERPRINT_MISMATCH),
				 errmsg("key \"%s\" was already begun with a different request",
						text_to_cstring(call->key)),
				 errdetail("A later idem_begin on a key must pass a request equal to the first one's, or NULL if that was NULL."),
				 errhint("Use a new key for a different request.")));
	return same;
}

/* Whether this many failures make a key dead. */
static bool
fails_for_good(int32 failures)
{
	return idem_max_attempts > 0 && failures >= idem_max_attempts;
}

/*
 * Decide idem_begin against the ledger row (NULL: key absent or expired).
 * Fills out; returns true if the ledger must be written (a new attempt, or a
 * last expired attempt that makes the key dead).
 */
static bool
begin_decide(const LeaseCall *call, const LedgerRow *row, TimestampTz now,
			 LeaseOutcome *out)
{
	bool		same;

	memset(out, 0, sizeof(LeaseOutcome));
	if (row == NULL)
	{
		out->status = IDEM_STARTED;
		out->attempt = 1;
		return true;
	}
	check_lease_key(call, row, "idem_begin");
	same = same_request(call, row);
	out->attempt = row->attempts;
	out->last_error = copy_text(row->last_error);
	switch (row->state)
	{
		case IDEM_STATE_COMPLETED:
			out->status = IDEM_DUPLICATE;
			if (same && row->result != NULL)
				out->result = DatumGetJsonbPCopy(PointerGetDatum(row->result));
			return false;
		case IDEM_STATE_DEAD:
			out->status = IDEM_DEAD;
			return false;
		case IDEM_STATE_LEASED:
		case IDEM_STATE_FAILED:
			if (row->has_lease_until && row->lease_until > now)
			{
				out->status = IDEM_IN_PROGRESS;
				out->has_lease_until = true;
				out->lease_until = row->lease_until;
				return false;
			}
			/* a lease that ran out is a failed attempt: the last one kills the key */
			if (row->state == IDEM_STATE_LEASED && fails_for_good(row->attempts))
			{
				out->status = IDEM_DEAD;
				return true;
			}
			out->status = IDEM_STARTED;
			out->attempt = row->attempts + 1;
			return true;
	}
	elog(ERROR, "unknown state \"%c\" of lease key \"%s\"", row->state,
		 text_to_cstring(call->key));
	return false;
}

/* Write what begin_decide decided; the caller holds the key's lock. */
static void
begin_write(Ledger *ledger, const LeaseCall *call, const LedgerRow *found,
			TimestampTz now, LeaseOutcome *out)
{
	LedgerRow	row;

	idem_check_writable(call->key);
	memset(&row, 0, sizeof(row));
	ledger_stamp_row(&row, call->scope, call->key);
	row.policy = IDEM_LEASE;
	row.has_fingerprint = call->has_request;
	row.fingerprint = call->request_hash;
	row.last_error = found != NULL ? copy_text(found->last_error) : NULL;
	if (out->status == IDEM_DEAD)
	{
		/* dead keys expire as completed ones do: keep the stamp */
		row.state = IDEM_STATE_DEAD;
		row.attempts = found->attempts;
		row.last_error = cstring_to_text(psprintf("lease of attempt %d ran out", found->attempts));
		out->last_error = copy_text(row.last_error);
	}
	else
	{
		/* a live lease never expires: only its outcome may */
		row.has_expiry = false;
		row.expires_at = 0;
		row.state = IDEM_STATE_LEASED;
		row.attempts = out->attempt;
		row.has_lease_until = true;
		row.lease_until = lease_end(call, now);
		out->has_lease_until = true;
		out->lease_until = row.lease_until;
	}
	ledger_end_probe(ledger);
	ledger_write(ledger, call->scope, call->key, &row, found);
}

/*
 * idem_begin's protocol, as apply.c's: probe, decide, and only to write, lock
 * the key and probe again under the lock if need be.  A key another
 * transaction is writing is waited for (or, with idempotent.wait off,
 * reported in progress without its lease).  A lease counts from when the
 * key's lock is held: taking it may have waited for the lease's length.
 */
static void
lease_begin(const LeaseCall *call, LeaseOutcome *out)
{
	Ledger		ledger;
	bool		locked = false;

	idem_check_not_applying(call->scope, call->key);
	ledger_open(&ledger);
	for (;;)
	{
		LedgerRow	row;
		LedgerProbe probe = ledger_probe_settled(&ledger, call->scope, call->key, &row,
												 &locked, idem_wait);
		const LedgerRow *against;	/* NULL: absent or expired */
		TimestampTz now;

		if (probe == LEDGER_BUSY)
		{
			memset(out, 0, sizeof(LeaseOutcome));
			out->status = IDEM_IN_PROGRESS;
			break;
		}
		against = probe == LEDGER_FOUND && !ledger_row_expired(&row) ? &row : NULL;
		now = GetCurrentTimestamp();
		if (!begin_decide(call, against, now, out))
			break;
		if (!locked)
		{
			bool		probe_holds;

			if (!ledger_lock_probed_key(&ledger, idem_wait, &probe_holds))
			{
				memset(out, 0, sizeof(LeaseOutcome));
				out->status = IDEM_IN_PROGRESS;
				break;
			}
			locked = true;
			if (!probe_holds)
				continue;
			/* decide again at the time the lock was taken */
			now = GetCurrentTimestamp();
			if (!begin_decide(call, against, now, out))
				break;
		}
		begin_write(&ledger, call, probe == LEDGER_FOUND ? &row : NULL, now, out);
		break;
	}
	if (locked)
		idem_key_unlock(call->scope, call->key);
	ledger_close(&ledger);
}

/* Refuse an attempt that does not hold the key (ID003), saying why. */
static void
check_holder(const LeaseCall *call, bool found, const LedgerRow *row)
{
	const char *why;

	if (found)
		check_lease_key(call, row, call->error == NULL ? "idem_complete" : "idem_fail");
	if (found && row->state == IDEM_STATE_LEASED && row->attempts == call->attempt)
		return;
	if (!found)
		why = "The key was never begun, or was forgotten or expired since.";
	else if (row->attempts > call->attempt)
		why = psprintf("Attempt %d took the key over.", row->attempts);
	else if (row->attempts < call->attempt)
		why = psprintf("The key's latest attempt is %d.", row->attempts);
	else if (row->state == IDEM_STATE_COMPLETED)
		why = "The attempt completed already.";
	else
		why = "The attempt failed already.";
	ereport(ERROR,
			(errcode(ERRCODE_IDEM_ATTEMPT_FENCED),
			 errmsg("attempt %d does not hold key \"%s\"", call->attempt,
					text_to_cstring(call->key)),
			 errdetail_internal("%s", why),
			 errhint("Only the attempt that idem_begin started last may complete or fail the key.")));
}

/*
 * idem_complete: the holder records its effect's result; the key answers
 * duplicate from then on.  A lease that ran out still belongs to its attempt
 * until another idem_begin takes it over.
 */
static void
lease_complete(const LeaseCall *call)
{
	Ledger		ledger;
	LedgerRow	row;
	LedgerRow	done;
	bool		found;

	idem_check_not_applying(call->scope, call->key);
	if (call->result != NULL && VARSIZE(call->result) > (Size) idem_max_result_bytes)
		ereport(ERROR,
				(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
				 errmsg("result is too large to store"),
				 errdetail("It takes %zu bytes as jsonb; the limit is %d bytes.",
						   (Size) VARSIZE(call->result), idem_max_result_bytes),
				 errhint("Store less, or raise idempotent.max_result_bytes.")));
	ledger_open(&ledger);
	found = ledger_probe_locked(&ledger, call->scope, call->key, &row) && !ledger_row_expired(&row);
	check_holder(call, found, &row);
	idem_check_writable(call->key);

	memset(&done, 0, sizeof(done));
	ledger_stamp_row(&done, call->scope, call->key);
	done.tid = row.tid;
	done.policy = IDEM_LEASE;
	done.has_fingerprint = row.has_fingerprint;
	done.fingerprint = row.fingerprint;
	done.state = IDEM_STATE_COMPLETED;
	done.attempts = row.attempts;
	done.last_error = row.last_error;
	done.result = call->result;
	ledger_update(&ledger, call->scope, call->key, &done);
	idem_key_unlock(call->scope, call->key);
	ledger_close(&ledger);
}

/*
 * idem_fail with an attempt: the holder's attempt ended in failure.  The key
 * waits until retry_after has passed (none: the next idem_begin may start at
 * once), or is dead after its idempotent.max_attempts-th failure.
 */
static void
fail_attempt(Ledger *ledger, const LeaseCall *call, const LedgerRow *found,
			 TimestampTz now, LeaseOutcome *out)
{
	LedgerRow	row;

	memset(&row, 0, sizeof(row));
	ledger_stamp_row(&row, call->scope, call->key);
	row.tid = found->tid;
	row.policy = IDEM_LEASE;
	row.has_fingerprint = found->has_fingerprint;
	row.fingerprint = found->fingerprint;
	row.attempts = found->attempts;
	row.last_error = call->error;
	if (fails_for_good(found->attempts))
		row.state = IDEM_STATE_DEAD;
	else
	{
		row.state = IDEM_STATE_FAILED;
		row.has_expiry = false;	/* the key waits for its retry */
		row.expires_at = 0;
		row.has_lease_until = call->retry_after != NULL;
		row.lease_until = row.has_lease_until ? add_interval(now, call->retry_after) : 0;
	}
	ledger_update(ledger, call->scope, call->key, &row);

	out->status = row.state == IDEM_STATE_DEAD ? IDEM_DEAD : IDEM_FAILED;
	out->attempt = row.attempts;
	out->has_lease_until = row.has_lease_until;
	out->lease_until = row.lease_until;
	out->last_error = call->error;
}

/*
 * idem_fail without an attempt: a message of an ordinary consumer failed (its
 * transaction rolled back).  The failure is counted on the key, which need
 * not exist yet: a key that never applied gets a row without applied_at,
 * which counts as absent to idem_apply until the key is dead.  A key that
 * applies again starts counting from zero.
 */
static void
fail_message(Ledger *ledger, const LeaseCall *call, bool present, bool found,
			 const LedgerRow *row_found, LeaseOutcome *out)
{
	LedgerRow	row;

	if (found)
	{
		if (row_found->policy == IDEM_LEASE)
			ereport(ERROR,
					(errcode(ERRCODE_IDEM_POLICY_MISMATCH),
					 errmsg("key \"%s\" is held by leases", text_to_cstring(call->key)),
					 errdetail("idem_fail without an attempt counts failures of keys applied with idem_apply or idem_claim."),
					 errhint("Pass the attempt that idem_begin returned.")));
		row = *row_found;
		/* the probe's result may point into the heap: written again, it must be ours */
		if (row.result != NULL)
			row.result = DatumGetJsonbPCopy(PointerGetDatum(row.result));
		row.attempts = row_found->attempts + 1;
	}
	else
	{
		memset(&row, 0, sizeof(row));
		ledger_stamp_row(&row, call->scope, call->key);
		row.policy = IDEM_ONCE;	/* none yet: the first applied call sets it */
		row.has_applied = false;
		row.applied_at = 0;
		row.attempts = 1;
	}
	row.state = row.state == IDEM_STATE_DEAD || fails_for_good(row.attempts) ?
		IDEM_STATE_DEAD : IDEM_STATE_FAILED;
	row.last_error = call->error;
	/* a present row that is not found is an expired one, replaced */
	ledger_write(ledger, call->scope, call->key, &row, present ? row_found : NULL);

	out->status = row.state == IDEM_STATE_DEAD ? IDEM_DEAD : IDEM_FAILED;
	out->attempt = row.attempts;
	out->last_error = call->error;
	out->stat_policy = row.has_applied ? row.policy : IDEM_ONCE;
}

/* idem_fail: with an attempt, the holder's failure; without, a message's. */
static void
lease_fail(const LeaseCall *call, LeaseOutcome *out)
{
	Ledger		ledger;
	LedgerRow	row;
	bool		present;
	bool		found;

	idem_check_not_applying(call->scope, call->key);
	ledger_open(&ledger);
	present = ledger_probe_locked(&ledger, call->scope, call->key, &row);
	found = present && !ledger_row_expired(&row);
	if (call->attempt != 0)
		check_holder(call, found, &row);
	idem_check_writable(call->key);
	if (call->attempt != 0)
		fail_attempt(&ledger, call, &row, GetCurrentTimestamp(), out);
	else
		fail_message(&ledger, call, present, found, &row, out);
	idem_key_unlock(call->scope, call->key);
	ledger_close(&ledger);
}

/* The idem_lease row of an outcome. */
static Datum
lease_datum(FunctionCallInfo fcinfo, const LeaseOutcome *out)
{
	TupleDesc	desc = idem_result_desc(fcinfo);
	Datum		values[5];
	bool		nulls[5];

	values[0] = CStringGetTextDatum(idem_status_name(out->status));
	nulls[0] = false;
	values[1] = Int32GetDatum(out->attempt);
	nulls[1] = (out->attempt == 0);
	values[2] = TimestampTzGetDatum(out->lease_until);
	nulls[2] = !out->has_lease_until;
	values[3] = PointerGetDatum(out->result);
	nulls[3] = (out->result == NULL);
	values[4] = PointerGetDatum(out->last_error);
	nulls[4] = (out->last_error == NULL);
	return HeapTupleGetDatum(heap_form_tuple(desc, values, nulls));
}

typedef enum LeaseFunction
{
	LEASE_BEGIN,
	LEASE_COMPLETE,
	LEASE_FAIL
} LeaseFunction;

/*
 * Run a call, counting it in the statistics (when the library is preloaded)
 * under policy lease, or, for a message's failure, under the key's policy
 * ("once" for a key that never applied).
 */
/* A call for lease_dispatch(), through idem_stats_run(). */
typedef struct LeaseRun
{
	LeaseFunction function;
	const LeaseCall *call;
	LeaseOutcome *out;
} LeaseRun;

static void
lease_dispatch(void *arg)
{
	LeaseRun   *run = (LeaseRun *) arg;
	LeaseOutcome *out = run->out;

	switch (run->function)
	{
		case LEASE_BEGIN:
			lease_begin(run->call, out);
			out->stat_policy = IDEM_LEASE;
			break;
		case LEASE_COMPLETE:
			lease_complete(run->call);
			memset(out, 0, sizeof(LeaseOutcome));
			out->status = IDEM_COMPLETED;
			out->stat_policy = IDEM_LEASE;
			break;
		case LEASE_FAIL:
			memset(out, 0, sizeof(LeaseOutcome));
			out->stat_policy = IDEM_LEASE;
			lease_fail(run->call, out);
			break;
	}
}

static void
lease_run(LeaseFunction function, const LeaseCall *call, LeaseOutcome *out)
{
	LeaseRun	run = {function, call, out};
	instr_time	elapsed;

	elapsed = idem_stats_run(call->scope,
							 call->attempt == 0 && function == LEASE_FAIL ? IDEM_ONCE : IDEM_LEASE,
							 lease_dispatch, &run);
	/* a failure counts as failed even when it made the key dead */
	if (idem_stats_enabled)
		idem_stats_count(call->scope, out->stat_policy,
						 function == LEASE_FAIL ? IDEM_FAILED : out->status, elapsed);
}

/* A call's key (checked) and scope (checked for the current role); the rest empty. */
static void
lease_call_init(FunctionCallInfo fcinfo, LeaseCall *call)
{
	memset(call, 0, sizeof(LeaseCall));
	call->key = idem_key_arg(fcinfo);
	call->scope = idem_current_scope();
}

PG_FUNCTION_INFO_V1(idem_begin);
/* idem_begin(key, lease, request): start an attempt, or say why not */
Datum
idem_begin(PG_FUNCTION_ARGS)
{
	LeaseCall	call;
	LeaseOutcome out;

	lease_call_init(fcinfo, &call);
	call.lease = interval_arg(fcinfo, 1, "lease", false);
	call.has_request = !PG_ARGISNULL(2);
	if (call.has_request)
		call.request_hash = DatumGetInt64(DirectFunctionCall2(jsonb_hash_extended,
															  PG_GETARG_DATUM(2),
															  Int64GetDatum(LEASE_REQUEST_SEED)));
	lease_run(LEASE_BEGIN, &call, &out);
	PG_RETURN_DATUM(lease_datum(fcinfo, &out));
}

PG_FUNCTION_INFO_V1(idem_complete);
/* idem_complete(key, attempt, result): the holder's effect is done */
Datum
idem_complete(PG_FUNCTION_ARGS)
{
	LeaseCall	call;
	LeaseOutcome out;

	lease_call_init(fcinfo, &call);
	call.attempt = attempt_arg(fcinfo, 1, false);
	call.result = PG_ARGISNULL(2) ? NULL : PG_GETARG_JSONB_P(2);
	lease_run(LEASE_COMPLETE, &call, &out);
	PG_RETURN_VOID();
}

PG_FUNCTION_INFO_V1(idem_fail);
/* idem_fail(key, attempt, error, retry_after): an attempt or a message failed */
Datum
idem_fail(PG_FUNCTION_ARGS)
{
	LeaseCall	call;
	LeaseOutcome out;

	lease_call_init(fcinfo, &call);
	call.attempt = attempt_arg(fcinfo, 1, true);
	if (PG_ARGISNULL(2))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("error must not be null"),
				 errhint("Say why the attempt failed: idem_get shows it as last_error.")));
	call.error = PG_GETARG_TEXT_PP(2);
	call.retry_after = interval_arg(fcinfo, 3, "retry_after", true);
	if (call.attempt == 0 && call.retry_after != NULL)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("retry_after needs an attempt"),
				 errdetail("A failed message of an ordinary consumer is redelivered when its broker decides."),
				 errhint("Pass NULL as retry_after, or the attempt that idem_begin returned.")));
	lease_run(LEASE_FAIL, &call, &out);
	PG_RETURN_DATUM(lease_datum(fcinfo, &out));
}
