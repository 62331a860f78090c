-- bench/setup.sql: schema "bench" for scripts/bench.sh (`make bench`): the tables every
-- contender writes to, the in-server timing functions and the procedures that run one
-- measurement each.
--
-- Every timing function runs N calls in a PL/pgSQL loop inside the caller's transaction and
-- returns microseconds per call, measured with clock_timestamp() around the loop. All contenders
-- pay the same loop and key generation (measured on its own as "overhead") and write the same
-- statement, a one-row INSERT with two parameters, into the same table. idem_* calls are
-- written as a consumer would check them, `_ok := (idem_apply(...)).applied`, which PL/pgSQL
-- evaluates as a simple expression (PERFORM would add an executor run per call).

\set ON_ERROR_STOP on

CREATE EXTENSION idempotent;
CREATE SCHEMA bench;

-- The table every contender's statement inserts into: no index, so the bare statement is as
-- cheap as an insert gets and the ratios against it are the strictest.
CREATE TABLE bench.t (k text NOT NULL, v bigint NOT NULL);

-- The hand-written pattern's own ledger, keyed like idem_ledger.
CREATE TABLE bench.processed (key text COLLATE "C" PRIMARY KEY);

-- What recording a key costs as plain SQL: a table shaped like idem_ledger, with its primary key.
CREATE TABLE bench.record (LIKE idem_ledger INCLUDING DEFAULTS, PRIMARY KEY (key));

-- Raw measurements: section, name (path, ledger size, client count...), repetition, value.
CREATE TABLE bench.result (section text NOT NULL, name text NOT NULL, rep int NOT NULL,
                           value float8 NOT NULL);

-- A 20-byte key: 8 hex digits of a multiplicative hash of i (so that consecutive i land all over
-- the index, as message ids do), a 4-character tag naming the key set, and i on 8 digits.
-- Distinct for distinct (tag, i) with i < 10^8. Inlined by the planner.
CREATE FUNCTION bench.key(tag text, i bigint) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$ SELECT lpad(to_hex(($2 * 2654435761) % 4294967296), 8, '0') || $1 || lpad($2::text, 8, '0') $$;

CREATE FUNCTION bench.us_per_call(t0 timestamptz, n int) RETURNS float8
LANGUAGE sql VOLATILE
AS $$ SELECT extract(epoch FROM clock_timestamp() - $1)::float8 * 1e6 / $2 $$;

-- The loop and the key alone: what every contender below pays besides its statement.
CREATE FUNCTION bench.run_overhead(tag text, n int) RETURNS float8 LANGUAGE plpgsql AS $$
DECLARE
  t0 timestamptz := clock_timestamp();
  _k text;
BEGIN
  FOR _i IN 1..n LOOP
    _k := bench.key(tag, _i);
  END LOOP;
  RETURN bench.us_per_call(t0, n);
END $$;

-- The bare statement: static SQL, planned once by PL/pgSQL.
CREATE FUNCTION bench.run_bare(tag text, n int) RETURNS float8 LANGUAGE plpgsql AS $$
DECLARE
  t0 timestamptz := clock_timestamp();
  _k text;
BEGIN
  FOR _i IN 1..n LOOP
    _k := bench.key(tag, _i);
    INSERT INTO bench.t (k, v) VALUES (_k, _i);
  END LOOP;
  RETURN bench.us_per_call(t0, n);
END $$;

-- The hand-written pattern: record the key, run the statement only if the key was new.
CREATE FUNCTION bench.run_pattern(tag text, n int) RETURNS float8 LANGUAGE plpgsql AS $$
DECLARE
  t0 timestamptz := clock_timestamp();
  _k text;
  _stmt text := 'INSERT INTO bench.t (k, v) VALUES ($1, $2)';
BEGIN
  FOR _i IN 1..n LOOP
    _k := bench.key(tag, _i);
    INSERT INTO bench.processed (key) VALUES (_k) ON CONFLICT DO NOTHING;
    IF FOUND THEN
      EXECUTE _stmt USING _k, _i;
    END IF;
  END LOOP;
  RETURN bench.us_per_call(t0, n);
