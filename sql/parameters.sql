--
-- parameters: $1 ... $n in the statement are bound to the arguments after it,
-- whatever their types; never spliced into the SQL text
--
SET timezone = 'UTC';
SET datestyle = 'ISO, YMD';
SET intervalstyle = 'postgres';

CREATE TYPE param_pair AS (x int, label text);
CREATE TYPE param_mood AS ENUM ('sad', 'ok', 'happy');
CREATE DOMAIN param_posint AS int CHECK (VALUE > 0);
CREATE TABLE param_types (
    k text PRIMARY KEY,
    i2 int2, i4 int4, i8 int8, num numeric, t text, vc varchar(10), b bool,
    d date, ts timestamptz, u uuid, j jsonb, by bytea, ai int[], at text[],
    comp param_pair, e param_mood, dom param_posint
);

-- every column from a typed argument, in one statement
SELECT status, applied, rows FROM idem_apply('p:all-typed', NULL,
    'INSERT INTO param_types VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18)',
    'typed', 2::int2, 4::int4, 8000000000::int8, 3.14159::numeric, 'text value'::text,
    'varchar'::varchar(10), true, '2024-02-29'::date, '2024-01-02 03:04:05+00'::timestamptz,
    'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'::uuid, '{"a": [1, 2], "b": null}'::jsonb,
    '\x00ff10'::bytea, ARRAY[1, 2, 3], ARRAY['x', NULL, 'z'], ROW(7, 'seven')::param_pair,
    'happy'::param_mood, 5::param_posint);
SELECT * FROM param_types WHERE k = 'typed';

