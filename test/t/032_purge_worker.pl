
# 032_purge_worker.pl
#
# The purge worker, with the library in shared_preload_libraries: it deletes
# expired keys in every database that has the extension (and leaves the
# others alone), picks up new settings on reload, is restarted after a
# crash, and stops with the server.  Without preloading there is no worker
# and idem_purge still works.

use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $node = PostgreSQL::Test::Cluster->new('worker');
$node->init;
$node->append_conf(
	'postgresql.conf', q(
shared_preload_libraries = 'idempotent'
idempotent.purge_interval = 1
idempotent.purge_batch = 300
restart_after_crash = on
));
$node->start;

# two databases with the extension, one without
$node->safe_psql('postgres', 'CREATE DATABASE second');
$node->safe_psql('postgres', 'CREATE DATABASE plain');
for my $db ('postgres', 'second')
{
	$node->safe_psql($db, 'CREATE EXTENSION idempotent');
}

# keys that expire at once, keys that never do
sub fill
{
	my ($db, $prefix) = @_;
	$node->safe_psql(
		$db, qq{
SET idempotent.ttl = '1s';
SELECT count(idem_claim('$prefix:short:' || g)) FROM generate_series(1, 2000) g;
RESET idempotent.ttl;
SELECT count(idem_claim('$prefix:forever:' || g)) FROM generate_series(1, 100) g;
});
}
fill('postgres', 'a');
fill('second', 'b');

ok( $node->poll_query_until(
		'postgres', q{SELECT count(*) = 100 FROM idem_ledger}),
	'the worker purged the expired keys of the first database');
ok( $node->poll_query_until(
		'second', q{SELECT count(*) = 100 FROM idem_ledger}),
	'and of the second, in batches of purge_batch');
is($node->safe_psql('postgres', q{SELECT count(*) FROM idem_ledger WHERE key LIKE 'a:forever:%'}),
	'100', 'keys kept forever are still there');
like(slurp_file($node->logfile), qr/idempotent: purged 2000 expired keys in database "second"/,
	'each round is logged with its count');

# a reload changes the interval: with purging switched off, keys stay
$node->safe_psql('postgres', q{ALTER SYSTEM SET idempotent.purge_interval = 0});
$node->reload;
ok( $node->poll_query_until(
		'postgres', q{SELECT setting = '0' FROM pg_settings WHERE name = 'idempotent.purge_interval'}),
	'the new interval is in force after a reload');
sleep 2;    # let a round in flight finish
fill('postgres', 'c');
sleep 3;
is($node->safe_psql('postgres', q{SELECT count(*) FROM idem_ledger WHERE key LIKE 'c:short:%'}),
	'2000', 'with the interval at 0 nothing is purged');
$node->safe_psql('postgres', q{ALTER SYSTEM SET idempotent.purge_interval = 1});
$node->reload;
ok( $node->poll_query_until(
		'postgres', q{SELECT count(*) = 0 FROM idem_ledger WHERE key LIKE 'c:short:%'}),
	'purging resumes when the interval is set again');

# a crash of the launcher: the postmaster restarts it
my $launcher = $node->safe_psql('postgres',
	q{SELECT pid FROM pg_stat_activity WHERE backend_type = 'idempotent purge launcher'});
like($launcher, qr/^\d+$/, 'the launcher runs');
kill 'KILL', $launcher;
ok( $node->poll_query_until(
		'postgres', qq{SELECT count(*) = 1 FROM pg_stat_activity
		   WHERE backend_type = 'idempotent purge launcher' AND pid <> $launcher}),
	'the launcher is back after a crash');
fill('second', 'd');
ok( $node->poll_query_until(
		'second', q{SELECT count(*) = 0 FROM idem_ledger WHERE key LIKE 'd:short:%'}),
	'and purges again');

# statistics, also kept in shared memory when preloaded
$node->safe_psql('postgres', q{
SELECT idem_stats_reset();
CREATE TABLE st (k text);
SELECT idem_apply('st:1', NULL, 'INSERT INTO st VALUES ($1)', 'one');
SELECT idem_apply('st:1', NULL, 'INSERT INTO st VALUES ($1)', 'one');
SELECT idem_apply('st:v', 2, 'INSERT INTO st VALUES ($1)', 'two');
SELECT idem_apply('st:v', 1, 'INSERT INTO st VALUES ($1)', 'two');
SELECT idem_apply_next('st:s', 3, 'INSERT INTO st VALUES ($1)', 'three');
SELECT idem_claim('st:c');
SELECT idem_upsert('st:u', 2, 'INSERT INTO st VALUES ($1)', 'four');
SELECT idem_upsert('st:u', 1, 'INSERT INTO st VALUES ($1)', 'four');
});
# errors: in the statement, and a reused key (ID001); bad input is not a call
$node->psql('postgres', q{SELECT idem_apply('st:2', NULL, 'SELECT 1/0')});
$node->psql('postgres', q{SELECT idem_apply('st:1', NULL, 'INSERT INTO st VALUES ($1)', 'other')});
$node->psql('postgres', q{SELECT idem_apply(NULL, NULL, 'SELECT 1')});
# in_progress: a key another transaction is applying, asked with wait = off
my $busy = $node->background_psql('postgres');
$busy->query_safe(q{BEGIN; SELECT idem_apply('st:busy', NULL, 'SELECT 1')});
is($node->safe_psql('postgres',
		q{SET idempotent.wait = off; SELECT status FROM idem_apply('st:busy', NULL, 'SELECT 1')}),
	'in_progress', 'a key being applied elsewhere is in_progress with wait = off');
