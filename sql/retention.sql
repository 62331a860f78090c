--
-- retention: idempotent.ttl, expiry without purge, idem_purge, idem_forget,
-- idem_reset, idem_get, and who may call them
--
-- Time passing is simulated: as superuser, UPDATE idem_ledger SET expires_at
-- to a second ago (ret_expire).  Timestamps are never shown, only intervals
-- between them and comparisons with now() (the transaction's start, which is
-- what "expired" is measured against).
--
-- no other log lines reach the client when client_min_messages = log below
SET log_statement = none;
SET log_min_duration_statement = -1;
SET log_duration = off;
-- expired keys another test may have left behind would change purge counts
SELECT idem_purge(2000000000) >= 0 AS leftovers_purged;

CREATE TABLE ret_effects (k text NOT NULL, v int NOT NULL);

-- make keys expire a second ago; returns how many it changed
CREATE FUNCTION ret_expire(VARIADIC keys text[]) RETURNS bigint
LANGUAGE sql AS $$
    WITH u AS (UPDATE idem_ledger SET expires_at = now() - interval '1 second'
               WHERE key = ANY (keys) RETURNING 1)
    SELECT count(*) FROM u
$$;

-- the test's keys, with their expiry as something stable
CREATE VIEW ret_ledger AS
SELECT key, policy, version, rows, result,
       CASE WHEN expires_at IS NULL THEN 'never'
            WHEN expires_at <= now() THEN 'expired'
            -- the ttl, without the second of grace a key is stamped with
            ELSE 'ttl ' || extract(epoch FROM expires_at - applied_at - interval '1 second')::bigint || 's' END AS expiry
FROM idem_ledger
WHERE key LIKE 'r:%';

CREATE VIEW ret_counts AS
SELECT k, count(*) AS effects, string_agg(v::text, ',' ORDER BY v) AS vs
FROM ret_effects GROUP BY k;

--
-- the setting: seconds, units accepted, 0 = forever, any role may set it
--
SHOW idempotent.ttl;
SELECT name, setting, unit, context, vartype, boot_val, min_val, max_val
FROM pg_settings WHERE name = 'idempotent.ttl';
SET idempotent.ttl = '7d';
SHOW idempotent.ttl;
SELECT current_setting('idempotent.ttl') AS ttl,
       (SELECT setting FROM pg_settings WHERE name = 'idempotent.ttl') AS seconds;
SET idempotent.ttl = 90;
SHOW idempotent.ttl;
SET idempotent.ttl = '1.5h';
SHOW idempotent.ttl;
-- out of range, bad unit: 22023, the setting keeps its value
SET idempotent.ttl = -1;
\echo SQLSTATE :SQLSTATE
SET idempotent.ttl = '2 weeks';
\echo SQLSTATE :SQLSTATE
SHOW idempotent.ttl;
-- a sub-second value rounds to whole seconds: 500ms is 0, which keeps keys forever
SET idempotent.ttl = '500ms';
SHOW idempotent.ttl;
SET idempotent.ttl = '1500ms';
SHOW idempotent.ttl;
RESET idempotent.ttl;
SHOW idempotent.ttl;

--
-- expires_at = when the key was written + ttl + one second of grace; ttl 0
-- stores NULL (forever); applied_at is the transaction's start
--
SET idempotent.ttl = '1h';
BEGIN;
SELECT clock_timestamp() AS before_apply \gset
SELECT status FROM idem_apply('r:stamp', NULL, 'SELECT 1');
SELECT applied_at = now() AS applied_at_is_xact_start,
       expires_at - interval '1 hour 1 second' BETWEEN :'before_apply'::timestamptz AND clock_timestamp()
           AS expires_at_is_write_plus_ttl
FROM idem_ledger WHERE key = 'r:stamp';
COMMIT;
SET idempotent.ttl = 0;
SELECT status FROM idem_apply('r:forever', NULL, 'SELECT 1');
SELECT key, expires_at IS NULL AS forever FROM idem_ledger WHERE key = 'r:forever';
-- a key is never born expired: a transaction that runs on after writing it,
-- here longer than the ttl and its grace, has its keys stamped again as it
-- commits, so a redelivery right after the commit is a duplicate; a key
-- written twice in the transaction is stamped again once, not twice
SET idempotent.ttl = 1;
BEGIN;
SELECT status FROM idem_apply('r:stamp-late', 1, 'SELECT 1');
SELECT status FROM idem_apply('r:stamp-late', 2, 'SELECT 2');
SELECT pg_sleep(2.1);
SELECT clock_timestamp() AS before_commit \gset
COMMIT;
SELECT status FROM idem_apply('r:stamp-late', 2, 'SELECT 2');
SELECT applied_at < :'before_commit'::timestamptz - interval '2 seconds' AS applied_long_before_commit,
       expires_at >= :'before_commit'::timestamptz + interval '1 second' AS expires_ttl_after_commit,
       expires_at < :'before_commit'::timestamptz + interval '3 seconds' AS stamped_again_once
