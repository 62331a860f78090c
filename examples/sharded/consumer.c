/*
 * consumer.c: a consumer for the sharded payments example. It calls pay(key, account, amount)
 * once per message, through the router (or on one node directly: the shards have the same
 * function), and commits its position in the stream (acks) every --ack-every messages.
 *
 * The stream stands for a broker's partition or log: a file of "key,account,amount" lines,
 * duplicated and out of order as brokers deliver them. On any error (a shard that is down, a
 * partition being moved, SQLSTATE SH001) the consumer waits a little and goes back to the
 * message after its last ack, as a consumer restarted from its committed offset would: the
 * messages it applied since then are delivered again and come back as `duplicate`.
 *
 *   consumer --stream FILE [--conninfo STR] [--function pay] [--ack-every 20] [--give-up 60]
 *
 * Connection: --conninfo, else the PG* environment variables. Prints to stdout one line per
 * call that returned, "OFFSET KEY STATUS", flushed at each ack; to stderr each error and, at the
 * end, "consumed N deliveries (A applied, D duplicate) in S s: R/s, E errors, W rewinds".
 * Exits 1 if no call has succeeded for --give-up seconds.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <ctype.h>
#include <getopt.h>
#include <libpq-fe.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

struct message { char *key, *account, *amount; };

static double now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void die(const char *what)
{
	fprintf(stderr, "consumer: %s\n", what);
	exit(2);
}

/* The whole stream, read up front: "key,account,amount" per line. */
static struct message *read_stream(const char *path, long *count)
{
	FILE *f = fopen(path, "r");
	struct message *msgs = NULL;
	long n = 0, cap = 0;
	char *line = NULL;
	size_t len = 0;

	if (!f) die("cannot open the stream file");
	while (getline(&line, &len, f) > 0) {
		char *key = strtok(line, ",\n"), *account = strtok(NULL, ",\n"), *amount = strtok(NULL, ",\n");
		if (!key || !account || !amount) die("bad stream line (want key,account,amount)");
		if (n == cap) {
			cap = cap ? cap * 2 : 1024;
			if (!(msgs = realloc(msgs, cap * sizeof *msgs))) die("out of memory");
		}
		msgs[n].key = strdup(key);
		msgs[n].account = strdup(account);
		msgs[n].amount = strdup(amount);
		n++;
	}
	free(line);
	fclose(f);
	*count = n;
	return msgs;
}

int main(int argc, char **argv)
{
	const char *conninfo = "", *stream = NULL, *function = "pay";
	long ack_every = 20, n, offset = 0, acked = 0, delivered = 0, applied = 0, duplicate = 0;
	long errors = 0, rewinds = 0;
	double give_up = 60, start, last_ok;
	char sql[128];
	struct message *msgs;
	PGconn *db;
	static const struct option opts[] = {
		{"stream", required_argument, NULL, 's'}, {"conninfo", required_argument, NULL, 'c'},
		{"function", required_argument, NULL, 'f'}, {"ack-every", required_argument, NULL, 'a'},
		{"give-up", required_argument, NULL, 'g'}, {NULL, 0, NULL, 0}};
	int opt;

	while ((opt = getopt_long(argc, argv, "", opts, NULL)) != -1) {
		switch (opt) {
		case 's': stream = optarg; break;
		case 'c': conninfo = optarg; break;
		case 'f': function = optarg; break;
		case 'a': ack_every = atol(optarg); break;
		case 'g': give_up = atof(optarg); break;
		default: die("usage: consumer --stream FILE [--conninfo STR] [--function pay] [--ack-every N] [--give-up S]");
		}
	}
	if (!stream || ack_every < 1) die("usage: consumer --stream FILE [--conninfo STR] [--function pay] [--ack-every N] [--give-up S]");
	for (const char *c = function; *c; c++)
		if (!isalnum((unsigned char) *c) && *c != '_' && *c != '.') die("bad function name");
	snprintf(sql, sizeof sql, "SELECT %s($1, $2::int, $3::numeric)", function);
	msgs = read_stream(stream, &n);

	db = PQconnectdb(conninfo);
	start = last_ok = now();
	while (offset < n) {
		const char *args[3] = {msgs[offset].key, msgs[offset].account, msgs[offset].amount};
		PGresult *res = NULL;

		if (PQstatus(db) == CONNECTION_OK)
			res = PQexecParams(db, sql, 3, NULL, args, NULL, NULL, 0);
		if (res && PQresultStatus(res) == PGRES_TUPLES_OK && PQntuples(res) == 1) {
			/* returned: committed on the key's node */
			const char *status = PQgetvalue(res, 0, 0);
			printf("%ld %s %s\n", offset, msgs[offset].key, status);
			applied += strcmp(status, "applied") == 0;
			duplicate += strcmp(status, "duplicate") == 0;
			delivered++;
			offset++;
			last_ok = now();
			if (offset - acked >= ack_every || offset == n) {
				fflush(stdout);	/* the ack: the position is committed */
				acked = offset;
			}
		} else {
			const char *state = res ? PQresultErrorField(res, PG_DIAG_SQLSTATE) : NULL;
			const char *msg = res ? PQresultErrorMessage(res) : PQerrorMessage(db);
			fprintf(stderr, "%ld %s %s", offset, state ? state : "-----", msg && *msg ? msg : "no result\n");
			errors++;
			if (now() - last_ok > give_up) {
				fprintf(stderr, "consumer: no call succeeded for %.0f s, giving up\n", give_up);
				return 1;
			}
			usleep(50 * 1000);
			if (PQstatus(db) != CONNECTION_OK)
				PQreset(db);
			if (offset != acked) rewinds++;
			offset = acked;	/* redeliver from the last ack */
		}
		PQclear(res);
	}
	fflush(stdout);
	{
		double secs = now() - start;
		fprintf(stderr, "consumed %ld deliveries (%ld applied, %ld duplicate) in %.2f s: %.0f/s, %ld errors, %ld rewinds\n",
				delivered, applied, duplicate, secs, delivered / (secs > 0 ? secs : 1), errors, rewinds);
	}
	PQfinish(db);
	return 0;
}
