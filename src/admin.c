/*
 * admin.c
 *	  Operators' functions: read a key's record, purge expired keys, forget
 *	  a key, reset a key's version watermark.  Forgetting and resetting are
 *	  logged.
 *
 * Each works in the caller's scope (idempotent.scope), which the caller must
 * be allowed to use; a superuser's purge covers every scope.  Like the calls
 * that apply keys, these write the ledger directly and take the key's
 * writers' lock, so they never collide with a call in flight.
 */
#include "postgres.h"

#include "access/xact.h"
#include "fmgr.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "utils/builtins.h"

#include "ledger.h"

static void
check_writable(text *key)
{
	if (XactReadOnly)
		ereport(ERROR,
				(errcode(ERRCODE_READ_ONLY_SQL_TRANSACTION),
				 errmsg("cannot change key \"%s\" in a read-only transaction",
						text_to_cstring(key))));
}

PG_FUNCTION_INFO_V1(idem_purge);
/*
 * idem_purge(max_keys): delete up to max_keys expired keys of the caller's
 * scope (a superuser's: of every scope); returns how many
 */
Datum
idem_purge(PG_FUNCTION_ARGS)
{
	int32		max_keys;
	text	   *scope;
	Ledger		ledger;
	int64		deleted;

	if (PG_ARGISNULL(0))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("max_keys must not be null")));
	max_keys = PG_GETARG_INT32(0);
	scope = superuser() ? NULL : idem_current_scope();
	if (max_keys < 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("max_keys must not be negative")));
	if (XactReadOnly)
		ereport(ERROR,
				(errcode(ERRCODE_READ_ONLY_SQL_TRANSACTION),
				 errmsg("cannot purge keys in a read-only transaction")));
	ledger_open(&ledger);
	deleted = ledger_purge(&ledger, max_keys, GetCurrentTransactionStartTimestamp(), scope);
	ledger_close(&ledger);
	PG_RETURN_INT64(deleted);
}

PG_FUNCTION_INFO_V1(idem_forget);
/* idem_forget(key): remove a key so its next delivery applies again */
Datum
idem_forget(PG_FUNCTION_ARGS)
{
	text	   *key = idem_key_arg(fcinfo);
	text	   *scope = idem_current_scope();
	Ledger		ledger;
	LedgerRow	row;
	bool		forgotten = false;

	idem_check_not_applying(scope, key);
	check_writable(key);
	ledger_open(&ledger);
	if (ledger_probe_locked(&ledger, scope, key, &row))
		forgotten = ledger_delete(&ledger, &row.tid, true);
	idem_key_unlock(scope, key);
	ledger_close(&ledger);
	CommandCounterIncrement();

	if (forgotten)
		ereport(LOG,
				(errmsg("idempotent: key \"%s\" of scope \"%s\" forgotten by role \"%s\"",
						text_to_cstring(key), text_to_cstring(scope),
						GetUserNameFromId(GetUserId(), false))));
	PG_RETURN_BOOL(forgotten);
}

PG_FUNCTION_INFO_V1(idem_reset);
/*
 * idem_reset(key, version, policy): set a key's stored version, creating
 * the key under policy (default newer) if it is absent; returns the version
 * it replaced (NULL when the key was absent).  The key's stored rows and
 * result are cleared: they belonged to another version.
 */
