/*
 * test/drivers/libpq/driver_test.c: libpq calling the idempotent extension with bound parameters
 * (PQexecParams, text format, paramTypes NULL), as an application would. Run by
 * test/scenarios/drivers.sh against the database that test/drivers/setup.sql made; connects with
 * the PG* environment variables. Prints one line per assertion, `ok     libpq: ...` or
 * `FAILED libpq: ...`, and exits 1 if any failed.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <libpq-fe.h>

#define DRIVER "libpq"
#define ACCOUNT "100"		/* accounts 101..103 belong to this driver */

/* The statements the messages run. */
#define PAY "INSERT INTO payments (id, account, amount) VALUES ($1, $2, $3) RETURNING id, account, amount"
#define SET_BALANCE "INSERT INTO accounts (id, balance) VALUES ($1, $2) " \
	"ON CONFLICT (id) DO UPDATE SET balance = EXCLUDED.balance"
#define ADD_TO_BALANCE "INSERT INTO accounts (id, balance) VALUES ($1, $2) " \
	"ON CONFLICT (id) DO UPDATE SET balance = accounts.balance + EXCLUDED.balance"
#define TOTALS "SELECT $1 AS amount, $2 AS total"
/* A batch's consumer (README, "Batches"): one set-based statement for the messages not seen before. */
#define CONSUME_BATCH "WITH fresh AS (SELECT ord FROM idem_claim_batch($1::text[]) WHERE applied) " \
	"INSERT INTO payments (id, account, amount) SELECT m.id, m.account, m.amount " \
	"FROM unnest($1::text[], $2::int[], $3::numeric[]) WITH ORDINALITY AS m(id, account, amount, ord) " \
	"JOIN fresh USING (ord)"

/* libpq with paramTypes NULL sends every parameter untyped: each extra argument needs its cast. */
#define APPLY_PAYMENT "SELECT * FROM idem_apply($1, NULL, $2, $3::text, $4::int, $5::numeric)"

static PGconn *db;
static int	failures;

/* Runs sql with its parameters (NULL for SQL NULL); the result is an outcome or an error. */
static PGresult *
call(const char *sql, int n, const char *const *values)
{
	return PQexecParams(db, sql, n, NULL, values, NULL, NULL, 0);
}

static void
exec_ok(const char *sql)
{
	PGresult   *r = PQexec(db, sql);

	if (PQresultStatus(r) != PGRES_COMMAND_OK)
		fprintf(stdout, "FAILED " DRIVER ": %s: %s", sql, PQerrorMessage(db));
	PQclear(r);
}

/* Field `name` of the first row, NULL when SQL NULL or no row. */
static const char *
field(const PGresult *r, const char *name)
{
	int			col;

	if (PQresultStatus(r) != PGRES_TUPLES_OK || PQntuples(r) < 1 || (col = PQfnumber(r, name)) < 0 ||
		PQgetisnull(r, 0, col))
		return NULL;
	return PQgetvalue(r, 0, col);
}

static int
eq(const char *a, const char *b)
{
	return a == NULL ? b == NULL : b != NULL && strcmp(a, b) == 0;
}

static const char *
sqlstate(const PGresult *r)
{
	const char *s = PQresultErrorField(r, PG_DIAG_SQLSTATE);

	return s ? s : "";
}

static int
is(const PGresult *r, const char *status, const char *applied)
{
	return eq(field(r, "status"), status) && eq(field(r, "applied"), applied);
}

/* Prints the assertion's line; on failure, what came back. Frees r. */
static void
check(const char *name, int ok, PGresult *r)
{
	if (ok)
		printf("ok     " DRIVER ": %s\n", name);
	else
	{
		failures++;
		printf("FAILED " DRIVER ": %s: got ", name);
		if (PQresultStatus(r) == PGRES_TUPLES_OK && PQntuples(r) > 0)
		{
			for (int i = 0; i < PQnfields(r); i++)
				printf("%s%s=%s", i ? ", " : "", PQfname(r, i),
					   PQgetisnull(r, 0, i) ? "NULL" : PQgetvalue(r, 0, i));
			printf("\n");
		}
		else if (PQresultStatus(r) == PGRES_COMMAND_OK)
			printf("%s\n", PQcmdStatus(r));
		else
			printf("%s %s", sqlstate(r), PQresultErrorMessage(r));
	}
	PQclear(r);
}

