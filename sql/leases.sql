--
-- leases: keys for effects outside the database (idem_begin, idem_complete,
-- idem_fail), takeover and fencing (ID003), request identity (ID001),
-- failures and dead keys of lease keys and of ordinary consumers (poison
-- messages), lease keys and applied keys kept apart (ID002), bad input,
-- idem_get, TTL and purge
--
-- Lease ends are measured against the wall clock; they are never shown,
-- only whether they lie ahead (live) or how far (about).  Leases run out by
-- giving them 10 ms and sleeping 50 ms.
SET log_statement = none;
SET log_min_duration_statement = -1;

CREATE TABLE lease_effects (k text NOT NULL, what text NOT NULL);

-- what idem_begin and idem_fail returned, without the clock
CREATE FUNCTION ls(o idem_lease) RETURNS TABLE (status text, attempt int, live boolean,
                                                result jsonb, last_error text)
LANGUAGE sql AS $$
    SELECT o.status, o.attempt, o.lease_until > clock_timestamp(), o.result, o.last_error
$$;

-- the test's keys as idem_get shows them
CREATE VIEW lease_keys AS
SELECT l.key, g.policy, g.version, g.applied_at IS NOT NULL AS applied, g.state,
       g.attempts, g.lease_until > clock_timestamp() AS live, g.last_error, g.result,
       g.expires_at IS NOT NULL AS expires
FROM (SELECT DISTINCT key FROM idem_ledger WHERE key LIKE 'l:%') l,
     LATERAL idem_get(l.key) g
ORDER BY l.key;

--
-- started, in_progress, complete, duplicate
--
SELECT * FROM ls(idem_begin('l:mail-1', '1 hour', '{"to": "a@example.com", "n": 1}'));
-- the holder's lease, while it runs
SELECT * FROM ls(idem_begin('l:mail-1', '1 hour', '{"to": "a@example.com", "n": 1}'));
-- the lease ends where idem_begin said (the default lease is idempotent.lease)
SELECT lease_until - applied_at BETWEEN interval '59 minutes' AND interval '61 minutes' AS one_hour
FROM idem_get('l:mail-1');
SELECT * FROM ls(idem_begin('l:mail-2'));
SELECT lease_until - clock_timestamp() BETWEEN interval '20 s' AND interval '30 s' AS about_30s
FROM idem_get('l:mail-2');
SET idempotent.lease = '2min';
SELECT * FROM ls(idem_begin('l:mail-3'));
SELECT lease_until - clock_timestamp() BETWEEN interval '110 s' AND interval '120 s' AS about_2min
FROM idem_get('l:mail-3');
RESET idempotent.lease;
-- the settings: a lease in milliseconds, attempts (0: never dead)
SELECT name, setting, unit, context, vartype, boot_val, min_val, max_val
FROM pg_settings WHERE name IN ('idempotent.lease', 'idempotent.max_attempts')
ORDER BY name;
SET idempotent.lease = 0;
\echo SQLSTATE :SQLSTATE
SET idempotent.max_attempts = -1;
\echo SQLSTATE :SQLSTATE
SELECT * FROM lease_keys;
-- complete, with the provider's answer
SELECT idem_complete('l:mail-1', 1, '{"message_id": "m-77"}');
-- a duplicate gets it back: the request is equal as a value (key order, 1 = 1.0)
SELECT * FROM ls(idem_begin('l:mail-1', '1 hour', '{"n": 1.0, "to": "a@example.com"}'));
-- with the default lease too
SELECT * FROM ls(idem_begin('l:mail-1', NULL, '{"n": 1, "to": "a@example.com"}'));
-- another request under the same key: ID001, whatever the key's state
SELECT * FROM idem_begin('l:mail-1', '1 hour', '{"to": "b@example.com", "n": 1}');
\echo SQLSTATE :SQLSTATE
SELECT * FROM idem_begin('l:mail-1', '1 hour');
\echo SQLSTATE :SQLSTATE
SELECT * FROM idem_begin('l:mail-2', '1 hour', '{"n": 2}');
\echo SQLSTATE :SQLSTATE
-- a superuser may switch the check off: a duplicate then, without the result
SET idempotent.check_fingerprint = off;
SELECT * FROM ls(idem_begin('l:mail-1', '1 hour', '{"other": true}'));
RESET idempotent.check_fingerprint;
-- complete without a result
SELECT idem_complete('l:mail-2', 1);
SELECT * FROM ls(idem_begin('l:mail-2'));
SELECT * FROM lease_keys;