Datum
idem_reset(PG_FUNCTION_ARGS)
{
	text	   *key = idem_key_arg(fcinfo);
	text	   *scope = idem_current_scope();
	int64		version;
	IdemPolicy	policy = IDEM_NEWER;
	Ledger		ledger;
	LedgerRow	row;
	bool		present;
	bool		found;
	int64		previous;

	if (PG_ARGISNULL(1))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("version must not be null")));
	version = PG_GETARG_INT64(1);
	if (!PG_ARGISNULL(2))
		policy = idem_parse_policy(text_to_cstring(PG_GETARG_TEXT_PP(2)));
	if (version < 0)
		ereport(ERROR,
				(errcode(ERRCODE_NUMERIC_VALUE_OUT_OF_RANGE),
				 errmsg("version must not be negative")));
	idem_check_not_applying(scope, key);
	check_writable(key);

	ledger_open(&ledger);
	present = ledger_probe_locked(&ledger, scope, key, &row);
	found = present && !ledger_row_expired(&row);
	if (found && row.policy == IDEM_LEASE)
		ereport(ERROR,
				(errcode(ERRCODE_IDEM_POLICY_MISMATCH),
				 errmsg("key \"%s\" is held by leases, which have no version to reset",
						text_to_cstring(key)),
				 errhint("Use idem_forget to make a lease key start again.")));
	/* a key that only counted failures never applied: reset creates it */
	found = found && row.has_applied;
	if (found && PG_ARGISNULL(2))
		policy = row.policy;
	if (policy == IDEM_ONCE)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("policy \"once\" has no version to reset"),
				 errhint("Use idem_forget to make a once key apply again.")));
	if (found && row.policy != policy)
		ereport(ERROR,
				(errcode(ERRCODE_IDEM_POLICY_MISMATCH),
				 errmsg("key \"%s\" was recorded under policy \"%s\", not \"%s\"",
						text_to_cstring(key), idem_policy_name(row.policy),
						idem_policy_name(policy))));
	previous = found ? row.version : 0;

	row.policy = policy;
	row.has_version = true;
	row.version = version;
	row.has_rows = false;
	row.rows = 0;
	row.has_fingerprint = false;
	row.has_legacy_fingerprint = false;
	row.result = NULL;
	ledger_stamp_row(&row, scope, key);
	ledger_write(&ledger, scope, key, &row, present ? &row : NULL);
	idem_key_unlock(scope, key);
	ledger_close(&ledger);

	ereport(LOG,
			(errmsg("idempotent: key \"%s\" of scope \"%s\" reset to version " INT64_FORMAT " by role \"%s\"",
					text_to_cstring(key), text_to_cstring(scope), version,
					GetUserNameFromId(GetUserId(), false))));
	if (!found)
		PG_RETURN_NULL();
	PG_RETURN_INT64(previous);
}

PG_FUNCTION_INFO_V1(idem_get);
/*
 * idem_get(key): the key's record in the caller's scope, expired or not, with
 * its lease or failures (state, attempts, lease_until, last_error); no row
 * when the key is absent.  It reads the ledger as the statement's snapshot
 * sees it, so a key another transaction is writing shows as it was before,
 * and nothing waits.
 */
Datum
idem_get(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	text	   *key = idem_key_arg(fcinfo);
	text	   *scope = idem_current_scope();
	Ledger		ledger;
	LedgerRow	row;

	InitMaterializedSRF(fcinfo, 0);
	ledger_open(&ledger);
	if (ledger_read(&ledger, scope, key, &row))
	{
		Datum		values[13];
		bool		nulls[13] = {0};
		const char *state = idem_state_name(row.state);

		values[0] = PointerGetDatum(key);
		/* a key that only counts failures has no policy yet */
		values[1] = CStringGetTextDatum(idem_policy_name(row.policy));
		nulls[1] = !row.has_applied;
		values[2] = Int64GetDatum(row.version);
		nulls[2] = !row.has_version;
		values[3] = TimestampTzGetDatum(row.applied_at);
		nulls[3] = !row.has_applied;
		values[4] = TimestampTzGetDatum(row.expires_at);
		nulls[4] = !row.has_expiry;
		values[5] = BoolGetDatum(ledger_row_expired(&row));
		values[6] = Int64GetDatum(row.rows);
		nulls[6] = !row.has_rows;
		values[7] = PointerGetDatum(row.result);
		nulls[7] = (row.result == NULL);
		values[8] = PointerGetDatum(scope);
		values[9] = state != NULL ? CStringGetTextDatum(state) : (Datum) 0;
		nulls[9] = (state == NULL);
		values[10] = Int32GetDatum(row.attempts);
		nulls[10] = (row.attempts == 0);
		values[11] = TimestampTzGetDatum(row.lease_until);
		nulls[11] = !row.has_lease_until;
		values[12] = PointerGetDatum(row.last_error);
		nulls[12] = (row.last_error == NULL);
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
	}
	ledger_close(&ledger);
	return (Datum) 0;
}