END $$;

-- The key recorded alone, as one static INSERT of a ledger-shaped row (what a new key's ledger
-- write amounts to, without the statement it protects).
CREATE FUNCTION bench.run_record(tag text, n int) RETURNS float8 LANGUAGE plpgsql AS $$
DECLARE
  t0 timestamptz := clock_timestamp();
  _k text;
BEGIN
  FOR _i IN 1..n LOOP
    _k := bench.key(tag, _i);
    INSERT INTO bench.record (applied_at, rows, request_hash, policy, key)
    VALUES (now(), 1, 1234567890123, 'o', _k);
  END LOOP;
  RETURN bench.us_per_call(t0, n);
END $$;

-- idem_apply: policy once when ver is NULL, newer otherwise.
CREATE FUNCTION bench.run_apply(tag text, n int, ver bigint) RETURNS float8 LANGUAGE plpgsql AS $$
DECLARE
  t0 timestamptz := clock_timestamp();
  _k text;
  _ok boolean;
BEGIN
  FOR _i IN 1..n LOOP
    _k := bench.key(tag, _i);
    _ok := (idem_apply(_k, ver, 'INSERT INTO bench.t (k, v) VALUES ($1, $2)', _k, _i)).applied;
  END LOOP;
  RETURN bench.us_per_call(t0, n);
END $$;

CREATE FUNCTION bench.run_next(tag text, n int, ver bigint) RETURNS float8 LANGUAGE plpgsql AS $$
DECLARE
  t0 timestamptz := clock_timestamp();
  _k text;
  _ok boolean;
BEGIN
  FOR _i IN 1..n LOOP
    _k := bench.key(tag, _i);
    _ok := (idem_apply_next(_k, ver, 'INSERT INTO bench.t (k, v) VALUES ($1, $2)', _k, _i)).applied;
  END LOOP;
  RETURN bench.us_per_call(t0, n);
END $$;

CREATE FUNCTION bench.run_upsert(tag text, n int, ver bigint) RETURNS float8 LANGUAGE plpgsql AS $$
DECLARE
  t0 timestamptz := clock_timestamp();
  _k text;
  _ok boolean;
BEGIN
  FOR _i IN 1..n LOOP
    _k := bench.key(tag, _i);
    _ok := (idem_upsert(_k, ver, 'INSERT INTO bench.t (k, v) VALUES ($1, $2)', _k, _i)).applied;
  END LOOP;
  RETURN bench.us_per_call(t0, n);
END $$;

-- idem_claim: the key alone, no statement.
CREATE FUNCTION bench.run_claim(tag text, n int) RETURNS float8 LANGUAGE plpgsql AS $$
DECLARE
  t0 timestamptz := clock_timestamp();
  _k text;
  _ok boolean;
BEGIN
  FOR _i IN 1..n LOOP
    _k := bench.key(tag, _i);
    _ok := (idem_claim(_k)).applied;
  END LOOP;
  RETURN bench.us_per_call(t0, n);
END $$;

-- Growth: duplicates of n keys among the `total` preloaded ones (tag 'pre_'), picked all over
-- the key range and differently in each repetition. The preloaded rows carry the fingerprint of
-- this argument-less statement, so they are true duplicates of it.
CREATE FUNCTION bench.run_dup_preloaded(total int, n int, rep int) RETURNS float8
LANGUAGE plpgsql AS $$
DECLARE
  t0 timestamptz := clock_timestamp();
  _k text;
  _ok boolean;
BEGIN
  FOR _j IN 1..n LOOP
    _k := bench.key('pre_', 1 + (_j::bigint * 7919 + rep::bigint * 104729) % total);
    _ok := (idem_apply(_k, NULL, 'SELECT 1 WHERE false')).applied;
  END LOOP;
  RETURN bench.us_per_call(t0, n);
