--
-- outcomes_once: idem_apply with a NULL version (policy once), row by row
--
--   ledger before   | once
--   no row          | applied
--   once key seen   | duplicate
--   versioned key   | error ID002
--
CREATE TABLE once_orders (id int PRIMARY KEY, item text, qty int);

-- no row: applied; version and previous_version NULL; rows and result of the statement
SELECT * FROM idem_apply('o:1', NULL,
    'INSERT INTO once_orders VALUES ($1, $2, $3) RETURNING id, item, qty', 1, 'apple', 3);
SELECT * FROM once_orders ORDER BY id;
SELECT key, policy, version, rows, result, request_hash IS NOT NULL AS has_fingerprint
FROM idem_ledger WHERE key LIKE 'o:%' ORDER BY key;
SELECT xmin AS o1_xmin, ctid AS o1_ctid FROM idem_ledger WHERE key = 'o:1' \gset

-- once key seen: duplicate; the statement does not run; rows and result replayed
SELECT * FROM idem_apply('o:1', NULL,
    'INSERT INTO once_orders VALUES ($1, $2, $3) RETURNING id, item, qty', 1, 'apple', 3);
SELECT * FROM once_orders ORDER BY id;
-- the ledger row was not touched
SELECT key, policy, version, rows, result,
       xmin = :'o1_xmin' AS same_xmin, ctid = :'o1_ctid' AS same_ctid
FROM idem_ledger WHERE key LIKE 'o:%' ORDER BY key;

-- and again, in the same transaction as other work: still a duplicate
BEGIN;
SELECT status, applied, version, previous_version, rows, result
FROM idem_apply('o:1', NULL,
    'INSERT INTO once_orders VALUES ($1, $2, $3) RETURNING id, item, qty', 1, 'apple', 3);
SELECT count(*) FROM once_orders;
COMMIT;

-- a statement that processes no rows is applied all the same (rows 0, result NULL)
SELECT * FROM idem_apply('o:2', NULL, 'UPDATE once_orders SET qty = qty + 1 WHERE id = $1', 99);
SELECT * FROM idem_apply('o:2', NULL, 'UPDATE once_orders SET qty = qty + 1 WHERE id = $1', 99);

-- an UPDATE without RETURNING: rows counted, result NULL
SELECT * FROM idem_apply('o:3', NULL, 'UPDATE once_orders SET qty = qty + 10 WHERE id = $1', 1);
SELECT * FROM idem_apply('o:3', NULL, 'UPDATE once_orders SET qty = qty + 10 WHERE id = $1', 1);
SELECT * FROM once_orders ORDER BY id;

-- the 3-argument form
SELECT * FROM idem_apply('o:4', NULL, 'INSERT INTO once_orders VALUES (4, ''pear'', 1)');
SELECT * FROM idem_apply('o:4', NULL, 'INSERT INTO once_orders VALUES (4, ''pear'', 1)');
SELECT * FROM once_orders ORDER BY id;

SELECT key, policy, version, rows, result FROM idem_ledger WHERE key LIKE 'o:%' ORDER BY key;

-- once key used with a version (policy newer) or the other policies: ID002, nothing changes
SELECT * FROM idem_apply('o:1', 1,
    'INSERT INTO once_orders VALUES ($1, $2, $3) RETURNING id, item, qty', 1, 'apple', 3);
\echo SQLSTATE :SQLSTATE
SELECT * FROM idem_apply_next('o:1', 1,
    'INSERT INTO once_orders VALUES ($1, $2, $3) RETURNING id, item, qty', 1, 'apple', 3);
\echo SQLSTATE :SQLSTATE
SELECT * FROM idem_upsert('o:1', 1,
    'INSERT INTO once_orders VALUES ($1, $2, $3) RETURNING id, item, qty', 1, 'apple', 3);
\echo SQLSTATE :SQLSTATE
SELECT * FROM idem_claim('o:1', 1);
\echo SQLSTATE :SQLSTATE
SELECT key, policy, version, rows, result,
       xmin = :'o1_xmin' AS same_xmin, ctid = :'o1_ctid' AS same_ctid
FROM idem_ledger WHERE key = 'o:1';
SELECT * FROM once_orders ORDER BY id;

-- a versioned key used with policy once: ID002 as well
SELECT status, version FROM idem_apply('o:5', 1, 'SELECT 1 AS one');
SELECT * FROM idem_apply('o:5', NULL, 'SELECT 1 AS one');
\echo SQLSTATE :SQLSTATE
SELECT * FROM idem_claim('o:5');
\echo SQLSTATE :SQLSTATE
SELECT key, policy, version, rows, result FROM idem_ledger WHERE key = 'o:5';

-- a key applied with policy once, then claimed with no version (policy once, by
-- default or by name): a duplicate, replaying the original rows and result
SELECT * FROM idem_apply('o:6', NULL, 'SELECT $1::int AS n', 6);
SELECT * FROM idem_claim('o:6');
SELECT * FROM idem_claim('o:6', NULL, 'once');

SELECT key, policy, version, rows, result FROM idem_ledger WHERE key LIKE 'o:%' ORDER BY key;
DROP TABLE once_orders;

-- a duplicate is decided before its statement is planned: a later rename of
-- the table it names does not make a redelivery (in a new session) fail
CREATE TABLE once_renamed (a int);
SELECT status FROM idem_apply('o:renamed', NULL, 'INSERT INTO once_renamed VALUES (1)');
ALTER TABLE once_renamed RENAME TO once_renamed2;
\c
SELECT status, rows FROM idem_apply('o:renamed', NULL, 'INSERT INTO once_renamed VALUES (1)');
SELECT count(*) FROM once_renamed2;
DROP TABLE once_renamed2;
