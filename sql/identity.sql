--
-- identity: two calls are the same request when their statement texts are
-- identical and their arguments are equal as values, whatever types the driver
-- sent them as, whatever the session's settings, whatever OIDs the types have.
-- Each key is applied once; every redelivery below must be a duplicate that
-- replays the original's result, and every other value must raise ID001.
--
\set VERBOSITY terse
\set v 'SELECT $1 AS v'

-- numbers: by their decimal value, insignificant zeros aside
SELECT status, result FROM idem_apply('num:25', NULL, :'v', 25.00);
SELECT status, result FROM idem_apply('num:25', NULL, :'v', 25);
SELECT status, result FROM idem_apply('num:25', NULL, :'v', 25::int2);
SELECT status, result FROM idem_apply('num:25', NULL, :'v', 25::int8);
SELECT status, result FROM idem_apply('num:25', NULL, :'v', 25.0::float8);
SELECT status, result FROM idem_apply('num:25', NULL, :'v', 25::float4);
SELECT status, result FROM idem_apply('num:25', NULL, :'v', 25.000000::numeric(20, 6));
SELECT status, result FROM idem_apply('num:25', NULL, :'v', '2.5e1'::numeric);
SELECT * FROM idem_apply('num:25', NULL, :'v', 25.01);
SELECT * FROM idem_apply('num:25', NULL, :'v', 2.5);
SELECT * FROM idem_apply('num:25', NULL, :'v', 250);
SELECT * FROM idem_apply('num:25', NULL, :'v', -25);
SELECT * FROM idem_apply('num:25', NULL, :'v', 25.000001::float8);
-- two arguments, as psycopg 3 sends Decimal('25.00') and 42 (int2) after psql's 25.00, 42
SELECT status, result FROM idem_apply('num:pair', NULL, 'SELECT $1::numeric AS amount, $2::int AS account', 25.00, 42);
SELECT status, result FROM idem_apply('num:pair', NULL, 'SELECT $1::numeric AS amount, $2::int AS account', 25::int2, 42::int2);
SELECT * FROM idem_apply('num:pair', NULL, 'SELECT $1::numeric AS amount, $2::int AS account', 42, 25);
-- the extremes of int8, as int8 and as numeric
SELECT status FROM idem_apply('num:int8max', NULL, :'v', 9223372036854775807);
SELECT status FROM idem_apply('num:int8max', NULL, :'v', 9223372036854775807.000);
SELECT * FROM idem_apply('num:int8max', NULL, :'v', 9223372036854775806);
SELECT status FROM idem_apply('num:int8min', NULL, :'v', (-9223372036854775807 - 1)::int8);
SELECT status FROM idem_apply('num:int8min', NULL, :'v', -9223372036854775808::numeric);
-- zero has no sign
SELECT status, result FROM idem_apply('num:zero', NULL, :'v', 0);
SELECT status FROM idem_apply('num:zero', NULL, :'v', '-0'::float8);
SELECT status FROM idem_apply('num:zero', NULL, :'v', '-0.000'::numeric);
SELECT status FROM idem_apply('num:zero', NULL, :'v', '-0'::float4);
-- NaN and the infinities, as numeric or float
SELECT status FROM idem_apply('num:nan', NULL, :'v', 'NaN'::numeric);
SELECT status FROM idem_apply('num:nan', NULL, :'v', 'NaN'::float8);
SELECT status FROM idem_apply('num:nan', NULL, :'v', 'NaN'::float4);
SELECT * FROM idem_apply('num:nan', NULL, :'v', 0);
SELECT status FROM idem_apply('num:inf', NULL, :'v', 'Infinity'::float8);
SELECT status FROM idem_apply('num:inf', NULL, :'v', 'Infinity'::numeric);
SELECT status FROM idem_apply('num:inf', NULL, :'v', 'Infinity'::float4);
SELECT * FROM idem_apply('num:inf', NULL, :'v', '-Infinity'::float8);
SELECT * FROM idem_apply('num:inf', NULL, :'v', 'NaN'::float8);
-- a float is the shortest decimal that reads back as it: distinct doubles are
-- distinct requests, even where 15 significant digits cannot tell them apart
SELECT status, result FROM idem_apply('num:float', NULL, :'v', 0.1::float8 + 0.2::float8);
SELECT status FROM idem_apply('num:float', NULL, :'v', 0.30000000000000004);
SELECT * FROM idem_apply('num:float', NULL, :'v', 0.3::float8);
SELECT * FROM idem_apply('num:float', NULL, :'v', 0.3);
SELECT status FROM idem_apply('num:float1', NULL, :'v', 1::float8);
SELECT * FROM idem_apply('num:float1', NULL, :'v', 1.0000000000000002::float8);
SELECT status FROM idem_apply('num:float4', NULL, :'v', 0.1::float4);
SELECT status FROM idem_apply('num:float4', NULL, :'v', 0.1::float8);
SELECT status FROM idem_apply('num:float4', NULL, :'v', 0.1);
SELECT status FROM idem_apply('num:float-big', NULL, :'v', 1e300::float8);
SELECT status FROM idem_apply('num:float-big', NULL, :'v', 1e300);
SELECT status FROM idem_apply('num:float-tiny', NULL, :'v', 5e-324::float8);
SELECT status FROM idem_apply('num:float-tiny', NULL, :'v', 4.9406564584124654e-324::float8);
SELECT * FROM idem_apply('num:float-tiny', NULL, :'v', 0::float8);
-- numerics far beyond any float, exactly
SELECT status FROM idem_apply('num:huge', NULL, 'SELECT length($1::text) AS digits', '1e1000'::numeric);
SELECT status, result FROM idem_apply('num:huge', NULL, 'SELECT length($1::text) AS digits',
    ('1' || repeat('0', 1000) || '.' || repeat('0', 500))::numeric);
