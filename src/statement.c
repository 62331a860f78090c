/*
 * statement.c
 *	  The caller's statement: a plan prepared once per backend and reused,
 *	  execution through SPI as the calling role, the returned rows as jsonb,
 *	  and the fingerprint that tells a true duplicate from a reused key.
 *
 * Plans are kept in a per-backend hash table keyed by the statement text and
 * the argument types; the plan cache revalidates them when the tables they
 * use change, or when search_path or the role changes what they mean.
 */
#include "postgres.h"

#include "catalog/pg_type.h"
#include "common/hashfn.h"
#include "executor/spi.h"
#include "funcapi.h"
#include "lib/stringinfo.h"
#include "nodes/params.h"
#include "nodes/parsenodes.h"
#include "parser/parse_param.h"
#include "parser/parser.h"
#include "tcop/utility.h"
#include "tcop/cmdtag.h"
#include "utils/builtins.h"
#include "utils/fmgrprotos.h"
#include "utils/hsearch.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/inval.h"
#include "utils/syscache.h"
#include "utils/typcache.h"

#include "statement.h"

/*
 * Distinct statements whose plans one backend keeps; a new one beyond that
 * replaces the least recently used.
 */
#define PLAN_CACHE_SIZE 1024

/* A prepared statement and its parameter types as the parser resolved them. */
typedef struct Prepared
{
	SPIPlanPtr	plan;
	Oid		   *arg_types;		/* the arguments' types, unknown for literals */
	int			nargs;
	Oid		   *param_types;	/* as resolved by the latest parse */
	int			nparams;
} Prepared;

/* Parameters handed to the executor, converted when it fetches them. */
typedef struct BoundParams
{
	const IdemStatement *stmt;
	const Prepared *prepared;
	MemoryContext cxt;			/* where converted values are made */
} BoundParams;

typedef struct PlanEntry
{
	uint64		hash;			/* hash key: statement text and argument types */
	char	   *sql;
	int			sql_len;
	uint64		last_used;		/* plan_clock at its latest lookup */
	int			running;		/* executions under way (nested calls): kept */
	Prepared	prepared;		/* with the argument types the entry is for */
} PlanEntry;

static HTAB *plan_cache = NULL;
static uint64 plan_clock = 0;

/* size: of the jsonb, or (as_text) of its text so far, already too large */
static void
result_too_large(Size size, bool as_text)
{
	ereport(ERROR,
			(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
			 errmsg("result of the statement is too large to store"),
			 as_text ?
			 errdetail("Its text takes more than %zu bytes; the limit is %d bytes of jsonb.",
					   size, idem_max_result_bytes) :
			 errdetail("It takes %zu bytes as jsonb; the limit is %d bytes.",
					   size, idem_max_result_bytes),
			 errhint("Return fewer rows or columns, or raise idempotent.max_result_bytes.")));
}

static uint64
plan_hash(const IdemStatement *stmt)
{
	uint64		hash = hash_bytes_extended((const unsigned char *) VARDATA_ANY(stmt->sql),
										   VARSIZE_ANY_EXHDR(stmt->sql), stmt->nargs);

	for (int i = 0; i < stmt->nargs; i++)
		hash = hash_combine64(hash, stmt->types[i]);
	return hash;
}

static PlanEntry *
plan_lookup(const IdemStatement *stmt)
{
	PlanEntry  *entry;

	if (plan_cache == NULL)
		return NULL;
	entry = hash_search(plan_cache, &stmt->plan_hash, HASH_FIND, NULL);
	if (entry == NULL ||
		entry->prepared.nargs != stmt->nargs ||
		entry->sql_len != VARSIZE_ANY_EXHDR(stmt->sql) ||
		memcmp(entry->sql, VARDATA_ANY(stmt->sql), entry->sql_len) != 0 ||
		(stmt->nargs > 0 &&
		 memcmp(entry->prepared.arg_types, stmt->types, stmt->nargs * sizeof(Oid)) != 0))
		return NULL;
	entry->last_used = ++plan_clock;
	return entry;
}

/*
 * Make room for a new statement: forget the least recently used one that is
 * not being executed.  False if every one is (a thousand nested calls).
 */