$busy->query_safe('ROLLBACK');
$busy->quit;
is($node->safe_psql('postgres', q{
SELECT string_agg(format('%s:%s/%s/%s/%s/%s/%s/%s', policy, calls, applied, duplicate, stale,
                         gap, in_progress, errors), ' ' ORDER BY policy)
FROM idem_stat WHERE policy <> 'lease'}),
	'newer:2/1/0/1/0/0/0 next:1/0/0/0/1/0/0 once:7/3/1/0/0/1/2 upsert:2/1/0/1/0/0/0',
	'idem_stat counts calls by policy and outcome, in_progress and errors included, not bad input');
is($node->safe_psql('postgres', q{SELECT bool_and(total_time > 0) FROM idem_stat WHERE calls > 0}),
	't', 'and the time they took');
$node->safe_psql('postgres', q{SELECT idem_stats_reset()});
is($node->safe_psql('postgres', q{SELECT sum(calls) FROM idem_stat}), '0', 'idem_stats_reset zeroes them');

# statistics per scope: each caller sees the shared scope and the scopes it
# may use; pg_read_all_stats and superusers see every scope
$node->safe_psql('postgres', q{
CREATE ROLE regress_stat_a; CREATE ROLE regress_stat_b;
CREATE ROLE regress_stat_app_a LOGIN IN ROLE regress_stat_a;
CREATE ROLE regress_stat_watcher LOGIN IN ROLE pg_read_all_stats;
GRANT EXECUTE ON FUNCTION idem_claim(text, bigint, text), idem_stats() TO regress_stat_app_a;
GRANT SELECT ON idem_stat TO regress_stat_app_a;
SET idempotent.scope = 'regress_stat_a';
SELECT idem_claim('sc:1'); SELECT idem_claim('sc:1'); SELECT idem_claim('sc:2');
SET idempotent.scope = 'regress_stat_b';
SELECT idem_claim('sc:1');
RESET idempotent.scope;
SELECT idem_claim('sc:shared');
-- a statement that switches the scope: the call still counts where it was checked
SET idempotent.scope = 'regress_stat_a';
SELECT idem_apply('sc:switch', NULL, $$SELECT set_config('idempotent.scope', 'regress_stat_b', false)$$);
RESET idempotent.scope;
});
my $by_scope = q{SELECT string_agg(format('%s:%s/%s/%s', scope, calls, applied, duplicate), ' ' ORDER BY scope)
                 FROM idem_stat WHERE policy = 'once'};
is($node->safe_psql('postgres', $by_scope),
	':1/1/0 regress_stat_a:4/3/1 regress_stat_b:1/1/0', 'idem_stat counts per scope, each call in the scope it was checked for');
is($node->safe_psql('postgres', "SET ROLE regress_stat_app_a; $by_scope"),
	':1/1/0 regress_stat_a:4/3/1', 'a member of scope a sees the shared scope and a, not b');
is($node->safe_psql('postgres', "SET ROLE regress_stat_watcher; $by_scope"),
	':1/1/0 regress_stat_a:4/3/1 regress_stat_b:1/1/0', 'pg_read_all_stats sees every scope');
$node->safe_psql('postgres', q{SELECT idem_stats_reset()});

$node->stop('fast');
my $log = slurp_file($node->logfile);
unlike($log, qr/background worker "idempotent purge" \(PID \d+\) (exited with exit code [1-9]|was terminated)/,
	'no database purge worker failed');
unlike($log, qr/terminated by signal 11/, 'nothing crashed');
like($log, qr/terminating background worker "idempotent purge launcher" due to administrator command/,
	'the launcher stops with the server');

# without preloading: no worker, idem_purge by hand
my $plain = PostgreSQL::Test::Cluster->new('no_preload');
$plain->init;
$plain->start;
$plain->safe_psql('postgres', 'CREATE EXTENSION idempotent');
is($plain->safe_psql('postgres',
		q{SELECT count(*) FROM pg_stat_activity WHERE backend_type LIKE 'idempotent%'}),
	'0', 'without preloading there is no worker');
is($plain->safe_psql('postgres', q{
SET idempotent.ttl = '1s';
SELECT count(idem_claim('p:' || g)) FROM generate_series(1, 500) g;
UPDATE idem_ledger SET expires_at = now() - interval '1 second';
SELECT idem_purge(200) + idem_purge(1000);
}), "500\n500", 'idem_purge works without the worker');
$plain->stop;

done_testing();
