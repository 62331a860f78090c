#!/usr/bin/python3
"""consumer.py: a RabbitMQ batch consumer that charges each payment exactly once in PostgreSQL.

RabbitMQ delivers at least once: a publisher that missed a confirm publishes again, and a
consumer that dies after its commit but before its ack gets its messages redelivered. This
consumer takes messages in batches and makes each payment's *effect* exactly once:

  1. a prefetch window of several hundred messages (basic.qos), from which it collects a batch
     of up to --batch messages, or what came within --wait seconds;
  2. one transaction per batch: idem_claim_batch claims the batch's keys, and one set-based
     statement charges the payments whose key it applied and debits their accounts;
  3. after the commit, one basic.ack with multiple=True for the batch's last delivery tag.

Killed before the commit: nothing of the batch happened; the broker redelivers it and it
applies. Killed after the commit, before the ack reached the broker: the broker redelivers the
batch; idem_claim_batch answers `duplicate` for each key and the statement charges nothing.
The same payment in two batches at once (a publisher's retry): the second batch waits for the
first's commit and gets `duplicate`.

Message: property message_id = the payment's key; body "ACCOUNT AMOUNT", e.g. "42 25.00".
PostgreSQL: the usual PG* environment variables (PGHOST, PGDATABASE, ...).
Prints one line per message after the batch's ack: "<message_id> <status>[ redelivered]".

  consumer.py [--queue NAME] [--host H] [--port P] [--prefetch N] [--batch N] [--wait S]
              [--naive] [--crash-after-commit PCT]

--naive runs the same statement without idem_claim_batch: the bug this example is about.
--crash-after-commit PCT ends the consumer at once, with exit status 3, after the commit of PCT %
of its batches, before their ack: the crash that makes the broker redeliver a batch that was
applied (os._exit: no cleanup, the kernel closes the sockets, as for SIGKILL).
Needs Debian's python3-psycopg (psycopg 3) and python3-pika.
"""
import argparse
import decimal
import os
import random
import signal
import sys
import time

import pika
import psycopg
from psycopg import errors

# One statement for the whole batch. $keys, $accounts, $amounts are the batch's messages, in
# delivery order. `claim` records the keys (idem_claim_batch: one row per element, in input
# order, `applied` for the first occurrence of a key never seen before); `charged` inserts the
# applied payments; `debited` takes each account's total off its balance, after `locked` has
# locked the accounts in the order of their ids, so that two batches that debit the same
# accounts wait for each other instead of deadlocking. It returns each message's status.
BATCH = """
WITH claim AS (
    SELECT ord, status, applied FROM idem_claim_batch(%(keys)s::text[])
), batch AS (
    SELECT m.ord, m.payment_id, m.account, m.amount, c.status, c.applied
    FROM unnest(%(keys)s::text[], %(accounts)s::int[], %(amounts)s::numeric[])
         WITH ORDINALITY AS m(payment_id, account, amount, ord)
    JOIN claim c USING (ord)
), charged AS (
    INSERT INTO charges (payment_id, account, amount)
    SELECT payment_id, account, amount FROM batch WHERE applied
), locked AS (
    SELECT id FROM accounts
    WHERE id IN (SELECT account FROM batch WHERE applied)
    ORDER BY id FOR UPDATE
), debited AS (
    UPDATE accounts a SET balance = a.balance - d.total
    FROM (SELECT account, sum(amount) AS total FROM batch WHERE applied GROUP BY account) d
    JOIN locked l ON l.id = d.account
    WHERE a.id = d.account
)
SELECT status FROM batch ORDER BY ord
"""

# The same statement without the claim: every message charges, redelivered or not.
NAIVE = """
WITH batch AS (
    SELECT m.ord, m.payment_id, m.account, m.amount
    FROM unnest(%(keys)s::text[], %(accounts)s::int[], %(amounts)s::numeric[])
         WITH ORDINALITY AS m(payment_id, account, amount, ord)
), charged AS (
    INSERT INTO charges (payment_id, account, amount)
    SELECT payment_id, account, amount FROM batch
), locked AS (
    SELECT id FROM accounts WHERE id IN (SELECT account FROM batch) ORDER BY id FOR UPDATE
), debited AS (
    UPDATE accounts a SET balance = a.balance - d.total
    FROM (SELECT account, sum(amount) AS total FROM batch GROUP BY account) d
    JOIN locked l ON l.id = d.account
    WHERE a.id = d.account
)
SELECT 'applied' FROM batch ORDER BY ord
"""

RETRIES = 5     # serialization failures and deadlocks (class 40): the batch runs again

stopping = False


def on_signal(signum, frame):
    global stopping
    stopping = True


def parse(props, body):
    """The payment in one message, or None if it is malformed (no id, bad body)."""
    try:
        key = props.message_id
        account, amount = body.decode().split()
        account, amount = int(account), decimal.Decimal(amount)
        if not key or not amount.is_finite():
            return None
        return key, account, str(amount)
    except (AttributeError, ValueError, UnicodeDecodeError, decimal.InvalidOperation):
        return None


