--
-- scopes: results go only to their request, and keys live in scopes.  A scope
-- names a role; only a role with that role's privileges may record, read,
-- forget, reset or purge its keys.  The shared scope ('') is open to every role
-- with EXECUTE.
--
CREATE ROLE regress_idem_billing NOLOGIN;          -- the scope of the billing application
CREATE ROLE regress_idem_biller;                   -- billing's consumer: a member of it
CREATE ROLE regress_idem_intruder;                 -- another application: EXECUTE only
GRANT regress_idem_billing TO regress_idem_biller;
GRANT EXECUTE ON FUNCTION
    idem_apply(text, bigint, text), idem_apply(text, bigint, text, "any"),
    idem_apply_next(text, bigint, text), idem_upsert(text, bigint, text),
    idem_claim(text, bigint, text), idem_get(text), idem_forget(text),
    idem_reset(text, bigint, text), idem_purge(integer),
    idem_begin(text, interval, jsonb), idem_complete(text, integer, jsonb),
    idem_fail(text, integer, text, interval)
TO regress_idem_biller, regress_idem_intruder;
CREATE TABLE sc_secret (id int, card text);
INSERT INTO sc_secret VALUES (1, '4111-1111-1111-1111');
GRANT SELECT ON sc_secret TO regress_idem_billing;
CREATE TABLE sc_runs (who text, what text);
GRANT SELECT, INSERT ON sc_runs TO regress_idem_biller, regress_idem_intruder;

--
-- Results only to their request (shared scope)
--
-- billing reads a card under key 'billing:1' in the shared scope
SET ROLE regress_idem_biller;
SELECT status, rows, result FROM idem_apply('billing:1', NULL,
    'SELECT card FROM sc_secret WHERE id = $1', 1);
RESET ROLE;
SET ROLE regress_idem_intruder;
-- the intruder cannot read the table ...
SELECT card FROM sc_secret;
\echo SQLSTATE :SQLSTATE
-- ... nor get the stored result by claiming the key: duplicate, rows and result NULL
SELECT * FROM idem_claim('billing:1');
-- it may not switch the request check off
SET idempotent.check_fingerprint = off;
\echo SQLSTATE :SQLSTATE
BEGIN;
SET LOCAL idempotent.check_fingerprint = off;
\echo SQLSTATE :SQLSTATE
ROLLBACK;
SHOW idempotent.check_fingerprint;
-- another statement on that key is a reused key: ID001, never the result
SELECT * FROM idem_apply('billing:1', NULL, 'SELECT $1 AS anything', 1);
\echo SQLSTATE :SQLSTATE
SELECT * FROM idem_apply('billing:1', NULL, 'INSERT INTO sc_runs VALUES (current_user, ''ran'')');
\echo SQLSTATE :SQLSTATE
-- the same statement with other arguments too
SELECT * FROM idem_apply('billing:1', NULL, 'SELECT card FROM sc_secret WHERE id = $1', 2);
\echo SQLSTATE :SQLSTATE
-- the shared scope's trade-off: a role that repeats the exact request is that
-- request, and idem_get shows any shared key; a scope closes both (below)
SELECT status, result FROM idem_apply('billing:1', NULL,
    'SELECT card FROM sc_secret WHERE id = $1', 1);
SELECT key, scope, rows, result FROM idem_get('billing:1');
RESET ROLE;
-- a superuser with the check off gets "duplicate", without the original's rows or result
SET idempotent.check_fingerprint = off;
SELECT * FROM idem_apply('billing:1', NULL, 'SELECT $1 AS anything', 1);
SELECT * FROM idem_apply('billing:1', NULL, 'SELECT card FROM sc_secret WHERE id = $1', 2);
-- and the true request still gets them
SELECT status, rows, result FROM idem_apply('billing:1', NULL,
    'SELECT card FROM sc_secret WHERE id = $1', 1);
RESET idempotent.check_fingerprint;
SELECT count(*) AS runs FROM sc_runs;

--
-- Scopes
--
-- a scope that names no role: 42704, nothing recorded
SET idempotent.scope = 'regress_idem_nobody';
SELECT * FROM idem_claim('sc:ghost');
\echo SQLSTATE :SQLSTATE
SELECT * FROM idem_apply('sc:ghost', NULL, 'SELECT 1 AS one');
\echo SQLSTATE :SQLSTATE
SELECT * FROM idem_get('sc:ghost');
\echo SQLSTATE :SQLSTATE
SELECT * FROM idem_begin('sc:ghost');
\echo SQLSTATE :SQLSTATE
RESET idempotent.scope;
-- scope names are role names as written, not identifiers: case matters
SET idempotent.scope = 'REGRESS_IDEM_BILLING';
SELECT * FROM idem_claim('sc:ghost');
\echo SQLSTATE :SQLSTATE
RESET idempotent.scope;

