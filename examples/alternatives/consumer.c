/*
 * examples/alternatives/consumer.c: one message consumer, three ways to keep a redelivered
 * message from being applied twice, for test/scenarios/alternatives.sh.
 *
 *   idem              one autocommit call to idem_apply per message; ack after it committed
 *   check-then-apply  SELECT 1 FROM processed WHERE msg_id = $1; if absent, apply the effect
 *                     (one transaction), then INSERT INTO processed (a second transaction); ack
 *   redis-setnx       SET <key> <consumer> NX PX <ttl> in Redis; if it was set, apply the effect
 *                     (one transaction) and ack; if not, ack the message as a duplicate
 *
 * The effect is the same statement in every mode: one row into effects (never unique, so a
 * second application shows as a second row) and the amount added to the account's balance.
 *
 * The broker: the deliveries table, on a connection of its own.  Taking a message locks its
 * row (SELECT ... FOR UPDATE SKIP LOCKED) in a broker transaction held open while the message
 * is handled; the ack marks it acked and commits.  A consumer that dies leaves its row
 * unacked and PostgreSQL drops the lock with the connection, so the next take redelivers it,
 * as a broker redelivers what a dead consumer never acknowledged.
 *
 * Usage: consumer MODE NAME SCHEMA [-r redis_port] [-t ttl_ms] [-j jitter_us] [-s seed]
 *                  [-m max_secs]
 * PostgreSQL is reached through the PG* environment; SCHEMA holds this run's tables.
 * -j sleeps a random 0..jitter_us between the steps, so that a kill can land between them.
 */
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <hiredis.h>
#include <libpq-fe.h>

/* the effect, identical in all three modes: $1 message, $2 account, $3 amount */
#define EFFECT \
	"WITH e AS (INSERT INTO effects (msg_id) VALUES ($1::int)) " \
	"UPDATE accounts SET balance = balance + $3::int WHERE id = $2::int"

enum mode { IDEM, CHECK_THEN_APPLY, REDIS_SETNX };

static PGconn *broker, *db;
static redisContext *redis;
static unsigned int rng;
static int jitter_us;

static void die(const char *what, const char *detail)
{
	fprintf(stderr, "consumer: %s: %s\n", what, detail ? detail : "");
	exit(1);
}

/* a random pause between two steps, where a kill may land */
static void step_pause(void)
{
	if (jitter_us > 0)
		usleep((useconds_t) (rand_r(&rng) % (unsigned) (jitter_us + 1)));
}

static PGconn *connect_pg(const char *name, const char *schema)
{
	char conninfo[256];
	PGconn *c;

	snprintf(conninfo, sizeof conninfo,
			 "application_name=%s options='-c search_path=%s,public'", name, schema);
	c = PQconnectdb(conninfo);
	if (PQstatus(c) != CONNECTION_OK)
		die("connect", PQerrorMessage(c));
	return c;
}

/* run a statement; return its result (caller clears) or die on error */
static PGresult *run(PGconn *c, const char *sql, int n, const char *const *params)
{
	PGresult *r = PQexecParams(c, sql, n, NULL, params, NULL, NULL, 0);
	ExecStatusType s = PQresultStatus(r);

	if (s != PGRES_COMMAND_OK && s != PGRES_TUPLES_OK)
		die(sql, PQerrorMessage(c));
	return r;
}

static void run0(PGconn *c, const char *sql, int n, const char *const *params)
{
	PQclear(run(c, sql, n, params));
}

/* the effect as its own transaction (autocommit) */
static void apply_effect(const char *const msg[3])
{
	run0(db, EFFECT, 3, msg);
}