static bool
evict_least_recent(void)
{
	HASH_SEQ_STATUS seq;
	PlanEntry  *entry;
	PlanEntry  *victim = NULL;

	hash_seq_init(&seq, plan_cache);
	while ((entry = (PlanEntry *) hash_seq_search(&seq)) != NULL)
		if (entry->running == 0 &&
			(victim == NULL || entry->last_used < victim->last_used))
			victim = entry;
	if (victim == NULL)
		return false;
	if (victim->prepared.plan != NULL)
		SPI_freeplan(victim->prepared.plan);
	pfree(victim->prepared.arg_types);
	pfree(victim->prepared.param_types);
	pfree(victim->sql);
	hash_search(plan_cache, &victim->hash, HASH_REMOVE, NULL);
	return true;
}

/* Point a syntax error at the statement's text, not at the calling query. */
static void
syntax_error_context(void *arg)
{
	const char *sql = (const char *) arg;
	int			position = geterrposition();

	if (position > 0)
	{
		errposition(0);
		internalerrposition(position);
		internalerrquery(sql);
	}
	else
		errcontext("SQL statement \"%s\"", sql);
}

/*
 * The statement must be one command that runs inside the caller's
 * transaction.  Checked on the raw parse tree only: a duplicate must not
 * fail because a table its statement names has since been renamed.
 */
static void
check_syntax(const IdemStatement *stmt)
{
	char	   *sql = text_to_cstring(stmt->sql);
	ErrorContextCallback context;
	List	   *commands;
	Node	   *command;

	context.callback = syntax_error_context;
	context.arg = sql;
	context.previous = error_context_stack;
	error_context_stack = &context;
	commands = raw_parser(sql, RAW_PARSE_DEFAULT);
	error_context_stack = context.previous;

	if (commands == NIL)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("statement must not be empty")));
	if (list_length(commands) > 1)
		ereport(ERROR,
				(errcode(ERRCODE_SYNTAX_ERROR),
				 errmsg("statement must be a single SQL command"),
				 errdetail_plural("The string holds %d command.",
								  "The string holds %d commands.",
								  list_length(commands), list_length(commands))));

	command = linitial_node(RawStmt, commands)->stmt;
	if (IsA(command, TransactionStmt))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_TRANSACTION_TERMINATION),
				 errmsg("transaction control is not allowed in the statement"),
				 errdetail("The statement runs in the caller's transaction, which commits or rolls back the key with it.")));
	if ((IsA(command, SelectStmt) && ((SelectStmt *) command)->intoClause == NULL) ||
		IsA(command, InsertStmt) || IsA(command, UpdateStmt) ||
		IsA(command, DeleteStmt) || IsA(command, MergeStmt) ||
		IsA(command, CallStmt))
		return;
	ereport(ERROR,
			(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
			 errmsg("%s is not allowed as the statement",
					GetCommandTagName(CreateCommandTag(command))),
			 errdetail("The statement must be a SELECT, INSERT, UPDATE, DELETE, MERGE or CALL.")));
}

/*
 * Parse with variable parameters: typed arguments keep their types, and
 * untyped literals (type unknown) take the type their context gives them,
 * as they would written into the statement.  Every parse, including a replan
 * after search_path or a table changed, resolves them afresh.
 */
static void
parser_setup(struct ParseState *pstate, void *arg)
{
	Prepared   *prepared = (Prepared *) arg;

	prepared->nparams = prepared->nargs;
	if (prepared->nargs > 0)
		memcpy(prepared->param_types, prepared->arg_types,
			   prepared->nargs * sizeof(Oid));
	setup_parse_variable_parameters(pstate, &prepared->param_types,
									&prepared->nparams);
}

/* Arrays for the parameter types of stmt, allocated in cxt. */
static void
init_prepared(const IdemStatement *stmt, Prepared *prepared, MemoryContext cxt)
{
	Size		size = Max(stmt->nargs, 1) * sizeof(Oid);

	prepared->plan = NULL;
	prepared->nargs = stmt->nargs;
	prepared->arg_types = MemoryContextAlloc(cxt, size);
	prepared->param_types = MemoryContextAlloc(cxt, size);
	if (stmt->nargs > 0)
		memcpy(prepared->arg_types, stmt->types, stmt->nargs * sizeof(Oid));
}

