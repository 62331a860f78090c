--
-- fingerprint: a duplicate (same key, same version) must repeat the original request;
-- another statement or other arguments under the same key raise ID001
--
CREATE TABLE fp_orders (id int PRIMARY KEY, amount numeric, runs int DEFAULT 1);

\set stmt 'INSERT INTO fp_orders (id, amount) VALUES ($1, $2) RETURNING id, amount'

SELECT * FROM idem_apply('f:1', NULL, :'stmt', 1, 10);
SELECT * FROM idem_apply('f:1', NULL, :'stmt', 1, 10);
SELECT xmin AS f1_xmin, ctid AS f1_ctid FROM idem_ledger WHERE key = 'f:1' \gset

-- another statement under the same key
SELECT * FROM idem_apply('f:1', NULL, 'INSERT INTO fp_orders (id, amount) VALUES ($1, $2) RETURNING id', 1, 10);
\echo SQLSTATE :SQLSTATE
-- the statement text is compared as written: even a change of spacing is another statement
SELECT * FROM idem_apply('f:1', NULL, 'INSERT INTO fp_orders (id, amount)  VALUES ($1, $2) RETURNING id, amount', 1, 10);
\echo SQLSTATE :SQLSTATE
-- other argument values
SELECT * FROM idem_apply('f:1', NULL, :'stmt', 1, 11);
\echo SQLSTATE :SQLSTATE
SELECT * FROM idem_apply('f:1', NULL, :'stmt', 2, 10);
\echo SQLSTATE :SQLSTATE
-- a NULL for a value
SELECT * FROM idem_apply('f:1', NULL, :'stmt', 1, NULL::int);
\echo SQLSTATE :SQLSTATE
-- an extra argument
SELECT * FROM idem_apply('f:1', NULL, :'stmt', 1, 10, 'extra');
\echo SQLSTATE :SQLSTATE
-- other values as an array
SELECT * FROM idem_apply('f:1', NULL, :'stmt', VARIADIC ARRAY[1, 20]);
\echo SQLSTATE :SQLSTATE
-- the same values as other types: a bigint, an untyped literal
SELECT * FROM idem_apply('f:1', NULL, :'stmt', 1::bigint, 10);
\echo SQLSTATE :SQLSTATE
SELECT * FROM idem_apply('f:1', NULL, :'stmt', 1, '10');
\echo SQLSTATE :SQLSTATE

-- none of that ran or wrote anything
SELECT * FROM fp_orders ORDER BY id;
SELECT key, rows, result, xmin = :'f1_xmin' AS same_xmin, ctid = :'f1_ctid' AS same_ctid
FROM idem_ledger WHERE key = 'f:1';

-- the true duplicate is still a duplicate, and so are the same values as a VARIADIC array
SELECT * FROM idem_apply('f:1', NULL, :'stmt', 1, 10);
SELECT status FROM idem_apply('f:1', NULL, :'stmt', VARIADIC ARRAY[1, 10]);

-- a value is hashed as it is, not as it is stored: a long argument read from a table
-- (compressed there) repeats the same request as the value computed in the call
CREATE TABLE fp_long (v text);
INSERT INTO fp_long VALUES (repeat('abc', 100000));
SELECT pg_column_size(v) < octet_length(v) AS stored_compressed FROM fp_long;
SELECT status FROM idem_apply('f:long', NULL, 'SELECT length($1) AS len', repeat('abc', 100000));
SELECT o.status, o.result FROM fp_long, idem_apply('f:long', NULL, 'SELECT length($1) AS len', fp_long.v) o;
DROP TABLE fp_long;

-- ID001 is an error: it aborts the transaction (or the savepoint) like any other
BEGIN;
SELECT status FROM idem_apply('f:2', NULL, :'stmt', 2, 20);
SAVEPOINT s;
SELECT * FROM idem_apply('f:2', NULL, :'stmt', 2, 21);
\echo SQLSTATE :SQLSTATE
ROLLBACK TO SAVEPOINT s;
SELECT status FROM idem_apply('f:2', NULL, :'stmt', 2, 20);
COMMIT;
SELECT key, rows, result FROM idem_ledger WHERE key = 'f:2';

-- policy newer: checked on v = s only
SELECT status, version FROM idem_apply('f:newer', 1, :'stmt', 10, 1);
SELECT * FROM idem_apply('f:newer', 1, :'stmt', 10, 999);
\echo SQLSTATE :SQLSTATE
SELECT * FROM idem_apply('f:newer', 0, 'SELECT ''anything'' AS stale_request');
SELECT status, version, previous_version, result FROM idem_apply('f:newer', 2,
    'UPDATE fp_orders SET amount = $2 WHERE id = $1 RETURNING id, amount', 10, 2);