END $$;

-- Growth reference: the same keys looked up with plain SQL through the ledger's primary key,
-- to tell what a larger index costs PostgreSQL itself on this machine.
CREATE FUNCTION bench.run_select_preloaded(total int, n int, rep int) RETURNS float8
LANGUAGE plpgsql AS $$
DECLARE
  t0 timestamptz := clock_timestamp();
  _k text;
  _ok boolean;
BEGIN
  FOR _j IN 1..n LOOP
    _k := bench.key('pre_', 1 + (_j::bigint * 7919 + rep::bigint * 104729) % total);
    _ok := EXISTS (SELECT FROM idem_ledger WHERE key = _k);
  END LOOP;
  RETURN bench.us_per_call(t0, n);
END $$;

-- One measurement of one path on a fresh ledger: empty the tables, record the keys the path must
-- find (committed, as a redelivery finds them), then time n calls in one transaction.
CREATE PROCEDURE bench.measure_path(path text, rep int, n int) LANGUAGE plpgsql AS $$
DECLARE
  us float8;
  rows bigint;
  expected bigint;
BEGIN
  TRUNCATE bench.t, bench.processed, bench.record, idem_ledger;
  COMMIT;
  CASE path
    WHEN 'pattern_dup' THEN PERFORM bench.run_pattern('patt', n);
    WHEN 'once_dup' THEN PERFORM bench.run_apply('once', n, NULL);
    WHEN 'newer' THEN PERFORM bench.run_apply('newr', n, 1);
    WHEN 'next' THEN PERFORM bench.run_next('next', n, 1);
    WHEN 'upsert' THEN PERFORM bench.run_upsert('upst', n, 1);
    ELSE NULL;
  END CASE;
  COMMIT;
  us := CASE path
    WHEN 'overhead' THEN bench.run_overhead('ovhd', n)
    WHEN 'bare' THEN bench.run_bare('bare', n)
    WHEN 'pattern_new' THEN bench.run_pattern('patt', n)
    WHEN 'pattern_dup' THEN bench.run_pattern('patt', n)
    WHEN 'record' THEN bench.run_record('recd', n)
    WHEN 'once_new' THEN bench.run_apply('once', n, NULL)
    WHEN 'once_dup' THEN bench.run_apply('once', n, NULL)
    WHEN 'newer' THEN bench.run_apply('newr', n, 2)
    WHEN 'next' THEN bench.run_next('next', n, 2)
    WHEN 'upsert' THEN bench.run_upsert('upst', n, 2)
    WHEN 'claim_new' THEN bench.run_claim('clam', n)
  END;
  IF us IS NULL THEN
    RAISE EXCEPTION 'unknown path %', path;
  END IF;
  COMMIT;
  -- the statement ran exactly as often as the path says: once per new key or newer version
  SELECT count(*) INTO rows FROM bench.t;
  expected := n * CASE path WHEN 'overhead' THEN 0 WHEN 'claim_new' THEN 0 WHEN 'record' THEN 0
                            WHEN 'newer' THEN 2 WHEN 'next' THEN 2 WHEN 'upsert' THEN 2 ELSE 1 END;
  IF rows <> expected THEN
    RAISE EXCEPTION 'path %: the statement ran % times, expected %', path, rows, expected;
  END IF;
  INSERT INTO bench.result VALUES ('path', path, rep, us);
END $$;

-- One growth measurement on a ledger of `total` preloaded keys: n duplicates, the same n keys
-- looked up with SQL, then n new keys in a transaction that is rolled back so that the ledger
-- keeps its size (the caller vacuums).
CREATE PROCEDURE bench.measure_growth(total int, rep int, n int) LANGUAGE plpgsql AS $$
DECLARE
  dup float8;
  sel float8;
  new float8;