static void
check_error(const char *name, const char *code, PGresult *r)
{
	check(name, PQresultStatus(r) == PGRES_FATAL_ERROR && strcmp(sqlstate(r), code) == 0, r);
}

/* Checks that r's rows are want: fields separated by ' ', rows by "; ". Frees r. */
static void
check_rows(const char *name, PGresult *r, const char *want)
{
	char		got[1000] = "";
	size_t		len = 0;

	if (PQresultStatus(r) != PGRES_TUPLES_OK)
	{
		check(name, 0, r);
		return;
	}
	for (int i = 0; i < PQntuples(r) && len < sizeof got; i++)
		for (int j = 0; j < PQnfields(r) && len < sizeof got; j++)
			len += snprintf(got + len, sizeof got - len, "%s%s", j ? " " : i ? "; " : "",
							PQgetisnull(r, i, j) ? "NULL" : PQgetvalue(r, i, j));
	if (strcmp(got, want) == 0)
		check(name, 1, r);
	else
	{
		failures++;
		printf("FAILED " DRIVER ": %s: got %s\n", name, got);
		PQclear(r);
	}
}

static PGresult *
pay(const char *id, const char *account, const char *amount)
{
	char		key[100];
	const char *const values[] = {key, PAY, id, account, amount};

	snprintf(key, sizeof key, "payment:%s", id);
	return PQexecParams(db, APPLY_PAYMENT, 5, NULL, values, NULL, NULL, 0);
}

static void
once(void)
{
	PGresult   *first = pay("libpq:p-1", ACCOUNT, "975.00");
	PGresult   *again = pay("libpq:p-1", ACCOUNT, "975.00");
	const char *const id[] = {"libpq:p-1"};
	int			replayed = is(again, "duplicate", "f") && eq(field(again, "rows"), "1") &&
		eq(field(again, "result"), field(first, "result"));

	check("once: applied", is(first, "applied", "t") && eq(field(first, "rows"), "1") &&
		  field(first, "version") == NULL && field(first, "result") &&
		  strstr(field(first, "result"), "\"amount\": 975.00"), first);
	check("once: redelivery is a duplicate with the stored result", replayed, again);
	again = call("SELECT count(*) AS n FROM payments WHERE id = $1", 1, id);
	check("once: the payment exists once", eq(field(again, "n"), "1"), again);
}

static PGresult *
state(const char *function, const char *key, const char *version, const char *account,
	  const char *statement, const char *balance)
{
	char		sql[200];
	const char *const values[] = {key, version, statement, account, balance};

	snprintf(sql, sizeof sql, "SELECT * FROM %s($1, $2, $3, $4::int, $5::numeric)", function);
	return call(sql, 5, values);
}

static void
newer(void)
{
#define NEWER(v, balance) state("idem_apply", "account:libpq:1", v, "101", SET_BALANCE, balance)
	PGresult   *r;

	r = NEWER("2", "20.00");
	check("newer: version 2 applied", is(r, "applied", "t") && eq(field(r, "version"), "2"), r);
	r = NEWER("2", "20.00");
	check("newer: version 2 again is a duplicate", is(r, "duplicate", "f"), r);
	r = NEWER("1", "10.00");
	check("newer: version 1 is stale", is(r, "stale", "f") && eq(field(r, "version"), "2"), r);
	r = NEWER("3", "30.00");
	check("newer: version 3 applied over 2", is(r, "applied", "t") && eq(field(r, "version"), "3") &&
		  eq(field(r, "previous_version"), "2"), r);
}

