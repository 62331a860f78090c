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

-- Operators' functions in C: they respect scopes, and a NULL key is an
-- error (22004) rather than a NULL answer.
DROP FUNCTION idem_get(text);
CREATE FUNCTION idem_get(key text)
RETURNS TABLE (key text, policy text, version bigint, applied_at timestamptz,
               expires_at timestamptz, expired boolean, rows bigint, result jsonb,
               scope text)
AS 'MODULE_PATHNAME', 'idem_get'
LANGUAGE C STABLE CALLED ON NULL INPUT PARALLEL RESTRICTED;

ALTER FUNCTION idem_forget(text) CALLED ON NULL INPUT;
ALTER FUNCTION idem_purge(integer) CALLED ON NULL INPUT;

REVOKE EXECUTE ON FUNCTION idem_get(text) FROM PUBLIC;