SELECT * FROM idem_apply('num:huge', NULL, 'SELECT length($1::text) AS digits', '1e1000'::numeric + 1);
SELECT * FROM idem_apply('num:huge', NULL, 'SELECT length($1::text) AS digits', '1e999'::numeric);
SELECT status FROM idem_apply('num:tiny', NULL, 'SELECT $1::text = $1::text AS same', ('0.' || repeat('0', 999) || '1')::numeric);
SELECT status FROM idem_apply('num:tiny', NULL, 'SELECT $1::text = $1::text AS same', ('0.' || repeat('0', 999) || '1' || repeat('0', 50))::numeric);
SELECT * FROM idem_apply('num:tiny', NULL, 'SELECT $1::text = $1::text AS same', ('0.' || repeat('0', 999) || '2')::numeric);

-- strings: by their characters, whether text, varchar, char (without its padding),
-- name, an untyped literal or an enum's label
CREATE TYPE id_label AS ENUM ('card', 'cash');
SELECT status, result FROM idem_apply('str:card', NULL, :'v', 'card'::text);
SELECT status, result FROM idem_apply('str:card', NULL, :'v', 'card'::varchar);
SELECT status, result FROM idem_apply('str:card', NULL, :'v', 'card'::varchar(10));
SELECT status, result FROM idem_apply('str:card', NULL, :'v', 'card'::char(8));
SELECT status, result FROM idem_apply('str:card', NULL, :'v', 'card  '::bpchar);
SELECT status, result FROM idem_apply('str:card', NULL, :'v', 'card'::name);
SELECT status, result FROM idem_apply('str:card', NULL, :'v', 'card');
SELECT status, result FROM idem_apply('str:card', NULL, :'v', 'card'::id_label);
SELECT * FROM idem_apply('str:card', NULL, :'v', 'cash'::id_label);
SELECT * FROM idem_apply('str:card', NULL, :'v', 'Card'::text);
SELECT * FROM idem_apply('str:card', NULL, :'v', 'card '::text);
SELECT * FROM idem_apply('str:card', NULL, :'v', 'card '::varchar);
SELECT * FROM idem_apply('str:card', NULL, :'v', ''::text);
-- an untyped literal is a string, never a number: '10' and 10 are two requests
SELECT status, result FROM idem_apply('str:ten', NULL, 'SELECT $1::int + 1 AS n', '10');
SELECT status FROM idem_apply('str:ten', NULL, 'SELECT $1::int + 1 AS n', '10'::text);
SELECT * FROM idem_apply('str:ten', NULL, 'SELECT $1::int + 1 AS n', 10);
SELECT * FROM idem_apply('str:ten', NULL, 'SELECT $1::int + 1 AS n', '10.0');
SELECT status FROM idem_apply('str:ten-int', NULL, 'SELECT $1::int + 1 AS n', 10);
SELECT * FROM idem_apply('str:ten-int', NULL, 'SELECT $1::int + 1 AS n', '10');
-- the empty string is a value, not NULL
SELECT status FROM idem_apply('str:empty', NULL, :'v', ''::text);
SELECT status FROM idem_apply('str:empty', NULL, :'v', ''::varchar);
SELECT * FROM idem_apply('str:empty', NULL, :'v', NULL::text);

