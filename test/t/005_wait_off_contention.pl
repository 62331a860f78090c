
# 005_wait_off_contention.pl
#
# With idempotent.wait = off, in_progress means that another call is applying
# the key, nothing else.  One session with wait = off applies versions 2, 3,
# ... of a hot key while six clients keep sending its old version 1 (stale,
# with the default wait = on).  Nobody else ever applies that key, so every
# call of the first session must apply: a protocol in which a stale or
# duplicate call holds the key's writers' lock, even briefly, makes some of
# them come back in_progress.

use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use IPC::Run;
use Time::HiRes qw(time);

my $node = PostgreSQL::Test::Cluster->new('wait_off');
$node->init;
$node->start;
$node->safe_psql('postgres', q{
CREATE EXTENSION idempotent;
SELECT idem_apply('hot', 1, 'SELECT 1');
});

my $script = $node->basedir . '/stale.sql';
PostgreSQL::Test::Utils::append_to_file($script,
	qq{SELECT status FROM idem_apply('hot', 1, 'SELECT 1');\n});
my ($out, $err) = ('', '');
my $stale = IPC::Run::start(
	[ 'pgbench', '-n', '-c', '6', '-j', '2', '-T', '6', '-f', $script,
	  '-h', $node->host, '-p', $node->port, 'postgres' ],
	'>', \$out, '2>', \$err);

my $session = $node->background_psql('postgres', on_error_stop => 1);
$session->query_safe('SET idempotent.wait = off');
# let the stale clients get going, then apply for four seconds
sleep 1;
my %status;
my $version = 1;
my $until = time + 4;
while (time < $until)
{
	$version++;
	$status{ $session->query_safe(
		"SELECT status FROM idem_apply('hot', $version, 'SELECT 1')") }++;
}
$session->quit;
$stale->finish;

note join(', ', map { "$_: $status{$_}" } sort keys %status);
note $out =~ /(number of transactions actually processed: \d+)/ ? "stale clients: $1" : $err;
is($stale->result(0), 0, 'the stale clients ran without error') or diag($err);
like($out, qr/number of transactions actually processed: [1-9]/, 'the stale clients made calls');
cmp_ok($version, '>', 100, 'the wait = off session made many calls');
is($status{in_progress} // 0, 0, 'no call with wait = off came back in_progress');
is($status{applied} // 0, $version - 1, 'every version it sent was applied');
is($node->safe_psql('postgres', q{SELECT version FROM idem_ledger WHERE key = 'hot'}),
	$version, 'the ledger holds the last version');

$node->stop;
done_testing();
