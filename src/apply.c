/*
 * apply.c
 *	  The protocol behind every call: probe the key, decide the outcome by
 *	  policy, and when it is "applied" run the statement and record the key,
 *	  all in the caller's transaction.
 *
 * Reads need no lock: a duplicate, stale or gap outcome is decided from a
 * single index probe and writes nothing.  Only a call that will apply takes
 * the key's writers' lock, probes again under it (another session may have
 * applied in between) and then runs the statement and writes the ledger row.
 */
#include "postgres.h"

#include "access/xact.h"
#include "utils/builtins.h"

#include "ledger.h"
#include "statement.h"

/*
 * Keys whose statements are running in this backend, outermost first: a
 * statement that applies its own key again would otherwise collide with the
 * ledger row its enclosing call is about to write.
 */
#define MAX_NESTED_KEYS 16
static text *applying_keys[MAX_NESTED_KEYS];
static int	napplying_keys = 0;

/* Whether an enclosing call in this backend is applying key. */
bool
idem_key_is_applying(text *key)
{
	for (int i = 0; i < napplying_keys; i++)
	{
		text	   *outer = applying_keys[i];

		if (VARSIZE_ANY_EXHDR(outer) == VARSIZE_ANY_EXHDR(key) &&
			memcmp(VARDATA_ANY(outer), VARDATA_ANY(key), VARSIZE_ANY_EXHDR(key)) == 0)
			return true;
	}
	return false;
}

