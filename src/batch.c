/*
 * batch.c
 *	  idem_claim_batch: claim many keys in one call, for consumers that take
 *	  messages in batches and run one set-based statement for all of them.
 *
 * Every element gets the outcome idem_claim would give it, decided by the
 * same steps (apply.c: idem_decision_row, idem_decide, idem_new_row) against
 * a ledger opened once for the batch.  The occurrences of a key are decided
 * together, in input order, each against the row the previous ones left (as a
 * later call would see it), and the key is written once, with the row of its
 * last applied occurrence.
 *
 * The distinct keys are taken in the order of their bytes, which is also the
 * order of the ledger's primary key, so the probes walk the index from left
 * to right.  A batch holds at most one key's writers' lock at a time and
 * never while it waits for another transaction's writer (as idem_execute), so
 * the waits that last are those for a transaction that wrote a key.  A batch
 * waits at key k only after it has written keys before k: two batches that
 * waited for each other would each have written the key the other waits at,
 * before the one it waits at itself, which cannot be.  Overlapping batches
 * therefore wait for each other one way only and never deadlock.
 */
#include "postgres.h"

#include "catalog/pg_type.h"
#include "fmgr.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "utils/array.h"
#include "utils/builtins.h"

#include "ledger.h"
#include "stats.h"

/* Arguments of idem_claim_batch */
#define ARG_KEYS		0
#define ARG_VERSIONS	1
#define ARG_POLICY		2

/* Columns of its result */
#define NCOLUMNS		6

/* One element of the batch: what was asked, and its outcome. */
typedef struct BatchElem
{
	Datum		key_datum;		/* as in the keys array, for the result row */
	text	   *key;
	bool		has_version;
	int64		version;
	IdemOutcome out;
} BatchElem;

/* The element an error is about, for the error's context; 0: none. */
typedef struct BatchContext
{
	BatchElem  *elems;
	BatchElem  *current;
} BatchContext;

static void
batch_error_context(void *arg)
{
	BatchContext *ctx = (BatchContext *) arg;

	if (ctx->current != NULL)
		errcontext("element %d of the batch",
				   (int) (ctx->current - ctx->elems) + 1);
}

/* Elements in the order keys are taken: by the key's bytes, then input order. */
static int
elem_cmp(const void *a, const void *b)
{
	const BatchElem *x = *(BatchElem *const *) a;
	const BatchElem *y = *(BatchElem *const *) b;
	int			xlen = VARSIZE_ANY_EXHDR(x->key);
	int			ylen = VARSIZE_ANY_EXHDR(y->key);
	int			c = memcmp(VARDATA_ANY(x->key), VARDATA_ANY(y->key), Min(xlen, ylen));

	if (c != 0)
		return c;
	if (xlen != ylen)
		return xlen < ylen ? -1 : 1;
	return x < y ? -1 : x > y ? 1 : 0;
}

static bool
same_key(const BatchElem *x, const BatchElem *y)
{
	return idem_text_equal(x->key, y->key);
}

/*
 * Decide the occurrences occ[0..n) of one key in input order against the
 * key's row (NULL: absent).  With may_apply, an occurrence that applies
 * leaves its new row (in *last) for the next ones to be decided against;
 * without, it is in progress instead and changes nothing.  Returns whether
 * any occurrence applies; *last is then the row to write.
 */
static bool
decide_occurrences(IdemRequest *req, BatchElem **occ, int n, BatchContext *ctx,
				   const LedgerRow *against, bool may_apply, LedgerRow *last)
{
	bool		applies = false;

	for (int i = 0; i < n; i++)
	{
		ctx->current = occ[i];
		req->has_version = occ[i]->has_version;
		req->version = occ[i]->version;
		if (!idem_decide(req, against, &occ[i]->out))
			continue;
		if (!may_apply)
		{
			idem_in_progress_outcome(&occ[i]->out);
			continue;
		}
		if (!applies)
			memset(last, 0, sizeof(LedgerRow));
		idem_new_row(req, last);
		against = last;
		applies = true;
	}
	return applies;
}

/*
 * Whether some occurrence of the key applies against its row: the first one
 * that would apply does, since those before it change nothing.  Fills the
 * outcomes of the occurrences decided.
 */
static bool
any_applies(IdemRequest *req, BatchElem **occ, int n, BatchContext *ctx,
			const LedgerRow *against)
{
	for (int i = 0; i < n; i++)
	{
		ctx->current = occ[i];
		req->has_version = occ[i]->has_version;
		req->version = occ[i]->version;
		if (idem_decide(req, against, &occ[i]->out))
			return true;
	}
	return false;
}

