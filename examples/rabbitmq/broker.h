/*
 * broker.h: what the example consumer and publisher share: failing loudly, and opening a
 * channel to RabbitMQ on a durable queue. Each program defines PROGRAM (its name, for messages)
 * before including it.
 */
#ifndef BROKER_H
#define BROKER_H

#include <amqp.h>
#include <amqp_tcp_socket.h>
#include <stdio.h>
#include <stdlib.h>

/* Exiting drops the connection: the broker puts our unacked messages back in the queue. */
static void die(const char *what, const char *detail)
{
	fprintf(stderr, PROGRAM ": %s: %s\n", what, detail);
	exit(1);
}

static void check_amqp(amqp_rpc_reply_t r, const char *what)
{
	if (r.reply_type != AMQP_RESPONSE_NORMAL)
		die(what, r.reply_type == AMQP_RESPONSE_LIBRARY_EXCEPTION ?
			amqp_error_string2(r.library_error) : "the broker closed the channel or connection");
}

/* Connect, log in as guest, open channel 1 and declare the durable queue (declaring it again
 * is harmless). */
static amqp_connection_state_t broker_open(const char *host, int port, const char *queue)
{
	amqp_connection_state_t conn = amqp_new_connection();
	amqp_socket_t *sock = amqp_tcp_socket_new(conn);
	if (!sock || amqp_socket_open(sock, host, port) != AMQP_STATUS_OK)
		die("cannot connect to RabbitMQ", host);
	check_amqp(amqp_login(conn, "/", 0, AMQP_DEFAULT_FRAME_SIZE, 0, AMQP_SASL_METHOD_PLAIN,
						  "guest", "guest"), "login");
	amqp_channel_open(conn, 1);
	check_amqp(amqp_get_rpc_reply(conn), "channel.open");
	amqp_queue_declare(conn, 1, amqp_cstring_bytes(queue), 0, 1, 0, 0, amqp_empty_table);
	check_amqp(amqp_get_rpc_reply(conn), "queue.declare");
	return conn;
}

#endif
