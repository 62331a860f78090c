--
-- batch: idem_claim_batch(keys, versions DEFAULT NULL, policy DEFAULT NULL) claims
-- every key of a batch in one call: one row per element in input order, with the
-- outcome idem_claim would give it; a key repeated in the batch is applied at its
-- first occurrence and the later ones report what a later call would
--
\set VERBOSITY default

-- its declaration: set-returning, ROWS sized for a consumer's batch
SELECT p.provolatile, p.proisstrict, p.proparallel, p.prosecdef, p.proretset, p.prorows,
       pg_get_function_arguments(p.oid) AS args, pg_get_function_result(p.oid) AS result
FROM pg_proc p WHERE p.proname = 'idem_claim_batch';

-- no versions, no policy => policy once; input order kept, repeats reported as duplicates
SELECT * FROM idem_claim_batch(ARRAY['bo:1', 'bo:2', 'bo:1', 'bo:3', 'bo:1']);
SELECT * FROM idem_claim_batch(ARRAY['bo:3', 'bo:4', 'bo:1']);
SELECT key, policy, version, rows, result, request_hash FROM idem_ledger
WHERE key LIKE 'bo:%' ORDER BY key;
-- the same outcomes as idem_claim, both ways
SELECT status FROM idem_claim('bo:4');
SELECT status FROM idem_claim('bo:5');
SELECT ord, key, status FROM idem_claim_batch(ARRAY['bo:5', 'bo:6']);
SELECT status FROM idem_claim('bo:6');
-- policy once named explicitly
SELECT * FROM idem_claim_batch(ARRAY['bo:6', 'bo:7'], NULL, 'once');
SELECT * FROM idem_claim_batch(keys => ARRAY['bo:7', 'bo:8'], policy => 'once');

-- versions and no policy => policy newer, decided in input order within the batch
SELECT * FROM idem_claim_batch(ARRAY['bn:1', 'bn:1', 'bn:1', 'bn:2'], ARRAY[3, 5, 4, 1]);
SELECT * FROM idem_claim_batch(ARRAY['bn:1', 'bn:1', 'bn:1', 'bn:2'], ARRAY[5, 6, 6, 0]);
SELECT key, policy, version FROM idem_ledger WHERE key LIKE 'bn:%' ORDER BY key;
SELECT * FROM idem_claim('bn:1', 6);

-- policy next: gaps record nothing, a sequence inside one batch applies in order
SELECT * FROM idem_claim_batch(ARRAY['bs:1', 'bs:1', 'bs:1', 'bs:1', 'bs:1', 'bs:1', 'bs:2'],
                               ARRAY[2, 1, 1, 2, 4, 3, 5], 'next');
SELECT key, policy, version FROM idem_ledger WHERE key LIKE 'bs:%' ORDER BY key;
SELECT * FROM idem_claim('bs:1', 4, 'next');

-- policy upsert: an equal version applies again, an older one is stale
SELECT * FROM idem_claim_batch(ARRAY['bu:1', 'bu:1', 'bu:1', 'bu:1'], ARRAY[1, 1, 0, 2], 'upsert');
SELECT key, policy, version FROM idem_ledger WHERE key LIKE 'bu:%' ORDER BY key;

-- the ledger rows of a batch are those idem_claim writes: no rows, result, fingerprint
SELECT count(*) AS keys,
       count(*) FILTER (WHERE rows IS NULL AND result IS NULL AND request_hash IS NULL
                          AND fingerprint IS NULL AND applied_at <= now()) AS claim_rows
FROM idem_ledger WHERE key ~ '^b[onsu]:';

-- a key recorded under another policy: ID002 for the batch, and nothing of it is recorded
SELECT * FROM idem_claim_batch(ARRAY['bm:new', 'bo:1'], ARRAY[1, 1]);
\echo SQLSTATE :SQLSTATE
SELECT * FROM idem_claim_batch(ARRAY['bm:new', 'bn:1'], ARRAY[9, 9], 'upsert');
\echo SQLSTATE :SQLSTATE
-- a key held by leases is refused too; and a batch does not take leases
SELECT status FROM idem_begin('blease:1', '1 hour');
SELECT * FROM idem_claim_batch(ARRAY['bm:new', 'blease:1']);
\echo SQLSTATE :SQLSTATE
SELECT * FROM idem_claim_batch(ARRAY['bm:new'], NULL, 'lease');
\echo SQLSTATE :SQLSTATE
SELECT count(*) FROM idem_ledger WHERE key = 'bm:new';
SELECT key, version FROM idem_ledger WHERE key = 'bn:1';