-- NULLs: a NULL is a NULL, whatever its type
SELECT status, result FROM idem_apply('null:1', NULL, 'SELECT $1::int AS a, $2::text AS b', NULL::int, NULL::text);
SELECT status FROM idem_apply('null:1', NULL, 'SELECT $1::int AS a, $2::text AS b', NULL::numeric, NULL::int);
SELECT status FROM idem_apply('null:1', NULL, 'SELECT $1::int AS a, $2::text AS b', NULL, NULL);
SELECT * FROM idem_apply('null:1', NULL, 'SELECT $1::int AS a, $2::text AS b', 0, NULL::text);
SELECT * FROM idem_apply('null:1', NULL, 'SELECT $1::int AS a, $2::text AS b', NULL::int, '');
SELECT * FROM idem_apply('null:1', NULL, 'SELECT $1::int AS a, $2::text AS b', NULL::int);

-- instants: a timestamptz by its instant, whatever TimeZone
SET TimeZone = 'UTC';
SELECT status, result FROM idem_apply('ts:1', NULL, :'v', '2026-03-04 05:06:07.5+00'::timestamptz);
SET TimeZone = 'Asia/Tokyo';
SELECT status, result FROM idem_apply('ts:1', NULL, :'v', '2026-03-04 14:06:07.5'::timestamptz);
SET TimeZone = 'America/New_York';
SELECT status, result FROM idem_apply('ts:1', NULL, :'v', '2026-03-04 00:06:07.5'::timestamptz);
-- the same wall-clock time in another zone is another instant
SELECT * FROM idem_apply('ts:1', NULL, :'v', '2026-03-04 05:06:07.5'::timestamptz);
-- and a timestamp without time zone is not an instant
SELECT * FROM idem_apply('ts:1', NULL, :'v', '2026-03-04 05:06:07.5'::timestamp);
RESET TimeZone;

-- rows: field by field, by value; a composite holding a timestamptz redelivered
-- under another TimeZone, with its numbers sent as other types
CREATE TYPE id_payment AS (amount numeric, account int, due timestamptz, memo text);
SET TimeZone = 'UTC';
SELECT status, result FROM idem_apply('row:1', NULL, :'v',
    ROW(25.00, 42, '2026-03-04 05:06:07+00', 'rent')::id_payment);
SET TimeZone = 'Europe/Paris';
SELECT status, result FROM idem_apply('row:1', NULL, :'v',
    ROW(25, 42, '2026-03-04 06:06:07', 'rent')::id_payment);
-- an anonymous row with the same fields is the same value
SELECT status FROM idem_apply('row:1', NULL, :'v',
    ROW(25::int8, 42::int2, '2026-03-04 06:06:07'::timestamptz, 'rent'::varchar));
