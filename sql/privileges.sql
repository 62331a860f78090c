--
-- privileges: EXECUTE is not granted to PUBLIC; ordinary roles cannot touch the
-- ledger directly; the statement runs with the caller's rights and search_path
--
CREATE ROLE regress_idem_none;
CREATE ROLE regress_idem_app;
CREATE TABLE priv_orders (id int PRIMARY KEY, amount int);
GRANT SELECT, INSERT ON priv_orders TO regress_idem_none, regress_idem_app;
CREATE TABLE priv_secret (id int, note text);
CREATE SCHEMA priv_s1;
CREATE SCHEMA priv_s2;
CREATE TABLE priv_s1.priv_inbox (msg text);
CREATE TABLE priv_s2.priv_inbox (msg text);
GRANT USAGE ON SCHEMA priv_s1, priv_s2 TO regress_idem_app;
GRANT SELECT, INSERT ON priv_s1.priv_inbox, priv_s2.priv_inbox TO regress_idem_app;

-- a role without EXECUTE: 42501 from every function, nothing runs, nothing recorded
SET ROLE regress_idem_none;
SELECT * FROM idem_apply('v:none', NULL, 'INSERT INTO priv_orders VALUES (1, 1)');
\echo SQLSTATE :SQLSTATE
SELECT * FROM idem_apply('v:none', NULL, 'INSERT INTO priv_orders VALUES ($1, $2)', 1, 1);
\echo SQLSTATE :SQLSTATE
SELECT * FROM idem_apply_next('v:none', 1, 'INSERT INTO priv_orders VALUES ($1, $2)', 1, 1);
\echo SQLSTATE :SQLSTATE
SELECT * FROM idem_upsert('v:none', 1, 'INSERT INTO priv_orders VALUES (1, 1)');
\echo SQLSTATE :SQLSTATE
SELECT * FROM idem_claim('v:none');
\echo SQLSTATE :SQLSTATE
-- nor can it read or change the ledger
SELECT count(*) FROM idem_ledger;
\echo SQLSTATE :SQLSTATE
INSERT INTO idem_ledger (applied_at, policy, key) VALUES (now(), 'o', 'v:forged');
\echo SQLSTATE :SQLSTATE
RESET ROLE;
SELECT count(*) AS recorded FROM idem_ledger WHERE key LIKE 'v:%';
SELECT count(*) AS orders FROM priv_orders;

-- the grant an application role needs (README, "Privileges")
GRANT EXECUTE ON FUNCTION
    idem_apply(text, bigint, text), idem_apply(text, bigint, text, "any"),
    idem_apply_next(text, bigint, text), idem_apply_next(text, bigint, text, "any"),
    idem_upsert(text, bigint, text), idem_upsert(text, bigint, text, "any"),
    idem_claim(text, bigint, text)
TO regress_idem_app;
SELECT p.oid::regprocedure AS function,
       has_function_privilege('regress_idem_app', p.oid, 'EXECUTE') AS app,
       has_function_privilege('regress_idem_none', p.oid, 'EXECUTE') AS none
FROM pg_proc p
WHERE p.pronamespace = 'public'::regnamespace AND p.proname LIKE 'idem\_%'
ORDER BY p.oid::regprocedure::text COLLATE "C";

-- the superuser applies a statement on priv_secret (the plan is now prepared in this session)
SELECT status FROM idem_apply('v:secret-su', NULL, 'INSERT INTO priv_secret VALUES ($1, $2)', 1, 'superuser');

SET ROLE regress_idem_app;
-- the statement runs as the calling role
SELECT status, applied, rows, result FROM idem_apply('v:app-1', NULL,
    'INSERT INTO priv_orders VALUES ($1, $2) RETURNING id, amount, current_user AS who', 1, 100);
SELECT status, applied, rows, result FROM idem_apply('v:app-1', NULL,
    'INSERT INTO priv_orders VALUES ($1, $2) RETURNING id, amount, current_user AS who', 1, 100);
