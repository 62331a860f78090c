--
-- results: rows processed and rows returned, stored when the statement runs and
-- replayed to duplicates
--
CREATE TABLE res_payments (id int PRIMARY KEY, customer text, amount numeric, status text DEFAULT 'new');
CREATE TABLE res_accounts (id int PRIMARY KEY, balance numeric);
INSERT INTO res_accounts VALUES (1, 100), (2, 50), (3, 0);

-- INSERT ... RETURNING: the duplicate replays exactly the rows and result of the original
SELECT * FROM idem_apply('r:pay-1', NULL,
    'INSERT INTO res_payments (id, customer, amount) VALUES ($1, $2, $3) RETURNING id, customer, amount, status',
    1, 'alice', 10.50);
SELECT rows AS orig_rows, result AS orig_result FROM idem_ledger WHERE key = 'r:pay-1' \gset
SELECT * FROM idem_apply('r:pay-1', NULL,
    'INSERT INTO res_payments (id, customer, amount) VALUES ($1, $2, $3) RETURNING id, customer, amount, status',
    1, 'alice', 10.50);
SELECT d.rows = :orig_rows AS same_rows, d.result = :'orig_result'::jsonb AS same_result
FROM idem_apply('r:pay-1', NULL,
    'INSERT INTO res_payments (id, customer, amount) VALUES ($1, $2, $3) RETURNING id, customer, amount, status',
    1, 'alice', 10.50) d;
-- ... even after the row it returned has changed: the result is the one stored
UPDATE res_payments SET status = 'settled' WHERE id = 1;
SELECT status, rows, result FROM idem_apply('r:pay-1', NULL,
    'INSERT INTO res_payments (id, customer, amount) VALUES ($1, $2, $3) RETURNING id, customer, amount, status',
    1, 'alice', 10.50);
SELECT * FROM res_payments ORDER BY id;

-- a multi-row result, in the order the statement returned the rows
SELECT * FROM idem_apply('r:multi', NULL,
    'INSERT INTO res_payments (id, customer, amount) SELECT g, $1, g * 10 FROM generate_series(2, 4) g ORDER BY g RETURNING id, amount',
    'bob');
SELECT * FROM idem_apply('r:multi', NULL,
    'INSERT INTO res_payments (id, customer, amount) SELECT g, $1, g * 10 FROM generate_series(2, 4) g ORDER BY g RETURNING id, amount',
    'bob');
SELECT jsonb_array_length(result) AS elements, result -> 2 ->> 'id' AS third_id
FROM idem_ledger WHERE key = 'r:multi';
SELECT * FROM res_payments ORDER BY id;

-- a SELECT: rows = rows returned, result = those rows
SELECT * FROM idem_apply('r:select', NULL,
    'SELECT id, customer, amount FROM res_payments WHERE customer = $1 ORDER BY id DESC', 'bob');
-- a SELECT returning nothing: rows 0, result NULL
SELECT * FROM idem_apply('r:select-none', NULL,
    'SELECT id FROM res_payments WHERE customer = $1', 'nobody');
-- a duplicate SELECT replays the stored rows, not what the table holds now
INSERT INTO res_payments (id, customer, amount) VALUES (5, 'bob', 50);
SELECT * FROM idem_apply('r:select', NULL,
    'SELECT id, customer, amount FROM res_payments WHERE customer = $1 ORDER BY id DESC', 'bob');
SELECT * FROM idem_apply('r:select-none', NULL,
    'SELECT id FROM res_payments WHERE customer = $1', 'nobody');

-- values of many types in the result, NULLs included; column names are the object keys
SELECT status, result FROM idem_apply('r:types', NULL,
    'SELECT 1 AS i, 2.50::numeric AS n, true AS b, NULL::text AS nothing, ''x"y'' AS quoted, ARRAY[1, 2] AS arr, ''{"k": [1]}''::jsonb AS doc, ROW(1, ''a'') AS rec');
-- several rows and columns from VALUES
SELECT status, rows, result FROM idem_apply('r:values', NULL,
    'VALUES (1, ''one''), (2, ''two'')');

-- UPDATE without RETURNING: rows = rows updated, result NULL
SELECT * FROM idem_apply('r:update', NULL,
    'UPDATE res_accounts SET balance = balance + $1 WHERE id IN (1, 2)', 5);
SELECT * FROM idem_apply('r:update', NULL,
    'UPDATE res_accounts SET balance = balance + $1 WHERE id IN (1, 2)', 5);
SELECT * FROM res_accounts ORDER BY id;

