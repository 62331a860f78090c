/*
 * idempotent.c
 *	  Module entry, and the SQL-callable functions idem_apply,
 *	  idem_apply_next, idem_upsert and idem_claim.
 *
 * Each function checks its arguments, builds a request and hands it to
 * idem_execute() (apply.c); the outcome comes back as an idem_outcome row.
 */
#include "postgres.h"

#include "fmgr.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/lsyscache.h"

#include "key_locks.h"
#include "statement.h"
#include "stats.h"
#include "worker.h"

PG_MODULE_MAGIC;

void		_PG_init(void);

/* Arguments of idem_apply and its siblings: key, version, statement, args... */
#define ARG_KEY			0
#define ARG_VERSION		1
#define ARG_STATEMENT	2
#define ARG_FIRST_PARAM 3

void
_PG_init(void)
{
	idem_define_settings();

	if (process_shared_preload_libraries_in_progress)
	{
		/* no purging while pg_upgrade dumps and restores the databases */
		if (!IsBinaryUpgrade)
			idem_register_purge_launcher();
		idem_stats_init();
		idem_key_locks_init();
	}
}

/* The key argument (the first), checked: not NULL, not empty, not too long. */
text *
idem_key_arg(FunctionCallInfo fcinfo)
{
	text	   *key;

	if (PG_ARGISNULL(ARG_KEY))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("key must not be null")));
	key = PG_GETARG_TEXT_PP(ARG_KEY);
	idem_check_key(key);
	return key;
}

/* Refuse an empty key or one longer than idempotent.max_key_bytes. */
void
idem_check_key(text *key)
{
	int			len = VARSIZE_ANY_EXHDR(key);

	if (len == 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("key must not be empty")));
	if (len > idem_max_key_bytes)
		ereport(ERROR,
				(errcode(ERRCODE_STRING_DATA_RIGHT_TRUNCATION),
				 errmsg("key is too long"),
				 errdetail("The key is %d bytes; the limit is %d bytes.",
						   len, idem_max_key_bytes),
				 errhint("Use a shorter key, such as a hash of the business key, or raise idempotent.max_key_bytes.")));
}

/* Refuse a version the policy does not take, or lacks, or a negative one. */
void
idem_check_version(IdemPolicy policy, bool has_version, int64 version)
{
	bool		takes_version = idem_policy_takes_version(policy);

	if (!takes_version && has_version)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("policy \"%s\" takes no version", idem_policy_name(policy)),
				 errhint("Pass NULL as the version, or use policy \"newer\".")));
	if (takes_version && !has_version)
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("version must not be null for policy \"%s\"",
						idem_policy_name(policy))));
	if (version < 0)
		ereport(ERROR,
				(errcode(ERRCODE_NUMERIC_VALUE_OUT_OF_RANGE),
				 errmsg("version must not be negative"),
				 errdetail("The version given is " INT64_FORMAT ".", version)));
}

/* Read the version argument and check it against the policy. */
static void
get_version(FunctionCallInfo fcinfo, IdemRequest *req)
{
	req->has_version = !PG_ARGISNULL(ARG_VERSION);
	req->version = req->has_version ? PG_GETARG_INT64(ARG_VERSION) : 0;
	idem_check_version(req->policy, req->has_version, req->version);
}

/*
 * Collect $1..$n from the VARIADIC "any" arguments, or from the elements of
 * an array passed with VARIADIC.  Untyped literals keep type unknown, so the
 * statement's context decides their type as it would for a literal.
 */
static void
get_params(FunctionCallInfo fcinfo, IdemStatement *stmt)
{
	int			first = ARG_FIRST_PARAM;
	int			n = PG_NARGS() - first;

	stmt->nargs = 0;
	stmt->types = NULL;
	stmt->values = NULL;
	stmt->nulls = NULL;
	if (n <= 0)
		return;

	if (get_fn_expr_variadic(fcinfo->flinfo))
	{
		ArrayType  *array;
		Oid			elemtype;
		int16		typlen;
		bool		byval;
		char		align;
		bool	   *isnull;

		if (PG_ARGISNULL(first))
			return;				/* VARIADIC NULL: no parameters */
		array = PG_GETARG_ARRAYTYPE_P(first);
		elemtype = ARR_ELEMTYPE(array);
		get_typlenbyvalalign(elemtype, &typlen, &byval, &align);
		deconstruct_array(array, elemtype, typlen, byval, align,
						  &stmt->values, &isnull, &stmt->nargs);
		stmt->types = palloc(stmt->nargs * sizeof(Oid));
		stmt->nulls = palloc(stmt->nargs);
		for (int i = 0; i < stmt->nargs; i++)
		{
			stmt->types[i] = elemtype;
			stmt->nulls[i] = isnull[i] ? 'n' : ' ';
		}
		return;
	}

	stmt->nargs = n;
	stmt->types = palloc(n * sizeof(Oid));
	stmt->values = palloc(n * sizeof(Datum));
	stmt->nulls = palloc(n);
	for (int i = 0; i < n; i++)
	{
		Oid			type = get_fn_expr_argtype(fcinfo->flinfo, first + i);

		if (!OidIsValid(type))
			elog(ERROR, "could not determine the type of argument %d", first + i + 1);
		stmt->types[i] = type;
		stmt->nulls[i] = PG_ARGISNULL(first + i) ? 'n' : ' ';
		stmt->values[i] = PG_ARGISNULL(first + i) ? (Datum) 0 : PG_GETARG_DATUM(first + i);
	}
}

