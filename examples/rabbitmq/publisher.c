/*
 * publisher.c: publishes payment messages to RabbitMQ with publisher confirms, and retries the
 * way a real producer does: a message whose confirm did not arrive is published again, with
 * the same message_id.
 *
 * When the confirm was lost on the way back (the broker had the message), that retry puts a
 * second copy in the queue. To show what that does to consumers, --duplicates PCT pretends
 * that PCT % of the confirms were lost, so the queue holds that share of duplicate publishes.
 *
 *   publisher [--count N] [--duplicates PCT] [--accounts A] [--seed S] [--queue NAME]
 *             [--host H] [--port P] [--manifest FILE]
 *
 * Each message: property message_id "payment-<seed>-<n>", body "ACCOUNT AMOUNT" (e.g. "42 25.00"),
 * persistent, to a durable queue through the default exchange. --manifest writes one CSV line
 * per distinct payment: id,account,amount,publishes.
 */
#define PROGRAM "publisher"
#include "broker.h"

#include <getopt.h>

enum confirm { CONFIRMED, NACKED, NO_CONFIRM };

/* Wait up to 5 seconds for the broker's confirm of publish number `seq` on channel 1. */
static enum confirm wait_confirm(amqp_connection_state_t conn, uint64_t seq)
{
	for (;;)
	{
		amqp_frame_t frame;
		struct timeval timeout = {5, 0};
		int rc = amqp_simple_wait_frame_noblock(conn, &frame, &timeout);

		if (rc == AMQP_STATUS_TIMEOUT)
			return NO_CONFIRM;
		if (rc != AMQP_STATUS_OK)
			die("waiting for a confirm", amqp_error_string2(rc));
		if (frame.frame_type != AMQP_FRAME_METHOD)
			continue;
		switch (frame.payload.method.id)
		{
			case AMQP_BASIC_ACK_METHOD:	/* may confirm several publishes at once */
				if (((amqp_basic_ack_t *) frame.payload.method.decoded)->delivery_tag >= seq)
					return CONFIRMED;
				break;	/* the late confirm of an earlier try */
			case AMQP_BASIC_NACK_METHOD:
				if (((amqp_basic_nack_t *) frame.payload.method.decoded)->delivery_tag >= seq)
					return NACKED;
				break;
			case AMQP_CHANNEL_CLOSE_METHOD:
			case AMQP_CONNECTION_CLOSE_METHOD:
				die("waiting for a confirm", "the broker closed the channel or connection");
		}
	}
}

int main(int argc, char **argv)
{
	const char *host = "127.0.0.1", *queue = "payments", *manifest_path = NULL;
	int port = 5672, count = 1000, dup_pct = 20, accounts = 100, seed = 1, opt;
	uint64_t seq = 0, publishes = 0;	/* seq: the broker numbers publishes from 1 */
	FILE *manifest = NULL;
	static const struct option options[] = {
		{"host", required_argument, NULL, 'h'}, {"port", required_argument, NULL, 'p'},
		{"queue", required_argument, NULL, 'q'}, {"count", required_argument, NULL, 'c'},
		{"duplicates", required_argument, NULL, 'd'}, {"accounts", required_argument, NULL, 'a'},
		{"seed", required_argument, NULL, 's'}, {"manifest", required_argument, NULL, 'm'},
		{NULL, 0, NULL, 0}};

	while ((opt = getopt_long(argc, argv, "", options, NULL)) != -1)
		switch (opt)
		{
			case 'h': host = optarg; break;
			case 'p': port = atoi(optarg); break;
			case 'q': queue = optarg; break;
			case 'c': count = atoi(optarg); break;
			case 'd': dup_pct = atoi(optarg); break;
			case 'a': accounts = atoi(optarg); break;
			case 's': seed = atoi(optarg); break;
			case 'm': manifest_path = optarg; break;
			default:
				fprintf(stderr, "usage: %s [--count N] [--duplicates PCT] [--accounts A] [--seed S]"
						" [--queue NAME] [--host H] [--port P] [--manifest FILE]\n", argv[0]);
				return 2;
		}
	if (accounts < 1)
		die("--accounts", "must be at least 1");
	if (manifest_path && !(manifest = fopen(manifest_path, "w")))
		die("cannot write", manifest_path);
	srand((unsigned) seed);

	amqp_connection_state_t conn = broker_open(host, port, queue);
	amqp_confirm_select(conn, 1);	/* the broker confirms each publish once it has it safely */
	check_amqp(amqp_get_rpc_reply(conn), "confirm.select");

	for (int n = 1; n <= count; n++)
	{
		char key[64], body[64];
		int account = 1 + rand() % accounts, cents = 100 + rand() % 99900;
		int tries = 0;
		enum confirm c;

		snprintf(key, sizeof key, "payment-%d-%d", seed, n);
		snprintf(body, sizeof body, "%d %d.%02d", account, cents / 100, cents % 100);
		amqp_basic_properties_t props = {
			._flags = AMQP_BASIC_CONTENT_TYPE_FLAG | AMQP_BASIC_DELIVERY_MODE_FLAG |
				AMQP_BASIC_MESSAGE_ID_FLAG,
			.content_type = amqp_cstring_bytes("text/plain"),
			.delivery_mode = AMQP_DELIVERY_PERSISTENT,
			.message_id = amqp_cstring_bytes(key),
		};

		do	/* publish until confirmed, like a producer that retries */
		{
			int rc = amqp_basic_publish(conn, 1, amqp_empty_bytes, amqp_cstring_bytes(queue), 0, 0,
										&props, amqp_cstring_bytes(body));
			if (rc != AMQP_STATUS_OK)
				die("publish", amqp_error_string2(rc));
			seq++, tries++;
			c = wait_confirm(conn, seq);
			/* The simulation: the broker has the message, but we act as if its confirm
			 * never came, so the next round publishes it again. */
			if (c == CONFIRMED && tries == 1 && rand() % 100 < dup_pct)
				c = NO_CONFIRM;
		} while (c != CONFIRMED && tries < 5);
		if (c != CONFIRMED)
			die("no confirm after 5 tries", key);
		publishes += (uint64_t) tries;
		if (manifest)
			fprintf(manifest, "%s,%d,%d.%02d,%d\n", key, account, cents / 100, cents % 100, tries);
	}

	if (manifest && fclose(manifest) != 0)
		die("cannot write", manifest_path);
	fprintf(stderr, "publisher: %d payments, %llu publishes (%llu retried) to queue %s\n", count,
			(unsigned long long) publishes, (unsigned long long) (publishes - (uint64_t) count), queue);
	amqp_channel_close(conn, 1, AMQP_REPLY_SUCCESS);
	amqp_connection_close(conn, AMQP_REPLY_SUCCESS);
	amqp_destroy_connection(conn);
	return 0;
}