FROM idem_ledger WHERE key = 'r:stamp-late';
-- a transaction to be prepared cannot record keys with a ttl: its commit,
-- from which the ttl counts, may come any time later
BEGIN;
SELECT status FROM idem_claim('r:prepared');
PREPARE TRANSACTION 'r:prepared';
\echo SQLSTATE :SQLSTATE
SELECT count(*) AS recorded FROM idem_ledger WHERE key = 'r:prepared';
SET idempotent.ttl = '1h';
SELECT * FROM ret_ledger WHERE key IN ('r:stamp', 'r:forever') ORDER BY key;

--
-- once: a duplicate until the key expires (and never moves the expiry), then
-- the key is absent: the statement runs again and the row is replaced in place
--
SELECT * FROM idem_apply('r:once', NULL, 'INSERT INTO ret_effects VALUES ($1, $2) RETURNING k, v', 'r:once'::text, 1);
SELECT expires_at AS once_expires_at FROM idem_ledger WHERE key = 'r:once' \gset
SELECT * FROM idem_apply('r:once', NULL, 'INSERT INTO ret_effects VALUES ($1, $2) RETURNING k, v', 'r:once'::text, 1);
SELECT expires_at = :'once_expires_at'::timestamptz AS expiry_unchanged_by_duplicate
FROM idem_ledger WHERE key = 'r:once';
-- before expiry a different request is a reused key (ID001), a newer call a
-- policy mismatch (ID002)
SELECT * FROM idem_apply('r:once', NULL, 'INSERT INTO ret_effects VALUES ($1, $2) RETURNING k, v', 'r:once'::text, 2);
\echo SQLSTATE :SQLSTATE
SELECT * FROM idem_apply('r:once', 1, 'INSERT INTO ret_effects VALUES ($1, $2) RETURNING k, v', 'r:once'::text, 2);
\echo SQLSTATE :SQLSTATE
SELECT ret_expire('r:once');
-- expired but not purged: still in the ledger
SELECT * FROM ret_ledger WHERE key = 'r:once';
SELECT * FROM idem_apply('r:once', NULL, 'INSERT INTO ret_effects VALUES ($1, $2) RETURNING k, v', 'r:once'::text, 1);
SELECT * FROM ret_ledger WHERE key = 'r:once';
SELECT expires_at > :'once_expires_at'::timestamptz AS expiry_renewed
FROM idem_ledger WHERE key = 'r:once';
SELECT * FROM idem_apply('r:once', NULL, 'INSERT INTO ret_effects VALUES ($1, $2) RETURNING k, v', 'r:once'::text, 1);
SELECT * FROM ret_counts WHERE k = 'r:once';
-- after expiry neither the fingerprint nor the policy of the old row counts
SELECT ret_expire('r:once');
SELECT * FROM idem_apply('r:once', NULL, 'INSERT INTO ret_effects VALUES ($1, $2) RETURNING k, v', 'r:once'::text, 2);
SELECT ret_expire('r:once');
SELECT * FROM idem_apply('r:once', 4, 'INSERT INTO ret_effects VALUES ($1, $2) RETURNING k, v', 'r:once'::text, 4);
SELECT * FROM ret_ledger WHERE key = 'r:once';
SELECT * FROM ret_counts WHERE k = 'r:once';

