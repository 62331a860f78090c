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
#include "common/shortest_dec.h"
#include "executor/spi.h"
#include "funcapi.h"
#include "lib/stringinfo.h"
#include "mb/pg_wchar.h"
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
#include "utils/syscache.h"
#include "utils/typcache.h"
#include "utils/json.h"
#include "utils/timestamp.h"
#include "utils/numeric.h"
#include "utils/array.h"
#include "access/htup_details.h"
#include "nodes/makefuncs.h"
#include "utils/fmgroids.h"

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

/* Whether a SELECT, or any branch of its set operations, has an INTO clause. */
static bool
select_has_into(SelectStmt *select)
{
	if (select == NULL)
		return false;
	return select->intoClause != NULL ||
		select_has_into(select->larg) || select_has_into(select->rarg);
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
	if (IsA(command, SelectStmt) && select_has_into((SelectStmt *) command))
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("SELECT INTO is not allowed as the statement"),
				 errdetail("SELECT INTO creates a table; the statement must be a SELECT, INSERT, UPDATE, DELETE, MERGE or CALL."),
				 errhint("To store rows in an existing table, use INSERT INTO ... SELECT.")));
	if (IsA(command, SelectStmt) ||
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
 * The rows a statement returns, streamed into a JSON array as the executor
 * produces them: each row an object of its columns, each value converted as
 * to_json() converts it.  Nothing is materialized and no row type is
 * registered with the backend, whatever the result's shape; a result is
 * refused as soon as its text shows it cannot fit idempotent.max_result_bytes.
 * The text is kept in the caller's memory context; each row's conversions
 * are made in a context reset after the row.
 */
typedef struct ResultReceiver
{
	DestReceiver pub;
	StringInfoData buf;			/* "[{...},{...}" so far */
	uint64		nrows;
	int			ncolumns;
	AttrNumber *attnums;		/* columns shown (not dropped) */
	char	  **names;			/* their names, as JSON strings followed by ':' */
	FmgrInfo   *to_json;		/* to_json() bound to each column's type */
	MemoryContext cxt;			/* the caller's: buf, and the above */
	MemoryContext row_cxt;
} ResultReceiver;

/* Set up the conversion of each column of the result. */
static void
result_startup(DestReceiver *self, int operation, TupleDesc desc)
{
	ResultReceiver *r = (ResultReceiver *) self;
	MemoryContext old = MemoryContextSwitchTo(r->cxt);

	r->ncolumns = 0;
	r->attnums = palloc(Max(desc->natts, 1) * sizeof(AttrNumber));
	r->names = palloc(Max(desc->natts, 1) * sizeof(char *));
	r->to_json = palloc(Max(desc->natts, 1) * sizeof(FmgrInfo));
	for (int i = 0; i < desc->natts; i++)
	{
		Form_pg_attribute att = TupleDescAttr(desc, i);
		StringInfoData name;
		FuncExpr   *call;

		if (att->attisdropped)
			continue;
		initStringInfo(&name);
		escape_json(&name, NameStr(att->attname));
		appendStringInfoChar(&name, ':');
		r->names[r->ncolumns] = name.data;
		r->attnums[r->ncolumns] = att->attnum;
		/* to_json() finds its argument's type in the call expression */
		call = makeFuncExpr(F_TO_JSON, JSONOID,
							list_make1(makeNullConst(att->atttypid, att->atttypmod,
													 att->attcollation)),
							InvalidOid, InvalidOid, COERCE_EXPLICIT_CALL);
		fmgr_info_cxt(F_TO_JSON, &r->to_json[r->ncolumns], r->cxt);
		fmgr_info_set_expr((Node *) call, &r->to_json[r->ncolumns]);
		r->ncolumns++;
	}
	MemoryContextSwitchTo(old);
}

/*
 * The longest text a result may reach while its rows stream in, before the
 * jsonb's size decides: text is at most a few times its jsonb (escapes take
 * six bytes for one), but a number's digits can take far more than its
 * jsonb form, hence the fixed slack.  It bounds the memory a result takes
 * before it is refused.
 */
static Size
result_text_cap(void)
{
	return (Size) idem_max_result_bytes * 6 + 1024 * 1024;
}

/* Append one row to the array; refuse the result once it is too large. */
static bool
result_receive(TupleTableSlot *slot, DestReceiver *self)
{
	ResultReceiver *r = (ResultReceiver *) self;
	MemoryContext old = MemoryContextSwitchTo(r->row_cxt);

	slot_getallattrs(slot);
	appendStringInfoChar(&r->buf, r->nrows == 0 ? '[' : ',');
	appendStringInfoChar(&r->buf, '{');
	for (int c = 0; c < r->ncolumns; c++)
	{
		int			i = r->attnums[c] - 1;

		if (c > 0)
			appendStringInfoChar(&r->buf, ',');
		appendStringInfoString(&r->buf, r->names[c]);
		if (slot->tts_isnull[i])
			appendStringInfoString(&r->buf, "null");
		else
		{
			text	   *json = DatumGetTextPP(FunctionCall1(&r->to_json[c],
															slot->tts_values[i]));

			appendBinaryStringInfo(&r->buf, VARDATA_ANY(json), VARSIZE_ANY_EXHDR(json));
		}
	}
	appendStringInfoChar(&r->buf, '}');
	r->nrows++;
	MemoryContextSwitchTo(old);
	MemoryContextReset(r->row_cxt);
	if ((Size) r->buf.len > result_text_cap())
		result_too_large(r->buf.len, true);
	return true;
}

static void
result_shutdown(DestReceiver *self)
{
}

static void
result_destroy(DestReceiver *self)
{
}

static void
result_receiver_init(ResultReceiver *r, MemoryContext cxt)
{
	memset(r, 0, sizeof(ResultReceiver));
	r->pub.receiveSlot = result_receive;
	r->pub.rStartup = result_startup;
	r->pub.rShutdown = result_shutdown;
	r->pub.rDestroy = result_destroy;
	r->pub.mydest = DestNone;
	r->cxt = cxt;
	r->row_cxt = AllocSetContextCreate(CurrentMemoryContext, "idempotent result row",
									   ALLOCSET_SMALL_SIZES);
	r->buf.data = MemoryContextAlloc(cxt, 1024);
	r->buf.maxlen = 1024;
	resetStringInfo(&r->buf);
}

/*
 * jsonb cannot hold U+0000, which a json value may: keep such a character as
 * the six characters \u0000 (an escaped backslash), so that the result is
 * stored rather than refused after the statement ran.  Escapes are followed
 * from the start of the text, so an escaped backslash before "u0000" is left
 * alone.  Returns the text to parse.
 */
static char *
escape_nul_characters(char *json)
{
	StringInfoData out;
	bool		in_string = false;

	if (strstr(json, "\\u0000") == NULL)
		return json;
	initStringInfo(&out);
	for (char *p = json; *p != '\0'; p++)
	{
		if (in_string && *p == '\\')
		{
			if (strncmp(p + 1, "u0000", 5) == 0)
				appendStringInfoChar(&out, '\\');
			appendStringInfoChar(&out, *p++);
			if (*p == '\0')
				break;
		}
		else if (*p == '"')
			in_string = !in_string;
		appendStringInfoChar(&out, *p);
	}
	return out.data;
}

/* The jsonb of the rows received, in context r->cxt; NULL when there were none. */
static Jsonb *
result_jsonb(ResultReceiver *r)
{
	Jsonb	   *result;
	Jsonb	   *copy;

	if (r->nrows == 0)
		return NULL;
	appendStringInfoChar(&r->buf, ']');
	result = DatumGetJsonbP(DirectFunctionCall1(jsonb_in,
												CStringGetDatum(escape_nul_characters(r->buf.data))));
	if (VARSIZE(result) > idem_max_result_bytes)
		result_too_large(VARSIZE(result), false);
	copy = MemoryContextAlloc(r->cxt, VARSIZE(result));
	memcpy(copy, result, VARSIZE(result));
	return copy;
}

/*
 * Run the statement as the calling role; its rows and result for the ledger,
 * the result made in the caller's memory context.
 */
void
statement_run(const IdemStatement *stmt, int64 *rows, Jsonb **result)
{
	MemoryContext caller = CurrentMemoryContext;
	PlanEntry  *entry;
	Prepared   *prepared;
	SPIExecuteOptions options;
	ResultReceiver receiver;
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

	result_receiver_init(&receiver, caller);
	memset(&options, 0, sizeof(options));
	options.params = bind_params(stmt, prepared);
	options.dest = &receiver.pub;

	/* A call nested in the statement must not evict the plan it runs. */
	if (entry != NULL)
		entry->running++;
	PG_TRY();
	{
		rc = SPI_execute_plan_extended(prepared->plan, &options);
		if (rc < 0)
			elog(ERROR, "SPI_execute_plan_extended failed: %s",
				 SPI_result_code_string(rc));
	}
	PG_FINALLY();
	{
		if (entry != NULL)
			entry->running--;
	}
	PG_END_TRY();

	/* a CALL's output row reaches the receiver without counting as processed */
	*rows = (int64) Max(SPI_processed, receiver.nrows);
	*result = result_jsonb(&receiver);
	SPI_finish();
	pfree(receiver.buf.data);
}

/*
 * Request identity.  Two calls are the same request when their statement
 * texts are identical and their arguments are equal as values: the hash of
 * each argument depends on its value's kind (number, string, instant, row,
 * array, or another type by name) and value, never on a type OID, a session
 * setting or the client library.
 *	- numbers (int2, int4, int8, numeric, float4, float8) by their decimal
 *	  value without insignificant zeros: 25 = 25.00; a float by the shortest
 *	  decimal that reads back as it, so distinct floats stay distinct;
 *	- strings (text, varchar, char without its padding, name, an untyped
 *	  literal, an enum's label) by their bytes;
 *	- timestamptz by its instant, whatever TimeZone;
 *	- rows field by field, arrays by dimensions and elements, domains as
 *	  their base type;
 *	- any other type by its name and its binary output, with text inside it
 *	  left in the database's encoding.
 */
typedef enum ValueKind
{
	KIND_NUMBER = 1,
	KIND_STRING,
	KIND_INSTANT,
	KIND_ROW,
	KIND_ARRAY,
	KIND_OTHER,
	KIND_NULL
} ValueKind;

#define IDENTITY_SEED	UINT64CONST(0x1DE0000000000012)		/* version 1.2 */

static uint64 value_identity(Datum value, Oid type);

static uint64
hash_kind_bytes(ValueKind kind, const char *data, Size len)
{
	return hash_bytes_extended((const unsigned char *) data, len, (uint64) kind);
}

static uint64
number_identity(const char *decimal)
{
	return hash_kind_bytes(KIND_NUMBER, decimal, strlen(decimal));
}

static uint64
int_identity(int64 value)
{
	char		buf[MAXINT8LEN + 1];

	pg_lltoa(value, buf);
	return number_identity(buf);
}

/*
 * A float as the number its shortest exact decimal spells ("0.1",
 * "0.30000000000000004", "1e+300", "NaN", "-Infinity"), not rounded to 15
 * digits as float8_numeric() does: that would make distinct floats equal.
 */
static uint64
float_identity(const char *shortest)
{
	Datum		numeric = DirectFunctionCall3(numeric_in, CStringGetDatum(shortest),
											  ObjectIdGetDatum(InvalidOid),
											  Int32GetDatum(-1));

	return number_identity(numeric_normalize(DatumGetNumeric(numeric)));
}

static uint64
float4_identity(float4 value)
{
	char		buf[FLOAT_SHORTEST_DECIMAL_LEN];

	float_to_shortest_decimal_buf(value, buf);
	return float_identity(buf);
}

static uint64
float8_identity(float8 value)
{
	char		buf[DOUBLE_SHORTEST_DECIMAL_LEN];

	double_to_shortest_decimal_buf(value, buf);
	return float_identity(buf);
}

/* A row, field by field by value; dropped columns do not count. */
static uint64
row_identity(Datum value)
{
	HeapTupleHeader header = DatumGetHeapTupleHeader(value);
	TupleDesc	desc = lookup_rowtype_tupdesc(HeapTupleHeaderGetTypeId(header),
											  HeapTupleHeaderGetTypMod(header));
	HeapTupleData tuple;
	Datum	   *values = palloc(desc->natts * sizeof(Datum));
	bool	   *nulls = palloc(desc->natts * sizeof(bool));
	uint64		hash = hash_kind_bytes(KIND_ROW, NULL, 0);

	tuple.t_len = HeapTupleHeaderGetDatumLength(header);
	ItemPointerSetInvalid(&tuple.t_self);
	tuple.t_tableOid = InvalidOid;
	tuple.t_data = header;
	heap_deform_tuple(&tuple, desc, values, nulls);
	for (int i = 0; i < desc->natts; i++)
	{
		Form_pg_attribute att = TupleDescAttr(desc, i);

		if (att->attisdropped)
			continue;
		hash = hash_combine64(hash, nulls[i] ? (uint64) KIND_NULL :
							  value_identity(values[i], att->atttypid));
	}
	ReleaseTupleDesc(desc);
	pfree(values);
	pfree(nulls);
	return hash;
}

/* An array: its dimensions, lower bounds and elements by value. */
static uint64
array_identity(Datum value, TypeCacheEntry *typentry)
{
	ArrayType  *array = DatumGetArrayTypeP(value);
	Oid			elemtype = ARR_ELEMTYPE(array);
	int16		typlen;
	bool		byval;
	char		align;
	Datum	   *elems;
	bool	   *nulls;
	int			n;
	uint64		hash;

	hash = hash_kind_bytes(KIND_ARRAY, (const char *) ARR_DIMS(array),
						   ARR_NDIM(array) * sizeof(int));
	hash = hash_combine64(hash, hash_bytes_extended((const unsigned char *) ARR_LBOUND(array),
													ARR_NDIM(array) * sizeof(int), 0));
	get_typlenbyvalalign(elemtype, &typlen, &byval, &align);
	deconstruct_array(array, elemtype, typlen, byval, align, &elems, &nulls, &n);
	for (int i = 0; i < n; i++)
		hash = hash_combine64(hash, nulls[i] ? (uint64) KIND_NULL :
							  value_identity(elems[i], elemtype));
	return hash;
}

/*
 * The binary output of a value with any text in it as the database spells
 * it.  The send functions of types that hold text (jsonb, json, xml,
 * tsvector, ...) convert it to the client's encoding, a session setting (and
 * fail on a character that encoding lacks); while the value is sent, the
 * client's encoding is the database's, so nothing is converted.
 */
static bytea *
send_unconverted(Oid typsend, Datum value)
{
	int			client = pg_get_client_encoding();
	bytea	   *bytes;

	if (client == GetDatabaseEncoding())
		return OidSendFunctionCall(typsend, value);
	if (SetClientEncoding(GetDatabaseEncoding()) < 0)
		elog(ERROR, "could not switch the client encoding to the database's");
	PG_TRY();
	{
		bytes = OidSendFunctionCall(typsend, value);
	}
	PG_FINALLY();
	{
		/* the session's conversion is cached: switching back cannot fail */
		if (SetClientEncoding(client) < 0)
			elog(ERROR, "could not switch the client encoding back to %s",
				 pg_encoding_to_char(client));
	}
	PG_END_TRY();
	return bytes;
}

/* Any other type: its name and its binary output (or text, if it has none). */
static uint64
other_identity(Datum value, Oid type)
{
	HeapTuple	tuple = SearchSysCache1(TYPEOID, ObjectIdGetDatum(type));
	Form_pg_type form;
	uint64		hash;

	if (!HeapTupleIsValid(tuple))
		elog(ERROR, "cache lookup failed for type %u", type);
	form = (Form_pg_type) GETSTRUCT(tuple);
	hash = hash_kind_bytes(KIND_OTHER, NameStr(form->typname), strlen(NameStr(form->typname)));
	if (OidIsValid(form->typsend))
	{
		bytea	   *bytes = send_unconverted(form->typsend, value);

		hash = hash_combine64(hash, hash_bytes_extended((const unsigned char *) VARDATA(bytes),
														VARSIZE(bytes) - VARHDRSZ, 0));
	}
	else
	{
		char	   *str = OidOutputFunctionCall(form->typoutput, value);

		hash = hash_combine64(hash, hash_bytes_extended((const unsigned char *) str,
														strlen(str), 0));
	}
	ReleaseSysCache(tuple);
	return hash;
}

/* The identity of one non-null value of type type. */
static uint64
value_identity(Datum value, Oid type)
{
	TypeCacheEntry *typentry;

	switch (type)
	{
		case INT2OID:
			return int_identity(DatumGetInt16(value));
		case INT4OID:
			return int_identity(DatumGetInt32(value));
		case INT8OID:
			return int_identity(DatumGetInt64(value));
		case NUMERICOID:
			return number_identity(numeric_normalize(DatumGetNumeric(value)));
		case FLOAT4OID:
			return float4_identity(DatumGetFloat4(value));
		case FLOAT8OID:
			return float8_identity(DatumGetFloat8(value));
		case TEXTOID:
		case VARCHAROID:
			{
				text	   *t = DatumGetTextPP(value);

				return hash_kind_bytes(KIND_STRING, VARDATA_ANY(t), VARSIZE_ANY_EXHDR(t));
			}
		case BPCHAROID:
			{
				text	   *t = DatumGetTextPP(value);
				int			len = bpchartruelen(VARDATA_ANY(t), VARSIZE_ANY_EXHDR(t));

				return hash_kind_bytes(KIND_STRING, VARDATA_ANY(t), len);
			}
		case UNKNOWNOID:
		case CSTRINGOID:
			return hash_kind_bytes(KIND_STRING, DatumGetCString(value),
								   strlen(DatumGetCString(value)));
		case NAMEOID:
			return hash_kind_bytes(KIND_STRING, NameStr(*DatumGetName(value)),
								   strlen(NameStr(*DatumGetName(value))));
		case TIMESTAMPTZOID:
			{
				int64		instant = DatumGetTimestampTz(value);

				return hash_kind_bytes(KIND_INSTANT, (const char *) &instant, sizeof(instant));
			}
		case RECORDOID:
			return row_identity(value);
	}

	/* typcache entries live as long as the backend: safe across invalidations */
	typentry = lookup_type_cache(type, TYPECACHE_DOMAIN_BASE_INFO);
	if (typentry->typtype == TYPTYPE_DOMAIN)
		return value_identity(value, typentry->domainBaseType);
	if (typentry->typtype == TYPTYPE_COMPOSITE)
		return row_identity(value);
	if (typentry->typtype == TYPTYPE_ENUM)
	{
		char	   *label = DatumGetCString(DirectFunctionCall1(enum_out, value));

		return hash_kind_bytes(KIND_STRING, label, strlen(label));
	}
	if (IsTrueArrayType(typentry))
		return array_identity(value, typentry);
	return other_identity(value, type);
}

/*
 * The request identity of a statement and its arguments (see above), made
 * in the current memory context.
 */
int64
statement_fingerprint(const IdemStatement *stmt)
{
	uint64		hash = hash_bytes_extended((const unsigned char *) VARDATA_ANY(stmt->sql),
										   VARSIZE_ANY_EXHDR(stmt->sql), IDENTITY_SEED);

	hash = hash_combine64(hash, (uint64) stmt->nargs);
	for (int i = 0; i < stmt->nargs; i++)
		hash = hash_combine64(hash, stmt->nulls[i] == 'n' ? (uint64) KIND_NULL :
							  value_identity(stmt->values[i], stmt->types[i]));
	return (int64) hash;
}

/*
 * The identity as versions 1.0 and 1.1 computed it, to recognize the keys
 * they recorded: the statement text and argument types (as plan_hash()), and
 * each value by its bytes, or by its text for rows and arrays of rows.  It
 * depends on type OIDs and, for rows, on session settings; it is used only
 * to compare with keys recorded before 1.2.
 */
static uint64
legacy_hash_text(const char *str)
{
	return hash_bytes_extended((const unsigned char *) str, strlen(str), 0);
}

static uint64
legacy_value_hash(Datum value, Oid type)
{
	TypeCacheEntry *typentry = lookup_type_cache(type, 0);
	Oid			elemtype = typentry->typelem;
	int64		scalar;

	if (type_is_rowtype(type) ||
		(IsTrueArrayType(typentry) && type_is_rowtype(elemtype)))
	{
		Oid			output;
		bool		isvarlena;

		getTypeOutputInfo(type, &output, &isvarlena);
		return legacy_hash_text(OidOutputFunctionCall(output, value));
	}
	if (typentry->typbyval)
	{
		switch (typentry->typlen)
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
	if (typentry->typlen == -1)
	{
		struct varlena *v = PG_DETOAST_DATUM_PACKED(value);

		return hash_bytes_extended((const unsigned char *) VARDATA_ANY(v),
								   VARSIZE_ANY_EXHDR(v), 0);
	}
	if (typentry->typlen == -2)
		return legacy_hash_text(DatumGetCString(value));
	return hash_bytes_extended((const unsigned char *) DatumGetPointer(value),
							   typentry->typlen, 0);
}

int64
statement_legacy_fingerprint(const IdemStatement *stmt)
{
	uint64		hash = plan_hash(stmt);

	for (int i = 0; i < stmt->nargs; i++)
		hash = hash_combine64(hash, stmt->nulls[i] == 'n' ? UINT64CONST(0x9E3779B97F4A7C15) :
							  legacy_value_hash(stmt->values[i], stmt->types[i]));
	return (int64) hash;
}