static IdemStatement *
get_statement(FunctionCallInfo fcinfo)
{
	IdemStatement *stmt;

	if (PG_ARGISNULL(ARG_STATEMENT))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("statement must not be null")));
	stmt = palloc(sizeof(IdemStatement));
	stmt->sql = PG_GETARG_TEXT_PP(ARG_STATEMENT);
	get_params(fcinfo, stmt);
	statement_check(stmt);
	return stmt;
}


/*
 * The row type a function returns, looked up once per call site and kept in
 * fn_extra (the call site's memory).  For idem_outcome and idem_lease rows.
 */
TupleDesc
idem_result_desc(FunctionCallInfo fcinfo)
{
	TupleDesc	desc = (TupleDesc) fcinfo->flinfo->fn_extra;

	if (desc == NULL)
	{
		MemoryContext old = MemoryContextSwitchTo(fcinfo->flinfo->fn_mcxt);

		if (get_call_result_type(fcinfo, NULL, &desc) != TYPEFUNC_COMPOSITE)
			elog(ERROR, "return type must be a row type");
		desc = BlessTupleDesc(CreateTupleDescCopy(desc));
		fcinfo->flinfo->fn_extra = desc;
		MemoryContextSwitchTo(old);
	}
	return desc;
}

/* idem_execute() for idem_stats_run() */
typedef struct ExecuteArgs
{
	const IdemRequest *req;
	IdemOutcome *out;
} ExecuteArgs;

static void
execute(void *arg)
{
	ExecuteArgs *run = (ExecuteArgs *) arg;

	idem_execute(run->req, run->out);
}

/* Execute the request and return its outcome as an idem_outcome row. */
static Datum
run_request(FunctionCallInfo fcinfo, IdemRequest *req)
{
	IdemOutcome out;
	ExecuteArgs run;
	instr_time	elapsed;
	TupleDesc	desc;
	Datum		values[6];
	bool		nulls[6];

	desc = idem_result_desc(fcinfo);

	if (req->stmt != NULL)
		req->fingerprint = statement_fingerprint(req->stmt);
	run.req = req;
	run.out = &out;
	elapsed = idem_stats_run(req->scope, req->policy, execute, &run);
	if (idem_stats_enabled)
		idem_stats_count(req->scope, req->policy, out.status, elapsed);

	values[0] = CStringGetTextDatum(idem_status_name(out.status));
	nulls[0] = false;
	values[1] = BoolGetDatum(out.status == IDEM_APPLIED);
	nulls[1] = false;
	values[2] = Int64GetDatum(out.version);
	nulls[2] = !out.has_version;
	values[3] = Int64GetDatum(out.previous_version);
	nulls[3] = !out.has_previous;
	values[4] = Int64GetDatum(out.rows);
	nulls[4] = !out.has_rows;
	values[5] = PointerGetDatum(out.result);
	nulls[5] = (out.result == NULL);

	PG_RETURN_DATUM(HeapTupleGetDatum(heap_form_tuple(desc, values, nulls)));
}

/* Arguments common to the statement-running functions. */
static Datum
apply_with_policy(FunctionCallInfo fcinfo, IdemPolicy policy)
{
	IdemRequest req;

	req.key = idem_key_arg(fcinfo);
	req.scope = idem_current_scope();
	req.policy = policy;
	get_version(fcinfo, &req);
	req.stmt = get_statement(fcinfo);
	return run_request(fcinfo, &req);
}

PG_FUNCTION_INFO_V1(idem_apply);
/* idem_apply: policy once when the version is NULL, newer otherwise */
Datum
idem_apply(PG_FUNCTION_ARGS)
{
	return apply_with_policy(fcinfo, PG_ARGISNULL(ARG_VERSION) ? IDEM_ONCE : IDEM_NEWER);
}

PG_FUNCTION_INFO_V1(idem_apply_next);
Datum
idem_apply_next(PG_FUNCTION_ARGS)
{
	return apply_with_policy(fcinfo, IDEM_NEXT);
}

PG_FUNCTION_INFO_V1(idem_upsert);
Datum
idem_upsert(PG_FUNCTION_ARGS)
{
	return apply_with_policy(fcinfo, IDEM_UPSERT);
}


PG_FUNCTION_INFO_V1(idem_claim);
/* idem_claim(key, version, policy): record the key without a statement */
Datum
idem_claim(PG_FUNCTION_ARGS)
{
	IdemRequest req;

	req.key = idem_key_arg(fcinfo);
	req.scope = idem_current_scope();
	if (!PG_ARGISNULL(2))
		req.policy = idem_parse_policy(text_to_cstring(PG_GETARG_TEXT_PP(2)));
	else
		req.policy = PG_ARGISNULL(ARG_VERSION) ? IDEM_ONCE : IDEM_NEWER;
	get_version(fcinfo, &req);
	req.stmt = NULL;
	req.fingerprint = 0;
	return run_request(fcinfo, &req);
}