/* Prepare the statement into *prepared; call within an SPI connection. */
static void
prepare(const IdemStatement *stmt, Prepared *prepared)
{
	SPIPrepareOptions options;
	SPIPlanPtr	plan;

	memset(&options, 0, sizeof(options));
	options.parserSetup = parser_setup;
	options.parserSetupArg = prepared;
	options.parseMode = RAW_PARSE_DEFAULT;
	plan = SPI_prepare_extended(text_to_cstring(stmt->sql), &options);
	if (plan == NULL)
		elog(ERROR, "SPI_prepare_extended failed: %s", SPI_result_code_string(SPI_result));
	if (prepared->nparams > stmt->nargs)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_PARAMETER),
				 errmsg("there is no parameter $%d", prepared->nparams),
				 errdetail_plural("The statement uses $%d, but %d argument was given.",
								  "The statement uses $%d, but %d arguments were given.",
								  stmt->nargs, prepared->nparams, stmt->nargs)));
	prepared->plan = plan;
}

/*
 * Remember a statement that passed check_syntax(), making room if the cache
 * is full; its plan is made the first time the statement applies.  Returns
 * its entry, or NULL if it is to be planned per call.
 */
static PlanEntry *
remember(const IdemStatement *stmt)
{
	PlanEntry	filled;
	PlanEntry  *entry;

	if (plan_cache == NULL)
	{
		HASHCTL		ctl;

		ctl.keysize = sizeof(uint64);
		ctl.entrysize = sizeof(PlanEntry);
		plan_cache = hash_create("idempotent plans", 64, &ctl,
								 HASH_ELEM | HASH_BLOBS);
	}
	/* Another statement with the same hash: check and plan this one per call. */
	if (hash_search(plan_cache, &stmt->plan_hash, HASH_FIND, NULL) != NULL)
		return NULL;
	if (hash_get_num_entries(plan_cache) >= PLAN_CACHE_SIZE && !evict_least_recent())
		return NULL;

	/* Fill it completely before it becomes visible. */
	filled.hash = stmt->plan_hash;
	filled.last_used = ++plan_clock;
	filled.running = 0;
	filled.sql_len = VARSIZE_ANY_EXHDR(stmt->sql);
	filled.sql = MemoryContextAlloc(TopMemoryContext, filled.sql_len);
	memcpy(filled.sql, VARDATA_ANY(stmt->sql), filled.sql_len);
	init_prepared(stmt, &filled.prepared, TopMemoryContext);

	entry = hash_search(plan_cache, &stmt->plan_hash, HASH_ENTER, NULL);
	*entry = filled;
	return entry;
}

/*
 * Check the statement before anything is decided, so that bad input is
 * reported on every path, duplicates included, and find its cache entry.
 * The entry stays until statement_run(): only another statement's check
 * can evict it, and none runs in between.
 */
void
statement_check(IdemStatement *stmt)
{
	stmt->plan_hash = plan_hash(stmt);
	stmt->cached = plan_lookup(stmt);
	if (stmt->cached != NULL)
		return;
	check_syntax(stmt);
	stmt->cached = remember(stmt);
}

/*
 * The executor fetches parameters through this hook, after any replan, so an
 * untyped literal is converted from its text to the type the latest parse
 * resolved for it.  The value is made in the SPI connection's memory, which
 * lasts as long as the execution.
 */
static ParamExternData *
fetch_param(ParamListInfo params, int paramid, bool speculative,
			ParamExternData *workspace)
{
	BoundParams *bound = (BoundParams *) params->paramFetchArg;
	ParamExternData *param = &params->params[paramid - 1];
	Oid			type = bound->prepared->param_types[paramid - 1];

	if (param->ptype != type && !param->isnull && type != UNKNOWNOID)
	{
		Oid			input;
		Oid			ioparam;
		MemoryContext old;

		/* The planner asks speculatively; it must not see a conversion error. */
		if (speculative)
		{
			workspace->ptype = InvalidOid;
			workspace->isnull = true;
			workspace->value = (Datum) 0;
			workspace->pflags = 0;
			return workspace;
		}
		getTypeInputInfo(type, &input, &ioparam);
		old = MemoryContextSwitchTo(bound->cxt);
		param->value = OidInputFunctionCall(input,
											DatumGetCString(bound->stmt->values[paramid - 1]),
											ioparam, -1);
		MemoryContextSwitchTo(old);
	}
	param->ptype = type;
	return param;
}

