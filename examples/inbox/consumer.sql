-- examples/inbox/consumer.sql: a plain stored procedure that works through an inbox table, one
-- message per transaction, and books each order exactly once with idem_claim.
--
-- The inbox keeps every delivery as it arrived (from an HTTP endpoint, a queue's sink connector,
-- a file drop): a sender that retried after a lost acknowledgement leaves the same order in it
-- twice, under two inbox ids. inbox_consume() takes the oldest unprocessed row, claims the order's
-- business key with idem_claim, runs its ordinary statements only if the claim says `applied`,
-- marks the row processed, and COMMITs: the claim, the effects and the mark commit or roll back
-- together. A consumer killed mid-message leaves that row unprocessed and nothing of it applied;
-- the next run takes it again. Several consumers can run at once (FOR UPDATE SKIP LOCKED); two
-- copies of one order handled at the same moment are serialised by idem_claim, which makes the
-- second wait for the first and then report `duplicate`.
--
-- Needs: CREATE EXTENSION idempotent;
-- Load:  psql -f examples/inbox/consumer.sql
-- Run:   CALL inbox_consume();     -- a top-level CALL (it commits), not inside BEGIN
--        It returns when no unprocessed row is left (or after max_messages rows).

CREATE TABLE IF NOT EXISTS inbox (
    id           bigserial PRIMARY KEY,
    msg_key      text NOT NULL,         -- the sender's order id; not unique: retries land twice
    payload      jsonb NOT NULL,        -- {"sku": "...", "qty": n}
    received_at  timestamptz NOT NULL DEFAULT now(),
    processed_at timestamptz,           -- set by the transaction that handled the row
    outcome      text                   -- idem_claim's status for this row: applied or duplicate
);
CREATE INDEX IF NOT EXISTS inbox_unprocessed ON inbox (id) WHERE processed_at IS NULL;

-- The business tables of the example.
CREATE TABLE IF NOT EXISTS stock (
    sku     text PRIMARY KEY,
    on_hand int NOT NULL
);
CREATE TABLE IF NOT EXISTS orders (         -- one row per order actually booked
    order_id text NOT NULL,
    sku      text NOT NULL,
    qty      int NOT NULL
);

CREATE OR REPLACE PROCEDURE inbox_consume(max_messages int DEFAULT NULL)
LANGUAGE plpgsql AS $$
DECLARE
    m    inbox;
    c    idem_outcome;
    done int := 0;
BEGIN
    LOOP
        EXIT WHEN max_messages IS NOT NULL AND done >= max_messages;

        -- The oldest unprocessed row that no other consumer is working on.
        SELECT * INTO m
        FROM inbox
        WHERE processed_at IS NULL
        ORDER BY id
        LIMIT 1
        FOR UPDATE SKIP LOCKED;
        EXIT WHEN NOT FOUND;

        -- Record the order's key in this transaction. `applied`: first time, go on; `duplicate`:
        -- this order was already booked (by an earlier row, or by a consumer that committed
        -- while we waited for it), do nothing.
        c := idem_claim('order:' || m.msg_key);
        IF c.applied THEN
            INSERT INTO orders (order_id, sku, qty)
            VALUES (m.msg_key, m.payload ->> 'sku', (m.payload ->> 'qty')::int);
            UPDATE stock SET on_hand = on_hand - (m.payload ->> 'qty')::int
            WHERE sku = m.payload ->> 'sku';
        END IF;

        UPDATE inbox SET processed_at = clock_timestamp(), outcome = c.status WHERE id = m.id;
        -- One message per transaction: the claim, the order, the stock and the mark together.
        COMMIT;
        done := done + 1;
    END LOOP;
END
$$;