-- each type as the statement sees it: pg_typeof($1) and its value in the result
\set stmt 'SELECT pg_typeof($1)::text AS type, $1 AS value'
SELECT status, rows, result FROM idem_apply('p:type-int2', NULL, :'stmt', 2::int2);
SELECT status, rows, result FROM idem_apply('p:type-int4', NULL, :'stmt', 4);
SELECT status, rows, result FROM idem_apply('p:type-int8', NULL, :'stmt', 8000000000);
SELECT status, rows, result FROM idem_apply('p:type-numeric', NULL, :'stmt', 12345678901234567890.000001);
SELECT status, rows, result FROM idem_apply('p:type-text', NULL, :'stmt', 'plain text'::text);
SELECT status, rows, result FROM idem_apply('p:type-varchar', NULL, :'stmt', 'vc'::varchar);
SELECT status, rows, result FROM idem_apply('p:type-bool', NULL, :'stmt', false);
SELECT status, rows, result FROM idem_apply('p:type-date', NULL, :'stmt', '2024-02-29'::date);
SELECT status, rows, result FROM idem_apply('p:type-timestamptz', NULL, :'stmt', '2024-01-02 03:04:05+02'::timestamptz);
SELECT status, rows, result FROM idem_apply('p:type-uuid', NULL, :'stmt', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'::uuid);
SELECT status, rows, result FROM idem_apply('p:type-jsonb', NULL, :'stmt', '{"n": 1, "s": "x", "l": [true, null]}'::jsonb);
SELECT status, rows, result FROM idem_apply('p:type-bytea', NULL, :'stmt', '\xdeadbeef'::bytea);
SELECT status, rows, result FROM idem_apply('p:type-int-array', NULL, :'stmt', ARRAY[1, NULL, 3]);
SELECT status, rows, result FROM idem_apply('p:type-text-array', NULL, :'stmt', ARRAY[['a', 'b'], ['c', 'd']]);
SELECT status, rows, result FROM idem_apply('p:type-composite', NULL, :'stmt', ROW(1, 'one')::param_pair);
SELECT status, rows, result FROM idem_apply('p:type-enum', NULL, :'stmt', 'ok'::param_mood);
SELECT status, rows, result FROM idem_apply('p:type-domain', NULL, :'stmt', 9::param_posint);
SELECT status, rows, result FROM idem_apply('p:type-float8', NULL, :'stmt', 0.5::float8);
SELECT status, rows, result FROM idem_apply('p:type-interval', NULL, :'stmt', '1 day 02:00'::interval);

-- operators and functions work on the parameters as on values of their types
SELECT status, result FROM idem_apply('p:ops', NULL,
    'SELECT $1 + 1 AS next, $2 ->> ''a'' AS a, $3[2] AS second, ($4).label AS label, $5 > ''sad''::param_mood AS cheerful',
    41, '{"a": "A"}'::jsonb, ARRAY[10, 20, 30], ROW(2, 'two')::param_pair, 'happy'::param_mood);

-- a domain's constraint applies to its argument: the error is the statement's,
-- nothing is recorded
SELECT * FROM idem_apply('p:domain-bad', NULL, 'INSERT INTO param_types (k, dom) VALUES ($1, $2)', 'bad', -1);
\echo SQLSTATE :SQLSTATE
SELECT count(*) AS recorded FROM idem_ledger WHERE key = 'p:domain-bad';

-- the same parameter used several times
SELECT status, result FROM idem_apply('p:reuse', NULL, 'SELECT $1 AS a, $1 * 2 AS b, $1 * $1 AS c', 7);

-- the same statement text with arguments of different types: each is bound as its type
SELECT status, result FROM idem_apply('p:same-text-1', NULL, 'SELECT pg_typeof($1)::text AS type', 1);
SELECT status, result FROM idem_apply('p:same-text-2', NULL, 'SELECT pg_typeof($1)::text AS type', 1::bigint);
SELECT status, result FROM idem_apply('p:same-text-3', NULL, 'SELECT pg_typeof($1)::text AS type', 1.5);
SELECT status, result FROM idem_apply('p:same-text-4', NULL, 'SELECT pg_typeof($1)::text AS type', 'one');

-- untyped literals take the type their context needs, as if written into the statement
SELECT status, applied, rows, result FROM idem_apply('p:untyped-int', NULL,
    'INSERT INTO param_types (k, i4, i8, num, b, d, ts, u, j, ai, e, dom) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) RETURNING i4, i8, num, b, d, ts, u, j, ai, e, dom',
    'untyped', '42', '9000000000', '2.50', 't', '2024-03-01', '2024-03-01 12:00:00+00',
    'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '{"k": "v"}', '{4,5}', 'sad', '3');
SELECT k, i4, pg_typeof(i4), i8, num, b, d, ts, u, j, ai, e, dom FROM param_types WHERE k = 'untyped';
-- 'p1' compared to a text column
INSERT INTO param_types (k, t) VALUES ('p1', 'found me'), ('p2', 'not me');
SELECT status, rows, result FROM idem_apply('p:untyped-text', NULL,
    'SELECT k, t FROM param_types WHERE k = $1', 'p1');
-- in arithmetic, and alone in a select list (text there, as for a literal)
SELECT status, result FROM idem_apply('p:untyped-arith', NULL, 'SELECT $1 + 1 AS answer', '41');
SELECT status, result FROM idem_apply('p:untyped-alone', NULL, 'SELECT $1 AS value', 'just text');
-- an untyped literal that does not fit its context: the statement's own error
SELECT * FROM idem_apply('p:untyped-bad', NULL,
    'INSERT INTO param_types (k, i4) VALUES ($1, $2)', 'bad', 'forty-two');
\echo SQLSTATE :SQLSTATE
SELECT count(*) AS recorded FROM idem_ledger WHERE key = 'p:untyped-bad';

-- the same statement text, but the context has changed (another table behind the
-- same name through search_path): the untyped literal takes the new context's type
CREATE SCHEMA param_int;
CREATE SCHEMA param_text;
CREATE TABLE param_int.target (v int);
CREATE TABLE param_text.target (v text);
SET search_path = param_int, public;
SELECT status, result FROM idem_apply('p:context-int', NULL,
    'INSERT INTO target VALUES ($1) RETURNING v, pg_typeof(v)::text AS type', '42');
SET search_path = param_text, public;
SELECT status, result FROM idem_apply('p:context-text', NULL,
    'INSERT INTO target VALUES ($1) RETURNING v, pg_typeof(v)::text AS type', 'forty-two');
RESET search_path;
SELECT * FROM param_int.target;
SELECT * FROM param_text.target;

-- NULL arguments, typed and untyped
SELECT status, rows, result FROM idem_apply('p:null-typed', NULL,
    'INSERT INTO param_types (k, i4, t) VALUES ($1, $2, $3) RETURNING k, i4, t', 'null-typed', NULL::int, NULL::text);
SELECT status, rows, result FROM idem_apply('p:null-untyped', NULL,
    'INSERT INTO param_types (k, i4, d, j) VALUES ($1, $2, $3, $4) RETURNING k, i4, d, j', 'null-untyped', NULL, NULL, NULL);
SELECT status, result FROM idem_apply('p:null-test', NULL,
    'SELECT $1::int IS NULL AS is_null, coalesce($2, ''fallback'') AS c', NULL, NULL::text);
SELECT k, i4, t, d, j FROM param_types WHERE k LIKE 'null%' ORDER BY k;

-- VARIADIC array[...]: the elements are the parameters
SELECT status, result FROM idem_apply('p:variadic', NULL,
    'SELECT $1 + $2 + $3 AS total, pg_typeof($1)::text AS type', VARIADIC ARRAY[1, 2, 3]);
SELECT status, result FROM idem_apply('p:variadic-text', NULL,
    'SELECT $1 AS a, $2 AS b, $3 AS c', VARIADIC ARRAY['x', NULL, 'z']);
SELECT status, result FROM idem_apply_next('p:variadic-next', 1,
    'SELECT $1 * $2 AS product', VARIADIC ARRAY[6, 7]);
SELECT status, result FROM idem_upsert('p:variadic-upsert', 1,
    'SELECT $1 || $2 AS joined', VARIADIC ARRAY['con', 'cat']);
-- VARIADIC NULL and an empty VARIADIC array: no parameters at all
SELECT status, result FROM idem_apply('p:variadic-null', NULL, 'SELECT 1 AS one', VARIADIC NULL::int[]);
SELECT status, result FROM idem_apply('p:variadic-empty', NULL, 'SELECT 2 AS two', VARIADIC '{}'::int[]);
SELECT * FROM idem_apply('p:variadic-null-param', NULL, 'SELECT $1 AS one', VARIADIC NULL::int[]);
\echo SQLSTATE :SQLSTATE
SELECT * FROM idem_apply('p:variadic-short', NULL, 'SELECT $1 + $2 + $3 AS total', VARIADIC ARRAY[1, 2]);
\echo SQLSTATE :SQLSTATE

-- the 3-argument form: no parameters
SELECT status, result FROM idem_apply('p:three-args', NULL, 'SELECT 3 AS three');
SELECT * FROM idem_apply('p:three-args-param', NULL, 'SELECT $1 AS one');
\echo SQLSTATE :SQLSTATE

-- a $n beyond the arguments: 42P02, nothing recorded, nothing run
SELECT * FROM idem_apply('p:beyond', NULL,
    'INSERT INTO param_types (k, i4) VALUES ($1, $3)', 'beyond', 1);
\echo SQLSTATE :SQLSTATE
SELECT * FROM idem_apply_next('p:beyond', 1, 'SELECT $2 AS two', 1);
\echo SQLSTATE :SQLSTATE
SELECT * FROM idem_upsert('p:beyond', 1, 'SELECT $2 AS two', 1);
\echo SQLSTATE :SQLSTATE
SELECT count(*) AS recorded FROM idem_ledger WHERE key = 'p:beyond';
SELECT count(*) FROM param_types WHERE k = 'beyond';

-- arguments the statement does not use are fine
SELECT status, result FROM idem_apply('p:unused', NULL, 'SELECT $2::int AS b', 'one', 2, 3.0, NULL, 'untyped');
SELECT status, result FROM idem_apply('p:unused-all', NULL, 'SELECT 0 AS zero', 1, 'two');

-- an argument that looks like SQL is a value, stored literally
SELECT status, rows, result FROM idem_apply('p:injection', NULL,
    'INSERT INTO param_types (k, t) VALUES ($1, $2) RETURNING t',
    'injection', 'x''); DROP TABLE param_types; --');
SELECT status, rows, result FROM idem_apply('p:injection-where', NULL,
    'SELECT k FROM param_types WHERE k = $1', ''' OR ''1''=''1');
SELECT k, t FROM param_types WHERE k = 'injection';
SELECT count(*) > 0 AS table_still_there FROM param_types;

-- a large argument (stored out of line) is bound whole
SELECT status, result FROM idem_apply('p:large', NULL,
    'SELECT length($1) AS len, md5($1) = md5(repeat(''ab'', 50000)) AS same', repeat('ab', 50000));
SELECT status, result FROM idem_apply('p:large', NULL,
    'SELECT length($1) AS len, md5($1) = md5(repeat(''ab'', 50000)) AS same', repeat('ab', 50000));

SELECT key, policy, rows, result FROM idem_ledger WHERE key LIKE 'p:%' ORDER BY key;

DROP TABLE param_types;
DROP SCHEMA param_int CASCADE;
DROP SCHEMA param_text CASCADE;
DROP DOMAIN param_posint;
DROP TYPE param_mood;
DROP TYPE param_pair;
RESET timezone;
RESET datestyle;
RESET intervalstyle;

-- untyped literals under a generic plan: every row compares with the value
CREATE TABLE param_generic (id int, name text);
INSERT INTO param_generic SELECT i, 'n' || i FROM generate_series(1, 100) i;
SELECT i, (idem_apply('p:generic:' || i, NULL,
    'UPDATE param_generic SET id = -id WHERE $1 = lower(name)', 'n7')).rows
FROM generate_series(1, 8) i;
SET plan_cache_mode = force_generic_plan;
SELECT result FROM idem_apply('p:generic:count', NULL,
    'SELECT count(*) AS n FROM param_generic WHERE $1 = lower(name)', 'n50');
RESET plan_cache_mode;
DROP TABLE param_generic;