BEGIN
  dup := bench.run_dup_preloaded(total, n, rep);
  COMMIT;
  sel := bench.run_select_preloaded(total, n, rep);
  COMMIT;
  new := bench.run_apply('g' || lpad(rep::text, 3, '0'), n, NULL);
  ROLLBACK;
  INSERT INTO bench.result
  VALUES ('growth_dup', total, rep, dup), ('growth_sql', total, rep, sel), ('growth_new', total, rep, new);
END $$;

-- Batches in-server: nbatch batches of size messages, each one statement, timed around the
-- statement only (the keys are built before), in one transaction; microseconds per message.
--   bare      INSERT INTO bench.t SELECT FROM unnest(keys, vals)
--   pattern   the set-based SQL pattern: the keys into bench.processed ON CONFLICT DO NOTHING,
--             RETURNING the fresh ones, joined to the messages
--   claim     idem_claim_batch(keys) and one set-based INSERT of the applied ones
CREATE FUNCTION bench.run_batch(path text, tag text, nbatch int, size int) RETURNS float8
LANGUAGE plpgsql AS $$
DECLARE
  t0 timestamptz;
  spent float8 := 0;
  keys text[];
  vals bigint[];
BEGIN
  FOR b IN 0 .. nbatch - 1 LOOP
    keys := ARRAY(SELECT bench.key(tag, b::bigint * size + g) FROM generate_series(1, size) g);
    vals := ARRAY(SELECT b::bigint * size + g FROM generate_series(1, size) g);
    t0 := clock_timestamp();
    CASE path
    WHEN 'none' THEN
      NULL;  -- the keys alone (make bench-profile subtracts them)
    WHEN 'bare' THEN
      INSERT INTO bench.t (k, v) SELECT m.k, m.v FROM unnest(keys, vals) AS m(k, v);
    WHEN 'pattern' THEN
      WITH fresh AS (INSERT INTO bench.processed (key) SELECT unnest(keys)
                     ON CONFLICT DO NOTHING RETURNING key)
      INSERT INTO bench.t (k, v)
      SELECT m.k, m.v FROM unnest(keys, vals) AS m(k, v) JOIN fresh ON fresh.key = m.k;
    WHEN 'claim' THEN
      WITH fresh AS (SELECT ord FROM idem_claim_batch(keys) WHERE applied)
      INSERT INTO bench.t (k, v)
      SELECT m.k, m.v FROM unnest(keys, vals) WITH ORDINALITY AS m(k, v, ord) JOIN fresh USING (ord);
    END CASE;
    spent := spent + extract(epoch FROM clock_timestamp() - t0);
  END LOOP;
  RETURN spent * 1e6 / (nbatch::float8 * size);
END $$;

-- One batch measurement on emptied tables: path is bare, pattern_new, pattern_dup, claim_new or
-- claim_dup; the duplicates are the same batches applied and committed before the timed run.
CREATE PROCEDURE bench.measure_batch(path text, rep int, nbatch int, size int) LANGUAGE plpgsql AS $$
DECLARE
  base text := split_part(path, '_', 1);
  us float8;
  rows bigint;
BEGIN
  TRUNCATE bench.t, bench.processed, idem_ledger;
  COMMIT;
  IF path LIKE '%\_dup' THEN
    PERFORM bench.run_batch(base, 'btch', nbatch, size);
    COMMIT;
  END IF;
  us := bench.run_batch(base, 'btch', nbatch, size);
  COMMIT;
  -- each message inserted exactly once, new or duplicate
  SELECT count(*) INTO rows FROM bench.t;
  IF rows <> nbatch::bigint * size THEN
    RAISE EXCEPTION 'batch path %: % rows inserted, expected %', path, rows, nbatch::bigint * size;
  END IF;
  INSERT INTO bench.result VALUES ('batch_path', path, rep, us);
END $$;

-- Medians (and spread) of every measurement.
CREATE VIEW bench.summary AS
SELECT section, name, count(*) AS reps,
       percentile_cont(0.5) WITHIN GROUP (ORDER BY value) AS median,
       min(value) AS min, max(value) AS max
FROM bench.result GROUP BY section, name;