-- an expired key counts as absent: applied again, without a previous version
UPDATE idem_ledger SET expires_at = now() - interval '1 second' WHERE key IN ('bo:2', 'bn:2');
SELECT * FROM idem_claim_batch(ARRAY['bo:2', 'bo:2']);
SELECT * FROM idem_claim_batch(ARRAY['bn:2'], ARRAY[1]);
SELECT key, version, expires_at FROM idem_ledger WHERE key IN ('bo:2', 'bn:2') ORDER BY key;

-- a dead key (it failed idempotent.max_attempts times) is dead at every occurrence
SET idempotent.max_attempts = 1;
SELECT status FROM idem_fail('bd:1', NULL, 'poison message');
SELECT * FROM idem_claim_batch(ARRAY['bd:1', 'bd:2', 'bd:1']);
RESET idempotent.max_attempts;
SELECT key, state, attempts, applied_at IS NOT NULL AS applied FROM idem_ledger
WHERE key LIKE 'bd:%' ORDER BY key;

-- many elements, repeated keys spread over the batch: one row per element, in order
SELECT count(*) AS rows, count(*) FILTER (WHERE applied) AS applied,
       bool_and(key = 'bbig:' || (ord % 700)) AS in_input_order,
       bool_and(applied = (ord <= 700)) AS first_occurrences_applied,
       min(ord) AS first, max(ord) AS last
FROM idem_claim_batch(ARRAY(SELECT 'bbig:' || (g % 700) FROM generate_series(1, 1500) g));
SELECT count(*) FROM idem_ledger WHERE key LIKE 'bbig:%';
-- an array that does not start at 1: ord still counts from 1
SELECT * FROM idem_claim_batch('[0:2]={blb:1,blb:2,blb:1}'::text[]);

-- an empty batch returns no rows and records nothing
SELECT * FROM idem_claim_batch('{}'::text[]);
SELECT * FROM idem_claim_batch('{}'::text[], '{}'::bigint[]);
SELECT count(*) FROM idem_claim_batch(ARRAY[]::text[], ARRAY[]::bigint[], 'next');

--
-- Bad input: a specific SQLSTATE, and nothing recorded (each batch has a new key 'be:new')
--
SELECT * FROM idem_claim_batch(NULL);
\echo SQLSTATE :SQLSTATE
SELECT * FROM idem_claim_batch(ARRAY['be:new', NULL]);
\echo SQLSTATE :SQLSTATE
SELECT * FROM idem_claim_batch(ARRAY['be:new', '']);
\echo SQLSTATE :SQLSTATE
SELECT * FROM idem_claim_batch(ARRAY['be:new', repeat('x', 513)]);
\echo SQLSTATE :SQLSTATE
SELECT * FROM idem_claim_batch(ARRAY[['be:new', 'be:2'], ['be:3', 'be:4']]);
\echo SQLSTATE :SQLSTATE
SELECT * FROM idem_claim_batch(ARRAY['be:new', 'be:2'], ARRAY[1]);
\echo SQLSTATE :SQLSTATE
SELECT * FROM idem_claim_batch(ARRAY['be:new'], ARRAY[[1]]);
\echo SQLSTATE :SQLSTATE
SELECT * FROM idem_claim_batch('{}'::text[], ARRAY[1]);
\echo SQLSTATE :SQLSTATE
SELECT * FROM idem_claim_batch(ARRAY['be:new', 'be:2'], ARRAY[1, NULL]);
\echo SQLSTATE :SQLSTATE
SELECT * FROM idem_claim_batch(ARRAY['be:new', 'be:2'], ARRAY[1, -1]);
\echo SQLSTATE :SQLSTATE
SELECT * FROM idem_claim_batch(ARRAY['be:new'], NULL, 'next');
\echo SQLSTATE :SQLSTATE
SELECT * FROM idem_claim_batch(ARRAY['be:new'], ARRAY[1], 'once');
\echo SQLSTATE :SQLSTATE
SELECT * FROM idem_claim_batch(ARRAY['be:new'], ARRAY[1], 'sooner');
\echo SQLSTATE :SQLSTATE
SELECT count(*) FROM idem_ledger WHERE key LIKE 'be:%';
-- the limit is idempotent.max_key_bytes: a key of exactly that length is fine
SELECT ord, status FROM idem_claim_batch(ARRAY[repeat('y', 512)]);

-- a statement must not claim the key its own call is applying (55006), in a batch neither
SELECT * FROM idem_apply('bnest:1', NULL,
    'SELECT count(*) FROM idem_claim_batch(ARRAY[''bnest:2'', ''bnest:1''])');
\echo SQLSTATE :SQLSTATE
SELECT count(*) FROM idem_ledger WHERE key LIKE 'bnest:%';
-- other keys are fine
SELECT status, rows, result FROM idem_apply('bnest:1', NULL,
    'SELECT count(*) FILTER (WHERE applied) AS applied FROM idem_claim_batch(ARRAY[''bnest:2'', ''bnest:3''])');
SELECT key FROM idem_ledger WHERE key LIKE 'bnest:%' ORDER BY key;

