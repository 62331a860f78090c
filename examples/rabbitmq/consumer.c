/*
 * consumer.c: a RabbitMQ consumer that charges each payment exactly once in PostgreSQL.
 *
 * RabbitMQ delivers at least once. A publisher that missed a confirm publishes again; a
 * consumer that dies after its commit but before its basic.ack gets the message redelivered,
 * to itself or to another consumer. This consumer makes the *effect* exactly once:
 *
 *   1. one autocommit call, SELECT status FROM idem_apply(message_id, NULL, statement, args),
 *      runs the charge and records the message id in the same transaction;
 *   2. basic.ack is sent only after that call has returned, that is, after the commit.
 *
 * Killed before the commit: nothing happened; the broker redelivers and the charge applies.
 * Killed after the commit, before the ack: the broker redelivers; idem_apply answers
 * `duplicate`, runs nothing, and the consumer acks. Two copies of a message on two consumers
 * at once: one applies, the other waits for its commit and gets `duplicate`.
 *
 * Message: property message_id = the payment's key; body "ACCOUNT AMOUNT", e.g. "42 25.00".
 * PostgreSQL: the usual PG* environment variables (PGHOST, PGDATABASE, ...).
 * Prints one line per message after its ack: "<message_id> <status>[ redelivered]".
 *
 *   consumer [--queue NAME] [--host H] [--port P] [--prefetch N] [--naive]
 *
 * --naive runs the statement directly, without idem_apply: the bug this example is about.
 */
#define PROGRAM "consumer"
#include "broker.h"

#include <getopt.h>
#include <libpq-fe.h>
#include <signal.h>
#include <string.h>

/* The business effect, one statement: record the charge and debit the account. */
static const char *const CHARGE =
	"WITH c AS (INSERT INTO charges (payment_id, account, amount) VALUES ($1, $2, $3))"
	" UPDATE accounts SET balance = balance - $3 WHERE id = $2";

/* The same statement through idem_apply: key $1 (the message id), policy once (version NULL),
 * the statement as $2, and its own parameters $1..$3 as the arguments that follow. */
static const char *const APPLY =
	"SELECT status FROM idem_apply($1, NULL, $2, $1::text, $3::int, $4::numeric)";

static volatile sig_atomic_t stopping = 0;
static void on_signal(int sig) { (void) sig; stopping = 1; }

enum verdict { ACK, REQUEUE, REJECT };

/*
 * Apply one payment. Returns what to tell the broker and sets *status for the log line.
 * The call runs in autocommit mode: when PQexecParams returns without error, the charge
 * and its key are committed, and only then may the message be acked.
 */
static enum verdict apply_payment(PGconn *db, int naive, const char *key, const char *account,
								  const char *amount, char *status, size_t status_size)
{
	const char *charge_args[3] = {key, account, amount};
	const char *apply_args[4] = {key, CHARGE, account, amount};
	PGresult *res = naive
		? PQexecParams(db, CHARGE, 3, NULL, charge_args, NULL, NULL, 0)
		: PQexecParams(db, APPLY, 4, NULL, apply_args, NULL, NULL, 0);
	ExecStatusType rs = PQresultStatus(res);
	enum verdict v = ACK;

	if (rs == PGRES_TUPLES_OK || rs == PGRES_COMMAND_OK)
		snprintf(status, status_size, "%s", naive ? "applied" : PQgetvalue(res, 0, 0));
	else if (PQstatus(db) == CONNECTION_BAD)
		die("lost the database connection", PQerrorMessage(db));
	else
	{
		const char *state = PQresultErrorField(res, PG_DIAG_SQLSTATE);

		fprintf(stderr, "consumer: %s: %s", key, PQresultErrorMessage(res));
		snprintf(status, status_size, "error-%s", state ? state : "?????");
		/* Serialization failures and deadlocks (class 40) pass: try the message again.
		 * Anything else (bad data, ID001: the key was reused for another payment) would
		 * fail again: reject it, to a dead-letter exchange if the queue has one. */
		v = (state && strncmp(state, "40", 2) == 0) ? REQUEUE : REJECT;
	}
	PQclear(res);
	return v;
}