static void
next(void)
{
#define NEXT(v, amount) state("idem_apply_next", "account:libpq:2", v, "102", ADD_TO_BALANCE, amount)
	PGresult   *r;
	const char *const account[] = {"102"};

	r = NEXT("2", "5.00");
	check("next: version 2 of a new key is a gap", is(r, "gap", "f") && field(r, "version") == NULL, r);
	r = NEXT("1", "10.00");
	check("next: version 1 applied", is(r, "applied", "t") && eq(field(r, "version"), "1"), r);
	r = NEXT("2", "5.00");
	check("next: version 2 applied", is(r, "applied", "t") && eq(field(r, "previous_version"), "1"), r);
	r = NEXT("4", "7.00");
	check("next: version 4 after 2 is a gap", is(r, "gap", "f") && eq(field(r, "version"), "2"), r);
	r = call("SELECT balance FROM accounts WHERE id = $1", 1, account);
	check("next: balance is versions 1 and 2 added once each", eq(field(r, "balance"), "15.00"), r);
}

static void
upsert(void)
{
#define UPSERT(v, balance) state("idem_upsert", "account:libpq:3", v, "103", SET_BALANCE, balance)
	PGresult   *r;

	r = UPSERT("1", "1.00");
	check("upsert: version 1 applied", is(r, "applied", "t"), r);
	r = UPSERT("1", "1.50");
	check("upsert: version 1 again applied", is(r, "applied", "t") &&
		  eq(field(r, "previous_version"), "1"), r);
	r = UPSERT("0", "0.00");
	check("upsert: version 0 is stale", is(r, "stale", "f"), r);
}

/* The consumer's own statements, in the same transaction as the claim. */
static PGresult *
consume(const char *key, const char *id, int commit)
{
	const char *const k[] = {key};
	const char *const payment[] = {id, ACCOUNT, "12.50"};
	PGresult   *out;

	exec_ok("BEGIN");
	out = call("SELECT * FROM idem_claim($1)", 1, k);
	if (eq(field(out, "applied"), "t"))
		PQclear(call("INSERT INTO payments (id, account, amount) VALUES ($1, $2, $3)", 3, payment));
	exec_ok(commit ? "COMMIT" : "ROLLBACK");
	return out;
}

static void
claim(void)
{
	PGresult   *r, *retried;

	r = consume("payment:libpq:p-2", "libpq:p-2", 1);
	check("claim: applied in the caller's transaction", is(r, "applied", "t"), r);
	r = consume("payment:libpq:p-2", "libpq:p-2", 1);
	check("claim: duplicate after the commit", is(r, "duplicate", "f"), r);
	r = consume("payment:libpq:p-3", "libpq:p-3", 0);
	retried = consume("payment:libpq:p-3", "libpq:p-3", 1);
	check("claim: a rolled back claim records nothing", is(r, "applied", "t") &&
		  is(retried, "applied", "t"), retried);
	PQclear(r);
}

static void
untyped(void)
{
	const char *const values[] = {"payment:libpq:p-4", PAY, "libpq:p-4", ACCOUNT, "1.00"};
	PGresult   *r;

	r = call("SELECT * FROM idem_apply($1, NULL, $2, $3, $4, $5)", 5, values);
	check_error("\"any\": an untyped argument is 42P18", "42P18", r);
	r = call(APPLY_PAYMENT, 5, values);
	check("\"any\": with casts it applies", is(r, "applied", "t"), r);
}

static void
results(void)
{
	/* result is jsonb's text: numbers exactly as stored */
	const char *const values[] = {"totals:libpq", TOTALS, "975.00", "12345678901234567.89"};
	const char *sql = "SELECT * FROM idem_apply($1, NULL, $2, $3::numeric, $4::numeric)";
	const char *exact = "[{\"total\": 12345678901234567.89, \"amount\": 975.00}]";
	PGresult   *r;

	r = call(sql, 4, values);
	check("result: numbers exact when applied", is(r, "applied", "t") && eq(field(r, "result"), exact), r);
	r = call(sql, 4, values);
	check("result: numbers exact in the replay", is(r, "duplicate", "f") && eq(field(r, "result"), exact), r);
}

