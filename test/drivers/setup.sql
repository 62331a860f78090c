-- test/drivers/setup.sql: the database every driver test runs against (test/scenarios/drivers.sh
-- runs it as the cluster's superuser). The drivers connect as the application role idem_app,
-- which has exactly the grant that an application needs.

CREATE EXTENSION idempotent;

-- what the messages change
CREATE TABLE payments (
    id      text PRIMARY KEY,
    account int NOT NULL,
    amount  numeric(20,2) NOT NULL,
    received_at timestamptz
);
CREATE TABLE accounts (
    id      int PRIMARY KEY,
    balance numeric(20,2) NOT NULL
);

CREATE ROLE idem_app LOGIN;
GRANT SELECT, INSERT, UPDATE ON payments, accounts TO idem_app;
GRANT EXECUTE ON FUNCTION
    idem_apply(text, bigint, text, "any"), idem_apply(text, bigint, text),
    idem_apply_next(text, bigint, text, "any"), idem_apply_next(text, bigint, text),
    idem_upsert(text, bigint, text, "any"), idem_upsert(text, bigint, text),
    idem_claim(text, bigint, text), idem_claim_batch(text[], bigint[], text),
    idem_begin(text, interval, jsonb), idem_complete(text, integer, jsonb),
    idem_fail(text, integer, text, interval),
    idem_get(text)
TO idem_app;

-- Payment x:p-1, applied before any driver runs. Every driver then receives it again and must
-- report a duplicate, whatever types it binds the same values with.
SET ROLE idem_app;
SELECT status FROM idem_apply('payment:x:p-1', NULL,
    'INSERT INTO payments (id, account, amount) VALUES ($1, $2, $3) RETURNING id, account, amount',
    'x:p-1'::text, 42, 25.00);
RESET ROLE;
