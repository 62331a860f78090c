--
-- errors: bad input gets a specific SQLSTATE and records nothing; errors of the
-- statement itself propagate with their own SQLSTATE and record nothing; a
-- duplicate is never an error
--
-- Keys of calls that fail start with 'e:', so "recorded" below must stay 0;
-- keys of calls that succeed start with 'eok:'.
CREATE TABLE err_items (id int PRIMARY KEY, qty int NOT NULL CHECK (qty >= 0));
CREATE PROCEDURE err_commits() LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO err_items VALUES (99, 99);
    COMMIT;
END
$$;

--
-- the key
--
-- NULL: 22004, from every function
SELECT * FROM idem_apply(NULL, NULL, 'SELECT 1 AS one');
\echo SQLSTATE :SQLSTATE
SELECT * FROM idem_apply(NULL, 1, 'SELECT $1::int AS one', 1);
\echo SQLSTATE :SQLSTATE
SELECT * FROM idem_apply_next(NULL, 1, 'SELECT 1 AS one');
\echo SQLSTATE :SQLSTATE
SELECT * FROM idem_upsert(NULL, 1, 'SELECT 1 AS one');
\echo SQLSTATE :SQLSTATE
SELECT * FROM idem_claim(NULL);
\echo SQLSTATE :SQLSTATE
-- empty: 22023
SELECT * FROM idem_apply('', NULL, 'SELECT 1 AS one');
\echo SQLSTATE :SQLSTATE
SELECT * FROM idem_apply_next('', 1, 'SELECT 1 AS one');
\echo SQLSTATE :SQLSTATE
SELECT * FROM idem_upsert('', 1, 'SELECT 1 AS one');
\echo SQLSTATE :SQLSTATE
SELECT * FROM idem_claim('');
\echo SQLSTATE :SQLSTATE
-- longer than idempotent.max_key_bytes (512 by default): 22001; 512 bytes is fine
SELECT * FROM idem_apply('e:' || repeat('k', 511), NULL, 'SELECT 1 AS one');
\echo SQLSTATE :SQLSTATE
SELECT * FROM idem_claim('e:' || repeat('k', 511));
\echo SQLSTATE :SQLSTATE
SELECT status FROM idem_apply('eok:' || repeat('k', 508), NULL, 'SELECT 1 AS one');
SELECT length(key) FROM idem_ledger WHERE key LIKE 'eok:kkk%';
-- the limit counts bytes and can be changed (by a superuser), up to 2000
SET idempotent.max_key_bytes = 8;
SELECT status FROM idem_claim('eok:1234');
SELECT * FROM idem_claim('e:3456789');
\echo SQLSTATE :SQLSTATE
SELECT * FROM idem_apply('e:3456789', NULL, 'SELECT 1 AS one');
\echo SQLSTATE :SQLSTATE
-- bytes, not characters: 'é' takes two
SELECT status FROM idem_claim('eok:éé');
SELECT * FROM idem_claim('eok:ééé');
\echo SQLSTATE :SQLSTATE
RESET idempotent.max_key_bytes;
SET idempotent.max_key_bytes = 2001;
\echo SQLSTATE :SQLSTATE
SET idempotent.max_key_bytes = 0;
\echo SQLSTATE :SQLSTATE
SHOW idempotent.max_key_bytes;
SELECT count(*) AS recorded FROM idem_ledger WHERE key LIKE 'e:%';