int main(int argc, char **argv)
{
	const char *host = "127.0.0.1", *queue = "payments";
	int port = 5672, prefetch = 10, naive = 0, opt;
	static const struct option options[] = {
		{"host", required_argument, NULL, 'h'}, {"port", required_argument, NULL, 'p'},
		{"queue", required_argument, NULL, 'q'}, {"prefetch", required_argument, NULL, 'n'},
		{"naive", no_argument, NULL, 'N'}, {NULL, 0, NULL, 0}};

	while ((opt = getopt_long(argc, argv, "", options, NULL)) != -1)
		switch (opt)
		{
			case 'h': host = optarg; break;
			case 'p': port = atoi(optarg); break;
			case 'q': queue = optarg; break;
			case 'n': prefetch = atoi(optarg); break;
			case 'N': naive = 1; break;
			default:
				fprintf(stderr, "usage: %s [--queue NAME] [--host H] [--port P] [--prefetch N] [--naive]\n",
						argv[0]);
				return 2;
		}
	setvbuf(stdout, NULL, _IOLBF, 0);
	signal(SIGTERM, on_signal);
	signal(SIGINT, on_signal);

	/* PostgreSQL, from the PG* environment variables. */
	PGconn *db = PQconnectdb("");
	if (PQstatus(db) != CONNECTION_OK)
		die("cannot connect to PostgreSQL", PQerrorMessage(db));

	/* RabbitMQ: channel 1 on the durable queue; at most `prefetch` unacked messages in
	 * flight to us; manual acknowledgement (no_ack = 0). */
	amqp_connection_state_t conn = broker_open(host, port, queue);
	amqp_basic_qos(conn, 1, 0, (uint16_t) prefetch, 0);
	check_amqp(amqp_get_rpc_reply(conn), "basic.qos");
	amqp_basic_consume(conn, 1, amqp_cstring_bytes(queue), amqp_empty_bytes, 0, 0, 0,
					   amqp_empty_table);
	check_amqp(amqp_get_rpc_reply(conn), "basic.consume");

	while (!stopping)
	{
		amqp_envelope_t env;
		struct timeval timeout = {1, 0};	/* wake up now and then to notice SIGTERM */
		char key[256] = "", body[128] = "", account[16], amount[32], status[32];
		enum verdict v = REJECT;

		amqp_maybe_release_buffers(conn);
		amqp_rpc_reply_t r = amqp_consume_message(conn, &env, &timeout, 0);
		if (r.reply_type == AMQP_RESPONSE_LIBRARY_EXCEPTION && r.library_error == AMQP_STATUS_TIMEOUT)
			continue;
		check_amqp(r, "consume");

		amqp_basic_properties_t *props = &env.message.properties;
		if ((props->_flags & AMQP_BASIC_MESSAGE_ID_FLAG) && props->message_id.len < sizeof key &&
			env.message.body.len < sizeof body)
		{
			memcpy(key, props->message_id.bytes, props->message_id.len);
			memcpy(body, env.message.body.bytes, env.message.body.len);
		}
		snprintf(status, sizeof status, "malformed");
		if (key[0] && sscanf(body, "%15s %31s", account, amount) == 2)
			v = apply_payment(db, naive, key, account, amount, status, sizeof status);

		/* Only now, after the commit, tell the broker. If the ack is lost, the broker
		 * redelivers the message and idem_apply answers `duplicate`. */
		int rc = v == ACK ? amqp_basic_ack(conn, 1, env.delivery_tag, 0)
			: amqp_basic_reject(conn, 1, env.delivery_tag, v == REQUEUE);
		if (rc != AMQP_STATUS_OK)
			die("ack", amqp_error_string2(rc));
		printf("%s %s%s\n", key[0] ? key : "-", status, env.redelivered ? " redelivered" : "");
		amqp_destroy_envelope(&env);
	}

	/* SIGTERM: close cleanly. Messages prefetched but not processed go back to the queue. */
	amqp_channel_close(conn, 1, AMQP_REPLY_SUCCESS);
	amqp_connection_close(conn, AMQP_REPLY_SUCCESS);
	amqp_destroy_connection(conn);
	PQfinish(db);
	return 0;
}
