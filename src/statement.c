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
#include "tcop/cmdtag.h"
#include "utils/builtins.h"
#include "utils/fmgrprotos.h"
#include "utils/hsearch.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/typcache.h"
#include "utils/plancache.h"

#include "statement.h"

/* Distinct statements whose plans one backend keeps; beyond, plan per call. */
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
} BoundParams;

typedef struct PlanEntry
{
	uint64		hash;			/* hash key: statement text and argument types */
	char	   *sql;
	int			sql_len;
	int			nargs;
	Oid		   *types;			/* argument types, unknown for untyped literals */
	Prepared	prepared;
} PlanEntry;

static HTAB *plan_cache = NULL;

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
		entry->nargs != stmt->nargs ||
		entry->sql_len != VARSIZE_ANY_EXHDR(stmt->sql) ||
		memcmp(entry->sql, VARDATA_ANY(stmt->sql), entry->sql_len) != 0 ||
		(stmt->nargs > 0 &&
		 memcmp(entry->types, stmt->types, stmt->nargs * sizeof(Oid)) != 0))
		return NULL;
	return entry;
}

/* The statement must be one command that runs inside the caller's transaction. */
static void
check_plan(SPIPlanPtr plan)
{
	List	   *sources = SPI_plan_get_plan_sources(plan);
	CachedPlanSource *source;

	if (sources == NIL)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("statement must not be empty")));
	if (list_length(sources) > 1)
		ereport(ERROR,
				(errcode(ERRCODE_SYNTAX_ERROR),
				 errmsg("statement must be a single SQL command"),
				 errdetail("The string holds %d commands.", list_length(sources))));

	source = linitial(sources);
	if (IsA(source->raw_parse_tree->stmt, SelectStmt) &&
		((SelectStmt *) source->raw_parse_tree->stmt)->intoClause != NULL)
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("SELECT INTO is not allowed as the statement"),
				 errdetail("The statement must be a SELECT, INSERT, UPDATE, DELETE, MERGE or CALL.")));
	if (IsA(source->raw_parse_tree->stmt, TransactionStmt))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_TRANSACTION_TERMINATION),
				 errmsg("transaction control is not allowed in the statement"),
				 errdetail("The statement runs in the caller's transaction, which commits or rolls back the key with it.")));
	switch (source->commandTag)
	{
		case CMDTAG_SELECT:
		case CMDTAG_INSERT:
		case CMDTAG_UPDATE:
		case CMDTAG_DELETE:
		case CMDTAG_MERGE:
		case CMDTAG_CALL:
			break;
		default:
			ereport(ERROR,
					(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
					 errmsg("%s is not allowed as the statement",
							GetCommandTagName(source->commandTag)),
					 errdetail("The statement must be a SELECT, INSERT, UPDATE, DELETE, MERGE or CALL.")));
	}
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

/*
 * Prepare and check the statement into *prepared, allocating what the plan
 * needs for its lifetime in cxt; call within an SPI connection.
 */
static void
prepare(const IdemStatement *stmt, Prepared *prepared, MemoryContext cxt)
{
	char	   *sql = text_to_cstring(stmt->sql);
	Size		size = Max(stmt->nargs, 1) * sizeof(Oid);
	SPIPrepareOptions options;

	prepared->nargs = stmt->nargs;
	prepared->arg_types = MemoryContextAlloc(cxt, size);
	prepared->param_types = MemoryContextAlloc(cxt, size);
	if (stmt->nargs > 0)
		memcpy(prepared->arg_types, stmt->types, stmt->nargs * sizeof(Oid));

	memset(&options, 0, sizeof(options));
	options.parserSetup = parser_setup;
	options.parserSetupArg = prepared;
	options.parseMode = RAW_PARSE_DEFAULT;
	prepared->plan = SPI_prepare_extended(sql, &options);
	if (prepared->plan == NULL)
		elog(ERROR, "SPI_prepare_extended failed: %s", SPI_result_code_string(SPI_result));
	check_plan(prepared->plan);
	if (prepared->nparams > stmt->nargs)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_PARAMETER),
				 errmsg("there is no parameter $%d", prepared->nparams),
				 errdetail("The statement uses $%d, but %d arguments were given.",
						   prepared->nparams, stmt->nargs)));
}

/* Keep a checked plan for the rest of the backend's life, if there is room. */
static void
remember(const IdemStatement *stmt)
{
	PlanEntry  *entry;

	if (plan_cache == NULL)
	{
		HASHCTL		ctl;

		ctl.keysize = sizeof(uint64);
		ctl.entrysize = sizeof(PlanEntry);
		plan_cache = hash_create("idempotent plans", 64, &ctl,
								 HASH_ELEM | HASH_BLOBS);
	}
	/* Full, or another statement with the same hash: plan per call. */
	if (hash_get_num_entries(plan_cache) >= PLAN_CACHE_SIZE ||
		hash_search(plan_cache, &stmt->plan_hash, HASH_FIND, NULL) != NULL)
		return;

	entry = hash_search(plan_cache, &stmt->plan_hash, HASH_ENTER, NULL);
	PG_TRY();
	{
		prepare(stmt, &entry->prepared, TopMemoryContext);
	}
	PG_CATCH();
	{
		hash_search(plan_cache, &stmt->plan_hash, HASH_REMOVE, NULL);
		PG_RE_THROW();
	}
	PG_END_TRY();
	SPI_keepplan(entry->prepared.plan);

	entry->sql_len = VARSIZE_ANY_EXHDR(stmt->sql);
	entry->sql = MemoryContextAlloc(TopMemoryContext, entry->sql_len);
	memcpy(entry->sql, VARDATA_ANY(stmt->sql), entry->sql_len);
	entry->nargs = stmt->nargs;
	entry->types = MemoryContextAlloc(TopMemoryContext, Max(stmt->nargs, 1) * sizeof(Oid));
	if (stmt->nargs > 0)
		memcpy(entry->types, stmt->types, stmt->nargs * sizeof(Oid));
}