--
-- the version
--
-- negative: 22003
SELECT * FROM idem_apply('e:neg', -1, 'SELECT 1 AS one');
\echo SQLSTATE :SQLSTATE
SELECT * FROM idem_apply_next('e:neg', -1, 'SELECT 1 AS one');
\echo SQLSTATE :SQLSTATE
SELECT * FROM idem_upsert('e:neg', -9223372036854775808, 'SELECT 1 AS one');
\echo SQLSTATE :SQLSTATE
SELECT * FROM idem_claim('e:neg', -1);
\echo SQLSTATE :SQLSTATE
SELECT * FROM idem_claim('e:neg', -1, 'next');
\echo SQLSTATE :SQLSTATE
-- NULL where the policy needs one: 22004
SELECT * FROM idem_apply_next('e:null-version', NULL, 'SELECT 1 AS one');
\echo SQLSTATE :SQLSTATE
SELECT * FROM idem_upsert('e:null-version', NULL, 'SELECT 1 AS one');
\echo SQLSTATE :SQLSTATE
SELECT * FROM idem_claim('e:null-version', NULL, 'newer');
\echo SQLSTATE :SQLSTATE
SELECT * FROM idem_claim('e:null-version', NULL, 'next');
\echo SQLSTATE :SQLSTATE
SELECT * FROM idem_claim('e:null-version', NULL, 'upsert');
\echo SQLSTATE :SQLSTATE
-- a version for policy once: 22023
SELECT * FROM idem_claim('e:once-version', 1, 'once');
\echo SQLSTATE :SQLSTATE
SELECT * FROM idem_claim('e:once-version', 0, 'once');
\echo SQLSTATE :SQLSTATE
-- an unknown policy: 22023 (names are lower case)
SELECT * FROM idem_claim('e:policy', 1, 'latest');
\echo SQLSTATE :SQLSTATE
SELECT * FROM idem_claim('e:policy', NULL, 'ONCE');
\echo SQLSTATE :SQLSTATE
SELECT * FROM idem_claim('e:policy', NULL, '');
\echo SQLSTATE :SQLSTATE
SELECT count(*) AS recorded FROM idem_ledger WHERE key LIKE 'e:%';

--
-- the statement
--
-- NULL: 22004
SELECT * FROM idem_apply('e:stmt', NULL, NULL);
\echo SQLSTATE :SQLSTATE
SELECT * FROM idem_apply_next('e:stmt', 1, NULL, 1);
\echo SQLSTATE :SQLSTATE
SELECT * FROM idem_upsert('e:stmt', 1, NULL);
\echo SQLSTATE :SQLSTATE
-- empty, blank, only a comment, only a semicolon: 22023
SELECT * FROM idem_apply('e:stmt', NULL, '');
\echo SQLSTATE :SQLSTATE
SELECT * FROM idem_apply('e:stmt', NULL, E' \n\t ');
\echo SQLSTATE :SQLSTATE
SELECT * FROM idem_apply('e:stmt', NULL, '-- nothing to do');
\echo SQLSTATE :SQLSTATE
SELECT * FROM idem_apply('e:stmt', NULL, '/* nothing */');
\echo SQLSTATE :SQLSTATE
SELECT * FROM idem_apply('e:stmt', NULL, ';');
\echo SQLSTATE :SQLSTATE
-- several commands: 42601 (a single trailing semicolon is fine)
SELECT * FROM idem_apply('e:stmt', NULL, 'INSERT INTO err_items VALUES (1, 1); INSERT INTO err_items VALUES (2, 2)');
\echo SQLSTATE :SQLSTATE
SELECT * FROM idem_apply('e:stmt', NULL, 'SELECT 1 AS one; SELECT 2 AS two;');
\echo SQLSTATE :SQLSTATE
SELECT * FROM idem_apply('e:stmt', NULL, 'SELECT 1 AS one; COMMIT');
\echo SQLSTATE :SQLSTATE
SELECT status, result FROM idem_apply('eok:semicolon', NULL, 'SELECT 1 AS one;');
-- transaction control: 2D000
SELECT * FROM idem_apply('e:stmt', NULL, 'BEGIN');
\echo SQLSTATE :SQLSTATE
SELECT * FROM idem_apply('e:stmt', NULL, 'START TRANSACTION');
\echo SQLSTATE :SQLSTATE
SELECT * FROM idem_apply('e:stmt', NULL, 'COMMIT');
\echo SQLSTATE :SQLSTATE
SELECT * FROM idem_apply('e:stmt', NULL, 'ROLLBACK');
\echo SQLSTATE :SQLSTATE
SELECT * FROM idem_apply('e:stmt', NULL, 'SAVEPOINT s1');
\echo SQLSTATE :SQLSTATE
SELECT * FROM idem_apply('e:stmt', NULL, 'RELEASE SAVEPOINT s1');
\echo SQLSTATE :SQLSTATE
SELECT * FROM idem_apply('e:stmt', NULL, 'ROLLBACK TO SAVEPOINT s1');
\echo SQLSTATE :SQLSTATE
SELECT * FROM idem_apply('e:stmt', NULL, 'PREPARE TRANSACTION ''e''');
\echo SQLSTATE :SQLSTATE
SELECT * FROM idem_apply_next('e:stmt', 1, 'COMMIT');
\echo SQLSTATE :SQLSTATE
SELECT * FROM idem_upsert('e:stmt', 1, 'ROLLBACK');
\echo SQLSTATE :SQLSTATE
-- CALL of a procedure that commits: PostgreSQL's own 2D000; its insert is gone
SELECT * FROM idem_apply('e:stmt', NULL, 'CALL err_commits()');
\echo SQLSTATE :SQLSTATE
-- other utility commands: 0A000
SELECT * FROM idem_apply('e:stmt', NULL, 'CREATE TABLE err_created (a int)');
\echo SQLSTATE :SQLSTATE
SELECT * FROM idem_apply('e:stmt', NULL, 'CREATE TABLE err_created AS SELECT 1 AS a');
\echo SQLSTATE :SQLSTATE
SELECT * FROM idem_apply('e:stmt', NULL, 'DROP TABLE err_items');
\echo SQLSTATE :SQLSTATE
SELECT * FROM idem_apply('e:stmt', NULL, 'TRUNCATE err_items');
\echo SQLSTATE :SQLSTATE
SELECT * FROM idem_apply('e:stmt', NULL, 'VACUUM err_items');
\echo SQLSTATE :SQLSTATE
SELECT * FROM idem_apply('e:stmt', NULL, 'DO $$BEGIN INSERT INTO err_items VALUES (3, 3); END$$');
\echo SQLSTATE :SQLSTATE
SELECT * FROM idem_apply('e:stmt', NULL, 'COPY err_items TO STDOUT');
\echo SQLSTATE :SQLSTATE
SELECT * FROM idem_apply('e:stmt', NULL, 'EXPLAIN SELECT 1');
\echo SQLSTATE :SQLSTATE
SELECT * FROM idem_apply('e:stmt', NULL, 'SET work_mem = ''1MB''');
\echo SQLSTATE :SQLSTATE
SELECT * FROM idem_apply('e:stmt', NULL, 'LOCK TABLE err_items');
\echo SQLSTATE :SQLSTATE
SELECT * FROM idem_apply('e:stmt', NULL, 'NOTIFY err_channel');
\echo SQLSTATE :SQLSTATE
SELECT * FROM idem_apply('e:stmt', NULL, 'GRANT SELECT ON err_items TO PUBLIC');
\echo SQLSTATE :SQLSTATE
SELECT * FROM idem_upsert('e:stmt', 1, 'ANALYZE err_items');
\echo SQLSTATE :SQLSTATE
-- SELECT ... INTO creates a table (it is CREATE TABLE AS): refused like it, 0A000
-- (should it run, the block undoes it so that no table is left behind)
DO $$
BEGIN
    PERFORM idem_apply('e:select-into', NULL, 'SELECT 1 AS a INTO err_created');
    RAISE NOTICE 'no error: the statement ran';
    RAISE EXCEPTION 'undo';
