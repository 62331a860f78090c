-- bench/pgbench/bare.sql: one message per transaction, the bare statement (a one-row INSERT).
\set r random(1, 999999999999999)
INSERT INTO bench.t (k, v) VALUES (lpad(:r::text, 20, '0'), :r);