--
-- fencing: only the attempt that holds the key may end it (ID003)
--
-- completed already
SELECT idem_complete('l:mail-1', 1, '{"message_id": "other"}');
\echo SQLSTATE :SQLSTATE
SELECT * FROM idem_fail('l:mail-1', 1, 'late failure');
\echo SQLSTATE :SQLSTATE
-- never begun
SELECT idem_complete('l:never', 1);
\echo SQLSTATE :SQLSTATE
SELECT * FROM idem_fail('l:never', 1, 'boom');
\echo SQLSTATE :SQLSTATE
-- an attempt the key never had
SELECT idem_complete('l:mail-3', 2);
\echo SQLSTATE :SQLSTATE
-- nothing changed
SELECT * FROM lease_keys;

--
-- takeover: a lease that ran out goes to the next idem_begin as attempt + 1
--
SELECT * FROM ls(idem_begin('l:pay-1', '10 ms', '{"amount": 5}'));
SELECT pg_sleep(0.05);
SELECT * FROM ls(idem_begin('l:pay-1', '1 hour', '{"amount": 5}'));
-- the slow first attempt is fenced off, and changes nothing
SELECT idem_complete('l:pay-1', 1, '{"charge": "slow"}');
\echo SQLSTATE :SQLSTATE
SELECT * FROM idem_fail('l:pay-1', 1, 'slow failure');
\echo SQLSTATE :SQLSTATE
SELECT * FROM lease_keys WHERE key = 'l:pay-1';
SELECT idem_complete('l:pay-1', 2, '{"charge": "ch-2"}');
SELECT * FROM ls(idem_begin('l:pay-1', '1 hour', '{"amount": 5}'));
-- a lease that ran out still belongs to its attempt until someone takes it over
SELECT * FROM ls(idem_begin('l:pay-2', '10 ms'));
SELECT pg_sleep(0.05);
SELECT idem_complete('l:pay-2', 1, '{"late": "but alone"}');
SELECT * FROM ls(idem_begin('l:pay-2'));
-- and so may its failure be reported
SELECT * FROM ls(idem_begin('l:pay-3', '10 ms'));
SELECT pg_sleep(0.05);
SELECT * FROM ls(idem_fail('l:pay-3', 1, 'late but alone', '1 hour'));

--
-- idem_fail: the attempt ends, its error is kept and counted, and the key
-- waits for retry_after
--
SELECT * FROM ls(idem_begin('l:hook-1', '1 hour'));
SELECT * FROM ls(idem_fail('l:hook-1', 1, 'HTTP 503', '1 hour'));
-- in progress until the retry is due
SELECT * FROM ls(idem_begin('l:hook-1', '1 hour'));
-- the failed attempt holds nothing any more
SELECT idem_complete('l:hook-1', 1);
\echo SQLSTATE :SQLSTATE
SELECT * FROM idem_fail('l:hook-1', 1, 'again');
\echo SQLSTATE :SQLSTATE
-- due: the next attempt starts, and still shows the last error
SELECT * FROM ls(idem_begin('l:hook-2', '1 hour'));
SELECT * FROM ls(idem_fail('l:hook-2', 1, 'timeout', '10 ms'));
SELECT pg_sleep(0.05);
SELECT * FROM ls(idem_begin('l:hook-2', '1 hour'));
-- without retry_after the key is due at once
SELECT * FROM ls(idem_fail('l:hook-2', 2, 'timeout again'));
SELECT * FROM ls(idem_begin('l:hook-2', '1 hour'));
SELECT idem_complete('l:hook-2', 3, '{"delivered": true}');
SELECT * FROM lease_keys WHERE key LIKE 'l:hook-%';