/*
 * Check the statement before anything is decided, so that bad input is
 * reported on every path; on first sight the plan is prepared and kept.
 */
void
statement_check(IdemStatement *stmt)
{
	stmt->plan_hash = plan_hash(stmt);
	if (plan_lookup(stmt) != NULL)
		return;

	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	remember(stmt);
	if (plan_lookup(stmt) == NULL)
	{
		/* not kept: check it all the same, the plan goes with SPI_finish */
		Prepared	prepared;

		prepare(stmt, &prepared, CurrentMemoryContext);
	}
	SPI_finish();
}

/*
 * The executor fetches parameters through this hook, after any replan, so an
 * untyped literal is converted from its text to the type the latest parse
 * resolved for it.
 */
static ParamExternData *
fetch_param(ParamListInfo params, int paramid, bool speculative,
			ParamExternData *workspace)
{
	BoundParams *bound = (BoundParams *) params->paramFetchArg;
	ParamExternData *param = &params->params[paramid - 1];
	Oid			type = bound->prepared->param_types[paramid - 1];
	Datum		literal = bound->stmt->values[paramid - 1];

	if (param->ptype != type)
	{
		param->ptype = type;
		if (!param->isnull && type != UNKNOWNOID)
		{
			Oid			input;
			Oid			ioparam;

			getTypeInputInfo(type, &input, &ioparam);
			param->value = OidInputFunctionCall(input, DatumGetCString(literal),
												ioparam, -1);
		}
	}
	return param;
}

/* The arguments as the plan's parameters. */
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
		params->paramFetch = fetch_param;
		params->paramFetchArg = bound;
	}
	return params;
}

/* Rows returned by the statement as a jsonb array of objects, in context cxt. */
static Jsonb *
rows_to_jsonb(SPITupleTable *tuptable, uint64 nrows, MemoryContext cxt)
{
	TupleDesc	desc = BlessTupleDesc(tuptable->tupdesc);
	StringInfoData buf;
	MemoryContext spicxt;
	Jsonb	   *result;

	initStringInfo(&buf);
	appendStringInfoChar(&buf, '[');
	for (uint64 i = 0; i < nrows; i++)
	{
		Datum		record = heap_copy_tuple_as_datum(tuptable->vals[i], desc);
		text	   *json = DatumGetTextPP(DirectFunctionCall1(row_to_json, record));

		if (i > 0)
			appendStringInfoChar(&buf, ',');
		appendBinaryStringInfo(&buf, VARDATA_ANY(json), VARSIZE_ANY_EXHDR(json));
	}
	appendStringInfoChar(&buf, ']');

	spicxt = MemoryContextSwitchTo(cxt);
	result = DatumGetJsonbP(DirectFunctionCall1(jsonb_in, CStringGetDatum(buf.data)));
	MemoryContextSwitchTo(spicxt);

	if (VARSIZE(result) > idem_max_result_bytes)
		ereport(ERROR,
				(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
				 errmsg("result of the statement is too large to store"),
				 errdetail("It takes %u bytes as jsonb; the limit is %d bytes.",
						   (unsigned) VARSIZE(result), idem_max_result_bytes),
				 errhint("Return fewer rows or columns, or raise idempotent.max_result_bytes.")));
	return result;
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
	entry = plan_lookup(stmt);
	if (entry != NULL)
		prepared = &entry->prepared;
	else
	{
		prepared = palloc(sizeof(Prepared));
		prepare(stmt, prepared, CurrentMemoryContext);
	}

	rc = SPI_execute_plan_with_paramlist(prepared->plan, bind_params(stmt, prepared),
										 false, 0);
	if (rc < 0)
		elog(ERROR, "SPI_execute_plan_with_paramlist failed: %s", SPI_result_code_string(rc));

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

/* Fingerprint of the request: statement text, argument types and values. */
int64
statement_fingerprint(const IdemStatement *stmt)
{
	uint64		hash = hash_bytes_extended((const unsigned char *) VARDATA_ANY(stmt->sql),
										   VARSIZE_ANY_EXHDR(stmt->sql), 0);

	for (int i = 0; i < stmt->nargs; i++)
	{
		hash = hash_combine64(hash, stmt->types[i]);
		hash = hash_combine64(hash, stmt->nulls[i] == 'n' ? UINT64CONST(0x9E3779B97F4A7C15) :
							  hash_value(stmt->values[i], stmt->types[i]));
	}
	return (int64) hash;
}