-- UPDATE ... RETURNING, and DELETE ... RETURNING
SELECT * FROM idem_apply('r:update-ret', NULL,
    'UPDATE res_accounts SET balance = balance * 2 WHERE id = $1 RETURNING id, balance', 2);
SELECT * FROM idem_apply('r:delete', NULL,
    'DELETE FROM res_payments WHERE customer = $1 AND id > 3 RETURNING id', 'bob');
SELECT * FROM idem_apply('r:delete', NULL,
    'DELETE FROM res_payments WHERE customer = $1 AND id > 3 RETURNING id', 'bob');
SELECT id FROM res_payments ORDER BY id;

-- a data-modifying WITH: the rows returned by the outer SELECT
SELECT * FROM idem_apply('r:cte', NULL,
    'WITH moved AS (UPDATE res_accounts SET balance = balance - $1 WHERE id = 1 RETURNING balance) SELECT balance AS left_over FROM moved', 20);
SELECT * FROM res_accounts ORDER BY id;

-- CALL of a procedure with INOUT parameters: one row, the output parameters
CREATE PROCEDURE res_transfer(src int, dst int, amount numeric,
                              INOUT src_balance numeric DEFAULT NULL,
                              INOUT dst_balance numeric DEFAULT NULL)
LANGUAGE plpgsql AS $$
BEGIN
    UPDATE res_accounts SET balance = balance - amount WHERE id = src RETURNING balance INTO src_balance;
    UPDATE res_accounts SET balance = balance + amount WHERE id = dst RETURNING balance INTO dst_balance;
END
$$;
SELECT * FROM idem_apply('r:call', NULL, 'CALL res_transfer($1, $2, $3)', 1, 3, 25);
SELECT * FROM idem_apply('r:call', NULL, 'CALL res_transfer($1, $2, $3)', 1, 3, 25);
SELECT * FROM res_accounts ORDER BY id;
-- CALL of a procedure without output parameters: rows 0, result NULL
CREATE PROCEDURE res_bump(amount numeric) LANGUAGE sql AS $$
    UPDATE res_accounts SET balance = balance + amount WHERE id = 3
$$;
SELECT * FROM idem_apply('r:call-void', NULL, 'CALL res_bump($1)', 1);
SELECT * FROM idem_apply('r:call-void', NULL, 'CALL res_bump($1)', 1);
SELECT * FROM res_accounts ORDER BY id;

-- MERGE: rows = rows inserted, updated or deleted, result NULL (no RETURNING in 15)
\set merge 'MERGE INTO res_accounts a USING (VALUES ($1::int, $2::numeric), ($3::int, $4::numeric)) AS s(id, amount) ON a.id = s.id WHEN MATCHED THEN UPDATE SET balance = a.balance + s.amount WHEN NOT MATCHED THEN INSERT VALUES (s.id, s.amount)'
SELECT * FROM idem_apply('r:merge', NULL, :'merge', 3, 1, 4, 40);
SELECT * FROM idem_apply('r:merge', NULL, :'merge', 3, 1, 4, 40);
SELECT * FROM res_accounts ORDER BY id;

SELECT key, policy, rows, result FROM idem_ledger WHERE key LIKE 'r:%' ORDER BY key;

-- a result larger than idempotent.max_result_bytes: 54000, nothing recorded, and the
-- statement's effect goes with the aborted statement
SET idempotent.max_result_bytes = 200;
SHOW idempotent.max_result_bytes;
SELECT count(*) AS payments_before FROM res_payments;
BEGIN;
SELECT * FROM idem_apply('r:too-big', NULL,
    'INSERT INTO res_payments (id, customer, amount) SELECT g, $1, g FROM generate_series(100, 119) g RETURNING id, customer, amount',
    'carol');
\echo SQLSTATE :SQLSTATE
ROLLBACK;
SELECT count(*) AS payments_after FROM res_payments;
SELECT count(*) AS recorded FROM idem_ledger WHERE key = 'r:too-big';
-- inside a savepoint: the rest of the transaction survives, the key and the rows do not
BEGIN;
INSERT INTO res_payments (id, customer, amount) VALUES (200, 'dave', 1);
SAVEPOINT before_apply;
SELECT * FROM idem_apply('r:too-big', NULL,
    'INSERT INTO res_payments (id, customer, amount) SELECT g, $1, g FROM generate_series(100, 119) g RETURNING id, customer, amount',
    'carol');
\echo SQLSTATE :SQLSTATE
ROLLBACK TO SAVEPOINT before_apply;
SELECT count(*) AS recorded FROM idem_ledger WHERE key = 'r:too-big';
SELECT id, customer FROM res_payments WHERE id >= 100 ORDER BY id;
COMMIT;
-- a result that fits is stored; a statement that returns no rows needs no room at all
SELECT status, rows, result FROM idem_apply('r:small', NULL, 'SELECT $1::int AS small', 1);
SET idempotent.max_result_bytes = 0;
SELECT status, rows, result FROM idem_apply('r:no-result', NULL,
    'UPDATE res_accounts SET balance = balance WHERE id = $1', 1);
