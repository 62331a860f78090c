--
-- claim: idem_claim(key, version DEFAULT NULL, policy DEFAULT NULL) records the key
-- without a statement (rows, result and fingerprint NULL), in the caller's transaction
--
CREATE TABLE claim_effects (key text, note text);

-- defaults: no version, no policy => policy once
SELECT * FROM idem_claim('c:once');
SELECT * FROM idem_claim('c:once');
SELECT * FROM idem_claim(key => 'c:once', policy => 'once');
SELECT key, policy, version, rows, result, request_hash FROM idem_ledger WHERE key = 'c:once';

-- a version and no policy => policy newer
SELECT * FROM idem_claim('c:newer', 3);
SELECT * FROM idem_claim('c:newer', 3);
SELECT * FROM idem_claim('c:newer', 2);
SELECT * FROM idem_claim('c:newer', 4);
SELECT * FROM idem_claim(key => 'c:newer', version => 4, policy => 'newer');
SELECT key, policy, version, rows, result, request_hash FROM idem_ledger WHERE key = 'c:newer';

-- policy next
SELECT * FROM idem_claim('c:next', 2, 'next');
SELECT * FROM idem_claim('c:next', 0, 'next');
SELECT * FROM idem_claim('c:next', 1, 'next');
SELECT * FROM idem_claim('c:next', 1, 'next');
SELECT * FROM idem_claim('c:next', 3, 'next');
SELECT * FROM idem_claim('c:next', 2, 'next');
SELECT * FROM idem_claim('c:next', 1, 'next');
SELECT key, policy, version, rows, result, request_hash FROM idem_ledger WHERE key = 'c:next';

-- policy upsert
SELECT * FROM idem_claim('c:upsert', 1, 'upsert');
SELECT * FROM idem_claim('c:upsert', 1, 'upsert');
SELECT * FROM idem_claim('c:upsert', 2, 'upsert');
SELECT * FROM idem_claim('c:upsert', 1, 'upsert');
SELECT key, policy, version, rows, result, request_hash FROM idem_ledger WHERE key = 'c:upsert';

-- policy once named explicitly, NULL version
SELECT * FROM idem_claim('c:once2', NULL, 'once');
SELECT * FROM idem_claim('c:once2');

-- claimed keys keep their policy: ID002 for another one
SELECT * FROM idem_claim('c:once', 1);
\echo SQLSTATE :SQLSTATE
SELECT * FROM idem_claim('c:newer', 5, 'upsert');
\echo SQLSTATE :SQLSTATE
SELECT * FROM idem_claim('c:next', 3);
\echo SQLSTATE :SQLSTATE
SELECT * FROM idem_claim('c:upsert', NULL);
\echo SQLSTATE :SQLSTATE

-- a claimed key is a duplicate for idem_apply too: the statement does not run, and
-- there is no fingerprint to compare (rows and result stay NULL)
SELECT * FROM idem_apply('c:once', NULL, 'INSERT INTO claim_effects VALUES ($1, $2)', 'c:once', 'ran');
SELECT * FROM idem_apply('c:newer', 4, 'INSERT INTO claim_effects VALUES ($1, $2)', 'c:newer', 'ran');
SELECT * FROM claim_effects ORDER BY key;
-- and a newer version applies the statement and stores its rows and fingerprint
SELECT * FROM idem_apply('c:newer', 5, 'INSERT INTO claim_effects VALUES ($1, $2)', 'c:newer', 'v5');
SELECT * FROM claim_effects ORDER BY key;
SELECT key, policy, version, rows, result, request_hash IS NOT NULL AS has_fingerprint
FROM idem_ledger WHERE key = 'c:newer';

-- the consumer pattern: claim, and do the work only when the claim applied
CREATE FUNCTION claim_consume(k text, note text) RETURNS text LANGUAGE plpgsql AS $$
DECLARE
    o idem_outcome;
BEGIN
    o := idem_claim(k);
    IF o.applied THEN
        INSERT INTO claim_effects VALUES (k, note);
    END IF;
    RETURN o.status;
END
$$;
SELECT claim_consume('c:msg-1', 'first delivery');
SELECT claim_consume('c:msg-1', 'redelivery');
SELECT claim_consume('c:msg-2', 'other message');
SELECT * FROM claim_effects ORDER BY key, note;

-- a claim in a transaction that rolls back leaves no key behind
BEGIN;
SELECT * FROM idem_claim('c:rolled-back');
SELECT claim_consume('c:rolled-back-2', 'never committed');
-- visible to the transaction itself: a second claim is a duplicate
SELECT * FROM idem_claim('c:rolled-back');
SELECT key, policy FROM idem_ledger WHERE key LIKE 'c:rolled-back%' ORDER BY key;
ROLLBACK;
SELECT key, policy FROM idem_ledger WHERE key LIKE 'c:rolled-back%' ORDER BY key;
SELECT * FROM claim_effects WHERE key LIKE 'c:rolled-back%';
-- so the next delivery claims it
SELECT * FROM idem_claim('c:rolled-back');
SELECT claim_consume('c:rolled-back-2', 'second delivery');
SELECT * FROM claim_effects WHERE key LIKE 'c:rolled-back%';

-- a versioned claim rolled back leaves the stored version as it was
BEGIN;
SELECT * FROM idem_claim('c:newer', 9);
ROLLBACK;
SELECT key, policy, version FROM idem_ledger WHERE key = 'c:newer';

-- a savepoint rolled back undoes the claim, the transaction goes on
BEGIN;
SELECT status FROM idem_claim('c:sp-1');
SAVEPOINT s;
SELECT status FROM idem_claim('c:sp-2');
ROLLBACK TO SAVEPOINT s;
SELECT status FROM idem_claim('c:sp-3');
COMMIT;
SELECT key, policy FROM idem_ledger WHERE key LIKE 'c:sp-%' ORDER BY key;

SELECT key, policy, version, rows, result, request_hash IS NOT NULL AS has_fingerprint
FROM idem_ledger WHERE key LIKE 'c:%' ORDER BY key;

DROP FUNCTION claim_consume(text, text);
DROP TABLE claim_effects;