EXCEPTION WHEN OTHERS THEN
    RAISE NOTICE 'SQLSTATE %', SQLSTATE;
END
$$;
SELECT to_regclass('err_created') IS NULL AS no_table_created;
-- $n beyond the arguments: 42P02
SELECT * FROM idem_apply('e:stmt', NULL, 'INSERT INTO err_items VALUES ($1, $2)', 1);
\echo SQLSTATE :SQLSTATE
-- errors found when the statement is parsed: the parser's own SQLSTATE
SELECT * FROM idem_apply('e:stmt', NULL, 'SELEC 1');
\echo SQLSTATE :SQLSTATE
SELECT * FROM idem_apply('e:stmt', NULL, 'SELECT * FROM err_no_such_table');
\echo SQLSTATE :SQLSTATE
SELECT * FROM idem_apply('e:stmt', NULL, 'SELECT err_no_such_column FROM err_items');
\echo SQLSTATE :SQLSTATE
SELECT * FROM err_items ORDER BY id;
SELECT count(*) AS recorded FROM idem_ledger WHERE key LIKE 'e:%';

-- the input is checked on every path: a bad statement under a key already recorded
-- is an error, not a duplicate
SELECT status FROM idem_apply('eok:recorded', NULL, 'SELECT 1 AS one');
SELECT * FROM idem_apply('eok:recorded', NULL, '');
\echo SQLSTATE :SQLSTATE
SELECT * FROM idem_apply('eok:recorded', NULL, 'COMMIT');
\echo SQLSTATE :SQLSTATE
SELECT * FROM idem_apply('eok:recorded', NULL, 'SELECT $1 AS one');
\echo SQLSTATE :SQLSTATE
SELECT * FROM idem_apply('eok:recorded', -1, 'SELECT 1 AS one');
\echo SQLSTATE :SQLSTATE

