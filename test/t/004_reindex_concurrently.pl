
# 004_reindex_concurrently.pl
#
# The ledger's indexes are maintained by the extension, not the executor, so
# REINDEX CONCURRENTLY (which builds a new index beside the primary key and
# swaps it in) must not stop or corrupt anything: while clients apply keys,
# the primary key is rebuilt several times; afterwards every key is applied
# exactly once, the index holds every row, and old keys are still duplicates.

use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use IPC::Run;

my $node = PostgreSQL::Test::Cluster->new('reindex');
$node->init;
$node->start;

$node->safe_psql(
	'postgres', q{
CREATE EXTENSION idempotent;
CREATE EXTENSION amcheck;
CREATE TABLE effects (k text NOT NULL);   -- no unique constraint on purpose
});

my $script = $node->basedir . '/apply.sql';
open my $fh, '>', $script or die "could not write $script: $!";
print $fh q{\set k random(1, 3000)
SELECT status FROM idem_apply('rx:' || :k, NULL, 'INSERT INTO effects VALUES ($1)', 'rx:' || :k);
};
close $fh;

my ($out, $err) = ('', '');
my $clients = IPC::Run::start(
	[
		'pgbench', '-n', '-c', '2', '-j', '2', '-T', '8', '-f', $script,
		'-h', $node->host, '-p', $node->port, 'postgres'
	],
	'>', \$out, '2>', \$err);

for my $round (1 .. 3)
{
	sleep 1;
	$node->safe_psql('postgres', 'REINDEX INDEX CONCURRENTLY idem_ledger_pkey');
	pass("REINDEX CONCURRENTLY round $round under load");
}
$clients->finish;
is($clients->result(0), 0, 'clients ran without error') or diag($err);
like($out, qr/number of failed transactions: 0 /, 'no failed transaction');
like($out, qr/number of transactions actually processed: [1-9]/, 'clients did work');

is($node->safe_psql('postgres',
		q{SELECT count(*) FROM (SELECT k FROM effects GROUP BY k HAVING count(*) > 1) d}),
	'0', 'no key applied twice');
is($node->safe_psql('postgres', q{
SELECT (SELECT count(*) FROM idem_ledger WHERE key LIKE 'rx:%')
     = (SELECT count(DISTINCT k) FROM effects)}),
	't', 'one ledger row per applied key');
is($node->psql('postgres', q{SELECT bt_index_check('idem_ledger_pkey', true)}),
	0, 'the rebuilt primary key holds every ledger row');
is($node->safe_psql('postgres', q{
SELECT count(*) FROM idem_ledger l,
  LATERAL idem_apply(l.key, NULL, 'INSERT INTO effects VALUES ($1)', l.key) o
WHERE l.key LIKE 'rx:%' AND o.status <> 'duplicate'}),
	'0', 'every applied key is still a duplicate');

$node->stop;
done_testing();
