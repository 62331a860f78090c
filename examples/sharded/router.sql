-- examples/sharded/router.sql: the router database of the sharded payments example.
--
-- A PL/Proxy cluster "payments" of 8 partitions spread over two shard nodes (0-3 on the first,
-- 4-7 on the second), and router functions with the same signatures as the shards' functions.
-- pay() runs on the node that owns hashtext(key) & 7; the key and its effect commit there, in
-- one local transaction. The router holds no data and commits nothing of its own.
--
--   psql -v node0='host=10.0.0.1 dbname=shop' -v node1='host=10.0.0.2 dbname=shop' \
--        -d router -f router.sql
--
-- The partition map is the server's options p0..p7: a partition is moved to another node with
-- ALTER SERVER payments OPTIONS (SET p5 '...'), the last step of move-partition.sh. PL/Proxy
-- reloads the map in every router session at its next call. The partition count must be a
-- power of two, equal to shard.sql's partitions; it cannot change without moving every key.
\set ON_ERROR_STOP 1
\if :{?node0}
\else
\echo 'router.sql: set node0 and node1 to the shards'' connect strings'
\quit
\endif

CREATE EXTENSION IF NOT EXISTS plproxy;

CREATE SERVER payments FOREIGN DATA WRAPPER plproxy OPTIONS (
    connection_lifetime '1800',
    p0 :'node0', p1 :'node0', p2 :'node0', p3 :'node0',
    p4 :'node1', p5 :'node1', p6 :'node1', p7 :'node1'
);
-- Every role connects to the shards as itself; add user/password options for other setups.
CREATE USER MAPPING FOR PUBLIC SERVER payments;
GRANT USAGE ON FOREIGN SERVER payments TO PUBLIC;

-- Apply one payment on the node that owns its key: returns applied or duplicate, or fails
-- with the shard's error (SH001 while its partition is being moved: retry the message later).
CREATE FUNCTION pay(key text, account int, amount numeric) RETURNS text
LANGUAGE plproxy AS $$
    CLUSTER 'payments';
    RUN ON hashtext(key);
$$;

-- What each node holds for an account: one row per node, summed by account_balance().
CREATE FUNCTION account_charged(account int) RETURNS SETOF numeric
LANGUAGE plproxy AS $$
    CLUSTER 'payments';
    RUN ON ALL;
$$;

CREATE FUNCTION account_total(account int) RETURNS numeric
LANGUAGE sql STABLE
RETURN (SELECT coalesce(sum(n), 0) FROM account_charged(account) AS n);

-- Where a key lives: its partition and that partition's connect string.
CREATE FUNCTION key_partition(key text) RETURNS int
LANGUAGE sql STABLE STRICT
RETURN hashtext(key) & 7;

CREATE FUNCTION partition_node(partition int) RETURNS text
LANGUAGE sql STABLE STRICT
RETURN (SELECT substr(o, length('p' || partition || '=') + 1)
        FROM pg_foreign_server s, unnest(s.srvoptions) AS o
        WHERE s.srvname = 'payments' AND o LIKE 'p' || partition || '=%');
