/*
 * apply.c
 *	  The protocol behind every call: probe the key, decide the outcome by
 *	  policy, and when it is "applied" run the statement and record the key,
 *	  all in the caller's transaction.
 *
 * Reads need no lock: a duplicate, stale or gap outcome is decided from a
 * single index probe and writes nothing.  Only a call that will apply takes
 * the key's writers' lock, probes again under it if another session may have
 * applied in between (ledger_lock_probed_key), and then runs the statement
 * and writes the ledger row.
 */
#include "postgres.h"

#include "access/xact.h"
#include "utils/builtins.h"
#include "utils/memutils.h"

#include "ledger.h"
#include "statement.h"

/*
 * Keys whose statements are running in this backend, outermost first: a
 * statement that applies its own key again would otherwise collide with the
 * ledger row its enclosing call is about to write.  Every level is tracked;
 * the array grows in TopMemoryContext and points to the callers' keys, which
 * outlive the statements.
 */
typedef struct ApplyingKey
{
	text	   *scope;
	text	   *key;
} ApplyingKey;

static ApplyingKey *applying_keys = NULL;
static int	napplying_keys = 0;
static int	max_applying_keys = 0;

/* Whether two texts have the same bytes. */
bool
idem_text_equal(text *a, text *b)
{
	return VARSIZE_ANY_EXHDR(a) == VARSIZE_ANY_EXHDR(b) &&
		memcmp(VARDATA_ANY(a), VARDATA_ANY(b), VARSIZE_ANY_EXHDR(a)) == 0;
}

/* Whether an enclosing call in this backend is applying (scope, key). */
bool
idem_key_is_applying(text *scope, text *key)
{
	for (int i = 0; i < napplying_keys; i++)
		if (idem_text_equal(applying_keys[i].key, key) &&
			idem_text_equal(applying_keys[i].scope, scope))
			return true;
	return false;
}

/* Refuse to touch a key an enclosing call is applying. */
void
idem_check_not_applying(text *scope, text *key)
{
	if (napplying_keys > 0 && idem_key_is_applying(scope, key))
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_IN_USE),
				 errmsg("key \"%s\" is already being applied by an enclosing call",
						text_to_cstring(key)),
				 errdetail("The statement of a call on a key must not apply, forget or reset the same key.")));
}

/* Run the statement with its key marked as being applied. */
static void
run_statement(const IdemRequest *req, int64 *rows, Jsonb **result)
{
	int			depth = napplying_keys;

	if (napplying_keys == max_applying_keys)
	{
		int			n = Max(16, max_applying_keys * 2);

		applying_keys = applying_keys == NULL ?
			MemoryContextAlloc(TopMemoryContext, n * sizeof(ApplyingKey)) :
			repalloc(applying_keys, n * sizeof(ApplyingKey));
		max_applying_keys = n;
	}
	applying_keys[napplying_keys].scope = req->scope;
	applying_keys[napplying_keys].key = req->key;
	napplying_keys++;
	PG_TRY();
	{
		statement_run(req->stmt, rows, result);
	}
	PG_FINALLY();
	{
		napplying_keys = depth;
	}
	PG_END_TRY();
}

/*
 * Whether a duplicate repeats the original request: the same statement and
 * the same argument values (see statement_fingerprint()).  Keys recorded
 * before 1.2 are compared with the identity 1.1 computed.  A key recorded
 * without a statement (idem_claim, idem_reset) has nothing to compare.
 */
static bool
same_request(const IdemRequest *req, const LedgerRow *row)
{
	if (row->has_fingerprint)
		return row->fingerprint == req->fingerprint;
	if (row->has_legacy_fingerprint)
		return row->legacy_fingerprint == statement_legacy_fingerprint(req->stmt);
	return true;
}

/*
 * A duplicate of a statement-running call gets the original's rows and
 * result only if it is the same request; a reused key is an error unless a
 * superuser switched the check off.  A claim gets neither.
 */