/* The arguments as the plan's parameters; call within the SPI connection. */
static ParamListInfo
bind_params(const IdemStatement *stmt, const Prepared *prepared)
{
	ParamListInfo params = makeParamList(stmt->nargs);
	bool		literals = false;

	for (int i = 0; i < stmt->nargs; i++)
	{
		ParamExternData *param = &params->params[i];

		param->isnull = (stmt->nulls[i] == 'n');
		param->pflags = PARAM_FLAG_CONST;
		param->ptype = stmt->types[i];
		param->value = stmt->values[i];
		literals |= (stmt->types[i] == UNKNOWNOID);
	}
	if (literals)
	{
		BoundParams *bound = palloc(sizeof(BoundParams));

		bound->stmt = stmt;
		bound->prepared = prepared;
		bound->cxt = CurrentMemoryContext;
		params->paramFetch = fetch_param;
		params->paramFetchArg = bound;
	}
	return params;
}

/*
 * Rows returned by the statement as a jsonb array of objects, copied into
 * context cxt.  A result over the limit is refused as soon as its text shows
 * it cannot fit.
 */
static Jsonb *
rows_to_jsonb(SPITupleTable *tuptable, uint64 nrows, MemoryContext cxt)
{
	TupleDesc	desc = BlessTupleDesc(tuptable->tupdesc);
	StringInfoData buf;
	Jsonb	   *result;
	Jsonb	   *copy;

	initStringInfo(&buf);
	appendStringInfoChar(&buf, '[');
	for (uint64 i = 0; i < nrows; i++)
	{
		Datum		record = heap_copy_tuple_as_datum(tuptable->vals[i], desc);
		text	   *json = DatumGetTextPP(DirectFunctionCall1(row_to_json, record));

		if (i > 0)
			appendStringInfoChar(&buf, ',');
		appendBinaryStringInfo(&buf, VARDATA_ANY(json), VARSIZE_ANY_EXHDR(json));
		if ((Size) buf.len > (Size) idem_max_result_bytes * 4)
			result_too_large(buf.len, true);
	}
	appendStringInfoChar(&buf, ']');

	result = DatumGetJsonbP(DirectFunctionCall1(jsonb_in, CStringGetDatum(buf.data)));
	if (VARSIZE(result) > idem_max_result_bytes)
		result_too_large(VARSIZE(result), false);
	copy = MemoryContextAlloc(cxt, VARSIZE(result));
	memcpy(copy, result, VARSIZE(result));
	return copy;
}

/* Run the statement as the calling role; its rows and result for the ledger. */
void
statement_run(const IdemStatement *stmt, int64 *rows, Jsonb **result)
{
	MemoryContext caller = CurrentMemoryContext;
	PlanEntry  *entry;
	Prepared   *prepared;
	int			rc;

	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	entry = stmt->cached;
	if (entry != NULL)
	{
		prepared = &entry->prepared;
		if (prepared->plan == NULL)
		{
			prepare(stmt, prepared);
			SPI_keepplan(prepared->plan);
		}
	}
	else
	{
		/* not remembered (a hash collision, or a cache of running plans) */
		prepared = palloc(sizeof(Prepared));
		init_prepared(stmt, prepared, CurrentMemoryContext);
		prepare(stmt, prepared);
	}

	/* A call nested in the statement must not evict the plan it runs. */
	if (entry != NULL)
		entry->running++;
	PG_TRY();
	{
		rc = SPI_execute_plan_with_paramlist(prepared->plan, bind_params(stmt, prepared),
											 false, 0);
		if (rc < 0)
			elog(ERROR, "SPI_execute_plan_with_paramlist failed: %s",
				 SPI_result_code_string(rc));
	}
	PG_FINALLY();
	{
		if (entry != NULL)
			entry->running--;
	}
	PG_END_TRY();

	*rows = (int64) SPI_processed;
	*result = NULL;
	if (SPI_tuptable != NULL && SPI_processed > 0)
		*result = rows_to_jsonb(SPI_tuptable, SPI_processed, caller);
	SPI_finish();
}

