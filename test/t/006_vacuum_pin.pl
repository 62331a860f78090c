# 006_vacuum_pin.pl
#
# VACUUM of the ledger does not wait behind a running statement.  A call that
# applies an existing key (a newer version) looks the key up in the primary
# key before its statement runs; the index scan's pin on the leaf page must be
# dropped before the statement starts, or VACUUM (INDEX_CLEANUP ON), which
# needs a cleanup lock on every leaf page, waits on BufferPin until the
# statement ends.
#
# Session A applies key 'pinned' at version 2 with the statement
# SELECT pg_sleep(3); meanwhile session B vacuums the ledger after thousands of
# keys were forgotten (dead index entries, so that the index is vacuumed).  B
# must finish while A's statement still runs, and pg_stat_activity, polled
# throughout, must never show B waiting on BufferPin.

use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time usleep);

my $node = PostgreSQL::Test::Cluster->new('vacuum_pin');
$node->init;
$node->append_conf('postgresql.conf', "autovacuum = off\n");
$node->start;

$node->safe_psql('postgres', q{
CREATE EXTENSION idempotent;
SELECT count(*) FROM generate_series(1, 5000) g, idem_claim('dead-' || g);
SELECT status FROM idem_apply('pinned', 1, 'SELECT 1 AS one');
SELECT count(*) FROM generate_series(1, 5000) g, idem_forget('dead-' || g);
});
is($node->safe_psql('postgres', 'SELECT count(*) FROM idem_ledger'), '1',
	'the forgotten keys are gone: only the pinned key is left');

my $a = $node->background_psql('postgres', on_error_stop => 0);
my $b = $node->background_psql('postgres', on_error_stop => 0);
my $a_pid = $a->query('SELECT pg_backend_pid()');
my $b_pid = $b->query('SELECT pg_backend_pid()');

# the state of a backend: wait_event_type/wait_event/state/query
sub activity
{
	my ($pid) = @_;
	return $node->safe_psql('postgres',
		"SELECT concat_ws('/', wait_event_type, wait_event, state, left(query, 40))
		 FROM pg_stat_activity WHERE pid = $pid");
}

# A: its statement sleeps 3 s after the key was probed and locked
$a->query_until(qr/a-started\r?\n/,
	"\\echo a-started\nSELECT status FROM idem_apply('pinned', 2, 'SELECT pg_sleep(3)');\n\\echo a-finished\n");
my $a_start = time;
for (1 .. 250)
{
	last if activity($a_pid) =~ /PgSleep/;
	usleep(20_000);
}
like(activity($a_pid), qr/PgSleep/, "A's statement is running (pg_sleep)");

# B: VACUUM with index cleanup, polled until it is done
$b->query_until(qr/b-started\r?\n/,
	"\\echo b-started\nVACUUM (VERBOSE, INDEX_CLEANUP ON) idem_ledger;\n\\echo b-finished\n");
my $b_start = time;
my ($b_done, $bufferpin, $a_running_when_b_done) = (0, 0, 0);
my @seen;
while (time - $b_start < 30)
{
	my $b_state = activity($b_pid);
	push @seen, $b_state unless @seen && $seen[-1] eq $b_state;
	$bufferpin = 1 if $b_state =~ /BufferPin/;
	if ($b_state =~ /\/idle\//)
	{
		$b_done = time - $b_start;
		$a_running_when_b_done = (activity($a_pid) =~ /PgSleep/) ? 1 : 0;
		last;
	}
	usleep(20_000);
}
note "B's states while it ran: @seen";
ok($b_done, 'the VACUUM finished');
ok(!$bufferpin, 'the VACUUM never waited on BufferPin');
ok($a_running_when_b_done, "it finished while A's statement was still running");
cmp_ok($b_done, '<', 2.5, 'within 2.5 s of its start (A sleeps 3 s)');
note sprintf('VACUUM took %.2f s; A had been running %.2f s when it started',
	$b_done, $b_start - $a_start);
like($b->query_until(qr/b-finished\r?\n/, ''), qr/b-finished/, 'B reported the end of its VACUUM');
# VACUUM VERBOSE reports to the client's stderr, which the session collects
# (complete once a query after it has returned)
$b->query('SELECT 1');
like($b->{stderr}, qr/index scan needed: .* [1-9][0-9]* dead item identifiers removed\n.*index "idem_ledger_pkey": pages: /s,
	'and it did vacuum the primary key, whose dead entries it removed');

# A ends as it would have without the VACUUM
like($a->query_until(qr/a-finished\r?\n/, ''), qr/^applied\r?\na-finished/m,
	'A applied version 2');
is($node->safe_psql('postgres', q{SELECT version FROM idem_ledger WHERE key = 'pinned'}),
	'2', 'the ledger holds version 2 of the key');
is($node->safe_psql('postgres', q{SELECT status FROM idem_apply('pinned', 2, 'SELECT pg_sleep(3)')}),
	'duplicate', 'and a redelivery of version 2 is a duplicate');
$node->safe_psql('postgres', 'CREATE EXTENSION amcheck');
is($node->safe_psql('postgres', q{SELECT bt_index_check('idem_ledger_pkey', true)}), '',
	'the vacuumed primary key is consistent with the heap');

$a->quit;
$b->quit;
$node->stop;
done_testing();