static void
replay(const IdemRequest *req, const LedgerRow *row, IdemOutcome *out)
{
	if (req->stmt == NULL)
		return;
	if (!same_request(req, row))
	{
		if (idem_check_fingerprint)
			ereport(ERROR,
					(errcode(ERRCODE_IDEM_FINGERPRINT_MISMATCH),
					 errmsg("key \"%s\" was already applied with a different statement or arguments",
							text_to_cstring(req->key)),
					 errdetail("A duplicate must repeat the original request: the same statement text and arguments equal as values."),
					 errhint("Use a new key for a different request.")));
		return;
	}
	out->has_rows = row->has_rows;
	out->rows = row->rows;
	out->result = row->result == NULL ? NULL :
		DatumGetJsonbPCopy(PointerGetDatum(row->result));
}

/*
 * Decide the outcome of a request against the ledger row (NULL: key absent).
 * Fills out->status and the version fields; returns true if the statement
 * should run.  idem_claim_batch (batch.c) decides each element with it too.
 */
bool
idem_decide(const IdemRequest *req, const LedgerRow *row, IdemOutcome *out)
{
	out->has_previous = (row != NULL && row->has_version);
	out->previous_version = out->has_previous ? row->version : 0;

	if (row != NULL && row->policy != req->policy)
		ereport(ERROR,
				(errcode(ERRCODE_IDEM_POLICY_MISMATCH),
				 errmsg("key \"%s\" was recorded under policy \"%s\", not \"%s\"",
						text_to_cstring(req->key), idem_policy_name(row->policy),
						idem_policy_name(req->policy)),
				 errhint("Use one policy per key: the version decides between once and newer, and idem_apply_next and idem_upsert have their own.")));

	out->status = idem_policy_decide(req->policy, row != NULL,
									 row != NULL ? row->version : 0, req->version);
	if (out->status == IDEM_APPLIED)
	{
		out->has_version = req->has_version;
		out->version = req->version;
		return true;
	}
	/* Nothing changes: the stored version stays (a gap on a new key has none). */
	out->has_version = row != NULL && row->has_version;
	out->version = out->has_version ? row->version : 0;
	if (out->status == IDEM_DUPLICATE)
		replay(req, row, out);
	return false;
}

/*
 * Refuse to record a key in a read-only transaction (or on a standby): a
 * statement would be refused too, but a claim or a lease has none.
 */
void
idem_check_writable(text *key)
{
	if (XactReadOnly)
		ereport(ERROR,
				(errcode(ERRCODE_READ_ONLY_SQL_TRANSACTION),
				 errmsg("cannot record key \"%s\" in a read-only transaction",
						text_to_cstring(key))));
}

/*
 * The ledger row an applied request writes, as it is before the statement
 * runs: no rows or result yet, and not stamped (ledger_stamp_row).  Refuses
 * a read-only transaction.
 */
void
idem_new_row(const IdemRequest *req, LedgerRow *row)
{
	idem_check_writable(req->key);

	row->policy = req->policy;
	row->has_version = req->has_version;
	row->version = req->version;
	row->has_fingerprint = false;
	row->has_legacy_fingerprint = false;
	if (req->stmt != NULL && ledger_stores_fingerprint())
	{
		row->has_fingerprint = true;
		row->fingerprint = req->fingerprint;
	}
	else if (req->stmt != NULL)
	{
		/* a ledger not updated to 1.2 yet keeps 1.1's identity */
		row->has_legacy_fingerprint = true;
		row->legacy_fingerprint = statement_legacy_fingerprint(req->stmt);
	}
	row->has_rows = false;
	row->rows = 0;
	row->result = NULL;
}

/*
 * The row a call decides against: NULL when the key is absent, expired, or
 * only counts failures of messages that never applied (an applied call then
 * rewrites that row).  A key held by leases is refused (ID002).  *dead is set
 * when the key failed idempotent.max_attempts times: the call runs nothing
 * and reports status dead (idem_dead_outcome).  Batches of claims decide each
 * key through this too.
 */