/* How to hash one type's values; looked up once per type and backend. */
typedef struct TypeHashInfo
{
	Oid			type;			/* hash key */
	int16		typlen;
	bool		byval;
	bool		by_text;		/* hash the output text, not the bytes */
	Oid			output;
} TypeHashInfo;

static HTAB *type_hash_cache = NULL;
static bool type_callback_registered = false;

/* A type changed or was dropped: its OID may come back as another type. */
static void
type_hash_cache_reset(Datum arg, int cacheid, uint32 hashvalue)
{
	if (type_hash_cache != NULL)
	{
		hash_destroy(type_hash_cache);
		type_hash_cache = NULL;
	}
}

static const TypeHashInfo *
type_hash_info(Oid type)
{
	TypeHashInfo info;
	TypeHashInfo *entry;
	Oid			elemtype;

	if (type_hash_cache == NULL)
	{
		HASHCTL		ctl;

		ctl.keysize = sizeof(Oid);
		ctl.entrysize = sizeof(TypeHashInfo);
		type_hash_cache = hash_create("idempotent argument types", 32, &ctl,
									  HASH_ELEM | HASH_BLOBS);
		if (!type_callback_registered)
		{
			CacheRegisterSyscacheCallback(TYPEOID, type_hash_cache_reset, (Datum) 0);
			type_callback_registered = true;
		}
	}
	entry = hash_search(type_hash_cache, &type, HASH_FIND, NULL);
	if (entry != NULL)
		return entry;

	/*
	 * Composite values carry a per-session record type id and keep their
	 * fields' storage (compressed or not) in their bytes: equal values can
	 * differ byte for byte, so those are hashed by their text.
	 */
	info.type = type;
	get_typlenbyval(type, &info.typlen, &info.byval);
	elemtype = get_element_type(type);
	info.by_text = type_is_rowtype(type) ||
		(OidIsValid(elemtype) && type_is_rowtype(elemtype));
	info.output = InvalidOid;
	if (info.by_text)
	{
		bool		isvarlena;

		getTypeOutputInfo(type, &info.output, &isvarlena);
	}

	entry = hash_search(type_hash_cache, &type, HASH_ENTER, NULL);
	*entry = info;
	return entry;
}

static uint64
hash_text(const char *str)
{
	return hash_bytes_extended((const unsigned char *) str, strlen(str), 0);
}

/* Hash of one argument's value, equal for equal requests in any session. */
static uint64
hash_value(Datum value, Oid type)
{
	const TypeHashInfo *info = type_hash_info(type);
	int64		scalar;

	if (info->by_text)
		return hash_text(OidOutputFunctionCall(info->output, value));
	if (info->byval)
	{
		switch (info->typlen)
		{
			case 1:
				scalar = DatumGetChar(value);
				break;
			case 2:
				scalar = DatumGetInt16(value);
				break;
			case 4:
				scalar = DatumGetInt32(value);
				break;
			default:
				scalar = DatumGetInt64(value);
				break;
		}
		return hash_bytes_uint32_extended((uint32) scalar, (uint64) (scalar >> 32));
	}
	if (info->typlen == -1)
	{
		struct varlena *v = PG_DETOAST_DATUM_PACKED(value);

		return hash_bytes_extended((const unsigned char *) VARDATA_ANY(v),
								   VARSIZE_ANY_EXHDR(v), 0);
	}
	if (info->typlen == -2)
		return hash_text(DatumGetCString(value));
	return hash_bytes_extended((const unsigned char *) DatumGetPointer(value),
							   info->typlen, 0);
}

/*
 * Fingerprint of the request: statement text and argument types (the plan
 * hash statement_check() computed already covers them) and argument values.
 */
int64
statement_fingerprint(const IdemStatement *stmt)
{
	uint64		hash = stmt->plan_hash;

	for (int i = 0; i < stmt->nargs; i++)
		hash = hash_combine64(hash, stmt->nulls[i] == 'n' ? UINT64CONST(0x9E3779B97F4A7C15) :
							  hash_value(stmt->values[i], stmt->types[i]));
	return (int64) hash;
}
