-- schema.sql: the database of the payments API (server.js). Run it as a superuser:
--   psql -v ON_ERROR_STOP=1 -f examples/api/schema.sql
-- The API connects as payments_api, which holds exactly the grants it needs, records its keys in
-- its own scope (keys chosen by HTTP clients meet no other application's keys), and lets a
-- payment fail 3 times before its key is dead.

CREATE EXTENSION IF NOT EXISTS idempotent;

-- one row per completed payment, written in the transaction of its idem_complete; no unique
-- constraint on purpose: fencing (ID003) alone keeps it at one row per key, which the scenario
-- (test/scenarios/api.sh) checks
CREATE TABLE payments (
    idempotency_key text NOT NULL,
    charge          text NOT NULL,          -- the provider's charge id
    amount          bigint NOT NULL,        -- minor units
    currency        text NOT NULL,
    attempt         integer NOT NULL,       -- the attempt that completed it
    completed_at    timestamptz NOT NULL DEFAULT now()
);

CREATE ROLE payments_api LOGIN;
GRANT SELECT, INSERT ON payments TO payments_api;
GRANT EXECUTE ON FUNCTION
    idem_begin(text, interval, jsonb),
    idem_complete(text, integer, jsonb),
    idem_fail(text, integer, text, interval)
TO payments_api;
ALTER ROLE payments_api SET idempotent.scope = 'payments_api';
ALTER ROLE payments_api SET idempotent.max_attempts = 3;
