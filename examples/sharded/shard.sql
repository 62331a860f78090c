-- examples/sharded/shard.sql: the schema of one shard node of the sharded payments example.
--
-- Every shard node holds, for the partitions it owns, the idempotency ledger (the extension) and
-- the effect tables, so that a payment's key and its effect commit in one local transaction.
-- The router (router.sql) forwards each call to the node that owns hashtext(key) & (partitions-1).
--
--   psql -v partitions=8 -v owned='{0,1,2,3}' -d shop -f shard.sql
--
-- partitions: the router's partition count (a power of two, the same on every node);
-- owned: the partitions this node serves from the start ('{}' for a node that will receive
-- partitions by examples/sharded/move-partition.sh).
\set ON_ERROR_STOP 1
\if :{?partitions}
\else
\set partitions 8
\endif
\if :{?owned}
\else
\echo 'shard.sql: set owned, e.g. psql -v owned=''{0,1,2,3}'' -f shard.sql'
\quit
\endif

CREATE EXTENSION IF NOT EXISTS idempotent;

-- The partition of a key, computed as PL/Proxy does on the router: hashtext(key) & (partitions-1).
-- hashtext() is the same on every PostgreSQL 15 node; keep router and shards on one major version.
SELECT format('CREATE FUNCTION shard_partition(key text) RETURNS int
    LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
    RETURN hashtext(key) & %s', :partitions - 1)
WHERE (:partitions & (:partitions - 1)) = 0 AND :partitions > 0 \gexec
SELECT 'shard_partition(text)'::regprocedure AS defined \gset
-- (fails above if partitions was not a power of two)

-- The partitions this node serves. A key whose partition has no 'active' row here is refused
-- with SQLSTATE SH001 (moved away, being moved, or sent here by a router with a stale map), so
-- a key can only ever be applied on the node that owns it.
CREATE TABLE shard_partitions (
    partition int PRIMARY KEY CHECK (partition >= 0 AND partition < :partitions),
    state     text NOT NULL CHECK (state IN ('active', 'fenced'))
);
INSERT INTO shard_partitions SELECT p, 'active' FROM unnest(:'owned'::int[]) AS p;

-- The effect: one row per payment applied. No unique constraint on purpose (a payment applied
-- twice would show as two rows); the ledger is what makes it once. Every table that holds
-- effects has the message's key in a column named key, so that move-partition.sh can move a
-- partition's rows with the ledger's.
CREATE TABLE charges (
    key        text NOT NULL,
    account    int NOT NULL,
    amount     numeric(12,2) NOT NULL,
    charged_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX charges_account ON charges (account);
CREATE INDEX charges_partition ON charges (shard_partition(key));

-- The consumer's call, the same signature as the router's pay(). It takes the partition's
-- fence lock in shared mode (held to commit: a move's fence waits for calls in flight), checks
-- that this node serves the partition, then applies the charge and records the key in one
-- transaction with idem_apply. Returns applied or duplicate.
-- The advisory lock class 7411 is this example's; move-partition.sh takes it exclusively.
CREATE FUNCTION pay(key text, account int, amount numeric) RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    p int := shard_partition(key);
BEGIN
    PERFORM pg_advisory_xact_lock_shared(7411, p);
    IF NOT EXISTS (SELECT 1 FROM shard_partitions s WHERE s.partition = p AND s.state = 'active') THEN
        RAISE EXCEPTION 'partition % (key %) is not served by this node', p, key
            USING ERRCODE = 'SH001',
                  HINT = 'Retry later: the partition is being moved, or the router''s map is stale.';
    END IF;
    RETURN (idem_apply(key, NULL,
        'INSERT INTO charges (key, account, amount) VALUES ($1, $2, $3)',
        key, account, amount)).status;
END $$;

-- What this node holds for one account (the router sums it over all nodes).
CREATE FUNCTION account_charged(account int) RETURNS numeric
LANGUAGE sql STABLE
RETURN (SELECT coalesce(sum(c.amount), 0) FROM charges c WHERE c.account = account_charged.account);
