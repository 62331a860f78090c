
# 033_purge_worker_rounds.pl
#
# The purge worker's rounds, with the library preloaded: databases with a
# backlog of expired keys are purged in turn, not one drained while the
# other waits; a database still on version 1.0 (no expiry) is skipped with
# one LOG line while the others are purged, and purged once it is updated;
# a reload that shortens the interval takes effect at once, even one that
# arrives while a round is running.

use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(usleep time);

# purge_batch keys per batch, 10 batches per visit
my $batch = 20;
my $visit = 10 * $batch;

my $node = PostgreSQL::Test::Cluster->new('rounds');
$node->init;
$node->append_conf(
	'postgresql.conf', qq(
shared_preload_libraries = 'idempotent'
idempotent.purge_interval = 0
idempotent.purge_batch = $batch
));
$node->start;

for my $db ('one', 'two')
{
	$node->safe_psql('postgres', "CREATE DATABASE $db");
	$node->safe_psql($db, 'CREATE EXTENSION idempotent');
}

# expired_keys(db, prefix, n): n keys that have expired already
sub expired_keys
{
	my ($db, $prefix, $n) = @_;
	$node->safe_psql(
		$db, qq{
SET idempotent.ttl = '1h';
SELECT count(idem_claim('$prefix:' || g)) FROM generate_series(1, $n) g;
UPDATE idem_ledger SET expires_at = now() - interval '1 second' WHERE key LIKE '$prefix:%';
});
}

# set_interval(seconds): ALTER SYSTEM and reload
sub set_interval
{
	my ($seconds) = @_;
	$node->safe_psql('postgres', qq{
ALTER SYSTEM SET idempotent.purge_interval = $seconds;
SELECT pg_reload_conf();
});
}

# within(seconds, db, query): whether query returns 't' before the deadline
sub within
{
	my ($seconds, $db, $query) = @_;
	my $deadline = time + $seconds;
	while (time < $deadline)
	{
		return 1 if $node->safe_psql($db, $query) eq 't';
		usleep(100_000);
	}
	return 0;
}

# the database a visit is waiting in for a lock, if any
my $waiting_visit = q{SELECT string_agg(datname, ' ') FROM pg_stat_activity
  WHERE backend_type = 'idempotent purge' AND wait_event_type = 'Lock'};

my $log_offset = -s $node->logfile;

# Rounds: the same backlog in two databases, built while purging is off,
# whose ledgers are locked when purging starts.  The first database visited
# is let go: its visit deletes 10 batches, then the other database has its
# turn (it waits for its lock) and the first has lost just that.
my $backlog = 2000;
my %lock;
for my $db ('one', 'two')
{
	expired_keys($db, 'r', $backlog);
	$lock{$db} = $node->background_psql($db);
	$lock{$db}->query_safe('BEGIN; LOCK idem_ledger IN ACCESS EXCLUSIVE MODE');
}
set_interval(1);
ok($node->poll_query_until('postgres', "SELECT ($waiting_visit) IN ('one', 'two')"),
	'a visit waits for the lock of the first database');
my $first = $node->safe_psql('postgres', $waiting_visit);
my $second = $first eq 'one' ? 'two' : 'one';
$lock{$first}->query_safe('COMMIT');
ok($node->poll_query_until('postgres', "SELECT ($waiting_visit) = '$second'"),
	'then a visit waits for the lock of the second');
is($node->safe_psql($first, q{SELECT count(*) FROM idem_ledger WHERE key LIKE 'r:%'}),
	$backlog - $visit,
	'the first database lost 10 batches, and the second has its turn before the first is drained');