--
-- dead: idempotent.max_attempts failures (0, the default: never)
--
SET idempotent.max_attempts = 2;
SELECT * FROM ls(idem_begin('l:poison-1', '1 hour'));
SELECT * FROM ls(idem_fail('l:poison-1', 1, 'bad address'));
SELECT * FROM ls(idem_begin('l:poison-1', '1 hour'));
SELECT * FROM ls(idem_fail('l:poison-1', 2, 'bad address, again', '1 hour'));
SELECT * FROM ls(idem_begin('l:poison-1', '1 hour'));
SELECT idem_complete('l:poison-1', 2);
\echo SQLSTATE :SQLSTATE
-- a lease that ran out is a failed attempt: the last one leaves the key dead
SELECT * FROM ls(idem_begin('l:poison-2', '10 ms'));
SELECT pg_sleep(0.05);
SELECT * FROM ls(idem_begin('l:poison-2', '10 ms'));
SELECT pg_sleep(0.05);
SELECT * FROM ls(idem_begin('l:poison-2', '1 hour'));
SELECT * FROM ls(idem_begin('l:poison-2', '1 hour'));
SELECT * FROM lease_keys WHERE key LIKE 'l:poison-%';
-- idem_forget brings a dead key back
SELECT idem_forget('l:poison-1');
SELECT * FROM ls(idem_begin('l:poison-1', '1 hour'));
RESET idempotent.max_attempts;
-- without max_attempts, failures never make a key dead
SELECT * FROM ls(idem_fail('l:poison-1', 1, 'one'));
SELECT * FROM ls(idem_begin('l:poison-1', '1 hour'));
SELECT * FROM ls(idem_fail('l:poison-1', 2, 'two'));
SELECT * FROM ls(idem_begin('l:poison-1', '1 hour'));
SELECT * FROM ls(idem_fail('l:poison-1', 3, 'three'));
SELECT * FROM ls(idem_begin('l:poison-1', '1 hour'));

--
-- poison messages of ordinary consumers: idem_fail(key, NULL, error) after
-- the message's transaction rolled back
--
SET idempotent.max_attempts = 3;
-- a failure of a key that never applied: counted, and the key is still new
BEGIN;
SELECT * FROM idem_apply('l:msg-1', NULL, 'INSERT INTO lease_effects VALUES ($1, 1 / $2)', 'l:msg-1', 0);
ROLLBACK;
SELECT * FROM ls(idem_fail('l:msg-1', NULL, 'division by zero'));
SELECT * FROM lease_keys WHERE key = 'l:msg-1';
-- the next delivery applies, and the count starts again from zero
SELECT status, applied FROM idem_apply('l:msg-1', NULL, 'INSERT INTO lease_effects VALUES ($1, $2)', 'l:msg-1', 'ok');
SELECT * FROM lease_keys WHERE key = 'l:msg-1';
-- three failures: dead, for every function, and nothing runs
SELECT * FROM ls(idem_fail('l:msg-2', NULL, 'e1'));
SELECT * FROM ls(idem_fail('l:msg-2', NULL, 'e2'));
SELECT * FROM ls(idem_fail('l:msg-2', NULL, 'e3'));
SELECT * FROM idem_apply('l:msg-2', NULL, 'INSERT INTO lease_effects VALUES ($1, $2)', 'l:msg-2', 'ran');
SELECT * FROM idem_apply('l:msg-2', 7, 'INSERT INTO lease_effects VALUES ($1, $2)', 'l:msg-2', 'ran');
SELECT * FROM idem_apply_next('l:msg-2', 1, 'INSERT INTO lease_effects VALUES ($1, $2)', 'l:msg-2', 'ran');
SELECT * FROM idem_upsert('l:msg-2', 1, 'INSERT INTO lease_effects VALUES ($1, $2)', 'l:msg-2', 'ran');
SELECT * FROM idem_claim('l:msg-2');
SELECT * FROM idem_claim('l:msg-2', 3, 'next');
-- further failures keep it dead and are counted
SELECT * FROM ls(idem_fail('l:msg-2', NULL, 'e4'));
SELECT count(*) AS ran FROM lease_effects WHERE k = 'l:msg-2';
SELECT * FROM lease_keys WHERE key = 'l:msg-2';
-- idem_forget brings it back
SELECT idem_forget('l:msg-2');
SELECT status, applied FROM idem_apply('l:msg-2', NULL, 'INSERT INTO lease_effects VALUES ($1, $2)', 'l:msg-2', 'ran');
SELECT count(*) AS ran FROM lease_effects WHERE k = 'l:msg-2';
-- a versioned key that applied, then failed for good, keeps its version
SELECT status FROM idem_apply('l:msg-3', 1, 'INSERT INTO lease_effects VALUES ($1, $2)', 'l:msg-3', 'v1');
SELECT * FROM ls(idem_fail('l:msg-3', NULL, 'v2 failed'));
SELECT * FROM ls(idem_fail('l:msg-3', NULL, 'v2 failed'));
-- a duplicate of the applied version is still a duplicate before the key dies
SELECT status, applied, version FROM idem_apply('l:msg-3', 1, 'INSERT INTO lease_effects VALUES ($1, $2)', 'l:msg-3', 'v1');
SELECT * FROM ls(idem_fail('l:msg-3', NULL, 'v2 failed'));
SELECT * FROM idem_apply('l:msg-3', 2, 'INSERT INTO lease_effects VALUES ($1, $2)', 'l:msg-3', 'v2');
SELECT * FROM lease_keys WHERE key = 'l:msg-3';
-- idem_reset brings it back at the version it names
SELECT idem_reset('l:msg-3', 1);
SELECT status, applied, version, previous_version
FROM idem_apply('l:msg-3', 2, 'INSERT INTO lease_effects VALUES ($1, $2)', 'l:msg-3', 'v2');
-- and a dead key that never applied, as a new key
SELECT * FROM ls(idem_fail('l:msg-4', NULL, 'e1'));
SELECT * FROM ls(idem_fail('l:msg-4', NULL, 'e2'));
SELECT * FROM ls(idem_fail('l:msg-4', NULL, 'e3'));
SELECT idem_reset('l:msg-4', 5) AS replaced;
SELECT status, applied, version, previous_version FROM idem_claim('l:msg-4', 6);
SELECT k, what FROM lease_effects ORDER BY k, what;
SELECT * FROM lease_keys WHERE key LIKE 'l:msg-%';
RESET idempotent.max_attempts;

