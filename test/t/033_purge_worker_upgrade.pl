
# 033_purge_worker_upgrade.pl
#
# pg_upgrade with the library in shared_preload_libraries of both clusters.
# The servers pg_upgrade starts (binary upgrade mode) must run no purge
# worker, which would delete keys and connect to databases while they are
# dumped and restored; the upgraded cluster keeps every key, and its
# worker purges again.

use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $conf = q(
shared_preload_libraries = 'idempotent'
idempotent.purge_interval = 1
log_min_messages = debug1
);

my $old = PostgreSQL::Test::Cluster->new('old');
$old->init;
$old->append_conf('postgresql.conf', $conf);
$old->start;
$old->safe_psql('postgres', 'CREATE EXTENSION idempotent');
$old->safe_psql('postgres', q{
SELECT count(idem_claim('forever:' || g)) FROM generate_series(1, 100) g;
SET idempotent.ttl = '1h';
SELECT count(idem_claim('hour:' || g)) FROM generate_series(1, 100) g;
});
ok( $old->poll_query_until('postgres', q{SELECT count(*) = 1 FROM pg_stat_activity
  WHERE backend_type = 'idempotent purge launcher'}),
	'the old cluster runs the purge worker');
$old->stop;

my $new = PostgreSQL::Test::Cluster->new('new');
$new->init;
$new->append_conf('postgresql.conf', $conf);

my $bindir = $new->config_data('--bindir');
command_ok(
	[
		'pg_upgrade', '--no-sync', '--retain',
		'-d', $old->data_dir, '-D', $new->data_dir,
		'-b', $bindir, '-B', $bindir,
		'-s', $new->host, '-p', $old->port, '-P', $new->port
	],
	'pg_upgrade with the library preloaded in both clusters');

# both clusters' servers log into pg_upgrade_server.log (DEBUG1 names every
# background worker registered and started)
my ($server_log) = glob($new->data_dir . '/pg_upgrade_output.d/*/log/pg_upgrade_server.log');
my $log = defined $server_log ? slurp_file($server_log) : '';
like($log, qr/registering background worker "logical replication launcher"/,
	'the servers pg_upgrade ran logged the workers they registered');
unlike($log, qr/idempotent purge/, 'and none of them registered the purge worker');

$new->start;
is( $new->safe_psql('postgres', q{
SELECT count(*) FILTER (WHERE key LIKE 'forever:%') || ' ' || count(*) FILTER (WHERE key LIKE 'hour:%')
FROM idem_ledger}),
	'100 100', 'the upgraded cluster has every key');
ok( $new->poll_query_until('postgres', q{SELECT count(*) = 1 FROM pg_stat_activity
  WHERE backend_type = 'idempotent purge launcher'}),
	'and runs the purge worker');
$new->safe_psql('postgres',
	q{UPDATE idem_ledger SET expires_at = now() - interval '1 second' WHERE key LIKE 'hour:%'});
ok( $new->poll_query_until('postgres', q{SELECT count(*) = 100 FROM idem_ledger}),
	'which purges expired keys again');

$new->stop;
done_testing();
