-- examples/pgq/consumer.sql: a PgQ consumer written as a stored procedure that applies each
-- business event exactly once, through idem_apply, in the transaction that finishes the batch.
--
-- PgQ delivers at least once:
--   * a batch that was taken but not finished (the consumer crashed, was killed, lost its
--     connection, hit an error) is handed out again, whole, by the next pgq.next_batch;
--   * a producer that retried pgq.insert_event after a lost acknowledgement put the same business
--     event in the queue twice, under two event ids, in the same batch or in two batches.
-- consume_payments() applies every event through idem_apply under the event's business key (the
-- payment id the producer chose, not PgQ's ev_id), so the ledger row and the payment commit or roll
-- back together, and every payment is charged once whatever PgQ or the producer repeats.
--
-- Needs: CREATE EXTENSION pgq;         (Debian: apt-get install postgresql-15-pgq3)
--        CREATE EXTENSION idempotent;
-- Load:  psql -f examples/pgq/consumer.sql
-- Once:  SELECT pgq.create_queue('payments');
--        SELECT pgq.register_consumer('payments', 'payments_consumer');
-- Send:  SELECT produce_payment('pay-1001', 42, 25.00);
-- Tick:  PgQ cuts events into batches at ticks: run pgqd (Debian package pgqd), or call
--        SELECT pgq.ticker(); periodically yourself.
-- Run:   CALL consume_payments();      -- a top-level CALL (it commits), not inside BEGIN
--        It returns when no batch is ready; call it again after a sleep, or from a scheduler.

-- The business tables of the example.
CREATE TABLE IF NOT EXISTS accounts (
    id      int PRIMARY KEY,
    balance numeric(14,2) NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS payments (      -- one row per charge actually made
    payment_id text NOT NULL,
    account_id int NOT NULL,
    amount     numeric(12,2) NOT NULL
);
-- What the consumer saw, one row per event it handled, written in the transaction of the effect.
CREATE TABLE IF NOT EXISTS payment_outcomes (
    id          bigserial PRIMARY KEY,
    batch_id    bigint NOT NULL,
    ev_id       bigint NOT NULL,
    payment_id  text NOT NULL,
    status      text NOT NULL,             -- idem_apply's status: applied or duplicate
    consumed_at timestamptz NOT NULL DEFAULT clock_timestamp()
);

-- The producer side: one event per payment. ev_type 'payment', ev_data a JSON object with the
-- account and the amount, ev_extra1 the payment id: the business key that a retry repeats.
CREATE OR REPLACE FUNCTION produce_payment(payment_id text, account_id int, amount numeric,
                                           queue text DEFAULT 'payments')
RETURNS bigint
LANGUAGE sql AS $$
    SELECT pgq.insert_event(queue, 'payment',
                            jsonb_build_object('account', account_id, 'amount', amount)::text,
                            payment_id, NULL, NULL, NULL)
$$;

-- The consumer.
--   commit_every  0 (the default): one transaction per batch: every event's effect, its ledger
--                 row and pgq.finish_batch commit together. A crash mid-batch rolls all of it
--                 back and PgQ hands the same batch out again.
--                 n > 0: also COMMIT after every n events, to keep transactions short on large
--                 batches. A crash mid-batch then leaves the first events committed while the
--                 batch is unfinished; PgQ hands the whole batch out again, and those events come
--                 back from idem_apply as `duplicate` and change nothing.
--   max_batches   return after this many batches; NULL: when no batch is ready.
CREATE OR REPLACE PROCEDURE consume_payments(
    queue        text DEFAULT 'payments',
    consumer     text DEFAULT 'payments_consumer',
    commit_every int  DEFAULT 0,
    max_batches  int  DEFAULT NULL)
LANGUAGE plpgsql AS $$
DECLARE
    batch   bigint;
    ev      record;
    o       idem_outcome;
    batches int := 0;
    events  int;
    applied int;
BEGIN
    LOOP
        EXIT WHEN max_batches IS NOT NULL AND batches >= max_batches;

        -- The batch this consumer has to finish next: the unfinished one if there is one (after
        -- a crash, the same batch id), else a new one up to the next tick; NULL if none is ready.
        batch := pgq.next_batch(queue, consumer);
        EXIT WHEN batch IS NULL;
        -- Commit the reservation, so that pgq.get_consumer_info shows the batch in progress and a
        -- crash from here on gets this very batch id back. (Without this COMMIT a crash rolls the
        -- reservation back too, and next_batch reserves the same events under a new batch id.)
        COMMIT;
        RAISE LOG 'consume_payments: batch % taken', batch;

        events := 0;
        applied := 0;
        -- The FOR loop's query is read once; when the loop COMMITs (commit_every > 0) PL/pgSQL
        -- keeps its rows across the commit.
        FOR ev IN
            SELECT e.ev_id, e.ev_type, e.ev_data::jsonb AS data, e.ev_extra1 AS payment_id
            FROM pgq.get_batch_events(batch) e
            ORDER BY e.ev_id
        LOOP
            IF ev.ev_type IS DISTINCT FROM 'payment' THEN
                RAISE WARNING 'consume_payments: skipping event % of type %', ev.ev_id, ev.ev_type;
                CONTINUE;
            END IF;

            -- One statement, run at most once per payment id, in this transaction. The arguments
            -- come from the event, so a producer retry repeats the same request (same statement,
            -- same arguments) and is reported as a duplicate; a reused payment id with another
            -- account or amount raises ID001 instead of being charged.
            o := idem_apply('payment:' || ev.payment_id, NULL,
                    'WITH charge AS (INSERT INTO payments (payment_id, account_id, amount)
                                     VALUES ($1, $2, $3))
                     UPDATE accounts SET balance = balance - $3 WHERE id = $2',
                    ev.payment_id, (ev.data ->> 'account')::int, (ev.data ->> 'amount')::numeric);

            INSERT INTO payment_outcomes (batch_id, ev_id, payment_id, status)
            VALUES (batch, ev.ev_id, ev.payment_id, o.status);

            events := events + 1;
            IF o.applied THEN
                applied := applied + 1;
            END IF;
            IF commit_every > 0 AND events % commit_every = 0 THEN
                COMMIT;
            END IF;
        END LOOP;

        -- Close the batch in the same transaction as the last events: PgQ moves this consumer
        -- past the batch only if everything above committed.
        PERFORM pgq.finish_batch(batch);
        COMMIT;
        RAISE LOG 'consume_payments: batch % finished: % events, % applied, % duplicate',
            batch, events, applied, events - applied;
        batches := batches + 1;
    END LOOP;
END
$$;