-- billing's consumer records keys in scope billing (it is a member)
SET ROLE regress_idem_biller;
SET idempotent.scope = 'regress_idem_billing';
SELECT status, rows, result FROM idem_apply('invoice:7', NULL,
    'SELECT card FROM sc_secret WHERE id = $1', 1);
SELECT status, version FROM idem_apply('invoice:8', 3,
    'INSERT INTO sc_runs VALUES (current_user, $1) RETURNING what', 'billing 8 v3');
SELECT status FROM idem_claim('invoice:9');
SELECT status FROM idem_claim('invoice:purge-1');
SELECT status FROM idem_claim('invoice:purge-2');
SELECT key, policy, version, rows, result, scope FROM idem_get('invoice:7');
-- the same key in the shared scope is another key: it applies, with its own version and result
RESET idempotent.scope;
SELECT key, scope FROM idem_get('invoice:8');
SELECT status, version, previous_version FROM idem_apply('invoice:8', 1,
    'INSERT INTO sc_runs VALUES (current_user, $1) RETURNING what', 'shared 8 v1');
SELECT key, policy, version, result, scope FROM idem_get('invoice:8');
SELECT status FROM idem_claim('invoice:purge-1');
SET idempotent.scope = 'regress_idem_billing';
SELECT key, policy, version, result, scope FROM idem_get('invoice:8');
SELECT status, version, result FROM idem_apply('invoice:8', 3,
    'INSERT INTO sc_runs VALUES (current_user, $1) RETURNING what', 'billing 8 v3');
RESET idempotent.scope;
RESET ROLE;

-- the intruder may not use scope billing: 42501 from every function, nothing recorded,
-- nothing read, nothing changed
SET ROLE regress_idem_intruder;
SET idempotent.scope = 'regress_idem_billing';
SHOW idempotent.scope;
SELECT * FROM idem_apply('invoice:7', NULL, 'SELECT card FROM sc_secret WHERE id = $1', 1);
\echo SQLSTATE :SQLSTATE
SELECT * FROM idem_apply('invoice:new', NULL, 'INSERT INTO sc_runs VALUES (current_user, ''squat'')');
\echo SQLSTATE :SQLSTATE
SELECT * FROM idem_claim('invoice:7');
\echo SQLSTATE :SQLSTATE
SELECT * FROM idem_claim('invoice:10');
\echo SQLSTATE :SQLSTATE
SELECT * FROM idem_get('invoice:7');
\echo SQLSTATE :SQLSTATE
SELECT idem_forget('invoice:9');
\echo SQLSTATE :SQLSTATE
SELECT idem_reset('invoice:8', 100);
\echo SQLSTATE :SQLSTATE
SELECT idem_reset('invoice:11', 100);
\echo SQLSTATE :SQLSTATE
SELECT idem_purge();
\echo SQLSTATE :SQLSTATE
SELECT * FROM idem_apply_next('invoice:n', 1, 'SELECT 1');
\echo SQLSTATE :SQLSTATE
SELECT * FROM idem_upsert('invoice:u', 1, 'SELECT 1');
\echo SQLSTATE :SQLSTATE
-- leases too: failures counted by another role could make billing's key dead
SELECT * FROM idem_begin('invoice:7');
\echo SQLSTATE :SQLSTATE
SELECT idem_complete('invoice:7', 1);
\echo SQLSTATE :SQLSTATE
SELECT * FROM idem_fail('invoice:7', NULL, 'squatted');
\echo SQLSTATE :SQLSTATE
SELECT * FROM idem_fail('invoice:f', NULL, 'squatted');
\echo SQLSTATE :SQLSTATE
-- the check is made before bad input is looked at
SELECT * FROM idem_claim('invoice:12', -1);
\echo SQLSTATE :SQLSTATE
RESET idempotent.scope;
-- key squatting: in its own (shared) scope the intruder claims billing's next keys
-- first; billing's real messages, in its scope, are not affected
SELECT status FROM idem_claim('invoice:10');
SELECT status FROM idem_apply('invoice:11', NULL, 'INSERT INTO sc_runs VALUES (current_user, ''squat'')');
RESET ROLE;
SET ROLE regress_idem_biller;
SET idempotent.scope = 'regress_idem_billing';
SELECT status, applied FROM idem_apply('invoice:10', NULL,
    'INSERT INTO sc_runs VALUES (current_user, $1)', 'billing 10');
SELECT status, applied FROM idem_apply('invoice:11', NULL,
    'INSERT INTO sc_runs VALUES (current_user, $1)', 'billing 11');
RESET idempotent.scope;
RESET ROLE;
-- every role has its own privileges: the intruder may keep its keys in a scope of its own
SET ROLE regress_idem_intruder;
SET idempotent.scope = 'regress_idem_intruder';
SELECT status FROM idem_claim('invoice:10');
SELECT key, scope FROM idem_get('invoice:10');
RESET idempotent.scope;
RESET ROLE;
SELECT who, what FROM sc_runs ORDER BY who, what;