--
-- newer: duplicate and stale until expiry; after it an older version applies
-- (the documented hazard of a ttl shorter than redelivery)
--
SELECT * FROM idem_apply('r:newer', 5, 'INSERT INTO ret_effects VALUES ($1, $2) RETURNING k, v', 'r:newer'::text, 5);
SELECT * FROM idem_apply('r:newer', 5, 'INSERT INTO ret_effects VALUES ($1, $2) RETURNING k, v', 'r:newer'::text, 5);
SELECT * FROM idem_apply('r:newer', 3, 'INSERT INTO ret_effects VALUES ($1, $2) RETURNING k, v', 'r:newer'::text, 3);
SELECT ret_expire('r:newer');
SELECT * FROM idem_apply('r:newer', 3, 'INSERT INTO ret_effects VALUES ($1, $2) RETURNING k, v', 'r:newer'::text, 3);
SELECT * FROM idem_apply('r:newer', 3, 'INSERT INTO ret_effects VALUES ($1, $2) RETURNING k, v', 'r:newer'::text, 3);
SELECT * FROM idem_apply('r:newer', 4, 'INSERT INTO ret_effects VALUES ($1, $2) RETURNING k, v', 'r:newer'::text, 4);
SELECT * FROM ret_ledger WHERE key = 'r:newer';
SELECT * FROM ret_counts WHERE k = 'r:newer';

--
-- next: after expiry only version 1 applies; anything else is a gap on an
-- absent key (all NULL) and writes nothing
--
SELECT status, version, previous_version FROM idem_apply_next('r:next', 1, 'INSERT INTO ret_effects VALUES ($1, $2)', 'r:next'::text, 1);
SELECT status, version, previous_version FROM idem_apply_next('r:next', 2, 'INSERT INTO ret_effects VALUES ($1, $2)', 'r:next'::text, 2);
SELECT status, version, previous_version FROM idem_apply_next('r:next', 2, 'INSERT INTO ret_effects VALUES ($1, $2)', 'r:next'::text, 2);
SELECT ret_expire('r:next');
SELECT * FROM idem_apply_next('r:next', 3, 'INSERT INTO ret_effects VALUES ($1, $2)', 'r:next'::text, 3);
SELECT * FROM idem_apply_next('r:next', 2, 'INSERT INTO ret_effects VALUES ($1, $2)', 'r:next'::text, 2);
SELECT * FROM ret_ledger WHERE key = 'r:next';
SELECT * FROM idem_apply_next('r:next', 1, 'INSERT INTO ret_effects VALUES ($1, $2)', 'r:next'::text, 1);
SELECT status, version, previous_version FROM idem_apply_next('r:next', 2, 'INSERT INTO ret_effects VALUES ($1, $2)', 'r:next'::text, 2);
SELECT * FROM ret_ledger WHERE key = 'r:next';
SELECT * FROM ret_counts WHERE k = 'r:next';

--
-- upsert: the same version applies again and renews the expiry; an older one
-- is stale until expiry, then applies
--
SELECT status, version, previous_version FROM idem_upsert('r:upsert', 7, 'INSERT INTO ret_effects VALUES ($1, $2)', 'r:upsert'::text, 7);
SELECT expires_at AS upsert_expires_at FROM idem_ledger WHERE key = 'r:upsert' \gset
SELECT status, version, previous_version FROM idem_upsert('r:upsert', 7, 'INSERT INTO ret_effects VALUES ($1, $2)', 'r:upsert'::text, 7);
SELECT expires_at > :'upsert_expires_at'::timestamptz AS expiry_renewed
FROM idem_ledger WHERE key = 'r:upsert';
SELECT status, version, previous_version FROM idem_upsert('r:upsert', 6, 'INSERT INTO ret_effects VALUES ($1, $2)', 'r:upsert'::text, 6);
SELECT ret_expire('r:upsert');
BEGIN;
-- expires_at = now() - 1s < now(): expired within this transaction too
SELECT status, version, previous_version FROM idem_upsert('r:upsert', 6, 'INSERT INTO ret_effects VALUES ($1, $2)', 'r:upsert'::text, 6);
ROLLBACK;
SELECT * FROM ret_ledger WHERE key = 'r:upsert';
SELECT status, version, previous_version FROM idem_upsert('r:upsert', 6, 'INSERT INTO ret_effects VALUES ($1, $2)', 'r:upsert'::text, 6);
SELECT status, version, previous_version FROM idem_upsert('r:upsert', 5, 'INSERT INTO ret_effects VALUES ($1, $2)', 'r:upsert'::text, 5);
SELECT * FROM ret_ledger WHERE key = 'r:upsert';
SELECT * FROM ret_counts WHERE k = 'r:upsert';