/* Refuse to touch a key an enclosing call is applying. */
void
idem_check_not_applying(text *key)
{
	if (napplying_keys > 0 && idem_key_is_applying(key))
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

	if (depth < MAX_NESTED_KEYS)
		applying_keys[napplying_keys++] = req->key;
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

const char *
idem_policy_name(IdemPolicy policy)
{
	switch (policy)
	{
		case IDEM_ONCE:
			return "once";
		case IDEM_NEWER:
			return "newer";
		case IDEM_NEXT:
			return "next";
		case IDEM_UPSERT:
			return "upsert";
	}
	return "unknown";
}

/* A duplicate must repeat the original request; report a reused key. */
static void
check_fingerprint(const IdemRequest *req, const LedgerRow *row)
{
	if (!idem_check_fingerprint || req->stmt == NULL || !row->has_fingerprint)
		return;
	if (row->fingerprint != req->fingerprint)
		ereport(ERROR,
				(errcode(ERRCODE_IDEM_FINGERPRINT_MISMATCH),
				 errmsg("key \"%s\" was already applied with a different statement or arguments",
						text_to_cstring(req->key)),
				 errdetail("A duplicate must repeat the original request exactly."),
				 errhint("Use a new key for a different request, or set idempotent.check_fingerprint to off.")));
}

/*
 * Decide the outcome of a request against the ledger row (NULL: key absent).
 * Fills out->status and the version fields; returns true if the statement
 * should run.
 */
static bool
decide(const IdemRequest *req, const LedgerRow *row, IdemOutcome *out)
{
	int64		v = req->version;
	int64		s;

	out->has_previous = (row != NULL && row->has_version);
	out->previous_version = out->has_previous ? row->version : 0;

	if (row == NULL)
	{
		if (req->policy == IDEM_NEXT && v != 1)
		{
			out->status = IDEM_GAP;
			out->has_version = false;
			return false;
		}
		out->status = IDEM_APPLIED;
		out->has_version = req->has_version;
		out->version = v;
		return true;
	}

	if (row->policy != req->policy)
		ereport(ERROR,
				(errcode(ERRCODE_IDEM_POLICY_MISMATCH),
				 errmsg("key \"%s\" was recorded under policy \"%s\", not \"%s\"",
						text_to_cstring(req->key), idem_policy_name(row->policy),
						idem_policy_name(req->policy)),
				 errhint("Use one policy per key: the version decides between once and newer, and idem_apply_next and idem_upsert have their own.")));

	/* Until shown otherwise, nothing changes: the stored version stays. */
	out->has_version = row->has_version;
	out->version = row->version;
	s = row->version;

	switch (req->policy)
	{
		case IDEM_ONCE:
			out->status = IDEM_DUPLICATE;
			break;
		case IDEM_NEWER:
			out->status = v > s ? IDEM_APPLIED : v == s ? IDEM_DUPLICATE : IDEM_STALE;
			break;
		case IDEM_NEXT:
			out->status = v == s + 1 ? IDEM_APPLIED :
				v == s ? IDEM_DUPLICATE :
				v < s ? IDEM_STALE : IDEM_GAP;
			break;
		case IDEM_UPSERT:
			out->status = v >= s ? IDEM_APPLIED : IDEM_STALE;
			break;
	}

	if (out->status == IDEM_DUPLICATE)
	{
		check_fingerprint(req, row);
		out->has_rows = row->has_rows;
		out->rows = row->rows;
		out->result = row->result == NULL ? NULL :
			DatumGetJsonbPCopy(PointerGetDatum(row->result));
	}
	if (out->status == IDEM_APPLIED)
	{
		out->version = v;
		return true;
	}
	return false;
}

/* Run the statement (if any) and write the ledger row for an applied call. */
static void
apply(Ledger *ledger, const IdemRequest *req, const LedgerRow *found,
	  IdemOutcome *out)
{
	LedgerRow	row;

	/* The statement would be refused too, but a claim has none. */
	if (XactReadOnly)
		ereport(ERROR,
				(errcode(ERRCODE_READ_ONLY_SQL_TRANSACTION),
				 errmsg("cannot record key \"%s\" in a read-only transaction",
						text_to_cstring(req->key))));

	row.policy = req->policy;
	row.has_version = req->has_version;
	row.version = req->version;
	row.has_fingerprint = (req->stmt != NULL);
	row.fingerprint = req->fingerprint;
	row.has_rows = false;
	row.rows = 0;
	row.result = NULL;
	ledger_stamp_row(&row);

	/* Let go of the probed ledger page while the statement runs. */
	ExecClearTuple(ledger->slot);

	if (req->stmt != NULL)
	{
		run_statement(req, &row.rows, &row.result);
		row.has_rows = true;
	}

	if (found == NULL)
		ledger_insert(ledger, req->key, &row);
	else
	{
		row.tid = found->tid;
		ledger_update(ledger, req->key, &row);
	}

	out->has_rows = row.has_rows;
	out->rows = row.rows;
	out->result = row.result;
}

/* Another transaction is applying the key and we may not wait: say so only. */
static void
in_progress(IdemOutcome *out)
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
	idem_check_not_applying(req->key);
	ledger_open(&ledger);

	for (;;)
	{
		LedgerRow	row;
		LedgerWriter writer;
		LedgerProbe probe = ledger_probe(&ledger, req->key, &row, &writer);

		if (probe == LEDGER_BUSY)
		{
			/* Never hold the key's lock while waiting for its writer. */
			if (locked)
			{
				ledger_unlock_key(req->key);
				locked = false;
			}
			if (!idem_wait)
			{
				in_progress(out);
				break;
			}
			ledger_wait(&ledger, &writer);
			continue;
		}

		/* An expired key is absent, whether or not it was purged yet. */
		if (!decide(req, probe == LEDGER_FOUND && !ledger_row_expired(&row) ? &row : NULL,
					out))
			break;

		if (!locked)
		{
			/* Lock, then probe again: someone may have applied meanwhile. */
			if (!ledger_lock_key(req->key, idem_wait))
			{
				in_progress(out);
				break;
			}
			locked = true;
			continue;
		}

		apply(&ledger, req, probe == LEDGER_FOUND ? &row : NULL, out);
		break;
	}

	if (locked)
		ledger_unlock_key(req->key);
	ledger_close(&ledger);
}