--
-- lease keys and applied keys are kept apart: ID002
--
SELECT * FROM idem_apply('l:mail-1', NULL, 'SELECT 1 AS one');
\echo SQLSTATE :SQLSTATE
SELECT * FROM idem_apply('l:mail-3', 1, 'SELECT 1 AS one');
\echo SQLSTATE :SQLSTATE
SELECT * FROM idem_claim('l:mail-1');
\echo SQLSTATE :SQLSTATE
SELECT * FROM idem_fail('l:mail-3', NULL, 'a message failed');
\echo SQLSTATE :SQLSTATE
SELECT idem_reset('l:mail-1', 1);
\echo SQLSTATE :SQLSTATE
SELECT * FROM idem_begin('l:msg-1');
\echo SQLSTATE :SQLSTATE
SELECT idem_complete('l:msg-1', 1);
\echo SQLSTATE :SQLSTATE
SELECT * FROM idem_fail('l:msg-1', 1, 'boom');
\echo SQLSTATE :SQLSTATE
-- a key that only counts failures is not a lease key either
SELECT * FROM ls(idem_fail('l:msg-5', NULL, 'e1'));
SELECT * FROM idem_begin('l:msg-5');
\echo SQLSTATE :SQLSTATE
-- policy lease is not one to name: 22023
SELECT * FROM idem_claim('l:x', NULL, 'lease');
\echo SQLSTATE :SQLSTATE
SELECT idem_reset('l:x', 1, 'lease');
\echo SQLSTATE :SQLSTATE