--
-- claim: the same rules without a statement
--
SELECT * FROM idem_claim('r:claim');
SELECT * FROM idem_claim('r:claim');
SELECT * FROM idem_claim('r:claim-seq', 1, 'next');
SELECT ret_expire('r:claim', 'r:claim-seq');
SELECT * FROM idem_claim('r:claim');
SELECT * FROM idem_claim('r:claim-seq', 2, 'next');
SELECT * FROM idem_claim('r:claim-seq', 1, 'next');
SELECT * FROM ret_ledger WHERE key LIKE 'r:claim%' ORDER BY key;

--
-- the boundary: a key expires at expires_at itself (as of the transaction's
-- start), not a microsecond earlier
--
SELECT status FROM idem_apply('r:edge', NULL, 'SELECT 1');
BEGIN;
UPDATE idem_ledger SET expires_at = now() + interval '1 microsecond' WHERE key = 'r:edge';
SELECT status FROM idem_apply('r:edge', NULL, 'SELECT 1');
SELECT expired FROM idem_get('r:edge');
UPDATE idem_ledger SET expires_at = now() WHERE key = 'r:edge';
SELECT expired FROM idem_get('r:edge');
SELECT status FROM idem_apply('r:edge', NULL, 'SELECT 1');
COMMIT;
SELECT * FROM ret_ledger WHERE key = 'r:edge';
-- a key re-applied with ttl 0 is kept forever from then on
SELECT ret_expire('r:edge');
SET idempotent.ttl = 0;
SELECT status FROM idem_apply('r:edge', NULL, 'SELECT 1');
SELECT * FROM ret_ledger WHERE key = 'r:edge';
SET idempotent.ttl = '1h';

--
-- SET LOCAL: for one transaction only
--
BEGIN;
SET LOCAL idempotent.ttl = '10min';
SELECT status FROM idem_apply('r:local-1', NULL, 'SELECT 1');
SHOW idempotent.ttl;
COMMIT;
SHOW idempotent.ttl;
SELECT status FROM idem_apply('r:local-2', NULL, 'SELECT 1');
SELECT * FROM ret_ledger WHERE key LIKE 'r:local%' ORDER BY key;

--
-- idem_purge: deletes expired keys in the order they expired, max_keys at a
-- time; leaves unexpired and forever keys; only expired keys are in its index
--
DELETE FROM idem_ledger WHERE key LIKE 'r:%';
SET idempotent.ttl = '1h';
SELECT count(*) AS applied FROM generate_series(1, 5) AS i,
    idem_apply('r:p-exp-' || i, NULL, 'SELECT 1') AS o WHERE o.applied;
SELECT count(*) AS applied FROM generate_series(1, 2) AS i,
    idem_apply('r:p-live-' || i, NULL, 'SELECT 1') AS o WHERE o.applied;
SET idempotent.ttl = 0;
SELECT count(*) AS applied FROM generate_series(1, 2) AS i,
    idem_apply('r:p-forever-' || i, NULL, 'SELECT 1') AS o WHERE o.applied;
SET idempotent.ttl = '1h';
-- expired 5, 4, 3, 2, 1 seconds ago: r:p-exp-1 first
UPDATE idem_ledger SET expires_at = now() - (6 - substr(key, 9)::int) * interval '1 second'
WHERE key LIKE 'r:p-exp-%';
-- the forever keys are not in the expiry index at all
SET enable_seqscan = off;
SET enable_bitmapscan = off;
EXPLAIN (COSTS OFF) SELECT key FROM idem_ledger WHERE expires_at <= now();
SELECT key FROM idem_ledger WHERE expires_at <= now() ORDER BY expires_at;
RESET enable_seqscan;
RESET enable_bitmapscan;
SELECT idem_purge(2);
SELECT key FROM idem_ledger WHERE key LIKE 'r:p-%' ORDER BY key;
SELECT idem_purge(0);
-- a purge that rolls back deletes nothing
BEGIN;
SELECT idem_purge();
ROLLBACK;
-- batches in one transaction: each skips what the previous deleted
BEGIN;
SELECT idem_purge(1) AS first, idem_purge(1) AS second;
SELECT idem_purge(5);
SELECT idem_purge(5);
COMMIT;
SELECT * FROM ret_ledger WHERE key LIKE 'r:p-%' ORDER BY key;
SELECT idem_purge();
-- a purged key is simply absent: it applies again
SELECT status, previous_version FROM idem_apply('r:p-exp-1', NULL, 'SELECT 1');
-- errors: negative max_keys 22023; NULL max_keys does nothing (strict);
-- a read-only transaction 25006
SELECT idem_purge(-1);
\echo SQLSTATE :SQLSTATE
SELECT idem_purge(NULL);
SELECT ret_expire('r:p-live-1');
BEGIN READ ONLY;
SELECT idem_purge();
\echo SQLSTATE :SQLSTATE
ROLLBACK;
SELECT idem_purge();
SELECT key FROM idem_ledger WHERE key LIKE 'r:p-%' ORDER BY key;

