-- bench/pgbench/batch_idem.sql: 1000 messages in one statement and one transaction, each
-- through idem_apply (policy once, new keys), as a consumer that sends a batch per round trip.
\set b random(1, 999999999999)
SELECT count(*) FILTER (WHERE o.applied)
FROM unnest(ARRAY(SELECT lpad((:b::bigint * 1000 + g)::text, 20, '0') FROM generate_series(1, 1000) g),
            ARRAY(SELECT :b::bigint * 1000 + g FROM generate_series(1, 1000) g)) AS m(k, v),
     LATERAL idem_apply(m.k, NULL, 'INSERT INTO bench.t (k, v) VALUES ($1, $2)', m.k, m.v) AS o;
