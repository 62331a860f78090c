-- demo/stream.sql: a deterministic stream of payment messages and its at-least-once deliveries.
--
-- psql variables: messages (distinct messages), seed (for setseed, in -1..1).
-- Three quarters of the messages are payments (charge an account, policy once), the rest are
-- versioned updates of an account's terms (credit limit and status, policy newer).
-- Every message is delivered once, some with a delay that reorders them; on top of that come
-- producer retries (right behind the first copy), broker redeliveries (much later) and
-- rebalances (a new consumer re-reads the last 250 messages of its partition).

\set ON_ERROR_STOP on
SET client_min_messages = warning;
SET max_parallel_workers_per_gather = 0;   -- random() in one backend, in one order

DROP SCHEMA IF EXISTS stream CASCADE;
CREATE SCHEMA stream;

CREATE TABLE stream.messages (
    msg_no       int PRIMARY KEY,     -- order in which the producers sent them
    kind         text NOT NULL,       -- payment | terms
    key          text NOT NULL,       -- business key given to idem_apply
    account_id   int NOT NULL,
    amount       numeric(12,2),       -- payment: amount charged
    version      bigint,              -- terms: version of the account's terms
    credit_limit numeric(12,2),       -- terms: new credit limit
    status       text                 -- terms: active | frozen
);

CREATE TABLE stream.deliveries (
    delivery_no int PRIMARY KEY,      -- order in which the broker hands them out
    msg_no      int NOT NULL REFERENCES stream.messages,
    cause       text NOT NULL         -- first | producer retry | broker redelivery | rebalance
);

CREATE TABLE stream.opening (
    account_id int PRIMARY KEY,
    balance    numeric(14,2) NOT NULL
);

SELECT setseed(:seed) \gset

SELECT :messages AS messages,
       greatest(:messages / 64, 10) AS accounts,
       (:messages * 3) / 4 AS payments
\gset

-- one pass of random() in generate_series order: account, amount, terms, delivery dice
CREATE TEMP TABLE raw AS
SELECT g,
       1 + floor(random() * :accounts)::int AS account_id,
       round((5 + random() * 495)::numeric, 2) AS amount,
       (10 + floor(random() * 90)) * 100 AS credit_limit,
       CASE WHEN random() < 0.1 THEN 'frozen' ELSE 'active' END AS status,
       random() AS send_order,
       random() AS r_delayed, random() AS r_delay,
       random() AS r_retry, random() AS r_retry_delay,
       random() AS r_redeliver, random() AS r_redeliver_delay
FROM generate_series(1, :messages) AS g
ORDER BY g;

CREATE TEMP TABLE sent AS
SELECT row_number() OVER (ORDER BY send_order, g)::int AS msg_no, *
FROM raw;

INSERT INTO stream.messages
SELECT msg_no,
       CASE WHEN g <= :payments THEN 'payment' ELSE 'terms' END,
       CASE WHEN g <= :payments THEN format('payment:P%s', lpad(g::text, 7, '0'))
            ELSE format('account:%s:terms', account_id) END,
       account_id,
       CASE WHEN g <= :payments THEN amount END,
       CASE WHEN g > :payments THEN
            row_number() OVER (PARTITION BY g > :payments, account_id ORDER BY msg_no) END,
       CASE WHEN g > :payments THEN credit_limit END,
       CASE WHEN g > :payments THEN status END
FROM sent;

-- when each copy reaches the broker, on the msg_no time axis
CREATE TEMP TABLE copies AS
WITH d AS (
    SELECT msg_no,
           CASE WHEN r_delayed < 0.05 THEN r_delay * 3000      -- stuck in a slow partition
                ELSE r_delay * 20 END AS delay,                -- ordinary jitter
           r_retry, r_retry_delay, r_redeliver, r_redeliver_delay
    FROM sent
)
SELECT msg_no, 'first' AS cause, msg_no + delay AS at FROM d
UNION ALL
SELECT msg_no, 'producer retry', msg_no + delay + 0.5 + r_retry_delay * 2 FROM d
WHERE r_retry < 0.30
UNION ALL
SELECT msg_no, 'broker redelivery', msg_no + delay + 500 + r_redeliver_delay * 12000 FROM d
WHERE r_redeliver < 0.15
UNION ALL
SELECT m.msg_no, 'rebalance', r + 0.5 + (m.msg_no - r) / 1000.0
FROM generate_series(4000, :messages - 1, 4000) AS r
JOIN stream.messages m ON m.msg_no > r - 250 AND m.msg_no <= r;

INSERT INTO stream.deliveries
SELECT row_number() OVER (ORDER BY at, msg_no, cause), msg_no, cause
FROM copies;

INSERT INTO stream.opening
SELECT a, 50000 FROM generate_series(1, :accounts) AS a;

ANALYZE stream.messages, stream.deliveries, stream.opening;