--
-- idem_get: a key's record, one row, nothing for an absent or NULL key
--
DELETE FROM idem_ledger WHERE key LIKE 'r:%';
SELECT status FROM idem_apply('r:get-once', NULL, 'SELECT $1::int AS n, $2::text AS s', 7, 'seven');
SELECT status FROM idem_apply('r:get-newer', 3, 'SELECT 1 WHERE false');
SELECT status FROM idem_apply_next('r:get-next', 1, 'SELECT 1');
SELECT status FROM idem_upsert('r:get-upsert', 9, 'SELECT 1 AS one');
SET idempotent.ttl = 0;
SELECT status FROM idem_claim('r:get-claim', 2);
SET idempotent.ttl = '1h';
SELECT ret_expire('r:get-next');
SELECT g.key, g.policy, g.version, g.applied_at IS NOT NULL AS has_applied_at,
       date_trunc('second', g.expires_at - g.applied_at - interval '1 second') AS ttl, g.expired, g.rows, g.result
FROM unnest(array['r:get-once', 'r:get-newer', 'r:get-upsert', 'r:get-claim']) AS k,
     idem_get(k) AS g
ORDER BY g.key;
SELECT key, policy, version, expires_at < now() AS expires_at_past, expired
FROM idem_get('r:get-next');
-- the same values as the ledger row
SELECT count(*) AS same
FROM idem_ledger l, idem_get(l.key) g
WHERE l.key LIKE 'r:get-%' AND g.applied_at = l.applied_at
  AND g.expires_at IS NOT DISTINCT FROM l.expires_at;
SELECT count(*) AS absent FROM idem_get('r:get-nothing');
SELECT count(*) AS null_key FROM idem_get(NULL);
-- its result columns
SELECT pg_get_function_result('idem_get(text)'::regprocedure);

--
-- idem_forget: the key is gone and its next delivery applies; logged
--
DELETE FROM idem_ledger WHERE key LIKE 'r:%';
CREATE ROLE regress_ret_admin;
GRANT EXECUTE ON FUNCTION idem_forget(text), idem_reset(text, bigint, text),
    idem_purge(integer), idem_get(text),
    idem_apply(text, bigint, text, "any") TO regress_ret_admin;
GRANT INSERT ON ret_effects TO regress_ret_admin;
SELECT status FROM idem_apply('r:f-once', NULL, 'INSERT INTO ret_effects VALUES ($1, $2)', 'r:f-once'::text, 1);
SELECT status FROM idem_apply('r:f-once', NULL, 'INSERT INTO ret_effects VALUES ($1, $2)', 'r:f-once'::text, 1);
SET client_min_messages = log;
SET ROLE regress_ret_admin;
SELECT idem_forget('r:f-once');
RESET ROLE;
RESET client_min_messages;
SELECT count(*) AS rows_left FROM idem_ledger WHERE key = 'r:f-once';
SELECT status, previous_version FROM idem_apply('r:f-once', NULL, 'INSERT INTO ret_effects VALUES ($1, $2)', 'r:f-once'::text, 1);
SELECT status FROM idem_apply('r:f-once', NULL, 'INSERT INTO ret_effects VALUES ($1, $2)', 'r:f-once'::text, 1);
SELECT * FROM ret_counts WHERE k = 'r:f-once';
-- a forgotten version watermark: any version applies, as on a new key
SELECT status FROM idem_apply('r:f-newer', 10, 'SELECT 1');
SELECT idem_forget('r:f-newer');
SELECT status, version, previous_version FROM idem_apply('r:f-newer', 2, 'SELECT 1');
-- absent key: false, nothing logged; NULL: NULL (strict)
SET client_min_messages = log;
SET ROLE regress_ret_admin;
SELECT idem_forget('r:f-absent');
SELECT idem_forget(NULL);
RESET ROLE;
RESET client_min_messages;
-- a forget that rolls back forgets nothing
BEGIN;
SELECT idem_forget('r:f-once');
ROLLBACK;
SELECT status FROM idem_apply('r:f-once', NULL, 'INSERT INTO ret_effects VALUES ($1, $2)', 'r:f-once'::text, 1);
-- an expired key not purged yet is still there to forget
SELECT ret_expire('r:f-once');
SELECT idem_forget('r:f-once');
SELECT idem_forget('r:f-once');
-- read-only transaction: 25006
BEGIN READ ONLY;
SELECT idem_forget('r:f-newer');
\echo SQLSTATE :SQLSTATE
ROLLBACK;
SELECT key, version FROM idem_ledger WHERE key LIKE 'r:f-%' ORDER BY key;