def run_batch(db, statement, payments):
    """One transaction for the payments [(key, account, amount), ...]: returns their statuses.

    The transaction commits when the `with` block ends without an exception; only then may the
    messages be acked. A serialization failure or deadlock rolls it back, and it runs again.
    """
    params = {"keys": [p[0] for p in payments],
              "accounts": [p[1] for p in payments],
              "amounts": [p[2] for p in payments]}
    for attempt in range(1, RETRIES + 1):
        try:
            with db.transaction():
                return [row[0] for row in db.execute(statement, params)]
        except (errors.SerializationFailure, errors.DeadlockDetected) as e:
            if attempt == RETRIES:
                raise
            print(f"consumer: batch of {len(payments)}: {e.diag.sqlstate}, running it again",
                  file=sys.stderr)


def process(db, channel, statement, batch, crash_pct):
    """Apply a batch of deliveries [(method, properties, body), ...] and acknowledge it."""
    good, statuses = [], {}
    for method, props, body in batch:
        payment = parse(props, body)
        if payment:
            good.append((method.delivery_tag, payment))
        else:
            statuses[method.delivery_tag] = "malformed"
    try:
        if good:
            statuses.update(zip((tag for tag, _ in good),
                                run_batch(db, statement, [p for _, p in good])))
    except psycopg.OperationalError:
        raise   # the database is gone: exit, and the broker redelivers the batch
    except psycopg.Error as e:
        # One bad payment (ID002: its key is recorded under another policy, a constraint, ...)
        # fails the whole batch: apply its messages one by one instead, to find it.
        print(f"consumer: batch of {len(good)} failed ({e.diag.sqlstate}: {e}); one by one",
              file=sys.stderr)
        for tag, payment in good:
            try:
                statuses[tag] = run_batch(db, statement, [payment])[0]
            except psycopg.OperationalError:
                raise
            except psycopg.Error as e:
                print(f"consumer: {payment[0]}: {e.diag.sqlstate}: {e}", file=sys.stderr)
                statuses[tag] = f"error-{e.diag.sqlstate}"

    # Committed. --crash-after-commit: die here, before the ack, as a crash could.
    if random.random() * 100 < crash_pct:
        print(f"consumer: crashing after the commit of a batch of {len(batch)}", file=sys.stderr)
        sys.stderr.flush()
        os._exit(3)

    # What failed for good goes away (to a dead-letter exchange if the queue has one); then one
    # ack, multiple=True, for the rest: up to the last delivery not rejected.
    acked = 0
    for method, _, _ in batch:
        tag, status = method.delivery_tag, statuses[method.delivery_tag]
        if status == "malformed" or status.startswith("error-"):
            channel.basic_reject(delivery_tag=tag, requeue=False)
        else:
            acked = tag
    if acked:
        channel.basic_ack(delivery_tag=acked, multiple=True)
    for method, props, body in batch:
        print(f"{props.message_id or '-'} {statuses[method.delivery_tag]}"
              f"{' redelivered' if method.redelivered else ''}")
    sys.stdout.flush()


def main():
    ap = argparse.ArgumentParser(description="RabbitMQ batch consumer: each payment exactly once")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=5672)
    ap.add_argument("--queue", default="payments")
    ap.add_argument("--prefetch", type=int, default=500, help="unacked messages in flight")
    ap.add_argument("--batch", type=int, default=250, help="most messages per transaction")
    ap.add_argument("--wait", type=float, default=0.05,
                    help="longest a batch waits to fill, in seconds")
    ap.add_argument("--naive", action="store_true", help="without idem_claim_batch (the bug)")
    ap.add_argument("--crash-after-commit", type=float, default=0, metavar="PCT",
                    help="die before the ack of PCT %% of the batches (a test of redelivery)")
    args = ap.parse_args()
    if not 1 <= args.batch <= args.prefetch:
        ap.error("--batch must be between 1 and --prefetch")
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    db = psycopg.connect("", autocommit=True)   # PG* variables; one transaction per batch
    broker = pika.BlockingConnection(pika.ConnectionParameters(
        host=args.host, port=args.port, credentials=pika.PlainCredentials("guest", "guest")))
    channel = broker.channel()
    channel.queue_declare(queue=args.queue, durable=True)
    channel.basic_qos(prefetch_count=args.prefetch)
    statement = NAIVE if args.naive else BATCH

    batch, started = [], 0.0
    # Manual acknowledgement; the generator yields (None, None, None) after `wait` seconds
    # without a message, so a partial batch goes out and SIGTERM is noticed.
    for method, props, body in channel.consume(args.queue, auto_ack=False,
                                               inactivity_timeout=args.wait):
        if method:
            if not batch:
                started = time.monotonic()
            batch.append((method, props, body))
        if batch and (len(batch) >= args.batch or method is None
                      or time.monotonic() - started >= args.wait):
            process(db, channel, statement, batch, args.crash_after_commit)
            batch = []
        if stopping and not batch:
            break

    # SIGTERM: close cleanly. Messages prefetched but not processed go back to the queue.
    channel.cancel()
    channel.close()
    broker.close()
    db.close()


if __name__ == "__main__":
    main()