SELECT * FROM idem_apply('f:newer', 2, :'stmt', 10, 2);
\echo SQLSTATE :SQLSTATE
SELECT status FROM idem_apply('f:newer', 2,
    'UPDATE fp_orders SET amount = $2 WHERE id = $1 RETURNING id, amount', 10, 2);

-- policy next: checked on v = s only; gap and stale are decided without it
SELECT status FROM idem_apply_next('f:next', 1, 'SELECT $1::int AS seq', 1);
SELECT * FROM idem_apply_next('f:next', 1, 'SELECT $1::int AS seq', 100);
\echo SQLSTATE :SQLSTATE
SELECT status FROM idem_apply_next('f:next', 3, 'SELECT ''other'' AS gap_request');
SELECT status FROM idem_apply_next('f:next', 0, 'SELECT ''other'' AS stale_request');

-- policy upsert: v = s applies again, whatever the statement
SELECT status FROM idem_upsert('f:upsert', 1, 'SELECT 1 AS first');
SELECT status, result FROM idem_upsert('f:upsert', 1, 'SELECT 2 AS second');

-- idempotent.check_fingerprint = off: the duplicate is reported, with the original
-- rows and result, and nothing runs
SET idempotent.check_fingerprint = off;
SELECT * FROM idem_apply('f:1', NULL, 'UPDATE fp_orders SET runs = runs + 1 RETURNING id', 1, 10);
SELECT * FROM idem_apply('f:1', NULL, :'stmt', 1, 11);
SELECT * FROM idem_apply('f:newer', 2, 'SELECT 1/0 AS boom');
SELECT * FROM idem_apply_next('f:next', 1, 'SELECT 1/0 AS boom');
RESET idempotent.check_fingerprint;
SELECT * FROM fp_orders ORDER BY id;
SELECT key, rows, result, xmin = :'f1_xmin' AS same_xmin, ctid = :'f1_ctid' AS same_ctid
FROM idem_ledger WHERE key = 'f:1';
-- ... also with SET LOCAL, for one transaction only
BEGIN;
SET LOCAL idempotent.check_fingerprint = off;
SELECT status FROM idem_apply('f:1', NULL, 'SELECT ''different'' AS d');
COMMIT;
SHOW idempotent.check_fingerprint;
SELECT * FROM idem_apply('f:1', NULL, 'SELECT ''different'' AS d');
\echo SQLSTATE :SQLSTATE

-- keys recorded by idem_claim have no fingerprint: any statement is a plain duplicate
SELECT status FROM idem_claim('f:claimed');
SELECT * FROM idem_apply('f:claimed', NULL, 'INSERT INTO fp_orders (id, amount) VALUES (50, 50)');
SELECT * FROM idem_apply('f:claimed', NULL, 'SELECT $1::text AS whatever', 'x');
SELECT status FROM idem_claim('f:claimed-v', 1);
SELECT * FROM idem_apply('f:claimed-v', 1, 'SELECT 1/0 AS boom');
-- and a claim of a key applied with a statement is not compared either
SELECT status, rows, result FROM idem_claim('f:1');
SELECT count(*) FROM fp_orders WHERE id = 50;
SELECT key, request_hash IS NOT NULL AS has_fingerprint FROM idem_ledger
WHERE key IN ('f:1', 'f:claimed', 'f:claimed-v') ORDER BY key;

-- the fingerprint does not depend on the session: a new connection repeating the
-- request gets a duplicate, and one changing it gets ID001
SELECT status FROM idem_apply('f:session', NULL,
    'SELECT $1::int AS i, $2::text AS t, $3::jsonb AS j, $4::numeric[] AS a',
    7, 'seven', '{"seven": 7}'::jsonb, ARRAY[7.0, 0.7]);
-- an anonymous record (ROW(...)) as an argument too
SELECT status FROM idem_apply('f:record', NULL, 'SELECT $1::text AS r', ROW(7, 'seven'));
\c -
SELECT ROW(1, 2), ROW('a', 'b', 'c');
SELECT status, result FROM idem_apply('f:1', NULL, :'stmt', 1, 10);
SELECT * FROM idem_apply('f:1', NULL, :'stmt', 1, 12);
\echo SQLSTATE :SQLSTATE
SELECT status, result FROM idem_apply('f:session', NULL,
    'SELECT $1::int AS i, $2::text AS t, $3::jsonb AS j, $4::numeric[] AS a',
    7, 'seven', '{"seven": 7}'::jsonb, ARRAY[7.0, 0.7]);
SELECT status, result FROM idem_apply('f:record', NULL, 'SELECT $1::text AS r', ROW(7, 'seven'));

SELECT key, policy, version, rows, result FROM idem_ledger WHERE key LIKE 'f:%' ORDER BY key;
DROP TABLE fp_orders;