--
-- idem_reset: sets a version watermark; creates the key (policy newer unless
-- told) when absent; returns the version it replaced; logged
--
DELETE FROM idem_ledger WHERE key LIKE 'r:%';
SET client_min_messages = log;
SET ROLE regress_ret_admin;
SELECT idem_reset('r:reset', 10);
RESET ROLE;
RESET client_min_messages;
SELECT * FROM ret_ledger WHERE key = 'r:reset';
SELECT key, policy, version, rows, result FROM idem_get('r:reset');
-- the watermark: 10 is a duplicate (no stored rows or result, no fingerprint
-- to check), 9 stale, 11 applies
SELECT * FROM idem_apply('r:reset', 10, 'SELECT 10 AS v');
SELECT * FROM idem_apply('r:reset', 9, 'SELECT 9 AS v');
SELECT * FROM idem_apply('r:reset', 11, 'SELECT 11 AS v');
-- moving it back: returns the version replaced; older versions apply again
SELECT idem_reset('r:reset', 3);
SELECT * FROM idem_apply('r:reset', 4, 'SELECT 4 AS v');
SELECT key, policy, version, rows, result FROM idem_get('r:reset');
-- an explicit policy that matches is fine
SELECT idem_reset('r:reset', 20, 'newer');
-- a next sequence seeded at 41: 42 applies, 44 is a gap, 41 a duplicate
SELECT idem_reset('r:seq', 41, 'next');
SELECT status, version, previous_version FROM idem_apply_next('r:seq', 42, 'SELECT 1');
SELECT status, version, previous_version FROM idem_apply_next('r:seq', 44, 'SELECT 1');
SELECT status, version, previous_version FROM idem_apply_next('r:seq', 42, 'SELECT 1');
SELECT status, version, previous_version FROM idem_apply_next('r:seq', 41, 'SELECT 1');
-- its policy is kept when none is given
SELECT idem_reset('r:seq', 0);
SELECT status, version, previous_version FROM idem_apply_next('r:seq', 1, 'SELECT 1');
-- upsert, and version 0
SELECT idem_reset('r:ups', 0, 'upsert');
SELECT status, version, previous_version FROM idem_upsert('r:ups', 0, 'SELECT 1');
-- the reset row takes the ttl in force
SET idempotent.ttl = '2h';
SELECT idem_reset('r:ups', 5);
SET idempotent.ttl = '1h';
SELECT * FROM ret_ledger WHERE key IN ('r:seq', 'r:ups') ORDER BY key;
-- errors, nothing recorded: a once key 22023 (explicit or its own policy),
-- negative version 22003, unknown policy 22023, another policy ID002,
-- read-only transaction 25006
SELECT status FROM idem_apply('r:reset-once', NULL, 'SELECT 1');
SELECT idem_reset('r:reset-once', 1);
\echo SQLSTATE :SQLSTATE
SELECT idem_reset('r:reset-new', 1, 'once');
\echo SQLSTATE :SQLSTATE
SELECT idem_reset('r:reset-new', -1);
\echo SQLSTATE :SQLSTATE
SELECT idem_reset('r:reset-new', 1, 'sequence');
\echo SQLSTATE :SQLSTATE
SELECT idem_reset('r:reset', 1, 'next');
\echo SQLSTATE :SQLSTATE
SELECT idem_reset('r:seq', 1, 'newer');
\echo SQLSTATE :SQLSTATE
BEGIN READ ONLY;
SELECT idem_reset('r:reset', 1);
\echo SQLSTATE :SQLSTATE
ROLLBACK;
SELECT key, policy, version FROM idem_ledger
WHERE key LIKE 'r:reset%' ORDER BY key;
-- an expired key is absent: reset creates it anew under any policy (returns
-- NULL), the expired once key included
SELECT ret_expire('r:reset-once', 'r:reset');
SELECT idem_reset('r:reset-once', 5);
SELECT idem_reset('r:reset', 1, 'next');
SELECT * FROM ret_ledger WHERE key LIKE 'r:reset%' ORDER BY key;
SELECT status, version, previous_version FROM idem_apply('r:reset-once', 6, 'SELECT 1');
SELECT status, version, previous_version FROM idem_apply_next('r:reset', 2, 'SELECT 1');
-- a reset that rolls back changes nothing
BEGIN;
SELECT idem_reset('r:reset', 100);
ROLLBACK;
SELECT key, policy, version FROM idem_ledger WHERE key = 'r:reset';