static void
errors(void)
{
	const char *const next_values[] = {"payment:libpq:p-5", PAY, "libpq:p-5", ACCOUNT, "5.00"};

	PQclear(pay("libpq:p-5", ACCOUNT, "5.00"));
	check_error("ID001: same key, another amount", "ID001", pay("libpq:p-5", ACCOUNT, "6.00"));
	check_error("ID002: same key, another policy", "ID002", call(
		"SELECT * FROM idem_apply_next($1, 1, $2, $3::text, $4::int, $5::numeric)", 5, next_values));
}

/*
 * Payment x:p-1 was applied before this driver ran (test/drivers/setup.sql), as 'x:p-1'::text,
 * 42 (int4), 25.00 (numeric).
 */
static void
redelivery(void)
{
	PGresult   *r = pay("x:p-1", "42", "25.00");

	check("redelivery of x:p-1 is a duplicate with its result", is(r, "duplicate", "f") &&
		  eq(field(r, "rows"), "1") && field(r, "result") &&
		  strstr(field(r, "result"), "\"amount\": 25.00"), r);
}

/* Arrays go as text array literals, cast in the statement; the batch's statements in one transaction. */
static PGresult *
consume_batch(const char *ids, const char *accounts, const char *amounts)
{
	const char *const values[] = {ids, accounts, amounts};
	PGresult   *r;

	exec_ok("BEGIN");
	r = PQexecParams(db, CONSUME_BATCH, 3, NULL, values, NULL, NULL, 0);
	exec_ok(PQresultStatus(r) == PGRES_COMMAND_OK ? "COMMIT" : "ROLLBACK");
	return r;
}

static void
batch(void)
{
	const char *const keys[] = {"{batch:libpq:1,batch:libpq:2,batch:libpq:1}"};
	const char *const versioned[] = {"{batch:libpq:a,batch:libpq:a,batch:libpq:a,batch:libpq:b}", "{3,5,4,1}"};
	const char *ids = "{libpq:b-1,libpq:b-2,libpq:b-1,libpq:b-3}";
	const char *accounts = "{" ACCOUNT "," ACCOUNT "," ACCOUNT "," ACCOUNT "}";
	const char *amounts = "{975.00,0.10,975.00,12345678901234567.89}";
	PGresult   *r;

	check_rows("batch: one row per element in input order, a repeated key a duplicate",
			   call("SELECT ord, key, status, applied FROM idem_claim_batch($1::text[])", 1, keys),
			   "1 batch:libpq:1 applied t; 2 batch:libpq:2 applied t; 3 batch:libpq:1 duplicate f");
	check_rows("batch: versions 3, 5, 4 of a key are applied, applied, stale",
			   call("SELECT ord, key, status, applied FROM idem_claim_batch($1::text[], $2::bigint[])",
					2, versioned),
			   "1 batch:libpq:a applied t; 2 batch:libpq:a applied t; 3 batch:libpq:a stale f; "
			   "4 batch:libpq:b applied t");

	r = consume_batch(ids, accounts, amounts);
	check("batch: the set-based statement inserts each message of the batch once",
		  PQresultStatus(r) == PGRES_COMMAND_OK && eq(PQcmdTuples(r), "3"), r);
	r = consume_batch(ids, accounts, amounts);
	check("batch: the batch redelivered inserts nothing",
		  PQresultStatus(r) == PGRES_COMMAND_OK && eq(PQcmdTuples(r), "0"), r);
	check_rows("batch: amounts exact through numeric[]",
			   call("SELECT id, amount FROM payments WHERE id = ANY($1::text[]) ORDER BY id", 1, &ids),
			   "libpq:b-1 975.00; libpq:b-2 0.10; libpq:b-3 12345678901234567.89");
}