-- the other errors of the extension, once more here (details in their own files)
SELECT * FROM idem_apply('eok:recorded', 1, 'SELECT 1 AS one');
\echo SQLSTATE :SQLSTATE
SELECT * FROM idem_apply('eok:recorded', NULL, 'SELECT 2 AS two');
\echo SQLSTATE :SQLSTATE
SET idempotent.max_result_bytes = 10;
SELECT * FROM idem_apply('e:too-big', NULL, 'SELECT 1 AS one');
\echo SQLSTATE :SQLSTATE
RESET idempotent.max_result_bytes;

-- in a read-only transaction a call that would record the key: 25006 (the name in
-- the message is not checked here); a duplicate only reads, and is reported
BEGIN READ ONLY;
SELECT * FROM idem_apply('e:read-only', NULL, 'SELECT 1 AS one');
\echo SQLSTATE :SQLSTATE
ROLLBACK;
\set VERBOSITY sqlstate
BEGIN READ ONLY;
SELECT * FROM idem_apply_next('e:read-only', 1, 'SELECT 1 AS one');
\echo SQLSTATE :SQLSTATE
ROLLBACK;
BEGIN READ ONLY;
SELECT * FROM idem_upsert('e:read-only', 1, 'SELECT 1 AS one');
\echo SQLSTATE :SQLSTATE
ROLLBACK;
BEGIN READ ONLY;
SELECT * FROM idem_claim('e:read-only');
\echo SQLSTATE :SQLSTATE
ROLLBACK;
\set VERBOSITY default
BEGIN READ ONLY;
SELECT status, rows, result FROM idem_apply('eok:recorded', NULL, 'SELECT 1 AS one');
SELECT status, rows, result FROM idem_claim('eok:recorded');
COMMIT;
SELECT count(*) AS recorded FROM idem_ledger WHERE key LIKE 'e:%';

--
-- errors raised by the statement propagate with their own SQLSTATE; nothing recorded
--
SELECT status FROM idem_apply('eok:item-1', NULL, 'INSERT INTO err_items VALUES ($1, $2)', 1, 10);
-- division by zero: 22012
SELECT * FROM idem_apply('e:div', NULL, 'UPDATE err_items SET qty = qty / $1 RETURNING qty', 0);
\echo SQLSTATE :SQLSTATE
-- unique violation in the target table: 23505
SELECT * FROM idem_apply('e:unique', NULL, 'INSERT INTO err_items VALUES ($1, $2)', 1, 20);
\echo SQLSTATE :SQLSTATE
-- not-null and check violations: 23502, 23514
SELECT * FROM idem_apply('e:not-null', NULL, 'INSERT INTO err_items VALUES ($1, $2)', 2, NULL::int);
\echo SQLSTATE :SQLSTATE
SELECT * FROM idem_apply_next('e:check', 1, 'INSERT INTO err_items VALUES ($1, $2)', 2, -5);
\echo SQLSTATE :SQLSTATE
-- a conversion error: 22P02
SELECT * FROM idem_upsert('e:cast', 1, 'SELECT $1::int AS n', 'x');
\echo SQLSTATE :SQLSTATE
-- an error raised by a function the statement calls: its SQLSTATE
CREATE FUNCTION err_raise(code text) RETURNS int LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'custom failure' USING ERRCODE = code;
END
$$;
SELECT * FROM idem_apply('e:custom', NULL, 'SELECT err_raise($1) AS r', 'P0042');
\echo SQLSTATE :SQLSTATE
SELECT * FROM err_items ORDER BY id;
SELECT count(*) AS recorded FROM idem_ledger WHERE key LIKE 'e:%';
-- and the key can be used once the cause is gone (the one 'e:' key recorded)
SELECT status, rows FROM idem_apply('e:unique', NULL, 'INSERT INTO err_items VALUES ($1, $2)', 3, 30);
SELECT key FROM idem_ledger WHERE key LIKE 'e:%' ORDER BY key;

-- a statement error takes the whole transaction with it, keys applied before included
BEGIN;
SELECT status FROM idem_apply('eok:tx-1', NULL, 'INSERT INTO err_items VALUES ($1, $2)', 4, 40);
SELECT * FROM idem_apply('eok:tx-2', NULL, 'INSERT INTO err_items VALUES ($1, $2)', 4, 41);
\echo SQLSTATE :SQLSTATE
ROLLBACK;
SELECT key FROM idem_ledger WHERE key LIKE 'eok:tx-%' ORDER BY key;
SELECT * FROM err_items WHERE id = 4;

