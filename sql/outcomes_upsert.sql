--
-- outcomes_upsert: idem_upsert (policy upsert), row by row
--
--   ledger before   | upsert
--   no row          | applied
--   v > s           | applied
--   v = s           | applied (runs again)
--   v < s           | stale
--   once key seen   | error ID002
--
-- upsert_profile: the latest state of a profile; runs counts how often the statement ran.
CREATE TABLE upsert_profile (id int PRIMARY KEY, email text, version bigint, runs int);

\set stmt 'INSERT INTO upsert_profile VALUES ($1, $2, $3, 1) ON CONFLICT (id) DO UPDATE SET email = excluded.email, version = excluded.version, runs = upsert_profile.runs + 1 RETURNING email, runs'

-- no row: applied, version = v, previous_version NULL
SELECT * FROM idem_upsert('u:1', 3, :'stmt', 1, 'a@example.com', 3);
SELECT * FROM upsert_profile ORDER BY id;
SELECT key, policy, version, rows, result FROM idem_ledger WHERE key LIKE 'u:%' ORDER BY key;

-- v = s: applied again; version = previous_version = s; the statement ran a second time
-- and its new rows and result replace the stored ones
SELECT * FROM idem_upsert('u:1', 3, :'stmt', 1, 'b@example.com', 3);
SELECT * FROM upsert_profile ORDER BY id;
SELECT key, policy, version, rows, result FROM idem_ledger WHERE key LIKE 'u:%' ORDER BY key;

-- v > s: applied, version = v, previous_version = s
SELECT * FROM idem_upsert('u:1', 5, :'stmt', 1, 'c@example.com', 5);
SELECT * FROM upsert_profile ORDER BY id;
SELECT key, policy, version, rows, result FROM idem_ledger WHERE key LIKE 'u:%' ORDER BY key;
SELECT xmin AS u_xmin, ctid AS u_ctid FROM idem_ledger WHERE key = 'u:1' \gset

-- v < s: stale, version = previous_version = s, rows and result NULL; nothing runs
SELECT * FROM idem_upsert('u:1', 4, :'stmt', 1, 'old@example.com', 4);
SELECT * FROM idem_upsert('u:1', 0, 'SELECT 1/0 AS boom');
SELECT * FROM upsert_profile ORDER BY id;
SELECT key, policy, version, rows, result,
       xmin = :'u_xmin' AS same_xmin, ctid = :'u_ctid' AS same_ctid
FROM idem_ledger WHERE key = 'u:1';

-- v = s with another statement is applied too: upsert has no duplicates to compare
SELECT * FROM idem_upsert('u:1', 5, 'UPDATE upsert_profile SET runs = runs + 100 WHERE id = $1', 1);
SELECT * FROM upsert_profile ORDER BY id;
SELECT key, policy, version, rows, result FROM idem_ledger WHERE key = 'u:1';

-- version 0 and the 3-argument form
SELECT * FROM idem_upsert('u:2', 0, 'INSERT INTO upsert_profile VALUES (2, ''z@example.com'', 0, 1)');
SELECT * FROM idem_upsert('u:2', 0, 'UPDATE upsert_profile SET runs = runs + 1 WHERE id = 2');
SELECT * FROM upsert_profile ORDER BY id;

SELECT key, policy, version, rows, result FROM idem_ledger WHERE key LIKE 'u:%' ORDER BY key;

-- an upsert key used with another policy: ID002, nothing runs, nothing changes
SELECT * FROM idem_apply('u:1', 6, :'stmt', 1, 'x@example.com', 6);
\echo SQLSTATE :SQLSTATE
SELECT * FROM idem_apply('u:1', NULL, :'stmt', 1, 'x@example.com', 6);
\echo SQLSTATE :SQLSTATE
SELECT * FROM idem_apply_next('u:1', 6, :'stmt', 1, 'x@example.com', 6);
\echo SQLSTATE :SQLSTATE
SELECT * FROM idem_claim('u:1', 6, 'newer');
\echo SQLSTATE :SQLSTATE
SELECT * FROM upsert_profile ORDER BY id;
SELECT key, policy, version, rows, result FROM idem_ledger WHERE key = 'u:1';

-- once, newer and next keys used with idem_upsert: ID002
SELECT status FROM idem_apply('u:once', NULL, 'SELECT 1 AS one');
SELECT * FROM idem_upsert('u:once', 1, 'SELECT 1 AS one');
\echo SQLSTATE :SQLSTATE
SELECT status FROM idem_apply('u:newer', 1, 'SELECT 1 AS one');
SELECT * FROM idem_upsert('u:newer', 1, 'SELECT 1 AS one');
\echo SQLSTATE :SQLSTATE
SELECT status FROM idem_apply_next('u:next', 1, 'SELECT 1 AS one');
SELECT * FROM idem_upsert('u:next', 2, 'SELECT 1 AS one');
\echo SQLSTATE :SQLSTATE
SELECT key, policy, version, rows, result FROM idem_ledger
WHERE key IN ('u:once', 'u:newer', 'u:next') ORDER BY key;

DROP TABLE upsert_profile;