/*
 * Claim one key for its occurrences occ[0..n): the protocol of idem_execute
 * (probe, decide, lock, probe again if need be, write), with every occurrence
 * decided at each step.  Holds the key's writers' lock only from the lock to
 * the write; waits for a busy key's writer only without it.
 */
static void
claim_key(Ledger *ledger, IdemRequest *req, BatchElem **occ, int n, BatchContext *ctx)
{
	bool		locked = false;

	req->key = occ[0]->key;
	ctx->current = occ[0];
	idem_check_not_applying(req->scope, req->key);

	for (;;)
	{
		LedgerRow	row;
		LedgerRow	last;
		LedgerProbe probe = ledger_probe_settled(ledger, req->scope, req->key, &row,
												 &locked, idem_wait);
		const LedgerRow *against;
		bool		dead;

		if (probe == LEDGER_BUSY)
		{
			for (int i = 0; i < n; i++)
				idem_in_progress_outcome(&occ[i]->out);
			break;
		}

		against = idem_decision_row(req, probe, &row, &dead);
		if (dead)
		{
			for (int i = 0; i < n; i++)
				idem_dead_outcome(&row, &occ[i]->out);
			break;
		}

		if (!locked)
		{
			bool		probe_holds;

			if (!any_applies(req, occ, n, ctx, against))
				break;
			if (!ledger_lock_probed_key(ledger, idem_wait, &probe_holds))
			{
				decide_occurrences(req, occ, n, ctx, against, false, NULL);
				break;
			}
			locked = true;
			/* someone may have applied meanwhile: probe again */
			if (!probe_holds)
				continue;
		}

		if (decide_occurrences(req, occ, n, ctx, against, true, &last))
		{
			ledger_stamp_row(&last, req->scope, req->key);
			ledger_write(ledger, req->scope, req->key, &last,
						 probe == LEDGER_FOUND ? &row : NULL);
		}
		break;
	}

	if (locked)
		idem_key_unlock(req->scope, req->key);
}

/* The batch for claim_batch(), through idem_stats_run(). */
typedef struct Batch
{
	IdemRequest *req;
	BatchElem  *elems;
	int			n;
	BatchContext *ctx;
} Batch;

/* Claim every key of the batch, in the order of their bytes. */
static void
claim_batch(void *arg)
{
	Batch	   *batch = (Batch *) arg;
	IdemRequest *req = batch->req;
	BatchElem  *elems = batch->elems;
	int			n = batch->n;
	BatchContext *ctx = batch->ctx;
	BatchElem **sorted = palloc(n * sizeof(BatchElem *));
	Ledger		ledger;

	for (int i = 0; i < n; i++)
		sorted[i] = &elems[i];
	qsort(sorted, n, sizeof(BatchElem *), elem_cmp);

	ledger_open(&ledger);
	for (int first = 0; first < n;)
	{
		int			next = first + 1;

		CHECK_FOR_INTERRUPTS();
		while (next < n && same_key(sorted[first], sorted[next]))
			next++;
		claim_key(&ledger, req, &sorted[first], next - first, ctx);
		first = next;
	}
	ledger_close(&ledger);
	ctx->current = NULL;
	pfree(sorted);
}

/* A one-dimensional array argument; returns its number of elements. */
static int
batch_array_length(ArrayType *array, const char *name)
{
	if (ARR_NDIM(array) > 1)
		ereport(ERROR,
				(errcode(ERRCODE_ARRAY_SUBSCRIPT_ERROR),
				 errmsg("%s must be a one-dimensional array", name),
				 errdetail("The array has %d dimensions.", ARR_NDIM(array))));
	return ARR_NDIM(array) == 0 ? 0 : ARR_DIMS(array)[0];
}

/*
 * Read and check the arguments: the policy (NULL: once without versions,
 * newer with them), the keys and their versions.  Returns the elements
 * (palloc'd, in input order) and sets *n.  Records nothing.
 */