--
-- a duplicate (and a stale or a gap) never raises and never aborts the transaction
--
BEGIN;
SELECT status, applied FROM idem_apply('eok:dup', NULL, 'INSERT INTO err_items VALUES ($1, $2)', 5, 50);
SELECT status, applied FROM idem_apply('eok:dup', NULL, 'INSERT INTO err_items VALUES ($1, $2)', 5, 50);
SELECT status, applied FROM idem_apply('eok:dup', NULL, 'INSERT INTO err_items VALUES ($1, $2)', 5, 50);
SELECT status, applied FROM idem_apply('eok:ver', 2, 'SELECT 2 AS v');
SELECT status, applied FROM idem_apply('eok:ver', 1, 'SELECT 1 AS v');
SELECT status, applied FROM idem_apply_next('eok:seq', 2, 'SELECT 2 AS v');
SELECT status, applied FROM idem_claim('eok:dup');
-- still usable
SELECT count(*) FROM err_items WHERE id = 5;
INSERT INTO err_items VALUES (6, 60);
SELECT status, applied FROM idem_apply('eok:after-dup', NULL, 'INSERT INTO err_items VALUES ($1, $2)', 7, 70);
COMMIT;
SELECT * FROM err_items WHERE id >= 5 ORDER BY id;
SELECT key, policy, version, rows FROM idem_ledger
WHERE key IN ('eok:dup', 'eok:ver', 'eok:seq', 'eok:after-dup') ORDER BY key;

-- an expression, partial or exclusion index on the ledger cannot be
-- maintained by the extension: every call is refused until it is dropped
CREATE INDEX idem_ledger_extra ON idem_ledger (lower(key));
SELECT * FROM idem_claim('e:extra-index');
\echo SQLSTATE :SQLSTATE
SELECT * FROM idem_apply('eok:dup', NULL, 'SELECT 1 AS one');
\echo SQLSTATE :SQLSTATE
DROP INDEX idem_ledger_extra;
-- partial on anything but IS NOT NULL, or an exclusion constraint: the same
CREATE INDEX idem_ledger_extra ON idem_ledger (version) WHERE version > 5;
SELECT * FROM idem_claim('e:extra-index');
\echo SQLSTATE :SQLSTATE
DROP INDEX idem_ledger_extra;
ALTER TABLE idem_ledger ADD CONSTRAINT idem_ledger_extra EXCLUDE (key WITH =);
SELECT * FROM idem_claim('e:extra-index');
\echo SQLSTATE :SQLSTATE
ALTER TABLE idem_ledger DROP CONSTRAINT idem_ledger_extra;
SELECT status FROM idem_claim('e:extra-index');
-- a plain-column index, partial on IS NOT NULL, is maintained with the primary key
CREATE EXTENSION amcheck;
CREATE INDEX idem_ledger_plain ON idem_ledger (applied_at, policy) WHERE version IS NOT NULL;
SELECT status FROM idem_claim('e:plain-index');
SELECT status FROM idem_apply('e:plain-index-v', 1, 'SELECT 1 AS one');
SELECT status FROM idem_apply('e:plain-index-v', 2, 'SELECT 2 AS two');
-- (amcheck raises an error if an index misses a heap tuple)
SELECT bt_index_check('idem_ledger_plain', true)::text AS plain_index_checked,
       bt_index_check('idem_ledger_pkey', true)::text AS pkey_checked;
DROP INDEX idem_ledger_plain;
DROP EXTENSION amcheck;

SELECT key FROM idem_ledger WHERE key LIKE 'e:%' ORDER BY key;
DROP FUNCTION err_raise(text);
DROP PROCEDURE err_commits();
DROP TABLE err_items;

-- a statement that applies its own key again: a clear error, nothing recorded
SELECT * FROM idem_apply('e:nested', NULL,
    $$SELECT (idem_apply('e:nested', NULL, 'SELECT 1 AS x')).status AS inner_status$$);
\echo SQLSTATE :SQLSTATE
SELECT count(*) AS recorded FROM idem_ledger WHERE key = 'e:nested';
-- another key inside is fine
SELECT status, result FROM idem_apply('eok:outer', NULL,
    $$SELECT (idem_apply('eok:inner', NULL, 'SELECT 1 AS x')).status AS inner_status$$);

