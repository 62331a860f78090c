--
-- plpgsql: calls from functions, procedures, exception blocks and loops that commit
--
CREATE TABLE pl_accounts (id int PRIMARY KEY, balance int NOT NULL CHECK (balance >= 0));
INSERT INTO pl_accounts VALUES (1, 100), (2, 0);
CREATE TABLE pl_inbox (seq int PRIMARY KEY, msg_key text, account int, amount int);
CREATE TABLE pl_log (n serial, msg_key text, status text);

-- a consumer function: apply a payment once per message key, return the outcome
CREATE FUNCTION pl_pay(msg_key text, account int, amount int) RETURNS idem_outcome
LANGUAGE plpgsql AS $$
DECLARE
    o idem_outcome;
BEGIN
    o := idem_apply(msg_key, NULL,
        'UPDATE pl_accounts SET balance = balance + $2 WHERE id = $1 RETURNING balance',
        account, amount);
    INSERT INTO pl_log (msg_key, status) VALUES (msg_key, o.status);
    RETURN o;
END
$$;

SELECT * FROM pl_pay('g:pay-1', 1, 10);
SELECT * FROM pl_pay('g:pay-1', 1, 10);
SELECT * FROM pl_accounts ORDER BY id;

-- the same key twice in one transaction: the second call is a duplicate
BEGIN;
SELECT status, rows, result FROM pl_pay('g:pay-2', 2, 5);
SELECT status, rows, result FROM pl_pay('g:pay-2', 2, 5);
COMMIT;
SELECT * FROM pl_accounts ORDER BY id;

-- ... and twice in one statement
SELECT m.k, (pl_pay(m.k, 2, 1)).status
FROM (VALUES (1, 'g:pay-3'), (2, 'g:pay-3'), (3, 'g:pay-4')) AS m(i, k)
ORDER BY m.i;
SELECT * FROM pl_accounts ORDER BY id;

-- policy newer twice in one transaction: v1 then v2 both apply, the ledger keeps v2
BEGIN;
SELECT status, version, previous_version, result FROM idem_apply('g:newer', 1,
    'UPDATE pl_accounts SET balance = $2 WHERE id = $1 RETURNING balance', 2, 1000);
SELECT status, version, previous_version, result FROM idem_apply('g:newer', 2,
    'UPDATE pl_accounts SET balance = $2 WHERE id = $1 RETURNING balance', 2, 2000);
SELECT status, version, previous_version, result FROM idem_apply('g:newer', 2,
    'UPDATE pl_accounts SET balance = $2 WHERE id = $1 RETURNING balance', 2, 2000);
SELECT status, version, previous_version, result FROM idem_apply('g:newer', 1,
    'UPDATE pl_accounts SET balance = $2 WHERE id = $1 RETURNING balance', 2, 1000);
COMMIT;
SELECT * FROM pl_accounts ORDER BY id;
SELECT key, policy, version, rows, result FROM idem_ledger WHERE key = 'g:newer';
-- and policy next in a loop, inside one function call: 1, 2, 3 in order, then a gap
DO $$
DECLARE
    v int;
    o idem_outcome;
BEGIN
    FOREACH v IN ARRAY ARRAY[1, 2, 2, 3, 5] LOOP
        o := idem_apply_next('g:next', v, 'SELECT $1::int AS step', v);
        RAISE NOTICE 'v% %: version %, previous %', v, o.status, o.version, o.previous_version;
    END LOOP;
END
$$;

--
-- exception blocks: the key goes with the block's subtransaction
--
-- the statement fails: the error is caught, nothing recorded, the key can be applied later
DO $$
DECLARE
    o idem_outcome;
BEGIN
    BEGIN
        o := idem_apply('g:fails', NULL,
            'UPDATE pl_accounts SET balance = balance - $2 WHERE id = $1', 1, 1000000);
        RAISE NOTICE 'not reached: %', o.status;
    EXCEPTION WHEN check_violation THEN
        RAISE NOTICE 'caught %', SQLSTATE;
    END;
    RAISE NOTICE 'recorded: %', (SELECT count(*) FROM idem_ledger WHERE key = 'g:fails');
    o := idem_apply('g:fails', NULL,
        'UPDATE pl_accounts SET balance = balance - $2 WHERE id = $1', 1, 10);
    RAISE NOTICE 'after the cause is gone: %', o.status;
END
$$;
SELECT key, rows FROM idem_ledger WHERE key = 'g:fails';
SELECT * FROM pl_accounts ORDER BY id;

-- the key is claimed (the ledger row written), then the block fails: the rollback of
-- the block undoes the claim too, and the key is absent and can be applied again
DO $$
DECLARE
    o idem_outcome;
BEGIN
    BEGIN
        o := idem_claim('g:claim-then-fail');
        RAISE NOTICE 'claim: %', o.status;
        RAISE NOTICE 'in the block: % row(s)', (SELECT count(*) FROM idem_ledger WHERE key = 'g:claim-then-fail');
        UPDATE pl_accounts SET balance = balance - 1000000 WHERE id = 1;
        RAISE NOTICE 'not reached';
    EXCEPTION WHEN check_violation THEN
        RAISE NOTICE 'caught %', SQLSTATE;
    END;
    RAISE NOTICE 'after the block: % row(s)', (SELECT count(*) FROM idem_ledger WHERE key = 'g:claim-then-fail');
    o := idem_claim('g:claim-then-fail');
    RAISE NOTICE 'claim again: %', o.status;
END
$$;

-- the same with idem_apply: applied, then a later statement of the block fails
DO $$
DECLARE
    o idem_outcome;
