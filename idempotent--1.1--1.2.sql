/* idempotent--1.1--1.2.sql: scopes, request identity by value, C functions for operators */

\echo Use "ALTER EXTENSION idempotent UPDATE TO '1.2'" to load this file. \quit

-- Scopes: the same key in two scopes is two keys.  '' is the shared scope,
-- where the keys of earlier versions stay.  The default matters to a dump
-- of an earlier version restored into this one.
ALTER TABLE idem_ledger ADD COLUMN scope text COLLATE "C" NOT NULL DEFAULT '';
ALTER TABLE idem_ledger
    DROP CONSTRAINT idem_ledger_pkey,
    ADD CONSTRAINT idem_ledger_pkey PRIMARY KEY (key, scope);

-- The request's identity by value (statement text and argument values,
-- independent of types, OIDs and session settings).  Keys recorded before
-- 1.2 keep the identity 1.1 computed, in column fingerprint, and are still
-- recognized; new keys leave fingerprint NULL.
ALTER TABLE idem_ledger ADD COLUMN request_hash bigint;

-- idem_get, idem_stats() and the view idem_stat change their columns, so
-- they are dropped and created again below; the privileges granted on them
-- are saved here and granted again at the end.
SELECT pg_catalog.set_config('idempotent_upgrade.get_acl',
           coalesce((SELECT proacl::text FROM pg_catalog.pg_proc
                     WHERE oid = '@extschema@.idem_get(text)'::pg_catalog.regprocedure), ''), true),
       pg_catalog.set_config('idempotent_upgrade.stats_acl',
           coalesce((SELECT proacl::text FROM pg_catalog.pg_proc
                     WHERE oid = '@extschema@.idem_stats()'::pg_catalog.regprocedure), ''), true),
       pg_catalog.set_config('idempotent_upgrade.stat_acl',
           coalesce((SELECT relacl::text FROM pg_catalog.pg_class
                     WHERE oid = '@extschema@.idem_stat'::pg_catalog.regclass), ''), true);

-- Operators' functions in C: they respect scopes, and a NULL key is an
-- error (22004) rather than a NULL answer.
DROP FUNCTION idem_get(text);
CREATE FUNCTION idem_get(key text)
RETURNS TABLE (key text, policy text, version bigint, applied_at timestamptz,
               expires_at timestamptz, expired boolean, rows bigint, result jsonb,
               scope text, state text, attempts integer, lease_until timestamptz,
               last_error text)
AS 'MODULE_PATHNAME', 'idem_get'
LANGUAGE C STABLE CALLED ON NULL INPUT PARALLEL RESTRICTED;

ALTER FUNCTION idem_forget(text) CALLED ON NULL INPUT;
ALTER FUNCTION idem_purge(integer) CALLED ON NULL INPUT;

REVOKE EXECUTE ON FUNCTION idem_get(text) FROM PUBLIC;

-- Leases: keys for effects outside the database (idem_begin, idem_complete,
-- idem_fail), and failures of ordinary keys (poison messages).  Every
-- column is NULL for an ordinary key applied without failures, so such keys
-- pay nothing for them, and a dump of 1.1 restores with them NULL.
--   state        l = leased, c = completed, f = failed (waiting for a retry),
--                d = dead; NULL for an ordinary key
--   attempts     lease keys: attempts begun; ordinary keys: failures counted
--   lease_until  end of the running attempt's lease, or of the wait for a retry
--   last_error   what the last failure said
-- Lease keys have policy l and keep the identity of their request in
-- request_hash.  A key that only counts failures of messages that never
-- applied has no applied_at.
ALTER TABLE idem_ledger ADD COLUMN state "char";
ALTER TABLE idem_ledger ADD COLUMN attempts integer;
ALTER TABLE idem_ledger ADD COLUMN lease_until timestamptz;
ALTER TABLE idem_ledger ADD COLUMN last_error text;
ALTER TABLE idem_ledger ALTER COLUMN applied_at DROP NOT NULL;

CREATE TYPE idem_lease AS (
    status      text,           -- started, in_progress, duplicate, dead; failed (idem_fail)
    attempt     integer,        -- the attempt the caller holds, or the key's latest
    lease_until timestamptz,    -- end of the lease, or of the wait for a retry
    result      jsonb,          -- for a duplicate: what idem_complete stored
    last_error  text            -- what the last failure said
);

-- They write the ledger (VOLATILE, PARALLEL UNSAFE) and deserve an error,
-- not NULL, for a NULL key (CALLED ON NULL INPUT); they run as the caller.
CREATE FUNCTION idem_begin(key text, lease interval DEFAULT NULL, request jsonb DEFAULT NULL)
RETURNS idem_lease
AS 'MODULE_PATHNAME', 'idem_begin'
LANGUAGE C VOLATILE CALLED ON NULL INPUT PARALLEL UNSAFE;

CREATE FUNCTION idem_complete(key text, attempt integer, result jsonb DEFAULT NULL)
RETURNS void
AS 'MODULE_PATHNAME', 'idem_complete'
LANGUAGE C VOLATILE CALLED ON NULL INPUT PARALLEL UNSAFE;