SELECT status FROM idem_apply_next('v:app-next', 1, 'INSERT INTO priv_orders VALUES ($1, $2)', 2, 200);
SELECT status FROM idem_upsert('v:app-upsert', 1, 'SELECT count(*) AS n FROM priv_orders');
SELECT status FROM idem_claim('v:app-claim');
SELECT * FROM priv_orders ORDER BY id;
-- still no direct access to the ledger
SELECT count(*) FROM idem_ledger;
\echo SQLSTATE :SQLSTATE
INSERT INTO idem_ledger (applied_at, policy, key) VALUES (now(), 'o', 'v:forged');
\echo SQLSTATE :SQLSTATE
UPDATE idem_ledger SET version = 99 WHERE key = 'v:app-1';
\echo SQLSTATE :SQLSTATE
DELETE FROM idem_ledger WHERE key = 'v:app-1';
\echo SQLSTATE :SQLSTATE
TRUNCATE idem_ledger;
\echo SQLSTATE :SQLSTATE
-- no rights of its own on priv_secret, and idem_apply lends none: 42501 from the
-- statement (the same text the superuser ran), nothing recorded
SELECT * FROM idem_apply('v:secret-app', NULL, 'INSERT INTO priv_secret VALUES ($1, $2)', 2, 'app');
\echo SQLSTATE :SQLSTATE
SELECT * FROM idem_apply('v:secret-read', NULL, 'SELECT * FROM priv_secret');
\echo SQLSTATE :SQLSTATE
-- the settings limited to superusers: 42501; the others it may change
SET idempotent.max_key_bytes = 1000;
\echo SQLSTATE :SQLSTATE
SET idempotent.max_result_bytes = 1000000;
\echo SQLSTATE :SQLSTATE
SET idempotent.wait = off;
SET idempotent.check_fingerprint = off;
RESET idempotent.wait;
RESET idempotent.check_fingerprint;
-- the statement resolves names with the caller's search_path: the same text goes to
-- another table when search_path changes
SET search_path = priv_s1, public;
SELECT status, result FROM idem_apply('v:path-1', NULL,
    'INSERT INTO priv_inbox VALUES ($1) RETURNING msg, (SELECT relnamespace::regnamespace::text FROM pg_class WHERE oid = priv_inbox.tableoid) AS schema', 'to s1');
SET search_path = priv_s2, public;
SELECT status, result FROM idem_apply('v:path-2', NULL,
    'INSERT INTO priv_inbox VALUES ($1) RETURNING msg, (SELECT relnamespace::regnamespace::text FROM pg_class WHERE oid = priv_inbox.tableoid) AS schema', 'to s2');
SET search_path = public, priv_s1;
SELECT status, result FROM idem_apply('v:path-3', NULL,
    'INSERT INTO priv_inbox VALUES ($1) RETURNING msg, (SELECT relnamespace::regnamespace::text FROM pg_class WHERE oid = priv_inbox.tableoid) AS schema', 'to s1 again');
RESET search_path;
SELECT * FROM priv_s1.priv_inbox ORDER BY msg;
SELECT * FROM priv_s2.priv_inbox ORDER BY msg;
-- with neither schema on the path the name does not resolve: 42P01, nothing recorded
SELECT * FROM idem_apply('v:path-none', NULL, 'INSERT INTO priv_inbox VALUES ($1)', 'nowhere');
\echo SQLSTATE :SQLSTATE
RESET ROLE;

SELECT * FROM priv_secret ORDER BY id;
SELECT key, policy, version, rows, result FROM idem_ledger WHERE key LIKE 'v:%' ORDER BY key;

DROP TABLE priv_orders, priv_secret;
DROP SCHEMA priv_s1 CASCADE;
DROP SCHEMA priv_s2 CASCADE;
REVOKE EXECUTE ON FUNCTION
    idem_apply(text, bigint, text), idem_apply(text, bigint, text, "any"),
    idem_apply_next(text, bigint, text), idem_apply_next(text, bigint, text, "any"),
    idem_upsert(text, bigint, text), idem_upsert(text, bigint, text, "any"),
    idem_claim(text, bigint, text)
FROM regress_idem_app;
DROP ROLE regress_idem_none;
DROP ROLE regress_idem_app;