--
-- privileges: EXECUTE on none of the four for PUBLIC; 42501 for a role
-- without grants; idem_get granted alone reads a key without any privilege
-- on the ledger
--
CREATE ROLE regress_ret_none;
CREATE ROLE regress_ret_reader;
GRANT EXECUTE ON FUNCTION idem_get(text) TO regress_ret_reader;
SELECT p.oid::regprocedure AS function,
       p.prosecdef AS security_definer,
       EXISTS (SELECT 1 FROM aclexplode(p.proacl) a WHERE a.grantee = 0) AS public_can_execute,
       has_function_privilege('regress_ret_none', p.oid, 'EXECUTE') AS none,
       has_function_privilege('regress_ret_reader', p.oid, 'EXECUTE') AS reader,
       has_function_privilege('regress_ret_admin', p.oid, 'EXECUTE') AS admin
FROM pg_proc p
WHERE p.oid IN ('idem_purge(integer)'::regprocedure, 'idem_forget(text)'::regprocedure,
                'idem_reset(text,bigint,text)'::regprocedure, 'idem_get(text)'::regprocedure)
ORDER BY p.proname;
SELECT has_table_privilege('regress_ret_reader', 'idem_ledger', 'SELECT') AS reader_selects_ledger,
       has_table_privilege('regress_ret_admin', 'idem_ledger', 'DELETE') AS admin_deletes_ledger;
SELECT status FROM idem_apply('r:priv', 1, 'SELECT 1 AS one');
SET ROLE regress_ret_none;
SELECT idem_purge();
\echo SQLSTATE :SQLSTATE
SELECT idem_forget('r:priv');
\echo SQLSTATE :SQLSTATE
SELECT idem_reset('r:priv', 5);
\echo SQLSTATE :SQLSTATE
SELECT * FROM idem_get('r:priv');
\echo SQLSTATE :SQLSTATE
SELECT count(*) FROM idem_ledger;
\echo SQLSTATE :SQLSTATE
SET ROLE regress_ret_reader;
SELECT key, policy, version, expired, rows, result FROM idem_get('r:priv');
-- with a hostile search_path too: idem_get pins its own
CREATE TEMP TABLE idem_ledger (key text, policy "char", version bigint);
SET search_path = pg_temp, public;
SELECT key, policy, version FROM idem_get('r:priv');
RESET search_path;
SELECT count(*) FROM public.idem_ledger;
\echo SQLSTATE :SQLSTATE
SELECT idem_forget('r:priv');
\echo SQLSTATE :SQLSTATE
SELECT idem_purge();
\echo SQLSTATE :SQLSTATE
SET ROLE regress_ret_admin;
-- granted EXECUTE, the admin role needs no privilege on the ledger either
SELECT idem_reset('r:priv', 5);
SELECT idem_forget('r:priv');
SELECT idem_purge(0);
RESET ROLE;
SELECT count(*) AS priv_rows FROM idem_ledger WHERE key = 'r:priv';