const LedgerRow *
idem_decision_row(const IdemRequest *req, LedgerProbe probe, const LedgerRow *row,
				  bool *dead)
{
	*dead = false;
	if (probe != LEDGER_FOUND || ledger_row_expired(row))
		return NULL;
	if (row->policy == IDEM_LEASE)
		ereport(ERROR,
				(errcode(ERRCODE_IDEM_POLICY_MISMATCH),
				 errmsg("key \"%s\" is held by leases, not applied under policy \"%s\"",
						text_to_cstring(req->key), idem_policy_name(req->policy)),
				 errhint("Use idem_begin, idem_complete and idem_fail for this key, or another key.")));
	if (row->state == IDEM_STATE_DEAD)
	{
		*dead = true;
		return row;
	}
	return row->has_applied ? row : NULL;
}

/* The outcome for a dead key: nothing runs, the stored version (if any) stays. */
void
idem_dead_outcome(const LedgerRow *row, IdemOutcome *out)
{
	memset(out, 0, sizeof(IdemOutcome));
	out->status = IDEM_DEAD;
	out->has_version = row->has_applied && row->has_version;
	out->version = out->has_version ? row->version : 0;
	out->has_previous = out->has_version;
	out->previous_version = out->version;
}

/* Run the statement (if any) and write the ledger row for an applied call. */
static void
apply(Ledger *ledger, const IdemRequest *req, const LedgerRow *found,
	  IdemOutcome *out)
{
	LedgerRow	row;

	idem_new_row(req, &row);
	ledger_stamp_row(&row, req->scope, req->key);

	/* Let go of the probed ledger pages while the statement runs. */
	ledger_end_probe(ledger);

	if (req->stmt != NULL)
	{
		run_statement(req, &row.rows, &row.result);
		row.has_rows = true;
	}

	ledger_write(ledger, req->scope, req->key, &row, found);

	out->has_rows = row.has_rows;
	out->rows = row.rows;
	out->result = row.result;
}

/*
 * Another transaction is applying the key and we may not wait: say so only.
 * Batches of claims report it through this too.
 */
void
idem_in_progress_outcome(IdemOutcome *out)
{
	memset(out, 0, sizeof(IdemOutcome));
	out->status = IDEM_IN_PROGRESS;
}

void
idem_execute(const IdemRequest *req, IdemOutcome *out)
{
	Ledger		ledger;
	bool		locked = false;

	memset(out, 0, sizeof(IdemOutcome));
	idem_check_not_applying(req->scope, req->key);
	ledger_open(&ledger);

	for (;;)
	{
		LedgerRow	row;
		LedgerProbe probe = ledger_probe_settled(&ledger, req->scope, req->key, &row,
												 &locked, idem_wait);
		const LedgerRow *against;
		bool		is_dead;

		if (probe == LEDGER_BUSY)
		{
			idem_in_progress_outcome(out);
			break;
		}

		/* An expired key is absent, whether or not it was purged yet. */
		against = idem_decision_row(req, probe, &row, &is_dead);
		if (is_dead)
		{
			idem_dead_outcome(&row, out);
			break;
		}
		if (!idem_decide(req, against, out))
			break;

		if (!locked)
		{
			bool		probe_holds;

			if (!ledger_lock_probed_key(&ledger, idem_wait, &probe_holds))
			{
				idem_in_progress_outcome(out);
				break;
			}
			locked = true;
			/* someone may have applied meanwhile: probe again */
			if (!probe_holds)
				continue;
		}

		apply(&ledger, req, probe == LEDGER_FOUND ? &row : NULL, out);
		break;
	}

	if (locked)
		idem_key_unlock(req->scope, req->key);
	ledger_close(&ledger);
}