/* The interval and the request are text, cast in the statement. */
static PGresult *
begin_lease(const char *key, const char *request)
{
	const char *const values[] = {key, "1 hour", request};

	return PQexecParams(db, "SELECT * FROM idem_begin($1, $2::interval, $3::jsonb)", 3, NULL, values,
						NULL, NULL, 0);
}

static PGresult *
complete(const char *key, const char *attempt, const char *result)
{
	const char *const values[] = {key, attempt, result};

	return call("SELECT idem_complete($1, $2, $3::jsonb)", 3, values);
}

static void
lease(void)
{
	const char *mail = "receipt:libpq:1";
	const char *request = "{\"to\": \"ann@example.com\", \"payment\": \"libpq:p-1\"}";
	char		attempt[12] = "";
	char		error[200] = "";
	const char *const fail_values[] = {"payment:libpq:p-6", error};
	const char *const get_values[] = {"payment:libpq:p-6"};
	PGresult   *r;

	r = begin_lease(mail, request);
	if (field(r, "attempt"))
		snprintf(attempt, sizeof attempt, "%s", field(r, "attempt"));
	check("lease: started, attempt 1", eq(field(r, "status"), "started") && eq(attempt, "1") &&
		  field(r, "lease_until") != NULL, r);
	r = begin_lease(mail, request);
	check("lease: a second begin is in_progress", eq(field(r, "status"), "in_progress") &&
		  eq(field(r, "attempt"), "1"), r);
	PQclear(complete(mail, attempt, "{\"amount\": 975.00, \"total\": 12345678901234567.89}"));
	r = begin_lease(mail, request);
	check("lease: after idem_complete a duplicate with the result exact", eq(field(r, "status"), "duplicate") &&
		  eq(field(r, "result"), "{\"total\": 12345678901234567.89, \"amount\": 975.00}"), r);
	check_error("lease: ID001: same key, another request", "ID001",
				begin_lease(mail, "{\"to\": \"bob@example.com\", \"payment\": \"libpq:p-1\"}"));
	check_error("lease: ID003: idem_complete of an attempt that no longer holds the key", "ID003",
				complete(mail, attempt, "{}"));

	/* a poison message: its transaction failed, its failure is recorded in a transaction of its own */
	r = pay("libpq:p-6", ACCOUNT, "1e30");
	if (PQresultErrorField(r, PG_DIAG_MESSAGE_PRIMARY))
		snprintf(error, sizeof error, "%s", PQresultErrorField(r, PG_DIAG_MESSAGE_PRIMARY));
	check_error("idem_fail: the payment fails (22003)", "22003", r);
	r = call("SELECT * FROM idem_fail($1, NULL, $2)", 2, fail_values);
	check("idem_fail: an ordinary key's failure is counted", eq(field(r, "status"), "failed") &&
		  eq(field(r, "attempt"), "1"), r);
	r = call("SELECT state, attempts, last_error FROM idem_get($1)", 1, get_values);
	check("idem_fail: idem_get shows 1 attempt", eq(field(r, "state"), "failed") &&
		  eq(field(r, "attempts"), "1") && eq(field(r, "last_error"), error), r);
}

int
main(void)
{
	void		(*sections[]) (void) = {once, newer, next, upsert, claim, untyped, results, errors,
		redelivery, batch, lease};

	db = PQconnectdb("");		/* PGHOST, PGPORT, PGUSER, PGDATABASE */
	if (PQstatus(db) != CONNECTION_OK)
	{
		printf("FAILED " DRIVER ": connect: %s", PQerrorMessage(db));
		return 2;
	}
	setvbuf(stdout, NULL, _IOLBF, 0);
	for (size_t i = 0; i < sizeof sections / sizeof sections[0]; i++)
		sections[i] ();
	PQfinish(db);
	return failures ? 1 : 0;
}
