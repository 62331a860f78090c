--
-- setup: the objects CREATE EXTENSION idempotent installs
-- (pg_regress --load-extension=idempotent has created the extension already)
--
SELECT extname, extversion, extrelocatable, n.nspname AS schema
FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace
WHERE extname = 'idempotent';

-- the member objects
SELECT pg_describe_object(classid, objid, objsubid) AS member
FROM pg_depend
WHERE refclassid = 'pg_extension'::regclass
  AND refobjid = (SELECT oid FROM pg_extension WHERE extname = 'idempotent')
  AND deptype = 'e'
ORDER BY pg_describe_object(classid, objid, objsubid) COLLATE "C";

-- every function: VOLATILE, not STRICT (CALLED ON NULL INPUT), PARALLEL UNSAFE,
-- SECURITY INVOKER, returns idem_outcome
SELECT p.proname, pg_get_function_identity_arguments(p.oid) AS args,
       p.provolatile, p.proisstrict, p.proparallel, p.prosecdef,
       p.provariadic::regtype AS variadic, p.prorettype::regtype AS returns
FROM pg_proc p
WHERE p.pronamespace = 'public'::regnamespace AND p.proname LIKE 'idem\_%'
ORDER BY p.proname, p.pronargs;

-- idem_claim's defaults
SELECT pg_get_function_arguments('idem_claim(text,bigint,text)'::regprocedure);

-- EXECUTE is not granted to PUBLIC (nor to anyone but the owner)
SELECT p.proname, pg_get_function_identity_arguments(p.oid) AS args,
       p.proacl IS NOT NULL AS has_acl,
       EXISTS (SELECT 1 FROM aclexplode(p.proacl) a WHERE a.grantee = 0) AS public_can_execute,
       (SELECT count(*) FROM aclexplode(p.proacl) a WHERE a.grantee <> p.proowner) AS other_grantees
FROM pg_proc p
WHERE p.pronamespace = 'public'::regnamespace AND p.proname LIKE 'idem\_%'
ORDER BY p.proname, p.pronargs;

-- the ledger: no privilege for PUBLIC or anyone but its owner
SELECT c.relname, c.relkind, c.relpersistence,
       c.relacl IS NOT NULL AS has_acl,
       EXISTS (SELECT 1 FROM aclexplode(c.relacl) a WHERE a.grantee = 0) AS public_has_privileges,
       (SELECT count(*) FROM aclexplode(c.relacl) a WHERE a.grantee <> c.relowner) AS other_grantees
FROM pg_class c WHERE c.oid = 'idem_ledger'::regclass;

-- its columns, primary key on key (collation "C"), and its rows kept by pg_dump
SELECT a.attnum, a.attname, format_type(a.atttypid, a.atttypmod) AS type,
       a.attnotnull, co.collname
FROM pg_attribute a LEFT JOIN pg_collation co ON co.oid = a.attcollation
WHERE a.attrelid = 'idem_ledger'::regclass AND a.attnum > 0 AND NOT a.attisdropped
ORDER BY a.attnum;

SELECT conname, contype, pg_get_constraintdef(oid) AS def
FROM pg_constraint WHERE conrelid = 'idem_ledger'::regclass ORDER BY conname;

SELECT 'idem_ledger'::regclass = ANY (extconfig) AS ledger_is_dumped
FROM pg_extension WHERE extname = 'idempotent';

-- the outcome type
SELECT a.attnum, a.attname, format_type(a.atttypid, a.atttypmod) AS type
FROM pg_attribute a
WHERE a.attrelid = (SELECT typrelid FROM pg_type WHERE typname = 'idem_outcome')
  AND a.attnum > 0
ORDER BY a.attnum;

-- every setting, once the library is loaded: its default and who may change it
LOAD 'idempotent';
SELECT name, setting, unit, context, vartype, boot_val, min_val, max_val
FROM pg_settings
WHERE name LIKE 'idempotent.%'
ORDER BY name;

-- the ledger starts empty
SELECT count(*) AS ledger_rows FROM idem_ledger;

-- statistics need the library preloaded; without it, a clear error
SELECT * FROM idem_stat;
\echo SQLSTATE :SQLSTATE
SELECT idem_stats_reset();