SELECT * FROM idem_apply('row:1', NULL, :'v',
    ROW(25, 42, '2026-03-04 05:06:07', 'rent')::id_payment);
SELECT * FROM idem_apply('row:1', NULL, :'v',
    ROW(25, 42, '2026-03-04 06:06:07', NULL)::id_payment);
SELECT * FROM idem_apply('row:1', NULL, :'v',
    ROW(25, 42, '2026-03-04 06:06:07'::timestamptz));
RESET TimeZone;
-- a row of a table with a dropped column: the dropped column does not count
CREATE TABLE id_wide (a int, gone text, b text);
ALTER TABLE id_wide DROP COLUMN gone;
INSERT INTO id_wide VALUES (1, 'one');
SELECT o.status, o.result FROM id_wide w, idem_apply('row:dropped', NULL, :'v', w) o;
SELECT status, result FROM idem_apply('row:dropped', NULL, :'v', ROW(1, 'one'));
SELECT * FROM idem_apply('row:dropped', NULL, :'v', ROW(1, NULL::text, 'one'));
-- nested rows and arrays of rows
SELECT status FROM idem_apply('row:nested', NULL, :'v',
    ROW(1, ROW(2.50, ARRAY[ROW('a', 1)]), ARRAY[[1, 2], [3, 4]]));
SELECT status FROM idem_apply('row:nested', NULL, :'v',
    ROW(1.0, ROW(2.5::float8, ARRAY[ROW('a'::varchar, 1::int8)]), ARRAY[[1.0, 2], [3, 4]]));
SELECT * FROM idem_apply('row:nested', NULL, :'v',
    ROW(1, ROW(2.50, ARRAY[ROW('a', 2)]), ARRAY[[1, 2], [3, 4]]));

-- arrays: by dimensions, lower bounds and elements by value
SELECT status, result FROM idem_apply('arr:1', NULL, :'v', ARRAY[1, 2, 3]);
SELECT status, result FROM idem_apply('arr:1', NULL, :'v', ARRAY[1.00, 2.0, 3]);
SELECT status FROM idem_apply('arr:1', NULL, :'v', ARRAY[1, 2, 3]::int8[]);
SELECT status FROM idem_apply('arr:1', NULL, :'v', '{1,2,3}'::float8[]);
SELECT * FROM idem_apply('arr:1', NULL, :'v', ARRAY[1, 2, 4]);
SELECT * FROM idem_apply('arr:1', NULL, :'v', ARRAY[3, 2, 1]);
SELECT * FROM idem_apply('arr:1', NULL, :'v', ARRAY[1, 2]);
SELECT * FROM idem_apply('arr:1', NULL, :'v', '[0:2]={1,2,3}'::int[]);
SELECT * FROM idem_apply('arr:1', NULL, :'v', ARRAY['1', '2', '3']);
-- NULL elements are values in their places
SELECT status FROM idem_apply('arr:nulls', NULL, :'v', ARRAY[1, NULL, 3]);
SELECT status FROM idem_apply('arr:nulls', NULL, :'v', ARRAY[1.0, NULL, 3.0]);
SELECT * FROM idem_apply('arr:nulls', NULL, :'v', ARRAY[1, 3, NULL]);
SELECT * FROM idem_apply('arr:nulls', NULL, :'v', ARRAY[1, 0, 3]);
SELECT * FROM idem_apply('arr:nulls', NULL, :'v', ARRAY[NULL, NULL, NULL]::int[]);
-- two dimensions are not one
SELECT status FROM idem_apply('arr:2d', NULL, :'v', ARRAY[[1, 2], [3, 4]]);
SELECT status FROM idem_apply('arr:2d', NULL, :'v', '{{1,2},{3,4}}'::numeric[]);
SELECT * FROM idem_apply('arr:2d', NULL, :'v', ARRAY[1, 2, 3, 4]);
-- arrays of strings
SELECT status FROM idem_apply('arr:text', NULL, :'v', ARRAY['a', 'b']);
SELECT status FROM idem_apply('arr:text', NULL, :'v', ARRAY['a', 'b']::varchar[]);
SELECT status FROM idem_apply('arr:text', NULL, :'v', ARRAY['a', 'b']::char(3)[]);
SELECT * FROM idem_apply('arr:text', NULL, :'v', ARRAY['a', 'c']);
-- a long array read from a table, where it is stored compressed, is the same value
CREATE TABLE id_long (a int[], j jsonb);
INSERT INTO id_long
SELECT array_agg(i % 7), jsonb_agg(jsonb_build_object('i', i % 7)) FROM generate_series(1, 50000) i;
SELECT pg_column_size(a) < octet_length(a::text) AS a_compressed,
       pg_column_size(j) < octet_length(j::text) AS j_compressed FROM id_long;
