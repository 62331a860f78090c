/* idempotent--1.0--1.1.sql: retention (time to live, purge) and administration */

\echo Use "ALTER EXTENSION idempotent UPDATE TO '1.1'" to load this file. \quit

-- When a key stops counting, set from idempotent.ttl when it is applied;
-- NULL keeps it forever.  Appended last: the C code addresses columns by
-- position.
ALTER TABLE idem_ledger ADD COLUMN expires_at timestamptz;

-- Purges find expired keys through this index; keys kept forever stay out
-- of it, so they cost nothing here.
CREATE INDEX idem_ledger_expires_at ON idem_ledger (expires_at)
    WHERE expires_at IS NOT NULL;

-- Deletes up to max_keys expired keys in the caller's transaction, never
-- waiting for a key another transaction is writing; returns how many.
CREATE FUNCTION idem_purge(max_keys integer DEFAULT 10000)
RETURNS bigint
AS 'MODULE_PATHNAME', 'idem_purge'
LANGUAGE C VOLATILE STRICT PARALLEL UNSAFE;

-- Removes a key, so that its next delivery applies again; logged.
CREATE FUNCTION idem_forget(key text)
RETURNS boolean
AS 'MODULE_PATHNAME', 'idem_forget'
LANGUAGE C VOLATILE STRICT PARALLEL UNSAFE;

-- Sets a key's version watermark (NULL policy: the key's own, or newer for
-- a new key); returns the version it replaced; logged.
CREATE FUNCTION idem_reset(key text, version bigint, policy text DEFAULT NULL)
RETURNS bigint
AS 'MODULE_PATHNAME', 'idem_reset'
LANGUAGE C VOLATILE CALLED ON NULL INPUT PARALLEL UNSAFE;

-- A key's record.  SECURITY DEFINER so that roles granted EXECUTE can read
-- it without privileges on the ledger; search_path is pinned.
CREATE FUNCTION idem_get(key text)
RETURNS TABLE (key text, policy text, version bigint, applied_at timestamptz,
               expires_at timestamptz, expired boolean, rows bigint, result jsonb)
LANGUAGE sql STABLE STRICT PARALLEL SAFE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT l.key,
           CASE l.policy WHEN 'o' THEN 'once' WHEN 'n' THEN 'newer'
                         WHEN 's' THEN 'next' WHEN 'u' THEN 'upsert' END,
           l.version, l.applied_at, l.expires_at,
           coalesce(l.expires_at <= now(), false),
           l.rows, l.result
    FROM @extschema@.idem_ledger AS l
    WHERE l.key = $1
$$;

-- Call statistics per policy, from shared memory (library preloaded).
CREATE FUNCTION idem_stats(
    OUT policy text, OUT calls bigint, OUT applied bigint, OUT duplicate bigint,
    OUT stale bigint, OUT gap bigint, OUT in_progress bigint, OUT errors bigint,
    OUT total_time double precision, OUT mean_time double precision,
    OUT stats_reset timestamptz)
RETURNS SETOF record
AS 'MODULE_PATHNAME', 'idem_stats'
LANGUAGE C VOLATILE STRICT PARALLEL SAFE;

CREATE VIEW idem_stat AS SELECT * FROM idem_stats();

CREATE FUNCTION idem_stats_reset()
RETURNS void
AS 'MODULE_PATHNAME', 'idem_stats_reset'
LANGUAGE C VOLATILE STRICT PARALLEL SAFE;

REVOKE EXECUTE ON FUNCTION
    idem_purge(integer), idem_forget(text), idem_reset(text, bigint, text), idem_get(text),
    idem_stats(), idem_stats_reset()
FROM PUBLIC;
REVOKE ALL ON idem_stat FROM PUBLIC;
GRANT SELECT ON idem_stat TO pg_read_all_stats;
GRANT EXECUTE ON FUNCTION idem_stats() TO pg_read_all_stats;
