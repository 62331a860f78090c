#!/usr/bin/python3
"""publisher.py: publishes payment messages to RabbitMQ with publisher confirms, and retries the
way a real producer does: a message whose confirm did not arrive is published again, with the
same message_id.

When the confirm was lost on the way back (the broker had the message), that retry puts a second
copy in the queue. To show what that does to consumers, --duplicates PCT pretends that PCT % of
the confirms were lost, so the queue holds that share of duplicate publishes.

  publisher.py [--count N] [--duplicates PCT] [--accounts A] [--seed S] [--queue NAME]
               [--host H] [--port P] [--manifest FILE]

Each message: property message_id "payment-<seed>-<n>", body "ACCOUNT AMOUNT" (e.g. "42 25.00"),
persistent, to a durable queue through the default exchange. --manifest writes one CSV line per
distinct payment: id,account,amount,publishes. Needs Debian's python3-pika.
"""
import argparse
import random
import sys

import pika
from pika import exceptions

TRIES = 5


def main():
    ap = argparse.ArgumentParser(description="publish payments with confirms and retries")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=5672)
    ap.add_argument("--queue", default="payments")
    ap.add_argument("--count", type=int, default=1000)
    ap.add_argument("--duplicates", type=int, default=20, help="%% of confirms taken as lost")
    ap.add_argument("--accounts", type=int, default=100)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--manifest", help="CSV of the distinct payments")
    args = ap.parse_args()
    if args.accounts < 1:
        ap.error("--accounts must be at least 1")
    rng = random.Random(args.seed)
    manifest = open(args.manifest, "w") if args.manifest else None

    broker = pika.BlockingConnection(pika.ConnectionParameters(
        host=args.host, port=args.port, credentials=pika.PlainCredentials("guest", "guest")))
    channel = broker.channel()
    channel.queue_declare(queue=args.queue, durable=True)
    # Confirms: each basic_publish returns once the broker has the message safely, and raises
    # if the broker refuses it (nack) or cannot route it.
    channel.confirm_delivery()

    publishes = 0
    for n in range(1, args.count + 1):
        key = f"payment-{args.seed}-{n}"
        account, cents = rng.randint(1, args.accounts), rng.randint(100, 99999)
        body = f"{account} {cents // 100}.{cents % 100:02d}"
        props = pika.BasicProperties(content_type="text/plain", message_id=key,
                                     delivery_mode=pika.spec.PERSISTENT_DELIVERY_MODE)
        for tries in range(1, TRIES + 1):   # publish until confirmed, like a producer that retries
            try:
                channel.basic_publish(exchange="", routing_key=args.queue, body=body,
                                      properties=props, mandatory=True)
                confirmed = True
            except (exceptions.NackError, exceptions.UnroutableError):
                confirmed = False
            # The simulation: the broker has the message, but we act as if its confirm never
            # came, so the next round publishes it again.
            if confirmed and tries == 1 and rng.randrange(100) < args.duplicates:
                confirmed = False
            if confirmed:
                break
        else:
            sys.exit(f"publisher: no confirm after {TRIES} tries: {key}")
        publishes += tries
        if manifest:
            manifest.write(f"{key},{account},{body.split()[1]},{tries}\n")

    if manifest:
        manifest.close()
    print(f"publisher: {args.count} payments, {publishes} publishes ({publishes - args.count}"
          f" retried) to queue {args.queue}", file=sys.stderr)
    broker.close()


if __name__ == "__main__":
    main()