SELECT status FROM idem_apply('arr:long', NULL, 'SELECT cardinality($1) AS n, jsonb_array_length($2) AS m',
    (SELECT array_agg(i % 7) FROM generate_series(1, 50000) i),
    (SELECT jsonb_agg(jsonb_build_object('i', i % 7)) FROM generate_series(1, 50000) i));
SELECT o.status, o.result FROM id_long l,
    idem_apply('arr:long', NULL, 'SELECT cardinality($1) AS n, jsonb_array_length($2) AS m', l.a, l.j) o;
SELECT o.status, o.result FROM id_long l,
    idem_apply('arr:long', NULL, 'SELECT cardinality($1) AS n, jsonb_array_length($2) AS m',
               l.a::numeric[], l.j) o;
UPDATE id_long SET a[25000] = 8;
SELECT o.* FROM id_long l,
    idem_apply('arr:long', NULL, 'SELECT cardinality($1) AS n, jsonb_array_length($2) AS m', l.a, l.j) o;
DROP TABLE id_long;

-- domains: as their base type
CREATE DOMAIN id_amount AS numeric CHECK (VALUE > 0);
CREATE DOMAIN id_memo AS varchar(20);
SELECT status, result FROM idem_apply('dom:1', NULL, 'SELECT $1 AS amount, $2 AS memo', 25::id_amount, 'rent'::id_memo);
SELECT status FROM idem_apply('dom:1', NULL, 'SELECT $1 AS amount, $2 AS memo', 25.00, 'rent');
SELECT * FROM idem_apply('dom:1', NULL, 'SELECT $1 AS amount, $2 AS memo', 26::id_amount, 'rent'::id_memo);
SELECT status FROM idem_apply('dom:2', NULL, :'v', ARRAY[25::id_amount]);
SELECT status FROM idem_apply('dom:2', NULL, :'v', ARRAY[25]);

-- session settings change nothing: DateStyle, IntervalStyle, extra_float_digits,
-- search_path, bytea_output, client_encoding
CREATE SCHEMA id_other;
\set mixed 'SELECT $1 AS d, $2 AS f, $3 AS i, $4 AS t, $5 AS b, $6 AS r, $7 AS p'
SELECT status FROM idem_apply('set:1', NULL, :'mixed', '2026-03-04'::date, 0.1::float8,
    '1 day 02:03:04'::interval, '2026-03-04 05:06:07'::timestamp, '\x0102'::bytea,
    ROW(0.1::float8, '2026-03-04'::date), point(1.5, 2.25));
SET DateStyle = 'SQL, DMY';
SET IntervalStyle = 'postgres_verbose';
SET extra_float_digits = -3;
SET search_path = id_other, public;
SET bytea_output = 'escape';
SET TimeZone = 'Pacific/Auckland';
SELECT status FROM idem_apply('set:1', NULL, :'mixed', '04/03/2026'::date, 0.1::float8,
    '@ 1 day 2 hours 3 mins 4 secs'::interval, '04/03/2026 05:06:07'::timestamp, '\x0102'::bytea,
    ROW(0.1::float8, '04/03/2026'::date), point(1.5, 2.25));