SELECT * FROM idem_apply('r:zero-limit', NULL, 'SELECT 1 AS one');
\echo SQLSTATE :SQLSTATE
RESET idempotent.max_result_bytes;
-- once the limit allows it, the same key applies
SELECT status, rows, jsonb_array_length(result) AS elements FROM idem_apply('r:too-big', NULL,
    'INSERT INTO res_payments (id, customer, amount) SELECT g, $1, g FROM generate_series(100, 119) g RETURNING id, customer, amount',
    'carol');
SELECT count(*) FROM res_payments WHERE customer = 'carol';
SELECT key, rows, jsonb_array_length(result) AS elements FROM idem_ledger
WHERE key IN ('r:too-big', 'r:small', 'r:no-result', 'r:zero-limit') ORDER BY key;

DROP PROCEDURE res_transfer(int, int, numeric, numeric, numeric);
DROP PROCEDURE res_bump(numeric);
DROP TABLE res_payments, res_accounts;

-- a result too large is refused while its rows stream in: ten million rows would take
-- many seconds and gigabytes to materialize first; refused at once, within the timeout
SET statement_timeout = '5s';
SELECT * FROM idem_apply('r:streamed', NULL,
    $$SELECT g, repeat('x', 100) AS filler FROM generate_series(1, 10000000) g$$);
\echo SQLSTATE :SQLSTATE
RESET statement_timeout;
SELECT count(*) AS recorded FROM idem_ledger WHERE key = 'r:streamed';

-- a json value may hold U+0000, which jsonb cannot: it is stored as the six
-- characters \u0000 and replayed to the duplicate, not refused after the statement ran
SELECT status, rows, result, result -> 0 -> 'j' ->> 'a' = 'x\u0000y' AS kept_as_text
FROM idem_apply('r:json-nul', NULL, $$SELECT '{"a":"x\u0000y"}'::json AS j$$);
SELECT status, rows, result FROM idem_apply('r:json-nul', NULL, $$SELECT '{"a":"x\u0000y"}'::json AS j$$);
-- an escaped backslash before u0000 is a backslash and five characters, unchanged
SELECT status, result, result -> 0 ->> 'j' = '\u0000' AS unchanged
FROM idem_apply('r:json-backslash', NULL, $$SELECT '"\\u0000"'::json AS j$$);
SELECT status, result FROM idem_apply('r:json-backslash', NULL, $$SELECT '"\\u0000"'::json AS j$$);
SELECT key, rows, result FROM idem_ledger WHERE key IN ('r:json-nul', 'r:json-backslash') ORDER BY key;

-- a result's shape registers no row type with the backend: after the plan cache is full
-- (1024 statements), 3000 results of distinct shapes leave the backend's cache memory as
-- it was (a registered row type kept about 370 bytes there, over 1 MB for 3000 shapes)
CREATE FUNCTION res_cache_used() RETURNS bigint LANGUAGE sql AS $$
    SELECT total_bytes - free_bytes FROM pg_backend_memory_contexts
    WHERE name = 'CacheMemoryContext' AND level = 1
$$;
CREATE FUNCTION res_shapes(first int, last int) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    FOR i IN first .. last LOOP
        PERFORM idem_apply('r:shape-' || i, NULL, format('SELECT %s AS c%s', i, i));
    END LOOP;
END
$$;
BEGIN;
SELECT res_shapes(1, 1100);
SELECT res_cache_used() AS cache_before \gset
SELECT res_shapes(1101, 4100);
SELECT res_cache_used() - :cache_before AS growth \gset
SELECT :growth < 100000 AS cache_memory_flat;
SELECT count(*) AS shapes_recorded FROM idem_ledger WHERE key LIKE 'r:shape-%';
ROLLBACK;
DROP FUNCTION res_shapes(int, int);
DROP FUNCTION res_cache_used();

-- the limit is on the jsonb: a result whose text is long but whose jsonb fits
-- (a number's thousand digits take a few bytes of jsonb) is stored
SET idempotent.max_result_bytes = 256;
SELECT status, length(result::text) > 1000 AS long_text, pg_column_size(result) <= 256 AS fits
FROM idem_apply('r:long-text', NULL, 'SELECT 1e-1000::numeric AS x, 1e-1000::numeric AS y');
RESET idempotent.max_result_bytes;
