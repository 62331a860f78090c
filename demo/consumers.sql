-- demo/consumers.sql: two ways to consume stream.deliveries, each on its own copy of the accounts.
--
-- exact.consume: the extension's way. Each delivery goes through idem_apply under the message's
--   business key (payment: policy once; account terms: policy newer) and commits on its own.
-- naive.consume: what a consumer without a ledger does: apply every delivery as it comes.
--
-- Both are competing consumers on one queue: the broker's dispatch sequence hands the next
-- delivery to whichever consumer asks, so a producer retry sitting right behind its first copy
-- usually goes to the other consumer while the first is still in flight, and both race on the key.

\set ON_ERROR_STOP on
SET client_min_messages = warning;

DROP SCHEMA IF EXISTS exact CASCADE;
DROP SCHEMA IF EXISTS naive CASCADE;
CREATE SCHEMA exact;
CREATE SCHEMA naive;

CREATE TABLE exact.accounts (
    id            int PRIMARY KEY,
    balance       numeric(14,2) NOT NULL,
    credit_limit  numeric(12,2),
    status        text,
    terms_version bigint
);
CREATE TABLE exact.charges (           -- one row per charge actually made
    payment_key text NOT NULL,
    account_id  int NOT NULL,
    amount      numeric(12,2) NOT NULL
);
CREATE TABLE exact.outcomes (          -- written in the same transaction as the effect
    delivery_no int PRIMARY KEY,
    consumer    int NOT NULL,
    key         text NOT NULL,
    status      text NOT NULL,
    started     timestamptz NOT NULL,  -- before idem_apply
    finished    timestamptz NOT NULL   -- after idem_apply, before COMMIT
);
CREATE SEQUENCE exact.dispatch;

CREATE TABLE naive.accounts (LIKE exact.accounts INCLUDING ALL);
CREATE TABLE naive.charges (LIKE exact.charges INCLUDING ALL);
CREATE SEQUENCE naive.dispatch;

INSERT INTO exact.accounts (id, balance) SELECT account_id, balance FROM stream.opening;
INSERT INTO naive.accounts (id, balance) SELECT account_id, balance FROM stream.opening;

CREATE PROCEDURE exact.consume(consumer int)
LANGUAGE plpgsql AS $$
DECLARE
    n  bigint;
    m  stream.messages;
    o  idem_outcome;
    t0 timestamptz;
BEGIN
    LOOP
        n := nextval('exact.dispatch');
        SELECT msg.* INTO m
        FROM stream.deliveries d JOIN stream.messages msg USING (msg_no)
        WHERE d.delivery_no = n;
        EXIT WHEN NOT FOUND;

        t0 := clock_timestamp();
        IF m.kind = 'payment' THEN
            o := idem_apply(m.key, NULL,
                'WITH charge AS (INSERT INTO exact.charges (payment_key, account_id, amount)
                                 VALUES ($1, $2, $3))
                 UPDATE exact.accounts SET balance = balance - $3 WHERE id = $2',
                m.key, m.account_id, m.amount);
        ELSE
            o := idem_apply(m.key, m.version,
                'UPDATE exact.accounts SET credit_limit = $2, status = $3, terms_version = $4
                 WHERE id = $1',
                m.account_id, m.credit_limit, m.status, m.version);
        END IF;

        INSERT INTO exact.outcomes
        VALUES (n, consumer, m.key, o.status, t0, clock_timestamp());
        COMMIT;
    END LOOP;
END
$$;

CREATE PROCEDURE naive.consume(consumer int)
LANGUAGE plpgsql AS $$
DECLARE
    n bigint;
    m stream.messages;
BEGIN
    LOOP
        n := nextval('naive.dispatch');
        SELECT msg.* INTO m
        FROM stream.deliveries d JOIN stream.messages msg USING (msg_no)
        WHERE d.delivery_no = n;
        EXIT WHEN NOT FOUND;

        IF m.kind = 'payment' THEN
            INSERT INTO naive.charges VALUES (m.key, m.account_id, m.amount);
            UPDATE naive.accounts SET balance = balance - m.amount WHERE id = m.account_id;
        ELSE
            UPDATE naive.accounts
            SET credit_limit = m.credit_limit, status = m.status, terms_version = m.version
            WHERE id = m.account_id;
        END IF;
        COMMIT;
    END LOOP;
END
$$;
