-- bench/pgbench/idem.sql: one message per transaction, the same INSERT through idem_apply
-- (policy once, a new 20-byte key each time).
\set r random(1, 999999999999999)
SELECT idem_apply(lpad(:r::text, 20, '0'), NULL, 'INSERT INTO bench.t (k, v) VALUES ($1, $2)',
                  lpad(:r::text, 20, '0'), :r::bigint);
