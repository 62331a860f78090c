/* idempotent--1.0.sql: the ledger, the outcome type and the functions */

\echo Use "CREATE EXTENSION idempotent" to load this file. \quit

-- One row per key that was applied.  Written only by the extension's C code,
-- which keeps the column order below (fixed-width columns first, so rows
-- pack tightly); ordinary roles have no privileges on it.
CREATE TABLE idem_ledger (
    applied_at  timestamptz NOT NULL,   -- start of the transaction that applied it
    version     bigint,                 -- stored version; NULL for policy once
    rows        bigint,                 -- rows processed; NULL for idem_claim
    fingerprint bigint,                 -- hash of statement and arguments; NULL for idem_claim
    policy      "char" NOT NULL,        -- o = once, n = newer, s = next, u = upsert
    key         text COLLATE "C" NOT NULL,
    result      jsonb,                  -- rows returned by the statement, replayed to duplicates
    CONSTRAINT idem_ledger_pkey PRIMARY KEY (key)
);
COMMENT ON TABLE idem_ledger IS 'keys applied through the idempotent extension';
REVOKE ALL ON idem_ledger FROM PUBLIC;

-- pg_dump keeps the ledger's rows: a key applied before a dump is still a
-- duplicate after the restore.
SELECT pg_catalog.pg_extension_config_dump('idem_ledger', '');

CREATE TYPE idem_outcome AS (
    status           text,      -- applied, duplicate, stale, gap, in_progress
    applied          boolean,   -- the statement ran in this call
    version          bigint,    -- stored version after the call
    previous_version bigint,    -- stored version before the call
    rows             bigint,    -- rows processed (for a duplicate: of the original)
    result           jsonb      -- rows returned (for a duplicate: of the original)
);

-- All functions write (the ledger, and whatever the statement does), so they
-- are VOLATILE and PARALLEL UNSAFE; they are CALLED ON NULL INPUT because a
-- NULL version selects policy once and a NULL key deserves an error, not NULL.
-- They run as the caller (SECURITY INVOKER), so the statement has exactly
-- the caller's privileges and search_path.

CREATE FUNCTION idem_apply(key text, version bigint, statement text, VARIADIC args "any")
RETURNS idem_outcome
AS 'MODULE_PATHNAME', 'idem_apply'
LANGUAGE C VOLATILE CALLED ON NULL INPUT PARALLEL UNSAFE;

CREATE FUNCTION idem_apply(key text, version bigint, statement text)
RETURNS idem_outcome
AS 'MODULE_PATHNAME', 'idem_apply'
LANGUAGE C VOLATILE CALLED ON NULL INPUT PARALLEL UNSAFE;

CREATE FUNCTION idem_apply_next(key text, version bigint, statement text, VARIADIC args "any")
RETURNS idem_outcome
AS 'MODULE_PATHNAME', 'idem_apply_next'
LANGUAGE C VOLATILE CALLED ON NULL INPUT PARALLEL UNSAFE;

CREATE FUNCTION idem_apply_next(key text, version bigint, statement text)
RETURNS idem_outcome
AS 'MODULE_PATHNAME', 'idem_apply_next'
LANGUAGE C VOLATILE CALLED ON NULL INPUT PARALLEL UNSAFE;

CREATE FUNCTION idem_upsert(key text, version bigint, statement text, VARIADIC args "any")
RETURNS idem_outcome
AS 'MODULE_PATHNAME', 'idem_upsert'
LANGUAGE C VOLATILE CALLED ON NULL INPUT PARALLEL UNSAFE;

CREATE FUNCTION idem_upsert(key text, version bigint, statement text)
RETURNS idem_outcome
AS 'MODULE_PATHNAME', 'idem_upsert'
LANGUAGE C VOLATILE CALLED ON NULL INPUT PARALLEL UNSAFE;

CREATE FUNCTION idem_claim(key text, version bigint DEFAULT NULL, policy text DEFAULT NULL)
RETURNS idem_outcome
AS 'MODULE_PATHNAME', 'idem_claim'
LANGUAGE C VOLATILE CALLED ON NULL INPUT PARALLEL UNSAFE;

-- Recording keys is a privilege: grant EXECUTE to the roles that consume
-- messages (see README, "Privileges").
REVOKE EXECUTE ON FUNCTION
    idem_apply(text, bigint, text, "any"),
    idem_apply(text, bigint, text),
    idem_apply_next(text, bigint, text, "any"),
    idem_apply_next(text, bigint, text),
    idem_upsert(text, bigint, text, "any"),
    idem_upsert(text, bigint, text),
    idem_claim(text, bigint, text)
FROM PUBLIC;
