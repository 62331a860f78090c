--
-- outcomes_next: idem_apply_next (policy next, a strict sequence), row by row
--
--   ledger before   | next
--   no row          | v = 1: applied; else gap
--   v > s           | v = s+1: applied; else gap
--   v = s           | duplicate
--   v < s           | stale
--   once key seen   | error ID002
--
-- next_events keeps the events of a stream in the order they were applied.
CREATE TABLE next_events (stream text, seq bigint, payload text, PRIMARY KEY (stream, seq));

\set stmt 'INSERT INTO next_events VALUES ($1, $2, $3) RETURNING seq, payload'

-- no row, v <> 1: gap, every field but status and applied NULL; nothing recorded
SELECT * FROM idem_apply_next('s:a', 2, :'stmt', 'a', 2, 'second');
SELECT * FROM idem_apply_next('s:a', 0, :'stmt', 'a', 0, 'zeroth');
SELECT * FROM next_events ORDER BY stream, seq;
SELECT key, policy, version, rows, result FROM idem_ledger WHERE key LIKE 's:%' ORDER BY key;

-- no row, v = 1: applied, version 1, previous_version NULL
SELECT * FROM idem_apply_next('s:a', 1, :'stmt', 'a', 1, 'first');
SELECT * FROM next_events ORDER BY stream, seq;
SELECT key, policy, version, rows, result FROM idem_ledger WHERE key LIKE 's:%' ORDER BY key;
SELECT xmin AS a_xmin, ctid AS a_ctid FROM idem_ledger WHERE key = 's:a' \gset

-- v > s + 1: gap, version = previous_version = s, rows and result NULL; nothing runs
SELECT * FROM idem_apply_next('s:a', 3, :'stmt', 'a', 3, 'third');
SELECT * FROM idem_apply_next('s:a', 3, 'SELECT 1/0 AS boom');
SELECT * FROM next_events ORDER BY stream, seq;
SELECT key, policy, version, rows, result,
       xmin = :'a_xmin' AS same_xmin, ctid = :'a_ctid' AS same_ctid
FROM idem_ledger WHERE key = 's:a';

-- v = s + 1: applied, version = v, previous_version = s
SELECT * FROM idem_apply_next('s:a', 2, :'stmt', 'a', 2, 'second');
SELECT * FROM next_events ORDER BY stream, seq;
SELECT key, policy, version, rows, result FROM idem_ledger WHERE key = 's:a';
SELECT xmin AS a_xmin, ctid AS a_ctid FROM idem_ledger WHERE key = 's:a' \gset

-- the held-back event is now next
SELECT * FROM idem_apply_next('s:a', 3, :'stmt', 'a', 3, 'third');
SELECT * FROM next_events ORDER BY stream, seq;
SELECT xmin AS a_xmin, ctid AS a_ctid FROM idem_ledger WHERE key = 's:a' \gset

-- v = s: duplicate, version = previous_version = s, rows and result of the v3 application
SELECT * FROM idem_apply_next('s:a', 3, :'stmt', 'a', 3, 'third');

-- v < s: stale, version = previous_version = s, rows and result NULL; nothing runs
SELECT * FROM idem_apply_next('s:a', 2, :'stmt', 'a', 2, 'second');
SELECT * FROM idem_apply_next('s:a', 1, 'SELECT 1/0 AS boom');
SELECT * FROM idem_apply_next('s:a', 0, :'stmt', 'a', 0, 'zeroth');

-- duplicate, stale and gap wrote nothing, ran nothing
SELECT * FROM next_events ORDER BY stream, seq;
SELECT key, policy, version, rows, result,
       xmin = :'a_xmin' AS same_xmin, ctid = :'a_ctid' AS same_ctid
FROM idem_ledger WHERE key = 's:a';

-- the 3-argument form
SELECT * FROM idem_apply_next('s:b', 1, 'INSERT INTO next_events VALUES (''b'', 1, ''only'')');
SELECT * FROM idem_apply_next('s:b', 1, 'INSERT INTO next_events VALUES (''b'', 1, ''only'')');
SELECT * FROM next_events ORDER BY stream, seq;

SELECT key, policy, version, rows, result FROM idem_ledger WHERE key LIKE 's:%' ORDER BY key;

-- a next key used with another policy: ID002, nothing runs, nothing changes
SELECT * FROM idem_apply('s:a', 4, :'stmt', 'a', 4, 'fourth');
\echo SQLSTATE :SQLSTATE
SELECT * FROM idem_apply('s:a', NULL, :'stmt', 'a', 4, 'fourth');
\echo SQLSTATE :SQLSTATE
SELECT * FROM idem_upsert('s:a', 4, :'stmt', 'a', 4, 'fourth');
\echo SQLSTATE :SQLSTATE
SELECT * FROM idem_claim('s:a', 4);
\echo SQLSTATE :SQLSTATE
SELECT * FROM next_events ORDER BY stream, seq;
SELECT key, policy, version, rows, result FROM idem_ledger WHERE key = 's:a';

-- a once key and a newer key used with idem_apply_next: ID002
SELECT status FROM idem_apply('s:once', NULL, 'SELECT 1 AS one');
SELECT * FROM idem_apply_next('s:once', 1, 'SELECT 1 AS one');
\echo SQLSTATE :SQLSTATE
SELECT status FROM idem_apply('s:newer', 1, 'SELECT 1 AS one');
SELECT * FROM idem_apply_next('s:newer', 2, 'SELECT 1 AS one');
\echo SQLSTATE :SQLSTATE
SELECT key, policy, version, rows, result FROM idem_ledger WHERE key IN ('s:once', 's:newer') ORDER BY key;

DROP TABLE next_events;