int main(int argc, char **argv)
{
	enum mode mode;
	const char *name, *schema, *p;
	int redis_port = 6379, ttl_ms = 30000, max_secs = 120, opt;
	unsigned seed = 1;
	time_t deadline;
	long handled = 0;
	int done = 0;

	if (argc < 4)
		die("usage", "consumer idem|check-then-apply|redis-setnx NAME SCHEMA [-r port] "
			"[-t ttl_ms] [-j jitter_us] [-s seed] [-m max_secs]");
	if (strcmp(argv[1], "idem") == 0)
		mode = IDEM;
	else if (strcmp(argv[1], "check-then-apply") == 0)
		mode = CHECK_THEN_APPLY;
	else if (strcmp(argv[1], "redis-setnx") == 0)
		mode = REDIS_SETNX;
	else
		die("unknown mode", argv[1]);
	name = argv[2];
	schema = argv[3];
	for (p = schema; *p; p++)
		if (!islower((unsigned char) *p) && !isdigit((unsigned char) *p) && *p != '_')
			die("schema must be a plain lower-case name", schema);
	optind = 4;
	while ((opt = getopt(argc, argv, "r:t:j:s:m:")) != -1)
	{
		switch (opt)
		{
			case 'r': redis_port = atoi(optarg); break;
			case 't': ttl_ms = atoi(optarg); break;
			case 'j': jitter_us = atoi(optarg); break;
			case 's': seed = (unsigned) strtoul(optarg, NULL, 10); break;
			case 'm': max_secs = atoi(optarg); break;
			default: die("bad option", NULL);
		}
	}
	rng = seed ^ (unsigned) getpid();
	deadline = time(NULL) + max_secs;

	broker = connect_pg(name, schema);
	db = connect_pg(name, schema);
	if (mode == REDIS_SETNX)
	{
		struct timeval tv = {2, 0};

		redis = redisConnectWithTimeout("127.0.0.1", redis_port, tv);
		if (redis == NULL || redis->err)
			die("redis connect", redis ? redis->errstr : "out of memory");
	}

	while (!done && time(NULL) < deadline)
	{
		PGresult *r;
		char seq[24], key[96];
		const char *msg[3], *ack[2];
		const char *outcome = "applied";

		/* take the next message nobody holds; the row stays locked until the ack */
		run0(broker, "BEGIN", 0, NULL);
		r = run(broker,
				"SELECT d.*, nextval('takes') FROM (SELECT seq, msg_id, account, amount "
				"FROM deliveries WHERE NOT acked ORDER BY seq LIMIT 1 FOR UPDATE SKIP LOCKED) d",
				0, NULL);
		if (PQntuples(r) == 0)
		{
			PQclear(r);
			run0(broker, "ROLLBACK", 0, NULL);
			/* nothing free: done if nothing is unacked, else wait for the other consumer */
			r = run(broker, "SELECT count(*) FROM deliveries WHERE NOT acked", 0, NULL);
			done = strcmp(PQgetvalue(r, 0, 0), "0") == 0;
			PQclear(r);
			if (!done)
				usleep(2000);
			continue;
		}
		snprintf(seq, sizeof seq, "%s", PQgetvalue(r, 0, 0));
		msg[0] = strdup(PQgetvalue(r, 0, 1));
		msg[1] = strdup(PQgetvalue(r, 0, 2));
		msg[2] = strdup(PQgetvalue(r, 0, 3));
		PQclear(r);
		step_pause();

		switch (mode)
		{
			case IDEM:
				snprintf(key, sizeof key, "%s:msg-%s", schema, msg[0]);
				{
					const char *params[4] = {key, msg[0], msg[1], msg[2]};

					r = run(db, "SELECT status FROM idem_apply($1, NULL, '" EFFECT "', "
							"$2::int, $3::int, $4::int)", 4, params);
				}
				if (strcmp(PQgetvalue(r, 0, 0), "applied") != 0)
					outcome = "duplicate";
				PQclear(r);
				step_pause();
				break;

			case CHECK_THEN_APPLY:
				r = run(db, "SELECT 1 FROM processed WHERE msg_id = $1::int", 1, msg);
				if (PQntuples(r) > 0)
					outcome = "duplicate";
				PQclear(r);
				step_pause();
				if (strcmp(outcome, "applied") == 0)
				{
					apply_effect(msg);
					step_pause();
					run0(db, "INSERT INTO processed (msg_id) VALUES ($1::int) "
						 "ON CONFLICT DO NOTHING", 1, msg);
					step_pause();
				}
				break;

			case REDIS_SETNX:
				snprintf(key, sizeof key, "%s:msg-%s", schema, msg[0]);
				{
					redisReply *rr = redisCommand(redis, "SET %s %s NX PX %d", key, name, ttl_ms);

					if (rr == NULL)
						die("redis SET", redis->errstr);
					if (rr->type == REDIS_REPLY_NIL)
						outcome = "duplicate";
					else if (rr->type != REDIS_REPLY_STATUS)
						die("redis SET", rr->type == REDIS_REPLY_ERROR ? rr->str : "odd reply");
					freeReplyObject(rr);
				}
				step_pause();
				if (strcmp(outcome, "applied") == 0)
				{
					apply_effect(msg);
					step_pause();
				}
				break;
		}

		/* ack: only now does the broker forget the message */
		ack[0] = seq;
		ack[1] = outcome;
		run0(broker, "UPDATE deliveries SET acked = true, outcome = $2, "
			 "acked_at = clock_timestamp() WHERE seq = $1::bigint", 2, ack);
		run0(broker, "COMMIT", 0, NULL);
		free((void *) msg[0]);
		free((void *) msg[1]);
		free((void *) msg[2]);
		handled++;
	}

	if (!done)
		die("gave up", "time limit reached with messages still unacked");
	PQfinish(broker);
	PQfinish(db);
	if (redis)
		redisFree(redis);
	printf("%s: handled %ld\n", name, handled);
	return 0;
}