SELECT * FROM idem_apply('set:1', NULL, :'mixed', '03/04/2026'::date, 0.1::float8,
    '@ 1 day 2 hours 3 mins 4 secs'::interval, '04/03/2026 05:06:07'::timestamp, '\x0102'::bytea,
    ROW(0.1::float8, '04/03/2026'::date), point(1.5, 2.25));
RESET DateStyle;
RESET IntervalStyle;
RESET extra_float_digits;
RESET search_path;
RESET bytea_output;
RESET TimeZone;
-- a value whose binary form holds text is hashed as the database spells it, not
-- as the client's encoding would
SELECT status FROM idem_apply('set:encoding', NULL, 'SELECT $1 ? ''price'' AS has_price, $2 AS doc',
    jsonb_build_object('price', chr(8364) || '25'), xmlelement(name p, chr(8364)));
SET client_encoding = 'LATIN9';
SELECT status FROM idem_apply('set:encoding', NULL, 'SELECT $1 ? ''price'' AS has_price, $2 AS doc',
    jsonb_build_object('price', chr(8364) || '25'), xmlelement(name p, chr(8364)));
SET client_encoding = 'LATIN1';
SELECT status FROM idem_apply('set:encoding', NULL, 'SELECT $1 ? ''price'' AS has_price, $2 AS doc',
    jsonb_build_object('price', chr(8364) || '25'), xmlelement(name p, chr(8364)));
RESET client_encoding;

-- jsonb: by its value (key order and spacing aside); a number inside keeps its written scale
SELECT status, result FROM idem_apply('json:1', NULL, :'v', '{"b": [1, 2], "a": "x"}'::jsonb);
SELECT status FROM idem_apply('json:1', NULL, :'v', '{"a":"x","b":[1,2]}'::jsonb);
SELECT status FROM idem_apply('json:1', NULL, :'v', '{"a": "x", "b": [1, 2], "a": "x"}'::jsonb);
SELECT * FROM idem_apply('json:1', NULL, :'v', '{"a": "x", "b": [2, 1]}'::jsonb);
SELECT * FROM idem_apply('json:1', NULL, :'v', '{"a": "x", "b": [1, 2]}'::json);
SELECT * FROM idem_apply('json:1', NULL, :'v', '{"a": "x", "b": [1, 2]}'::text);
SELECT status FROM idem_apply('json:scale', NULL, :'v', '{"amount": 25}'::jsonb);
SELECT * FROM idem_apply('json:scale', NULL, :'v', '{"amount": 25.00}'::jsonb);