$lock{$second}->query_safe('COMMIT');
$_->quit for values %lock;
for my $db ('one', 'two')
{
	ok( $node->poll_query_until($db, q{SELECT count(*) = 0 FROM idem_ledger WHERE key LIKE 'r:%'}),
		"the backlog of $db is purged");
}
my %purged;
my $log = slurp_file($node->logfile, $log_offset);
while ($log =~ /idempotent: purged (\d+) expired keys in database "(\w+)"/g)
{
	$purged{$2} += $1;
}
is(join(' ', map { $purged{$_} // 0 } ('one', 'two')), "$backlog $backlog",
	'each round logs what each database lost');

# A database still on version 1.0 has no expiry: skipped with one LOG line
# (not an ERROR every round), while the others are purged.
$node->safe_psql('postgres', 'CREATE DATABASE old');
$node->safe_psql('old', "CREATE EXTENSION idempotent VERSION '1.0'");
$node->safe_psql('old', q{SELECT idem_claim('old:kept')});
$log_offset = -s $node->logfile;
expired_keys('one', 's', 100);
ok( within(30, 'one', q{SELECT count(*) = 0 FROM idem_ledger WHERE key LIKE 's:%'}),
	'beside a 1.0 database, the others are purged');
sleep 3;    # three more rounds
$log = slurp_file($node->logfile, $log_offset);
my @skipped = $log =~ /LOG:  idempotent: not purging database "old": its extension version 1\.0 has no expiry/g;
is(scalar @skipped, 1, 'the 1.0 database is skipped with one LOG line, not one per round');
unlike($log, qr/ERROR|FATAL/, 'and without an error');
unlike($log, qr/background worker "idempotent purge" \(PID \d+\) exited with exit code [1-9]/,
	'no purge worker failed');
is($node->safe_psql('old', q{SELECT count(*) FROM idem_ledger}), '1', 'its keys are left alone');

# Updated, it is purged like the others.
$node->safe_psql('old', 'ALTER EXTENSION idempotent UPDATE');
expired_keys('old', 'u', 100);
ok( within(30, 'old', q{SELECT count(*) = 0 FROM idem_ledger WHERE key LIKE 'u:%'}),
	'once updated, the database is purged');

# A reload takes effect at once, also one that arrives while a round is
# running.  Locks on the ledger hold a visit up: while s1 holds one, the
# interval is raised to an hour; s2 queues behind the visit, to hold up
# the next round that might start.  While a round is held up by s2, the
# interval is set back to one second: once s2 lets go, keys that expire a
# little later are purged within seconds, not after the hour.
my ($s1, $s2) = map { $node->background_psql('one') } 1 .. 2;
$s1->query_safe('BEGIN; LOCK idem_ledger IN ACCESS EXCLUSIVE MODE');
ok($node->poll_query_until('postgres', "SELECT ($waiting_visit) = 'one'"), 'a visit waits for the first lock');
set_interval(3600);
my $s2_pid = $s2->query_safe('SELECT pg_backend_pid()');
$s2->query_until(qr/queued/, qq{\\echo queued\nBEGIN; LOCK idem_ledger IN ACCESS EXCLUSIVE MODE;\n});
ok( $node->poll_query_until('one',
		q{SELECT count(*) = 2 FROM pg_locks WHERE NOT granted AND relation = 'idem_ledger'::regclass}),
	'the second lock waits behind the visit');
$s1->query_safe('COMMIT');
ok( $node->poll_query_until('one',
		"SELECT bool_or(granted) FROM pg_locks WHERE pid = $s2_pid AND relation = 'idem_ledger'::regclass"),
	'the visit is over and the second lock is taken');
sleep 2;    # time for a round held up by the second lock to start
set_interval(1);
ok($node->poll_query_until('postgres', "SELECT ($waiting_visit) = 'one'"), 'a round waits for the second lock');
$s2->query_safe('COMMIT');
$s1->quit;
$s2->quit;
$node->safe_psql('one', q{
SET idempotent.ttl = '3s';
SELECT count(idem_claim('t:' || g)) FROM generate_series(1, 100) g;
});
ok(within(20, 'one', q{SELECT count(*) = 0 FROM idem_ledger WHERE key LIKE 't:%'}),
	'a reload that shortens the interval takes effect within seconds');

$node->stop('fast');
done_testing();