-- the retention functions: a NULL argument is 22004, not a NULL answer
SELECT idem_forget(NULL);
\echo SQLSTATE :SQLSTATE
SELECT * FROM idem_get(NULL);
\echo SQLSTATE :SQLSTATE
SELECT idem_purge(NULL);
\echo SQLSTATE :SQLSTATE

-- SELECT ... INTO, alone or in any branch of a set operation, is CREATE TABLE AS:
-- 0A000, nothing recorded, no table created
SELECT * FROM idem_apply('e:select-into', NULL, 'SELECT 1 AS a INTO err_into');
\echo SQLSTATE :SQLSTATE
SELECT * FROM idem_apply('e:select-into', NULL, 'SELECT 1 AS a INTO err_into UNION SELECT 2');
\echo SQLSTATE :SQLSTATE
SELECT * FROM idem_apply('e:select-into', NULL, 'SELECT 1 AS a UNION (SELECT 2 INTO err_into)');
\echo SQLSTATE :SQLSTATE
SELECT to_regclass('err_into') IS NULL AS no_table_created,
       (SELECT count(*) FROM idem_ledger WHERE key = 'e:select-into') AS recorded;

-- nesting is tracked at every depth: err_nest applies key e:nest-<depth> through the
-- statement of the key one level up, and at depth again_at applies key again instead
CREATE FUNCTION err_nest(prefix text, depth int, deepest int, again_at int, again text)
RETURNS text LANGUAGE plpgsql AS $$
BEGIN
    IF depth = again_at THEN
        RETURN (idem_apply(again, NULL, 'SELECT 1 AS x')).status;
    END IF;
    IF depth > deepest THEN
        RETURN 'bottom';
    END IF;
    RETURN (idem_apply(prefix || depth, NULL, 'SELECT err_nest($1, $2, $3, $4, $5) AS s',
                       prefix, depth + 1, deepest, again_at, again)).status;
END
$$;
-- twenty levels, each applied once
SELECT err_nest('eok:nest-', 1, 20, 0, '') AS outermost;
SELECT count(*) AS levels_recorded FROM idem_ledger WHERE key LIKE 'eok:nest-%';
SELECT result FROM idem_ledger WHERE key = 'eok:nest-20';
-- the key of level 17, applied again at depth 18: 55006, nothing recorded
\set SHOW_CONTEXT never
SELECT err_nest('e:nest-', 1, 20, 18, 'e:nest-17') AS outermost;
\echo SQLSTATE :SQLSTATE
-- the outermost key, applied again at depth 18 or 20
SELECT err_nest('e:nest-', 1, 20, 18, 'e:nest-1') AS outermost;
\echo SQLSTATE :SQLSTATE
SELECT err_nest('e:nest-', 1, 20, 20, 'e:nest-19') AS outermost;
\echo SQLSTATE :SQLSTATE
\set SHOW_CONTEXT errors
SELECT count(*) AS recorded FROM idem_ledger WHERE key LIKE 'e:nest-%';
DROP FUNCTION err_nest(text, int, int, int, text);

--
-- a ledger whose columns do not match what the extension writes is refused
-- with 55000 and a hint, and nothing is written; a dropped column is fine
--
BEGIN;
ALTER TABLE idem_ledger ADD COLUMN extra int;
SELECT * FROM idem_claim('e:cols-extra');
\echo SQLSTATE :SQLSTATE
ROLLBACK;
BEGIN;
ALTER TABLE idem_ledger ALTER COLUMN version TYPE numeric;
SELECT * FROM idem_claim('e:cols-type', 1);
\echo SQLSTATE :SQLSTATE
ROLLBACK;
BEGIN;
ALTER TABLE idem_ledger DROP COLUMN rows;
SELECT * FROM idem_claim('e:cols-missing');
\echo SQLSTATE :SQLSTATE
ROLLBACK;
BEGIN;
ALTER TABLE idem_ledger ADD COLUMN gone int;
ALTER TABLE idem_ledger DROP COLUMN gone;
SELECT status FROM idem_claim('eok:cols-dropped');
SELECT key, policy FROM idem_ledger WHERE key = 'eok:cols-dropped';
ROLLBACK;
SELECT count(*) AS recorded FROM idem_ledger WHERE key LIKE 'e%:cols-%';
-- and the ledger serves calls again once its columns match
SELECT status FROM idem_claim('eok:cols-after');