--
-- bad input: a specific SQLSTATE, nothing recorded (keys 'l:bad-...')
--
SELECT * FROM idem_begin(NULL);
\echo SQLSTATE :SQLSTATE
SELECT * FROM idem_begin('');
\echo SQLSTATE :SQLSTATE
SELECT * FROM idem_begin(repeat('k', 513));
\echo SQLSTATE :SQLSTATE
SELECT idem_complete('', 1);
\echo SQLSTATE :SQLSTATE
SELECT * FROM idem_fail(repeat('k', 513), NULL, 'boom');
\echo SQLSTATE :SQLSTATE
SELECT * FROM idem_fail('', 1, 'boom');
\echo SQLSTATE :SQLSTATE
SELECT count(*) AS recorded FROM idem_ledger WHERE key = '' OR key LIKE 'kkkk%';
SELECT * FROM idem_begin('l:bad-1', '-1 s');
\echo SQLSTATE :SQLSTATE
SELECT * FROM idem_begin('l:bad-1', '0 s');
\echo SQLSTATE :SQLSTATE
SELECT * FROM idem_begin('l:bad-1', '1 day -25 hours');
\echo SQLSTATE :SQLSTATE
SELECT idem_complete(NULL, 1);
\echo SQLSTATE :SQLSTATE
SELECT idem_complete('l:mail-3', NULL);
\echo SQLSTATE :SQLSTATE
SELECT idem_complete('l:mail-3', 0);
\echo SQLSTATE :SQLSTATE
SELECT idem_complete('l:mail-3', -1);
\echo SQLSTATE :SQLSTATE
SELECT * FROM idem_fail(NULL, 1, 'boom');
\echo SQLSTATE :SQLSTATE
SELECT * FROM idem_fail('l:mail-3', 1, NULL);
\echo SQLSTATE :SQLSTATE
SELECT * FROM idem_fail('l:mail-3', 0, 'boom');
\echo SQLSTATE :SQLSTATE
SELECT * FROM idem_fail('l:mail-3', 1, 'boom', '-1 s');
\echo SQLSTATE :SQLSTATE
SELECT * FROM idem_fail('l:bad-2', NULL, NULL);
\echo SQLSTATE :SQLSTATE
SELECT * FROM idem_fail('l:bad-2', NULL, 'boom', '1 s');
\echo SQLSTATE :SQLSTATE
-- a result larger than idempotent.max_result_bytes: 54000
SET idempotent.max_result_bytes = 100;
SELECT idem_complete('l:mail-3', 1, jsonb_build_object('big', repeat('x', 200)));
\echo SQLSTATE :SQLSTATE
RESET idempotent.max_result_bytes;
-- in a read-only transaction a begin that would write is refused (25006);
-- answering from the ledger is fine
BEGIN READ ONLY;
SELECT * FROM ls(idem_begin('l:mail-3', '1 hour'));
SELECT * FROM idem_begin('l:bad-3', '1 hour');
\echo SQLSTATE :SQLSTATE
ROLLBACK;
BEGIN READ ONLY;
SELECT idem_complete('l:mail-3', 1);
\echo SQLSTATE :SQLSTATE
ROLLBACK;
-- nothing was recorded, and l:mail-3 is as it was
SELECT count(*) AS recorded FROM idem_ledger WHERE key LIKE 'l:bad-%';
SELECT * FROM lease_keys WHERE key = 'l:mail-3';

--
-- scopes apply to lease keys: the same key in two scopes is two keys
--
CREATE ROLE lease_scope NOLOGIN;
SET idempotent.scope = 'lease_scope';
SELECT * FROM ls(idem_begin('l:mail-3', '1 hour'));
SELECT idem_complete('l:mail-3', 1, '{"scope": "lease_scope"}');
SELECT * FROM ls(idem_begin('l:mail-3'));
RESET idempotent.scope;
SELECT * FROM ls(idem_begin('l:mail-3', '1 hour'));
SELECT key, scope, state FROM idem_ledger WHERE key = 'l:mail-3' ORDER BY scope;

--
-- TTL and purge: completed and dead keys expire, a live lease never does
--
SET idempotent.ttl = '1h';
SET idempotent.max_attempts = 1;
SELECT * FROM ls(idem_begin('l:ttl-done', '1 hour'));
SELECT idem_complete('l:ttl-done', 1);
SELECT * FROM ls(idem_begin('l:ttl-dead', '1 hour'));
SELECT * FROM ls(idem_fail('l:ttl-dead', 1, 'fatal'));
SELECT * FROM ls(idem_begin('l:ttl-live', '1 hour'));
RESET idempotent.max_attempts;
SELECT * FROM ls(idem_begin('l:ttl-wait', '1 hour'));
SELECT * FROM ls(idem_fail('l:ttl-wait', 1, 'later', '1 hour'));
SELECT key, state, expires FROM lease_keys WHERE key LIKE 'l:ttl-%';
-- time passes: every one of them would be due, had it an expiry
UPDATE idem_ledger SET expires_at = now() - interval '1 second' WHERE key LIKE 'l:ttl-%';
SELECT idem_purge(1000) >= 2 AS purged;
SELECT key, state FROM idem_ledger WHERE key LIKE 'l:ttl-%' ORDER BY key;
-- the live lease still holds its key (once it has no expiry again)
UPDATE idem_ledger SET expires_at = NULL WHERE key LIKE 'l:ttl-%';
SELECT * FROM ls(idem_begin('l:ttl-live', '1 hour'));
-- a purged key starts again
SELECT * FROM ls(idem_begin('l:ttl-done', '1 hour'));
RESET idempotent.ttl;

DROP VIEW lease_keys;
DROP FUNCTION ls(idem_lease);
DROP TABLE lease_effects;
DROP ROLE lease_scope;
DELETE FROM idem_ledger WHERE key LIKE 'l:%';
