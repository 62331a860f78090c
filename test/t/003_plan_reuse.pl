
# 003_plan_reuse.pl
#
# A statement is parsed once per backend and its plan reused: pg_stat_statements
# (tracking nested statements and planning) sees the statement executed once
# per applying call, but planned only a handful of times (the plan cache's
# custom plans before it settles on a generic one), not once per call.  A
# table change replans it, and the new plan is used.  Past 1024 statements
# the least recently used one makes room, never one being executed.

use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $calls = 200;

my $node = PostgreSQL::Test::Cluster->new('plans');
$node->init;
$node->append_conf(
	'postgresql.conf', q(
shared_preload_libraries = 'pg_stat_statements'
pg_stat_statements.track = all
pg_stat_statements.track_planning = on
));
$node->start;

$node->safe_psql(
	'postgres', q{
CREATE EXTENSION pg_stat_statements;
CREATE EXTENSION idempotent;
CREATE TABLE items (k text PRIMARY KEY, v int NOT NULL);
});

my $stmt = 'INSERT INTO items (k, v) VALUES ($1, $2)';

# calls and plans of the statement, as pg_stat_statements counts them
sub counts
{
	return $node->safe_psql(
		'postgres', qq{
SELECT coalesce(sum(calls), 0) || '|' || coalesce(sum(plans), 0)
FROM pg_stat_statements WHERE query = '$stmt'});
}

# one backend, $calls applying calls, one transaction each, then the same
# keys again (duplicates run nothing)
my $applied = $node->safe_psql(
	'postgres', qq{
SELECT pg_stat_statements_reset();
DO \$\$
BEGIN
  FOR i IN 1..$calls LOOP
    PERFORM idem_apply('plan:' || i, NULL, '$stmt', 'k' || i, i);
  END LOOP;
  FOR i IN 1..$calls LOOP
    PERFORM idem_apply('plan:' || i, NULL, '$stmt', 'k' || i, i);
  END LOOP;
END \$\$;
SELECT count(*) FROM items;
});
like($applied, qr/\b$calls$/, "$calls keys applied once each");

my ($executed, $planned) = split /\|/, counts();
is($executed, $calls, 'the statement ran once per applying call');
cmp_ok($planned, '>=', 1, 'the statement was planned');
cmp_ok($planned, '<=', 10,
	"planned $planned times for $calls calls: the plan is reused");

# A table change invalidates the plan; the next call replans and works with
# the new table.
$node->safe_psql(
	'postgres', q{
SELECT pg_stat_statements_reset();
ALTER TABLE items ADD COLUMN note text DEFAULT 'after';
});
my $after = $node->safe_psql(
	'postgres', qq{
SELECT status FROM idem_apply('plan:new', NULL, '$stmt', 'knew', 0);
SELECT note FROM items WHERE k = 'knew';
});
is($after, "applied\nafter", 'after ALTER TABLE the statement is replanned and applied');

# The cache keeps 1024 statements per backend and replaces the least recently
# used: a hot statement called between 1100 one-off statements stays cached
# (with generic plans it is planned exactly once; replacing the oldest entry
# instead would plan it again), and a one-off pushed out runs again.
$node->safe_psql('postgres', 'SELECT pg_stat_statements_reset()');
my $evict = $node->safe_psql(
	'postgres', qq{
SET plan_cache_mode = force_generic_plan;
DO \$\$
BEGIN
  FOR i IN 1..1100 LOOP
    PERFORM idem_apply('once-off:' || i, NULL, 'SELECT ' || i || ' AS one_off');
    PERFORM idem_apply('hot:' || i, NULL, '$stmt', 'hot' || i, i);
  END LOOP;
END \$\$;
SELECT status FROM idem_apply('once-off:1', NULL, 'SELECT 1 AS one_off');
SELECT status FROM idem_apply('once-off:again', NULL, 'SELECT 1 AS one_off');
});
is($evict, "duplicate\napplied",
	'a statement pushed out of the cache still answers its duplicates, and applies again');
($executed, $planned) = split /\|/, counts();
is($executed, 1100, 'the hot statement ran once per call among 1100 one-off statements');
is($planned, 1, 'and was planned once: it stayed in the cache');

# A statement whose execution makes nested calls with more than 1024 other
# statements: the cache evicts around it, never the plan being executed.
my $nested = $node->safe_psql(
	'postgres', q{
SELECT status, rows FROM idem_apply('outer', NULL,
  $$SELECT count(*) FROM generate_series(1, 1100) i,
           LATERAL idem_apply('inner:' || i, NULL, 'SELECT ' || i || ' AS nested') o
    WHERE o.applied$$);
});
is($nested, 'applied|1', 'an outer statement survives 1100 nested statements filling the cache');
is($node->safe_psql('postgres', q{SELECT result FROM idem_get('outer')}),
	'[{"count": 1100}]', 'and its result is what it computed');

$node->stop;
done_testing();