--
-- the ttl in force per database, per role, per role in a database (needs a
-- new session: \c), and overridden by SET
--
SELECT current_database() AS ret_db, current_user AS ret_superuser \gset
CREATE ROLE regress_ret_login LOGIN;
GRANT EXECUTE ON FUNCTION idem_apply(text, bigint, text), idem_get(text) TO regress_ret_login;
ALTER DATABASE :"ret_db" SET idempotent.ttl = '3h';
\c - regress_ret_login
SHOW idempotent.ttl;
SELECT status FROM idem_apply('r:db-ttl', NULL, 'SELECT 1');
SELECT key, date_trunc('second', expires_at - applied_at - interval '1 second') AS ttl FROM idem_get('r:db-ttl');
\c - :ret_superuser
ALTER ROLE regress_ret_login SET idempotent.ttl = '2h';
\c - regress_ret_login
SELECT status FROM idem_apply('r:role-ttl', NULL, 'SELECT 1');
SELECT key, date_trunc('second', expires_at - applied_at - interval '1 second') AS ttl FROM idem_get('r:role-ttl');
\c - :ret_superuser
ALTER ROLE regress_ret_login IN DATABASE :"ret_db" SET idempotent.ttl = '45min';
\c - regress_ret_login
SELECT status FROM idem_apply('r:role-db-ttl', NULL, 'SELECT 1');
SELECT key, date_trunc('second', expires_at - applied_at - interval '1 second') AS ttl FROM idem_get('r:role-db-ttl');
-- SET still wins, for any role (USERSET)
SET idempotent.ttl = 0;
SELECT status FROM idem_apply('r:role-set-ttl', NULL, 'SELECT 1');
SELECT key, expires_at IS NULL AS forever FROM idem_get('r:role-set-ttl');
\c - :ret_superuser
ALTER ROLE regress_ret_login IN DATABASE :"ret_db" RESET idempotent.ttl;
ALTER ROLE regress_ret_login RESET idempotent.ttl;
ALTER DATABASE :"ret_db" RESET idempotent.ttl;
\c - regress_ret_login
SELECT status FROM idem_apply('r:default-ttl', NULL, 'SELECT 1');
SHOW idempotent.ttl;
SELECT key, expires_at IS NULL AS forever FROM idem_get('r:default-ttl');
\c - :ret_superuser
-- with the library loaded, a bad value is refused when it is set
LOAD 'idempotent';
ALTER ROLE regress_ret_login SET idempotent.ttl = '-5s';
\echo SQLSTATE :SQLSTATE
ALTER ROLE regress_ret_login SET idempotent.ttl = 'forever';
\echo SQLSTATE :SQLSTATE
SELECT count(*) AS role_settings FROM pg_db_role_setting
WHERE setrole = 'regress_ret_login'::regrole;
SELECT * FROM ret_ledger WHERE key LIKE 'r:%-ttl' ORDER BY key;

--
-- clean up
--
DELETE FROM idem_ledger WHERE key LIKE 'r:%';
DROP VIEW ret_ledger, ret_counts;
DROP FUNCTION ret_expire(text[]);
DROP TABLE ret_effects;
REVOKE EXECUTE ON FUNCTION idem_forget(text), idem_reset(text, bigint, text),
    idem_purge(integer), idem_get(text),
    idem_apply(text, bigint, text, "any") FROM regress_ret_admin;
REVOKE EXECUTE ON FUNCTION idem_get(text) FROM regress_ret_reader;
REVOKE EXECUTE ON FUNCTION idem_apply(text, bigint, text), idem_get(text) FROM regress_ret_login;
DROP ROLE regress_ret_admin, regress_ret_reader, regress_ret_none, regress_ret_login;

-- reset and forget check their key like the calls do, and a NULL version
SELECT idem_reset(NULL, 1);
\echo SQLSTATE :SQLSTATE
SELECT idem_reset('r:null-version', NULL);
\echo SQLSTATE :SQLSTATE
SELECT idem_reset('', 1);
\echo SQLSTATE :SQLSTATE
SELECT idem_reset(repeat('x', 600), 1);
\echo SQLSTATE :SQLSTATE
SELECT idem_forget('');
\echo SQLSTATE :SQLSTATE
SELECT count(*) AS recorded FROM idem_ledger WHERE key IN ('', 'r:null-version');
-- a statement must not forget or reset the key its own call is applying
SELECT status FROM idem_apply('r:nested', 1, 'SELECT 1 AS x');
SELECT idem_apply('r:nested', 2, $$SELECT idem_forget('r:nested') AS x$$);
\echo SQLSTATE :SQLSTATE
SELECT idem_apply('r:nested', 2, $$SELECT idem_reset('r:nested', 5) AS x$$);
\echo SQLSTATE :SQLSTATE
SELECT version FROM idem_ledger WHERE key = 'r:nested';