BEGIN
    BEGIN
        o := idem_apply('g:apply-then-fail', NULL,
            'UPDATE pl_accounts SET balance = balance + $2 WHERE id = $1 RETURNING balance', 2, 7);
        RAISE NOTICE 'apply: % %', o.status, o.result;
        PERFORM 1 / 0;
    EXCEPTION WHEN division_by_zero THEN
        RAISE NOTICE 'caught %', SQLSTATE;
    END;
    RAISE NOTICE 'after the block: % row(s)', (SELECT count(*) FROM idem_ledger WHERE key = 'g:apply-then-fail');
    o := idem_apply('g:apply-then-fail', NULL,
        'UPDATE pl_accounts SET balance = balance + $2 WHERE id = $1 RETURNING balance', 2, 7);
    RAISE NOTICE 'apply again: % %', o.status, o.result;
END
$$;
SELECT * FROM pl_accounts ORDER BY id;

-- a successful apply inside a block that then RAISEs: rolled back, key and effect
DO $$
DECLARE
    o idem_outcome;
BEGIN
    o := idem_apply('g:raise', NULL,
        'UPDATE pl_accounts SET balance = balance + $2 WHERE id = $1', 1, 500);
    RAISE NOTICE 'apply: %', o.status;
    RAISE EXCEPTION 'business rule says no' USING ERRCODE = 'P0001';
EXCEPTION WHEN raise_exception THEN
    RAISE NOTICE 'caught %: %', SQLSTATE, SQLERRM;
END
$$;
SELECT count(*) AS recorded FROM idem_ledger WHERE key = 'g:raise';
SELECT * FROM pl_accounts ORDER BY id;
-- a duplicate inside a block does not raise: the handler is not entered
DO $$
DECLARE
    o idem_outcome;
BEGIN
    o := idem_apply('g:pay-1', NULL,
        'UPDATE pl_accounts SET balance = balance + $2 WHERE id = $1 RETURNING balance', 1, 10);
    RAISE NOTICE 'outcome: % %', o.status, o.result;
EXCEPTION WHEN OTHERS THEN
    RAISE NOTICE 'not reached: %', SQLSTATE;
END
$$;

--
-- a procedure that consumes an inbox and commits after each message
--
CREATE PROCEDURE pl_consume()
LANGUAGE plpgsql AS $$
DECLARE
    m record;
    o idem_outcome;
BEGIN
    FOR m IN SELECT * FROM pl_inbox ORDER BY seq LOOP
        o := idem_apply(m.msg_key, NULL,
            'UPDATE pl_accounts SET balance = balance + $2 WHERE id = $1', m.account, m.amount);
        INSERT INTO pl_log (msg_key, status) VALUES (m.msg_key, o.status);
        COMMIT;
    END LOOP;
END
$$;
-- message g:msg-2 is delivered twice, as a broker redelivery would
INSERT INTO pl_inbox VALUES
    (1, 'g:msg-1', 1, 1), (2, 'g:msg-2', 1, 20), (3, 'g:msg-2', 1, 20), (4, 'g:msg-3', 2, 300);
SELECT * FROM pl_accounts ORDER BY id;
TRUNCATE pl_log;
CALL pl_consume();
SELECT msg_key, status FROM pl_log ORDER BY n;
SELECT * FROM pl_accounts ORDER BY id;
-- the second pass over the same inbox: all duplicates, balances unchanged
TRUNCATE pl_log;
CALL pl_consume();
SELECT msg_key, status FROM pl_log ORDER BY n;
SELECT * FROM pl_accounts ORDER BY id;
SELECT key, policy, rows FROM idem_ledger WHERE key LIKE 'g:msg-%' ORDER BY key;

-- a procedure that commits may not be the statement itself, even from a procedure
CREATE PROCEDURE pl_commits() LANGUAGE plpgsql AS $$
BEGIN
    UPDATE pl_accounts SET balance = balance + 1 WHERE id = 1;
    COMMIT;
END
$$;
CREATE PROCEDURE pl_calls_commits() LANGUAGE plpgsql AS $$
BEGIN
    PERFORM idem_apply('g:nested-commit', NULL, 'CALL pl_commits()');
END
$$;
CALL pl_calls_commits();
\echo SQLSTATE :SQLSTATE
SELECT count(*) AS recorded FROM idem_ledger WHERE key = 'g:nested-commit';
SELECT * FROM pl_accounts ORDER BY id;

-- a statement calling a function that itself calls idem_apply (nested keys)
CREATE FUNCTION pl_inner(k text) RETURNS text LANGUAGE plpgsql AS $$
BEGIN
    RETURN (idem_apply(k, NULL, 'UPDATE pl_accounts SET balance = balance + 1 WHERE id = 2')).status;
END
$$;
SELECT status, result FROM idem_apply('g:outer', NULL, 'SELECT pl_inner($1) AS inner_status', 'g:inner');
SELECT status, result FROM idem_apply('g:outer', NULL, 'SELECT pl_inner($1) AS inner_status', 'g:inner');
SELECT status FROM idem_apply('g:outer-2', NULL, 'SELECT pl_inner($1) AS inner_status', 'g:inner');
SELECT * FROM pl_accounts ORDER BY id;

SELECT key, policy, version, rows, result FROM idem_ledger WHERE key LIKE 'g:%' ORDER BY key;

DROP FUNCTION pl_inner(text);
DROP PROCEDURE pl_calls_commits();
DROP PROCEDURE pl_commits();
DROP PROCEDURE pl_consume();
DROP FUNCTION pl_pay(text, int, int);
DROP TABLE pl_accounts, pl_inbox, pl_log;