CREATE FUNCTION idem_fail(key text, attempt integer, error text, retry_after interval DEFAULT NULL)
RETURNS idem_lease
AS 'MODULE_PATHNAME', 'idem_fail'
LANGUAGE C VOLATILE CALLED ON NULL INPUT PARALLEL UNSAFE;

REVOKE EXECUTE ON FUNCTION
    idem_begin(text, interval, jsonb),
    idem_complete(text, integer, jsonb),
    idem_fail(text, integer, text, interval)
FROM PUBLIC;

-- Statistics per scope (each caller sees the scopes it may use; superusers
-- and pg_read_all_stats see all), counting leases (a row for policy lease),
-- completions, failures and dead keys.
DROP VIEW idem_stat;
DROP FUNCTION idem_stats();
CREATE FUNCTION idem_stats(
    OUT scope text, OUT policy text, OUT calls bigint, OUT applied bigint, OUT duplicate bigint,
    OUT stale bigint, OUT gap bigint, OUT in_progress bigint,
    OUT started bigint, OUT completed bigint, OUT failed bigint, OUT dead bigint,
    OUT errors bigint, OUT total_time double precision, OUT mean_time double precision,
    OUT stats_reset timestamptz)
RETURNS SETOF record
AS 'MODULE_PATHNAME', 'idem_stats'
LANGUAGE C VOLATILE STRICT PARALLEL SAFE;

CREATE VIEW idem_stat AS SELECT * FROM idem_stats();

REVOKE EXECUTE ON FUNCTION idem_stats() FROM PUBLIC;
REVOKE ALL ON idem_stat FROM PUBLIC;
GRANT SELECT ON idem_stat TO pg_read_all_stats;
GRANT EXECUTE ON FUNCTION idem_stats() TO pg_read_all_stats;

-- The privileges granted on idem_get, idem_stats() and idem_stat under 1.1
-- (saved above) are granted again, so that the roles they name depend on
-- them as on any grant.  A GRANT in this script is recorded as one of the
-- extension's initial privileges, which pg_dump leaves out: the initial
-- privileges are then set back to what this script itself granted.
DO $$
DECLARE
    target record;
    item record;
    initial pg_catalog.aclitem[];
BEGIN
    FOR target IN
        SELECT 'pg_catalog.pg_proc'::pg_catalog.regclass AS catalog,
               '@extschema@.idem_get(text)'::pg_catalog.regprocedure::pg_catalog.oid AS oid,
               'FUNCTION @extschema@.idem_get(text)' AS object, 'idempotent_upgrade.get_acl' AS saved
        UNION ALL
        SELECT 'pg_catalog.pg_proc', '@extschema@.idem_stats()'::pg_catalog.regprocedure,
               'FUNCTION @extschema@.idem_stats()', 'idempotent_upgrade.stats_acl'
        UNION ALL
        SELECT 'pg_catalog.pg_class', '@extschema@.idem_stat'::pg_catalog.regclass,
               'TABLE @extschema@.idem_stat', 'idempotent_upgrade.stat_acl'
    LOOP
        SELECT i.initprivs INTO initial FROM pg_catalog.pg_init_privs i
         WHERE i.objoid = target.oid AND i.classoid = target.catalog AND i.objsubid = 0;
        FOR item IN
            SELECT a.grantee, a.privilege_type, a.is_grantable
            FROM pg_catalog.aclexplode(NULLIF(
                     pg_catalog.current_setting(target.saved), '')::pg_catalog.aclitem[]) AS a
            WHERE a.grantee <> a.grantor
        LOOP
            EXECUTE pg_catalog.format('GRANT %s ON %s TO %s%s', item.privilege_type, target.object,
                CASE WHEN item.grantee = 0 THEN 'PUBLIC'
                     ELSE pg_catalog.quote_ident(pg_catalog.pg_get_userbyid(item.grantee)) END,
                CASE WHEN item.is_grantable THEN ' WITH GRANT OPTION' ELSE '' END);
        END LOOP;
        UPDATE pg_catalog.pg_init_privs SET initprivs = initial
         WHERE objoid = target.oid AND classoid = target.catalog AND objsubid = 0;
    END LOOP;
END
$$;

-- Batches: claim the keys of a batch of messages in one call, one row per
-- element in input order (see README, "Batches").  It writes the ledger
-- (VOLATILE, PARALLEL UNSAFE) and refuses NULL arrays and elements with an
-- error (CALLED ON NULL INPUT); a consumer's batch is typically a few hundred
-- messages.
CREATE FUNCTION idem_claim_batch(keys text[], versions bigint[] DEFAULT NULL,
                                 policy text DEFAULT NULL)
RETURNS TABLE (ord integer, key text, status text, applied boolean, version bigint,
               previous_version bigint)
AS 'MODULE_PATHNAME', 'idem_claim_batch'
LANGUAGE C VOLATILE CALLED ON NULL INPUT PARALLEL UNSAFE ROWS 500;

REVOKE EXECUTE ON FUNCTION idem_claim_batch(text[], bigint[], text) FROM PUBLIC;
