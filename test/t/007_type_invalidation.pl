# 007_type_invalidation.pl
#
# Catalog invalidations that arrive while a call computes its request's
# identity do not crash the server.  The identity looks up the arguments'
# types; a lookup that misses the catalog cache opens pg_type, which
# processes the invalidations other sessions sent meanwhile.  1.1 kept a
# per-backend hash of argument types and destroyed it from a pg_type
# invalidation callback while it was filling it, so the next hash_search()
# dereferenced a NULL table: a segfault, and a restart of every session.
#
# The race made certain: session A passes an array of a composite type read
# from a table, after sleeping 20 ms in the same statement (so that
# invalidations are pending when the call starts); the composite type itself
# is never named by A's query, so its cache entry, invalidated by session B's
# GRANT/REVOKE on it at every round, is looked up again only inside the
# identity.  1.1 crashed on A's first call.

use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use IPC::Run;

my $node = PostgreSQL::Test::Cluster->new('type_invalidation');
$node->init;
$node->start;

$node->safe_psql('postgres', q{
CREATE EXTENSION idempotent;
CREATE TYPE inval_item AS (a int, b text);
CREATE DOMAIN inval_amount AS numeric CHECK (VALUE >= 0);
CREATE TABLE inval_args (items inval_item[], amount inval_amount);
INSERT INTO inval_args VALUES (ARRAY[ROW(1, 'x')::inval_item], 25.00);
});

my $dir = $node->basedir;
my ($host, $port) = ($node->host, $node->port);

# A: one key, applied once and then a duplicate every round
PostgreSQL::Test::Utils::append_to_file("$dir/calls.sql",
	q{SELECT (idem_apply('inval:1', NULL, 'SELECT 1 AS one', a.items, a.amount)).status }
	  . qq{FROM inval_args a, (SELECT pg_sleep(0.02)) s;\n});
# B: pg_type of inval_item changes (and is invalidated) at every commit
PostgreSQL::Test::Utils::append_to_file("$dir/grants.sql",
	"GRANT USAGE ON TYPE inval_item TO PUBLIC;\nREVOKE USAGE ON TYPE inval_item FROM PUBLIC;\n");

my ($b_out, $b_err) = ('', '');
my $b = IPC::Run::start(
	[ 'pgbench', '-h', $host, '-p', $port, '-n', '-f', "$dir/grants.sql", '-T', '8', 'postgres' ],
	'>', \$b_out, '2>', \$b_err);
sleep 1;
my ($a_out, $a_err) = ('', '');
my $a_ok = IPC::Run::run(
	[ 'pgbench', '-h', $host, '-p', $port, '-n', '-f', "$dir/calls.sql", '-T', '4', 'postgres' ],
	'>', \$a_out, '2>', \$a_err);
$b->finish;

ok($a_ok, 'the calls ran to the end') or diag($a_err);
my ($a_done) = $a_out =~ /number of transactions actually processed: (\d+)/;
my ($a_failed) = $a_out =~ /number of failed transactions: (\d+)/;
cmp_ok($a_done // 0, '>', 50, 'over 50 calls were made (20 ms each)');
is($a_failed, '0', 'none of them failed');
my ($b_done) = $b_out =~ /number of transactions actually processed: (\d+)/;
cmp_ok($b_done // 0, '>', 100, 'the type was granted and revoked meanwhile, many times')
  or diag($b_err);

is($node->safe_psql('postgres', 'SELECT 1'), '1', 'the server still accepts connections');
my $log = slurp_file($node->logfile);
unlike($log, qr/terminated by signal/, 'no server process was terminated by a signal');
is( $node->safe_psql('postgres',
		q{SELECT count(*) || '/' || rows FROM idem_ledger WHERE key = 'inval:1' GROUP BY rows}),
	'1/1', 'the key was recorded once');

$node->stop;
done_testing();