--
-- Transactions: the batch commits or rolls back with the caller's transaction
--
BEGIN;
SELECT ord, status FROM idem_claim_batch(ARRAY['bt:1', 'bt:2']);
SELECT ord, status FROM idem_claim_batch(ARRAY['bt:2', 'bt:3']);
ROLLBACK;
SELECT count(*) FROM idem_ledger WHERE key LIKE 'bt:%';
BEGIN;
SELECT ord, status FROM idem_claim_batch(ARRAY['bt:1']);
SAVEPOINT s;
SELECT ord, status FROM idem_claim_batch(ARRAY['bt:2', 'bt:1']);
ROLLBACK TO SAVEPOINT s;
SELECT ord, status FROM idem_claim_batch(ARRAY['bt:3', 'bt:2']);
COMMIT;
SELECT key FROM idem_ledger WHERE key LIKE 'bt:%' ORDER BY key;

-- a read-only transaction may find duplicates, but not record a key (25006)
BEGIN READ ONLY;
SELECT ord, status FROM idem_claim_batch(ARRAY['bt:1', 'bt:2']);
SELECT ord, status FROM idem_claim_batch(ARRAY['bt:1', 'bro:new']);
\echo SQLSTATE :SQLSTATE
ROLLBACK;
SELECT count(*) FROM idem_ledger WHERE key LIKE 'bro:%';

--
-- Scopes: the batch records and finds its keys in the caller's scope
--
CREATE ROLE regress_idem_batcher;
CREATE ROLE regress_idem_stranger;
GRANT EXECUTE ON FUNCTION idem_claim_batch(text[], bigint[], text)
TO regress_idem_batcher, regress_idem_stranger;
SET ROLE regress_idem_batcher;
SET idempotent.scope = 'regress_idem_batcher';
-- 'bo:1' of the shared scope is another key
SELECT ord, key, status FROM idem_claim_batch(ARRAY['bo:1', 'bsc:1', 'bo:1']);
SELECT ord, key, status FROM idem_claim_batch(ARRAY['bsc:1']);
RESET ROLE;
SET ROLE regress_idem_stranger;
-- a role without the scope's privileges: 42501, nothing recorded
SELECT * FROM idem_claim_batch(ARRAY['bsc:2']);
\echo SQLSTATE :SQLSTATE
RESET idempotent.scope;
SELECT ord, key, status FROM idem_claim_batch(ARRAY['bsc:1', 'bsc:2']);
RESET ROLE;
SELECT key, scope FROM idem_ledger WHERE key IN ('bo:1', 'bsc:1', 'bsc:2') ORDER BY key, scope;
-- without EXECUTE (not granted to PUBLIC)
CREATE ROLE regress_idem_nobody;
SET ROLE regress_idem_nobody;
SELECT * FROM idem_claim_batch(ARRAY['bsc:3']);
\echo SQLSTATE :SQLSTATE
RESET ROLE;
DROP ROLE regress_idem_nobody;

--
-- The consumer's statement (README, "Batches"): claim the batch, insert the fresh
-- messages with one set-based statement
--
CREATE TABLE batch_payments (id text, account int, amount numeric);
PREPARE consume(text[], int[], numeric[]) AS
WITH fresh AS (SELECT ord FROM idem_claim_batch($1::text[]) WHERE applied)
INSERT INTO batch_payments (id, account, amount)
SELECT m.id, m.account, m.amount
FROM unnest($1::text[], $2::int[], $3::numeric[]) WITH ORDINALITY AS m(id, account, amount, ord)
JOIN fresh USING (ord);
EXECUTE consume('{bpay-1,bpay-2,bpay-1,bpay-3}', '{1,2,1,3}', '{10.00,20.00,10.00,30.00}');
SELECT count(*) FROM batch_payments;
-- the same batch redelivered: nothing inserted
EXECUTE consume('{bpay-1,bpay-2,bpay-1,bpay-3}', '{1,2,1,3}', '{10.00,20.00,10.00,30.00}');
SELECT count(*) FROM batch_payments;
-- a batch that overlaps: only the new message
EXECUTE consume('{bpay-3,bpay-4,bpay-2}', '{3,4,2}', '{30.00,40.00,20.00}');
SELECT count(*) FROM batch_payments;
SELECT id, count(*), sum(amount) FROM batch_payments GROUP BY id ORDER BY id;
DEALLOCATE consume;

-- clean up
DELETE FROM idem_ledger WHERE key ~ '^b(o|n|s|u|d|big|lb|nest|t|sc|pay|lease)[:-]' OR key = repeat('y', 512);
DROP TABLE batch_payments;
DROP OWNED BY regress_idem_batcher, regress_idem_stranger;
DROP ROLE regress_idem_batcher;
DROP ROLE regress_idem_stranger;