-- uuid: by its value, however it was spelled
SELECT status, result FROM idem_apply('uuid:1', NULL, :'v', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'::uuid);
SELECT status FROM idem_apply('uuid:1', NULL, :'v', 'A0EEBC999C0B4EF8BB6D6BB9BD380A11'::uuid);
SELECT status FROM idem_apply('uuid:1', NULL, :'v', '{a0eebc99-9c0b4ef8-bb6d6bb9-bd380a11}'::uuid);
SELECT * FROM idem_apply('uuid:1', NULL, :'v', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a12'::uuid);
SELECT * FROM idem_apply('uuid:1', NULL, :'v', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'::text);

-- other types: by their type's name and binary value
SELECT status, result FROM idem_apply('other:date', NULL, :'v', '2026-03-04'::date);
SELECT status FROM idem_apply('other:date', NULL, :'v', 'March 4, 2026'::date);
SELECT * FROM idem_apply('other:date', NULL, :'v', '2026-03-05'::date);
SELECT * FROM idem_apply('other:date', NULL, :'v', '2026-03-04'::timestamp);
SELECT * FROM idem_apply('other:date', NULL, :'v', '2026-03-04'::text);
SELECT status, result FROM idem_apply('other:point', NULL, :'v', point(1, 2));
SELECT status FROM idem_apply('other:point', NULL, :'v', '(1.0, 2.00)'::point);
SELECT * FROM idem_apply('other:point', NULL, :'v', point(2, 1));
SELECT * FROM idem_apply('other:point', NULL, :'v', '(1,2)'::text);
SELECT status FROM idem_apply('other:interval', NULL, :'v', '1 day'::interval);
SELECT status FROM idem_apply('other:interval', NULL, :'v', '24 hours'::interval - '0 hours'::interval + '1 day'::interval - '24 hours'::interval);
SELECT * FROM idem_apply('other:interval', NULL, :'v', '24 hours'::interval);
SELECT status FROM idem_apply('other:bool', NULL, :'v', true);
SELECT * FROM idem_apply('other:bool', NULL, :'v', 't');
SELECT * FROM idem_apply('other:bool', NULL, :'v', 1);

-- an enum and a composite whose types are dropped and created again, with other
-- OIDs (as a dump and restore does): their values are still the same request
CREATE TYPE id_color AS ENUM ('red', 'green');
CREATE TYPE id_pair AS (n int, label text);
SELECT 'id_color'::regtype::oid AS color_oid, 'id_pair'::regtype::oid AS pair_oid,
       (SELECT oid FROM pg_enum WHERE enumtypid = 'id_color'::regtype AND enumlabel = 'green') AS green_oid \gset
SELECT status, result FROM idem_apply('oid:enum', NULL, :'v', 'green'::id_color);
SELECT status, result FROM idem_apply('oid:row', NULL, :'v', ROW(7, 'seven')::id_pair);
SELECT status, result FROM idem_apply('oid:array', NULL, :'v', ARRAY[ROW(7, 'seven')::id_pair]);
DROP TYPE id_color;
DROP TYPE id_pair;
CREATE TYPE id_color AS ENUM ('blue', 'green', 'red');
CREATE TYPE id_pair AS (n int, label text);
SELECT 'id_color'::regtype::oid <> :color_oid AS new_color_oid,
       'id_pair'::regtype::oid <> :pair_oid AS new_pair_oid,
       (SELECT oid FROM pg_enum WHERE enumtypid = 'id_color'::regtype AND enumlabel = 'green') <> :green_oid AS new_label_oid;
SELECT status, result FROM idem_apply('oid:enum', NULL, :'v', 'green'::id_color);
SELECT * FROM idem_apply('oid:enum', NULL, :'v', 'red'::id_color);
SELECT status, result FROM idem_apply('oid:row', NULL, :'v', ROW(7, 'seven')::id_pair);
SELECT * FROM idem_apply('oid:row', NULL, :'v', ROW(8, 'seven')::id_pair);
SELECT status, result FROM idem_apply('oid:array', NULL, :'v', ARRAY[ROW(7, 'seven')::id_pair]);

-- and the identity depends on nothing in this session: a new one agrees
\c -
SELECT status, result FROM idem_apply('num:25', NULL, :'v', 25);
SELECT status FROM idem_apply('num:float', NULL, :'v', 0.30000000000000004::float8);
SELECT status FROM idem_apply('ts:1', NULL, :'v', '2026-03-04 05:06:07.5+00'::timestamptz);
SELECT status FROM idem_apply('row:1', NULL, :'v', ROW(25, 42, '2026-03-04 05:06:07+00', 'rent')::id_payment);
SELECT status FROM idem_apply('oid:enum', NULL, :'v', 'green'::id_color);
SELECT * FROM idem_apply('oid:enum', NULL, :'v', 'red'::id_color);

-- each key recorded once, with its identity by value
SELECT count(*) AS keys, count(*) FILTER (WHERE request_hash IS NOT NULL) AS with_identity
FROM idem_ledger WHERE key ~ '^(num|str|null|ts|row|arr|dom|set|json|uuid|other|oid):';

DROP TYPE id_payment, id_label, id_color, id_pair;
DROP DOMAIN id_amount, id_memo;
DROP TABLE id_wide;
DROP SCHEMA id_other;
