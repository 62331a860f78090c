--
-- outcomes_newer: idem_apply with a version (policy newer), row by row
--
--   ledger before   | newer
--   no row          | applied
--   v > s           | applied
--   v = s           | duplicate
--   v < s           | stale
--   once key seen   | error ID002
--
-- newer_prices holds the latest price per product; runs counts how often the
-- statement really ran.
CREATE TABLE newer_prices (product text PRIMARY KEY, price numeric, version bigint, runs int);
CREATE TABLE newer_keep (product text, price numeric);

\set stmt 'INSERT INTO newer_prices VALUES ($1, $2, $3, 1) ON CONFLICT (product) DO UPDATE SET price = excluded.price, version = excluded.version, runs = newer_prices.runs + 1 RETURNING product, price, runs'

-- no row: applied, version = v, previous_version NULL
SELECT * FROM idem_apply('n:widget', 5, :'stmt', 'widget', 9.99, 5);
SELECT * FROM newer_prices ORDER BY product;
SELECT key, policy, version, rows, result FROM idem_ledger WHERE key LIKE 'n:%' ORDER BY key;

-- v > s: applied, version = v, previous_version = s
SELECT * FROM idem_apply('n:widget', 7, :'stmt', 'widget', 12.50, 7);
SELECT * FROM newer_prices ORDER BY product;
SELECT key, policy, version, rows, result FROM idem_ledger WHERE key LIKE 'n:%' ORDER BY key;
SELECT xmin AS w_xmin, ctid AS w_ctid FROM idem_ledger WHERE key = 'n:widget' \gset

-- v = s: duplicate, version = previous_version = s, rows and result of the v7 application
SELECT * FROM idem_apply('n:widget', 7, :'stmt', 'widget', 12.50, 7);
SELECT * FROM newer_prices ORDER BY product;

-- v < s: stale, version = previous_version = s, rows and result NULL; nothing runs,
-- even a statement that would fail, and its arguments are not compared
SELECT * FROM idem_apply('n:widget', 6, :'stmt', 'widget', 11.00, 6);
SELECT * FROM idem_apply('n:widget', 0, 'SELECT 1/0 AS boom');
SELECT * FROM newer_prices ORDER BY product;

-- duplicate and stale wrote nothing: the ledger row is the one v7 wrote
SELECT key, policy, version, rows, result,
       xmin = :'w_xmin' AS same_xmin, ctid = :'w_ctid' AS same_ctid
FROM idem_ledger WHERE key = 'n:widget';

-- v > s again, by a wide margin (versions need not be consecutive)
SELECT * FROM idem_apply('n:widget', 1000, :'stmt', 'widget', 15.00, 1000);
SELECT * FROM newer_prices ORDER BY product;

-- version 0 is a version like any other; bigint's maximum too
SELECT * FROM idem_apply('n:zero', 0, 'INSERT INTO newer_keep VALUES ($1, $2)', 'zero', 0);
SELECT * FROM idem_apply('n:zero', 0, 'INSERT INTO newer_keep VALUES ($1, $2)', 'zero', 0);
SELECT * FROM idem_apply('n:zero', 9223372036854775807, 'INSERT INTO newer_keep VALUES ($1, $2)', 'max', 1);
SELECT * FROM idem_apply('n:zero', 9223372036854775806, 'INSERT INTO newer_keep VALUES ($1, $2)', 'max-1', 2);
SELECT * FROM newer_keep ORDER BY product;

-- a SELECT under policy newer: the result is replaced on each newer version
SELECT * FROM idem_apply('n:sel', 1, 'SELECT $1::text AS label', 'one');
SELECT * FROM idem_apply('n:sel', 2, 'SELECT $1::text AS label', 'two');
SELECT * FROM idem_apply('n:sel', 2, 'SELECT $1::text AS label', 'two');
SELECT * FROM idem_apply('n:sel', 1, 'SELECT $1::text AS label', 'one');

SELECT key, policy, version, rows, result FROM idem_ledger WHERE key LIKE 'n:%' ORDER BY key;

-- a newer key used with another policy: ID002, nothing runs, nothing changes
SELECT * FROM idem_apply('n:widget', NULL, :'stmt', 'widget', 1.00, 0);
\echo SQLSTATE :SQLSTATE
SELECT * FROM idem_apply_next('n:widget', 1001, :'stmt', 'widget', 1.00, 1001);
\echo SQLSTATE :SQLSTATE
SELECT * FROM idem_upsert('n:widget', 1001, :'stmt', 'widget', 1.00, 1001);
\echo SQLSTATE :SQLSTATE
SELECT * FROM idem_claim('n:widget');
\echo SQLSTATE :SQLSTATE
SELECT * FROM idem_claim('n:widget', 1001, 'upsert');
\echo SQLSTATE :SQLSTATE
SELECT * FROM newer_prices ORDER BY product;
SELECT key, policy, version, rows, result FROM idem_ledger WHERE key = 'n:widget';

-- a once key used with a version: ID002
SELECT status FROM idem_apply('n:once', NULL, 'SELECT 1 AS one');
SELECT * FROM idem_apply('n:once', 1, 'SELECT 1 AS one');
\echo SQLSTATE :SQLSTATE
SELECT key, policy, version, rows, result FROM idem_ledger WHERE key = 'n:once';

DROP TABLE newer_prices, newer_keep;
