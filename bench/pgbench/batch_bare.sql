-- bench/pgbench/batch_bare.sql: 1000 messages in one statement and one transaction, the bare
-- INSERT of them all. Keys b*1000+1 .. b*1000+1000 as 20-byte strings, built in the statement.
\set b random(1, 999999999999)
INSERT INTO bench.t (k, v)
SELECT m.k, m.v
FROM unnest(ARRAY(SELECT lpad((:b::bigint * 1000 + g)::text, 20, '0') FROM generate_series(1, 1000) g),
            ARRAY(SELECT :b::bigint * 1000 + g FROM generate_series(1, 1000) g)) AS m(k, v);