-- membership is what counts: without it, the consumer loses the scope
REVOKE regress_idem_billing FROM regress_idem_biller;
SET ROLE regress_idem_biller;
SET idempotent.scope = 'regress_idem_billing';
SELECT * FROM idem_get('invoice:7');
\echo SQLSTATE :SQLSTATE
RESET idempotent.scope;
RESET ROLE;
GRANT regress_idem_billing TO regress_idem_biller;
-- a NOINHERIT member has billing's privileges only after SET ROLE to it
CREATE ROLE regress_idem_noinherit NOINHERIT;
GRANT regress_idem_billing TO regress_idem_noinherit;
GRANT EXECUTE ON FUNCTION idem_get(text) TO regress_idem_noinherit, regress_idem_billing;
SET ROLE regress_idem_noinherit;
SET idempotent.scope = 'regress_idem_billing';
SELECT key, scope FROM idem_get('invoice:7');
\echo SQLSTATE :SQLSTATE
SET ROLE regress_idem_billing;
SELECT key, scope FROM idem_get('invoice:7');
RESET idempotent.scope;
RESET ROLE;
REVOKE EXECUTE ON FUNCTION idem_get(text) FROM regress_idem_noinherit, regress_idem_billing;
DROP ROLE regress_idem_noinherit;

-- a superuser has every role's privileges, so may use any scope
SET idempotent.scope = 'regress_idem_billing';
SELECT key, version, scope FROM idem_get('invoice:8');
RESET idempotent.scope;

-- idem_forget and idem_reset work in the caller's scope only
SET ROLE regress_idem_biller;
SELECT idem_forget('invoice:9');
SELECT idem_reset('invoice:8', 5);
SET idempotent.scope = 'regress_idem_billing';
SELECT key, version, scope FROM idem_get('invoice:8');
SELECT idem_forget('invoice:9');
SELECT idem_forget('invoice:9');
SELECT idem_reset('invoice:8', 4);
SELECT key, version, rows, result, scope FROM idem_get('invoice:8');
RESET idempotent.scope;
SELECT key, version, scope FROM idem_get('invoice:8');
RESET ROLE;
-- billing's key counts no failure, and the keys the intruder tried are nowhere
SELECT key, scope, state, attempts FROM idem_ledger
WHERE key IN ('invoice:7', 'invoice:n', 'invoice:u', 'invoice:f') ORDER BY key, scope;

-- idem_purge: a non-superuser purges only its scope's expired keys; a superuser's
-- purge covers every scope
UPDATE idem_ledger SET expires_at = now() - interval '1 hour'
WHERE key LIKE 'invoice:purge-%';
SELECT key, scope FROM idem_ledger WHERE expires_at < now() ORDER BY key, scope;
-- the intruder first, while billing's expired keys are there too: it purges the shared one
SET ROLE regress_idem_intruder;
SELECT idem_purge();
RESET ROLE;
SELECT key, scope FROM idem_ledger WHERE expires_at < now() ORDER BY key, scope;
SET ROLE regress_idem_biller;
SET idempotent.scope = 'regress_idem_billing';
SELECT idem_purge();
RESET idempotent.scope;
RESET ROLE;
SELECT key, scope FROM idem_ledger WHERE expires_at < now() ORDER BY key, scope;
SELECT status FROM idem_claim('invoice:purge-3');
SET idempotent.scope = 'regress_idem_billing';
SELECT status FROM idem_claim('invoice:purge-3');
RESET idempotent.scope;
UPDATE idem_ledger SET expires_at = now() - interval '1 hour'
WHERE key = 'invoice:purge-3';
SELECT idem_purge();
SELECT count(*) AS expired_left FROM idem_ledger WHERE expires_at < now();

-- what is recorded, scope by scope
SELECT key, scope, policy, version, rows, result
FROM idem_ledger WHERE key LIKE 'invoice:%' OR key LIKE 'billing:%' OR key LIKE 'sc:%'
ORDER BY key, scope;

DROP TABLE sc_secret, sc_runs;
REVOKE EXECUTE ON FUNCTION
    idem_apply(text, bigint, text), idem_apply(text, bigint, text, "any"),
    idem_apply_next(text, bigint, text), idem_upsert(text, bigint, text),
    idem_claim(text, bigint, text), idem_get(text), idem_forget(text),
    idem_reset(text, bigint, text), idem_purge(integer),
    idem_begin(text, interval, jsonb), idem_complete(text, integer, jsonb),
    idem_fail(text, integer, text, interval)
FROM regress_idem_biller, regress_idem_intruder;
DROP ROLE regress_idem_biller, regress_idem_intruder, regress_idem_billing;