static BatchElem *
batch_args(FunctionCallInfo fcinfo, IdemRequest *req, int *n, BatchContext *ctx)
{
	ArrayType  *keys;
	Datum	   *key_datums;
	bool	   *key_nulls;
	Datum	   *version_datums = NULL;
	bool	   *version_nulls = NULL;
	bool		has_versions = !PG_ARGISNULL(ARG_VERSIONS);
	int			nversions = 0;
	BatchElem  *elems;

	if (PG_ARGISNULL(ARG_KEYS))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("keys must not be null")));
	if (!PG_ARGISNULL(ARG_POLICY))
		req->policy = idem_parse_policy(text_to_cstring(PG_GETARG_TEXT_PP(ARG_POLICY)));
	else
		req->policy = has_versions ? IDEM_NEWER : IDEM_ONCE;
	if (has_versions && !idem_policy_takes_version(req->policy))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("policy \"%s\" takes no versions", idem_policy_name(req->policy)),
				 errhint("Pass NULL as versions, or use policy \"newer\".")));
	if (!has_versions && idem_policy_takes_version(req->policy))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("versions must not be null for policy \"%s\"",
						idem_policy_name(req->policy))));

	keys = PG_GETARG_ARRAYTYPE_P(ARG_KEYS);
	*n = batch_array_length(keys, "keys");
	if (has_versions)
	{
		ArrayType  *versions = PG_GETARG_ARRAYTYPE_P(ARG_VERSIONS);

		nversions = batch_array_length(versions, "versions");
		if (nversions != *n)
			ereport(ERROR,
					(errcode(ERRCODE_ARRAY_SUBSCRIPT_ERROR),
					 errmsg("keys and versions must have the same number of elements"),
					 errdetail("There are %d keys and %d versions.", *n, nversions)));
		if (nversions > 0)
			deconstruct_array(versions, INT8OID, sizeof(int64), FLOAT8PASSBYVAL,
							  TYPALIGN_DOUBLE, &version_datums, &version_nulls,
							  &nversions);
	}
	if (*n == 0)
		return NULL;
	deconstruct_array(keys, TEXTOID, -1, false, TYPALIGN_INT,
					  &key_datums, &key_nulls, n);

	elems = palloc(*n * sizeof(BatchElem));
	ctx->elems = elems;
	for (int i = 0; i < *n; i++)
	{
		BatchElem  *e = &elems[i];

		ctx->current = e;
		if (key_nulls[i])
			ereport(ERROR,
					(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
					 errmsg("key must not be null")));
		e->key_datum = key_datums[i];
		e->key = DatumGetTextPP(key_datums[i]);
		idem_check_key(e->key);
		e->has_version = has_versions;
		e->version = 0;
		if (has_versions)
		{
			e->has_version = !version_nulls[i];
			e->version = e->has_version ? DatumGetInt64(version_datums[i]) : 0;
			idem_check_version(req->policy, e->has_version, e->version);
		}
		memset(&e->out, 0, sizeof(IdemOutcome));
	}
	ctx->current = NULL;
	return elems;
}

PG_FUNCTION_INFO_V1(idem_claim_batch);
/*
 * idem_claim_batch(keys, versions, policy): one row per element, in input
 * order.  The elements live in the call's memory context; the rows go to a
 * tuplestore in the query's.
 */
Datum
idem_claim_batch(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	IdemRequest req;
	BatchContext ctx = {NULL, NULL};
	ErrorContextCallback errcallback;
	BatchElem  *elems;
	int			n;
	Batch		batch;
	instr_time	elapsed;
	Datum		status_names[IDEM_NSTATUSES] = {0};

	InitMaterializedSRF(fcinfo, 0);

	errcallback.callback = batch_error_context;
	errcallback.arg = &ctx;
	errcallback.previous = error_context_stack;
	error_context_stack = &errcallback;

	memset(&req, 0, sizeof(req));
	elems = batch_args(fcinfo, &req, &n, &ctx);
	req.scope = idem_current_scope();
	req.stmt = NULL;
	req.fingerprint = 0;
	if (n == 0)
	{
		error_context_stack = errcallback.previous;
		return (Datum) 0;
	}

	batch.req = &req;
	batch.elems = elems;
	batch.n = n;
	batch.ctx = &ctx;
	elapsed = idem_stats_run(req.scope, req.policy, claim_batch, &batch);
	if (idem_stats_enabled)
	{
		instr_time	none;

		/* each element is a call; the batch's time is counted once */
		INSTR_TIME_SET_ZERO(none);
		for (int i = 0; i < n; i++)
			idem_stats_count(req.scope, req.policy, elems[i].out.status,
							 i == 0 ? elapsed : none);
	}
	error_context_stack = errcallback.previous;

	for (int i = 0; i < n; i++)
	{
		IdemOutcome *out = &elems[i].out;
		Datum		values[NCOLUMNS];
		bool		nulls[NCOLUMNS] = {0};

		if (status_names[out->status] == (Datum) 0)
			status_names[out->status] = CStringGetTextDatum(idem_status_name(out->status));
		values[0] = Int32GetDatum(i + 1);
		values[1] = elems[i].key_datum;
		values[2] = status_names[out->status];
		values[3] = BoolGetDatum(out->status == IDEM_APPLIED);
		values[4] = Int64GetDatum(out->version);
		nulls[4] = !out->has_version;
		values[5] = Int64GetDatum(out->previous_version);
		nulls[5] = !out->has_previous;
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
	}
	return (Datum) 0;
}
